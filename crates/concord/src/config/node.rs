//! Who a replica is: its cluster, its node id and the data dir that holds its Raft log and state.

use anyhow::{Result, bail};
use clap::Args;
use concord_raft::NodeId;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// The replica's identity and storage.
#[derive(Debug, Clone, PartialEq, Args)]
#[command(next_help_heading = "Node")]
pub struct NodeArgs {
    /// Name of the cluster. A replica refuses peers and data dirs of another cluster.
    #[arg(
        long,
        env = "CONCORD_CLUSTER",
        value_name = "NAME",
        default_value = "concord"
    )]
    pub cluster: String,

    /// This replica's node id (1 or more), unique in the cluster and tied to its data dir.
    #[arg(long, env = "CONCORD_NODE_ID", value_name = "ID", default_value_t = 1)]
    pub node_id: NodeId,

    /// Directory of this replica's Raft log and state; created if missing. Keep it on persistent
    /// disk: a node that loses it must be removed from the cluster and added again.
    /// [default: $XDG_STATE_HOME/concord/<cluster>/node-<id>, $XDG_STATE_HOME being
    /// ~/.local/state unless set; never the working directory]
    #[arg(long, env = "CONCORD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// On SIGTERM or Ctrl-C, how long the replica may take to drain (finish admin requests in
    /// flight, end Envoy streams, stop Raft, flush the store, await every task) before it exits
    /// anyway, with a non-zero code.
    #[arg(
        long,
        env = "CONCORD_SHUTDOWN_GRACE_MS",
        value_name = "MS",
        default_value_t = 10_000
    )]
    pub shutdown_grace_ms: u64,
}

impl NodeArgs {
    /// The cluster name, checked.
    pub fn cluster(&self) -> Result<String> {
        let c = &self.cluster;
        let ok = !c.is_empty()
            && c.len() <= 63
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            bail!("invalid --cluster {c:?}: use 1 to 63 ASCII letters, digits, '-' or '_'");
        }
        Ok(c.clone())
    }

    /// The shutdown grace period, checked.
    pub fn shutdown_grace(&self) -> Result<Duration> {
        if self.shutdown_grace_ms == 0 {
            bail!("invalid --shutdown-grace-ms 0: a drain needs some time");
        }
        Ok(Duration::from_millis(self.shutdown_grace_ms))
    }

    /// The node id, checked.
    pub fn node_id(&self) -> Result<NodeId> {
        if self.node_id == 0 {
            bail!("invalid --node-id 0: node ids start at 1");
        }
        Ok(self.node_id)
    }

    /// The data dir: the one given, else one under the user's state directory.
    pub fn data_dir(&self, cluster: &str, node_id: NodeId) -> Result<PathBuf> {
        match &self.data_dir {
            Some(dir) => Ok(dir.clone()),
            None => default_data_dir(
                std::env::var_os("XDG_STATE_HOME"),
                std::env::var_os("HOME"),
                cluster,
                node_id,
            ),
        }
    }
}

/// The data dir when none is given. Never relative: a default under the working directory once
/// left a database in the source tree, committed by accident. (XDG: a relative
/// `$XDG_STATE_HOME` is ignored.)
fn default_data_dir(
    state_home: Option<OsString>,
    home: Option<OsString>,
    cluster: &str,
    node_id: NodeId,
) -> Result<PathBuf> {
    let absolute = |v: Option<OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    let state = match (absolute(state_home), absolute(home)) {
        (Some(state), _) => state,
        (None, Some(home)) => home.join(".local/state"),
        (None, None) => bail!(
            "no --data-dir, and neither $XDG_STATE_HOME nor $HOME is an absolute path to put \
             the default under: set --data-dir"
        ),
    };
    Ok(state
        .join("concord")
        .join(cluster)
        .join(format!("node-{node_id}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_data_dir_is_under_the_state_directory() {
        let dir = |state: Option<&str>, home: Option<&str>| {
            default_data_dir(state.map(Into::into), home.map(Into::into), "prod", 2)
        };
        assert_eq!(
            dir(Some("/state"), Some("/home/a")).unwrap(),
            PathBuf::from("/state/concord/prod/node-2")
        );
        assert_eq!(
            dir(None, Some("/home/a")).unwrap(),
            PathBuf::from("/home/a/.local/state/concord/prod/node-2")
        );
        // Relative values would land in the working directory: ignored, or refused.
        assert_eq!(
            dir(Some("state"), Some("/home/a")).unwrap(),
            PathBuf::from("/home/a/.local/state/concord/prod/node-2")
        );
        let err = dir(Some("state"), Some("home")).unwrap_err().to_string();
        assert!(err.contains("set --data-dir"), "{err}");
        assert!(dir(None, None).is_err());
    }
}
