//! The ADS service: accepts a stream, refuses it while this replica is out of contact with the
//! quorum (DESIGN rule 6), binds it to the Envoy id its client certificate names, and hands it
//! to its protocol's driver ([`crate::stream`]), which the response body runs ([`Driver`]).
//!
//! Called by the transport ([`crate::transport`]) with the decoded request stream; knows
//! nothing of gRPC framing.

use crate::stream::delta::DeltaStream;
use crate::stream::sotw::SotwStream;
use crate::stream::{Inbound, Peer, Responses, Shared, responses};
use concord_telemetry::tasks::Tasks;
use concord_tls::XdsTls;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tonic::{Request, Status};

/// The ADS service: what every stream shares, and the TLS whose client certificates bind Envoy
/// ids.
pub(crate) struct XdsService {
    pub(crate) xds: Arc<Shared>,
    pub(crate) tls: Option<Arc<XdsTls>>,
    /// Tracks each stream's driver, so shutdown waits for the streams to end.
    pub(crate) tasks: Tasks,
}

/// A stream's driver, run by its response body ([`crate::transport`]) in the HTTP/2 stream's
/// own task: a task of its own cost every change a wakeup and a channel hop more, on every
/// stream (issue 17, 10,000 streams a replica). Counted and tracked as task `xds stream`, so a
/// drain still waits for the streams.
pub(crate) type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

impl XdsService {
    /// Accepts a state-of-the-world stream (`StreamAggregatedResources`): its responses and
    /// the driver that makes them.
    pub(crate) fn sotw(
        &self,
        request: Request<impl Inbound<DiscoveryRequest>>,
    ) -> Result<(Responses, Driver), Status> {
        let peer = self.accept(&request)?;
        let (tx, rx) = responses();
        let stream = SotwStream::new(self.xds.clone(), peer, tx);
        let driver = self
            .tasks
            .track("xds stream", stream.run(request.into_inner()));
        Ok((rx, Box::pin(driver)))
    }

    /// Accepts a delta stream (`DeltaAggregatedResources`): its responses and its driver.
    pub(crate) fn delta(
        &self,
        request: Request<impl Inbound<DeltaDiscoveryRequest>>,
    ) -> Result<(Responses, Driver), Status> {
        let peer = self.accept(&request)?;
        let (tx, rx) = responses();
        let stream = DeltaStream::new(self.xds.clone(), peer, tx);
        let driver = self
            .tasks
            .track("xds stream", stream.run(request.into_inner()));
        Ok((rx, Box::pin(driver)))
    }

    /// Who the stream is, or why it is refused.
    fn accept<T>(&self, request: &Request<T>) -> Result<Peer, Status> {
        let bound_id = self.bound_id(request)?;
        if !*self.xds.serving.borrow() {
            return Err(Status::unavailable(
                "this replica is out of contact with the cluster's quorum; try another",
            ));
        }
        Ok(Peer {
            id: self.xds.next_stream.fetch_add(1, Ordering::Relaxed),
            addr: request.remote_addr(),
            bound_id,
        })
    }

    /// The Envoy id the caller's certificate names, if node ids are bound.
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
