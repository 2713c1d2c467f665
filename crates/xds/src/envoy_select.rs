//! Which Envoys a replica serves (`--serve-envoys`, issue 15's control-plane canaries): a
//! replica running a new concord version first serves only a chosen group, named by the
//! Envoys' bootstrap ([`EnvoySelector`]: node cluster or a node metadata field). Any other
//! Envoy's stream is refused at its first request, before any response (see `transport`), so it
//! reconnects to another replica at once and never holds config from this one. Also what a
//! node offers a selector ([`NodeTraits`]), for config canaries.

pub use concord_registry::services::select::{BadSelector, EnvoySelector, EnvoyTraits};
use concord_registry::services::select::{describe, in_group};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;
use std::collections::BTreeMap;

/// The most metadata fields, and the longest value, kept of an Envoy for selectors: a node's
/// metadata is the client's to fill.
const MOST_FIELDS: usize = 32;
const LONGEST_VALUE: usize = 256;

/// What selectors look at of one Envoy, kept from its first request (bounded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeTraits {
    /// `node.cluster`.
    pub cluster: String,
    /// Its node metadata's string fields.
    pub metadata: BTreeMap<String, String>,
}

impl NodeTraits {
    /// The traits of `node`: its cluster and up to 32 string metadata fields.
    pub fn of(node: &Node) -> NodeTraits {
        let metadata = node
            .metadata
            .iter()
            .flat_map(|m| m.fields.iter())
            .filter_map(|(k, v)| match v.kind.as_ref()? {
                Kind::StringValue(s) if s.len() <= LONGEST_VALUE && k.len() <= 128 => {
                    Some((k.clone(), s.clone()))
                }
                _ => None,
            })
            .take(MOST_FIELDS)
            .collect();
        NodeTraits {
            cluster: node.cluster.chars().take(LONGEST_VALUE).collect(),
            metadata,
        }
    }
}

impl EnvoyTraits for NodeTraits {
    fn cluster(&self) -> &str {
        &self.cluster
    }
    fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }
}

/// The Envoys a replica serves: every one when empty, else those any selector names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServedEnvoys(pub Vec<EnvoySelector>);

impl ServedEnvoys {
    /// Whether this replica serves `node`.
    pub fn serves(&self, node: &Node) -> bool {
        self.0.is_empty() || in_group(&self.0, &NodeTraits::of(node))
    }

    /// The groups, for logs and errors (`cluster=canary, metadata.group=a`).
    pub fn describe(&self) -> String {
        describe(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value};

    fn node(cluster: &str, meta: &[(&str, &str)]) -> Node {
        Node {
            id: "e".into(),
            cluster: cluster.into(),
            metadata: Some(Struct {
                fields: meta
                    .iter()
                    .map(|(k, v)| {
                        let v = Value {
                            kind: Some(Kind::StringValue(v.to_string())),
                        };
                        (k.to_string(), v)
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_replica_serves_the_envoys_its_selectors_name() {
        let served = ServedEnvoys(vec![
            "cluster=canary".parse().unwrap(),
            "metadata.group=a".parse().unwrap(),
        ]);
        assert!(served.serves(&node("canary", &[])));
        assert!(served.serves(&node("x", &[("group", "a")])));
        assert!(!served.serves(&node("main", &[("group", "b")])));
        assert!(
            ServedEnvoys::default().serves(&Node::default()),
            "no selector: every Envoy"
        );
        assert_eq!(served.describe(), "cluster=canary, metadata.group=a");
    }
}
