//! The delta (incremental) xDS protocol of one ADS stream, as plain data: per type, what the
//! Envoy subscribed to, which version of each resource it holds, and which responses are
//! outstanding. No I/O, no clock; the delta driver (`stream::delta`) drives it.
//!
//! - Versions are per resource: a hash of the encoded resource ([`crate::snapshot`]), so the
//!   same content has the same version on every replica. `system_version_info` is the registry
//!   revision, as `version_info` is in state of the world.
//! - An Envoy that reconnects reports what it holds in `initial_resource_versions`; it is sent
//!   only what differs, and resources it holds that no longer exist as `removed_resources`.
//! - Clusters and listeners are wildcard subscriptions (an empty first subscription, or `*`);
//!   explicit names are honoured too. A name subscribed to that does not exist is answered in
//!   `removed_resources` once, as the xDS protocol asks, so an Envoy asking for a cluster on
//!   demand (on-demand CDS) learns at once that it is missing instead of waiting for its timeout.
//! - What is sent counts as held from then on (as in go-control-plane): a NACKed resource
//!   version is therefore not sent again; the resource's next version is.
//! - What an Envoy holds is a persistent map that, once it is in sync, is a copy of the
//!   snapshot's own map: per-stream memory does not grow with the registry, and finding what
//!   changed since the last push visits only the changed entries.
//! - Never backwards: what an Envoy reports holding does not tell which revision it saw (it may
//!   hold nothing at a newer one), so the stream driver catches up with the cluster before a
//!   stream's first response, whatever the Envoy holds.

use super::type_state;
use crate::snapshot::{Named, Resources};
use envoy_types::pb::google::protobuf::Any;
use imbl::ordmap::DiffItem;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// What one type's subscription has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeltaType {
    /// Subscribed to every resource of the type.
    pub wildcard: bool,
    /// Resources subscribed to by name.
    pub names: BTreeSet<String>,
    /// What the Envoy holds (or was last sent), by name; resources reported by the Envoy on
    /// reconnect are version-only placeholders.
    pub held: Resources,
    /// Nonce → revision of the responses not yet ACKed or NACKed.
    pub outstanding: BTreeMap<String, u64>,
    /// Revision of the last response.
    pub sent: Option<u64>,
    /// The newest revision the Envoy ACKed on this stream.
    pub acked: Option<u64>,
    /// The last revision it NACKed, with the message.
    pub nacked: Option<(u64, String)>,
    /// Names subscribed to since the last response: those that do not exist are answered in
    /// `removed_resources` by the next one.
    pub unanswered: BTreeSet<String>,
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

/// The most resource names one stream may subscribe to (or report holding) per type, unless
/// the replica serves more of the type ([`names_limit`]): a bound on what a hostile client can
/// make a stream keep.
pub const MAX_NAMES_PER_TYPE: usize = 100_000;

/// The most names of a type one stream may subscribe to or report holding when the replica
/// serves `served` of them: [`MAX_NAMES_PER_TYPE`], or twice what is served when that is more.
/// An Envoy that holds a registry of more than `MAX_NAMES_PER_TYPE` builders and reconnects
/// reports every one of them, and must not be refused for it (it was, at 100,001 builders); a
/// hostile client stays bounded by the registry's size.
pub fn names_limit(served: usize) -> usize {
    MAX_NAMES_PER_TYPE.max(served.saturating_mul(2))
}

/// The changes to send for one type.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Resources the Envoy does not hold at this version.
    pub updates: Vec<Arc<Named>>,
    /// Names it holds that are gone.
    pub removals: Vec<String>,
}

impl Changes {
    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.updates.is_empty() && self.removals.is_empty()
    }
}

/// The delta protocol state of one stream.
#[derive(Debug, Default)]
pub struct DeltaState {
    nonces: u64,
    /// Boxed: a map's first node holds eleven entries inline, about 2 KiB of `DeltaType`s for
    /// the two to five types an Envoy subscribes to, on every stream (issue 17).
    types: BTreeMap<String, Box<DeltaType>>,
}

impl DeltaState {
    /// A new stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// The subscribed types and their state, ordered by type URL (clusters before listeners).
    pub fn types(&self) -> &BTreeMap<String, Box<DeltaType>> {
        &self.types
    }

    /// Whether applying `r` would make its type's subscription (or, on a first request, what
    /// the Envoy reports holding) exceed `limit` ([`names_limit`]); such a request is refused.
    pub fn too_many_names(&self, r: &Request<'_>, limit: usize) -> bool {
        let names = self.types.get(r.type_url).map_or(0, |t| t.names.len());
        let held = r.initial_versions.map_or(0, |h| h.len());
        names.saturating_add(r.subscribe.len()) > limit || held > limit
    }

    /// Applies a request: subscription changes, then its ACK or NACK.
    pub fn on_request(&mut self, r: &Request<'_>) -> Outcome {
        let mut out = Outcome::default();
        let first = !self.types.contains_key(r.type_url);
        let t = type_state(&mut self.types, r.type_url);
        if first {
            out.first = true;
            // Legacy wildcard: a first request without names subscribes to everything.
            t.wildcard = r.subscribe.is_empty();
            if let Some(held) = r.initial_versions {
                t.held = held
                    .iter()
                    .map(|(name, version)| {
                        let placeholder = Named {
                            name: name.clone(),
                            version: version.clone(),
                            resource: Any::default(),
                        };
                        (name.clone(), Arc::new(placeholder))
                    })
                    .collect();
            }
        }
        for name in r.subscribe {
            if name == "*" {
                out.resync |= !t.wildcard;
                t.wildcard = true;
            } else if t.names.insert(name.clone()) && !t.wildcard {
                out.resync = true;
                t.unanswered.insert(name.clone());
            }
        }
        for name in r.unsubscribe {
            if name == "*" {
                t.wildcard = false;
            } else {
                t.names.remove(name);
                t.unanswered.remove(name);
            }
            // Envoy drops what it no longer subscribes to.
            if !t.subscribed(name) {
                t.held.remove(name);
            }
        }
        if !t.wildcard && !r.unsubscribe.is_empty() {
            let names = &t.names;
            t.held = t
                .held
                .iter()
                .filter(|(n, _)| names.contains(*n))
                .map(|(n, r)| (n.clone(), r.clone()))
                .collect();
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
    pub fn changes(&self, type_url: &str, current: &Resources) -> Changes {
        let mut c = Changes::default();
        let Some(t) = self.types.get(type_url) else {
            return c;
        };
        for d in t.held.diff(current) {
            match d {
                DiffItem::Add(name, n) | DiffItem::Update { new: (name, n), .. } => {
                    if t.subscribed(name) {
                        c.updates.push(n.clone());
                    }
                }
                DiffItem::Remove(name, _) => c.removals.push(name.clone()),
            }
        }
        for name in &t.unanswered {
            if !current.contains_key(name) && !t.held.contains_key(name) {
                c.removals.push(name.clone());
            }
        }
        c
    }

    /// Marks `current` as held without sending it (a version this Envoy NACKed on an earlier
    /// stream is not sent again).
    pub fn assume_held(&mut self, type_url: &str, current: &Resources) {
        if let Some(t) = self.types.get_mut(type_url) {
            t.held = if t.wildcard {
                current.clone()
            } else {
                let names = &t.names;
                current
                    .iter()
                    .filter(|(n, _)| names.contains(*n))
                    .map(|(n, r)| (n.clone(), r.clone()))
                    .collect()
            };
        }
    }

    /// Records that the Envoy holds `type_url` at `revision` without a response, when it is in
    /// sync: it ACKed the last response of the type and nothing it subscribes to differs in
    /// `current` (the caller found no [`Changes`]). Returns false, changing nothing, when the
    /// type is not in sync that way (never answered, a response out, the last one NACKed):
    /// then a response must go.
    pub fn hold(&mut self, type_url: &str, revision: u64, current: &Resources) -> bool {
        let Some(t) = self.types.get_mut(type_url) else {
            return false;
        };
        if t.sent.is_none() || t.pending() || t.acked != t.sent || !t.unanswered.is_empty() {
            return false;
        }
        if t.wildcard {
            // The same resources: share the new snapshot's map, so the old one is not kept.
            t.held = current.clone();
        }
        t.sent = Some(revision);
        t.acked = Some(revision);
        true
    }

    /// Records a response about to be sent at `revision` with `changes`, computed against
    /// `current`, and returns its nonce.
    pub fn record_sent(
        &mut self,
        type_url: &str,
        revision: u64,
        changes: &Changes,
        current: &Resources,
    ) -> String {
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        let t = type_state(&mut self.types, type_url);
        if t.wildcard {
            // Every difference went out: the Envoy now holds exactly `current`, and shares its
            // structure (no copy per stream).
            t.held = current.clone();
        } else {
            for n in &changes.updates {
                t.held.insert(n.name.clone(), n.clone());
            }
            for name in &changes.removals {
                t.held.remove(name);
            }
        }
        t.unanswered.clear();
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

    fn named(name: &str, version: &str) -> Arc<Named> {
        Arc::new(Named {
            name: name.into(),
            version: version.into(),
            resource: Any::default(),
        })
    }

    fn map(items: &[&Arc<Named>]) -> Resources {
        items
            .iter()
            .map(|n| (n.name.clone(), Arc::clone(n)))
            .collect()
    }

    fn first_request<'a>(held: Option<&'a HashMap<String, String>>) -> Request<'a> {
        Request {
            type_url: CLUSTER_TYPE,
            initial_versions: held,
            ..Request::default()
        }
    }

    fn names(c: &Changes) -> Vec<String> {
        c.updates.iter().map(|n| n.name.clone()).collect()
    }

    #[test]
    fn wildcard_gets_everything_then_only_changes() {
        let mut s = DeltaState::new();
        let out = s.on_request(&first_request(None));
        assert!(out.first);
        let (a, b) = (named("a", "1"), named("b", "1"));
        let c = s.changes(CLUSTER_TYPE, &map(&[&a, &b]));
        assert_eq!(names(&c), ["a", "b"]);
        let nonce = s.record_sent(CLUSTER_TYPE, 5, &c, &map(&[&a, &b]));
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
        let c = s.changes(CLUSTER_TYPE, &map(&[&b2, &c1]));
        assert_eq!(names(&c), ["b", "c"]);
        assert_eq!(c.removals, ["a"]);
        let now = map(&[&b2, &c1]);
        s.record_sent(CLUSTER_TYPE, 6, &c, &now);
        assert!(s.changes(CLUSTER_TYPE, &now).is_empty());
        assert!(
            s.types()[CLUSTER_TYPE].held.ptr_eq(&now),
            "in sync, a stream shares the snapshot's map instead of copying it"
        );
    }

    #[test]
    fn a_change_of_k_builders_sends_k() {
        use crate::resources::ResourceConfig;
        use crate::snapshot::Snapshot;
        use concord_registry::{Batch, Builder, Command, Registry, Source};
        let builder = |i: usize, port: u16| Builder {
            id: format!("b{i}"),
            addr: format!("10.0.0.1:{port}").parse().unwrap(),
            sni: format!("b{i}.builders.example.com"),
            region: String::new(),
            labels: Default::default(),
            source: Source::Api,
        };
        let apply = |r: &mut Registry, index, upserts, removes| {
            r.apply(
                index,
                &Command::new(Source::Api, Batch { upserts, removes }),
            );
        };
        let mut r = Registry::new();
        apply(
            &mut r,
            1,
            (0..1000).map(|i| builder(i, 443)).collect(),
            vec![],
        );
        let first = Snapshot::build(Arc::new(r.clone()), ResourceConfig::default());
        let mut s = DeltaState::new();
        s.on_request(&first_request(None));
        let all = first.cluster_map();
        let c = s.changes(CLUSTER_TYPE, &all);
        assert_eq!(c.updates.len(), 1000);
        s.record_sent(CLUSTER_TYPE, 1, &c, &all);
        // k = 3: one added, one changed, one removed.
        apply(
            &mut r,
            2,
            vec![builder(1000, 443), builder(5, 444)],
            vec!["b7".into()],
        );
        let second = first.next(Arc::new(r));
        assert_eq!(second.serialised(), 2);
        let c = s.changes(CLUSTER_TYPE, &second.cluster_map());
        assert_eq!(names(&c), ["builder_b1000", "builder_b5"]);
        assert_eq!(c.removals, ["builder_b7"]);
    }

    #[test]
    fn an_acked_type_with_nothing_new_is_held_at_the_revision_and_only_then() {
        use crate::resources::LISTENER_TYPE;
        let mut s = DeltaState::new();
        let l = named("l", "1");
        let now = map(&[&l]);
        assert!(!s.hold(LISTENER_TYPE, 1, &now), "a type never asked for");
        s.on_request(&Request {
            type_url: LISTENER_TYPE,
            ..Request::default()
        });
        assert!(!s.hold(LISTENER_TYPE, 1, &now), "never answered");
        let c = s.changes(LISTENER_TYPE, &now);
        let nonce = s.record_sent(LISTENER_TYPE, 1, &c, &now);
        assert!(!s.hold(LISTENER_TYPE, 2, &now), "a response is out");
        s.on_request(&Request {
            type_url: LISTENER_TYPE,
            nonce: &nonce,
            ..Request::default()
        });
        let same = map(&[&l]);
        assert!(s.hold(LISTENER_TYPE, 2, &same));
        let t = &s.types()[LISTENER_TYPE];
        assert_eq!((t.sent, t.acked, t.pending()), (Some(2), Some(2), false));
        assert!(t.held.ptr_eq(&same), "it shares the newer map");
        // NACKed: the Envoy does not hold what it was sent, so a response must go.
        let l2 = named("l", "2");
        let next = map(&[&l2]);
        let c = s.changes(LISTENER_TYPE, &next);
        let nonce = s.record_sent(LISTENER_TYPE, 3, &c, &next);
        s.on_request(&Request {
            type_url: LISTENER_TYPE,
            nonce: &nonce,
            error: Some("bad listener"),
            ..Request::default()
        });
        assert!(!s.hold(LISTENER_TYPE, 4, &next));
        assert_eq!(s.types()[LISTENER_TYPE].sent, Some(3), "unchanged");
    }

    #[test]
    fn reconnect_gets_only_what_differs() {
        let held: HashMap<String, String> = [("a", "1"), ("b", "1"), ("gone", "1")]
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .into();
        let mut s = DeltaState::new();
        s.on_request(&first_request(Some(&held)));
        let (a, b2) = (named("a", "1"), named("b", "2"));
        let c = s.changes(CLUSTER_TYPE, &map(&[&a, &b2]));
        assert_eq!(names(&c), ["b"]);
        assert_eq!(c.removals, ["gone"]);
        // Holding exactly what is served: nothing to send.
        let mut s = DeltaState::new();
        let same: HashMap<String, String> = [("a".to_string(), "1".to_string())].into();
        s.on_request(&first_request(Some(&same)));
        assert!(s.changes(CLUSTER_TYPE, &map(&[&a])).is_empty());
    }

    #[test]
    fn nacked_versions_are_not_resent() {
        let mut s = DeltaState::new();
        s.on_request(&first_request(None));
        let a = named("a", "1");
        let c = s.changes(CLUSTER_TYPE, &map(&[&a]));
        let nonce = s.record_sent(CLUSTER_TYPE, 3, &c, &map(&[&a]));
        let out = s.on_request(&Request {
            type_url: CLUSTER_TYPE,
            nonce: &nonce,
            error: Some("bad cluster"),
            ..Request::default()
        });
        assert_eq!(out.nacked, Some((3, "bad cluster".to_string())));
        assert_eq!(out.acked, None);
        assert!(
            s.changes(CLUSTER_TYPE, &map(&[&a])).is_empty(),
            "not sent again"
        );
        let a2 = named("a", "2");
        assert_eq!(
            names(&s.changes(CLUSTER_TYPE, &map(&[&a2]))),
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
        let c = s.changes(CLUSTER_TYPE, &map(&[&a, &b]));
        assert_eq!(names(&c), ["a"]);
        s.record_sent(CLUSTER_TYPE, 1, &c, &map(&[&a, &b]));
        let star = vec!["*".to_string()];
        let out = s.on_request(&Request {
            type_url: CLUSTER_TYPE,
            subscribe: &star,
            ..Request::default()
        });
        assert!(out.resync);
        assert_eq!(names(&s.changes(CLUSTER_TYPE, &map(&[&a, &b]))), ["b"]);
        let out = s.on_request(&Request {
            type_url: CLUSTER_TYPE,
            unsubscribe: &star,
            ..Request::default()
        });
        assert!(!out.resync);
        assert!(s.changes(CLUSTER_TYPE, &map(&[&a, &b])).is_empty());
    }

    #[test]
    fn the_names_limit_grows_with_what_is_served() {
        assert_eq!(names_limit(10), MAX_NAMES_PER_TYPE);
        assert_eq!(names_limit(150_000), 300_000);
        let s = DeltaState::new();
        // An Envoy reconnecting with a registry of MAX + 2 builders reports every one.
        let held: HashMap<String, String> = (0..MAX_NAMES_PER_TYPE + 2)
            .map(|i| (format!("b{i}"), "v".to_string()))
            .collect();
        let r = Request {
            type_url: CLUSTER_TYPE,
            initial_versions: Some(&held),
            ..Request::default()
        };
        assert!(s.too_many_names(&r, names_limit(10)));
        assert!(!s.too_many_names(&r, names_limit(MAX_NAMES_PER_TYPE + 2)));
    }

    #[test]
    fn a_name_that_does_not_exist_is_answered_removed_once() {
        let mut s = DeltaState::new();
        let sub = vec!["a".to_string(), "missing".to_string()];
        s.on_request(&Request {
            type_url: CLUSTER_TYPE,
            subscribe: &sub,
            ..Request::default()
        });
        let a = named("a", "1");
        let c = s.changes(CLUSTER_TYPE, &map(&[&a]));
        assert_eq!(
            (names(&c), c.removals.clone()),
            (vec!["a".to_string()], vec!["missing".to_string()])
        );
        s.record_sent(CLUSTER_TYPE, 1, &c, &map(&[&a]));
        // Told once: later responses do not repeat it.
        assert!(s.changes(CLUSTER_TYPE, &map(&[&a])).is_empty());
        // It appears later: it is sent, as any subscribed resource.
        let m = named("missing", "1");
        assert_eq!(
            names(&s.changes(CLUSTER_TYPE, &map(&[&a, &m]))),
            ["missing"]
        );
        // Asked for again after an unsubscribe: answered again.
        let (gone, again) = (vec!["other".to_string()], vec!["other".to_string()]);
        s.on_request(&Request {
            type_url: CLUSTER_TYPE,
            subscribe: &gone,
            ..Request::default()
        });
        s.on_request(&Request {
            type_url: CLUSTER_TYPE,
            unsubscribe: &gone,
            ..Request::default()
        });
        assert!(s.changes(CLUSTER_TYPE, &map(&[&a])).is_empty());
        s.on_request(&Request {
            type_url: CLUSTER_TYPE,
            subscribe: &again,
            ..Request::default()
        });
        assert_eq!(s.changes(CLUSTER_TYPE, &map(&[&a])).removals, ["other"]);
    }
}
