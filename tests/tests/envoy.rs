//! Real Envoy 1.40 in front of real replicas: routing by SNI to TLS builders, changes reaching
//! every Envoy at the same version, failover when an Envoy's replica is SIGKILLed, and a
//! registry of 1000 builders.

use anyhow::{Context, Result, bail, ensure};
use concord_api::{BatchBody, BatchBuilder};
use concord_harness::envoy::{Envoy, Protocol};
use concord_harness::tls::{TestCa, TlsBuilder, probe};
use concord_harness::{Cluster, Options, eventually, sni};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

/// Waits until `envoy` reports `revision` for both clusters and listeners.
async fn at_revision(envoy: &Envoy, revision: u64) -> Result<()> {
    eventually(
        T,
        &format!("{} at revision {revision}", envoy.node_id),
        || async {
            let v = envoy.versions().await?;
            ensure!(
                v.clusters == Some(revision) && v.listeners == Some(revision),
                "{v:?}"
            );
            Ok(())
        },
    )
    .await
}

async fn leader_revision(c: &Cluster) -> Result<u64> {
    let leader = c.leader().await?;
    let (rev, _) = c.builders(leader, true).await?;
    Ok(rev)
}

/// A test once with each protocol.
macro_rules! both {
    ($f:ident, $sotw:ident, $delta:ident) => {
        #[tokio::test]
        async fn $sotw() -> Result<()> {
            $f(Protocol::Sotw).await
        }
        #[tokio::test]
        async fn $delta() -> Result<()> {
            $f(Protocol::Delta).await
        }
    };
}

both!(
    envoys_on_two_replicas_route_by_sni_at_the_same_version,
    envoys_on_two_replicas_route_by_sni_at_the_same_version_sotw,
    envoys_on_two_replicas_route_by_sni_at_the_same_version_delta
);
both!(
    envoy_fails_over_when_its_replica_is_killed,
    envoy_fails_over_when_its_replica_is_killed_sotw,
    envoy_fails_over_when_its_replica_is_killed_delta
);
both!(
    a_real_envoy_takes_1000_builders,
    a_real_envoy_takes_1000_builders_sotw,
    a_real_envoy_takes_1000_builders_delta
);

async fn envoys_on_two_replicas_route_by_sni_at_the_same_version(p: Protocol) -> Result<()> {
    let c = Cluster::start(Options::default()).await?;
    let ca = TestCa::new()?;
    let b1 = TlsBuilder::start(&ca, "b1", &sni("b1")).await?;
    let b2 = TlsBuilder::start(&ca, "b2", &sni("b2")).await?;
    c.put_at(1, "b1", b1.addr, &sni("b1")).await?;
    c.put_at(2, "b2", b2.addr, &sni("b2")).await?;
    let x: Vec<&str> = c.nodes.values().map(|r| r.xds.as_str()).collect();
    // Each Envoy prefers another replica, so they stream from different ones.
    let e1 = Envoy::start_with(&c, "envoy-1", &[x[0], x[1], x[2]], true, Some(p)).await?;
    let e2 = Envoy::start_with(&c, "envoy-2", &[x[1], x[2], x[0]], true, Some(p)).await?;
    for e in [&e1, &e2] {
        e.routes(&ca, "b1").await?;
        e.routes(&ca, "b2").await?;
        ensure!(
            probe(&ca, e.listener, &sni("unknown")).await.is_err(),
            "an unknown SNI must reach no builder"
        );
    }
    ensure!(c.envoys_on(1).await? == ["envoy-1"], "envoy-1 on node 1");
    ensure!(c.envoys_on(2).await? == ["envoy-2"], "envoy-2 on node 2");
    // Same version on both, equal to the cluster's revision.
    let rev = leader_revision(&c).await?;
    at_revision(&e1, rev).await?;
    at_revision(&e2, rev).await?;
    let v = c.api(1).envoys().await?;
    ensure!(
        v.envoys.first().and_then(|e| e.acked("clusters")) == Some(rev),
        "{v:?}"
    );
    // What the replica serves, decoded: a chain and a cluster per builder.
    let d = c.api(2).xds_resources().await?;
    let r = &d.resources;
    ensure!(r.version_info == rev.to_string(), "{d:?}");
    ensure!(r.clusters.len() == 2, "{d:?}");
    ensure!(r.clusters[0].endpoint == b1.addr.to_string(), "{d:?}");
    let chains = r.listener.as_ref().map(|l| &l.filter_chains);
    ensure!(
        chains.and_then(|f| f.get(1)).map(|c| c.0.as_str()) == Some(sni("b2").as_str()),
        "{d:?}"
    );

    // Remove b2: it stops routing everywhere; add b3: it routes everywhere.
    c.remove(3, "b2").await?;
    let b3 = TlsBuilder::start(&ca, "b3", &sni("b3")).await?;
    c.put_at(3, "b3", b3.addr, &sni("b3")).await?;
    for e in [&e1, &e2] {
        e.does_not_route(&ca, "b2").await?;
        e.routes(&ca, "b3").await?;
        e.routes(&ca, "b1").await?;
    }
    let rev = leader_revision(&c).await?;
    at_revision(&e1, rev).await?;
    at_revision(&e2, rev).await?;
    ensure!(
        b2.served.load(Ordering::Relaxed) > 0,
        "b2 was reached before removal"
    );
    Ok(())
}

async fn envoy_fails_over_when_its_replica_is_killed(p: Protocol) -> Result<()> {
    let mut c = Cluster::start(Options::default()).await?;
    let ca = TestCa::new()?;
    let b1 = TlsBuilder::start(&ca, "b1", &sni("b1")).await?;
    c.put_at(2, "b1", b1.addr, &sni("b1")).await?;
    let x: Vec<String> = c.nodes.values().map(|r| r.xds.clone()).collect();
    let servers = [x[0].as_str(), &x[1], &x[2]];
    let e = Arc::new(Envoy::start_with(&c, "envoy-1", &servers, true, Some(p)).await?);
    e.routes(&ca, "b1").await?;
    ensure!(
        c.envoys_on(1).await? == ["envoy-1"],
        "streams from node 1 first"
    );
    let before = e.versions().await?;

    // New connections through the Envoy, all the time, and its versions, all the time.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let ca = Arc::new(ca);
    let prober = {
        let (e, ca, stop, ok, failed) = (
            e.clone(),
            ca.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match probe(&ca, e.listener, &sni("b1")).await {
                    Ok(g) if g == "builder b1" => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let watcher = {
        let (e, stop) = (e.clone(), stop.clone());
        tokio::spawn(async move {
            let mut last = before;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(v) = e.versions().await {
                    if v.clusters < last.clusters || v.listeners < last.listeners {
                        return Err(anyhow::anyhow!("went backwards: {last:?} -> {v:?}"));
                    }
                    last = v;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(())
        })
    };

    // The prober runs before the kill and goes on across the failover (awaited below), so the
    // failed-connection count covers the whole failover, however fast or slow the machine.
    eventually(T, "probes to b1 run before the kill", || async {
        ensure!(ok.load(Ordering::Relaxed) >= 3, "not yet");
        Ok(())
    })
    .await?;
    let killed = Instant::now();
    c.node(1).kill();
    let moved_to = eventually(T, "envoy-1 streams from another replica", || async {
        for id in [2, 3] {
            if c.envoys_on(id).await?.contains(&"envoy-1".to_string()) {
                return Ok(id);
            }
        }
        bail!("not reconnected yet")
    })
    .await?;
    let failover = killed.elapsed();
    // A builder added after the kill reaches it.
    let b3 = TlsBuilder::start(&ca, "b3", &sni("b3")).await?;
    c.put_at(moved_to, "b3", b3.addr, &sni("b3")).await?;
    e.routes(&ca, "b3").await?;
    let rev = leader_revision(&c).await?;
    at_revision(&e, rev).await?;
    // Failover can be over within a few probes: keep probing a little past it.
    eventually(T, "probes after the failover", || async {
        ensure!(ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) > 10);
        Ok(())
    })
    .await?;

    let after_failover = ok.load(Ordering::Relaxed);
    eventually(T, "probes to b1 run after the failover", || async {
        ensure!(ok.load(Ordering::Relaxed) >= after_failover + 3, "not yet");
        Ok(())
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    prober.await?;
    watcher.await??;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    ensure!(
        failed == 0,
        "{failed} of {} connections to b1 failed during failover",
        ok + failed
    );
    // On its new replica a delta Envoy got only the cluster that changed (b3), not b1 again.
    let sent = clusters_sent(&c, moved_to, "envoy-1").await?;
    match p {
        Protocol::Delta => ensure!(sent == (1, 0), "clusters sent, removed: {sent:?}"),
        Protocol::Sotw => ensure!(sent.0 >= 2, "clusters sent: {sent:?}"),
    }
    eprintln!("failover to node {moved_to} in {failover:?}; {ok} connections, none failed");
    Ok(())
}

/// Clusters sent and cluster removals sent to Envoy `node_id` by replica `id`, over its
/// streams there.
async fn clusters_sent(c: &Cluster, id: u64, node_id: &str) -> Result<(u64, u64)> {
    sent(c, id, node_id, "clusters").await
}

/// Resources and removals of `type_name` sent to Envoy `node_id` by replica `id`.
async fn sent(c: &Cluster, id: u64, node_id: &str, type_name: &str) -> Result<(u64, u64)> {
    let v = c.api(id).envoys().await?;
    let mut sent = (0, 0);
    for e in v.envoys.iter().filter(|e| e.node_id == node_id) {
        if let Some(t) = e.of(type_name) {
            sent.0 += t.resources_sent;
            sent.1 += t.removals_sent;
        }
    }
    Ok(sent)
}

#[tokio::test]
async fn failed_over_delta_envoy_gets_only_what_changed() -> Result<()> {
    failed_over_delta_envoy_gets_only_what_changed_in(false).await
}

#[tokio::test]
async fn failed_over_delta_envoy_gets_only_what_changed_sni_cluster() -> Result<()> {
    failed_over_delta_envoy_gets_only_what_changed_in(true).await
}

async fn failed_over_delta_envoy_gets_only_what_changed_in(sni_cluster: bool) -> Result<()> {
    let mut opts = Options::default();
    if sni_cluster {
        opts.extra = [
            "--listener-mode",
            "sni-cluster",
            "--sni-suffix",
            "builders.test",
        ]
        .map(String::from)
        .to_vec();
    }
    let mut c = Cluster::start(opts).await?;
    let ca = TestCa::new()?;
    let batch = |upserts: Vec<BatchBuilder>, removes: Vec<&str>| BatchBody {
        upserts,
        removes: removes.into_iter().map(String::from).collect(),
    };
    let fake = |i: u16| {
        let addr = ([127, 0, 0, 2], 21000 + i).into();
        BatchBuilder::new(format!("f{i}"), addr, sni(&format!("f{i}")))
    };
    c.api(1)
        .batch(&batch((0..20).map(fake).collect(), vec![]))
        .await?;
    let b1 = TlsBuilder::start(&ca, "b1", &sni("b1")).await?;
    c.put_at(1, "b1", b1.addr, &sni("b1")).await?;
    let x: Vec<String> = c.nodes.values().map(|r| r.xds.clone()).collect();
    let servers = [x[0].as_str(), &x[1], &x[2]];
    let e = Envoy::start_with(&c, "envoy-1", &servers, true, Some(Protocol::Delta)).await?;
    e.routes(&ca, "b1").await?;
    let before = e.versions().await?;
    ensure!(c.envoys_on(1).await? == ["envoy-1"], "on node 1 first");
    ensure!(
        clusters_sent(&c, 1, "envoy-1").await? == (21, 0),
        "everything at first"
    );

    c.node(1).kill();
    // While it fails over: 2 added (one a real builder), 1 changed, 1 removed, in one entry.
    let b2 = TlsBuilder::start(&ca, "b2", &sni("b2")).await?;
    let mut moved = fake(3);
    moved.addr = ([127, 0, 0, 3], 21003).into();
    let upserts = vec![fake(20), BatchBuilder::new("b2", b2.addr, sni("b2")), moved];
    c.api(2).batch(&batch(upserts, vec!["f5"])).await?;
    e.routes(&ca, "b2").await?;
    e.routes(&ca, "b1").await?;
    let rev = leader_revision(&c).await?;
    let after = if sni_cluster {
        // Envoy takes a delta response's version only when it changes something: the
        // sni-cluster listener never does, so its version stays where it was.
        eventually(T, "clusters at the revision", || async {
            let v = e.versions().await?;
            ensure!(v.clusters == Some(rev), "{v:?}");
            Ok(v)
        })
        .await?
    } else {
        at_revision(&e, rev).await?;
        e.versions().await?
    };
    ensure!(after.clusters > before.clusters, "{before:?} -> {after:?}");
    if sni_cluster {
        ensure!(
            after.listeners == before.listeners,
            "{before:?} -> {after:?}"
        );
    } else {
        ensure!(
            after.listeners > before.listeners,
            "{before:?} -> {after:?}"
        );
    }
    let mut on = None;
    for id in [2, 3] {
        if c.envoys_on(id).await?.contains(&"envoy-1".to_string()) {
            on = Some(id);
        }
    }
    let on = on.context("envoy-1 streams from node 2 or 3")?;
    let got = clusters_sent(&c, on, "envoy-1").await?;
    ensure!(
        got == (3, 1),
        "a failed-over Envoy must get the 3 changed clusters and 1 removal, got {got:?}"
    );
    // The listener: with a chain per builder it changed, once; with sni-cluster it never does.
    let listeners = sent(&c, on, "envoy-1", "listeners").await?;
    let want = if sni_cluster { (0, 0) } else { (1, 0) };
    ensure!(listeners == want, "listeners sent, removed: {listeners:?}");
    let clusters: u64 = e.stat("cluster_manager.active_clusters").await?.parse()?;
    ensure!(clusters == 22 + 1, "{clusters} active clusters");
    Ok(())
}

async fn a_real_envoy_takes_1000_builders(p: Protocol) -> Result<()> {
    let c = Cluster::start(Options::default()).await?;
    let ca = TestCa::new()?;
    let upserts: Vec<_> = (0..999u16)
        .map(|i| {
            let addr = ([127, 0, 0, 2 + (i / 250) as u8], 20000 + i).into();
            BatchBuilder::new(format!("bulk{i}"), addr, sni(&format!("bulk{i}")))
        })
        .collect();
    let body = BatchBody {
        upserts,
        removes: Vec::new(),
    };
    c.api(1).batch(&body).await.context("batch put")?;
    let x: Vec<&str> = c.nodes.values().map(|r| r.xds.as_str()).collect();
    let e = Envoy::start_with(&c, "envoy-big", &x, false, Some(p)).await?;
    // The 1000th, added last, is a real TLS builder.
    let last = TlsBuilder::start(&ca, "last", &sni("last")).await?;
    c.put_at(2, "last", last.addr, &sni("last")).await?;
    e.routes(&ca, "last").await?;
    let rev = leader_revision(&c).await?;
    at_revision(&e, rev).await?;
    let clusters: u64 = e.stat("cluster_manager.active_clusters").await?.parse()?;
    ensure!(
        clusters == 1001,
        "{clusters} active clusters (1000 builders + the xDS cluster)"
    );
    Ok(())
}

#[test]
fn generated_bootstraps_pass_envoy_validate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // TLS and mutual TLS bootstraps need real files: Envoy loads them when it validates.
    let pki = concord_harness::pki::Pki::create(&dir.path().join("certs"), "prod", &[1])?;
    let (ca, (cert, key)) = (pki.ca(), pki.envoy("validate")?);
    let s = |p: &std::path::Path| p.display().to_string();
    let cases: Vec<Vec<String>> = vec![
        vec![
            "--servers".into(),
            "127.0.0.1:18001,127.0.0.1:18002,127.0.0.1:18003".into(),
            "--prefer-first".into(),
        ],
        vec![
            "--servers".into(),
            "concord-0.concord:18000,concord-1.concord:18000".into(),
            "--listener-address".into(),
            "0.0.0.0:10443".into(),
            "--xds-protocol".into(),
            "sotw".into(),
        ],
        vec![
            "--servers".into(),
            "127.0.0.1:18001,127.0.0.1:18002".into(),
            "--tls-ca".into(),
            s(&ca),
            "--cluster".into(),
            "prod".into(),
        ],
        vec![
            "--servers".into(),
            "concord-0.concord:18000".into(),
            "--tls-ca".into(),
            s(&ca),
            "--tls-cert".into(),
            s(&cert),
            "--tls-key".into(),
            s(&key),
            "--any-server-identity".into(),
        ],
        // Envoy's own telemetry, each option alone and all of them together.
        vec![
            "--servers=127.0.0.1:18001".into(),
            "--statsd=127.0.0.1:8125".into(),
        ],
        vec![
            "--servers=127.0.0.1:18001".into(),
            "--metrics-service=127.0.0.1:9000".into(),
            "--stats-flush-interval-ms=1500".into(),
        ],
        vec![
            "--servers=127.0.0.1:18001".into(),
            "--prometheus-addr=0.0.0.0:9102".into(),
        ],
        vec![
            "--servers=127.0.0.1:18001".into(),
            r"--stats-exclude=^cluster\.builder_[^.]*\.upstream_cx_".into(),
            r"--stats-exclude=.*\.(zone|canary)\..*".into(),
        ],
        vec![
            "--servers=127.0.0.1:18001".into(),
            "--statsd=127.0.0.1:8125".into(),
            "--metrics-service=127.0.0.1:9000".into(),
            "--prometheus-addr=127.0.0.1:9102".into(),
            r"--stats-exclude=^cluster\.builder_".into(),
        ],
    ];
    for (i, args) in cases.iter().enumerate() {
        let out = std::process::Command::new(concord_harness::concord_bin())
            .args(["envoy-bootstrap", "--node-id", "validate"])
            .args(args)
            .output()?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = dir.path().join(format!("b{i}.yaml"));
        std::fs::write(&path, &out.stdout)?;
        let v = std::process::Command::new(concord_harness::envoy::envoy_bin())
            .args(["--mode", "validate", "--disable-hot-restart", "-c"])
            .arg(&path)
            .output()?;
        let text =
            String::from_utf8_lossy(&v.stdout).to_string() + &String::from_utf8_lossy(&v.stderr);
        ensure!(
            v.status.success() && text.contains("OK"),
            "{args:?}: {text}"
        );
    }
    Ok(())
}
