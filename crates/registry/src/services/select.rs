//! Groups of Envoys, named by what their bootstrap says of them: their node cluster
//! (`cluster=canary`) or a node metadata string field (`metadata.group=canary`). A replica's
//! `--serve-envoys` (control-plane canaries) and a staged configuration change (config
//! canaries) both name the Envoys they are for this way; a list names the Envoys any of its
//! selectors names.

use serde::{Deserialize, Serialize};

/// One group of Envoys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
    "invalid Envoy group {0:?}: give cluster=NAME (the Envoys' node cluster) or \
     metadata.KEY=VALUE (a node metadata field)"
)]
pub struct BadSelector(pub String);

impl std::str::FromStr for EnvoySelector {
    type Err = BadSelector;

    fn from_str(s: &str) -> Result<Self, BadSelector> {
        let bad = || BadSelector(s.to_string());
        let (what, value) = s.split_once('=').ok_or_else(bad)?;
        if value.is_empty() || value.len() > 256 {
            return Err(bad());
        }
        match what.split_once('.') {
            None if what == "cluster" => Ok(EnvoySelector::Cluster(value.to_string())),
            Some(("metadata", key)) if !key.is_empty() && key.len() <= 128 => {
                Ok(EnvoySelector::Metadata {
                    key: key.to_string(),
                    value: value.to_string(),
                })
            }
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

impl Serialize for EnvoySelector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EnvoySelector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a selector looks at of an Envoy: its node cluster and its node metadata's string
/// fields.
pub trait EnvoyTraits {
    /// `node.cluster`.
    fn cluster(&self) -> &str;
    /// A string field of the node metadata.
    fn metadata(&self, key: &str) -> Option<&str>;
}

impl EnvoySelector {
    /// Whether the Envoy is of this group.
    pub fn matches(&self, envoy: &impl EnvoyTraits) -> bool {
        match self {
            EnvoySelector::Cluster(c) => envoy.cluster() == c,
            EnvoySelector::Metadata { key, value } => envoy.metadata(key) == Some(value.as_str()),
        }
    }
}

/// Whether any of `group` names the Envoy (none names none).
pub fn in_group(group: &[EnvoySelector], envoy: &impl EnvoyTraits) -> bool {
    group.iter().any(|s| s.matches(envoy))
}

/// The group for people and errors (`cluster=canary, metadata.group=a`).
pub fn describe(group: &[EnvoySelector]) -> String {
    let all: Vec<String> = group.iter().map(ToString::to_string).collect();
    all.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    struct E(&'static str, &'static [(&'static str, &'static str)]);
    impl EnvoyTraits for E {
        fn cluster(&self) -> &str {
            self.0
        }
        fn metadata(&self, key: &str) -> Option<&str> {
            self.1.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
        }
    }

    #[test]
    fn selectors_parse_print_serialise_and_match() {
        let c: EnvoySelector = "cluster=canary".parse().unwrap();
        let m: EnvoySelector = "metadata.group=a".parse().unwrap();
        assert_eq!(c.to_string(), "cluster=canary");
        assert_eq!(m.to_string(), "metadata.group=a");
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"metadata.group=a\"");
        assert_eq!(
            serde_json::from_str::<EnvoySelector>("\"cluster=canary\"").unwrap(),
            c
        );
        assert!(serde_json::from_str::<EnvoySelector>("\"region=x\"").is_err());
        assert!(c.matches(&E("canary", &[])));
        assert!(!c.matches(&E("main", &[("group", "canary")])));
        assert!(m.matches(&E("main", &[("group", "a")])));
        assert!(!m.matches(&E("main", &[("group", "b")])));
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
        let group = [c, m];
        assert!(
            in_group(&group, &E("canary", &[])) && in_group(&group, &E("x", &[("group", "a")]))
        );
        assert!(!in_group(&group, &E("main", &[])));
        assert!(!in_group(&[], &E("main", &[])));
        assert_eq!(describe(&group), "cluster=canary, metadata.group=a");
    }
}
