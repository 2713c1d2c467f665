//! In-process clusters of real nodes (openraft over the gRPC peer channel on loopback, sled in
//! temp dirs) checking when a replica counts as in contact with a quorum (DESIGN rule 6): a leader
//! that steps down, a follower of a leader cut off with a minority, a restarted replica.

use concord_raft::{ClientReply, ClientRequest, Node, NodeConfig, NodeId};
use concord_registry::{Batch, Builder, Command, Source};
use concord_telemetry::tasks::Tasks;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Bound of a replica's silence before it steps aside, as `--stale-after-ms` sets it.
const STALE_AFTER: Duration = Duration::from_millis(1500);

struct Running {
    node: Arc<Node>,
    shutdown: Tasks,
    server: tokio::task::JoinHandle<()>,
}

struct Cluster {
    /// Every node's peer address; the first `voters` form the initial member set.
    members: BTreeMap<NodeId, String>,
    voters: u64,
    dirs: BTreeMap<NodeId, TempDir>,
    nodes: BTreeMap<NodeId, Running>,
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().to_string()
}

impl Cluster {
    /// `n` voters, none started.
    fn new(n: u64) -> Cluster {
        Cluster {
            members: (1..=n).map(|id| (id, free_addr())).collect(),
            voters: n,
            dirs: (1..=n).map(|id| (id, TempDir::new().unwrap())).collect(),
            nodes: BTreeMap::new(),
        }
    }

    /// `n` voters, all started, with a leader elected.
    async fn start(n: u64) -> Cluster {
        let mut c = Cluster::new(n);
        for id in 1..=n {
            c.start_node(id).await;
        }
        c.wait_leader(|_| true).await;
        c
    }

    async fn start_node(&mut self, id: NodeId) -> Arc<Node> {
        let config = NodeConfig {
            cluster: "test".into(),
            node_id: id,
            data_dir: self.dirs[&id].path().to_path_buf(),
            listen_addr: self.members[&id].parse().unwrap(),
            initial_members: self
                .members
                .iter()
                .filter(|(id, _)| **id <= self.voters)
                .map(|(id, addr)| (*id, addr.clone()))
                .collect(),
            // Generous timeouts: five helpers share two cores, and a spurious election would
            // only slow these tests down, not fail them.
            heartbeat: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
            snapshot_threshold: 1000,
            request_timeout: Duration::from_secs(5),
            quorum_timeout: Duration::from_secs(1),
            tls: None,
        };
        let shutdown = Tasks::new();
        let (node, server) = Node::start(config, shutdown.clone())
            .await
            .expect("node starts");
        self.nodes.insert(
            id,
            Running {
                node: node.clone(),
                shutdown,
                server,
            },
        );
        node
    }

    /// Starts node `id` outside the initial member set and adds it as a learner.
    async fn add_learner(&mut self, id: NodeId) -> Arc<Node> {
        let addr = free_addr();
        self.members.insert(id, addr.clone());
        self.dirs.insert(id, TempDir::new().unwrap());
        let voters: Vec<NodeId> = (1..=self.voters).collect();
        let leader = self.wait_leader_among(&voters, |_| true).await;
        let node = self.start_node(id).await;
        let req = ClientRequest::AddLearner { node_id: id, addr };
        match self.node(leader).execute(req).await {
            Ok(ClientReply::Membership { .. }) => node,
            other => panic!("add learner {id}: {other:?}"),
        }
    }

    async fn stop_node(&mut self, id: NodeId) {
        let r = self.nodes.remove(&id).expect("running");
        r.node.shutdown().await;
        r.shutdown.cancel();
        r.server.await.unwrap();
    }

    fn node(&self, id: NodeId) -> &Arc<Node> {
        &self.nodes[&id].node
    }

    fn leader_of(&self, id: NodeId) -> Option<NodeId> {
        let m = self.node(id).raft().metrics().borrow().clone();
        m.current_leader
    }

    /// Waits until one running node leads (as every running node in `among` agrees) and
    /// `accept` takes it.
    async fn wait_leader(&self, accept: impl Fn(NodeId) -> bool) -> NodeId {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        self.wait_leader_among(&ids, accept).await
    }

    async fn wait_leader_among(&self, among: &[NodeId], accept: impl Fn(NodeId) -> bool) -> NodeId {
        let mut found = None;
        eventually("a leader all agree on", Duration::from_secs(20), || {
            let l = self.leader_of(among[0]);
            found = l.filter(|l| {
                accept(*l)
                    && among.contains(l)
                    && self.node(*l).status().role == "leader"
                    && among.iter().all(|id| self.leader_of(*id) == Some(*l))
            });
            found.is_some()
        })
        .await;
        found.unwrap()
    }

    async fn write(&self, via: NodeId, id: &str) -> u64 {
        let b = Builder {
            id: id.into(),
            addr: "127.0.0.1:9000".parse().unwrap(),
            sni: format!("{id}.example.com"),
            region: String::new(),
            labels: Default::default(),
            source: Source::Api,
        };
        let cmd = Command::new(
            Source::Api,
            Batch {
                upserts: vec![b],
                removes: vec![],
            },
        );
        match self.node(via).execute(ClientRequest::Write(cmd)).await {
            Ok(ClientReply::Written { log_index, .. }) => log_index,
            other => panic!("write {id} via {via}: {other:?}"),
        }
    }

    /// Cuts the running nodes into two sides that cannot reach each other.
    fn partition(&self, side: &BTreeSet<NodeId>) {
        let all: BTreeSet<NodeId> = self.members.keys().copied().collect();
        let other: BTreeSet<NodeId> = all.difference(side).copied().collect();
        for (id, r) in &self.nodes {
            let cut = if side.contains(id) {
                other.clone()
            } else {
                side.clone()
            };
            r.node.cut_off(cut);
        }
    }

    fn heal(&self) {
        for r in self.nodes.values() {
            r.node.cut_off(BTreeSet::new());
        }
    }

    async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop_node(id).await;
        }
    }
}

/// Waits (polling every 20 ms) until `cond` holds, or panics naming `what` after `within`.
async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fresh(node: &Node) -> bool {
    node.freshness(STALE_AFTER).fresh
}

/// Issue 16, item 2: a leader that steps down after a long tenure was in contact with a quorum
/// until the moment it stepped down, so it keeps serving its Envoys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_steps_down_stays_fresh() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(|_| true).await;
    eventually("all fresh", Duration::from_secs(20), || {
        c.nodes.values().all(|r| fresh(&r.node))
    })
    .await;
    // A tenure longer than the staleness bound (a fixed precondition, not a wait for an event).
    tokio::time::sleep(STALE_AFTER + Duration::from_millis(500)).await;
    assert_eq!(
        c.wait_leader(|_| true).await,
        leader,
        "the leader changed meanwhile"
    );

    // A follower campaigns in a higher term; the leader steps down as soon as it hears of it.
    let term = c.node(leader).status().term;
    let follower = *c.members.keys().find(|id| **id != leader).unwrap();
    c.node(follower).raft().trigger().elect().await.unwrap();
    let mut metrics = c.node(leader).raft().metrics();
    tokio::time::timeout(
        Duration::from_secs(10),
        metrics.wait_for(|m| m.current_term > term),
    )
    .await
    .expect("the leader hears of the higher term")
    .unwrap();
    let f = c.node(leader).freshness(STALE_AFTER);
    assert!(
        f.fresh,
        "node {leader} stepped down after a {}+ ms tenure and reports itself stale: {f:?}",
        STALE_AFTER.as_millis() + 500
    );
    // And it stays fresh through the election that follows.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let f = c.node(leader).freshness(STALE_AFTER);
        assert!(
            f.fresh,
            "node {leader} went stale after stepping down: {f:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.shutdown().await;
}

/// Issue 16, item 3: with 5 voters partitioned {leader, one follower} | {three}, the leader keeps
/// heartbeating its follower, but neither has a quorum: the follower must step aside too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_a_minority_leader_goes_stale() {
    let c = Cluster::start(5).await;
    let leader = c.wait_leader(|_| true).await;
    c.write(leader, "b1").await;
    eventually("all fresh", Duration::from_secs(20), || {
        c.nodes.values().all(|r| fresh(&r.node))
    })
    .await;
    let follower = *c.members.keys().find(|id| **id != leader).unwrap();
    let minority: BTreeSet<NodeId> = [leader, follower].into();
    let majority: Vec<NodeId> = c
        .members
        .keys()
        .copied()
        .filter(|id| !minority.contains(id))
        .collect();
    c.partition(&minority);
    let cut_at = Instant::now();

    // The majority elects a leader of its own and stays (or comes back) fresh.
    let new_leader = c.wait_leader_among(&majority, |_| true).await;
    c.write(new_leader, "b2").await;
    eventually("the majority fresh", Duration::from_secs(20), || {
        majority.iter().all(|id| fresh(c.node(*id)))
    })
    .await;
    // The minority leader still heartbeats its follower...
    assert_eq!(c.leader_of(follower), Some(leader));
    // ...and both step aside within the bound (and a margin for the checks).
    let bound =
        (cut_at + STALE_AFTER + Duration::from_secs(2)).saturating_duration_since(Instant::now());
    eventually(
        "the minority follower to report itself stale within the bound",
        bound,
        || !fresh(c.node(follower)),
    )
    .await;
    assert!(!fresh(c.node(leader)));
    let took = cut_at.elapsed();
    assert!(
        c.node(follower).freshness(STALE_AFTER).out_of_contact >= STALE_AFTER,
        "stale after {took:?}"
    );

    // Healed, the follower hears from the majority's leader and serves again.
    c.heal();
    eventually(
        "the old minority fresh again",
        Duration::from_secs(20),
        || fresh(c.node(follower)) && fresh(c.node(leader)),
    )
    .await;
    c.shutdown().await;
}

/// Issue 16, item 6: a replica that starts with no peer reachable has heard from no quorum; it
/// does not count as in contact at boot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_alone_is_stale_from_boot() {
    let mut c = Cluster::new(3);
    let node = c.start_node(1).await;
    let f = node.freshness(STALE_AFTER);
    assert!(
        !f.fresh,
        "node 1 started with no peer reachable and reports itself fresh: {f:?}"
    );
    let deadline = Instant::now() + STALE_AFTER + Duration::from_millis(500);
    while Instant::now() < deadline {
        assert!(!fresh(&node), "node 1 alone counted as in contact");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.shutdown().await;
}

/// Issue 16, item 6: a restarted replica serves nothing older than the cluster committed before
/// it came back: stale while it cannot reach a leader with a quorum, and, once it can, fresh only
/// with everything committed before applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_is_stale_until_it_caught_up() {
    let mut c = Cluster::start(3).await;
    let leader = c.wait_leader(|_| true).await;
    c.write(leader, "b1").await;
    let victim = *c.members.keys().find(|id| **id != leader).unwrap();
    eventually("the victim fresh", Duration::from_secs(20), || {
        fresh(c.node(victim))
    })
    .await;
    // What it served before it stopped.
    let served = c.node(leader).registry().borrow().revision();
    eventually("the victim applied b1", Duration::from_secs(20), || {
        c.node(victim).registry().borrow().revision() >= served
    })
    .await;
    c.stop_node(victim).await;
    let mut committed = 0;
    for i in 2..=5 {
        committed = c.write(leader, &format!("b{i}")).await;
    }
    let revision = c.node(leader).registry().borrow().revision();
    // It comes back cut off from both peers: it can learn nothing newer.
    let peers: BTreeSet<NodeId> = c
        .members
        .keys()
        .copied()
        .filter(|id| *id != victim)
        .collect();
    for id in &peers {
        c.node(*id).cut_off([victim].into());
    }
    let node = c.start_node(victim).await;
    node.cut_off(peers.clone());
    let behind = node.registry().borrow().revision();
    assert!(
        behind < revision,
        "the victim missed revisions {behind}..{revision}"
    );
    let deadline = Instant::now() + STALE_AFTER + Duration::from_millis(500);
    while Instant::now() < deadline {
        let f = node.freshness(STALE_AFTER);
        let serving = node.registry().borrow().revision();
        assert!(
            !f.fresh,
            "restarted node {victim} reports itself fresh at revision {serving} while the \
             cluster is at {revision}: {f:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    c.heal();
    node.cut_off(BTreeSet::new());
    eventually("the restarted node fresh", Duration::from_secs(20), || {
        let f = fresh(&node);
        let serving = node.registry().borrow().revision();
        assert!(
            !f || serving >= revision,
            "fresh at revision {serving} < {revision} committed before"
        );
        f
    })
    .await;
    assert!(node.status().applied_index >= Some(committed));
    c.shutdown().await;
}

/// Issue 16, item 3, with a learner: 3 voters and 1 learner partitioned {leader, learner} |
/// {two voters}: the learner hears only from a leader without a quorum and steps aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_of_a_minority_leader_goes_stale() {
    let mut c = Cluster::start(3).await;
    let learner = c.add_learner(4).await;
    let leader = c.wait_leader(|_| true).await;
    c.write(leader, "b1").await;
    eventually("all fresh", Duration::from_secs(20), || {
        c.nodes.values().all(|r| fresh(&r.node))
    })
    .await;
    assert_eq!(learner.status().role, "learner");
    let minority: BTreeSet<NodeId> = [leader, 4].into();
    c.partition(&minority);
    let cut_at = Instant::now();
    let majority: Vec<NodeId> = (1..=3).filter(|id| *id != leader).collect();
    c.wait_leader_among(&majority, |_| true).await;
    assert_eq!(c.leader_of(4), Some(leader));
    let bound =
        (cut_at + STALE_AFTER + Duration::from_secs(2)).saturating_duration_since(Instant::now());
    eventually(
        "the learner to report itself stale within the bound",
        bound,
        || !fresh(&learner),
    )
    .await;
    c.heal();
    eventually("the learner fresh again", Duration::from_secs(20), || {
        fresh(&learner)
    })
    .await;
    c.shutdown().await;
}
