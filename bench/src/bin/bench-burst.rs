//! Benchmark of a burst of changes: three real replicas and real Envoys (spread over the
//! replicas), a registry of `--sizes` builders, then API changes at `--rate` per second for
//! `--secs` seconds, per protocol and listener mode. It shows whether Envoys keep up with a
//! change rate faster than they apply changes (xDS flow control, issue 17): without it, every
//! revision is sent as soon as it is applied and responses queue up for a slow Envoy.
//!
//! Each change re-puts one of ten `burst<k>` builders at a new port (the registry's size stays
//! the same). Commit time is when the put's answer arrives (the leader answers once the entry is
//! committed and applied). What each Envoy holds is what it ACKed, as the replicas record it
//! with each ACK's arrival time (`GET /v1/envoys` on every replica, every `--sample-ms`, 10): in
//! sni-cluster mode its clusters alone (the listener never changes), otherwise clusters and
//! listeners both. A revision is held by an Envoy from its first ACK seen of it or a newer one.
//! Printed per run: commit → every Envoy holds it (p50, p99, max over the changes), how many
//! revisions the furthest Envoy was behind when the burst stopped, and the time from the last
//! change's commit until every Envoy holds it (convergence), beside one change's commit → every
//! Envoy ACK measured on the same cluster first.
//!
//! `cargo build --release -p concord -p concord-bench && target/release/bench-burst`;
//! `CONCORD_BIN=path/to/concord` benchmarks another build of the replicas.

use anyhow::{Context, Result, ensure};
use clap::Parser;
use concord_api::PutBuilder;
use concord_bench::{ListenerMode, XdsProtocol};
use concord_harness::envoy::{Envoy, Protocol};
use concord_harness::{Cluster, Options, percentiles};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A burst of API changes against real replicas and Envoys: do the Envoys keep up?
#[derive(Parser)]
#[command(version, long_about = None)]
struct Cli {
    /// Registry sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    sizes: Vec<usize>,
    /// ADS protocols, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sotw,delta")]
    protocols: Vec<XdsProtocol>,
    /// Listener modes, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "filter-chains,sni-cluster"
    )]
    modes: Vec<ListenerMode>,
    /// Changes per second.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Seconds of changes.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// Real Envoys, spread over the replicas.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    envoys: u64,
    /// Milliseconds between reads of the replicas' records of their Envoys' ACKs (a longer
    /// period can miss revisions an Envoy passed through, and so count a later ACK for them).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    sample_ms: u64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Changes measured alone before the burst.
const LONE: usize = 5;

/// Per Envoy, each revision it was seen holding, with the time it ACKed it (µs).
type Seen = Arc<Mutex<BTreeMap<String, BTreeMap<u64, u64>>>>;

/// Reads every replica's record of its Envoys' ACKs every `every` until `stop`. Each record
/// carries the ACK's own arrival time, so a sample's period bounds only which revisions are
/// seen, not when: a revision is held from the first ACK seen of it or a newer one.
///
/// Not Envoy's `version_text` readouts: at 10,000 clusters one `/stats` request costs Envoy's
/// main thread about 100 ms (it walks every cluster's stats), so a sampler of three Envoys
/// measured itself, 450 ms late, and slowed the Envoys' xDS.
async fn sample(
    api: Vec<concord_api::Client>,
    every: Duration,
    sni_cluster: bool,
    seen: Seen,
    stop: Arc<tokio::sync::Notify>,
) {
    // In sni-cluster mode the listener never changes: clusters alone.
    let types: &[&str] = if sni_cluster {
        &["clusters"]
    } else {
        &["clusters", "listeners"]
    };
    loop {
        for a in &api {
            let Ok(v) = a.envoys().await else {
                continue;
            };
            for e in &v.envoys {
                let acks: Option<Vec<(u64, u64)>> = types
                    .iter()
                    .map(|t| {
                        let t = e.of(t)?;
                        Some((t.acked?, t.acked_at_us?))
                    })
                    .collect();
                let Some(acks) = acks else { continue };
                // Held: every type at this revision or newer, from the last of their ACKs.
                let rev = acks.iter().map(|a| a.0).min().unwrap_or(0);
                let at = acks.iter().map(|a| a.1).max().unwrap_or(0);
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                let held = seen
                    .entry(e.node_id.clone())
                    .or_default()
                    .entry(rev)
                    .or_insert(at);
                *held = (*held).min(at);
            }
        }
        tokio::select! {
            _ = stop.notified() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// When Envoy `acks` first held `rev` or newer, if it did.
fn held_at(acks: &BTreeMap<u64, u64>, rev: u64) -> Option<u64> {
    acks.range(rev..).map(|(_, &at)| at).min()
}

async fn run(cli: &Cli, protocol: XdsProtocol, mode: ListenerMode, size: usize) -> Result<()> {
    let label = format!("{}+{}", protocol.flag(), mode.flag());
    println!(
        "{label} with {size} builders, {} Envoys, {} changes/s for {} s (load average {})",
        cli.envoys,
        cli.rate,
        cli.secs,
        concord_bench::load_average()
    );
    let sni_cluster = mode == ListenerMode::SniCluster;
    let mut extra: Vec<String> = ["--listener-mode", mode.flag()].map(String::from).to_vec();
    if sni_cluster {
        extra.extend(["--sni-suffix", "builders.test"].map(String::from));
    }
    let c = Cluster::start(Options {
        extra,
        ..Options::measured()
    })
    .await?;
    let leader = c.leader().await?;
    let rev = c.put_bulk(leader, size).await?;
    let x: Vec<String> = c.nodes.values().map(|r| r.xds.clone()).collect();
    let mut envoys = Vec::new();
    for i in 0..cli.envoys as usize {
        let order: Vec<&str> = (0..x.len())
            .map(|k| x[(i + k) % x.len()].as_str())
            .collect();
        let protocol = match protocol {
            XdsProtocol::Sotw => Protocol::Sotw,
            XdsProtocol::Delta => Protocol::Delta,
        };
        envoys.push(
            // Builders only: no stats stream to the replicas (at 10,000 clusters Envoy's
            // periodic flush would hold up its xDS updates, issue 17).
            Envoy::start_in(
                c.dir(),
                &format!("envoy-{i}"),
                &order,
                true,
                Some(protocol),
                &[
                    c.bootstrap_args(&format!("envoy-{i}"))?,
                    vec!["--no-rollout-stats".into()],
                ]
                .concat(),
            )
            .await?,
        );
    }
    let load_deadline = Duration::from_secs(60) + Duration::from_millis(10 * size as u64);
    c.all_acked_within(cli.envoys as usize, rev, load_deadline)
        .await
        .map_err(|e| e.context(c.logs()))?;
    let api = c.api(leader);
    let put = |k: usize, port: u16| {
        let api = api.clone();
        async move {
            let addr = SocketAddr::from(([127, 0, 2, 1 + (k % 10) as u8], port));
            let id = format!("burst{}", k % 10);
            let body = PutBuilder::new(addr, concord_harness::sni(&id));
            let sent = now_us();
            let w = api.put_builder(&id, &body).await?;
            let at = now_us();
            anyhow::Ok((
                w.revision,
                at,
                Duration::from_micros(at.saturating_sub(sent)),
            ))
        }
    };
    // Changes alone first, each once the last is ACKed everywhere: the Envoys' own apply time
    // on this cluster (the median of `LONE`: one alone is noisy).
    let mut lone = Vec::new();
    for k in 0..LONE {
        let (r, committed, _) = put(k, 29000 + k as u16).await?;
        let acked = c.all_acked(cli.envoys as usize, r).await?;
        lone.push(Duration::from_micros(acked.saturating_sub(committed)));
    }
    let (single, _, _) = percentiles(&mut lone);

    let seen: Seen = Arc::default();
    let stop = Arc::new(tokio::sync::Notify::new());
    let sampler = tokio::spawn(sample(
        c.nodes.keys().map(|&id| c.api(id)).collect(),
        Duration::from_millis(cli.sample_ms),
        sni_cluster,
        seen.clone(),
        stop.clone(),
    ));
    let n = (u64::from(cli.rate) * cli.secs) as usize;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / cli.rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut commits, mut commit_times) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for k in 1..=n {
        tick.tick().await;
        let (rev, at, took) = put(k, 30000 + (k % 30000) as u16).await?;
        commits.push((rev, at));
        commit_times.push(took);
    }
    let &(last, last_at) = commits.last().context("no change")?;
    concord_harness::eventually(
        load_deadline,
        "every Envoy holds the last change",
        || async {
            let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            ensure!(
                seen.len() == cli.envoys as usize,
                "{} Envoys seen",
                seen.len()
            );
            for (id, acks) in seen.iter() {
                ensure!(held_at(acks, last).is_some(), "{id} does not hold {last}");
            }
            Ok(())
        },
    )
    .await?;
    stop.notify_one();
    sampler.await?;
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    let mut latency = Vec::new();
    for &(rev, at) in &commits {
        let held = seen
            .values()
            .map(|acks| held_at(acks, rev))
            .collect::<Option<Vec<u64>>>();
        let held = held.context("an Envoy never held a change it later passed")?;
        let all = held.into_iter().max().unwrap_or(at);
        latency.push(Duration::from_micros(all.saturating_sub(at)));
    }
    // How far behind the furthest Envoy was when the last change committed.
    let behind = seen
        .values()
        .map(|acks| {
            let had = acks
                .iter()
                .filter(|(_, t)| **t <= last_at)
                .map(|(r, _)| *r)
                .max();
            last.saturating_sub(had.unwrap_or(rev))
        })
        .max()
        .unwrap_or(0);
    let converge = seen
        .values()
        .filter_map(|acks| held_at(acks, last))
        .max()
        .unwrap_or(last_at)
        .saturating_sub(last_at) as f64
        / 1e3;
    let (p50, p99, max) = percentiles(&mut latency);
    let (commit, _, _) = percentiles(&mut commit_times);
    // The target: every Envoy holds the last change within two of its own apply times
    // plus a commit.
    let bound = 2.0 * single + commit;
    println!(
        "  {LONE} changes alone: commit -> every Envoy ACKs p50 {single:.1} ms; a put's commit p50 {commit:.1} ms"
    );
    println!(
        "  burst: commit -> every Envoy holds it: n={} p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; furthest Envoy {behind} revisions behind at the last commit; last change -> every Envoy {converge:.1} ms, target <= 2 x alone + commit = {bound:.1} ms: {} (load average {})",
        commits.len(),
        if converge <= bound { "met" } else { "NOT met" },
        concord_bench::load_average()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    for &size in &cli.sizes {
        for &protocol in &cli.protocols {
            for &mode in &cli.modes {
                run(&cli, protocol, mode, size).await.with_context(|| {
                    format!("{}+{} at {size} builders", protocol.flag(), mode.flag())
                })?;
            }
        }
    }
    Ok(())
}
