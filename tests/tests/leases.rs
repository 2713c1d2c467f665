//! Endpoints that register themselves (issue 14): a lapsed lease leaves every Envoy; a leader
//! SIGKILLed mid-lease neither loses nor early-expires it; a draining endpoint gets no new
//! requests while a streaming call in flight completes; `concord endpoints register` declares an
//! instance and drains it on SIGTERM; bad registrations and renewals are refused.

use anyhow::{Context, Result, ensure};
use concord_api::RegisterEndpoint;
use concord_harness::envoy::Envoy;
use concord_harness::grpc::proto::{SayRequest, StreamRequest};
use concord_harness::grpc::{ECHO_SERVICE, GrpcBackend, echo_client};
use concord_harness::{Cluster, Options, admin_client, concord_bin, eventually, free_port};
use concord_registry::services::{Desired, Duration as D};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

async fn cluster_with(desired: serde_json::Value) -> Result<Cluster> {
    let c = Cluster::start(Options::default()).await?;
    let leader = c.services_enabled().await?;
    let d: Desired = serde_json::from_value(desired)?;
    c.api(leader).apply_config(&d).await?;
    Ok(c)
}

fn echo_service(port: u16, drain: &str) -> serde_json::Value {
    json!({
        "services": {"echo": {"protocol": "grpc", "drain_timeout": drain}},
        "route_tables": {"main": {"virtual_hosts": [{"name": "echo", "domains": ["*"],
            "routes": [{"match": {"grpc": {"service": ECHO_SERVICE}}, "service": "echo"}]}]}},
        "listeners": {"main": {"address": format!("127.0.0.1:{port}"), "route_table": "main"}}
    })
}

fn registration(addr: SocketAddr, ttl: Option<u64>) -> RegisterEndpoint {
    RegisterEndpoint {
        addr,
        weight: 1,
        ttl: ttl.map(D::from_secs),
        labels: Default::default(),
    }
}

/// Whether replica `id` holds endpoint `e` of `echo`.
async fn holds(c: &Cluster, id: u64, e: &str) -> Result<bool> {
    let l = c.api(id).endpoints("echo").await?;
    Ok(l.endpoints.iter().any(|x| x.id == e))
}

async fn say(listener: SocketAddr) -> Result<String> {
    let mut client = echo_client(listener, "echo.example.com").await?;
    let r = client
        .say(SayRequest {
            message: "x".into(),
            delay_ms: 0,
        })
        .await?;
    Ok(r.into_inner().instance)
}

/// Registered, renewed, then left alone: the endpoint leaves every replica and every Envoy,
/// and never before one TTL after its last renewal.
#[tokio::test]
async fn a_lapsed_lease_leaves_every_envoy() -> Result<()> {
    let port = free_port();
    let c = cluster_with(echo_service(port, "1s")).await?;
    let b1 = GrpcBackend::start("b1").await?;
    let x: Vec<String> = c.nodes.values().map(|r| r.xds.clone()).collect();
    let servers: Vec<&str> = x.iter().map(String::as_str).collect();
    let envoy = Envoy::start_with(&c, "envoy-1", &servers, true, None).await?;
    let listener = SocketAddr::from(([127, 0, 0, 1], port));
    let ttl = Duration::from_secs(2);
    c.api(2)
        .register_endpoint("echo", "b1", &registration(b1.addr, Some(2)))
        .await?;
    eventually(T, "Envoy routes to b1", || async {
        ensure!(say(listener).await? == "b1", "not b1");
        Ok(())
    })
    .await?;
    // Renewed through every replica in turn for a few TTLs' worth.
    let mut last = Instant::now();
    for i in 0..6u64 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.api(i % 3 + 1).renew_endpoint("echo", "b1").await?;
        last = Instant::now();
    }
    ensure!(holds(&c, 1, "b1").await?, "removed while renewed");
    // Never gone before one TTL after the last renewal; gone from every replica after.
    loop {
        let present = holds(&c, 3, "b1").await?;
        if Instant::now() < last + ttl {
            ensure!(
                present,
                "removed {:?} after the last renewal, TTL {ttl:?}",
                last.elapsed()
            );
        } else if !present {
            break;
        }
        ensure!(last.elapsed() < ttl + T, "never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in c.up() {
        eventually(T, "removed everywhere", || async {
            ensure!(!holds(&c, id, "b1").await?, "node {id} holds b1");
            Ok(())
        })
        .await?;
    }
    eventually(T, "Envoy has no endpoint left", || async {
        let n = envoy.stat("cluster.service_echo.membership_total").await?;
        ensure!(n.trim() == "0", "{n} endpoints");
        Ok(())
    })
    .await?;
    ensure!(say(listener).await.is_err(), "still routed");
    Ok(())
}

/// The leader is SIGKILLed while an instance renews through whichever replica is up: the
/// endpoint is never removed while renewed, and after the renewals stop it lapses no sooner
/// than one TTL after the last one the instance saw acknowledged.
#[tokio::test]
async fn a_leader_killed_mid_lease_neither_loses_nor_early_expires_it() -> Result<()> {
    let mut c = cluster_with(echo_service(free_port(), "1s")).await?;
    let b1 = GrpcBackend::start("b1").await?;
    let leader = c.leader().await?;
    let others: Vec<u64> = c.up().into_iter().filter(|&id| id != leader).collect();
    c.api(others[0])
        .register_endpoint("echo", "b1", &registration(b1.addr, Some(3)))
        .await?;
    let ttl = Duration::from_secs(3);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let renewer = {
        let apis: Vec<concord_api::Client> = others.iter().map(|&id| c.api(id)).collect();
        let (stop, acked) = (stop.clone(), acked.clone());
        tokio::spawn(async move {
            let mut last_ack = Instant::now();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                if apis[i % apis.len()]
                    .renew_endpoint("echo", "b1")
                    .await
                    .is_ok()
                {
                    last_ack = Instant::now();
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            last_ack
        })
    };
    // The leader has acknowledged renewals through both followers before it dies.
    eventually(T, "renewals acknowledged before the kill", || async {
        let n = acked.load(Ordering::SeqCst);
        ensure!(n >= 2, "{n} renewals acknowledged");
        Ok(())
    })
    .await?;
    c.node(leader).kill();
    // Renewed for two TTLs after the kill: present on the survivors throughout.
    let until = Instant::now() + 2 * ttl;
    while Instant::now() < until {
        ensure!(
            holds(&c, others[1], "b1").await?,
            "removed while renewed, after the leader's death"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let last = renewer.await?;
    loop {
        let present = holds(&c, others[1], "b1").await?;
        if Instant::now() < last + ttl {
            ensure!(
                present,
                "expired {:?} after its last renewal (TTL {ttl:?})",
                last.elapsed()
            );
        } else if !present {
            break;
        }
        ensure!(last.elapsed() < ttl + T, "never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A draining endpoint gets no new requests, a streaming call in flight on it completes, and it
/// is removed after the service's drain timeout.
#[tokio::test]
async fn a_draining_endpoint_finishes_in_flight_calls_and_takes_no_new_ones() -> Result<()> {
    let port = free_port();
    let c = cluster_with(echo_service(port, "4s")).await?;
    let (d1, d2) = (
        GrpcBackend::start("d1").await?,
        GrpcBackend::start("d2").await?,
    );
    let x: Vec<String> = c.nodes.values().map(|r| r.xds.clone()).collect();
    let servers: Vec<&str> = x.iter().map(String::as_str).collect();
    let _envoy = Envoy::start_with(&c, "envoy-1", &servers, true, None).await?;
    let listener = SocketAddr::from(([127, 0, 0, 1], port));
    for b in [&d1, &d2] {
        c.api(1)
            .register_endpoint("echo", &b.name, &registration(b.addr, None))
            .await?;
    }
    eventually(T, "both instances answer", || async {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10 {
            seen.insert(say(listener).await?);
        }
        ensure!(seen.len() == 2, "{seen:?}");
        Ok(())
    })
    .await?;
    // A 3-second stream; the instance that serves it drains.
    let mut client = echo_client(listener, "echo.example.com").await?;
    let mut stream = client
        .stream(StreamRequest {
            count: 15,
            interval_ms: 200,
        })
        .await?
        .into_inner();
    let first = stream.message().await?.context("no first message")?;
    let (draining, other) = match first.instance.as_str() {
        "d1" => (&d1, &d2),
        _ => (&d2, &d1),
    };
    c.api(2).drain_endpoint("echo", &draining.name).await?;
    eventually(T, "new calls avoid the draining instance", || async {
        for _ in 0..20 {
            let got = say(listener).await?;
            ensure!(got == other.name, "a new call went to {got}");
        }
        Ok(())
    })
    .await?;
    let mut got = 1;
    while let Some(m) = stream.message().await? {
        ensure!(m.instance == draining.name, "{m:?}");
        got += 1;
    }
    ensure!(got == 15, "the in-flight stream got {got} of 15 messages");
    eventually(T, "removed after the drain timeout", || async {
        ensure!(!holds(&c, 3, &draining.name).await?, "still registered");
        Ok(())
    })
    .await?;
    Ok(())
}

/// `concord endpoints register` declares the instance, keeps its lease, and on SIGTERM drains
/// it, waits until the leader removed it, and exits 0.
#[tokio::test]
async fn the_register_command_renews_then_drains_on_sigterm() -> Result<()> {
    let c = cluster_with(echo_service(free_port(), "1s")).await?;
    let b1 = GrpcBackend::start("b1").await?;
    let dir = tempfile::tempdir()?;
    let log = std::fs::File::create(dir.path().join("register.log"))?;
    let mut child = std::process::Command::new(concord_bin())
        .args(["--admin", &c.nodes[&2].admin, "endpoints", "register"])
        .args([
            "--service",
            "echo",
            "--addr",
            &b1.addr.to_string(),
            "--ttl",
            "1s",
            "--id",
            "b1",
        ])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    eventually(T, "registered", || async {
        ensure!(holds(&c, 1, "b1").await?, "not yet");
        Ok(())
    })
    .await?;
    // Held across several TTLs by its renewals.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        ensure!(holds(&c, 3, "b1").await?, "lapsed while the command renews");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // SIGTERM: drain, removal, exit 0.
    let pid = child.id();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let l = c.api(1).endpoints("echo").await?;
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        ensure!(Instant::now() < deadline, "did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = std::fs::read_to_string(dir.path().join("register.log"))?;
    ensure!(
        status.success() && out.contains("drained and removed"),
        "{status}: {out}; {l:?}"
    );
    ensure!(
        !holds(&c, 1, "b1").await?,
        "still registered after the command exited"
    );
    Ok(())
}

/// Bad registrations and renewals are refused with what is wrong; nothing is committed.
#[tokio::test]
async fn bad_registrations_and_renewals_are_refused() -> Result<()> {
    let c = cluster_with(echo_service(free_port(), "1s")).await?;
    // A linearizable read: node 1 has applied the configuration.
    let (before, _) = c.builders(1, true).await?;
    let http = admin_client(None)?;
    let base = &c.nodes[&1].admin;
    for (method, path, body, status) in [
        ("POST", "/v1/services/echo/endpoints/nope/renew", None, 404),
        ("POST", "/v1/services/echo/endpoints/nope/drain", None, 404),
        (
            "PUT",
            "/v1/services/missing/endpoints/e1",
            Some(json!({"addr": "127.0.0.1:1"})),
            404,
        ),
        (
            "PUT",
            "/v1/services/echo/endpoints/e1",
            Some(json!({"addr": "127.0.0.1:1", "ttl": 10})),
            400,
        ),
        (
            "PUT",
            "/v1/services/echo/endpoints/e1",
            Some(json!({"addr": "127.0.0.1:1", "ttl": "100ms"})),
            400,
        ),
        (
            "PUT",
            "/v1/services/echo/endpoints/e1",
            Some(json!({"addr": "127.0.0.1:1", "weight": 0})),
            400,
        ),
        (
            "PUT",
            "/v1/services/echo/endpoints/e1",
            Some(json!({"addr": "0.0.0.0:80"})),
            400,
        ),
        (
            "PUT",
            "/v1/services/echo/endpoints/e%20x",
            Some(json!({"addr": "127.0.0.1:1"})),
            400,
        ),
        (
            "PUT",
            "/v1/services/echo/endpoints/e1",
            Some(json!({"addr": "127.0.0.1:1", "extra": 1})),
            400,
        ),
        ("GET", "/v1/services/missing/endpoints", None, 404),
    ] {
        let url = format!("{base}{path}");
        let req = match method {
            "POST" => http.post(&url),
            "PUT" => http.put(&url),
            _ => http.get(&url),
        };
        let req = match &body {
            Some(b) => req.json(b),
            None => req,
        };
        let r = req.send().await?;
        let got = r.status().as_u16();
        let text = r.text().await?;
        ensure!(got == status, "{method} {path} {body:?}: {got} {text}");
        ensure!(text.contains("\"message\""), "{text}");
    }
    ensure!(
        c.status(1).await?.revision == before,
        "a refused change was committed"
    );
    Ok(())
}
