//! Which Envoys a replica serves (`--serve-envoys`, issue 15's control-plane canaries): a
//! replica running a new concord version first serves only a chosen group, named by the
//! Envoys' bootstrap: their node cluster (`cluster=canary`) or a node metadata field
//! (`metadata.group=canary`). Any other Envoy's stream ends with UNAVAILABLE at its first
//! request, before any response, so it reconnects to another replica at once and never holds
//! config from this one. Several selectors serve the Envoys any of them names.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;

/// One group of Envoys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvoySelector {
    /// Envoys whose `node.cluster` is this.
    Cluster(String),
    /// Envoys whose node metadata has this string field with this value.
    Metadata {
        /// The field.
        key: String,
        /// Its value.
        value: String,
    },
}

/// A selector that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid --serve-envoys {0:?}: give cluster=NAME (the Envoys' node cluster) or \
     metadata.KEY=VALUE (a node metadata field)"
)]
pub struct BadSelector(pub String);

impl std::str::FromStr for EnvoySelector {
    type Err = BadSelector;

    fn from_str(s: &str) -> Result<Self, BadSelector> {
        let bad = || BadSelector(s.to_string());
        let (what, value) = s.split_once('=').ok_or_else(bad)?;
        if value.is_empty() {
            return Err(bad());
        }
        match what.split_once('.') {
            None if what == "cluster" => Ok(EnvoySelector::Cluster(value.to_string())),
            Some(("metadata", key)) if !key.is_empty() => Ok(EnvoySelector::Metadata {
                key: key.to_string(),
                value: value.to_string(),
            }),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for EnvoySelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvoySelector::Cluster(c) => write!(f, "cluster={c}"),
            EnvoySelector::Metadata { key, value } => write!(f, "metadata.{key}={value}"),
        }
    }
}

impl EnvoySelector {
    /// Whether `node` is of this group.
    pub fn matches(&self, node: &Node) -> bool {
        match self {
            EnvoySelector::Cluster(c) => node.cluster == *c,
            EnvoySelector::Metadata { key, value } => node
                .metadata
                .as_ref()
                .and_then(|m| m.fields.get(key))
                .and_then(|v| v.kind.as_ref())
                .is_some_and(|k| matches!(k, Kind::StringValue(s) if s == value)),
        }
    }
}

/// The Envoys a replica serves: every one when empty, else those any selector names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServedEnvoys(pub Vec<EnvoySelector>);

impl ServedEnvoys {
    /// Whether this replica serves `node`.
    pub fn serves(&self, node: &Node) -> bool {
        self.0.is_empty() || self.0.iter().any(|s| s.matches(node))
    }

    /// The groups, for logs and errors (`cluster=canary, metadata.group=a`).
    pub fn describe(&self) -> String {
        let all: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        all.join(", ")
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
                        (
                            k.to_string(),
                            Value {
                                kind: Some(Kind::StringValue(v.to_string())),
                            },
                        )
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn selectors_parse_print_and_match() {
        let c: EnvoySelector = "cluster=canary".parse().unwrap();
        let m: EnvoySelector = "metadata.group=a".parse().unwrap();
        assert_eq!(
            (c.to_string(), m.to_string()),
            ("cluster=canary".into(), "metadata.group=a".into())
        );
        assert!(c.matches(&node("canary", &[])));
        assert!(!c.matches(&node("main", &[("group", "canary")])));
        assert!(m.matches(&node("main", &[("group", "a")])));
        assert!(!m.matches(&node("main", &[("group", "b")])));
        assert!(!m.matches(&Node::default()));
        for bad in [
            "",
            "cluster",
            "cluster=",
            "region=x",
            "metadata.=x",
            "metadata=x",
        ] {
            assert_eq!(
                bad.parse::<EnvoySelector>(),
                Err(BadSelector(bad.into())),
                "{bad}"
            );
        }
        let served = ServedEnvoys(vec![c, m]);
        assert!(
            served.serves(&node("canary", &[])) && served.serves(&node("x", &[("group", "a")]))
        );
        assert!(!served.serves(&node("main", &[])));
        assert!(
            ServedEnvoys::default().serves(&Node::default()),
            "no selector: every Envoy"
        );
        assert_eq!(served.describe(), "cluster=canary, metadata.group=a");
    }
}
