//! Benchmark of fast failover (issue 17) with three real replicas over TLS, real Envoys (delta
//! xDS, sni-cluster listeners) and BIND 9 changed with nsupdate: repeated SIGKILLs of the leader
//! under API writes and DNS churn, each killed replica restarted at once so that it rejoins while
//! the cluster carries on. Per kill it measures the time from the SIGKILL until
//!
//! - a new leader is visible in `/v1/status` of a survivor,
//! - the new leader commits a write (a put through a survivor, which retries until it does),
//! - a DNS change published right after the kill is in every Envoy (`/clusters` of each),
//! - every Envoy that streamed from the killed replica streams from another one,
//!
//! and the terms the cluster went through from the kill until the restarted replica has rejoined
//! and settled (one election per kill is one term). It prints p50 / p99 / max of each beside the
//! issue's targets, and with `--timeline` the Envoy-side view of the first kill and of every
//! kill whose Envoys took over a second to move (each moved Envoy's ADS connection state and the
//! health flags of every replica's host, as Envoy's admin API shows them).
//!
//! `cargo build --release -p concord -p concord-bench && target/release/bench-failover [--kills N]` (`--help`)

use anyhow::{Context, Result, bail};
use clap::Parser;
use concord_api::{LocalEnvoys, Role, Status};
use concord_harness::dns::Bind;
use concord_harness::envoy::{Envoy, Protocol};
use concord_harness::{Cluster, Options, eventually, percentiles};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Leader SIGKILLs under API writes and DNS churn; see the module header.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Leader SIGKILLs (each followed by a restart of the killed replica).
    #[arg(long, default_value_t = 50)]
    kills: usize,
    /// Real Envoys (spread over the replicas, each preferring one).
    #[arg(long, default_value_t = 6)]
    envoys: usize,
    /// Interval of the background API writes, in milliseconds (0: none).
    #[arg(long, default_value_t = 50)]
    write_every_ms: u64,
    /// Interval of the background DNS churn (one record flipped), in milliseconds (0: none).
    #[arg(long, default_value_t = 300)]
    churn_every_ms: u64,
    /// How long the cluster must stay on one leader after the restarted replica rejoined
    /// before its terms are counted and the next kill comes, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    settle_ms: u64,
    /// Print the Envoy-side timelines of the first kill and of kills whose Envoys moved slowly.
    #[arg(long)]
    timeline: bool,
    /// Extra `concord serve` flags (e.g. `--extra=--heartbeat-ms=30`), repeatable.
    #[arg(long, allow_hyphen_values = true)]
    extra: Vec<String>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// The TXT record's content: a fixed base, the builder of the current kill, and the churned one.
struct Dns {
    bind: Bind,
    state: Mutex<(Option<usize>, bool)>,
}

impl Dns {
    fn entry(id: &str, n: usize) -> String {
        format!(
            "instance={id},app=bench,ip=10.3.{}.{},region=ord",
            n / 250,
            n % 250 + 1
        )
    }

    /// Publishes the record with `f` applied to the state; returns once BIND serves it.
    fn publish(&self, f: impl FnOnce(&mut (Option<usize>, bool))) -> Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
        let mut entries: Vec<String> = (0..10).map(|i| Self::entry(&format!("b{i}"), i)).collect();
        if let Some(k) = s.0 {
            entries.push(Self::entry(&format!("k{k}"), 100 + k));
        }
        if s.1 {
            entries.push(Self::entry("churn", 99));
        }
        self.bind.set_instances(&entries)
    }
}

/// One kill's figures.
#[derive(Default)]
struct Sample {
    leader_visible: Option<Duration>,
    write_committed: Option<Duration>,
    dns_to_envoys: Option<Duration>,
    envoys_moved: Option<Duration>,
    moved: usize,
    terms: u64,
}

async fn status_of(http: &reqwest::Client, admin: &str) -> Result<Status> {
    Ok(http
        .get(format!("{admin}/v1/status"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// Polls the survivors until one reports itself leader in a term above `term`.
async fn leader_visible(http: &reqwest::Client, survivors: &[String], term: u64) -> Result<()> {
    eventually(Duration::from_secs(10), "a new leader", || async {
        for admin in survivors {
            if let Ok(s) = status_of(http, admin).await
                && s.role == Role::Leader
                && s.term > term
            {
                return Ok(());
            }
        }
        bail!("no new leader yet")
    })
    .await
}

/// Polls every Envoy's `/clusters` until each has `cluster`.
async fn in_every_envoy(http: &reqwest::Client, envoys: &[String], cluster: &str) -> Result<()> {
    let want = format!("\n{cluster}::");
    let waits = envoys.iter().map(|admin| {
        let want = want.clone();
        async move {
            eventually(Duration::from_secs(10), "cluster in Envoy", || async {
                let body = http
                    .get(format!("{admin}/clusters"))
                    .send()
                    .await?
                    .text()
                    .await?;
                if !format!("\n{body}").contains(&want) {
                    bail!("{admin} has no {cluster}");
                }
                Ok(())
            })
            .await
        }
    });
    for r in futures::future::join_all(waits).await {
        r?;
    }
    Ok(())
}

/// Polls the survivors' `/v1/envoys` until every Envoy in `moved` streams from one of them on a
/// stream opened at or after `since_ms`; returns the latest of those stream starts (Unix ms).
async fn envoys_moved(
    http: &reqwest::Client,
    survivors: &[String],
    moved: &BTreeSet<String>,
    since_ms: u64,
) -> Result<u64> {
    eventually(Duration::from_secs(10), "Envoys moved", || async {
        let mut found: BTreeMap<String, u64> = BTreeMap::new();
        for admin in survivors {
            let v: LocalEnvoys = http
                .get(format!("{admin}/v1/envoys"))
                .send()
                .await?
                .json()
                .await?;
            for e in &v.envoys {
                let (id, at) = (e.node_id.as_str(), e.connected_at_ms);
                if moved.contains(id) && at >= since_ms {
                    found.insert(id.to_string(), at);
                }
            }
        }
        if found.len() < moved.len() {
            bail!("{} of {} moved", found.len(), moved.len());
        }
        Ok(found.values().copied().max().unwrap_or(since_ms))
    })
    .await
}

/// The Envoy-side view of one Envoy until it streams again: its ADS connection state and the
/// health flags of every replica's host (the dead one marked `*`), at every change (ms after
/// the kill).
async fn timeline(
    http: reqwest::Client,
    admin: String,
    dead_xds: String,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let t0 = Instant::now();
    let mut last = String::new();
    let mut rows = Vec::new();
    while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(5) {
        let get = |path: String| {
            let http = http.clone();
            async move {
                match http.get(path).send().await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                }
            }
        };
        let connected = get(format!(
            "{admin}/stats?filter=^control_plane\\.connected_state$"
        ))
        .await;
        let clusters = get(format!("{admin}/clusters")).await;
        let hosts: Vec<String> = clusters
            .lines()
            .filter_map(|l| l.strip_prefix("concord_xds::"))
            .filter_map(|l| l.split_once("::health_flags::"))
            .map(|(host, flags)| {
                let mark = if host == dead_xds { "*" } else { "" };
                format!("{mark}{host}={flags}")
            })
            .collect();
        let now = format!("{} {}", connected.trim(), hosts.join(" "));
        if now != last {
            rows.push(format!("  +{:>5} ms  {now}", t0.elapsed().as_millis()));
            last = now;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rows
}

fn row(label: &str, target: &str, samples: &mut [Duration], missing: usize) {
    if samples.is_empty() {
        println!("{label:<52} n=0 {target}");
        return;
    }
    let (p50, p99, max) = percentiles(samples);
    println!(
        "{label:<52} n={:<3} p50 {p50:>6.0} ms  p99 {p99:>6.0} ms  max {max:>6.0} ms   target {target}{}",
        samples.len(),
        if missing > 0 {
            format!("  ({missing} not reached in 10 s)")
        } else {
            String::new()
        }
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let bind = Bind::start().await?;
    let dns = Arc::new(Dns {
        bind,
        state: Mutex::new((None, false)),
    });
    dns.publish(|_| {})?;
    let mut extra: Vec<String> = [
        "--listener-mode",
        "sni-cluster",
        "--sni-suffix",
        "builders.test",
        "--dns-sni-template",
        "{id}.builders.test",
        "--dns-source",
        "txt:_instances.internal:8443",
        "--dns-server",
    ]
    .map(String::from)
    .to_vec();
    extra.push(dns.bind.addr());
    extra.extend(a.extra.iter().cloned());
    let mut c = Cluster::start(Options {
        extra,
        ..Options::measured()
    })
    .await?;
    println!(
        "bench-failover: 3 replicas (TLS), {} Envoys (delta, sni-cluster), BIND; {} kills; load average {}",
        a.envoys,
        a.kills,
        concord_bench::load_average()
    );
    let x: Vec<(u64, String)> = c.nodes.values().map(|r| (r.id, r.xds.clone())).collect();
    let mut envoys = Vec::new();
    for i in 0..a.envoys {
        let order: Vec<&str> = (0..x.len())
            .map(|k| x[(i + k) % x.len()].1.as_str())
            .collect();
        envoys.push(
            Envoy::start_with(
                &c,
                &format!("envoy-{i}"),
                &order,
                true,
                Some(Protocol::Delta),
            )
            .await?,
        );
    }
    let mut envoy_admins: Vec<String> = envoys.iter().map(|e| e.admin.clone()).collect();
    let leader = c.leader().await?;
    let rev = c.status(leader).await?.revision;
    c.all_acked(a.envoys, rev).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let admins: BTreeMap<u64, String> = c
        .nodes
        .iter()
        .map(|(&id, r)| (id, r.admin.clone()))
        .collect();

    // Background API writes through every replica in turn, and DNS churn.
    let stop = Arc::new(AtomicBool::new(false));
    let write_errors = Arc::new(AtomicU64::new(0));
    let writes_ok = Arc::new(AtomicU64::new(0));
    let mut background = Vec::new();
    if a.write_every_ms > 0 {
        let (stop, errors, ok, http) = (
            stop.clone(),
            write_errors.clone(),
            writes_ok.clone(),
            http.clone(),
        );
        let targets: Vec<String> = admins.values().cloned().collect();
        let every = Duration::from_millis(a.write_every_ms);
        background.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let admin = &targets[i % targets.len()];
                let bid = format!("w{}", i % 20);
                let body = serde_json::json!({
                    "addr": format!("127.0.0.1:{}", 20000 + i % 1000),
                    "sni": concord_harness::sni(&bid),
                });
                let r = http
                    .put(format!("{admin}/v1/builders/{bid}"))
                    .json(&body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                    _ => errors.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
                tokio::time::sleep(every).await;
            }
        }));
    }
    if a.churn_every_ms > 0 {
        let (stop, dns) = (stop.clone(), dns.clone());
        let every = Duration::from_millis(a.churn_every_ms);
        background.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let d = dns.clone();
                let _ = tokio::task::spawn_blocking(move || d.publish(|s| s.1 = !s.1)).await;
                tokio::time::sleep(every).await;
            }
        }));
    }

    let mut samples: Vec<Sample> = Vec::new();
    let mut leaders_changed_in_settle = 0;
    for k in 0..a.kills {
        let leader = c.leader().await?;
        // Envoys do not move back to a restarted replica by themselves: restart the ones that
        // prefer the leader if none streams from it, so every kill moves some.
        if c.envoys_on(leader).await?.is_empty() {
            let first = x
                .iter()
                .position(|(id, _)| *id == leader)
                .expect("a replica");
            for i in (0..a.envoys).filter(|i| i % x.len() == first) {
                envoys[i].kill();
                let order: Vec<&str> = (0..x.len())
                    .map(|k| x[(i + k) % x.len()].1.as_str())
                    .collect();
                envoys[i] = Envoy::start_with(
                    &c,
                    &format!("envoy-{i}"),
                    &order,
                    true,
                    Some(Protocol::Delta),
                )
                .await?;
                envoy_admins[i] = envoys[i].admin.clone();
            }
            eventually(
                Duration::from_secs(20),
                "Envoys back on the leader",
                || async {
                    let on = c.envoys_on(leader).await?.len();
                    if on == 0 {
                        bail!("none on node {leader}");
                    }
                    Ok(())
                },
            )
            .await?;
            c.all_acked(a.envoys, 0).await?;
        }
        let term = c.status(leader).await?.term;
        let moved: BTreeSet<String> = c.envoys_on(leader).await?.into_iter().collect();
        let survivors: Vec<String> = admins
            .iter()
            .filter(|(id, _)| **id != leader)
            .map(|(_, a)| a.clone())
            .collect();
        let via = *admins.keys().find(|&&id| id != leader).expect("a survivor");
        let dead_xds = c.nodes[&leader].xds.clone();
        let kill_ms = now_ms();
        let t0 = Instant::now();
        c.node(leader).kill();
        // The Envoy-side view of every Envoy that must move (printed for the first kill and
        // for any kill over the target).
        let stop_views = Arc::new(AtomicBool::new(false));
        let views: Vec<_> = envoys
            .iter()
            .filter(|e| a.timeline && moved.contains(&e.node_id))
            .map(|e| {
                let task = tokio::spawn(timeline(
                    http.clone(),
                    e.admin.clone(),
                    dead_xds.clone(),
                    stop_views.clone(),
                ));
                (e.node_id.clone(), task)
            })
            .collect();
        let c_ref = &c;
        let dns_ref = &dns;
        let (visible, committed, in_envoys, moved_at) = tokio::join!(
            async {
                leader_visible(&http, &survivors, term).await.ok()?;
                Some(t0.elapsed())
            },
            async {
                c_ref
                    .put(via, &format!("kill-{}", k % 20), 30000)
                    .await
                    .ok()?;
                Some(t0.elapsed())
            },
            async {
                let d = dns_ref.clone();
                tokio::task::spawn_blocking(move || d.publish(|s| s.0 = Some(k)))
                    .await
                    .ok()?
                    .ok()?;
                let served = Instant::now();
                in_every_envoy(&http, &envoy_admins, &format!("k{k}.builders.test"))
                    .await
                    .ok()?;
                Some(served.elapsed())
            },
            async {
                if moved.is_empty() {
                    return None;
                }
                let at = envoys_moved(&http, &survivors, &moved, kill_ms)
                    .await
                    .ok()?;
                Some(Duration::from_millis(at.saturating_sub(kill_ms)))
            },
        );
        stop_views.store(true, Ordering::Relaxed);
        let slow = moved_at.is_none_or(|d| d > Duration::from_millis(1000));
        for (id, task) in views {
            let rows = task.await.unwrap_or_default();
            if k == 0 || slow {
                println!(
                    "kill {k}: Envoy-side timeline of {id} (the dead replica is *{dead_xds}):"
                );
                for r in rows {
                    println!("{r}");
                }
                if slow && let Some(e) = envoys.iter().find(|e| e.node_id == id) {
                    println!("  its log:\n{}", e.log_tail());
                }
            }
        }
        // Restart the killed replica at once; it rejoins under the new leader.
        c.node(leader).start()?;
        let rejoined = eventually(
            Duration::from_secs(20),
            "killed replica rejoins",
            || async {
                let s = c.status(leader).await?;
                let l = s.leader.context("no leader known")?;
                if l == leader || s.role != Role::Follower {
                    bail!("node {leader} is {} under {l}", s.role.as_str());
                }
                Ok(l)
            },
        )
        .await;
        if let Err(e) = rejoined {
            eprintln!("kill {k}: {e:#}\n{}", c.logs());
        }
        // Settle: the same leader for settle_ms, then count the terms.
        let mut settled = c.leader().await?;
        let settle_until = Instant::now() + Duration::from_millis(a.settle_ms);
        while Instant::now() < settle_until {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Ok(l) = c.leader_now().await
                && l != settled
            {
                leaders_changed_in_settle += 1;
                settled = l;
            }
        }
        let mut max_term = term;
        for admin in admins.values() {
            if let Ok(s) = status_of(&http, admin).await {
                max_term = max_term.max(s.term);
            }
        }
        let s = Sample {
            leader_visible: visible,
            write_committed: committed,
            dns_to_envoys: in_envoys,
            envoys_moved: moved_at,
            moved: moved.len(),
            terms: max_term - term,
        };
        println!(
            "kill {k:>3}: node {leader}; leader visible {:?} ms, write committed {:?} ms, DNS -> all Envoys {:?} ms, {} Envoys moved {:?} ms, terms +{}",
            s.leader_visible.map(|d| d.as_millis()),
            s.write_committed.map(|d| d.as_millis()),
            s.dns_to_envoys.map(|d| d.as_millis()),
            s.moved,
            s.envoys_moved.map(|d| d.as_millis()),
            s.terms
        );
        samples.push(s);
        // Every Envoy streams again before the next kill.
        c.all_acked(a.envoys, 0).await?;
    }
    stop.store(true, Ordering::Relaxed);
    for t in background {
        let _ = t.await;
    }

    let n = samples.len();
    let pick = |f: fn(&Sample) -> Option<Duration>| -> (Vec<Duration>, usize) {
        let v: Vec<Duration> = samples.iter().filter_map(f).collect();
        let missing = n - v.len();
        (v, missing)
    };
    println!(
        "\n== {n} leader SIGKILLs, load average {} ==",
        concord_bench::load_average()
    );
    let (mut v, m) = pick(|s| s.leader_visible);
    row(
        "SIGKILL leader -> new leader in /v1/status",
        "(none)",
        &mut v,
        m,
    );
    let (mut v, m) = pick(|s| s.write_committed);
    row(
        "SIGKILL leader -> new leader commits a write",
        "p50 <= 250, max <= 400",
        &mut v,
        m,
    );
    let (mut v, m) = pick(|s| s.dns_to_envoys);
    row(
        "DNS change at the kill -> in every Envoy",
        "p99 <= 450",
        &mut v,
        m,
    );
    let with_envoys = samples.iter().filter(|s| s.moved > 0).count();
    let (mut v, _) = pick(|s| s.envoys_moved);
    row(
        "replica death -> its Envoys stream from another",
        "max <= 1000",
        &mut v,
        with_envoys - samples.iter().filter(|s| s.envoys_moved.is_some()).count(),
    );
    let mut terms: BTreeMap<u64, usize> = BTreeMap::new();
    for s in &samples {
        *terms.entry(s.terms).or_default() += 1;
    }
    println!(
        "terms per kill (kill to settled after rejoin): {}   target: 1 for every kill",
        terms
            .iter()
            .map(|(t, n)| format!("+{t}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "leader changes while settling: {leaders_changed_in_settle}; background writes: {} ok, {} failed",
        writes_ok.load(Ordering::Relaxed),
        write_errors.load(Ordering::Relaxed)
    );
    Ok(())
}
