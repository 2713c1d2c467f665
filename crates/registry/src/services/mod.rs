//! The services half of the registry (issue 14): HTTP and gRPC services, the route tables that
//! send requests to them, and the listeners that serve route tables, set as one desired state
//! ([`Desired`]) by `concord apply`. [`validate`] checks a state as a whole before it is
//! committed; [`diff`] says what applying one would change. [`Endpoint`]s register
//! themselves under leases, changed by [`EndpointChange`]s.

mod certificates;
mod diff;
mod duration;
mod endpoints;
mod model;
pub mod rollout;
pub mod select;
pub mod stage;
mod validate;

pub use certificates::{Certificate, CertificateChange, Secret};
pub use diff::{Change, diff};
pub use duration::{BadDuration, Duration};
pub use endpoints::{
    DNS_ENDPOINT_PREFIX, Endpoint, EndpointChange, LONGEST_TTL_MS, SHORTEST_TTL_MS,
    dns_endpoint_id, endpoint_source,
};
pub use model::*;
pub use rollout::{
    Phase, Rollout, RolloutChange, RolloutSpec, Rollouts, cluster_name, version_cluster,
    version_service,
};
pub use stage::{Stage, StageChange, StageEnd};
pub use validate::{FieldError, validate};

#[cfg(test)]
mod tests;
