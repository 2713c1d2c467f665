//! The encoded resources of one registry revision, built incrementally: each builder's cluster
//! (and, in filter-chains mode, its filter chain) is encoded once when the builder changes and
//! shared by every later snapshot and every stream until it changes again, so a change of k
//! builders serialises k builders' resources, not the whole registry. The changed builders are
//! found by diffing the registry's persistent maps, and the snapshot's own maps are persistent
//! too (a new snapshot shares all but the changed entries with the last), so building one costs
//! O(change); delta streams diff them the same way.
//!
//! In filter-chains mode the listener is assembled from the builders' pre-encoded chains (a
//! repeated protobuf field is the concatenation of its encoded elements): a copy per revision,
//! no re-encoding. In sni-cluster mode the listener does not depend on the builders and is
//! encoded once per listener address for the life of the replica.
//!
//! Every resource also carries a version for delta xDS: a hash of its encoding, so the same
//! content has the same version on every replica, whatever revisions each replica happened to
//! build snapshots at.

use crate::resources::{
    CLUSTER_TYPE, LISTENER_TYPE, ListenerMode, ResourceConfig, any, builder_cluster_name, cluster,
    filter_chain, listener, sni_cluster_chain,
};
use concord_registry::{Builder, Registry};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use crate::access_log::AccessLog;
use crate::resource_type::Placement;

/// The version of an encoded resource: FNV-1a (64 bit) over its bytes, in hex. A fixed
/// function, so every replica (and every build of concord that encodes alike) agrees.
pub fn content_version(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// One named resource as delta xDS sends it.
#[derive(Debug, Clone)]
pub struct Named {
    /// Resource name (cluster or listener name).
    pub name: String,
    /// Content version, the same on every replica.
    pub version: String,
    /// The encoded resource.
    pub resource: Any,
}

/// Two resources are the same when name and (content) version are.
impl PartialEq for Named {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.version == other.version
    }
}

impl Eq for Named {}

/// Resources by name, as a persistent map: copies share structure, and diffs between copies
/// visit only what differs.
pub type Resources = imbl::OrdMap<String, Arc<Named>>;

/// One builder's encoded resources.
#[derive(Debug)]
struct Entry {
    /// `None` when the listener mode cannot route to this builder (skipped).
    encoded: Option<Encoded>,
}

#[derive(Debug)]
struct Encoded {
    cluster: Arc<Named>,
    /// Filter-chains mode: the builder's chain encoded as the listener's `filter_chains` field
    /// (tag, length, message), ready to be appended to an encoded listener. Empty otherwise.
    chain: Vec<u8>,
}

/// `filter_chains` is field 3 of `envoy.config.listener.v3.Listener`.
const LISTENER_FILTER_CHAINS_FIELD: u32 = 3;

impl Entry {
    fn build(b: &Builder, config: &ResourceConfig) -> Entry {
        let encoded = builder_cluster_name(b, &config.mode).map(|name| {
            let resource = any(CLUSTER_TYPE, &cluster(&name, b, config));
            let chain = match config.mode {
                ListenerMode::FilterChains => {
                    let mut buf = Vec::new();
                    prost::encoding::message::encode(
                        LISTENER_FILTER_CHAINS_FIELD,
                        &filter_chain(b, AccessLog::Off),
                        &mut buf,
                    );
                    buf
                }
                ListenerMode::SniCluster { .. } => Vec::new(),
            };
            Encoded {
                cluster: Arc::new(Named {
                    version: content_version(&resource.value),
                    name,
                    resource,
                }),
                chain,
            }
        });
        Entry { encoded }
    }
}

/// The listener served at one address.
#[derive(Debug, Clone)]
struct ListenerRes {
    /// Empty (no listener) or one.
    any: Arc<[Any]>,
    named: Option<Arc<Named>>,
}

/// Builders' listeners by address and access log.
type ListenerCache = Arc<Mutex<HashMap<(SocketAddr, AccessLog), ListenerRes>>>;

/// The resources of one registry revision, encoded once and shared by every stream.
#[derive(Debug)]
pub struct Snapshot {
    revision: u64,
    version: String,
    registry: Arc<Registry>,
    config: Arc<ResourceConfig>,
    /// One per builder, by id.
    entries: imbl::OrdMap<String, Arc<Entry>>,
    /// Every cluster, by name.
    by_name: Resources,
    /// Ids of the builders the listener mode cannot route to.
    skipped: imbl::OrdSet<String>,
    serialised: usize,
    /// Every cluster, materialised on first use for state-of-the-world responses.
    clusters: OnceLock<Arc<[Any]>>,
    /// Encoded listener per listener address, built on first use; in sni-cluster mode shared
    /// with every later snapshot, as that listener never changes.
    listeners: ListenerCache,
    /// The services half's resources (their clusters are in `by_name` too).
    services: Arc<ServiceResources>,
    /// How many of them were encoded for this snapshot.
    services_serialised: usize,
    /// While a configuration is staged: its group and the snapshot its Envoys get (the same
    /// revision, the staged desired state).
    staged: Option<Staged>,
}

/// A staged configuration's resources, for the Envoys of its group.
#[derive(Debug, Clone)]
pub struct Staged {
    /// The stage's start index (it names the stage).
    pub at: u64,
    /// The Envoys that get it.
    pub group: Arc<[concord_registry::services::select::EnvoySelector]>,
    /// Their snapshot.
    pub snapshot: Arc<Snapshot>,
}

impl Snapshot {
    /// Builds the resources of `registry` from scratch.
    pub fn build(registry: Arc<Registry>, config: ResourceConfig) -> Snapshot {
        Self::assemble(registry, Arc::new(config), None).with_staged(None)
    }

    /// The snapshot of `registry`, reusing this one's encoded resources for every builder that
    /// did not change: encodes only the changed ones.
    pub fn next(&self, registry: Arc<Registry>) -> Snapshot {
        Self::assemble(registry, self.config.clone(), Some(self)).with_staged(self.staged.as_ref())
    }

    /// Adds the staged configuration's snapshot while one is staged, built from `prev`'s (or
    /// from this one's builders: the two differ only in the services half).
    fn with_staged(mut self, prev: Option<&Staged>) -> Snapshot {
        let Some(stage) = self.registry.stage().cloned() else {
            return self;
        };
        let Some(view) = self.registry.staged_view() else {
            return self;
        };
        let snapshot = match prev {
            Some(p) => Self::assemble(Arc::new(view), self.config.clone(), Some(&p.snapshot)),
            None => Self::assemble(Arc::new(view), self.config.clone(), Some(&self)),
        };
        self.staged = Some(Staged {
            at: stage.at,
            group: stage.group.clone().into(),
            snapshot: Arc::new(snapshot),
        });
        self
    }

    /// The snapshot the Envoy with these traits gets: the staged one if it is of the staged
    /// configuration's group, else this one.
    pub fn for_envoy(
        this: &Arc<Snapshot>,
        envoy: &crate::envoy_select::NodeTraits,
    ) -> Arc<Snapshot> {
        match &this.staged {
            Some(s) if concord_registry::services::select::in_group(&s.group, envoy) => {
                s.snapshot.clone()
            }
            _ => this.clone(),
        }
    }

    /// The staged configuration's group and snapshot, while one is staged.
    pub fn staged(&self) -> Option<&Staged> {
        self.staged.as_ref()
    }

    fn assemble(
        registry: Arc<Registry>,
        config: Arc<ResourceConfig>,
        prev: Option<&Snapshot>,
    ) -> Snapshot {
        let (mut entries, mut by_name, mut skipped, changed) = match prev {
            Some(p) => (
                p.entries.clone(),
                p.by_name.clone(),
                p.skipped.clone(),
                registry.changed_ids(&p.registry),
            ),
            None => (
                imbl::OrdMap::new(),
                Resources::new(),
                imbl::OrdSet::new(),
                registry.iter().map(|b| b.id.clone()).collect(),
            ),
        };
        // Removals first: a cluster name released by one builder may be taken by another in the
        // same change (sni-cluster mode names clusters by SNI).
        for id in &changed {
            if let Some(old) = entries.remove(id) {
                if let Some(enc) = &old.encoded
                    && by_name
                        .get(&enc.cluster.name)
                        .is_some_and(|n| Arc::ptr_eq(n, &enc.cluster))
                {
                    by_name.remove(&enc.cluster.name);
                }
                skipped.remove(id);
            }
        }
        let mut serialised = 0;
        for id in &changed {
            let Some(b) = registry.get(id) else { continue };
            serialised += 1;
            let entry = Arc::new(Entry::build(b, &config));
            match &entry.encoded {
                Some(enc) => {
                    by_name.insert(enc.cluster.name.clone(), enc.cluster.clone());
                }
                None => {
                    skipped.insert(id.clone());
                }
            }
            entries.insert(id.clone(), entry);
        }
        concord_telemetry::metrics()
            .builders_encoded
            .add(serialised as u64);
        let services = ServiceResources::of(&registry, prev.map(|p| &p.services));
        // The services' clusters change only with the desired state.
        let clusters_changed =
            prev.is_none_or(|p| !Arc::ptr_eq(&p.services.clusters, &services.clusters));
        match prev {
            // The two share all but what changed: the diff visits only that.
            Some(p) if clusters_changed => {
                for d in p.services.clusters.by_name.diff(&services.clusters.by_name) {
                    match d {
                        imbl::ordmap::DiffItem::Add(name, c)
                        | imbl::ordmap::DiffItem::Update { new: (name, c), .. } => {
                            by_name.insert(name.clone(), c.clone());
                        }
                        imbl::ordmap::DiffItem::Remove(name, _) => {
                            by_name.remove(name);
                        }
                    }
                }
            }
            Some(_) => {}
            None => {
                for (name, c) in &services.clusters.by_name {
                    by_name.insert(name.clone(), c.clone());
                }
            }
        }
        let services_serialised = match prev.is_none_or(|p| !Arc::ptr_eq(&p.services, &services)) {
            true => services.serialised,
            false => 0,
        };
        let listeners = match (&config.mode, prev) {
            (ListenerMode::SniCluster { .. }, Some(p)) => p.listeners.clone(),
            _ => ListenerCache::default(),
        };
        Snapshot {
            revision: registry.revision(),
            version: registry.revision().to_string(),
            registry,
            config,
            entries,
            by_name,
            skipped,
            serialised,
            clusters: OnceLock::new(),
            listeners,
            services,
            services_serialised,
            staged: None,
        }
    }

    /// The registry revision these resources come from.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// `version_info` of every response built from this snapshot: the revision, in decimal.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The applied registry behind it.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The default listener address.
    pub fn default_listener_addr(&self) -> SocketAddr {
        self.config.listener_addr
    }

    /// The shape of these resources.
    pub fn config(&self) -> &ResourceConfig {
        &self.config
    }

    /// Ids of the builders the listener mode cannot route to (sni-cluster mode: SNI outside the
    /// suffix), by id; they get no cluster.
    pub fn skipped(&self) -> Vec<String> {
        self.skipped.iter().cloned().collect()
    }

    /// How many builders are skipped.
    pub fn skipped_count(&self) -> usize {
        self.skipped.len()
    }

    /// How many builders' resources were built for this snapshot (the changed ones, or all for
    /// [`Snapshot::build`]), skipped builders included.
    pub fn serialised(&self) -> usize {
        self.serialised
    }

    /// Every cluster, as a state-of-the-world response carries them (the builders' by id, then
    /// the services' by name), shared by every stream.
    pub fn cluster_resources(&self) -> Arc<[Any]> {
        self.clusters
            .get_or_init(|| {
                self.clusters()
                    .chain(self.services.clusters.by_name.values().map(|n| &**n))
                    .map(|n| n.resource.clone())
                    .collect()
            })
            .clone()
    }

    /// The listeners for an Envoy placed at `p`, as a state-of-the-world response carries them:
    /// the builders' at `p.listener` (none in filter-chains mode with no builders) and every
    /// services listener, its port moved by `p.port_offset`, with `p.access_log`.
    pub fn listener_resources(&self, p: Placement) -> Arc<[Any]> {
        let builders = self.listener(p.listener, p.access_log).any;
        let services = self.services.listeners(p.port_offset, p.access_log);
        if services.by_name.is_empty() {
            return builders;
        }
        builders
            .iter()
            .cloned()
            .chain(services.sotw().iter().cloned())
            .collect()
    }

    /// Every listener by name for an Envoy placed at `p`.
    pub fn listener_map(&self, p: Placement) -> Resources {
        let mut all = self
            .services
            .listeners(p.port_offset, p.access_log)
            .by_name
            .clone();
        if let Some(l) = self.listener(p.listener, p.access_log).named {
            all.insert(l.name.clone(), l);
        }
        all
    }

    /// Every load assignment (EDS), by service name, for state of the world.
    pub fn endpoint_resources(&self) -> Arc<[Any]> {
        self.services.endpoints.sotw()
    }

    /// Every load assignment by name.
    pub fn endpoint_map(&self) -> Resources {
        self.services.endpoints.by_name.clone()
    }

    /// Every secret (SDS), for state of the world.
    pub fn secret_resources(&self) -> Arc<[Any]> {
        self.services.secrets.sotw()
    }

    /// Every secret by name.
    pub fn secret_map(&self) -> Resources {
        self.services.secrets.by_name.clone()
    }

    /// Every route configuration (RDS), for state of the world.
    pub fn route_resources(&self) -> Arc<[Any]> {
        self.services.routes.sotw()
    }

    /// Every route configuration by name.
    pub fn route_map(&self) -> Resources {
        self.services.routes.by_name.clone()
    }

    /// How many of the services half's resources were encoded for this snapshot (none when its
    /// desired state did not change).
    pub fn services_serialised(&self) -> usize {
        self.services_serialised
    }

    /// Every cluster, by builder id, with its name and version.
    pub fn clusters(&self) -> impl Iterator<Item = &Named> {
        self.entries
            .values()
            .filter_map(|e| e.encoded.as_ref().map(|c| &*c.cluster))
    }

    /// Every cluster by name (a cheap, structurally shared copy).
    pub fn cluster_map(&self) -> Resources {
        self.by_name.clone()
    }

    /// The listener for an Envoy whose listener binds `listener_addr`, with its name and
    /// version; `None` when there is none (filter-chains mode with no builders).
    pub fn named_listener(&self, listener_addr: SocketAddr) -> Option<Arc<Named>> {
        self.listener(listener_addr, AccessLog::Off).named
    }

    fn listener(&self, addr: SocketAddr, log: AccessLog) -> ListenerRes {
        let mut cache = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry((addr, log))
            .or_insert_with(|| self.encode_listener(addr, log))
            .clone()
    }

    fn encode_listener(&self, addr: SocketAddr, log: AccessLog) -> ListenerRes {
        let name = &self.config.listener_name;
        let value = match &self.config.mode {
            ListenerMode::SniCluster { suffix, on_demand } => {
                listener(vec![sni_cluster_chain(suffix, log, *on_demand)], name, addr)
                    .encode_to_vec()
            }
            // Envoy refuses a listener without filter chains; with no builders there is no
            // listener, and connections are refused.
            ListenerMode::FilterChains if self.clusters().next().is_none() => {
                return ListenerRes {
                    any: Arc::from([]),
                    named: None,
                };
            }
            // With access logs, every chain is encoded again for this listener: once per
            // revision and shared by every Envoy that asked for the same log.
            ListenerMode::FilterChains if log != AccessLog::Off => {
                let chains = self
                    .entries
                    .iter()
                    .filter(|(_, e)| e.encoded.is_some())
                    .filter_map(|(id, _)| self.registry.get(id))
                    .map(|b| filter_chain(b, log))
                    .collect();
                listener(chains, name, addr).encode_to_vec()
            }
            ListenerMode::FilterChains => {
                let chains = || self.entries.values().filter_map(|e| e.encoded.as_ref());
                let head = listener(vec![], name, addr).encode_to_vec();
                let len = head.len() + chains().map(|c| c.chain.len()).sum::<usize>();
                let mut buf = Vec::with_capacity(len);
                buf.extend_from_slice(&head);
                for c in chains() {
                    buf.extend_from_slice(&c.chain);
                }
                buf
            }
        };
        let resource = Any {
            type_url: LISTENER_TYPE.to_string(),
            value,
        };
        let named = Named {
            name: name.clone(),
            version: content_version(&resource.value),
            resource: resource.clone(),
        };
        ListenerRes {
            any: Arc::from([resource]),
            named: Some(Arc::new(named)),
        }
    }
}

/// Logs the builders the listener mode cannot route to, when that set changes from `prev` to
/// `next` (or, for the first snapshot, passed as both, when it has any).
pub fn log_skips(prev: &Snapshot, next: &Snapshot) {
    let first = std::ptr::eq(prev, next);
    if next.skipped.is_empty() || (!first && prev.skipped == next.skipped) {
        if !first && !prev.skipped.is_empty() && next.skipped.is_empty() {
            tracing::info!("every builder is routable again");
        }
        return;
    }
    if let ListenerMode::SniCluster { suffix, .. } = &next.config.mode {
        const SHOWN: usize = 10;
        let shown: Vec<&String> = next.skipped.iter().take(SHOWN).collect();
        tracing::warn!(
            skipped = next.skipped.len(),
            first = ?shown,
            suffix = %suffix,
            "builders with an SNI name outside the listener's suffix get no cluster \
             (sni-cluster mode); Envoys cannot route to them"
        );
    }
}

mod services;

use services::ServiceResources;

#[cfg(test)]
mod tests;
