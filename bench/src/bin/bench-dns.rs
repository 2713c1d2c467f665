//! Benchmark of DNS discovery with three real replicas, two real Envoys per replica and BIND 9:
//! the time from a DNS change (nsupdate answered, so the record is served) to the ACK of every
//! Envoy at the default 100 ms poll; the polling leader's CPU with 10 and with 1000 builders; and
//! during repeated leader kills, the time from a change made right after the kill to every Envoy.
//!
//! `cargo build --release -p concord -p concord-bench && target/release/bench-dns [CHANGES] [KILLS]` (`--help`)

use anyhow::{Result, bail};
use clap::Parser;
use concord_bench::cpu_secs;
use concord_harness::dns::Bind;
use concord_harness::envoy::Envoy;
use concord_harness::{Cluster, Options, eventually, percentiles};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

async fn revision(c: &Cluster) -> Result<u64> {
    let l = c.leader().await?;
    Ok(c.status(l).await?.revision)
}

/// `n` Fly TXT entries (about 50 bytes each, so 1000 fit in one record of one DNS message).
fn entries(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "instance=b{i},app=bench,ip=10.2.{}.{},region=ord",
                i / 250,
                i % 250 + 1
            )
        })
        .collect()
}

async fn leader_cpu(c: &mut Cluster, label: &str) -> Result<()> {
    let leader = c.leader().await?;
    let pids: Vec<(u64, u32)> = c
        .nodes
        .iter()
        .filter_map(|(&id, r)| r.pid().map(|p| (id, p)))
        .collect();
    let before: Vec<f64> = pids
        .iter()
        .map(|(_, p)| cpu_secs(*p).unwrap_or(0.0))
        .collect();
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    for ((id, pid), b) in pids.iter().zip(before) {
        let used = cpu_secs(*pid)? - b;
        println!(
            "CPU {label}: node {id}{} {:.1}% of one core over {window:?}",
            if *id == leader {
                " (leader, polling)"
            } else {
                ""
            },
            100.0 * used / window.as_secs_f64()
        );
    }
    Ok(())
}

/// DNS change -> every Envoy ACK, poller CPU, and changes across leader kills; see the module header.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// DNS changes measured.
    #[arg(default_value_t = 200)]
    changes: usize,
    /// Leader kills, each followed by a DNS change.
    #[arg(default_value_t = 10)]
    kills: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let (changes, kills) = (a.changes, a.kills);
    let bind = Bind::start().await?;
    bind.set_instances(&entries(10))?;
    let mut c = Cluster::start(Options {
        extra: vec![
            "--dns-server".into(),
            bind.addr(),
            "--dns-source".into(),
            "txt:_instances.internal:8443".into(),
        ],
        ..Options::measured()
    })
    .await?;
    let x: Vec<String> = c.nodes.values().map(|r| r.xds.clone()).collect();
    let mut envoys = Vec::new();
    for i in 0..6 {
        let order: Vec<&str> = (0..3).map(|k| x[(i + k) % 3].as_str()).collect();
        envoys.push(Envoy::start(&c, &format!("envoy-{i}"), &order, true).await?);
    }
    let n = envoys.len();
    let r0 = revision(&c).await?;
    c.all_acked(n, r0).await?;

    // DNS change -> every Envoy's ACK.
    let mut lat = Vec::new();
    let mut update_time = Vec::new();
    let mut live = 10;
    for _ in 0..changes {
        let before = revision(&c).await?;
        live = if live == 10 { 11 } else { 10 };
        let t_start = Instant::now();
        bind.set_instances(&entries(live))?;
        update_time.push(t_start.elapsed());
        let served = now_us();
        let acked = c.all_acked(n, before + 1).await?;
        lat.push(Duration::from_micros(acked.saturating_sub(served)));
    }
    let (p50, p99, max) = percentiles(&mut lat);
    let (u50, _, _) = percentiles(&mut update_time);
    println!(
        "DNS change -> ACK of all {n} Envoys at 100 ms polls: n={changes} p50={p50:.1} ms p99={p99:.1} ms max={max:.1} ms (nsupdate itself: p50 {u50:.1} ms, not counted)"
    );

    leader_cpu(&mut c, "10 builders").await?;
    bind.set_instances(&entries(1000))?;
    eventually(Duration::from_secs(30), "1000 builders", || async {
        let l = c.leader().await?;
        let s = c.status(l).await?;
        if s.builders < 1000 {
            bail!("{s:?}");
        }
        Ok(())
    })
    .await?;
    leader_cpu(&mut c, "1000 builders (one TXT record, over TCP)").await?;

    // Leader kills: a change right after each kill, to every Envoy.
    bind.set_instances(&entries(10))?;
    eventually(Duration::from_secs(30), "back to 10 builders", || async {
        let l = c.leader().await?;
        let s = c.status(l).await?;
        if s.builders != 10 {
            bail!("{s:?}");
        }
        Ok(())
    })
    .await?;
    let mut gaps = Vec::new();
    for k in 0..kills {
        let leader = c.leader().await?;
        let before = revision(&c).await?;
        c.node(leader).kill();
        bind.set_instances(&entries(11 - (k % 2)))?;
        let served = now_us();
        let acked = c.all_acked(n, before + 1).await?;
        gaps.push(Duration::from_micros(acked.saturating_sub(served)));
        c.node(leader).start()?;
        c.leader().await?;
        c.converged(Duration::from_secs(30)).await?;
    }
    if !gaps.is_empty() {
        let (p50, _, max) = percentiles(&mut gaps);
        println!(
            "leader SIGKILLed, then a DNS change: until every Envoy ACKs it: n={kills} median={p50:.0} ms max={max:.0} ms"
        );
    }
    Ok(())
}
