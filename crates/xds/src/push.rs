//! Push bookkeeping shared by both protocols (state of the world and delta): every response
//! sent, ACKed or NACKed goes through here into the Envoys' status ([`Envoys`]) and the metrics,
//! so there is one place to observe a push from start to answer.

use crate::envoys::Envoys;
use crate::server::RevisionTimesFn;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The pushes of one stream.
#[derive(Default)]
pub(crate) struct Pushes {
    /// When the last response of each type went out.
    sent_at: HashMap<String, Instant>,
    /// The newest revision of each type the Envoy is known to hold.
    known: HashMap<String, u64>,
}

impl Pushes {
    /// A new stream's Envoy reports holding `revision` of `type_url` (0: nothing, or unknown).
    pub(crate) fn reported(&mut self, type_url: &str, revision: u64) {
        self.known.insert(type_url.to_string(), revision);
    }

    /// A response of `revision` with `resources` and `removals` is going out.
    pub(crate) fn sent(
        &mut self,
        envoys: &Envoys,
        stream: u64,
        type_url: &str,
        revision: u64,
        (resources, removals): (usize, usize),
    ) {
        let m = concord_telemetry::metrics();
        m.pushes.inc();
        m.resources_sent.add(resources as u64);
        self.sent_at.insert(type_url.to_string(), Instant::now());
        envoys.sent(stream, type_url, revision, resources, removals);
    }

    /// The Envoy ACKed `revision`. Records push duration always; commit-to-ACK and
    /// discovery-to-ACK once for every change the Envoy newly accepts with it (its clusters;
    /// several changes may arrive in one push), and not when it re-ACKs a revision it already
    /// had (a reconnect).
    pub(crate) fn acked(
        &mut self,
        envoys: &Envoys,
        times: &RevisionTimesFn,
        stream: u64,
        type_url: &str,
        revision: u64,
    ) {
        envoys.acked(stream, type_url, revision);
        let m = concord_telemetry::metrics();
        m.acks.inc();
        if let Some(at) = self.sent_at.get(type_url) {
            m.push_duration.observe(at.elapsed());
        }
        let had = self
            .known
            .insert(type_url.to_string(), revision)
            .unwrap_or(0);
        if type_url != crate::CLUSTER_TYPE || revision <= had {
            return;
        }
        let now = concord_telemetry::unix_micros();
        for (applied_at, seen_at_us) in times(had, revision) {
            m.commit_to_ack.observe(applied_at.elapsed());
            if let Some(seen) = seen_at_us {
                m.discovery_to_ack
                    .observe(Duration::from_micros(now.saturating_sub(seen)));
            }
        }
    }

    /// The Envoy NACKed `revision`: logged, counted, shown in its status, and remembered so
    /// that revision is not sent to it again.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn nacked(
        &mut self,
        envoys: &Envoys,
        stream: u64,
        node_id: &str,
        type_url: &str,
        revision: u64,
        message: &str,
    ) {
        tracing::warn!(
            stream,
            node = node_id,
            type_url,
            version = revision,
            %message,
            "Envoy rejected a config (NACK); holding this version back from it"
        );
        envoys.nacked(stream, node_id, type_url, revision, message);
        let m = concord_telemetry::metrics();
        m.nacks.inc();
        if let Some(at) = self.sent_at.get(type_url) {
            m.push_duration.observe(at.elapsed());
        }
    }
}
