//! Envoy's own telemetry as `concord envoy-bootstrap` writes it (issue 18), in a real Envoy: a
//! statsd sink that really sends datagrams, a listener that serves the Prometheus stats and
//! nothing else of the admin API, a stats exclusion that really drops its series, and JSON
//! access logs on the listeners the replicas send. (Every option also passes
//! `envoy --mode validate`: tests/tests/envoy.rs.)

use anyhow::{Context, Result, ensure};
use concord_harness::envoy::{Envoy, EnvoyOptions};
use concord_harness::http::HttpBackend;
use concord_harness::tls::{TestCa, TlsBuilder};
use concord_harness::{Cluster, Options, eventually, free_port, sni};
use concord_registry::services::Desired;
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn statsd_prometheus_and_exclusions_work_in_a_real_envoy() -> Result<()> {
    let c = Cluster::start(Options::default()).await?;
    let statsd = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let prometheus = format!("127.0.0.1:{}", free_port());
    let mut bootstrap = c.bootstrap_args("envoy-t")?;
    bootstrap.extend([
        format!("--statsd={}", statsd.local_addr()?),
        "--stats-flush-interval-ms=200".into(),
        format!("--prometheus-addr={prometheus}"),
        r"--stats-exclude=cluster\.concord_xds\.upstream_cx_.*".into(),
    ]);
    let xds = c.nodes[&1].xds.clone();
    let opts = EnvoyOptions {
        bootstrap,
        ..EnvoyOptions::default()
    };
    let envoy = Envoy::launch(c.dir(), "envoy-t", &[&xds], &opts).await?;

    // statsd: datagrams of `envoy.`-prefixed stats arrive every flush.
    let mut buf = vec![0u8; 65536];
    let n = tokio::time::timeout(T, statsd.recv(&mut buf))
        .await
        .context("no statsd datagram within 20 s")??;
    let datagram = String::from_utf8_lossy(&buf[..n]).to_string();
    ensure!(
        datagram
            .lines()
            .any(|l| l.starts_with("envoy.") && l.contains('|')),
        "not statsd lines: {datagram:?}"
    );

    // Prometheus: the stats in its text format at /metrics, the excluded family gone, the rest
    // of the xDS cluster's stats there.
    let page = eventually(T, "Envoy serves its stats for Prometheus", || async {
        let r = reqwest::get(format!("http://{prometheus}/metrics")).await?;
        ensure!(r.status() == 200, "{}", r.status());
        let page = r.text().await?;
        ensure!(
            page.contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"concord_xds\"}"),
            "no xDS cluster request stats yet\n{}",
            envoy.log_tail()
        );
        Ok(page)
    })
    .await?;
    prometheus_parse::Scrape::parse(page.lines().map(|l| Ok(l.to_string())))
        .context("Envoy's /metrics does not parse as Prometheus text")?;
    ensure!(page.contains("envoy_server_live"), "no server stats");
    ensure!(
        !page.contains("envoy_cluster_upstream_cx_total{envoy_cluster_name=\"concord_xds\"}"),
        "the excluded series is there: {:?}\n{:?}",
        page.lines()
            .filter(|l| l.contains("upstream_cx_total"))
            .collect::<Vec<_>>(),
        envoy.get("/stats?filter=concord_xds.upstream_cx").await?
    );
    let admin = envoy.get("/stats?filter=upstream_cx_total").await?;
    ensure!(
        !admin.contains("cluster.concord_xds.upstream_cx_total"),
        "Envoy still keeps the excluded stat: {admin}"
    );
    // Nothing else of the admin API is reachable there.
    for path in ["/config_dump", "/quitquitquit", "/stats"] {
        let r = reqwest::get(format!("http://{prometheus}{path}")).await?;
        ensure!(r.status() == 404, "{path}: {}", r.status());
    }
    Ok(())
}

/// `--access-log stdout`: the replicas send this Envoy its listeners with a JSON access log, and
/// a TLS connection through the builders' listener and an HTTP request through a services
/// listener each leave a line on Envoy's stdout naming what it did; an Envoy that did not ask
/// gets no access log (the same revision, its own listeners).
#[tokio::test]
async fn access_logs_are_json_lines_for_builder_connections_and_service_requests() -> Result<()> {
    let c = Cluster::start(Options::default()).await?;
    let leader = c.services_enabled().await?;
    let ca = TestCa::new()?;
    let b = TlsBuilder::start(&ca, "logged", &sni("logged")).await?;
    c.put_at(leader, "logged", b.addr, &sni("logged")).await?;
    let web = HttpBackend::start("web1").await?;
    let port = free_port();
    let d: Desired = serde_json::from_value(json!({
        "services": {"web": {"protocol": "http", "endpoints": [{"addr": web.addr.to_string()}]}},
        "route_tables": {"main": {"virtual_hosts": [{"name": "web", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "service": "web"}]}]}},
        "listeners": {"main": {"address": format!("127.0.0.1:{port}"), "route_table": "main"}}
    }))?;
    c.api(leader).apply_config(&d).await?;
    let xds = c.nodes[&1].xds.clone();
    let mut bootstrap = c.bootstrap_args("envoy-log")?;
    bootstrap.push("--access-log=stdout".into());
    let opts = EnvoyOptions {
        bootstrap,
        ..EnvoyOptions::default()
    };
    let envoy = Envoy::launch(c.dir(), "envoy-log", &[&xds], &opts).await?;
    envoy.routes(&ca, "logged").await?;
    let url = format!("http://127.0.0.1:{port}/hello");
    eventually(T, "Envoy routes the service", || async {
        let r = reqwest::get(&url).await?;
        ensure!(r.status() == 200, "{}", r.status());
        Ok(())
    })
    .await?;

    let lines = eventually(T, "both lines are logged", || async {
        let log = std::fs::read_to_string(envoy.log_path())?;
        let lines: Vec<Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect();
        let tls = lines.iter().any(|l| {
            l["sni"] == sni("logged").as_str() && l["upstream_cluster"] == "builder_logged"
        });
        let http = lines.iter().any(|l| {
            l["path"] == "/hello" && l["status"] == 200 && l["upstream_cluster"] == "service_web"
        });
        ensure!(tls && http, "tls {tls}, http {http}: {lines:?}");
        Ok(lines)
    })
    .await?;
    ensure!(
        lines.iter().all(|l| l["start_time"].is_string()),
        "{lines:?}"
    );

    // An Envoy that did not ask: no access log in what it is sent.
    let plain = Envoy::start(&c, "envoy-plain", &[&xds], false).await?;
    plain.routes(&ca, "logged").await?;
    let dump = plain.get("/config_dump?resource=dynamic_listeners").await?;
    ensure!(
        !dump.contains("access_loggers"),
        "an access log nobody asked for"
    );
    let dump = envoy.get("/config_dump?resource=dynamic_listeners").await?;
    ensure!(dump.contains("envoy.access_loggers.stdout"), "{dump}");
    Ok(())
}
