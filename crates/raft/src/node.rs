//! One replica's Raft node: opens the store, starts openraft and the peer gRPC server, initialises
//! a new cluster, and executes client requests on the leader (forwarding them from followers).

use crate::api::{ClientError, ClientReply, ClientRequest};
use crate::contact::{ContactClock, Freshness, judge};
use crate::format::{EntryFormats, MemberFormat};
use crate::network::{MAX_MESSAGE, Network};
use crate::proto::raft_server::RaftServer;
use crate::service::PeerService;
use crate::store::{self, Identity, OpenError, StateMachine};
use crate::{NodeId, Raft};
use concord_registry::{Outcome, Registry};
use concord_telemetry::tasks::Tasks;
use concord_telemetry::trace::Span;
use concord_tls::PeerTls;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState, SnapshotPolicy};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Everything a replica's Raft node needs; validated by the daemon before it gets here.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The cluster's name; a replica refuses peers and data dirs of another cluster.
    pub cluster: String,
    /// This replica's node id.
    pub node_id: NodeId,
    /// Where the sled database lives.
    pub data_dir: PathBuf,
    /// Where the peer gRPC server listens.
    pub listen_addr: SocketAddr,
    /// The members of a new cluster (id → peer address). A node in this set initialises the
    /// cluster on its first start; empty for a node that will be added later.
    pub initial_members: BTreeMap<NodeId, String>,
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Lower bound of the randomised election timeout.
    pub election_timeout_min: Duration,
    /// Upper bound of the randomised election timeout.
    pub election_timeout_max: Duration,
    /// Build a snapshot (and compact the log) after this many entries.
    pub snapshot_threshold: u64,
    /// How long a client request may wait for a leader and for its commit.
    pub request_timeout: Duration,
    /// A leader that has not heard from a quorum for this long refuses writes at once.
    pub quorum_timeout: Duration,
    /// Mutual TLS on the peer channel; plaintext without it (`--insecure`).
    pub tls: Option<Arc<PeerTls>>,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data dir could not be opened or belongs to someone else.
    #[error(transparent)]
    Store(#[from] OpenError),
    /// The peer port could not be bound.
    #[error("cannot listen for peers on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// openraft refused the configuration.
    #[error("raft configuration: {0}")]
    Config(#[source] openraft::ConfigError),
    /// openraft failed to start or to initialise the cluster.
    #[error("raft: {0}")]
    Raft(#[source] openraft::error::Fatal<NodeId>),
}

/// A running replica's Raft side.
pub struct Node {
    config: NodeConfig,
    raft: Raft,
    sm: StateMachine,
    network: Network,
    /// This node's contact with a quorum (DESIGN rule 6), shared with the network.
    contact: Arc<ContactClock>,
    /// Fault injection: cut off from every peer, both ways.
    isolated: Arc<std::sync::atomic::AtomicBool>,
    /// Fault injection: the peers this node is cut off from, both ways.
    cut: Arc<std::sync::Mutex<BTreeSet<NodeId>>>,
    /// Fault injection: how many forwarded writes still to answer late, and how late.
    held_replies: std::sync::Mutex<(u32, Duration)>,
    /// What this replica reports of itself to [`ClientRequest::LocalStatus`].
    local_status: std::sync::OnceLock<LocalStatusFn>,
    /// While this node leads: each member's entry format, as last asked (see [`crate::format`]).
    member_formats: std::sync::Mutex<BTreeMap<NodeId, MemberFormat>>,
    /// While this node leads: every endpoint's lease and drain (see [`crate::leases`]).
    leases: crate::leases::Leases,
    /// What this replica reports of its Envoys' stats to [`ClientRequest::Stats`].
    local_stats: std::sync::OnceLock<LocalStatsFn>,
    /// While this node leads: the windows of running rollout steps (see [`crate::rollouts`]).
    judge: crate::rollouts::Judge,
    /// While this node leads and a configuration is staged: since when every Envoy of its
    /// group has held it, by (term, stage start).
    stage_judging: std::sync::Mutex<crate::stage::Judging>,
}

/// Produces a replica's report of the stats its Envoys streamed to it, for these clusters (all
/// when empty), for the leader's rollout judge.
pub type LocalStatsFn = Box<dyn Fn(Option<&[String]>) -> concord_api::StatsReport + Send + Sync>;

/// Produces a replica's own status (the Envoys streaming from it) for cluster-wide views.
pub type LocalStatusFn = Box<dyn Fn() -> concord_api::LocalEnvoys + Send + Sync>;

/// A member of the cluster, as status shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Member {
    /// Node id.
    pub id: NodeId,
    /// Peer address.
    pub addr: String,
    /// Voter, or learner.
    pub voter: bool,
}

/// A snapshot of one replica's Raft and registry state.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The cluster's name.
    pub cluster: String,
    /// This node's id.
    pub node_id: NodeId,
    /// leader, follower, candidate, learner or shutdown.
    pub role: &'static str,
    /// The current term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
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
    pub builders: usize,
    /// Voters and learners.
    pub members: Vec<Member>,
    /// On the leader: milliseconds since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// The entry formats of this replica and the cluster.
    pub entry_format: EntryFormats,
}

/// `millis_since_quorum_ack` while the node leads; `None` otherwise.
fn leading_quorum_age(m: &openraft::RaftMetrics<NodeId, BasicNode>) -> Option<Duration> {
    match m.state {
        ServerState::Leader => m.millis_since_quorum_ack.map(Duration::from_millis),
        _ => None,
    }
}

fn role(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl Node {
    /// Opens the store, starts Raft and the peer server, and initialises the cluster if this is
    /// a new member of the initial set. Its tasks are tasks of `tasks`; the peer server stops
    /// when `tasks` is cancelled (after [`Node::shutdown`]: peers keep reaching this node while
    /// it drains), and the returned handle completes then.
    pub async fn start(
        config: NodeConfig,
        tasks: Tasks,
    ) -> Result<(Arc<Node>, tokio::task::JoinHandle<()>), StartError> {
        let shutdown = tasks.token().clone();
        let identity = Identity {
            cluster: config.cluster.clone(),
            node_id: config.node_id,
            format: 0,
        };
        let (log, sm) = store::open(&config.data_dir, &identity).await?;
        let ms = |d: Duration| d.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: config.cluster.clone(),
            heartbeat_interval: ms(config.heartbeat),
            election_timeout_min: ms(config.election_timeout_min),
            election_timeout_max: ms(config.election_timeout_max),
            install_snapshot_timeout: 5_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_threshold),
            // Keep some log behind a snapshot so a briefly lagging follower catches up by log.
            max_in_snapshot_log_to_keep: config.snapshot_threshold.min(1000),
            snapshot_max_chunk_size: 4 * 1024 * 1024,
            ..Default::default()
        }
        .validate()
        .map_err(StartError::Config)?;
        let network = Network::new(config.cluster.clone(), config.node_id, config.tls.clone())
            .retry_unreachable(config.heartbeat);
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network.clone(),
            log,
            sm.clone(),
        )
        .await
        .map_err(StartError::Raft)?;

        let listener = tokio::net::TcpListener::bind(config.listen_addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen_addr,
                source,
            })?;
        let isolated = network.isolation();
        let cut = network.cut();
        let contact = network.contact();
        let node = Arc::new(Node {
            config,
            raft,
            sm,
            network,
            isolated,
            cut,
            held_replies: std::sync::Mutex::default(),
            contact,
            local_status: std::sync::OnceLock::new(),
            member_formats: std::sync::Mutex::default(),
            leases: crate::leases::Leases::default(),
            local_stats: std::sync::OnceLock::new(),
            judge: crate::rollouts::Judge::default(),
            stage_judging: std::sync::Mutex::default(),
        });
        let service = RaftServer::new(PeerService::new(node.clone()))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let tls = node.config.tls.clone();
        let builder = tonic::transport::Server::builder().add_service(service);
        let server: futures::future::BoxFuture<'static, Result<(), tonic::transport::Error>> =
            match tls {
                Some(tls) => {
                    tls.watch(&tasks);
                    let incoming = concord_tls::net::incoming(
                        listener,
                        move || tls.server_config(),
                        "peer",
                        &tasks,
                    );
                    Box::pin(
                        builder.serve_with_incoming_shutdown(
                            incoming,
                            shutdown.clone().cancelled_owned(),
                        ),
                    )
                }
                None => Box::pin(builder.serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown.clone().cancelled_owned(),
                )),
            };
        let handle = tasks.spawn("peer server", async move {
            if let Err(error) = server.await {
                tracing::error!(%error, "peer server failed");
            }
        });
        node.initialize().await?;
        node.follow_leadership(&tasks);
        node.catch_up_after_start(&tasks);
        node.raise_format_when_supported(&tasks);
        node.keep_leases(&tasks);
        node.judge_rollouts(&tasks);
        node.judge_stage(&tasks);
        Ok((node, handle))
    }

    /// While this node leads, records when its quorum last acknowledged it, at every change of
    /// openraft's metrics (they are reported after every event, heartbeat acks included): a
    /// leader that steps down was in contact until then, not since it last followed (issue 16).
    fn follow_leadership(&self, tasks: &Tasks) {
        let mut metrics = self.raft.metrics();
        let contact = self.contact.clone();
        tasks.spawn("raft leadership", async move {
            loop {
                contact.observe_leading(
                    leading_quorum_age(&metrics.borrow_and_update()),
                    Instant::now(),
                );
                // Ends when Raft stops.
                if metrics.changed().await.is_err() {
                    break;
                }
            }
        });
    }

    /// Counts this replica as fresh only after a read barrier passes: a leader with a quorum
    /// confirmed it leads, and everything committed before is applied here. Until then its state
    /// may be older than what it served before it stopped (the state machine is not flushed on
    /// apply, nor the commit index), and it has heard from no quorum.
    fn catch_up_after_start(self: &Arc<Self>, tasks: &Tasks) {
        let node = self.clone();
        let shutdown = tasks.token().clone();
        tasks.spawn("raft catch-up", async move {
            let boot = Instant::now();
            loop {
                let started = Instant::now();
                let attempt = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = node.read_barrier() => r,
                };
                match attempt {
                    Ok(()) => {
                        node.contact.caught_up(started);
                        tracing::info!(
                            after_ms = boot.elapsed().as_millis() as u64,
                            applied = ?node.status().applied_index,
                            "caught up with the cluster after start"
                        );
                        return;
                    }
                    Err(error) => {
                        tracing::debug!(%error, "not caught up with the cluster yet; retrying")
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
    }

    /// While this node leads, asks every member for its entry format every
    /// [`crate::format::CHECK_EVERY`] and raises the cluster's once all of them support a newer
    /// one (see [`crate::format`]).
    fn raise_format_when_supported(self: &Arc<Self>, tasks: &Tasks) {
        self.every(
            tasks,
            "raft entry format",
            crate::format::CHECK_EVERY,
            |node| async move { node.check_formats().await },
        );
    }

    /// While this node leads, keeps every endpoint's lease and drain and commits the expiries
    /// that fall due (see [`crate::leases`]).
    fn keep_leases(self: &Arc<Self>, tasks: &Tasks) {
        self.every(
            tasks,
            "raft leases",
            crate::leases::CHECK_EVERY,
            |node| async move { node.keep_leases_once().await },
        );
    }

    /// While this node leads, judges every running rollout's step on its Envoys' stats, read
    /// from every member each [`crate::rollouts::CHECK_EVERY`], and commits the promotions and
    /// rollbacks it decides (see [`crate::rollouts`]).
    fn judge_rollouts(self: &Arc<Self>, tasks: &Tasks) {
        self.every(
            tasks,
            "raft rollouts",
            crate::rollouts::CHECK_EVERY,
            |node| async move { node.judge_rollouts_once().await },
        );
    }

    /// While this node leads and a configuration is staged to a group of Envoys: reads every
    /// member's Envoys each [`crate::rollouts::CHECK_EVERY`], aborts the stage at the first NACK
    /// from an Envoy of the group, and promotes it once every Envoy of the group (one at least)
    /// has held it for the stage's hold (see `concord_registry::services::stage`).
    fn judge_stage(self: &Arc<Self>, tasks: &Tasks) {
        self.every(
            tasks,
            "raft stage",
            crate::rollouts::CHECK_EVERY,
            |node| async move { node.judge_stage_once().await },
        );
    }

    /// Runs `round` every `period` until shutdown, in a task named `name` (the leader's
    /// periodic duties: each round looks whether this node leads).
    fn every<F, Fut>(
        self: &Arc<Self>,
        tasks: &Tasks,
        name: &'static str,
        period: Duration,
        round: F,
    ) where
        F: Fn(Arc<Node>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let node = self.clone();
        let shutdown = tasks.token().clone();
        tasks.spawn(name, async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
                round(node.clone()).await;
            }
        });
    }

    /// One round of [`Node::keep_leases`].
    async fn keep_leases_once(&self) {
        let Some(term) = self.leading_term() else {
            self.leases.clear();
            return;
        };
        let now = Instant::now();
        let registry = self.sm.registry().borrow().clone();
        self.leases
            .sync(term, &registry, now, self.config.quorum_timeout);
        let due = self.leases.due(now);
        if due.is_empty() {
            return;
        }
        let n = due.len();
        let cmd = concord_registry::Command::endpoints(due);
        match self.write_local(cmd, self.config.request_timeout).await {
            Ok(_) => {
                tracing::info!(endpoints = n, "leases lapsed or drains ended; removed")
            }
            Err(error) => {
                tracing::warn!(%error, "committing lease expiries failed; retrying")
            }
        }
    }

    /// One round of [`Node::judge_rollouts`].
    async fn judge_rollouts_once(&self) {
        let Some(term) = self.leading_term() else {
            self.judge.clear();
            return;
        };
        let registry = self.sm.registry().borrow().clone();
        let running: Vec<&concord_registry::services::Rollout> = registry
            .rollouts()
            .values()
            .filter(|r| r.phase == concord_registry::services::Phase::Running)
            .collect();
        self.judge.retain(&running);
        if running.is_empty() {
            return;
        }
        let clusters: Vec<String> = running
            .iter()
            .flat_map(|r| {
                [&r.spec.from, &r.spec.to]
                    .map(|v| concord_registry::services::version_cluster(&r.spec.service, v))
            })
            .collect();
        let reports = self.stats_of_members(Some(&clusters)).await;
        let now = Instant::now();
        let changes: Vec<_> = running
            .iter()
            .filter_map(|r| self.judge.observe(term, r, &reports, now))
            .collect();
        for change in changes {
            let what = change.summary();
            let mut span = Span::root("rollout.decide", std::time::SystemTime::now());
            span.set("rollout.service", change.service().to_string());
            span.set("rollout.decision", what.clone());
            if let concord_registry::services::RolloutChange::RollBack { why, .. }
            | concord_registry::services::RolloutChange::Promote { why, .. } = &change
            {
                span.set("rollout.why", why.clone());
            }
            let mut cmd = concord_registry::Command::rollouts(vec![change.clone()]);
            span.inject(&mut cmd.trace);
            match self.write_local(cmd, self.config.request_timeout).await {
                Ok(_) => {
                    match &change {
                        concord_registry::services::RolloutChange::RollBack { why, .. } => {
                            tracing::warn!(service = change.service(), %why, "{what}")
                        }
                        _ => tracing::info!(service = change.service(), "{what}"),
                    }
                    span.ok();
                }
                Err(error) => {
                    tracing::warn!(%error, "committing a rollout decision failed; retrying");
                    span.fail(error.to_string());
                }
            }
        }
    }

    /// One round of [`Node::judge_stage`].
    async fn judge_stage_once(&self) {
        let stage = self.sm.registry().borrow().stage().cloned();
        let (Some(term), Some(stage)) = (self.leading_term(), stage) else {
            *self.stage_judging.lock().unwrap_or_else(|e| e.into_inner()) = Default::default();
            return;
        };
        let members = self.members();
        let asks = members
            .iter()
            .map(|(id, _)| self.local_status_of(*id, crate::rollouts::ASK_TIMEOUT));
        let (answers, reports) =
            tokio::join!(futures::future::join_all(asks), self.stats_of_members(None));
        let now = Instant::now();
        let verdict = crate::stage::judge(&stage, &answers);
        let change = {
            let mut judging = self.stage_judging.lock().unwrap_or_else(|e| e.into_inner());
            judging.begin(term, stage.at);
            judging.observe(stage.at, &reports);
            let errors = judging.errors();
            crate::stage::decide(&stage, verdict, errors, &mut judging.since, now)
        };
        let Some(change) = change else { return };
        let what = change.summary();
        let cmd = concord_registry::Command::stage(change.clone());
        match self.write_local(cmd, self.config.request_timeout).await {
            Ok(_) => match &change {
                concord_registry::services::StageChange::Abort { why, .. } => {
                    tracing::warn!(%why, "{what}")
                }
                _ => tracing::info!("{what}"),
            },
            Err(error) => {
                tracing::warn!(%error, "committing a stage decision failed; retrying")
            }
        }
    }

    /// Every member of the membership in effect, with its address.
    fn members(&self) -> Vec<(NodeId, String)> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// Every member's stats report for `clusters` (no cluster's, only the stage's counts, when
    /// none; none for a member that does not answer in [`crate::rollouts::ASK_TIMEOUT`]),
    /// asked at once.
    async fn stats_of_members(
        &self,
        clusters: Option<&[String]>,
    ) -> Vec<(NodeId, Option<concord_api::StatsReport>)> {
        let members = self.members();
        let req = match clusters {
            Some(c) => ClientRequest::Stats {
                clusters: c.to_vec(),
            },
            None => ClientRequest::StageStats,
        };
        let asks = members.iter().map(|(id, addr)| {
            let req = &req;
            async move {
                if *id == self.config.node_id {
                    return (*id, self.local_stats.get().map(|f| f(clusters)));
                }
                let timeout = crate::rollouts::ASK_TIMEOUT;
                let report = match self.network.forward(*id, addr, req, timeout).await {
                    Ok(ClientReply::Stats { report }) => report,
                    Ok(_) | Err(_) => None,
                };
                (*id, report)
            }
        });
        futures::future::join_all(asks).await
    }

    /// Sets what this replica reports of its Envoys' stats (once).
    pub fn set_local_stats(&self, f: LocalStatsFn) {
        let _ = self.local_stats.set(f);
    }

    /// The term this node leads in, if it leads.
    fn leading_term(&self) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.state == ServerState::Leader).then_some(m.current_term)
    }

    async fn check_formats(&self) {
        let (leading, members) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let members: Vec<(NodeId, String)> = m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect();
            (m.state == ServerState::Leader, members)
        };
        if !leading {
            self.member_formats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            return;
        }
        let asks = members.iter().map(|(id, addr)| async move {
            let format = if *id == self.config.node_id {
                MemberFormat::Supports(concord_registry::FORMAT)
            } else {
                match self
                    .network
                    .entry_format(*id, addr, crate::format::ASK_TIMEOUT)
                    .await
                {
                    Ok(n) => MemberFormat::Supports(n),
                    Err(e) => MemberFormat::Unknown(e.to_string()),
                }
            };
            (*id, format)
        });
        let heard: BTreeMap<NodeId, MemberFormat> =
            futures::future::join_all(asks).await.into_iter().collect();
        let cluster = self.sm.registry().borrow().format();
        for (id, f) in &heard {
            if let MemberFormat::Supports(n) = f
                && *n < cluster
            {
                tracing::warn!(
                    node = id,
                    supports = n,
                    cluster,
                    "a member runs a build older than the cluster's entry format; it stops \
                     applying at the first newer entry: upgrade it"
                );
            }
        }
        let raise = crate::format::raise_to(&heard, cluster);
        *self
            .member_formats
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = heard;
        if let Some(to) = raise {
            let timeout = self.config.request_timeout;
            match self
                .write_local(concord_registry::Command::raise_format(to), timeout)
                .await
            {
                Ok(_) => tracing::info!(
                    from = cluster,
                    to,
                    "every member supports a newer entry format; raised the cluster's"
                ),
                Err(error) => tracing::debug!(%error, "raising the entry format failed; retrying"),
            }
        }
    }

    /// The entry formats of this replica and the cluster, and on the leader each member's.
    pub fn entry_formats(&self) -> EntryFormats {
        EntryFormats {
            supported: concord_registry::FORMAT,
            cluster: self.sm.registry().borrow().format(),
            members: self
                .member_formats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Refuses to add a node that does not apply the cluster's entry format: it would apply
    /// newer entries only in part. Only once the cluster is above the builders' format, so a
    /// cluster of one version adds nodes as before (also ones not started yet).
    async fn check_joiner_format(&self, id: NodeId, addr: &str) -> Result<(), ClientError> {
        let cluster = self.sm.registry().borrow().format();
        if cluster <= concord_registry::FORMAT_BUILDERS {
            return Ok(());
        }
        match self
            .network
            .entry_format(id, addr, crate::format::ASK_TIMEOUT)
            .await
        {
            Ok(n) if n >= cluster => Ok(()),
            Ok(n) => Err(ClientError::Membership(format!(
                "node {id} at {addr} applies entry formats up to {n}, but the cluster is at \
                 format {cluster}: run this cluster's version on it"
            ))),
            Err(e) => Err(ClientError::Membership(format!(
                "node {id} at {addr} did not say which entry formats it applies ({e}); the \
                 cluster is at format {cluster}, so start the node before adding it"
            ))),
        }
    }

    async fn initialize(&self) -> Result<(), StartError> {
        let members = &self.config.initial_members;
        if !members.contains_key(&self.config.node_id) {
            tracing::info!("not in the initial member set; waiting to be added to a cluster");
            return Ok(());
        }
        let nodes: BTreeMap<NodeId, BasicNode> = members
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        // A restarted node (any log or vote on disk) never re-initialises. On a new node it is
        // safe on every initial member with the same set: the second proposal is refused.
        if self.raft.is_initialized().await.map_err(StartError::Raft)? {
            tracing::debug!("already initialised");
            return Ok(());
        }
        match self.raft.initialize(nodes).await {
            Ok(()) => tracing::info!(members = ?members.keys(), "initialised a new cluster"),
            Err(RaftError::APIError(e)) => {
                tracing::debug!(reason = %e, "already initialised")
            }
            Err(RaftError::Fatal(e)) => return Err(StartError::Raft(e)),
        }
        Ok(())
    }

    /// The cluster name.
    pub fn cluster(&self) -> &str {
        &self.config.cluster
    }

    /// The peer channel's TLS, unless plaintext.
    pub fn tls(&self) -> Option<&PeerTls> {
        self.config.tls.as_deref()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.node_id
    }

    /// The openraft handle.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// When the revisions after `after` up to `upto` were applied on this replica, and when
    /// their changes were first seen by their proposers (recent revisions only).
    pub fn revision_times(&self, after: u64, upto: u64) -> Vec<crate::store::RevisionTimes> {
        self.sm.revision_times(after, upto)
    }

    /// The applied registry; changes after every apply that changed it.
    pub fn registry(&self) -> watch::Receiver<Arc<Registry>> {
        self.sm.registry()
    }

    /// This replica's status, from openraft's metrics and the applied registry.
    pub fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let registry = self.sm.registry().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        Status {
            cluster: self.config.cluster.clone(),
            node_id: m.id,
            role: role(m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            revision: registry.revision(),
            builders: registry.len(),
            members,
            millis_since_quorum_ack: m.millis_since_quorum_ack,
            entry_format: self.entry_formats(),
        }
    }

    /// Executes `req` on the leader: here if this node leads, else forwarded to it. Waits (up to
    /// the request timeout) through elections, leader changes and a lost quorum (nothing is
    /// proposed while the leader lacks one); every request is idempotent
    /// (upserts and removals of whole builders, membership to a target state), so retrying one
    /// whose first attempt may have committed is safe.
    pub async fn execute(&self, mut req: ClientRequest) -> Result<ClientReply, ClientError> {
        // One id for all attempts: a forward that timed out after its entry committed is retried
        // with the same id, and the state machine answers it with the first outcome instead of
        // applying it again after a later write (issue 16).
        if let ClientRequest::Write(cmd) = &mut req
            && cmd.request_id.is_none()
        {
            cmd.request_id = Some(self.new_request_id());
        }
        let start = Instant::now();
        let deadline = start + self.config.request_timeout;
        let mut metrics = self.raft.metrics();
        loop {
            let (leader, addr) = {
                let m = metrics.borrow_and_update();
                let leader = m.current_leader;
                let addr = leader.and_then(|l| {
                    m.membership_config
                        .membership()
                        .get_node(&l)
                        .map(|n| n.addr.clone())
                });
                (leader, addr)
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let forwarded = leader.is_some_and(|l| l != self.config.node_id);
            let result = match (leader, addr) {
                (Some(l), _) if l == self.config.node_id => self.execute_local(req.clone()).await,
                // One attempt may take half the budget: a leader that is removed or dies with
                // the request in flight never answers, and the rest is for the next leader.
                (Some(l), Some(addr)) => {
                    let attempt = remaining.min(self.config.request_timeout / 2);
                    self.network.forward(l, &addr, &req, attempt).await
                }
                _ => Err(ClientError::NoLeader { waited_ms: 0 }),
            };
            match result {
                // A leader that is shutting down answers a forwarded request "unavailable": the
                // request (with its id) goes to the next leader, as a rolling restart needs.
                Err(ClientError::Unavailable(_)) if forwarded && Instant::now() < deadline => {
                    let pause = remaining.min(Duration::from_millis(50));
                    let _ = tokio::time::timeout(pause, metrics.changed()).await;
                }
                Err(
                    ClientError::NotLeader { .. }
                    | ClientError::NoLeader { .. }
                    | ClientError::NoQuorum { .. }
                    | ClientError::LeaderUnreachable { .. },
                ) if Instant::now() < deadline => {
                    // Wait for news of a leader, but re-check soon: a dead leader is only
                    // replaced after an election timeout, and a leader whose followers just came
                    // back hears from them within a heartbeat or a replication backoff.
                    let pause = remaining.min(Duration::from_millis(50));
                    let _ = tokio::time::timeout(pause, metrics.changed()).await;
                }
                Err(ClientError::NoLeader { .. }) => {
                    return Err(ClientError::NoLeader {
                        waited_ms: start.elapsed().as_millis() as u64,
                    });
                }
                other => return other,
            }
        }
    }

    /// An id no other request of this cluster has: this node's id, its start and a counter.
    fn new_request_id(&self) -> String {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        static BOOT: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
        let boot = BOOT.get_or_init(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        });
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{boot:x}-{n}", self.config.node_id)
    }

    async fn write_local(
        &self,
        cmd: concord_registry::Command,
        timeout: Duration,
    ) -> Result<ClientReply, ClientError> {
        self.check_quorum()?;
        let resp = tokio::time::timeout(timeout, self.raft.client_write(cmd))
            .await
            .map_err(|_| ClientError::Timeout {
                waited_ms: timeout.as_millis() as u64,
            })?
            .map_err(|e| self.write_error(e))?;
        match resp.data {
            Outcome::Rejected(r) => Err(ClientError::Rejected(r)),
            outcome => Ok(ClientReply::Written {
                log_index: resp.log_id.index,
                outcome,
            }),
        }
    }

    /// Sets what this replica reports of itself to [`Node::local_status_of`] (once).
    pub fn set_local_status(&self, f: LocalStatusFn) {
        let _ = self.local_status.set(f);
    }

    fn local_status(&self) -> Option<concord_api::LocalEnvoys> {
        self.local_status.get().map(|f| f())
    }

    /// What replica `id` (a member, or this one) reports of itself, asked over the peer
    /// channel; an error names the replica and why it did not answer.
    pub async fn local_status_of(
        &self,
        id: NodeId,
        timeout: Duration,
    ) -> Result<concord_api::LocalEnvoys, NoStatus> {
        if id == self.config.node_id {
            return self.local_status().ok_or(NoStatus::Starting(id));
        }
        let addr = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
            .ok_or(NoStatus::NotMember(id))?;
        match self
            .network
            .forward(id, &addr, &ClientRequest::LocalStatus, timeout)
            .await
        {
            Ok(ClientReply::LocalStatus { status }) => status.ok_or(NoStatus::Starting(id)),
            Ok(other) => Err(NoStatus::Unexpected {
                id,
                answer: format!("{other:?}"),
            }),
            Err(ClientError::LeaderUnreachable { error, .. }) => {
                Err(NoStatus::Unreachable { id, addr, error })
            }
            Err(e) => Err(NoStatus::Failed { id, error: e }),
        }
    }

    /// Executes `req` if this node is the leader; otherwise answers `NotLeader`.
    pub async fn execute_local(&self, req: ClientRequest) -> Result<ClientReply, ClientError> {
        let timeout = self.config.request_timeout;
        let timed_out = || ClientError::Timeout {
            waited_ms: timeout.as_millis() as u64,
        };
        match req {
            ClientRequest::Write(mut cmd) => {
                // The commit is a span of the change's trace; the applies continue below it.
                let mut span = Span::remote_child(&cmd.trace, "raft.commit");
                span.inject(&mut cmd.trace);
                let result = self.write_local(cmd, timeout).await;
                match &result {
                    Ok(ClientReply::Written { log_index, outcome }) => {
                        span.set("raft.log_index", *log_index as i64);
                        if let Outcome::Applied { revision, .. } = outcome {
                            span.set("registry.revision", *revision as i64);
                        }
                        span.ok();
                    }
                    Ok(_) => {}
                    Err(e) => span.fail(e.to_string()),
                }
                result
            }
            ClientRequest::AddLearner { node_id, addr } => {
                self.check_quorum()?;
                self.check_joiner_format(node_id, &addr).await?;
                let fut = self.raft.add_learner(node_id, BasicNode::new(addr), false);
                let resp = tokio::time::timeout(timeout, fut)
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|e| self.write_error(e))?;
                Ok(ClientReply::Membership {
                    log_index: resp.log_id.index,
                })
            }
            ClientRequest::Promote { node_id } => {
                self.change_membership(ChangeMembers::AddVoterIds([node_id].into()), |m| {
                    m.voter_ids().any(|v| v == node_id)
                })
                .await
            }
            ClientRequest::Remove { node_id } => {
                let is_voter = self
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == node_id);
                let change = if is_voter {
                    ChangeMembers::RemoveVoters([node_id].into())
                } else {
                    ChangeMembers::RemoveNodes([node_id].into())
                };
                self.change_membership(change, |m| m.get_node(&node_id).is_none())
                    .await
            }
            ClientRequest::LocalStatus => Ok(ClientReply::LocalStatus {
                status: self.local_status(),
            }),
            ClientRequest::EntryFormat => Ok(ClientReply::EntryFormat {
                supported: concord_registry::FORMAT,
            }),
            ClientRequest::Stats { clusters } => Ok(ClientReply::Stats {
                report: self.local_stats.get().map(|f| f(Some(&clusters))),
            }),
            ClientRequest::StageStats => Ok(ClientReply::Stats {
                report: self.local_stats.get().map(|f| f(None)),
            }),
            ClientRequest::RolloutProgress => {
                if self.leading_term().is_none() {
                    return Err(ClientError::NotLeader {
                        node: self.config.node_id,
                        leader: self.raft.metrics().borrow().current_leader,
                    });
                }
                let registry = self.sm.registry().borrow().clone();
                let running: Vec<&concord_registry::services::Rollout> =
                    registry.rollouts().values().collect();
                Ok(ClientReply::RolloutProgress {
                    progress: self.judge.progress(&running, Instant::now()),
                })
            }
            ClientRequest::Renew { service, id } => {
                let Some(term) = self.leading_term() else {
                    return Err(ClientError::NotLeader {
                        node: self.config.node_id,
                        leader: self.raft.metrics().borrow().current_leader,
                    });
                };
                // As for writes: a leader that has not heard from a quorum lately may be deposed
                // and must not acknowledge a renewal its successor does not know of.
                self.check_quorum()?;
                let now = Instant::now();
                // A registration applied a moment ago is granted before it is renewed.
                let registry = self.sm.registry().borrow().clone();
                self.leases
                    .sync(term, &registry, now, self.config.quorum_timeout);
                use crate::leases::RenewError;
                match self.leases.renew(&service, &id, now) {
                    Ok(ttl) => Ok(ClientReply::Renewed {
                        ttl_ms: ttl.as_millis() as u64,
                    }),
                    Err(RenewError::NotLeading) => Err(ClientError::NotLeader {
                        node: self.config.node_id,
                        leader: None,
                    }),
                    Err(RenewError::Unknown) => Err(ClientError::NotFound(format!(
                        "no endpoint {id:?} of service {service:?} is registered (its lease may \
                         have lapsed): register it again"
                    ))),
                    Err(RenewError::NoLease) => Err(ClientError::NotFound(format!(
                        "endpoint {id:?} of service {service:?} has no lease to renew"
                    ))),
                }
            }
            ClientRequest::ReadIndex => {
                let res = tokio::time::timeout(timeout, self.raft.ensure_linearizable())
                    .await
                    .map_err(|_| timed_out())?;
                match res {
                    // openraft's read index is max(committed, the first entry of this leader's
                    // term). A leader that restarts with its vote committed is restored at once,
                    // in the same term, with no new first entry, and the committed index it
                    // stored is not flushed: entries it had committed before a power loss can
                    // sit above both, and a read at that index misses them (an Envoy served
                    // the revision before one it had; crash-disk, issue 16). Everything in its
                    // log now may have been committed: the read waits for all of it.
                    Ok(log_id) => Ok(ClientReply::ReadIndex {
                        index: log_id
                            .map_or(0, |l| l.index)
                            .max(self.raft.metrics().borrow().last_log_index.unwrap_or(0)),
                    }),
                    Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                        Err(ClientError::NotLeader {
                            node: self.config.node_id,
                            leader: f.leader_id,
                        })
                    }
                    Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                        Err(ClientError::NoQuorum {
                            leader: self.config.node_id,
                            since_ms: self.quorum_age().unwrap_or(0),
                        })
                    }
                    Err(RaftError::Fatal(f)) => Err(ClientError::Unavailable(f.to_string())),
                }
            }
        }
    }

    /// Changes the membership and returns once the cluster's configuration is uniform (not
    /// joint) and `done` holds for it. openraft commits a change in two steps and another change,
    /// or a leader change, can interleave; so the result is checked and the (idempotent) change
    /// retried until it holds or the request times out.
    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, BasicNode>,
        done: impl Fn(&openraft::Membership<NodeId, BasicNode>) -> bool,
    ) -> Result<ClientReply, ClientError> {
        self.check_quorum()?;
        let timeout = self.config.request_timeout;
        let timed_out = || ClientError::Timeout {
            waited_ms: timeout.as_millis() as u64,
        };
        let deadline = Instant::now() + timeout;
        let mut metrics = self.raft.metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                let membership = m.membership_config.membership();
                if membership.get_joint_config().len() == 1 && done(membership) {
                    return Ok(ClientReply::Membership {
                        log_index: m.membership_config.log_id().map_or(0, |l| l.index),
                    });
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(timed_out());
            }
            let res = tokio::time::timeout(
                remaining,
                self.raft.change_membership(change.clone(), false),
            )
            .await
            .map_err(|_| timed_out())?;
            match res {
                Ok(_) => {}
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    openraft::error::ChangeMembershipError::InProgress(_),
                ))) => {}
                Err(e) => return Err(self.write_error(e)),
            }
            // Let the applied configuration catch up before looking again.
            let pause = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            let _ = tokio::time::timeout(pause, metrics.changed()).await;
        }
    }

    fn write_error(
        &self,
        e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
    ) -> ClientError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ClientError::NotLeader {
                node: self.config.node_id,
                leader: f.leader_id,
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                ClientError::Membership(e.to_string())
            }
            RaftError::Fatal(f) => ClientError::Unavailable(f.to_string()),
        }
    }

    fn quorum_age(&self) -> Option<u64> {
        self.raft.metrics().borrow().millis_since_quorum_ack
    }

    /// A leader cut off from the majority would accept a write that can never commit; refuse it
    /// up front instead, with nothing proposed.
    fn check_quorum(&self) -> Result<(), ClientError> {
        // Two fields, read under the borrow: every write and every lease renewal asks, and a
        // clone of the metrics copies the membership.
        let (state, leader, age) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state, m.current_leader, m.millis_since_quorum_ack)
        };
        if state != ServerState::Leader {
            return Err(ClientError::NotLeader {
                node: self.config.node_id,
                leader,
            });
        }
        let limit = self.config.quorum_timeout.as_millis() as u64;
        match age {
            Some(age) if age > limit => Err(ClientError::NoQuorum {
                leader: self.config.node_id,
                since_ms: age,
            }),
            _ => Ok(()),
        }
    }

    /// Waits until a read on this replica is linearizable: the leader confirms it still leads
    /// and this replica has applied everything committed before the read began.
    pub async fn read_barrier(&self) -> Result<(), ClientError> {
        let ClientReply::ReadIndex { index } = self.execute(ClientRequest::ReadIndex).await? else {
            return Err(ClientError::Unavailable(
                "unexpected reply to a read".into(),
            ));
        };
        self.raft
            .wait(Some(self.config.request_timeout))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|_| ClientError::Timeout {
                waited_ms: self.config.request_timeout.as_millis() as u64,
            })
    }

    /// Fault injection (chaos tests): cut this replica off from every peer, or reconnect it.
    /// Outgoing RPCs fail as unreachable and incoming ones are refused, as in a partition; its
    /// Envoys stay connected until it judges itself stale (`--stale-after-ms`).
    pub fn isolate(&self, on: bool) {
        self.isolated
            .store(on, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            isolated = on,
            "fault injection: peer network {}",
            if on { "cut" } else { "restored" }
        );
    }

    /// Whether [`Node::isolate`] is on.
    pub fn is_isolated(&self) -> bool {
        self.isolated.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fault injection (tests, chaos): cut this replica off from `peers` (both ways), and only
    /// from them; an empty set heals. Each side of a partition is cut on its own members.
    pub fn cut_off(&self, peers: BTreeSet<NodeId>) {
        tracing::warn!(?peers, "fault injection: cut off from peers");
        *self.cut.lock().unwrap_or_else(|e| e.into_inner()) = peers;
    }

    /// Fault injection (tests): the next `count` writes forwarded to this replica are executed
    /// as ever, and each answered only after `hold` more, as if the answer were lost on the
    /// way: the forwarding replica's attempt times out after its entry committed, and it
    /// retries (with the same request id).
    pub fn hold_forward_replies(&self, count: u32, hold: Duration) {
        tracing::warn!(
            count,
            hold_ms = hold.as_millis() as u64,
            "fault injection: forwarded writes answered late"
        );
        *self.held_replies.lock().unwrap_or_else(|e| e.into_inner()) = (count, hold);
    }

    /// How long to hold the answer to a forwarded write now, if [`Node::hold_forward_replies`]
    /// asks for it (and counts it).
    pub(crate) fn take_held_reply(&self) -> Option<Duration> {
        let mut held = self.held_replies.lock().unwrap_or_else(|e| e.into_inner());
        (held.0 > 0).then(|| {
            held.0 -= 1;
            held.1
        })
    }

    /// Whether [`Node::cut_off`] cuts this replica off from the peer whose id is `from`.
    pub(crate) fn is_cut_off_from(&self, from: &str) -> bool {
        from.parse::<NodeId>().is_ok_and(|id| {
            self.cut
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&id)
        })
    }

    /// Whether this replica may serve Envoys now (DESIGN rule 6): caught up since it started,
    /// and a leader (itself or the one it follows) had a quorum within `stale_after`. Fault
    /// injection ([`Node::isolate`]) cuts only the peers: a cut-off replica turns its Envoys
    /// away through this judgement, as in a real partition.
    pub fn freshness(&self, stale_after: Duration) -> Freshness {
        let now = Instant::now();
        let leading = leading_quorum_age(&self.raft.metrics().borrow());
        self.contact.observe_leading(leading, now);
        judge(&self.contact.contact(leading), now, stale_after)
    }

    /// Publishes [`Node::freshness`], checked every 100 ms until `tasks` is cancelled; the ADS
    /// server ends its streams and reports NOT_SERVING while it is false.
    pub fn watch_freshness(
        self: &Arc<Self>,
        stale_after: Duration,
        tasks: &Tasks,
    ) -> watch::Receiver<bool> {
        let shutdown = tasks.token().clone();
        // Stale from the start: nothing is served before the replica has caught up.
        let (tx, rx) = watch::channel(self.freshness(stale_after).fresh);
        let node = self.clone();
        tasks.spawn("raft freshness", async move {
            const TICK: Duration = Duration::from_millis(100);
            let mut next = TICK;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(next) => {}
                }
                let f = node.freshness(stale_after);
                // Checked every tick, and again the moment a fresh replica would go stale if
                // nothing is heard meanwhile: it turns Envoys away within a millisecond of
                // `stale_after`, not up to a tick later.
                next = match f.fresh {
                    true => TICK.min(
                        stale_after.saturating_sub(f.out_of_contact) + Duration::from_millis(1),
                    ),
                    false => TICK,
                };
                if *tx.borrow() != f.fresh {
                    if f.fresh {
                        tracing::info!("back in contact with the quorum; serving Envoys again");
                    } else {
                        tracing::warn!(
                            out_of_contact_ms = f.out_of_contact.as_millis() as u64,
                            reason = f.reason.unwrap_or_default(),
                            "out of contact with the quorum; turning Envoys away (NOT_SERVING)"
                        );
                    }
                    tx.send_replace(f.fresh);
                }
            }
        });
        rx
    }

    /// Records that a leader's append-entries (or heartbeat) was accepted just now; the leader
    /// said its quorum acknowledged it `leader_quorum_age` ago (`None`: not yet).
    pub(crate) fn touch_leader_contact(&self, leader_quorum_age: Option<Duration>) {
        self.contact
            .heard_from_leader(leader_quorum_age, Instant::now());
    }

    /// How long this replica has been out of contact with a quorum: since a leader (this node,
    /// or the one it follows) last had a quorum's acknowledgement; since start if it never heard
    /// of one. A replica out of contact for long may be serving stale state (DESIGN rule 6).
    pub fn out_of_contact(&self) -> Duration {
        self.freshness(Duration::MAX).out_of_contact
    }

    /// Stops Raft, then flushes the store: the state machine is not flushed on apply, so what
    /// this replica applied is on disk when it stops. (The peer server stops with its token.)
    pub async fn shutdown(&self) {
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft did not stop cleanly");
        }
        if let Err(error) = self.sm.flush().await {
            tracing::warn!(%error, "flushing the store on shutdown failed");
        }
    }
}

/// Why [`Node::local_status_of`] has no answer from a replica.
#[derive(Debug, thiserror::Error)]
pub enum NoStatus {
    /// It runs but has not set its status yet.
    #[error("node {0} is starting: it reports no status yet")]
    Starting(NodeId),
    /// It is not in the membership.
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    /// The peer channel to it failed.
    #[error("node {id} at {addr} is unreachable: {error}")]
    Unreachable {
        /// The replica.
        id: NodeId,
        /// Its peer address.
        addr: String,
        /// What the channel said.
        error: String,
    },
    /// It answered something else.
    #[error("node {id} answered {answer}")]
    Unexpected {
        /// The replica.
        id: NodeId,
        /// What it answered.
        answer: String,
    },
    /// The request failed otherwise.
    #[error("node {id}: {error}")]
    Failed {
        /// The replica.
        id: NodeId,
        /// The error.
        error: ClientError,
    },
}
