//! Metrics of one replica, exposed on the admin API's `/metrics` in the Prometheus text format.
//!
//! One process-wide set ([`metrics`]): the parts record into it where things happen (the poller,
//! the ADS streams); gauges that mirror state (role, term, revision, …) are passed in when the
//! page is rendered, so they are never stale. Lock-free atomics on the hot paths; no allocation
//! when recording.

pub mod tasks;
pub mod trace;

use std::fmt::Write;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Now, in Unix microseconds: the wall clock that change and ACK times are compared on.
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One revision as applied on this replica: when, when its change was first seen (the proposer's
/// `seen_at_us`), and its apply span, for the latency histograms and the push spans.
#[derive(Debug, Clone)]
pub struct AppliedRevision {
    /// The revision.
    pub revision: u64,
    /// When this replica applied it.
    pub applied_at: std::time::Instant,
    /// When the change was seen by whoever proposed it (Unix microseconds), if recorded.
    pub seen_at_us: Option<u64>,
    /// This replica's apply span of the change, if traced.
    pub trace: Option<trace::SpanRef>,
    /// What the change was, in a few words (the status page lists recent changes); shared, as
    /// these times are cloned for every Envoy that ACKs.
    pub what: std::sync::Arc<str>,
}

/// A monotonically increasing count.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Latency buckets in seconds: 1 ms to 30 s.
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
];

/// A latency histogram with fixed buckets.
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Every counter and histogram of a replica.
#[derive(Default)]
pub struct Metrics {
    /// DNS polls made (leader only).
    pub polls: Counter,
    /// DNS polls that failed.
    pub poll_errors: Counter,
    /// Malformed DNS entries skipped, summed over polls.
    pub skipped_records: Counter,
    /// Registry changes the poller proposed and got committed.
    pub changes_proposed: Counter,
    /// Responses sent to Envoys.
    pub pushes: Counter,
    /// ACKs received.
    pub acks: Counter,
    /// NACKs received.
    pub nacks: Counter,
    /// ADS requests for a type this control plane does not serve (ignored).
    pub unknown_type_requests: Counter,
    /// Leader changes this replica has seen.
    pub leader_changes: Counter,
    /// TLS handshakes refused on the peer port (no certificate, another CA, ...).
    pub peer_tls_refused: Counter,
    /// TLS handshakes refused on the xDS port.
    pub xds_tls_refused: Counter,
    /// Peer calls refused for their certificate's identity (not a member, another node id).
    pub peer_calls_refused: Counter,
    /// Trace spans exported to the collector.
    pub spans_exported: Counter,
    /// Trace spans dropped: the export queue was full or the export failed.
    pub spans_dropped: Counter,
    /// Builders whose Envoy resources were built and serialised (only changed ones are).
    pub builders_encoded: Counter,
    /// Resources sent to Envoys, summed over responses.
    pub resources_sent: Counter,
    /// Duration of one DNS poll.
    pub poll_duration: Histogram,
    /// From sending a response to its ACK or NACK.
    pub push_duration: Histogram,
    /// From this replica applying a revision to an Envoy ACKing its clusters.
    pub commit_to_ack: Histogram,
    /// From the change being seen (DNS poll, or API request) to an Envoy ACKing its clusters.
    pub discovery_to_ack: Histogram,
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: LazyLock<Metrics> = LazyLock::new(Metrics::default);
    &M
}

/// A gauge value computed at render time: name, help, value.
pub type Gauge<'a> = (&'a str, &'a str, f64);

impl Metrics {
    /// The page, in the Prometheus text format (0.0.4), with `gauges` appended.
    pub fn render(&self, gauges: &[Gauge<'_>]) -> String {
        let mut out = String::with_capacity(4096);
        let counters: [(&str, &str, &Counter); 16] = [
            (
                "concord_dns_polls_total",
                "DNS polls made by this replica as leader.",
                &self.polls,
            ),
            (
                "concord_dns_poll_errors_total",
                "DNS polls that failed and changed nothing.",
                &self.poll_errors,
            ),
            (
                "concord_dns_skipped_records_total",
                "Malformed DNS entries skipped, summed over polls.",
                &self.skipped_records,
            ),
            (
                "concord_dns_changes_proposed_total",
                "Registry changes proposed by the DNS poller and committed.",
                &self.changes_proposed,
            ),
            (
                "concord_xds_pushes_total",
                "Discovery responses sent to Envoys.",
                &self.pushes,
            ),
            (
                "concord_xds_acks_total",
                "ACKs received from Envoys.",
                &self.acks,
            ),
            (
                "concord_xds_nacks_total",
                "NACKs received from Envoys.",
                &self.nacks,
            ),
            (
                "concord_xds_unknown_type_requests_total",
                "ADS requests for a resource type this control plane does not serve, ignored.",
                &self.unknown_type_requests,
            ),
            (
                "concord_raft_leader_changes_total",
                "Changes of leader seen by this replica.",
                &self.leader_changes,
            ),
            (
                "concord_peer_tls_refused_total",
                "TLS handshakes refused on the peer port (no client certificate, another CA).",
                &self.peer_tls_refused,
            ),
            (
                "concord_xds_tls_refused_total",
                "TLS handshakes refused on the xDS port.",
                &self.xds_tls_refused,
            ),
            (
                "concord_peer_calls_refused_total",
                "Peer calls refused for the caller's certificate (not a member, another node id).",
                &self.peer_calls_refused,
            ),
            (
                "concord_trace_spans_exported_total",
                "Trace spans exported to the OTLP collector.",
                &self.spans_exported,
            ),
            (
                "concord_trace_spans_dropped_total",
                "Trace spans dropped because the export queue was full or the export failed.",
                &self.spans_dropped,
            ),
            (
                "concord_xds_builders_encoded_total",
                "Builders whose Envoy resources were built and serialised (changed ones only).",
                &self.builders_encoded,
            ),
            (
                "concord_xds_resources_sent_total",
                "Resources sent to Envoys, summed over responses (delta sends changed ones only).",
                &self.resources_sent,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.get()
            );
        }
        self.poll_duration.render(
            &mut out,
            "concord_dns_poll_duration_seconds",
            "Duration of one DNS poll.",
        );
        self.push_duration.render(
            &mut out,
            "concord_xds_push_duration_seconds",
            "From sending a discovery response to its ACK or NACK.",
        );
        self.commit_to_ack.render(
            &mut out,
            "concord_commit_to_ack_seconds",
            "From this replica applying a revision to an Envoy ACKing its clusters.",
        );
        self.discovery_to_ack.render(
            &mut out,
            "concord_discovery_to_ack_seconds",
            "From a change being seen (DNS poll or API request) to an Envoy ACKing its clusters.",
        );
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.commit_to_ack.observe(Duration::from_millis(3));
        m.commit_to_ack.observe(Duration::from_millis(30));
        m.commit_to_ack.observe(Duration::from_secs(60));
        m.acks.add(2);
        let page = m.render(&[("concord_registry_revision", "Registry revision.", 7.0)]);
        assert!(
            page.contains("concord_commit_to_ack_seconds_bucket{le=\"0.005\"} 1\n"),
            "{page}"
        );
        assert!(page.contains("concord_commit_to_ack_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(page.contains("concord_commit_to_ack_seconds_bucket{le=\"30\"} 2\n"));
        assert!(page.contains("concord_commit_to_ack_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(page.contains("concord_commit_to_ack_seconds_count 3\n"));
        assert!(page.contains("concord_xds_acks_total 2\n"));
        assert!(
            page.contains("# TYPE concord_registry_revision gauge\nconcord_registry_revision 7\n")
        );
    }
}
