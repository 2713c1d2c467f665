//! The gRPC transport of the services on the xDS port, in place of the generated tonic servers:
//! [`Grpc`] makes a tower service of any [`Methods`] (ADS here, [`Ads`], which routes the two ADS
//! methods to [`XdsService`]; the stats sink's in [`crate::envoy_stats`]), decodes each request body
//! into a stream of messages ([`Requests`], whose buffer shrinks back after a large request),
//! and sends the response body as the driver's already-framed messages ([`crate::wire::Out`]),
//! each handed to HTTP/2 and freed once written.
//!
//! Why not tonic's encoder: it encodes a stream's messages into one buffer that it keeps for
//! the life of the stream, at the size of the largest message it ever sent. An Envoy's first
//! response carries every resource (about 220 KiB at 1000 builders in sni-cluster mode), so
//! every connected Envoy held a copy of the whole registry for as long as it stayed connected:
//! 224 MiB of the replica's 260 MiB heap with 1000 simulated Envoys (heaptrack, `load-xds`).
//!
//! Used by the server ([`crate::server`]); calls the service below it.

use crate::service::{Driver, XdsService};
use crate::stream::Responses;
use bytes::{Buf, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use http::{HeaderMap, HeaderValue};
use http_body::{Body as _, Frame};
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio_stream::{Stream, StreamExt};
use tonic::server::NamedService;
use tonic::{Request, Status};

/// The service's gRPC name.
const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Largest request accepted from an Envoy (a reconnecting delta Envoy lists every resource it
/// holds, with its version).
const MAX_REQUEST: usize = 16 * 1024 * 1024;

pub(crate) type Http = http::Response<tonic::body::Body>;

/// A gRPC service on this transport: its name, and the answer to a request for one of its
/// methods (an uncompressed one: [`Grpc`] refuses the others).
pub(crate) trait Methods: Clone + Send + Sync + 'static {
    /// The service's gRPC name.
    const NAME: &'static str;

    /// The answer to `req`, whose path names the method.
    fn answer(self, req: http::Request<tonic::body::Body>) -> impl Future<Output = Http> + Send;
}

/// [`Methods`] as a tower service over HTTP/2, for `tonic::transport::Server::add_service`.
#[derive(Clone)]
pub(crate) struct Grpc<M>(pub(crate) M);

impl<M: Methods> NamedService for Grpc<M> {
    const NAME: &'static str = M::NAME;
}

impl<M: Methods> tower_service::Service<http::Request<tonic::body::Body>> for Grpc<M> {
    type Response = Http;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Http, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let methods = self.0.clone();
        Box::pin(async move {
            if let Some(status) = unsupported_encoding(req.headers()) {
                return Ok(status.into_http());
            }
            Ok(methods.answer(req).await)
        })
    }
}

/// ADS.
#[derive(Clone)]
pub(crate) struct Ads(pub(crate) Arc<XdsService>);

impl Methods for Ads {
    const NAME: &'static str = SERVICE;

    async fn answer(self, req: http::Request<tonic::body::Body>) -> Http {
        let svc = self.0;
        match req.uri().path() {
            SOTW_PATH => match screen(&svc, decode::<DiscoveryRequest>(req, MAX_REQUEST)).await {
                Ok(req) => respond(svc.sotw(req).map(|(rx, d)| (rx, Some(d)))),
                Err(status) => status.into_http(),
            },
            DELTA_PATH => {
                match screen(&svc, decode::<DeltaDiscoveryRequest>(req, MAX_REQUEST)).await {
                    Ok(req) => respond(svc.delta(req).map(|(rx, d)| (rx, Some(d)))),
                    Err(status) => status.into_http(),
                }
            }
            other => Status::unimplemented(format!("no method {other}")).into_http(),
        }
    }
}

/// A request that names its Envoy (the first of a stream does).
pub(crate) trait Named {
    /// The Envoy's node.
    fn node(&self) -> Option<&envoy_types::pb::envoy::config::core::v3::Node>;
}

impl Named for DiscoveryRequest {
    fn node(&self) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        self.node.as_ref()
    }
}

impl Named for DeltaDiscoveryRequest {
    fn node(&self) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        self.node.as_ref()
    }
}

/// How long a replica that serves only some Envoys (`--serve-envoys`) waits for a stream's
/// first request, which names the Envoy, before refusing the stream.
const FIRST_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// On a replica that serves only some Envoys, reads the stream's first request before
/// answering anything, and refuses a stream of any other Envoy with a trailers-only
/// UNAVAILABLE: Envoy counts that as a gateway failure of this replica and its next attempt
/// goes to another (the bootstrap's outlier detection), where a refusal after response headers
/// would only be retried here. Every other replica answers at once, as before.
async fn screen<T: prost::Message + Default + Named>(
    svc: &XdsService,
    req: Request<Requests<T>>,
) -> Result<Request<Peeked<T>>, Status> {
    let served = &svc.xds.config.served_envoys;
    if served.0.is_empty() {
        return Ok(req.map(|rest| Peeked { first: None, rest }));
    }
    let (meta, ext, mut rest) = req.into_parts();
    let first = match tokio::time::timeout(FIRST_REQUEST_TIMEOUT, rest.next()).await {
        Ok(first) => first,
        Err(_) => {
            return Err(Status::deadline_exceeded(
                "no first request; send one at once",
            ));
        }
    };
    if let Some(Ok(r)) = &first {
        let node = r.node().cloned().unwrap_or_default();
        if !served.serves(&node) {
            tracing::info!(node = %node.id, cluster = %node.cluster,
                "sent on an Envoy outside the groups this replica serves");
            return Err(Status::unavailable(format!(
                "this replica serves only Envoys of {} (--serve-envoys); try another replica",
                served.describe()
            )));
        }
    }
    Ok(Request::from_parts(meta, ext, Peeked { first, rest }))
}

/// A stream's requests with the first one already read (by [`screen`]), if it was.
pub(crate) struct Peeked<T> {
    first: Option<Result<T, Status>>,
    rest: Requests<T>,
}

// Never pinned structurally: the held request is moved out whole.
impl<T> Unpin for Peeked<T> {}

impl<T: prost::Message + Default> Stream for Peeked<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(first));
        }
        Pin::new(&mut self.rest).poll_next(cx)
    }
}

/// Compressed requests are refused, as the generated server refuses them when compression is
/// not enabled (Envoy does not compress ADS).
fn unsupported_encoding(headers: &HeaderMap) -> Option<Status> {
    let encoding = headers.get("grpc-encoding")?;
    (encoding != "identity").then(|| {
        Status::unimplemented(format!(
            "grpc-encoding {encoding:?} is not supported; send uncompressed messages"
        ))
    })
}

/// The request as a stream of messages, each at most `limit` bytes.
pub(crate) fn decode<T>(
    req: http::Request<tonic::body::Body>,
    limit: usize,
) -> Request<Requests<T>> {
    Request::from_http(req.map(|body| Requests {
        body,
        limit,
        buf: BytesMut::new(),
        ended: false,
        message: PhantomData,
    }))
}

/// A buffer this large or larger is dropped once it is empty (see [`Requests`]).
const KEEP: usize = 16 * 1024;

/// An Envoy's requests, decoded from the HTTP/2 body. Like tonic's decoder, except that the
/// buffer does not keep the size of the largest request: a delta Envoy that reconnects lists
/// every resource it holds (about 600 KB at 10000 builders), and every stream of a fleet that
/// failed over would keep that much for as long as it lives. Nor does it reserve what a
/// message's prefix declares before the bytes arrive, so a client's memory here is what it
/// sent.
pub(crate) struct Requests<T> {
    body: tonic::body::Body,
    /// The largest message taken.
    limit: usize,
    buf: BytesMut,
    /// The body has ended.
    ended: bool,
    message: PhantomData<fn() -> T>,
}

impl<T: prost::Message + Default> Stream for Requests<T> {
    type Item = Result<T, Status>;

    /// The next request; `None` when the Envoy has closed its side. What was read stays in the
    /// buffer until a whole message is there, so dropping a pending `next` loses nothing.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(message) = self.buffered().transpose() {
                return Poll::Ready(Some(message));
            }
            if self.ended {
                return Poll::Ready(match self.buf.is_empty() {
                    true => None,
                    false => Some(Err(Status::invalid_argument(
                        "the request stream ended inside a message",
                    ))),
                });
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(status)) => return Poll::Ready(Some(Err(status))),
                None => self.ended = true,
            }
        }
    }
}

impl<T: prost::Message + Default> Requests<T> {
    /// A whole message from the buffer, if there is one.
    fn buffered(&mut self) -> Result<Option<T>, Status> {
        let Some(prefix) = self.buf.get(..5) else {
            return Ok(None);
        };
        if prefix[0] != 0 {
            return Err(Status::unimplemented(
                "compressed requests are not supported; send uncompressed messages",
            ));
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.limit {
            return Err(Status::out_of_range(format!(
                "a request of {len} bytes; at most {} are accepted",
                self.limit
            )));
        }
        if self.buf.len() < 5 + len {
            // Nothing reserved for the declared length: a client may declare 16 MiB and send
            // 5 bytes. The buffer grows only with what arrives.
            return Ok(None);
        }
        let message = T::decode(&self.buf[5..5 + len])
            .map_err(|e| Status::invalid_argument(format!("decoding a request: {e}")))?;
        self.buf.advance(5 + len);
        if self.buf.is_empty() && self.buf.capacity() >= KEEP {
            self.buf = BytesMut::new();
        }
        Ok(Some(message))
    }
}

/// A stream's answer as an HTTP response: a refusal as a trailers-only response, else a body of
/// the stream's framed messages, which runs the stream's driver if it has one.
pub(crate) fn respond(answer: Result<(Responses, Option<Driver>), Status>) -> Http {
    let (rx, driver) = match answer {
        Ok(accepted) => accepted,
        Err(status) => return status.into_http(),
    };
    let body = Frames {
        rx,
        driver,
        done: false,
    };
    let mut http = http::Response::new(tonic::body::Body::new(body));
    http.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    http
}

/// A stream's responses as an HTTP/2 body: each framed message as it comes, then trailers with
/// the stream's end status. Polling it runs the stream's driver first, until the driver ends
/// (dropping the body drops the driver: the Envoy reset the stream, or the connection is gone).
struct Frames {
    rx: Responses,
    driver: Option<Driver>,
    done: bool,
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(driver) = self.driver.as_mut()
            && driver.as_mut().poll(cx).is_ready()
        {
            // Its sender is gone with it: what it sent is read below, then the end.
            self.driver = None;
        }
        let status = match ready!(self.rx.poll_recv(cx)).map(|out| *out) {
            Some(Ok(framed)) => return Poll::Ready(Some(Ok(Frame::data(framed)))),
            Some(Err(status)) => *status,
            None => Status::ok(""),
        };
        self.done = true;
        let mut trailers = HeaderMap::new();
        status.add_header(&mut trailers)?;
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    use prost::Message;
    use std::collections::VecDeque;
    use tokio_stream::StreamExt;

    /// A request body that yields the given chunks.
    struct Chunks(VecDeque<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    /// A request body that yields the given chunks, then nothing more, ever (the client has
    /// stopped sending but not closed its side).
    struct Stalls(VecDeque<Bytes>);

    impl http_body::Body for Stalls {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            match self.0.pop_front() {
                Some(c) => Poll::Ready(Some(Ok(Frame::data(c)))),
                None => Poll::Pending,
            }
        }
    }

    fn framed(m: &DeltaDiscoveryRequest) -> Vec<u8> {
        let mut out = vec![0];
        out.extend((m.encoded_len() as u32).to_be_bytes());
        out.extend(m.encode_to_vec());
        out
    }

    fn requests(chunks: Vec<Vec<u8>>) -> Requests<DeltaDiscoveryRequest> {
        let body = tonic::body::Body::new(Chunks(chunks.into_iter().map(Bytes::from).collect()));
        decode(http::Request::new(body), MAX_REQUEST).into_inner()
    }

    fn request(type_url: &str, held: usize) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.into(),
            initial_resource_versions: (0..held)
                .map(|i| {
                    (
                        format!("builder-{i}.builders.example.com"),
                        format!("{i:016x}"),
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn requests_split_or_joined_in_any_way_decode_and_a_large_buffer_is_let_go() {
        let (a, b, c) = (request("a", 0), request("b", 2000), request("c", 1));
        let mut bytes = framed(&a);
        bytes.extend(framed(&b));
        bytes.extend(framed(&c));
        // Cut into odd pieces: the prefix, messages and chunks never line up.
        let chunks: Vec<Vec<u8>> = bytes.chunks(7919).map(<[u8]>::to_vec).collect();
        assert!(chunks.len() > 3);
        let mut r = requests(chunks);
        assert_eq!(r.next().await.transpose().unwrap(), Some(a));
        let got = r.next().await.unwrap().unwrap();
        assert_eq!(got, b);
        assert!(framed(&b).len() > KEEP, "the test needs a large request");
        assert_eq!(r.next().await.transpose().unwrap(), Some(c));
        assert!(r.buf.capacity() < KEEP, "kept {} bytes", r.buf.capacity());
        assert!(r.next().await.is_none());
    }

    #[tokio::test]
    async fn bad_request_streams_are_errors() {
        let whole = framed(&request("a", 3));
        let mut compressed = whole.clone();
        compressed[0] = 1;
        let mut huge = whole.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        let truncated = whole[..whole.len() - 1].to_vec();
        let garbage = vec![0, 0, 0, 0, 2, 0xff, 0xff];
        for (chunks, code) in [
            (vec![compressed], tonic::Code::Unimplemented),
            (vec![huge], tonic::Code::OutOfRange),
            (vec![truncated], tonic::Code::InvalidArgument),
            (vec![garbage], tonic::Code::InvalidArgument),
        ] {
            let err = requests(chunks).next().await.unwrap().unwrap_err();
            assert_eq!(err.code(), code, "{err:?}");
        }
    }

    #[tokio::test]
    async fn a_declared_length_reserves_nothing_until_its_bytes_arrive() {
        // A client declares a request of almost 16 MiB and sends 100 bytes of it.
        let mut head = vec![0];
        head.extend(((MAX_REQUEST - 1) as u32).to_be_bytes());
        head.extend([0u8; 100]);
        let body = tonic::body::Body::new(Stalls([Bytes::from(head)].into()));
        let mut r: Requests<DeltaDiscoveryRequest> =
            decode(http::Request::new(body), MAX_REQUEST).into_inner();
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), r.next()).await;
        assert!(waiting.is_err(), "the request is not whole yet");
        assert!(
            r.buf.capacity() < 64 * 1024,
            "{} bytes reserved for 105 received",
            r.buf.capacity()
        );
    }
}
