//! A real gRPC backend for the services tests: tonic, on a loopback port, serving
//! `concord.echo.v1.Echo` (whose answers name the instance) and the standard gRPC health service
//! (flippable to NOT_SERVING), with knobs to fail calls, and counters of what it served.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Generated code of `proto/echo.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("concord.echo.v1");
}

use proto::echo_server::{Echo, EchoServer};
use proto::{SayReply, SayRequest, StreamRequest};

/// The gRPC service name of the echo service, as health checks and routes name it.
pub const ECHO_SERVICE: &str = "concord.echo.v1.Echo";

#[derive(Debug, Default)]
struct State {
    name: String,
    /// Calls still to fail with UNAVAILABLE.
    fail_next: AtomicU32,
    /// Fail every call with UNAVAILABLE.
    fail_always: AtomicBool,
    /// Milliseconds every `say` takes beyond what it asks for (a slow version).
    slow_ms: AtomicU32,
    /// Calls answered (successfully or not).
    served: AtomicU64,
    /// Calls being answered now.
    in_flight: AtomicU64,
}

struct Service(Arc<State>);

struct InFlight(Arc<State>);

impl InFlight {
    fn new(s: &Arc<State>) -> Self {
        s.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(s.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Service {
    fn admit(&self) -> Result<(), Status> {
        self.0.served.fetch_add(1, Ordering::SeqCst);
        let failing = self.0.fail_always.load(Ordering::SeqCst)
            || self
                .0
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        match failing {
            true => Err(Status::unavailable(format!(
                "{} fails on purpose",
                self.0.name
            ))),
            false => Ok(()),
        }
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<SayReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Service {
    async fn say(&self, req: Request<SayRequest>) -> Result<Response<SayReply>, Status> {
        let _in_flight = InFlight::new(&self.0);
        self.admit()?;
        let r = req.into_inner();
        let delay = r
            .delay_ms
            .saturating_add(self.0.slow_ms.load(Ordering::SeqCst));
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(delay))).await;
        }
        Ok(Response::new(SayReply {
            instance: self.0.name.clone(),
            message: r.message,
        }))
    }

    type StreamStream = ReplyStream;

    async fn stream(
        &self,
        req: Request<StreamRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let in_flight = InFlight::new(&self.0);
        self.admit()?;
        let r = req.into_inner();
        let name = self.0.name.clone();
        let stream = async_stream(name, r.count, r.interval_ms, in_flight);
        Ok(Response::new(Box::pin(stream)))
    }
}

fn async_stream(
    name: String,
    count: u32,
    interval_ms: u32,
    in_flight: InFlight,
) -> impl Stream<Item = Result<SayReply, Status>> + Send {
    let interval = Duration::from_millis(u64::from(interval_ms));
    futures::stream::unfold((0u32, in_flight), move |(i, guard)| {
        let name = name.clone();
        async move {
            if i == count {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            let reply = SayReply {
                instance: name,
                message: format!("{i}"),
            };
            Some((Ok(reply), (i + 1, guard)))
        }
    })
}

/// One running backend instance; stopped on drop.
pub struct GrpcBackend {
    /// Its instance name (in every answer).
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    health: HealthReporter,
    stop: CancellationToken,
}

impl GrpcBackend {
    /// Starts instance `name` on a free loopback port, SERVING.
    pub async fn start(name: &str) -> Result<GrpcBackend> {
        Self::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts instance `name` on `addr`, SERVING.
    pub async fn start_on(name: &str, addr: SocketAddr) -> Result<GrpcBackend> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            name: name.to_string(),
            ..State::default()
        });
        let (health, health_service) = tonic_health::server::health_reporter();
        let backend = GrpcBackend {
            name: name.to_string(),
            addr,
            state: state.clone(),
            health,
            stop: CancellationToken::new(),
        };
        backend.set_serving(true).await;
        let stop = backend.stop.clone();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(EchoServer::new(Service(state)))
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await;
        });
        Ok(backend)
    }

    /// Reports SERVING or NOT_SERVING to health checks (the server as a whole and the echo
    /// service by name).
    pub async fn set_serving(&self, serving: bool) {
        let status = match serving {
            true => ServingStatus::Serving,
            false => ServingStatus::NotServing,
        };
        self.health.set_service_status("", status).await;
        self.health.set_service_status(ECHO_SERVICE, status).await;
    }

    /// Fails the next `n` calls with UNAVAILABLE.
    pub fn fail_next(&self, n: u32) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    /// Fails every call with UNAVAILABLE (or stops doing so).
    pub fn fail_always(&self, on: bool) {
        self.state.fail_always.store(on, Ordering::SeqCst);
    }

    /// Makes every `say` take `ms` milliseconds longer (0: as long as it asks).
    pub fn slow_down(&self, ms: u32) {
        self.state.slow_ms.store(ms, Ordering::SeqCst);
    }

    /// Calls it answered so far.
    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::SeqCst)
    }

    /// Calls it is answering now.
    pub fn in_flight(&self) -> u64 {
        self.state.in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An echo client over TLS: dials `localhost:port` (the server's certificate must name
/// `localhost`), offers ALPN h2, and sends `:authority` `authority`.
pub async fn tls_echo_client(
    port: u16,
    authority: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<proto::echo_client::EchoClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://localhost:{port}"))?
        .origin(format!("https://{authority}").parse()?)
        .connect_timeout(Duration::from_secs(2))
        .connect_with_connector(concord_tls::net::connector(move || config.clone()))
        .await
        .with_context(|| format!("connect to localhost:{port} over TLS"))?;
    Ok(proto::echo_client::EchoClient::new(channel))
}

/// Which instance answered each of `n` calls of `Say` to `addr` with `:authority` `authority`
/// (one channel), by instance.
pub async fn spread(
    addr: SocketAddr,
    authority: &str,
    n: usize,
) -> Result<std::collections::BTreeMap<String, usize>> {
    let mut client = echo_client(addr, authority).await?;
    let mut count = std::collections::BTreeMap::new();
    for _ in 0..n {
        let r = client
            .say(proto::SayRequest {
                message: "x".into(),
                delay_ms: 0,
            })
            .await
            .context("a call through Envoy")?;
        *count.entry(r.into_inner().instance).or_insert(0) += 1;
    }
    Ok(count)
}

/// The certificate (DER) and ALPN protocol a TLS server on `localhost:port` answers with.
pub async fn tls_handshake(
    port: u16,
    config: Arc<rustls::ClientConfig>,
) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let (_, conn) = tls.get_ref();
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no server certificate")?
        .to_vec();
    Ok((cert, conn.alpn_protocol().map(<[u8]>::to_vec)))
}

/// An echo client that sends every call to `addr` (an Envoy listener) with `:authority`
/// `authority`, over plaintext HTTP/2.
pub async fn echo_client(
    addr: SocketAddr,
    authority: &str,
) -> Result<proto::echo_client::EchoClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .origin(format!("http://{authority}").parse()?)
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .with_context(|| format!("connect to {addr}"))?;
    Ok(proto::echo_client::EchoClient::new(channel))
}
