//! `concord envoys [--all]`: the Envoys streaming from one replica, or from every replica with
//! whether each is in sync (like Istio's `proxy-status`).

use super::{Target, opt};
use clap::Args;
use concord_api::envoys::ReplicaAnswer;
use concord_api::{ClusterEnvoys, EnvoyStatus, LocalEnvoys};
use std::process::ExitCode;

/// `concord envoys`.
#[derive(Args)]
pub struct EnvoysArgs {
    /// Every Envoy of the whole cluster, with the replica each streams from and whether it is in
    /// sync (asks every member through the target replica), like Istio's `proxy-status`.
    #[arg(long)]
    all: bool,
}

/// `sent/acked` of one type of an Envoy, `(pending)` if unanswered.
fn versions(e: &EnvoyStatus, name: &str) -> String {
    let t = e.of(name);
    format!(
        "{}/{}{}",
        opt(t.and_then(|t| t.sent)),
        opt(t.and_then(|t| t.acked)),
        if t.is_some_and(|t| t.pending) {
            " (pending)"
        } else {
            ""
        }
    )
}

fn last_nack(e: &EnvoyStatus) -> String {
    match &e.last_nack {
        Some(n) => format!("{} v{}: {}", n.type_name, n.version, n.message),
        None => "-".into(),
    }
}

/// `concord envoys` for people.
fn local(v: &LocalEnvoys) -> String {
    let mut out = format!(
        "replica node {} at revision {} ({} NACKs since start)\n{:<20} {:<8} {:<22} {:<22} LAST NACK\n",
        v.node_id,
        v.revision,
        v.nacks_total,
        "ENVOY",
        "STREAM",
        "CLUSTERS sent/acked",
        "LISTENERS sent/acked"
    );
    for e in &v.envoys {
        out += &format!(
            "{:<20} {:<8} {:<22} {:<22} {}\n",
            e.node_id,
            e.stream.to_string(),
            versions(e, "clusters"),
            versions(e, "listeners"),
            last_nack(e)
        );
    }
    out
}

/// `concord envoys --all` for people.
fn cluster(v: &ClusterEnvoys) -> String {
    let mut out = String::new();
    for r in &v.replicas {
        match &r.answer {
            ReplicaAnswer::Failed { error } => {
                out += &format!("replica {}: NOT ANSWERING: {error}\n", r.node_id)
            }
            ReplicaAnswer::Answered {
                revision,
                nacks_total,
                envoys,
                serving,
                not_serving,
            } => {
                let health = match (serving, not_serving) {
                    (Some(true), _) => ", SERVING".to_string(),
                    (Some(false), Some(why)) => format!(", NOT_SERVING: {why}"),
                    (Some(false), None) => ", NOT_SERVING".to_string(),
                    (None, _) => String::new(),
                };
                out += &format!(
                    "replica {}: revision {revision}, {envoys} Envoys, {nacks_total} NACKs since start{health}\n",
                    r.node_id
                )
            }
        }
    }
    out += &format!(
        "{:<20} {:<8} {:<8} {:<22} {:<22} LAST NACK\n",
        "ENVOY", "REPLICA", "STATE", "CLUSTERS sent/acked", "LISTENERS sent/acked"
    );
    for e in &v.envoys {
        out += &format!(
            "{:<20} {:<8} {:<8} {:<22} {:<22} {}\n",
            e.envoy.node_id,
            e.replica.to_string(),
            e.sync_state().as_str(),
            versions(&e.envoy, "clusters"),
            versions(&e.envoy, "listeners"),
            last_nack(&e.envoy)
        );
    }
    out
}

impl EnvoysArgs {
    /// Shows the Envoys of the target replica, or of every replica with `--all`.
    pub async fn run(&self, t: &Target) -> ExitCode {
        if self.all {
            t.run(async |c| c.cluster_envoys().await, cluster).await
        } else {
            t.run(async |c| c.envoys().await, local).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_api::envoys::{ClusterEnvoy, NackStatus, ReplicaEnvoys, TypeStatus};

    fn envoy() -> EnvoyStatus {
        let t = |sent, acked, pending| {
            Box::new(TypeStatus {
                sent: Some(sent),
                acked,
                pending,
                ..TypeStatus::default()
            })
        };
        EnvoyStatus {
            node_id: "envoy-1".into(),
            node_cluster: "builders".into(),
            stream: 3,
            peer: None,
            connected_at_ms: 0,
            types: [
                ("clusters".to_string(), t(7, Some(7), false)),
                ("listeners".to_string(), t(7, None, true)),
            ]
            .into(),
            last_nack: Some(NackStatus {
                type_name: "listeners".into(),
                version: 5,
                message: "bad".into(),
                at_ms: 0,
            }),
            staged: None,
        }
    }

    #[test]
    fn views_for_people() {
        let l = LocalEnvoys {
            node_id: 1,
            revision: 7,
            nacks_total: 1,
            envoys: vec![envoy()],
            serving: Some(true),
            not_serving: None,
            report: None,
        };
        let text = local(&l);
        assert!(text.starts_with("replica node 1 at revision 7 (1 NACKs since start)\n"));
        assert!(text.ends_with(&format!(
            "{:<20} {:<8} {:<22} {:<22} listeners v5: bad\n",
            "envoy-1", "3", "7/7", "7/- (pending)"
        )));
        let c = ClusterEnvoys {
            asked: 1,
            revision: 7,
            replicas: vec![
                ReplicaEnvoys {
                    node_id: 1,
                    answer: ReplicaAnswer::Answered {
                        revision: 7,
                        nacks_total: 1,
                        envoys: 1,
                        serving: Some(true),
                        not_serving: None,
                    },
                },
                ReplicaEnvoys {
                    node_id: 2,
                    answer: ReplicaAnswer::Answered {
                        revision: 5,
                        nacks_total: 0,
                        envoys: 0,
                        serving: Some(false),
                        not_serving: Some("no quorum".into()),
                    },
                },
                ReplicaEnvoys {
                    node_id: 3,
                    answer: ReplicaAnswer::Failed {
                        error: "down".into(),
                    },
                },
            ],
            envoys: vec![ClusterEnvoy {
                envoy: envoy(),
                replica: 1,
                replica_revision: 7,
            }],
        };
        let text = cluster(&c);
        assert!(text.starts_with(
            "replica 1: revision 7, 1 Envoys, 1 NACKs since start, SERVING\n\
             replica 2: revision 5, 0 Envoys, 0 NACKs since start, NOT_SERVING: no quorum\n\
             replica 3: NOT ANSWERING: down\n"
        ));
        assert!(text.contains(&format!("{:<20} {:<8} {:<8} ", "envoy-1", "1", "PENDING")));
    }
}
