//! `GET /v1/discovery`: the DNS poller as one replica sees it (`crates/discovery` runs it).

use serde::{Deserialize, Serialize};

/// `GET /v1/discovery`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryStatus {
    /// The replica's node id.
    pub node_id: u64,
    /// Whether DNS discovery is configured on it.
    pub enabled: bool,
    /// The leader it knows of (the leader polls).
    pub leader: Option<u64>,
    /// Whether it polls now.
    pub polling: bool,
    /// Who polls, in a sentence.
    pub note: String,
    /// Its poller, when discovery is on.
    pub poller: Option<PollerStatus>,
}

/// What the poller is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollerStatus {
    /// True while this replica polls (it leads).
    pub polling: bool,
    /// The nameserver.
    pub server: String,
    /// The sources.
    pub sources: Vec<String>,
    /// Poll interval.
    pub interval_ms: u64,
    /// Polls made while leading, since start.
    pub polls: u64,
    /// Polls that failed, since start.
    pub errors: u64,
    /// Failed polls in a row now.
    pub consecutive_errors: u64,
    /// When the last poll started (Unix milliseconds).
    pub last_poll_at_ms: Option<u64>,
    /// How long it took.
    pub last_poll_us: Option<u64>,
    /// `unchanged`, `changed`, `held …`, `stale`, or `error: …`.
    pub last_result: String,
    /// The last error: when (Unix milliseconds) and what.
    pub last_error: Option<(u64, String)>,
    /// The last change proposed and committed.
    pub last_change: Option<Change>,
    /// Builders the last successful poll found.
    pub discovered: u64,
    /// What the last successful poll skipped.
    pub skipped: Vec<Skipped>,
    /// Entries skipped, summed over polls.
    pub skipped_total: u64,
    /// Changes committed.
    pub changes: u64,
    /// Polls held back by the mass-removal guard.
    pub held: u64,
    /// Proposals refused because the registry moved meanwhile (retried at once).
    pub stale: u64,
    /// Services taking endpoints from DNS: each one's name and last result (`3 endpoints`,
    /// `held: …`, `error: …`). Absent from replicas older than services.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub services: std::collections::BTreeMap<String, String>,
}

/// The last change the poller made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// When (Unix milliseconds).
    pub at_ms: u64,
    /// The registry revision it produced.
    pub revision: u64,
    /// Builders added.
    pub added: u64,
    /// Builders changed.
    pub updated: u64,
    /// Builders removed.
    pub removed: u64,
    /// Services' endpoints added, changed and removed (absent when none, and from older
    /// replicas).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub endpoints_added: u64,
    /// See `endpoints_added`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub endpoints_updated: u64,
    /// See `endpoints_added`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub endpoints_removed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Something in a DNS answer that did not make a builder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The DNS name it came from.
    pub name: String,
    /// The offending entry (truncated).
    pub entry: String,
    /// Why.
    pub reason: String,
}
