//! Release rollouts through a real Envoy 1.40 (issue 15): gRPC backends of two versions
//! (crates/harness grpc.rs), registered with `version` labels, behind a services listener; Envoy
//! streams its stats to the replica it is connected to (the bootstrap's metrics_service sink,
//! flushed every second here) and the leader judges each step on them. A version that answers
//! only errors is rolled back within its first step and Envoy's traffic returns to the old
//! one; a healthy one is promoted through every step; a leader SIGKILLed mid-rollout is
//! followed by a new leader that resumes at the same step; a replica killed under the Envoy
//! keeps its counts and the Envoy's stats keep counting on the next; bad rollouts are refused.

use anyhow::{Context, Result, ensure};
use concord_api::{RegisterEndpoint, RolloutStatus, StepProgress};
use concord_harness::envoy::Envoy;
use concord_harness::grpc::proto::SayRequest;
use concord_harness::grpc::{GrpcBackend, echo_client};
use concord_harness::{Cluster, Options, eventually, free_port};
use concord_registry::services::{Desired, Phase, RolloutSpec};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// Calls through Envoy: when, and the instance that answered (or the error).
type Calls = Arc<Mutex<Vec<(Instant, Result<String, String>)>>>;

struct World {
    cluster: Cluster,
    envoy: Envoy,
    listener: SocketAddr,
    v1: Vec<GrpcBackend>,
    v2: GrpcBackend,
    leader: u64,
}

/// Three replicas holding service `echo` (gRPC, routed by `:authority` echo.local), two v1
/// instances registered with their version label and one v2 instance not registered yet, and one Envoy that
/// streams (and sends its stats) to a follower first when `to_follower`.
async fn world(to_follower: bool) -> Result<World> {
    let c = Cluster::start(Options::default()).await?;
    let leader = c.services_enabled().await?;
    let port = free_port();
    let listener: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let d: Desired = serde_json::from_value(json!({
        "services": {"echo": {"protocol": "grpc"}},
        "route_tables": {"main": {"virtual_hosts": [{
            "name": "echo", "domains": ["echo.local"],
            "routes": [{"match": {"prefix": "/"}, "service": "echo",
                        "retry": {"retry_on": ["connect-failure"], "attempts": 1}}]
        }]}},
        "listeners": {"main": {"address": listener.to_string(), "route_table": "main"}}
    }))?;
    c.api(leader).apply_config(&d).await.context("apply")?;
    let v1 = vec![
        GrpcBackend::start("v1-a").await?,
        GrpcBackend::start("v1-b").await?,
    ];
    let v2 = GrpcBackend::start("v2-a").await?;
    for b in &v1 {
        register(&c, leader, b, "v1").await?;
    }
    let mut ids: Vec<u64> = c.up();
    if to_follower {
        ids.retain(|i| *i != leader);
        ids.push(leader);
    }
    let x: Vec<String> = ids.iter().map(|i| c.nodes[i].xds.clone()).collect();
    let servers: Vec<&str> = x.iter().map(String::as_str).collect();
    let mut flags = c.bootstrap_args("envoy-1")?;
    flags.extend(["--stats-flush-interval-ms".to_string(), "1000".to_string()]);
    let envoy = Envoy::start_in(c.dir(), "envoy-1", &servers, to_follower, None, &flags).await?;
    let w = World {
        cluster: c,
        envoy,
        listener,
        v1,
        v2,
        leader,
    };
    eventually(T, "Envoy routes echo.local", || async {
        say(&w)
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{e}\n{}", w.envoy.log_tail()))
    })
    .await?;
    Ok(w)
}

async fn register(c: &Cluster, id: u64, b: &GrpcBackend, version: &str) -> Result<()> {
    let body = RegisterEndpoint {
        addr: b.addr,
        weight: 1,
        ttl: None,
        labels: [("version".to_string(), version.to_string())].into(),
    };
    c.api(id)
        .register_endpoint("echo", &b.name, &body)
        .await
        .context("register")?;
    Ok(())
}

/// Registers the v2 instance and starts a rollout to it at once: until a service's first
/// rollout starts, its new version's instances take their share of the plain service's traffic
/// (the README's "Rollouts" says so).
async fn start(w: &World, s: &RolloutSpec) -> Result<()> {
    register(&w.cluster, w.leader, &w.v2, "v2").await?;
    w.cluster.api(w.leader).start_rollout(s).await?;
    Ok(())
}

async fn say(w: &World) -> Result<String, String> {
    let mut client = echo_client(w.listener, "echo.local")
        .await
        .map_err(|e| e.to_string())?;
    client
        .say(SayRequest {
            message: "hi".into(),
            delay_ms: 0,
        })
        .await
        .map(|r| r.into_inner().instance)
        .map_err(|s| format!("{}: {}", s.code(), s.message()))
}

/// Calls through Envoy, one every 10 ms on one HTTP/2 connection, until dropped.
struct Traffic {
    calls: Calls,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn traffic(listener: SocketAddr) -> Traffic {
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    let task = tokio::spawn(async move {
        let mut client = None;
        loop {
            if client.is_none() {
                client = echo_client(listener, "echo.local").await.ok();
            }
            if let Some(c) = client.as_mut() {
                let r = c
                    .say(SayRequest {
                        message: "hi".into(),
                        delay_ms: 0,
                    })
                    .await
                    .map(|r| r.into_inner().instance)
                    .map_err(|s| format!("{}: {}", s.code(), s.message()));
                if r.as_ref().is_err_and(|e| e.starts_with("transport")) {
                    client = None;
                }
                seen.lock().unwrap().push((Instant::now(), r));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    Traffic { calls, task }
}

impl Traffic {
    /// Waits until the last `n` calls were all answered, each by an instance `ok` accepts.
    async fn settles(&self, n: usize, what: &str, ok: impl Fn(&str) -> bool) -> Result<()> {
        eventually(T, what, || async {
            let calls = self.calls.lock().unwrap();
            let last: Vec<&Result<String, String>> =
                calls.iter().rev().take(n).map(|(_, r)| r).collect();
            ensure!(last.len() == n, "{} calls so far", last.len());
            let bad: Vec<_> = last
                .iter()
                .filter(|r| !r.as_ref().is_ok_and(|i| ok(i)))
                .collect();
            ensure!(
                bad.is_empty(),
                "{} of the last {n} calls: {:?}",
                bad.len(),
                bad.first()
            );
            Ok(())
        })
        .await
    }
}

fn spec(v: serde_json::Value) -> RolloutSpec {
    let mut base = json!({"service": "echo", "from": "v1", "to": "v2"});
    for (k, val) in v.as_object().expect("an object") {
        base[k] = val.clone();
    }
    serde_json::from_value(base).expect("a spec")
}

async fn rollout(c: &Cluster, id: u64) -> Result<RolloutStatus> {
    Ok(c.api(id).rollout("echo").await?)
}

/// How the leader `id` judges the running step now.
async fn progress(c: &Cluster, id: u64) -> Result<StepProgress> {
    rollout(c, id).await?.progress.context("no progress")
}

/// Traffic through the Envoy, on v1 first, then a rollout to v2 that is judged but never
/// decided (its step is held an hour and needs a million requests).
async fn undecided_rollout(w: &World) -> Result<Traffic> {
    let t = traffic(w.listener);
    t.settles(20, "v1 serves", |i| i.starts_with("v1")).await?;
    let s = spec(json!({"interval": "1h", "min_requests": 1000000, "steps": [50, 100]}));
    start(w, &s).await?;
    Ok(t)
}

/// Waits until the rollout (as replica `id` holds it) is in `phase`.
async fn phase(c: &Cluster, id: u64, want: Phase) -> Result<RolloutStatus> {
    eventually(T, &format!("rollout {want}"), || async {
        let r = rollout(c, id).await?;
        ensure!(
            r.rollout.phase == want,
            "{:?} at step {}: {:?}",
            r.rollout.phase,
            r.rollout.step,
            r.progress
        );
        Ok(r)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_version_is_rolled_back_within_its_first_step_and_traffic_returns() -> Result<()>
{
    let w = world(false).await?;
    w.v2.fail_always(true);
    let t = traffic(w.listener);
    t.settles(20, "v1 serves", |i| i.starts_with("v1")).await?;
    let interval = Duration::from_secs(15);
    let s = spec(json!({"interval": "15s", "min_requests": 10, "steps": [20, 50, 100]}));
    start(&w, &s).await?;
    let started = Instant::now();
    let crossing = watch_for_crossing(&w.cluster, &s);
    let r = phase(&w.cluster, w.leader, Phase::RolledBack).await?;
    let took = started.elapsed();
    let rolled_back_at = r.rollout.step_at;
    let events = &r.rollout.events;
    let (first, back) = (&events[0], events.last().context("events")?);
    let decided = Duration::from_millis(back.at_ms - first.at_ms);
    let why = r.rollout.reason.clone().unwrap_or_default();
    eprintln!(
        "rolled back {} ms after the start: {why}",
        decided.as_millis()
    );
    ensure!(
        decided < interval,
        "rolled back after {decided:?}, later than one step ({interval:?}): {events:?}"
    );
    // From the moment a replica's sums first showed the threshold crossed (polled every 20 ms)
    // to the leader's decision (the rollback entry's time).
    let seen_ms = crossing
        .seen
        .lock()
        .unwrap()
        .context("no replica's sums ever crossed the threshold")?;
    eprintln!(
        "decided {} ms after a replica's sums first crossed the threshold (flush interval 1000 ms)",
        back.at_ms as i64 - seen_ms as i64
    );
    ensure!(r.rollout.step == 0 && events.len() == 2, "{events:?}");
    ensure!(why.contains("v2 errors 100.0%"), "{why}");
    // Every replica holds the same outcome, and Envoy's traffic is the old version's again.
    // (Each replica once it has applied the rollback: a follower may be a moment behind.)
    for id in w.cluster.up() {
        let r = phase(&w.cluster, id, Phase::RolledBack).await?;
        ensure!(
            r.rollout.step_at == rolled_back_at,
            "node {id} rolled back at another entry"
        );
    }
    t.settles(50, "all traffic back on v1", |i| i.starts_with("v1"))
        .await?;
    let calls = t.calls.lock().unwrap();
    let to_v2 = calls.iter().filter(|(_, r)| r.is_err()).count();
    eprintln!(
        "{} calls, {to_v2} failed (the v2 share until the rollback), rollback seen after {took:?}",
        calls.len()
    );
    ensure!(
        to_v2 > 0,
        "the failing version got no traffic: the test proves nothing"
    );
    Ok(())
}

/// When (Unix ms) the sums of the replicas' Envoys, counted from when it began, first crossed
/// `s`'s rollback threshold; polled every 20 ms until dropped.
struct Crossing {
    seen: Arc<Mutex<Option<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Crossing {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn watch_for_crossing(c: &Cluster, s: &RolloutSpec) -> Crossing {
    let apis: Vec<_> = c.up().into_iter().map(|id| c.api(id)).collect();
    let (min, margin) = (s.min_requests, f64::from(s.max_error_increase));
    let seen: Arc<Mutex<Option<u64>>> = Arc::default();
    let found = seen.clone();
    let task = tokio::spawn(async move {
        let mut first: Vec<Option<concord_api::StatsReport>> = vec![None; apis.len()];
        loop {
            let mut sums = [concord_api::VersionCounts::default(); 2];
            for (api, first) in apis.iter().zip(&mut first) {
                let Ok(now) = api.envoy_stats().await else {
                    continue;
                };
                let base = first.get_or_insert_with(|| now.clone());
                for (sum, cluster) in sums.iter_mut().zip(["service_echo~v1", "service_echo~v2"]) {
                    let of = |r: &concord_api::StatsReport| {
                        r.clusters
                            .iter()
                            .find(|c| c.cluster == cluster)
                            .map_or((0, 0), |c| c.requests_and_errors())
                    };
                    let ((r1, e1), (r0, e0)) = (of(&now), of(base));
                    sum.requests += r1.saturating_sub(r0);
                    sum.errors += e1.saturating_sub(e0);
                }
            }
            let [old, new] = sums;
            if new.requests >= min && new.error_rate() > old.error_rate() + margin {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                *found.lock().unwrap() = now.ok().map(|d| d.as_millis() as u64);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    Crossing { seen, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_versions_request_times_are_summed_apart() -> Result<()> {
    let w = world(false).await?;
    // v2 answers 60 ms late: its times fall in Envoy's (50, 100] ms bucket, v1's far below.
    w.v2.slow_down(60);
    let _traffic = undecided_rollout(&w).await?;
    let p = eventually(T, "request times of both versions", || async {
        let p = progress(&w.cluster, w.leader).await?;
        ensure!(
            p.from_latency.samples >= 20 && p.to_latency.samples >= 20,
            "{p:?}"
        );
        Ok(p)
    })
    .await?;
    let (old, new) = (&p.from_latency, &p.to_latency);
    eprintln!("v1 {}; v2 {}", old.describe(), new.describe());
    let new_p50 = new.quantile_ms(0.5).context("v2 p50")?;
    ensure!(
        (50.0..=100.0).contains(&new_p50),
        "v2 p50 {new_p50}: {new:?}"
    );
    ensure!(new.mean_ms().is_some_and(|m| m >= 60.0), "v2 {new:?}");
    // v1's median far below (its tail may catch a slow moment of this 2-core machine).
    let old_p50 = old.quantile_ms(0.5).context("v1 p50")?;
    ensure!(old_p50 < 25.0, "v1 p50 {old_p50}: {old:?}");
    // The replica the Envoy streams to shows the same per version, in its API and /metrics.
    let mut at = None;
    for id in w.cluster.up() {
        let stats = w.cluster.api(id).envoy_stats().await?;
        if let Some(v2) = stats
            .clusters
            .iter()
            .find(|c| c.cluster == "service_echo~v2" && c.rq_time.samples >= new.samples)
        {
            at = Some((id, v2.rq_time.clone()));
        }
    }
    let (at, times) = at.context("no replica shows v2's request times")?;
    ensure!(times.quantile_ms(0.5) >= Some(50.0), "{times:?}");
    let page = w.cluster.api(at).metrics().await?;
    ensure!(
        page.contains(
            "concord_envoy_upstream_rq_time_ms_bucket{cluster=\"service_echo~v2\",le=\"100\"}"
        ),
        "no v2 histogram in /metrics"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_version_is_promoted_through_every_step() -> Result<()> {
    let w = world(false).await?;
    let t = traffic(w.listener);
    t.settles(20, "v1 serves", |i| i.starts_with("v1")).await?;
    let s = spec(json!({"interval": "2s", "min_requests": 5, "steps": [10, 50, 100]}));
    start(&w, &s).await?;
    let r = phase(&w.cluster, w.leader, Phase::Promoted).await?;
    let steps: Vec<&str> = r.rollout.events.iter().map(|e| e.what.as_str()).collect();
    ensure!(steps.len() == 4, "start, two steps, promoted: {steps:?}");
    ensure!(
        steps[1].starts_with("step 2: 50%") && steps[3].starts_with("promoted to 100%"),
        "{steps:?}"
    );
    t.settles(50, "all traffic on v2", |i| i.starts_with("v2"))
        .await?;
    let served_v1: u64 = w.v1.iter().map(GrpcBackend::served).sum();
    ensure!(
        served_v1 > 0 && w.v2.served() > 50,
        "v1 {served_v1}, v2 {}",
        w.v2.served()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leader_resumes_the_rollout_at_its_step() -> Result<()> {
    let mut w = world(false).await?;
    let t = traffic(w.listener);
    t.settles(20, "v1 serves", |i| i.starts_with("v1")).await?;
    let s = spec(json!({"interval": "3s", "min_requests": 5, "steps": [10, 25, 50, 100]}));
    start(&w, &s).await?;
    let old = w.leader;
    let at_kill = eventually(T, "the rollout at step 2", || async {
        let r = rollout(&w.cluster, old).await?;
        ensure!(
            r.rollout.step == 1 && r.rollout.phase == Phase::Running,
            "step {}",
            r.rollout.step
        );
        Ok(r)
    })
    .await?;
    w.cluster.node(old).kill();
    let new = w.cluster.leader().await?;
    ensure!(new != old, "the killed node still leads");
    let r = phase(&w.cluster, new, Phase::Promoted).await?;
    // Every step exactly once, in order: none repeated, none skipped.
    let weights: Vec<&str> = r.rollout.events.iter().map(|e| e.what.as_str()).collect();
    ensure!(weights.len() == 5, "{weights:?}");
    for (e, want) in weights.iter().zip([
        "started",
        "step 2: 25%",
        "step 3: 50%",
        "step 4: 100%",
        "promoted",
    ]) {
        ensure!(e.starts_with(want), "{weights:?}");
    }
    // The step the old leader left was judged afresh by the new one: it came after the kill.
    let resumed = &r.rollout.events[2];
    ensure!(resumed.index > at_kill.rollout.step_at, "{weights:?}");
    t.settles(30, "all traffic on v2", |i| i.starts_with("v2"))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_keep_counting_when_the_envoy_moves_to_another_replica() -> Result<()> {
    // The Envoy streams (and sends stats) to a follower, which is killed mid-step.
    let mut w = world(true).await?;
    let envoys_on = |id: u64| w.cluster.envoys_on(id);
    let follower = eventually(T, "the Envoy on a follower", || async {
        for id in w.cluster.up() {
            if id != w.leader && !envoys_on(id).await?.is_empty() {
                return Ok(id);
            }
        }
        anyhow::bail!("the Envoy streams from no follower")
    })
    .await?;
    let t = undecided_rollout(&w).await?;
    let before = eventually(T, "the leader counts the Envoy's v2 calls", || async {
        let p = progress(&w.cluster, w.leader).await?;
        ensure!(p.to.requests >= 20 && p.stat_streams >= 1, "{p:?}");
        Ok(p)
    })
    .await?;
    w.cluster.node(follower).kill();
    let leader = w.leader;
    // The count never drops (the killed replica's counts are kept) and grows again once the
    // Envoy's stats stream reaches another replica.
    let lowest = Mutex::new(u64::MAX);
    let after = eventually(T, "counting again on another replica", || async {
        let p = progress(&w.cluster, leader).await?;
        {
            let mut low = lowest.lock().unwrap();
            *low = p.to.requests.min(*low);
        }
        ensure!(
            p.to.requests >= before.to.requests + 40,
            "{p:?} (before: {before:?})"
        );
        Ok(p)
    })
    .await?;
    let lowest = *lowest.lock().unwrap();
    ensure!(
        lowest >= before.to.requests,
        "the count dropped to {lowest} from {}",
        before.to.requests
    );
    eprintln!(
        "v2 calls counted before the kill: {}, after: {}",
        before.to.requests, after.to.requests
    );
    // The Envoy's calls went through without a gap that the count would hide: every call was
    // answered (retried on connect failure) and counted at most once.
    let answered = t
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, r)| r.as_ref().is_ok_and(|i| i.starts_with("v2")))
        .count() as u64;
    ensure!(
        after.to.requests <= answered + 20,
        "counted {} v2 calls, Envoy answered {answered}",
        after.to.requests
    );
    Ok(())
}

fn status(e: &concord_api::Error) -> u16 {
    match e {
        concord_api::Error::Api { status, .. } => *status,
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_rollouts_are_refused_with_what_is_wrong_and_nothing_committed() -> Result<()> {
    let w = world(false).await?;
    let api = w.cluster.api(w.leader);
    register(&w.cluster, w.leader, &w.v2, "v2").await?;
    let before = w.cluster.status(w.leader).await?.revision;
    for (bad, says) in [
        (
            json!({"to": "v3"}),
            "no registered endpoint of service \"echo\" has version=v3",
        ),
        (json!({"service": "nope"}), "no service \"nope\""),
        (json!({"steps": [50, 10, 100]}), "increasing"),
        (json!({"max_error_increase": 500}), "outside 0-100"),
        (json!({"interval": "0s"}), "outside 1s-24h"),
        (json!({"min_requests": 0}), "min_requests 0"),
    ] {
        let e = api
            .start_rollout(&spec(bad.clone()))
            .await
            .expect_err("refused");
        ensure!(
            status(&e) == 400 && e.to_string().contains(says),
            "{bad}: {e:?}"
        );
    }
    ensure!(
        w.cluster.status(w.leader).await?.revision == before,
        "a refused rollout was committed"
    );
    api.start_rollout(&spec(json!({"interval": "1h"}))).await?;
    let e = api
        .start_rollout(&spec(json!({})))
        .await
        .expect_err("overlapping");
    ensure!(
        status(&e) == 409 && e.to_string().contains("already has a rollout running"),
        "{e:?}"
    );
    let e = api
        .rollout_action("echo", "resume")
        .await
        .expect_err("not paused");
    ensure!(e.to_string().contains("only a paused one resumes"), "{e}");
    let e = api
        .rollout_action("echo", "explode")
        .await
        .expect_err("no such action");
    ensure!(e.to_string().contains("pause, resume or abort"), "{e}");
    let e = api.rollout("other").await.expect_err("no rollout");
    ensure!(status(&e) == 404, "{e:?}");
    api.rollout_action("echo", "abort").await?;
    ensure!(rollout(&w.cluster, w.leader).await?.rollout.phase == Phase::Aborted);
    drop(w.envoy);
    Ok(())
}
