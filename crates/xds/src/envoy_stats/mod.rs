//! The stats Envoys stream to this replica (Envoy's `metrics_service` stat sink, issue 15,
//! DESIGN rule 13): the counters rollouts are judged on, per service cluster, summed over every
//! Envoy since this replica started (and, while a configuration is staged, over its group's
//! Envoys and the others apart, for config canaries), and reported with an incarnation that changes when the
//! sums start again from zero ([`concord_api::StatsReport`]).
//!
//! [`EnvoyStats`] is what the server holds and the admin side reads; [`service`] is the gRPC
//! `MetricsService` the Envoys stream to (served next to ADS, with its TLS); [`totals`] is the
//! pure core: which stats count, strictly parsed, and the bounded sums.

pub(crate) mod service;
pub mod totals;
mod wire;

#[cfg(test)]
mod tests;

use concord_api::StatsReport;
use std::fmt::Write;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use totals::Totals;

/// The most stats streams open at once: each Envoy holds one, so this is far above the Envoys a
/// replica serves, and keeps clients that open streams without end from growing its memory.
pub const MAX_STREAMS: usize = 20_000;

/// The largest stats message taken. The bootstrap's sink sends at most
/// [`crate::bootstrap::STATS_BATCH_SIZE`] stats per message, well under this.
pub const MAX_MESSAGE: usize = 8 * 1024 * 1024;

/// How often refusals (clusters past [`totals::MAX_CLUSTERS`]) are logged: not per message.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// The sums, and when refusals were last logged.
#[derive(Default)]
struct Locked {
    totals: Totals,
    last_refusal_log: Option<Instant>,
    refused_since_log: u64,
}

/// A replica's stats from its Envoys: the sums, the open streams and the counts the metrics
/// page shows. Shared by the server handle and every stats stream.
pub struct EnvoyStats {
    locked: Mutex<Locked>,
    incarnation: u64,
    max_streams: usize,
    streams: AtomicUsize,
    messages: AtomicU64,
    skipped: AtomicU64,
}

impl Default for EnvoyStats {
    fn default() -> Self {
        EnvoyStats::new(Totals::default(), MAX_STREAMS)
    }
}

/// Holds one of [`EnvoyStats`]' stream slots; gives it back when dropped, however the stream
/// ends.
pub(crate) struct StreamSlot(Arc<EnvoyStats>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A value that differs between two starts of the process (and between two [`EnvoyStats`] in
/// one process): the start time in nanoseconds, mixed with std's per-process random hash keys
/// so two replicas started in the same nanosecond still differ.
fn incarnation() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(nanos);
    // Never 0, which a reader may take for "no report".
    (nanos ^ h.finish()).max(1)
}

impl EnvoyStats {
    /// Stats over `totals` (empty, with its cluster limit), taking at most `max_streams` streams.
    pub(crate) fn new(totals: Totals, max_streams: usize) -> EnvoyStats {
        EnvoyStats {
            locked: Mutex::new(Locked {
                totals,
                ..Locked::default()
            }),
            incarnation: incarnation(),
            max_streams,
            streams: AtomicUsize::new(0),
            messages: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Locked> {
        // The sums stay consistent whatever panicked while holding the lock: each add is whole.
        self.locked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stream slot, unless [`MAX_STREAMS`] streams are open.
    pub(crate) fn open(self: &Arc<Self>) -> Option<StreamSlot> {
        let before = self.streams.fetch_add(1, Ordering::Relaxed);
        let slot = StreamSlot(self.clone());
        (before < self.max_streams).then_some(slot)
    }

    /// Takes one message's stats, sent while `staging` (by an Envoy of the staged group or
    /// not) if a configuration is staged.
    pub(crate) fn record(
        &self,
        families: &[envoy_types::pb::io::prometheus::client::MetricFamily],
        staging: Option<totals::Staging>,
    ) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        let deltas = totals::deltas(families);
        let mut skipped = deltas.skipped;
        if !deltas.items.is_empty() {
            let mut log = None;
            {
                let mut l = self.lock();
                let refused = l.totals.add(&deltas, staging);
                skipped += refused;
                l.refused_since_log += refused;
                let due = l
                    .last_refusal_log
                    .is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY);
                if l.refused_since_log > 0 && due {
                    log = Some((l.refused_since_log, l.totals.len()));
                    l.refused_since_log = 0;
                    l.last_refusal_log = Some(Instant::now());
                }
            }
            if let Some((refused, tracked)) = log {
                tracing::warn!(
                    refused,
                    tracked,
                    "Envoy stats of new clusters refused: as many clusters as taken are tracked \
                     already (logged at most once a minute)"
                );
            }
        }
        if skipped > 0 {
            self.skipped.fetch_add(skipped, Ordering::Relaxed);
        }
    }

    /// The report of `clusters` (every tracked cluster when empty), and of the latest stage.
    pub fn report(&self, clusters: &[String]) -> StatsReport {
        let (clusters, stage) = {
            let l = self.lock();
            (l.totals.report(clusters), l.totals.stage())
        };
        self.report_of(clusters, stage)
    }

    /// The report of the latest stage alone, no cluster's (what config canaries are judged
    /// on).
    pub fn stage_report(&self) -> StatsReport {
        let stage = self.lock().totals.stage();
        self.report_of(Vec::new(), stage)
    }

    fn report_of(
        &self,
        clusters: Vec<concord_api::ClusterTotals>,
        stage: Option<concord_api::StageCounts>,
    ) -> StatsReport {
        StatsReport {
            incarnation: self.incarnation,
            streams: self.streams(),
            messages: self.messages.load(Ordering::Relaxed),
            clusters,
            stage,
        }
    }

    /// Stats streams open now.
    pub fn streams(&self) -> usize {
        // A refused stream holds a slot for an instant: never report more than are taken.
        self.streams.load(Ordering::Relaxed).min(self.max_streams)
    }

    /// Stat values left out since start: not a count, a cluster name concord never makes, or a
    /// new cluster past [`totals::MAX_CLUSTERS`].
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// The metrics of the stats stream in the Prometheus text format, to append to the
    /// replica's `/metrics` page.
    pub fn render_metrics(&self, out: &mut String) {
        let clusters = self.lock().totals.report(&[]);
        let tracked = clusters.len();
        let counters = [
            (
                "concord_envoy_stats_messages_total",
                "Stats messages received from Envoys (metrics_service sink).",
                self.messages.load(Ordering::Relaxed),
            ),
            (
                "concord_envoy_stats_skipped_total",
                "Envoy stat values left out: not a count, a cluster name concord never makes, or past the cluster limit.",
                self.skipped(),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let gauges = [
            (
                "concord_envoy_stats_streams",
                "Envoys streaming their stats to this replica now.",
                self.streams(),
            ),
            (
                "concord_envoy_stats_clusters",
                "Service clusters whose Envoy stats this replica sums.",
                tracked,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        render_clusters(&clusters, out);
    }
}

/// Per service cluster, the requests, errors and request times this replica's Envoys streamed
/// (what rollouts are judged on), as Prometheus series: `cluster` is Envoy's cluster name
/// (`service_echo~v2`, a service's version). Nothing while no cluster is tracked.
fn render_clusters(clusters: &[concord_api::ClusterTotals], out: &mut String) {
    if clusters.is_empty() {
        return;
    }
    let counts = [
        (
            "concord_envoy_upstream_requests_total",
            "Requests to a service cluster from this replica's Envoys (gRPC calls where gRPC).",
            false,
        ),
        (
            "concord_envoy_upstream_errors_total",
            "Of them, errors: 5xx, or gRPC calls that did not end OK.",
            true,
        ),
    ];
    for (name, help, errors) in counts {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for c in clusters {
            let (requests, errs) = c.requests_and_errors();
            let v = if errors { errs } else { requests };
            let _ = writeln!(out, "{name}{{cluster=\"{}\"}} {v}", c.cluster);
        }
    }
    let name = "concord_envoy_upstream_rq_time_ms";
    let _ = writeln!(
        out,
        "# HELP {name} Request times to a service cluster from this replica's Envoys \
         (Envoy's upstream_rq_time), in milliseconds.\n# TYPE {name} histogram"
    );
    for c in clusters.iter().filter(|c| !c.rq_time.is_empty()) {
        let l = &c.rq_time;
        for (n, bound) in l.buckets.iter().zip(concord_api::LATENCY_BOUNDS_MS) {
            let _ = writeln!(
                out,
                "{name}_bucket{{cluster=\"{}\",le=\"{bound}\"}} {n}",
                c.cluster
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{cluster=\"{0}\",le=\"+Inf\"}} {1}\n{name}_sum{{cluster=\"{0}\"}} {2}\n\
             {name}_count{{cluster=\"{0}\"}} {1}",
            c.cluster,
            l.samples,
            l.sum_us as f64 / 1000.0
        );
    }
}
