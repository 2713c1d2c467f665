//! Envoy xDS for concord: every replica serves the Aggregated Discovery Service from its applied
//! registry. [`resources`] turns builders into Envoy resources (two listener modes),
//! [`snapshot`] keeps them encoded per revision, rebuilding only what changed, [`server`] streams
//! them in state of the world ([`sotw`]) and [`delta`] (incremental) form, and [`bootstrap`]
//! writes the Envoy bootstrap that points at every replica.
//!
//! `version_info` (state of the world) and `system_version_info` (delta) are the registry
//! revision — a Raft log index — and delta's per-resource versions are content hashes, so both
//! are the same on every replica for the same state, and an Envoy that fails over sees
//! consistent versions (DESIGN rule 2).
//!
//! The modules form layers, each importing only those below it:
//!
//! - [`server`]: the handle, the gRPC server (TLS accept, health), the snapshot task;
//! - [`envoy_stats`]: the stats Envoys stream to the replica, summed for rollouts;
//! - `transport`: gRPC framing, our own tower service, request decoder and response body;
//! - `service`: stream accept, the certificate-bound node id, dispatch to a driver;
//! - `stream`: the SotW and delta drivers and the loop they share, over any request stream;
//! - `push`, [`envoys`] and [`acks`]: push bookkeeping, the Envoys' status, which changes they
//!   ACKed and how fast, metrics and traces;
//! - [`protocol`]: each protocol's state, pure; `wire`: responses encoded into gRPC frames;
//! - `barrier`: the read barrier streams catch up with, one at a time for all of them;
//! - [`resource_type`]: the table of served types the drivers iterate;
//! - [`snapshot`], [`dump`], [`resources`], [`config`], [`bootstrap`]: resources and settings.

// The mutant is a deliberately broken build for the chaos runner's mutation checks
// (chaos/mutants); a release build with it is refused.
#[cfg(all(feature = "mutant-no-never-backwards", not(debug_assertions)))]
compile_error!("mutant features are for debug builds of the chaos mutation checks only");

pub mod access_log;
pub mod acks;
mod barrier;
pub mod bootstrap;
pub mod config;
pub mod dump;
pub mod envoy_select;
pub mod envoy_stats;
pub mod envoys;
pub mod protocol;
mod push;
pub mod resource_type;
pub mod resources;
pub mod server;
mod service;
pub mod services;
pub mod snapshot;
mod stream;
mod transport;
pub mod wire;

pub use envoys::EnvoyStatus;
pub use protocol::{delta, sotw};
pub use resources::{
    CLUSTER_TYPE, LISTENER_ADDRESS_KEY, LISTENER_TYPE, ListenerMode, ResourceConfig,
};
pub use server::{BarrierError, ReadBarrierFn, RevisionTimesFn, XdsConfig, XdsServer};
pub use snapshot::Snapshot;
