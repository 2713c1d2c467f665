//! Benchmark of the xDS path with three real replicas and two real Envoys per replica:
//! the time from an API put to the ACK of every connected Envoy (timestamped by the replica that
//! received each ACK), with an empty registry and with 1000 builders registered, and the time from
//! SIGKILL of a replica to its Envoys streaming from another.
//!
//! `cargo build --release -p concord -p concord-bench && target/release/bench-xds [PUTS] [KILLS]` (`--help`)

use anyhow::{Result, bail};
use clap::Parser;
use concord_harness::envoy::Envoy;
use concord_harness::{Cluster, Options, eventually, percentiles};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

async fn put_to_ack(c: &Cluster, leader: u64, n: usize, envoys: usize, label: &str) -> Result<()> {
    let mut lat = Vec::new();
    for i in 0..n {
        let t0 = now_us();
        let rev = if i % 2 == 0 {
            c.put(leader, &format!("churn{i}"), 40000 + (i % 1000) as u16)
                .await?
        } else {
            c.remove(leader, &format!("churn{}", i - 1)).await?
        };
        let acked = c.all_acked(envoys, rev).await?;
        lat.push(Duration::from_micros(acked.saturating_sub(t0)));
    }
    let (p50, p99, max) = percentiles(&mut lat);
    println!(
        "put -> ACK of all {envoys} Envoys, {label}: n={n} p50={p50:.1} ms p99={p99:.1} ms max={max:.1} ms"
    );
    Ok(())
}

/// API put -> every Envoy ACK, and replica death -> Envoys on another replica; see the module header.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// API puts measured (with an empty registry and with 1000 builders).
    #[arg(default_value_t = 200)]
    puts: usize,
    /// Replica SIGKILLs, each timed to its Envoys streaming elsewhere.
    #[arg(default_value_t = 10)]
    kills: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let (puts, kills) = (a.puts, a.kills);
    let mut c = Cluster::start(Options::measured()).await?;
    let x: Vec<String> = c.nodes.values().map(|r| r.xds.clone()).collect();
    let mut envoys = Vec::new();
    for i in 0..6 {
        let first = i % 3;
        let order: Vec<&str> = (0..3).map(|k| x[(first + k) % 3].as_str()).collect();
        envoys.push(Envoy::start(&c, &format!("envoy-{i}"), &order, true).await?);
    }
    let leader = c.leader().await?;
    let rev = c.put(leader, "warmup", 9000).await?;
    c.all_acked(envoys.len(), rev).await?;
    put_to_ack(&c, leader, puts, envoys.len(), "empty registry").await?;

    let rev = c.put_bulk(leader, 1000).await?;
    c.all_acked(envoys.len(), rev).await?;
    put_to_ack(&c, leader, puts, envoys.len(), "1000 builders registered").await?;

    let mut failover = Vec::new();
    for _ in 0..kills {
        // Kill the replica serving the most Envoys.
        let mut busiest = (0, 0);
        for id in c.up() {
            let n = c.envoys_on(id).await?.len();
            if n > busiest.1 {
                busiest = (id, n);
            }
        }
        let (victim, moved) = busiest;
        let t = Instant::now();
        c.node(victim).kill();
        eventually(
            Duration::from_secs(20),
            "Envoys stream from other replicas",
            || async {
                let mut n = 0;
                for id in c.up() {
                    n += c.envoys_on(id).await?.len();
                }
                if n < envoys.len() {
                    bail!("{n} streaming");
                }
                Ok(())
            },
        )
        .await?;
        failover.push(t.elapsed());
        eprintln!(
            "killed node {victim} ({moved} Envoys): streaming again after {:?}",
            t.elapsed()
        );
        c.node(victim).start()?;
        c.leader().await?;
    }
    if !failover.is_empty() {
        let (p50, p99, max) = percentiles(&mut failover);
        println!(
            "SIGKILL replica -> its Envoys streaming from another: n={kills} median={p50:.0} ms p99={p99:.0} ms max={max:.0} ms"
        );
    }
    Ok(())
}
