//! A recording proxy between one Envoy and one replica's xDS port: TLS and HTTP/2 on both sides,
//! every request forwarded as it is (ADS, health checks, the stats sink), and every ADS message
//! each way decoded as it passes and handed to a [`Sink`] — for the chaos runs' oracle
//! ([`crate::xds_oracle`]), which so sees every response each Envoy received and every ACK.
//!
//! It keeps the replica's failure modes visible to Envoy: each Envoy connection gets its own
//! connection to the replica, made before the Envoy's TLS handshake is accepted (a replica that
//! is down refuses the Envoy too), and when the replica's connection ends, the Envoy's is closed.
//! The proxy presents the replica's own certificate and the Envoy's client certificate, so both
//! ends check identities as they would without it.

use crate::xds_oracle::{At, Protocol, Seen};
use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use concord_tls::xds::{XdsTls, XdsTlsFiles};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Where the proxy hands what it saw, in the order it passed on each stream.
pub type Sink = Arc<dyn Fn(&At, &Seen) + Send + Sync>;

/// The TLS both ends use: the replica's certificate towards Envoy, the Envoy's towards the replica.
pub struct TapTls {
    /// Towards Envoy: the replica's certificate.
    pub server: Arc<rustls::ServerConfig>,
    /// Towards the replica: the Envoy's client certificate, trusting the cluster's CA.
    pub client: Arc<rustls::ClientConfig>,
}

impl TapTls {
    /// From certificate files: the replica's (`node`), the Envoy's (`envoy`), the CA (`ca`).
    /// Towards Envoy it serves what the replica's own xDS port serves ([`XdsTls`]).
    pub fn from_files(ca: &Path, node: (&Path, &Path), envoy: (&Path, &Path)) -> Result<TapTls> {
        let files = XdsTlsFiles {
            cert: node.0.to_path_buf(),
            key: node.1.to_path_buf(),
            client_ca: None,
            bind_node_id: false,
        };
        // The cluster name only labels identity checks of Envoys, which this side does not make.
        let server = XdsTls::new(files, "tap")?.server_config();
        Ok(TapTls {
            server,
            client: crate::pki::client_config(ca, Some(envoy))?,
        })
    }
}

/// Stream ids, unique over every proxy of the process.
static STREAMS: AtomicU64 = AtomicU64::new(1);

/// A running proxy; stopped on drop.
pub struct XdsTap {
    /// Where Envoy connects.
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for XdsTap {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl XdsTap {
    /// Listens on a free loopback port and proxies Envoy `envoy`'s connections to replica
    /// `replica` at `upstream`.
    pub async fn start(
        envoy: &str,
        replica: u64,
        upstream: SocketAddr,
        tls: &TapTls,
        sink: Sink,
    ) -> Result<XdsTap> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let route = Arc::new(Route {
            envoy: envoy.to_string(),
            replica,
            upstream,
            acceptor: tokio_rustls::TlsAcceptor::from(tls.server.clone()),
            connector: tokio_rustls::TlsConnector::from(tls.client.clone()),
            sink,
        });
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                let (route, s) = (route.clone(), s.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = s.cancelled() => {}
                        _ = route.serve(tcp) => {}
                    }
                });
            }
        });
        Ok(XdsTap { addr, stop })
    }
}

struct Route {
    envoy: String,
    replica: u64,
    upstream: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
    sink: Sink,
}

impl Route {
    /// One Envoy connection: its own replica connection first, then the Envoy's TLS, then
    /// requests forwarded until either side ends (dropping the other).
    async fn serve(self: Arc<Self>, tcp: TcpStream) -> Result<()> {
        let up = TcpStream::connect(self.upstream).await?;
        up.set_nodelay(true)?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::from(self.upstream.ip());
        let up = self.connector.connect(name, up).await?;
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .adaptive_window(true)
            .handshake(TokioIo::new(up))
            .await
            .context("HTTP/2 to the replica")?;
        let down = self.acceptor.accept(tcp).await?;
        let route = self.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let (route, mut send) = (route.clone(), send.clone());
            async move {
                let protocol = match req.uri().path() {
                    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources" => {
                        Some(Protocol::Sotw)
                    }
                    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources" => {
                        Some(Protocol::Delta)
                    }
                    _ => None,
                };
                let at = protocol.map(|protocol| {
                    Arc::new(At {
                        envoy: route.envoy.clone(),
                        replica: route.replica,
                        stream: STREAMS.fetch_add(1, Ordering::Relaxed),
                        protocol,
                    })
                });
                let (parts, body) = req.into_parts();
                let tap = |dir| at.clone().map(|at| (at, dir, route.sink.clone()));
                let body = Tapped::new(body, tap(Dir::Request));
                let resp = send
                    .send_request(hyper::Request::from_parts(parts, body))
                    .await?;
                let (parts, body) = resp.into_parts();
                Ok::<_, hyper::Error>(hyper::Response::from_parts(
                    parts,
                    Tapped::new(body, tap(Dir::Response)),
                ))
            }
        });
        let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .adaptive_window(true)
            .serve_connection(TokioIo::new(down), service);
        tokio::select! {
            _ = conn => {}
            _ = served => {}
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Dir {
    Request,
    Response,
}

/// A body passed through unchanged, its gRPC messages decoded on the way when it is ADS's.
struct Tapped {
    inner: Incoming,
    tap: Option<(Arc<At>, Dir, Sink)>,
    buf: BytesMut,
}

impl Tapped {
    fn new(inner: Incoming, tap: Option<(Arc<At>, Dir, Sink)>) -> Tapped {
        Tapped {
            inner,
            tap,
            buf: BytesMut::new(),
        }
    }

    /// Hands every whole gRPC message in the buffer to the sink.
    fn drain(&mut self) {
        let Some((at, dir, sink)) = &self.tap else {
            return;
        };
        // No limit: the proxy passes every message on; the replica and Envoy bound their own.
        while let Ok(Some(taken)) = crate::grpc_frames::next_message(&mut self.buf, usize::MAX) {
            if let Some(seen) = decode(at.protocol, *dir, taken.message) {
                sink(at, &seen);
            }
        }
    }
}

/// The oracle's view of one ADS message (nothing when it does not decode: Envoy or the replica
/// refuses such a message itself, and the stream's own errors show that).
fn decode(protocol: Protocol, dir: Dir, msg: Bytes) -> Option<Seen> {
    Some(match (protocol, dir) {
        (Protocol::Sotw, Dir::Request) => {
            let r = DiscoveryRequest::decode(msg).ok()?;
            Seen::Request {
                type_url: r.type_url,
                version_info: r.version_info,
                response_nonce: r.response_nonce,
                nack: r.error_detail.map(|e| e.message),
            }
        }
        (Protocol::Delta, Dir::Request) => {
            let r = DeltaDiscoveryRequest::decode(msg).ok()?;
            Seen::Request {
                type_url: r.type_url,
                version_info: String::new(),
                response_nonce: r.response_nonce,
                nack: r.error_detail.map(|e| e.message),
            }
        }
        (Protocol::Sotw, Dir::Response) => {
            let r = DiscoveryResponse::decode(msg).ok()?;
            Seen::Response {
                type_url: r.type_url,
                version: r.version_info,
                nonce: r.nonce,
            }
        }
        (Protocol::Delta, Dir::Response) => {
            let r = DeltaDiscoveryResponse::decode(msg).ok()?;
            Seen::Response {
                type_url: r.type_url,
                version: r.system_version_info,
                nonce: r.nonce,
            }
        }
    })
}

impl Body for Tapped {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && this.tap.is_some()
            && let Some(data) = frame.data_ref()
        {
            this.buf.extend_from_slice(data);
            this.drain();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
