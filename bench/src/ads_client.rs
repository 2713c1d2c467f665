//! A lean simulated Envoy for the load generators: one connection (TLS with a client
//! certificate, or plain), HTTP/2 straight from `h2`, one ADS stream (state of the world or
//! delta) subscribing to clusters and listeners, an ACK of every response as soon as it is
//! decoded, HTTP/2 windows and a keepalive PING every second as Envoy under concord's
//! bootstrap has them.
//!
//! Why not a tonic client: a tonic channel runs four tasks per stream (the buffer, the
//! connection, the request body's pipe and the caller), and 10,000 of them on the replica's own
//! two cores took nearly as much CPU per change as the replica (49 µs per stream and change
//! against its 58), so `load-xds` measured its own scheduling as much as the replica's fan-out. Here one task drives the connection and the
//! stream together; the work per response is what Envoy's is on the wire: read, decrypt,
//! decode, answer.

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use concord_harness::ads::{CDS, LDS};
use concord_harness::grpc_frames::{framed, next_message};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Largest response accepted (a first response carries every resource).
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// HTTP/2 windows as Envoy's defaults (`initial_stream_window_size` and
/// `initial_connection_window_size`, 256 MiB), so the replica may send as it would to Envoy.
const WINDOW: u32 = 256 * 1024 * 1024;

/// The keepalive concord's bootstrap gives Envoy's ADS connection
/// (`connection_keepalive: { interval: 1s }`): an HTTP/2 PING every second, which each
/// replica answers for every Envoy.
pub const KEEPALIVE: Duration = Duration::from_secs(1);

/// One simulated Envoy.
pub struct SimulatedEnvoy {
    /// The replica's xDS address (`host:port`).
    pub addr: String,
    /// TLS (with the client certificate in the config), or plaintext without.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Delta xDS, or state of the world.
    pub delta: bool,
    /// Its node id.
    pub node_id: String,
    /// An HTTP/2 PING this often, as Envoy's keepalive ([`KEEPALIVE`]); none without.
    pub keepalive: Option<Duration>,
}

impl SimulatedEnvoy {
    /// Opens its TCP connection to the replica (apart from [`SimulatedEnvoy::run`], so a
    /// generator can connect one after another: 10,000 connects at once overflow the
    /// replica's accept queue, and the kernel resets them).
    pub async fn connect(&self) -> Result<TcpStream> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }

    /// Over `tcp` (from [`SimulatedEnvoy::connect`]), subscribes and ACKs every response until
    /// the stream ends, calling `acked` with each response's type and revision once its ACK is
    /// handed to HTTP/2. Returns when the replica ends the stream (an error says how).
    pub async fn run(&self, tcp: TcpStream, mut acked: impl FnMut(&str, u64) + Send) -> Result<()> {
        match &self.tls {
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .context("TLS handshake")?;
                self.stream(tls, &mut acked).await
            }
            None => self.stream(tcp, &mut acked).await,
        }
    }

    async fn stream(
        &self,
        io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
        acked: &mut (impl FnMut(&str, u64) + Send),
    ) -> Result<()> {
        let (send, mut conn) = h2::client::Builder::new()
            .initial_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .handshake::<_, Bytes>(io)
            .await
            .context("HTTP/2 handshake")?;
        let pings = conn.ping_pong();
        let keepalive = async {
            let (Some(every), Some(mut pings)) = (self.keepalive, pings) else {
                return std::future::pending::<Result<()>>().await;
            };
            // Spread over the interval by node id, as Envoy's jitter spreads a fleet's pings.
            let offset = every.mul_f64(spread(&self.node_id));
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
            loop {
                tick.tick().await;
                pings.ping(h2::Ping::opaque()).await?;
            }
        };
        let path = if self.delta { DELTA_PATH } else { SOTW_PATH };
        let request = http::Request::post(format!("http://{}{path}", self.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())?;
        let node = Node {
            id: self.node_id.clone(),
            cluster: "load".into(),
            ..Default::default()
        };
        let answer = async {
            let mut send = send.ready().await?;
            let (response, mut requests) = send.send_request(request, false)?;
            for type_url in [CDS, LDS] {
                let first = match self.delta {
                    true => framed(&DeltaDiscoveryRequest {
                        node: Some(node.clone()),
                        type_url: type_url.into(),
                        ..Default::default()
                    }),
                    false => framed(&DiscoveryRequest {
                        node: Some(node.clone()),
                        type_url: type_url.into(),
                        ..Default::default()
                    }),
                };
                requests.send_data(first, false)?;
            }
            let response = response.await?;
            if let Some(status) = response.headers().get("grpc-status") {
                // Trailers only: the replica refused the stream.
                bail!(
                    "the stream was refused: grpc-status {status:?}, {:?}",
                    response.headers()
                );
            }
            let mut body = response.into_body();
            let mut buf = BytesMut::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                let _ = body.flow_control().release_capacity(chunk.len());
                buf.extend_from_slice(&chunk);
                while let Some(taken) = next_message(&mut buf, MAX_MESSAGE)? {
                    if taken.compressed {
                        bail!("a compressed response: none was asked for");
                    }
                    let (type_url, revision, ack) = self.ack(taken.message)?;
                    requests.send_data(ack, false)?;
                    acked(&type_url, revision);
                }
            }
            match body.trailers().await? {
                Some(t) => bail!("the stream ended: {t:?}"),
                None => bail!("the stream ended without a status"),
            }
        };
        // The connection is driven in this task, beside the stream: no task of its own.
        tokio::select! {
            r = &mut conn => r.context("connection").and_then(|()| bail!("connection closed")),
            r = answer => r,
            r = keepalive => r.context("keepalive"),
        }
    }

    /// The ACK of one response: its type, its revision and the framed request.
    fn ack(&self, message: Bytes) -> Result<(String, u64, Bytes)> {
        if self.delta {
            let r = DeltaDiscoveryResponse::decode(message)?;
            let revision = r.system_version_info.parse()?;
            let ack = framed(&DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce,
                ..Default::default()
            });
            Ok((r.type_url, revision, ack))
        } else {
            let r = DiscoveryResponse::decode(message)?;
            let revision = r.version_info.parse()?;
            let ack = framed(&DiscoveryRequest {
                type_url: r.type_url.clone(),
                version_info: r.version_info,
                response_nonce: r.nonce,
                ..Default::default()
            });
            Ok((r.type_url, revision, ack))
        }
    }
}

/// Where in an interval a node's timer starts: a fraction in [0, 1) from its id.
fn spread(id: &str) -> f64 {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    (h % 1000) as f64 / 1000.0
}
