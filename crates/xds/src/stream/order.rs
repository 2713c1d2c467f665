//! Make before break (DESIGN rule 10), per stream and the same for both protocols: a service's
//! cluster reaches the Envoy and warms before a route that points at it, and leaves only once no
//! route the Envoy holds can reference it. Push order alone (clusters, endpoints, …, routes) is
//! not enough: a route sent right behind its new cluster arrives while the cluster still warms
//! (it waits for its load assignment), and a cluster removal lands before the routes that stop
//! using it, so calls fail with 503 in between.
//!
//! - **Removals wait for the routes.** A service cluster or load assignment that leaves the
//!   snapshot at revision R is kept in what this Envoy is sent until it ACKs routes of revision R
//!   or later: routes of R no longer reference it (the desired state is validated whole). Then
//!   it is sent again without them ([`Order::take_resend`]). An Envoy that NACKs the routes keeps
//!   its older ones, so it keeps the clusters they use.
//! - **Routes wait for new clusters.** While a service cluster new to this Envoy is not yet
//!   ACKed in clusters and its load assignment not ACKed in endpoints, pushes of routes wait
//!   ([`Order::routes_may_go`]). First responses are never held (rule 4); an Envoy asks for
//!   routes only after its clusters warmed.
//!
//! Only services' resources take part: builders' clusters are STATIC and referenced by no route.
//! Pure: the drivers say what each type has been sent and ACKed.

use crate::resource_type::{CLUSTERS, ENDPOINTS};
use crate::snapshot::{Named, Resources};
use envoy_types::pb::google::protobuf::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What a driver knows of one type on its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TypeInfo {
    /// The newest revision the Envoy ACKed.
    pub acked: Option<u64>,
    /// A response is out, not yet answered.
    pub pending: bool,
}

impl From<&crate::protocol::delta::DeltaType> for TypeInfo {
    fn from(t: &crate::protocol::delta::DeltaType) -> Self {
        TypeInfo {
            acked: t.acked,
            pending: t.pending(),
        }
    }
}

impl From<&crate::protocol::sotw::TypeState> for TypeInfo {
    fn from(t: &crate::protocol::sotw::TypeState) -> Self {
        TypeInfo {
            acked: t.acked,
            pending: t.pending(),
        }
    }
}

/// Whether `name` is a service's cluster or load assignment.
fn is_service(name: &str) -> bool {
    name.starts_with("service_")
}

/// The make-before-break state of one stream.
#[derive(Debug, Default)]
pub(crate) struct Order {
    /// Per kept type (clusters, endpoints, in [`KEPT`]'s order): the snapshot's resources when
    /// it was last sent. Arrays, not maps keyed by type: a map's first node is about 450 bytes
    /// for two entries, on every stream (issue 17, 10,000 streams a replica).
    last: [Option<Resources>; 2],
    /// Per kept type: resources gone from the snapshot but kept for this Envoy, with the
    /// revision they left at.
    kept: [BTreeMap<String, (Arc<Named>, u64)>; 2],
    /// Service clusters new to this Envoy, and the revision they came at, until warm.
    fresh: BTreeMap<String, u64>,
    /// Types to send again at the same revision: kept resources were let go.
    resend: BTreeSet<&'static str>,
}

/// Whether `type_url` takes part in keeping (clusters and endpoints): its views need
/// [`Order::view`].
pub(crate) fn keeps(type_url: &str) -> bool {
    kept_type(type_url).is_some()
}

/// The types that take part in keeping.
const KEPT: [&str; 2] = [CLUSTERS.type_url, ENDPOINTS.type_url];

/// The kept type `type_url` is, if it is one: its index in [`KEPT`].
fn kept_type(type_url: &str) -> Option<usize> {
    KEPT.iter().position(|t| *t == type_url)
}

impl Order {
    /// What to send of `type_url` at `revision`, where the snapshot has `current`: for
    /// clusters and endpoints, `current` and what is kept; else `current`. `routes` is what
    /// the stream knows of routes (None: the Envoy takes none, so nothing is kept for them).
    pub(crate) fn view(
        &mut self,
        type_url: &str,
        current: Resources,
        revision: u64,
        routes: Option<TypeInfo>,
    ) -> Resources {
        let Some(i) = kept_type(type_url) else {
            return current;
        };
        let t = KEPT[i];
        let routes_at = routes.and_then(|r| r.acked).unwrap_or(0);
        let kept = &mut self.kept[i];
        if let Some(last) = &self.last[i] {
            for d in last.diff(&current) {
                match d {
                    imbl::ordmap::DiffItem::Remove(name, named)
                        if routes.is_some() && is_service(name) && routes_at < revision =>
                    {
                        kept.insert(name.clone(), (named.clone(), revision));
                    }
                    imbl::ordmap::DiffItem::Add(name, _)
                        if t == CLUSTERS.type_url && is_service(name) =>
                    {
                        self.fresh.insert(name.clone(), revision);
                    }
                    _ => {}
                }
            }
        } else if t == CLUSTERS.type_url {
            // The stream's first clusters: all of them are new to it.
            self.fresh.extend(
                current
                    .keys()
                    .filter(|n| is_service(n))
                    .map(|n| (n.clone(), revision)),
            );
        }
        kept.retain(|name, _| !current.contains_key(name));
        self.fresh.retain(|name, _| current.contains_key(name));
        self.last[i] = Some(current.clone());
        let mut view = current;
        for (name, (named, _)) in kept.iter() {
            view.insert(name.clone(), named.clone());
        }
        view
    }

    /// The kept resources of `type_url`, for a state-of-the-world response (which lists every
    /// resource).
    pub(crate) fn kept_resources(&self, type_url: &str) -> Vec<Any> {
        kept_type(type_url)
            .map(|i| {
                self.kept[i]
                    .values()
                    .map(|(n, _)| n.resource.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The Envoy ACKed routes of `revision`: what left before or at it is no longer referenced.
    pub(crate) fn routes_acked(&mut self, revision: u64) {
        for (t, kept) in KEPT.iter().zip(&mut self.kept) {
            let before = kept.len();
            kept.retain(|_, (_, left)| *left > revision);
            if kept.len() != before {
                self.resend.insert(t);
            }
        }
    }

    /// Whether a push of routes may go now: every service cluster new to this Envoy is ACKed
    /// in clusters, and its load assignment (`eds_holds`) ACKed in endpoints with no response
    /// out, at or after the revision it came.
    pub(crate) fn routes_may_go(
        &mut self,
        info: impl Fn(&str) -> Option<TypeInfo>,
        eds_holds: impl Fn(&str) -> bool,
    ) -> bool {
        let (cds, eds) = (info(CLUSTERS.type_url), info(ENDPOINTS.type_url));
        let warm = |name: &String, came: u64| {
            let at = |t: Option<TypeInfo>| t.and_then(|t| t.acked).is_some_and(|a| a >= came);
            at(cds) && at(eds) && eds.is_some_and(|e| !e.pending) && eds_holds(name)
        };
        self.fresh.retain(|name, came| !warm(name, *came));
        self.fresh.is_empty()
    }

    /// Types to send again at the snapshot's revision (kept resources let go), unless a
    /// response of theirs is out (`pending`): they stay listed until sent.
    pub(crate) fn take_resend(&mut self, pending: impl Fn(&str) -> bool) -> Vec<String> {
        let due: Vec<&'static str> = self
            .resend
            .iter()
            .copied()
            .filter(|t| !pending(t))
            .collect();
        for t in &due {
            self.resend.remove(t);
        }
        due.into_iter().map(String::from).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(names: &[&str]) -> Resources {
        names
            .iter()
            .map(|n| {
                let named = Named {
                    name: n.to_string(),
                    version: "1".into(),
                    resource: Any::default(),
                };
                (n.to_string(), Arc::new(named))
            })
            .collect()
    }

    fn names(r: &Resources) -> Vec<&str> {
        r.keys().map(String::as_str).collect()
    }

    const ACKED: fn(u64) -> Option<TypeInfo> = |r| {
        Some(TypeInfo {
            acked: Some(r),
            pending: false,
        })
    };

    #[test]
    fn a_removed_cluster_stays_until_the_routes_of_its_removal_are_acked() {
        let mut o = Order::default();
        let cds = CLUSTERS.type_url;
        o.view(cds, res(&["builder_b", "service_a"]), 1, ACKED(1));
        // At 2, service_a goes (a route moved to service_b): kept while routes are at 1.
        let v = o.view(cds, res(&["builder_b", "service_b"]), 2, ACKED(1));
        assert_eq!(names(&v), ["builder_b", "service_a", "service_b"]);
        assert_eq!(o.kept_resources(cds).len(), 1);
        // A builder leaves at once: no route references it.
        let v = o.view(cds, res(&["service_b"]), 3, ACKED(1));
        assert_eq!(names(&v), ["service_a", "service_b"]);
        // Routes of 1 ACKed again (a NACK of 2 left them): still kept.
        o.routes_acked(1);
        assert!(o.take_resend(|_| false).is_empty());
        // Routes of 2 ACKed: let go, and clusters are to be sent again.
        o.routes_acked(2);
        assert_eq!(
            o.take_resend(|_| true),
            Vec::<String>::new(),
            "waits while pending"
        );
        assert_eq!(o.take_resend(|_| false), [cds]);
        let v = o.view(cds, res(&["service_b"]), 3, ACKED(2));
        assert_eq!(names(&v), ["service_b"]);
        // An Envoy that takes no routes keeps nothing.
        let mut o = Order::default();
        o.view(cds, res(&["service_a"]), 1, None);
        assert_eq!(names(&o.view(cds, res(&[]), 2, None)), Vec::<&str>::new());
        // A removal seen after the routes of its revision were ACKed is not kept.
        let mut o = Order::default();
        o.view(cds, res(&["service_a"]), 1, ACKED(1));
        assert!(o.view(cds, res(&[]), 2, ACKED(2)).is_empty());
    }

    #[test]
    fn routes_wait_until_new_clusters_and_their_endpoints_are_acked() {
        let mut o = Order::default();
        let (cds, eds) = (CLUSTERS.type_url, ENDPOINTS.type_url);
        o.view(cds, res(&["service_a"]), 1, ACKED(1));
        let all_acked = |r: u64| move |_: &str| ACKED(r);
        assert!(
            !o.routes_may_go(all_acked(0), |_| true),
            "first clusters not ACKed"
        );
        assert!(o.routes_may_go(all_acked(1), |_| true));
        o.view(cds, res(&["service_a", "service_b"]), 2, ACKED(1));
        assert!(!o.routes_may_go(all_acked(1), |_| true));
        let cds_only = |t: &str| if t == cds { ACKED(2) } else { ACKED(1) };
        assert!(!o.routes_may_go(cds_only, |_| true), "endpoints not ACKed");
        let eds_pending = |t: &str| {
            Some(TypeInfo {
                acked: Some(2),
                pending: t == eds,
            })
        };
        assert!(
            !o.routes_may_go(eds_pending, |_| true),
            "an endpoints response is out"
        );
        assert!(
            !o.routes_may_go(all_acked(2), |n| n != "service_b"),
            "no CLA held"
        );
        assert!(o.routes_may_go(all_acked(2), |_| true));
        // A cluster that leaves before it warmed holds nothing back.
        o.view(cds, res(&["service_a", "service_c"]), 3, ACKED(2));
        o.view(cds, res(&["service_a"]), 4, ACKED(2));
        assert!(o.routes_may_go(all_acked(2), |_| true));
    }
}
