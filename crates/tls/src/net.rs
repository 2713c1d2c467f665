//! The two ends tonic runs over: [`incoming`] accepts TCP connections and completes their TLS
//! handshakes concurrently (a slow or failing client never holds up the others), each with the
//! server config of the moment, so a reloaded certificate serves the next connection; and
//! [`connector`] dials a peer and completes the handshake with a fresh client config each time.
//! An accepted connection's peer is watched by the kernel ([`keepalive`]), not by HTTP/2 PINGs.

use concord_telemetry::tasks::Tasks;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;

/// How long a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An accepted connection idle this long is probed by the kernel ([`keepalive`]).
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Between unanswered keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes after which the connection is closed: a vanished client goes within
/// 30 s, as it did with the HTTP/2 PINGs this replaces.
pub const KEEPALIVE_RETRIES: u32 = 4;
/// Data unacknowledged this long closes the connection too (keepalive probes only an idle one).
const USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Has the kernel notice a client that vanished without closing (its host died, the network
/// between went): TCP keepalive probes on an idle connection and a limit on unacknowledged
/// data. The server's HTTP/2 keepalive did this before, but its timer was looked at on every
/// poll of every connection: 3.5 % of a replica's CPU at 10,000 streams (issue 17), where the
/// kernel's costs nothing until a connection goes quiet. Envoy under concord's bootstrap PINGs
/// the replica itself every second, so it notices a dead replica as before.
pub fn keepalive(tcp: &TcpStream) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(tcp);
    sock.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_RETRIES),
    )?;
    sock.set_tcp_user_timeout(Some(USER_TIMEOUT))
}

/// Accepted and handshaken connections of `listener`, for tonic's `serve_with_incoming*`. `what`
/// names the port in logs. The accept loop and the handshakes under way end when the stream is
/// dropped (the server stopped accepting); all are tasks of `tasks`.
pub fn incoming(
    listener: TcpListener,
    config: impl Fn() -> Arc<ServerConfig> + Send + Sync + 'static,
    what: &'static str,
    tasks: &Tasks,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let handshakes = tasks.clone();
    tasks.spawn("tls accept", async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = tx.closed() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(error) => {
                        tracing::warn!(%error, what, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            if let Err(error) = keepalive(&tcp) {
                tracing::warn!(%error, what, %peer, "cannot set TCP keepalive");
            }
            let acceptor = TlsAcceptor::from(config());
            let tx = tx.clone();
            handshakes.spawn("tls handshake", async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                // A server that stopped accepting does not wait out a slow handshake.
                let done = tokio::select! {
                    _ = tx.closed() => return,
                    r = handshake => r,
                };
                match done {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => refused(what, peer, &error.to_string()),
                    Err(_) => refused(what, peer, "handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

fn refused(what: &'static str, peer: SocketAddr, error: &str) {
    tracing::warn!(what, %peer, error, "refused a TLS connection");
    let m = concord_telemetry::metrics();
    match what {
        "peer" => m.peer_tls_refused.inc(),
        _ => m.xds_tls_refused.inc(),
    }
}

/// A tonic connector that dials `http://host:port` URIs over TCP and TLS with the client config
/// of the moment. The host name dialled is sent as SNI but not checked: the config's verifier
/// decides which certificates pass.
pub fn connector(
    config: impl Fn() -> Arc<ClientConfig> + Clone + Send + Sync + 'static,
) -> impl tower::Service<
    http::Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |uri: http::Uri| {
        let config = config.clone();
        async move {
            let bad = || std::io::Error::other(format!("cannot dial {uri}: no host and port"));
            let host = uri.host().ok_or_else(bad)?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().ok_or_else(bad)?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host)
                .unwrap_or_else(|_| ServerName::try_from("concord").expect("valid name"));
            let tls = TlsConnector::from(config()).connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_accepted_connection_is_watched_by_the_kernel() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        keepalive(&tcp).unwrap();
        let sock = socket2::SockRef::from(&tcp);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
        assert_eq!(sock.tcp_user_timeout().unwrap(), Some(USER_TIMEOUT));
    }
}
