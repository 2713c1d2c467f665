//! Benchmark of the replicated registry with three real replicas on loopback:
//! commit latency of sequential puts (to the leader, and through a follower), throughput with
//! concurrent writers, and the time from SIGKILL of the leader to a new leader accepting a write.
//!
//! `cargo build --release -p concord -p concord-bench && target/release/bench-raft [PUTS] [KILLS]` (`--help`)

use anyhow::Result;
use clap::Parser;
use concord_tests::{Cluster, Options, percentiles};
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
            let admin = c.nodes[&leader].admin.clone();
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut lat = Vec::new();
                for i in 0..per {
                    let body = serde_json::json!({
                        "addr": format!("127.0.0.1:{}", 1000 + i),
                        "sni": concord_tests::sni(&format!("c{writers}-{w}-{i}")),
                    });
                    let s = Instant::now();
                    let r = http
                        .put(format!("{admin}/v1/builders/c{writers}-{w}-{i}"))
                        .json(&body)
                        .send()
                        .await?;
                    anyhow::ensure!(r.status().is_success(), "put failed: {}", r.status());
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
