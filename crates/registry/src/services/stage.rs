//! Config canaries (issue 15): a new desired state of the services half staged to a group of
//! Envoys first. While a [`Stage`] exists, the Envoys its group names get the staged state and
//! every other Envoy the current one, both at the registry's revisions, so every Envoy of a group
//! reports the same version on every replica and no Envoy moves backwards: an aborted stage puts
//! the group back on the current state at a newer revision, and a promoted one moves everyone
//! to the staged state at a newer revision. The leader promotes a stage once every Envoy of the
//! group has ACKed it, the hold has passed and the group's error rate (from the stats its Envoys
//! stream) stayed within `max_error_increase` points of the other Envoys'; it aborts it at the
//! first NACK from the group, or as soon as the group's error rate is above that (DESIGN rule
//! 11: decided by the leader, committed, fenced by the stage's start index).

use super::Desired;
use super::select::EnvoySelector;
use serde::{Deserialize, Serialize};

/// The longest hold a stage may ask for.
pub const LONGEST_HOLD_MS: u64 = 24 * 3_600_000;

/// How many percentage points a group's error rate may be above the other Envoys' unless the
/// stage says otherwise.
pub fn default_max_error_increase() -> u32 {
    5
}

/// A desired state staged to a group of Envoys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// The state the group gets.
    pub desired: Desired,
    /// The Envoys it goes to first.
    pub group: Vec<EnvoySelector>,
    /// How long every Envoy of the group must have held it before the rest get it.
    pub hold: super::Duration,
    /// How many percentage points the group's error rate may be above the other Envoys'.
    #[serde(default = "default_max_error_increase")]
    pub max_error_increase: u32,
    /// The fewest requests the group must serve before the stage is promoted, and before its
    /// errors can abort it (0: promoted on ACKs and the hold alone).
    #[serde(default)]
    pub min_requests: u64,
    /// The log index it was staged at: it names the stage.
    pub at: u64,
    /// When (Unix ms, the proposer's clock).
    pub at_ms: u64,
}

/// How the last stage ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageEnd {
    /// The stage's start index.
    pub at: u64,
    /// The log index it ended at.
    pub ended_at: u64,
    /// When (Unix ms).
    pub ended_at_ms: u64,
    /// Promoted to every Envoy (else aborted: nobody but the group ever had it).
    pub promoted: bool,
    /// Why (the NACK's message, an operator's abort, what the promotion was judged on).
    pub why: String,
}

/// A change to the stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum StageChange {
    /// Stages `desired` to `group` (an operator: `concord apply --canary`).
    Start {
        /// The new state.
        desired: Box<Desired>,
        /// The Envoys that get it first.
        group: Vec<EnvoySelector>,
        /// The hold.
        hold: super::Duration,
        /// How far the group's error rate may rise above the others', in points.
        #[serde(default = "default_max_error_increase")]
        max_error_increase: u32,
        /// The fewest requests the group serves before it is judged on errors or promoted.
        #[serde(default)]
        min_requests: u64,
        /// When (Unix ms).
        at_ms: u64,
    },
    /// Gives the stage started at `at` to every Envoy (the leader, or an operator).
    Promote {
        /// The stage's start index.
        at: u64,
        /// On what.
        why: String,
        /// When (Unix ms).
        at_ms: u64,
    },
    /// Ends the stage started at `at`: the group goes back to the current state (the leader
    /// on a NACK, or an operator).
    Abort {
        /// The stage's start index.
        at: u64,
        /// Why.
        why: String,
        /// When (Unix ms).
        at_ms: u64,
    },
}

impl StageChange {
    /// A few words for people.
    pub fn summary(&self) -> String {
        match self {
            StageChange::Start { group, .. } => {
                format!("config staged to {}", super::select::describe(group))
            }
            StageChange::Promote { .. } => "staged config promoted to every Envoy".into(),
            StageChange::Abort { .. } => "staged config aborted".into(),
        }
    }
}

#[cfg(test)]
#[path = "stage_tests.rs"]
mod tests;
