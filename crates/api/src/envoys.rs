//! The Envoys streaming from the replicas: one replica's view (`GET /v1/envoys`, and what a
//! replica answers over the peer channel when another asks), and the cluster-wide view
//! (`GET /v1/cluster/envoys`) that one replica assembles from every member's answer. The xDS
//! server (`crates/xds`, `envoys.rs`) keeps [`EnvoyStatus`] up to date as Envoys send and ACK.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One Envoy stream on one replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvoyStatus {
    /// The Envoy's node id.
    pub node_id: String,
    /// The Envoy's node cluster.
    pub node_cluster: String,
    /// Stream id on this replica.
    pub stream: u64,
    /// Remote address of the stream.
    pub peer: Option<String>,
    /// When the stream started (Unix milliseconds).
    pub connected_at_ms: u64,
    /// Per type (`clusters`, `listeners`, or the type URL): versions sent and ACKed. Boxed
    /// (the JSON is the same): a map's first node holds eleven entries inline, and a replica
    /// keeps one of these for every connected Envoy (issue 17, 10,000 streams a replica).
    pub types: BTreeMap<String, Box<TypeStatus>>,
    /// The last NACK on this stream.
    pub last_nack: Option<NackStatus>,
    /// While a configuration is staged (config canaries): whether this Envoy is of its group and
    /// gets it; absent when nothing is staged, and from older replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<bool>,
}

impl EnvoyStatus {
    /// The versions of type `name` (`clusters`, `listeners`), if any was sent.
    pub fn of(&self, name: &str) -> Option<&TypeStatus> {
        self.types.get(name).map(|t| &**t)
    }

    /// The version of type `name` last ACKed.
    pub fn acked(&self, name: &str) -> Option<u64> {
        self.of(name).and_then(|t| t.acked)
    }

    /// In sync at `revision`, rejected, waiting for an answer, or behind; see [`SyncState`].
    pub fn sync_state(&self, revision: u64) -> SyncState {
        let types = ["clusters", "listeners"].map(|n| self.of(n));
        let nacked = self.last_nack.as_ref().map(|n| n.version);
        if types
            .iter()
            .all(|t| t.and_then(|t| t.acked) == Some(revision))
        {
            SyncState::Synced
        } else if nacked.is_some() && types.iter().any(|t| t.and_then(|t| t.sent) == nacked) {
            SyncState::Nacked
        } else if types.iter().any(|t| t.is_some_and(|t| t.pending)) {
            SyncState::Pending
        } else {
            SyncState::Stale
        }
    }
}

/// Versions of one resource type on one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeStatus {
    /// The last version sent.
    pub sent: Option<u64>,
    /// The last version ACKed.
    pub acked: Option<u64>,
    /// When that ACK arrived (Unix microseconds).
    pub acked_at_us: Option<u64>,
    /// Sent and not yet answered.
    pub pending: bool,
    /// Resources sent on this stream, summed over responses (delta sends only changed ones).
    pub resources_sent: u64,
    /// Resource removals sent on this stream (delta only).
    pub removals_sent: u64,
}

/// A rejected config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NackStatus {
    /// Resource type.
    pub type_name: String,
    /// The rejected version.
    pub version: u64,
    /// Envoy's message.
    pub message: String,
    /// When (Unix milliseconds).
    pub at_ms: u64,
}

/// `GET /v1/envoys`: the Envoys streaming from one replica. Also what a replica answers over
/// the peer channel for the cluster-wide view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalEnvoys {
    /// The replica's node id.
    pub node_id: u64,
    /// The registry revision it serves.
    pub revision: u64,
    /// NACKs it received since it started.
    pub nacks_total: u64,
    /// Its Envoys, by stream id.
    pub envoys: Vec<EnvoyStatus>,
    /// Whether it serves Envoys now (in contact with the quorum, caught up); absent from
    /// replicas older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    /// Why it does not, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_serving: Option<String>,
    /// Over the peer channel: its Raft state, poller and recent changes, for the status page
    /// ([`crate::view`]); absent from `GET /v1/envoys` and from replicas older than the page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Box<crate::view::ReplicaReport>>,
}

impl LocalEnvoys {
    /// The Envoys' node ids, by stream id.
    pub fn ids(&self) -> Vec<String> {
        self.envoys.iter().map(|e| e.node_id.clone()).collect()
    }
}

/// How one Envoy stands against the revision of the replica it streams from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// Clusters and listeners ACKed at the replica's revision.
    Synced,
    /// The newest version sent was rejected.
    Nacked,
    /// A response is unanswered.
    Pending,
    /// Behind, and nothing under way.
    Stale,
}

impl SyncState {
    /// As the CLI prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Synced => "SYNCED",
            SyncState::Nacked => "NACKED",
            SyncState::Pending => "PENDING",
            SyncState::Stale => "STALE",
        }
    }
}

/// One member's line of the cluster-wide view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaEnvoys {
    /// The member's node id.
    pub node_id: u64,
    /// Its answer, or why there is none.
    #[serde(flatten)]
    pub answer: ReplicaAnswer,
}

/// What one member answered to the cluster-wide view: a summary, or the error (a member that
/// does not answer is listed, never left out silently).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReplicaAnswer {
    /// It answered.
    Answered {
        /// The revision it serves.
        revision: u64,
        /// NACKs it received since it started.
        nacks_total: u64,
        /// How many Envoys stream from it.
        envoys: u64,
        /// Whether it serves Envoys (SERVING), if it says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        serving: Option<bool>,
        /// Why it does not (NOT_SERVING), when it does not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        not_serving: Option<String>,
    },
    /// It did not.
    Failed {
        /// Why.
        error: String,
    },
}

/// One Envoy of the cluster-wide view: its stream and the replica it streams from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEnvoy {
    /// The stream, as its replica reports it.
    #[serde(flatten)]
    pub envoy: EnvoyStatus,
    /// The replica's node id.
    pub replica: u64,
    /// The revision that replica serves.
    pub replica_revision: u64,
}

impl ClusterEnvoy {
    /// In sync with its replica's revision, or not.
    pub fn sync_state(&self) -> SyncState {
        self.envoy.sync_state(self.replica_revision)
    }
}

/// `GET /v1/cluster/envoys`: every Envoy on every member, like Istio's `proxy-status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEnvoys {
    /// The replica that asked the others.
    pub asked: u64,
    /// Its registry revision.
    pub revision: u64,
    /// Every member and its answer.
    pub replicas: Vec<ReplicaEnvoys>,
    /// Every Envoy, by node id.
    pub envoys: Vec<ClusterEnvoy>,
}

impl ClusterEnvoys {
    /// Assembles the view from each member's answer, as `asked` at `revision` saw them.
    pub fn assemble<E: std::fmt::Display>(
        asked: u64,
        revision: u64,
        answers: impl IntoIterator<Item = (u64, Result<LocalEnvoys, E>)>,
    ) -> Self {
        let mut replicas = Vec::new();
        let mut envoys = Vec::new();
        for (id, answer) in answers {
            match answer {
                Ok(local) => {
                    replicas.push(ReplicaEnvoys {
                        node_id: id,
                        answer: ReplicaAnswer::Answered {
                            revision: local.revision,
                            nacks_total: local.nacks_total,
                            envoys: local.envoys.len() as u64,
                            serving: local.serving,
                            not_serving: local.not_serving.clone(),
                        },
                    });
                    envoys.extend(local.envoys.into_iter().map(|envoy| ClusterEnvoy {
                        envoy,
                        replica: id,
                        replica_revision: local.revision,
                    }));
                }
                Err(error) => replicas.push(ReplicaEnvoys {
                    node_id: id,
                    answer: ReplicaAnswer::Failed {
                        error: error.to_string(),
                    },
                }),
            }
        }
        // Stable: an Envoy on two replicas (a reconnect under way) keeps the replicas' order.
        envoys.sort_by(|a, b| a.envoy.node_id.cmp(&b.envoy.node_id));
        ClusterEnvoys {
            asked,
            revision,
            replicas,
            envoys,
        }
    }

    /// The Envoy `node_id`, if it streams from any member.
    pub fn envoy(&self, node_id: &str) -> Option<&ClusterEnvoy> {
        self.envoys.iter().find(|e| e.envoy.node_id == node_id)
    }

    /// The line of member `node_id`.
    pub fn replica(&self, node_id: u64) -> Option<&ReplicaEnvoys> {
        self.replicas.iter().find(|r| r.node_id == node_id)
    }
}
