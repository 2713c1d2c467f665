//! OpenTelemetry traces end to end: three real replicas export over OTLP/gRPC to a real receiver
//! in the test. One DNS change is one trace from the poll to every Envoy's ACK, correctly
//! parented; a NACK ends its push span with an error; an unreachable or silent collector blocks
//! nothing and its lost spans are counted.

use anyhow::{Context, Result, bail, ensure};
use concord_harness::ads::Ads;
use concord_harness::dns::Bind;
use concord_harness::envoy::Envoy;
use concord_harness::otlp::{Collector, ReceivedSpan};
use concord_harness::{Cluster, Options, eventually};
use std::collections::BTreeSet;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn one<'a>(
    spans: &'a [ReceivedSpan],
    what: &str,
    f: impl Fn(&ReceivedSpan) -> bool,
) -> Result<&'a ReceivedSpan> {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| f(s)).collect();
    match found.as_slice() {
        [s] => Ok(s),
        _ => bail!("expected one {what}, found {}: {spans:#?}", found.len()),
    }
}

#[tokio::test]
async fn one_dns_change_is_one_trace_from_poll_to_every_envoy_ack() -> Result<()> {
    let collector = Collector::start().await?;
    let bind = Bind::start().await?;
    let c = Cluster::start(Options {
        extra: vec![
            "--dns-server".into(),
            bind.addr(),
            "--dns-source".into(),
            "txt:_instances.internal:8443".into(),
            "--otlp-endpoint".into(),
            collector.endpoint(),
        ],
        ..Options::default()
    })
    .await?;
    // Envoys on two different replicas, each held to its replica.
    let (x1, x2) = (c.nodes[&1].xds.clone(), c.nodes[&2].xds.clone());
    let _e1 = Envoy::start(&c, "envoy-t1", &[&x1], false).await?;
    let _e2 = Envoy::start(&c, "envoy-t2", &[&x2], false).await?;
    let leader = c.leader().await?;
    let before = c.status(leader).await?.revision;
    c.all_acked(2, before).await?;

    bind.set_instances(&["instance=t1,ip=10.9.0.1,app=x,region=ord".to_string()])?;
    // Revisions are log indexes: the change's is whatever the leader's registry moves to.
    let revision = eventually(T, "the DNS change is committed", || async {
        let r = c.status(leader).await?.revision;
        ensure!(r > before, "still at {r}");
        Ok(r)
    })
    .await?;
    c.all_acked(2, revision).await?;

    // The whole trace arrives within a few export windows.
    let trace = eventually(T, "the change's trace with every span", || async {
        let spans = collector.spans();
        let poll = one(&spans, "poll span adding one builder", |s| {
            s.name == "discovery.poll" && s.attr("builders.added") == "1"
        })?;
        let trace = collector.trace_of(&poll.span_id)?;
        let pushes = trace.iter().filter(|s| s.name == "xds.push").count();
        let applies = trace.iter().filter(|s| s.name == "registry.apply").count();
        let has = |name: &str| trace.iter().any(|s| s.name == name);
        ensure!(
            pushes >= 2 && applies >= 3 && has("raft.propose") && has("raft.commit"),
            "{pushes} pushes, {applies} applies so far"
        );
        Ok(trace)
    })
    .await?;

    let poll = one(&trace, "poll", |s| s.name == "discovery.poll")?;
    ensure!(poll.parent_span_id.is_empty(), "the poll is the root");
    ensure!(
        poll.attr("concord.replica") == leader.to_string(),
        "the leader polls: {poll:?}"
    );
    ensure!(
        poll.attr("discovery.sources")
            .contains("_instances.internal"),
        "{poll:?}"
    );
    ensure!(poll.resource.get("service.name").map(String::as_str) == Some("concord"));
    let propose = one(&trace, "proposal", |s| s.name == "raft.propose")?;
    ensure!(
        propose.parent_span_id == poll.span_id,
        "proposal under the poll"
    );
    let commit = one(&trace, "commit", |s| s.name == "raft.commit")?;
    ensure!(
        commit.parent_span_id == propose.span_id,
        "commit under the proposal"
    );
    ensure!(
        commit.attr("concord.replica") == leader.to_string(),
        "the leader commits"
    );
    ensure!(
        commit.attr("registry.revision") == revision.to_string(),
        "{commit:?}"
    );
    ensure!(commit.status_code == 1, "commit ok: {commit:?}");

    let applies: Vec<&ReceivedSpan> = trace
        .iter()
        .filter(|s| s.name == "registry.apply")
        .collect();
    let replicas: BTreeSet<&str> = applies.iter().map(|s| s.attr("concord.replica")).collect();
    ensure!(
        applies.len() == 3 && replicas == BTreeSet::from(["1", "2", "3"]),
        "one apply on each replica: {applies:#?}"
    );
    for a in &applies {
        ensure!(
            a.parent_span_id == commit.span_id,
            "apply under the commit: {a:?}"
        );
        ensure!(a.attr("registry.revision") == revision.to_string(), "{a:?}");
    }

    let pushes: Vec<&ReceivedSpan> = trace.iter().filter(|s| s.name == "xds.push").collect();
    ensure!(
        pushes.len() == 2,
        "one push span per connected Envoy: {pushes:#?}"
    );
    for (envoy, replica) in [("envoy-t1", "1"), ("envoy-t2", "2")] {
        let push = one(&trace, "push to the Envoy", |s| {
            s.name == "xds.push" && s.attr("envoy.node_id") == envoy
        })?;
        ensure!(
            push.attr("concord.replica") == replica,
            "pushed by its replica: {push:?}"
        );
        ensure!(push.status_code == 1, "ended by the ACK (ok): {push:?}");
        ensure!(push.attr("xds.version") == revision.to_string(), "{push:?}");
        let apply = applies
            .iter()
            .find(|a| a.span_id == push.parent_span_id)
            .with_context(|| format!("push not under an apply: {push:?}"))?;
        ensure!(
            apply.attr("concord.replica") == replica,
            "push under its own replica's apply: {push:?} {apply:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_nack_ends_its_push_span_with_the_error() -> Result<()> {
    let collector = Collector::start().await?;
    let c = Cluster::start(Options {
        extra: vec!["--otlp-endpoint".into(), collector.endpoint()],
        ..Options::default()
    })
    .await?;
    let rev = c.put(2, "n1", 9001).await?;
    eventually(T, "node 1 serves the write", || async {
        let v = c.api(1).envoys().await?;
        ensure!(v.revision == rev, "{v:?}");
        Ok(())
    })
    .await?;
    let mut ads = Ads::open(&c, &c.nodes[&1].xds).await?;
    ads.request("", "", None).await?;
    let first = ads.next().await?;
    ensure!(first.version_info == rev.to_string(), "{first:?}");
    ads.request("", &first.nonce, Some("scripted rejection: bad cluster"))
        .await?;
    // The spans come from two replicas in separate export batches: wait for the whole trace.
    eventually(
        T,
        "the NACKed push span in the API change's trace",
        || async {
            let spans = collector.spans();
            let push = one(&spans, "push to the scripted client", |s| {
                s.name == "xds.push" && s.attr("envoy.node_id") == "scripted"
            })?;
            ensure!(push.status_code == 2, "error status: {push:?}");
            ensure!(
                push.status_message == "scripted rejection: bad cluster",
                "the NACK's message: {push:?}"
            );
            ensure!(push.attr("xds.version") == rev.to_string(), "{push:?}");
            // It belongs to the API change's trace, under replica 1's apply.
            let trace = collector.trace_of(&push.span_id)?;
            let root = one(&trace, "API root", |s| s.name == "api.change")?;
            ensure!(
                root.attr("concord.replica") == "2",
                "the API call went to node 2: {root:?}"
            );
            let apply = one(&trace, "apply on node 1", |s| {
                s.name == "registry.apply" && s.attr("concord.replica") == "1"
            })?;
            ensure!(push.parent_span_id == apply.span_id, "{push:?} {apply:?}");
            Ok(())
        },
    )
    .await?;
    Ok(())
}

/// A collector that accepts connections and never answers: the worst case for an exporter.
async fn silent_collector() -> Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    Ok((format!("http://{addr}"), task))
}

#[tokio::test]
async fn a_silent_collector_blocks_nothing_and_lost_spans_are_counted() -> Result<()> {
    let (endpoint, _task) = silent_collector().await?;
    let c = Cluster::start(Options {
        extra: vec![
            "--otlp-endpoint".into(),
            endpoint,
            "--otlp-queue-size".into(),
            "4".into(),
        ],
        ..Options::default()
    })
    .await?;
    let xds = c.nodes[&1].xds.clone();
    let _envoy = Envoy::start(&c, "envoy-s", &[&xds], false).await?;
    // Every write commits and reaches the Envoy while exports hang.
    for i in 0..20u16 {
        let rev = c
            .put(1 + u64::from(i % 3), &format!("s{i}"), 9000 + i)
            .await?;
        c.all_acked(1, rev).await?;
    }
    eventually(
        T,
        "spans beyond the queue are dropped and counted",
        || async {
            let page = reqwest::get(format!("{}/metrics", c.nodes[&1].admin))
                .await?
                .text()
                .await?;
            let dropped: f64 = page
                .lines()
                .find_map(|l| l.strip_prefix("concord_trace_spans_dropped_total "))
                .context("no dropped-spans counter")?
                .trim()
                .parse()?;
            ensure!(dropped > 0.0, "{dropped} dropped");
            Ok(())
        },
    )
    .await?;
    Ok(())
}
