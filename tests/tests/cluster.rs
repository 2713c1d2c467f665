//! The replicated registry with real `concord serve` processes: election, forwarding, leader
//! loss, catch-up by log and by snapshot, crash durability, membership changes.

use anyhow::{Result, bail, ensure};
use concord_api::PutBuilder;
use concord_harness::{Cluster, Options, eventually, sni};
use std::collections::BTreeSet;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn followers(c: &Cluster, leader: u64) -> Vec<u64> {
    c.nodes.keys().copied().filter(|&id| id != leader).collect()
}

/// Waits until node `id` has applied a registry holding exactly `want`.
async fn has_exactly(c: &Cluster, id: u64, want: &BTreeSet<String>) -> Result<u64> {
    eventually(T, &format!("node {id} has every builder"), || async {
        let (rev, ids) = c.builders(id, false).await?;
        let got: BTreeSet<String> = ids.into_iter().collect();
        ensure!(
            got == *want,
            "node {id}: {} builders, want {}",
            got.len(),
            want.len()
        );
        Ok(rev)
    })
    .await
}

#[tokio::test]
async fn elects_one_leader_and_replicates_a_follower_write() -> Result<()> {
    let c = Cluster::start(Options::default()).await?;
    let leader = c.leader().await?;
    let follower = followers(&c, leader)[0];
    let rev = c.put(follower, "b1", 9001).await?;
    ensure!(rev > 0, "revision {rev}");
    // A linearizable read on the other follower sees it at once.
    let other = followers(&c, leader)[1];
    let (crev, ids) = c.builders(other, true).await?;
    ensure!(
        ids == ["b1"] && crev == rev,
        "consistent read {crev} {ids:?}"
    );
    // And every replica applies it at the same revision.
    for id in [leader, follower, other] {
        let r = has_exactly(&c, id, &["b1".to_string()].into()).await?;
        ensure!(r == rev, "node {id} at revision {r}, want {rev}");
    }
    let s = c.status(other).await?;
    ensure!(s.revision == rev && s.leader == Some(leader), "{s:?}");
    ensure!(s.members.len() == 3, "{s:?}");
    Ok(())
}

/// A forwarded write whose answer is lost after it committed is retried by the forwarding
/// replica with the same request id and answered with its first outcome, never applied again
/// over a later write (issue 16 item 5: readers would see X, then Y, then X again).
#[tokio::test]
async fn a_forwarded_write_retried_after_it_committed_is_applied_once() -> Result<()> {
    let c = Cluster::start(Options {
        extra: vec!["--enable-fault-injection".into()],
        ..Options::default()
    })
    .await?;
    let leader = c.leader().await?;
    let follower = followers(&c, leader)[0];
    let at = |port: u16| PutBuilder::new(([127, 0, 0, 1], port).into(), sni("b1"));
    // The leader answers the next forwarded write 4 s late: after the follower's attempt (half
    // its 5 s request budget) has timed out, so the follower retries it.
    c.api(leader).hold_forward_replies(1, 4000).await?;
    let api = c.api(follower);
    let x = tokio::spawn(async move { api.put_builder("b1", &at(9001)).await });
    // X commits; then Y, written at the leader, before the follower's retry of X.
    let port_on = |id: u64| {
        let api = c.api(id);
        async move {
            let b = api.get_builder("b1", true).await?;
            anyhow::Ok(b.builder.addr.port())
        }
    };
    eventually(T, "X committed", || async {
        let port = port_on(leader).await?;
        ensure!(port == 9001, "b1 at port {port}");
        Ok(())
    })
    .await?;
    let y = c.api(leader).put_builder("b1", &at(9002)).await?;
    let x = x.await??;
    eprintln!(
        "X answered at revision {} (its first outcome), Y at revision {}",
        x.revision, y.revision
    );
    ensure!(
        x.revision < y.revision,
        "X's answer (revision {}) is not its first outcome: Y committed at {}",
        x.revision,
        y.revision
    );
    // The retry committed after Y and changed nothing: every replica reads Y.
    for id in c.up() {
        let port = port_on(id).await?;
        ensure!(
            port == 9002,
            "node {id}: b1 back at port {port} after Y (X applied twice)"
        );
    }
    Ok(())
}

#[tokio::test]
async fn leader_kill_loses_no_acknowledged_write() -> Result<()> {
    let mut c = Cluster::start(Options::default()).await?;
    let leader = c.leader().await?;
    let mut want = BTreeSet::new();
    for i in 0..20 {
        let via = c.nodes.keys().copied().nth(i % 3).unwrap();
        c.put(via, &format!("b{i}"), 9000 + i as u16).await?;
        want.insert(format!("b{i}"));
    }
    c.node(leader).kill();
    let new_leader = c.leader().await?;
    ensure!(new_leader != leader, "killed leader {leader} still leads");
    for id in followers(&c, leader) {
        has_exactly(&c, id, &want).await?;
    }
    let via = followers(&c, leader)[0];
    c.put(via, "after-kill", 9100).await?;
    want.insert("after-kill".into());
    // The killed node restarts from its data dir and catches up.
    c.node(leader).start()?;
    has_exactly(&c, leader, &want).await?;
    let (r1, _) = c.builders(leader, false).await?;
    let (r2, _) = c.builders(new_leader, false).await?;
    ensure!(r1 == r2, "revisions differ after catch-up: {r1} vs {r2}");
    Ok(())
}

#[tokio::test]
async fn node_that_missed_compacted_log_rejoins_by_snapshot() -> Result<()> {
    let mut c = Cluster::start(Options {
        snapshot_threshold: 10,
        ..Options::default()
    })
    .await?;
    let leader = c.leader().await?;
    let lagger = followers(&c, leader)[0];
    let before = c.status(lagger).await?;
    c.node(lagger).kill();
    let mut want = BTreeSet::new();
    for i in 0..60 {
        c.put(leader, &format!("s{i}"), 9000 + i as u16).await?;
        want.insert(format!("s{i}"));
    }
    let purged = eventually(T, "leader compacts its log", || async {
        let s = c.status(leader).await?;
        let p = s.purged_index.unwrap_or(0);
        ensure!(p > before.last_log_index.unwrap_or(0), "purged {p}");
        Ok(p)
    })
    .await?;
    c.node(lagger).start()?;
    has_exactly(&c, lagger, &want).await?;
    let s = c.status(lagger).await?;
    let snap = s.snapshot_index.unwrap_or(0);
    ensure!(
        snap >= purged,
        "node {lagger} should have installed a snapshot covering {purged}: {s:?}"
    );
    Ok(())
}

#[tokio::test]
async fn acknowledged_writes_survive_repeated_sigkill() -> Result<()> {
    let mut c = Cluster::start(Options::default()).await?;
    let mut acked = BTreeSet::new();
    let mut n = 0u32;
    for round in 0..6 {
        let leader = c.leader().await?;
        // Writes stream in through a follower (forwarded) while the leader is killed; every
        // other round the whole cluster is killed at once, so acknowledged writes must come back
        // from disk alone.
        let via = followers(&c, leader)[0];
        let kill_all = round % 2 == 1;
        let writer = {
            let api = concord_api::Client::builder(&c.nodes[&via].admin)
                .timeout(Duration::from_secs(10))
                .build()?;
            let start = n;
            tokio::spawn(async move {
                let mut ok = Vec::new();
                for i in start..start + 40 {
                    let addr = ([127, 0, 0, 1], (10000 + i) as u16).into();
                    let body = PutBuilder::new(addr, concord_harness::sni(&format!("w{i}")));
                    if api.put_builder(&format!("w{i}"), &body).await.is_ok() {
                        ok.push(format!("w{i}"));
                    }
                }
                ok
            })
        };
        // Kill once some writes are in.
        let base = acked.len() as u64;
        eventually(T, "writes flowing", || async {
            let s = c.status(leader).await?;
            ensure!(s.builders >= base + 5, "{s:?}");
            Ok(())
        })
        .await?;
        let victims: Vec<u64> = if kill_all {
            c.nodes.keys().copied().collect()
        } else {
            vec![leader]
        };
        for &v in &victims {
            c.node(v).kill();
        }
        let done = writer.await?;
        acked.extend(done);
        n += 40;
        for &v in &victims {
            c.node(v).start()?;
        }
        c.leader().await?;
        // Every acknowledged write is present, on every replica.
        let ids: Vec<u64> = c.nodes.keys().copied().collect();
        for id in ids {
            eventually(
                T,
                &format!("node {id} has every acknowledged write"),
                || async {
                    let (_, ids) = c.builders(id, false).await?;
                    let have: BTreeSet<String> = ids.into_iter().collect();
                    let missing: Vec<_> = acked.difference(&have).collect();
                    if !missing.is_empty() {
                        bail!("node {id} lost {missing:?}");
                    }
                    Ok(())
                },
            )
            .await
            .map_err(|e| e.context(c.logs()))?;
        }
    }
    ensure!(
        acked.len() > 40,
        "too few writes acknowledged: {}",
        acked.len()
    );
    Ok(())
}

#[tokio::test]
async fn membership_changes_keep_accepting_writes() -> Result<()> {
    let mut c = Cluster::start(Options::default()).await?;
    let leader = c.leader().await?;
    // A writer through node 2 or 3 that keeps putting builders for the whole test.
    let via = *c.nodes.keys().find(|&&id| id != 1).unwrap();
    let stop = tokio_util_stop();
    let writer = {
        let api = c.api(via);
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || i < 10 {
                let addr = ([127, 0, 0, 1], (20000 + i) as u16).into();
                let body = PutBuilder::new(addr, concord_harness::sni(&format!("m{i}")));
                match api.put_builder(&format!("m{i}"), &body).await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(format!("m{i}: {e}")),
                }
                i += 1;
            }
            (ok, failed)
        })
    };
    let peer = format!("127.0.0.1:{}", concord_harness::free_port());
    c.add_replica(4, peer.clone(), "")?;
    let api = c.api(via);
    let added = api.add_learner(4, &peer).await;
    ensure!(added.is_ok(), "add learner: {added:?}");
    let promoted = api.promote(4).await;
    ensure!(promoted.is_ok(), "promote: {promoted:?}");
    // Remove node 1 (the leader, if it is one: leadership moves on).
    let removed = api.remove_member(1).await;
    ensure!(
        removed.is_ok(),
        "remove node 1 (leader was {leader}): {removed:?}"
    );
    eventually(T, "membership is 2,3,4", || async {
        let ids = c.status(via).await?.voters();
        ensure!(ids == [2, 3, 4], "voters {ids:?}");
        Ok(())
    })
    .await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = writer.await?;
    ensure!(
        failed.is_empty(),
        "writes failed during membership changes: {failed:?}"
    );
    ensure!(ok >= 10, "only {ok} writes");
    // The new voter has everything.
    c.node(1).kill();
    c.nodes.remove(&1);
    let (_, ids) = c.converged(T).await?;
    ensure!(
        ids.len() as u32 == ok,
        "{} builders, {ok} acknowledged",
        ids.len()
    );
    let (_, on4) = c.builders(4, false).await?;
    ensure!(on4 == ids, "node 4 differs");
    Ok(())
}

fn tokio_util_stop() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
}
