//! `/metrics` in the Prometheus text format: it parses, and its latency histograms count the
//! changes made — a DNS change and an API write, each ACKed by a real Envoy.

use anyhow::{Context, Result, ensure};
use concord_harness::dns::Bind;
use concord_harness::envoy::Envoy;
use concord_harness::{Cluster, Options, eventually};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

async fn scrape(c: &Cluster, id: u64) -> Result<String> {
    let url = format!("{}/metrics", c.nodes[&id].admin);
    let resp = reqwest::get(&url).await?;
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    ensure!(ct.starts_with("text/plain"), "content type {ct}");
    Ok(resp.text().await?)
}

/// The value of an unlabelled sample, after checking the whole page parses.
fn value(page: &str, name: &str) -> Result<f64> {
    prometheus_parse::Scrape::parse(page.lines().map(|l| Ok(l.to_string())))
        .context("the page does not parse as Prometheus text")?;
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .with_context(|| format!("no sample {name}"))
}

#[tokio::test]
async fn metrics_parse_and_count_changes_to_ack() -> Result<()> {
    let bind = Bind::start().await?;
    let c = Cluster::start(Options {
        extra: vec![
            "--dns-server".into(),
            bind.addr(),
            "--dns-source".into(),
            "txt:_instances.internal:8443".into(),
        ],
        ..Options::default()
    })
    .await?;
    let xds = c.nodes[&1].xds.clone();
    let _envoy = Envoy::start(&c, "envoy-m", &[&xds], false).await?;
    // Each change: one DNS change and one API write, each ACKed by the Envoy on node 1.
    let mut changes = 0.0;
    for i in 0..3 {
        let before = value(
            &scrape(&c, 1).await?,
            "concord_discovery_to_ack_seconds_count",
        )?;
        // Builders accumulate: a removal of most of them would wait for the removal guard.
        let entries: Vec<String> = (0..=i)
            .map(|k| format!("instance=m{k},ip=10.0.0.{},app=x", k + 1))
            .collect();
        bind.set_instances(&entries)?;
        c.put(2, &format!("api{i}"), 9000 + i as u16).await?;
        changes += 2.0;
        eventually(T, "the Envoy ACKs both changes", || async {
            let page = scrape(&c, 1).await?;
            let n = value(&page, "concord_discovery_to_ack_seconds_count")?;
            ensure!(n >= before + 2.0, "{n} observations");
            Ok(())
        })
        .await?;
    }
    let page = eventually(T, "every change counted", || async {
        let page = scrape(&c, 1).await?;
        let n = value(&page, "concord_discovery_to_ack_seconds_count")?;
        ensure!(
            n >= changes,
            "{n} discovery-to-ACK observations for {changes} changes"
        );
        Ok(page)
    })
    .await?;
    ensure!(
        value(&page, "concord_commit_to_ack_seconds_count")? >= changes,
        "commit-to-ACK"
    );
    ensure!(
        value(&page, "concord_xds_acks_total")? >= 2.0 * changes,
        "acks"
    );
    ensure!(
        value(&page, "concord_xds_connected_envoys")? == 1.0,
        "one Envoy"
    );
    ensure!(
        page.contains("concord_discovery_to_ack_seconds_bucket{le=\"+Inf\"}"),
        "histogram buckets"
    );
    // An Envoy that starts now gets all those changes in its first config, but they were made
    // before it existed: no observation of how long they took to reach it.
    let before = value(&page, "concord_discovery_to_ack_seconds_count")?;
    let _late = Envoy::start(&c, "envoy-late", &[&xds], false).await?;
    eventually(T, "the late Envoy ACKs node 1's clusters", || async {
        let local = c.api(1).envoys().await?;
        let late = local.envoys.iter().find(|e| e.node_id == "envoy-late");
        let acked = late.and_then(|e| e.acked("clusters"));
        ensure!(acked == Some(local.revision), "envoy-late ACKed {acked:?}");
        Ok(())
    })
    .await?;
    let after = value(
        &scrape(&c, 1).await?,
        "concord_discovery_to_ack_seconds_count",
    )?;
    ensure!(
        after == before,
        "a new Envoy's first config counted as {} discovery-to-ACK observations of changes made \
         before it started",
        after - before
    );
    // The leader polls; its counters say so.
    let leader = c.leader().await?;
    let lp = scrape(&c, leader).await?;
    ensure!(value(&lp, "concord_dns_polls_total")? > 0.0, "polls");
    ensure!(
        value(&lp, "concord_dns_changes_proposed_total")? >= 3.0,
        "changes proposed"
    );
    ensure!(value(&lp, "concord_raft_is_leader")? == 1.0, "leader gauge");
    Ok(())
}
