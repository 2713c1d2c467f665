//! `concord serve` configuration: flags, with environment fallbacks, over an optional TOML file,
//! over defaults that run a local three-node cluster with no editing. Validated once, before
//! anything starts, into a [`ServeConfig`].

use crate::auth::Tokens;
use anyhow::{Context, Result, bail};
use clap::Args;
use concord_discovery::{DiscoveryConfig, GuardConfig, NxDomain, SniTemplate, SourceSpec};
use concord_raft::{NodeConfig, NodeId};
use concord_registry::is_dns_name;
use concord_telemetry::trace::TraceConfig;
use concord_tls::peer::TlsFiles;
use concord_tls::xds::XdsTlsFiles;
use concord_tls::{PeerTls, XdsTls};
use concord_xds::{ListenerMode, ResourceConfig, XdsConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The SNI template of discovered builders unless one is given.
const DEFAULT_SNI_TEMPLATE: &str = "{id}.builders.local";

/// The initial member list of the local cluster that `deploy/local` runs.
pub const DEFAULT_MEMBERS: &str = "1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103";

/// Flags of `concord serve`. Each has an environment fallback and a key in the config file
/// (the flag's name without dashes' prefix, e.g. `node-id = 2`).
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with any of these settings (flags and environment take precedence).
    #[arg(long, env = "CONCORD_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Name of the cluster. A replica refuses peers and data dirs of another cluster.
    /// [default: concord]
    #[arg(long, env = "CONCORD_CLUSTER")]
    pub cluster: Option<String>,

    /// This replica's node id (1 or more), unique in the cluster and tied to its data dir.
    /// [default: 1]
    #[arg(long, env = "CONCORD_NODE_ID")]
    pub node_id: Option<NodeId>,

    /// Directory of this replica's Raft log and state. [default: ./concord-data/node-<id>]
    #[arg(long, env = "CONCORD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Address the peer (Raft) gRPC server listens on. [default: 127.0.0.1:7100+<id>]
    #[arg(long, env = "CONCORD_PEER_ADDR", value_name = "IP:PORT")]
    pub peer_addr: Option<SocketAddr>,

    /// Address other replicas dial to reach this one, if not --peer-addr (e.g. behind NAT or
    /// when listening on 0.0.0.0).
    #[arg(long, env = "CONCORD_ADVERTISE_ADDR", value_name = "HOST:PORT")]
    pub advertise_addr: Option<String>,

    /// Address of the admin HTTP API. A non-loopback address needs --admin-token-file (or
    /// --insecure-admin). [default: 127.0.0.1:8100+<id>]
    #[arg(long, env = "CONCORD_ADMIN_ADDR", value_name = "IP:PORT")]
    pub admin_addr: Option<SocketAddr>,

    /// File of admin API tokens, one `read <token>` or `write <token>` a line (write implies
    /// read; `#` comments). With it, every admin request but /healthz needs `Authorization:
    /// Bearer <token>`. Re-read when it changes.
    #[arg(long, env = "CONCORD_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Serve the admin API on a non-loopback address without tokens: anyone who reaches it may
    /// change the registry. Logs a warning.
    #[arg(long, env = "CONCORD_INSECURE_ADMIN")]
    #[serde(default)]
    pub insecure_admin: bool,

    /// Members of a new cluster as `id=host:port` peer addresses, comma separated. Give every
    /// initial node the same list; a node in it initialises the cluster on its first start
    /// (harmless on all of them, never repeated after a restart). `none` for a node that will
    /// be added later with `concord cluster add-learner`.
    /// [default: 1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103]
    #[arg(long, env = "CONCORD_INITIAL_MEMBERS", value_name = "LIST")]
    pub initial_members: Option<String>,

    /// Leader heartbeat interval in milliseconds. [default: 50]
    #[arg(long, env = "CONCORD_HEARTBEAT_MS", value_name = "MS")]
    pub heartbeat_ms: Option<u64>,

    /// Election timeout range in milliseconds, `min-max`. [default: 150-300]
    #[arg(long, env = "CONCORD_ELECTION_TIMEOUT_MS", value_name = "MIN-MAX")]
    pub election_timeout_ms: Option<String>,

    /// Build a snapshot and compact the log after this many entries. [default: 5000]
    #[arg(long, env = "CONCORD_SNAPSHOT_THRESHOLD", value_name = "ENTRIES")]
    pub snapshot_threshold: Option<u64>,

    /// How long a client request may wait for a leader and for its commit, in milliseconds.
    /// [default: 5000]
    #[arg(long, env = "CONCORD_REQUEST_TIMEOUT_MS", value_name = "MS")]
    pub request_timeout_ms: Option<u64>,

    /// A leader that has not heard from a majority for this many milliseconds refuses writes at
    /// once instead of letting them hang. [default: 1000]
    #[arg(long, env = "CONCORD_QUORUM_TIMEOUT_MS", value_name = "MS")]
    pub quorum_timeout_ms: Option<u64>,

    /// Address of the Envoy ADS server (gRPC, with the gRPC health service).
    /// [default: 127.0.0.1:18000+<id>]
    #[arg(long, env = "CONCORD_XDS_ADDR", value_name = "IP:PORT")]
    pub xds_addr: Option<SocketAddr>,

    /// Name of the builders' listener in Envoy. Same on every replica. [default: builders]
    #[arg(long, env = "CONCORD_ENVOY_LISTENER_NAME", value_name = "NAME")]
    pub envoy_listener_name: Option<String>,

    /// Address Envoy's builders' listener binds, unless an Envoy's bootstrap asks for another.
    /// Same on every replica. [default: 0.0.0.0:10000]
    #[arg(long, env = "CONCORD_ENVOY_LISTENER_ADDR", value_name = "IP:PORT")]
    pub envoy_listener_addr: Option<SocketAddr>,

    /// How Envoy's builders' listener routes: `filter-chains` (one chain per builder, matching
    /// its SNI name) or `sni-cluster` (one chain matching `*.<--sni-suffix>` with the
    /// `sni_cluster` filter; clusters named by SNI, so the listener never changes). sni-cluster
    /// is far faster for Envoy at scale (one change at 1000 builders, SotW: ACKed in 27 ms
    /// against 195 ms; at 10000, 198 ms against 2 s) but routes only names under the suffix.
    /// Same on every replica. [default: sni-cluster when --sni-suffix is given, else
    /// filter-chains]
    #[arg(
        long,
        env = "CONCORD_LISTENER_MODE",
        value_name = "filter-chains|sni-cluster"
    )]
    pub listener_mode: Option<String>,

    /// The builder SNI suffix of sni-cluster mode (e.g. `builders.example.com`), which it makes
    /// the default mode: only names under it reach a builder; any other SNI matches no chain
    /// and is closed. Builders whose SNI is outside it get no cluster (skipped, logged). [default: the fixed tail of
    /// --dns-sni-template, e.g. builders.local]
    #[arg(long, env = "CONCORD_SNI_SUFFIX", value_name = "DOMAIN")]
    pub sni_suffix: Option<String>,

    /// A replica out of contact with the quorum for this many milliseconds reports NOT_SERVING
    /// and ends its Envoys' streams, so they move to a replica that still gets updates.
    /// [default: 3000]
    #[arg(long, env = "CONCORD_STALE_AFTER_MS", value_name = "MS")]
    pub stale_after_ms: Option<u64>,

    /// How long a stream whose Envoy already has a newer revision than this replica waits for
    /// it before ending, so the Envoy tries another replica. [default: 2000]
    #[arg(long, env = "CONCORD_CATCH_UP_TIMEOUT_MS", value_name = "MS")]
    pub catch_up_timeout_ms: Option<u64>,

    /// End each Envoy stream after about this many seconds so Envoys rebalance across
    /// replicas; 0 for never. [default: 0]
    #[arg(long, env = "CONCORD_MAX_STREAM_AGE_SECS", value_name = "SECS")]
    pub max_stream_age_secs: Option<u64>,

    /// Nameserver to poll for builders; turns DNS discovery on (the leader polls).
    #[arg(long, env = "CONCORD_DNS_SERVER", value_name = "IP:PORT")]
    pub dns_server: Option<SocketAddr>,

    /// Names to poll, comma separated or repeated: `txt:NAME:PORT` (Fly-style TXT, builders on
    /// PORT), `srv:NAME` (SRV; targets resolved to addresses), `a:NAME:PORT` (every A/AAAA
    /// address is a builder on PORT).
    #[arg(
        long,
        env = "CONCORD_DNS_SOURCES",
        value_name = "SOURCE",
        value_delimiter = ','
    )]
    pub dns_source: Option<Vec<String>>,

    /// SNI name of a discovered builder; placeholders {id}, {ip}, {region}, {app}, {name}.
    /// [default: {id}.builders.local]
    #[arg(long, env = "CONCORD_DNS_SNI_TEMPLATE", value_name = "TEMPLATE")]
    pub dns_sni_template: Option<String>,

    /// Time between DNS polls in milliseconds. [default: 100]
    #[arg(long, env = "CONCORD_DNS_INTERVAL_MS", value_name = "MS")]
    pub dns_interval_ms: Option<u64>,

    /// Timeout of one DNS query, below the interval. [default: 80% of the interval]
    #[arg(long, env = "CONCORD_DNS_TIMEOUT_MS", value_name = "MS")]
    pub dns_timeout_ms: Option<u64>,

    /// Time between polls after a failed one, until one succeeds. [default: 1000]
    #[arg(long, env = "CONCORD_DNS_ERROR_BACKOFF_MS", value_name = "MS")]
    pub dns_error_backoff_ms: Option<u64>,

    /// A poll that would remove more than this share (0-1) of the discovered builders removes
    /// only builders missing for --dns-removal-hold-ms. [default: 0.5]
    #[arg(long, env = "CONCORD_DNS_MAX_REMOVAL_SHARE", value_name = "SHARE")]
    pub dns_max_removal_share: Option<f64>,

    /// How long a builder must have been missing from every DNS answer before such a large
    /// removal takes it out (a zone reload or DNS failover must not empty the registry); 0
    /// turns the guard off. [default: 5000]
    #[arg(long, env = "CONCORD_DNS_REMOVAL_HOLD_MS", value_name = "MS")]
    pub dns_removal_hold_ms: Option<u64>,

    /// Allow `POST /v1/debug/isolate` on the admin API, which cuts this replica off from its
    /// peers and Envoys as a network partition would. For chaos tests; never in production.
    #[arg(long, env = "CONCORD_ENABLE_FAULT_INJECTION")]
    #[serde(default)]
    pub enable_fault_injection: bool,

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
    #[serde(default)]
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
    #[serde(default)]
    pub xds_bind_node_id: bool,

    /// What NXDOMAIN means: `empty` (the name has no builders) or `error` (change nothing).
    /// NOERROR with no records always means no builders. [default: empty]
    #[arg(long, env = "CONCORD_DNS_NXDOMAIN", value_name = "empty|error")]
    pub dns_nxdomain: Option<String>,

    /// Export OpenTelemetry traces of every registry change (poll or API request, proposal,
    /// commit, apply on each replica, push to each Envoy until its ACK) to this OTLP/gRPC
    /// collector, e.g. `http://127.0.0.1:4317`. Tracing is off without it.
    #[arg(long, env = "CONCORD_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// `service.name` of the exported spans. [default: concord]
    #[arg(long, env = "CONCORD_OTLP_SERVICE_NAME", value_name = "NAME")]
    pub otlp_service_name: Option<String>,

    /// Share (0-1) of changes traced. [default: 1]
    #[arg(long, env = "CONCORD_TRACE_SAMPLING_RATIO", value_name = "RATIO")]
    pub trace_sampling_ratio: Option<f64>,

    /// Ended spans held for export; when the collector is slow or down, spans beyond this are
    /// dropped and counted (concord_trace_spans_dropped_total), never waited for. [default: 4096]
    #[arg(long, env = "CONCORD_OTLP_QUEUE_SIZE", value_name = "SPANS")]
    pub otlp_queue_size: Option<usize>,
}

/// The validated configuration of one replica.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Raft settings.
    pub node: NodeConfig,
    /// Where the admin HTTP API listens.
    pub admin_addr: SocketAddr,
    /// The admin API's tokens and the file they come from; `None`: no tokens needed.
    pub admin_tokens: Option<(PathBuf, Tokens)>,
    /// Whether a non-loopback admin API without tokens was explicitly allowed.
    pub insecure_admin: bool,
    /// Where the ADS server listens.
    pub xds_addr: SocketAddr,
    /// ADS settings.
    pub xds: XdsConfig,
    /// Out of contact with the quorum this long, the replica stops serving Envoys.
    pub stale_after: Duration,
    /// DNS discovery, if configured.
    pub discovery: Option<DiscoveryConfig>,
    /// Whether the fault-injection endpoint is on.
    pub fault_injection: bool,
    /// TLS of the xDS port; plaintext without.
    pub xds_tls: Option<Arc<XdsTls>>,
    /// Plaintext was asked for (--insecure).
    pub insecure: bool,
    /// Trace export, if configured.
    pub tracing: Option<TraceConfig>,
}

impl ServeArgs {
    /// Layers flags/env over the file (if any) and validates the result.
    pub fn resolve(self) -> Result<ServeConfig> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => ServeArgs::default(),
        };
        let a = self.over(file);
        let discovery = dns_config(&a)?;
        let tracing = trace_config(&a, a.node_id.unwrap_or(1))?;
        let mode = listener_mode(&a, discovery.as_ref())?;

        let cluster = a.cluster.clone().unwrap_or_else(|| "concord".into());
        let cluster_ok = !cluster.is_empty()
            && cluster.len() <= 63
            && cluster
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        if !cluster_ok {
            bail!("invalid --cluster {cluster:?}: use 1 to 63 ASCII letters, digits, '-' or '_'");
        }
        let node_id = a.node_id.unwrap_or(1);
        if node_id == 0 {
            bail!("invalid --node-id 0: node ids start at 1");
        }
        let tls = tls_config(&a, &cluster, node_id);
        let default_port = |base: u64, flag: &str| -> Result<SocketAddr> {
            let port = u16::try_from(base + node_id).with_context(|| {
                format!("node id {node_id} is too large for a default {flag}; set {flag}")
            })?;
            Ok(SocketAddr::from(([127, 0, 0, 1], port)))
        };
        let peer_addr = match a.peer_addr {
            Some(addr) => addr,
            None => default_port(7100, "--peer-addr")?,
        };
        let admin_addr = match a.admin_addr {
            Some(addr) => addr,
            None => default_port(8100, "--admin-addr")?,
        };
        let xds_addr = match a.xds_addr {
            Some(addr) => addr,
            None => default_port(18000, "--xds-addr")?,
        };
        let admin_tokens = match &a.admin_token_file {
            Some(path) => Some((
                path.clone(),
                Tokens::load(path).map_err(anyhow::Error::msg)?,
            )),
            None => None,
        };
        if admin_tokens.is_none() && !admin_addr.ip().is_loopback() && !a.insecure_admin {
            bail!(
                "refusing to serve the admin API on {admin_addr} without tokens: anyone who \
                 reaches it could change the registry; set --admin-token-file, or \
                 --insecure-admin to accept that"
            );
        }
        if peer_addr == admin_addr || peer_addr == xds_addr || admin_addr == xds_addr {
            bail!(
                "--peer-addr ({peer_addr}), --admin-addr ({admin_addr}) and --xds-addr \
                 ({xds_addr}) need a port each"
            );
        }
        let advertise = match a.advertise_addr {
            Some(addr) => {
                check_host_port(&addr).context("invalid --advertise-addr")?;
                addr
            }
            None if peer_addr.ip().is_unspecified() => {
                bail!(
                    "--peer-addr {peer_addr} is not an address peers can dial; set --advertise-addr"
                )
            }
            None => peer_addr.to_string(),
        };
        let members = parse_members(a.initial_members.as_deref().unwrap_or(DEFAULT_MEMBERS))?;
        if let Some(listed) = members.get(&node_id)
            && *listed != advertise
        {
            bail!(
                "conflicting node id: --initial-members lists node {node_id} at {listed}, but this \
                 node advertises {advertise}; fix --node-id or the member list"
            );
        }
        let heartbeat = a.heartbeat_ms.unwrap_or(50);
        let (emin, emax) = parse_range(a.election_timeout_ms.as_deref().unwrap_or("150-300"))?;
        if heartbeat == 0 || heartbeat >= emin {
            bail!(
                "--heartbeat-ms {heartbeat} must be above 0 and below the election timeout \
                 minimum {emin}"
            );
        }
        let snapshot_threshold = a.snapshot_threshold.unwrap_or(5000);
        if snapshot_threshold == 0 {
            bail!("--snapshot-threshold must be at least 1");
        }
        let request_timeout = a.request_timeout_ms.unwrap_or(5000);
        let quorum_timeout = a.quorum_timeout_ms.unwrap_or(1000);
        if request_timeout < emax || quorum_timeout <= heartbeat {
            bail!(
                "--request-timeout-ms ({request_timeout}) must cover an election ({emax} ms) and \
                 --quorum-timeout-ms ({quorum_timeout}) must exceed the heartbeat ({heartbeat} ms)"
            );
        }
        let stale_after = a.stale_after_ms.unwrap_or(3000);
        if stale_after <= emax {
            bail!(
                "--stale-after-ms {stale_after} must exceed the election timeout maximum {emax}, \
                 or every election would turn replicas away from their Envoys"
            );
        }
        // Last: a bad value elsewhere is reported before a missing certificate.
        let (peer_tls, xds_tls) = tls?;
        let listener_name = a.envoy_listener_name.unwrap_or_else(|| "builders".into());
        if listener_name.is_empty()
            || !listener_name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        {
            bail!("invalid --envoy-listener-name {listener_name:?}");
        }
        let xds = XdsConfig {
            identifier: format!("concord/{cluster}/node-{node_id}"),
            catch_up_timeout: Duration::from_millis(a.catch_up_timeout_ms.unwrap_or(2000)),
            max_stream_age: match a.max_stream_age_secs.unwrap_or(0) {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
            resources: ResourceConfig {
                listener_name,
                listener_addr: a
                    .envoy_listener_addr
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 10000))),
                mode,
                ..ResourceConfig::default()
            },
        };
        let data_dir = a
            .data_dir
            .unwrap_or_else(|| PathBuf::from(format!("concord-data/node-{node_id}")));
        Ok(ServeConfig {
            node: NodeConfig {
                cluster,
                node_id,
                data_dir,
                listen_addr: peer_addr,
                initial_members: members,
                heartbeat: Duration::from_millis(heartbeat),
                election_timeout_min: Duration::from_millis(emin),
                election_timeout_max: Duration::from_millis(emax),
                snapshot_threshold,
                request_timeout: Duration::from_millis(request_timeout),
                quorum_timeout: Duration::from_millis(quorum_timeout),
                tls: peer_tls,
            },
            admin_addr,
            admin_tokens,
            insecure_admin: a.insecure_admin,
            xds_addr,
            xds,
            stale_after: Duration::from_millis(stale_after),
            discovery,
            fault_injection: a.enable_fault_injection,
            xds_tls,
            insecure: a.insecure,
            tracing,
        })
    }

    /// `self` where set, else `file`.
    fn over(self, file: ServeArgs) -> ServeArgs {
        ServeArgs {
            config: self.config,
            cluster: self.cluster.or(file.cluster),
            node_id: self.node_id.or(file.node_id),
            data_dir: self.data_dir.or(file.data_dir),
            peer_addr: self.peer_addr.or(file.peer_addr),
            advertise_addr: self.advertise_addr.or(file.advertise_addr),
            admin_addr: self.admin_addr.or(file.admin_addr),
            admin_token_file: self.admin_token_file.or(file.admin_token_file),
            insecure_admin: self.insecure_admin || file.insecure_admin,
            initial_members: self.initial_members.or(file.initial_members),
            heartbeat_ms: self.heartbeat_ms.or(file.heartbeat_ms),
            election_timeout_ms: self.election_timeout_ms.or(file.election_timeout_ms),
            snapshot_threshold: self.snapshot_threshold.or(file.snapshot_threshold),
            request_timeout_ms: self.request_timeout_ms.or(file.request_timeout_ms),
            quorum_timeout_ms: self.quorum_timeout_ms.or(file.quorum_timeout_ms),
            xds_addr: self.xds_addr.or(file.xds_addr),
            envoy_listener_name: self.envoy_listener_name.or(file.envoy_listener_name),
            envoy_listener_addr: self.envoy_listener_addr.or(file.envoy_listener_addr),
            listener_mode: self.listener_mode.or(file.listener_mode),
            sni_suffix: self.sni_suffix.or(file.sni_suffix),
            stale_after_ms: self.stale_after_ms.or(file.stale_after_ms),
            catch_up_timeout_ms: self.catch_up_timeout_ms.or(file.catch_up_timeout_ms),
            max_stream_age_secs: self.max_stream_age_secs.or(file.max_stream_age_secs),
            dns_server: self.dns_server.or(file.dns_server),
            dns_source: self.dns_source.or(file.dns_source),
            dns_sni_template: self.dns_sni_template.or(file.dns_sni_template),
            dns_interval_ms: self.dns_interval_ms.or(file.dns_interval_ms),
            dns_timeout_ms: self.dns_timeout_ms.or(file.dns_timeout_ms),
            dns_error_backoff_ms: self.dns_error_backoff_ms.or(file.dns_error_backoff_ms),
            dns_max_removal_share: self.dns_max_removal_share.or(file.dns_max_removal_share),
            dns_removal_hold_ms: self.dns_removal_hold_ms.or(file.dns_removal_hold_ms),
            dns_nxdomain: self.dns_nxdomain.or(file.dns_nxdomain),
            otlp_endpoint: self.otlp_endpoint.or(file.otlp_endpoint),
            otlp_service_name: self.otlp_service_name.or(file.otlp_service_name),
            trace_sampling_ratio: self.trace_sampling_ratio.or(file.trace_sampling_ratio),
            otlp_queue_size: self.otlp_queue_size.or(file.otlp_queue_size),
            enable_fault_injection: self.enable_fault_injection || file.enable_fault_injection,
            tls_ca: self.tls_ca.or(file.tls_ca),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            insecure: self.insecure || file.insecure,
            xds_tls_cert: self.xds_tls_cert.or(file.xds_tls_cert),
            xds_tls_key: self.xds_tls_key.or(file.xds_tls_key),
            xds_client_ca: self.xds_client_ca.or(file.xds_client_ca),
            xds_bind_node_id: self.xds_bind_node_id || file.xds_bind_node_id,
        }
    }
}

/// Peer TLS and xDS TLS; `None` is plaintext.
type Transport = (Option<Arc<PeerTls>>, Option<Arc<XdsTls>>);

/// Peer and xDS TLS, loaded (so a missing file or a certificate for another node is a
/// configuration error). Plaintext only with `--insecure`.
fn tls_config(a: &ServeArgs, cluster: &str, node_id: NodeId) -> Result<Transport> {
    let peer = match (&a.tls_ca, &a.tls_cert, &a.tls_key) {
        (None, None, None) => None,
        (Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => bail!("--tls-ca, --tls-cert and --tls-key go together: give all three"),
    };
    match (&peer, a.insecure) {
        (None, false) => bail!(
            "TLS is required: give --tls-ca, --tls-cert and --tls-key (`concord certs` makes a \
             development CA and node certificates), or run plaintext with --insecure"
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
    let serving = match (&a.xds_tls_cert, &a.xds_tls_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => a.tls_cert.clone().zip(a.tls_key.clone()),
        _ => bail!("--xds-tls-cert and --xds-tls-key go together: give both"),
    };
    let Some((cert, key)) = serving else {
        if a.xds_client_ca.is_some() || a.xds_bind_node_id {
            bail!("--xds-client-ca and --xds-bind-node-id need TLS on the xDS port");
        }
        return Ok((peer_tls, None));
    };
    if a.xds_bind_node_id && a.xds_client_ca.is_none() {
        bail!("--xds-bind-node-id needs --xds-client-ca (Envoys must present certificates)");
    }
    let xds = XdsTls::new(
        XdsTlsFiles {
            cert,
            key,
            client_ca: a.xds_client_ca.clone(),
            bind_node_id: a.xds_bind_node_id,
        },
        cluster,
    )
    .context("invalid xDS TLS")?;
    Ok((peer_tls, Some(xds)))
}

/// The trace export settings; `None` when no `--otlp-endpoint` is given.
fn trace_config(a: &ServeArgs, node_id: NodeId) -> Result<Option<TraceConfig>> {
    let Some(endpoint) = a.otlp_endpoint.clone().filter(|e| !e.is_empty()) else {
        if a.trace_sampling_ratio.is_some() || a.otlp_service_name.is_some() {
            bail!("--trace-sampling-ratio and --otlp-service-name need --otlp-endpoint");
        }
        return Ok(None);
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        bail!("invalid --otlp-endpoint {endpoint:?}: give a URL, e.g. http://127.0.0.1:4317");
    }
    let sampling_ratio = a.trace_sampling_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sampling_ratio) {
        bail!("invalid --trace-sampling-ratio {sampling_ratio}: give a share from 0 to 1");
    }
    let queue_size = a.otlp_queue_size.unwrap_or(4096);
    if queue_size == 0 {
        bail!("invalid --otlp-queue-size 0: give at least 1");
    }
    Ok(Some(TraceConfig {
        endpoint,
        service_name: a
            .otlp_service_name
            .clone()
            .unwrap_or_else(|| "concord".into()),
        sampling_ratio,
        replica: node_id,
        queue_size,
        export_timeout: Duration::from_secs(5),
    }))
}

/// The listener mode, with the sni-cluster suffix checked against the DNS SNI template.
fn listener_mode(a: &ServeArgs, dns: Option<&DiscoveryConfig>) -> Result<ListenerMode> {
    let template = match dns {
        Some(d) => d.template.clone(),
        None => SniTemplate::parse(DEFAULT_SNI_TEMPLATE)?,
    };
    let tail = template.fixed_tail();
    // Naming the suffix says every builder is under it: then the faster mode is the default.
    let default = if a.sni_suffix.is_some() {
        "sni-cluster"
    } else {
        "filter-chains"
    };
    match a.listener_mode.as_deref().unwrap_or(default) {
        "filter-chains" => Ok(ListenerMode::FilterChains),
        "sni-cluster" => {
            let suffix = match &a.sni_suffix {
                Some(s) => s
                    .trim_start_matches("*.")
                    .trim_matches('.')
                    .to_ascii_lowercase(),
                None => match tail.as_deref().and_then(|t| t.strip_prefix('.')) {
                    Some(t) => t.to_string(),
                    None => bail!(
                        "--listener-mode sni-cluster needs --sni-suffix (the SNI template {:?} \
                         has no fixed domain to take it from)",
                        template.as_str()
                    ),
                },
            };
            if !is_dns_name(&suffix) {
                bail!("invalid --sni-suffix {suffix:?}: expected a lower-case DNS name");
            }
            if dns.is_some()
                && !tail
                    .as_deref()
                    .is_some_and(|t| t.ends_with(&format!(".{suffix}")))
            {
                bail!(
                    "--dns-sni-template {:?} makes names outside --sni-suffix {suffix:?}; \
                     sni-cluster mode could not route to those builders",
                    template.as_str()
                );
            }
            Ok(ListenerMode::SniCluster { suffix })
        }
        other => bail!("invalid --listener-mode {other:?}: use filter-chains or sni-cluster"),
    }
}

/// The DNS discovery settings; `None` when no `--dns-server` is given.
fn dns_config(a: &ServeArgs) -> Result<Option<DiscoveryConfig>> {
    let Some(server) = a.dns_server else {
        if a.dns_source.as_ref().is_some_and(|s| !s.is_empty()) {
            bail!("--dns-source needs --dns-server (the nameserver to ask)");
        }
        return Ok(None);
    };
    let sources = a
        .dns_source
        .iter()
        .flatten()
        .map(|s| s.trim().parse::<SourceSpec>().map_err(anyhow::Error::from))
        .collect::<Result<Vec<_>>>()?;
    if sources.is_empty() {
        bail!("--dns-server needs at least one --dns-source (e.g. txt:_instances.internal:8372)");
    }
    let template = SniTemplate::parse(
        a.dns_sni_template
            .as_deref()
            .unwrap_or(DEFAULT_SNI_TEMPLATE),
    )?;
    let interval = a.dns_interval_ms.unwrap_or(100);
    if interval == 0 {
        bail!("--dns-interval-ms must be at least 1");
    }
    let timeout = a.dns_timeout_ms.unwrap_or((interval * 4 / 5).max(1));
    if timeout == 0 || timeout >= interval {
        bail!("--dns-timeout-ms {timeout} must be above 0 and below --dns-interval-ms {interval}");
    }
    let share = a.dns_max_removal_share.unwrap_or(0.5);
    if !(0.0..=1.0).contains(&share) {
        bail!("--dns-max-removal-share {share} must be between 0 and 1");
    }
    let nxdomain = match a.dns_nxdomain.as_deref().unwrap_or("empty") {
        "empty" => NxDomain::Empty,
        "error" => NxDomain::Error,
        other => bail!("invalid --dns-nxdomain {other:?}: use empty or error"),
    };
    Ok(Some(DiscoveryConfig {
        server,
        sources,
        template,
        interval: Duration::from_millis(interval),
        timeout: Duration::from_millis(timeout),
        error_backoff: Duration::from_millis(a.dns_error_backoff_ms.unwrap_or(1000).max(interval)),
        guard: GuardConfig {
            max_removal_share: share,
            hold: a
                .dns_removal_hold_ms
                .map_or(GuardConfig::DEFAULT_HOLD, Duration::from_millis),
        },
        nxdomain,
    }))
}

fn read_file(path: &Path) -> Result<ServeArgs> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

fn check_host_port(s: &str) -> Result<()> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("{s:?} is not host:port"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("{s:?} has an invalid port"))?;
    if host.is_empty() || port == 0 {
        bail!("{s:?} is not host:port with a non-zero port");
    }
    Ok(())
}

/// Parses `1=host:port,2=host:port`; `none` or an empty string is the empty set.
pub fn parse_members(s: &str) -> Result<BTreeMap<NodeId, String>> {
    let mut members = BTreeMap::new();
    let s = s.trim();
    if s.is_empty() || s == "none" {
        return Ok(members);
    }
    for item in s.split(',') {
        let (id, addr) = item.trim().split_once('=').with_context(|| {
            format!("invalid --initial-members entry {item:?}: expected id=host:port")
        })?;
        let id: NodeId = id
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .with_context(|| format!("invalid node id {id:?} in --initial-members"))?;
        check_host_port(addr)
            .with_context(|| format!("invalid address for node {id} in --initial-members"))?;
        if members.values().any(|a| a == addr) {
            bail!("--initial-members lists {addr} twice");
        }
        if members.insert(id, addr.to_string()).is_some() {
            bail!("--initial-members lists node {id} twice");
        }
    }
    Ok(members)
}

fn parse_range(s: &str) -> Result<(u64, u64)> {
    let err = || format!("invalid --election-timeout-ms {s:?}: expected MIN-MAX, e.g. 150-300");
    let (a, b) = s.split_once('-').with_context(err)?;
    let (a, b): (u64, u64) = (
        a.trim().parse().with_context(err)?,
        b.trim().parse().with_context(err)?,
    );
    if a == 0 || a >= b {
        bail!("{}: MIN must be above 0 and below MAX", err());
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            insecure: true,
            ..ServeArgs::default()
        }
    }

    #[test]
    fn plaintext_needs_insecure() {
        let err = format!("{:#}", ServeArgs::default().resolve().unwrap_err());
        assert!(err.contains("TLS is required"), "{err}");
        let err = format!(
            "{:#}",
            ServeArgs {
                tls_ca: Some("ca.pem".into()),
                ..ServeArgs::default()
            }
            .resolve()
            .unwrap_err()
        );
        assert!(err.contains("go together"), "{err}");
    }

    #[test]
    fn defaults_make_a_local_cluster() {
        let c = args().resolve().unwrap();
        assert_eq!(c.node.node_id, 1);
        assert_eq!(c.node.listen_addr.to_string(), "127.0.0.1:7101");
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:8101");
        assert_eq!(c.node.initial_members.len(), 3);
        let c = ServeArgs {
            node_id: Some(3),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.node.listen_addr.to_string(), "127.0.0.1:7103");
    }

    #[test]
    fn bad_values_are_named() {
        let cases: Vec<(ServeArgs, &str)> = vec![
            (
                ServeArgs {
                    node_id: Some(0),
                    ..args()
                },
                "node ids start at 1",
            ),
            (
                ServeArgs {
                    initial_members: Some("1=127.0.0.1:7101,2".into()),
                    ..args()
                },
                "expected id=host:port",
            ),
            (
                ServeArgs {
                    initial_members: Some("1=127.0.0.1:7101,2=127.0.0.1:7101".into()),
                    ..args()
                },
                "twice",
            ),
            (
                ServeArgs {
                    peer_addr: Some("127.0.0.1:9999".parse().unwrap()),
                    ..args()
                },
                "conflicting node id",
            ),
            (
                ServeArgs {
                    election_timeout_ms: Some("300-100".into()),
                    ..args()
                },
                "MIN must be above 0 and below MAX",
            ),
            (
                ServeArgs {
                    cluster: Some("a b".into()),
                    ..args()
                },
                "invalid --cluster",
            ),
        ];
        for (a, want) in cases {
            let err = format!("{:#}", a.resolve().unwrap_err());
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }

    #[test]
    fn listener_modes() {
        let mode = |a: ServeArgs| a.resolve().map(|c| c.xds.resources.mode);
        assert_eq!(mode(args()).unwrap(), ListenerMode::FilterChains);
        let sni = |suffix: &str| ListenerMode::SniCluster {
            suffix: suffix.into(),
        };
        let with = |m: &str, s: Option<&str>| ServeArgs {
            listener_mode: Some(m.into()),
            sni_suffix: s.map(Into::into),
            ..args()
        };
        // A suffix alone chooses sni-cluster; filter-chains can still be asked for.
        let suffix_only = ServeArgs {
            sni_suffix: Some("b.example.com".into()),
            ..args()
        };
        assert_eq!(mode(suffix_only).unwrap(), sni("b.example.com"));
        assert_eq!(
            mode(with("filter-chains", Some("b.example.com"))).unwrap(),
            ListenerMode::FilterChains
        );
        // The suffix defaults to the SNI template's domain.
        assert_eq!(
            mode(with("sni-cluster", None)).unwrap(),
            sni("builders.local")
        );
        assert_eq!(
            mode(with("sni-cluster", Some("*.b.example.com"))).unwrap(),
            sni("b.example.com")
        );
        for (a, want) in [
            (with("sni", None), "invalid --listener-mode"),
            (with("sni-cluster", Some("a b")), "invalid --sni-suffix"),
            (
                ServeArgs {
                    dns_server: Some("127.0.0.1:53".parse().unwrap()),
                    dns_source: Some(vec!["txt:_i.internal:9443".into()]),
                    dns_sni_template: Some("{id}.other.test".into()),
                    ..with("sni-cluster", Some("builders.test"))
                },
                "outside --sni-suffix",
            ),
        ] {
            let err = format!("{:#}", a.resolve().unwrap_err());
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }

    #[test]
    fn admin_exposure_needs_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let open = "0.0.0.0:8101".parse().ok();
        let err = format!(
            "{:#}",
            ServeArgs {
                admin_addr: open,
                ..args()
            }
            .resolve()
            .unwrap_err()
        );
        assert!(err.contains("without tokens"), "{err}");
        let c = ServeArgs {
            admin_addr: open,
            insecure_admin: true,
            ..args()
        }
        .resolve()
        .unwrap();
        assert!(c.insecure_admin && c.admin_tokens.is_none());
        let path = dir.path().join("tokens");
        std::fs::write(&path, "write 0123456789abcdef0123\n").unwrap();
        let c = ServeArgs {
            admin_addr: open,
            admin_token_file: Some(path.clone()),
            ..args()
        }
        .resolve()
        .unwrap();
        assert!(c.admin_tokens.is_some());
        // A malformed file is refused before anything starts, naming the file and the line.
        std::fs::write(&path, "write 0123456789abcdef0123\nwrite\n").unwrap();
        let err = format!(
            "{:#}",
            ServeArgs {
                admin_token_file: Some(path),
                ..args()
            }
            .resolve()
            .unwrap_err()
        );
        assert!(
            err.contains("invalid admin token file") && err.contains("line 2"),
            "{err}"
        );
        // IPv6 loopback needs nothing.
        let c = ServeArgs {
            admin_addr: "[::1]:8101".parse().ok(),
            ..args()
        }
        .resolve()
        .unwrap();
        assert!(c.admin_tokens.is_none());
    }

    #[test]
    fn file_is_overridden_by_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "node-id = 2\ncluster = \"prod\"\n").unwrap();
        let c = ServeArgs {
            config: Some(path.clone()),
            cluster: Some("flag".into()),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.node.node_id, 2);
        assert_eq!(c.node.cluster, "flag");
        std::fs::write(&path, "node_idd = 2\n").unwrap();
        let err = format!(
            "{:#}",
            ServeArgs {
                config: Some(path),
                ..args()
            }
            .resolve()
            .unwrap_err()
        );
        assert!(err.contains("unknown field"), "{err}");
    }
}
