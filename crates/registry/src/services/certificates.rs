//! Certificates held by concord for TLS termination at Envoy (sent by SDS, so a rotation changes
//! no listener). The private key is a [`Secret`]: it travels in the log and to Envoy, and is
//! never shown (its `Debug` and `Display` are redacted, and no read endpoint returns it).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A private key (PEM) that is never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `pem`.
    pub fn new(pem: String) -> Self {
        Secret(pem)
    }

    /// The PEM, for the one place that needs it (the SDS resource).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One certificate, its chain and key, and what it says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// The chain, leaf first (PEM).
    pub cert_pem: String,
    /// The private key (PEM): write-only.
    pub key_pem: Secret,
    /// Its DNS names.
    #[serde(default)]
    pub names: Vec<String>,
    /// When it stops being valid (Unix seconds).
    pub not_after: i64,
}

/// A change to the certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum CertificateChange {
    /// Adds or replaces (rotates) certificate `name`; checked (key matches) before proposed.
    Put {
        /// Its name, as listeners name it.
        name: String,
        /// The certificate.
        certificate: Certificate,
    },
    /// Removes certificate `name` (refused while a listener uses it).
    Remove {
        /// Its name.
        name: String,
    },
}
