//! What this replica knows of the Envoys streaming from it: who, since when, which version of
//! each type was sent and ACKed, and the last NACK — for the status endpoint and the CLI. The
//! types are the admin API's ([`concord_api::envoys`]); this module keeps them up to date.
//!
//! The versions each Envoy NACKed outlive its streams, so a reconnect is not sent them again
//! (DESIGN rule 5), but not forever: a client may stream as any number of node ids. An Envoy's
//! records go [`NACK_GRACE`] after its last stream here ends, and at most
//! [`MAX_NACK_RECORDS`] Envoys that left are remembered (the longest gone are forgotten
//! first). Connected Envoys keep theirs, and the status shows each stream's last NACK.

use crate::resource_type;
use concord_telemetry::unix_micros as now_us;
use envoy_types::pb::envoy::config::core::v3::Node;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// The status types are the admin API's (`GET /v1/envoys`, and the peer channel's cluster-wide
// view), so that they are defined once, next to the other response types.
pub use concord_api::envoys::{EnvoyStatus, NackStatus, TypeStatus};

/// How long the NACK records of an Envoy outlive its last stream here: its reconnects (a
/// failover back, the maximum stream age) still are not sent what it rejected.
const NACK_GRACE: Duration = Duration::from_secs(15 * 60);

/// At most this many NACK records of Envoys no longer connected; the oldest go first. Those of
/// connected Envoys are bounded by their streams (one per served type).
const MAX_NACK_RECORDS: usize = 4096;

/// Short names for the types this control plane serves.
pub fn type_name(type_url: &str) -> String {
    resource_type::find(type_url).map_or_else(|| type_url.to_string(), |t| t.name.to_string())
}

fn now_ms() -> u64 {
    now_us() / 1000
}

/// The registry of connected Envoys on one replica.
#[derive(Default)]
pub struct Envoys {
    inner: Mutex<Inner>,
    /// Which changes they ACKed, and how fast.
    pub(crate) changes: crate::acks::ChangeAcks,
}

/// One stream's status, shared by its driver (which updates it on every push and ACK, locking
/// only this stream's) and the registry (which reads it for the status endpoint). One mutex
/// and a 10,000-entry tree for every push of every stream cost 4 % of a replica at 10,000
/// streams (issue 17).
#[derive(Clone)]
pub(crate) struct StreamStatus(Arc<Mutex<EnvoyStatus>>);

impl StreamStatus {
    fn with<T>(&self, f: impl FnOnce(&mut EnvoyStatus) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn with_type(&self, type_url: &str, f: impl FnOnce(&mut TypeStatus)) {
        // The name is allocated only the first time a stream meets the type, not every push.
        let name = resource_type::find(type_url).map_or(type_url, |t| t.name);
        self.with(|s| {
            if !s.types.contains_key(name) {
                s.types.insert(name.to_string(), Box::default());
            }
            if let Some(t) = s.types.get_mut(name) {
                f(t);
            }
        })
    }

    /// A response of `version` is out.
    pub(crate) fn sent(&self, type_url: &str, version: u64, resources: usize, removals: usize) {
        self.with_type(type_url, |t| {
            t.sent = Some(version);
            t.pending = true;
            t.resources_sent += resources as u64;
            t.removals_sent += removals as u64;
        });
    }

    /// The Envoy ACKed `version`.
    pub(crate) fn acked(&self, type_url: &str, version: u64) {
        let at = now_us();
        self.with_type(type_url, |t| {
            t.acked = Some(version);
            t.acked_at_us = Some(at);
            t.pending = false;
        });
    }

    /// The Envoy holds `version` of `type_url` without a response: it ACKed the last one, and
    /// nothing of the type changed for it since. Shown as sent and ACKed at `version`; when the
    /// ACK arrived stays that of the ACK.
    pub(crate) fn held(&self, type_url: &str, version: u64) {
        self.with_type(type_url, |t| {
            t.sent = Some(version);
            t.acked = Some(version);
            t.pending = false;
        });
    }
}

#[derive(Default)]
struct Inner {
    streams: BTreeMap<u64, StreamStatus>,
    /// Node id → how many of its streams are connected now.
    connected: HashMap<String, usize>,
    /// Node id → what it NACKed here; survives reconnects, for a while.
    nacked: HashMap<String, Nacks>,
    /// The Envoys with NACK records and no stream, by when their last one ended.
    left: BTreeMap<(Instant, String), ()>,
    nacks_total: u64,
    /// Stream id → what selectors see of its Envoy (config canaries).
    traits: HashMap<u64, crate::envoy_select::NodeTraits>,
}

/// What one Envoy NACKed on this replica.
#[derive(Default)]
struct Nacks {
    /// Type URL (a served type: others are never answered) → the last version NACKed.
    versions: HashMap<String, u64>,
    /// When its last stream ended; `None` while one is connected.
    left_at: Option<Instant>,
}

impl Inner {
    /// Forgets the NACKs of Envoys gone longer than the grace period, then the longest gone
    /// beyond the cap.
    fn prune(&mut self, now: Instant) {
        while let Some(((at, _), ())) = self.left.first_key_value()
            && (now.saturating_duration_since(*at) > NACK_GRACE
                || self.left.len() > MAX_NACK_RECORDS)
        {
            if let Some(((_, node), ())) = self.left.pop_first() {
                self.nacked.remove(&node);
            }
        }
    }
}

impl Envoys {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Lists a stream's Envoy; the stream records its pushes in the status returned.
    pub(crate) fn connected(
        &self,
        stream: u64,
        node: &Node,
        peer: Option<SocketAddr>,
        traits: crate::envoy_select::NodeTraits,
    ) -> StreamStatus {
        let status = StreamStatus(Arc::new(Mutex::new(EnvoyStatus {
            node_id: node.id.clone(),
            node_cluster: node.cluster.clone(),
            stream,
            peer: peer.map(|p| p.to_string()),
            connected_at_ms: now_ms(),
            types: BTreeMap::new(),
            last_nack: None,
            staged: None,
        })));
        self.with(|i| {
            i.traits.insert(stream, traits);
            *i.connected.entry(node.id.clone()).or_default() += 1;
            if let Some(n) = i.nacked.get_mut(&node.id)
                && let Some(at) = n.left_at.take()
            {
                i.left.remove(&(at, node.id.clone()));
            }
            i.streams.insert(stream, status.clone());
            i.prune(Instant::now());
        });
        status
    }

    pub(crate) fn disconnected(&self, stream: u64) {
        self.with(|i| {
            i.traits.remove(&stream);
            let Some(status) = i.streams.remove(&stream) else {
                return;
            };
            let node = status.with(|s| s.node_id.clone());
            let Some(count) = i.connected.get_mut(&node) else {
                return;
            };
            *count -= 1;
            if *count > 0 {
                return;
            }
            i.connected.remove(&node);
            let now = Instant::now();
            if let Some(n) = i.nacked.get_mut(&node) {
                n.left_at = Some(now);
                i.left.insert((now, node), ());
            }
            i.prune(now);
        });
    }

    /// The Envoy of the stream with `status` NACKed `version`: shown in the status, and
    /// recorded for its node so a reconnect is not sent it again.
    pub(crate) fn nacked(
        &self,
        status: &StreamStatus,
        node_id: &str,
        type_url: &str,
        version: u64,
        message: &str,
    ) {
        status.with_type(type_url, |t| t.pending = false);
        status.with(|s| {
            s.last_nack = Some(NackStatus {
                type_name: type_name(type_url),
                version,
                message: message.to_string(),
                at_ms: now_ms(),
            })
        });
        self.with(|i| {
            i.nacks_total += 1;
            // Recorded only for a connected Envoy (a driver NACKs after its stream's hello), so
            // the record is not among those that left.
            if i.connected.contains_key(node_id) {
                let n = i.nacked.entry(node_id.to_string()).or_default();
                n.versions.insert(type_url.to_string(), version);
            }
        });
    }

    pub(crate) fn nacked_before(&self, node_id: &str, type_url: &str) -> Option<u64> {
        self.with(|i| {
            i.nacked
                .get(node_id)
                .and_then(|n| n.versions.get(type_url))
                .copied()
        })
    }

    /// Every connected Envoy, by stream id.
    pub fn list(&self) -> Vec<EnvoyStatus> {
        self.with(|i| i.streams.values().map(|s| s.with(|s| s.clone())).collect())
    }

    /// Every stream's status, each saying whether its Envoy is of `group` (the staged
    /// configuration's) when one is staged.
    pub fn list_staged(
        &self,
        group: Option<&[concord_registry::services::select::EnvoySelector]>,
    ) -> Vec<EnvoyStatus> {
        use concord_registry::services::select::in_group;
        self.with(|i| {
            i.streams
                .iter()
                .map(|(id, s)| {
                    let mut s = s.with(|s| s.clone());
                    s.staged = group.map(|g| i.traits.get(id).is_some_and(|t| in_group(g, t)));
                    s
                })
                .collect()
        })
    }

    /// NACKs received since start.
    pub fn nacks_total(&self) -> u64 {
        self.with(|i| i.nacks_total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{CLUSTER_TYPE, LISTENER_TYPE};

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn nack_records_of_envoys_that_left_are_bounded() {
        let envoys = Envoys::default();
        // One Envoy stays connected with a NACK of its own.
        let staying = envoys.connected(0, &node("staying"), None, Default::default());
        envoys.nacked(&staying, "staying", CLUSTER_TYPE, 3, "bad");
        // A client streams as ever new node ids, NACKs, and leaves.
        let n = 3 * MAX_NACK_RECORDS as u64;
        for i in 1..=n {
            let id = format!("envoy-{i}");
            let status = envoys.connected(i, &node(&id), None, Default::default());
            envoys.nacked(&status, &id, CLUSTER_TYPE, 3, "bad");
            envoys.nacked(&status, &id, LISTENER_TYPE, 3, "bad");
            envoys.disconnected(i);
        }
        let (records, left) = envoys.with(|i| (i.nacked.len(), i.left.len()));
        assert!(
            records <= MAX_NACK_RECORDS + 1 && left <= MAX_NACK_RECORDS,
            "{records} Envoys' NACK records after {n} Envoys came and went"
        );
        // The connected Envoy's is kept, and so are those of the Envoys that left last: a
        // reconnect within the grace period is still not sent what it rejected.
        assert_eq!(envoys.nacked_before("staying", CLUSTER_TYPE), Some(3));
        assert_eq!(
            envoys.nacked_before(&format!("envoy-{n}"), CLUSTER_TYPE),
            Some(3)
        );
        assert_eq!(envoys.nacks_total(), 2 * n + 1);
    }

    #[test]
    fn nack_records_expire_a_grace_period_after_the_envoys_last_stream() {
        let envoys = Envoys::default();
        let t0 = Instant::now();
        let first = envoys.connected(1, &node("a"), None, Default::default());
        envoys.connected(2, &node("a"), None, Default::default());
        envoys.nacked(&first, "a", CLUSTER_TYPE, 3, "bad");
        envoys.disconnected(1);
        envoys.with(|i| i.prune(t0 + 2 * NACK_GRACE));
        assert_eq!(
            envoys.nacked_before("a", CLUSTER_TYPE),
            Some(3),
            "kept while another stream of that Envoy is connected"
        );
        envoys.disconnected(2);
        envoys.with(|i| i.prune(Instant::now() + NACK_GRACE / 2));
        assert_eq!(
            envoys.nacked_before("a", CLUSTER_TYPE),
            Some(3),
            "within grace"
        );
        // It reconnects and leaves again: the grace starts over.
        envoys.connected(3, &node("a"), None, Default::default());
        envoys.disconnected(3);
        envoys.with(|i| i.prune(Instant::now() + NACK_GRACE + NACK_GRACE / 2));
        assert_eq!(envoys.nacked_before("a", CLUSTER_TYPE), None, "expired");
    }
}
