//! A builder: one upstream backend that Envoy routes to by TLS SNI name, and its validation.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

/// Longest builder id accepted. Ids become Envoy cluster names, so they stay short and plain.
pub const MAX_ID_LEN: usize = 128;
/// Most labels one builder may carry.
pub const MAX_LABELS: usize = 32;

/// Where a builder came from. Each source owns its builders: the DNS poller never touches
/// builders put through the API, and the API cannot overwrite discovered ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Discovered by the leader's DNS poller.
    Dns,
    /// Put by an operator or a program through the admin API.
    Api,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Dns => "dns",
            Source::Api => "api",
        })
    }
}

/// One upstream backend: Envoy passes TLS connections whose SNI is `sni` through to `addr`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Builder {
    /// Stable identifier (e.g. a machine id); names the builder's Envoy cluster.
    pub id: String,
    /// Where the builder listens.
    pub addr: SocketAddr,
    /// The TLS server name clients send to reach this builder; unique across the registry.
    pub sni: String,
    /// Free-form region (e.g. `ord`); may be empty.
    #[serde(default)]
    pub region: String,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Who manages this builder.
    pub source: Source,
}

/// Why a builder is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBuilder {
    /// The id is empty, too long, or has characters other than ASCII letters, digits, `-`, `_`, `.`.
    #[error("invalid builder id {0:?}: use 1 to 128 ASCII letters, digits, '-', '_' or '.'")]
    Id(String),
    /// The address has port 0 or an unspecified IP, which nothing can connect to.
    #[error("invalid address {0} for builder {1:?}: needs a specific IP and a non-zero port")]
    Addr(SocketAddr, String),
    /// The SNI name is not a lower-case DNS host name.
    #[error(
        "invalid SNI name {0:?} for builder {1:?}: must be a lower-case DNS name \
         (labels of 1-63 letters, digits or '-', at most 253 characters)"
    )]
    Sni(String, String),
    /// The region is too long or has characters other than letters, digits and `-`.
    #[error("invalid region {0:?} for builder {1:?}: at most 64 ASCII letters, digits or '-'")]
    Region(String, String),
    /// Too many labels, or a label key or value out of bounds.
    #[error("invalid labels for builder {0:?}: {1}")]
    Labels(String, String),
}

impl Builder {
    /// Checks every field; the registry refuses a command holding an invalid builder.
    pub fn validate(&self) -> Result<(), InvalidBuilder> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= MAX_ID_LEN
            && self
                .id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
        if !id_ok {
            return Err(InvalidBuilder::Id(self.id.clone()));
        }
        if self.addr.port() == 0 || self.addr.ip().is_unspecified() {
            return Err(InvalidBuilder::Addr(self.addr, self.id.clone()));
        }
        if !is_dns_name(&self.sni) {
            return Err(InvalidBuilder::Sni(self.sni.clone(), self.id.clone()));
        }
        let region_ok = self.region.len() <= 64
            && self
                .region
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-');
        if !region_ok {
            return Err(InvalidBuilder::Region(self.region.clone(), self.id.clone()));
        }
        if self.labels.len() > MAX_LABELS {
            return Err(InvalidBuilder::Labels(
                self.id.clone(),
                format!("{} labels, at most {MAX_LABELS}", self.labels.len()),
            ));
        }
        for (k, v) in &self.labels {
            if k.is_empty() || k.len() > 63 || v.len() > 256 || k.chars().any(char::is_control) {
                return Err(InvalidBuilder::Labels(
                    self.id.clone(),
                    format!("label {k:?}: keys 1-63 characters, values at most 256"),
                ));
            }
        }
        Ok(())
    }
}

/// True for a lower-case DNS host name (no trailing dot), as Envoy matches `server_names`.
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        })
}
