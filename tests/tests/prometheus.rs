//! What operators run against concord's metrics (issue 18), for real: the shipped alerting rules
//! through `promtool check rules` and `promtool test rules`, and a real Prometheus (Debian's
//! package, installed by tests/setup) started from `deploy/prometheus/prometheus.yml`, scraping
//! every replica with a read token: the discovery-to-ACK quantile over a run of changes, the
//! leader gauge across a leader kill, and every query of the alerts and the Grafana dashboard
//! accepted by Prometheus and naming only metrics a replica exports.

use anyhow::{Context, Result, bail, ensure};
use concord_harness::envoy::Envoy;
use concord_harness::{Cluster, Options, eventually, free_port};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const WRITE: &str = "write-token-0123456789abcdef";
const READ: &str = "read-token-0123456789abcdef";

/// A file of the repository's `deploy/`.
fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn promtool(args: &[&str]) -> Result<String> {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .context("run promtool (tests/setup installs Debian's prometheus package)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "promtool {args:?} failed:\n{text}");
    Ok(text)
}

#[test]
fn the_alerting_rules_pass_promtools_checks_and_unit_tests() -> Result<()> {
    let rules = deploy("prometheus/alerts.yml");
    let out = promtool(&["check", "rules", &rules.display().to_string()])?;
    ensure!(out.contains("SUCCESS: 6 rules found"), "{out}");
    let tests = deploy("prometheus/alerts_test.yml");
    let out = promtool(&["test", "rules", &tests.display().to_string()])?;
    ensure!(out.contains("SUCCESS"), "{out}");
    Ok(())
}

/// Every PromQL expression of the alerting rules and the dashboard.
fn shipped_queries() -> Result<Vec<String>> {
    let mut out = Vec::new();
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml"))?;
    for line in rules.lines() {
        if let Some(e) = line.trim().strip_prefix("expr: ") {
            out.push(e.to_string());
        }
    }
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/concord.json"))?)
            .context("the dashboard is JSON")?;
    for p in dash["panels"].as_array().context("panels")? {
        for t in p["targets"].as_array().context("targets")? {
            out.push(t["expr"].as_str().context("expr")?.to_string());
        }
    }
    ensure!(out.len() > 20, "{} queries", out.len());
    Ok(out)
}

/// The `concord_…` metric names `query` uses, histogram series mapped to their family.
fn metric_names(query: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = query;
    while let Some(i) = rest.find("concord_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(family.to_string());
        rest = &tail[end..];
    }
    names
}

/// A Prometheus process, killed on drop.
struct Prometheus {
    child: std::process::Child,
    base: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus from the shipped config, scraping `targets` every second with the
    /// token in `token_file`.
    async fn start(dir: &Path, targets: &[String], token_file: &Path) -> Result<Prometheus> {
        let shipped = std::fs::read_to_string(deploy("prometheus/prometheus.yml"))?;
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = shipped
            .replace("scrape_interval: 5s", "scrape_interval: 1s")
            .replace("evaluation_interval: 5s", "evaluation_interval: 1s")
            .replace(
                "/etc/prometheus/concord-read-token",
                &token_file.display().to_string(),
            )
            .replace(
                "['node-1:8101', 'node-2:8101', 'node-3:8101']",
                &format!("[{}]", list.join(", ")),
            );
        ensure!(config != shipped, "the shipped config changed shape");
        std::fs::write(dir.join("prometheus.yml"), &config)?;
        std::fs::copy(deploy("prometheus/alerts.yml"), dir.join("alerts.yml"))?;
        promtool(&[
            "check",
            "config",
            &dir.join("prometheus.yml").display().to_string(),
        ])?;
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start prometheus")?;
        let p = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        eventually(T, "Prometheus is ready", || async {
            let r = reqwest::get(format!("{}/-/ready", p.base)).await?;
            ensure!(r.status().is_success(), "{}", r.status());
            Ok(())
        })
        .await?;
        Ok(p)
    }

    /// An instant query: its result vector (`status` must be `success`).
    async fn query(&self, q: &str) -> Result<Vec<Value>> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.base),
            [("query", q)],
        )?;
        let r: Value = reqwest::get(url).await?.json().await?;
        if r["status"] != "success" {
            bail!("query {q:?}: {r}");
        }
        Ok(r["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The single value of an instant query.
    async fn value(&self, q: &str) -> Result<f64> {
        let v = self.query(q).await?;
        ensure!(v.len() == 1, "{q}: {v:?}");
        v[0]["value"][1]
            .as_str()
            .context("a value")?
            .parse()
            .context("a number")
    }

    /// The `instance` labels of the series `q` returns.
    async fn instances(&self, q: &str) -> Result<Vec<String>> {
        Ok(self
            .query(q)
            .await?
            .iter()
            .filter_map(|s| s["metric"]["instance"].as_str().map(String::from))
            .collect())
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_every_replica_with_a_read_token() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("admin-tokens");
    std::fs::write(&tokens, format!("write {WRITE}\nread {READ}\n"))?;
    let read_token = dir.path().join("read-token");
    std::fs::write(&read_token, READ)?;
    let mut c = Cluster::start(Options {
        extra: vec!["--admin-token-file".into(), tokens.display().to_string()],
        admin_token: Some(WRITE.into()),
        ..Options::default()
    })
    .await?;
    let target =
        |c: &Cluster, id: u64| c.nodes[&id].admin.trim_start_matches("http://").to_string();
    let targets: Vec<String> = c.nodes.keys().map(|id| target(&c, *id)).collect();
    let prom = Prometheus::start(dir.path(), &targets, &read_token).await?;
    eventually(T, "every replica is scraped", || async {
        let up = prom.query("up{job=\"concord\"} == 1").await?;
        ensure!(up.len() == 3, "{up:?}");
        Ok(())
    })
    .await?;

    // A run of changes, each ACKed by a real Envoy: the discovery-to-ACK quantile is there.
    let xds = c.nodes[&1].xds.clone();
    let _envoy = Envoy::start(&c, "envoy-prom", &[&xds], false).await?;
    for i in 0..10 {
        c.put(2, &format!("p{i}"), 9100 + i).await?;
    }
    let q99 =
        "histogram_quantile(0.99, sum by (le) (rate(concord_discovery_to_ack_seconds_bucket[1m])))";
    let p99 = eventually(T, "the discovery-to-ACK p99 of the changes", || async {
        let n = prom
            .value("sum(concord_discovery_to_ack_seconds_count{instance=~\".+\"})")
            .await?;
        ensure!(n >= 10.0, "{n} observations");
        let v = prom.value(q99).await?;
        ensure!(v.is_finite() && v > 0.0, "p99 {v}");
        Ok(v)
    })
    .await?;
    ensure!(p99 < 5.0, "discovery-to-ACK p99 {p99} s");

    // The leader gauge names the leader; after a SIGKILL it names another, and `up` shows the
    // killed one down.
    let leader = c.leader().await?;
    let old = target(&c, leader);
    eventually(T, "Prometheus sees the leader", || async {
        let l = prom.instances("concord_raft_is_leader == 1").await?;
        ensure!(l == [old.clone()], "{l:?}, want {old}");
        Ok(())
    })
    .await?;
    c.node(leader).kill();
    eventually(T, "Prometheus sees the new leader", || async {
        let l = prom.instances("concord_raft_is_leader == 1").await?;
        ensure!(l.len() == 1 && l[0] != old, "{l:?}");
        let down = prom.instances("up{job=\"concord\"} == 0").await?;
        ensure!(down == [old.clone()], "down: {down:?}");
        Ok(())
    })
    .await?;

    // Every shipped query is valid PromQL here, and names only metrics a replica exports.
    let page = reqwest::Client::new()
        .get(format!("{}/metrics", c.nodes[&c.leader().await?].admin))
        .bearer_auth(READ)
        .send()
        .await?
        .text()
        .await?;
    let exported: BTreeSet<String> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect();
    for q in shipped_queries()? {
        prom.query(&q)
            .await
            .with_context(|| format!("shipped query {q:?}"))?;
        for name in metric_names(&q) {
            ensure!(
                exported.contains(&name),
                "{q:?} uses {name}, which no replica exports"
            );
        }
    }
    Ok(())
}
