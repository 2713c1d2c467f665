//! What the drivers' tests share, as go-control-plane's server tests do with a mock stream: a
//! replica's [`Shared`] state with no server, snapshots built by hand from a registry, requests
//! fed through a channel, and responses read back decoded, with a deadline. No sockets.

use super::{Peer, Shared, responses};
use crate::config::{ReadBarrierFn, XdsConfig};
use crate::resources::ResourceConfig;
use crate::snapshot::Snapshot;
use crate::stream::Responses;
use bytes::Bytes;
use concord_registry::{Batch, Builder, Command, Registry, Source};
use envoy_types::pb::envoy::config::core::v3::Node;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// How long a test waits for a response before it fails.
const DEADLINE: Duration = Duration::from_secs(5);

/// How long a stream whose Envoy is ahead waits here: short, the tests wait it out.
pub(crate) const CATCH_UP: Duration = Duration::from_millis(300);

/// A builder of the test registry.
pub(crate) fn builder(id: &str, port: u16) -> Builder {
    Builder {
        id: id.into(),
        addr: format!("10.0.0.1:{port}").parse().unwrap(),
        sni: format!("{id}.builders.example.com"),
        region: String::new(),
        labels: Default::default(),
        source: Source::Api,
    }
}

/// A node naming an Envoy.
pub(crate) fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.into(),
        ..Default::default()
    })
}

/// One replica's stream side, fed snapshots by hand.
pub(crate) struct Replica {
    pub(crate) xds: Arc<Shared>,
    registry: Registry,
    snapshots: watch::Sender<Arc<Snapshot>>,
    _serving: watch::Sender<bool>,
}

impl Replica {
    /// A replica at revision 1 with builders `b0` and `b1`; `barrier`, if any, is its read
    /// barrier.
    pub(crate) fn new(barrier: Option<ReadBarrierFn>) -> Replica {
        let mut registry = Registry::new();
        let upserts = vec![builder("b0", 443), builder("b1", 443)];
        registry.apply(
            1,
            &Command::new(
                Source::Api,
                Batch {
                    upserts,
                    removes: vec![],
                },
            ),
        );
        let first = Snapshot::build(Arc::new(registry.clone()), ResourceConfig::default());
        let (snapshots, rx) = watch::channel(Arc::new(first));
        let (serving, up) = watch::channel(true);
        let xds = Arc::new(Shared {
            config: XdsConfig {
                identifier: "replica-1".into(),
                catch_up_timeout: CATCH_UP,
                max_stream_age: None,
                resources: ResourceConfig::default(),
                served_envoys: Default::default(),
            },
            times: Arc::new(|_, _| Vec::new()),
            snapshots: rx,
            serving: up,
            envoys: Default::default(),
            next_stream: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            read_barrier: barrier
                .map(|b| crate::barrier::single_flight(b, concord_telemetry::tasks::Tasks::new())),
        });
        Replica {
            xds,
            registry,
            snapshots,
            _serving: serving,
        }
    }

    /// Applies `upserts` at log index `revision` and serves the new snapshot.
    pub(crate) fn apply(&mut self, revision: u64, upserts: Vec<Builder>) {
        self.change(revision, upserts, vec![])
    }

    /// Applies `upserts` and removes the builders `removes` at log index `revision`, and serves
    /// the new snapshot.
    pub(crate) fn change(&mut self, revision: u64, upserts: Vec<Builder>, removes: Vec<&str>) {
        let removes = removes.into_iter().map(String::from).collect();
        let cmd = Command::new(Source::Api, Batch { upserts, removes });
        self.registry.apply(revision, &cmd);
        assert_eq!(
            self.registry.revision(),
            revision,
            "the change changes something"
        );
        let next = self
            .snapshots
            .borrow()
            .next(Arc::new(self.registry.clone()));
        self.snapshots.send_replace(Arc::new(next));
    }

    /// Waits until a stream of Envoy `node_id` is listed as connected: its driver has read its
    /// first request and acted on it up to its first wait.
    pub(crate) async fn connected(&self, node_id: &str) {
        self.until(&format!("{node_id} connected"), |x| {
            x.envoys.list().iter().any(|e| e.node_id == node_id)
        })
        .await
    }

    /// Waits until the drivers have handled `n` NACKs.
    pub(crate) async fn nacked(&self, n: u64) {
        self.until(&format!("{n} NACKs"), |x| x.envoys.nacks_total() >= n)
            .await
    }

    /// Waits until `done` holds of the shared state, within the deadline. A test runs on one
    /// thread, so no driver is mid-step when this returns.
    async fn until(&self, what: &str, done: impl Fn(&Shared) -> bool) {
        let wait = async {
            while !done(&self.xds) {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(DEADLINE, wait)
            .await
            .unwrap_or_else(|_| panic!("not {what} within {DEADLINE:?}"));
    }

    /// A stream's two ends, for a driver to run between.
    pub(crate) fn stream<R>(&self) -> (Envoy<R>, Peer, ReceiverStream<Result<R, Status>>, Tx) {
        let (requests, inbound) = mpsc::channel(16);
        let (tx, responses) = responses();
        let peer = Peer {
            id: self
                .xds
                .next_stream
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            addr: None,
            bound_id: None,
        };
        let envoy = Envoy {
            requests,
            responses,
            unread: VecDeque::new(),
        };
        (envoy, peer, ReceiverStream::new(inbound), tx)
    }
}

/// The gRPC messages of one data frame: each whole, uncompressed, and nothing left over.
fn split(mut frame: Bytes) -> VecDeque<Bytes> {
    let mut messages = VecDeque::new();
    while !frame.is_empty() {
        assert!(frame.len() >= 5, "a partial gRPC prefix");
        assert_eq!(frame[0], 0, "not compressed");
        let len = u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize;
        assert!(frame.len() >= 5 + len, "a partial message");
        let _ = frame.split_to(5);
        messages.push_back(frame.split_to(len));
    }
    assert!(!messages.is_empty(), "an empty data frame");
    messages
}

/// Where a driver sends its responses.
pub(crate) use super::Tx;

/// The Envoy's end of a stream.
pub(crate) struct Envoy<R> {
    requests: mpsc::Sender<Result<R, Status>>,
    responses: Responses,
    /// Messages of a data frame already received and not yet read (a driver joins the
    /// responses of one step into one frame).
    unread: VecDeque<Bytes>,
}

impl<R> Envoy<R> {
    /// Sends a request.
    pub(crate) async fn send(&self, request: R) {
        self.requests
            .send(Ok(request))
            .await
            .unwrap_or_else(|_| panic!("the driver stopped reading"));
    }

    /// The next response, decoded, or the status that ended the stream. Fails the test when
    /// nothing comes within the deadline.
    pub(crate) async fn recv<M: prost::Message + Default>(&mut self) -> Result<M, Status> {
        if self.unread.is_empty() {
            let out = tokio::time::timeout(DEADLINE, self.responses.recv())
                .await
                .unwrap_or_else(|_| panic!("no response within {DEADLINE:?}"))
                .expect("the driver ended without a status");
            self.unread = split((*out).map_err(|s| *s)?);
        }
        Ok(M::decode(self.unread.pop_front().expect("a message")).expect("a response"))
    }

    /// A response the driver has already sent, if any, without waiting: the tests run on one
    /// thread, so a driver that got to run has sent all it was going to.
    pub(crate) fn try_recv<M: prost::Message + Default>(&mut self) -> Option<M> {
        if self.unread.is_empty() {
            let out = self.responses.try_recv().ok()?;
            self.unread = split((*out).ok()?);
        }
        Some(M::decode(self.unread.pop_front()?).expect("a response"))
    }

    /// Closes the Envoy's side and waits for the driver to end the stream.
    pub(crate) async fn close(mut self) {
        drop(self.requests);
        let end = tokio::time::timeout(DEADLINE, self.responses.recv()).await;
        assert!(
            matches!(end, Ok(None)),
            "the stream ended with something more"
        );
    }
}
