//! Services through a real Envoy 1.40 (issue 14): gRPC backends written with tonic (crates/harness
//! grpc.rs) behind a services listener that concord sends by LDS/RDS/CDS/EDS over ADS: routing by
//! `:authority` and gRPC method, round-robin spread, a 90/10 weighted split, a retry, a route
//! timeout, circuit-breaker overflow, outlier ejection, an instance leaving the rotation
//! through gRPC health checks, routes moved to new services with no call lost, and HTTP
//! services (axum backends) routed by `Host` and path with rewrites and HTTP health checks.

use anyhow::{Context, Result, bail, ensure};
use concord_harness::envoy::{Envoy, Protocol};
use concord_harness::grpc::proto::SayRequest;
use concord_harness::grpc::{ECHO_SERVICE, GrpcBackend, echo_client};
use concord_harness::http::{HttpBackend, Seen};
use concord_harness::{Cluster, Options, eventually, free_port};
use concord_registry::services::Desired;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// A cluster holding `desired` (with `listener` as its services listener) and an Envoy on it.
struct World {
    /// The replicas (they stop on drop).
    cluster: Cluster,
    envoy: Envoy,
    listener: SocketAddr,
}

async fn world(desired: Value, listener: SocketAddr, protocol: Option<Protocol>) -> Result<World> {
    let c = Cluster::start(Options::default()).await?;
    let leader = c.services_enabled().await?;
    let d: Desired = serde_json::from_value(desired).context("a desired state")?;
    c.api(leader).apply_config(&d).await.context("apply")?;
    let x: Vec<String> = c.nodes.values().map(|r| r.xds.clone()).collect();
    let servers: Vec<&str> = x.iter().map(String::as_str).collect();
    let envoy = Envoy::start_with(&c, "envoy-1", &servers, true, protocol).await?;
    Ok(World {
        cluster: c,
        envoy,
        listener,
    })
}

fn listener(port: u16) -> Value {
    json!({"address": format!("127.0.0.1:{port}"), "route_table": "main"})
}

fn endpoints(backends: &[&GrpcBackend]) -> Value {
    Value::Array(
        backends
            .iter()
            .map(|b| json!({"addr": b.addr.to_string()}))
            .collect(),
    )
}

/// One Say through Envoy with `:authority` `authority`: the instance that answered.
async fn say(w: &World, authority: &str, delay_ms: u32) -> Result<String, tonic::Status> {
    let mut client = echo_client(w.listener, authority)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let r = client
        .say(SayRequest {
            message: "hi".into(),
            delay_ms,
        })
        .await?;
    Ok(r.into_inner().instance)
}

/// Waits until Envoy routes `authority` (the first call that succeeds).
async fn routed(w: &World, authority: &str) -> Result<()> {
    eventually(T, &format!("Envoy routes {authority}"), || async {
        say(w, authority, 0)
            .await
            .map(|_| ())
            .map_err(|s| anyhow::anyhow!("{s}\n{}", w.envoy.log_tail()))
    })
    .await
}

/// Which instance answered each of `n` calls through the world's Envoy.
async fn spread(w: &World, authority: &str, n: usize) -> Result<BTreeMap<String, usize>> {
    concord_harness::grpc::spread(w.listener, authority, n).await
}

async fn stat(w: &World, name: &str) -> Result<u64> {
    let v = w.envoy.stat(name).await?;
    v.trim()
        .parse()
        .with_context(|| format!("stat {name} = {v:?}"))
}

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
    routes_by_authority_and_grpc_method,
    routes_by_authority_and_grpc_method_sotw,
    routes_by_authority_and_grpc_method_delta
);

/// `:authority` picks the virtual host, the gRPC method the route; round robin spreads calls
/// evenly over a service's two instances.
async fn routes_by_authority_and_grpc_method(p: Protocol) -> Result<()> {
    let (a1, a2, b1) = (
        GrpcBackend::start("a1").await?,
        GrpcBackend::start("a2").await?,
        GrpcBackend::start("b1").await?,
    );
    let port = free_port();
    let w = world(
        json!({
            "services": {
                "svc-a": {"protocol": "grpc", "endpoints": endpoints(&[&a1, &a2])},
                "svc-b": {"protocol": "grpc", "endpoints": endpoints(&[&b1])}
            },
            "route_tables": {"main": {"virtual_hosts": [
                {"name": "a", "domains": ["a.example.com"], "routes": [
                    {"match": {"grpc": {"service": ECHO_SERVICE, "method": "Say"}}, "service": "svc-a"}]},
                {"name": "b", "domains": ["b.example.com"], "routes": [
                    {"match": {"prefix": "/"}, "service": "svc-b"}]}
            ]}},
            "listeners": {"main": listener(port)}
        }),
        SocketAddr::from(([127, 0, 0, 1], port)),
        Some(p),
    )
    .await?;
    routed(&w, "a.example.com").await?;
    routed(&w, "b.example.com").await?;
    let a = spread(&w, "a.example.com", 100).await?;
    ensure!(
        a.keys().collect::<Vec<_>>() == ["a1", "a2"] && a.values().all(|n| *n >= 40),
        "round robin over a1 and a2: {a:?}"
    );
    let b = spread(&w, "b.example.com", 10).await?;
    ensure!(b == BTreeMap::from([("b1".to_string(), 10)]), "{b:?}");
    // Another method of the service has no route on a.example.com; nor has another authority.
    let mut client = echo_client(w.listener, "a.example.com").await?;
    let stream = client
        .stream(concord_harness::grpc::proto::StreamRequest {
            count: 1,
            interval_ms: 0,
        })
        .await;
    ensure!(stream.is_err(), "Stream was routed on a.example.com");
    let other = say(&w, "c.example.com", 0).await;
    ensure!(other.is_err(), "an unknown authority was routed: {other:?}");
    Ok(())
}

/// 1000 calls through a 90/10 split: the canary answers 10% ± 3% of them (more than three
/// standard deviations of a fair split, sqrt(1000 × 0.1 × 0.9) ≈ 9.5 calls).
#[tokio::test]
async fn a_weighted_split_of_90_10() -> Result<()> {
    let (stable, canary) = (
        GrpcBackend::start("stable").await?,
        GrpcBackend::start("canary").await?,
    );
    let port = free_port();
    let w = world(
        json!({
            "services": {
                "echo": {"protocol": "grpc", "endpoints": endpoints(&[&stable])},
                "echo-canary": {"protocol": "grpc", "endpoints": endpoints(&[&canary])}
            },
            "route_tables": {"main": {"virtual_hosts": [
                {"name": "echo", "domains": ["echo.example.com"], "routes": [
                    {"match": {"grpc": {"service": ECHO_SERVICE}},
                     "weighted": [{"service": "echo", "weight": 90}, {"service": "echo-canary", "weight": 10}]}]}
            ]}},
            "listeners": {"main": listener(port)}
        }),
        SocketAddr::from(([127, 0, 0, 1], port)),
        None,
    )
    .await?;
    routed(&w, "echo.example.com").await?;
    // Both clusters are in use before counting (the canary's may arrive a moment later).
    eventually(T, "both clusters answer", || async {
        let s = spread(&w, "echo.example.com", 50).await?;
        ensure!(s.len() == 2, "{s:?}");
        Ok(())
    })
    .await?;
    let s = spread(&w, "echo.example.com", 1000).await?;
    let to_canary = s.get("canary").copied().unwrap_or(0);
    ensure!(
        (70..=130).contains(&to_canary)
            && s.get("stable").copied().unwrap_or(0) == 1000 - to_canary,
        "1000 calls: {s:?}"
    );
    Ok(())
}

/// A retry (the request succeeds, Envoy's retry counter moves), a route timeout (counted as one
/// by Envoy), and circuit-breaker overflow (503 with `x-envoy-overloaded`).
#[tokio::test]
async fn retries_timeouts_and_circuit_breakers() -> Result<()> {
    let (r1, t1, cb1) = (
        GrpcBackend::start("r1").await?,
        GrpcBackend::start("t1").await?,
        GrpcBackend::start("cb1").await?,
    );
    let port = free_port();
    let w = world(
        json!({
            "services": {
                "retried": {"protocol": "grpc", "endpoints": endpoints(&[&r1])},
                "timed": {"protocol": "grpc", "endpoints": endpoints(&[&t1])},
                "limited": {"protocol": "grpc", "endpoints": endpoints(&[&cb1]),
                            "circuit_breakers": {"max_requests": 1, "max_pending_requests": 1}}
            },
            "route_tables": {"main": {"virtual_hosts": [
                {"name": "r", "domains": ["r.example.com"], "routes": [
                    {"match": {"prefix": "/"}, "service": "retried",
                     "retry": {"retry_on": ["unavailable"], "attempts": 2}}]},
                {"name": "t", "domains": ["t.example.com"], "routes": [
                    {"match": {"prefix": "/"}, "service": "timed", "timeout": "300ms"}]},
                {"name": "cb", "domains": ["cb.example.com"], "routes": [
                    {"match": {"prefix": "/"}, "service": "limited"}]}
            ]}},
            "listeners": {"main": listener(port)}
        }),
        SocketAddr::from(([127, 0, 0, 1], port)),
        None,
    )
    .await?;
    for a in ["r.example.com", "t.example.com", "cb.example.com"] {
        routed(&w, a).await?;
    }
    // Retry: the first attempt fails, the retry succeeds.
    let before = r1.served();
    r1.fail_next(1);
    let answer = say(&w, "r.example.com", 0).await;
    ensure!(answer.as_deref().ok() == Some("r1"), "{answer:?}");
    ensure!(
        r1.served() == before + 2,
        "{} attempts",
        r1.served() - before
    );
    ensure!(
        stat(&w, "cluster.service_retried.upstream_rq_retry").await? >= 1,
        "no retry counted"
    );

    // Timeout: a 2 s answer on a 300 ms route.
    let late = say(&w, "t.example.com", 2000).await;
    ensure!(
        late.is_err(),
        "a call past the route timeout succeeded: {late:?}"
    );
    eventually(T, "Envoy counts the timeout", || async {
        ensure!(
            stat(&w, "cluster.service_timed.upstream_rq_timeout").await? >= 1,
            "not yet"
        );
        Ok(())
    })
    .await?;

    // Circuit breaker: one request at a time, one pending; eight at once overflow.
    let calls = (0..8).map(|_| async {
        let mut client = echo_client(w.listener, "cb.example.com").await?;
        let r = client
            .say(SayRequest {
                message: "x".into(),
                delay_ms: 1000,
            })
            .await;
        anyhow::Ok(r)
    });
    let results = futures::future::join_all(calls).await;
    let mut overloaded = 0;
    let mut ok = 0;
    for r in results {
        match r? {
            Ok(_) => ok += 1,
            Err(s) if s.metadata().get("x-envoy-overloaded").is_some() => overloaded += 1,
            Err(s) => bail!("a call failed otherwise: {s:?}"),
        }
    }
    ensure!(
        overloaded >= 1 && ok >= 1,
        "{ok} answered, {overloaded} overloaded"
    );
    Ok(())
}

/// An instance that keeps failing is ejected by outlier detection; an instance whose health
/// service says NOT_SERVING leaves the rotation through Envoy's active gRPC health checks.
#[tokio::test]
async fn outlier_ejection_and_health_checks() -> Result<()> {
    let (o1, o2, h1, h2) = (
        GrpcBackend::start("o1").await?,
        GrpcBackend::start("o2").await?,
        GrpcBackend::start("h1").await?,
        GrpcBackend::start("h2").await?,
    );
    let port = free_port();
    let w = world(
        json!({
            "services": {
                "ejecting": {"protocol": "grpc", "endpoints": endpoints(&[&o1, &o2]),
                             "outlier_detection": {"consecutive_5xx": 2, "interval": "100ms",
                                                   "base_ejection_time": "30s", "max_ejection_percent": 50}},
                "checked": {"protocol": "grpc", "endpoints": endpoints(&[&h1, &h2]),
                            "health_check": {"kind": "grpc", "interval": "200ms", "timeout": "100ms",
                                             "unhealthy_threshold": 1, "healthy_threshold": 1}}
            },
            "route_tables": {"main": {"virtual_hosts": [
                {"name": "o", "domains": ["o.example.com"], "routes": [{"match": {"prefix": "/"}, "service": "ejecting"}]},
                {"name": "h", "domains": ["h.example.com"], "routes": [{"match": {"prefix": "/"}, "service": "checked"}]}
            ]}},
            "listeners": {"main": listener(port)}
        }),
        SocketAddr::from(([127, 0, 0, 1], port)),
        None,
    )
    .await?;
    routed(&w, "o.example.com").await?;
    routed(&w, "h.example.com").await?;

    // Outlier ejection: o1 fails every call until Envoy ejects it; then only o2 answers.
    o1.fail_always(true);
    eventually(T, "o1 is ejected", || async {
        let _ = say(&w, "o.example.com", 0).await;
        let n = stat(
            &w,
            "cluster.service_ejecting.outlier_detection.ejections_enforced_total",
        )
        .await?;
        ensure!(n >= 1, "no ejection yet");
        Ok(())
    })
    .await?;
    let s = spread(&w, "o.example.com", 20).await?;
    ensure!(
        s == BTreeMap::from([("o2".to_string(), 20)]),
        "after the ejection: {s:?}"
    );

    // Health checks: both healthy, then h1 says NOT_SERVING and leaves the rotation.
    eventually(T, "both instances healthy", || async {
        let n = stat(&w, "cluster.service_checked.membership_healthy").await?;
        ensure!(n == 2, "{n} healthy");
        Ok(())
    })
    .await?;
    let s = spread(&w, "h.example.com", 20).await?;
    ensure!(s.len() == 2, "{s:?}");
    h1.set_serving(false).await;
    eventually(T, "h1 leaves the rotation", || async {
        let n = stat(&w, "cluster.service_checked.membership_healthy").await?;
        let checks = w
            .envoy
            .get("/stats?filter=service_checked.health_check")
            .await?;
        ensure!(n == 1, "{n} healthy; {checks}");
        Ok(())
    })
    .await?;
    let s = spread(&w, "h.example.com", 20).await?;
    ensure!(
        s == BTreeMap::from([("h2".to_string(), 20)]),
        "after NOT_SERVING: {s:?}"
    );
    Ok(())
}

/// TLS terminated at Envoy with a certificate concord holds and sends by SDS, ALPN h2, gRPC over
/// it; a certificate whose key is another's is refused; a rotation reaches Envoy without a
/// listener change; no read shows the key.
#[tokio::test]
async fn tls_termination_with_a_certificate_by_sds() -> Result<()> {
    use concord_harness::grpc::{tls_echo_client, tls_handshake};
    use concord_harness::tls::TestCa;
    let ca = TestCa::new()?;
    let (cert, key) = ca.leaf_pem(&["localhost", "echo.example.com"])?;
    let (_, other_key) = ca.leaf_pem(&["localhost"])?;
    let b1 = GrpcBackend::start("b1").await?;
    let port = free_port();
    let c = Cluster::start(Options::default()).await?;
    c.services_enabled().await?;
    let api = c.api(2);
    let mismatch = api
        .put_certificate(
            "wildcard",
            &concord_api::PutCertificate {
                cert_pem: cert.clone(),
                key_pem: other_key,
            },
        )
        .await;
    ensure!(
        format!("{mismatch:?}").contains("does not match"),
        "a certificate with another's key: {mismatch:?}"
    );
    let desired = json!({
        "services": {"echo": {"protocol": "grpc", "endpoints": endpoints(&[&b1])}},
        "route_tables": {"main": {"virtual_hosts": [{"name": "echo", "domains": ["echo.example.com"],
            "routes": [{"match": {"grpc": {"service": ECHO_SERVICE}}, "service": "echo", "timeout": "15s"}]}]}},
        "listeners": {"main": {"address": format!("127.0.0.1:{port}"), "route_table": "main",
                               "tls": {"certificate": "wildcard", "alpn": ["h2"]}}}
    });
    let d: Desired = serde_json::from_value(desired)?;
    let refused = api.apply_config(&d).await;
    ensure!(
        format!("{refused:?}").contains("concord certificates put wildcard"),
        "a listener naming a certificate concord does not hold: {refused:?}"
    );
    api.put_certificate(
        "wildcard",
        &concord_api::PutCertificate {
            cert_pem: cert.clone(),
            key_pem: key.clone(),
        },
    )
    .await?;
    api.apply_config(&d).await?;
    let listed = serde_json::to_string(&api.certificates().await?)?;
    ensure!(
        listed.contains("echo.example.com") && !listed.contains("PRIVATE KEY"),
        "{listed}"
    );
    let x: Vec<String> = c.nodes.values().map(|r| r.xds.clone()).collect();
    let servers: Vec<&str> = x.iter().map(String::as_str).collect();
    let envoy = Envoy::start_with(&c, "envoy-1", &servers, true, None).await?;
    let config = ca.client_config(&["h2"])?;
    let der = |pem: &str| -> Result<Vec<u8>> {
        use rustls::pki_types::pem::PemObject;
        Ok(rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())?.to_vec())
    };
    eventually(T, "Envoy terminates TLS with the certificate", || async {
        let (served, alpn) = tls_handshake(port, config.clone()).await?;
        ensure!(served == der(&cert)?, "another certificate");
        ensure!(alpn.as_deref() == Some(b"h2".as_slice()), "ALPN {alpn:?}");
        Ok(())
    })
    .await
    .map_err(|e| e.context(envoy.log_tail()))?;
    let mut client = tls_echo_client(port, "echo.example.com", config.clone()).await?;
    let r = client
        .say(SayRequest {
            message: "over tls".into(),
            delay_ms: 0,
        })
        .await?;
    ensure!(r.into_inner().instance == "b1", "answered by another");

    // Rotation: a new certificate under the same name; the listener is not modified.
    let modified = stat_of(&envoy, "listener_manager.listener_modified").await?;
    let (cert2, key2) = ca.leaf_pem(&["localhost", "echo.example.com"])?;
    api.put_certificate(
        "wildcard",
        &concord_api::PutCertificate {
            cert_pem: cert2.clone(),
            key_pem: key2,
        },
    )
    .await?;
    eventually(T, "Envoy serves the rotated certificate", || async {
        let (served, _) = tls_handshake(port, config.clone()).await?;
        ensure!(served == der(&cert2)?, "still the old certificate");
        Ok(())
    })
    .await?;
    ensure!(
        stat_of(&envoy, "listener_manager.listener_modified").await? == modified,
        "the rotation modified the listener"
    );
    let removed = api.remove_certificate("wildcard").await;
    ensure!(
        format!("{removed:?}").contains("used by listener"),
        "{removed:?}"
    );
    Ok(())
}

async fn stat_of(envoy: &Envoy, name: &str) -> Result<u64> {
    let v = envoy.stat(name).await?;
    v.trim()
        .parse()
        .with_context(|| format!("stat {name} = {v:?}"))
}

both!(
    moving_a_route_to_a_new_service_loses_no_call,
    moving_a_route_to_a_new_service_loses_no_call_sotw,
    moving_a_route_to_a_new_service_loses_no_call_delta
);

/// Make before break (DESIGN rule 10): each apply moves the route to a service that did not
/// exist and removes the one it pointed at, while calls flow one after another. None fails:
/// the new cluster reaches Envoy and warms before the route that points at it, and the old one
/// leaves only once no route Envoy holds references it.
async fn moving_a_route_to_a_new_service_loses_no_call(p: Protocol) -> Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let backends = [
        GrpcBackend::start("blue").await?,
        GrpcBackend::start("green").await?,
    ];
    let port = free_port();
    let state = |round: usize| {
        json!({
            "services": {
                format!("shop-v{round}"): {"protocol": "grpc", "endpoints": endpoints(&[&backends[round % 2]])}
            },
            "route_tables": {"main": {"virtual_hosts": [
                {"name": "shop", "domains": ["shop.example.com"], "routes": [
                    {"match": {"prefix": "/"}, "service": format!("shop-v{round}")}]}
            ]}},
            "listeners": {"main": listener(port)}
        })
    };
    let w = world(state(0), SocketAddr::from(([127, 0, 0, 1], port)), Some(p)).await?;
    routed(&w, "shop.example.com").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let calls = {
        let (stop, listener) = (stop.clone(), w.listener);
        tokio::spawn(async move {
            let mut client = echo_client(listener, "shop.example.com").await?;
            let (mut answered, mut failed) = (BTreeMap::<String, usize>::new(), Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let call = client.say(SayRequest {
                    message: "x".into(),
                    delay_ms: 0,
                });
                match call.await {
                    Ok(r) => *answered.entry(r.into_inner().instance).or_insert(0) += 1,
                    Err(s) => failed.push(format!("{:?}: {}", s.code(), s.message())),
                }
            }
            anyhow::Ok((answered, failed))
        })
    };
    let leader = w.cluster.leader().await?;
    for round in 1..=6 {
        let d: Desired = serde_json::from_value(state(round))?;
        w.cluster.api(leader).apply_config(&d).await?;
        let want = ["blue", "green"][round % 2];
        eventually(T, &format!("round {round}: {want} answers"), || async {
            ensure!(say(&w, "shop.example.com", 0).await.ok().as_deref() == Some(want));
            Ok(())
        })
        .await?;
    }
    stop.store(true, Ordering::SeqCst);
    let (answered, failed) = calls.await??;
    ensure!(
        answered.len() == 2 && answered.values().all(|n| *n > 0),
        "calls flowed to both: {answered:?}"
    );
    ensure!(
        failed.is_empty(),
        "{} of {} calls failed while routes moved: {:?}\n{}",
        failed.len(),
        failed.len() + answered.values().sum::<usize>(),
        &failed[..failed.len().min(5)],
        w.envoy.log_tail()
    );
    Ok(())
}

/// One HTTP request through Envoy's listener with `Host` `host`: what the backend saw, or the
/// status Envoy answered with.
async fn get(listener: SocketAddr, host: &str, path: &str) -> Result<Result<Seen, u16>> {
    let r = reqwest::Client::new()
        .get(format!("http://{listener}{path}"))
        .header("host", host)
        .header("x-secret", "s3cret")
        .send()
        .await
        .context("an HTTP request through Envoy")?;
    if !r.status().is_success() {
        return Ok(Err(r.status().as_u16()));
    }
    Ok(Ok(r.json().await.context("a backend's answer")?))
}

/// [`get`], answered by a backend.
async fn answer(listener: SocketAddr, host: &str, path: &str) -> Result<Seen> {
    get(listener, host, path)
        .await?
        .map_err(|status| anyhow::anyhow!("Envoy answered {status} for {host}{path}"))
}

/// HTTP services (HTTP/1.1 from the client, real axum backends): `Host` and path prefix pick
/// the route, the route rewrites the prefix and the `Host` and adds and removes headers, round
/// robin spreads calls over two instances, and an instance whose `/healthz` fails leaves the
/// rotation through Envoy's HTTP health checks.
#[tokio::test]
async fn http_services_route_by_host_and_path_with_rewrites_and_health_checks() -> Result<()> {
    let (w1, w2, a1) = (
        HttpBackend::start("web1").await?,
        HttpBackend::start("web2").await?,
        HttpBackend::start("api1").await?,
    );
    let addr = |b: &HttpBackend| json!({"addr": b.addr.to_string()});
    let port = free_port();
    let w = world(
        json!({
            "services": {
                "web": {"protocol": "http", "endpoints": [addr(&w1), addr(&w2)],
                        "health_check": {"kind": "http", "path": "/healthz", "interval": "200ms",
                                         "timeout": "100ms", "unhealthy_threshold": 1}},
                "api": {"protocol": "http", "endpoints": [addr(&a1)]}
            },
            "route_tables": {"main": {"virtual_hosts": [
                {"name": "web", "domains": ["www.example.com"], "routes": [
                    {"match": {"prefix": "/api/"}, "service": "api", "prefix_rewrite": "/v1/",
                     "host_rewrite": "api.internal",
                     "request_headers_to_add": {"x-routed-by": "concord"},
                     "request_headers_to_remove": ["x-secret"]},
                    {"match": {"prefix": "/"}, "service": "web"}]}
            ]}},
            "listeners": {"main": listener(port)}
        }),
        SocketAddr::from(([127, 0, 0, 1], port)),
        None,
    )
    .await?;
    let l = w.listener;
    eventually(T, "Envoy routes www.example.com/api/", || async {
        let seen = get(l, "www.example.com", "/api/items").await?;
        let seen = seen.map_err(|s| anyhow::anyhow!("status {s}\n{}", w.envoy.log_tail()))?;
        ensure!(seen.instance == "api1", "{seen:?}");
        Ok(())
    })
    .await?;
    let seen = answer(l, "www.example.com", "/api/items").await?;
    ensure!(seen.path == "/v1/items", "prefix rewritten: {seen:?}");
    ensure!(seen.host == "api.internal", "host rewritten: {seen:?}");
    ensure!(
        seen.headers.get("x-routed-by").map(String::as_str) == Some("concord"),
        "header added: {seen:?}"
    );
    ensure!(
        !seen.headers.contains_key("x-secret"),
        "header removed: {seen:?}"
    );
    let mut spread = BTreeMap::<String, usize>::new();
    for _ in 0..20 {
        let seen = answer(l, "www.example.com", "/index.html").await?;
        ensure!(seen.path == "/index.html" && seen.headers.contains_key("x-secret"));
        *spread.entry(seen.instance).or_insert(0) += 1;
    }
    ensure!(
        spread == BTreeMap::from([("web1".into(), 10), ("web2".into(), 10)]),
        "round robin: {spread:?}"
    );
    let other = get(l, "other.example.com", "/").await?;
    ensure!(other == Err(404), "an unknown Host: {other:?}");
    w2.set_healthy(false);
    eventually(T, "web2 leaves the rotation", || async {
        for _ in 0..10 {
            let seen = answer(l, "www.example.com", "/").await?;
            ensure!(seen.instance == "web1", "{seen:?}");
        }
        Ok(())
    })
    .await?;
    Ok(())
}
