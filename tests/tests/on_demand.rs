//! On-demand clusters (issue 17) with the real Envoy 1.40: replicas in `--listener-mode
//! on-demand` and an Envoy bootstrapped with `--on-demand-clusters` (no wildcard cluster
//! subscription). The Envoy holds no builder until a client names one; then it asks for that
//! cluster over delta ADS and routes to it, follows its changes and its removal, and is told at
//! once of a name that does not exist.

use anyhow::{Result, ensure};
use concord_api::{BatchBody, BatchBuilder};
use concord_harness::envoy::{Envoy, EnvoyOptions, Protocol};
use concord_harness::tls::{TestCa, TlsBuilder, probe};
use concord_harness::{Cluster, Options, eventually, sni};
use std::collections::BTreeSet;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// The clusters Envoy holds, by name (from `/clusters`).
async fn clusters(e: &Envoy) -> Result<BTreeSet<String>> {
    Ok(e.get("/clusters")
        .await?
        .lines()
        .filter_map(|l| l.split_once("::").map(|(name, _)| name.to_string()))
        .collect())
}

#[tokio::test]
async fn an_on_demand_envoy_holds_only_the_builders_its_clients_name() -> Result<()> {
    let c = Cluster::start(Options {
        extra: [
            "--listener-mode",
            "on-demand",
            "--sni-suffix",
            "builders.test",
        ]
        .map(String::from)
        .to_vec(),
        ..Options::default()
    })
    .await?;
    let ca = TestCa::new()?;
    // Fifty builders no client names, and two real ones.
    let fakes = (0..50u16)
        .map(|i| {
            let id = format!("f{i}");
            BatchBuilder::new(&id, ([127, 0, 0, 2], 21000 + i).into(), sni(&id))
        })
        .collect();
    c.api(1)
        .batch(&BatchBody {
            upserts: fakes,
            removes: vec![],
        })
        .await?;
    let b1 = TlsBuilder::start(&ca, "b1", &sni("b1")).await?;
    let b2 = TlsBuilder::start(&ca, "b2", &sni("b2")).await?;
    c.put_at(1, "b1", b1.addr, &sni("b1")).await?;
    c.put_at(1, "b2", b2.addr, &sni("b2")).await?;

    let servers: Vec<String> = c.nodes.values().map(|r| r.xds.clone()).collect();
    let servers: Vec<&str> = servers.iter().map(String::as_str).collect();
    let mut bootstrap = c.bootstrap_args("envoy-od")?;
    bootstrap.push("--on-demand-clusters".into());
    let opts = EnvoyOptions {
        prefer_first: true,
        protocol: Some(Protocol::Delta),
        bootstrap,
        ..EnvoyOptions::default()
    };
    let e = Envoy::launch(c.dir(), "envoy-od", &servers, &opts).await?;
    eventually(T, "the listener", || async {
        ensure!(e.versions().await?.listeners.is_some(), "no listener yet");
        Ok(())
    })
    .await?;
    let only_ads = BTreeSet::from(["concord_xds".to_string()]);
    ensure!(
        clusters(&e).await? == only_ads,
        "before any client: {:?}",
        clusters(&e).await?
    );

    // A client names b1: Envoy asks for it, and holds it alone of the 52.
    e.routes(&ca, "b1").await?;
    let with_b1 = BTreeSet::from(["concord_xds".to_string(), sni("b1")]);
    ensure!(clusters(&e).await? == with_b1, "{:?}", clusters(&e).await?);

    // A name under the suffix that no builder has: answered missing, not left to time out.
    ensure!(probe(&ca, e.listener, &sni("nobody")).await.is_err());
    eventually(T, "the missing cluster counted", || async {
        let missing = e.stat("tcp.sni_cluster.on_demand_cluster_missing").await?;
        ensure!(missing == "1", "missing {missing}");
        Ok(())
    })
    .await?;
    ensure!(e.stat("tcp.sni_cluster.on_demand_cluster_timeout").await? == "0");

    // b1 moves: the subscribed cluster follows; then it is removed, and Envoy drops it.
    drop(b1);
    let b1 = TlsBuilder::start(&ca, "b1", &sni("b1")).await?;
    c.put_at(1, "b1", b1.addr, &sni("b1")).await?;
    e.routes(&ca, "b1").await?;
    c.remove(1, "b1").await?;
    e.does_not_route(&ca, "b1").await?;
    eventually(T, "b1's cluster dropped", || async {
        let held = clusters(&e).await?;
        ensure!(held == only_ads, "{held:?}");
        Ok(())
    })
    .await?;
    // b2 was never named: it still comes on demand.
    e.routes(&ca, "b2").await?;
    Ok(())
}
