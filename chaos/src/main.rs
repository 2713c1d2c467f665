//! concord-chaos: runs a named fault scenario against a real world on loopback — BIND 9 with a
//! TXT record that keeps changing, concord replicas discovering from it, TLS builders, Envoys spread
//! over the replicas, and clients connecting through the Envoys the whole time — checks the
//! invariants continuously and at the end, and writes a JSON report and a summary.
//!
//! Invariants: (1) no Envoy is sent, or reports, a CDS or LDS version lower than one it
//! confirmed before; (2) after the last fault every Envoy reaches the leader's revision within a
//! bound; (3) every DNS change is reflected at the end and no removed builder reappears; (4)
//! connections to builders that stayed in DNS all succeed, and removed builders stop being
//! routed; (5) every replica restarts from its data dir and all agree at the end; (6) a replica
//! cut off from its peers, or on the minority side of a partition, reports NOT_SERVING within
//! 200 ms of `--stale-after-ms`, and its Envoys move away; (7) every response is accepted (no
//! NACK) and the protocol kept. The Envoys stream through recording proxies whose oracle checks
//! every response and ACK for (1) and (7) as it passes.
//!
//! `concord-chaos kill-leader --faults 50`; exits non-zero on any violation.

mod crash_disk;
mod world;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use concord_api::{Client, PutBuilder, Role, Source};
use concord_harness::tls::probe;
use rand::Rng;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use world::{STALE_AFTER, STALE_SLACK, Setup, World, sni};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Scenario {
    /// SIGKILL the current leader, restart it after a while, repeat.
    KillLeader,
    /// SIGKILL a random replica, restart it, repeat.
    KillRandom,
    /// SIGTERM each replica in turn and start it again, as an upgrade would.
    RollingRestart,
    /// Cut the leader off from its peers and its Envoys (in-process fault injection), heal.
    PartitionLeader,
    /// Five replicas split into two sides: the leader and one follower (the minority) against
    /// the other three; the minority turns its Envoys away, the majority elects a leader; heal.
    PartitionMinority,
    /// All replicas down at once, then up; Envoys keep their config meanwhile.
    RestartAll,
    /// SIGKILL the same replica repeatedly under heavy write load.
    DiskKill,
    /// Restart-all with every replica's disk losing its unsynced writes (crashfs), under writes.
    CrashDisk,
    /// Cut a follower off, commit a change the other replicas' Envoys take, SIGKILL those
    /// replicas: their Envoys come to the lagging one, which must not send them its older
    /// config (never backwards, invariant 1); heal. The replicas run with a 10 s
    /// `--stale-after-ms`, so the lagging replica still serves when they come.
    LaggingReplica,
}

/// Run a chaos scenario against real replicas, Envoys, DNS and TLS builders on loopback.
#[derive(Parser)]
#[command(name = "concord-chaos")]
struct Args {
    /// The scenario.
    scenario: Scenario,
    /// Number of faults to inject.
    #[arg(long, default_value_t = 5)]
    faults: usize,
    /// Replicas (3 or 5).
    #[arg(long, default_value_t = 3)]
    replicas: u64,
    /// Envoys, spread over the replicas.
    #[arg(long, default_value_t = 3)]
    envoys: usize,
    /// Milliseconds between DNS changes.
    #[arg(long, default_value_t = 500)]
    dns_every_ms: u64,
    /// Seconds every Envoy has, after the last fault, to reach the leader's revision (invariant 2).
    #[arg(long, default_value_t = 20)]
    converge_bound_secs: u64,
    /// Where the JSON report goes.
    #[arg(long, default_value = "chaos/reports")]
    out: PathBuf,
    /// The Envoys' ADS protocol.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Delta)]
    protocol: ProtocolArg,
    /// The replicas' listener mode.
    #[arg(long, value_parser = ["filter-chains", "sni-cluster"], default_value = "filter-chains")]
    listener_mode: String,
}

/// `--protocol`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProtocolArg {
    /// Delta xDS (the bootstrap generator's default).
    Delta,
    /// State of the world.
    Sotw,
}

impl Args {
    /// The world these arguments ask for (three stable builders).
    fn setup(&self, data_root: Option<PathBuf>) -> Setup {
        Setup {
            replicas: self.replicas,
            envoys: self.envoys,
            stable: 3,
            data_root,
            protocol: match self.protocol {
                ProtocolArg::Delta => concord_harness::envoy::Protocol::Delta,
                ProtocolArg::Sotw => concord_harness::envoy::Protocol::Sotw,
            },
            listener_mode: self.listener_mode.clone(),
            // A lagging replica must still serve when the others' Envoys come to it.
            stale_after: match self.scenario {
                Scenario::LaggingReplica => Duration::from_secs(10),
                _ => STALE_AFTER,
            },
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.scenario == Scenario::PartitionMinority && args.replicas != 5 {
        bail!("partition-minority splits five replicas 2 | 3: run it with --replicas 5");
    }
    if args.scenario == Scenario::CrashDisk {
        return crash_disk::run(&args).await;
    }
    let setup = args.setup(None);
    let world = World::start(&setup).await.context("setting up the world")?;
    let stop = CancellationToken::new();
    let monitors = world.monitor(stop.clone(), Duration::from_millis(args.dns_every_ms));
    let acked = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let writer = (args.scenario == Scenario::DiskKill)
        .then(|| spawn_writer(&world, stop.clone(), acked.clone()));

    let faults_ok = inject(&world, &args).await;
    let last_fault = Instant::now();
    if let Err(e) = &faults_ok {
        world
            .rec
            .violation(5, json!({ "fault loop failed": format!("{e:#}") }));
    }
    // Let DNS churn and traffic go on a little after the last fault, then stop the churn.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    if let Some(w) = writer {
        let _ = w.await;
    }
    for m in monitors {
        let _ = m.await;
    }
    let convergence = final_checks(&world, &args, last_fault, &acked).await;
    report(&world, &args, convergence)
}

/// Waits for a leader among the running replicas, holding the cluster only briefly at a time
/// so the monitors keep watching.
async fn leader(world: &World) -> Result<u64> {
    concord_harness::eventually(Duration::from_secs(20), "one leader", || async {
        world.cluster.lock().await.leader_now().await
    })
    .await
}

async fn inject(world: &Arc<World>, args: &Args) -> Result<()> {
    let mut rng = rand::rng();
    for k in 0..args.faults {
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..2000))).await;
        let t0 = Instant::now();
        match args.scenario {
            Scenario::KillLeader | Scenario::KillRandom | Scenario::DiskKill => {
                let victim = match args.scenario {
                    Scenario::KillLeader => leader(world).await?,
                    Scenario::DiskKill => 1,
                    _ => rng.random_range(1..=args.replicas),
                };
                world.cluster.lock().await.node(victim).kill();
                world.rec.event(
                    "fault",
                    json!({ "n": k, "kind": "sigkill", "node": victim }),
                );
                let new = leader(world).await?;
                world.rec.event(
                    "election",
                    json!({ "node": new, "ms": t0.elapsed().as_secs_f64() * 1e3 }),
                );
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
                restart(world, victim).await?;
            }
            Scenario::RollingRestart => {
                let victim = (k as u64 % args.replicas) + 1;
                let status = world.cluster.lock().await.node(victim).terminate()?;
                world.rec.event(
                    "fault",
                    json!({ "n": k, "kind": "sigterm", "node": victim, "exit": status.code() }),
                );
                if !status.success() {
                    world
                        .rec
                        .violation(5, json!({ "node": victim, "sigterm exit": status.code() }));
                }
                let new = leader(world).await?;
                world.rec.event(
                    "election",
                    json!({ "node": new, "ms": t0.elapsed().as_secs_f64() * 1e3 }),
                );
                restart(world, victim).await?;
            }
            Scenario::PartitionLeader => {
                let victim = leader(world).await?;
                isolate(world, victim, true).await?;
                let cut = Instant::now();
                world.rec.event(
                    "fault",
                    json!({ "n": k, "kind": "partition", "node": victim }),
                );
                let new = wait_leader_other_than(world, victim).await?;
                world.rec.event(
                    "election",
                    json!({ "node": new, "ms": t0.elapsed().as_secs_f64() * 1e3 }),
                );
                turns_envoys_away(world, victim, cut).await?;
                tokio::time::sleep(Duration::from_millis(rng.random_range(300..1000))).await;
                isolate(world, victim, false).await?;
                world.rec.event("heal", json!({ "node": victim }));
                caught_up(world, victim).await?;
            }
            Scenario::PartitionMinority => {
                let old = leader(world).await?;
                let up = world.cluster.lock().await.up();
                let followers: Vec<u64> = up.iter().copied().filter(|id| *id != old).collect();
                let other = followers[rng.random_range(0..followers.len())];
                let minority = vec![old, other];
                let majority: Vec<u64> =
                    up.into_iter().filter(|id| !minority.contains(id)).collect();
                for id in &minority {
                    cut_off(world, *id, &majority).await?;
                }
                for id in &majority {
                    cut_off(world, *id, &minority).await?;
                }
                let cut = Instant::now();
                world.rec.event(
                    "fault",
                    json!({ "n": k, "kind": "partition", "minority": minority, "majority": majority }),
                );
                let new = wait_leader_among(world, &majority).await?;
                world.rec.event(
                    "election",
                    json!({ "node": new, "ms": t0.elapsed().as_secs_f64() * 1e3 }),
                );
                for id in &minority {
                    turns_envoys_away(world, *id, cut).await?;
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(300..1000))).await;
                for id in minority.iter().chain(&majority) {
                    cut_off(world, *id, &[]).await?;
                }
                world.rec.event("heal", json!({ "minority": minority }));
                for id in &minority {
                    caught_up(world, *id).await?;
                }
            }
            Scenario::CrashDisk => unreachable!("crash_disk::run"),
            Scenario::LaggingReplica => {
                let old = leader(world).await?;
                let up = world.cluster.lock().await.up();
                // The follower with the fewest Envoys lags: most Envoys are ahead of it.
                let mut followers = Vec::new();
                for id in up.iter().copied().filter(|id| *id != old) {
                    let n = world.cluster.lock().await.envoys_on(id).await?.len();
                    followers.push((n, id));
                }
                followers.sort();
                let lagging = followers[0].1;
                let others: Vec<u64> = up.iter().copied().filter(|id| *id != lagging).collect();
                cut_off(world, lagging, &others).await?;
                for id in &others {
                    cut_off(world, *id, &[lagging]).await?;
                }
                world
                    .rec
                    .event("fault", json!({ "n": k, "kind": "lag", "node": lagging }));
                // A change the lagging replica never sees, which the others' Envoys ACK.
                let revision = world
                    .cluster
                    .lock()
                    .await
                    .put(old, &format!("lag{k}"), 1)
                    .await?;
                acked_on(world, &others, revision).await?;
                for id in &others {
                    world.cluster.lock().await.node(*id).kill();
                }
                world.rec.event(
                    "fault",
                    json!({ "n": k, "kind": "sigkill", "nodes": others, "revision": revision }),
                );
                // Their Envoys come to the lagging replica (invariant 1 watches every Envoy's
                // versions all along); a second more there before the heal.
                all_envoys_came_to(world, lagging).await?;
                world.rec.event("came", json!({ "node": lagging }));
                tokio::time::sleep(Duration::from_secs(1)).await;
                cut_off(world, lagging, &[]).await?;
                world.rec.event("heal", json!({ "node": lagging }));
                for id in &others {
                    restart(world, *id).await?;
                }
                let new = leader(world).await?;
                world.rec.event(
                    "election",
                    json!({ "node": new, "ms": t0.elapsed().as_secs_f64() * 1e3 }),
                );
                caught_up(world, lagging).await?;
            }
            Scenario::RestartAll => {
                let ids: Vec<u64> = world.cluster.lock().await.up();
                for &id in &ids {
                    world.cluster.lock().await.node(id).kill();
                }
                world
                    .rec
                    .event("fault", json!({ "n": k, "kind": "sigkill-all" }));
                tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
                for &id in &ids {
                    world.cluster.lock().await.node(id).start()?;
                }
                let new = leader(world).await?;
                world.rec.event(
                    "election",
                    json!({ "node": new, "ms": t0.elapsed().as_secs_f64() * 1e3 }),
                );
                for &id in &ids {
                    caught_up(world, id).await?;
                }
            }
        }
    }
    Ok(())
}

/// Waits until every Envoy streaming from one of `replicas` has ACKed clusters at `revision`
/// or later.
async fn acked_on(world: &World, replicas: &[u64], revision: u64) -> Result<()> {
    concord_harness::eventually(
        Duration::from_secs(10),
        &format!("the Envoys of {replicas:?} ACK revision {revision}"),
        || async {
            let c = world.cluster.lock().await;
            for id in replicas {
                for e in c.api(*id).envoys().await?.envoys {
                    let acked = e.acked("clusters").unwrap_or(0);
                    if acked < revision {
                        bail!("{} on node {id} ACKed {acked}", e.node_id);
                    }
                }
            }
            Ok(())
        },
    )
    .await
}

/// Waits until every one of the world's Envoys has been seen streaming from replica `node`
/// (sampled every 50 ms: a stream it turns away is there only a moment), within 10 s.
async fn all_envoys_came_to(world: &World, node: u64) -> Result<()> {
    let all: BTreeSet<String> = world.envoys.iter().map(|e| e.node_id.clone()).collect();
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !all.is_subset(&seen) {
        if Instant::now() > deadline {
            bail!("only {seen:?} of {all:?} came to node {node} within 10 s");
        }
        if let Ok(on) = world.cluster.lock().await.envoys_on(node).await {
            seen.extend(on);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Cuts replica `node` off from `peers` only (both ways); none heals it.
async fn cut_off(world: &World, node: u64, peers: &[u64]) -> Result<()> {
    let api = world.cluster.lock().await.api(node);
    api.cut_off(peers)
        .await
        .with_context(|| format!("cut {node} off from {peers:?}"))?;
    Ok(())
}

async fn isolate(world: &World, node: u64, on: bool) -> Result<()> {
    let api = world.cluster.lock().await.api(node);
    api.isolate(on)
        .await
        .with_context(|| format!("isolate {node}"))?;
    Ok(())
}

/// Invariant 6: replica `node`, cut off from its peers at `cut`, reports NOT_SERVING within
/// [`STALE_AFTER`] + [`STALE_SLACK`] (judged by itself: the fault cuts only the peers), and
/// within a second more no Envoy streams from it.
async fn turns_envoys_away(world: &World, node: u64, cut: Instant) -> Result<()> {
    let bound = STALE_AFTER + STALE_SLACK;
    let deadline = cut + STALE_AFTER + Duration::from_secs(5);
    let stale_at = loop {
        let serving = world.cluster.lock().await.health(node).await;
        if matches!(serving, Ok(false)) {
            break Some(cut.elapsed());
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    match stale_at {
        Some(t) if t <= bound => world
            .rec
            .event("stale", json!({ "node": node, "ms": ms(t) })),
        Some(t) => world.rec.violation(
            6,
            json!({ "node": node, "NOT_SERVING after ms": ms(t), "bound ms": ms(bound) }),
        ),
        None => world.rec.violation(
            6,
            json!({ "node": node, "still SERVING after ms": ms(cut.elapsed()), "bound ms": ms(bound) }),
        ),
    }
    let moved = concord_harness::eventually(
        Duration::from_secs(1),
        "its Envoys stream from other replicas",
        || async {
            let on = world.cluster.lock().await.envoys_on(node).await?;
            if !on.is_empty() {
                bail!("still streaming from node {node}: {on:?}");
            }
            Ok(())
        },
    )
    .await;
    if let Err(e) = moved {
        world.rec.violation(
            6,
            json!({ "node": node, "Envoys did not move": format!("{e:#}") }),
        );
    }
    Ok(())
}

/// A leader among `side` (the majority of a partition).
async fn wait_leader_among(world: &World, side: &[u64]) -> Result<u64> {
    wait_leader(world, "a leader on the majority side", |id| {
        side.contains(&id)
    })
    .await
}

async fn wait_leader_other_than(world: &World, old: u64) -> Result<u64> {
    wait_leader(world, "a new leader", |id| id != old).await
}

/// A running replica that `accept`s and reports itself leader.
async fn wait_leader(world: &World, what: &str, accept: impl Fn(u64) -> bool) -> Result<u64> {
    concord_harness::eventually(Duration::from_secs(20), what, || async {
        let c = world.cluster.lock().await;
        for id in c.up().into_iter().filter(|id| accept(*id)) {
            if c.status(id).await?.role == Role::Leader {
                return Ok(id);
            }
        }
        bail!("none yet")
    })
    .await
}

async fn restart(world: &World, node: u64) -> Result<()> {
    world.cluster.lock().await.node(node).start()?;
    caught_up(world, node).await?;
    world.rec.event("restarted", json!({ "node": node }));
    Ok(())
}

/// Waits until `node` answers and has applied as far as the leader had when we asked.
async fn caught_up(world: &World, node: u64) -> Result<()> {
    concord_harness::eventually(
        Duration::from_secs(30),
        &format!("node {node} catches up"),
        || async {
            let c = world.cluster.lock().await;
            let l = c.leader_now().await?;
            let want = c.status(l).await?.applied_index.unwrap_or(0);
            let got = c.status(node).await?.applied_index.unwrap_or(0);
            if got < want {
                bail!("node {node} at {got}, leader at {want}");
            }
            Ok(())
        },
    )
    .await
    .map_err(|e| {
        world.rec.violation(
            5,
            json!({ "node": node, "did not come back": format!("{e:#}") }),
        );
        e
    })
}

/// Heavy write load for disk-kill: api builders put through every replica, acknowledged ones kept.
fn spawn_writer(
    world: &Arc<World>,
    stop: CancellationToken,
    acked: Arc<std::sync::Mutex<BTreeSet<String>>>,
) -> tokio::task::JoinHandle<()> {
    let w = world.clone();
    tokio::spawn(async move {
        // One connection pool for the writes to every replica.
        let http = reqwest::Client::new();
        let mut i = 0u32;
        while !stop.is_cancelled() {
            let admins: Vec<String> = {
                let c = w.cluster.lock().await;
                c.up()
                    .into_iter()
                    .map(|id| c.nodes[&id].admin.clone())
                    .collect()
            };
            let admin = &admins[i as usize % admins.len()];
            let id = format!("w{i}");
            let addr = ([127, 0, 3, 1], (1000 + i % 60000) as u16).into();
            let body = PutBuilder::new(addr, sni(&id));
            let api = Client::builder(admin)
                .http(http.clone())
                .timeout(Duration::from_secs(10))
                .build();
            if let Ok(api) = api
                && api.put_builder(&id, &body).await.is_ok()
            {
                acked.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
            }
            i += 1;
        }
    })
}

fn median_max(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return json!(null);
    }
    v.sort_by(f64::total_cmp);
    json!({ "n": v.len(), "median_ms": v[v.len() / 2].round(), "max_ms": v[v.len() - 1].round() })
}

/// The end-of-run invariants; returns the convergence time in ms.
async fn final_checks(
    world: &World,
    args: &Args,
    last_fault: Instant,
    acked: &std::sync::Mutex<BTreeSet<String>>,
) -> Option<f64> {
    let rec = &world.rec;
    let bound = Duration::from_secs(args.converge_bound_secs);
    let dns = world.dns.lock().await;
    let published = dns.published();
    let removed = dns.removed().clone();
    let latest_removed = dns.latest_removed(3);
    drop(dns);
    // (5) every replica is up; (3) the leader has exactly what DNS has, plus the api writes.
    let c = world.cluster.lock().await;
    for id in c.nodes.keys().copied().collect::<Vec<_>>() {
        if !c.up().contains(&id) {
            rec.violation(5, json!({ "node": id, "not running at the end": true }));
        }
    }
    let start = Instant::now();
    let converged = concord_harness::eventually(
        bound,
        "every Envoy and replica at the leader's revision",
        || async {
            let l = c.leader().await?;
            let lv = c.api(l).builders(true).await?;
            let rev = lv.revision;
            let dns_ids: BTreeSet<String> = lv
                .builders
                .into_iter()
                .filter(|b| b.source == Source::Dns)
                .map(|b| b.id)
                .collect();
            if dns_ids != published {
                bail!("leader has {dns_ids:?}, DNS has {published:?}");
            }
            // Envoy's own config dump gives the clusters' revision; a listener's version there
            // is the revision it last changed at (delta, or sni-cluster mode, where it never
            // changes), so for listeners Envoy must hold one, and the replicas' records must
            // show the Envoy ACKed the leader's revision for both types.
            for e in &world.envoys {
                let v = e.versions().await?;
                if v.clusters != Some(rev) || v.listeners.is_none_or(|l| l > rev) {
                    bail!("{} at {v:?}, leader at {rev}", e.node_id);
                }
                // The recording proxies saw the same: the Envoy ACKed the leader's revision.
                let seen = world
                    .oracle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .confirmed(&e.node_id, concord_harness::ads::CDS);
                if seen != Some(rev) {
                    bail!(
                        "the recording proxies saw {} confirm clusters {seen:?}, leader at {rev}",
                        e.node_id
                    );
                }
            }
            let mut acked = 0;
            for id in c.up() {
                for e in c.api(id).envoys().await?.envoys {
                    for ty in ["clusters", "listeners"] {
                        if e.acked(ty) != Some(rev) {
                            bail!(
                                "{} ACKed {ty} {:?} on node {id}, leader at {rev}",
                                e.node_id,
                                e.acked(ty)
                            );
                        }
                    }
                    acked += 1;
                }
            }
            if acked < world.envoys.len() {
                bail!("{acked} of {} Envoys streaming", world.envoys.len());
            }
            let reference = c.api(l).builders(false).await?;
            for id in c.up() {
                let other = c.api(id).builders(false).await?;
                if other != reference {
                    bail!("node {id} differs from the leader");
                }
            }
            Ok(())
        },
    )
    .await;
    let convergence = match converged {
        Ok(()) => {
            rec.event(
                "converged",
                json!({ "ms_after_last_fault": last_fault.elapsed().as_secs_f64() * 1e3 }),
            );
            Some(start.elapsed().as_secs_f64() * 1e3)
        }
        Err(e) => {
            rec.violation(2, json!({ "not converged within": args.converge_bound_secs, "evidence": format!("{e:#}") }));
            None
        }
    };
    // (3) no removed builder anywhere; (4) and none routed.
    for id in c.up() {
        if let Ok(v) = c.api(id).builders(false).await {
            for bid in v.ids().iter().filter(|b| removed.contains(*b)) {
                rec.violation(3, json!({ "node": id, "removed builder is back": bid }));
            }
        }
    }
    for e in &world.envoys {
        for bid in &latest_removed {
            if let Ok(g) = probe(&world.ca, e.listener, &sni(bid)).await {
                rec.violation(
                    4,
                    json!({ "envoy": e.node_id, "removed builder still routed": bid, "answer": g }),
                );
            }
        }
        for bid in &published {
            match probe(&world.ca, e.listener, &sni(bid)).await {
                Ok(g) if g == format!("builder {bid}") => {}
                other => rec.violation(3, json!({ "envoy": e.node_id, "builder in DNS not routed": bid, "result": format!("{other:?}") })),
            }
        }
    }
    // disk-kill: every acknowledged write survived.
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if !acked.is_empty()
        && let Ok(l) = c.leader().await
        && let Ok(v) = c.api(l).builders(true).await
    {
        let have: BTreeSet<String> = v.ids().into_iter().collect();
        let lost: Vec<_> = acked.difference(&have).collect();
        if !lost.is_empty() {
            rec.violation(5, json!({ "acknowledged writes lost": lost }));
        }
        rec.event("writes", json!({ "acknowledged": acked.len() }));
    }
    convergence
}

fn report(world: &World, args: &Args, convergence: Option<f64>) -> Result<()> {
    let rec = &world.rec;
    let events = rec.events();
    let violations = rec.violations();
    let faults = events.iter().filter(|e| e["kind"] == "fault").count();
    let dns_changes = events.iter().filter(|e| e["kind"] == "dns").count();
    // What the recording proxies saw, summed over the Envoys.
    let counts = world
        .oracle
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .counts();
    let recorded = json!({
        "streams": counts.values().map(|c| c.streams).sum::<u64>(),
        "responses": counts.values().map(|c| c.responses).sum::<u64>(),
        "acks": counts.values().map(|c| c.acks).sum::<u64>(),
        "nacks": counts.values().map(|c| c.nacks).sum::<u64>(),
    });
    let summary = json!({
        "scenario": format!("{:?}", args.scenario),
        "protocol": format!("{:?}", args.setup(None).protocol).to_lowercase(),
        "listener_mode": args.listener_mode,
        "faults": faults,
        "dns_changes": dns_changes,
        "elections": median_max(rec.durations("election")),
        "stale_after_partition": median_max(rec.durations("stale")),
        "envoy_failovers": median_max(rec.durations("failover")),
        "failover_resolution_ms": 100,
        "convergence_after_last_change_ms": convergence.map(f64::round),
        "traffic": { "sent": world.traffic.sent.load(Ordering::Relaxed), "failed": world.traffic.failed.load(Ordering::Relaxed) },
        "version_samples": { "read": world.traffic.version_samples.load(Ordering::Relaxed), "failed": world.traffic.version_sample_errors.load(Ordering::Relaxed), "every_ms": 10 },
        "recorded": recorded,
        "violations": violations.len(),
    });
    std::fs::create_dir_all(&args.out)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let path = args
        .out
        .join(format!("{:?}-{stamp}.json", args.scenario).to_lowercase());
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(
            &json!({ "summary": summary, "violations": violations, "events": events }),
        )?,
    )?;
    println!(
        "chaos {:?}: {}",
        args.scenario,
        serde_json::to_string_pretty(&summary)?
    );
    println!("report: {}", path.display());
    if !violations.is_empty() {
        // The replicas' logs go with a failed run's report: the cluster's directory is removed.
        let logs = path.with_extension("logs");
        if let Ok(c) = world.cluster.try_lock() {
            std::fs::create_dir_all(&logs)?;
            for r in c.nodes.values() {
                let _ = std::fs::copy(r.log(), logs.join(format!("node-{}.log", r.id)));
            }
            println!("replica logs: {}", logs.display());
        }
        bail!(
            "{} invariant violation(s); see the report",
            violations.len()
        );
    }
    Ok(())
}
