//! `concord envoy-bootstrap`: prints an Envoy bootstrap (YAML) that streams from every
//! replica. It talks to no replica: the flags say everything the bootstrap needs.

use super::Exit;
use clap::Args;
use std::process::ExitCode;

/// `concord envoy-bootstrap`.
#[derive(Args)]
pub struct BootstrapArgs {
    /// The Envoy's node id, as the replicas will show it.
    #[arg(long)]
    node_id: String,
    /// The Envoy's node cluster.
    #[arg(long, default_value = "builders")]
    node_cluster: String,
    /// xDS address (host:port) of every replica, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    servers: Vec<String>,
    /// Stream from the first server while it is healthy; the others are fallbacks.
    #[arg(long)]
    prefer_first: bool,
    /// Envoy's own admin API address.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin_addr: std::net::SocketAddr,
    /// Bind the builders' listener on this address instead of the replicas' default (for
    /// several Envoys on one host).
    #[arg(long, value_name = "IP:PORT")]
    listener_address: Option<std::net::SocketAddr>,
    /// Bind every services listener this many ports from the port `concord apply` gave it (for
    /// several Envoys on one host; each needs its own offset).
    #[arg(
        long,
        default_value_t = 0,
        allow_negative_numbers = true,
        value_name = "N"
    )]
    port_offset: i32,
    /// CA (PEM) that signs the replicas' xDS certificates: the ADS cluster (and its gRPC health
    /// checks) then uses TLS. Without it, plaintext (replicas run with --insecure).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// The Envoy's client certificate (PEM), for replicas that require one (--xds-client-ca).
    #[arg(long, value_name = "FILE", requires = "tls_key", requires = "tls_ca")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// The replicas' cluster name: with --tls-ca, Envoy accepts only replica certificates that
    /// name a node of this cluster (URI SAN spiffe://concord/<cluster>/node/<id>).
    #[arg(long, default_value = "concord")]
    cluster: String,
    /// With --tls-ca, accept any certificate the CA signed (for replica certificates that do not
    /// carry concord's node URI, e.g. a separate --xds-tls-cert).
    #[arg(long)]
    any_server_identity: bool,
    /// The ADS protocol: `delta` (only changed resources travel; an Envoy that fails over gets
    /// only what differs) or `sotw` (state of the world: every resource in every response).
    #[arg(long, value_name = "delta|sotw", default_value = "delta")]
    xds_protocol: concord_xds::bootstrap::XdsProtocol,
    /// Fetch a builder's cluster only when a client first names it (on-demand CDS; delta only),
    /// for replicas in `--listener-mode on-demand`: the Envoy then holds the builders its
    /// clients reach, not the whole registry, and starts at once however large it is. Builder-only
    /// Envoys: the clusters of services are not fetched this way.
    #[arg(long)]
    on_demand_clusters: bool,
    /// Do not stream Envoy's stats to the replicas. Rollouts are judged on these stats (each
    /// version's requests and errors), so an Envoy without them takes no part in the judgement.
    /// Streaming needs Envoy's periodic stats flush (every --stats-flush-interval-ms), which at
    /// thousands of builders costs Envoy ~100 ms of main thread per flush; without any sink,
    /// Envoy computes stats only when its admin API is asked.
    #[arg(long, help_heading = "Envoy's own telemetry")]
    no_rollout_stats: bool,
    /// Send Envoy's stats to this statsd server (UDP) every --stats-flush-interval-ms.
    #[arg(long, value_name = "IP:PORT", help_heading = "Envoy's own telemetry")]
    statsd: Option<std::net::SocketAddr>,
    /// Stream Envoy's stats to this gRPC metrics service (envoy.service.metrics.v3) every
    /// --stats-flush-interval-ms.
    #[arg(long, value_name = "IP:PORT", help_heading = "Envoy's own telemetry")]
    metrics_service: Option<std::net::SocketAddr>,
    /// Serve Envoy's stats for Prometheus on this address (GET /metrics or /stats/prometheus),
    /// and nothing else of its admin API.
    #[arg(long, value_name = "IP:PORT", help_heading = "Envoy's own telemetry")]
    prometheus_addr: Option<std::net::SocketAddr>,
    /// Keep no stats whose whole name matches this regular expression (RE2; repeat for more),
    /// e.g. 'cluster\.builder_.*\.upstream_cx_.*' to drop per-builder connection series.
    #[arg(long, value_name = "REGEX", help_heading = "Envoy's own telemetry")]
    stats_exclude: Vec<String>,
    /// How often the stats sinks get stats: the replicas (unless --no-rollout-stats), --statsd,
    /// --metrics-service.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 5000,
        help_heading = "Envoy's own telemetry"
    )]
    stats_flush_interval_ms: u64,
    /// Ask the replicas for a JSON access log on every listener they send this Envoy: a line per
    /// builder connection and per service request, on Envoy's stdout or stderr.
    #[arg(
        long,
        value_name = "stdout|stderr|off",
        default_value = "off",
        help_heading = "Envoy's own telemetry"
    )]
    access_log: concord_xds::access_log::AccessLog,
}

impl BootstrapArgs {
    /// Prints the bootstrap.
    pub fn run(self) -> ExitCode {
        // Envoy resolves relative paths against its own working directory: make them absolute.
        let abs = |p: &std::path::Path| {
            std::path::absolute(p)
                .unwrap_or_else(|_| p.to_path_buf())
                .display()
                .to_string()
        };
        let tls = self
            .tls_ca
            .as_deref()
            .map(|ca| concord_xds::bootstrap::BootstrapTls {
                ca: abs(ca),
                server_uri_prefix: (!self.any_server_identity)
                    .then(|| format!("spiffe://concord/{}/node/", self.cluster)),
                client: self
                    .tls_cert
                    .as_deref()
                    .zip(self.tls_key.as_deref())
                    .map(|(c, k)| (abs(c), abs(k))),
            });
        let config = concord_xds::bootstrap::BootstrapConfig {
            tls,
            node_id: self.node_id,
            node_cluster: self.node_cluster,
            servers: self.servers,
            prefer_first: self.prefer_first,
            admin: self.admin_addr,
            listener_address: self.listener_address,
            port_offset: self.port_offset,
            protocol: self.xds_protocol,
            access_log: self.access_log,
            on_demand_clusters: self.on_demand_clusters,
            telemetry: concord_xds::bootstrap::Telemetry {
                concord_stats: !self.no_rollout_stats,
                statsd: self.statsd,
                metrics_service: self.metrics_service,
                prometheus: self.prometheus_addr,
                stats_exclude: self.stats_exclude,
                flush_interval: std::time::Duration::from_millis(self.stats_flush_interval_ms),
            },
        };
        match concord_xds::bootstrap::render(&config) {
            Ok(yaml) => {
                print!("{yaml}");
                Exit::Success.into()
            }
            Err(e) => {
                eprintln!("concord: {e}");
                Exit::Usage.into()
            }
        }
    }
}
