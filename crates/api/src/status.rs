//! `GET /v1/status`: one replica's Raft and registry state, and the fault-injection answer.

use serde::{Deserialize, Serialize};

/// A replica's Raft role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// It leads.
    Leader,
    /// It follows a leader (or waits for one).
    Follower,
    /// It stands for election.
    Candidate,
    /// It receives the log but does not vote.
    Learner,
    /// Its Raft core stopped.
    Shutdown,
    /// A role this client does not know (a newer replica).
    #[serde(other)]
    Unknown,
}

impl Role {
    /// The role named `name` (`leader`, `follower`, …); [`Role::Unknown`] for anything else.
    pub fn from_name(name: &str) -> Role {
        match name {
            "leader" => Role::Leader,
            "follower" => Role::Follower,
            "candidate" => Role::Candidate,
            "learner" => Role::Learner,
            "shutdown" => Role::Shutdown,
            _ => Role::Unknown,
        }
    }

    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
            Role::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// Peer address.
    pub addr: String,
    /// Voter, or learner.
    pub voter: bool,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The cluster's name.
    pub cluster: String,
    /// This node's id.
    pub node_id: u64,
    /// Its Raft role.
    pub role: Role,
    /// The current term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<u64>,
    /// Index of the last entry in the local log.
    pub last_log_index: Option<u64>,
    /// Index of the last applied entry.
    pub applied_index: Option<u64>,
    /// Index covered by the current snapshot.
    pub snapshot_index: Option<u64>,
    /// Index up to which the log was compacted.
    pub purged_index: Option<u64>,
    /// The registry revision (log index of its last change).
    pub revision: u64,
    /// Number of builders in the registry.
    pub builders: u64,
    /// Voters and learners.
    pub members: Vec<Member>,
    /// On the leader: milliseconds since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// The entry formats of this replica and the cluster; absent from replicas of earlier
    /// versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_format: Option<EntryFormats>,
}

/// The entry formats of a cluster as one replica sees them (rolling upgrades: a format above the
/// cluster's is proposed only once every member supports it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryFormats {
    /// The highest entry format this replica applies.
    pub supported: u32,
    /// The cluster's committed format: nothing above it is proposed.
    pub cluster: u32,
    /// On the leader: what each member last said it supports (empty elsewhere).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub members: std::collections::BTreeMap<u64, MemberFormat>,
}

/// What a leader last heard of one member's entry format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberFormat {
    /// The member applies formats up to this one.
    Supports(u32),
    /// The member did not answer; why.
    Unknown(String),
}

impl Status {
    /// Ids of the voting members.
    pub fn voters(&self) -> Vec<u64> {
        self.members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect()
    }
}

/// `POST /v1/debug/isolate` (fault injection only): the state the replica is now in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolated {
    /// Cut off (true) or reconnected (false).
    pub isolated: bool,
    /// The peers it is cut off from, when only from some.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<u64>,
}
