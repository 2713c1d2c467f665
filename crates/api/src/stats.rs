//! What a replica reports of the stats its Envoys stream to it (Envoy's `metrics_service` stat
//! sink, issue 15): per upstream cluster, the counters rollouts are judged on, summed over every
//! Envoy that streamed to the replica since it started. Carried over the peer channel to the
//! leader, which judges rollout steps on the sum over replicas.

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
