//! Test harness: starts real `concord serve` processes on free loopback ports, each with its own
//! data dir, and drives them over their admin API with the typed client
//! ([`concord_api::Client`], [`Cluster::api`]). Conditions are awaited with deadlines
//! ([`eventually`]), never with fixed sleeps.
//!
//! The binary is `$CONCORD_BIN`, or `concord` next to the test executable's target dir (build it
//! first: `cargo build -p concord`).

pub mod ads;
pub mod browser;
pub mod dns;
pub mod envoy;
pub mod grpc;
pub mod grpc_frames;
pub mod http;
pub mod otlp;
pub mod pki;
pub mod process;
pub mod tls;
pub mod xds_oracle;
pub mod xds_tap;

use anyhow::{Context, Result, bail, ensure};
use concord_api::{BatchBody, BatchBuilder, PutBuilder};
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub use process::{Launch, Proc};

/// The `concord` binary under test.
pub fn concord_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CONCORD_BIN") {
        return PathBuf::from(p);
    }
    sibling_bin("concord")
}

/// A binary of this workspace (`concord`, `demo-builder`): in the target dir this executable
/// runs from (tests run from target/<profile>/deps/, binaries from target/<profile>/).
pub fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    let bin = [dir, dir.parent().unwrap_or(dir)]
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| dir.join(name));
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --workspace --bins` first (or set CONCORD_BIN for concord)",
        bin.display()
    );
    bin
}

/// Median, 99th percentile and maximum of `samples` (sorted in place), in milliseconds.
pub fn percentiles(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| ms(samples[((samples.len() as f64 * q).ceil() as usize).saturating_sub(1)]);
    (at(0.5), at(0.99), ms(*samples.last().expect("samples")))
}

/// The value of the unlabelled sample `name` on a replica's `/metrics` page (the Prometheus
/// text format), if the page has it.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|l| {
        let value = l.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// A free TCP port on 127.0.0.1, from below the kernel's ephemeral range (32768–60999 here).
///
/// A port picked by binding port 0 comes from the ephemeral range, where the kernel may hand it
/// to an outgoing connection before a replica restarted in a test binds it again; ports below
/// that range are never given out implicitly. Test processes run side by side, so each port is
/// also claimed with a file in a shared directory (created exclusively, holding the claimer's
/// pid): a port claimed by a live process is never handed to another; claims of dead processes
/// are taken over.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// `n` consecutive free ports on 127.0.0.1, claimed as [`free_port`] claims one; the first.
/// For worlds with fixed port bases (node N on `base + N`): pass `first - 1` as the base.
pub fn free_ports(n: u16) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    // This process's next candidate: a port it has claimed is never handed out twice.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join("concord-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    let me = std::process::id();
    let base = (me % 220) * 100;
    for _ in 0..22_000 {
        let at = NEXT.fetch_add(u32::from(n), Ordering::Relaxed);
        let first = 10_000 + (base + at) % 22_000;
        if first + u32::from(n) > 32_000 {
            continue;
        }
        let free = (first..first + u32::from(n)).all(|p| {
            let port = p as u16;
            claim(&dir.join(port.to_string()), me)
                && TcpListener::bind(("127.0.0.1", port)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        });
        if free {
            return first as u16;
        }
    }
    panic!("no {n} consecutive free ports below the ephemeral range");
}

/// Claims a port file for `pid`, unless a live process holds it.
fn claim(path: &std::path::Path, pid: u32) -> bool {
    use std::io::Write;
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
    };
    if let Ok(mut f) = create() {
        return write!(f, "{pid}").is_ok();
    }
    let holder: Option<u32> = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    match holder {
        Some(h) if h == pid => true,
        Some(h) if std::path::Path::new(&format!("/proc/{h}")).exists() => false,
        // Its holder is gone (or the file is half written): take it over.
        _ => {
            let _ = std::fs::remove_file(path);
            match create() {
                Ok(mut f) => write!(f, "{pid}").is_ok(),
                Err(_) => false,
            }
        }
    }
}

/// Polls `f` until it returns `Ok`, or fails with the last error after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("{what}: not true after {timeout:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

/// One replica process and how to restart it.
pub struct Replica {
    /// Node id.
    pub id: u64,
    /// Peer address.
    pub peer: String,
    /// Admin API base URL.
    pub admin: String,
    /// ADS (xDS gRPC) address.
    pub xds: String,
    /// Data dir.
    pub data_dir: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    launch: Launch,
    proc: Option<Proc>,
    restarts: u32,
    /// The binary it starts with: [`concord_bin`] unless [`Replica::set_binary`] chose another.
    bin: Option<PathBuf>,
}

impl Replica {
    /// Whether the process is running (as far as we started or adopted it).
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_running)
    }

    /// Starts (or restarts) the process with its original arguments.
    pub fn start(&mut self) -> Result<()> {
        assert!(!self.is_running(), "node {} already running", self.id);
        let bin = self.bin.clone().unwrap_or_else(concord_bin);
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .args(&self.args)
            .env("RUST_LOG", "info,openraft=warn");
        let marker = self.data_dir.display().to_string();
        self.proc =
            Some(Proc::spawn(cmd, &self.log, &marker, &self.launch).context("spawn concord")?);
        self.restarts += 1;
        Ok(())
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Its `concord serve` arguments, to change before the next [`Replica::start`].
    pub fn args_mut(&mut self) -> &mut Vec<String> {
        &mut self.args
    }

    /// Starts it with `bin` from the next [`Replica::start`] on (another version of concord,
    /// for rolling upgrades); `None` for the binary under test.
    pub fn set_binary(&mut self, bin: Option<PathBuf>) {
        self.bin = bin;
    }

    /// Its process, taken out of this handle (to stop it together with others).
    pub fn take_proc(&mut self) -> Option<Proc> {
        self.proc.take()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// SIGTERM, and wait for a clean exit (15 s at most; then SIGKILL and an error); its exit
    /// status (known only for a process this one started).
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        self.stop(Duration::from_secs(15))?.with_context(|| {
            format!(
                "node {} was adopted: its exit status is not ours to read",
                self.id
            )
        })
    }

    /// SIGTERM, then SIGKILL after `grace`; the exit status if this process started it.
    pub fn stop(&mut self, grace: Duration) -> Result<Option<std::process::ExitStatus>> {
        let mut p = self.proc.take().context("not running")?;
        p.terminate(grace)
            .with_context(|| format!("node {}", self.id))
    }

    /// Its log file.
    pub fn log(&self) -> &std::path::Path {
        &self.log
    }

    /// The tail of this replica's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Port bases of a cluster with fixed ports: node N listens on `base + N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Raft peer port base.
    pub peer: u16,
    /// Admin API port base.
    pub admin: u16,
    /// ADS port base.
    pub xds: u16,
}

/// Knobs for a test cluster.
#[derive(Clone)]
pub struct Options {
    /// Number of replicas in the initial member set.
    pub nodes: u64,
    /// `--snapshot-threshold`.
    pub snapshot_threshold: u64,
    /// Extra flags for every replica.
    pub extra: Vec<String>,
    /// Election timeouts of 500-1000 ms instead of the defaults (150-300 ms), for tests that
    /// share the machine with other clusters; off for measurements of the real thing.
    pub relaxed_elections: bool,
    /// Bearer token the harness sends with every admin request (for clusters started with
    /// `--admin-token-file` in `extra`).
    pub admin_token: Option<String>,
    /// Mutual TLS between replicas and TLS to Envoys, with certificates from `concord certs`
    /// (the product's default); off runs the replicas with `--insecure`.
    pub tls: bool,
    /// With `tls`: replicas require Envoy client certificates and bind Envoy node ids to them
    /// (`--xds-client-ca`, `--xds-bind-node-id`).
    pub xds_client_certs: bool,
    /// Where each replica's data dir (`node-<id>`) goes; the cluster's temp dir by default.
    pub data_root: Option<PathBuf>,
    /// Fixed ports instead of free ones (the local cluster); with them a cluster can be found
    /// again by a later process ([`Cluster::open`]).
    pub ports: Option<Ports>,
    /// A directory that outlives the cluster (certificates, data dirs, logs, pid files) instead
    /// of a temporary one removed on drop.
    pub state: Option<PathBuf>,
    /// Replicas detached from this process (their own process group, pid files in `state`),
    /// left running on drop; needs `state`.
    pub detach: bool,
    /// The cluster name (`--cluster`); `test-<pid>` by default.
    pub name: Option<String>,
    /// The `concord` binary every replica starts with ([`concord_bin`] by default).
    pub bin: Option<PathBuf>,
}

impl Options {
    /// The product's own election timing, for measurements (benchmarks, chaos runs).
    pub fn measured() -> Self {
        Options {
            relaxed_elections: false,
            ..Options::default()
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            snapshot_threshold: 5000,
            extra: Vec::new(),
            relaxed_elections: true,
            admin_token: None,
            tls: true,
            xds_client_certs: false,
            data_root: None,
            ports: None,
            state: None,
            detach: false,
            name: None,
            bin: None,
        }
    }
}

/// An HTTP client for admin APIs that sends `token` (if any) as a bearer token, for the tests
/// that send raw requests (bad bodies, missing tokens); everything else uses [`Cluster::api`].
pub fn admin_client(token: Option<&str>) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        );
    }
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .default_headers(headers)
        .build()?)
}

/// Where a world keeps its files: a temporary directory removed on drop, or one that outlives it.
#[derive(Debug)]
pub enum Dir {
    /// Removed on drop (tests).
    Temp(TempDir),
    /// Kept (the local cluster's state).
    Kept(PathBuf),
}

impl Dir {
    /// A new temporary directory named `prefix…`, or `kept` (created if missing).
    pub fn new(prefix: &str, kept: Option<&std::path::Path>) -> Result<Dir> {
        Ok(match kept {
            Some(p) => {
                std::fs::create_dir_all(p).with_context(|| format!("create {}", p.display()))?;
                Dir::Kept(p.to_path_buf())
            }
            None => Dir::Temp(tempfile::Builder::new().prefix(prefix).tempdir()?),
        })
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Dir::Temp(t) => t.path(),
            Dir::Kept(p) => p,
        }
    }
}

/// A cluster of real replicas on loopback. A test's cluster is killed and removed on drop; one
/// with [`Options::state`] and [`Options::detach`] is left running for a later [`Cluster::open`].
pub struct Cluster {
    /// The replicas, by node id.
    pub nodes: BTreeMap<u64, Replica>,
    /// Cluster name.
    pub name: String,
    opts: Options,
    members: String,
    pki: Option<pki::Pki>,
    dir: Dir,
    http: reqwest::Client,
}

impl Cluster {
    /// Starts `opts.nodes` replicas as a new cluster (or, with a state directory, the ones that
    /// are not running yet) and waits for a leader and for every replica to serve Envoys.
    pub async fn start(opts: Options) -> Result<Cluster> {
        let mut cluster = Cluster::open(opts)?;
        for r in cluster.nodes.values_mut() {
            if !r.is_running() {
                r.start()?;
            }
        }
        cluster.leader().await?;
        // A replica serves Envoys only once it has caught up with the cluster (a read barrier
        // after start): tests begin when every replica is ready, as an operator's would.
        let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
        for id in ids {
            cluster.serving(id).await?;
        }
        Ok(cluster)
    }

    /// The cluster `opts` describes, without starting anything: its certificates (issued if
    /// missing), its replicas (running ones adopted from their pid files when it has a state
    /// directory). Without fixed ports every call describes a new cluster.
    pub fn open(opts: Options) -> Result<Cluster> {
        ensure!(
            !opts.detach || opts.state.is_some(),
            "detached replicas need a state directory for their pid files"
        );
        let dir = Dir::new("concord-test", opts.state.as_deref())?;
        let name = opts
            .name
            .clone()
            .unwrap_or_else(|| format!("test-{}", std::process::id()));
        let ids: Vec<u64> = (1..=opts.nodes).collect();
        let pki = match opts.tls {
            true if dir.path().join("certs/ca.pem").exists() => {
                // The CA outlives the cluster's processes: keep it, issue what is missing.
                Some(pki::Pki {
                    dir: dir.path().join("certs"),
                    cluster: name.clone(),
                })
            }
            true => Some(pki::Pki::create(&dir.path().join("certs"), &name, &ids)?),
            false => None,
        };
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            name,
            opts: opts.clone(),
            members: String::new(),
            pki,
            dir,
            http: admin_client(opts.admin_token.as_deref())?,
        };
        let peers: Vec<(u64, String)> = ids
            .iter()
            .map(|&id| (id, format!("127.0.0.1:{}", cluster.port(id, |p| p.peer))))
            .collect();
        cluster.members = peers
            .iter()
            .map(|(id, p)| format!("{id}={p}"))
            .collect::<Vec<_>>()
            .join(",");
        for (id, peer) in peers {
            let members = cluster.members.clone();
            let mut r = cluster.replica(id, peer, &members)?;
            r.proc = Proc::adopt(&cluster.pid_file(id), &r.data_dir.display().to_string());
            cluster.nodes.insert(id, r);
        }
        Ok(cluster)
    }

    /// Node `id`'s port of one kind: fixed, or a free one.
    fn port(&self, id: u64, kind: impl Fn(&Ports) -> u16) -> u16 {
        match &self.opts.ports {
            Some(p) => kind(p) + id as u16,
            None => free_port(),
        }
    }

    fn pid_file(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.pid"))
    }

    /// Waits until replica `id` reports SERVING on its xDS port's gRPC health service.
    pub async fn serving(&self, id: u64) -> Result<()> {
        eventually(
            Duration::from_secs(20),
            "the replica serves Envoys",
            || async {
                let status = self.health(id).await?;
                ensure!(status, "node {id} reports NOT_SERVING");
                Ok(())
            },
        )
        .await
    }

    /// Whether replica `id` reports SERVING (true) or NOT_SERVING (false) on its xDS port's gRPC
    /// health service right now; an error if it does not answer.
    pub async fn health(&self, id: u64) -> Result<bool> {
        use tonic_health::pb::health_check_response::ServingStatus;
        let xds = self.nodes[&id].xds.clone();
        let channel = self.xds_channel(&xds, "harness").await?;
        let status = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner()
            .status;
        Ok(status == ServingStatus::Serving as i32)
    }

    /// Creates and starts a replica process (not yet a member unless listed in `members`).
    pub fn add_replica(&mut self, id: u64, peer: String, members: &str) -> Result<&mut Replica> {
        let mut r = self.replica(id, peer, members)?;
        r.start()?;
        self.nodes.insert(id, r);
        Ok(self.nodes.get_mut(&id).expect("just inserted"))
    }

    /// Replica `id`'s description, not started.
    fn replica(&self, id: u64, peer: String, members: &str) -> Result<Replica> {
        let admin_port = self.port(id, |p| p.admin);
        let xds = format!("127.0.0.1:{}", self.port(id, |p| p.xds));
        let root = self.opts.data_root.as_deref().unwrap_or(self.dir.path());
        let data_dir = root.join(format!("node-{id}"));
        let mut args = vec![
            "--cluster".into(),
            self.name.clone(),
            "--node-id".into(),
            id.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--peer-addr".into(),
            peer.clone(),
            "--admin-addr".into(),
            format!("127.0.0.1:{admin_port}"),
            "--xds-addr".into(),
            xds.clone(),
            "--initial-members".into(),
            if members.is_empty() {
                "none".into()
            } else {
                members.to_string()
            },
            "--snapshot-threshold".into(),
            self.opts.snapshot_threshold.to_string(),
        ];
        if self.opts.relaxed_elections {
            // Slower elections than the defaults (50 ms, 150-300 ms): several clusters and
            // Envoys share two cores during the tests, and a starved follower must not depose a
            // healthy leader in the middle of a test.
            args.extend(
                ["--heartbeat-ms", "100", "--election-timeout-ms", "500-1000"].map(String::from),
            );
        }
        match &self.pki {
            Some(pki) => {
                args.extend(pki.serve_args(id)?);
                if self.opts.xds_client_certs {
                    args.extend([
                        "--xds-client-ca".into(),
                        pki.ca().display().to_string(),
                        "--xds-bind-node-id".into(),
                    ]);
                }
            }
            None => args.push("--insecure".into()),
        }
        args.extend(self.opts.extra.iter().cloned());
        let launch = match self.opts.detach {
            true => Launch::detached(self.pid_file(id)),
            false => Launch::owned(),
        };
        Ok(Replica {
            id,
            peer,
            admin: format!("http://127.0.0.1:{admin_port}"),
            xds,
            data_dir,
            log: self.dir.path().join(format!("node-{id}.log")),
            args,
            launch,
            proc: None,
            restarts: 0,
            bin: self.opts.bin.clone(),
        })
    }

    /// The cluster's certificates (None when it runs with `--insecure`).
    pub fn pki(&self) -> Option<&pki::Pki> {
        self.pki.as_ref()
    }

    /// `concord envoy-bootstrap` flags for Envoy `id` to reach this cluster (TLS with a client
    /// certificate unless the cluster is plaintext).
    pub fn bootstrap_args(&self, id: &str) -> Result<Vec<String>> {
        match &self.pki {
            Some(pki) => pki.bootstrap_args(id),
            None => Ok(Vec::new()),
        }
    }

    /// A gRPC channel to a replica's xDS address, over TLS with a client certificate for Envoy
    /// `envoy` when the cluster uses TLS.
    pub async fn xds_channel(&self, addr: &str, envoy: &str) -> Result<tonic::transport::Channel> {
        match self.xds_client_config(envoy)? {
            Some(config) => pki::channel(addr, config).await,
            None => Ok(
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                    .connect()
                    .await?,
            ),
        }
    }

    /// The TLS client config an Envoy named `envoy` connects to the replicas' xDS port with (its
    /// own client certificate), or `None` when the cluster runs without TLS.
    pub fn xds_client_config(
        &self,
        envoy: &str,
    ) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>> {
        let Some(pki) = &self.pki else {
            return Ok(None);
        };
        let (cert, key) = pki.envoy(envoy)?;
        Ok(Some(pki.client_config(Some((&cert, &key)))?))
    }

    /// The cluster's temporary directory (for Envoy bootstraps and logs).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Puts builder `bid` at `addr` with SNI `sni_name` through replica `id`; returns the revision.
    pub async fn put_at(
        &self,
        id: u64,
        bid: &str,
        addr: std::net::SocketAddr,
        sni_name: &str,
    ) -> Result<u64> {
        let body = PutBuilder::new(addr, sni_name);
        let w = self
            .api(id)
            .put_builder(bid, &body)
            .await
            .with_context(|| format!("put {bid} on node {id}"))?;
        Ok(w.revision)
    }

    /// Registers `n` placeholder builders `bulk0`… (addresses 127.0.1.x, SNI `sni("bulk<i>")`)
    /// through replica `id`, in batches of 1000 (`POST /v1/builders`); the revision of the last.
    pub async fn put_bulk(&self, id: u64, n: usize) -> Result<u64> {
        let upserts: Vec<BatchBuilder> = (0..n)
            .map(|i| {
                let addr = std::net::SocketAddr::from((
                    [127, 0, 1, 1 + (i % 250) as u8],
                    20000 + (i % 40000) as u16,
                ));
                BatchBuilder::new(format!("bulk{i}"), addr, sni(&format!("bulk{i}")))
            })
            .collect();
        let mut revision = 0;
        for chunk in upserts.chunks(1000) {
            let body = BatchBody {
                upserts: chunk.to_vec(),
                removes: Vec::new(),
            };
            revision = self
                .api(id)
                .batch(&body)
                .await
                .with_context(|| format!("batch put on node {id}"))?
                .revision;
        }
        Ok(revision)
    }

    /// The ids of the Envoys streaming from replica `id`.
    pub async fn envoys_on(&self, id: u64) -> Result<Vec<String>> {
        Ok(self.api(id).envoys().await?.ids())
    }

    /// The initial member list (`id=addr,…`).
    pub fn members(&self) -> &str {
        &self.members
    }

    /// The replica with this id.
    pub fn node(&mut self, id: u64) -> &mut Replica {
        self.nodes.get_mut(&id).expect("no such node")
    }

    /// Ids of the replicas that were started and not killed since.
    pub fn up(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, r)| r.proc.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    fn admin(&self, id: u64) -> &str {
        &self.nodes[&id].admin
    }

    /// The typed admin client of replica `id` (sharing one connection pool, with the cluster's
    /// admin token).
    pub fn api(&self, id: u64) -> concord_api::Client {
        concord_api::Client::builder(self.admin(id))
            .http(self.http.clone())
            .token(self.opts.admin_token.clone())
            .timeout(Duration::from_secs(20))
            .build()
            .expect("the harness's admin URLs are valid")
    }

    /// GET a JSON document from a replica, untyped: for tests of the raw JSON.
    pub async fn get(&self, id: u64, path: &str) -> Result<Value> {
        let resp = self
            .http
            .get(format!("{}{path}", self.admin(id)))
            .send()
            .await?;
        let status = resp.status();
        let v: Value = resp.json().await?;
        if !status.is_success() {
            bail!("GET {path} on node {id}: {status} {v}");
        }
        Ok(v)
    }

    /// A replica's status.
    pub async fn status(&self, id: u64) -> Result<concord_api::Status> {
        Ok(self.api(id).status().await?)
    }

    /// Sends a raw request and returns the HTTP status and JSON body, whatever the status: for
    /// tests of what the API does with bodies the typed client cannot send.
    pub async fn send(
        &self,
        id: u64,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.admin(id)));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// Puts builder `bid` through replica `id`; returns the revision it was committed at.
    pub async fn put(&self, id: u64, bid: &str, port: u16) -> Result<u64> {
        self.put_at(
            id,
            bid,
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            &sni(bid),
        )
        .await
    }

    /// Removes builder `bid` through replica `id`.
    pub async fn remove(&self, id: u64, bid: &str) -> Result<u64> {
        let w = self
            .api(id)
            .remove_builder(bid)
            .await
            .with_context(|| format!("remove {bid} on node {id}"))?;
        Ok(w.revision)
    }

    /// The registry as replica `id` has applied it: (revision, ids).
    pub async fn builders(&self, id: u64, consistent: bool) -> Result<(u64, Vec<String>)> {
        let l = self.api(id).builders(consistent).await?;
        Ok((l.revision, l.ids()))
    }

    /// Waits until every replica that is up answers, all agree on one leader, and it calls
    /// itself leader.
    pub async fn leader(&self) -> Result<u64> {
        eventually(Duration::from_secs(20), "one leader elected", || {
            self.leader_now()
        })
        .await
    }

    /// Waits for a leader and until every replica that is up is at entry format 2 (a new
    /// cluster raises it within a second of its election): the services half is usable. The
    /// leader's id.
    pub async fn services_enabled(&self) -> Result<u64> {
        let leader = self.leader().await?;
        for id in self.up() {
            // The newest format: services (2) and rollouts (3).
            let want = concord_registry::FORMAT;
            eventually(
                Duration::from_secs(20),
                &format!("entry format {want}"),
                || async {
                    let f = self.status(id).await?.entry_format.map(|f| f.cluster);
                    ensure!(f == Some(want), "node {id} is at entry format {f:?}");
                    Ok(())
                },
            )
            .await?;
        }
        Ok(leader)
    }

    /// [`Cluster::leader`] without waiting: an error unless that holds right now.
    pub async fn leader_now(&self) -> Result<u64> {
        let mut seen = None;
        for id in self.up() {
            let s = self.status(id).await?;
            let l = s.leader.context("no leader known")?;
            if seen.is_some_and(|x| x != l) {
                bail!("nodes disagree on the leader");
            }
            seen = Some(l);
        }
        let l = seen.context("no node answered")?;
        let s = self.status(l).await?;
        if s.role != concord_api::Role::Leader {
            bail!("node {l} is not leader yet");
        }
        Ok(l)
    }

    /// Waits until every replica that is up has applied the same registry.
    pub async fn converged(&self, timeout: Duration) -> Result<(u64, Vec<String>)> {
        eventually(timeout, "replicas converge", || async {
            let mut want: Option<(u64, Vec<String>)> = None;
            for id in self.up() {
                let got = self.builders(id, false).await?;
                match &want {
                    None => want = Some(got),
                    Some(w) if *w != got => bail!("node {id} has {got:?}, another {w:?}"),
                    Some(_) => {}
                }
            }
            want.context("no node answered")
        })
        .await
    }

    /// Waits until `envoys` Envoys stream from the replicas that are up and every one has ACKed
    /// at least `revision` for clusters and listeners; returns the latest of those ACK times
    /// (Unix µs, as the replicas stamped them).
    pub async fn all_acked(&self, envoys: usize, revision: u64) -> Result<u64> {
        self.all_acked_within(envoys, revision, Duration::from_secs(30))
            .await
    }

    /// [`Cluster::all_acked`] with a deadline of `timeout` (Envoys with a large registry are
    /// slow to apply it).
    pub async fn all_acked_within(
        &self,
        envoys: usize,
        revision: u64,
        timeout: Duration,
    ) -> Result<u64> {
        eventually(timeout, "every Envoy ACKs", || async {
            let (mut seen, mut last) = (0, 0);
            for id in self.up() {
                let Ok(v) = self.api(id).envoys().await else {
                    continue;
                };
                for e in &v.envoys {
                    for ty in ["clusters", "listeners"] {
                        let t = e.of(ty).cloned().unwrap_or_default();
                        if t.acked.unwrap_or(0) < revision {
                            bail!("{} {ty} not at {revision}", e.node_id);
                        }
                        last = last.max(t.acked_at_us.unwrap_or(0));
                    }
                    seen += 1;
                }
            }
            if seen < envoys {
                bail!("{seen} of {envoys} Envoys streaming");
            }
            Ok(last)
        })
        .await
    }

    /// The log tails of every replica, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .values()
            .map(|r| format!("--- node {} ---\n{}", r.id, r.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The SNI name tests give builder `id`.
pub fn sni(id: &str) -> String {
    format!("{id}.builders.test")
}

#[cfg(test)]
mod tests {
    use super::metric;

    #[test]
    fn a_metric_is_read_by_its_whole_name() {
        let page = "# TYPE concord_polls_total counter\nconcord_polls_total_x 9\nconcord_polls_total 12\nh_sum 0.5\n";
        assert_eq!(metric(page, "concord_polls_total"), Some(12.0));
        assert_eq!(metric(page, "h_sum"), Some(0.5));
        assert_eq!(metric(page, "concord_polls"), None);
    }
}
