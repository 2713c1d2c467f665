//! Client requests a replica executes on the leader (locally, or forwarded from a follower over
//! the peer channel), their replies, and the errors a caller can act on.

use crate::NodeId;
use concord_registry::{Command, Outcome, Rejection};
use serde::{Deserialize, Serialize};

/// A request that only the leader can serve.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientRequest {
    /// Propose a registry command; answered after it is committed and applied on the leader.
    Write(Command),
    /// Add a node as a learner (it receives the log but does not vote).
    AddLearner {
        /// The new node's id.
        node_id: NodeId,
        /// Its peer address (`host:port`).
        addr: String,
    },
    /// Turn a learner into a voter.
    Promote {
        /// The learner's id.
        node_id: NodeId,
    },
    /// Remove a node (voter or learner) from the cluster.
    Remove {
        /// The node's id.
        node_id: NodeId,
    },
    /// Confirm leadership with a quorum and return the log index a linearizable read must wait
    /// for.
    ReadIndex,
    /// Answered by the replica that receives it, leader or not: what it reports of itself (the
    /// Envoys streaming from it), for cluster-wide status. Never forwarded.
    LocalStatus,
    /// Answered by the replica that receives it: the highest entry format it applies. Builds
    /// before entry formats do not know the request (they support format 1).
    EntryFormat,
    /// Answered by the replica that receives it: the stats its Envoys streamed to it, for these
    /// clusters (all it tracks when empty). Never forwarded. Builds before rollouts do not know
    /// the request: they report none.
    Stats {
        /// Envoy cluster names.
        clusters: Vec<String>,
    },
    /// Answered by the replica that receives it: what its Envoys streamed under the staged
    /// configuration, its group's and the others' apart, and no cluster's (answered as
    /// [`ClientRequest::Stats`] is). Never forwarded. Builds before config canaries judged
    /// errors do not know the request: they report none.
    StageStats,
    /// How the leader judges each running rollout's step now (forwarded to the leader).
    RolloutProgress,
    /// Renew the lease of a registered endpoint (on the leader, which holds every lease; not a
    /// log entry).
    Renew {
        /// The endpoint's service.
        service: String,
        /// The endpoint's id.
        id: String,
    },
}

/// The leader's answer to a [`ClientRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientReply {
    /// A write was committed at `log_index` and applied with `outcome`.
    Written {
        /// The entry's log index.
        log_index: u64,
        /// What applying it did.
        outcome: Outcome,
    },
    /// A membership change was committed at `log_index`.
    Membership {
        /// The entry's log index.
        log_index: u64,
    },
    /// A read may be served once the replica has applied `index`.
    ReadIndex {
        /// The index to wait for.
        index: u64,
    },
    /// The answer to [`ClientRequest::LocalStatus`].
    LocalStatus {
        /// The Envoys streaming from the replica; none while it is starting (JSON `null`).
        status: Option<concord_api::LocalEnvoys>,
    },
    /// The answer to [`ClientRequest::EntryFormat`].
    EntryFormat {
        /// The highest entry format the replica applies.
        supported: u32,
    },
    /// The answer to [`ClientRequest::Stats`].
    Stats {
        /// The replica's report; none while it is starting.
        report: Option<concord_api::StatsReport>,
    },
    /// The answer to [`ClientRequest::RolloutProgress`].
    RolloutProgress {
        /// One per running rollout the leader judges.
        progress: Vec<concord_api::StepProgress>,
    },
    /// The lease was renewed: it lapses this long from now unless renewed again.
    Renewed {
        /// Its TTL in milliseconds.
        ttl_ms: u64,
    },
}

/// Why a client request failed. Every variant names what the operator can do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "code", content = "detail")]
pub enum ClientError {
    /// No leader is known (an election is under way, or no quorum is reachable).
    #[error(
        "no leader: the cluster has not elected one within {waited_ms} ms (is a quorum of nodes up?)"
    )]
    NoLeader {
        /// How long the replica waited for one.
        waited_ms: u64,
    },
    /// The leader has not heard from a quorum recently, so the write was not proposed.
    #[error(
        "no quorum: the leader (node {leader}) has not heard from a majority for {since_ms} ms; \
         nothing was written"
    )]
    NoQuorum {
        /// The leader's id.
        leader: NodeId,
        /// Milliseconds since a quorum last acknowledged it.
        since_ms: u64,
    },
    /// The request was proposed but not committed in time; it may still commit later.
    #[error(
        "timed out after {waited_ms} ms waiting for the cluster to commit; \
         the change may still be applied if a quorum returns"
    )]
    Timeout {
        /// How long the replica waited.
        waited_ms: u64,
    },
    /// The leader could not be reached from this replica.
    #[error("leader node {leader} at {addr} is unreachable from this replica: {error}")]
    LeaderUnreachable {
        /// The leader's id.
        leader: NodeId,
        /// Its peer address.
        addr: String,
        /// The transport error.
        error: String,
    },
    /// The registry refused the command (invalid builder, duplicate SNI, wrong owner, …).
    #[error("rejected: {0}")]
    Rejected(Rejection),
    /// The membership change is not possible (unknown node, would remove the last voter, …).
    #[error("membership change refused: {0}")]
    Membership(String),
    /// This node is not the leader (answered to forwarded requests only; the forwarding replica
    /// retries with the new leader).
    #[error("node {node} is not the leader (leader: {leader:?})")]
    NotLeader {
        /// The node that answered.
        node: NodeId,
        /// The leader it knows of.
        leader: Option<NodeId>,
    },
    /// The replica is shutting down or its Raft core stopped.
    #[error("replica unavailable: {0}")]
    Unavailable(String),
    /// What the request names does not exist (a renewal of an endpoint that is not registered,
    /// or whose lease lapsed).
    #[error("{0}")]
    NotFound(String),
}

impl ClientError {
    /// True when the same request may succeed if retried on another replica or later.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            ClientError::Rejected(_) | ClientError::Membership(_) | ClientError::NotFound(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The peer channel's answer to `LocalStatus` keeps the JSON replicas of earlier versions
    /// send and expect: the view itself, or `null` while the replica starts.
    #[test]
    fn local_status_on_the_wire() {
        let starting = r#"{"local_status":{"status":null}}"#;
        let r: ClientReply = serde_json::from_str(starting).expect("decodes");
        assert_eq!(r, ClientReply::LocalStatus { status: None });
        assert_eq!(serde_json::to_string(&r).expect("encodes"), starting);
        let up =
            r#"{"local_status":{"status":{"node_id":3,"revision":7,"nacks_total":0,"envoys":[]}}}"#;
        let r: ClientReply = serde_json::from_str(up).expect("decodes");
        let ClientReply::LocalStatus { status: Some(s) } = &r else {
            panic!("{r:?}")
        };
        assert_eq!((s.node_id, s.revision), (3, 7));
        assert_eq!(serde_json::to_string(&r).expect("encodes"), up);
        assert!(s.report.is_none(), "a replica older than the status page");
        // A replica with the status page adds its report (older replicas ignore the field: no
        // type on the peer channel denies unknown fields; the upgrade test runs both).
        let with_report = up.replace(
            r#""envoys":[]"#,
            r#""envoys":[],"report":{"raft":{"cluster":"c","node_id":3,"role":"follower","term":2,
               "leader":1,"last_log_index":7,"applied_index":7,"snapshot_index":null,
               "purged_index":null,"revision":7,"builders":0,"members":[],
               "millis_since_quorum_ack":null},"poller":null,
               "changes":[{"revision":7,"at_ms":1,"what":"dns: put builder b1","acked":2,
               "slowest_ack_us":900}]}"#,
        );
        let r: ClientReply = serde_json::from_str(&with_report).expect("decodes");
        let ClientReply::LocalStatus { status: Some(s) } = &r else {
            panic!("{r:?}")
        };
        let report = s.report.as_ref().expect("the report");
        assert_eq!(report.raft.leader, Some(1));
        assert_eq!(report.changes[0].what, "dns: put builder b1");
    }
}
