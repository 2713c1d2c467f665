//! `concord serve`: parse config → start Raft and the admin API → wait for SIGTERM or Ctrl-C →
//! drain with a grace timeout.
//!
//! Every task of the replica is spawned through one [`Tasks`] root, in two subsystems: `front`
//! (admin API, xDS server and its streams, DNS poller, token reload) and `core` (Raft's peer
//! server and watchers). The drain stops the front first, so admin requests in flight finish
//! while Raft still runs and Envoy streams end with a status; then stops Raft and flushes the
//! store; then waits for every remaining task, and names any that did not finish in time.

use crate::admin;
use crate::auth::Auth;
use crate::config::ServeConfig;
use anyhow::{Context, Result};
use concord_discovery::{Poller, ProposeError, Replica};
use concord_raft::{ClientError, ClientReply, ClientRequest, Node};
use concord_registry::{Command, Outcome};
use concord_telemetry::tasks::Tasks;
use concord_xds::XdsServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Runs one replica until it is told to stop; an error when the drain did not finish within
/// the grace period.
pub async fn run(config: ServeConfig) -> Result<()> {
    let tasks = Tasks::new();
    // Client-facing parts stop first; Raft keeps running until they have.
    let front = tasks.child();
    let core = tasks.child();
    let node_id = config.node.node_id;
    tracing::info!(
        node_id,
        cluster = %config.node.cluster,
        peer_addr = %config.node.listen_addr,
        admin_addr = %config.admin_addr,
        xds_addr = %config.xds_addr,
        data_dir = %config.node.data_dir.display(),
        "starting concord"
    );
    if config.insecure {
        tracing::warn!(
            "--insecure: the peer channel and the xDS port are plaintext and unauthenticated; \
             anyone who reaches them can append Raft entries or read the registry"
        );
    }
    tracing::info!(
        peer_tls = config.node.tls.is_some(),
        xds_tls = config.xds_tls.is_some(),
        xds_client_certs = config
            .xds_tls
            .as_ref()
            .is_some_and(|t| t.requires_client_cert()),
        "transport security"
    );
    let exporter = match config.tracing.clone() {
        Some(t) => {
            let (endpoint, ratio) = (t.endpoint.clone(), t.sampling_ratio);
            let exporter = concord_telemetry::trace::init(t)?;
            tracing::info!(%endpoint, sampling_ratio = ratio, "exporting traces over OTLP");
            Some(exporter)
        }
        None => None,
    };
    // Bind the admin port first: a port clash is reported before the data dir is touched.
    let admin_listener = tokio::net::TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("cannot listen for the admin API on {}", config.admin_addr))?;
    let xds_listener = tokio::net::TcpListener::bind(config.xds_addr)
        .await
        .with_context(|| format!("cannot listen for Envoy ADS on {}", config.xds_addr))?;
    let (node, peer_server) = Node::start(config.node, core.clone()).await?;

    let serving = node.watch_freshness(config.stale_after, &core);
    let times: concord_xds::RevisionTimesFn = {
        let node = node.clone();
        Arc::new(move |after, upto| node.revision_times(after, upto))
    };
    let xds = XdsServer::new(config.xds, node.registry(), serving, times, front.clone())
        .with_read_barrier({
            let node = node.clone();
            Arc::new(move || {
                let node = node.clone();
                Box::pin(async move {
                    node.read_barrier()
                        .await
                        .map_err(|e| concord_xds::BarrierError(e.to_string()))?;
                    Ok(node.registry().borrow().revision())
                })
            })
        });
    count_leader_changes(node.clone(), &core);
    let xds_server = {
        let serve = xds.clone().serve(xds_listener, config.xds_tls.clone());
        front.spawn("xds server", async move {
            if let Err(error) = serve.await {
                tracing::error!(%error, "xDS server failed");
            }
        })
    };

    let (discovery, poller) = match config.discovery {
        Some(dns) => {
            let replica = Arc::new(PollerReplica::new(node.clone(), &front));
            let poller = Poller::new(dns, replica)?;
            let status = poller.status();
            let task = front.spawn("dns poller", poller.run(front.token().clone()));
            (Some(status), Some(task))
        }
        None => {
            warn_of_unresolved_services(node.clone(), &front);
            (None, None)
        }
    };

    {
        // The stats this replica's Envoys stream to it, for the leader's rollout judge.
        let stats = xds.clone();
        node.set_local_stats(Box::new(move |clusters| match clusters {
            Some(c) => stats.stats_report(c),
            None => stats.stage_stats_report(),
        }));
        // Weak: the function is kept by the node itself.
        let (xds, weak, stale_after) = (xds.clone(), Arc::downgrade(&node), config.stale_after);
        let discovery = discovery.clone();
        node.set_local_status(Box::new(move || match weak.upgrade() {
            Some(node) => crate::admin::peer_report(&node, &xds, discovery.as_deref(), stale_after),
            // Gone only while shutting down: then without the node's judgement.
            None => crate::admin::local_envoys(node_id, &xds, None),
        }));
    }
    let auth = match config.admin_tokens {
        Some((path, tokens)) => {
            warn_if_readable_by_others(&path);
            if !config.admin_addr.ip().is_loopback() {
                tracing::warn!(
                    admin_addr = %config.admin_addr,
                    "the admin API is served without TLS: bearer tokens cross the network in \
                     the clear; put it behind a TLS proxy or keep it on a private network"
                );
            }
            let auth = Auth::with_tokens(tokens);
            auth.reload_on_change(path, Duration::from_secs(2), &front);
            auth
        }
        None => {
            // Config validation refused a non-loopback address without tokens unless asked to.
            if config.insecure_admin && !config.admin_addr.ip().is_loopback() {
                tracing::warn!(
                    admin_addr = %config.admin_addr,
                    "--insecure-admin: the admin API is open to anyone who can reach {}; they \
                     can change where every Envoy sends traffic",
                    config.admin_addr
                );
            }
            Auth::open()
        }
    };
    let admin = axum::serve(
        admin_listener,
        admin::router(
            node.clone(),
            xds,
            discovery,
            admin::Options {
                fault_injection: config.fault_injection,
                stale_after: config.stale_after,
                shutdown: front.token().clone(),
            },
            auth,
        ),
    )
    .with_graceful_shutdown(front.token().clone().cancelled_owned());
    let admin = front.spawn("admin server", async move {
        if let Err(error) = admin.await {
            tracing::error!(%error, "admin API failed");
        }
    });
    if config.fault_injection {
        tracing::warn!("fault injection is enabled (POST /v1/debug/isolate): for tests only");
    }
    tracing::info!(node_id, "ready");

    let signal = wait_for_signal().await;
    let grace = config.shutdown_grace;
    tracing::info!(
        node_id,
        signal,
        grace_ms = grace.as_millis() as u64,
        "shutting down"
    );
    let deadline = tokio::time::Instant::now() + grace;

    // 1. Stop accepting: the admin API finishes the requests in flight (their writes commit,
    //    Raft still runs), Envoy streams end (they reconnect to another replica), the poller
    //    stops.
    front.cancel();
    let front_stopped = async {
        let _ = admin.await;
        let _ = xds_server.await;
        if let Some(poller) = poller {
            let _ = poller.await;
        }
    };
    if tokio::time::timeout_at(deadline, front_stopped)
        .await
        .is_err()
    {
        tracing::warn!(
            live = ?tasks.live(),
            "the admin API, the xDS server or the poller did not stop within the grace period"
        );
    }
    // 2. Stop Raft and flush the store; then the peer server.
    if tokio::time::timeout_at(deadline, node.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("raft did not stop within the grace period");
    }
    core.cancel();
    let _ = tokio::time::timeout_at(deadline, peer_server).await;
    // 3. Every other task.
    let drained = tasks
        .drain(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await;
    if drained.unfinished.is_empty() {
        tracing::info!(node_id, tasks = ?drained.spawned, "drained: every task finished");
    } else {
        tracing::warn!(
            node_id,
            unfinished = ?drained.unfinished,
            "tasks still running at the end of the grace period; exiting anyway"
        );
    }
    if let Some(exporter) = exporter {
        // Not a tracked task: it outlives the drain, so the drain's own spans (pushes ended by
        // the streams' close) go out before exit.
        exporter.shutdown(Duration::from_secs(2)).await;
    }
    if !drained.unfinished.is_empty() {
        anyhow::bail!(
            "shutdown did not finish within {grace:?}: still running {:?}",
            drained.unfinished
        );
    }
    tracing::info!(node_id, "stopped");
    Ok(())
}

/// Tokens are secrets: say so when every user may read the file. (Group access is the usual way to
/// share it with the service user, e.g. root:concord 0640, or a Kubernetes secret with fsGroup.)
fn warn_if_readable_by_others(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o007 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "every user on this host may read the admin token file; chmod o-rwx it"
        );
    }
}

/// Counts the leader changes this replica sees, for `/metrics`.
fn count_leader_changes(node: Arc<Node>, tasks: &Tasks) {
    let mut metrics = node.raft().metrics();
    let shutdown = tasks.token().clone();
    tasks.spawn("leader changes", async move {
        let mut last = metrics.borrow_and_update().current_leader;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = metrics.changed() => if r.is_err() { break },
            }
            let now = metrics.borrow_and_update().current_leader;
            if now.is_some() && now != last {
                concord_telemetry::metrics().leader_changes.inc();
            }
            if now.is_some() {
                last = now;
            }
        }
    });
}

/// Waits for SIGTERM or Ctrl-C (SIGINT); names the one received.
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

/// Without `--dns-server` nothing resolves the names services take endpoints from: says so
/// once per desired state that has such a service, instead of leaving them silently empty.
fn warn_of_unresolved_services(node: Arc<Node>, front: &Tasks) {
    let mut registry = node.registry();
    let shutdown = front.token().clone();
    front.spawn("dns-less services warning", async move {
        let mut warned = None;
        loop {
            let desired = registry.borrow_and_update().desired().clone();
            let names: Vec<&String> = desired
                .services
                .iter()
                .filter(|(_, s)| s.dns.is_some())
                .map(|(n, _)| n)
                .collect();
            if !names.is_empty() && warned.as_ref() != Some(&desired) {
                tracing::warn!(
                    services = ?names,
                    "services take endpoints from DNS but this replica has no --dns-server: \
                     while it leads, nothing resolves their names"
                );
                warned = Some(desired.clone());
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = registry.changed() => if r.is_err() { return },
            }
        }
    });
}

/// The replica as the DNS poller sees it.
struct PollerReplica {
    node: Arc<Node>,
    leadership: watch::Receiver<bool>,
}

impl PollerReplica {
    fn new(node: Arc<Node>, tasks: &Tasks) -> Self {
        let mut metrics = node.raft().metrics();
        let (tx, rx) = watch::channel(false);
        let shutdown = tasks.token().clone();
        tasks.spawn("poller leadership", async move {
            loop {
                let leads = metrics.borrow_and_update().state == openraft::ServerState::Leader;
                tx.send_if_modified(|l| std::mem::replace(l, leads) != leads);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = metrics.changed() => if r.is_err() { break },
                }
            }
            tx.send_replace(false);
        });
        PollerReplica {
            node,
            leadership: rx,
        }
    }
}

impl Replica for PollerReplica {
    async fn confirm_leadership(&self) -> bool {
        let confirm = self.node.raft().ensure_linearizable();
        matches!(
            tokio::time::timeout(Duration::from_secs(2), confirm).await,
            Ok(Ok(_))
        )
    }

    fn leadership(&self) -> watch::Receiver<bool> {
        self.leadership.clone()
    }

    fn registry(&self) -> watch::Receiver<Arc<concord_registry::Registry>> {
        self.node.registry()
    }

    async fn propose(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        match self.node.execute_local(ClientRequest::Write(cmd)).await {
            Ok(ClientReply::Written { outcome, .. }) => Ok(outcome),
            Ok(other) => Err(ProposeError::Other(format!("unexpected reply {other:?}"))),
            Err(ClientError::Rejected(r)) => Ok(Outcome::Rejected(r)),
            Err(ClientError::NotLeader { .. }) => Err(ProposeError::NotLeader),
            Err(e) => Err(ProposeError::Other(e.to_string())),
        }
    }
}
