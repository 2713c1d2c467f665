//! Scripted ADS clients that send exactly the requests a test asks for: [`Ads`] (state of the
//! world, as node `scripted`) and [`DeltaAds`] (delta, as node `scripted-delta`), to drive the
//! protocol rules, NACKs included, without a real Envoy.

use anyhow::{Context, Result};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// The clusters type URL.
pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// The listeners type URL.
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const T: Duration = Duration::from_secs(20);

/// A scripted ADS stream.
pub struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Ads {
    /// Opens a stream to the replica of `c` whose xDS address is `xds` (over TLS when the
    /// cluster uses it).
    pub async fn open(c: &crate::Cluster, xds: &str) -> Result<Ads, tonic::Status> {
        let channel = c
            .xds_channel(xds, "scripted")
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(8);
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Ads { tx, rx })
    }

    /// Sends a CDS request (an ACK when `nonce` is set, a NACK with `error`).
    pub async fn request(&self, version: &str, nonce: &str, error: Option<&str>) -> Result<()> {
        self.request_type(CDS, version, nonce, error).await
    }

    /// Sends a request of any type.
    pub async fn request_type(
        &self,
        type_url: &str,
        version: &str,
        nonce: &str,
        error: Option<&str>,
    ) -> Result<()> {
        let req = DiscoveryRequest {
            version_info: version.to_string(),
            node: Some(Node {
                id: "scripted".into(),
                ..Default::default()
            }),
            type_url: type_url.into(),
            response_nonce: nonce.to_string(),
            error_detail: error.map(|m| RpcStatus {
                code: 3,
                message: m.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.tx.send(req).await.context("stream closed")
    }

    /// The next response, or the status the stream ended with.
    pub async fn next(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        match tokio::time::timeout(T, self.rx.message()).await {
            Ok(Ok(Some(r))) => Ok(r),
            Ok(Ok(None)) => Err(tonic::Status::ok("stream ended")),
            Ok(Err(s)) => Err(s),
            Err(_) => Err(tonic::Status::deadline_exceeded("no message in 20 s")),
        }
    }
}

/// A scripted delta ADS stream.
pub struct DeltaAds {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl DeltaAds {
    /// Opens a delta stream to the replica of `c` whose xDS address is `xds`.
    pub async fn open(c: &crate::Cluster, xds: &str) -> Result<DeltaAds, tonic::Status> {
        let channel = c
            .xds_channel(xds, "scripted")
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(8);
        let rx = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(DeltaAds { tx, rx })
    }

    /// The first request of a type, holding `held` (name → version).
    pub async fn subscribe(&self, type_url: &str, held: &[(&str, &str)]) -> Result<()> {
        let req = DeltaDiscoveryRequest {
            node: Some(Node {
                id: "scripted-delta".into(),
                ..Default::default()
            }),
            type_url: type_url.into(),
            initial_resource_versions: held
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        self.tx.send(req).await.context("stream closed")
    }

    /// ACKs `r`, or NACKs it with `error`.
    pub async fn answer(&self, r: &DeltaDiscoveryResponse, error: Option<&str>) -> Result<()> {
        let req = DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            error_detail: error.map(|m| RpcStatus {
                code: 3,
                message: m.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.tx.send(req).await.context("stream closed")
    }

    /// The next response, or the status the stream ended with.
    pub async fn next(&mut self) -> Result<DeltaDiscoveryResponse, tonic::Status> {
        match tokio::time::timeout(T, self.rx.message()).await {
            Ok(Ok(Some(r))) => Ok(r),
            Ok(Ok(None)) => Err(tonic::Status::ok("stream ended")),
            Ok(Err(s)) => Err(s),
            Err(_) => Err(tonic::Status::deadline_exceeded("no message in 20 s")),
        }
    }
}

/// The names of the resources a delta response carries.
pub fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}
