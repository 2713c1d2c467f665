//! `GET`/`PUT /v1/config`: the services half's desired state (services, route tables,
//! listeners), read and set as a whole (`concord get`, `concord apply`).

use concord_registry::services::Desired;
use serde::{Deserialize, Serialize};

/// `GET /v1/config`: the desired state as this replica has applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The registry revision it was read at.
    pub revision: u64,
    /// The cluster's entry format (services need 2).
    pub format: u32,
    /// The desired state.
    pub desired: Desired,
}

/// The largest body `PUT /v1/config` takes (and file `concord apply` reads).
pub const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// `PUT /v1/services/{service}/endpoints/{id}`: an instance registers itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterEndpoint {
    /// Where it serves.
    pub addr: std::net::SocketAddr,
    /// Its load-balancing weight (1-128).
    #[serde(default = "one")]
    pub weight: u32,
    /// Its lease: it leaves every Envoy unless renewed within this (`10s`); none: it stays
    /// until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<concord_registry::services::Duration>,
    /// Labels (`version: v2`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

/// `GET /v1/services/{service}/endpoints`: the registered endpoints of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointList {
    /// The registry revision it was read at.
    pub revision: u64,
    /// The service.
    pub service: String,
    /// Its registered endpoints, by id.
    pub endpoints: Vec<concord_registry::services::Endpoint>,
}

/// `POST /v1/services/{service}/endpoints/{id}/renew`: the lease was renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewed {
    /// It lapses this long from now unless renewed again (milliseconds).
    pub ttl_ms: u64,
}

/// `PUT /v1/certificates/{name}`: a certificate for TLS termination (write-only key).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutCertificate {
    /// The chain, leaf first (PEM).
    pub cert_pem: String,
    /// Its private key (PEM); never returned.
    pub key_pem: String,
}

impl std::fmt::Debug for PutCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutCertificate")
            .field("cert_pem", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// One certificate as `GET /v1/certificates` shows it: never its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateSummary {
    /// Its name.
    pub name: String,
    /// Its DNS names.
    pub names: Vec<String>,
    /// When it stops being valid (Unix seconds).
    pub not_after: i64,
}

/// `GET /v1/certificates`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateList {
    /// The registry revision it was read at.
    pub revision: u64,
    /// Every certificate, by name.
    pub certificates: Vec<CertificateSummary>,
}
