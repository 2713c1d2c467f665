//! The local world in a run directory: the cluster, named, the Envoys, the demo builders and the
//! demo gRPC service (instances g1 and g2, each declared by `concord endpoints register`),
//! described by the settings and adopted from their pid files when they run. Every part is the
//! test harness's own ([`concord_harness`]), with fixed ports, kept state and detached processes.

use crate::settings::{DNS_TXT_NAME, Kind, Settings};
use anyhow::{Context, Result, bail};
use concord_harness::dns::{Bind, BindOptions};
use concord_harness::envoy::{Envoy, EnvoyOptions};
use concord_harness::{Cluster, Launch, Options, Ports, Proc, process::write_atomically};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The cluster's name (`--cluster`), which its certificates are issued for.
const CLUSTER: &str = "local";

/// The local world's files and settings.
pub struct World {
    /// Its settings.
    pub s: Settings,
    /// The run directory.
    pub dir: PathBuf,
}

/// The demo gRPC service's name, and how many instances `up` runs.
pub const GRPC_SERVICE: &str = "echo";
/// Instances of the demo gRPC service.
pub const GRPC_INSTANCES: u64 = 2;
/// The `:authority` the demo gRPC service answers.
pub const GRPC_AUTHORITY: &str = "echo.local";

/// One instance of the demo gRPC service: the server and the registrar that declares it.
pub struct GrpcInstance {
    /// The `demo-grpc serve` process, if it runs.
    pub server: Option<Proc>,
    /// The `concord endpoints register` process, if it runs.
    pub registrar: Option<Proc>,
}

/// A demo builder process.
pub struct Builder {
    /// Its number (it is `b<n>`).
    pub n: u64,
    /// How it is announced.
    pub kind: Kind,
    /// Its process, if it runs.
    pub proc: Option<Proc>,
}

impl World {
    /// The write token file (`CONCORD_TOKEN_FILE` for the CLI).
    pub fn token_file(&self) -> PathBuf {
        self.dir.join("admin-token")
    }

    /// The nodes' `--admin-token-file` (a write and a read token).
    pub fn tokens_file(&self) -> PathBuf {
        self.dir.join("admin-tokens")
    }

    /// Writes the admin tokens unless they exist (mode 600: they are secrets); the write token.
    pub fn ensure_tokens(&self) -> Result<String> {
        if let Ok(t) = std::fs::read_to_string(self.token_file())
            && std::fs::metadata(self.tokens_file()).is_ok()
        {
            return Ok(t.trim().to_string());
        }
        let (write, read) = (random_token()?, random_token()?);
        let tokens = format!(
            "# admin API tokens of the local cluster (concord serve --admin-token-file)\nwrite {write}\nread {read}\n"
        );
        secret(&self.tokens_file(), &tokens)?;
        secret(&self.token_file(), &format!("{write}\n"))?;
        secret(
            &self.dir.join("admin-auth-header"),
            &format!("Authorization: Bearer {write}\n"),
        )?;
        Ok(write)
    }

    fn token(&self) -> Option<String> {
        std::fs::read_to_string(self.token_file())
            .ok()
            .map(|t| t.trim().to_string())
    }

    /// The cluster as the harness describes it (running replicas adopted, nothing started).
    pub fn cluster(&self) -> Result<Cluster> {
        let mut extra = vec![
            "--admin-token-file".to_string(),
            self.tokens_file().display().to_string(),
        ];
        if self.s.dns {
            extra.extend([
                "--dns-server".into(),
                format!("127.0.0.1:{}", self.s.dns_port),
                "--dns-source".into(),
                format!("txt:{DNS_TXT_NAME}:{}", self.s.dns_builder_port),
                "--dns-sni-template".into(),
                format!("{{id}}.{}", self.s.builder_domain),
            ]);
        }
        Cluster::open(Options {
            nodes: self.s.nodes,
            extra,
            relaxed_elections: false,
            admin_token: self.token(),
            tls: self.s.tls,
            xds_client_certs: self.s.tls,
            ports: Some(Ports {
                peer: self.s.peer_base,
                admin: self.s.admin_base,
                xds: self.s.xds_base,
            }),
            state: Some(self.dir.clone()),
            detach: true,
            name: Some(CLUSTER.into()),
            ..Options::default()
        })
    }

    /// named, adopted if it runs.
    pub fn bind(&self) -> Result<Bind> {
        Bind::open(&BindOptions {
            port: Some(self.s.dns_port),
            dir: Some(self.dir.join("dns")),
            detach: true,
        })
    }

    /// envoy-N, adopted if it runs.
    pub fn envoy(&self, n: u64) -> Result<Envoy> {
        let (admin, listener) = self.s.envoy_addrs(n);
        Envoy::adopt(&self.dir, &format!("envoy-{n}"), admin, listener)
    }

    /// Starts envoy-N (it must not run) and waits until its admin API answers.
    pub async fn start_envoy(&self, cluster: &Cluster, n: u64) -> Result<Envoy> {
        let id = format!("envoy-{n}");
        let (admin, listener) = self.s.envoy_addrs(n);
        let servers = self.s.envoy_servers(n);
        let servers: Vec<&str> = servers.iter().map(String::as_str).collect();
        let opts = EnvoyOptions {
            prefer_first: true,
            bootstrap: cluster.bootstrap_args(&id)?,
            admin: Some(admin),
            listener: Some(listener),
            detach: true,
            port_offset: n as i32,
            ..EnvoyOptions::default()
        };
        Envoy::launch(&self.dir, &id, &servers, &opts).await
    }

    fn builder_file(&self, n: u64, ext: &str) -> PathBuf {
        self.dir.join(format!("builder-{n}.{ext}"))
    }

    /// Demo builder bN's CA certificate (written by the builder), to check its greeting.
    pub fn builder_ca(&self, n: u64) -> PathBuf {
        self.builder_file(n, "ca.pem")
    }

    /// Demo builder bN's log.
    pub fn builder_log(&self, n: u64) -> PathBuf {
        self.builder_file(n, "log")
    }

    fn builder_marker(&self, n: u64, kind: Kind) -> String {
        format!("b{n} {} {}", self.s.sni(n), self.s.builder_addr(n, kind))
    }

    /// Demo builder bN as last started (its kind file), adopted if it runs.
    pub fn builder(&self, n: u64) -> Option<Builder> {
        let kind = Kind::parse(&std::fs::read_to_string(self.builder_file(n, "kind")).ok()?)?;
        let proc = Proc::adopt(&self.builder_file(n, "pid"), &self.builder_marker(n, kind));
        Some(Builder { n, kind, proc })
    }

    /// Every demo builder this world has started (running or not), by number.
    pub fn builders(&self) -> Vec<Builder> {
        let mut ns: BTreeSet<u64> = self.dns_list().unwrap_or_default().into_iter().collect();
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(n) = name
                .strip_prefix("builder-")
                .and_then(|r| r.strip_suffix(".kind"))
                .and_then(|n| n.parse().ok())
            {
                ns.insert(n);
            }
        }
        ns.into_iter().filter_map(|n| self.builder(n)).collect()
    }

    /// Starts demo builder bN as `kind` unless it runs; refuses one that runs as the other kind.
    pub fn start_builder(&self, n: u64, kind: Kind) -> Result<Builder> {
        if let Some(b) = self.builder(n)
            && b.proc.is_some()
        {
            if b.kind != kind {
                bail!(
                    "b{n} runs as {} builder on {}; pick another number",
                    article(b.kind),
                    self.s.builder_addr(n, b.kind)
                );
            }
            return Ok(b);
        }
        let addr = self.s.builder_addr(n, kind);
        write_atomically(&self.builder_file(n, "kind"), &format!("{}\n", kind.name()))?;
        let _ = std::fs::remove_file(self.builder_ca(n));
        let mut cmd = Command::new(concord_harness::sibling_bin("demo-builder"));
        cmd.args([format!("b{n}"), self.s.sni(n), addr.to_string()])
            .arg("--ca-out")
            .arg(self.builder_ca(n));
        let proc = Proc::spawn(
            cmd,
            &self.builder_log(n),
            &self.builder_marker(n, kind),
            &Launch::detached(self.builder_file(n, "pid")),
        )?;
        Ok(Builder {
            n,
            kind,
            proc: Some(proc),
        })
    }

    fn grpc_file(&self, n: u64, what: &str) -> PathBuf {
        self.dir.join(format!("grpc-{n}.{what}"))
    }

    /// Where instance gN serves.
    pub fn grpc_addr(&self, n: u64) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.s.envoy_listener_base + 200 + n as u16))
    }

    /// The port envoy-N serves the demo gRPC service on (the services listener, moved by the
    /// Envoy's `--port-offset N`).
    pub fn grpc_listener(&self, n: u64) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.s.envoy_listener_base + 80 + n as u16))
    }

    /// The desired state `up` applies: the demo gRPC service, routed by `:authority` with gRPC
    /// health checks, a 15 s timeout and retries, on a plaintext services listener.
    pub fn grpc_desired(&self) -> Result<concord_registry::services::Desired> {
        let listener = format!("127.0.0.1:{}", self.s.envoy_listener_base + 80);
        Ok(serde_json::from_value(serde_json::json!({
            "services": {GRPC_SERVICE: {
                "protocol": "grpc",
                "health_check": {"kind": "grpc", "interval": "1s", "timeout": "500ms"},
                "circuit_breakers": {"max_requests": 1000},
                "drain_timeout": "5s"
            }},
            "route_tables": {"local": {"virtual_hosts": [{
                "name": GRPC_SERVICE, "domains": [GRPC_AUTHORITY],
                "routes": [{"match": {"grpc": {"service": concord_harness::grpc::ECHO_SERVICE}},
                            "service": GRPC_SERVICE, "timeout": "15s",
                            "retry": {"retry_on": ["unavailable", "connect-failure"], "attempts": 2}}]
            }]}},
            "listeners": {"grpc": {"address": listener, "route_table": "local"}}
        }))?)
    }

    /// Instance gN, adopted if its processes run.
    pub fn grpc(&self, n: u64) -> GrpcInstance {
        let addr = self.grpc_addr(n).to_string();
        GrpcInstance {
            server: Proc::adopt(&self.grpc_file(n, "pid"), &format!("serve g{n} {addr}")),
            registrar: Proc::adopt(&self.grpc_file(n, "register.pid"), &format!("--id g{n}")),
        }
    }

    /// Starts instance gN and its registrar (whichever does not run), registering through the
    /// replica at `admin`.
    pub fn start_grpc(&self, n: u64, admin: &str) -> Result<GrpcInstance> {
        let mut g = self.grpc(n);
        let addr = self.grpc_addr(n).to_string();
        if g.server.is_none() {
            let mut cmd = Command::new(concord_harness::sibling_bin("demo-grpc"));
            cmd.args(["serve", &format!("g{n}"), &addr]);
            g.server = Some(Proc::spawn(
                cmd,
                &self.grpc_file(n, "log"),
                &format!("serve g{n} {addr}"),
                &Launch::detached(self.grpc_file(n, "pid")),
            )?);
        }
        if g.registrar.is_none() {
            let mut cmd = Command::new(concord_harness::concord_bin());
            cmd.args(["--admin", admin])
                .arg("--token-file")
                .arg(self.token_file());
            cmd.args([
                "endpoints",
                "register",
                "--service",
                GRPC_SERVICE,
                "--addr",
                &addr,
            ])
            .args(["--ttl", "5s", "--id", &format!("g{n}")])
            // g1 is version v1, g2 v2: `concord rollout start echo --from v1 --to v2` moves
            // echo's traffic between them.
            .args(["--label", &format!("version=v{n}")]);
            g.registrar = Some(Proc::spawn(
                cmd,
                &self.grpc_file(n, "register.log"),
                &format!("--id g{n}"),
                &Launch::detached(self.grpc_file(n, "register.pid")),
            )?);
        }
        Ok(g)
    }

    /// The DNS list: the builder numbers whose entries the TXT record should hold.
    pub fn dns_list(&self) -> Result<Vec<u64>> {
        let text = match std::fs::read_to_string(self.dns_list_file()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context("read the DNS list"),
        };
        let mut ns: Vec<u64> = text
            .lines()
            .filter_map(|l| {
                l.strip_prefix("instance=b")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        ns.sort_unstable();
        ns.dedup();
        Ok(ns)
    }

    /// The DNS list file (one TXT entry a line; lines added by hand are published too).
    pub fn dns_list_file(&self) -> PathBuf {
        self.dir.join("dns").join("instances")
    }

    /// The DNS list's lines.
    pub fn dns_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.dns_list_file())
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Writes the DNS list with `n` added (`true`) or removed (`false`).
    pub fn change_dns_list(&self, n: u64, add: bool) -> Result<()> {
        let prefix = format!("instance=b{n},");
        let mut lines: Vec<String> = self
            .dns_lines()
            .into_iter()
            .filter(|l| !l.starts_with(&prefix))
            .collect();
        if add {
            lines.push(self.s.dns_entry(n));
        }
        lines.sort_by_key(|l| {
            let n: u64 = l
                .strip_prefix("instance=b")
                .and_then(|r| r.split(',').next()?.parse().ok())
                .unwrap_or(u64::MAX);
            (n, l.clone())
        });
        std::fs::create_dir_all(self.dir.join("dns"))?;
        write_atomically(&self.dns_list_file(), &(lines.join("\n") + "\n"))
    }

    /// A file of the world named on the command line (`logs`): node N, envoy-N, bN, named.
    pub fn log_of(&self, what: &str) -> Result<PathBuf> {
        let file = if let Some(n) = what.strip_prefix("envoy-") {
            self.dir.join(format!("envoy-{}.log", number(n)?))
        } else if let Some(n) = what.strip_prefix('b') {
            self.builder_log(number(n)?)
        } else if what == "named" || what == "dns" {
            self.dir.join("dns").join("named.log")
        } else {
            self.dir.join(format!("node-{}.log", number(what)?))
        };
        Ok(file)
    }
}

fn number(s: &str) -> Result<u64> {
    s.parse()
        .with_context(|| format!("{s:?} is not a number (logs N, envoy-N, bN or named)"))
}

/// "a dns" / "an api".
pub fn article(kind: Kind) -> &'static str {
    match kind {
        Kind::Dns => "a dns",
        Kind::Api => "an api",
    }
}

fn random_token() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a secret file readable by its owner only.
fn secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
