//! The sni-cluster listener mode with real Envoy 1.40: one filter chain matching the builder SNI
//! suffix, `sni_cluster` + `tcp_proxy`, clusters named by SNI. Builders under the suffix are
//! routed as they come and go; the guard holds: a client that sends the name of another cluster
//! Envoy knows (the ADS cluster of the bootstrap) or a builder-looking name outside the suffix
//! as its SNI matches no filter chain and reaches nothing.

use anyhow::{Result, ensure};
use concord_harness::envoy::{Envoy, Protocol};
use concord_harness::tls::{TestCa, TlsBuilder, probe};
use concord_harness::{Cluster, Options, eventually, sni};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);
/// The ADS cluster of `concord envoy-bootstrap`.
const ADS_CLUSTER: &str = "concord_xds";

fn sni_cluster_mode() -> Options {
    Options {
        extra: [
            "--listener-mode",
            "sni-cluster",
            "--sni-suffix",
            "builders.test",
        ]
        .map(String::from)
        .to_vec(),
        ..Options::default()
    }
}

async fn counter(envoy: &Envoy, name: &str) -> Result<u64> {
    Ok(envoy.stat(name).await?.trim().parse()?)
}

#[tokio::test]
async fn sni_cluster_routes_builders_under_the_suffix_delta() -> Result<()> {
    sni_cluster_routes_builders_under_the_suffix(Protocol::Delta).await
}

#[tokio::test]
async fn sni_cluster_routes_builders_under_the_suffix_sotw() -> Result<()> {
    sni_cluster_routes_builders_under_the_suffix(Protocol::Sotw).await
}

async fn sni_cluster_routes_builders_under_the_suffix(p: Protocol) -> Result<()> {
    let c = Cluster::start(sni_cluster_mode()).await?;
    let ca = TestCa::new()?;
    let b1 = TlsBuilder::start(&ca, "b1", &sni("b1")).await?;
    c.put_at(1, "b1", b1.addr, &sni("b1")).await?;
    let x: Vec<&str> = c.nodes.values().map(|r| r.xds.as_str()).collect();
    let e = Envoy::start_with(&c, "envoy-1", &x, true, Some(p)).await?;
    e.routes(&ca, "b1").await?;
    // Clusters are named by SNI; the listener has one wildcard chain.
    let d = c.api(1).xds_resources().await?;
    let r = &d.resources;
    ensure!(
        r.clusters.first().map(|c| c.name.as_str()) == Some(sni("b1").as_str()),
        "{d:?}"
    );
    let chains = r.listener.as_ref().map(|l| l.filter_chains.clone());
    ensure!(chains.as_ref().map(Vec::len) == Some(1), "{d:?}");
    ensure!(
        chains.and_then(|f| f.into_iter().next()).map(|c| c.0) == Some("*.builders.test".into()),
        "{d:?}"
    );

    // Builders come and go; the listener stays as it is.
    let b2 = TlsBuilder::start(&ca, "b2", &sni("b2")).await?;
    c.put_at(2, "b2", b2.addr, &sni("b2")).await?;
    e.routes(&ca, "b2").await?;
    c.remove(3, "b1").await?;
    e.does_not_route(&ca, "b1").await?;
    e.routes(&ca, "b2").await?;
    Ok(())
}

#[tokio::test]
async fn sni_outside_the_suffix_reaches_nothing() -> Result<()> {
    let c = Cluster::start(sni_cluster_mode()).await?;
    let ca = TestCa::new()?;
    let b1 = TlsBuilder::start(&ca, "b1", &sni("b1")).await?;
    c.put_at(1, "b1", b1.addr, &sni("b1")).await?;
    // A builder-looking name outside the suffix: accepted by the registry, skipped by the
    // listener mode (no cluster), and reported.
    let outside = "x1.elsewhere.test";
    let x1 = TlsBuilder::start(&ca, "x1", outside).await?;
    c.put_at(1, "x1", x1.addr, outside).await?;
    let xds: Vec<&str> = c.nodes.values().map(|r| r.xds.as_str()).collect();
    let e = Envoy::start(&c, "envoy-1", &xds, true).await?;
    e.routes(&ca, "b1").await?;
    let d = c.api(1).xds_resources().await?;
    ensure!(d.resources.skipped == ["x1"], "{d:?}");
    ensure!(d.resources.clusters.len() == 1, "{d:?}");
    let metrics = reqwest::get(format!("{}/metrics", c.nodes[&1].admin))
        .await?
        .text()
        .await?;
    ensure!(
        metrics.contains("concord_xds_skipped_builders 1\n"),
        "{metrics}"
    );
    // Envoy knows the ADS cluster: that is what a client must not be able to reach by SNI.
    ensure!(
        counter(&e, &format!("cluster.{ADS_CLUSTER}.membership_total")).await? == 3,
        "Envoy has the ADS cluster of three replicas"
    );

    let l = e.listener;
    let no_chain = format!("listener.{}_{}.no_filter_chain_match", l.ip(), l.port());
    let proxied = "tcp.sni_cluster.downstream_cx_total";
    let (no_chain_before, proxied_before) =
        (counter(&e, &no_chain).await?, counter(&e, proxied).await?);
    let attempts = [
        ADS_CLUSTER,
        outside,
        "builders.test",
        "b1.builders.test.evil.test",
    ];
    for name in attempts {
        ensure!(
            probe(&ca, l, name).await.is_err(),
            "SNI {name:?} must reach nothing"
        );
    }
    // Every one of them was closed for matching no filter chain: no filter ran, nothing was
    // proxied anywhere.
    eventually(T, "Envoy counts the unmatched connections", || async {
        let n = counter(&e, &no_chain).await? - no_chain_before;
        ensure!(
            n == attempts.len() as u64,
            "{n} of {} unmatched",
            attempts.len()
        );
        Ok(())
    })
    .await?;
    ensure!(
        counter(&e, proxied).await? == proxied_before,
        "a connection with an SNI outside the suffix reached tcp_proxy"
    );
    ensure!(
        x1.served.load(std::sync::atomic::Ordering::Relaxed) == 0,
        "x1 was reached"
    );
    // The suffix itself still routes.
    e.routes(&ca, "b1").await?;
    Ok(())
}
