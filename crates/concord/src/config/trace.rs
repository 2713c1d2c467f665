//! Trace export settings: the OTLP collector, the service name, sampling and the export queue.

use anyhow::{Result, bail};
use clap::Args;
use concord_raft::NodeId;
use concord_telemetry::trace::TraceConfig;
use std::collections::BTreeSet;
use std::time::Duration;

/// OpenTelemetry trace export; off without --otlp-endpoint.
#[derive(Debug, Clone, PartialEq, Args)]
#[command(next_help_heading = "Tracing")]
pub struct TraceArgs {
    /// Export OpenTelemetry traces of every registry change (poll or API request, proposal,
    /// commit, apply on each replica, push to each Envoy until its ACK) to this OTLP/gRPC
    /// collector, e.g. `http://127.0.0.1:4317`. Tracing is off without it.
    #[arg(long, env = "CONCORD_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// `service.name` of the exported spans.
    #[arg(
        long,
        env = "CONCORD_OTLP_SERVICE_NAME",
        value_name = "NAME",
        default_value = "concord"
    )]
    pub otlp_service_name: String,

    /// Share (0-1) of changes traced.
    #[arg(
        long,
        env = "CONCORD_TRACE_SAMPLING_RATIO",
        value_name = "RATIO",
        default_value_t = 1.0
    )]
    pub trace_sampling_ratio: f64,

    /// Ended spans held for export; when the collector is slow or down, spans beyond this are
    /// dropped and counted (concord_trace_spans_dropped_total), never waited for.
    #[arg(
        long,
        env = "CONCORD_OTLP_QUEUE_SIZE",
        value_name = "SPANS",
        default_value_t = 4096
    )]
    pub otlp_queue_size: usize,
}

impl TraceArgs {
    /// The export settings; `None` when no --otlp-endpoint is given. `given`: the ids of the
    /// settings given rather than defaulted (a sampling ratio without an endpoint is a mistake).
    pub fn config(&self, given: &BTreeSet<String>, node_id: NodeId) -> Result<Option<TraceConfig>> {
        let Some(endpoint) = self.otlp_endpoint.clone().filter(|e| !e.is_empty()) else {
            if given.contains("trace_sampling_ratio") || given.contains("otlp_service_name") {
                bail!("--trace-sampling-ratio and --otlp-service-name need --otlp-endpoint");
            }
            return Ok(None);
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            bail!("invalid --otlp-endpoint {endpoint:?}: give a URL, e.g. http://127.0.0.1:4317");
        }
        let sampling_ratio = self.trace_sampling_ratio;
        if !(0.0..=1.0).contains(&sampling_ratio) {
            bail!("invalid --trace-sampling-ratio {sampling_ratio}: give a share from 0 to 1");
        }
        if self.otlp_queue_size == 0 {
            bail!("invalid --otlp-queue-size 0: give at least 1");
        }
        Ok(Some(TraceConfig {
            endpoint,
            service_name: self.otlp_service_name.clone(),
            sampling_ratio,
            replica: node_id,
            queue_size: self.otlp_queue_size,
            export_timeout: Duration::from_secs(5),
        }))
    }
}
