//! The ADS server's settings and the hooks it is given by the replica (revision times, the read
//! barrier). Plain types, here at the bottom so the stream drivers and the push bookkeeping
//! can use them without importing the server that owns them.

use crate::resources::ResourceConfig;
use concord_telemetry::AppliedRevision;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Settings of the ADS server.
#[derive(Debug, Clone)]
pub struct XdsConfig {
    /// `control_plane.identifier` of every response: names this replica.
    pub identifier: String,
    /// How long a stream whose Envoy is ahead of this replica waits for it to catch up.
    pub catch_up_timeout: Duration,
    /// End streams after about this long (±10%), so Envoys rebalance across replicas.
    pub max_stream_age: Option<Duration>,
    /// The resources' shape.
    pub resources: ResourceConfig,
    /// The Envoys this replica serves (`--serve-envoys`): every one when empty; any other's
    /// stream ends with UNAVAILABLE before any response.
    pub served_envoys: crate::envoy_select::ServedEnvoys,
}

/// For the revisions after the first argument up to the second: when each was applied here,
/// when its change was first seen, and its apply span: for the latency histograms and the push
/// spans.
pub type RevisionTimesFn = Arc<dyn Fn(u64, u64) -> Vec<AppliedRevision> + Send + Sync>;

/// Brings this replica up to date with the cluster (a linearizable read barrier: everything
/// committed before the call is applied here) and returns the applied registry revision.
pub type ReadBarrierFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<u64, BarrierError>> + Send>> + Send + Sync>;

/// The read barrier did not pass: why, as the replica's Raft said it. Cloneable, because one
/// single-flight round answers every stream waiting on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("read barrier failed: {0}")]
pub struct BarrierError(pub String);
