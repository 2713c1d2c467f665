//! Cluster-wide Envoy sync status (`/v1/cluster/envoys`, `concord envoys --all`): any replica
//! lists every Envoy of every replica with the replica it streams from, its versions and its last
//! NACK, and names a replica that does not answer instead of leaving its Envoys out silently.

use anyhow::{Context, Result, ensure};
use concord_api::envoys::{ClusterEnvoy, ReplicaAnswer};
use concord_api::{ClusterEnvoys, SyncState};
use concord_harness::ads::Ads;
use concord_harness::envoy::Envoy;
use concord_harness::{Cluster, Options, concord_bin, eventually};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn envoy<'a>(v: &'a ClusterEnvoys, id: &str) -> Result<&'a ClusterEnvoy> {
    v.envoy(id)
        .with_context(|| format!("no Envoy {id} in {v:?}"))
}

fn cli(c: &Cluster, id: u64) -> Result<String> {
    let out = std::process::Command::new(concord_bin())
        .args(["envoys", "--all", "--admin", &c.nodes[&id].admin])
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
async fn any_replica_shows_every_envoy_of_the_cluster() -> Result<()> {
    let mut c = Cluster::start(Options::default()).await?;
    let (x1, x3) = (c.nodes[&1].xds.clone(), c.nodes[&3].xds.clone());
    let _e1 = Envoy::start(&c, "envoy-p1", &[&x1], false).await?;
    let _e3 = Envoy::start(&c, "envoy-p3", &[&x3], false).await?;
    let rev = c.put(1, "p1", 9001).await?;
    c.all_acked(2, rev).await?;
    // A scripted client on node 2 that NACKs what it gets.
    let mut ads = Ads::open(&c, &c.nodes[&2].xds).await?;
    ads.request("", "", None).await?;
    let first = ads.next().await?;
    ads.request("", &first.nonce, Some("scripted rejection"))
        .await?;

    // Asked on node 2: every Envoy, each with its replica.
    let v = eventually(T, "the cluster view", || async {
        let v = c.api(2).cluster_envoys().await?;
        let s = envoy(&v, "scripted")?;
        let nack = s.envoy.last_nack.as_ref().map(|n| n.message.as_str());
        ensure!(nack == Some("scripted rejection"), "{v:?}");
        Ok(v)
    })
    .await?;
    for (id, replica) in [("envoy-p1", 1), ("envoy-p3", 3), ("scripted", 2)] {
        let e = envoy(&v, id)?;
        ensure!(e.replica == replica, "{id} on {replica}: {e:?}");
    }
    let e1 = envoy(&v, "envoy-p1")?;
    ensure!(
        e1.envoy.acked("clusters") >= Some(rev) && e1.envoy.acked("listeners") >= Some(rev),
        "{e1:?}"
    );
    ensure!(v.replicas.len() == 3, "{v:?}");
    // Each replica says whether it serves Envoys.
    for r in &v.replicas {
        ensure!(
            matches!(
                r.answer,
                ReplicaAnswer::Answered {
                    serving: Some(true),
                    ..
                }
            ),
            "{r:?}"
        );
    }
    // The CLI's states come from the same rule the types carry.
    ensure!(
        envoy(&v, "scripted")?.sync_state() == SyncState::Nacked,
        "{v:?}"
    );

    let text = cli(&c, 2)?;
    let line = |id: &str| -> Result<String> {
        text.lines()
            .find(|l| l.starts_with(id))
            .map(str::to_string)
            .with_context(|| format!("no line for {id}:\n{text}"))
    };
    ensure!(line("envoy-p1")?.contains("SYNCED"), "{text}");
    ensure!(line("envoy-p3")?.contains("SYNCED"), "{text}");
    let s = line("scripted")?;
    ensure!(
        s.contains("NACKED") && s.contains("scripted rejection"),
        "{text}"
    );

    // A replica that does not answer is named, with why; the others' Envoys are still listed.
    c.node(3).kill();
    let v = eventually(T, "node 3 reported as not answering", || async {
        let v = c.api(2).cluster_envoys().await?;
        let r3 = v.replica(3).context("node 3 missing")?;
        ensure!(matches!(r3.answer, ReplicaAnswer::Failed { .. }), "{v:?}");
        Ok(v)
    })
    .await?;
    envoy(&v, "envoy-p1")?;
    ensure!(envoy(&v, "envoy-p3").is_err(), "{v:?}");
    ensure!(cli(&c, 2)?.contains("replica 3: NOT ANSWERING"), "CLI");

    // Node 2 alone: it says it does not serve Envoys, and why.
    c.node(1).kill();
    eventually(T, "node 2 reports itself NOT_SERVING", || async {
        let v = c.api(2).cluster_envoys().await?;
        let r2 = v.replica(2).context("node 2 missing")?;
        match &r2.answer {
            ReplicaAnswer::Answered {
                serving: Some(false),
                not_serving: Some(why),
                ..
            } => ensure!(
                why.starts_with("no leader with a quorum heard from"),
                "{why}"
            ),
            other => anyhow::bail!("{other:?}"),
        }
        ensure!(cli(&c, 2)?.contains("replica 2: revision"), "CLI");
        ensure!(cli(&c, 2)?.contains("NOT_SERVING: "), "CLI");
        Ok(())
    })
    .await?;
    Ok(())
}
