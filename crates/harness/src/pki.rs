//! The certificates of a test cluster, made by the real `concord certs`: a CA per cluster, node
//! certificates for the replicas and client certificates for Envoys and scripted clients, plus
//! gRPC channels that use them.

use crate::concord_bin;
use anyhow::{Context, Result, bail};
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use tonic::transport::{Channel, Endpoint};

/// A directory of certificates written by `concord certs` for one cluster.
#[derive(Debug, Clone)]
pub struct Pki {
    /// Where the files are.
    pub dir: PathBuf,
    /// The cluster they are for.
    pub cluster: String,
}

impl Pki {
    /// A new CA in `dir` (created) with certificates for `nodes`.
    pub fn create(dir: &Path, cluster: &str, nodes: &[u64]) -> Result<Pki> {
        let pki = Pki {
            dir: dir.to_path_buf(),
            cluster: cluster.to_string(),
        };
        let ids: Vec<String> = nodes.iter().map(u64::to_string).collect();
        pki.certs(&["--nodes", &ids.join(",")])?;
        Ok(pki)
    }

    /// Runs `concord certs` on this directory with `args`.
    pub fn certs(&self, args: &[&str]) -> Result<()> {
        let out = Command::new(concord_bin())
            .arg("certs")
            .arg("--dir")
            .arg(&self.dir)
            .args(["--cluster", &self.cluster])
            .args(args)
            .output()
            .context("run concord certs")?;
        if !out.status.success() {
            bail!(
                "concord certs {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Node `id`'s certificate and key, issued if missing.
    pub fn node(&self, id: u64) -> Result<(PathBuf, PathBuf)> {
        let files = (
            self.dir.join(format!("node-{id}.pem")),
            self.dir.join(format!("node-{id}-key.pem")),
        );
        if !files.0.exists() {
            self.certs(&["--nodes", &id.to_string()])?;
        }
        Ok(files)
    }

    /// Envoy `id`'s client certificate and key, issued if missing.
    pub fn envoy(&self, id: &str) -> Result<(PathBuf, PathBuf)> {
        let files = (
            self.dir.join(format!("envoy-{id}.pem")),
            self.dir.join(format!("envoy-{id}-key.pem")),
        );
        if !files.0.exists() {
            self.certs(&["--envoys", id])?;
        }
        Ok(files)
    }

    /// `concord serve` flags for node `id`.
    pub fn serve_args(&self, id: u64) -> Result<Vec<String>> {
        let (cert, key) = self.node(id)?;
        Ok(vec![
            "--tls-ca".into(),
            self.ca().display().to_string(),
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ])
    }

    /// `concord envoy-bootstrap` flags for Envoy `id` (TLS to the replicas, with a client
    /// certificate they may ask for).
    pub fn bootstrap_args(&self, id: &str) -> Result<Vec<String>> {
        let (cert, key) = self.envoy(id)?;
        Ok(vec![
            "--tls-ca".into(),
            self.ca().display().to_string(),
            "--cluster".into(),
            self.cluster.clone(),
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ])
    }

    /// A client config that trusts this CA (checking the host name dialled) and presents
    /// `client` (certificate and key files), if any.
    pub fn client_config(
        &self,
        client: Option<(&Path, &Path)>,
    ) -> Result<Arc<rustls::ClientConfig>> {
        client_config(&self.ca(), client)
    }
}

/// A client config that trusts `ca` (checking the host name dialled) and presents `client`.
pub fn client_config(
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>> {
    let roots = concord_tls::reload::roots(ca)?;
    let builder = rustls::ClientConfig::builder_with_provider(concord_tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder.with_client_auth_cert(
            concord_tls::reload::certs(cert)?,
            concord_tls::reload::key(key)?,
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A gRPC channel to `addr` over TLS with `config` (connected now).
pub async fn channel(addr: &str, config: Arc<rustls::ClientConfig>) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_with_connector(concord_tls::net::connector(move || config.clone()))
        .await?)
}

/// The leaf certificate a TLS server at `addr` presents (DER), trusting `config`.
pub async fn served_cert(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<CertificateDer<'static>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let (_, conn) = tls.get_ref();
    conn.peer_certificates()
        .and_then(|c| c.first().cloned())
        .context("no server certificate")
}
