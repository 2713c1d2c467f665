//! Never backwards for delta Envoys that hold nothing (DESIGN rule 3): a delta request carries
//! no revision, so an Envoy whose newest state is empty (every builder removed) looks like a
//! fresh one. A replica that lags the cluster must not answer it from its older state, which
//! would bring removed builders back: it catches up with the cluster first, or turns the Envoy
//! away with UNAVAILABLE.

use anyhow::{Context, Result, anyhow, bail, ensure};
use concord_harness::ads::{Ads, CDS, DeltaAds, names};
use concord_harness::{Cluster, Options, eventually};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// A replica that does not lead (so cutting it off needs no election), and the leader.
async fn follower_and_leader(c: &Cluster) -> Result<(u64, u64)> {
    let leader = c.leader().await?;
    let follower = c.up().into_iter().find(|&id| id != leader);
    Ok((follower.expect("three replicas"), leader))
}

/// Removes `b1` through replica `via` and has a delta client on it ACK the empty state;
/// returns the revision of the removal.
async fn remove_and_ack(c: &Cluster, via: u64) -> Result<u64> {
    let removed = c.remove(via, "b1").await?;
    let mut ads = DeltaAds::open(c, &c.nodes[&via].xds).await?;
    ads.subscribe(CDS, &[]).await?;
    loop {
        let r = ads.next().await?;
        ads.answer(&r, None).await?;
        if r.system_version_info.parse::<u64>()? >= removed {
            ensure!(!names(&r).contains(&"builder_b1"), "{r:?}");
            return Ok(removed);
        }
    }
}

/// What a delta stream with empty `initial_resource_versions` on replica `id` gets first: a
/// response, or the status that ended it.
async fn empty_envoy_on(c: &Cluster, id: u64) -> Result<Result<(u64, Vec<String>), tonic::Status>> {
    let mut ads = match DeltaAds::open(c, &c.nodes[&id].xds).await {
        Ok(ads) => ads,
        Err(status) => return Ok(Err(status)),
    };
    ads.subscribe(CDS, &[]).await?;
    Ok(match ads.next().await {
        Ok(r) => {
            let names = names(&r).into_iter().map(String::from).collect();
            Ok((r.system_version_info.parse()?, names))
        }
        Err(status) => Err(status),
    })
}

#[tokio::test]
async fn a_restarted_lagging_replica_does_not_bring_removed_builders_back() -> Result<()> {
    let mut c = Cluster::start(Options {
        extra: ["--catch-up-timeout-ms", "1000"].map(String::from).to_vec(),
        ..Options::default()
    })
    .await?;
    c.put(1, "b1", 9001).await?;
    c.converged(T).await?;
    let (lagging, leader) = follower_and_leader(&c).await?;
    c.node(lagging).kill();
    let removed = remove_and_ack(&c, leader).await?;
    for id in c.up() {
        c.node(id).kill();
    }
    c.node(lagging).start()?;
    eventually(T, "the restarted replica answers its admin API", || {
        c.status(lagging)
    })
    .await?;
    // It is alone, with b1 at an older revision and no way to learn of its removal.
    match empty_envoy_on(&c, lagging).await? {
        Ok((revision, names)) => {
            ensure!(
                !names.iter().any(|n| n == "builder_b1") && revision >= removed,
                "a replica at an older revision moved an Envoy that holds nothing backwards: \
                 revision {revision} with {names:?}, the Envoy had accepted {removed} (no b1)"
            )
        }
        Err(status) => {
            eprintln!("the restarted replica turned the Envoy away: {status:?}");
            ensure!(status.code() == tonic::Code::Unavailable, "{status:?}")
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_replica_that_lags_but_is_not_yet_stale_does_not_bring_removed_builders_back()
-> Result<()> {
    let mut c = Cluster::start(Options {
        extra: ["--catch-up-timeout-ms", "1000", "--stale-after-ms", "30000"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    })
    .await?;
    c.put(1, "b1", 9001).await?;
    c.converged(T).await?;
    let (lagging, leader) = follower_and_leader(&c).await?;
    // Paused, it misses the removal; then alone, it has heard from a quorum within
    // --stale-after-ms and serves, from its older state.
    signal(&c, lagging, "STOP")?;
    let removed = remove_and_ack(&c, leader).await?;
    for id in c.up().into_iter().filter(|&id| id != lagging) {
        c.node(id).kill();
    }
    signal(&c, lagging, "CONT")?;
    let (applied, _) = c.builders(lagging, false).await?;
    ensure!(applied < removed, "the paused replica applied the removal");

    // A SotW Envoy reports the revision it holds and is refused...
    let mut sotw = Ads::open(&c, &c.nodes[&lagging].xds).await?;
    sotw.request(&removed.to_string(), "", None).await?;
    match sotw.next().await {
        Ok(r) => bail!("SotW answered with {} at {}", r.version_info, removed),
        Err(s) => ensure!(
            s.code() == tonic::Code::Unavailable && s.message().contains("try another replica"),
            "{s:?}"
        ),
    }
    // ...and so is a delta Envoy, which cannot say: it may hold nothing at a newer revision.
    match empty_envoy_on(&c, lagging).await? {
        Ok((revision, names)) => bail!(
            "a replica at an older revision moved an Envoy that holds nothing backwards: \
             revision {revision} with {names:?}, the Envoy had accepted {removed} (no b1)"
        ),
        Err(s) => ensure!(
            s.code() == tonic::Code::Unavailable && s.message().contains("try another replica"),
            "{s:?}"
        ),
    }
    Ok(())
}

#[tokio::test]
async fn a_replica_back_in_contact_catches_up_before_answering() -> Result<()> {
    let c = Cluster::start(Options {
        extra: ["--catch-up-timeout-ms", "3000", "--enable-fault-injection"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    })
    .await?;
    c.put(1, "b1", 9001).await?;
    c.converged(T).await?;
    let (lagging, leader) = follower_and_leader(&c).await?;
    isolate(&c, lagging, true).await?;
    let removed = remove_and_ack(&c, leader).await?;
    let (applied, _) = c.builders(lagging, false).await?;
    ensure!(applied < removed, "the cut-off replica applied the removal");
    // Reconnected, it serves again as soon as it hears from the leader, which may be before
    // it has applied the removal: its first answer must already be the newer state.
    isolate(&c, lagging, false).await?;
    let (revision, names) = eventually(T, "the replica answers a delta Envoy again", || async {
        empty_envoy_on(&c, lagging)
            .await?
            .map_err(|s| anyhow!("{s:?}"))
    })
    .await?;
    ensure!(
        revision >= removed && names.is_empty(),
        "a replica back in contact moved an Envoy that holds nothing backwards: revision \
         {revision} with {names:?}, the Envoy had accepted {removed} (no b1)"
    );
    // A partition names other members only: anything else is refused, naming the node.
    for bad in [9, lagging] {
        let e = c.api(lagging).cut_off(&[bad]).await.unwrap_err();
        ensure!(
            e.status() == Some(400) && e.to_string().contains(&format!("node {bad}")),
            "{e:?}"
        );
    }
    let cut = c.api(lagging).cut_off(&[leader]).await?;
    ensure!(cut.isolated && cut.from == [leader], "{cut:?}");
    let healed = c.api(lagging).cut_off(&[]).await?;
    ensure!(!healed.isolated && healed.from.is_empty(), "{healed:?}");
    Ok(())
}

/// Sends replica `id` the signal `sig` (`STOP`, `CONT`).
fn signal(c: &Cluster, id: u64, sig: &str) -> Result<()> {
    let pid = c.nodes[&id].pid().context("not running")?;
    let status = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -{sig} {pid}: {status}");
    Ok(())
}

/// Cuts replica `id` off from its peers (`on`), or reconnects it.
async fn isolate(c: &Cluster, id: u64, on: bool) -> Result<()> {
    let body = json!({ "isolated": on });
    let (status, v) = c
        .send(id, Method::POST, "/v1/debug/isolate", Some(body))
        .await?;
    ensure!(status == 200, "isolate: {status} {v}");
    Ok(())
}
