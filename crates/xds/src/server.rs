//! The ADS server of one replica, with the standard gRPC health service: state-of-the-world
//! streams here, delta streams in `delta_stream.rs` (same rules, same bookkeeping in `push.rs`).
//!
//! One task turns each applied registry revision into a [`Snapshot`] (built once, shared by every
//! stream). Each stream runs [`StreamState`] against the latest snapshot: it answers requests,
//! pushes new revisions to the types the Envoy subscribed to (clusters before listeners), and ends
//! with UNAVAILABLE when this replica stops serving (DESIGN rule 6), when the Envoy is ahead of
//! this replica for longer than the catch-up timeout (rule 3), or at the maximum stream age.

use crate::LISTENER_ADDRESS_KEY;
use crate::envoys::{EnvoyStatus, Envoys};
use crate::grpc::Requests;
use crate::grpc::{AdsGrpc, Out, Responses};
use crate::push::Pushes;
use crate::resources::{ResourceConfig, Snapshot};
use crate::sotw::{Decision, StreamState};
use concord_registry::Registry;
use concord_telemetry::AppliedRevision;
use concord_tls::XdsTls;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::value::Kind;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};

/// Settings of the ADS server.
#[derive(Debug, Clone)]
pub struct XdsConfig {
    /// `control_plane.identifier` of every response: names this replica.
    pub identifier: String,
    /// How long a stream whose Envoy is ahead of this replica waits for it to catch up.
    pub catch_up_timeout: Duration,
    /// End streams after about this long (±10%), so Envoys rebalance across replicas.
    pub max_stream_age: Option<Duration>,
    /// The resources' shape.
    pub resources: ResourceConfig,
}

/// For the revisions after the first argument up to the second: when each was applied here,
/// when its change was first seen, and its apply span: for the latency histograms and the push
/// spans.
pub type RevisionTimesFn = Arc<dyn Fn(u64, u64) -> Vec<AppliedRevision> + Send + Sync>;

/// Brings this replica up to date with the cluster (a linearizable read barrier: everything
/// committed before the call is applied here) and returns the applied registry revision.
pub type ReadBarrierFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<u64, String>> + Send>> + Send + Sync>;

pub(crate) struct Inner {
    pub(crate) config: XdsConfig,
    pub(crate) times: RevisionTimesFn,
    pub(crate) snapshots: watch::Receiver<Arc<Snapshot>>,
    pub(crate) serving: watch::Receiver<bool>,
    pub(crate) envoys: Envoys,
    pub(crate) next_stream: AtomicU64,
    pub(crate) shutdown: CancellationToken,
    pub(crate) read_barrier: Option<ReadBarrierFn>,
}

/// The xDS side of a replica. Cheap to clone.
#[derive(Clone)]
pub struct XdsServer {
    inner: Arc<Inner>,
}

impl XdsServer {
    /// Starts building snapshots from `registry`. `serving` is false while this replica is out of
    /// contact with the quorum; streams end and health reports NOT_SERVING then.
    pub fn new(
        config: XdsConfig,
        registry: watch::Receiver<Arc<Registry>>,
        serving: watch::Receiver<bool>,
        times: RevisionTimesFn,
        shutdown: CancellationToken,
    ) -> XdsServer {
        let snapshots = spawn_snapshots(registry, config.resources.clone(), shutdown.clone());
        XdsServer {
            inner: Arc::new(Inner {
                config,
                times,
                snapshots,
                serving,
                envoys: Envoys::default(),
                next_stream: AtomicU64::new(1),
                shutdown,
                read_barrier: None,
            }),
        }
    }

    /// How a delta stream whose Envoy may hold a newer revision catches up with the cluster
    /// before answering (DESIGN rule 3). Call right after [`XdsServer::new`].
    pub fn with_read_barrier(mut self, barrier: ReadBarrierFn) -> XdsServer {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.read_barrier = Some(barrier);
        }
        self
    }

    /// The Envoys streaming from this replica now.
    pub fn envoys(&self) -> Vec<EnvoyStatus> {
        self.inner.envoys.list()
    }

    /// NACKs received since start.
    pub fn nacks_total(&self) -> u64 {
        self.inner.envoys.nacks_total()
    }

    /// The resources served now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshots.borrow().clone()
    }

    /// Serves ADS and gRPC health on `listener` until shutdown, over TLS with `tls` (reloaded
    /// when its files change), else plaintext.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        tls: Option<Arc<XdsTls>>,
    ) -> Result<(), tonic::transport::Error> {
        let (reporter, health) = tonic_health::server::health_reporter();
        let mut serving = self.inner.serving.clone();
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
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
        let ads = AdsGrpc(Arc::new(XdsService {
            xds: self,
            tls: tls.clone(),
        }));
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .add_service(health)
            .add_service(ads);
        match tls {
            Some(tls) => {
                tls.watch(shutdown.clone());
                let incoming =
                    concord_tls::net::incoming(listener, move || tls.server_config(), "xds");
                router
                    .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                    .await
            }
            None => {
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                router
                    .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                    .await
            }
        }
    }
}

/// The ADS service: the server, and the TLS whose client certificates bind Envoy ids.
pub(crate) struct XdsService {
    xds: XdsServer,
    tls: Option<Arc<XdsTls>>,
}

impl XdsService {
    /// The Envoy id the caller's certificate binds it to, if node ids are bound.
    fn bound_id<T>(&self, request: &Request<T>) -> Result<Option<String>, Status> {
        let Some(tls) = self.tls.as_ref().filter(|t| t.binds_node_id()) else {
            return Ok(None);
        };
        let certs = request.peer_certs();
        let leaf = certs.as_ref().and_then(|c| c.first());
        match leaf.and_then(|l| tls.envoy_id(l)) {
            Some(id) => Ok(Some(id)),
            None => Err(Status::permission_denied(
                "the client certificate names no Envoy of this cluster \
                 (URI SAN spiffe://concord/<cluster>/envoy/<node-id>)",
            )),
        }
    }
}

/// Rebuilds the snapshot whenever the applied revision moves.
fn spawn_snapshots(
    mut registry: watch::Receiver<Arc<Registry>>,
    config: ResourceConfig,
    shutdown: CancellationToken,
) -> watch::Receiver<Arc<Snapshot>> {
    let first = registry.borrow_and_update().clone();
    let first = Snapshot::build(first, config);
    crate::snapshot::log_skips(&first, &first);
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
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

/// The listener address an Envoy asks for in its node metadata, if any.
pub(crate) fn listener_addr(node: &Node) -> Option<SocketAddr> {
    let fields = &node.metadata.as_ref()?.fields;
    match fields.get(LISTENER_ADDRESS_KEY)?.kind.as_ref()? {
        Kind::StringValue(s) => s.parse().ok(),
        _ => None,
    }
}

impl XdsService {
    /// Accepts a state-of-the-world stream (`StreamAggregatedResources`) and runs it in its own
    /// task.
    pub(crate) fn sotw(
        &self,
        request: Request<Requests<DiscoveryRequest>>,
    ) -> Result<Responses, Status> {
        let bound_id = self.bound_id(&request)?;
        let inner = &self.xds.inner;
        if !*inner.serving.borrow() {
            return Err(Status::unavailable(
                "this replica is out of contact with the cluster's quorum; try another",
            ));
        }
        let peer = request.remote_addr();
        let (tx, rx) = crate::grpc::responses();
        let stream = Stream {
            xds: inner.clone(),
            id: inner.next_stream.fetch_add(1, Ordering::Relaxed),
            peer,
            bound_id,
            tx,
            state: StreamState::new(),
            node: None,
            pushes: Pushes::default(),
            listener_addr: inner.snapshots.borrow().default_listener_addr(),
            snapshots: inner.snapshots.clone(),
        };
        tokio::spawn(stream.run(request.into_inner()));
        Ok(rx)
    }

    /// Accepts a delta stream (`DeltaAggregatedResources`) and runs it in its own task.
    pub(crate) fn delta(
        &self,
        request: Request<Requests<DeltaDiscoveryRequest>>,
    ) -> Result<Responses, Status> {
        let bound_id = self.bound_id(&request)?;
        crate::delta_stream::start(self.xds.inner.clone(), request, bound_id)
    }
}

/// One ADS stream.
struct Stream {
    xds: Arc<Inner>,
    id: u64,
    peer: Option<SocketAddr>,
    /// The Envoy id this stream's client certificate names, when ids are bound to certificates.
    bound_id: Option<String>,
    tx: mpsc::Sender<crate::grpc::Out>,
    state: StreamState,
    /// The Envoy's node id, once its first request has named it.
    node: Option<String>,
    /// What was sent, ACKed and NACKed, for status and metrics.
    pushes: Pushes,
    listener_addr: SocketAddr,
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

/// A stream's first request names its Envoy: with Envoy ids bound to certificates, a `node.id`
/// that is not the id the client certificate names ends the stream; else the Envoy is listed
/// as connected. Returns the node id (only the id is kept: a real Envoy's node lists its
/// extensions, kilobytes) and the listener address it asks for, if any.
pub(crate) fn hello(
    xds: &Inner,
    (stream, peer): (u64, Option<SocketAddr>),
    bound: Option<&str>,
    node: Option<Node>,
    kind: &str,
) -> Result<(String, Option<SocketAddr>), End> {
    let node = node.unwrap_or_default();
    if let Some(bound) = bound.filter(|b| *b != node.id) {
        tracing::warn!(stream, node = %node.id, cert = %bound, ?peer,
            "refused an Envoy whose node id is not the one its certificate names");
        return Err(End::Status(Status::permission_denied(format!(
            "node.id {:?} is not the Envoy id {bound:?} that the client certificate names",
            node.id
        ))));
    }
    tracing::info!(stream, node = %node.id, ?peer, "Envoy connected ({kind})");
    xds.envoys.connected(stream, &node, peer);
    let addr = listener_addr(&node);
    Ok((node.id, addr))
}

/// What ends a stream from outside, and what wakes it, the same for both protocols.
pub(crate) struct Lifetime {
    shutdown: CancellationToken,
    /// Completes at the stream's maximum age.
    age: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Completes when this replica stops serving (out of contact with the quorum).
    lost_quorum: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// What a stream does next.
pub(crate) enum Event<R> {
    Request(R),
    /// The snapshot moved: push what is stale.
    Changed,
    End(End),
}

impl Lifetime {
    pub(crate) fn new(xds: &Inner, stream: u64) -> Lifetime {
        let mut serving = xds.serving.clone();
        Lifetime {
            shutdown: xds.shutdown.clone(),
            age: Box::pin(max_age(xds.config.max_stream_age, stream)),
            lost_quorum: Box::pin(async move {
                let _ = serving.wait_for(|up| !*up).await;
            }),
        }
    }

    /// Waits for the next request, a new snapshot, or the end. After an [`Event::End`] the
    /// stream must stop calling this.
    pub(crate) async fn next<R: prost::Message + Default>(
        &mut self,
        inbound: &mut Requests<R>,
        snapshots: &mut watch::Receiver<Arc<Snapshot>>,
    ) -> Event<R> {
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => Event::End(End::Closed),
            _ = &mut self.lost_quorum => Event::End(End::Status(Status::unavailable(
                "this replica lost contact with the cluster's quorum; reconnect to another",
            ))),
            _ = &mut self.age => Event::End(End::Status(Status::unavailable(
                "maximum stream age reached; reconnect",
            ))),
            msg = inbound.message() => match msg {
                Ok(Some(req)) => Event::Request(req),
                Ok(None) | Err(_) => Event::End(End::Closed),
            },
            r = snapshots.changed() => match r {
                Ok(()) => Event::Changed,
                Err(_) => Event::End(End::Closed),
            },
        }
    }
}

/// Ends a stream: its Envoy is no longer listed, and a status tells the Envoy why.
pub(crate) async fn finish(
    xds: &Inner,
    (stream, node): (u64, &str),
    tx: &mpsc::Sender<Out>,
    end: End,
    kind: &str,
) {
    xds.envoys.disconnected(stream);
    match end {
        End::Status(status) => {
            tracing::info!(
                stream,
                node,
                reason = status.message(),
                "ending {kind} stream"
            );
            let _ = tx.send(Err(Box::new(status))).await;
        }
        End::Closed => tracing::debug!(stream, node, "{kind} stream closed"),
    }
}

/// Completes when a stream of this id has reached the maximum age (never, without one).
pub(crate) async fn max_age(age: Option<Duration>, stream: u64) {
    match age {
        Some(age) => {
            // ±10% jitter from the stream id, so Envoys do not reconnect in lockstep.
            let spread = (stream.wrapping_mul(2_654_435_761) % 1000) as f64 / 1000.0;
            tokio::time::sleep(age.mul_f64(0.9 + 0.2 * spread)).await
        }
        None => std::future::pending().await,
    }
}

/// Why a stream stopped.
pub(crate) enum End {
    /// The Envoy closed it, or this replica is shutting down.
    Closed,
    /// End it with this status so the Envoy reconnects (elsewhere).
    Status(Status),
}

impl Stream {
    async fn run(mut self, mut inbound: Requests<DiscoveryRequest>) {
        let mut life = Lifetime::new(&self.xds, self.id);
        let end = loop {
            // The handlers are boxed: their futures are large, and a waiting stream should
            // not carry their space.
            let step = match life.next(&mut inbound, &mut self.snapshots).await {
                Event::Request(req) => Box::pin(self.on_request(req)).await,
                Event::Changed => Box::pin(self.push_stale()).await,
                Event::End(end) => Err(end),
            };
            if let Err(end) = step {
                break end;
            }
        };
        finish(&self.xds, (self.id, self.node_id()), &self.tx, end, "ADS").await;
    }

    fn node_id(&self) -> &str {
        self.node.as_deref().unwrap_or("")
    }

    async fn on_request(&mut self, mut req: DiscoveryRequest) -> Result<(), End> {
        if self.node.is_none() {
            let bound = self.bound_id.as_deref();
            let (id, addr) = hello(
                &self.xds,
                (self.id, self.peer),
                bound,
                req.node.take(),
                "SotW",
            )?;
            self.listener_addr = addr.unwrap_or(self.listener_addr);
            self.node = Some(id);
        }
        let current = self.snapshots.borrow().revision();
        let error = req.error_detail.as_ref().map(|e| e.message.as_str());
        let nacked_before = self.xds.envoys.nacked_before(self.node_id(), &req.type_url);
        if req.response_nonce.is_empty() {
            let had = crate::sotw::parse_version(&req.version_info).unwrap_or(0);
            self.pushes.reported(&req.type_url, had);
        }
        let decision = self.state.on_request(
            &req.type_url,
            &req.version_info,
            &req.response_nonce,
            error,
            current,
            nacked_before,
        );
        match decision {
            Decision::Respond => self.send(&req.type_url).await?,
            Decision::WaitFor(wanted) => {
                let timeout = self.xds.config.catch_up_timeout;
                let caught_up = matches!(
                    tokio::time::timeout(
                        timeout,
                        self.snapshots.wait_for(|s| s.revision() >= wanted),
                    )
                    .await,
                    Ok(Ok(_))
                );
                if !caught_up {
                    return Err(End::Status(Status::unavailable(format!(
                        "this replica has applied revision {current}, but the Envoy already has \
                         {wanted}; not caught up within {timeout:?}, try another replica"
                    ))));
                }
                self.send(&req.type_url).await?;
            }
            Decision::Acked(version) => {
                let x = &self.xds;
                self.pushes
                    .acked(&x.envoys, &x.times, self.id, &req.type_url, version);
            }
            Decision::Nacked { version, message } => {
                let node = self.node.as_deref().unwrap_or("");
                self.pushes.nacked(
                    &self.xds.envoys,
                    self.id,
                    node,
                    &req.type_url,
                    version,
                    &message,
                );
            }
            Decision::Ignore => {}
        }
        // A wait may have let the snapshot move past what other types were sent.
        self.push_stale().await
    }

    async fn push_stale(&mut self) -> Result<(), End> {
        let current = self.snapshots.borrow_and_update().revision();
        for type_url in self.state.stale_types(current) {
            self.send(&type_url).await?;
        }
        Ok(())
    }

    async fn send(&mut self, type_url: &str) -> Result<(), End> {
        let snapshot = self.snapshots.borrow().clone();
        let resources = snapshot.resources(type_url, self.listener_addr);
        let nonce = self.state.record_sent(type_url, snapshot.revision());
        let counts = (resources.len(), 0);
        let node = self.node.as_deref().unwrap_or("");
        self.pushes.sent(
            &self.xds.envoys,
            &self.xds.times,
            (self.id, node),
            type_url,
            snapshot.revision(),
            counts,
        );
        let framed = crate::wire::sotw(
            &crate::wire::Head {
                version: snapshot.version(),
                type_url,
                nonce: &nonce,
                identifier: &self.xds.config.identifier,
            },
            &resources,
        );
        self.tx.send(framed).await.map_err(|_| End::Closed)
    }
}
