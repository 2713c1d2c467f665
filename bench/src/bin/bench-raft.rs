//! Benchmark of the replicated registry with three real replicas on loopback:
//! commit latency of sequential puts (to the leader, and through a follower), throughput with
//! concurrent writers, and the time from SIGKILL of the leader to a new leader accepting a write.
//!
//! `cargo build --release -p concord -p concord-bench && target/release/bench-raft [PUTS] [KILLS]` (`--help`)

use anyhow::{Context, Result};
use clap::Parser;
use concord_harness::{Cluster, Options, percentiles};
use std::time::{Duration, Instant};

/// Commit latency, throughput and leader-kill recovery of the replicated registry; see the module header.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Sequential puts measured, to the leader and through a follower.
    #[arg(default_value_t = 1000)]
    puts: u32,
    /// Leader SIGKILLs, each timed to the next accepted write.
    #[arg(default_value_t = 10)]
    kills: u32,
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let (puts, kills) = (a.puts, a.kills);
    let mut c = Cluster::start(Options::measured()).await?;
    let leader = c.leader().await?;
    let follower = c.nodes.keys().copied().find(|&id| id != leader).unwrap();

    for (label, via) in [("leader", leader), ("follower (forwarded)", follower)] {
        let mut lat = Vec::new();
        for i in 0..puts {
            let t = Instant::now();
            c.put(via, &format!("seq-{via}-{i}"), 10000 + (i % 50000) as u16)
                .await?;
            lat.push(t.elapsed());
        }
        let (p50, p99, max) = percentiles(&mut lat);
        println!(
            "sequential puts via {label}: n={puts} p50={p50:.2} ms p99={p99:.2} ms max={max:.2} ms"
        );
    }

    for writers in [4u32, 16] {
        let per = puts / writers;
        let t = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..writers {
            // A client (and connection) of its own per writer, as separate programs would have.
            let api = concord_api::Client::new(&c.nodes[&leader].admin)?;
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                for i in 0..per {
                    let id = format!("c{writers}-{w}-{i}");
                    let addr = ([127, 0, 0, 1], (1000 + i) as u16).into();
                    let body = concord_api::PutBuilder::new(addr, concord_harness::sni(&id));
                    let s = Instant::now();
                    api.put_builder(&id, &body).await.context("put failed")?;
                    lat.push(s.elapsed());
                }
                anyhow::Ok(lat)
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await??);
        }
        let secs = t.elapsed().as_secs_f64();
        let (p50, p99, max) = percentiles(&mut lat);
        println!(
            "concurrent puts, {writers} writers: {} puts in {secs:.2} s = {:.0} puts/s, p50={p50:.2} ms p99={p99:.2} ms max={max:.2} ms",
            lat.len(),
            lat.len() as f64 / secs
        );
    }

    let mut failover = Vec::new();
    for k in 0..kills {
        let leader = c.leader().await?;
        let via = c.nodes.keys().copied().find(|&id| id != leader).unwrap();
        let t = Instant::now();
        c.node(leader).kill();
        // The replica retries through the election; the put returns once a new leader commits.
        c.put(via, &format!("kill-{k}"), 30000).await?;
        failover.push(t.elapsed());
        c.node(leader).start()?;
        c.converged(Duration::from_secs(30)).await?;
    }
    if !failover.is_empty() {
        let (p50, _, max) = percentiles(&mut failover);
        println!(
            "SIGKILL leader -> write committed by new leader: n={kills} median={p50:.0} ms max={max:.0} ms"
        );
    }
    Ok(())
}
