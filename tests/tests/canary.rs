//! Control-plane canaries (issue 15): a replica restarted with `--serve-envoys cluster=canary`
//! (as one running a new concord version would be) serves only the Envoys of that group. Two
//! real Envoys prefer it: the canary one streams from it; the other is sent on at its first
//! request (UNAVAILABLE, before any response) and streams from another replica at once, with the
//! same config, and never from the canary replica. Restarted without the flag (the group
//! widened to everyone), the replica serves every Envoy again.

use anyhow::{Context, Result, ensure};
use concord_harness::envoy::{Envoy, EnvoyOptions};
use concord_harness::{Cluster, Options, eventually, free_port};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// An Envoy of node cluster `group` that prefers replica `first` of `c`.
async fn envoy(c: &Cluster, name: &str, group: &str, first: u64) -> Result<Envoy> {
    let mut ids = c.up();
    ids.retain(|i| *i != first);
    ids.insert(0, first);
    let x: Vec<String> = ids.iter().map(|i| c.nodes[i].xds.clone()).collect();
    let servers: Vec<&str> = x.iter().map(String::as_str).collect();
    let mut bootstrap = c.bootstrap_args(name)?;
    bootstrap.extend(["--node-cluster".to_string(), group.to_string()]);
    let opts = EnvoyOptions {
        prefer_first: true,
        bootstrap,
        ..EnvoyOptions::default()
    };
    Envoy::launch(c.dir(), name, &servers, &opts).await
}

/// The replicas `envoy` streams from now.
async fn streams_from(c: &Cluster, envoy: &str) -> Result<Vec<u64>> {
    let mut on = Vec::new();
    for id in c.up() {
        if c.envoys_on(id).await?.iter().any(|e| e == envoy) {
            on.push(id);
        }
    }
    Ok(on)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_limited_to_a_group_sends_every_other_envoy_on_at_once() -> Result<()> {
    let mut c = Cluster::start(Options::default()).await?;
    let leader = c.leader().await?;
    let revision = c.put(leader, "b1", free_port()).await?;
    // Node 1 becomes the canary replica.
    let canary = 1;
    c.node(canary).kill();
    c.node(canary)
        .args_mut()
        .extend(["--serve-envoys".to_string(), "cluster=canary".to_string()]);
    c.node(canary).start()?;
    c.serving(canary).await?;
    let started = Instant::now();
    let a = envoy(&c, "envoy-canary", "canary", canary).await?;
    let b = envoy(&c, "envoy-main", "main", canary).await?;
    // Both hold the revision, each from where its group is served.
    for e in [&a, &b] {
        eventually(T, "the Envoy holds the revision", || async {
            let v = e.versions().await?;
            ensure!(v.clusters >= Some(revision), "{v:?}");
            Ok(())
        })
        .await
        .map_err(|err| err.context(e.log_tail()))?;
    }
    let b_synced = started.elapsed();
    ensure!(
        streams_from(&c, "envoy-canary").await? == [canary],
        "the canary Envoy streams elsewhere"
    );
    let on = streams_from(&c, "envoy-main").await?;
    ensure!(
        on.len() == 1 && on[0] != canary,
        "envoy-main streams from {on:?}"
    );
    eprintln!(
        "envoy-main streams from node {} and holds revision {revision} {b_synced:?} after start",
        on[0]
    );
    // It was sent on at its first request and never came back: the canary replica logged it,
    // and lists only the canary Envoy.
    let log = std::fs::read_to_string(c.nodes[&canary].log())?;
    ensure!(
        log.contains("sent on an Envoy outside the groups this replica serves"),
        "no refusal logged"
    );
    ensure!(c.envoys_on(canary).await? == ["envoy-canary"]);
    // Envoy-main never took config from the canary replica: every update it accepted came
    // from the one it streams from (no rejected update, and its stream was not reset by us).
    let rejected = b.stat("cluster_manager.cds.update_rejected").await?;
    ensure!(rejected.trim() == "0", "{rejected}");
    // Widened to every Envoy: restarted without the flag, it serves envoy-main again when
    // envoy-main reconnects (its preferred replica answers first).
    c.node(canary).kill();
    let n = c.node(canary).args_mut().len();
    c.node(canary).args_mut().truncate(n - 2);
    c.node(canary).start()?;
    c.serving(canary).await?;
    let next = c.put(leader_now(&c).await?, "b2", free_port()).await?;
    eventually(T, "both Envoys hold the next revision", || async {
        for e in [&a, &b] {
            let v = e.versions().await?;
            ensure!(v.clusters >= Some(next), "{v:?}");
        }
        Ok(())
    })
    .await?;
    Ok(())
}

async fn leader_now(c: &Cluster) -> Result<u64> {
    c.leader().await.context("a leader")
}
