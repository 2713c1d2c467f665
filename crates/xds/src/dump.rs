//! What a replica serves, decoded back from a [`Snapshot`]'s encoded resources (so it shows
//! exactly what goes out): for the admin API's `GET /v1/xds/resources`. Reads snapshots only.

use crate::resources::{CLUSTER_TYPE, LISTENER_TYPE};
use crate::snapshot::Snapshot;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{Address, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use prost::Message;

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
    /// Builders the listener mode cannot route to (sni-cluster mode: SNI outside the suffix).
    pub skipped: Vec<String>,
}

/// A listener, summarised.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListenerDump {
    /// Its name.
    pub name: String,
    /// Where it binds.
    pub address: String,
    /// SNI name (or wildcard) → chain name, one per filter chain.
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
            version_info: self.version().to_string(),
            listener,
            clusters,
            skipped: self.skipped(),
        }
    }
}
