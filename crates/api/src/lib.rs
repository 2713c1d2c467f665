//! The admin API's contract, apart from HTTP: the request bodies and how they are checked
//! ([`request`]), every response body ([`status`], [`builders`], [`envoys`], [`discovery`],
//! [`xds`], the status page's [`view`]) and the error body ([`error`]). The daemon (`crates/concord`, `admin.rs`) builds its
//! answers from these types, the peer channel (`crates/raft`) carries [`envoys::LocalEnvoys`]
//! between replicas, and with the `client` feature [`Client`] is the one typed client that the
//! CLI, the end-to-end tests, the chaos runner and the benchmarks use. The JSON on the wire is
//! what these types serialise to; the contract tests (`contract.rs`) pin it field by field.
//!
//! Pure apart from the client: no I/O, no clock.

pub mod builders;
#[cfg(feature = "client")]
pub mod client;
pub mod discovery;
pub mod envoys;
pub mod error;
pub mod request;
pub mod services;
pub mod stats;
pub mod status;
pub mod view;
pub mod xds;

pub use builders::{BuilderList, MembershipChanged, OneBuilder, Written};
#[cfg(feature = "client")]
pub use client::{Client, ClientBuilder, Error};
/// The registry's builder, as the API lists it (its own crate's type: one definition).
pub use concord_registry::{Builder, Source};
pub use discovery::{DiscoveryStatus, PollerStatus};
pub use envoys::{ClusterEnvoy, ClusterEnvoys, EnvoyStatus, LocalEnvoys, ReplicaEnvoys, SyncState};
pub use error::{ErrorBody, ErrorCode};
pub use request::{
    AddLearner, BatchBody, BatchBuilder, Endpoint, Isolate, Promote, PutBuilder, Request,
    RequestError, decode,
};
pub use services::{
    CertificateList, CertificateSummary, Config, EndpointList, MAX_CONFIG_BYTES, PutCertificate,
    RegisterEndpoint, Renewed,
};
pub use stats::{
    ClusterTotals, LATENCY_BOUNDS_MS, Latency, RolloutList, RolloutStatus, StageBody, StageCounts,
    StageStatus, StatsReport, StepProgress, VersionCounts,
};
pub use status::{EntryFormats, Isolated, Member, MemberFormat, Role, Status};
pub use view::{ClusterView, ReplicaReport};
pub use xds::XdsResources;

#[cfg(test)]
mod contract;
#[cfg(test)]
mod tests;
