//! Registered endpoints of services (issue 14): instances that declare themselves
//! (`PUT /v1/services/{svc}/endpoints/{id}`, `concord endpoints register`), each under a lease
//! that the leader keeps and expires (DESIGN rule 11), or none. What changes them is committed
//! like everything else; renewals are not (see `concord_raft::leases`).

use super::Duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// One registered endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Its id, unique in its service.
    pub id: String,
    /// Where it serves.
    pub addr: SocketAddr,
    /// Its load-balancing weight (1-128).
    pub weight: u32,
    /// Labels (`version: v2`), for rollouts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Its lease: it leaves when not renewed for this long. None: it stays until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    /// Draining: Envoy sends it no new requests; it is removed after the service's drain
    /// timeout.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// The log index of its registration: an expiry or drain end names it, so one decided for
    /// an earlier registration never removes a newer one.
    pub registered_at: u64,
}

/// A change to registered endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum EndpointChange {
    /// Registers (or re-registers) an endpoint, granting its lease.
    Register {
        /// Its service.
        service: String,
        /// Its id.
        id: String,
        /// Where it serves.
        addr: SocketAddr,
        /// Its weight.
        weight: u32,
        /// Its labels.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        labels: BTreeMap<String, String>,
        /// Its lease.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl: Option<Duration>,
    },
    /// Removes an endpoint (its instance deregistered, or an operator removed it).
    Deregister {
        /// Its service.
        service: String,
        /// Its id.
        id: String,
    },
    /// Marks an endpoint draining.
    Drain {
        /// Its service.
        service: String,
        /// Its id.
        id: String,
    },
    /// The leader decided that a lease lapsed or a drain ended: removes the endpoint if it is
    /// still the registration of `registered_at`.
    Expire {
        /// Its service.
        service: String,
        /// Its id.
        id: String,
        /// The registration it is about.
        registered_at: u64,
    },
}

impl EndpointChange {
    /// The service and endpoint id it is about.
    pub fn key(&self) -> (&str, &str) {
        match self {
            EndpointChange::Register { service, id, .. }
            | EndpointChange::Deregister { service, id }
            | EndpointChange::Drain { service, id }
            | EndpointChange::Expire { service, id, .. } => (service, id),
        }
    }
}

/// How the ids of endpoints the DNS poller discovered begin (`dns@10.0.0.7:8080`). No id the
/// API accepts has an `@`, so the id alone says who owns an endpoint.
pub const DNS_ENDPOINT_PREFIX: &str = "dns@";

/// The id of the endpoint DNS discovered at `addr`.
pub fn dns_endpoint_id(addr: SocketAddr) -> String {
    format!("{DNS_ENDPOINT_PREFIX}{addr}")
}

/// Who manages endpoint `id`: the DNS poller or the API.
pub fn endpoint_source(id: &str) -> crate::Source {
    match id.starts_with(DNS_ENDPOINT_PREFIX) {
        true => crate::Source::Dns,
        false => crate::Source::Api,
    }
}

/// The longest lease accepted.
pub const LONGEST_TTL_MS: u64 = 3_600_000;
/// The shortest lease accepted: renewals more often than every ~300 ms are load, not safety.
pub const SHORTEST_TTL_MS: u64 = 1_000;
