//! TLS on the xDS port: the replica's serving certificate, and optionally Envoy client
//! certificates from a CA (mutual TLS), whose Envoy id can be bound to the `node.id` an Envoy
//! reports. Reloaded on change like the peer files.

use crate::reload::{self, Reloadable};
use crate::{TlsError, identity, peer, provider};
use concord_telemetry::tasks::Tasks;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use std::path::PathBuf;
use std::sync::Arc;

/// Settings of TLS on the xDS port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsTlsFiles {
    /// Serving certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA that signs Envoy client certificates; with it, Envoys must present one.
    pub client_ca: Option<PathBuf>,
    /// Require an Envoy's `node.id` to be the one its client certificate names.
    pub bind_node_id: bool,
}

/// TLS of a replica's xDS port.
pub struct XdsTls {
    cluster: String,
    files: XdsTlsFiles,
    server: Arc<Reloadable<(Arc<ServerConfig>, Arc<rustls::sign::CertifiedKey>)>>,
}

impl std::fmt::Debug for XdsTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsTls")
            .field("cluster", &self.cluster)
            .field("files", &self.files)
            .finish()
    }
}

fn load(
    files: &XdsTlsFiles,
) -> Result<(Arc<ServerConfig>, Arc<rustls::sign::CertifiedKey>), TlsError> {
    let key = peer::certified_key(&files.cert, &files.key)?;
    if let Some(leaf) = key.cert.first() {
        identity::log_expiry("xds", &files.cert, leaf);
    }
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(reload::roots(ca)?, provider())
                    .build()
                    .map_err(|e| TlsError::Rustls(format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Fixed(key.clone())));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(config), key))
}

#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl XdsTls {
    /// Loads the files (an error is a configuration error).
    pub fn new(files: XdsTlsFiles, cluster: &str) -> Result<Arc<XdsTls>, TlsError> {
        let mut paths = vec![files.cert.clone(), files.key.clone()];
        paths.extend(files.client_ca.clone());
        let f = files.clone();
        let server = Reloadable::new("xds", paths, move || load(&f))?;
        Ok(Arc::new(XdsTls {
            cluster: cluster.to_string(),
            files,
            server,
        }))
    }

    /// Reloads the files when they change, until `tasks` is cancelled.
    pub fn watch(&self, tasks: &Tasks) {
        // Loaded before logging started: say now what was loaded.
        if let Some(leaf) = self.server.current().1.cert.first() {
            identity::log_expiry("xds", &self.files.cert, leaf);
        }
        self.server.watch(tasks);
    }

    /// The server config for a new connection.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.current().0.clone()
    }

    /// Whether Envoys must present a client certificate.
    pub fn requires_client_cert(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Whether an Envoy's `node.id` must match its certificate.
    pub fn binds_node_id(&self) -> bool {
        self.files.bind_node_id
    }

    /// The Envoy id a client certificate (DER, leaf) names in this cluster.
    pub fn envoy_id(&self, leaf: &[u8]) -> Option<String> {
        identity::envoy_id(leaf, &self.cluster)
    }
}
