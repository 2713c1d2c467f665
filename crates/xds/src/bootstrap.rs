//! The Envoy bootstrap that connects an Envoy to every replica (DESIGN "How Envoys reach the
//! cluster"): ADS over a static cluster of all replicas with HTTP/2 keepalives, gRPC health
//! checks and a short reconnect backoff, so that when a replica dies or steps aside the Envoy is
//! streaming from another within about a second. Envoy's own telemetry goes where the
//! operator says ([`Telemetry`]): stats sinks (statsd, a gRPC metrics service, and the replicas
//! themselves, which judge rollouts on them), a listener that serves only its Prometheus stats,
//! and stats left out by regex.

use crate::access_log::{ACCESS_LOG_KEY, AccessLog};
use crate::resources::{LISTENER_ADDRESS_KEY, PORT_OFFSET_KEY};
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

/// What goes into a bootstrap.
#[derive(Debug, Clone)]
pub struct BootstrapConfig {
    /// The Envoy's node id (shown in the replicas' status).
    pub node_id: String,
    /// The Envoy's node cluster.
    pub node_cluster: String,
    /// xDS addresses of every replica (`host:port`).
    pub servers: Vec<String>,
    /// Prefer the first server while it is healthy (priority 0); the others are the fallback.
    /// Without it the Envoy picks any healthy replica.
    pub prefer_first: bool,
    /// Envoy's admin API address.
    pub admin: SocketAddr,
    /// Ask the replicas for the builders' listener on this address instead of their default.
    pub listener_address: Option<SocketAddr>,
    /// Ask the replicas for every services listener this many ports from its file's port (0:
    /// as written).
    pub port_offset: i32,
    /// TLS to the replicas; plaintext without.
    pub tls: Option<BootstrapTls>,
    /// Which ADS protocol the Envoy speaks.
    pub protocol: XdsProtocol,
    /// Envoy's own stats: sinks, a Prometheus listener, exclusions.
    pub telemetry: Telemetry,
    /// Ask the replicas for JSON access logs on every listener, to Envoy's stdout or stderr.
    pub access_log: AccessLog,
    /// No wildcard cluster subscription: Envoy asks for a builder's cluster when a client first
    /// names it (on-demand CDS, replicas in `--listener-mode on-demand`), so it holds only the
    /// builders its clients reach. Delta only; services' clusters are not fetched this way.
    pub on_demand_clusters: bool,
}

/// The most stats in one message of the sink to the replicas: a few hundred bytes each, so a
/// message stays far under what a replica takes ([`crate::envoy_stats::MAX_MESSAGE`]) however
/// many stats the Envoy has.
pub const STATS_BATCH_SIZE: u32 = 1000;

/// Where Envoy's own stats go.
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// Stream the stats to the replica the Envoy gets its config from, over the ADS cluster (its
    /// TLS, its failover): the replicas judge rollouts on them (issue 15). Needs the periodic
    /// flush, which at thousands of builders costs Envoy's main thread ~100 ms each time.
    pub concord_stats: bool,
    /// Send every stat to this statsd server (UDP) each flush.
    pub statsd: Option<SocketAddr>,
    /// Stream every stat to this gRPC `envoy.service.metrics.v3.MetricsService` each flush.
    pub metrics_service: Option<SocketAddr>,
    /// Serve the stats in the Prometheus text format on this address (`/metrics` and
    /// `/stats/prometheus`), and nothing else of the admin API.
    pub prometheus: Option<SocketAddr>,
    /// Keep no stats whose whole name matches any of these regular expressions (RE2, matched
    /// against the entire name as Envoy does): series nobody reads cost memory in Envoy and
    /// money in the metrics backend.
    pub stats_exclude: Vec<String>,
    /// How often the sinks get stats (only with a sink, the replicas counting as one: without
    /// one, stats are computed only when the admin API is asked).
    pub flush_interval: std::time::Duration,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            concord_stats: true,
            statsd: None,
            metrics_service: None,
            prometheus: None,
            stats_exclude: Vec::new(),
            flush_interval: std::time::Duration::from_secs(5),
        }
    }
}

/// The ADS protocol variant an Envoy uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdsProtocol {
    /// Delta (incremental) xDS: only changed resources travel (`api_type: DELTA_GRPC`).
    #[default]
    Delta,
    /// State of the world: every response carries every resource (`api_type: GRPC`).
    Sotw,
}

/// A protocol name that is neither `delta` nor `sotw`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid xDS protocol {0:?}: use delta or sotw")]
pub struct UnknownProtocol(pub String);

impl std::str::FromStr for XdsProtocol {
    type Err = UnknownProtocol;
    fn from_str(s: &str) -> Result<Self, UnknownProtocol> {
        match s {
            "delta" => Ok(XdsProtocol::Delta),
            "sotw" => Ok(XdsProtocol::Sotw),
            other => Err(UnknownProtocol(other.to_string())),
        }
    }
}

/// TLS of the ADS cluster: the CA that signs the replicas' xDS certificates, the identity they
/// must carry, and the Envoy's client certificate when the replicas require one.
#[derive(Debug, Clone)]
pub struct BootstrapTls {
    /// CA bundle (PEM file) that signs the replicas' certificates.
    pub ca: String,
    /// Accept only replica certificates with a URI SAN that starts with this (e.g.
    /// `spiffe://concord/<cluster>/node/`); any certificate from the CA without.
    pub server_uri_prefix: Option<String>,
    /// The Envoy's client certificate chain and key (PEM files), for mutual TLS.
    pub client: Option<(String, String)>,
}

/// Why a bootstrap cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// No replica given.
    #[error("no servers: give every replica's xDS address with --servers")]
    NoServers,
    /// A server is not host:port.
    #[error("invalid server {0:?}: expected host:port")]
    BadServer(String),
    /// A name that would break the YAML.
    #[error("invalid {0} {1:?}: use letters, digits, '-', '_', '.' or ':'")]
    BadName(&'static str, String),
    /// A file path that would break the YAML.
    #[error("invalid path {0:?}: no quotes, backslashes or control characters")]
    BadPath(String),
    /// On-demand clusters over state of the world.
    #[error(
        "--on-demand-clusters needs --xds-protocol delta (Envoy asks for clusters on demand only over delta xDS)"
    )]
    OnDemandNeedsDelta,
    /// A stats exclusion that is not a regular expression.
    #[error("invalid --stats-exclude {0:?}: {1}")]
    BadRegex(String, String),
    /// A flush interval Envoy refuses.
    #[error("invalid --stats-flush-interval-ms {0}: give 1 to 300000 ms")]
    BadFlushInterval(u128),
}

/// `regex` as a YAML single-quoted string, if it is a regular expression.
fn regex_yaml(regex: &str) -> Result<String, BootstrapError> {
    let bad = |why: String| BootstrapError::BadRegex(regex.to_string(), why);
    if regex.is_empty() || regex.chars().any(char::is_control) {
        return Err(bad("empty, or a control character".into()));
    }
    regex::Regex::new(regex).map_err(|e| bad(e.to_string()))?;
    Ok(format!("'{}'", regex.replace('\'', "''")))
}

/// A static cluster `name` of one address; HTTP/2 for gRPC.
fn static_cluster(w: &mut String, name: &str, addr: SocketAddr, http2: bool) {
    let _ = writeln!(
        w,
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s"
    );
    if http2 {
        w.push_str(
            "    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
",
        );
    }
    let _ = writeln!(
        w,
        "    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: \"{}\", port_value: {} }} }} }}",
        addr.ip(),
        addr.port()
    );
}

/// Stats sinks, the flush, and exclusions.
fn stats(w: &mut String, t: &Telemetry) -> Result<(), BootstrapError> {
    if t.concord_stats || t.statsd.is_some() || t.metrics_service.is_some() {
        let ms = t.flush_interval.as_millis();
        if !(1..=300_000).contains(&ms) {
            return Err(BootstrapError::BadFlushInterval(ms));
        }
        w.push_str("stats_sinks:\n");
        if let Some(a) = t.statsd {
            let _ = writeln!(
                w,
                "- name: envoy.stat_sinks.statsd
  typed_config:
    \"@type\": type.googleapis.com/envoy.config.metrics.v3.StatsdSink
    address: {{ socket_address: {{ address: \"{}\", port_value: {}, protocol: UDP }} }}",
                a.ip(),
                a.port()
            );
        }
        if t.concord_stats {
            // Counters as deltas, so a replica sums what each flush adds whichever replica got
            // the flushes before; full names (no tags as labels), which name the cluster;
            // histograms as buckets only (each flush interval's): buckets add up over Envoys
            // and flushes, summaries' quantiles do not (the replicas sum `upstream_rq_time`
            // per version for rollouts). To the ADS
            // cluster (`concord_xds`, below): the replicas serve it next to ADS.
            let _ = writeln!(
                w,
                "- name: envoy.stat_sinks.metrics_service
  typed_config:
    \"@type\": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig
    transport_api_version: V3
    grpc_service: {{ envoy_grpc: {{ cluster_name: concord_xds }} }}
    report_counters_as_deltas: true
    emit_tags_as_labels: false
    histogram_emit_mode: HISTOGRAM
    batch_size: {STATS_BATCH_SIZE}"
            );
        }
        if t.metrics_service.is_some() {
            w.push_str(
                "- name: envoy.stat_sinks.metrics_service
  typed_config:
    \"@type\": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig
    transport_api_version: V3
    grpc_service: { envoy_grpc: { cluster_name: concord_metrics_service } }
",
            );
        }
        let _ = writeln!(w, "stats_flush_interval: {}s", ms as f64 / 1000.0);
    } else {
        // Envoy's periodic stats flush (every 5 s) builds a snapshot of every counter and gauge
        // on the main thread, which also applies xDS: at 10,000 clusters it held up a change's
        // ACK by 90-140 ms now and then (issue 17). With no sink the flush serves no one; the
        // admin API (`/stats`, `/stats/prometheus`) flushes when it is asked.
        w.push_str("stats_flush_on_admin: true\n");
    }
    if !t.stats_exclude.is_empty() {
        w.push_str("stats_config:\n  stats_matcher:\n    exclusion_list:\n      patterns:\n");
        for r in &t.stats_exclude {
            let _ = writeln!(w, "      - safe_regex: {{ regex: {} }}", regex_yaml(r)?);
        }
    }
    Ok(())
}

/// A listener serving only the admin API's Prometheus stats.
fn prometheus_listener(w: &mut String, addr: SocketAddr) {
    let _ = writeln!(
        w,
        "  listeners:
  - name: concord_prometheus
    address: {{ socket_address: {{ address: \"{}\", port_value: {} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: concord_prometheus
          route_config:
            virtual_hosts:
            - name: stats
              domains: [\"*\"]
              routes:
              - match: {{ path: /stats/prometheus }}
                route: {{ cluster: concord_envoy_admin }}
              - match: {{ path: /metrics }}
                route: {{ cluster: concord_envoy_admin, regex_rewrite: {{ pattern: {{ regex: '.*' }}, substitution: /stats/prometheus }} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}",
        addr.ip(),
        addr.port()
    );
}

fn path(s: &str) -> Result<&str, BootstrapError> {
    if s.is_empty() || s.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        return Err(BootstrapError::BadPath(s.to_string()));
    }
    Ok(s)
}

fn plain(what: &'static str, s: &str) -> Result<(), BootstrapError> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(BootstrapError::BadName(what, s.to_string()))
    }
}

fn split(server: &str) -> Result<(&str, u16), BootstrapError> {
    let bad = || BootstrapError::BadServer(server.to_string());
    let (host, port) = server.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    plain("server host", host).map_err(|_| bad())?;
    Ok((host, port))
}

/// Renders the bootstrap as YAML.
pub fn render(c: &BootstrapConfig) -> Result<String, BootstrapError> {
    if c.servers.is_empty() {
        return Err(BootstrapError::NoServers);
    }
    if c.on_demand_clusters && c.protocol == XdsProtocol::Sotw {
        return Err(BootstrapError::OnDemandNeedsDelta);
    }
    plain("node id", &c.node_id)?;
    plain("node cluster", &c.node_cluster)?;
    let servers = c
        .servers
        .iter()
        .map(|s| split(s))
        .collect::<Result<Vec<_>, _>>()?;
    // Names need DNS; addresses do not.
    let all_ips = servers.iter().all(|(h, _)| h.parse::<IpAddr>().is_ok());
    let mut y = String::new();
    let w = &mut y;
    let _ = writeln!(w, "# Envoy bootstrap written by `concord envoy-bootstrap`.");
    let _ = writeln!(
        w,
        "# ADS from any of {} concord replica(s); see the concord README.",
        servers.len()
    );
    let _ = writeln!(
        w,
        "node:\n  id: {}\n  cluster: {}",
        c.node_id, c.node_cluster
    );
    if c.listener_address.is_some() || c.port_offset != 0 || c.access_log != AccessLog::Off {
        let _ = writeln!(w, "  metadata:");
    }
    if let Some(addr) = c.listener_address {
        let _ = writeln!(w, "    {LISTENER_ADDRESS_KEY}: \"{addr}\"");
    }
    if c.port_offset != 0 {
        let _ = writeln!(w, "    {PORT_OFFSET_KEY}: \"{}\"", c.port_offset);
    }
    if c.access_log != AccessLog::Off {
        let _ = writeln!(w, "    {ACCESS_LOG_KEY}: \"{}\"", c.access_log.as_str());
    }
    let _ = writeln!(
        w,
        "admin:\n  address:\n    socket_address: {{ address: \"{}\", port_value: {} }}",
        c.admin.ip(),
        c.admin.port()
    );
    stats(w, &c.telemetry)?;
    let api_type = match c.protocol {
        XdsProtocol::Delta => "DELTA_GRPC",
        XdsProtocol::Sotw => "GRPC",
    };
    let _ = write!(
        w,
        "dynamic_resources:
  ads_config:
    api_type: {api_type}
"
    );
    w.push_str(
        "    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
    - envoy_grpc:
        cluster_name: concord_xds
        # Reconnect fast when a replica dies or ends the stream (jittered, at most 0.5 s).
        retry_policy:
          retry_back_off: { base_interval: 0.1s, max_interval: 0.5s }
",
    );
    // On-demand: no wildcard cluster subscription (Envoy 1.38+ delivers a wildcard CDS
    // response to the wildcard watcher only, so on-demand requests beside one time out).
    if !c.on_demand_clusters {
        w.push_str("  cds_config: { ads: {}, resource_api_version: V3 }\n");
    }
    w.push_str(
        "  lds_config: { ads: {}, resource_api_version: V3 }
static_resources:
",
    );
    if let Some(addr) = c.telemetry.prometheus {
        prometheus_listener(w, addr);
    }
    w.push_str("  clusters:\n  - name: concord_xds\n");
    let _ = writeln!(
        w,
        "    type: {}",
        if all_ips { "STATIC" } else { "STRICT_DNS" }
    );
    w.push_str(
        "    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options:
            # Notice a dead replica within seconds even if no packet says so.
            connection_keepalive: { interval: 1s, timeout: 1s }
    # Health changes reach the load balancer at once. Envoy merges them over 1 s by default, so
    # a dead replica's ejection that came within a second of another change (a restarted
    # replica passing its health check) waited up to a second, while every reconnect went to
    # the dead replica again.
    common_lb_config: { update_merge_window: 0s }
    # A replica that loses the quorum reports NOT_SERVING and is skipped on reconnect.
    health_checks:
    - timeout: 0.5s
      interval: 1s
      no_traffic_interval: 1s
      unhealthy_threshold: 1
      healthy_threshold: 1
      grpc_health_check: {}
    # A replica that refuses the connection (it died) is ejected at the first refusal, so the
    # next reconnect goes to another one instead of waiting for the next health check; it comes
    # back after a second (longer if it keeps refusing). So is one that ends the stream with
    # UNAVAILABLE (a gateway failure to Envoy): one that serves only another group of Envoys
    # (--serve-envoys), is out of contact with the quorum, or is shutting down.
    outlier_detection:
      split_external_local_origin_errors: true
      consecutive_local_origin_failure: 1
      enforcing_consecutive_local_origin_failure: 100
      consecutive_5xx: 1000000
      consecutive_gateway_failure: 1
      enforcing_consecutive_gateway_failure: 100
      enforcing_success_rate: 0
      enforcing_local_origin_success_rate: 0
      interval: 1s
      base_ejection_time: 1s
      max_ejection_time: 10s
      max_ejection_percent: 100
",
    );
    if let Some(tls) = &c.tls {
        let _ = writeln!(
            w,
            "    # TLS to the replicas (and their gRPC health checks), checked against the CA.
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          alpn_protocols: [h2]"
        );
        if let Some((cert, key)) = &tls.client {
            let _ = writeln!(
                w,
                "          tls_certificates:
          - certificate_chain: {{ filename: \"{}\" }}
            private_key: {{ filename: \"{}\" }}",
                path(cert)?,
                path(key)?
            );
        }
        let _ = writeln!(
            w,
            "          validation_context:\n            trusted_ca: {{ filename: \"{}\" }}",
            path(&tls.ca)?
        );
        if let Some(prefix) = &tls.server_uri_prefix {
            plain("server identity", &prefix.replace('/', ""))?;
            let _ = writeln!(
                w,
                "            match_typed_subject_alt_names:
            - san_type: URI
              matcher: {{ prefix: \"{prefix}\" }}"
            );
        }
    }
    w.push_str("    load_assignment:\n      cluster_name: concord_xds\n      endpoints:\n");
    for (i, (host, port)) in servers.iter().enumerate() {
        let priority = if c.prefer_first && i > 0 { 1 } else { 0 };
        let _ = writeln!(
            w,
            "      - priority: {priority}\n        lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: \"{host}\", port_value: {port} }} }} }}"
        );
    }
    if let Some(addr) = c.telemetry.metrics_service {
        static_cluster(w, "concord_metrics_service", addr, true);
    }
    if c.telemetry.prometheus.is_some() {
        static_cluster(w, "concord_envoy_admin", c.admin, false);
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_demand_clusters_leave_out_the_wildcard_subscription_and_need_delta() {
        let y = render(&config()).unwrap();
        assert!(y.contains("  cds_config: { ads: {}"));
        let c = BootstrapConfig {
            on_demand_clusters: true,
            ..config()
        };
        let y = render(&c).unwrap();
        assert!(!y.contains("cds_config"), "{y}");
        assert!(y.contains("  lds_config: { ads: {}"));
        let sotw = BootstrapConfig {
            protocol: XdsProtocol::Sotw,
            ..c
        };
        assert!(matches!(
            render(&sotw),
            Err(BootstrapError::OnDemandNeedsDelta)
        ));
    }

    fn config() -> BootstrapConfig {
        BootstrapConfig {
            node_id: "envoy-1".into(),
            node_cluster: "builders".into(),
            servers: vec!["127.0.0.1:18001".into(), "127.0.0.1:18002".into()],
            prefer_first: true,
            admin: "127.0.0.1:9901".parse().unwrap(),
            listener_address: Some("127.0.0.1:10001".parse().unwrap()),
            port_offset: 100,
            tls: None,
            protocol: XdsProtocol::Delta,
            telemetry: Telemetry::default(),
            access_log: AccessLog::Off,
            on_demand_clusters: false,
        }
    }

    #[test]
    fn an_access_log_is_asked_for_in_node_metadata() {
        let y = render(&BootstrapConfig {
            access_log: AccessLog::Stderr,
            listener_address: None,
            port_offset: 0,
            ..config()
        })
        .unwrap();
        assert!(
            y.contains("  metadata:\n    concord.access_log: \"stderr\"\n"),
            "{y}"
        );
        assert!(!render(&config()).unwrap().contains("access_log"));
    }

    #[test]
    fn telemetry_adds_sinks_a_prometheus_listener_and_exclusions() {
        let y = render(&BootstrapConfig {
            telemetry: Telemetry {
                concord_stats: false,
                statsd: Some("127.0.0.1:8125".parse().unwrap()),
                metrics_service: Some("127.0.0.1:9000".parse().unwrap()),
                prometheus: Some("0.0.0.0:9102".parse().unwrap()),
                stats_exclude: vec![
                    r"^cluster\.builder_.*\.upstream_cx_.*".into(),
                    "it's".into(),
                ],
                flush_interval: std::time::Duration::from_millis(2500),
            },
            ..config()
        })
        .unwrap();
        assert!(y.contains("envoy.stat_sinks.statsd"), "{y}");
        assert!(y.contains("cluster_name: concord_metrics_service"));
        assert!(y.contains("stats_flush_interval: 2.5s\n"));
        assert!(
            !y.contains("stats_flush_on_admin"),
            "a sink needs the periodic flush"
        );
        assert!(y.contains(r"regex: '^cluster\.builder_.*\.upstream_cx_.*'"));
        assert!(y.contains("regex: 'it''s'"));
        assert!(y.contains("name: concord_prometheus"));
        assert!(y.contains("- name: concord_envoy_admin"));
        let bad = |t: Telemetry| {
            render(&BootstrapConfig {
                telemetry: t,
                ..config()
            })
        };
        assert!(matches!(
            bad(Telemetry {
                stats_exclude: vec!["(unclosed".into()],
                ..Telemetry::default()
            }),
            Err(BootstrapError::BadRegex(..))
        ));
        assert!(matches!(
            bad(Telemetry {
                statsd: Some("127.0.0.1:8125".parse().unwrap()),
                flush_interval: std::time::Duration::ZERO,
                ..Telemetry::default()
            }),
            Err(BootstrapError::BadFlushInterval(0))
        ));
    }

    #[test]
    fn tls_adds_a_transport_socket() {
        let y = render(&BootstrapConfig {
            tls: Some(BootstrapTls {
                ca: "/certs/ca.pem".into(),
                server_uri_prefix: Some("spiffe://concord/prod/node/".into()),
                client: Some(("/certs/envoy-1.pem".into(), "/certs/envoy-1-key.pem".into())),
            }),
            ..config()
        })
        .unwrap();
        assert!(y.contains("UpstreamTlsContext"));
        assert!(y.contains("trusted_ca: { filename: \"/certs/ca.pem\" }"));
        assert!(y.contains("certificate_chain: { filename: \"/certs/envoy-1.pem\" }"));
        assert!(y.contains("prefix: \"spiffe://concord/prod/node/\""));
        assert!(!render(&config()).unwrap().contains("transport_socket"));
        let bad = BootstrapConfig {
            tls: Some(BootstrapTls {
                ca: "a\"b".into(),
                server_uri_prefix: None,
                client: None,
            }),
            ..config()
        };
        assert!(matches!(render(&bad), Err(BootstrapError::BadPath(_))));
    }

    #[test]
    fn stats_stream_to_the_replicas_by_default() {
        let y = render(&config()).unwrap();
        let sink = "stats_sinks:
- name: envoy.stat_sinks.metrics_service
  typed_config:
    \"@type\": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig
    transport_api_version: V3
    grpc_service: { envoy_grpc: { cluster_name: concord_xds } }
    report_counters_as_deltas: true
    emit_tags_as_labels: false
    histogram_emit_mode: HISTOGRAM
    batch_size: 1000
stats_flush_interval: 5s
";
        assert!(y.contains(sink), "{y}");
        assert!(!y.contains("stats_flush_on_admin"), "Envoy refuses both");
        assert!(!y.contains("concord_metrics_service"));
        // Next to another metrics service, each its own sink.
        let y = render(&BootstrapConfig {
            telemetry: Telemetry {
                metrics_service: Some("127.0.0.1:9000".parse().unwrap()),
                ..Telemetry::default()
            },
            ..config()
        })
        .unwrap();
        assert_eq!(
            y.matches("- name: envoy.stat_sinks.metrics_service")
                .count(),
            2
        );
        assert!(y.contains("cluster_name: concord_xds } }"));
        assert!(y.contains("cluster_name: concord_metrics_service } }"));
    }

    #[test]
    fn stats_are_flushed_only_when_asked_without_a_sink() {
        // A periodic flush stalls Envoy's main thread at large registries (issue 17).
        let y = render(&BootstrapConfig {
            telemetry: Telemetry {
                concord_stats: false,
                ..Telemetry::default()
            },
            ..config()
        })
        .unwrap();
        assert!(y.lines().any(|l| l == "stats_flush_on_admin: true"), "{y}");
        assert!(!y.contains("stats_sinks"));
        assert!(!y.contains("stats_flush_interval"));
    }

    #[test]
    fn lists_every_server_with_priorities() {
        let y = render(&config()).unwrap();
        assert!(y.contains("type: STATIC"));
        assert!(y.contains("- priority: 0\n        lb_endpoints:\n        - endpoint: { address: { socket_address: { address: \"127.0.0.1\", port_value: 18001"));
        assert!(y.contains("- priority: 1\n"));
        assert!(y.contains(
            "  metadata:\n    concord.listener_address: \"127.0.0.1:10001\"\n    concord.port_offset: \"100\"\n"
        ));
        assert!(y.contains("api_type: DELTA_GRPC\n"));
        assert!(y.contains("consecutive_local_origin_failure: 1\n"));
        let y = render(&BootstrapConfig {
            protocol: XdsProtocol::Sotw,
            ..config()
        })
        .unwrap();
        assert!(y.contains("api_type: GRPC\n"));
        let y = render(&BootstrapConfig {
            servers: vec!["concord-0.concord:18000".into()],
            ..config()
        })
        .unwrap();
        assert!(y.contains("type: STRICT_DNS"));
    }

    #[test]
    fn refuses_bad_input() {
        assert!(matches!(
            render(&BootstrapConfig {
                servers: vec![],
                ..config()
            }),
            Err(BootstrapError::NoServers)
        ));
        assert!(
            render(&BootstrapConfig {
                servers: vec!["nope".into()],
                ..config()
            })
            .is_err()
        );
        assert!(
            render(&BootstrapConfig {
                node_id: "a\nb: c".into(),
                ..config()
            })
            .is_err()
        );
    }
}
