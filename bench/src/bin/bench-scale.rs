//! Benchmark of one builder change against a large registry, with three real replicas and real
//! Envoys (spread over the replicas), per protocol and listener mode: the time from the commit
//! of a single-builder change to (a) the ACK of every Envoy, as the replicas stamped the ACKs,
//! and (b) routable: a TLS connection with the new builder's SNI through every Envoy reaches
//! that builder (a real TLS builder started by the benchmark, its certificate checked). The
//! same from a DNS change at the default 100 ms poll (BIND 9, Fly-style TXT), for the sizes
//! chosen.
//!
//! `cargo build --release -p concord -p concord-bench && target/release/bench-scale --help` lists
//! the flags: registry sizes, protocol+mode combinations, API and DNS changes per run, Envoys.
//!
//! Each run (one combination at one size) is a new cluster: the registry is loaded through
//! `POST /v1/builders` in batches of 1000 before the Envoys start, then each change puts a new
//! builder (measured: ACK and routable) and removes it again (measured: ACK). Commit time is
//! when the put's answer arrives (the leader answers once the entry is committed and applied);
//! for DNS, when `nsupdate` has been answered, so the record is served. Routable is the start
//! of the first probe that reached the builder; probes retry 2 ms after a failure, so it is
//! late by at most one failed probe plus 2 ms.

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use concord_harness::dns::Bind;
use concord_harness::envoy::{Envoy, Protocol};
use concord_harness::tls::{TestCa, TlsBuilder, probe};
use concord_harness::{Cluster, Options, free_port, percentiles, sni};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// DNS builders that stay in the TXT record, so removing the measured one is a small share of
/// the DNS builders (below the removal guard's 0.5) and applies at the next poll.
const DNS_BASELINE: usize = 4;

#[derive(Clone, Copy)]
struct Combo {
    protocol: Protocol,
    sni_cluster: bool,
}

impl Combo {
    fn parse(s: &str) -> Result<Combo> {
        let (p, m) = s
            .split_once('+')
            .with_context(|| format!("combo {s:?}: PROTOCOL+MODE"))?;
        let protocol = match p {
            "sotw" => Protocol::Sotw,
            "delta" => Protocol::Delta,
            _ => bail!("combo {s:?}: protocol sotw or delta"),
        };
        let sni_cluster = match m {
            "filter-chains" => false,
            "sni-cluster" => true,
            _ => bail!("combo {s:?}: mode filter-chains or sni-cluster"),
        };
        Ok(Combo {
            protocol,
            sni_cluster,
        })
    }

    fn mode(self) -> &'static str {
        if self.sni_cluster {
            "sni-cluster"
        } else {
            "filter-chains"
        }
    }

    fn label(self) -> String {
        format!("{}+{}", self.protocol.flag(), self.mode())
    }
}

/// One builder change against a large registry, real replicas and Envoys; see the module header.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Registry sizes, comma-separated (10000 too, explicitly: Envoy is slow there).
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    sizes: Vec<usize>,
    /// PROTOCOL+MODE combinations, comma-separated, or `all` (adds delta+filter-chains).
    #[arg(
        long,
        default_value = "sotw+filter-chains,sotw+sni-cluster,delta+sni-cluster"
    )]
    combos: String,
    /// API changes per run.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// API changes per run instead, for sizes of 5000 and more.
    #[arg(long, default_value_t = 5)]
    large_changes: usize,
    /// DNS changes per run (0 for none).
    #[arg(long, default_value_t = 10)]
    dns_changes: usize,
    /// The sizes that measure DNS changes too (default: the smallest of --sizes).
    #[arg(long, value_delimiter = ',')]
    dns_sizes: Option<Vec<usize>>,
    /// Real Envoys, spread over the replicas.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    envoys: u64,
}

struct Args {
    sizes: Vec<usize>,
    combos: Vec<Combo>,
    changes: usize,
    large_changes: usize,
    dns_changes: usize,
    dns_sizes: Option<Vec<usize>>,
    envoys: usize,
}

fn args() -> Result<Args> {
    let c = Cli::parse();
    let combos = if c.combos == "all" {
        "sotw+filter-chains,sotw+sni-cluster,delta+sni-cluster,delta+filter-chains"
    } else {
        &c.combos
    };
    let a = Args {
        sizes: c.sizes,
        combos: combos.split(',').map(Combo::parse).collect::<Result<_>>()?,
        changes: c.changes,
        large_changes: c.large_changes,
        dns_changes: c.dns_changes,
        dns_sizes: c.dns_sizes,
        envoys: c.envoys as usize,
    };
    ensure!(
        !a.sizes.is_empty() && !a.combos.is_empty(),
        "nothing to run"
    );
    Ok(a)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

fn since(t: u64, until: u64) -> Duration {
    Duration::from_micros(until.saturating_sub(t))
}

/// Fly TXT entries: the baseline, plus `extra` (id, ip).
fn instances(extra: Option<(&str, std::net::Ipv4Addr)>) -> Vec<String> {
    let mut v: Vec<String> = (0..DNS_BASELINE)
        .map(|j| format!("instance=base{j},app=bench,ip=10.3.0.{},region=ord", j + 1))
        .collect();
    if let Some((id, ip)) = extra {
        v.push(format!("instance={id},app=bench,ip={ip},region=ord"));
    }
    v
}

/// Unix µs at which a probe through every Envoy first reached builder `id` (the latest of
/// those starts), within `deadline`.
async fn routable(ca: &TestCa, envoys: &[Envoy], id: &str, deadline: Duration) -> Result<u64> {
    let name = sni(id);
    let want = format!("builder {id}");
    let per_envoy = envoys.iter().map(|e| {
        let (name, want) = (&name, &want);
        async move {
            let until = std::time::Instant::now() + deadline;
            loop {
                let start = now_us();
                match probe(ca, e.listener, name).await {
                    Ok(got) if got == *want => return Ok(start),
                    Ok(got) => bail!("{} routed {name} to {got:?}", e.node_id),
                    Err(_) if std::time::Instant::now() > until => {
                        bail!("{} does not route {name} after {deadline:?}", e.node_id)
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                }
            }
        }
    });
    let starts = futures::future::try_join_all(per_envoy).await?;
    Ok(starts.into_iter().max().unwrap_or(0))
}

fn report(label: &str, samples: &mut [Duration]) -> String {
    if samples.is_empty() {
        return format!("{label}: none");
    }
    let (p50, p99, max) = percentiles(samples);
    format!(
        "{label}: n={} p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
        samples.len()
    )
}

struct Run<'a> {
    c: Cluster,
    envoys: Vec<Envoy>,
    ca: &'a TestCa,
    deadline: Duration,
}

impl Run<'_> {
    async fn revision(&self) -> Result<u64> {
        let l = self.c.leader().await?;
        Ok(self.c.status(l).await?.revision)
    }

    /// API changes: put a new builder, measure; remove it, measure the ACK.
    async fn api_changes(&self, n: usize) -> Result<()> {
        let leader = self.c.leader().await?;
        let envoys = self.envoys.len();
        let (mut ack_put, mut ack_rm, mut route) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..n {
            let id = format!("chg{k}");
            let b = TlsBuilder::start(self.ca, &id, &sni(&id)).await?;
            let rev = self.c.put_at(leader, &id, b.addr, &sni(&id)).await?;
            let committed = now_us();
            let (acked, routed) = tokio::join!(
                self.c.all_acked_within(envoys, rev, self.deadline),
                routable(self.ca, &self.envoys, &id, self.deadline)
            );
            ack_put.push(since(committed, acked?));
            route.push(since(committed, routed?));
            let rev = self.c.remove(leader, &id).await?;
            let committed = now_us();
            let acked = self.c.all_acked_within(envoys, rev, self.deadline).await?;
            ack_rm.push(since(committed, acked));
        }
        println!(
            "  {}",
            report("API put: commit -> every Envoy ACKs", &mut ack_put)
        );
        println!(
            "  {}",
            report(
                "API put: commit -> routable through every Envoy",
                &mut route
            )
        );
        println!(
            "  {}",
            report("API remove: commit -> every Envoy ACKs", &mut ack_rm)
        );
        Ok(())
    }

    /// DNS changes: publish a new builder in the TXT record, measure; unpublish, measure the ACK.
    async fn dns_changes(&self, bind: &Bind, port: u16, n: usize) -> Result<()> {
        let envoys = self.envoys.len();
        let (mut ack_add, mut ack_rm, mut route) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..n {
            let id = format!("dns{k}");
            let ip = std::net::Ipv4Addr::new(127, 0, 3, 1 + (k % 250) as u8);
            let b =
                TlsBuilder::start_on(self.ca, &id, &sni(&id), SocketAddr::from((ip, port))).await?;
            let before = self.revision().await?;
            bind.set_instances(&instances(Some((&id, ip))))?;
            let served = now_us();
            let (acked, routed) = tokio::join!(
                self.c.all_acked_within(envoys, before + 1, self.deadline),
                routable(self.ca, &self.envoys, &id, self.deadline)
            );
            ack_add.push(since(served, acked?));
            route.push(since(served, routed?));
            let before = self.revision().await?;
            bind.set_instances(&instances(None))?;
            let served = now_us();
            let acked = self
                .c
                .all_acked_within(envoys, before + 1, self.deadline)
                .await?;
            ack_rm.push(since(served, acked));
            drop(b);
        }
        println!(
            "  {}",
            report("DNS add: record served -> every Envoy ACKs", &mut ack_add)
        );
        println!(
            "  {}",
            report(
                "DNS add: record served -> routable through every Envoy",
                &mut route
            )
        );
        println!(
            "  {}",
            report("DNS remove: record served -> every Envoy ACKs", &mut ack_rm)
        );
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    a: &Args,
    combo: Combo,
    size: usize,
    bind: Option<&Bind>,
    dns_port: u16,
    ca: &TestCa,
    measure_dns: bool,
) -> Result<()> {
    println!(
        "{} with {size} builders, {} Envoys (load average {})",
        combo.label(),
        a.envoys,
        concord_bench::load_average()
    );
    let mut extra: Vec<String> = ["--listener-mode", combo.mode()].map(String::from).to_vec();
    if combo.sni_cluster {
        extra.extend(["--sni-suffix", "builders.test"].map(String::from));
    }
    if let Some(bind) = bind {
        extra.extend([
            "--dns-server".into(),
            bind.addr(),
            "--dns-source".into(),
            format!("txt:_instances.internal:{dns_port}"),
            "--dns-sni-template".into(),
            "{id}.builders.test".into(),
        ]);
    }
    let c = Cluster::start(Options {
        extra,
        ..Options::measured()
    })
    .await?;
    let leader = c.leader().await?;
    c.put_bulk(leader, size).await?;
    let want = size + if bind.is_some() { DNS_BASELINE } else { 0 };
    let deadline = Duration::from_secs(30) + Duration::from_millis(10 * size as u64);
    let (rev, ids) = concord_harness::eventually(deadline, "registry loaded", || async {
        let (rev, ids) = c.converged(deadline).await?;
        ensure!(ids.len() == want, "{} of {want} builders", ids.len());
        Ok((rev, ids))
    })
    .await?;
    drop(ids);

    let x: Vec<String> = c.nodes.values().map(|r| r.xds.clone()).collect();
    let t0 = now_us();
    let mut envoys = Vec::new();
    for i in 0..a.envoys {
        let order: Vec<&str> = (0..x.len())
            .map(|k| x[(i + k) % x.len()].as_str())
            .collect();
        envoys.push(
            // Builders only: no stats stream to the replicas (at 10,000 clusters Envoy's periodic
            // flush would hold up its xDS updates, issue 17).
            Envoy::start_in(
                c.dir(),
                &format!("envoy-{i}"),
                &order,
                true,
                Some(combo.protocol),
                &[
                    c.bootstrap_args(&format!("envoy-{i}"))?,
                    vec!["--no-rollout-stats".into()],
                ]
                .concat(),
            )
            .await?,
        );
    }
    let synced = c
        .all_acked_within(a.envoys, rev, 2 * deadline)
        .await
        .map_err(|e| e.context(c.logs()))?;
    println!(
        "  Envoys started -> all ACK the {size} builders: {:.0} ms",
        since(t0, synced).as_secs_f64() * 1e3
    );
    let run = Run {
        c,
        envoys,
        ca,
        deadline,
    };
    let changes = if size >= 5000 {
        a.large_changes
    } else {
        a.changes
    };
    if changes > 0 {
        run.api_changes(changes).await?;
    }
    if let (true, Some(bind)) = (measure_dns, bind) {
        run.dns_changes(bind, dns_port, a.dns_changes).await?;
    }
    let rss: Vec<String> = run
        .c
        .nodes
        .values()
        .filter_map(|r| {
            Some(format!(
                "node {} {:.0} MiB",
                r.id,
                concord_bench::rss_mib(r.pid()?)
            ))
        })
        .collect();
    println!(
        "  replica RSS at the end: {} (load average {})",
        rss.join(", "),
        concord_bench::load_average()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    let dns_sizes = a
        .dns_sizes
        .clone()
        .unwrap_or_else(|| a.sizes.iter().min().into_iter().copied().collect());
    let dns = a.dns_changes > 0 && a.sizes.iter().any(|s| dns_sizes.contains(s));
    let bind = if dns {
        let bind = Bind::start().await?;
        bind.set_instances(&instances(None))?;
        Some(bind)
    } else {
        None
    };
    let dns_port = free_port();
    let ca = TestCa::new()?;
    for &size in &a.sizes {
        for &combo in &a.combos {
            let measure_dns = dns && dns_sizes.contains(&size);
            run(&a, combo, size, bind.as_ref(), dns_port, &ca, measure_dns)
                .await
                .with_context(|| format!("{} at {size} builders", combo.label()))?;
        }
    }
    Ok(())
}
