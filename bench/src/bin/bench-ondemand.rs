//! Benchmark of an Envoy's start at a large registry (issue 17), on-demand clusters against
//! sni-cluster mode: three real replicas over TLS with `--sizes` builders (loaded through the
//! API in batches of 1000) and one real TLS builder `probe0`, then a real Envoy (delta) started
//! `--runs` times per mode. Per start it measures
//!
//! - start → routable: from spawning Envoy until a TLS connection with `probe0`'s SNI through it
//!   reaches that builder (its certificate checked; probes retry 5 ms after a failure), so for
//!   sni-cluster mode the time to take every cluster, for on-demand the time to take the
//!   listener and ask for one;
//! - Envoy's resident memory (VmRSS) and its heap in use (`/memory`), read once it routes;
//! - the clusters Envoy holds then (`cluster_manager.active_clusters`).
//!
//! sni-cluster: replicas in `--listener-mode sni-cluster`, Envoy with the wildcard cluster
//! subscription. on-demand: replicas in `--listener-mode on-demand`, Envoy bootstrapped with
//! `--on-demand-clusters`. Both without the stats stream (`--no-rollout-stats`: at 10,000
//! clusters Envoy's periodic flush would hold up its xDS updates).
//!
//! `cargo build --release -p concord -p concord-bench && target/release/bench-ondemand --help`

use anyhow::{Context, Result, ensure};
use clap::Parser;
use concord_harness::envoy::{Envoy, EnvoyOptions, Protocol};
use concord_harness::tls::{TestCa, TlsBuilder, probe};
use concord_harness::{Cluster, Options, percentiles, sni};
use std::time::{Duration, Instant};

/// Envoy start time and memory at large registries, on-demand clusters against sni-cluster mode.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Registry sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    sizes: Vec<usize>,
    /// Envoy starts per mode and size.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Modes, comma separated: sni-cluster, on-demand.
    #[arg(long, value_delimiter = ',', default_value = "sni-cluster,on-demand")]
    modes: Vec<String>,
    /// How long one Envoy may take to route, in seconds.
    #[arg(long, default_value_t = 900)]
    start_timeout_secs: u64,
}

/// One start's figures.
struct Start {
    /// `None`: not routable within `--start-timeout-secs` (the memory is read then).
    routable_ms: Option<f64>,
    rss_mib: f64,
    /// Envoy's heap and its clusters, when its admin API answers (not while it is busy).
    heap_mib: Option<f64>,
    clusters: Option<u64>,
}

async fn start_once(c: &Cluster, ca: &TestCa, mode: &str, n: usize, a: &Args) -> Result<Start> {
    let node_id = format!("envoy-{mode}-{n}");
    let mut bootstrap = c.bootstrap_args(&node_id)?;
    bootstrap.push("--no-rollout-stats".into());
    if mode == "on-demand" {
        bootstrap.push("--on-demand-clusters".into());
    }
    let servers: Vec<String> = c.nodes.values().map(|r| r.xds.clone()).collect();
    let servers: Vec<&str> = servers.iter().map(String::as_str).collect();
    let opts = EnvoyOptions {
        prefer_first: true,
        protocol: Some(Protocol::Delta),
        bootstrap,
        ..EnvoyOptions::default()
    };
    let t0 = Instant::now();
    let mut e = Envoy::launch(c.dir(), &node_id, &servers, &opts).await?;
    let deadline = t0 + Duration::from_secs(a.start_timeout_secs);
    let want = "builder probe0";
    let routable_ms = loop {
        if let Ok(got) = probe(ca, e.listener, &sni("probe0")).await
            && got == want
        {
            break Some(t0.elapsed().as_secs_f64() * 1e3);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let pid = e.pid().context("Envoy's pid")?;
    let rss_mib = concord_bench::rss_mib(pid);
    // A busy Envoy's admin API may not answer: then only what /proc says.
    let admin = |path: &'static str| {
        let e = &e;
        async move {
            tokio::time::timeout(Duration::from_secs(5), e.get(path))
                .await
                .ok()?
                .ok()
        }
    };
    let heap_mib = admin("/memory").await.and_then(|m| {
        let m: serde_json::Value = serde_json::from_str(&m).ok()?;
        Some(m["allocated"].as_str()?.parse::<f64>().ok()? / 1024.0 / 1024.0)
    });
    let clusters = admin("/stats?filter=^cluster_manager.active_clusters$")
        .await
        .and_then(|s| s.split(": ").nth(1)?.trim().parse().ok());
    // An Envoy busy with 100,000 clusters may not stop in time on SIGTERM.
    if e.stop(Duration::from_secs(5)).is_err() {
        e.kill();
    }
    Ok(Start {
        routable_ms,
        rss_mib,
        heap_mib,
        clusters,
    })
}

async fn run(a: &Args, mode: &str, n: usize) -> Result<()> {
    let listener_mode = if mode == "on-demand" {
        "on-demand"
    } else {
        "sni-cluster"
    };
    let c = Cluster::start(Options {
        extra: [
            "--listener-mode",
            listener_mode,
            "--sni-suffix",
            "builders.test",
        ]
        .map(String::from)
        .to_vec(),
        ..Options::measured()
    })
    .await?;
    let ca = TestCa::new()?;
    let leader = c.leader().await?;
    let loaded = Instant::now();
    c.put_bulk(leader, n).await?;
    let b = TlsBuilder::start(&ca, "probe0", &sni("probe0")).await?;
    let rev = c.put_at(leader, "probe0", b.addr, &sni("probe0")).await?;
    // Every replica has applied the registry before an Envoy comes.
    for id in c.nodes.keys().copied() {
        concord_harness::eventually(Duration::from_secs(120), "replica applied", || async {
            let have = c.api(id).status().await?.revision;
            ensure!(have >= rev, "node {id} at {have}, want {rev}");
            Ok(())
        })
        .await?;
    }
    println!(
        "{mode} at {n} builders (+1): registry loaded in {:.1} s, load average {}",
        loaded.elapsed().as_secs_f64(),
        concord_bench::load_average()
    );
    let mut starts = Vec::new();
    for i in 0..a.runs {
        let s = start_once(&c, &ca, mode, n, a).await?;
        let show =
            |v: Option<f64>, unit: &str| v.map_or("?".to_string(), |v| format!("{v:.0} {unit}"));
        println!(
            "  start {i}: routable {}, RSS {:.0} MiB, heap {}, {} clusters",
            s.routable_ms.map_or(
                format!("not within {} s", a.start_timeout_secs),
                |ms| format!("{ms:.0} ms")
            ),
            s.rss_mib,
            show(s.heap_mib, "MiB"),
            s.clusters.map_or("?".to_string(), |c| c.to_string()),
        );
        let timed_out = s.routable_ms.is_none();
        starts.push(s);
        if timed_out {
            // Another start would take as long: the figure is "longer than the timeout".
            break;
        }
    }
    let mut ms: Vec<Duration> = starts
        .iter()
        .filter_map(|s| s.routable_ms)
        .map(|ms| Duration::from_secs_f64(ms / 1e3))
        .collect();
    if ms.is_empty() {
        println!(
            "{mode:>11} {n:>7} builders: not routable within {} s; RSS then {:.0} MiB",
            a.start_timeout_secs,
            starts.last().map_or(0.0, |s| s.rss_mib)
        );
        return Ok(());
    }
    let (p50, p99, max) = percentiles(&mut ms);
    let mut rss: Vec<f64> = starts.iter().map(|s| s.rss_mib).collect();
    rss.sort_by(f64::total_cmp);
    let (rss50, rss_max) = (rss[(rss.len() - 1) / 2], rss[rss.len() - 1]);
    println!(
        "{mode:>11} {n:>7} builders: start -> routable p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms; RSS p50 {rss50:.0} MiB, max {rss_max:.0} MiB; clusters held {} (n={})",
        starts
            .last()
            .and_then(|s| s.clusters)
            .map_or("?".to_string(), |c| c.to_string()),
        ms.len()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    for &n in &a.sizes {
        for mode in &a.modes {
            ensure!(
                mode == "sni-cluster" || mode == "on-demand",
                "unknown mode {mode:?}: sni-cluster or on-demand"
            );
            run(&a, mode, n).await?;
        }
    }
    Ok(())
}
