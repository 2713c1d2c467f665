//! Registry → Envoy resources, the Depot shape (DESIGN "Envoy resources"): one TLS listener with the
//! TLS inspector and one filter chain per builder (`server_names: [sni]` → `tcp_proxy`), and one
//! STATIC cluster per builder with an inline load assignment. Pure: no I/O, no clock.
//!
//! A [`Snapshot`] holds the resources of one registry revision, each encoded once into an `Any`
//! and shared by every stream. The listener is built per listener address (Envoys on one host
//! need distinct ports; see [`crate::LISTENER_ADDRESS_KEY`]), lazily, and cached in the snapshot.

use concord_registry::{Builder, Registry};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use prost::Message;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Type URL of clusters (CDS).
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of listeners (LDS).
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const TLS_INSPECTOR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const TCP_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// The shape of the resources every replica serves; the same on every replica of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceConfig {
    /// Name of the builders' listener.
    pub listener_name: String,
    /// Address the listener binds unless an Envoy asks for another (node metadata).
    pub listener_addr: SocketAddr,
    /// Upstream connect timeout of every builder cluster.
    pub connect_timeout: std::time::Duration,
}

impl Default for ResourceConfig {
    fn default() -> Self {
        ResourceConfig {
            listener_name: "builders".into(),
            listener_addr: SocketAddr::from(([0, 0, 0, 0], 10000)),
            connect_timeout: std::time::Duration::from_secs(2),
        }
    }
}

/// The name of a builder's cluster: a stable function of its id.
pub fn cluster_name(builder_id: &str) -> String {
    format!("builder_{builder_id}")
}

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: m.encode_to_vec(),
    }
}

fn socket_address(addr: SocketAddr) -> Address {
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

fn pb_duration(d: std::time::Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// The STATIC cluster of one builder.
pub fn cluster(b: &Builder, cfg: &ResourceConfig) -> Cluster {
    let name = cluster_name(&b.id);
    Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(pb_duration(cfg.connect_timeout)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name,
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

/// The filter chain that passes TLS connections for `b`'s SNI name through to its cluster.
pub fn filter_chain(b: &Builder) -> FilterChain {
    let cluster = cluster_name(&b.id);
    let proxy = TcpProxy {
        stat_prefix: cluster.clone(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.clone())),
        ..Default::default()
    };
    FilterChain {
        name: cluster,
        filter_chain_match: Some(FilterChainMatch {
            server_names: vec![b.sni.clone()],
            transport_protocol: "tls".into(),
            ..Default::default()
        }),
        filters: vec![Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(filter::ConfigType::TypedConfig(any(TCP_PROXY_TYPE, &proxy))),
        }],
        ..Default::default()
    }
}

/// The builders' listener at `addr`: TLS inspector, a chain per builder, and no default chain,
/// so a connection whose SNI matches no builder is closed.
pub fn listener<'a>(
    builders: impl Iterator<Item = &'a Builder>,
    name: &str,
    addr: SocketAddr,
) -> Listener {
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
        filter_chains: builders.map(filter_chain).collect(),
        ..Default::default()
    }
}

/// The resources of one registry revision, encoded once and shared by every stream.
#[derive(Debug)]
pub struct Snapshot {
    revision: u64,
    version: String,
    registry: Arc<Registry>,
    config: ResourceConfig,
    clusters: Arc<[Any]>,
    /// Encoded listener per listener address, built on first use.
    listeners: Mutex<HashMap<SocketAddr, Arc<[Any]>>>,
}

impl Snapshot {
    /// Builds the clusters of `registry` now; listeners on first use.
    pub fn build(registry: Arc<Registry>, config: ResourceConfig) -> Snapshot {
        let clusters: Arc<[Any]> = registry
            .iter()
            .map(|b| any(CLUSTER_TYPE, &cluster(b, &config)))
            .collect();
        Snapshot {
            revision: registry.revision(),
            version: registry.revision().to_string(),
            registry,
            config,
            clusters,
            listeners: Mutex::new(HashMap::new()),
        }
    }

    /// The registry revision these resources come from.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// `version_info` of every response built from this snapshot: the revision, in decimal.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The applied registry behind it.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The default listener address.
    pub fn default_listener_addr(&self) -> SocketAddr {
        self.config.listener_addr
    }

    /// The resources of `type_url` for an Envoy whose listener binds `listener_addr`. Unknown
    /// types get an empty set.
    pub fn resources(&self, type_url: &str, listener_addr: SocketAddr) -> Arc<[Any]> {
        match type_url {
            CLUSTER_TYPE => self.clusters.clone(),
            LISTENER_TYPE => {
                let mut cache = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
                cache
                    .entry(listener_addr)
                    .or_insert_with(|| {
                        if self.registry.is_empty() {
                            // Envoy refuses a listener without filter chains; with no builders
                            // there is no listener, and connections are refused.
                            Arc::from([])
                        } else {
                            let l = listener(
                                self.registry.iter().map(|b| &**b),
                                &self.config.listener_name,
                                listener_addr,
                            );
                            Arc::from([any(LISTENER_TYPE, &l)])
                        }
                    })
                    .clone()
            }
            _ => Arc::from([]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_registry::{Batch, Command, Source};

    fn registry(n: usize) -> Arc<Registry> {
        let mut r = Registry::new();
        let upserts = (0..n)
            .map(|i| Builder {
                id: format!("b{i}"),
                addr: format!("10.0.0.{}:443", i % 250 + 1).parse().unwrap(),
                sni: format!("b{i}.builders.example.com"),
                region: String::new(),
                labels: Default::default(),
                source: Source::Api,
            })
            .collect();
        r.apply(
            7,
            &Command::new(
                Source::Api,
                Batch {
                    upserts,
                    removes: vec![],
                },
            ),
        );
        Arc::new(r)
    }

    #[test]
    fn one_cluster_and_one_chain_per_builder() {
        let snap = Snapshot::build(registry(3), ResourceConfig::default());
        assert_eq!(snap.version(), "7");
        let addr = snap.default_listener_addr();
        let clusters = snap.resources(CLUSTER_TYPE, addr);
        assert_eq!(clusters.len(), 3);
        let c = Cluster::decode(clusters[1].value.as_slice()).unwrap();
        assert_eq!(c.name, "builder_b1");
        let listeners = snap.resources(LISTENER_TYPE, addr);
        let l = Listener::decode(listeners[0].value.as_slice()).unwrap();
        assert_eq!(l.filter_chains.len(), 3);
        let m = l.filter_chains[2].filter_chain_match.clone().unwrap();
        assert_eq!(m.server_names, ["b2.builders.example.com"]);
        assert_eq!(m.transport_protocol, "tls");
        assert!(snap.resources("type.googleapis.com/other", addr).is_empty());
    }

    #[test]
    fn listener_is_encoded_once_per_address() {
        let snap = Snapshot::build(registry(2), ResourceConfig::default());
        let a: SocketAddr = "127.0.0.1:10001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:10002".parse().unwrap();
        let first = snap.resources(LISTENER_TYPE, a);
        assert!(Arc::ptr_eq(&first, &snap.resources(LISTENER_TYPE, a)));
        let other = Listener::decode(snap.resources(LISTENER_TYPE, b)[0].value.as_slice()).unwrap();
        assert_eq!(
            other.address.unwrap(),
            socket_address(b),
            "each address gets its own listener"
        );
    }

    #[test]
    fn dump_shows_what_is_served() {
        let snap = Snapshot::build(registry(2), ResourceConfig::default());
        let d = snap.dump();
        assert_eq!(d.version_info, "7");
        assert_eq!(d.clusters.len(), 2);
        assert_eq!(d.clusters[0].name, "builder_b0");
        assert_eq!(d.clusters[0].endpoint, "10.0.0.1:443");
        let l = d.listener.unwrap();
        assert_eq!(l.address, "0.0.0.0:10000");
        assert_eq!(
            l.filter_chains[1],
            (
                "b1.builders.example.com".to_string(),
                "builder_b1".to_string()
            )
        );
    }

    #[test]
    fn empty_registry_has_no_listener() {
        let snap = Snapshot::build(Arc::new(Registry::new()), ResourceConfig::default());
        assert!(
            snap.resources(LISTENER_TYPE, snap.default_listener_addr())
                .is_empty()
        );
        assert_eq!(snap.version(), "0");
    }
}

/// What a replica serves right now, decoded back from the encoded resources (so it shows exactly
/// what goes out): for `GET /v1/xds/resources`, like Envoy's own config dump.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Dump {
    /// `version_info` of the resources.
    pub version_info: String,
    /// The builders' listener at the default address (absent with no builders).
    pub listener: Option<ListenerDump>,
    /// One STATIC cluster per builder.
    pub clusters: Vec<ClusterDump>,
}

/// A listener, summarised.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListenerDump {
    /// Its name.
    pub name: String,
    /// Where it binds.
    pub address: String,
    /// SNI name → cluster, one per filter chain.
    pub filter_chains: Vec<(String, String)>,
}

/// A cluster, summarised.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterDump {
    /// Its name.
    pub name: String,
    /// Its one endpoint.
    pub endpoint: String,
}

fn addr_text(a: Option<&Address>) -> String {
    match a.and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => match s.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => format!("{}:{p}", s.address),
            _ => s.address.clone(),
        },
        _ => String::new(),
    }
}

impl Snapshot {
    /// Decodes what this snapshot serves at the default listener address.
    pub fn dump(&self) -> Dump {
        let addr = self.default_listener_addr();
        let clusters = self
            .resources(CLUSTER_TYPE, addr)
            .iter()
            .filter_map(|a| Cluster::decode(a.value.as_slice()).ok())
            .map(|c| {
                let endpoint = c
                    .load_assignment
                    .as_ref()
                    .and_then(|la| la.endpoints.first())
                    .and_then(|e| e.lb_endpoints.first())
                    .and_then(|lb| match &lb.host_identifier {
                        Some(lb_endpoint::HostIdentifier::Endpoint(e)) => {
                            Some(addr_text(e.address.as_ref()))
                        }
                        _ => None,
                    })
                    .unwrap_or_default();
                ClusterDump {
                    name: c.name,
                    endpoint,
                }
            })
            .collect();
        let listener = self
            .resources(LISTENER_TYPE, addr)
            .first()
            .and_then(|a| Listener::decode(a.value.as_slice()).ok())
            .map(|l| ListenerDump {
                address: addr_text(l.address.as_ref()),
                filter_chains: l
                    .filter_chains
                    .iter()
                    .map(|fc| {
                        let sni = fc
                            .filter_chain_match
                            .as_ref()
                            .map(|m| m.server_names.join(","))
                            .unwrap_or_default();
                        (sni, fc.name.clone())
                    })
                    .collect(),
                name: l.name,
            });
        Dump {
            version_info: self.version.clone(),
            listener,
            clusters,
        }
    }
}
