//! What Envoys' stats streams cost a replica (issue 15): N simulated Envoys on one replica of a
//! real three-node cluster over TLS, each streaming what an Envoy's `metrics_service` sink sends
//! at every flush (`--flush-ms`, Envoy's default 5 s): the counters, gauges and histograms (in
//! the bootstrap's HISTOGRAM mode: 19 buckets each) of its services' clusters (`--clusters` per
//! Envoy, named as concord names them, two of them a rollout's version clusters), of the
//! builders' listener and of the server, in batches of 1000 metric families as the bootstrap
//! asks. The replica's CPU time (user + system, `/proc/<pid>/stat`) is read over
//! `--windows` windows of `--secs` with the streams sending, each against an idle window of the
//! same length before it; the report gives the extra CPU per 100 Envoys, median and worst over
//! the windows, and the replica's totals check that every message was counted.
//!
//! `cargo build --release -p concord -p concord-bench && target/release/bench-stats --help`.

use anyhow::{Context, Result, ensure};
use clap::Parser;
use concord_bench::cpu_secs;
use concord_harness::{Cluster, Options, metric};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::metrics::v3::StreamMetricsMessage;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::stream_metrics_message::Identifier;
use envoy_types::pb::io::prometheus::client::{
    Bucket, Counter, Gauge, Histogram, Metric, MetricFamily,
};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// N simulated Envoys streaming stats to one replica; see the module header.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Simulated Envoys (one stats stream each, on node 1).
    #[arg(long, default_value_t = 100)]
    envoys: usize,
    /// How often each sends its stats (Envoy's stats_flush_interval).
    #[arg(long, default_value_t = 5000)]
    flush_ms: u64,
    /// Services clusters each Envoy reports.
    #[arg(long, default_value_t = 20)]
    clusters: usize,
    /// Measured windows (each with an idle window of the same length before it).
    #[arg(long, default_value_t = 5)]
    windows: usize,
    /// Seconds per window.
    #[arg(long, default_value_t = 30)]
    secs: u64,
}

/// Counters Envoy keeps per upstream cluster (those a cluster with traffic has used).
const CLUSTER_COUNTERS: &[&str] = &[
    "upstream_rq_total",
    "upstream_rq_completed",
    "upstream_rq_2xx",
    "upstream_rq_200",
    "upstream_rq_5xx",
    "upstream_rq_503",
    "upstream_rq_xx",
    "upstream_rq_active_overflow",
    "upstream_rq_retry",
    "upstream_rq_timeout",
    "upstream_rq_tx_reset",
    "upstream_rq_rx_reset",
    "upstream_rq_cancelled",
    "upstream_rq_pending_total",
    "upstream_cx_total",
    "upstream_cx_http2_total",
    "upstream_cx_connect_fail",
    "upstream_cx_destroy",
    "upstream_cx_destroy_local",
    "upstream_cx_destroy_remote",
    "upstream_cx_rx_bytes_total",
    "upstream_cx_tx_bytes_total",
    "upstream_flow_control_paused_reading_total",
    "membership_change",
    "update_attempt",
    "update_success",
    "update_no_rebuild",
    "lb_healthy_panic",
    "health_check.attempt",
    "health_check.success",
    "health_check.failure",
    "grpc.total",
    "grpc.success",
    "grpc.failure",
    "grpc.0",
    "grpc.14",
    "grpc.request_message_count",
    "grpc.response_message_count",
    "retry_or_shadow_abandoned",
    "assignment_stale",
];
/// Gauges per upstream cluster.
const CLUSTER_GAUGES: &[&str] = &[
    "membership_total",
    "membership_healthy",
    "membership_degraded",
    "membership_excluded",
    "upstream_cx_active",
    "upstream_rq_active",
    "upstream_rq_pending_active",
    "max_host_weight",
    "version",
    "lb_subsets_active",
    "circuit_breakers.default.cx_open",
    "circuit_breakers.default.rq_open",
    "circuit_breakers.default.rq_pending_open",
];
/// Histograms per upstream cluster.
const CLUSTER_HISTOGRAMS: &[&str] = &[
    "upstream_rq_time",
    "upstream_cx_connect_ms",
    "upstream_cx_length_ms",
];
/// Server, listener, connection manager and xDS stats an Envoy reports besides.
const OTHER: usize = 350;
/// Of them, histograms (the connection managers' and listeners' times, the server's).
const OTHER_HISTOGRAMS: usize = 12;

fn counter(name: String, value: f64) -> MetricFamily {
    MetricFamily {
        name: Some(name),
        r#type: Some(0),
        metric: vec![Metric {
            counter: Some(Counter {
                value: Some(value),
                ..Default::default()
            }),
            timestamp_ms: Some(0),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A histogram of one flush interval's samples as Envoy's sink sends it: Envoy's default
/// bounds, about a third of the samples under each of three bounds.
fn histogram(name: String) -> MetricFamily {
    let bounds = concord_api::LATENCY_BOUNDS_MS;
    let bucket = bounds
        .iter()
        .enumerate()
        .map(|(i, b)| Bucket {
            cumulative_count: Some([0, 0, 8, 16, 25][i.min(4)]),
            upper_bound: Some(*b),
            ..Default::default()
        })
        .collect();
    MetricFamily {
        name: Some(name),
        r#type: Some(4),
        metric: vec![Metric {
            histogram: Some(Histogram {
                sample_count: Some(25),
                sample_sum: Some(190.5),
                bucket,
                ..Default::default()
            }),
            timestamp_ms: Some(0),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn gauge(name: String, value: f64) -> MetricFamily {
    MetricFamily {
        name: Some(name),
        r#type: Some(1),
        metric: vec![Metric {
            gauge: Some(Gauge { value: Some(value) }),
            timestamp_ms: Some(0),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// One flush of an Envoy: every family, in batches of 1000 (the bootstrap's batch_size).
fn flush(clusters: usize, node: Option<&str>) -> Vec<StreamMetricsMessage> {
    let mut all = Vec::new();
    for k in 0..clusters {
        let name = match k {
            0 => "service_echo~v1".to_string(),
            1 => "service_echo~v2".to_string(),
            k => format!("service_svc-{k}"),
        };
        for c in CLUSTER_COUNTERS {
            all.push(counter(format!("cluster.{name}.{c}"), 25.0));
        }
        for g in CLUSTER_GAUGES {
            all.push(gauge(format!("cluster.{name}.{g}"), 2.0));
        }
        for h in CLUSTER_HISTOGRAMS {
            all.push(histogram(format!("cluster.{name}.{h}")));
        }
    }
    for k in 0..OTHER_HISTOGRAMS {
        all.push(histogram(format!(
            "http.services_{}.downstream_rq_time_{k}",
            k % 4
        )));
    }
    for k in 0..OTHER - OTHER_HISTOGRAMS {
        all.push(counter(
            format!("http.services_{}.downstream_rq_{k}", k % 4),
            10.0,
        ));
    }
    let mut out: Vec<StreamMetricsMessage> = all
        .chunks(1000)
        .map(|c| StreamMetricsMessage {
            identifier: None,
            envoy_metrics: c.to_vec(),
        })
        .collect();
    if let (Some(first), Some(id)) = (out.first_mut(), node) {
        first.identifier = Some(Identifier {
            node: Some(Node {
                id: id.to_string(),
                cluster: "bench".into(),
                ..Default::default()
            }),
        });
    }
    out
}

/// One simulated Envoy: a flush every `every`, staggered by `offset`, while `on` says so.
async fn envoy(
    i: usize,
    channel: tonic::transport::Channel,
    clusters: usize,
    every: Duration,
    offset: Duration,
    mut on: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let (tx, rx) = mpsc::channel(16);
    let mut client = MetricsServiceClient::new(channel);
    let call = tokio::spawn(async move { client.stream_metrics(ReceiverStream::new(rx)).await });
    let mut first = true;
    tokio::time::sleep(offset).await;
    loop {
        if *on.borrow_and_update() {
            let node = format!("bench-{i}");
            for m in flush(clusters, first.then_some(node.as_str())) {
                if tx.send(m).await.is_err() {
                    return Ok(());
                }
            }
            first = false;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            r = on.changed() => if r.is_err() { break },
        }
        if call.is_finished() {
            break;
        }
    }
    drop(tx);
    let _ = call.await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let c = Cluster::start(Options::measured()).await?;
    c.leader().await?;
    let pid = c.nodes[&1].pid().context("node 1 runs")?;
    let xds = c.nodes[&1].xds.clone();
    let (on_tx, on) = tokio::sync::watch::channel(false);
    let every = Duration::from_millis(a.flush_ms);
    for i in 0..a.envoys {
        let channel = c.xds_channel(&xds, "load").await?;
        let offset = every * i as u32 / a.envoys as u32;
        tokio::spawn(envoy(i, channel, a.clusters, every, offset, on.clone()));
    }
    let per_flush = flush(a.clusters, None);
    let families: usize = per_flush.iter().map(|m| m.envoy_metrics.len()).sum();
    let bytes: usize = per_flush.iter().map(prost::Message::encoded_len).sum();
    println!(
        "{} simulated Envoys on node 1, each flushing {families} metric families ({:.0} KiB, {} \
         messages) every {} ms; {} windows of {} s",
        a.envoys,
        bytes as f64 / 1024.0,
        per_flush.len(),
        a.flush_ms,
        a.windows,
        a.secs
    );
    let window = Duration::from_secs(a.secs);
    let mut extra = Vec::new();
    for w in 0..a.windows {
        on_tx.send_replace(false);
        let idle0 = cpu_secs(pid)?;
        tokio::time::sleep(window).await;
        let idle = cpu_secs(pid)? - idle0;
        on_tx.send_replace(true);
        let t0 = Instant::now();
        let busy0 = cpu_secs(pid)?;
        tokio::time::sleep(window).await;
        let busy = cpu_secs(pid)? - busy0;
        let secs = t0.elapsed().as_secs_f64();
        let pct = (busy - idle).max(0.0) / secs * 100.0;
        let per_100 = pct * 100.0 / a.envoys as f64;
        println!(
            "window {}: idle {:.2} s CPU, streaming {:.2} s CPU: +{pct:.2}% of one core, \
             {per_100:.2}% per 100 Envoys",
            w + 1,
            idle,
            busy
        );
        extra.push(per_100);
    }
    on_tx.send_replace(false);
    extra.sort_by(f64::total_cmp);
    let median = extra[extra.len() / 2];
    let worst = extra[extra.len() - 1];
    println!(
        "CPU per 100 Envoys at a {} ms flush: median {median:.2}%, worst {worst:.2}% (target ≤ 2%)",
        a.flush_ms
    );
    let report = c.api(1).metrics().await?;
    let messages = metric(&report, "concord_envoy_stats_messages_total")
        .context("no concord_envoy_stats_messages_total")?;
    println!("node 1 counted {messages} stats messages");
    ensure!(messages > 0.0, "no message reached the replica");
    Ok(())
}
