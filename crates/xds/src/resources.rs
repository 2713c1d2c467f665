//! Registry → Envoy resources, in one of two listener modes (DESIGN "Envoy resources"). Pure: no
//! I/O, no clock.
//!
//! - [`ListenerMode::FilterChains`], the Depot shape: one TLS listener with the TLS inspector and
//!   one filter chain per builder (`server_names: [sni]` → `tcp_proxy`), and one STATIC cluster
//!   per builder named `builder_<id>`.
//! - [`ListenerMode::SniCluster`]: one filter chain that matches the builder SNI suffix
//!   (`*.builders.example.com`) and runs `sni_cluster` before `tcp_proxy`, so the SNI name picks
//!   the cluster; clusters are named by their SNI. The listener never changes as builders come
//!   and go. The suffix match is the guard: a client naming any other cluster Envoy knows (the
//!   ADS cluster of the bootstrap, for one) matches no chain and is closed. Builders whose SNI is
//!   outside the suffix get no cluster in this mode (skipped, counted and logged). With
//!   `on_demand` (`--listener-mode on-demand`), `tcp_proxy` asks for a cluster it does not hold
//!   over ADS when a client first names it (on-demand CDS), so an Envoy bootstrapped without a
//!   wildcard cluster subscription (`concord envoy-bootstrap --on-demand-clusters`) holds only
//!   the builders its clients reach, not the whole registry.
//!
//! [`crate::snapshot`] encodes these once per change and keeps them per revision; nothing here
//! knows of snapshots or streams.

use crate::access_log::{AccessLog, access_logs};
use concord_registry::Builder;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, address,
    config_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::sni_cluster::v3::SniCluster;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use prost::Message;
use std::net::SocketAddr;

/// Node metadata key by which an Envoy asks for its builders' listener on another address than
/// the replica's default (several Envoys on one host need distinct ports).
pub const LISTENER_ADDRESS_KEY: &str = "concord.listener_address";

/// Node metadata key by which an Envoy asks for every services listener this many ports from
/// the port its file gives (several Envoys on one host, as in the local cluster).
pub const PORT_OFFSET_KEY: &str = "concord.port_offset";

/// Type URL of clusters (CDS).
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of listeners (LDS).
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const TLS_INSPECTOR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const TCP_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const SNI_CLUSTER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.sni_cluster.v3.SniCluster";
/// How long `tcp_proxy` waits for a cluster it asked for on demand before closing the connection.
pub const ON_DEMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Name of the one filter chain (and `tcp_proxy` stat prefix) in sni-cluster mode.
pub const SNI_CLUSTER_CHAIN: &str = "sni_cluster";

/// How the builders' listener picks a builder's cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ListenerMode {
    /// One filter chain per builder, matching its SNI name exactly (the Depot shape).
    #[default]
    FilterChains,
    /// One filter chain matching `*.<suffix>`; the `sni_cluster` filter routes to the cluster
    /// named by the SNI.
    SniCluster {
        /// The builder SNI suffix without the leading `*.`, e.g. `builders.example.com`.
        suffix: String,
        /// `tcp_proxy` discovers a cluster it does not hold over ADS (on-demand CDS).
        on_demand: bool,
    },
}

/// The shape of the resources every replica serves; the same on every replica of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceConfig {
    /// Name of the builders' listener.
    pub listener_name: String,
    /// Address the listener binds unless an Envoy asks for another (node metadata).
    pub listener_addr: SocketAddr,
    /// Upstream connect timeout of every builder cluster.
    pub connect_timeout: std::time::Duration,
    /// How the listener routes to builders.
    pub mode: ListenerMode,
}

impl Default for ResourceConfig {
    fn default() -> Self {
        ResourceConfig {
            listener_name: "builders".into(),
            listener_addr: SocketAddr::from(([0, 0, 0, 0], 10000)),
            connect_timeout: std::time::Duration::from_secs(2),
            mode: ListenerMode::FilterChains,
        }
    }
}

/// The name of a builder's cluster in the Depot shape: a stable function of its id.
pub fn cluster_name(builder_id: &str) -> String {
    format!("builder_{builder_id}")
}

/// True when `sni` is under `*.<suffix>` as Envoy matches a wildcard server name: at least one
/// more label in front of the suffix.
pub fn in_suffix(sni: &str, suffix: &str) -> bool {
    sni.len() > suffix.len() + 1
        && sni.ends_with(suffix)
        && sni.as_bytes()[sni.len() - suffix.len() - 1] == b'.'
}

/// The cluster name of `b` in `mode`; `None` when the mode cannot route to it (sni-cluster mode
/// and an SNI name outside the suffix).
pub fn builder_cluster_name(b: &Builder, mode: &ListenerMode) -> Option<String> {
    match mode {
        ListenerMode::FilterChains => Some(cluster_name(&b.id)),
        ListenerMode::SniCluster { suffix, .. } => in_suffix(&b.sni, suffix).then(|| b.sni.clone()),
    }
}

pub(crate) fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: m.encode_to_vec(),
    }
}

pub(crate) fn socket_address(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..Default::default()
        })),
    }
}

#[cfg(test)]
pub(crate) fn socket_address_for_tests(addr: SocketAddr) -> Address {
    socket_address(addr)
}

fn pb_duration(d: std::time::Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// The STATIC cluster `name` of one builder.
pub fn cluster(name: &str, b: &Builder, cfg: &ResourceConfig) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(pb_duration(cfg.connect_timeout)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket_address(b.addr)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn tcp_proxy_filter(cluster: &str, log: AccessLog, on_demand: bool) -> Filter {
    let proxy = TcpProxy {
        stat_prefix: cluster.to_string(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_string())),
        access_log: access_logs(log, false),
        on_demand: on_demand.then(|| tcp_proxy::OnDemand {
            odcds_config: Some(ConfigSource {
                config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                resource_api_version: ApiVersion::V3 as i32,
                ..Default::default()
            }),
            // A name that exists comes in a round trip; one that does not is answered removed
            // at once (delta), so this bounds only an unanswered request.
            timeout: Some(pb_duration(ON_DEMAND_TIMEOUT)),
            ..Default::default()
        }),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(TCP_PROXY_TYPE, &proxy))),
    }
}

/// The filter chain that passes TLS connections for `b`'s SNI name through to its cluster
/// (filter-chains mode), logging each connection to `log`.
pub fn filter_chain(b: &Builder, log: AccessLog) -> FilterChain {
    let cluster = cluster_name(&b.id);
    FilterChain {
        filter_chain_match: Some(FilterChainMatch {
            server_names: vec![b.sni.clone()],
            transport_protocol: "tls".into(),
            ..Default::default()
        }),
        filters: vec![tcp_proxy_filter(&cluster, log, false)],
        name: cluster,
        ..Default::default()
    }
}

/// The one filter chain of sni-cluster mode: TLS with an SNI under `*.<suffix>` → `sni_cluster`
/// (the SNI names the cluster) → `tcp_proxy`, logging each connection to `log`, and asking for
/// a cluster it does not hold over ADS when `on_demand`.
pub fn sni_cluster_chain(suffix: &str, log: AccessLog, on_demand: bool) -> FilterChain {
    FilterChain {
        name: SNI_CLUSTER_CHAIN.into(),
        filter_chain_match: Some(FilterChainMatch {
            server_names: vec![format!("*.{suffix}")],
            transport_protocol: "tls".into(),
            ..Default::default()
        }),
        filters: vec![
            Filter {
                name: "envoy.filters.network.sni_cluster".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(
                    SNI_CLUSTER_TYPE,
                    &SniCluster::default(),
                ))),
            },
            // `sni_cluster` overrides this cluster with the SNI name on every connection that
            // reaches the chain (the match requires an SNI); the fallback names no real cluster.
            tcp_proxy_filter(SNI_CLUSTER_CHAIN, log, on_demand),
        ],
        ..Default::default()
    }
}

/// The builders' listener at `addr` with `filter_chains`: TLS inspector, and no default chain,
/// so a connection whose SNI matches no chain is closed.
pub fn listener(filter_chains: Vec<FilterChain>, name: &str, addr: SocketAddr) -> Listener {
    Listener {
        name: name.to_string(),
        address: Some(socket_address(addr)),
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                TLS_INSPECTOR_TYPE,
                &TlsInspector::default(),
            ))),
            ..Default::default()
        }],
        filter_chains,
        ..Default::default()
    }
}
