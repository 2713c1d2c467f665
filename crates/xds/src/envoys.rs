//! What this replica knows of the Envoys streaming from it: who, since when, which version of
//! each type was sent and ACKed, and the last NACK — for the status endpoint and the CLI. The
//! types are the admin API's ([`concord_api::envoys`]); this module keeps them up to date.

use crate::resource_type;
use concord_telemetry::unix_micros as now_us;
use envoy_types::pb::envoy::config::core::v3::Node;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;

// The status types are the admin API's (`GET /v1/envoys`, and the peer channel's cluster-wide
// view), so that they are defined once, next to the other response types.
pub use concord_api::envoys::{EnvoyStatus, NackStatus, TypeStatus};

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
}

#[derive(Default)]
struct Inner {
    streams: BTreeMap<u64, EnvoyStatus>,
    /// (node id, type URL) → the last version that node NACKed here; survives reconnects.
    nacked: HashMap<(String, String), u64>,
    nacks_total: u64,
}

impl Envoys {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn with_type(&self, stream: u64, type_url: &str, f: impl FnOnce(&mut TypeStatus)) {
        self.with(|i| {
            if let Some(s) = i.streams.get_mut(&stream) {
                f(s.types.entry(type_name(type_url)).or_default());
            }
        })
    }

    pub(crate) fn connected(&self, stream: u64, node: &Node, peer: Option<SocketAddr>) {
        let status = EnvoyStatus {
            node_id: node.id.clone(),
            node_cluster: node.cluster.clone(),
            stream,
            peer: peer.map(|p| p.to_string()),
            connected_at_ms: now_ms(),
            types: BTreeMap::new(),
            last_nack: None,
        };
        self.with(|i| i.streams.insert(stream, status));
    }

    pub(crate) fn disconnected(&self, stream: u64) {
        self.with(|i| i.streams.remove(&stream));
    }

    pub(crate) fn sent(
        &self,
        stream: u64,
        type_url: &str,
        version: u64,
        resources: usize,
        removals: usize,
    ) {
        self.with_type(stream, type_url, |t| {
            t.sent = Some(version);
            t.pending = true;
            t.resources_sent += resources as u64;
            t.removals_sent += removals as u64;
        });
    }

    pub(crate) fn acked(&self, stream: u64, type_url: &str, version: u64) {
        let at = now_us();
        self.with_type(stream, type_url, |t| {
            t.acked = Some(version);
            t.acked_at_us = Some(at);
            t.pending = false;
        });
    }

    pub(crate) fn nacked(
        &self,
        stream: u64,
        node_id: &str,
        type_url: &str,
        version: u64,
        message: &str,
    ) {
        self.with_type(stream, type_url, |t| t.pending = false);
        self.with(|i| {
            i.nacks_total += 1;
            i.nacked
                .insert((node_id.to_string(), type_url.to_string()), version);
            if let Some(s) = i.streams.get_mut(&stream) {
                s.last_nack = Some(NackStatus {
                    type_name: type_name(type_url),
                    version,
                    message: message.to_string(),
                    at_ms: now_ms(),
                });
            }
        });
    }

    pub(crate) fn nacked_before(&self, node_id: &str, type_url: &str) -> Option<u64> {
        self.with(|i| {
            i.nacked
                .get(&(node_id.to_string(), type_url.to_string()))
                .copied()
        })
    }

    /// Every connected Envoy, by stream id.
    pub fn list(&self) -> Vec<EnvoyStatus> {
        self.with(|i| i.streams.values().cloned().collect())
    }

    /// NACKs received since start.
    pub fn nacks_total(&self) -> u64 {
        self.with(|i| i.nacks_total)
    }
}
