//! Benchmark of tracing's cost, and where a change's time goes, with three real replicas, two
//! real Envoys per replica and BIND 9. The same workload runs three times, on a fresh cluster
//! each time: tracing off; on at 100% sampling with a real OTLP receiver; on with a collector that
//! accepts connections and never answers. Each run measures an API write until every Envoy ACKs
//! it, and a DNS change (nsupdate answered) until every Envoy ACKs it at the default 100 ms poll.
//! From the receiver's traces of the DNS changes it prints the per-stage breakdown.
//!
//! `cargo build --release -p concord -p concord-bench && target/release/bench-trace [CHANGES]` (`--help`)

use anyhow::Result;
use clap::Parser;
use concord_harness::dns::Bind;
use concord_harness::envoy::Envoy;
use concord_harness::otlp::{Collector, ReceivedSpan};
use concord_harness::{Cluster, Options, percentiles};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn entries(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("instance=b{i},app=bench,ip=10.2.0.{},region=ord", i + 1))
        .collect()
}

async fn revision(c: &Cluster) -> Result<u64> {
    let l = c.leader().await?;
    Ok(c.status(l).await?.revision)
}

/// Runs the workload; returns (API write -> all ACK, DNS change -> all ACK) samples.
async fn run(
    bind: &Bind,
    changes: usize,
    tracing: &[String],
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    bind.set_instances(&entries(10))?;
    let mut extra = vec![
        "--dns-server".into(),
        bind.addr(),
        "--dns-source".into(),
        "txt:_instances.internal:8443".into(),
    ];
    extra.extend_from_slice(tracing);
    let c = Cluster::start(Options {
        extra,
        ..Options::measured()
    })
    .await?;
    let x: Vec<String> = c.nodes.values().map(|r| r.xds.clone()).collect();
    let mut envoys = Vec::new();
    for i in 0..6 {
        envoys.push(Envoy::start(&c, &format!("envoy-{i}"), &[&x[i % 3]], false).await?);
    }
    let n = envoys.len();
    c.all_acked(n, revision(&c).await?).await?;
    let mut api = Vec::new();
    for i in 0..changes {
        let node = 1 + (i as u64 % 3);
        let start = now_us();
        let rev = c.put(node, "api-bench", 9000 + (i % 2) as u16).await?;
        let acked = c.all_acked(n, rev).await?;
        api.push(Duration::from_micros(acked.saturating_sub(start)));
    }
    let mut dns = Vec::new();
    let mut live = 10;
    for _ in 0..changes {
        let before = revision(&c).await?;
        live = if live == 10 { 11 } else { 10 };
        bind.set_instances(&entries(live))?;
        let served = now_us();
        let acked = c.all_acked(n, before + 1).await?;
        dns.push(Duration::from_micros(acked.saturating_sub(served)));
    }
    Ok((api, dns))
}

fn report(label: &str, api: &mut [Duration], dns: &mut [Duration]) {
    let (a50, a99, amax) = percentiles(api);
    let (d50, d99, dmax) = percentiles(dns);
    println!(
        "{label:<34} API write -> 6 ACKs p50 {a50:6.1} p99 {a99:6.1} max {amax:6.1} ms | DNS change -> 6 ACKs p50 {d50:6.1} p99 {d99:6.1} max {dmax:6.1} ms"
    );
}

/// Per-stage breakdown of the DNS changes' traces, in milliseconds (medians over traces).
fn stages(spans: &[ReceivedSpan]) -> Result<()> {
    let mut traces: BTreeMap<&str, Vec<&ReceivedSpan>> = BTreeMap::new();
    for s in spans {
        traces.entry(&s.trace_id).or_default().push(s);
    }
    let ms = |ns: u64| ns as f64 / 1e6;
    let mut rows: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut add = |k: &'static str, v: f64| {
        rows.entry(k)
            .or_default()
            .push(Duration::from_secs_f64(v.max(0.0) / 1000.0))
    };
    let mut complete = 0;
    for t in traces.values() {
        let get = |name: &'static str| t.iter().filter(move |s| s.name == name);
        let (Some(poll), Some(commit)) = (get("discovery.poll").next(), get("raft.commit").next())
        else {
            continue;
        };
        // One builder added or removed: the measured changes, not the initial load.
        let moved = poll.attr("builders.added") == "1" || poll.attr("builders.removed") == "1";
        if !moved {
            continue;
        }
        let applies: Vec<_> = get("registry.apply").collect();
        let pushes: Vec<_> = get("xds.push").collect();
        if applies.len() < 3 || pushes.len() < 6 {
            continue;
        }
        complete += 1;
        let t0 = poll.start_ns;
        add("1 poll (DNS query + diff)", poll.millis());
        add(
            "2 poll end -> commit start",
            ms(commit.start_ns.saturating_sub(poll.end_ns)),
        );
        add("3 commit (replicate, fsync, leader apply)", commit.millis());
        for a in &applies {
            add(
                "4 commit start -> apply, each replica",
                ms(a.start_ns.saturating_sub(commit.start_ns)),
            );
        }
        for p in &pushes {
            let apply = applies.iter().find(|a| a.span_id == p.parent_span_id);
            if let Some(a) = apply {
                add(
                    "5 apply end -> push, each Envoy",
                    ms(p.start_ns.saturating_sub(a.end_ns)),
                );
            }
            add("6 push -> ACK, each Envoy", p.millis());
        }
        let last = pushes.iter().map(|p| p.end_ns).max().unwrap_or(t0);
        add("7 poll start -> last ACK", ms(last.saturating_sub(t0)));
    }
    println!("per-stage breakdown over {complete} complete DNS-change traces (ms):");
    for (k, v) in rows.iter_mut() {
        let (p50, p99, max) = percentiles(v);
        println!("  {k:<44} p50 {p50:7.2} p99 {p99:7.2} max {max:7.2}");
    }
    Ok(())
}

/// Tracing's cost and a change's per-stage breakdown; see the module header.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// API and DNS changes measured per run.
    #[arg(default_value_t = 200)]
    changes: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let changes = a.changes;
    let bind = Bind::start().await?;

    let (mut api, mut dns) = run(&bind, changes, &[]).await?;
    report("tracing off", &mut api, &mut dns);

    let collector = Collector::start().await?;
    let on = ["--otlp-endpoint".to_string(), collector.endpoint()];
    let (mut api, mut dns) = run(&bind, changes, &on).await?;
    report("tracing on (100%), collector up", &mut api, &mut dns);
    // Let the last batch arrive before reading the traces.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spans = collector.spans();
    println!("{} spans received", spans.len());
    stages(&spans)?;

    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_at = format!("http://{}", silent.local_addr()?);
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let off = ["--otlp-endpoint".to_string(), silent_at];
    let (mut api, mut dns) = run(&bind, changes, &off).await?;
    report("tracing on, collector silent", &mut api, &mut dns);
    Ok(())
}
