//! Every resource shape the services half generates passes Envoy 1.40's own validation
//! (`envoy --mode validate`) for a corpus of desired states — the seed's gRPC shop
//! (deploy/examples/grpc-shop.yaml) and files that use every option — rendered by
//! `concord render`; and the check is shown to fail on a broken bootstrap.

use anyhow::{Context, Result, ensure};
use concord_harness::concord_bin;
use concord_harness::envoy::envoy_bin;
use prost::Message;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Files that together use every option of the model.
fn corpus() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        (
            "every-service-option",
            json!({
                "services": {
                    "rr": {"protocol": "http", "lb": "round_robin", "connect_timeout": "2s",
                           "health_check": {"kind": "http", "path": "/healthz", "interval": "500ms",
                                            "timeout": "250ms", "unhealthy_threshold": 3, "healthy_threshold": 2},
                           "endpoints": [{"addr": "127.0.0.1:8001"}, {"addr": "[::1]:8002", "weight": 5}]},
                    "lr": {"protocol": "http", "http2": true, "lb": "least_request",
                           "health_check": {"kind": "tcp"},
                           "upstream_tls": {"sni": "lr.internal"},
                           "circuit_breakers": {"max_connections": 10, "max_pending_requests": 5,
                                                "max_requests": 20, "max_retries": 1},
                           "outlier_detection": {"consecutive_5xx": 2, "interval": "1s",
                                                 "base_ejection_time": "5s", "max_ejection_percent": 50}},
                    "ring": {"protocol": "grpc", "lb": "ring_hash",
                             "health_check": {"kind": "grpc", "service_name": "echo.v1.Echo"}},
                    "mag": {"protocol": "grpc", "lb": "maglev", "upstream_tls": {}},
                    "from-dns": {"protocol": "grpc", "dns": {"name": "echo.service.consul", "kind": "a", "port": 50051}}
                },
                "route_tables": {"main": {"virtual_hosts": [
                    {"name": "api", "domains": ["api.example.com", "*.api.example.com", "api.example.com:8443"],
                     "routes": [
                        {"match": {"path": "/exact"}, "service": "rr", "timeout": "0s"},
                        {"match": {"prefix": "/v1/", "headers": [
                            {"name": "x-canary", "exact": "yes"},
                            {"name": "x-user", "prefix": "internal-"},
                            {"name": "x-debug", "present": false}]},
                         "weighted": [{"service": "rr", "weight": 90}, {"service": "lr", "weight": 10}],
                         "retry": {"retry_on": ["5xx", "reset", "connect-failure", "retriable-4xx"],
                                   "attempts": 3, "per_try_timeout": "1s",
                                   "backoff": {"base": "10ms", "max": "100ms"}},
                         "request_headers_to_add": {"x-via": "concord"},
                         "request_headers_to_remove": ["x-internal"],
                         "prefix_rewrite": "/", "host_rewrite": "backend.internal"},
                        {"match": {"grpc": {"service": "echo.v1.Echo", "method": "Say"}}, "service": "ring"},
                        {"match": {"grpc": {"service": "echo.v1.Echo"}}, "service": "mag",
                         "retry": {"retry_on": ["unavailable", "cancelled", "deadline-exceeded", "resource-exhausted"]}},
                        {"match": {"prefix": "/"}, "service": "from-dns", "timeout": "15s"}
                     ]},
                    {"name": "catch-all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "service": "rr"}]}
                ]}},
                "listeners": {
                    "public": {"address": "0.0.0.0:8443", "route_table": "main",
                               "tls": {"certificate": "wildcard", "alpn": ["h2", "http/1.1"]}},
                    "internal": {"address": "10.0.0.1:8080", "route_table": "main", "internal": true},
                    "v6": {"address": "[::]:8081", "route_table": "main"}
                }
            }),
        ),
        ("empty", json!({})),
    ]
}

fn render(file: &Path, out: &Path) -> Result<()> {
    let o = Command::new(concord_bin())
        .args(["render", "-f"])
        .arg(file)
        .arg("--out")
        .arg(out)
        .output()?;
    ensure!(
        o.status.success(),
        "concord render {}: {}",
        file.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

/// `envoy --mode validate`: Ok, or what Envoy said.
fn validate(bootstrap: &Path) -> Result<std::result::Result<(), String>> {
    let o = Command::new(envoy_bin())
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(bootstrap)
        .output()
        .context("run envoy")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(match o.status.success() && said.contains("OK") {
        true => Ok(()),
        false => Err(said),
    })
}

#[test]
fn every_generated_shape_passes_envoys_own_validation() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut files: Vec<(String, PathBuf)> = vec![(
        "grpc-shop".into(),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/grpc-shop.yaml"),
    )];
    for (name, v) in corpus() {
        // JSON is YAML.
        let f = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&f, serde_json::to_vec_pretty(&v)?)?;
        files.push((name.to_string(), f));
    }
    for (name, file) in &files {
        let out = dir.path().join(format!("{name}.pb"));
        render(file, &out)?;
        if let Err(said) = validate(&out)? {
            anyhow::bail!("Envoy refuses what concord makes of {name}:\n{said}");
        }
    }
    Ok(())
}

/// The oracle catches a broken shape: the rendered shop with one cluster twice is refused.
#[test]
fn envoys_validation_refuses_a_broken_bootstrap() -> Result<()> {
    use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.pb");
    render(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/grpc-shop.yaml"),
        &good,
    )?;
    ensure!(validate(&good)?.is_ok(), "the shop itself is refused");
    let mut b = Bootstrap::decode(std::fs::read(&good)?.as_slice())?;
    let statics = b.static_resources.as_mut().context("static resources")?;
    let first = statics.clusters[0].clone();
    statics.clusters.push(first);
    let bad = dir.path().join("bad.pb");
    std::fs::write(&bad, b.encode_to_vec())?;
    let said = validate(&bad)?
        .err()
        .context("a duplicate cluster passed validation")?;
    ensure!(
        said.contains("duplicate") || said.contains("already"),
        "{said}"
    );
    Ok(())
}
