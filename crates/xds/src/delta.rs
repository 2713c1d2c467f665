//! The delta (incremental) xDS protocol of one ADS stream, as plain data: per type, what the
//! Envoy subscribed to, which version of each resource it holds, and which responses are
//! outstanding. No I/O, no clock; [`crate::delta_stream`] drives it.
//!
//! - Versions are per resource: a hash of the encoded resource ([`crate::snapshot`]), so the
//!   same content has the same version on every replica. `system_version_info` is the registry
//!   revision, as `version_info` is in state of the world.
//! - An Envoy that reconnects reports what it holds in `initial_resource_versions`; it is sent
//!   only what differs, and resources it holds that no longer exist as `removed_resources`.
//! - Clusters and listeners are wildcard subscriptions (an empty first subscription, or `*`);
//!   explicit names are honoured too.
//! - What is sent counts as held from then on (as in go-control-plane): a NACKed resource
//!   version is therefore not sent again; the resource's next version is.
//! - Never backwards: holding versions this replica does not serve may mean the Envoy has seen
//!   a newer revision; the stream driver then catches up with the cluster before answering.

use crate::snapshot::Named;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What one type's subscription has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeltaType {
    /// Subscribed to every resource of the type.
    pub wildcard: bool,
    /// Resources subscribed to by name.
    pub names: BTreeSet<String>,
    /// Name → version the Envoy holds (or was last sent).
    pub held: HashMap<String, String>,
    /// Nonce → revision of the responses not yet ACKed or NACKed.
    pub outstanding: BTreeMap<String, u64>,
    /// Revision of the last response.
    pub sent: Option<u64>,
    /// The newest revision the Envoy ACKed on this stream.
    pub acked: Option<u64>,
    /// The last revision it NACKed, with the message.
    pub nacked: Option<(u64, String)>,
}

impl DeltaType {
    fn subscribed(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// True when a response is out and not yet answered.
    pub fn pending(&self) -> bool {
        !self.outstanding.is_empty()
    }
}

/// One request, as the protocol needs it.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// Resource type.
    pub type_url: &'a str,
    /// Names to add to the subscription (`*`: wildcard).
    pub subscribe: &'a [String],
    /// Names to remove from it.
    pub unsubscribe: &'a [String],
    /// On the first request of a type: what the Envoy holds.
    pub initial_versions: Option<&'a HashMap<String, String>>,
    /// The nonce this request answers, if any.
    pub nonce: &'a str,
    /// Set on a NACK.
    pub error: Option<&'a str>,
}

/// What a request means.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// The first request of this type on the stream: always answered.
    pub first: bool,
    /// The subscription grew: send what is now subscribed and differs.
    pub resync: bool,
    /// It ACKed the response of this revision.
    pub acked: Option<u64>,
    /// It NACKed the response of this revision, with this message.
    pub nacked: Option<(u64, String)>,
}

/// The changes to send for one type.
#[derive(Debug, Clone, Default)]
pub struct Changes<'a> {
    /// Resources the Envoy does not hold at this version.
    pub updates: Vec<&'a Named>,
    /// Names it holds that are gone.
    pub removals: Vec<String>,
}

impl Changes<'_> {
    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.updates.is_empty() && self.removals.is_empty()
    }
}

/// The delta protocol state of one stream.
#[derive(Debug, Default)]
pub struct DeltaState {
    nonces: u64,
    types: BTreeMap<String, DeltaType>,
}

impl DeltaState {
    /// A new stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// The subscribed types and their state, ordered by type URL (clusters before listeners).
    pub fn types(&self) -> &BTreeMap<String, DeltaType> {
        &self.types
    }

    /// Applies a request: subscription changes, then its ACK or NACK.
    pub fn on_request(&mut self, r: &Request<'_>) -> Outcome {
        let mut out = Outcome::default();
        let first = !self.types.contains_key(r.type_url);
        let t = self.types.entry(r.type_url.to_string()).or_default();
        if first {
            out.first = true;
            // Legacy wildcard: a first request without names subscribes to everything.
            t.wildcard = r.subscribe.is_empty();
            if let Some(held) = r.initial_versions {
                t.held = held.clone();
            }
        }
        for name in r.subscribe {
            if name == "*" {
                out.resync |= !t.wildcard;
                t.wildcard = true;
            } else if t.names.insert(name.clone()) && !t.wildcard {
                out.resync = true;
            }
        }
        for name in r.unsubscribe {
            if name == "*" {
                t.wildcard = false;
            } else {
                t.names.remove(name);
            }
            // Envoy drops what it no longer subscribes to.
            if !t.subscribed(name) {
                t.held.remove(name);
            }
        }
        if !t.wildcard {
            let names = &t.names;
            t.held.retain(|n, _| names.contains(n));
        }
        if !r.nonce.is_empty()
            && let Some(revision) = t.outstanding.remove(r.nonce)
        {
            match r.error {
                Some(message) => {
                    t.nacked = Some((revision, message.to_string()));
                    out.nacked = Some((revision, message.to_string()));
                }
                None => {
                    t.acked = t.acked.max(Some(revision));
                    out.acked = Some(revision);
                }
            }
        }
        out
    }

    /// What to send `type_url` so the Envoy holds exactly `current` (of what it subscribes to).
    pub fn changes<'a>(&self, type_url: &str, current: &[&'a Named]) -> Changes<'a> {
        let Some(t) = self.types.get(type_url) else {
            return Changes::default();
        };
        let updates = current
            .iter()
            .filter(|n| t.subscribed(&n.name) && t.held.get(&n.name) != Some(&n.version))
            .copied()
            .collect();
        let now: BTreeSet<&str> = current.iter().map(|n| n.name.as_str()).collect();
        let mut removals: Vec<String> = t
            .held
            .keys()
            .filter(|n| !now.contains(n.as_str()))
            .cloned()
            .collect();
        removals.sort();
        Changes { updates, removals }
    }

    /// True when the Envoy reported holding resources (on its first request) that are not
    /// exactly `current`: it may have seen a newer revision than this replica.
    pub fn holds_other_than(&self, type_url: &str, current: &[&Named]) -> bool {
        self.types
            .get(type_url)
            .is_some_and(|t| !t.held.is_empty() && !self.changes(type_url, current).is_empty())
    }

    /// Marks `current` as held without sending it (a version this Envoy NACKed on an earlier
    /// stream is not sent again).
    pub fn assume_held(&mut self, type_url: &str, current: &[&Named]) {
        if let Some(t) = self.types.get_mut(type_url) {
            t.held = current
                .iter()
                .filter(|n| t.wildcard || t.names.contains(&n.name))
                .map(|n| (n.name.clone(), n.version.clone()))
                .collect();
        }
    }

    /// Records a response about to be sent at `revision` and returns its nonce.
    pub fn record_sent(&mut self, type_url: &str, revision: u64, changes: &Changes<'_>) -> String {
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        let t = self.types.entry(type_url.to_string()).or_default();
        for n in &changes.updates {
            t.held.insert(n.name.clone(), n.version.clone());
        }
        for name in &changes.removals {
            t.held.remove(name);
        }
        t.outstanding.insert(nonce.clone(), revision);
        // A client that never answers must not grow this without bound.
        while t.outstanding.len() > 64 {
            t.outstanding.pop_first();
        }
        t.sent = Some(revision);
        nonce
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::CLUSTER_TYPE;
    use envoy_types::pb::google::protobuf::Any;

    fn named(name: &str, version: &str) -> Named {
        Named {
            name: name.into(),
            version: version.into(),
            resource: Any::default(),
        }
    }

    fn first<'a>(held: Option<&'a HashMap<String, String>>) -> Request<'a> {
        Request {
            type_url: CLUSTER_TYPE,
            initial_versions: held,
            ..Request::default()
        }
    }

    fn names(c: &Changes<'_>) -> Vec<String> {
        c.updates.iter().map(|n| n.name.clone()).collect()
    }

    #[test]
    fn wildcard_gets_everything_then_only_changes() {
        let mut s = DeltaState::new();
        let out = s.on_request(&first(None));
        assert!(out.first);
        let (a, b) = (named("a", "1"), named("b", "1"));
        let c = s.changes(CLUSTER_TYPE, &[&a, &b]);
        assert_eq!(names(&c), ["a", "b"]);
        let nonce = s.record_sent(CLUSTER_TYPE, 5, &c);
        assert!(s.types()[CLUSTER_TYPE].pending());
        let ack = s.on_request(&Request {
            type_url: CLUSTER_TYPE,
            nonce: &nonce,
            ..Request::default()
        });
        assert_eq!(ack.acked, Some(5));
        assert!(!s.types()[CLUSTER_TYPE].pending());
        // b changes, c appears, a goes.
        let (b2, c1) = (named("b", "2"), named("c", "1"));
        let c = s.changes(CLUSTER_TYPE, &[&b2, &c1]);
        assert_eq!(names(&c), ["b", "c"]);
        assert_eq!(c.removals, ["a"]);
        s.record_sent(CLUSTER_TYPE, 6, &c);
        assert!(s.changes(CLUSTER_TYPE, &[&b2, &c1]).is_empty());
    }

    #[test]
    fn reconnect_gets_only_what_differs() {
        let held: HashMap<String, String> = [("a", "1"), ("b", "1"), ("gone", "1")]
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .into();
        let mut s = DeltaState::new();
        s.on_request(&first(Some(&held)));
        let (a, b2) = (named("a", "1"), named("b", "2"));
        assert!(s.holds_other_than(CLUSTER_TYPE, &[&a, &b2]));
        let c = s.changes(CLUSTER_TYPE, &[&a, &b2]);
        assert_eq!(names(&c), ["b"]);
        assert_eq!(c.removals, ["gone"]);
        // Holding exactly what is served: nothing to catch up on, nothing to send.
        let mut s = DeltaState::new();
        let same: HashMap<String, String> = [("a".to_string(), "1".to_string())].into();
        s.on_request(&first(Some(&same)));
        assert!(!s.holds_other_than(CLUSTER_TYPE, &[&a]));
        assert!(s.changes(CLUSTER_TYPE, &[&a]).is_empty());
        // A fresh Envoy holds nothing: nothing to move backwards.
        let mut s = DeltaState::new();
        s.on_request(&first(None));
        assert!(!s.holds_other_than(CLUSTER_TYPE, &[&a]));
    }

    #[test]
    fn nacked_versions_are_not_resent() {
        let mut s = DeltaState::new();
        s.on_request(&first(None));
        let a = named("a", "1");
        let c = s.changes(CLUSTER_TYPE, &[&a]);
        let nonce = s.record_sent(CLUSTER_TYPE, 3, &c);
        let out = s.on_request(&Request {
            type_url: CLUSTER_TYPE,
            nonce: &nonce,
            error: Some("bad cluster"),
            ..Request::default()
        });
        assert_eq!(out.nacked, Some((3, "bad cluster".to_string())));
        assert_eq!(out.acked, None);
        assert!(s.changes(CLUSTER_TYPE, &[&a]).is_empty(), "not sent again");
        let a2 = named("a", "2");
        assert_eq!(
            names(&s.changes(CLUSTER_TYPE, &[&a2])),
            ["a"],
            "the next one is"
        );
        // A stale or unknown nonce is neither.
        let out = s.on_request(&Request {
            type_url: CLUSTER_TYPE,
            nonce: &nonce,
            ..Request::default()
        });
        assert_eq!(out, Outcome::default());
    }

    #[test]
    fn explicit_names_and_unsubscribe() {
        let mut s = DeltaState::new();
        let sub = vec!["a".to_string()];
        s.on_request(&Request {
            type_url: CLUSTER_TYPE,
            subscribe: &sub,
            ..Request::default()
        });
        let (a, b) = (named("a", "1"), named("b", "1"));
        let c = s.changes(CLUSTER_TYPE, &[&a, &b]);
        assert_eq!(names(&c), ["a"]);
        s.record_sent(CLUSTER_TYPE, 1, &c);
        let star = vec!["*".to_string()];
        let out = s.on_request(&Request {
            type_url: CLUSTER_TYPE,
            subscribe: &star,
            ..Request::default()
        });
        assert!(out.resync);
        assert_eq!(names(&s.changes(CLUSTER_TYPE, &[&a, &b])), ["b"]);
        let out = s.on_request(&Request {
            type_url: CLUSTER_TYPE,
            unsubscribe: &star,
            ..Request::default()
        });
        assert!(!out.resync);
        assert!(s.changes(CLUSTER_TYPE, &[&a, &b]).is_empty());
    }
}
