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

pub mod bootstrap;
pub mod delta;
mod delta_stream;
pub mod envoys;
mod grpc;
mod push;
pub mod resources;
pub mod server;
pub mod snapshot;
pub mod sotw;
mod wire;

pub use envoys::EnvoyStatus;
pub use resources::{CLUSTER_TYPE, LISTENER_TYPE, ListenerMode, ResourceConfig, Snapshot};
pub use server::{ReadBarrierFn, RevisionTimesFn, XdsConfig, XdsServer};

/// Node metadata key by which an Envoy asks for its builders' listener on another address than
/// the replica's default (several Envoys on one host need distinct ports).
pub const LISTENER_ADDRESS_KEY: &str = "concord.listener_address";
