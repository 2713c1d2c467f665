//! The delta driver of one ADS stream (`DeltaAggregatedResources`): runs [`DeltaState`]
//! against the replica's latest snapshot, with the same rules and the same bookkeeping as state
//! of the world ([`crate::push`]): answered first requests, never backwards, NACKs respected,
//! and the stream ends with UNAVAILABLE when the replica stops serving or at the maximum age.
//!
//! Never backwards needs a read barrier before the stream's first response. A delta request
//! carries no revision, only what the Envoy holds, and that proves nothing: an Envoy whose
//! newest state is empty (every builder removed) reports nothing, as a fresh one does, and one
//! that holds exactly what this replica serves may have seen it at a newer revision (an
//! sni-cluster listener is the same at every revision). A replica that lags the cluster would
//! bring removed builders back, or answer with a lower `system_version_info`. So every stream
//! catches up with the cluster first (the streams waiting at one moment share one barrier,
//! [`crate::barrier`]), once: after it, this replica is at least as new as anything the Envoy
//! saw before the stream began.
//!
//! Reads requests from any [`Inbound`] stream and writes framed responses into a channel; the
//! service feeds it from HTTP/2, the tests from a channel.

use super::order::{Order, TypeInfo};
use super::{End, Event, Inbound, Lifetime, Outbox, Peer, Shared, Tx, finish, hello, served};
use crate::protocol::delta::{
    DeltaState, MAX_NAMES_PER_TYPE, Request as DeltaRequest, names_limit,
};
use crate::push::Pushes;
use crate::resource_type;
use crate::resource_type::{ENDPOINTS, Placement, ROUTES};
use crate::snapshot::{Resources, Snapshot};
use crate::wire;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::Status;

/// The current resources of `type_url` for a listener at `addr` (a cheap, shared copy).
fn current(snap: &Snapshot, addr: Placement, type_url: &str) -> Resources {
    resource_type::delta(snap, type_url, addr)
}

/// One delta stream.
pub(crate) struct DeltaStream {
    xds: Arc<Shared>,
    peer: Peer,
    out: Outbox,
    state: DeltaState,
    /// The Envoy's node id, once its first request has named it.
    node: Option<String>,
    /// What was sent, ACKed and NACKed, for status and metrics.
    pushes: Pushes,
    placement: Placement,
    /// What the Envoy's node says of it, for a staged configuration's group.
    traits: crate::envoy_select::NodeTraits,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    /// A request for a type this replica does not serve was logged.
    warned_unknown: bool,
    /// This stream has caught up with the cluster (before its first response).
    caught_up: bool,
    /// Make before break: clusters kept for the routes, routes held for new clusters.
    order: Order,
}

impl Drop for DeltaStream {
    /// A stream dropped before it finished is no longer listed: the response body that runs the
    /// driver goes when the Envoy resets the stream or its connection is gone. (After
    /// [`finish`], this finds nothing left to do.)
    fn drop(&mut self) {
        self.xds.envoys.disconnected(self.peer.id);
    }
}

impl DeltaStream {
    /// A stream of `peer` that sends its responses into `tx`.
    pub(crate) fn new(xds: Arc<Shared>, peer: Peer, tx: Tx) -> DeltaStream {
        let placement = Placement::from(xds.snapshots.borrow().default_listener_addr());
        DeltaStream {
            placement,
            traits: Default::default(),
            snapshots: xds.snapshots.clone(),
            xds,
            peer,
            out: Outbox::new(tx),
            state: DeltaState::new(),
            node: None,
            pushes: Pushes::default(),
            warned_unknown: false,
            caught_up: false,
            order: Order::default(),
        }
    }

    /// Serves the stream until it ends; the last thing sent is the status that ends it, if any.
    pub(crate) async fn run(mut self, mut inbound: impl Inbound<DeltaDiscoveryRequest>) {
        let mut life = Lifetime::new(&self.xds, self.peer.id);
        let end = loop {
            // The handlers are boxed, and the end below: their futures are large, and a
            // waiting stream should not carry their space.
            let step = match life.next(&mut inbound).await {
                Event::Request(req) => Box::pin(self.on_request(req)).await,
                Event::Changed => Box::pin(self.push_stale()).await,
                Event::End(end) => Err(end),
            };
            if let Err(end) = step {
                break end;
            }
            if let Err(end) = self.out.flush().await {
                break end;
            }
        };
        let stream = (self.peer.id, self.node.as_deref().unwrap_or(""));
        Box::pin(finish(&self.xds, stream, &mut self.out, end, "delta ADS")).await;
    }

    fn node_id(&self) -> &str {
        self.node.as_deref().unwrap_or("")
    }

    /// What the stream knows of `type_url`, for [`Order`].
    fn info(&self, type_url: &str) -> Option<TypeInfo> {
        self.state
            .types()
            .get(type_url)
            .map(|t| TypeInfo::from(&**t))
    }

    /// Whether routes may be pushed: the clusters new to this Envoy are warm.
    fn routes_may_go(&mut self) -> bool {
        let types = self.state.types();
        let eds = types.get(ENDPOINTS.type_url);
        self.order.routes_may_go(
            |t| types.get(t).map(|t| TypeInfo::from(&**t)),
            |name| eds.is_some_and(|e| e.held.contains_key(name)),
        )
    }

    async fn on_request(&mut self, mut req: DeltaDiscoveryRequest) -> Result<(), End> {
        if self.node.is_none() {
            let (id, placement, traits) = hello(
                &self.xds,
                &self.peer,
                req.node.take(),
                "delta",
                self.placement,
                &mut self.pushes,
            )?;
            self.placement = placement;
            self.traits = traits;
            self.node = Some(id);
        }
        let stream = (self.peer.id, self.node.as_deref().unwrap_or(""));
        if !served(&req.type_url, stream, &mut self.warned_unknown) {
            return Ok(());
        }
        let type_url = req.type_url.as_str();
        let first = !self.state.types().contains_key(type_url);
        let request = DeltaRequest {
            type_url,
            subscribe: &req.resource_names_subscribe,
            unsubscribe: &req.resource_names_unsubscribe,
            initial_versions: first.then_some(&req.initial_resource_versions),
            nonce: &req.response_nonce,
            error: req.error_detail.as_ref().map(|e| e.message.as_str()),
        };
        // What the replica serves is counted only for a request past the fixed bound.
        let limit = match self.state.too_many_names(&request, MAX_NAMES_PER_TYPE) {
            false => MAX_NAMES_PER_TYPE,
            true => names_limit(current(&self.snapshots.borrow(), self.placement, type_url).len()),
        };
        if self.state.too_many_names(&request, limit) {
            tracing::warn!(
                stream = self.peer.id,
                node = self.node_id(),
                type_url,
                "a delta request would subscribe to more than {limit} names; ending the stream"
            );
            return Err(End::Status(Status::invalid_argument(format!(
                "more than {limit} resource names of {type_url} on one stream"
            ))));
        }
        let outcome = self.state.on_request(&request);
        let x = &self.xds;
        if let Some(revision) = outcome.acked {
            self.pushes.acked(&x.envoys, &x.times, type_url, revision);
            if type_url == ROUTES.type_url {
                self.order.routes_acked(revision);
            }
        }
        if let Some((revision, message)) = &outcome.nacked {
            let node = self.node.as_deref().unwrap_or("");
            self.pushes
                .nacked(&x.envoys, self.peer.id, node, type_url, *revision, message);
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
    /// catching up with the cluster on the stream's first (the Envoy may hold a newer revision
    /// than this replica, whatever it reports).
    async fn first_request(&mut self, type_url: &str) -> Result<(), End> {
        let addr = self.placement;
        let held_any = self
            .state
            .types()
            .get(type_url)
            .is_some_and(|t| !t.held.is_empty());
        if !self.caught_up {
            self.catch_up().await?;
            self.caught_up = true;
        }
        let snap = Snapshot::for_envoy(&self.snapshots.borrow(), &self.traits);
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
        // The mutant answers at once from whatever it has, for lagging-replica to catch.
        if cfg!(feature = "mutant-no-never-backwards") {
            return Ok(());
        }
        let Some(barrier) = self.xds.read_barrier.clone() else {
            return Ok(());
        };
        let timeout = self.xds.config.catch_up_timeout;
        let snapshots = &mut self.snapshots;
        let caught_up = tokio::time::timeout(timeout, async move {
            let revision = barrier().await.map_err(|e| e.to_string())?;
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
                "the Envoy may hold a newer revision than this replica has applied, and it \
                 cannot catch up with the cluster ({error}); try another replica"
            )))),
            Err(_) => Err(End::Status(Status::unavailable(format!(
                "the Envoy may hold a newer revision than this replica has applied, and it did \
                 not catch up with the cluster within {timeout:?}; try another replica"
            )))),
        }
    }

    /// Sends every answered type a response for a newer revision: the resources that changed
    /// (for the clusters, none when a revision changed nothing of them: the response still
    /// tells the Envoy the revision; another type with nothing new is [`held`](Self::held)
    /// without one). Flow control, as in state of the world: a type with a response
    /// out that is neither ACKed nor NACKed waits; what changes meanwhile goes out in one
    /// response when the Envoy answers (this runs after every request).
    async fn push_stale(&mut self) -> Result<(), End> {
        let current = self.snapshots.borrow_and_update().revision();
        // By type index, which is push order (the stream holds served types only): no list of
        // type URLs copied on every push.
        let mut stale = [false; resource_type::TYPES.len()];
        for (type_url, t) in self.state.types() {
            if t.sent.is_some_and(|s| s < current)
                && !t.pending()
                && let Some(i) = resource_type::index(type_url)
            {
                stale[i] = true;
            }
        }
        for (t, _) in resource_type::TYPES.iter().zip(stale).filter(|(_, s)| *s) {
            // Decided after the clusters of this revision went out: they may be new.
            if t.type_url == ROUTES.type_url && !self.routes_may_go() {
                continue;
            }
            self.send(t.type_url, true).await?;
        }
        // Clusters kept for routes the Envoy has since replaced: removed now.
        let resend = self
            .order
            .take_resend(|t| self.state.types().get(t).is_some_and(|t| t.pending()));
        for type_url in resend {
            self.send(&type_url, false).await?;
        }
        Ok(())
    }

    /// A type other than the clusters with nothing new for an Envoy that ACKed its last
    /// response is recorded as held at `revision` instead of sent an empty response: at 10,000
    /// streams the listeners' empty response and its ACK on every change were a third of the
    /// messages a change cost (issue 17). The clusters' response goes out at every revision,
    /// empty or not: its ACK is how this replica knows an Envoy accepted a change (the
    /// commit-to-ACK times, the status page's ACK counts, the push's trace span).
    fn held(&mut self, type_url: &str, revision: u64, cur: &Resources) -> bool {
        let carries_changes = resource_type::find(type_url).is_none_or(|t| t.carries_changes);
        if carries_changes || !self.state.hold(type_url, revision, cur) {
            return false;
        }
        self.pushes.held(type_url, revision);
        if type_url == ROUTES.type_url {
            // The routes it holds are those of `revision`: what was kept for older ones goes.
            self.order.routes_acked(revision);
        }
        true
    }

    /// Sends what differs for `type_url`; with nothing to send, only if `always` and the type
    /// is not [`held`](Self::held) without a response.
    async fn send(&mut self, type_url: &str, always: bool) -> Result<(), End> {
        let snap = Snapshot::for_envoy(&self.snapshots.borrow(), &self.traits);
        let revision = snap.revision();
        let routes = self.info(ROUTES.type_url);
        let cur = self.order.view(
            type_url,
            current(&snap, self.placement, type_url),
            revision,
            routes,
        );
        let changes = self.state.changes(type_url, &cur);
        if changes.is_empty() && self.held(type_url, revision, &cur) {
            return Ok(());
        }
        if changes.is_empty() && !always {
            return Ok(());
        }
        let nonce = self.state.record_sent(type_url, revision, &changes, &cur);
        let counts = (changes.updates.len(), changes.removals.len());
        let node = self.node.as_deref().unwrap_or("");
        self.pushes.sent(
            &self.xds.times,
            (self.peer.id, node),
            type_url,
            revision,
            counts,
        );
        let framed = wire::delta(
            &wire::Head {
                version: snap.version(),
                type_url,
                nonce: &nonce,
                identifier: &self.xds.config.identifier,
            },
            &changes.updates,
            &changes.removals,
        );
        self.out.send(framed).await
    }
}

#[cfg(test)]
mod tests;
