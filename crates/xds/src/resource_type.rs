//! The resource types this control plane serves, as one table: type URL, status name, push
//! order, and how each type's resources are read from a [`Snapshot`] in both protocols' forms.
//! The stream drivers, the push bookkeeping and the status iterate this table and never name a
//! type, so serving a new type (RDS, EDS, SDS) is writing its builder in [`crate::resources`],
//! keeping its encoded form in the snapshot, and adding a row here.
//!
//! Reads snapshots; used by the stream drivers, `push` and [`crate::envoys`].

use crate::resources::{CLUSTER_TYPE, LISTENER_TYPE};
use crate::services::{ENDPOINT_TYPE, ROUTE_TYPE, SECRET_TYPE};
use crate::snapshot::{Resources, Snapshot};
use envoy_types::pb::google::protobuf::Any;
use std::net::SocketAddr;
use std::sync::Arc;

/// Where one Envoy's listeners go: the address of its builders' listener, how many ports its
/// services listeners move from theirs (several Envoys on one host; node metadata
/// [`PORT_OFFSET_KEY`](crate::resources::PORT_OFFSET_KEY)), and where their access logs go
/// ([`ACCESS_LOG_KEY`](crate::access_log::ACCESS_LOG_KEY)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The builders' listener address.
    pub listener: SocketAddr,
    /// Added to every services listener's port.
    pub port_offset: i32,
    /// The listeners' access logs.
    pub access_log: crate::access_log::AccessLog,
}

impl From<SocketAddr> for Placement {
    fn from(listener: SocketAddr) -> Self {
        Placement {
            listener,
            port_offset: 0,
            access_log: crate::access_log::AccessLog::Off,
        }
    }
}

/// One resource type.
#[derive(Debug)]
pub struct ResourceType {
    /// Its type URL (`type.googleapis.com/...`).
    pub type_url: &'static str,
    /// Its short name in the Envoys' status (`clusters`).
    pub name: &'static str,
    /// Every resource of the type for an Envoy whose listener binds the address, in the order
    /// a state-of-the-world response carries them.
    pub sotw: fn(&Snapshot, Placement) -> Arc<[Any]>,
    /// The same resources by name, with their content versions, for delta.
    pub delta: fn(&Snapshot, Placement) -> Resources,
    /// An ACK of this type is the Envoy accepting the registry's changes (the builders'
    /// clusters): commit-to-ACK and discovery-to-ACK are measured on it.
    pub carries_changes: bool,
}

/// Clusters (CDS): one per routable builder.
pub static CLUSTERS: ResourceType = ResourceType {
    type_url: CLUSTER_TYPE,
    name: "clusters",
    sotw: |s, _| s.cluster_resources(),
    delta: |s, _| s.cluster_map(),
    carries_changes: true,
};

/// Listeners (LDS): the builders' listener at the Envoy's listener address.
pub static LISTENERS: ResourceType = ResourceType {
    type_url: LISTENER_TYPE,
    name: "listeners",
    sotw: |s, p| s.listener_resources(p),
    delta: |s, p| s.listener_map(p),
    carries_changes: false,
};

/// Endpoints (EDS): one load assignment per service.
pub static ENDPOINTS: ResourceType = ResourceType {
    type_url: ENDPOINT_TYPE,
    name: "endpoints",
    sotw: |s, _| s.endpoint_resources(),
    delta: |s, _| s.endpoint_map(),
    carries_changes: false,
};

/// Secrets (SDS): one certificate and key per certificate held, for the listeners that
/// terminate TLS.
pub static SECRETS: ResourceType = ResourceType {
    type_url: SECRET_TYPE,
    name: "secrets",
    sotw: |s, _| s.secret_resources(),
    delta: |s, _| s.secret_map(),
    carries_changes: false,
};

/// Routes (RDS): one route configuration per route table.
pub static ROUTES: ResourceType = ResourceType {
    type_url: ROUTE_TYPE,
    name: "routes",
    sotw: |s, _| s.route_resources(),
    delta: |s, _| s.route_map(),
    carries_changes: false,
};

/// Every type served, in the order ADS pushes a revision's changes: a resource's dependencies
/// before it, as the xDS protocol asks (clusters, their endpoints, the listeners, the routes
/// they take by RDS), the secrets before the listeners that use them.
pub static TYPES: [&ResourceType; 5] = [&CLUSTERS, &ENDPOINTS, &SECRETS, &LISTENERS, &ROUTES];

/// The served type of `type_url`, if it is one.
pub fn find(type_url: &str) -> Option<&'static ResourceType> {
    TYPES.iter().copied().find(|t| t.type_url == type_url)
}

/// Where the served type of `type_url` is in [`TYPES`], if it is one: an index for per-type
/// arrays, which cost a stream less than maps keyed by type URL.
pub fn index(type_url: &str) -> Option<usize> {
    TYPES.iter().position(|t| t.type_url == type_url)
}

/// Sorts type URLs into push order: served types in [`TYPES`] order, then any others by URL
/// (the drivers ignore requests for them).
pub fn push_order(type_urls: &mut [String]) {
    let rank = |url: &str| TYPES.iter().position(|t| t.type_url == url);
    type_urls.sort_by(|a, b| {
        (rank(a).unwrap_or(usize::MAX), a).cmp(&(rank(b).unwrap_or(usize::MAX), b))
    });
}

/// The state-of-the-world resources of `type_url` for an Envoy whose listener binds `addr`;
/// none for a type this control plane does not serve.
pub fn sotw(snapshot: &Snapshot, type_url: &str, placement: Placement) -> Arc<[Any]> {
    find(type_url).map_or_else(|| Arc::from([]), |t| (t.sotw)(snapshot, placement))
}

/// The delta resources of `type_url` for an Envoy whose listener binds `addr` (a cheap, shared
/// copy); none for a type this control plane does not serve.
pub fn delta(snapshot: &Snapshot, type_url: &str, placement: Placement) -> Resources {
    find(type_url).map_or_else(Resources::new, |t| (t.delta)(snapshot, placement))
}

impl Snapshot {
    /// The resources of `type_url` for an Envoy whose listener binds `listener_addr`. Unknown
    /// types get an empty set.
    pub fn resources(&self, type_url: &str, placement: impl Into<Placement>) -> Arc<[Any]> {
        sotw(self, type_url, placement.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_order_is_the_tables_then_the_rest() {
        let mut urls = vec![
            "type.googleapis.com/z".to_string(),
            LISTENER_TYPE.to_string(),
            "type.googleapis.com/a".to_string(),
            CLUSTER_TYPE.to_string(),
        ];
        push_order(&mut urls);
        assert_eq!(
            urls,
            [
                CLUSTER_TYPE,
                LISTENER_TYPE,
                "type.googleapis.com/a",
                "type.googleapis.com/z"
            ]
        );
        assert_eq!(find(LISTENER_TYPE).map(|t| t.name), Some("listeners"));
        assert!(find("type.googleapis.com/a").is_none());
    }
}
