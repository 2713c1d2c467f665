//! The stream drivers, one per protocol ([`sotw`], [`delta`]), and the loop both share: what a
//! stream's lifetime is ([`Lifetime`], [`Event`], [`End`]), how its first request names the
//! Envoy ([`hello`]) and how it ends ([`finish`]); and the make-before-break [`order`] of
//! services' clusters and routes they both keep.
//!
//! A driver reads requests from any [`Inbound`] stream and writes framed responses
//! ([`crate::wire::Out`]) into a channel, so the transport feeds it from HTTP/2 and tests feed
//! it from a channel, no sockets. It acts on the pure protocol state ([`crate::protocol`]),
//! reads the resources through the type table ([`crate::resource_type`]) and reports every push
//! to [`crate::push`]; it knows nothing of gRPC framing or of the server above it.

pub(crate) mod delta;
pub(crate) mod order;
pub(crate) mod sotw;

use crate::access_log::{ACCESS_LOG_KEY, AccessLog};
use crate::config::{ReadBarrierFn, RevisionTimesFn, XdsConfig};
use crate::envoys::Envoys;
use crate::resource_type::Placement;
use crate::resources::{LISTENER_ADDRESS_KEY, PORT_OFFSET_KEY};
use crate::snapshot::Snapshot;
use crate::wire::Out;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;

/// An Envoy's requests as a driver reads them: each decoded request, or the error that ends
/// the stream; the stream's end is the Envoy closing its side.
pub(crate) trait Inbound<R>:
    Stream<Item = Result<R, Status>> + Unpin + Send + 'static
{
}

impl<R, S: Stream<Item = Result<R, Status>> + Unpin + Send + 'static> Inbound<R> for S {}

/// The sending end of a stream's responses. Each is boxed: tokio's channel allocates its
/// slots 32 at a time whatever its capacity, and 32 boxes take 256 bytes where 32 responses
/// take 1 KiB, on every stream (issue 17, 10,000 streams a replica).
pub(crate) type Tx = mpsc::Sender<Box<Out>>;

/// The receiving end of a stream's responses.
pub(crate) type Responses = mpsc::Receiver<Box<Out>>;

/// The channel from a stream's driver to its response body. Small: the driver waits for HTTP/2
/// to take each response, so a slow Envoy holds at most a few encoded responses.
pub(crate) fn responses() -> (Tx, Responses) {
    mpsc::channel(4)
}

/// Responses at most this large together are joined into one HTTP/2 data frame.
const JOIN_BELOW: usize = 64 * 1024;

/// Where a driver puts the responses of one step (a request handled, a new snapshot pushed):
/// held until the step ends ([`Outbox::flush`]), and the small ones joined, so a change that
/// moves clusters and listeners reaches the Envoy as one data frame, not two. gRPC frames each
/// message itself, so a data frame may carry several. Without this, the second response of a
/// change went out in a write of its own on about half of 10,000 streams (the connection's task
/// ran on the other core between the two), and the Envoy read it and answered it apart: a
/// system call and a wakeup more per change on each side.
pub(crate) struct Outbox {
    tx: Tx,
    /// The responses of this step so far, joined.
    held: Option<Out>,
}

impl Outbox {
    pub(crate) fn new(tx: Tx) -> Outbox {
        Outbox { tx, held: None }
    }

    /// Adds a response to this step's; one that would make the held frame too large sends the
    /// held one first.
    pub(crate) async fn send(&mut self, out: Out) -> Result<(), End> {
        match (self.held.take(), out) {
            (None, out) => self.held = Some(out),
            (Some(Ok(a)), Ok(b)) if a.len() + b.len() <= JOIN_BELOW => {
                let mut joined = bytes::BytesMut::with_capacity(a.len() + b.len());
                joined.extend_from_slice(&a);
                joined.extend_from_slice(&b);
                self.held = Some(Ok(joined.freeze()));
            }
            (Some(before), out) => {
                self.put(before).await?;
                self.held = Some(out);
            }
        }
        Ok(())
    }

    /// Sends what this step made.
    pub(crate) async fn flush(&mut self) -> Result<(), End> {
        match self.held.take() {
            Some(out) => self.put(out).await,
            None => Ok(()),
        }
    }

    async fn put(&self, out: Out) -> Result<(), End> {
        self.tx.send(Box::new(out)).await.map_err(|_| End::Closed)
    }
}

/// What every stream of a replica shares: settings, the latest snapshot, whether the replica
/// serves, the connected Envoys. The server builds it once.
pub(crate) struct Shared {
    pub(crate) config: XdsConfig,
    pub(crate) times: RevisionTimesFn,
    pub(crate) snapshots: watch::Receiver<Arc<Snapshot>>,
    pub(crate) serving: watch::Receiver<bool>,
    pub(crate) envoys: Envoys,
    pub(crate) next_stream: AtomicU64,
    pub(crate) shutdown: CancellationToken,
    pub(crate) read_barrier: Option<ReadBarrierFn>,
}

/// Who a stream is, as the service accepted it.
pub(crate) struct Peer {
    /// Stream id on this replica.
    pub(crate) id: u64,
    /// Remote address.
    pub(crate) addr: Option<SocketAddr>,
    /// The Envoy id this stream's client certificate names, when ids are bound to certificates.
    pub(crate) bound_id: Option<String>,
}

/// The listener address an Envoy asks for in its node metadata, if any.
pub(crate) fn listener_addr(node: &Node) -> Option<SocketAddr> {
    let fields = &node.metadata.as_ref()?.fields;
    match fields.get(LISTENER_ADDRESS_KEY)?.kind.as_ref()? {
        Kind::StringValue(s) => s.parse().ok(),
        _ => None,
    }
}

/// The services listeners' port offset an Envoy asks for in its node metadata (a number, or a
/// string of one), if any.
pub(crate) fn port_offset(node: &Node) -> Option<i32> {
    let fields = &node.metadata.as_ref()?.fields;
    match fields.get(PORT_OFFSET_KEY)?.kind.as_ref()? {
        Kind::StringValue(s) => s.parse().ok(),
        Kind::NumberValue(n) if n.fract() == 0.0 && n.abs() < 65536.0 => Some(*n as i32),
        _ => None,
    }
}

/// A stream's first request names its Envoy: with Envoy ids bound to certificates, a `node.id`
/// that is not the id the client certificate names ends the stream; else the Envoy is listed
/// as connected, and its `pushes` are recorded in its status from then on. Returns the node id (only the id is kept: a real Envoy's node lists its
/// extensions, kilobytes) and where its listeners go (`default` unless it asks otherwise).
pub(crate) fn hello(
    xds: &Shared,
    peer: &Peer,
    node: Option<Node>,
    kind: &str,
    default: Placement,
    pushes: &mut crate::push::Pushes,
) -> Result<(String, Placement, crate::envoy_select::NodeTraits), End> {
    let node = node.unwrap_or_default();
    let (stream, addr) = (peer.id, peer.addr);
    if let Some(bound) = peer.bound_id.as_deref().filter(|b| *b != node.id) {
        tracing::warn!(stream, node = %node.id, cert = %bound, peer = ?addr,
            "refused an Envoy whose node id is not the one its certificate names");
        return Err(End::Status(Status::permission_denied(format!(
            "node.id {:?} is not the Envoy id {bound:?} that the client certificate names",
            node.id
        ))));
    }
    tracing::info!(stream, node = %node.id, peer = ?addr, "Envoy connected ({kind})");
    let traits = crate::envoy_select::NodeTraits::of(&node);
    pushes.listed(xds.envoys.connected(stream, &node, addr, traits.clone()));
    let placement = Placement {
        listener: listener_addr(&node).unwrap_or(default.listener),
        port_offset: port_offset(&node).unwrap_or(default.port_offset),
        access_log: access_log(&node, stream).unwrap_or(default.access_log),
    };
    Ok((node.id, placement, traits))
}

/// Where an Envoy asks for its listeners' access logs in its node metadata, if it does; an
/// unknown value is logged and means none.
pub(crate) fn access_log(node: &Node, stream: u64) -> Option<AccessLog> {
    let fields = &node.metadata.as_ref()?.fields;
    let Kind::StringValue(s) = fields.get(ACCESS_LOG_KEY)?.kind.as_ref()? else {
        return None;
    };
    match s.parse() {
        Ok(log) => Some(log),
        Err(error) => {
            tracing::warn!(stream, node = %node.id, %error, "ignoring the Envoy's {ACCESS_LOG_KEY}");
            None
        }
    }
}

/// Whether this replica serves `type_url` (it is in the type table). A request for any other
/// type is ignored: no answer, and no state, so a client naming ever new type URLs grows
/// nothing; it is counted, and logged once per stream (`warned`).
pub(crate) fn served(type_url: &str, (stream, node): (u64, &str), warned: &mut bool) -> bool {
    if crate::resource_type::find(type_url).is_some() {
        return true;
    }
    concord_telemetry::metrics().unknown_type_requests.inc();
    if !std::mem::replace(warned, true) {
        tracing::warn!(
            stream,
            node,
            type_url,
            "ignoring requests for a resource type this control plane does not serve"
        );
    }
    false
}

/// What ends a stream from outside, and what wakes it, the same for both protocols.
///
/// Every future here lives as long as the stream: a stream waits on them after every request
/// and every change, and one made afresh each time registers with a notifier that all the
/// replica's streams share, and leaves it again when another branch wins — two locks of the
/// same mutex per wait, from 10,000 streams on both cores at once.
pub(crate) struct Lifetime {
    ends: Ends,
    /// Yields when the snapshot moves (the driver reads it from its own receiver).
    changes: WatchStream<Arc<Snapshot>>,
    /// Waits so far, to look at the ends first now and then.
    waits: u32,
}

/// What ends a stream from outside.
struct Ends {
    /// Completes at the replica's shutdown (a child token: its waiter is this stream's own).
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Completes at the stream's maximum age.
    age: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Completes when this replica stops serving (out of contact with the quorum).
    lost_quorum: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Ends {
    /// The first end that has come, if any (registering this task for the others).
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        if self.shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Closed);
        }
        if self.lost_quorum.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Status(Status::unavailable(
                "this replica lost contact with the cluster's quorum; reconnect to another",
            )));
        }
        if self.age.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Status(Status::unavailable(
                "maximum stream age reached; reconnect",
            )));
        }
        Poll::Pending
    }
}

/// Every this many waits, a stream looks at its ends before its requests: one whose Envoy
/// always has a request ready still ends at shutdown or its maximum age.
const ENDS_FIRST_EVERY: u32 = 32;

/// What a stream does next.
pub(crate) enum Event<R> {
    Request(R),
    /// The snapshot moved: push what is stale.
    Changed,
    End(End),
}

impl Lifetime {
    pub(crate) fn new(xds: &Shared, stream: u64) -> Lifetime {
        let mut serving = xds.serving.clone();
        Lifetime {
            ends: Ends {
                shutdown: Box::pin(xds.shutdown.child_token().cancelled_owned()),
                age: Box::pin(max_age(xds.config.max_stream_age, stream)),
                lost_quorum: Box::pin(async move {
                    let _ = serving.wait_for(|up| !*up).await;
                }),
            },
            changes: WatchStream::from_changes(xds.snapshots.clone()),
            waits: 0,
        }
    }

    /// Waits for the next request, a new snapshot, or the end. After an [`Event::End`] the
    /// stream must stop calling this.
    ///
    /// A request or a change ready now is taken without looking at the ends: they are polled
    /// only when the stream is about to wait (so it is woken when one comes), and every
    /// [`ENDS_FIRST_EVERY`] waits. Polled first on every wait, as they once were, the shutdown
    /// token's lock, the age's timer and the quorum watch cost 5 % of a replica serving 10,000
    /// streams (issue 17).
    pub(crate) async fn next<R>(&mut self, inbound: &mut impl Inbound<R>) -> Event<R> {
        self.waits = self.waits.wrapping_add(1);
        if self.waits.is_multiple_of(ENDS_FIRST_EVERY) {
            let ends = &mut self.ends;
            if let Poll::Ready(end) = std::future::poll_fn(|cx| Poll::Ready(ends.poll(cx))).await {
                return Event::End(end);
            }
        }
        let ends = &mut self.ends;
        tokio::select! {
            biased;
            // Cancel-safe: `next` on an `Unpin` stream loses nothing when another branch wins.
            msg = inbound.next() => match msg {
                Some(Ok(req)) => Event::Request(req),
                None | Some(Err(_)) => Event::End(End::Closed),
            },
            // A change the driver already pushed (after a request) wakes it once more for
            // nothing: it finds nothing stale.
            changed = self.changes.next() => match changed {
                Some(_) => Event::Changed,
                None => Event::End(End::Closed),
            },
            end = std::future::poll_fn(|cx| ends.poll(cx)) => Event::End(end),
        }
    }
}

/// Ends a stream: its Envoy is no longer listed, and a status tells the Envoy why.
pub(crate) async fn finish(
    xds: &Shared,
    (stream, node): (u64, &str),
    out: &mut Outbox,
    end: End,
    kind: &str,
) {
    // What the last step made goes first (it fails only when the Envoy is gone).
    let _ = out.flush().await;
    xds.envoys.disconnected(stream);
    match end {
        End::Status(status) => {
            tracing::info!(
                stream,
                node,
                reason = status.message(),
                "ending {kind} stream"
            );
            let _ = out.put(Err(Box::new(status))).await;
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

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(n: usize) -> Out {
        Ok(Bytes::from(vec![7u8; n]))
    }

    #[tokio::test]
    async fn a_steps_small_responses_go_out_as_one_frame_and_large_ones_apart() {
        let (tx, mut rx) = responses();
        let mut out = Outbox::new(tx);
        out.send(frame(10)).await.ok().unwrap();
        out.send(frame(20)).await.ok().unwrap();
        assert!(rx.try_recv().is_err(), "held until the step ends");
        out.flush().await.ok().unwrap();
        let joined = (*rx.try_recv().unwrap()).unwrap();
        assert_eq!(joined.len(), 30, "both in one frame");
        assert!(rx.try_recv().is_err());

        // Too large to join: the held one goes first, in order.
        out.send(frame(10)).await.ok().unwrap();
        out.send(frame(JOIN_BELOW)).await.ok().unwrap();
        out.flush().await.ok().unwrap();
        assert_eq!((*rx.try_recv().unwrap()).unwrap().len(), 10);
        assert_eq!((*rx.try_recv().unwrap()).unwrap().len(), JOIN_BELOW);

        // A status is never joined: what was held goes, then the status.
        out.send(frame(10)).await.ok().unwrap();
        out.send(Err(Box::new(Status::internal("too large"))))
            .await
            .ok()
            .unwrap();
        out.flush().await.ok().unwrap();
        assert_eq!((*rx.try_recv().unwrap()).unwrap().len(), 10);
        assert!((*rx.try_recv().unwrap()).is_err());
        assert!(out.flush().await.is_ok(), "nothing held: nothing sent");
        assert!(rx.try_recv().is_err());
    }
}
