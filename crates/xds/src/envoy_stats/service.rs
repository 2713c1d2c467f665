//! The gRPC `envoy.service.metrics.v3.MetricsService` an Envoy's `metrics_service` stat sink
//! streams to: it takes each message's stats into [`EnvoyStats`] and answers only when the
//! stream ends, as Envoy expects. Served on the xDS port next to ADS ([`crate::server`]), so
//! the Envoy reaches it over the ADS cluster with its TLS and failover. In place of the
//! generated server: over ADS's transport ([`crate::transport`]: bounded buffers), each message
//! decoded lazily ([`super::wire`]: only service clusters' families).
//!
//! A stream ends when the Envoy closes it, when the replica shuts down (so an open stream never
//! holds up graceful shutdown) and when the replica stops serving, so that the Envoy's next
//! flush goes to a replica in contact with the quorum, as its ADS stream does.

use super::totals::Staging;
use super::wire::StatsMessage;
use super::{EnvoyStats, MAX_MESSAGE};
use crate::envoy_select::NodeTraits;
use crate::snapshot::Snapshot;
use crate::transport::{Grpc, Http, Methods, Requests, decode, respond};
use bytes::Bytes;
use concord_tls::XdsTls;
use envoy_types::pb::envoy::service::metrics::v3::stream_metrics_message::Identifier;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};
use tracing::Instrument;

/// The service's gRPC name, and its one method's path.
const SERVICE: &str = "envoy.service.metrics.v3.MetricsService";
const STREAM_PATH: &str = "/envoy.service.metrics.v3.MetricsService/StreamMetrics";

/// The answer at a stream's end: one empty `StreamMetricsResponse`, framed (uncompressed,
/// length 0).
const EMPTY_RESPONSE: [u8; 5] = [0; 5];

/// The longest node id kept for logs: the id comes from the client.
const MAX_NODE_ID: usize = 128;

/// The stats service of one replica.
pub(crate) struct StatsService {
    pub(crate) stats: Arc<EnvoyStats>,
    /// False while this replica is out of contact with the quorum.
    pub(crate) serving: watch::Receiver<bool>,
    /// The server's shutdown.
    pub(crate) shutdown: CancellationToken,
    /// The xDS TLS, whose client certificates name the Envoy when node ids are bound.
    pub(crate) tls: Option<Arc<XdsTls>>,
    /// What is served now: whether a configuration is staged, and to which group.
    pub(crate) snapshots: watch::Receiver<Arc<Snapshot>>,
}

/// The stats service's methods, for [`Grpc`].
#[derive(Clone)]
pub(crate) struct Stats(Arc<StatsService>);

impl Methods for Stats {
    const NAME: &'static str = SERVICE;

    async fn answer(self, req: http::Request<tonic::body::Body>) -> Http {
        if req.uri().path() != STREAM_PATH {
            let path = req.uri().path().to_string();
            return Status::unimplemented(format!("no method {path}")).into_http();
        }
        let answer = self
            .0
            .stream_metrics(decode(req, MAX_MESSAGE))
            .await
            .map(|()| {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                // Cannot fail: the channel is new, with room for one.
                let _ = tx.try_send(Box::new(Ok(Bytes::from_static(&EMPTY_RESPONSE))));
                (rx, None)
            });
        respond(answer)
    }
}

impl StatsService {
    /// The service for the server, taking messages up to [`MAX_MESSAGE`].
    pub(crate) fn into_server(self) -> Grpc<Stats> {
        Grpc(Stats(Arc::new(self)))
    }

    /// The Envoy id the caller's certificate names, if node ids are bound; refused without one,
    /// as ADS refuses it.
    fn bound_id<T>(&self, request: &Request<T>) -> Result<Option<String>, Status> {
        let Some(tls) = self.tls.as_ref().filter(|t| t.binds_node_id()) else {
            return Ok(None);
        };
        let certs = request.peer_certs();
        match certs
            .as_ref()
            .and_then(|c| c.first())
            .and_then(|l| tls.envoy_id(l))
        {
            Some(id) => Ok(Some(id)),
            None => Err(Status::permission_denied(
                "the client certificate names no Envoy of this cluster",
            )),
        }
    }
}

/// Whether a message now is of a staged configuration's group (`traits`: its Envoy's node, from
/// the stream's first message), while one is staged.
fn staging(snapshots: &watch::Receiver<Arc<Snapshot>>, traits: &NodeTraits) -> Option<Staging> {
    let snapshot = snapshots.borrow();
    let staged = snapshot.staged()?;
    Some(Staging {
        at: staged.at,
        in_group: concord_registry::services::select::in_group(&staged.group, traits),
    })
}

/// A client's node id, cut to a length fit for logs.
fn node_id(identifier: Option<&Identifier>) -> Option<String> {
    let id = &identifier?.node.as_ref()?.id;
    let end = id
        .char_indices()
        .nth(MAX_NODE_ID)
        .map_or(id.len(), |(i, _)| i);
    Some(id[..end].to_string())
}

impl StatsService {
    /// One Envoy's stats stream, to its end.
    async fn stream_metrics(&self, request: Request<Requests<StatsMessage>>) -> Result<(), Status> {
        let bound = self.bound_id(&request)?;
        let Some(_slot) = self.stats.open() else {
            return Err(Status::resource_exhausted(
                "too many stats streams open on this replica",
            ));
        };
        let mut serving = self.serving.clone();
        if !*serving.borrow_and_update() {
            return Err(Status::unavailable(
                "this replica is out of contact with the cluster's quorum; try another",
            ));
        }
        let span = tracing::debug_span!(
            "envoy stats",
            peer = ?request.remote_addr(),
            node = tracing::field::Empty
        );
        if let Some(n) = &bound {
            span.record("node", n.as_str());
        }
        let mut messages = request.into_inner();
        let stats = self.stats.clone();
        let shutdown = self.shutdown.clone();
        let snapshots = self.snapshots.clone();
        async move {
            let mut node = bound;
            // What selectors see of the Envoy: its first message's node (none named: of no
            // group).
            let mut traits = None;
            let mut received = 0u64;
            let mut watching = true;
            let end = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break "replica shutting down",
                    r = serving.changed(), if watching => match r {
                        Ok(()) if !*serving.borrow_and_update() => break "replica stopped serving",
                        Ok(()) => {}
                        // No one can change it any more: it stays as it is.
                        Err(_) => watching = false,
                    },
                    m = messages.next() => match m {
                        Some(Ok(m)) => {
                            if node.is_none() {
                                // Only the first message names the Envoy.
                                node = node_id(m.identifier.as_ref());
                                if let Some(n) = &node {
                                    tracing::Span::current().record("node", n.as_str());
                                }
                            }
                            if traits.is_none() {
                                let n = m.identifier.as_ref().and_then(|i| i.node.as_ref());
                                traits = Some(n.map(NodeTraits::of).unwrap_or_default());
                            }
                            received += 1;
                            let staging = traits.as_ref().and_then(|t| staging(&snapshots, t));
                            stats.record(&m.families, staging);
                        }
                        None => break "Envoy closed the stream",
                        Some(Err(status)) => {
                            tracing::debug!(%status, received, "stats stream failed");
                            return Err(status);
                        }
                    },
                }
            };
            tracing::debug!(received, end, "stats stream ended");
            Ok(())
        }
        .instrument(span)
        .await
    }
}
