//! The xDS side of one replica: the [`XdsServer`] handle the replica holds, the task that turns
//! each applied registry revision into a [`Snapshot`] (built once, shared by every stream), and
//! the gRPC server (ADS, the stats stream Envoys' `metrics_service` sink sends to, and the
//! standard health service, plaintext or TLS).
//!
//! The top of the crate: it builds what every stream shares (`stream::Shared`) and serves it
//! through the transport (`transport`) and the ADS service (`service`), which runs each
//! stream's protocol driver. Nothing below imports it.

pub use crate::config::{BarrierError, ReadBarrierFn, RevisionTimesFn, XdsConfig};
use crate::envoy_stats::EnvoyStats;
use crate::envoy_stats::service::StatsService;
use crate::envoys::{EnvoyStatus, Envoys};
use crate::resources::ResourceConfig;
use crate::service::XdsService;
use crate::snapshot::Snapshot;
use crate::stream::Shared;
use crate::transport::{Ads, Grpc};
use concord_registry::Registry;
use concord_telemetry::tasks::Tasks;
use concord_tls::XdsTls;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::sync::watch;

/// The xDS side of a replica. Cheap to clone.
#[derive(Clone)]
pub struct XdsServer {
    inner: Arc<Shared>,
    /// Where this server's tasks run (snapshots, health, every stream); its token ends them.
    tasks: Tasks,
    /// The stats the Envoys stream to this replica.
    stats: Arc<EnvoyStats>,
}

impl XdsServer {
    /// Starts building snapshots from `registry`. `serving` is false while this replica is out of
    /// contact with the quorum; streams end and health reports NOT_SERVING then. Every task of
    /// the server is a task of `tasks`; cancelling it stops accepting and ends every stream.
    pub fn new(
        config: XdsConfig,
        registry: watch::Receiver<Arc<Registry>>,
        serving: watch::Receiver<bool>,
        times: RevisionTimesFn,
        tasks: Tasks,
    ) -> XdsServer {
        let shutdown = tasks.token().clone();
        let snapshots = spawn_snapshots(registry, config.resources.clone(), &tasks);
        XdsServer {
            inner: Arc::new(Shared {
                config,
                times,
                snapshots,
                serving,
                envoys: Envoys::default(),
                next_stream: AtomicU64::new(1),
                shutdown,
                read_barrier: None,
            }),
            tasks,
            stats: Arc::new(EnvoyStats::default()),
        }
    }

    /// How a delta stream catches up with the cluster before its first response, since its
    /// Envoy may hold a newer revision (DESIGN rule 3); the streams waiting at one moment share
    /// one barrier. Call right after [`XdsServer::new`].
    pub fn with_read_barrier(mut self, barrier: ReadBarrierFn) -> XdsServer {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.read_barrier = Some(crate::barrier::single_flight(barrier, self.tasks.clone()));
        }
        self
    }

    /// Whether this replica serves Envoys now: in contact with the quorum and caught up (the
    /// judgement that ends streams and turns gRPC health NOT_SERVING).
    pub fn serving(&self) -> bool {
        *self.inner.serving.borrow()
    }

    /// The Envoys streaming from this replica now.
    pub fn envoys(&self) -> Vec<EnvoyStatus> {
        let snapshot = self.snapshot();
        self.inner
            .envoys
            .list_staged(snapshot.staged().map(|s| &*s.group))
    }

    /// NACKs received since start.
    pub fn nacks_total(&self) -> u64 {
        self.inner.envoys.nacks_total()
    }

    /// How many of this replica's Envoys ACKed each change from revision `from` on, and the
    /// slowest of them: see [`crate::acks`].
    pub fn change_acks(&self, from: u64) -> Vec<(u64, crate::acks::Acks)> {
        self.inner.envoys.changes.since(from)
    }

    /// What the Envoys streamed to this replica of `clusters`' stats since it started (every
    /// cluster tracked when `clusters` is empty), for the leader to judge rollouts on.
    pub fn stats_report(&self, clusters: &[String]) -> concord_api::StatsReport {
        self.stats.report(clusters)
    }

    /// What the Envoys streamed to this replica under the latest staged configuration, its
    /// group's and the others' apart, and no cluster's: for the leader to judge config
    /// canaries on.
    pub fn stage_stats_report(&self) -> concord_api::StatsReport {
        self.stats.stage_report()
    }

    /// The stats stream's metrics (messages, skipped values, streams, clusters) in the
    /// Prometheus text format, to append to the replica's `/metrics` page.
    pub fn render_stats_metrics(&self, out: &mut String) {
        self.stats.render_metrics(out);
    }

    /// The resources served now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshots.borrow().clone()
    }

    /// Serves ADS, the Envoys' stats stream and gRPC health on `listener` until shutdown, over
    /// TLS with `tls` (reloaded when its files change), else plaintext.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        tls: Option<Arc<XdsTls>>,
    ) -> Result<(), tonic::transport::Error> {
        let (reporter, health) = tonic_health::server::health_reporter();
        let mut serving = self.inner.serving.clone();
        let shutdown = self.inner.shutdown.clone();
        self.tasks.spawn("xds health", async move {
            loop {
                let up = *serving.borrow_and_update();
                let status = if up {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                reporter.set_service_status("", status).await;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = serving.changed() => if r.is_err() { break },
                }
            }
            // A draining replica tells health checkers first, so Envoys move on.
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        });
        let shutdown = self.inner.shutdown.clone();
        let stats = StatsService {
            stats: self.stats.clone(),
            serving: self.inner.serving.clone(),
            shutdown: shutdown.clone(),
            tls: tls.clone(),
            snapshots: self.inner.snapshots.clone(),
        }
        .into_server();
        let ads = Grpc(Ads(Arc::new(XdsService {
            xds: self.inner,
            tls: tls.clone(),
            tasks: self.tasks.clone(),
        })));
        // No HTTP/2 keepalive from this side: the kernel watches each connection instead
        // (`concord_tls::net::keepalive`), at no cost per poll.
        let router = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(ads)
            .add_service(stats);
        match tls {
            Some(tls) => {
                tls.watch(&self.tasks);
                let incoming = concord_tls::net::incoming(
                    listener,
                    move || tls.server_config(),
                    "xds",
                    &self.tasks,
                );
                router
                    .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                    .await
            }
            None => {
                use concord_tls::net::{KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_RETRIES};
                // As over TLS, the kernel watches for a vanished Envoy (`net::keepalive`).
                let incoming = tonic::transport::server::TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(KEEPALIVE_IDLE))
                    .with_keepalive_interval(Some(KEEPALIVE_INTERVAL))
                    .with_keepalive_retries(Some(KEEPALIVE_RETRIES));
                router
                    .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                    .await
            }
        }
    }
}

/// Rebuilds the snapshot whenever the applied revision moves.
fn spawn_snapshots(
    mut registry: watch::Receiver<Arc<Registry>>,
    config: ResourceConfig,
    tasks: &Tasks,
) -> watch::Receiver<Arc<Snapshot>> {
    let shutdown = tasks.token().clone();
    let first = registry.borrow_and_update().clone();
    let first = Snapshot::build(first, config);
    crate::snapshot::log_skips(&first, &first);
    let (tx, rx) = watch::channel(Arc::new(first));
    tasks.spawn("xds snapshots", async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = registry.changed() => if r.is_err() { break },
            }
            let reg = registry.borrow_and_update().clone();
            if reg.revision() == tx.borrow().revision() {
                continue;
            }
            let prev = tx.borrow().clone();
            // Only changed builders are encoded, but a large change still takes milliseconds:
            // keep it off the async workers.
            let snap = tokio::task::spawn_blocking(move || prev.next(reg)).await;
            match snap {
                Ok(s) => {
                    crate::snapshot::log_skips(&tx.borrow(), &s);
                    tracing::debug!(
                        revision = s.revision(),
                        encoded = s.serialised(),
                        "new xDS snapshot"
                    );
                    tx.send_replace(Arc::new(s));
                }
                Err(error) => tracing::error!(%error, "building the xDS snapshot failed"),
            }
        }
    });
    rx
}
