//! Load generator for the ADS server: N simulated Envoy streams (state of the world or delta),
//! to one replica of a real three-node cluster or spread over all three, each ACKing every
//! response at once as Envoy does, each one connection and one task
//! ([`concord_bench::ads_client`]). It then drives registry changes through the API and records,
//! per stream, the time from the change's API put to the stream's ACK of it; and reports
//! p50/p99/max over all streams, the last stream's ACK per change, and each replica's CPU time
//! and resident memory (so memory per stream, beyond the shared resources).
//!
//! `cargo build --release -p concord -p concord-bench && target/release/load-xds --help` lists
//! the flags: streams, protocol, builders, changes, spread over replicas, listener mode, plaintext.

use anyhow::{Context, Result, bail};
use clap::Parser;
use concord_bench::ads_client::{KEEPALIVE, SimulatedEnvoy};
use concord_bench::{ListenerMode, XdsProtocol};
use concord_harness::ads::CDS;
use concord_harness::{Cluster, Options, percentiles};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Set once the measurement is over.
static DONE: AtomicBool = AtomicBool::new(false);

/// N simulated Envoy streams against a real three-node cluster; see the module header.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Simulated Envoy streams.
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// xDS protocol of every stream.
    #[arg(long, value_enum, default_value_t = XdsProtocol::Delta)]
    protocol: XdsProtocol,
    /// Builders registered before the streams connect.
    #[arg(long, default_value_t = 100)]
    builders: usize,
    /// Measured builder changes.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Spread the streams over all three replicas (default: all on node 1).
    #[arg(long)]
    spread: bool,
    /// The replicas' listener mode.
    #[arg(long, value_enum, default_value_t = ListenerMode::FilterChains)]
    listener_mode: ListenerMode,
    /// xDS and peers without TLS, to see what TLS costs per stream.
    #[arg(long)]
    plaintext: bool,
    /// No HTTP/2 keepalive PING from the streams (Envoy under concord's bootstrap sends one a
    /// second), to see what the keepalives cost.
    #[arg(long)]
    no_keepalive: bool,
}

/// One ACK: which stream, of which revision's clusters, when.
type Ack = (usize, u64, Instant);

/// What a process has used so far.
#[derive(Clone, Copy)]
struct Usage {
    /// CPU seconds, user and system.
    cpu: f64,
    /// Resident memory, KiB.
    rss: u64,
    /// Read and write system calls (`/proc/<pid>/io`: every read, write and their vectored
    /// forms), to see how many a stream costs per change.
    syscalls: (u64, u64),
}

fn usage(pid: u32) -> Result<Usage> {
    let field = |file: &str, key: &str| -> Result<u64> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}"))?;
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {key} in /proc/{pid}/{file}"))
    };
    Ok(Usage {
        cpu: concord_bench::cpu_secs(pid)?,
        rss: field("status", "VmRSS:")?,
        syscalls: (field("io", "syscr:")?, field("io", "syscw:")?),
    })
}

/// Waits until every stream has ACKed `rev` (or newer) and returns when each did.
async fn wait_all(
    acked: &mut [u64],
    rx: &mut mpsc::UnboundedReceiver<Ack>,
    rev: u64,
) -> Result<Vec<Instant>> {
    let now = Instant::now();
    let mut got: Vec<Option<Instant>> = acked.iter().map(|r| (*r >= rev).then_some(now)).collect();
    let deadline = now + Duration::from_secs(60);
    while got.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((i, r, at))) = tokio::time::timeout(left, rx.recv()).await else {
            let missing = got.iter().filter(|g| g.is_none()).count();
            bail!("{missing} streams did not ACK revision {rev} within 60 s");
        };
        acked[i] = acked[i].max(r);
        if r >= rev && got[i].is_none() {
            got[i] = Some(at);
        }
    }
    Ok(got.into_iter().flatten().collect())
}

// One thread: the simulated Envoys share the replica's two cores, and a second worker thread
// cost them a third more CPU in wakeups between the two (48 -> 36 µs per stream and change).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let a = Args::parse();
    let mut opts = Options::measured();
    opts.tls = !a.plaintext;
    opts.extra = vec!["--listener-mode".into(), a.listener_mode.flag().into()];
    if a.listener_mode == ListenerMode::SniCluster {
        opts.extra
            .extend(["--sni-suffix".into(), "builders.test".into()]);
    }
    let c = Cluster::start(opts).await?;
    let leader = c.leader().await?;
    c.put_bulk(leader, a.builders).await?;
    let (rev0, _) = c.converged(Duration::from_secs(30)).await?;
    let ids: Vec<u64> = if a.spread { vec![1, 2, 3] } else { vec![1] };
    let pids: HashMap<u64, u32> = c
        .nodes
        .iter()
        .filter_map(|(id, r)| Some((*id, r.pid()?)))
        .collect();
    let before: HashMap<u64, Usage> = pids
        .iter()
        .map(|(id, pid)| Ok((*id, usage(*pid)?)))
        .collect::<Result<_>>()?;

    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Ack>();
    let opened = Instant::now();
    // One connection per stream, as Envoys have (over TLS, as one client identity).
    let tls = c.xds_client_config("load")?;
    for i in 0..a.streams {
        let envoy = SimulatedEnvoy {
            addr: c.nodes[&ids[i % ids.len()]].xds.clone(),
            tls: tls.clone(),
            delta: a.protocol == XdsProtocol::Delta,
            node_id: format!("load-{i}"),
            keepalive: (!a.no_keepalive).then_some(KEEPALIVE),
        };
        let tcp = envoy.connect().await?;
        let acks = ack_tx.clone();
        tokio::spawn(async move {
            let on_ack = |type_url: &str, revision| {
                if type_url == CDS {
                    let _ = acks.send((i, revision, Instant::now()));
                }
            };
            if let Err(e) = envoy.run(tcp, on_ack).await {
                // At the end the cluster goes away under the streams: say nothing then.
                if !DONE.load(Ordering::Relaxed) {
                    eprintln!("stream {i}: {e:#}");
                }
            }
        });
    }
    // Every stream's newest ACKed revision.
    let mut acked = vec![0u64; a.streams];
    wait_all(&mut acked, &mut ack_rx, rev0).await?;
    let synced = opened.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_open: HashMap<u64, Usage> = pids
        .iter()
        .map(|(id, pid)| Ok((*id, usage(*pid)?)))
        .collect::<Result<_>>()?;
    let own_before = concord_bench::cpu_secs(std::process::id())?;

    let mut all = Vec::new();
    let mut last = Vec::new();
    for k in 0..a.changes {
        let t0 = Instant::now();
        let rev = if k % 2 == 0 {
            c.put(leader, &format!("churn{k}"), 40000 + (k % 1000) as u16)
                .await?
        } else {
            c.remove(leader, &format!("churn{}", k - 1)).await?
        };
        let times = wait_all(&mut acked, &mut ack_rx, rev).await?;
        let lat: Vec<Duration> = times
            .iter()
            .map(|t| t.saturating_duration_since(t0))
            .collect();
        last.push(*lat.iter().max().expect("streams"));
        all.extend(lat);
    }
    let after: HashMap<u64, Usage> = pids
        .iter()
        .map(|(id, pid)| Ok((*id, usage(*pid)?)))
        .collect::<Result<_>>()?;
    let own = concord_bench::cpu_secs(std::process::id())? - own_before;

    DONE.store(true, Ordering::Relaxed);
    println!(
        "{} {} streams on node(s) {ids:?}, {} builders, {} mode, {}, {}: all synced in {:.0} ms",
        a.streams,
        a.protocol.flag(),
        a.builders,
        a.listener_mode.flag(),
        if a.plaintext { "plaintext" } else { "TLS" },
        if a.no_keepalive {
            "no keepalive".to_string()
        } else {
            format!("a keepalive PING every {KEEPALIVE:?}")
        },
        synced.as_secs_f64() * 1e3
    );
    let (p50, p99, max) = percentiles(&mut all);
    println!(
        "API put -> ACK, every stream, {} changes: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
        a.changes
    );
    let (p50, p99, max) = percentiles(&mut last);
    println!("API put -> last stream's ACK: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms");
    println!(
        "load generator (the simulated Envoys, on the same cores): CPU {own:.2} s over the \
         changes, {:.1} µs per stream and change",
        own * 1e6 / (a.streams * a.changes) as f64
    );
    for (id, u0) in &before {
        let (u1, u2) = (after_open[id], after[id]);
        let on = if ids.contains(id) {
            a.streams / ids.len()
        } else {
            0
        };
        let per_stream = if on > 0 {
            let per = (on * a.changes) as f64;
            format!(
                ", {:.1} KiB per stream; per stream and change {:.1} µs CPU, {:.2} reads and \
                 {:.2} writes",
                (u1.rss as f64 - u0.rss as f64) / on as f64,
                (u2.cpu - u1.cpu) * 1e6 / per,
                (u2.syscalls.0 - u1.syscalls.0) as f64 / per,
                (u2.syscalls.1 - u1.syscalls.1) as f64 / per,
            )
        } else {
            String::new()
        };
        println!(
            "node {id}: {on} streams; RSS {} KiB before, {} KiB with streams, {} KiB at the end; \
             CPU {:.2} s opening, {:.2} s over the changes{per_stream}",
            u0.rss,
            u1.rss,
            u2.rss,
            u1.cpu - u0.cpu,
            u2.cpu - u1.cpu
        );
    }
    Ok(())
}
