//! TLS builders for the tests: a test CA, builder servers that each hold a certificate for their
//! own SNI name and greet every connection with `builder <id>`, and a client that connects with a
//! given SNI and checks the certificate against the CA, so a greeting proves where Envoy routed.

use anyhow::{Context, Result, bail};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A new CA.
    pub fn new() -> Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "concord test CA");
        Ok(TestCa {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)?,
        })
    }

    /// The CA certificate in PEM (for tools such as `openssl s_client -CAfile`).
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate and key for `name`.
    pub fn leaf(&self, name: &str) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec![name.to_string()])?.signed_by(&key, &self.issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((cert.der().clone(), key))
    }

    /// A leaf certificate and key for `names`, in PEM.
    pub fn leaf_pem(&self, names: &[&str]) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)?.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A client config that trusts this CA and offers ALPN `alpn`.
    pub fn client_config(&self, alpn: &[&str]) -> Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone())?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        Ok(Arc::new(config))
    }

    fn client(&self) -> Result<TlsConnector> {
        connector(self.issuer.der().clone())
    }
}

/// A TLS client that trusts only `ca`.
fn connector(ca: CertificateDer<'static>) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca)?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A running TLS builder.
pub struct TlsBuilder {
    /// Builder id (what it greets with).
    pub id: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections it completed.
    pub served: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsBuilder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsBuilder {
    /// Starts a builder `id` with a certificate for `sni` on a free loopback port.
    pub async fn start(ca: &TestCa, id: &str, sni: &str) -> Result<TlsBuilder> {
        Self::start_on(ca, id, sni, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a builder `id` with a certificate for `sni` on `listen`.
    pub async fn start_on(
        ca: &TestCa,
        id: &str,
        sni: &str,
        listen: SocketAddr,
    ) -> Result<TlsBuilder> {
        let (cert, key) = ca.leaf(sni)?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicU64::new(0));
        let greeting = format!("builder {id}\n");
        let counter = served.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let greeting = greeting.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tls.write_all(greeting.as_bytes()).await;
                        let _ = tls.shutdown().await;
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        Ok(TlsBuilder {
            id: id.to_string(),
            addr,
            served,
            task,
        })
    }
}

/// Connects to `addr` (an Envoy listener) with SNI `sni`, verifies the server certificate for
/// that name against the CA, and returns the greeting.
pub async fn probe(ca: &TestCa, addr: SocketAddr, sni: &str) -> Result<String> {
    probe_with(ca.client()?, addr, sni).await
}

/// [`probe`] trusting the CA certificate in the PEM file `ca` (a demo builder's `--ca-out`).
pub async fn probe_pem(ca: &std::path::Path, addr: SocketAddr, sni: &str) -> Result<String> {
    let pem = std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?;
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(&pem)
        .with_context(|| format!("no certificate in {}", ca.display()))?;
    probe_with(connector(der)?, addr, sni).await
}

async fn probe_with(connector: TlsConnector, addr: SocketAddr, sni: &str) -> Result<String> {
    let name = ServerName::try_from(sni.to_string())?;
    let fut = async {
        let tcp = TcpStream::connect(addr).await.context("connect")?;
        let mut tls = connector
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        let mut buf = String::new();
        tls.read_to_string(&mut buf).await.ok();
        if buf.is_empty() {
            bail!("no greeting");
        }
        Ok(buf.trim().to_string())
    };
    tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .context("probe timed out")?
}
