//! Benchmark of the services half (issue 14): three real replicas, `--services` gRPC services of
//! `--endpoints` registered endpoints each, real Envoys over delta (or SotW) holding them all,
//! then `--changes` single-endpoint changes (one endpoint's weight, re-registered), each waited
//! for. Printed: commit → every Envoy ACKs the endpoint change (p50, p99, max), from the
//! replicas' own ACK records (`acked_at_us` of type `endpoints`), and the resources each change
//! sent (one ClusterLoadAssignment per change over delta); then lease renewals: `--renewers`
//! concurrent clients renewing registered endpoints through the leader for `--renew-secs`
//! seconds: renewals per second and renewal latency (p50, p99).
//!
//! `cargo build --release -p concord -p concord-bench && target/release/bench-services`;
//! `CONCORD_BIN=path/to/concord` benchmarks another build of the replicas.

use anyhow::{Context, Result, ensure};
use clap::Parser;
use concord_api::RegisterEndpoint;
use concord_bench::XdsProtocol;
use concord_harness::envoy::{Envoy, Protocol};
use concord_harness::{Cluster, Options, percentiles};
use concord_registry::services::Desired;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Endpoint changes and lease renewals at scale, against real replicas and Envoys.
#[derive(Parser)]
#[command(version, long_about = None)]
struct Cli {
    /// Services.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Registered endpoints per service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Real Envoys, spread over the replicas.
    #[arg(long, default_value_t = 2)]
    envoys: usize,
    /// ADS protocol.
    #[arg(long, value_enum, default_value = "delta")]
    protocol: XdsProtocol,
    /// Single-endpoint changes measured.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Concurrent renewing clients (0: no renewal run).
    #[arg(long, default_value_t = 32)]
    renewers: usize,
    /// Seconds of renewals.
    #[arg(long, default_value_t = 10)]
    renew_secs: u64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn desired(services: usize) -> Result<Desired> {
    let mut s = serde_json::Map::new();
    let mut hosts = Vec::new();
    for i in 0..services {
        s.insert(format!("svc-{i}"), serde_json::json!({"protocol": "grpc"}));
        hosts.push(
            serde_json::json!({"name": format!("svc-{i}"), "domains": [format!("svc-{i}.bench")],
            "routes": [{"match": {"prefix": "/"}, "service": format!("svc-{i}")}]}),
        );
    }
    Ok(serde_json::from_value(serde_json::json!({
        "services": s,
        "route_tables": {"bench": {"virtual_hosts": hosts}},
        "listeners": {"bench": {"address": "127.0.0.1:18480", "route_table": "bench"}}
    }))?)
}

fn endpoint_addr(svc: usize, e: usize) -> SocketAddr {
    SocketAddr::from((
        [127, 1, (svc / 250) as u8, (svc % 250 + 1) as u8],
        20000 + e as u16,
    ))
}

/// The latest ACK of type `endpoints` at `revision` or later from each Envoy, once every one
/// has it: the latest of those ACK times (Unix microseconds).
async fn all_acked_endpoints(c: &Cluster, envoys: usize, revision: u64) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (mut seen, mut last) = (0, 0);
        for id in c.up() {
            let Ok(v) = c.api(id).envoys().await else {
                continue;
            };
            for e in &v.envoys {
                let t = e.of("endpoints").cloned().unwrap_or_default();
                if t.acked.unwrap_or(0) >= revision {
                    seen += 1;
                    last = last.max(t.acked_at_us.unwrap_or(0));
                }
            }
        }
        if seen >= envoys {
            return Ok(last);
        }
        ensure!(
            Instant::now() < deadline,
            "{seen} of {envoys} Envoys ACKed {revision}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let c = Cluster::start(Options::measured()).await?;
    let leader = c.services_enabled().await?;
    let api = c.api(leader);
    api.apply_config(&desired(cli.services)?).await?;
    println!(
        "{} services x {} endpoints, {} Envoys over {}",
        cli.services,
        cli.endpoints,
        cli.envoys,
        cli.protocol.flag()
    );
    // Register every endpoint, 16 at a time.
    let t = Instant::now();
    let all: Vec<(usize, usize)> = (0..cli.services)
        .flat_map(|s| (0..cli.endpoints).map(move |e| (s, e)))
        .collect();
    for chunk in all.chunks(16) {
        let calls = chunk.iter().map(|&(s, e)| {
            let api = api.clone();
            async move {
                let body = RegisterEndpoint {
                    addr: endpoint_addr(s, e),
                    weight: 1,
                    ttl: Some(concord_registry::services::Duration::from_secs(3600)),
                    labels: Default::default(),
                };
                api.register_endpoint(&format!("svc-{s}"), &format!("e{e}"), &body)
                    .await
            }
        });
        for r in futures::future::join_all(calls).await {
            r?;
        }
    }
    println!("registered {} endpoints in {:.1?}", all.len(), t.elapsed());
    let x: Vec<String> = c.nodes.values().map(|r| r.xds.clone()).collect();
    let mut envoys = Vec::new();
    for i in 0..cli.envoys {
        let order: Vec<&str> = (0..x.len())
            .map(|k| x[(i + k) % x.len()].as_str())
            .collect();
        let protocol = match cli.protocol {
            XdsProtocol::Sotw => Protocol::Sotw,
            XdsProtocol::Delta => Protocol::Delta,
        };
        let opts = concord_harness::envoy::EnvoyOptions {
            prefer_first: true,
            protocol: Some(protocol),
            bootstrap: c.bootstrap_args(&format!("envoy-{i}"))?,
            port_offset: i as i32,
            ..Default::default()
        };
        envoys.push(Envoy::launch(c.dir(), &format!("envoy-{i}"), &order, &opts).await?);
    }
    let rev = c.status(leader).await?.revision;
    let t = Instant::now();
    all_acked_endpoints(&c, cli.envoys, rev)
        .await
        .map_err(|e| e.context(c.logs()))?;
    println!(
        "every Envoy holds them {:.1?} after they started",
        t.elapsed()
    );

    // Single-endpoint changes: one endpoint re-registered with another weight.
    let mut lat = Vec::new();
    for k in 0..cli.changes {
        let s = (k * 7919) % cli.services;
        let body = RegisterEndpoint {
            addr: endpoint_addr(s, 0),
            weight: 2 + (k % 100) as u32,
            ttl: Some(concord_registry::services::Duration::from_secs(3600)),
            labels: Default::default(),
        };
        let w = api
            .register_endpoint(&format!("svc-{s}"), "e0", &body)
            .await?;
        let committed = now_us();
        let acked = all_acked_endpoints(&c, cli.envoys, w.revision).await?;
        lat.push(Duration::from_micros(acked.saturating_sub(committed)));
    }
    let (p50, p99, max) = percentiles(&mut lat);
    println!(
        "one endpoint change -> every Envoy ACKs: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms over {} changes",
        cli.changes
    );
    let mut sent = 0;
    for id in c.up() {
        for e in c.api(id).envoys().await?.envoys {
            sent += e.of("endpoints").map_or(0, |t| t.resources_sent);
        }
    }
    println!(
        "load assignments sent over all streams: {sent} ({} endpoints changes x {} Envoys after the initial {} each)",
        cli.changes, cli.envoys, cli.services
    );

    if cli.renewers > 0 {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let tasks: Vec<_> = (0..cli.renewers)
            .map(|r| {
                let api = api.clone();
                let stop = stop.clone();
                let services = cli.services;
                let endpoints = cli.endpoints;
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut i = r;
                    while !stop.load(Ordering::Relaxed) {
                        let (s, e) = (i % services, (i / services) % endpoints);
                        let t = Instant::now();
                        api.renew_endpoint(&format!("svc-{s}"), &format!("e{e}"))
                            .await
                            .context("renew")?;
                        lat.push(t.elapsed());
                        i += 7;
                    }
                    anyhow::Ok(lat)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(cli.renew_secs)).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        let secs = started.elapsed().as_secs_f64();
        let n = all.len();
        let (p50, p99, max) = percentiles(&mut all);
        println!(
            "renewals through the leader, {} clients: {:.0}/s, p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.1} ms ({n} in {secs:.1} s)",
            cli.renewers,
            n as f64 / secs
        );
    }
    drop(envoys);
    Ok(())
}
