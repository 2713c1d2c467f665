//! Services whose endpoints come from DNS (issue 14, the seed's Consul-DNS case): a real BIND 9
//! serving SRV records for a service, the leader's poller turning them into endpoints, and a
//! real Envoy routing gRPC calls to the real tonic backends the records name. A name of 300
//! SRV records — more than any UDP answer holds — arrives whole over TCP.

use anyhow::{Context, Result, ensure};
use concord_harness::dns::Bind;
use concord_harness::envoy::Envoy;
use concord_harness::grpc::{GrpcBackend, spread};
use concord_harness::{Cluster, Options, eventually, free_port};
use concord_registry::services::Desired;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// The SRV record of `port` on target `target`.
fn srv(name: &str, weight: u16, port: u16, target: &str) -> String {
    format!("update add {name} 5 SRV 0 {weight} {port} {target}\n")
}

/// The ids and weights of a service's endpoints as replica `id` has applied them.
async fn endpoints(c: &Cluster, id: u64, service: &str) -> Result<BTreeMap<String, u32>> {
    let list = c.api(id).endpoints(service).await?;
    Ok(list
        .endpoints
        .into_iter()
        .map(|e| (e.id, e.weight))
        .collect())
}

#[tokio::test]
async fn a_services_endpoints_come_from_srv_records_and_leave_with_them() -> Result<()> {
    let bind = Bind::start().await?;
    let g1 = GrpcBackend::start("g1").await?;
    let g2 = GrpcBackend::start("g2").await?;
    let name = "_grpc._tcp.echo.internal.";
    let mut script = "zone internal.\nupdate add g.internal. 5 A 127.0.0.1\n".to_string();
    script += &srv(name, 10, g1.addr.port(), "g.internal.");
    script += &srv(name, 10, g2.addr.port(), "g.internal.");
    // 300 records on one target: ~6 kB, beyond any UDP answer (4096 bytes with EDNS).
    let big = "_grpc._tcp.big.internal.";
    for i in 0..300 {
        script += &srv(big, 1, 20000 + i, "g.internal.");
    }
    bind.update(&script)?;

    // A nameserver and no builder sources: the poller resolves only the services' names.
    let c = Cluster::start(Options {
        extra: vec!["--dns-server".into(), bind.addr()],
        ..Options::default()
    })
    .await?;
    let leader = c.services_enabled().await?;
    let port = free_port();
    let d: Desired = serde_json::from_value(json!({
        "services": {
            "echo": {"protocol": "grpc", "dns": {"name": name, "kind": "srv"}},
            "big": {"protocol": "grpc", "dns": {"name": big, "kind": "srv"}},
        },
        "route_tables": {"main": {"virtual_hosts": [
            {"name": "echo", "domains": ["echo.shop.test"], "routes": [{"match": {"prefix": "/"}, "service": "echo"}]},
        ]}},
        "listeners": {"public": {"address": format!("127.0.0.1:{port}"), "route_table": "main"}},
    }))?;
    c.api(leader).apply_config(&d).await.context("apply")?;

    let want: BTreeMap<String, u32> = [&g1, &g2]
        .iter()
        .map(|b| (format!("dns@{}", b.addr), 10))
        .collect();
    for id in c.nodes.keys().copied() {
        eventually(
            T,
            &format!("node {id} has echo's SRV endpoints"),
            || async {
                let have = endpoints(&c, id, "echo").await?;
                ensure!(have == want, "{have:?}");
                let n = endpoints(&c, id, "big").await?.len();
                ensure!(
                    n == 300,
                    "{n} of big's 300 endpoints (a truncated answer not retried over TCP?)"
                );
                Ok(())
            },
        )
        .await?;
    }
    let discovery = c.api(leader).discovery().await?;
    let services = discovery.poller.context("the leader polls")?.services;
    ensure!(
        services.get("echo").map(String::as_str) == Some("2 endpoints"),
        "{services:?}"
    );

    // A real Envoy routes to both instances the records name.
    let x: Vec<String> = c.nodes.values().map(|r| r.xds.clone()).collect();
    let servers: Vec<&str> = x.iter().map(String::as_str).collect();
    let envoy = Envoy::start_with(&c, "envoy-1", &servers, true, None).await?;
    let listener: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    eventually(T, "Envoy spreads calls over g1 and g2", || async {
        let s = spread(listener, "echo.shop.test", 20)
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}\n{}", envoy.log_tail()))?;
        ensure!(s.len() == 2, "{s:?}");
        Ok(())
    })
    .await?;

    // g2's record goes: its endpoint leaves every replica and Envoy stops sending it calls.
    bind.update(&format!(
        "zone internal.\nupdate delete {name} SRV 0 10 {} g.internal.\n",
        g2.addr.port()
    ))?;
    for id in c.nodes.keys().copied() {
        eventually(T, &format!("node {id} drops g2"), || async {
            let have = endpoints(&c, id, "echo").await?;
            ensure!(
                have.len() == 1 && have.contains_key(&format!("dns@{}", g1.addr)),
                "{have:?}"
            );
            Ok(())
        })
        .await?;
    }
    eventually(T, "Envoy sends every call to g1", || async {
        let s = spread(listener, "echo.shop.test", 20).await?;
        ensure!(s.keys().collect::<Vec<_>>() == ["g1"], "{s:?}");
        Ok(())
    })
    .await?;

    // The poller's endpoints are its own: the API cannot remove one.
    let refused = c
        .api(leader)
        .deregister_endpoint("echo", &format!("dns@{}", g1.addr))
        .await;
    ensure!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("managed by dns")),
        "{refused:?}"
    );
    Ok(())
}
