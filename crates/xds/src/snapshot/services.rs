//! The services half's encoded resources in a snapshot: rebuilt only when the desired state
//! changed (a new `Arc` in the registry), and even then each resource whose encoding is the same
//! as before is kept (the same `Arc`), so delta streams diff only what changed. Listeners are
//! encoded per port offset on first use (Envoys sharing a host; see
//! [`Snapshot::service_listeners`](super::Snapshot::service_listeners)).

use super::{Named, Resources, content_version};
use crate::resources::{CLUSTER_TYPE, LISTENER_TYPE, any};
use crate::services::{
    ENDPOINT_TYPE, ROUTE_TYPE, cluster, cluster_name, http_listener, listener_name,
    load_assignment, route_config_name, route_configuration, static_endpoints,
};
use concord_registry::services::Desired;
use envoy_types::pb::google::protobuf::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// One type's resources: by name, and in order for state of the world.
#[derive(Debug, Default)]
pub(super) struct Typed {
    pub(super) by_name: Resources,
    sotw: OnceLock<Arc<[Any]>>,
}

impl Typed {
    fn new(by_name: Resources) -> Self {
        Typed {
            by_name,
            sotw: OnceLock::new(),
        }
    }

    pub(super) fn sotw(&self) -> Arc<[Any]> {
        self.sotw
            .get_or_init(|| self.by_name.values().map(|n| n.resource.clone()).collect())
            .clone()
    }
}

/// Every resource of one desired state.
#[derive(Debug, Default)]
pub(super) struct ServiceResources {
    /// The desired state they were built from (compared by pointer).
    desired: Arc<Desired>,
    pub(super) clusters: Typed,
    pub(super) endpoints: Typed,
    pub(super) routes: Typed,
    /// Listeners by port offset.
    listeners: Mutex<HashMap<i32, Arc<Typed>>>,
    /// How many resources were encoded anew for this state.
    pub(super) serialised: usize,
}

/// `(name, resource)` as a [`Named`], reusing `prev`'s when the encoding is the same.
fn named(prev: &Resources, name: String, resource: Any, serialised: &mut usize) -> Arc<Named> {
    *serialised += 1;
    let version = content_version(&resource.value);
    match prev.get(&name) {
        Some(old) if old.version == version => old.clone(),
        _ => Arc::new(Named {
            name,
            version,
            resource,
        }),
    }
}

impl ServiceResources {
    /// The resources of `desired`: `prev`'s when it is the same state, else encoded anew.
    pub(super) fn of(desired: &Arc<Desired>, prev: Option<&Arc<ServiceResources>>) -> Arc<Self> {
        if let Some(p) = prev
            && Arc::ptr_eq(&p.desired, desired)
        {
            return p.clone();
        }
        let empty = ServiceResources::default();
        let p = prev.map_or(&empty, |p| &**p);
        let mut serialised = 0;
        let mut clusters = Resources::new();
        let mut endpoints = Resources::new();
        for (n, s) in &desired.services {
            let name = cluster_name(n);
            let c = any(CLUSTER_TYPE, &cluster(n, s));
            clusters.insert(
                name.clone(),
                named(&p.clusters.by_name, name.clone(), c, &mut serialised),
            );
            let e = any(ENDPOINT_TYPE, &load_assignment(n, &static_endpoints(s)));
            endpoints.insert(
                name.clone(),
                named(&p.endpoints.by_name, name, e, &mut serialised),
            );
        }
        let mut routes = Resources::new();
        for (n, t) in &desired.route_tables {
            let name = route_config_name(n);
            let r = any(ROUTE_TYPE, &route_configuration(n, t));
            routes.insert(
                name.clone(),
                named(&p.routes.by_name, name, r, &mut serialised),
            );
        }
        Arc::new(ServiceResources {
            desired: desired.clone(),
            clusters: Typed::new(clusters),
            endpoints: Typed::new(endpoints),
            routes: Typed::new(routes),
            listeners: Mutex::default(),
            serialised,
        })
    }

    /// The listeners at `port_offset`, encoded on first use.
    pub(super) fn listeners(&self, port_offset: i32) -> Arc<Typed> {
        let mut cache = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(port_offset)
            .or_insert_with(|| {
                let mut by_name = Resources::new();
                for (n, l) in &self.desired.listeners {
                    let resource = any(LISTENER_TYPE, &http_listener(n, l, port_offset));
                    let name = listener_name(n);
                    by_name.insert(
                        name.clone(),
                        Arc::new(Named {
                            version: content_version(&resource.value),
                            name,
                            resource,
                        }),
                    );
                }
                Arc::new(Typed::new(by_name))
            })
            .clone()
    }
}
