//! The world a chaos run happens in, all real and on loopback: a BIND 9 whose TXT record keeps
//! changing, concord replicas discovering builders from it, TLS builders, Envoys spread over the
//! replicas, and the monitors that watch the invariants while faults are injected.

use anyhow::{Context, Result, bail};
use concord_harness::dns::Bind;
use concord_harness::envoy::{Envoy, Protocol, Versions};
use concord_harness::tls::{TestCa, TlsBuilder, probe};
use concord_harness::xds_oracle::{Oracle, Rule};
use concord_harness::xds_tap::{Sink, TapTls, XdsTap};
use concord_harness::{Cluster, Options, free_port};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Mutex as AsyncMutex;
use tokio_util::sync::CancellationToken;

/// The replicas' `--stale-after-ms`: a replica out of contact with the quorum this long turns
/// its Envoys away (invariant 6 allows [`STALE_SLACK`] more).
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_millis(1500);
/// How much later than [`STALE_AFTER`] a cut-off replica may still report SERVING: its
/// freshness is checked every 100 ms, and the probe here polls every 20 ms.
pub const STALE_SLACK: std::time::Duration = std::time::Duration::from_millis(200);

/// SNI names of the run's builders.
pub fn sni(id: &str) -> String {
    format!("{id}.chaos.test")
}

/// Every event and violation of a run, timestamped from its start.
pub struct Recorder {
    start: Instant,
    events: Mutex<Vec<Value>>,
    violations: Mutex<Vec<Value>>,
}

impl Recorder {
    fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            start: Instant::now(),
            events: Mutex::default(),
            violations: Mutex::default(),
        })
    }

    /// Milliseconds since the run started.
    pub fn now_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1e3
    }

    /// Records an event.
    pub fn event(&self, kind: &str, detail: Value) {
        let e = json!({ "t_ms": self.now_ms(), "kind": kind, "detail": detail });
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(e);
    }

    /// Records an invariant violation with its evidence.
    pub fn violation(&self, invariant: u8, detail: Value) {
        eprintln!("VIOLATION of invariant {invariant}: {detail}");
        let e = json!({ "t_ms": self.now_ms(), "invariant": invariant, "detail": detail });
        self.violations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(e.clone());
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(json!({ "t_ms": e["t_ms"], "kind": "violation", "detail": e }));
    }

    /// Events so far.
    pub fn events(&self) -> Vec<Value> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Violations so far.
    pub fn violations(&self) -> Vec<Value> {
        self.violations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Durations (ms) of the events of one kind, from their `ms` field.
    pub fn durations(&self, kind: &str) -> Vec<f64> {
        self.events()
            .iter()
            .filter(|e| e["kind"] == kind)
            .filter_map(|e| e["detail"]["ms"].as_f64())
            .collect()
    }
}

/// The DNS side: which churn builders are published, which were removed for good.
pub struct Dns {
    pub bind: Bind,
    port: u16,
    stable: Vec<String>,
    live: Vec<String>,
    removed: BTreeSet<String>,
    /// The removed ids in the order they were removed (the probe takes the latest).
    removed_order: Vec<String>,
    next: u32,
    servers: BTreeMap<String, TlsBuilder>,
}

impl Dns {
    fn entry(id: &str, ip: [u8; 4]) -> String {
        let ip = std::net::Ipv4Addr::from(ip);
        format!("instance={id},app=chaos,ip={ip},region=local")
    }

    fn ip_of(&self, id: &str) -> [u8; 4] {
        // Stable builders on 127.0.1.x, churn builders on 127.0.2.x (each its own address).
        match self.stable.iter().position(|s| s == id) {
            Some(i) => [127, 0, 1, 10 + i as u8],
            None => {
                let k: u32 = id.trim_start_matches('c').parse().unwrap_or(0);
                [127, 0, 2, (10 + k % 200) as u8]
            }
        }
    }

    fn publish(&self) -> Result<()> {
        let entries: Vec<String> = self
            .stable
            .iter()
            .chain(&self.live)
            .map(|id| Self::entry(id, self.ip_of(id)))
            .collect();
        self.bind.set_instances(&entries)
    }

    /// Adds a churn builder (with a real TLS server) or removes the oldest; returns what it did.
    pub async fn churn(&mut self, ca: &TestCa) -> Result<Value> {
        let add = self.live.len() < 3 || (self.live.len() < 6 && !self.next.is_multiple_of(3));
        let what = if add {
            self.next += 1;
            let id = format!("c{}", self.next);
            let addr = SocketAddr::from((self.ip_of(&id), self.port));
            self.servers.insert(
                id.clone(),
                TlsBuilder::start_on(ca, &id, &sni(&id), addr).await?,
            );
            self.live.push(id.clone());
            json!({ "added": id })
        } else {
            // The removed builder keeps listening: a probe through Envoy then fails only if Envoy
            // stopped routing it (invariant 4), not because nothing answers any more.
            let id = self.live.remove(0);
            self.removed.insert(id.clone());
            self.removed_order.push(id.clone());
            json!({ "removed": id })
        };
        self.publish()?;
        Ok(what)
    }

    /// Builders in DNS now.
    pub fn published(&self) -> BTreeSet<String> {
        self.stable.iter().chain(&self.live).cloned().collect()
    }

    /// Builders removed from DNS during the run.
    pub fn removed(&self) -> &BTreeSet<String> {
        &self.removed
    }

    /// Builders removed from DNS, most recently removed first.
    pub fn latest_removed(&self, n: usize) -> Vec<String> {
        self.removed_order.iter().rev().take(n).cloned().collect()
    }

    /// Builders in DNS the whole run.
    pub fn stable(&self) -> &[String] {
        &self.stable
    }
}

/// The proxies' sink: every ADS message is checked by the oracle as it passes; what it finds is
/// a violation of invariant 1 (never backwards) or 7 (every response accepted, the protocol kept).
fn oracle_sink(oracle: &Arc<Mutex<Oracle>>, rec: &Arc<Recorder>) -> Sink {
    let (oracle, rec) = (oracle.clone(), rec.clone());
    Arc::new(move |at, seen| {
        let found = oracle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .see(at, seen);
        for v in found {
            let invariant = match v.rule {
                Rule::NeverBackwards => 1,
                Rule::Accepted | Rule::Protocol => 7,
            };
            rec.violation(
                invariant,
                json!({ "envoy": v.envoy, "replica": v.replica, "stream": v.stream, "type": v.type_url, "seen by": "recording proxy", "what": v.what }),
            );
        }
    })
}

/// Counters of the monitors: connections through the Envoys, and samples of the Envoys'
/// versions (invariant 1), with the samples that failed, so a blind monitor shows.
#[derive(Default)]
pub struct Traffic {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub version_samples: AtomicU64,
    pub version_sample_errors: AtomicU64,
}

/// Builders removed from DNS, as replicas were seen holding them and not, by revision.
/// Revisions are the cluster's and ids are never reused, so a builder held at revision a, gone
/// at b and held again at c (a < b <= c, on any replicas) was brought back. Seen before it was
/// added, or on a lagging replica, it is only absent at a revision below the ones that held it.
#[derive(Default)]
struct Gone {
    tracks: BTreeMap<String, Track>,
}

/// What was seen of one removed builder.
struct Track {
    held_min: u64,
    held_max: u64,
    absent: BTreeSet<u64>,
    reported: bool,
}

impl Gone {
    /// Notes a replica's `held` builders at `revision`; returns the removed ones now seen
    /// brought back, with the revision each was seen gone at.
    fn see(
        &mut self,
        removed: &BTreeSet<String>,
        revision: u64,
        held: &BTreeSet<String>,
    ) -> Vec<(String, u64)> {
        let mut back = Vec::new();
        for bid in removed {
            let t = self.tracks.entry(bid.clone()).or_insert(Track {
                held_min: u64::MAX,
                held_max: 0,
                absent: BTreeSet::new(),
                reported: false,
            });
            if held.contains(bid) {
                t.held_min = t.held_min.min(revision);
                t.held_max = t.held_max.max(revision);
            } else {
                t.absent.insert(revision);
            }
            if !t.reported
                && t.held_min < t.held_max
                && let Some(&gone) = t.absent.range(t.held_min + 1..=t.held_max).next()
            {
                t.reported = true;
                back.push((bid.clone(), gone));
            }
        }
        back
    }
}

/// How often each Envoy's versions are read (its `version_text` readouts: cheap for Envoy).
const VERSION_SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// Everything of one run.
pub struct World {
    pub cluster: AsyncMutex<Cluster>,
    pub dns: AsyncMutex<Dns>,
    pub ca: TestCa,
    pub envoys: Vec<Arc<Envoy>>,
    pub rec: Arc<Recorder>,
    pub traffic: Arc<Traffic>,
    /// The oracle over every ADS message between each Envoy and the replicas.
    pub oracle: Arc<Mutex<Oracle>>,
    _stable_servers: Vec<TlsBuilder>,
    /// The recording proxies the Envoys stream through, one per (Envoy, replica).
    _taps: Vec<XdsTap>,
}

/// Settings of the world.
pub struct Setup {
    pub replicas: u64,
    pub envoys: usize,
    pub stable: usize,
    /// Where the replicas' data dirs go (crash-disk puts a crashfs mount under each).
    pub data_root: Option<std::path::PathBuf>,
    /// The Envoys' ADS protocol.
    pub protocol: Protocol,
    /// The replicas' `--listener-mode` (`filter-chains`, `sni-cluster`).
    pub listener_mode: String,
    /// The replicas' `--stale-after-ms` ([`STALE_AFTER`] but for lagging-replica).
    pub stale_after: std::time::Duration,
}

impl World {
    /// Starts DNS, replicas, stable builders and Envoys, and waits until every Envoy routes every
    /// stable builder.
    pub async fn start(s: &Setup) -> Result<Arc<World>> {
        let bind = Bind::start().await?;
        let port = free_port();
        let ca = TestCa::new()?;
        let stable: Vec<String> = (1..=s.stable).map(|i| format!("s{i}")).collect();
        let dns = Dns {
            bind,
            port,
            stable: stable.clone(),
            live: Vec::new(),
            removed: BTreeSet::new(),
            removed_order: Vec::new(),
            next: 0,
            servers: BTreeMap::new(),
        };
        let mut servers = Vec::new();
        for id in &stable {
            let addr = SocketAddr::from((dns.ip_of(id), port));
            servers.push(TlsBuilder::start_on(&ca, id, &sni(id), addr).await?);
        }
        dns.publish()?;
        let cluster = Cluster::start(Options {
            nodes: s.replicas,
            snapshot_threshold: 200,
            extra: vec![
                "--enable-fault-injection".into(),
                "--dns-server".into(),
                dns.bind.addr(),
                "--dns-source".into(),
                format!("txt:_instances.internal:{port}"),
                "--dns-sni-template".into(),
                "{id}.chaos.test".into(),
                "--stale-after-ms".into(),
                s.stale_after.as_millis().to_string(),
                "--listener-mode".into(),
                s.listener_mode.clone(),
            ],
            data_root: s.data_root.clone(),
            // The product's own election timing: chaos measures the real failover.
            ..Options::measured()
        })
        .await?;
        let rec = Recorder::new();
        let oracle = Arc::new(Mutex::new(Oracle::default()));
        let sink = oracle_sink(&oracle, &rec);
        let pki = cluster.pki().context(
            "the chaos world runs with TLS (the recording proxies present its certificates)",
        )?;
        let mut envoys = Vec::new();
        let mut taps = Vec::new();
        for i in 0..s.envoys {
            let node_id = format!("envoy-{}", i + 1);
            // Every Envoy streams through a recording proxy to each replica (invariant 1 and 7).
            let mut order = Vec::new();
            for k in 0..cluster.nodes.len() {
                let r = cluster
                    .nodes
                    .values()
                    .nth((i + k) % cluster.nodes.len())
                    .expect("replica");
                let (node, envoy) = (pki.node(r.id)?, pki.envoy(&node_id)?);
                let tls = TapTls::from_files(&pki.ca(), (&node.0, &node.1), (&envoy.0, &envoy.1))?;
                let tap = XdsTap::start(&node_id, r.id, r.xds.parse()?, &tls, sink.clone()).await?;
                order.push(tap.addr.to_string());
                taps.push(tap);
            }
            let order: Vec<&str> = order.iter().map(String::as_str).collect();
            envoys.push(Arc::new(
                Envoy::start_with(&cluster, &node_id, &order, true, Some(s.protocol)).await?,
            ));
        }
        let world = World {
            cluster: AsyncMutex::new(cluster),
            dns: AsyncMutex::new(dns),
            ca,
            envoys,
            rec,
            traffic: Arc::default(),
            oracle,
            _stable_servers: servers,
            _taps: taps,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        for e in &world.envoys {
            for id in &stable {
                loop {
                    match probe(&world.ca, e.listener, &sni(id)).await {
                        Ok(g) if g == format!("builder {id}") => break,
                        _ if Instant::now() > deadline => {
                            bail!("{} never routed {id}:\n{}", e.node_id, e.log_tail())
                        }
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
        }
        world.rec.event(
            "ready",
            json!({ "replicas": s.replicas, "envoys": s.envoys }),
        );
        Ok(Arc::new(world))
    }

    /// Starts the monitors; they run until `stop`.
    pub fn monitor(
        self: &Arc<Self>,
        stop: CancellationToken,
        dns_every: Duration,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        // Traffic (invariant 4): new TLS connections to stable builders through every Envoy.
        for e in &self.envoys {
            let (w, e, stop) = (self.clone(), e.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let stable: Vec<String> = w.dns.lock().await.stable().to_vec();
                let mut i = 0usize;
                while !stop.is_cancelled() {
                    let id = &stable[i % stable.len()];
                    i += 1;
                    w.traffic.sent.fetch_add(1, Ordering::Relaxed);
                    match probe(&w.ca, e.listener, &sni(id)).await {
                        Ok(g) if g == format!("builder {id}") => {}
                        other => {
                            w.traffic.failed.fetch_add(1, Ordering::Relaxed);
                            w.rec.violation(4, json!({ "envoy": e.node_id, "builder": id, "result": format!("{other:?}") }));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }));
        }
        // Versions (invariant 1): never lower than one reported before, read from Envoy's own
        // readouts of the last CDS and LDS update it accepted, every 10 ms. A failed sample is
        // counted (the summary shows them beside the samples), never taken as a pass.
        for e in &self.envoys {
            let (w, e, stop) = (self.clone(), e.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut max = Versions::default();
                // A regression is reported once, not again at every sample that still shows it.
                let mut reported = None;
                while !stop.is_cancelled() {
                    match e.readouts().await {
                        Ok(v) => {
                            w.traffic.version_samples.fetch_add(1, Ordering::Relaxed);
                            let behind = v.clusters < max.clusters || v.listeners < max.listeners;
                            if behind && reported != Some((max, v)) {
                                w.rec.violation(1, json!({ "envoy": e.node_id, "before": format!("{max:?}"), "now": format!("{v:?}") }));
                                reported = Some((max, v));
                            }
                            max.clusters = max.clusters.max(v.clusters);
                            max.listeners = max.listeners.max(v.listeners);
                        }
                        Err(_) => {
                            w.traffic.version_sample_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(VERSION_SAMPLE_EVERY).await;
                }
            }));
        }
        // DNS churn: a change every `dns_every`.
        {
            let (w, stop) = (self.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let what = w.dns.lock().await.churn(&w.ca).await;
                    match what {
                        Ok(d) => w.rec.event("dns", d),
                        Err(e) => w.rec.event("dns-error", json!(e.to_string())),
                    }
                    tokio::time::sleep(dns_every).await;
                }
            }));
        }
        // Removed builders stay removed (invariant 3, continuously): every replica's builders,
        // every 200 ms, against the revision at which each removed one was first seen gone.
        {
            let (w, stop) = (self.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut gone = Gone::default();
                while !stop.is_cancelled() {
                    let removed = w.dns.lock().await.removed().clone();
                    let apis: Vec<(u64, concord_api::Client)> = {
                        let c = w.cluster.lock().await;
                        c.up().into_iter().map(|id| (id, c.api(id))).collect()
                    };
                    for (id, api) in apis {
                        let Ok(v) = api.builders(false).await else {
                            continue;
                        };
                        let held: BTreeSet<String> = v.ids().into_iter().collect();
                        for (bid, since) in gone.see(&removed, v.revision, &held) {
                            w.rec.violation(3, json!({ "node": id, "removed builder is back": bid, "at revision": v.revision, "gone since revision": since }));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }));
        }
        // Leaders and Envoy placement, as the replicas report them.
        {
            let (w, stop) = (self.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut leader: Option<u64> = None;
                let mut placement: BTreeMap<String, u64> = BTreeMap::new();
                let mut lost: BTreeMap<String, (u64, f64)> = BTreeMap::new();
                let http = reqwest::Client::new();
                while !stop.is_cancelled() {
                    let (ids, admins): (Vec<u64>, Vec<String>) = {
                        let c = w.cluster.lock().await;
                        c.up().into_iter().map(|id| (id, c.nodes[&id].admin.clone())).unzip()
                    };
                    let mut seen_leader = None;
                    let mut now_on: BTreeMap<String, u64> = BTreeMap::new();
                    for (id, admin) in ids.iter().zip(&admins) {
                        // Short timeouts: a replica that hangs must not stall the watch.
                        let Ok(api) = concord_api::Client::builder(admin).http(http.clone()).timeout(Duration::from_millis(500)).build() else {
                            continue;
                        };
                        if let Ok(s) = api.status().await
                            && s.role == concord_api::Role::Leader
                        {
                            seen_leader = Some(*id);
                        }
                        if let Ok(v) = api.envoys().await {
                            for n in v.ids() {
                                now_on.insert(n, *id);
                            }
                        }
                    }
                    if seen_leader.is_some() && seen_leader != leader {
                        w.rec.event("leader", json!({ "from": leader, "to": seen_leader }));
                        leader = seen_leader;
                    }
                    for (envoy, was) in &placement {
                        if !now_on.contains_key(envoy) && !lost.contains_key(envoy) {
                            lost.insert(envoy.clone(), (*was, w.rec.now_ms()));
                        }
                    }
                    for (envoy, on) in &now_on {
                        if let Some((from, since)) = lost.remove(envoy) {
                            let ms = w.rec.now_ms() - since;
                            w.rec.event("failover", json!({ "envoy": envoy, "from": from, "to": on, "ms": ms }));
                        } else if placement.get(envoy).is_some_and(|p| p != on) {
                            w.rec.event("failover", json!({ "envoy": envoy, "from": placement[envoy], "to": on, "ms": 0.0 }));
                        }
                    }
                    for (envoy, on) in now_on {
                        placement.insert(envoy, on);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }));
        }
        tasks
    }
}

#[cfg(test)]
mod tests {
    use super::Gone;
    use std::collections::BTreeSet;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_removed_builder_held_again_at_a_newer_revision_is_caught() {
        let mut g = Gone::default();
        let removed = set(&["c1"]);
        // Not yet added at 3 (a lagging replica), added at 4, still held at 5.
        assert!(g.see(&removed, 3, &set(&["s1"])).is_empty());
        assert!(g.see(&removed, 4, &set(&["c1", "s1"])).is_empty());
        assert!(g.see(&removed, 5, &set(&["c1", "s1"])).is_empty());
        // Gone at 7; a lagging replica at 6 still holds it.
        assert!(g.see(&removed, 7, &set(&["s1"])).is_empty());
        assert!(g.see(&removed, 6, &set(&["c1", "s1"])).is_empty());
        // Held again at 7 or later: back, reported once.
        assert_eq!(
            g.see(&removed, 9, &set(&["c1", "s1"])),
            [("c1".to_string(), 7)]
        );
        assert!(g.see(&removed, 10, &set(&["c1", "s1"])).is_empty());
        // Seen in the other order: held at 12 first, then gone at 11 on another replica.
        let mut g = Gone::default();
        assert!(g.see(&removed, 10, &set(&["c1"])).is_empty());
        assert!(g.see(&removed, 12, &set(&["c1"])).is_empty());
        assert_eq!(g.see(&removed, 11, &set(&[])), [("c1".to_string(), 11)]);
    }
}
