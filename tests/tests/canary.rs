//! Canaries (issue 15), with real Envoys.
//!
//! Config canaries: a change staged to the Envoys of node cluster `canary` (`concord apply
//! --canary`) reaches them and not the others; the others get it once the group has held it
//! for the hold. A staged change the canary Envoy rejects (a listener on a port already taken
//! on its host: accepted by the API, refused by Envoy) is aborted at the NACK with Envoy's
//! message, and never reaches the other Envoys. A staged change Envoy takes but whose traffic
//! fails (the service's endpoints moved to an instance that answers only errors) is aborted on
//! the error rate of the group's requests, from the stats their Envoys stream, long before its
//! hold; the other Envoys never see a failed request.
//!
//! Control-plane canaries: a replica restarted with `--serve-envoys cluster=canary`
//! (as one running a new concord version would be) serves only the Envoys of that group. Two
//! real Envoys prefer it: the canary one streams from it; the other is sent on at its first
//! request (UNAVAILABLE, before any response) and streams from another replica at once, with the
//! same config, and never from the canary replica. Restarted without the flag (the group
//! widened to everyone), the replica serves every Envoy again.

use anyhow::{Context, Result, ensure};
use concord_harness::envoy::{Envoy, EnvoyOptions};
use concord_harness::grpc::proto::SayRequest;
use concord_harness::grpc::{GrpcBackend, echo_client};
use concord_harness::{Cluster, Options, eventually, free_port};
use concord_registry::services::Desired;
use serde_json::json;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// An Envoy of node cluster `group` that prefers replica `first` of `c`.
async fn envoy(c: &Cluster, name: &str, group: &str, first: u64) -> Result<Envoy> {
    envoy_at(c, name, group, first, 0).await
}

/// As [`envoy`], its services listeners' ports moved by `offset` (two Envoys on one host).
async fn envoy_at(c: &Cluster, name: &str, group: &str, first: u64, offset: i32) -> Result<Envoy> {
    let mut ids = c.up();
    ids.retain(|i| *i != first);
    ids.insert(0, first);
    let x: Vec<String> = ids.iter().map(|i| c.nodes[i].xds.clone()).collect();
    let servers: Vec<&str> = x.iter().map(String::as_str).collect();
    let mut bootstrap = c.bootstrap_args(name)?;
    // Stats every second (Envoy's default is 5 s), so error rates are judged within seconds.
    bootstrap
        .extend(["--node-cluster", group, "--stats-flush-interval-ms", "1000"].map(String::from));
    let opts = EnvoyOptions {
        prefer_first: true,
        bootstrap,
        port_offset: offset,
        ..EnvoyOptions::default()
    };
    Envoy::launch(c.dir(), name, &servers, &opts).await
}

/// The replicas `envoy` streams from now.
async fn streams_from(c: &Cluster, envoy: &str) -> Result<Vec<u64>> {
    let mut on = Vec::new();
    for id in c.up() {
        if c.envoys_on(id).await?.iter().any(|e| e == envoy) {
            on.push(id);
        }
    }
    Ok(on)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_limited_to_a_group_sends_every_other_envoy_on_at_once() -> Result<()> {
    let mut c = Cluster::start(Options::default()).await?;
    let leader = c.leader().await?;
    let revision = c.put(leader, "b1", free_port()).await?;
    // Node 1 becomes the canary replica.
    let canary = 1;
    c.node(canary).kill();
    c.node(canary)
        .args_mut()
        .extend(["--serve-envoys".to_string(), "cluster=canary".to_string()]);
    c.node(canary).start()?;
    c.serving(canary).await?;
    let started = Instant::now();
    let a = envoy(&c, "envoy-canary", "canary", canary).await?;
    let b = envoy(&c, "envoy-main", "main", canary).await?;
    // Both hold the revision, each from where its group is served.
    for e in [&a, &b] {
        eventually(T, "the Envoy holds the revision", || async {
            let v = e.versions().await?;
            ensure!(v.clusters >= Some(revision), "{v:?}");
            Ok(())
        })
        .await
        .map_err(|err| err.context(e.log_tail()))?;
    }
    let b_synced = started.elapsed();
    ensure!(
        streams_from(&c, "envoy-canary").await? == [canary],
        "the canary Envoy streams elsewhere"
    );
    let on = streams_from(&c, "envoy-main").await?;
    ensure!(
        on.len() == 1 && on[0] != canary,
        "envoy-main streams from {on:?}"
    );
    eprintln!(
        "envoy-main streams from node {} and holds revision {revision} {b_synced:?} after start",
        on[0]
    );
    // It was sent on at its first request and never came back: the canary replica logged it,
    // and lists only the canary Envoy.
    let log = std::fs::read_to_string(c.nodes[&canary].log())?;
    ensure!(
        log.contains("sent on an Envoy outside the groups this replica serves"),
        "no refusal logged"
    );
    ensure!(c.envoys_on(canary).await? == ["envoy-canary"]);
    // Envoy-main never took config from the canary replica: every update it accepted came
    // from the one it streams from (no rejected update, and its stream was not reset by us).
    let rejected = b.stat("cluster_manager.cds.update_rejected").await?;
    ensure!(rejected.trim() == "0", "{rejected}");
    // Widened to every Envoy: restarted without the flag, it serves envoy-main again when
    // envoy-main reconnects (its preferred replica answers first).
    c.node(canary).kill();
    let n = c.node(canary).args_mut().len();
    c.node(canary).args_mut().truncate(n - 2);
    c.node(canary).start()?;
    c.serving(canary).await?;
    let next = c.put(leader_now(&c).await?, "b2", free_port()).await?;
    eventually(T, "both Envoys hold the next revision", || async {
        for e in [&a, &b] {
            let v = e.versions().await?;
            ensure!(v.clusters >= Some(next), "{v:?}");
        }
        Ok(())
    })
    .await?;
    Ok(())
}

async fn leader_now(c: &Cluster) -> Result<u64> {
    c.leader().await.context("a leader")
}

/// The services half: `echo` routed by `:authority` echo.local on 127.0.0.1:`port`, and
/// `domains` more virtual hosts to it, and `extra` listeners.
fn config(g: &GrpcBackend, port: u16, more: &[&str], extra: &[(&str, u16)]) -> Result<Desired> {
    let mut hosts = vec![json!({"name": "echo", "domains": ["echo.local"],
        "routes": [{"match": {"prefix": "/"}, "service": "echo"}]})];
    for d in more {
        hosts.push(json!({"name": d.replace('.', "-"), "domains": [d],
            "routes": [{"match": {"prefix": "/"}, "service": "echo"}]}));
    }
    let mut listeners =
        json!({"main": {"address": format!("127.0.0.1:{port}"), "route_table": "main"}});
    for (name, p) in extra {
        listeners[name] = json!({"address": format!("127.0.0.1:{p}"), "route_table": "main"});
    }
    Ok(serde_json::from_value(json!({
        "services": {"echo": {"protocol": "grpc", "endpoints": [{"addr": g.addr.to_string()}]}},
        "route_tables": {"main": {"virtual_hosts": hosts}},
        "listeners": listeners
    }))?)
}

/// One call through the Envoy listening at `port` with `:authority` `authority`.
async fn call(port: u16, authority: &str) -> Result<String> {
    let addr = format!("127.0.0.1:{port}").parse()?;
    let mut c = echo_client(addr, authority).await?;
    let r = c
        .say(SayRequest {
            message: "hi".into(),
            delay_ms: 0,
        })
        .await?;
    Ok(r.into_inner().instance)
}

/// A cluster serving `echo` from `backend` to two Envoys preferring the leader, of node
/// clusters `canary` and `main`, both routing: the cluster, the leader, the services
/// listener's port, and the Envoys with their listeners' ports.
async fn two_envoys(backend: &GrpcBackend) -> Result<(Cluster, u64, u16, [(Envoy, u16); 2])> {
    let c = Cluster::start(Options::default()).await?;
    let leader = c.services_enabled().await?;
    let port = free_port();
    let offset = 7;
    c.api(leader)
        .apply_config(&config(backend, port, &[], &[])?)
        .await?;
    let a = envoy_at(&c, "envoy-canary", "canary", leader, 0).await?;
    let b = envoy_at(&c, "envoy-main", "main", leader, offset).await?;
    let (pa, pb) = (port, (i32::from(port) + offset) as u16);
    for p in [pa, pb] {
        eventually(T, "routed", || routes_to(p, &backend.name)).await?;
    }
    Ok((c, leader, port, [(a, pa), (b, pb)]))
}

/// Whether the Envoy at `port` routes `echo.local` to the instance named `instance`.
async fn routes_to(port: u16, instance: &str) -> Result<()> {
    let i = call(port, "echo.local").await?;
    ensure!(i == instance, "answered by {i}, not {instance}");
    Ok(())
}

/// A stage of `config` to the Envoys of node cluster `canary`.
fn to_canary(config: Desired, hold_secs: u64, min_requests: u64) -> Result<concord_api::StageBody> {
    Ok(concord_api::StageBody {
        config,
        group: vec!["cluster=canary".parse()?],
        hold: concord_registry::services::Duration::from_secs(hold_secs),
        max_error_increase: 5,
        min_requests,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_staged_config_reaches_its_group_first_and_a_nack_stops_it() -> Result<()> {
    let g = GrpcBackend::start("g1").await?;
    let (c, leader, port, [(_a, pa), (b, pb)]) = two_envoys(&g).await?;
    let b_before = b.versions().await?;

    // A valid change, staged to the canary group with a 4 s hold.
    let hold = Duration::from_secs(4);
    let body = to_canary(config(&g, port, &["next.local"], &[])?, 4, 0)?;
    let staged_at = c.api(leader).stage_config(&body).await?.revision;
    let t0 = Instant::now();
    eventually(T, "the canary Envoy routes next.local", || {
        call(pa, "next.local")
    })
    .await?;
    let canary_after = t0.elapsed();
    ensure!(
        call(pb, "next.local").await.is_err(),
        "envoy-main has the staged change already"
    );
    let s = c.api(leader).stage().await?;
    ensure!(
        s.stage.as_ref().is_some_and(|st| st.at == staged_at),
        "{s:?}"
    );
    eventually(T, "envoy-main routes next.local after the hold", || {
        call(pb, "next.local")
    })
    .await?;
    let main_after = t0.elapsed();
    eprintln!(
        "staged at revision {staged_at}: canary routed it after {canary_after:?}, the rest after {main_after:?} (hold {hold:?})"
    );
    ensure!(
        main_after >= hold,
        "promoted before the hold: {main_after:?}"
    );
    let s = c.api(leader).stage().await?;
    let last = s.last.context("no last stage")?;
    ensure!(s.stage.is_none() && last.promoted, "{last:?}");

    // A change the canary Envoy rejects: a listener on a port taken on its host.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let tport = taken.local_addr()?.port();
    let bad = to_canary(
        config(&g, port, &["next.local"], &[("taken", tport)])?,
        1,
        0,
    )?;
    c.api(leader).stage_config(&bad).await?;
    let end = eventually(T, "the stage aborted at the NACK", || async {
        let s = c.api(leader).stage().await?;
        let l = s.last.clone().context("no last stage")?;
        ensure!(s.stage.is_none() && !l.promoted, "{s:?}");
        Ok(l)
    })
    .await?;
    eprintln!("aborted: {}", end.why);
    ensure!(
        end.why.contains("envoy-canary") && end.why.to_lowercase().contains("bind"),
        "{}",
        end.why
    );
    // Envoy-main never had the listener; both still route, and envoy-main never went back.
    let dump = b.get("/config_dump").await?;
    ensure!(
        !dump.contains("http_taken"),
        "envoy-main received the rejected listener"
    );
    for p in [pa, pb] {
        call(p, "next.local").await?;
    }
    let b_after = b.versions().await?;
    ensure!(
        b_after.listeners >= b_before.listeners && b_after.clusters >= b_before.clusters,
        "{b_before:?} → {b_after:?}"
    );
    drop(taken);
    Ok(())
}

/// Calls through the Envoy listening at `port`, one every 20 ms until `stop`: each call's
/// instance, or its error.
fn traffic(
    port: u16,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Vec<Result<String, String>>> {
    tokio::spawn(async move {
        let mut calls = Vec::new();
        while !stop.is_cancelled() {
            calls.push(call(port, "echo.local").await.map_err(|e| e.to_string()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        calls
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_staged_config_whose_group_fails_requests_is_aborted_on_their_error_rate() -> Result<()> {
    let good = GrpcBackend::start("good").await?;
    let bad = GrpcBackend::start("bad").await?;
    bad.fail_always(true);
    let (c, leader, port, [(_a, pa), (_b, pb)]) = two_envoys(&good).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let (ta, tb) = (traffic(pa, stop.clone()), traffic(pb, stop.clone()));

    // The service moved to an instance that answers only errors: valid, ACKed, and wrong. A
    // 60 s hold: an abort before it is the error rate's.
    let hold = Duration::from_secs(60);
    let body = to_canary(config(&bad, port, &[], &[])?, hold.as_secs(), 5)?;
    let staged_at = c.api(leader).stage_config(&body).await?.revision;
    let t0 = Instant::now();
    let end = eventually(T, "the stage aborted on the group's errors", || async {
        let s = c.api(leader).stage().await?;
        let l = s.last.clone().context("no last stage")?;
        ensure!(
            s.stage.is_none() && l.at == staged_at && !l.promoted,
            "{s:?}"
        );
        Ok(l)
    })
    .await?;
    let aborted_after = t0.elapsed();
    eprintln!(
        "staged at revision {staged_at}, aborted after {aborted_after:?}: {}",
        end.why
    );
    ensure!(aborted_after < hold, "{aborted_after:?}");
    ensure!(
        end.why.contains("the group's errors")
            && end.why.contains("the other Envoys' 0.0%")
            && end.why.ends_with("more than 5 points above"),
        "{}",
        end.why
    );
    // The canary Envoy is back on the good instance; then the traffic stops.
    eventually(T, "the canary Envoy back on good", || routes_to(pa, "good")).await?;
    stop.cancel();
    let (a_calls, b_calls) = (ta.await?, tb.await?);
    let failed = |calls: &[Result<String, String>]| calls.iter().filter(|c| c.is_err()).count();
    eprintln!(
        "envoy-canary: {} calls, {} failed; envoy-main: {} calls, {} failed; the bad instance served {}",
        a_calls.len(),
        failed(&a_calls),
        b_calls.len(),
        failed(&b_calls),
        bad.served()
    );
    ensure!(
        failed(&a_calls) >= 5,
        "the canary Envoy never reached the bad instance"
    );
    ensure!(
        b_calls.iter().all(|c| c.as_deref() == Ok("good")),
        "envoy-main saw the staged change: {:?}",
        b_calls
            .iter()
            .filter(|c| c.as_deref() != Ok("good"))
            .take(3)
            .collect::<Vec<_>>()
    );
    Ok(())
}
