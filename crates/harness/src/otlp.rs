//! A real OTLP/gRPC trace receiver for the tests: replicas export to it over the network as they
//! would to a collector, and the test reads back every span with its resource.

use anyhow::{Result, bail};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// One span as received.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// Trace id, hex.
    pub trace_id: String,
    /// Span id, hex.
    pub span_id: String,
    /// Parent span id, hex; empty for a root.
    pub parent_span_id: String,
    /// Span name.
    pub name: String,
    /// Span attributes, values as strings.
    pub attributes: BTreeMap<String, String>,
    /// Resource attributes (`service.name`, …).
    pub resource: BTreeMap<String, String>,
    /// Status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    /// Status message.
    pub status_message: String,
    /// Start, Unix nanoseconds.
    pub start_ns: u64,
    /// End, Unix nanoseconds.
    pub end_ns: u64,
}

impl ReceivedSpan {
    /// An attribute's value, or "".
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }

    /// Duration in milliseconds.
    pub fn millis(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e6
    }
}

/// A running receiver; stops when dropped.
pub struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    stop: CancellationToken,
}

struct Service {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn value(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value(&kv.value)))
        .collect()
}

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = Vec::new();
        for rs in request.into_inner().resource_spans {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| attrs(&r.attributes))
                .unwrap_or_default();
            for s in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                let (status_code, status_message) = s
                    .status
                    .as_ref()
                    .map(|st| (st.code, st.message.clone()))
                    .unwrap_or_default();
                got.push(ReceivedSpan {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    name: s.name.clone(),
                    attributes: attrs(&s.attributes),
                    resource: resource.clone(),
                    status_code,
                    status_message,
                    start_ns: s.start_time_unix_nano,
                    end_ns: s.end_time_unix_nano,
                });
            }
        }
        self.spans.lock().expect("spans").extend(got);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Starts a receiver on a free loopback port.
    pub async fn start() -> Result<Collector> {
        Collector::start_on("127.0.0.1:0".parse()?).await
    }

    /// Starts a receiver on `addr`.
    pub async fn start_on(addr: SocketAddr) -> Result<Collector> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let spans = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let service = TraceServiceServer::new(Service {
            spans: spans.clone(),
        });
        let shutdown = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                eprintln!("OTLP receiver failed: {e}");
            }
        });
        Ok(Collector { addr, spans, stop })
    }

    /// The endpoint to give `--otlp-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("spans").clone()
    }

    /// Every span received since the last call, removed from the receiver.
    pub fn take(&self) -> Vec<ReceivedSpan> {
        std::mem::take(&mut *self.spans.lock().expect("spans"))
    }

    /// The spans of the trace that `root` (a span id) belongs to.
    pub fn trace_of(&self, span_id: &str) -> Result<Vec<ReceivedSpan>> {
        let all = self.spans();
        let Some(s) = all.iter().find(|s| s.span_id == span_id) else {
            bail!("no span {span_id}");
        };
        let trace = s.trace_id.clone();
        Ok(all.into_iter().filter(|s| s.trace_id == trace).collect())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
