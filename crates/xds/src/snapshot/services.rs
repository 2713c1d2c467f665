//! The services half's encoded resources in a snapshot: clusters, route configurations and
//! listeners are rebuilt only when the desired state changed (a new `Arc` in the registry), and
//! even then each resource whose encoding is the same as before is kept (the same `Arc`), so
//! delta streams diff only what changed. A change of registered endpoints re-encodes the load
//! assignments of the services it touched, and nothing else: one endpoint, one
//! ClusterLoadAssignment, whatever the registry's size. Listeners are encoded per port offset on
//! first use (several Envoys on one host), and per access log. All of it is built from the
//! registry's routed view (rollouts' version clusters and split routes included).

use super::{Named, Resources, content_version};
use crate::access_log::AccessLog;
use crate::resources::{CLUSTER_TYPE, LISTENER_TYPE, any};
use crate::services::{
    ENDPOINT_TYPE, EndpointSpec, ROUTE_TYPE, SECRET_TYPE, cluster, cluster_name, http_listener,
    listener_name, load_assignment, route_config_name, route_configuration, secret, secret_name,
    static_endpoints,
};
use concord_registry::services::Desired;
use concord_registry::{CertificateMap, EndpointMap, Registry};
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

/// Services listeners by port offset and access log, encoded on first use.
type ListenerCache = Arc<Mutex<HashMap<(i32, AccessLog), Arc<Typed>>>>;

/// Every resource of one desired state.
#[derive(Debug, Default)]
pub(super) struct ServiceResources {
    /// The desired state they were built from (compared by pointer).
    desired: Arc<Desired>,
    /// The registered endpoints they were built from.
    registered: EndpointMap,
    /// The certificates they were built from.
    certificates: CertificateMap,
    pub(super) secrets: Arc<Typed>,
    pub(super) clusters: Arc<Typed>,
    pub(super) endpoints: Typed,
    pub(super) routes: Arc<Typed>,
    /// Listeners by port offset.
    listeners: ListenerCache,
    /// How many resources were encoded anew for this state.
    pub(super) serialised: usize,
}

/// The endpoints of (routed) service `name` Envoy gets: those in the file, then the registered
/// ones (a rollout's version service has only its version's registered ones).
fn endpoints_of(registry: &Registry, name: &str) -> Vec<EndpointSpec> {
    let mut all = registry
        .routed()
        .services
        .get(name)
        .map(static_endpoints)
        .unwrap_or_default();
    all.extend(registry.routed_endpoints_of(name).map(|e| EndpointSpec {
        addr: e.addr,
        weight: e.weight,
        draining: e.draining,
    }));
    all
}

fn encode_endpoints(
    registry: &Registry,
    name: &str,
    prev: &Resources,
    serialised: &mut usize,
) -> Arc<Named> {
    let e = any(
        ENDPOINT_TYPE,
        &load_assignment(name, &endpoints_of(registry, name)),
    );
    named(prev, cluster_name(name), e, serialised)
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
    /// The resources of `registry`'s services: `prev`'s when neither the desired state nor the
    /// registered endpoints changed; only the touched load assignments when only endpoints did;
    /// else the services, route tables and listeners whose settings changed.
    pub(super) fn of(registry: &Registry, prev: Option<&Arc<ServiceResources>>) -> Arc<Self> {
        // What Envoys get: the desired state and endpoints with every rollout's version
        // services and split routes (the operator's own when there are no rollouts).
        let desired = registry.routed();
        let registered = registry.routed_endpoint_map();
        let certificates = registry.certificates();
        let mut secrets_serialised = 0;
        let secrets = match prev {
            Some(p) if p.certificates.ptr_eq(certificates) => p.secrets.clone(),
            _ => {
                let mut by_name = Resources::new();
                let before = prev.map(|p| p.secrets.by_name.clone()).unwrap_or_default();
                for (n, c) in certificates {
                    let name = secret_name(n);
                    let r = any(SECRET_TYPE, &secret(n, c));
                    by_name.insert(
                        name.clone(),
                        named(&before, name, r, &mut secrets_serialised),
                    );
                }
                Arc::new(Typed::new(by_name))
            }
        };
        if let Some(p) = prev
            && Arc::ptr_eq(&p.desired, desired)
        {
            if p.registered.ptr_eq(registered) && Arc::ptr_eq(&p.secrets, &secrets) {
                return p.clone();
            }
            if p.registered.ptr_eq(registered) {
                return Arc::new(ServiceResources {
                    desired: desired.clone(),
                    registered: registered.clone(),
                    certificates: certificates.clone(),
                    secrets,
                    clusters: p.clusters.clone(),
                    endpoints: Typed::new(p.endpoints.by_name.clone()),
                    routes: p.routes.clone(),
                    listeners: p.listeners.clone(),
                    serialised: secrets_serialised,
                });
            }
            // Only endpoints changed: the services whose registered endpoints differ.
            let mut serialised = 0;
            let mut endpoints = p.endpoints.by_name.clone();
            let changed = p.registered.diff(registered).map(|d| match d {
                imbl::ordmap::DiffItem::Add(s, _)
                | imbl::ordmap::DiffItem::Remove(s, _)
                | imbl::ordmap::DiffItem::Update { new: (s, _), .. } => s.clone(),
            });
            for name in changed {
                if desired.services.contains_key(&name) {
                    let e =
                        encode_endpoints(registry, &name, &p.endpoints.by_name, &mut serialised);
                    endpoints.insert(cluster_name(&name), e);
                }
            }
            return Arc::new(ServiceResources {
                desired: desired.clone(),
                registered: registered.clone(),
                certificates: certificates.clone(),
                secrets,
                clusters: p.clusters.clone(),
                endpoints: Typed::new(endpoints),
                routes: p.routes.clone(),
                listeners: p.listeners.clone(),
                serialised: serialised + secrets_serialised,
            });
        }
        // The desired state changed: encode what differs from `prev`'s, share the rest, so an
        // apply that changes one service encodes that service's cluster and load assignment
        // (comparing the others' settings is cheap beside encoding them).
        let empty = ServiceResources::default();
        let p = prev.map_or(&empty, |p| &**p);
        // The services whose registered endpoints changed: a diff of two persistent maps
        // visits only what differs.
        let moved: std::collections::BTreeSet<&String> = p
            .registered
            .diff(registered)
            .map(|d| match d {
                imbl::ordmap::DiffItem::Add(s, _)
                | imbl::ordmap::DiffItem::Remove(s, _)
                | imbl::ordmap::DiffItem::Update { new: (s, _), .. } => s,
            })
            .collect();
        // Start from `prev`'s maps (persistent: the untouched part stays shared, so the
        // snapshot diffs them in O(change)) and touch only what differs. Both desired states
        // are sorted by name: one pass over the two side by side finds what differs.
        let mut serialised = 0;
        let mut clusters = p.clusters.by_name.clone();
        let mut endpoints = p.endpoints.by_name.clone();
        let mut old = p.desired.services.iter().peekable();
        for (n, s) in &desired.services {
            while let Some((gone, _)) = old.next_if(|(o, _)| *o < n) {
                clusters.remove(&cluster_name(gone));
                endpoints.remove(&cluster_name(gone));
            }
            let unchanged = old.next_if(|(o, _)| *o == n).is_some_and(|(_, o)| o == s);
            if unchanged && !moved.contains(n) {
                continue;
            }
            let name = cluster_name(n);
            if !unchanged {
                let c = any(CLUSTER_TYPE, &cluster(n, s));
                let c = named(&p.clusters.by_name, name.clone(), c, &mut serialised);
                clusters.insert(name.clone(), c);
            }
            let e = encode_endpoints(registry, n, &p.endpoints.by_name, &mut serialised);
            endpoints.insert(name, e);
        }
        for (gone, _) in old {
            clusters.remove(&cluster_name(gone));
            endpoints.remove(&cluster_name(gone));
        }
        let mut routes = p.routes.by_name.clone();
        for n in p.desired.route_tables.keys() {
            if !desired.route_tables.contains_key(n) {
                routes.remove(&route_config_name(n));
            }
        }
        for (n, t) in &desired.route_tables {
            if p.desired.route_tables.get(n) != Some(t) {
                let name = route_config_name(n);
                let r = any(ROUTE_TYPE, &route_configuration(n, t));
                let r = named(&p.routes.by_name, name.clone(), r, &mut serialised);
                routes.insert(name, r);
            }
        }
        // Listeners are encoded per port offset on first use; the cache holds while they stay.
        let listeners = match p.desired.listeners == desired.listeners {
            true => p.listeners.clone(),
            false => Arc::default(),
        };
        Arc::new(ServiceResources {
            desired: desired.clone(),
            registered: registered.clone(),
            certificates: certificates.clone(),
            secrets,
            clusters: Arc::new(Typed::new(clusters)),
            endpoints: Typed::new(endpoints),
            routes: Arc::new(Typed::new(routes)),
            listeners,
            serialised: serialised + secrets_serialised,
        })
    }

    /// The listeners at `port_offset` with access logs `log`, encoded on first use.
    pub(super) fn listeners(&self, port_offset: i32, log: AccessLog) -> Arc<Typed> {
        let mut cache = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry((port_offset, log))
            .or_insert_with(|| {
                let mut by_name = Resources::new();
                for (n, l) in &self.desired.listeners {
                    let resource = any(LISTENER_TYPE, &http_listener(n, l, port_offset, log));
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
