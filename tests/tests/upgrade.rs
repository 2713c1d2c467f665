//! Rolling upgrades (issue 14): entry formats and the cluster's format, and a mixed cluster of the
//! last build before services (tests/upgrade/BASE, built by tests/upgrade/base-bin) and this one,
//! upgraded a replica at a time with an Envoy connected and writes flowing.

use anyhow::{Context, Result, ensure};
use concord_api::{MemberFormat, PutBuilder};
use concord_harness::envoy::{Envoy, Protocol};
use concord_harness::{Cluster, Options, eventually, sni};
use concord_registry::{FORMAT, FORMAT_BUILDERS};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// The cluster's entry format as replica `id` reports it (`None`: a build before formats).
async fn cluster_format(c: &Cluster, id: u64) -> Result<Option<u32>> {
    Ok(c.status(id).await?.entry_format.map(|f| f.cluster))
}

/// A cluster of this build raises its format as soon as it has a leader, and the leader shows
/// what every member supports. Once raised, a node that cannot say which formats it applies (not
/// started) is not added: it might be a build that would apply newer entries only in part.
#[tokio::test]
async fn a_cluster_of_one_build_raises_its_entry_format() -> Result<()> {
    let c = Cluster::start(Options::default()).await?;
    let leader = c.leader().await?;
    for id in c.up() {
        eventually(T, &format!("node {id} at format {FORMAT}"), || async {
            let f = cluster_format(&c, id).await?;
            ensure!(f == Some(FORMAT), "node {id} reports cluster format {f:?}");
            Ok(())
        })
        .await?;
    }
    let formats = c
        .status(leader)
        .await?
        .entry_format
        .context("the leader reports no entry formats")?;
    ensure!(formats.supported == FORMAT, "{formats:?}");
    for id in c.up() {
        ensure!(
            formats.members.get(&id) == Some(&MemberFormat::Supports(FORMAT)),
            "the leader's view of node {id}: {formats:?}"
        );
    }
    let peer = format!("127.0.0.1:{}", concord_harness::free_port());
    let refused = c.api(leader).add_learner(4, &peer).await;
    let message = format!("{refused:?}");
    ensure!(
        refused.is_err() && message.contains("node 4") && message.contains("format"),
        "adding a node that is not running: {message}"
    );
    let members = c.status(leader).await?.members;
    ensure!(members.len() == 3, "node 4 was added: {members:?}");
    Ok(())
}

/// Stops replica `id` (once no write goes through it) and starts it again with `bin` (`None`:
/// this build), waiting until it serves Envoys.
async fn restart(
    c: &mut Cluster,
    id: u64,
    bin: Option<PathBuf>,
    down: &AtomicU64,
    busy: &AtomicU64,
) -> Result<()> {
    down.store(id, Ordering::SeqCst);
    // Stopped only once no write is in flight through it: a client's write to a replica that is
    // going away may fail, and steering clients away is the operator's load balancer's job.
    eventually(T, "no write through the node to restart", || async {
        ensure!(
            busy.load(Ordering::SeqCst) != id,
            "a write goes through node {id}"
        );
        Ok(())
    })
    .await?;
    c.node(id)
        .terminate()
        .with_context(|| format!("stopping node {id}"))?;
    c.node(id).set_binary(bin);
    c.node(id).start()?;
    c.serving(id)
        .await
        .with_context(|| c.nodes[&id].log_tail())?;
    down.store(0, Ordering::SeqCst);
    Ok(())
}

/// A small desired state of services.
fn services() -> concord_registry::services::Desired {
    serde_json::from_value(serde_json::json!({
        "services": {"echo": {"protocol": "grpc", "endpoints": [{"addr": "127.0.0.1:50051"}]}},
        "route_tables": {"main": {"virtual_hosts": [{"name": "echo", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "service": "echo"}]}]}}
    }))
    .expect("a desired state")
}

/// The pre-services binary (tests/upgrade/base-bin prints it; tests/run sets the variable).
fn base_bin() -> Result<PathBuf> {
    let bin = std::env::var_os("CONCORD_UPGRADE_BASE_BIN").context(
        "CONCORD_UPGRADE_BASE_BIN is not set: run `export CONCORD_UPGRADE_BASE_BIN=$(tests/upgrade/base-bin)` \
         (tests/run does)",
    )?;
    let bin = PathBuf::from(bin);
    ensure!(bin.exists(), "{} does not exist", bin.display());
    Ok(bin)
}

/// Three replicas of the last build before services, upgraded one at a time to this one while
/// a writer keeps putting builders through the replicas that are up and an Envoy streams: no
/// write fails, the Envoy never goes back a version, the cluster stays at format 1 while any
/// old replica remains (each would apply newer entries only in part), and it reaches this
/// build's format once the last one is upgraded. Everything acknowledged is on every replica.
#[tokio::test]
async fn a_rolling_upgrade_from_the_pre_services_build() -> Result<()> {
    let mut c = Cluster::start(Options {
        bin: Some(base_bin()?),
        ..Options::default()
    })
    .await?;
    for id in c.up() {
        let f = cluster_format(&c, id).await?;
        ensure!(f.is_none(), "node {id} is not the old build: {f:?}");
    }
    let x: Vec<String> = c.nodes.values().map(|r| r.xds.clone()).collect();
    let servers: Vec<&str> = x.iter().map(String::as_str).collect();
    let envoy =
        Arc::new(Envoy::start_with(&c, "envoy-1", &servers, false, Some(Protocol::Delta)).await?);

    // The writer: one builder after another, each through the next replica that is not down.
    let down = Arc::new(AtomicU64::new(0));
    // The replica the writer's current write goes through (0: none).
    let busy = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Bit `id` set once node `id` runs this build.
    let upgraded = Arc::new(AtomicU64::new(0));
    let apis: Vec<(u64, concord_api::Client)> =
        c.up().into_iter().map(|id| (id, c.api(id))).collect();
    let writer = {
        let (down, busy, stop) = (down.clone(), busy.clone(), stop.clone());
        let upgraded = upgraded.clone();
        tokio::spawn(async move {
            let (mut acked, mut failed, mut retried) = (Vec::new(), Vec::new(), 0);
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let (via, api) = &apis[i % apis.len()];
                i += 1;
                busy.store(*via, Ordering::SeqCst);
                if *via == down.load(Ordering::SeqCst) {
                    busy.store(0, Ordering::SeqCst);
                    continue;
                }
                let id = format!("u{i}");
                let addr = ([127, 0, 0, 1], 20000 + (i % 40000) as u16).into();
                let put = PutBuilder::new(addr, sni(&id));
                let mut result = api.put_builder(&id, &put).await;
                // The old build answers a write it forwarded to a leader that is stopping with
                // "unavailable" (this build retries it at the next leader itself): a client
                // retries such a write, once, as an operator's would.
                if let Err(concord_api::Error::Api {
                    code: concord_api::ErrorCode::Unavailable,
                    ..
                }) = &result
                    && upgraded.load(Ordering::SeqCst) & (1 << via) == 0
                {
                    retried += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    result = api.put_builder(&id, &put).await;
                }
                match result {
                    Ok(w) => acked.push((id, w.revision)),
                    Err(e) => failed.push(format!("{id} via node {via}: {e}")),
                }
                busy.store(0, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (acked, failed, retried)
        })
    };
    // The Envoy's versions, every 50 ms: each type's never lower than before. (Per type: the
    // clusters of a revision reach Envoy before its listeners, so a sample may see clusters at
    // 66 and listeners still at 65, which is not going backwards.)
    let monitor = {
        let (envoy, stop) = (envoy.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut highest, mut backwards) = ([0u64; 2], Vec::new());
            while !stop.load(Ordering::Relaxed) {
                if let Ok(v) = envoy.versions().await {
                    let types = [("clusters", v.clusters), ("listeners", v.listeners)];
                    for (i, (name, got)) in types.into_iter().enumerate() {
                        let Some(got) = got else { continue };
                        if got < highest[i] {
                            backwards.push(format!("{name} {got} after {}", highest[i]));
                        }
                        highest[i] = highest[i].max(got);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            backwards
        })
    };

    let ids: Vec<u64> = c.up();
    let base = base_bin()?;
    for (n, &id) in ids.iter().enumerate() {
        restart(&mut c, id, None, &down, &busy).await?;
        upgraded.fetch_or(1 << id, Ordering::SeqCst);
        if n + 1 < ids.len() {
            for &u in &ids[..=n] {
                let f = cluster_format(&c, u).await?;
                ensure!(
                    f == Some(FORMAT_BUILDERS),
                    "node {u} reports format {f:?} with {} old replica(s) left",
                    ids.len() - n - 1
                );
            }
        }
        if n == 1 {
            // Two new replicas and an old one: make sure a new one leads (restarting the old
            // one, still old, if it does), wait until that leader has asked the old one and
            // heard format 1, and see the cluster stay at format 1 while writes go on.
            let old = ids[2];
            let mut leader = c.leader().await?;
            if leader == old {
                // Stopped, a new replica is elected; started again (still old), it follows.
                down.store(old, Ordering::SeqCst);
                eventually(T, "no write through the old leader", || async {
                    ensure!(
                        busy.load(Ordering::SeqCst) != old,
                        "a write goes through it"
                    );
                    Ok(())
                })
                .await?;
                c.node(old).terminate()?;
                leader = c.leader().await?;
                c.node(old).set_binary(Some(base.clone()));
                c.node(old).start()?;
                c.serving(old).await?;
                down.store(0, Ordering::SeqCst);
            }
            ensure!(leader != old, "the old replica {old} leads");
            eventually(
                T,
                "the new leader has heard the old replica's format",
                || async {
                    let f = c.status(leader).await?.entry_format.context("no formats")?;
                    ensure!(
                        f.members.get(&old) == Some(&MemberFormat::Supports(FORMAT_BUILDERS)),
                        "the leader's view: {f:?}"
                    );
                    Ok(())
                },
            )
            .await?;
            let at = c.status(leader).await?.revision;
            eventually(T, "ten more writes", || async {
                let now = c.status(leader).await?.revision;
                ensure!(now >= at + 10, "revision {now}, was {at}");
                Ok(())
            })
            .await?;
            for &u in &ids[..2] {
                let f = cluster_format(&c, u).await?;
                ensure!(
                    f == Some(FORMAT_BUILDERS),
                    "node {u} reports format {f:?} while node {old} is old"
                );
            }
            let refused = c.api(leader).apply_config(&services()).await;
            ensure!(
                format!("{refused:?}").contains("needs entry format 2"),
                "services applied with an old replica in the cluster: {refused:?}"
            );
        }
    }
    for &id in &ids {
        eventually(T, &format!("node {id} at format {FORMAT}"), || async {
            let f = cluster_format(&c, id).await?;
            ensure!(f == Some(FORMAT), "node {id} reports cluster format {f:?}");
            Ok(())
        })
        .await?;
    }
    // Services are usable now, through any replica.
    let applied = c.api(ids[2]).apply_config(&services()).await;
    ensure!(applied.is_ok(), "services after the upgrade: {applied:?}");
    // A few more writes on the upgraded cluster, then stop and check.
    let before = c.status(ids[0]).await?.revision;
    eventually(T, "writes go on after the upgrade", || async {
        let now = c.status(ids[0]).await?.revision;
        ensure!(now > before + 5, "revision {now}, was {before}");
        Ok(())
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let (acked, failed, retried) = writer.await?;
    println!(
        "{} writes acknowledged, {retried} retried once through an old replica",
        acked.len()
    );
    let backwards = monitor.await?;
    ensure!(
        failed.is_empty(),
        "writes failed during the upgrade: {failed:?}"
    );
    ensure!(
        backwards.is_empty(),
        "the Envoy went backwards: {backwards:?}"
    );
    let (rev, on_all) = c.converged(T).await?;
    for (id, _) in &acked {
        ensure!(on_all.contains(id), "acknowledged {id} is missing");
    }
    eventually(T, "the Envoy at the last revision", || async {
        let v = envoy.versions().await?;
        ensure!(
            v.clusters == Some(rev) && v.listeners == Some(rev),
            "{v:?}, want {rev}"
        );
        Ok(())
    })
    .await?;
    ensure!(acked.len() > 20, "only {} writes", acked.len());
    Ok(())
}
