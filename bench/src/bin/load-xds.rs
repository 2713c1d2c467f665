//! Load generator for the ADS server: N simulated Envoy streams (state of the world or delta),
//! to one replica of a real three-node cluster or spread over all three, each ACKing every
//! response at once as Envoy does. It then drives registry changes through the API and records,
//! per stream, the time from the change's API put to the stream's ACK of it; and reports
//! p50/p99/max over all streams, the last stream's ACK per change, and each replica's CPU time
//! and resident memory (so memory per stream, beyond the shared resources).
//!
//! `cargo build --release -p concord -p concord-bench && target/release/load-xds --help` lists
//! the flags: streams, protocol, builders, changes, spread over replicas, listener mode, plaintext.

use anyhow::{Result, bail};
use clap::Parser;
use concord_bench::{ListenerMode, XdsProtocol};
use concord_harness::{Cluster, Options, percentiles};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Set once the measurement is over.
static DONE: AtomicBool = AtomicBool::new(false);

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

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
}

/// One ACK: which stream, of which revision's clusters, when.
type Ack = (usize, u64, Instant);

/// A simulated Envoy on `xds`: subscribes to clusters and listeners and ACKs every response,
/// reporting each clusters ACK on `acks`.
async fn stream(
    i: usize,
    channel: tonic::transport::Channel,
    delta: bool,
    acks: mpsc::UnboundedSender<Ack>,
) -> Result<()> {
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let node = Some(Node {
        id: format!("load-{i}"),
        cluster: "load".into(),
        ..Default::default()
    });
    if delta {
        let (tx, rx) = mpsc::channel(16);
        for t in [CDS, LDS] {
            tx.send(DeltaDiscoveryRequest {
                node: node.clone(),
                type_url: t.into(),
                ..Default::default()
            })
            .await?;
        }
        let mut inbound = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        while let Some(r) = inbound.message().await? {
            tx.send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            })
            .await?;
            if r.type_url == CDS {
                let _ = acks.send((i, r.system_version_info.parse()?, Instant::now()));
            }
        }
    } else {
        let (tx, rx) = mpsc::channel(16);
        for t in [CDS, LDS] {
            tx.send(DiscoveryRequest {
                node: node.clone(),
                type_url: t.into(),
                ..Default::default()
            })
            .await?;
        }
        let mut inbound = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        while let Some(r) = inbound.message().await? {
            tx.send(DiscoveryRequest {
                type_url: r.type_url.clone(),
                version_info: r.version_info.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            })
            .await?;
            if r.type_url == CDS {
                let _ = acks.send((i, r.version_info.parse()?, Instant::now()));
            }
        }
    }
    Ok(())
}

/// CPU seconds (user + system) and resident memory (KiB) of a process.
fn usage(pid: u32) -> Result<(f64, u64)> {
    let cpu = concord_bench::cpu_secs(pid)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Ok((cpu, rss))
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

#[tokio::main]
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
    let before: HashMap<u64, (f64, u64)> = pids
        .iter()
        .map(|(id, pid)| Ok((*id, usage(*pid)?)))
        .collect::<Result<_>>()?;

    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Ack>();
    let opened = Instant::now();
    for i in 0..a.streams {
        let xds = c.nodes[&ids[i % ids.len()]].xds.clone();
        // One connection per stream, as Envoys have (over TLS, as one client identity).
        let channel = c.xds_channel(&xds, "load").await?;
        let acks = ack_tx.clone();
        tokio::spawn(async move {
            if let Err(e) = stream(i, channel, a.protocol == XdsProtocol::Delta, acks).await {
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
    let after_open: HashMap<u64, (f64, u64)> = pids
        .iter()
        .map(|(id, pid)| Ok((*id, usage(*pid)?)))
        .collect::<Result<_>>()?;

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
    let after: HashMap<u64, (f64, u64)> = pids
        .iter()
        .map(|(id, pid)| Ok((*id, usage(*pid)?)))
        .collect::<Result<_>>()?;

    DONE.store(true, Ordering::Relaxed);
    println!(
        "{} {} streams on node(s) {ids:?}, {} builders, {} mode: all synced in {:.0} ms",
        a.streams,
        a.protocol.flag(),
        a.builders,
        a.listener_mode.flag(),
        synced.as_secs_f64() * 1e3
    );
    let (p50, p99, max) = percentiles(&mut all);
    println!(
        "API put -> ACK, every stream, {} changes: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
        a.changes
    );
    let (p50, p99, max) = percentiles(&mut last);
    println!("API put -> last stream's ACK: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms");
    for (id, (cpu0, rss0)) in &before {
        let (cpu1, rss1) = after_open[id];
        let (cpu2, rss2) = after[id];
        let on = if ids.contains(id) {
            a.streams / ids.len()
        } else {
            0
        };
        let per_stream = if on > 0 {
            format!(
                ", {:.1} KiB per stream",
                (rss1 as f64 - *rss0 as f64) / on as f64
            )
        } else {
            String::new()
        };
        println!(
            "node {id}: {on} streams; RSS {rss0} KiB before, {rss1} KiB with streams{per_stream}, \
             {rss2} KiB at the end; CPU {:.2} s opening, {:.2} s over the changes",
            cpu1 - cpu0,
            cpu2 - cpu1
        );
    }
    Ok(())
}
