//! TLS for concord: who a certificate names ([`identity`]), the PEM files a replica loads and
//! reloads when they change ([`reload`]), mutual TLS between replicas ([`peer`]), TLS and
//! optional client certificates on the xDS port ([`xds`]), and the accept and connect halves that
//! tonic runs over ([`net`]).
//!
//! Certificates identify replicas and Envoys by a URI SAN, not by host name:
//! `spiffe://concord/<cluster>/node/<id>` for replica `<id>` and
//! `spiffe://concord/<cluster>/envoy/<node-id>` for an Envoy. A replica dials a peer by node id
//! and checks that the peer's certificate names that node, whatever address it dials.

pub mod identity;
pub mod net;
pub mod peer;
pub mod reload;
pub mod served;
pub mod xds;

use std::path::PathBuf;
use std::sync::Arc;

pub use identity::{envoy_uri, node_uri};
pub use peer::PeerTls;
pub use xds::XdsTls;

/// The crypto provider of every TLS config here (ring, as the rest of the workspace).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file holds no usable PEM of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// rustls refused the material (key does not match the certificate, bad CA, ...).
    #[error("{0}")]
    Rustls(String),
    /// The certificate does not name what it must (this node of this cluster).
    #[error("{0}")]
    Identity(String),
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Rustls(e.to_string())
    }
}
