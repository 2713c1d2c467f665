//! crash-disk: restart-all on disks that lose unsynced writes. Each replica's data dir is a
//! crashfs mount (concord-crashfs, served by threads of this process); a writer puts builders
//! with increasing sequence numbers the whole time; each fault SIGKILLs every replica, drops every
//! write not yet fsynced on every mount (a power loss of each node), and starts them all again.
//!
//! At the end, besides the invariants of every scenario: every acknowledged write is present (the
//! latest sequence of each key is at least the last one acknowledged), and every replica reopened
//! its data dir after every power loss. A SIGKILL alone keeps the page cache; this is the test
//! that sees a missing fsync.

use super::{Args, World, caught_up, final_checks, leader, report};
use anyhow::{Context, Result, bail};
use concord_crashfs::Mounted;
use concord_harness::sni;
use rand::Rng;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Keys the writer cycles through: each is overwritten many times, so a lost write shows as an
/// older sequence, not only as a missing key.
const KEYS: u64 = 16;

/// What the writer and the fault loop share.
#[derive(Default)]
struct Writes {
    /// The sequence numbers acknowledged, per key.
    acked: Mutex<BTreeMap<String, Vec<u64>>>,
    /// Set by the fault loop from just before a kill until the writes acknowledged before it are
    /// checked, so that no newer write of a key can hide a lost one.
    paused: AtomicBool,
    /// Acknowledged writes found missing, as (key, sequence).
    lost: Mutex<BTreeSet<(String, u64)>>,
}

type Acked = Arc<Writes>;

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the scenario: `args.faults` restart-alls, each with a power loss of every replica's disk.
pub async fn run(args: &Args) -> Result<()> {
    let root = std::env::temp_dir().join(format!("concord-crash-disk-{}", std::process::id()));
    let data = root.join("data");
    let mut mounts = BTreeMap::new();
    for id in 1..=args.replicas {
        let (backing, at) = (
            root.join(format!("backing-{id}")),
            data.join(format!("node-{id}")),
        );
        std::fs::create_dir_all(&backing)?;
        std::fs::create_dir_all(&at)?;
        mounts.insert(
            id,
            Mounted::mount(&backing, &at).context("mounting crashfs")?,
        );
    }
    let result = scenario(args, &data, &mounts).await;
    // The replicas are gone with the world; now the mounts can go, then their backing dirs.
    drop(mounts);
    let _ = std::fs::remove_dir_all(&root);
    result
}

async fn scenario(args: &Args, data: &Path, mounts: &BTreeMap<u64, Mounted>) -> Result<()> {
    let setup = args.setup(Some(PathBuf::from(data)));
    let world = World::start(&setup).await.context("setting up the world")?;
    let stop = CancellationToken::new();
    let monitors = world.monitor(stop.clone(), Duration::from_millis(args.dns_every_ms));
    let acked: Acked = Arc::default();
    let writer = spawn_writer(&world, stop.clone(), acked.clone());

    let faults = inject(&world, args, mounts, &acked).await;
    let last_fault = Instant::now();
    if let Err(e) = &faults {
        world
            .rec
            .violation(5, json!({ "fault loop failed": format!("{e:#}") }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let _ = writer.await;
    for m in monitors {
        let _ = m.await;
    }
    let convergence = final_checks(&world, args, last_fault, &Default::default()).await;
    match check_acked(&world, &acked).await {
        Ok(lost) if lost.is_empty() => {}
        Ok(lost) => world.rec.violation(
            5,
            json!({ "at the end": true, "acknowledged writes lost": lost }),
        ),
        Err(e) => world.rec.violation(
            5,
            json!({ "could not read the registry": format!("{e:#}") }),
        ),
    }
    let numbers = summary(&world, &acked, mounts);
    let out = report(&world, args, convergence);
    println!("crash-disk: {}", serde_json::to_string(&numbers)?);
    // Kill the replicas before the mounts under them go.
    drop(world);
    out
}

async fn inject(
    world: &Arc<World>,
    args: &Args,
    mounts: &BTreeMap<u64, Mounted>,
    writes: &Writes,
) -> Result<()> {
    let mut rng = rand::rng();
    for k in 0..args.faults {
        // Let the writer run (and the replicas flush, or not) for a while.
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        let t0 = Instant::now();
        // No new write from here on; the one in flight (if any) meets the kill.
        writes.paused.store(true, Ordering::SeqCst);
        let ids: Vec<u64> = world.cluster.lock().await.up();
        for &id in &ids {
            world.cluster.lock().await.node(id).kill();
        }
        // Every process is reaped: nothing has a file open on the mounts any more.
        let mut dropped = json!({});
        for (id, m) in mounts {
            let (files, bytes) = m.power_loss();
            dropped[id.to_string()] = json!({ "files": files, "bytes": bytes });
        }
        world.rec.event(
            "fault",
            json!({ "n": k, "kind": "sigkill-all+power-loss", "dropped": dropped }),
        );
        for &id in &ids {
            world.cluster.lock().await.node(id).start()?;
        }
        reopened(world, &ids).await?;
        let new = leader(world).await?;
        world.rec.event(
            "election",
            json!({ "node": new, "ms": t0.elapsed().as_secs_f64() * 1e3 }),
        );
        for &id in &ids {
            caught_up(world, id).await?;
        }
        let lost = check_acked(world, writes).await?;
        if !lost.is_empty() {
            world.rec.violation(
                5,
                json!({ "after power loss": k, "acknowledged writes lost": lost }),
            );
        }
        writes.paused.store(false, Ordering::SeqCst);
    }
    Ok(())
}

/// Waits until every restarted replica answers its status; one that exits instead (its store
/// did not open after the power loss) is a violation, reported with its log.
async fn reopened(world: &World, ids: &[u64]) -> Result<()> {
    for &id in ids {
        let res = concord_harness::eventually(
            Duration::from_secs(30),
            &format!("node {id} reopens"),
            || async {
                let mut c = world.cluster.lock().await;
                if !c.node(id).is_running() {
                    bail!("node {id} exited");
                }
                c.status(id).await.map(|_| ())
            },
        )
        .await;
        if let Err(e) = res {
            let tail = world.cluster.lock().await.node(id).log_tail();
            world.rec.violation(
                5,
                json!({ "node": id, "did not reopen": format!("{e:#}"), "log": tail }),
            );
            return Err(e);
        }
    }
    Ok(())
}

/// Puts builders `d0`…`d15` in turn with label `seq` increasing, through the replicas in turn,
/// and records each acknowledged sequence number.
fn spawn_writer(
    world: &Arc<World>,
    stop: CancellationToken,
    acked: Acked,
) -> tokio::task::JoinHandle<()> {
    let w = world.clone();
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        let mut seq = 0u64;
        while !stop.is_cancelled() {
            if acked.paused.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            seq += 1;
            let admins: Vec<String> = {
                let c = w.cluster.lock().await;
                c.up()
                    .into_iter()
                    .map(|id| c.nodes[&id].admin.clone())
                    .collect()
            };
            if admins.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let id = format!("d{}", seq % KEYS);
            let body = json!({
                "addr": format!("127.0.4.1:{}", 1000 + seq % 60000),
                "sni": sni(&id),
                "labels": { "seq": seq.to_string() },
            });
            let admin = &admins[seq as usize % admins.len()];
            match http
                .put(format!("{admin}/v1/builders/{id}"))
                .json(&body)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {
                    locked(&acked.acked).entry(id).or_default().push(seq);
                }
                // Refused or cut off by a kill: not acknowledged, so it may or may not be there.
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
}

/// Every acknowledged write is present on the leader: for each key, every acknowledged sequence
/// above the one the leader has is a lost write. Returns the ones not found missing before.
async fn check_acked(world: &World, writes: &Writes) -> Result<Vec<(String, u64)>> {
    let acked = locked(&writes.acked).clone();
    let c = world.cluster.lock().await;
    let l = c.leader().await?;
    let v = c.get(l, "/v1/builders?consistent=true").await?;
    drop(c);
    let found: BTreeMap<String, u64> = v["builders"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| {
            let seq = b["labels"]["seq"].as_str()?.parse().ok()?;
            Some((b["id"].as_str()?.to_string(), seq))
        })
        .collect();
    let mut lost = locked(&writes.lost);
    let mut new = Vec::new();
    for (key, seqs) in &acked {
        let have = found.get(key).copied().unwrap_or(0);
        for &s in seqs.iter().filter(|&&s| s > have) {
            if lost.insert((key.clone(), s)) {
                new.push((key.clone(), s));
            }
        }
    }
    Ok(new)
}

/// The end of the run: the last check of acknowledged writes, and the numbers.
fn summary(world: &World, writes: &Writes, mounts: &BTreeMap<u64, Mounted>) -> Value {
    let total: usize = locked(&writes.acked).values().map(Vec::len).sum();
    let lost = locked(&writes.lost).len();
    let disks: serde_json::Map<String, Value> = mounts
        .iter()
        .map(|(id, m)| {
            let s = m.stats();
            let v = json!({ "fsyncs": s.fsyncs, "power_losses": s.power_losses,
                "files_dropped": s.files_dropped, "bytes_dropped": s.bytes_dropped });
            (id.to_string(), v)
        })
        .collect();
    let power_losses: u64 = mounts.values().map(|m| m.stats().power_losses).sum();
    let summary = json!({
        "power_losses": power_losses,
        "acknowledged_writes": total,
        "lost_writes": lost,
        "disks": disks,
    });
    world.rec.event("crash-disk", summary.clone());
    summary
}
