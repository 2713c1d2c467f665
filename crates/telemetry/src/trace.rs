//! OpenTelemetry traces of registry changes, exported over OTLP/gRPC.
//!
//! One trace follows one change: the poll (or API request) that saw it is the root, the proposal
//! and its commit on the leader are children, the apply on every replica continues the trace from
//! the context carried in the Raft entry ([`Span::inject`] / [`Span::remote_child`]), and each push
//! to an Envoy is a child of that replica's apply, ended by the Envoy's ACK or NACK.
//!
//! Spans are made with the OpenTelemetry API directly rather than through `tracing` spans: a poll
//! span exists only once the poll found a change, so it is started back-dated, and a push span
//! ends on a later request of its stream — neither fits a lexically scoped `tracing` span.
//!
//! Off unless [`init`] is called with an endpoint; then every function here is a cheap no-op.
//! Export never blocks the data path: ended spans go into a bounded queue ([`Span`]'s drop does a
//! `try_send`), a background task exports batches, and spans that find the queue full or whose
//! export fails are counted in `concord_trace_spans_dropped_total`.

use crate::metrics;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// Tracing settings of a replica.
#[derive(Debug, Clone)]
pub struct TraceConfig {
    /// OTLP/gRPC endpoint of the collector, e.g. `http://127.0.0.1:4317`.
    pub endpoint: String,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Share (0–1) of new traces recorded; children follow their root's decision.
    pub sampling_ratio: f64,
    /// This replica's node id, an attribute of every span (`concord.replica`).
    pub replica: u64,
    /// Ended spans waiting for export; more are dropped (and counted).
    pub queue_size: usize,
    /// Timeout of one export call.
    pub export_timeout: Duration,
}

struct Global {
    tracer: SdkTracer,
    replica: i64,
}

static GLOBAL: OnceLock<Global> = OnceLock::new();

/// Spans exported in one call, at most.
const MAX_BATCH: usize = 512;
/// How long the exporter gathers a batch after its first span.
const BATCH_WINDOW: Duration = Duration::from_millis(100);

/// The running exporter; [`Exporter::shutdown`] flushes what is queued.
pub struct Exporter {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Exporter {
    /// Stops taking spans and exports the queued ones, for at most `timeout`.
    pub async fn shutdown(self, timeout: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(timeout, self.task).await.is_err() {
            tracing::warn!("trace export did not finish within {timeout:?}; queued spans lost");
        }
    }
}

/// Why trace export could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The OTLP exporter could not be built for the endpoint.
    #[error("OTLP exporter for {endpoint}: {source}")]
    Exporter {
        /// The configured endpoint.
        endpoint: String,
        /// The exporter's error.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// [`init`] was called before in this process.
    #[error("tracing was already initialised")]
    AlreadyInitialised,
}

/// Starts exporting spans (call once, inside the tokio runtime). Until this is called, and if it
/// fails, tracing stays off.
///
/// The export task is not a tracked task of the replica (`crate::tasks`): it must outlive the
/// drain so the drain's own spans go out; [`Exporter::shutdown`] awaits it.
pub fn init(config: TraceConfig) -> Result<Exporter, TraceError> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(config.endpoint.clone())
        .with_timeout(config.export_timeout)
        .build()
        .map_err(|source| TraceError::Exporter {
            endpoint: config.endpoint.clone(),
            source,
        })?;
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(KeyValue::new(
            "service.instance.id",
            config.replica.to_string(),
        ))
        .build();
    exporter.set_resource(&resource);
    let (tx, rx) = mpsc::channel(config.queue_size.max(1));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(export_loop(exporter, rx, stopped, config.endpoint.clone()));
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sampling_ratio.clamp(0.0, 1.0),
        ))))
        .with_span_processor(QueueProcessor { tx })
        .build();
    let global = Global {
        tracer: provider.tracer("concord"),
        replica: i64::try_from(config.replica).unwrap_or(i64::MAX),
    };
    GLOBAL
        .set(global)
        .map_err(|_| TraceError::AlreadyInitialised)?;
    Ok(Exporter { stop, task })
}

/// Whether spans are being recorded at all.
pub fn enabled() -> bool {
    GLOBAL.get().is_some()
}

/// Hands ended spans to the export task without ever waiting.
#[derive(Debug)]
struct QueueProcessor {
    tx: mpsc::Sender<SpanData>,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.tx.try_send(span).is_err() {
            metrics().spans_dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<SpanData>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    endpoint: String,
) {
    let mut failing = false;
    loop {
        let first = tokio::select! {
            s = rx.recv() => s,
            _ = stop.wait_for(|s| *s) => None,
        };
        let stopping = first.is_none();
        let mut batch: Vec<SpanData> = first.into_iter().collect();
        if stopping {
            while let Ok(s) = rx.try_recv() {
                batch.push(s);
            }
        } else {
            let window = tokio::time::sleep(BATCH_WINDOW);
            tokio::pin!(window);
            while batch.len() < MAX_BATCH {
                tokio::select! {
                    s = rx.recv() => match s {
                        Some(s) => batch.push(s),
                        None => break,
                    },
                    _ = &mut window => break,
                }
            }
        }
        for chunk in batch.chunks(MAX_BATCH) {
            let n = chunk.len() as u64;
            match exporter.export(chunk.to_vec()).await {
                Ok(()) => {
                    metrics().spans_exported.add(n);
                    if failing {
                        tracing::info!(%endpoint, "trace export works again");
                        failing = false;
                    }
                }
                Err(error) => {
                    metrics().spans_dropped.add(n);
                    if !failing {
                        tracing::warn!(%endpoint, %error, "trace export failed; dropping spans until it works");
                        failing = true;
                    }
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// A reference to a recorded span, to start children of it later (e.g. pushes of a revision).
#[derive(Debug, Clone)]
pub struct SpanRef(SpanContext);

/// One span of a change's trace, or nothing when tracing is off. Ends when dropped (status
/// unset) or by [`Span::ok`] / [`Span::fail`].
#[derive(Default)]
pub struct Span(Option<opentelemetry_sdk::trace::Span>);

impl Span {
    fn start(name: &'static str, parent: &Context, start: Option<SystemTime>) -> Span {
        let Some(g) = GLOBAL.get() else {
            return Span(None);
        };
        let mut builder = g
            .tracer
            .span_builder(name)
            .with_attributes([KeyValue::new("concord.replica", g.replica)]);
        if let Some(t) = start {
            builder = builder.with_start_time(t);
        }
        Span(Some(builder.start_with_context(&g.tracer, parent)))
    }

    /// A new trace, started at `start` (a span begun before it was known to be worth one).
    pub fn root(name: &'static str, start: SystemTime) -> Span {
        Span::start(name, &Context::new(), Some(start))
    }

    /// A child of this span, starting now.
    pub fn child(&self, name: &'static str) -> Span {
        match &self.0 {
            Some(s) => Span::start(
                name,
                &Context::new().with_remote_span_context(s.span_context().clone()),
                None,
            ),
            None => Span(None),
        }
    }

    /// A child of the span whose context `carrier` holds (see [`Span::inject`]), or nothing if it
    /// holds none (a change proposed with tracing off).
    pub fn remote_child(carrier: &BTreeMap<String, String>, name: &'static str) -> Span {
        if GLOBAL.get().is_none() {
            return Span(None);
        }
        let cx = TraceContextPropagator::new().extract(&Carrier(carrier));
        if !cx.span().span_context().is_valid() {
            return Span(None);
        }
        Span::start(name, &cx, None)
    }

    /// A child of a span recorded earlier.
    pub fn child_of(parent: &SpanRef, name: &'static str) -> Span {
        Span::start(
            name,
            &Context::new().with_remote_span_context(parent.0.clone()),
            None,
        )
    }

    /// Whether this span is recorded (tracing on and sampled).
    pub fn is_recording(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.is_recording())
    }

    /// Sets an attribute.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(s) = &mut self.0 {
            s.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Writes this span's context (W3C `traceparent`) into `carrier`, so that whoever reads it
    /// continues the trace below this span.
    pub fn inject(&self, carrier: &mut BTreeMap<String, String>) {
        if let Some(s) = &self.0 {
            let cx = Context::new().with_remote_span_context(s.span_context().clone());
            TraceContextPropagator::new().inject_context(&cx, &mut CarrierMut(carrier));
        }
    }

    /// A reference for children started later, if this span is recorded.
    pub fn reference(&self) -> Option<SpanRef> {
        self.0
            .as_ref()
            .filter(|s| s.span_context().is_sampled())
            .map(|s| SpanRef(s.span_context().clone()))
    }

    /// Ends the span with status ok.
    pub fn ok(mut self) {
        if let Some(s) = &mut self.0 {
            s.set_status(Status::Ok);
        }
    }

    /// Ends the span with status error and `message`.
    pub fn fail(mut self, message: impl Into<String>) {
        if let Some(s) = &mut self.0 {
            s.set_status(Status::error(message.into()));
        }
    }
}

struct Carrier<'a>(&'a BTreeMap<String, String>);

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct CarrierMut<'a>(&'a mut BTreeMap<String, String>);

impl Injector for CarrierMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_no_ops_when_tracing_is_off() {
        let root = Span::root("poll", SystemTime::now());
        assert!(!root.is_recording());
        let mut carrier = BTreeMap::new();
        root.inject(&mut carrier);
        assert!(carrier.is_empty());
        assert!(root.reference().is_none());
        let child = Span::remote_child(&carrier, "apply");
        assert!(!child.is_recording());
    }
}
