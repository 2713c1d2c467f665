//! Raft settings: the peer address, the initial members and the timing of heartbeats,
//! elections, snapshots and client requests.

use anyhow::{Context, Result, bail};
use clap::Args;
use concord_raft::NodeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// The initial member list of the local cluster that `deploy/local` runs.
pub const DEFAULT_MEMBERS: &str = "1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103";

/// The peer channel and the Raft timing.
#[derive(Debug, Clone, PartialEq, Args)]
#[command(next_help_heading = "Raft")]
pub struct RaftArgs {
    /// Address the peer (Raft) gRPC server listens on. [default: 127.0.0.1:<7100+id>]
    #[arg(long, env = "CONCORD_PEER_ADDR", value_name = "IP:PORT")]
    pub peer_addr: Option<SocketAddr>,

    /// Address other replicas dial to reach this one, if not --peer-addr (e.g. behind NAT or
    /// when listening on 0.0.0.0).
    #[arg(long, env = "CONCORD_ADVERTISE_ADDR", value_name = "HOST:PORT")]
    pub advertise_addr: Option<String>,

    /// Members of a new cluster as `id=host:port` peer addresses, comma separated. Give every
    /// initial node the same list; a node in it initialises the cluster on its first start
    /// (harmless on all of them, never repeated after a restart). `none` for a node that will
    /// be added later with `concord cluster add-learner`.
    #[arg(long, env = "CONCORD_INITIAL_MEMBERS", value_name = "LIST", default_value = DEFAULT_MEMBERS)]
    pub initial_members: String,

    /// Leader heartbeat interval in milliseconds (openraft sends on a tick of 1.5 times it, and
    /// gives each append-entries call this long).
    #[arg(
        long,
        env = "CONCORD_HEARTBEAT_MS",
        value_name = "MS",
        default_value_t = 25
    )]
    pub heartbeat_ms: u64,

    /// Election timeout range in milliseconds, `min-max`. openraft 0.9 adds a leader lease of
    /// `max` to it: a follower campaigns after `max` plus a timeout drawn from the range (once
    /// per start) without a heartbeat, and refuses votes for `max` after one. The default makes
    /// that 160-200 ms, so a new leader commits about 200 ms after the old one died (issue 17;
    /// 150-300 made it 450-600 ms).
    #[arg(
        long,
        env = "CONCORD_ELECTION_TIMEOUT_MS",
        value_name = "MIN-MAX",
        default_value = "60-100"
    )]
    pub election_timeout_ms: String,

    /// Build a snapshot and compact the log after this many entries.
    #[arg(
        long,
        env = "CONCORD_SNAPSHOT_THRESHOLD",
        value_name = "ENTRIES",
        default_value_t = 5000
    )]
    pub snapshot_threshold: u64,

    /// How long a client request may wait for a leader and for its commit, in milliseconds.
    #[arg(
        long,
        env = "CONCORD_REQUEST_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = 5000
    )]
    pub request_timeout_ms: u64,

    /// A leader that has not heard from a majority for this many milliseconds refuses writes at
    /// once instead of letting them hang.
    #[arg(
        long,
        env = "CONCORD_QUORUM_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = 1000
    )]
    pub quorum_timeout_ms: u64,
}

/// The Raft timing, checked against itself.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout minimum.
    pub election_min: Duration,
    /// Election timeout maximum.
    pub election_max: Duration,
    /// Log entries between snapshots.
    pub snapshot_threshold: u64,
    /// How long a client request may wait.
    pub request_timeout: Duration,
    /// How long a leader without a majority keeps accepting writes.
    pub quorum_timeout: Duration,
}

impl RaftArgs {
    /// The address peers dial: --advertise-addr, else the peer address if it is dialable.
    pub fn advertise(&self, peer_addr: SocketAddr) -> Result<String> {
        match &self.advertise_addr {
            Some(addr) => {
                check_host_port(addr).context("invalid --advertise-addr")?;
                Ok(addr.clone())
            }
            None if peer_addr.ip().is_unspecified() => {
                bail!(
                    "--peer-addr {peer_addr} is not an address peers can dial; set --advertise-addr"
                )
            }
            None => Ok(peer_addr.to_string()),
        }
    }

    /// The initial members, checked against this node's id and advertised address.
    pub fn members(&self, node_id: NodeId, advertise: &str) -> Result<BTreeMap<NodeId, String>> {
        let members = parse_members(&self.initial_members)?;
        if let Some(listed) = members.get(&node_id)
            && listed != advertise
        {
            bail!(
                "conflicting node id: --initial-members lists node {node_id} at {listed}, but this \
                 node advertises {advertise}; fix --node-id or the member list"
            );
        }
        Ok(members)
    }

    /// The timing, checked: heartbeats within an election timeout, a request timeout that
    /// covers an election, a quorum timeout above the heartbeat.
    pub fn timing(&self) -> Result<Timing> {
        let heartbeat = self.heartbeat_ms;
        let (emin, emax) = parse_range(&self.election_timeout_ms)?;
        if heartbeat == 0 || heartbeat >= emin {
            bail!(
                "--heartbeat-ms {heartbeat} must be above 0 and below the election timeout \
                 minimum {emin}"
            );
        }
        if self.snapshot_threshold == 0 {
            bail!("--snapshot-threshold must be at least 1");
        }
        let (request, quorum) = (self.request_timeout_ms, self.quorum_timeout_ms);
        if request < emax || quorum <= heartbeat {
            bail!(
                "--request-timeout-ms ({request}) must cover an election ({emax} ms) and \
                 --quorum-timeout-ms ({quorum}) must exceed the heartbeat ({heartbeat} ms)"
            );
        }
        Ok(Timing {
            heartbeat: Duration::from_millis(heartbeat),
            election_min: Duration::from_millis(emin),
            election_max: Duration::from_millis(emax),
            snapshot_threshold: self.snapshot_threshold,
            request_timeout: Duration::from_millis(request),
            quorum_timeout: Duration::from_millis(quorum),
        })
    }
}

/// Checks `host:port` with a non-zero port.
fn check_host_port(s: &str) -> Result<()> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("{s:?} is not host:port"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("{s:?} has an invalid port"))?;
    if host.is_empty() || port == 0 {
        bail!("{s:?} is not host:port with a non-zero port");
    }
    Ok(())
}

/// Parses `1=host:port,2=host:port`; `none` or an empty string is the empty set.
pub fn parse_members(s: &str) -> Result<BTreeMap<NodeId, String>> {
    let mut members = BTreeMap::new();
    let s = s.trim();
    if s.is_empty() || s == "none" {
        return Ok(members);
    }
    for item in s.split(',') {
        let (id, addr) = item.trim().split_once('=').with_context(|| {
            format!("invalid --initial-members entry {item:?}: expected id=host:port")
        })?;
        let id: NodeId = id
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .with_context(|| format!("invalid node id {id:?} in --initial-members"))?;
        check_host_port(addr)
            .with_context(|| format!("invalid address for node {id} in --initial-members"))?;
        if members.values().any(|a| a == addr) {
            bail!("--initial-members lists {addr} twice");
        }
        if members.insert(id, addr.to_string()).is_some() {
            bail!("--initial-members lists node {id} twice");
        }
    }
    Ok(members)
}

/// Parses the election timeout range `MIN-MAX`.
fn parse_range(s: &str) -> Result<(u64, u64)> {
    let err = || format!("invalid --election-timeout-ms {s:?}: expected MIN-MAX, e.g. 150-300");
    let (a, b) = s.split_once('-').with_context(err)?;
    let (a, b): (u64, u64) = (
        a.trim().parse().with_context(err)?,
        b.trim().parse().with_context(err)?,
    );
    if a == 0 || a >= b {
        bail!("{}: MIN must be above 0 and below MAX", err());
    }
    Ok((a, b))
}
