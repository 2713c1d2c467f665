//! What a replica reports of the stats its Envoys stream to it (Envoy's `metrics_service` stat
//! sink, issue 15): per upstream cluster, the counters rollouts are judged on, summed over every
//! Envoy that streamed to the replica since it started. Carried over the peer channel to the
//! leader, which judges rollout steps on the sum over replicas. Latency (Envoy's
//! `upstream_rq_time` histogram) is summed the same way, bucket by bucket, so the leader can
//! estimate each version's quantiles over every Envoy.

use serde::{Deserialize, Serialize};

/// One cluster's counters on one replica, summed over its Envoys since the replica started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterTotals {
    /// Envoy's cluster name (`service_echo~v2`).
    pub cluster: String,
    /// Requests answered with any status (`upstream_rq_1xx` … `upstream_rq_5xx`).
    pub rq_total: u64,
    /// Requests answered 5xx (`upstream_rq_5xx`; a timeout is a 504).
    pub rq_5xx: u64,
    /// gRPC calls finished (`grpc.total`, from the gRPC stats filter).
    pub grpc_total: u64,
    /// gRPC calls finished with a status other than OK (`grpc.failure`).
    pub grpc_failure: u64,
    /// Request times (`upstream_rq_time`). Builds before latency was summed send none.
    #[serde(default, skip_serializing_if = "Latency::is_empty")]
    pub rq_time: Latency,
}

/// The upper bounds, in milliseconds, of Envoy's default histogram buckets: the buckets
/// [`Latency`] sums. A histogram with other bounds (a bootstrap with its own
/// `histogram_bucket_settings`) is left out and counted as skipped.
pub const LATENCY_BOUNDS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// A latency histogram summed over Envoys' flushes: samples, their sum, and per bucket of
/// [`LATENCY_BOUNDS_MS`] the samples at or under its bound (cumulative, as Prometheus and
/// Envoy count them). Empty (no buckets) when nothing was counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    /// Requests timed.
    pub samples: u64,
    /// Their times' sum, in microseconds.
    pub sum_us: u64,
    /// Per bound of [`LATENCY_BOUNDS_MS`], the samples at or under it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<u64>,
}

impl Latency {
    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.samples == 0 && self.buckets.iter().all(|b| *b == 0)
    }

    /// Adds another histogram's counts.
    pub fn add(&mut self, other: &Latency) {
        self.samples = self.samples.saturating_add(other.samples);
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (b, o) in self.buckets.iter_mut().zip(&other.buckets) {
            *b = b.saturating_add(*o);
        }
    }

    /// What was counted after `first` (an earlier reading of the same sums).
    pub fn since(&self, first: &Latency) -> Latency {
        Latency {
            samples: self.samples.saturating_sub(first.samples),
            sum_us: self.sum_us.saturating_sub(first.sum_us),
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, b)| b.saturating_sub(first.buckets.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// The mean time in milliseconds, if anything was timed.
    pub fn mean_ms(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.sum_us as f64 / 1000.0 / self.samples as f64)
    }

    /// The `q` quantile (0–1) in milliseconds, estimated as Prometheus' `histogram_quantile`
    /// does: linearly within the bucket it falls in (from 0 in the first). `None` without
    /// samples; the last bound when it falls above every bucket.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.samples == 0 || self.buckets.is_empty() {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.samples as f64;
        let mut below = 0u64;
        let mut lower = 0.0;
        for (count, bound) in self.buckets.iter().zip(LATENCY_BOUNDS_MS) {
            if *count as f64 >= rank && *count > below {
                let within = (rank - below as f64) / (*count - below) as f64;
                return Some(lower + (bound - lower) * within.clamp(0.0, 1.0));
            }
            below = (*count).max(below);
            lower = bound;
        }
        Some(lower)
    }

    /// `p50 12.3 ms, p99 45.6 ms of 789` for people; `no samples` when empty.
    pub fn describe(&self) -> String {
        match (self.quantile_ms(0.5), self.quantile_ms(0.99)) {
            (Some(p50), Some(p99)) => {
                format!("p50 {p50:.1} ms, p99 {p99:.1} ms of {}", self.samples)
            }
            _ => "no samples".into(),
        }
    }
}

impl ClusterTotals {
    /// Requests and errors: gRPC's when the cluster carried gRPC calls (Envoy counts a gRPC
    /// error answered over HTTP 200 as 2xx), else HTTP's.
    pub fn requests_and_errors(&self) -> (u64, u64) {
        match self.grpc_total {
            0 => (self.rq_total, self.rq_5xx),
            n => (n, self.grpc_failure),
        }
    }
}

/// A replica's stats report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    /// Changes whenever the replica's totals start again from zero (it restarted): the leader
    /// keeps each incarnation's last totals apart.
    pub incarnation: u64,
    /// Envoys streaming stats to the replica now.
    pub streams: usize,
    /// Stats messages received since start.
    pub messages: u64,
    /// The clusters asked for (every cluster when none were named), sorted by name.
    pub clusters: Vec<ClusterTotals>,
    /// While a configuration is staged: the requests and errors of the Envoys of its group
    /// and of the others, over every service cluster (config canaries are judged on them).
    /// Builds before config canaries judged errors send none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<StageCounts>,
}

/// A replica's counts of a staged configuration's group and of the other Envoys, over every
/// service cluster, summed over its Envoys since it first saw the stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageCounts {
    /// The stage's start index (it names the stage).
    pub at: u64,
    /// The Envoys of the group.
    pub group: VersionCounts,
    /// Every other Envoy.
    pub rest: VersionCounts,
}

/// One version's requests and errors in a step's window, summed over every replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionCounts {
    /// Requests (gRPC calls for gRPC traffic).
    pub requests: u64,
    /// Of them, errors (5xx; gRPC: any status but OK).
    pub errors: u64,
}

impl VersionCounts {
    /// Errors in percent of requests (0 without requests).
    pub fn error_rate(&self) -> f64 {
        match self.requests {
            0 => 0.0,
            n => self.errors as f64 * 100.0 / n as f64,
        }
    }
}

/// How the leader judges a running rollout's step now (`concord rollout status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepProgress {
    /// The service.
    pub service: String,
    /// The step (0-based) and the new version's share at it, in percent.
    pub step: usize,
    /// The share.
    pub weight: u32,
    /// How long this leader has judged the step (its window restarts on a new leader).
    pub judged_for_ms: u64,
    /// How long a step is held.
    pub interval_ms: u64,
    /// The old version's counts in the window.
    pub from: VersionCounts,
    /// The new version's counts in the window.
    pub to: VersionCounts,
    /// The old version's request times in the window.
    #[serde(default, skip_serializing_if = "Latency::is_empty")]
    pub from_latency: Latency,
    /// The new version's request times in the window.
    #[serde(default, skip_serializing_if = "Latency::is_empty")]
    pub to_latency: Latency,
    /// Replicas whose stats were read in the last round, of the members.
    pub replicas_reporting: usize,
    /// Envoys streaming stats to those replicas.
    pub stat_streams: usize,
    /// What the leader makes of it (`holding: …`, `promoting: …`, `rolling back: …`).
    pub verdict: String,
}

/// One rollout as `GET /v1/rollouts` shows it: its replicated state and, while it runs, how
/// the leader judges its step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// The rollout, as committed.
    pub rollout: concord_registry::services::Rollout,
    /// The leader's judgement of its step (running rollouts, when the leader answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<StepProgress>,
}

/// `GET /v1/rollouts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutList {
    /// The registry revision they are read at.
    pub revision: u64,
    /// Every rollout, by service.
    pub rollouts: Vec<RolloutStatus>,
    /// Why the leader's judgement is missing, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_error: Option<String>,
}

/// `PUT /v1/config/stage`: a desired state for a group of Envoys first (config canaries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageBody {
    /// The new desired state (as `PUT /v1/config` takes it).
    pub config: concord_registry::services::Desired,
    /// The Envoys that get it first (`cluster=canary`, `metadata.group=a`).
    pub group: Vec<concord_registry::services::select::EnvoySelector>,
    /// How long every Envoy of the group must hold it before the rest get it.
    pub hold: concord_registry::services::Duration,
    /// How many percentage points the group's error rate may be above the other Envoys'
    /// (default 5): more aborts the stage.
    #[serde(default = "concord_registry::services::stage::default_max_error_increase")]
    pub max_error_increase: u32,
    /// The fewest requests the group must serve in the hold before the stage is promoted, and
    /// before its errors can abort it (default 0: promoted on ACKs and the hold alone, and
    /// judged from the first request).
    #[serde(default)]
    pub min_requests: u64,
}

/// `GET /v1/config/stage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageStatus {
    /// The registry revision it is read at.
    pub revision: u64,
    /// What is staged now, if anything.
    pub stage: Option<concord_registry::services::Stage>,
    /// How the last stage ended.
    pub last: Option<concord_registry::services::StageEnd>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency(buckets: &[u64]) -> Latency {
        Latency {
            samples: *buckets.last().unwrap_or(&0),
            sum_us: 0,
            buckets: buckets.to_vec(),
        }
    }

    #[test]
    fn quantiles_are_estimated_within_their_bucket() {
        // 100 samples: 50 at or under 1 ms, the other 50 in (50, 100] ms.
        let mut b = vec![0, 50, 50, 50, 50, 50];
        b.extend([100; 13]);
        let l = latency(&b);
        assert_eq!(l.quantile_ms(0.5), Some(1.0));
        let p99 = l.quantile_ms(0.99).unwrap();
        assert!((p99 - 99.0).abs() < 1e-9, "{p99}");
        let p75 = l.quantile_ms(0.75).unwrap();
        assert!((p75 - 75.0).abs() < 1e-9, "{p75}");
        assert_eq!(Latency::default().quantile_ms(0.5), None);
        assert_eq!(Latency::default().describe(), "no samples");
    }

    #[test]
    fn windows_are_differences_and_sums_add_bucket_by_bucket() {
        let first = latency(&[1, 2, 3]);
        let mut now = latency(&[2, 5, 9]);
        now.sum_us = 40;
        let w = now.since(&first);
        assert_eq!(w.buckets, vec![1, 3, 6]);
        assert_eq!(w.samples, 6);
        // Against a reading with no buckets (an older build's, or before any sample).
        assert_eq!(now.since(&Latency::default()), now);
        let mut sum = Latency::default();
        sum.add(&w);
        sum.add(&w);
        assert_eq!(sum.buckets, vec![2, 6, 12]);
        assert_eq!(sum.sum_us, 80);
        assert!(Latency::default().is_empty() && !sum.is_empty());
    }
}
