//! Transport security settings: mutual TLS between replicas, TLS (and client certificates) on
//! the xDS port, and the explicit opt-out for plaintext.

use anyhow::{Context, Result, bail};
use clap::Args;
use concord_raft::NodeId;
use concord_tls::peer::TlsFiles;
use concord_tls::xds::XdsTlsFiles;
use concord_tls::{PeerTls, XdsTls};
use std::path::PathBuf;
use std::sync::Arc;

/// Certificates of the peer channel and the xDS port.
#[derive(Debug, Clone, PartialEq, Args)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
    /// CA bundle (PEM) that signs the cluster's node certificates. With --tls-cert and
    /// --tls-key, turns on mutual TLS between replicas: a peer must present a certificate from
    /// this CA that names a member node id (URI SAN spiffe://concord/<cluster>/node/<id>).
    /// `concord certs` makes development ones. Files are reloaded when they change.
    #[arg(long, env = "CONCORD_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// This node's certificate chain (PEM), naming this node id; serves peers and, unless
    /// --xds-tls-cert, Envoys.
    #[arg(long, env = "CONCORD_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// This node's private key (PEM).
    #[arg(long, env = "CONCORD_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Run the peer channel and the xDS port in plaintext, without --tls-*: anyone who reaches
    /// them can append Raft entries or read the registry. For tests and experiments only; logged
    /// as a warning.
    #[arg(long, env = "CONCORD_INSECURE")]
    pub insecure: bool,

    /// Serving certificate (PEM) of the xDS port, if not --tls-cert. Gives the xDS port TLS even
    /// with --insecure.
    #[arg(long, env = "CONCORD_XDS_TLS_CERT", value_name = "FILE")]
    pub xds_tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --xds-tls-cert.
    #[arg(long, env = "CONCORD_XDS_TLS_KEY", value_name = "FILE")]
    pub xds_tls_key: Option<PathBuf>,

    /// CA bundle (PEM) of Envoy client certificates: with it, an Envoy must present a
    /// certificate from this CA to stream (mutual TLS on the xDS port).
    #[arg(long, env = "CONCORD_XDS_CLIENT_CA", value_name = "FILE")]
    pub xds_client_ca: Option<PathBuf>,

    /// With --xds-client-ca: an Envoy's node.id must be the one its certificate names (URI SAN
    /// spiffe://concord/<cluster>/envoy/<node-id>), or its stream is refused.
    #[arg(long, env = "CONCORD_XDS_BIND_NODE_ID")]
    pub xds_bind_node_id: bool,
}

/// Peer TLS and xDS TLS; `None` is plaintext.
pub type Transport = (Option<Arc<PeerTls>>, Option<Arc<XdsTls>>);

impl TlsArgs {
    /// Peer and xDS TLS, loaded (so a missing file or a certificate for another node is a
    /// configuration error). Plaintext only with `--insecure`.
    pub fn transport(&self, cluster: &str, node_id: NodeId) -> Result<Transport> {
        let peer = match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (None, None, None) => None,
            (Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => bail!("--tls-ca, --tls-cert and --tls-key go together: give all three"),
        };
        match (&peer, self.insecure) {
            (None, false) => bail!(
                "TLS is required: give --tls-ca, --tls-cert and --tls-key (`concord certs` makes \
                 a development CA and node certificates), or run plaintext with --insecure"
            ),
            (Some(_), true) => bail!("--insecure and --tls-* contradict each other: choose one"),
            _ => {}
        }
        let peer_tls = match peer {
            Some(files) => {
                Some(PeerTls::new(files, cluster, node_id).context("invalid peer TLS (--tls-*)")?)
            }
            None => None,
        };
        let serving = match (&self.xds_tls_cert, &self.xds_tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => self.tls_cert.clone().zip(self.tls_key.clone()),
            _ => bail!("--xds-tls-cert and --xds-tls-key go together: give both"),
        };
        let Some((cert, key)) = serving else {
            if self.xds_client_ca.is_some() || self.xds_bind_node_id {
                bail!("--xds-client-ca and --xds-bind-node-id need TLS on the xDS port");
            }
            return Ok((peer_tls, None));
        };
        if self.xds_bind_node_id && self.xds_client_ca.is_none() {
            bail!("--xds-bind-node-id needs --xds-client-ca (Envoys must present certificates)");
        }
        let xds = XdsTls::new(
            XdsTlsFiles {
                cert,
                key,
                client_ca: self.xds_client_ca.clone(),
                bind_node_id: self.xds_bind_node_id,
            },
            cluster,
        )
        .context("invalid xDS TLS")?;
        Ok((peer_tls, Some(xds)))
    }
}
