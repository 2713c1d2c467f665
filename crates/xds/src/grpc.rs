//! The ADS service's gRPC framing, in place of the generated tonic server: requests are decoded
//! by tonic as usual, but each response is encoded by its stream's task into a buffer of exactly
//! its size ([`crate::wire`]), handed to HTTP/2 and freed once written.
//!
//! Why not tonic's encoder: it encodes a stream's messages into one buffer that it keeps for
//! the life of the stream, at the size of the largest message it ever sent. An Envoy's first
//! response carries every resource (about 220 KiB at 1000 builders in sni-cluster mode), so
//! every connected Envoy held a copy of the whole registry for as long as it stayed connected:
//! 224 MiB of the replica's 260 MiB heap with 1000 simulated Envoys (heaptrack, `load-xds`).

use crate::server::XdsService;
use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::sync::mpsc;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder, Streaming};
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

/// What a stream's task hands its response body: a message already framed, or the status that
/// ends the stream (boxed: the channel's slots are allocated per stream, at the item's size).
pub(crate) type Out = Result<Bytes, Box<Status>>;

/// The receiving end of a stream's responses.
pub(crate) type Responses = mpsc::Receiver<Out>;

/// The channel from a stream's task to its response body. Small: the task waits for HTTP/2 to
/// take each response, so a slow Envoy holds at most a few encoded responses.
pub(crate) fn responses() -> (mpsc::Sender<Out>, Responses) {
    mpsc::channel(4)
}

/// ADS over HTTP/2, for `tonic::transport::Server::add_service`.
#[derive(Clone)]
pub(crate) struct AdsGrpc(pub(crate) Arc<XdsService>);

impl NamedService for AdsGrpc {
    const NAME: &'static str = SERVICE;
}

type Http = http::Response<tonic::body::Body>;

impl tower_service::Service<http::Request<tonic::body::Body>> for AdsGrpc {
    type Response = Http;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Http, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move {
            if let Some(status) = unsupported_encoding(req.headers()) {
                return Ok(status.into_http());
            }
            Ok(match req.uri().path() {
                SOTW_PATH => respond(svc.sotw(decode::<DiscoveryRequest>(req))),
                DELTA_PATH => respond(svc.delta(decode::<DeltaDiscoveryRequest>(req))),
                other => Status::unimplemented(format!("no method {other}")).into_http(),
            })
        })
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

/// The request as a stream of messages, decoded by tonic.
fn decode<T>(req: http::Request<tonic::body::Body>) -> Request<Streaming<T>>
where
    T: prost::Message + Default + Send + 'static,
{
    let decoder = Decode::<T>(PhantomData);
    Request::from_http(
        req.map(|body| Streaming::new_request(decoder, body, None, Some(MAX_REQUEST))),
    )
}

/// prost decoding, as tonic's, with a smaller first buffer: an Envoy's requests are mostly ACKs
/// of a few hundred bytes, and the buffer lives as long as the stream.
struct Decode<T>(PhantomData<T>);

impl<T: prost::Message + Default> Decoder for Decode<T> {
    type Item = T;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<T>, Status> {
        T::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding a request: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(1024, 32 * 1024)
    }
}

/// A stream's answer as an HTTP response: a refusal as a trailers-only response, else a body of
/// the stream's framed messages.
fn respond(answer: Result<Responses, Status>) -> Http {
    let rx = match answer {
        Ok(rx) => rx,
        Err(status) => return status.into_http(),
    };
    let mut http = http::Response::new(tonic::body::Body::new(Frames { rx, done: false }));
    http.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    http
}

/// A stream's responses as an HTTP/2 body: each framed message as it comes, then trailers with
/// the stream's end status.
struct Frames {
    rx: Responses,
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
        let status = match ready!(self.rx.poll_recv(cx)) {
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
