//! Endpoint leases and drains, kept by the leader (DESIGN rule 11; issue 14).
//!
//! Registering an endpoint, marking it draining and its removal are Raft entries; a renewal is
//! not. As in etcd, the leader alone holds every lease's deadline in memory: a renewal (sent to
//! the leader; a follower forwards it) moves the deadline to now + TTL, and when a deadline
//! passes the leader commits an expiry. A new leader starts every lease afresh: each deadline is
//! one full TTL from the moment it took over, and each drain one full drain timeout. So no lease
//! is lost in a failover (the registration is in the log), and none expires early: a lease
//! expires only after a leader has heard no renewal for a whole TTL, and every renewal an
//! instance saw acknowledged reached the leader that was leading then, whose successor grants a
//! whole TTL again. A deposed leader that has not noticed yet answers renewals only while it has
//! heard from a quorum within the quorum timeout (as it answers writes), so the new leader adds
//! that timeout to every lease it takes over. The price: a failover can extend a lease by up to
//! one TTL and the quorum timeout.
//!
//! An expiry names the registration it is about (its log index), so an expiry decided for an
//! earlier registration never removes a newer one of the same id.

use concord_registry::Registry;
use concord_registry::services::EndpointChange;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the leader looks for lapsed leases and ended drains.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);

/// After proposing an expiry, how long the leader waits before proposing it again if it has
/// not been applied (the proposal failed, or is slow).
const RETRY_AFTER: Duration = Duration::from_secs(1);

type Key = (String, String);

#[derive(Debug, Clone)]
struct Lease {
    registered_at: u64,
    ttl: Option<Duration>,
    /// When the lease lapses (none without a TTL).
    deadline: Option<Instant>,
    /// When a drain ends.
    drained_at: Option<Instant>,
}

/// What the leader knows of every registered endpoint's lease and drain.
#[derive(Debug, Default)]
pub struct Leases {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The term this table was built for; none while this node does not lead.
    term: Option<u64>,
    /// The registry it was last brought up to date with.
    registry: Option<Arc<Registry>>,
    leases: HashMap<Key, Lease>,
}

/// Why a renewal was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewError {
    /// This node does not lead (the caller forwards to the leader).
    NotLeading,
    /// No such endpoint is registered.
    Unknown,
    /// The endpoint has no lease to renew.
    NoLease,
}

impl Leases {
    /// Brings the table up to date with `registry` while this node leads in `term`: a new term
    /// starts every lease afresh, one TTL plus `grace` from `now` (`grace` covers the renewals
    /// a deposed leader may still have acknowledged: see [`Leases`]), and every drain; after that
    /// only the services whose endpoints changed are looked at, and a new registration is
    /// granted from `now`.
    pub fn sync(&self, term: u64, registry: &Arc<Registry>, now: Instant, grace: Duration) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = inner.term != Some(term);
        // Leases found on taking over get the grace too; registrations seen later do not.
        let grace = if fresh || inner.registry.is_none() {
            grace
        } else {
            Duration::ZERO
        };
        if fresh {
            inner.leases.clear();
            inner.term = Some(term);
            inner.registry = None;
        }
        let services: Vec<String> = match &inner.registry {
            Some(prev) if Arc::ptr_eq(prev, registry) => return,
            Some(prev) => registry.changed_services(prev),
            None => registry.endpoint_map().keys().cloned().collect(),
        };
        inner.registry = Some(registry.clone());
        for service in services {
            let drain = registry
                .desired()
                .services
                .get(&service)
                .map_or(Duration::ZERO, |s| s.drain_timeout.std());
            inner
                .leases
                .retain(|(s, id), _| *s != service || registry.endpoint(s, id).is_some());
            for e in registry.endpoints_of(&service) {
                let key = (service.clone(), e.id.clone());
                let granted = || Lease {
                    registered_at: e.registered_at,
                    ttl: e.ttl.map(|t| t.std()),
                    deadline: e.ttl.map(|t| now + t.std() + grace),
                    drained_at: None,
                };
                let lease = inner.leases.entry(key).or_insert_with(granted);
                if lease.registered_at != e.registered_at {
                    *lease = granted();
                }
                if e.draining && lease.drained_at.is_none() {
                    lease.drained_at = Some(now + drain);
                }
            }
        }
    }

    /// Forgets everything: this node no longer leads.
    pub fn clear(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.term = None;
        inner.registry = None;
        inner.leases.clear();
    }

    /// Renews the lease of `service`/`id` from `now`: its TTL.
    pub fn renew(&self, service: &str, id: &str, now: Instant) -> Result<Duration, RenewError> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.term.is_none() {
            return Err(RenewError::NotLeading);
        }
        let lease = inner
            .leases
            .get_mut(&(service.to_string(), id.to_string()))
            .ok_or(RenewError::Unknown)?;
        let ttl = lease.ttl.ok_or(RenewError::NoLease)?;
        lease.deadline = Some(now + ttl);
        Ok(ttl)
    }

    /// The expiries due at `now` (lapsed leases, ended drains); each is not offered again for a
    /// while, so a slow commit is not proposed twice at once.
    pub fn due(&self, now: Instant) -> Vec<EndpointChange> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for ((service, id), l) in inner.leases.iter_mut() {
            let lapsed = l.deadline.is_some_and(|d| d <= now);
            let drained = l.drained_at.is_some_and(|d| d <= now);
            if lapsed || drained {
                out.push(EndpointChange::Expire {
                    service: service.clone(),
                    id: id.clone(),
                    registered_at: l.registered_at,
                });
                if lapsed {
                    l.deadline = Some(now + RETRY_AFTER);
                }
                if drained {
                    l.drained_at = Some(now + RETRY_AFTER);
                }
            }
        }
        out.sort_by(|a, b| a.key().cmp(&b.key()));
        out
    }

    /// How many leases the table holds (status).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .leases
            .len()
    }

    /// True when it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_registry::Command;
    use concord_registry::services::{Desired, Duration as D};

    fn registry() -> Registry {
        let desired: Desired = serde_json::from_value(serde_json::json!({
            "services": {"echo": {"protocol": "grpc", "drain_timeout": "5s"}}
        }))
        .unwrap();
        let mut r = Registry::new();
        r.apply(1, &Command::raise_format(2));
        r.apply(2, &Command::apply_services(desired));
        r
    }

    fn register(id: &str, ttl: Option<u64>) -> EndpointChange {
        EndpointChange::Register {
            service: "echo".into(),
            id: id.into(),
            addr: "127.0.0.1:50051".parse().unwrap(),
            weight: 1,
            labels: Default::default(),
            ttl: ttl.map(D::from_secs),
        }
    }

    fn expire(id: &str, at: u64) -> EndpointChange {
        EndpointChange::Expire {
            service: "echo".into(),
            id: id.into(),
            registered_at: at,
        }
    }

    /// A lease lapses one TTL after its last renewal and not before; a renewal of an unknown
    /// endpoint or one without a lease is refused; a new term grants every lease afresh.
    #[test]
    fn leases_lapse_a_ttl_after_the_last_renewal() {
        let mut r = registry();
        r.apply(
            3,
            &Command::endpoints(vec![register("e1", Some(10)), register("e2", None)]),
        );
        let r = Arc::new(r);
        let l = Leases::default();
        let t0 = Instant::now();
        assert_eq!(l.renew("echo", "e1", t0), Err(RenewError::NotLeading));
        l.sync(5, &r, t0, Duration::ZERO);
        assert_eq!(l.len(), 2);
        assert!(l.due(t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(
            l.renew("echo", "e1", t0 + Duration::from_secs(9)),
            Ok(Duration::from_secs(10))
        );
        assert!(l.due(t0 + Duration::from_secs(18)).is_empty());
        assert_eq!(l.due(t0 + Duration::from_secs(19)), [expire("e1", 3)]);
        // Offered once, then again only after the retry pause.
        assert!(l.due(t0 + Duration::from_millis(19_500)).is_empty());
        assert_eq!(l.renew("echo", "nope", t0), Err(RenewError::Unknown));
        assert_eq!(l.renew("echo", "e2", t0), Err(RenewError::NoLease));
        // A new leader (term) starts every lease from its own clock.
        let t1 = t0 + Duration::from_secs(100);
        l.sync(6, &r, t1, Duration::from_secs(1));
        // One TTL and the grace: a deposed leader may have acknowledged a renewal meanwhile.
        assert!(l.due(t1 + Duration::from_millis(10_999)).is_empty());
        assert_eq!(l.due(t1 + Duration::from_secs(11)), [expire("e1", 3)]);
    }

    /// A drain ends one drain timeout after the leader saw it; a re-registration is a new
    /// lease whose expiry names it.
    #[test]
    fn drains_end_and_re_registrations_start_over() {
        let mut r = registry();
        r.apply(3, &Command::endpoints(vec![register("e1", Some(10))]));
        let l = Leases::default();
        let t0 = Instant::now();
        let r3 = Arc::new(r.clone());
        l.sync(1, &r3, t0, Duration::ZERO);
        r.apply(
            4,
            &Command::endpoints(vec![EndpointChange::Drain {
                service: "echo".into(),
                id: "e1".into(),
            }]),
        );
        let t1 = t0 + Duration::from_secs(1);
        l.sync(1, &Arc::new(r.clone()), t1, Duration::ZERO);
        assert!(l.due(t1 + Duration::from_millis(4_999)).is_empty());
        assert_eq!(l.due(t1 + Duration::from_secs(5)), [expire("e1", 3)]);
        r.apply(7, &Command::endpoints(vec![register("e1", Some(10))]));
        let t2 = t0 + Duration::from_secs(7);
        l.sync(1, &Arc::new(r.clone()), t2, Duration::ZERO);
        assert_eq!(l.due(t2 + Duration::from_secs(10)), [expire("e1", 7)]);
        // Gone from the registry: gone from the table.
        r.apply(8, &Command::endpoints(vec![expire("e1", 7)]));
        l.sync(1, &Arc::new(r), t2, Duration::ZERO);
        assert!(l.is_empty());
    }
}
