//! The cluster as the status page shows it (`GET /ui/state`): every member with its Raft state
//! and health, every Envoy, the recent changes with how long until the Envoys ACKed them, and
//! the DNS poller. One replica assembles it from what each member answers over the peer channel
//! ([`LocalEnvoys`] with its [`ReplicaReport`]); a member that does not answer is listed with
//! the error, and the view of the others stands.

use crate::discovery::PollerStatus;
use crate::envoys::{ClusterEnvoy, ClusterEnvoys, LocalEnvoys, ReplicaAnswer};
use crate::status::Status;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a replica adds to its peer-channel answer for the cluster view; absent from replicas
/// older than the status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReport {
    /// Its Raft state, as `GET /v1/status` on it says.
    pub raft: Status,
    /// Its DNS poller, when discovery is on there.
    pub poller: Option<PollerStatus>,
    /// The changes it applied in the last hour (at most [`MAX_CHANGES`], the newest), oldest
    /// first, each with how many of its Envoys ACKed it.
    pub changes: Vec<ChangeAcks>,
}

/// Most changes one replica reports.
pub const MAX_CHANGES: usize = 240;

/// One change and the Envoys' ACKs of it: on one replica, of its own Envoys; in the
/// [`ClusterView`], summed over the replicas that answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeAcks {
    /// The registry revision it made.
    pub revision: u64,
    /// When this replica (in the cluster view: the first replica) applied it (Unix
    /// milliseconds).
    pub at_ms: u64,
    /// What it was (`dns: put builder b1`).
    pub what: String,
    /// Envoys that ACKed it.
    pub acked: u64,
    /// The slowest of their times from when the change was seen to the ACK (microseconds).
    pub slowest_ack_us: Option<u64>,
}

/// `GET /ui/state`: the whole cluster as one replica sees it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The replica that asked the others.
    pub asked: u64,
    /// When (Unix milliseconds).
    pub at_ms: u64,
    /// The cluster's name.
    pub cluster: String,
    /// The leader the asked replica knows of.
    pub leader: Option<u64>,
    /// Its term.
    pub term: u64,
    /// Every member, in the asked replica's membership order.
    pub replicas: Vec<ReplicaView>,
    /// Every Envoy, by node id, with the replica it streams from.
    pub envoys: Vec<ClusterEnvoy>,
    /// The changes of the last hour, oldest first, with their ACKs summed over the replicas.
    pub changes: Vec<ChangeAcks>,
    /// The replica that polls DNS, and its poller.
    pub poller: Option<PollingReplica>,
}

/// One member of the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaView {
    /// Its node id.
    pub node_id: u64,
    /// Its peer address.
    pub addr: String,
    /// Voter, or learner.
    pub voter: bool,
    /// What it said, or why it did not (as in the cluster-wide Envoy view).
    #[serde(flatten)]
    pub answer: ReplicaAnswer,
    /// Its Raft state, if it answered with one (not replicas older than the status page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft: Option<Box<Status>>,
}

/// The replica that polls DNS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollingReplica {
    /// Its node id.
    pub node_id: u64,
    /// Its poller.
    pub status: PollerStatus,
}

impl ClusterView {
    /// Assembles the view from each member's answer, as the replica whose state is `asked` saw
    /// them at `at_ms`.
    pub fn assemble<E: std::fmt::Display>(
        asked: &Status,
        at_ms: u64,
        answers: impl IntoIterator<Item = (u64, Result<LocalEnvoys, E>)>,
    ) -> Self {
        let mut reports = BTreeMap::new();
        let answers: Vec<_> = answers
            .into_iter()
            .map(|(id, answer)| {
                let answer = answer.map(|mut local| {
                    if let Some(report) = local.report.take() {
                        reports.insert(id, *report);
                    }
                    local
                });
                (id, answer)
            })
            .collect();
        let envoys = ClusterEnvoys::assemble(asked.node_id, asked.revision, answers);
        let replicas = envoys
            .replicas
            .into_iter()
            .map(|r| {
                let member = asked.members.iter().find(|m| m.id == r.node_id);
                ReplicaView {
                    node_id: r.node_id,
                    addr: member.map(|m| m.addr.clone()).unwrap_or_default(),
                    voter: member.is_some_and(|m| m.voter),
                    raft: reports.get(&r.node_id).map(|p| Box::new(p.raft.clone())),
                    answer: r.answer,
                }
            })
            .collect();
        let mut changes: BTreeMap<u64, ChangeAcks> = BTreeMap::new();
        for c in reports.values().flat_map(|r| &r.changes) {
            let merged = changes.entry(c.revision).or_insert_with(|| ChangeAcks {
                revision: c.revision,
                at_ms: c.at_ms,
                what: c.what.clone(),
                acked: 0,
                slowest_ack_us: None,
            });
            merged.at_ms = merged.at_ms.min(c.at_ms);
            merged.acked += c.acked;
            merged.slowest_ack_us = merged.slowest_ack_us.max(c.slowest_ack_us);
        }
        // The leader's poller; another replica's only if it still says it polls (a deposed
        // leader that has not noticed yet), so the page shows that too.
        let polling = |id: &u64| reports.get(id)?.poller.clone().filter(|p| p.polling);
        let poller = asked
            .leader
            .and_then(|l| polling(&l).map(|p| (l, p)))
            .or_else(|| reports.keys().find_map(|id| polling(id).map(|p| (*id, p))))
            .map(|(node_id, status)| PollingReplica { node_id, status });
        ClusterView {
            asked: asked.node_id,
            at_ms,
            cluster: asked.cluster.clone(),
            leader: asked.leader,
            term: asked.term,
            replicas,
            envoys: envoys.envoys,
            changes: changes.into_values().collect(),
            poller,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Member, Role};

    fn status(id: u64, role: Role, leader: Option<u64>) -> Status {
        Status {
            cluster: "c".into(),
            node_id: id,
            role,
            term: 4,
            leader,
            last_log_index: Some(9),
            applied_index: Some(9),
            snapshot_index: None,
            purged_index: None,
            revision: 9,
            builders: 1,
            members: (1..=3)
                .map(|id| Member {
                    id,
                    addr: format!("127.0.0.1:710{id}"),
                    voter: true,
                })
                .collect(),
            millis_since_quorum_ack: None,
            entry_format: None,
        }
    }

    fn local(id: u64, role: Role, polling: bool, changes: Vec<ChangeAcks>) -> LocalEnvoys {
        LocalEnvoys {
            node_id: id,
            revision: 9,
            nacks_total: 0,
            envoys: vec![],
            serving: Some(true),
            not_serving: None,
            report: Some(Box::new(ReplicaReport {
                raft: status(id, role, Some(1)),
                poller: Some(PollerStatus {
                    polling,
                    ..PollerStatus::default()
                }),
                changes,
            })),
        }
    }

    fn change(revision: u64, at_ms: u64, acked: u64, slowest: Option<u64>) -> ChangeAcks {
        ChangeAcks {
            revision,
            at_ms,
            what: format!("dns: change {revision}"),
            acked,
            slowest_ack_us: slowest,
        }
    }

    #[test]
    fn every_member_the_leaders_poller_and_the_changes_summed() {
        let answers: Vec<(u64, Result<LocalEnvoys, String>)> = vec![
            (
                1,
                Ok(local(
                    1,
                    Role::Leader,
                    true,
                    vec![change(8, 1000, 1, Some(900)), change(9, 2000, 0, None)],
                )),
            ),
            (2, Err("node 2 at 127.0.0.1:7102 is unreachable".into())),
            (
                3,
                Ok(local(
                    3,
                    Role::Follower,
                    false,
                    vec![change(8, 990, 2, Some(4000)), change(9, 2010, 1, Some(70))],
                )),
            ),
        ];
        let v = ClusterView::assemble(&status(3, Role::Follower, Some(1)), 5000, answers);
        assert_eq!((v.asked, v.leader, v.term), (3, Some(1), 4));
        assert_eq!(v.replicas.len(), 3, "the unanswering member is listed");
        assert!(
            matches!(&v.replicas[1].answer, ReplicaAnswer::Failed { error } if error.contains("unreachable"))
        );
        let Some(r) = &v.replicas[0].raft else {
            panic!("{:?}", v.replicas[0]);
        };
        assert_eq!(r.role, Role::Leader);
        assert_eq!(v.replicas[2].addr, "127.0.0.1:7103");
        assert_eq!(v.poller.as_ref().map(|p| p.node_id), Some(1));
        assert_eq!(
            v.changes,
            [
                ChangeAcks {
                    revision: 8,
                    at_ms: 990,
                    what: "dns: change 8".into(),
                    acked: 3,
                    slowest_ack_us: Some(4000)
                },
                ChangeAcks {
                    revision: 9,
                    at_ms: 2000,
                    what: "dns: change 9".into(),
                    acked: 1,
                    slowest_ack_us: Some(70)
                }
            ]
        );
        // On the wire and back.
        let json = serde_json::to_string(&v).expect("encodes");
        let back: ClusterView = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back, v);
    }

    #[test]
    fn replicas_older_than_the_page_still_show() {
        let mut old = local(2, Role::Follower, false, vec![]);
        old.report = None;
        let v = ClusterView::assemble(
            &status(2, Role::Follower, None),
            0,
            [(2, Ok::<_, String>(old))],
        );
        assert!(matches!(
            &v.replicas[0].answer,
            ReplicaAnswer::Answered { revision: 9, .. }
        ));
        assert_eq!(v.replicas[0].raft, None);
        assert_eq!(v.poller, None);
        assert!(v.changes.is_empty());
    }
}
