//! Push bookkeeping shared by both protocols (state of the world and delta): every response
//! sent, ACKed or NACKed goes through here into the Envoys' status ([`Envoys`]) and the metrics,
//! so there is one place to observe a push from start to answer — and to trace it: a push that
//! delivers a traced change opens an `xds.push` span under this replica's apply of it, ended by
//! the Envoy's ACK (ok) or NACK (error with its message).

use crate::config::RevisionTimesFn;
use crate::envoys::{Envoys, StreamStatus};
use crate::resource_type::{self, TYPES};
use concord_telemetry::trace::Span;
use std::time::{Duration, Instant};

/// The pushes of one stream.
pub(crate) struct Pushes {
    /// When the stream opened: an Envoy new to the cluster counts towards the ACKs of a change
    /// only if it was streaming when this replica applied it (not the old changes its first
    /// config happens to include).
    opened: Instant,
    /// When the last response of each type went out, by the type's index in the type table
    /// (arrays: a push looks them up without hashing a type URL or allocating one).
    sent_at: [Option<Instant>; TYPES.len()],
    /// The newest revision of each type the Envoy is known to hold (0: none), by type index.
    known: [u64; TYPES.len()],
    /// The trace span of the push of the newest traced change, until the Envoy ACKs (or NACKs)
    /// every type sent at its revision.
    span: Option<PushSpan>,
    /// The stream's status in [`Envoys`], once its first request named the Envoy.
    status: Option<StreamStatus>,
}

/// The open push span of one stream.
struct PushSpan {
    revision: u64,
    /// Types sent at `revision` and not yet ACKed.
    pending: Vec<String>,
    span: Span,
}

impl Default for Pushes {
    fn default() -> Self {
        Pushes {
            opened: Instant::now(),
            sent_at: [None; TYPES.len()],
            known: [0; TYPES.len()],
            span: None,
            status: None,
        }
    }
}

impl Drop for Pushes {
    fn drop(&mut self) {
        if let Some(p) = self.span.take() {
            p.span.fail("the stream ended before the Envoy ACKed");
        }
    }
}

impl Pushes {
    /// The stream's Envoy is listed with `status`: pushes are recorded there from now on.
    pub(crate) fn listed(&mut self, status: StreamStatus) {
        self.status = Some(status);
    }

    /// A new stream's Envoy reports holding `revision` of `type_url` (0: nothing, or unknown).
    pub(crate) fn reported(&mut self, type_url: &str, revision: u64) {
        if let Some(i) = resource_type::index(type_url) {
            self.known[i] = revision;
        }
    }

    /// A response of `revision` with `resources` and `removals` is going out.
    pub(crate) fn sent(
        &mut self,
        times: &RevisionTimesFn,
        (stream, node_id): (u64, &str),
        type_url: &str,
        revision: u64,
        (resources, removals): (usize, usize),
    ) {
        let m = concord_telemetry::metrics();
        m.pushes.inc();
        m.resources_sent.add(resources as u64);
        if let Some(i) = resource_type::index(type_url) {
            self.sent_at[i] = Some(Instant::now());
        }
        if let Some(s) = &self.status {
            s.sent(type_url, revision, resources, removals);
        }
        if concord_telemetry::trace::enabled() {
            self.trace_sent(times, stream, node_id, type_url, revision);
        }
    }

    /// Opens (or extends) the push span of `revision` when it delivers a traced change: one
    /// span per Envoy and revision, covering every type sent at it, a child of this replica's
    /// apply of the newest change it delivers.
    fn trace_sent(
        &mut self,
        times: &RevisionTimesFn,
        stream: u64,
        node_id: &str,
        type_url: &str,
        revision: u64,
    ) {
        if let Some(p) = &mut self.span {
            if p.revision == revision {
                if !p.pending.iter().any(|t| t == type_url) {
                    p.pending.push(type_url.to_string());
                }
                return;
            }
            if let Some(old) = self.span.take() {
                // Overtaken by a newer revision before every ACK: ends without a status.
                let mut span = old.span;
                span.set("xds.superseded_by", revision as i64);
            }
        }
        let had = resource_type::index(type_url).map_or(0, |i| self.known[i]);
        if revision <= had {
            return;
        }
        let changes = times(had, revision);
        let Some(parent) = changes.iter().rev().find_map(|t| t.trace.as_ref()) else {
            return;
        };
        let mut span = Span::child_of(parent, "xds.push");
        span.set("envoy.node_id", node_id.to_string());
        span.set("xds.stream", stream as i64);
        span.set("xds.version", revision as i64);
        span.set("xds.changes", changes.len() as i64);
        self.span = Some(PushSpan {
            revision,
            pending: vec![type_url.to_string()],
            span,
        });
    }

    /// Ends the push span of `revision` once every type sent at it is ACKed, or at once with an
    /// error on a NACK.
    fn trace_answer(&mut self, type_url: &str, revision: u64, nack: Option<&str>) {
        let Some(p) = &mut self.span else { return };
        if p.revision != revision {
            return;
        }
        if let Some(message) = nack {
            if let Some(p) = self.span.take() {
                let mut span = p.span;
                span.set("xds.nacked_type", type_url.to_string());
                span.fail(message);
            }
            return;
        }
        p.pending.retain(|t| t != type_url);
        if p.pending.is_empty()
            && let Some(p) = self.span.take()
        {
            p.span.ok();
        }
    }

    /// The Envoy ACKed `revision`. Records push duration always; commit-to-ACK and
    /// discovery-to-ACK once for every change the Envoy newly accepts with it (its clusters;
    /// several changes may arrive in one push), and not when it re-ACKs a revision it already
    /// had (a reconnect), nor for changes made before a new Envoy's stream opened.
    pub(crate) fn acked(
        &mut self,
        envoys: &Envoys,
        times: &RevisionTimesFn,
        type_url: &str,
        revision: u64,
    ) {
        if let Some(s) = &self.status {
            s.acked(type_url, revision);
        }
        self.trace_answer(type_url, revision, None);
        let m = concord_telemetry::metrics();
        m.acks.inc();
        let Some(i) = resource_type::index(type_url) else {
            return;
        };
        if let Some(at) = self.sent_at[i] {
            m.push_duration.observe(at.elapsed());
        }
        let had = std::mem::replace(&mut self.known[i], revision);
        let carries_changes = TYPES[i].carries_changes;
        if !carries_changes || revision <= had {
            return;
        }
        let now = concord_telemetry::unix_micros();
        for t in times(had, revision) {
            // An Envoy that reported a version (a reconnect, a failover) counts for every change
            // it newly accepts; a new one (nothing held: its first start, or a restart) only for
            // changes applied since its stream opened. Its first config also carries the older
            // changes, up to the few thousand whose times are kept, but how long they took to
            // reach an Envoy that did not exist yet measures nothing: counted, one Envoy started
            // on an hour-old cluster would add thousands of hour-long observations.
            if had == 0 && t.applied_at < self.opened {
                continue;
            }
            let applied = t.applied_at.elapsed();
            m.commit_to_ack.observe(applied);
            let seen = t
                .seen_at_us
                .map(|s| Duration::from_micros(now.saturating_sub(s)));
            if let Some(seen) = seen {
                m.discovery_to_ack.observe(seen);
            }
            let latency = seen.unwrap_or(applied);
            envoys.changes.acked(t.revision, latency.as_micros() as u64);
        }
    }

    /// The Envoy holds `revision` of `type_url` without a response (nothing of the type
    /// changed for it since it ACKed the last one). No push, no ACK: nothing is counted or
    /// traced, and the changes of the revision are counted on the clusters' ACK, which goes out
    /// at every revision.
    pub(crate) fn held(&mut self, type_url: &str, revision: u64) {
        if let Some(s) = &self.status {
            s.held(type_url, revision);
        }
        if let Some(i) = resource_type::index(type_url) {
            self.known[i] = self.known[i].max(revision);
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
        if let Some(s) = &self.status {
            envoys.nacked(s, node_id, type_url, revision, message);
        }
        self.trace_answer(type_url, revision, Some(message));
        let m = concord_telemetry::metrics();
        m.nacks.inc();
        if let Some(at) = resource_type::index(type_url).and_then(|i| self.sent_at[i]) {
            m.push_duration.observe(at.elapsed());
        }
    }
}
