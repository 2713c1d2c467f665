//! `concord cluster …`: the replica's status, and membership changes.

use super::{Target, opt};
use clap::{Args, Subcommand};
use concord_api::{MemberFormat, MembershipChanged, Status};
use std::process::ExitCode;

/// `concord cluster`.
#[derive(Args)]
pub struct ClusterCmd {
    #[command(subcommand)]
    cmd: ClusterSub,
}

#[derive(Subcommand)]
enum ClusterSub {
    /// Show the replica's role, term, leader, log and applied index, revision and members.
    Status,
    /// Add a node as a learner: it receives the log but does not vote yet.
    AddLearner {
        /// The new node's id.
        node_id: u64,
        /// Its peer address, host:port.
        addr: String,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner's id.
        node_id: u64,
    },
    /// Remove a node from the cluster.
    Remove {
        /// The node's id.
        node_id: u64,
    },
}

/// `cluster status` for people.
fn status(s: &Status) -> String {
    let mut out = format!(
        "node {} ({}) of cluster {}, term {}\nleader: {}  last log: {}  applied: {}  \
         snapshot: {}  revision: {}  builders: {}\nmembers:\n",
        s.node_id,
        s.role,
        s.cluster,
        s.term,
        opt(s.leader),
        opt(s.last_log_index),
        opt(s.applied_index),
        opt(s.snapshot_index),
        s.revision,
        s.builders,
    );
    let formats = s.entry_format.as_ref();
    for m in &s.members {
        // The id unpadded, as the CLI has always printed it.
        out += &format!(
            "  {} {:<24} {}",
            m.id,
            m.addr,
            if m.voter { "voter" } else { "learner" }
        );
        match formats.and_then(|f| f.members.get(&m.id)) {
            Some(MemberFormat::Supports(n)) => out += &format!("  entry format {n}"),
            Some(MemberFormat::Unknown(why)) => out += &format!("  entry format unknown: {why}"),
            None => {}
        }
        out += "\n";
    }
    if let Some(f) = formats {
        out += &format!(
            "entry format: cluster {}, this replica applies up to {}\n",
            f.cluster, f.supported
        );
    }
    out
}

impl ClusterCmd {
    /// Runs the subcommand and returns the process exit code.
    pub async fn run(self, t: &Target) -> ExitCode {
        match self.cmd {
            ClusterSub::Status => t.run(async |c| c.status().await, status).await,
            ClusterSub::AddLearner { node_id, addr } => {
                t.run(
                    async |c| c.add_learner(node_id, &addr).await,
                    |m: &MembershipChanged| {
                        format!(
                            "ok: node {node_id} added as learner (log index {})\n",
                            m.log_index
                        )
                    },
                )
                .await
            }
            ClusterSub::Promote { node_id } => {
                t.run(
                    async |c| c.promote(node_id).await,
                    |m: &MembershipChanged| {
                        format!(
                            "ok: node {node_id} is a voter (log index {})\n",
                            m.log_index
                        )
                    },
                )
                .await
            }
            ClusterSub::Remove { node_id } => {
                t.run(
                    async |c| c.remove_member(node_id).await,
                    |m: &MembershipChanged| {
                        format!("ok: node {node_id} removed (log index {})\n", m.log_index)
                    },
                )
                .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_api::{Member, Role};

    #[test]
    fn status_for_people() {
        let s = Status {
            cluster: "concord".into(),
            node_id: 1,
            role: Role::Leader,
            term: 2,
            leader: Some(1),
            last_log_index: Some(9),
            applied_index: Some(9),
            snapshot_index: None,
            purged_index: None,
            revision: 8,
            builders: 3,
            members: vec![Member {
                id: 2,
                addr: "127.0.0.1:7102".into(),
                voter: false,
            }],
            millis_since_quorum_ack: Some(1),
            entry_format: None,
        };
        assert_eq!(
            status(&s),
            "node 1 (leader) of cluster concord, term 2\nleader: 1  last log: 9  applied: 9  \
             snapshot: -  revision: 8  builders: 3\nmembers:\n  2 127.0.0.1:7102           learner\n"
        );
        let s = Status {
            entry_format: Some(concord_api::EntryFormats {
                supported: 2,
                cluster: 1,
                members: [(2, MemberFormat::Supports(1))].into(),
            }),
            ..s
        };
        assert_eq!(
            status(&s),
            "node 1 (leader) of cluster concord, term 2\nleader: 1  last log: 9  applied: 9  \
             snapshot: -  revision: 8  builders: 3\nmembers:\n  2 127.0.0.1:7102           learner  \
             entry format 1\nentry format: cluster 1, this replica applies up to 2\n"
        );
    }
}
