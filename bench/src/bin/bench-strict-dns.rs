//! Benchmark of the steady-state DNS path against Envoy's own DNS: one real Envoy holds both a
//! builder concord found in DNS (a Fly-style TXT record polled every 100 ms by the leader of
//! three real replicas, sent over delta xDS in sni-cluster mode) and a `STRICT_DNS` cluster of
//! its own, resolving an A record on the same BIND every 100 ms (`dns_refresh_rate`, c-ares,
//! TTL 0 so nothing is cached). Each change moves both to a new address in one `nsupdate`
//! (one zone, one `send`), and both are timed the same way: from the update's answer until
//! Envoy's `/clusters` lists the new address, read every `--sample-ms`. Printed: p50, p99 and
//! max of each, concord's over Envoy's (issue 17's target: within 1.1x), and each replica's
//! mean poll and mean poll's answer -> Envoy ACK from its `/metrics`.
//!
//! `cargo build --release -p concord -p concord-bench && target/release/bench-strict-dns`;
//! `CONCORD_BIN=path/to/concord` benchmarks another build of the replicas.

use anyhow::{Context, Result, bail};
use clap::Parser;
use concord_harness::dns::Bind;
use concord_harness::envoy::{Envoy, EnvoyOptions, Protocol};
use concord_harness::{Cluster, Options, free_port, metric, percentiles};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Concord's DNS discovery against Envoy's STRICT_DNS on the same BIND, in one Envoy.
#[derive(Parser)]
#[command(version, long_about = None)]
struct Cli {
    /// DNS changes measured. Each side's wait is about uniform over a 100 ms poll, so the
    /// median of n changes is off by about 50/sqrt(n) ms: 3.5 ms at 200, a 7 % swing of a 1.1x
    /// ratio on each side; 1,000 (about 2.5 minutes) brings it to 1.6 ms.
    #[arg(long, default_value_t = 1000)]
    changes: usize,
    /// Milliseconds between reads of Envoy's `/clusters`.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    sample_ms: u64,
    /// Seconds to wait for one change to show in Envoy.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
}

/// The A record Envoy's own cluster resolves.
const STRICT_NAME: &str = "strict.internal";
/// The port of Envoy's own cluster's endpoint.
const STRICT_PORT: u16 = 443;

/// Envoy's own cluster, merged into the bootstrap with `--config-yaml`.
fn strict_cluster(dns: &str) -> Result<String> {
    let (host, port) = dns.rsplit_once(':').context("BIND address")?;
    Ok(format!(
        "static_resources:
  clusters:
  - name: strict
    type: STRICT_DNS
    connect_timeout: 1s
    dns_refresh_rate: 0.1s
    dns_lookup_family: V4_ONLY
    typed_dns_resolver_config:
      name: envoy.network.dns_resolver.cares
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
        resolvers: [{{ socket_address: {{ address: \"{host}\", port_value: {port} }} }}]
    load_assignment:
      cluster_name: strict
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {STRICT_NAME}, port_value: {STRICT_PORT} }} }} }}
"
    ))
}

/// Moves concord's DNS builder and Envoy's own record to `ip`, in one update.
fn publish(bind: &Bind, ip: Ipv4Addr) -> Result<()> {
    bind.update(&format!(
        "zone internal.
update delete _instances.internal. TXT
update add _instances.internal. 0 TXT \"instance=base0,app=bench,ip=10.3.0.1,region=ord;instance=base1,app=bench,ip=10.3.0.2,region=ord;instance=dnsb,app=bench,ip={ip},region=ord\"
update delete {STRICT_NAME}. A
update add {STRICT_NAME}. 0 A {ip}"
    ))
}

/// When (since `from`) Envoy's `/clusters` first listed each of `concord` and `strict`.
async fn shown(
    envoy: &Envoy,
    (concord, strict): (&str, &str),
    from: Instant,
    every: Duration,
    timeout: Duration,
) -> Result<(Duration, Duration)> {
    let (mut c, mut s) = (None, None);
    loop {
        let body = envoy.get("/clusters").await?;
        let at = from.elapsed();
        if c.is_none() && body.lines().any(|l| l.contains(concord)) {
            c = Some(at);
        }
        if s.is_none() && body.lines().any(|l| l.starts_with(strict)) {
            s = Some(at);
        }
        if let (Some(c), Some(s)) = (c, s) {
            return Ok((c, s));
        }
        if at > timeout {
            bail!("after {at:?}: concord's builder at {concord} {c:?}, Envoy's own {strict} {s:?}");
        }
        tokio::time::sleep(every).await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let bind = Bind::start().await?;
    let dns_port = free_port();
    publish(&bind, Ipv4Addr::new(127, 0, 3, 1))?;
    let extra = [
        "--listener-mode",
        "sni-cluster",
        "--sni-suffix",
        "builders.test",
        "--dns-server",
        &bind.addr(),
        "--dns-source",
        &format!("txt:_instances.internal:{dns_port}"),
        "--dns-sni-template",
        "{id}.builders.test",
    ]
    .map(String::from)
    .to_vec();
    let c = Cluster::start(Options {
        extra,
        ..Options::measured()
    })
    .await?;
    let servers: Vec<String> = c.nodes.values().map(|r| r.xds.clone()).collect();
    let servers: Vec<&str> = servers.iter().map(String::as_str).collect();
    let mut bootstrap = c.bootstrap_args("envoy-0")?;
    bootstrap.push("--no-rollout-stats".into());
    let opts = EnvoyOptions {
        protocol: Some(Protocol::Delta),
        bootstrap,
        envoy_args: vec!["--config-yaml".into(), strict_cluster(&bind.addr())?],
        ..EnvoyOptions::default()
    };
    let envoy = Envoy::launch(c.dir(), "envoy-0", &servers, &opts).await?;
    println!(
        "one Envoy, three replicas, DNS polled every 100 ms by concord and by Envoy (load average {})",
        concord_bench::load_average()
    );
    let every = Duration::from_millis(cli.sample_ms);
    let timeout = Duration::from_secs(cli.timeout_secs);
    let at = |ip: Ipv4Addr| {
        (
            format!("::{ip}:{dns_port}::"),
            format!("strict::{ip}:{STRICT_PORT}::"),
        )
    };
    let (first_c, first_s) = at(Ipv4Addr::new(127, 0, 3, 1));
    shown(
        &envoy,
        (&first_c, &first_s),
        Instant::now(),
        every,
        Duration::from_secs(60),
    )
    .await
    .context("the first records in Envoy")?;
    let (mut concord, mut strict) = (Vec::new(), Vec::new());
    for k in 1..=cli.changes {
        let ip = Ipv4Addr::new(127, 0, 3, 1 + (k % 250) as u8);
        // Changes start at random points of both poll cycles.
        tokio::time::sleep(Duration::from_millis(20 + (k as u64 * 37) % 100)).await;
        publish(&bind, ip)?;
        let served = Instant::now();
        let (cw, sw) = at(ip);
        let (c_at, s_at) = shown(&envoy, (&cw, &sw), served, every, timeout)
            .await
            .with_context(|| format!("change {k}"))?;
        concord.push(c_at);
        strict.push(s_at);
    }
    let (c50, c99, cmax) = percentiles(&mut concord);
    let (s50, s99, smax) = percentiles(&mut strict);
    println!(
        "record served -> in Envoy's /clusters, n={}:\n  concord (TXT, raft, delta xDS)  p50 {c50:.1} ms  p99 {c99:.1} ms  max {cmax:.1} ms\n  Envoy STRICT_DNS (A record)      p50 {s50:.1} ms  p99 {s99:.1} ms  max {smax:.1} ms\n  concord / STRICT_DNS: p50 {:.2}x, p99 {:.2}x (target <= 1.1x) (load average {})",
        cli.changes,
        c50 / s50,
        c99 / s99,
        concord_bench::load_average()
    );
    for id in c.up() {
        let page = c.api(id).metrics().await?;
        let mean = |name: &str| {
            let v = |suffix: &str| metric(&page, &format!("{name}_{suffix}")).unwrap_or(0.0);
            let n = v("count");
            (n, if n > 0.0 { v("sum") * 1e3 / n } else { 0.0 })
        };
        let (polls, poll) = mean("concord_dns_poll_duration_seconds");
        let (acks, d2a) = mean("concord_discovery_to_ack_seconds");
        let (_, c2a) = mean("concord_commit_to_ack_seconds");
        // Where concord's time beyond the poll's phase goes: the poll itself, then the commit
        // (seen -> applied here) and push to the ACK (applied -> ACK), recorded by the replica the
        // Envoy streams from.
        println!(
            "  replica {id}: {polls} polls, mean {poll:.2} ms; {acks} changes seen -> Envoy ACK, mean {d2a:.2} ms, of which applied -> ACK {c2a:.2} ms"
        );
    }
    Ok(())
}
