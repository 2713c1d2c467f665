//! One delta ADS stream (`DeltaAggregatedResources`): drives [`DeltaState`] against the
//! replica's latest [`Snapshot`], with the same rules and the same bookkeeping as state of the
//! world ([`crate::push`]): answered first requests, never backwards, NACKs respected, and the
//! stream ends with UNAVAILABLE when the replica stops serving or at the maximum age.

use crate::delta::{DeltaState, Request as DeltaRequest};
use crate::grpc::Requests;
use crate::grpc::{self, Responses};
use crate::push::Pushes;
use crate::resources::{CLUSTER_TYPE, LISTENER_TYPE};
use crate::server::{End, Event, Inner, Lifetime, finish, hello};
use crate::snapshot::{Resources, Snapshot};
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Status};

/// Accepts a delta stream and runs it in its own task.
pub(crate) fn start(
    xds: Arc<Inner>,
    request: Request<Requests<DeltaDiscoveryRequest>>,
    bound_id: Option<String>,
) -> Result<Responses, Status> {
    if !*xds.serving.borrow() {
        return Err(Status::unavailable(
            "this replica is out of contact with the cluster's quorum; try another",
        ));
    }
    let (tx, rx) = grpc::responses();
    let listener_addr = xds.snapshots.borrow().default_listener_addr();
    let stream = DeltaStream {
        id: xds.next_stream.fetch_add(1, Ordering::Relaxed),
        peer: request.remote_addr(),
        bound_id,
        tx,
        state: DeltaState::new(),
        node: None,
        pushes: Pushes::default(),
        listener_addr,
        snapshots: xds.snapshots.clone(),
        xds,
    };
    tokio::spawn(stream.run(request.into_inner()));
    Ok(rx)
}

/// The current resources of `type_url` for a listener at `addr` (a cheap, shared copy).
fn current(snap: &Snapshot, addr: SocketAddr, type_url: &str) -> Resources {
    match type_url {
        CLUSTER_TYPE => snap.cluster_map(),
        LISTENER_TYPE => snap
            .named_listener(addr)
            .map(|l| Resources::unit(l.name.clone(), l))
            .unwrap_or_default(),
        _ => Resources::new(),
    }
}

struct DeltaStream {
    xds: Arc<Inner>,
    id: u64,
    /// The Envoy id this stream's client certificate names, when ids are bound to certificates.
    bound_id: Option<String>,
    peer: Option<SocketAddr>,
    tx: mpsc::Sender<grpc::Out>,
    state: DeltaState,
    /// The Envoy's node id, once its first request has named it.
    node: Option<String>,
    pushes: Pushes,
    listener_addr: SocketAddr,
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

impl DeltaStream {
    async fn run(mut self, mut inbound: Requests<DeltaDiscoveryRequest>) {
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
        finish(
            &self.xds,
            (self.id, self.node_id()),
            &self.tx,
            end,
            "delta ADS",
        )
        .await;
    }

    fn node_id(&self) -> &str {
        self.node.as_deref().unwrap_or("")
    }

    async fn on_request(&mut self, mut req: DeltaDiscoveryRequest) -> Result<(), End> {
        if self.node.is_none() {
            let bound = self.bound_id.as_deref();
            let (id, addr) = hello(
                &self.xds,
                (self.id, self.peer),
                bound,
                req.node.take(),
                "delta",
            )?;
            self.listener_addr = addr.unwrap_or(self.listener_addr);
            self.node = Some(id);
        }
        let type_url = req.type_url.as_str();
        let first = !self.state.types().contains_key(type_url);
        let outcome = self.state.on_request(&DeltaRequest {
            type_url,
            subscribe: &req.resource_names_subscribe,
            unsubscribe: &req.resource_names_unsubscribe,
            initial_versions: first.then_some(&req.initial_resource_versions),
            nonce: &req.response_nonce,
            error: req.error_detail.as_ref().map(|e| e.message.as_str()),
        });
        let x = &self.xds;
        if let Some(revision) = outcome.acked {
            self.pushes
                .acked(&x.envoys, &x.times, self.id, type_url, revision);
        }
        if let Some((revision, message)) = &outcome.nacked {
            let node = self.node.as_deref().unwrap_or("");
            self.pushes
                .nacked(&x.envoys, self.id, node, type_url, *revision, message);
        }
        if outcome.first {
            self.first_request(type_url).await?;
        } else if outcome.resync {
            self.send(type_url, false).await?;
        }
        // A catch-up wait may have let the snapshot move past what other types were sent.
        self.push_stale().await
    }

    /// Answers the first request of a type: only what differs from what the Envoy holds, after
    /// catching up with the cluster if it may hold a newer revision than this replica.
    async fn first_request(&mut self, type_url: &str) -> Result<(), End> {
        let snap = self.snapshots.borrow().clone();
        let addr = self.listener_addr;
        let held_other = self
            .state
            .holds_other_than(type_url, &current(&snap, addr, type_url));
        let held_any = self
            .state
            .types()
            .get(type_url)
            .is_some_and(|t| !t.held.is_empty());
        if held_other {
            self.catch_up().await?;
        }
        let snap = self.snapshots.borrow().clone();
        // Commit-to-ACK counts the changes a fresh Envoy gets; a reconnecting one already had
        // some revision, at most this one.
        let had = if held_any { snap.revision() } else { 0 };
        self.pushes.reported(type_url, had);
        let nacked_before = self.xds.envoys.nacked_before(self.node_id(), type_url);
        if nacked_before == Some(snap.revision()) {
            // This Envoy rejected these resources on an earlier stream: not again.
            self.state
                .assume_held(type_url, &current(&snap, addr, type_url));
        }
        self.send(type_url, true).await
    }

    /// Waits until this replica has applied everything the cluster committed before now (so
    /// it is at least as new as anything an Envoy can hold), within the catch-up timeout; ends
    /// the stream with UNAVAILABLE otherwise, so the Envoy tries another replica.
    async fn catch_up(&mut self) -> Result<(), End> {
        let Some(barrier) = self.xds.read_barrier.clone() else {
            return Ok(());
        };
        let timeout = self.xds.config.catch_up_timeout;
        let snapshots = &mut self.snapshots;
        let caught_up = tokio::time::timeout(timeout, async move {
            let revision = barrier().await?;
            snapshots
                .wait_for(|s| s.revision() >= revision)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await;
        match caught_up {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(End::Status(Status::unavailable(format!(
                "the Envoy holds resources this replica does not serve, and it cannot catch up \
                 with the cluster ({error}); try another replica"
            )))),
            Err(_) => Err(End::Status(Status::unavailable(format!(
                "the Envoy holds resources this replica does not serve, and it did not catch up \
                 with the cluster within {timeout:?}; try another replica"
            )))),
        }
    }

    /// Sends every answered type a response for a newer revision: the resources that changed
    /// (none, when a revision changed nothing this type serves: the response still tells the
    /// Envoy the revision).
    async fn push_stale(&mut self) -> Result<(), End> {
        let current = self.snapshots.borrow_and_update().revision();
        let stale: Vec<String> = self
            .state
            .types()
            .iter()
            .filter(|(_, t)| t.sent.is_some_and(|s| s < current))
            .map(|(k, _)| k.clone())
            .collect();
        for type_url in stale {
            self.send(&type_url, true).await?;
        }
        Ok(())
    }

    /// Sends what differs for `type_url`; with nothing to send, only if `always`.
    async fn send(&mut self, type_url: &str, always: bool) -> Result<(), End> {
        let snap = self.snapshots.borrow().clone();
        let revision = snap.revision();
        let cur = current(&snap, self.listener_addr, type_url);
        let changes = self.state.changes(type_url, &cur);
        if changes.is_empty() && !always {
            return Ok(());
        }
        let nonce = self.state.record_sent(type_url, revision, &changes, &cur);
        let counts = (changes.updates.len(), changes.removals.len());
        let node = self.node.as_deref().unwrap_or("");
        self.pushes.sent(
            &self.xds.envoys,
            &self.xds.times,
            (self.id, node),
            type_url,
            revision,
            counts,
        );
        let framed = crate::wire::delta(
            &crate::wire::Head {
                version: snap.version(),
                type_url,
                nonce: &nonce,
                identifier: &self.xds.config.identifier,
            },
            &changes.updates,
            &changes.removals,
        );
        self.tx.send(framed).await.map_err(|_| End::Closed)
    }
}
