//! The state-of-the-world driver of one ADS stream (`StreamAggregatedResources`): runs
//! [`StreamState`] against the replica's latest snapshot. It answers requests, pushes new
//! revisions to the types the Envoy subscribed to (in the type table's order: clusters before
//! listeners), waits (up to the catch-up timeout) rather than answer an Envoy that holds a newer
//! revision than this replica, and ends with UNAVAILABLE when the replica stops serving or at the
//! maximum stream age (DESIGN rules 3–6).
//!
//! Reads requests from any [`Inbound`] stream and writes framed responses into a channel; the
//! service feeds it from HTTP/2, the tests from a channel.

use super::order::{self, Order, TypeInfo};
use super::{End, Event, Inbound, Lifetime, Outbox, Peer, Shared, Tx, finish, hello, served};
use crate::protocol::sotw::{Decision, StreamState, parse_version};
use crate::push::Pushes;
use crate::resource_type;
use crate::resource_type::{Placement, ROUTES};
use crate::snapshot::Snapshot;
use crate::wire;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::Status;

/// One state-of-the-world stream.
pub(crate) struct SotwStream {
    xds: Arc<Shared>,
    peer: Peer,
    out: Outbox,
    state: StreamState,
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
    /// Make before break: clusters kept for the routes, routes held for new clusters.
    order: Order,
}

impl Drop for SotwStream {
    /// A stream dropped before it finished is no longer listed: the response body that runs the
    /// driver goes when the Envoy resets the stream or its connection is gone. (After
    /// [`finish`], this finds nothing left to do.)
    fn drop(&mut self) {
        self.xds.envoys.disconnected(self.peer.id);
    }
}

impl SotwStream {
    /// A stream of `peer` that sends its responses into `tx`.
    pub(crate) fn new(xds: Arc<Shared>, peer: Peer, tx: Tx) -> SotwStream {
        let placement = Placement::from(xds.snapshots.borrow().default_listener_addr());
        SotwStream {
            placement,
            traits: Default::default(),
            snapshots: xds.snapshots.clone(),
            xds,
            peer,
            out: Outbox::new(tx),
            state: StreamState::new(),
            node: None,
            pushes: Pushes::default(),
            warned_unknown: false,
            order: Order::default(),
        }
    }

    /// Serves the stream until it ends; the last thing sent is the status that ends it, if any.
    pub(crate) async fn run(mut self, mut inbound: impl Inbound<DiscoveryRequest>) {
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
        Box::pin(finish(&self.xds, stream, &mut self.out, end, "ADS")).await;
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

    /// Whether routes may be pushed: the clusters new to this Envoy are warm (a
    /// state-of-the-world Envoy is sent every load assignment, so it holds each one).
    fn routes_may_go(&mut self) -> bool {
        let types = self.state.types();
        self.order
            .routes_may_go(|t| types.get(t).map(|t| TypeInfo::from(&**t)), |_| true)
    }

    async fn on_request(&mut self, mut req: DiscoveryRequest) -> Result<(), End> {
        if self.node.is_none() {
            let (id, placement, traits) = hello(
                &self.xds,
                &self.peer,
                req.node.take(),
                "SotW",
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
        let current = self.snapshots.borrow().revision();
        let error = req.error_detail.as_ref().map(|e| e.message.as_str());
        let nacked_before = self.xds.envoys.nacked_before(self.node_id(), &req.type_url);
        if req.response_nonce.is_empty() {
            let had = parse_version(&req.version_info).unwrap_or(0);
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
                    .acked(&x.envoys, &x.times, &req.type_url, version);
                if req.type_url == ROUTES.type_url {
                    self.order.routes_acked(version);
                }
            }
            Decision::Nacked { version, message } => {
                let node = self.node.as_deref().unwrap_or("");
                self.pushes.nacked(
                    &self.xds.envoys,
                    self.peer.id,
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
        let mut stale = self.state.stale_types(current);
        // A state-of-the-world Envoy is sent every load assignment, so it holds each one.
        resource_type::push_order(&mut stale);
        for type_url in stale {
            // Decided after the clusters of this revision went out: they may be new.
            if type_url == ROUTES.type_url && !self.routes_may_go() {
                continue;
            }
            self.send(&type_url).await?;
        }
        // Clusters kept for routes the Envoy has since replaced: removed now.
        let resend = self
            .order
            .take_resend(|t| self.state.types().get(t).is_some_and(|t| t.pending()));
        for type_url in resend {
            self.send(&type_url).await?;
        }
        Ok(())
    }

    async fn send(&mut self, type_url: &str) -> Result<(), End> {
        let snapshot = Snapshot::for_envoy(&self.snapshots.borrow(), &self.traits);
        let mut resources = resource_type::sotw(&snapshot, type_url, self.placement);
        if order::keeps(type_url) {
            let by_name = resource_type::delta(&snapshot, type_url, self.placement);
            let routes = self.info(ROUTES.type_url);
            self.order
                .view(type_url, by_name, snapshot.revision(), routes);
            let kept = self.order.kept_resources(type_url);
            if !kept.is_empty() {
                resources = resources.iter().cloned().chain(kept).collect();
            }
        }
        let nonce = self.state.record_sent(type_url, snapshot.revision());
        let counts = (resources.len(), 0);
        let node = self.node.as_deref().unwrap_or("");
        self.pushes.sent(
            &self.xds.times,
            (self.peer.id, node),
            type_url,
            snapshot.revision(),
            counts,
        );
        let framed = wire::sotw(
            &wire::Head {
                version: snapshot.version(),
                type_url,
                nonce: &nonce,
                identifier: &self.xds.config.identifier,
            },
            &resources,
        );
        self.out.send(framed).await
    }
}

#[cfg(test)]
mod tests;
