//! Envoy xDS for concord: every replica serves the Aggregated Discovery Service from its applied
//! registry ([`resources`] builds the Envoy resources of a revision once, [`server`] streams
//! them), and [`bootstrap`] writes the Envoy bootstrap that points at every replica.
//!
//! `version_info` is the registry revision — a Raft log index — so it is the same on every replica
//! for the same state, and an Envoy that fails over sees consistent versions (DESIGN rule 2).

pub mod bootstrap;
pub mod delta;
mod delta_stream;
pub mod envoys;
mod push;
pub mod resources;
pub mod server;
pub mod snapshot;
pub mod sotw;

pub use envoys::EnvoyStatus;
pub use resources::{CLUSTER_TYPE, LISTENER_TYPE, ListenerMode, ResourceConfig, Snapshot};
pub use server::{ReadBarrierFn, RevisionTimesFn, XdsConfig, XdsServer};

/// Node metadata key by which an Envoy asks for its builders' listener on another address than
/// the replica's default (several Envoys on one host need distinct ports).
pub const LISTENER_ADDRESS_KEY: &str = "concord.listener_address";
