//! Mutual TLS between replicas. Both ends present their node certificate and check the other's
//! against the cluster CA: the server requires a client certificate (which node it names is
//! checked per request against the membership by the peer service), and the client accepts a
//! server only if its certificate names the node id it means to reach.

use crate::reload::{self, Reloadable};
use crate::{TlsError, identity, provider};
use concord_telemetry::tasks::Tasks;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::path::PathBuf;
use std::sync::Arc;

/// The files of a replica's TLS identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA bundle that signs the cluster's node certificates (PEM).
    pub ca: PathBuf,
    /// This node's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
}

/// What is loaded from [`TlsFiles`].
pub struct Loaded {
    roots: Arc<RootCertStore>,
    key: Arc<CertifiedKey>,
    server: Arc<ServerConfig>,
}

/// A replica's peer-channel TLS: its certificate, the cluster CA, reloaded on change.
pub struct PeerTls {
    cluster: String,
    node_id: u64,
    files: TlsFiles,
    loaded: Arc<Reloadable<Loaded>>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("cluster", &self.cluster)
            .field("node_id", &self.node_id)
            .field("files", &self.files)
            .finish()
    }
}

/// Loads a certificate chain and key and checks that they belong together.
pub fn certified_key(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = reload::certs(cert)?;
    let key = reload::key(key)?;
    let ck = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| TlsError::Rustls(format!("{}: {e}", cert.display())))?;
    Ok(Arc::new(ck))
}

fn load(files: &TlsFiles, cluster: &str, node_id: u64) -> Result<Loaded, TlsError> {
    let roots = reload::roots(&files.ca)?;
    let key = certified_key(&files.cert, &files.key)?;
    let leaf = key.cert.first().expect("chain checked non-empty");
    identity::log_expiry("peer", &files.cert, leaf);
    match identity::node_id(leaf, cluster) {
        Some(id) if id == node_id => {}
        other => {
            return Err(TlsError::Identity(format!(
                "{} does not name node {node_id} of cluster {cluster:?} (URI SAN {}; it names {}); \
                 make one with `concord certs`",
                files.cert.display(),
                identity::node_uri(cluster, node_id),
                match other {
                    Some(id) => format!("node {id}"),
                    None => format!("{:?}", identity::uris(leaf)),
                }
            )));
        }
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| TlsError::Rustls(format!("{}: {e}", files.ca.display())))?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Fixed(key.clone())));
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        roots,
        key,
        server: Arc::new(server),
    })
}

impl PeerTls {
    /// Loads node `node_id`'s files; fails if they do not load or the certificate does not name
    /// this node of this cluster.
    pub fn new(files: TlsFiles, cluster: &str, node_id: u64) -> Result<Arc<PeerTls>, TlsError> {
        let (f, c) = (files.clone(), cluster.to_string());
        let loaded = Reloadable::new(
            "peer",
            vec![files.ca.clone(), files.cert.clone(), files.key.clone()],
            move || load(&f, &c, node_id),
        )?;
        Ok(Arc::new(PeerTls {
            cluster: cluster.to_string(),
            node_id,
            files,
            loaded,
        }))
    }

    /// Reloads the files when they change, until `tasks` is cancelled.
    pub fn watch(&self, tasks: &Tasks) {
        // Loaded before logging started: say now what was loaded.
        if let Some(leaf) = self.loaded.current().key.cert.first() {
            identity::log_expiry("peer", &self.files.cert, leaf);
        }
        self.loaded.watch(tasks);
    }

    /// Changes whenever the files were reloaded: connections made before carry the old
    /// certificate, and a client may redial.
    pub fn generation(&self) -> u64 {
        self.loaded.generation()
    }

    /// The cluster name.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The server config for a new connection (requires a client certificate from the CA).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.loaded.current().server.clone()
    }

    /// A client config for a new connection to node `to`: presents this node's certificate and
    /// accepts only a server whose certificate the CA signed for node `to` of this cluster.
    pub fn client_config(&self, to: u64) -> Arc<ClientConfig> {
        let loaded = self.loaded.current();
        let verifier = IdentityVerifier {
            roots: loaded.roots.clone(),
            uri: identity::node_uri(&self.cluster, to),
            provider: provider(),
        };
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(Fixed(loaded.key.clone())));
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    /// The node id a peer's certificate (DER, leaf) names in this cluster.
    pub fn peer_node_id(&self, leaf: &[u8]) -> Option<u64> {
        identity::node_id(leaf, &self.cluster)
    }
}

/// Always the same certificate and key (the config is rebuilt when they change).
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for Fixed {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Checks a server certificate against the CA and for one URI SAN, ignoring the host name
/// dialled: replicas are named by node id, and their addresses may change.
#[derive(Debug)]
pub struct IdentityVerifier {
    roots: Arc<RootCertStore>,
    uri: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl IdentityVerifier {
    /// A verifier for certificates that `roots` signed with URI SAN `uri`.
    pub fn new(roots: Arc<RootCertStore>, uri: String) -> Self {
        IdentityVerifier {
            roots,
            uri,
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if !identity::uris(end_entity).contains(&self.uri) {
            let msg = format!(
                "the certificate does not name {}; it names {:?}",
                self.uri,
                identity::uris(end_entity)
            );
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                    std::io::Error::other(msg),
                ))),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
