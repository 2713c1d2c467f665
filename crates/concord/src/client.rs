//! The operator's client: `concord cluster …` and `concord builders …` talk to any replica's admin
//! API, which forwards writes to the leader.

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::process::ExitCode;
use std::time::Duration;

/// Where to send a client command, and how to print the answer.
#[derive(Args, Clone)]
pub struct Target {
    /// Admin API of any replica (`host:port` or `http://host:port`).
    #[arg(
        long,
        env = "CONCORD_ADMIN",
        default_value = "127.0.0.1:8101",
        global = true
    )]
    admin: String,
    /// File holding the admin API token: the token alone, or a `read|write <token>` line of a
    /// replica's token file (the first token in it). Without it, the token is taken from
    /// $CONCORD_TOKEN, if set.
    #[arg(long, env = "CONCORD_TOKEN_FILE", value_name = "FILE", global = true)]
    token_file: Option<std::path::PathBuf>,
    /// Print the raw JSON answer.
    #[arg(long, global = true)]
    json: bool,
}

/// `concord cluster`.
#[derive(Args)]
pub struct ClusterCmd {
    #[command(subcommand)]
    cmd: ClusterSub,
}

#[derive(Subcommand)]
enum ClusterSub {
    /// Show the replica's role, term, leader, log and applied index, revision and members.
    Status,
    /// Add a node as a learner: it receives the log but does not vote yet.
    AddLearner {
        /// The new node's id.
        node_id: u64,
        /// Its peer address, host:port.
        addr: String,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner's id.
        node_id: u64,
    },
    /// Remove a node from the cluster.
    Remove {
        /// The node's id.
        node_id: u64,
    },
}

/// `concord builders`.
#[derive(Args)]
pub struct BuildersCmd {
    #[command(subcommand)]
    cmd: BuildersSub,
}

#[derive(Subcommand)]
enum BuildersSub {
    /// List the registry.
    List {
        /// Confirm with the leader first, so the list includes every committed write.
        #[arg(long)]
        consistent: bool,
    },
    /// Show one builder.
    Get {
        /// Builder id.
        id: String,
        /// Confirm with the leader first.
        #[arg(long)]
        consistent: bool,
    },
    /// Put a builder (source `api`); returns once the cluster has committed it.
    Put {
        /// Builder id.
        id: String,
        /// Address Envoy connects to, ip:port.
        #[arg(long)]
        addr: String,
        /// TLS server name clients use to reach it.
        #[arg(long)]
        sni: String,
        /// Region.
        #[arg(long, default_value = "")]
        region: String,
        /// Label key=value; repeatable.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Remove a builder; returns once the cluster has committed it.
    Rm {
        /// Builder id.
        id: String,
    },
}

/// A failed client call and the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

/// The first token of a client token file: a line holding the token alone, or `read|write
/// <token>`; blank lines and `#` comments are skipped.
fn token_in(text: &str) -> Result<String, String> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or("no token in it")?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields[..] {
        [token] | ["read" | "write", token] => Ok(token.to_string()),
        _ => Err("expected the token alone on a line, or `read|write <token>`".into()),
    }
}

impl Target {
    /// The bearer token to send: from --token-file / $CONCORD_TOKEN_FILE, else $CONCORD_TOKEN.
    fn token(&self) -> Result<Option<String>, Failure> {
        let usage = |message: String| Failure { code: 2, message };
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| usage(format!("cannot read token file {}: {e}", path.display())))?;
            return token_in(&text)
                .map(Some)
                .map_err(|e| usage(format!("invalid token file {}: {e}", path.display())));
        }
        Ok(std::env::var("CONCORD_TOKEN")
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()))
    }

    fn url(&self, path: &str) -> String {
        let base = self.admin.trim_end_matches('/');
        if base.starts_with("http://") || base.starts_with("https://") {
            format!("{base}{path}")
        } else {
            format!("http://{base}{path}")
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        let url = self.url(path);
        let mut req = client.request(method, &url);
        if let Some(token) = self.token()? {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| Failure {
            code: 3,
            message: format!("cannot reach replica at {}: {}", self.admin, root_cause(&e)),
        })?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {status}"));
        let message = match status.as_u16() {
            401 => format!(
                "{message} (give a token with --token-file, $CONCORD_TOKEN_FILE or $CONCORD_TOKEN)"
            ),
            _ => message,
        };
        let code = if status.is_server_error() { 4 } else { 1 };
        Err(Failure { code, message })
    }

    fn finish(
        &self,
        result: Result<Value, Failure>,
        human: impl FnOnce(&Value) -> String,
    ) -> ExitCode {
        match result {
            Ok(v) if self.json => {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Ok(v) => {
                print!("{}", human(&v));
                ExitCode::SUCCESS
            }
            Err(f) => {
                eprintln!("concord: {}", f.message);
                ExitCode::from(f.code)
            }
        }
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn written(v: &Value) -> String {
    format!(
        "ok: revision {} (log index {}{})\n",
        v["revision"],
        v["log_index"],
        if v["changed"] == json!(false) {
            ", no change"
        } else {
            ""
        }
    )
}

fn opt(v: &Value) -> String {
    if v.is_null() {
        "-".into()
    } else {
        v.to_string()
    }
}

impl ClusterCmd {
    /// Runs the subcommand and returns the process exit code.
    pub async fn run(self, t: &Target) -> ExitCode {
        use reqwest::Method;
        match self.cmd {
            ClusterSub::Status => {
                let r = t.call(Method::GET, "/v1/status", None).await;
                t.finish(r, |v| {
                    let mut out = format!(
                        "node {} ({}) of cluster {}, term {}\nleader: {}  last log: {}  applied: {}  \
                         snapshot: {}  revision: {}  builders: {}\nmembers:\n",
                        v["node_id"],
                        v["role"].as_str().unwrap_or("?"),
                        v["cluster"].as_str().unwrap_or("?"),
                        v["term"],
                        opt(&v["leader"]),
                        opt(&v["last_log_index"]),
                        opt(&v["applied_index"]),
                        opt(&v["snapshot_index"]),
                        v["revision"],
                        v["builders"],
                    );
                    for m in v["members"].as_array().into_iter().flatten() {
                        out += &format!(
                            "  {:<4} {:<24} {}\n",
                            m["id"],
                            m["addr"].as_str().unwrap_or("?"),
                            if m["voter"] == json!(true) { "voter" } else { "learner" }
                        );
                    }
                    out
                })
            }
            ClusterSub::AddLearner { node_id, addr } => {
                let body = json!({ "node_id": node_id, "addr": addr });
                let r = t
                    .call(Method::POST, "/v1/cluster/learners", Some(body))
                    .await;
                t.finish(r, |v| {
                    format!(
                        "ok: node {node_id} added as learner (log index {})\n",
                        v["log_index"]
                    )
                })
            }
            ClusterSub::Promote { node_id } => {
                let r = t
                    .call(
                        Method::POST,
                        "/v1/cluster/voters",
                        Some(json!({ "node_id": node_id })),
                    )
                    .await;
                t.finish(r, |v| {
                    format!(
                        "ok: node {node_id} is a voter (log index {})\n",
                        v["log_index"]
                    )
                })
            }
            ClusterSub::Remove { node_id } => {
                let r = t
                    .call(
                        Method::DELETE,
                        &format!("/v1/cluster/members/{node_id}"),
                        None,
                    )
                    .await;
                t.finish(r, |v| {
                    format!(
                        "ok: node {node_id} removed (log index {})\n",
                        v["log_index"]
                    )
                })
            }
        }
    }
}

impl BuildersCmd {
    /// Runs the subcommand and returns the process exit code.
    pub async fn run(self, t: &Target) -> ExitCode {
        use reqwest::Method;
        match self.cmd {
            BuildersSub::List { consistent } => {
                let r = t
                    .call(
                        Method::GET,
                        &format!("/v1/builders?consistent={consistent}"),
                        None,
                    )
                    .await;
                t.finish(r, |v| {
                    let mut out = format!(
                        "revision {}\n{:<20} {:<24} {:<40} {:<8} SOURCE\n",
                        v["revision"], "ID", "ADDR", "SNI", "REGION"
                    );
                    for b in v["builders"].as_array().into_iter().flatten() {
                        out += &format!(
                            "{:<20} {:<24} {:<40} {:<8} {}\n",
                            b["id"].as_str().unwrap_or(""),
                            b["addr"].as_str().unwrap_or(""),
                            b["sni"].as_str().unwrap_or(""),
                            b["region"].as_str().unwrap_or(""),
                            b["source"].as_str().unwrap_or(""),
                        );
                    }
                    out
                })
            }
            BuildersSub::Get { id, consistent } => {
                let r = t
                    .call(
                        Method::GET,
                        &format!("/v1/builders/{id}?consistent={consistent}"),
                        None,
                    )
                    .await;
                t.finish(r, |v| {
                    format!(
                        "{}\n",
                        serde_json::to_string_pretty(&v["builder"]).unwrap_or_default()
                    )
                })
            }
            BuildersSub::Put {
                id,
                addr,
                sni,
                region,
                labels,
            } => {
                let mut map = serde_json::Map::new();
                for l in &labels {
                    let Some((k, v)) = l.split_once('=') else {
                        eprintln!("concord: invalid --label {l:?}: expected KEY=VALUE");
                        return ExitCode::from(2);
                    };
                    map.insert(k.to_string(), Value::String(v.to_string()));
                }
                let body = json!({ "addr": addr, "sni": sni, "region": region, "labels": map });
                let r = t
                    .call(Method::PUT, &format!("/v1/builders/{id}"), Some(body))
                    .await;
                t.finish(r, written)
            }
            BuildersSub::Rm { id } => {
                let r = t
                    .call(Method::DELETE, &format!("/v1/builders/{id}"), None)
                    .await;
                t.finish(r, written)
            }
        }
    }
}

/// `concord envoy-bootstrap`.
#[derive(Args)]
pub struct BootstrapArgs {
    /// The Envoy's node id, as the replicas will show it.
    #[arg(long)]
    node_id: String,
    /// The Envoy's node cluster.
    #[arg(long, default_value = "builders")]
    node_cluster: String,
    /// xDS address (host:port) of every replica, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    servers: Vec<String>,
    /// Stream from the first server while it is healthy; the others are fallbacks.
    #[arg(long)]
    prefer_first: bool,
    /// Envoy's own admin API address.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin_addr: std::net::SocketAddr,
    /// Bind the builders' listener on this address instead of the replicas' default (for
    /// several Envoys on one host).
    #[arg(long, value_name = "IP:PORT")]
    listener_address: Option<std::net::SocketAddr>,
    /// CA (PEM) that signs the replicas' xDS certificates: the ADS cluster (and its gRPC health
    /// checks) then uses TLS. Without it, plaintext (replicas run with --insecure).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// The Envoy's client certificate (PEM), for replicas that require one (--xds-client-ca).
    #[arg(long, value_name = "FILE", requires = "tls_key", requires = "tls_ca")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// The replicas' cluster name: with --tls-ca, Envoy accepts only replica certificates that
    /// name a node of this cluster (URI SAN spiffe://concord/<cluster>/node/<id>).
    #[arg(long, default_value = "concord")]
    cluster: String,
    /// With --tls-ca, accept any certificate the CA signed (for replica certificates that do not
    /// carry concord's node URI, e.g. a separate --xds-tls-cert).
    #[arg(long)]
    any_server_identity: bool,
    /// The ADS protocol: `delta` (only changed resources travel; an Envoy that fails over gets
    /// only what differs) or `sotw` (state of the world: every resource in every response).
    #[arg(long, value_name = "delta|sotw", default_value = "delta")]
    xds_protocol: concord_xds::bootstrap::XdsProtocol,
}

impl BootstrapArgs {
    /// Prints the bootstrap.
    pub fn run(self) -> ExitCode {
        // Envoy resolves relative paths against its own working directory: make them absolute.
        let abs = |p: &std::path::Path| {
            std::path::absolute(p)
                .unwrap_or_else(|_| p.to_path_buf())
                .display()
                .to_string()
        };
        let tls = self
            .tls_ca
            .as_deref()
            .map(|ca| concord_xds::bootstrap::BootstrapTls {
                ca: abs(ca),
                server_uri_prefix: (!self.any_server_identity)
                    .then(|| format!("spiffe://concord/{}/node/", self.cluster)),
                client: self
                    .tls_cert
                    .as_deref()
                    .zip(self.tls_key.as_deref())
                    .map(|(c, k)| (abs(c), abs(k))),
            });
        let config = concord_xds::bootstrap::BootstrapConfig {
            tls,
            node_id: self.node_id,
            node_cluster: self.node_cluster,
            servers: self.servers,
            prefer_first: self.prefer_first,
            admin: self.admin_addr,
            listener_address: self.listener_address,
            protocol: self.xds_protocol,
        };
        match concord_xds::bootstrap::render(&config) {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("concord: {e}");
                ExitCode::from(2)
            }
        }
    }
}

/// `concord envoys`: the Envoys streaming from one replica.
/// `concord envoys`.
#[derive(Args)]
pub struct EnvoysArgs {
    /// Every Envoy of the whole cluster, with the replica each streams from and whether it is in
    /// sync (asks every member through the target replica), like Istio's `proxy-status`.
    #[arg(long)]
    all: bool,
}

/// `sent/acked` of one type of an Envoy, `(pending)` if unanswered.
fn versions(e: &Value, name: &str) -> String {
    let t = &e["types"][name];
    format!(
        "{}/{}{}",
        opt(&t["sent"]),
        opt(&t["acked"]),
        if t["pending"] == json!(true) {
            " (pending)"
        } else {
            ""
        }
    )
}

fn last_nack(e: &Value) -> String {
    match e["last_nack"].as_object() {
        Some(n) => format!(
            "{} v{}: {}",
            n["type_name"].as_str().unwrap_or(""),
            n["version"],
            n["message"].as_str().unwrap_or("")
        ),
        None => "-".into(),
    }
}

/// SYNCED when both types are ACKed at the replica's revision, NACKED when the newest version
/// sent was rejected, PENDING when a response is unanswered, else STALE.
fn sync_state(e: &Value, revision: &Value) -> &'static str {
    let types = ["clusters", "listeners"].map(|n| &e["types"][n]);
    let nacked = e["last_nack"]["version"].as_u64();
    if types.iter().all(|t| t["acked"] == *revision) {
        "SYNCED"
    } else if nacked.is_some() && types.iter().any(|t| t["sent"].as_u64() == nacked) {
        "NACKED"
    } else if types.iter().any(|t| t["pending"] == json!(true)) {
        "PENDING"
    } else {
        "STALE"
    }
}

impl EnvoysArgs {
    /// Shows the Envoys of the target replica, or of every replica with `--all`.
    pub async fn run(&self, t: &Target) -> ExitCode {
        if !self.all {
            let r = t.call(reqwest::Method::GET, "/v1/envoys", None).await;
            return t.finish(r, |v| {
                let mut out = format!(
                    "replica node {} at revision {} ({} NACKs since start)\n{:<20} {:<8} {:<22} {:<22} LAST NACK\n",
                    v["node_id"], v["revision"], v["nacks_total"], "ENVOY", "STREAM", "CLUSTERS sent/acked", "LISTENERS sent/acked"
                );
                for e in v["envoys"].as_array().into_iter().flatten() {
                    out += &format!(
                        "{:<20} {:<8} {:<22} {:<22} {}\n",
                        e["node_id"].as_str().unwrap_or(""),
                        e["stream"].to_string(),
                        versions(e, "clusters"),
                        versions(e, "listeners"),
                        last_nack(e)
                    );
                }
                out
            });
        }
        let r = t
            .call(reqwest::Method::GET, "/v1/cluster/envoys", None)
            .await;
        t.finish(r, |v| {
            let mut out = String::new();
            for r in v["replicas"].as_array().into_iter().flatten() {
                match r["error"].as_str() {
                    Some(e) => out += &format!("replica {}: NOT ANSWERING: {e}\n", r["node_id"]),
                    None => {
                        out += &format!(
                            "replica {}: revision {}, {} Envoys, {} NACKs since start\n",
                            r["node_id"], r["revision"], r["envoys"], r["nacks_total"]
                        )
                    }
                }
            }
            out += &format!(
                "{:<20} {:<8} {:<8} {:<22} {:<22} LAST NACK\n",
                "ENVOY", "REPLICA", "STATE", "CLUSTERS sent/acked", "LISTENERS sent/acked"
            );
            for e in v["envoys"].as_array().into_iter().flatten() {
                out += &format!(
                    "{:<20} {:<8} {:<8} {:<22} {:<22} {}\n",
                    e["node_id"].as_str().unwrap_or(""),
                    e["replica"].to_string(),
                    sync_state(e, &e["replica_revision"]),
                    versions(e, "clusters"),
                    versions(e, "listeners"),
                    last_nack(e)
                );
            }
            out
        })
    }
}

/// `concord discovery`: the DNS poller as one replica sees it.
pub async fn discovery(t: &Target) -> ExitCode {
    let r = t.call(reqwest::Method::GET, "/v1/discovery", None).await;
    t.finish(r, |v| {
        let mut out = format!(
            "node {}: {}\n",
            v["node_id"],
            v["note"].as_str().unwrap_or("")
        );
        let p = &v["poller"];
        if p.is_object() {
            out += &format!(
                "server {}  sources {}  interval {} ms\npolls {}  errors {}  changes {}  held {}  \
                 stale {}  discovered {}  skipped (last poll) {}\nlast result: {}\n",
                p["server"].as_str().unwrap_or(""),
                p["sources"],
                p["interval_ms"],
                p["polls"],
                p["errors"],
                p["changes"],
                p["held"],
                p["stale"],
                p["discovered"],
                p["skipped"].as_array().map_or(0, Vec::len),
                p["last_result"].as_str().unwrap_or(""),
            );
            if let Some(c) = p["last_change"].as_object() {
                out += &format!(
                    "last change: revision {} (+{} ~{} -{})\n",
                    c["revision"], c["added"], c["updated"], c["removed"]
                );
            }
            for s in p["skipped"].as_array().into_iter().flatten() {
                out += &format!(
                    "  skipped {}: {:?}: {}\n",
                    s["name"].as_str().unwrap_or(""),
                    s["entry"].as_str().unwrap_or(""),
                    s["reason"].as_str().unwrap_or("")
                );
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::token_in;

    #[test]
    fn token_files() {
        assert_eq!(token_in("abc\n").unwrap(), "abc");
        assert_eq!(
            token_in("# mine\n\n  write abc  \nread def\n").unwrap(),
            "abc"
        );
        assert_eq!(token_in("read def").unwrap(), "def");
        assert!(token_in("# none\n").is_err());
        assert!(token_in("admin abc").is_err());
        assert!(token_in("a b c").is_err());
    }
}
