//! Raft for concord: an openraft node whose log and state machine live in sled ([`store`]), a
//! gRPC transport between replicas ([`network`], [`service`]), and [`node::Node`], which runs it
//! all and forwards client requests from followers to the leader.
//!
//! The state machine applies [`concord_registry::Command`]s to the builder registry; readers
//! follow the applied registry through [`node::Node::registry`].

// The mutants are deliberately broken builds for the chaos runner's mutation checks
// (chaos/mutants); a release build with one is refused.
#[cfg(all(
    any(
        feature = "mutant-no-append-flush",
        feature = "mutant-no-stale-check",
        feature = "mutant-trust-any-leader"
    ),
    not(debug_assertions)
))]
compile_error!("mutant features are for debug builds of the chaos mutation checks only");

pub mod api;
pub mod contact;
pub mod format;
pub mod leases;
pub mod network;
pub mod node;
pub mod rollouts;
pub mod service;
pub mod stage;
pub mod store;

use std::io::Cursor;

/// Generated code of `proto/raft.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("concord.raft.v1");
}

/// A replica's Raft node id.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft types of concord: log entries carry registry commands, and applying one yields
    /// its outcome.
    pub TypeConfig:
        D = concord_registry::Command,
        R = concord_registry::Outcome,
);

/// The openraft node type.
pub type Raft = openraft::Raft<TypeConfig>;

pub use api::{ClientError, ClientReply, ClientRequest};
pub use node::{LocalStatsFn, LocalStatusFn, NoStatus, Node, NodeConfig, StartError, Status};
