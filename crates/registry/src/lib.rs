//! The builder registry: the replicated domain of concord.
//!
//! A [`Registry`] maps builder ids to [`Builder`]s. It changes only by applying a [`Command`] (a
//! batch of upserts and removals) at a Raft log index, deterministically: every replica that applies
//! the same log ends with the same builders and the same [`Registry::revision`] — the log index of
//! the last entry that changed it (DESIGN rule 2). [`diff`] yields the batch that turns one set of
//! builders into another; the DNS poller uses it. No I/O here.

mod builder;
mod command;
pub mod services;
use services::Desired;

pub use builder::{Builder, InvalidBuilder, Source, is_dns_name};

pub use command::{
    Batch, Command, FORMAT, FORMAT_BUILDERS, FORMAT_ROLLOUTS, Outcome, Rejection, UnknownFormat,
};
use serde::{Deserialize, Serialize};

use std::collections::{BTreeMap, HashMap, HashSet};

/// Persistent (structurally shared) maps: a copy of the registry is O(1) and a change to it
/// copies O(log n), so the state machine's copy-on-write `Arc<Registry>` (shared with snapshots
/// and every xDS stream) costs O(change) per commit, not O(registry).
type Builders = imbl::OrdMap<String, Arc<Builder>>;
type SniIndex = imbl::HashMap<String, String>;

/// How many recent request ids (and their outcomes) a registry keeps to answer retries. A retry
/// comes within one request timeout of its first attempt, so a few thousand writes is far more
/// than can commit in between. Bounded by count, evicting the lowest log index first: every
/// replica keeps the same ones.
pub const KEPT_REQUESTS: usize = 4096;

/// A request id the registry remembers: the log index its command was first applied at, and the
/// outcome then (stored with the state and in snapshots).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentRequest {
    /// The client request's id ([`Command::request_id`]).
    pub id: String,
    /// The log index of its first commit.
    pub index: u64,
    /// What applying it did then.
    pub outcome: Outcome,
}
use std::sync::Arc;

/// The replicated set of builders at one revision.
///
/// Builders are held in `Arc`s in persistent maps, so that a copy of the registry (published to
/// every xDS stream after each apply, kept by snapshots) shares them instead of cloning each one.
#[derive(Debug, Clone)]
pub struct Registry {
    builders: Builders,
    /// SNI name → builder id; derived from `builders`, kept to check SNI uniqueness in O(batch).
    sni_index: SniIndex,
    revision: u64,
    /// Request id → (first log index, first outcome) of recent commands that carried one.
    requests: imbl::HashMap<String, (u64, Outcome)>,
    /// The same ids by log index, to evict the oldest.
    request_order: imbl::OrdMap<u64, String>,
    /// The cluster's entry format: the highest one raised by a committed entry
    /// ([`Command::raise_format`]); [`FORMAT_BUILDERS`] until then.
    format: u32,
    /// The services half's desired state, as last applied.
    desired: Arc<services::Desired>,
    /// Registered endpoints by service, then id.
    endpoints: EndpointMap,
    /// Certificates for TLS termination, by name.
    certificates: CertificateMap,
    /// Release rollouts by service (issue 15).
    rollouts: Arc<services::Rollouts>,
    /// What Envoys get of the services half: `desired` with every rollout's version services
    /// and split routes (the same `Arc` as `desired` when there are no rollouts).
    routed: Arc<services::Desired>,
    /// The registered endpoints Envoys get: `endpoints` and every rollout's version services'
    /// (the same map as `endpoints` when there are no rollouts).
    routed_endpoints: EndpointMap,
    /// A desired state staged to a group of Envoys (config canaries).
    stage: Option<Arc<services::Stage>>,
    /// How the last stage ended.
    last_stage: Option<Arc<services::StageEnd>>,
}

/// Certificates by name.
pub type CertificateMap = imbl::OrdMap<String, Arc<services::Certificate>>;

/// Registered endpoints by service, then id; persistent, so a change of one service's endpoints
/// copies O(log n) and a diff visits only the services that changed.
pub type EndpointMap = imbl::OrdMap<String, imbl::OrdMap<String, Arc<services::Endpoint>>>;

impl Default for Registry {
    fn default() -> Self {
        Registry {
            builders: Builders::default(),
            sni_index: SniIndex::default(),
            revision: 0,
            requests: imbl::HashMap::default(),
            request_order: imbl::OrdMap::default(),
            format: FORMAT_BUILDERS,
            desired: Arc::default(),
            endpoints: EndpointMap::default(),
            certificates: CertificateMap::default(),
            rollouts: Arc::default(),
            routed: Arc::default(),
            routed_endpoints: EndpointMap::default(),
            stage: None,
            last_stage: None,
        }
    }
}

impl PartialEq for Registry {
    fn eq(&self, other: &Self) -> bool {
        self.revision == other.revision
            && self.format == other.format
            && self.builders == other.builders
            && self.desired == other.desired
            && self.endpoints == other.endpoints
            && self.certificates == other.certificates
            && self.rollouts == other.rollouts
            && self.stage == other.stage
            && self.last_stage == other.last_stage
    }
}

impl Eq for Registry {}

impl Registry {
    /// An empty registry at revision 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a registry from stored builders (a snapshot or the state machine's tree).
    ///
    /// The builders were validated when they were applied; a duplicate id or SNI name here means
    /// the store (or a received snapshot) is corrupt, which is reported rather than silently
    /// resolved.
    pub fn from_parts(
        builders: impl IntoIterator<Item = Builder>,
        revision: u64,
    ) -> Result<Self, Rejection> {
        let mut reg = Registry {
            revision,
            ..Registry::default()
        };
        for b in builders {
            // One id twice would leave the first one's SNI name indexed for nobody.
            if reg.builders.contains_key(&b.id) {
                return Err(Rejection::DuplicateId { id: b.id });
            }
            if let Some(other) = reg.sni_index.insert(b.sni.clone(), b.id.clone()) {
                return Err(Rejection::DuplicateSni {
                    sni: b.sni,
                    ids: (other, b.id),
                });
            }
            reg.builders.insert(b.id.clone(), Arc::new(b));
        }
        Ok(reg)
    }

    /// Adds remembered requests (from the store or a snapshot), keeping the newest
    /// [`KEPT_REQUESTS`] of those and the ones already held.
    pub fn with_requests(mut self, requests: impl IntoIterator<Item = RecentRequest>) -> Self {
        for r in requests {
            self.remember(r.id, r.index, r.outcome);
        }
        self
    }

    /// Sets the cluster's entry format (from the store or a snapshot).
    pub fn with_format(mut self, format: u32) -> Self {
        self.format = format;
        self
    }

    /// Sets the services half's desired state (from the store or a snapshot).
    pub fn with_desired(mut self, desired: services::Desired) -> Self {
        self.desired = Arc::new(desired);
        self.reroute();
        self
    }

    /// Sets the rollouts (from the store or a snapshot).
    pub fn with_rollouts(mut self, rollouts: services::Rollouts) -> Self {
        self.rollouts = Arc::new(rollouts);
        self.reroute();
        self
    }

    /// The services half's desired state, as operators set it.
    pub fn desired(&self) -> &Arc<services::Desired> {
        &self.desired
    }

    /// The rollouts, by service.
    pub fn rollouts(&self) -> &Arc<services::Rollouts> {
        &self.rollouts
    }

    /// Sets the stage and how the last one ended (from the store or a snapshot).
    pub fn with_stage(
        mut self,
        stage: Option<services::Stage>,
        last: Option<services::StageEnd>,
    ) -> Self {
        self.stage = stage.map(Arc::new);
        self.last_stage = last.map(Arc::new);
        self
    }

    /// The desired state staged to a group of Envoys, if one is.
    pub fn stage(&self) -> Option<&Arc<services::Stage>> {
        self.stage.as_ref()
    }

    /// How the last stage ended.
    pub fn last_stage(&self) -> Option<&Arc<services::StageEnd>> {
        self.last_stage.as_ref()
    }

    /// While a stage exists: the registry as the stage's group sees it (the staged desired
    /// state, with rollouts, at the same revision), for their Envoys' resources.
    pub fn staged_view(&self) -> Option<Registry> {
        let stage = self.stage.as_ref()?;
        let mut view = self.clone();
        view.desired = Arc::new(stage.desired.clone());
        view.stage = None;
        view.reroute();
        Some(view)
    }

    /// What Envoys get of the services half: the desired state with every rollout's version
    /// services and its routes split between them (see [`services::rollout::routed`]).
    pub fn routed(&self) -> &Arc<services::Desired> {
        &self.routed
    }

    /// The registered endpoints Envoys get, by (routed) service: every service's, and each
    /// rollout's version services' (its versions' endpoints).
    pub fn routed_endpoint_map(&self) -> &EndpointMap {
        &self.routed_endpoints
    }

    /// The registered endpoints Envoys get for (routed) service `service`.
    pub fn routed_endpoints_of(
        &self,
        service: &str,
    ) -> impl Iterator<Item = &Arc<services::Endpoint>> {
        self.routed_endpoints
            .get(service)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// Recomputes what Envoys get after the desired state, the endpoints or the rollouts
    /// changed: O(1) without rollouts, else the rollouts' services only.
    fn reroute(&mut self) {
        self.routed = services::rollout::routed(&self.desired, &self.rollouts);
        let mut routed = self.endpoints.clone();
        for r in self.rollouts.values() {
            if !self.desired.services.contains_key(&r.spec.service) {
                continue;
            }
            let of = self.endpoints.get(&r.spec.service);
            for (name, map) in services::rollout::version_endpoints_of(r, of) {
                // Only services with endpoints are in the map, as for registered ones.
                if !map.is_empty() {
                    routed.insert(name, map);
                }
            }
        }
        self.routed_endpoints = routed;
    }

    /// Adds registered endpoints (from the store or a snapshot).
    pub fn with_endpoints(
        mut self,
        endpoints: impl IntoIterator<Item = (String, services::Endpoint)>,
    ) -> Self {
        for (service, e) in endpoints {
            let mut m = self.endpoints.get(&service).cloned().unwrap_or_default();
            m.insert(e.id.clone(), Arc::new(e));
            self.endpoints.insert(service, m);
        }
        self.reroute();
        self
    }

    /// Adds certificates (from the store or a snapshot).
    pub fn with_certificates(
        mut self,
        certificates: impl IntoIterator<Item = (String, services::Certificate)>,
    ) -> Self {
        for (name, c) in certificates {
            self.certificates.insert(name, Arc::new(c));
        }
        self
    }

    /// The certificates, by name.
    pub fn certificates(&self) -> &CertificateMap {
        &self.certificates
    }

    /// Registered endpoints by service and id.
    pub fn endpoint_map(&self) -> &EndpointMap {
        &self.endpoints
    }

    /// The registered endpoints of `service`.
    pub fn endpoints_of(&self, service: &str) -> impl Iterator<Item = &Arc<services::Endpoint>> {
        self.endpoints
            .get(service)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// The endpoints of `service` the DNS poller owns (`dns@…` ids), without visiting the
    /// others: ids are sorted, so they are one range.
    pub fn dns_endpoints_of(
        &self,
        service: &str,
    ) -> impl Iterator<Item = &Arc<services::Endpoint>> {
        use std::ops::Bound;
        let prefix = services::DNS_ENDPOINT_PREFIX;
        self.endpoints.get(service).into_iter().flat_map(move |m| {
            m.range::<_, str>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(move |(id, _)| id.starts_with(prefix))
                .map(|(_, e)| e)
        })
    }

    /// Every registered endpoint with its service.
    pub fn all_endpoints(&self) -> impl Iterator<Item = (&str, &Arc<services::Endpoint>)> {
        self.endpoints
            .iter()
            .flat_map(|(s, m)| m.values().map(move |e| (s.as_str(), e)))
    }

    /// The registered endpoint `id` of `service`.
    pub fn endpoint(&self, service: &str, id: &str) -> Option<&Arc<services::Endpoint>> {
        self.endpoints.get(service)?.get(id)
    }

    /// The services whose registered endpoints differ between `older` and this registry, in
    /// O(change) for a registry `older` became by applying commands.
    pub fn changed_services(&self, older: &Registry) -> Vec<String> {
        older
            .endpoints
            .diff(&self.endpoints)
            .map(|d| match d {
                imbl::ordmap::DiffItem::Add(s, _)
                | imbl::ordmap::DiffItem::Remove(s, _)
                | imbl::ordmap::DiffItem::Update { new: (s, _), .. } => s.clone(),
            })
            .collect()
    }

    /// The cluster's entry format: a command of a higher one is refused.
    pub fn format(&self) -> u32 {
        self.format
    }

    /// The remembered requests, by log index.
    pub fn requests(&self) -> impl Iterator<Item = RecentRequest> + '_ {
        self.request_order.iter().filter_map(|(index, id)| {
            let (_, outcome) = self.requests.get(id)?;
            Some(RecentRequest {
                id: id.clone(),
                index: *index,
                outcome: outcome.clone(),
            })
        })
    }

    /// The log index and outcome a remembered request was first applied with.
    pub fn request(&self, id: &str) -> Option<(u64, &Outcome)> {
        self.requests
            .get(id)
            .map(|(index, outcome)| (*index, outcome))
    }

    /// The lowest log index of a remembered request: those before it were evicted.
    pub fn oldest_request_index(&self) -> Option<u64> {
        self.request_order.keys().next().copied()
    }

    fn remember(&mut self, id: String, index: u64, outcome: Outcome) {
        if let Some((old, _)) = self.requests.insert(id.clone(), (index, outcome)) {
            self.request_order.remove(&old);
        }
        self.request_order.insert(index, id);
        while self.request_order.len() > KEPT_REQUESTS {
            let Some(oldest) = self.oldest_request_index() else {
                break;
            };
            if let Some(id) = self.request_order.remove(&oldest) {
                self.requests.remove(&id);
            }
        }
    }

    /// The log index of the last entry that changed the registry (0 when it never changed).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Number of builders.
    pub fn len(&self) -> usize {
        self.builders.len()
    }

    /// True when there are no builders.
    pub fn is_empty(&self) -> bool {
        self.builders.is_empty()
    }

    /// The builder with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<Builder>> {
        self.builders.get(id)
    }

    /// All builders, ordered by id.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Builder>> {
        self.builders.values()
    }

    /// Ids of the builders added, changed or removed between `older` and this registry. Visits
    /// only the parts of the two that are not shared, so for a registry that `older` became by
    /// applying commands it costs O(change), not O(registry).
    pub fn changed_ids(&self, older: &Registry) -> Vec<String> {
        older
            .builders
            .diff(&self.builders)
            .map(|d| match d {
                imbl::ordmap::DiffItem::Add(id, _)
                | imbl::ordmap::DiffItem::Remove(id, _)
                | imbl::ordmap::DiffItem::Update { new: (id, _), .. } => id.clone(),
            })
            .collect()
    }

    /// The builders of one source, by id (what the DNS poller diffs against).
    pub fn of_source(&self, source: Source) -> BTreeMap<String, Builder> {
        self.builders
            .values()
            .filter(|b| b.source == source)
            .map(|b| (b.id.clone(), Builder::clone(b)))
            .collect()
    }

    /// Applies `cmd`, the payload of the log entry at `index`.
    ///
    /// All or nothing: a command that is invalid against the current state changes nothing and
    /// returns the reason. A valid command that changes nothing (upserting identical builders,
    /// removing absent ones) leaves the revision where it was. A command whose
    /// [`Command::request_id`] was applied before (a retry of a request that committed) changes
    /// nothing and returns the first outcome.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Outcome {
        let Some(id) = &cmd.request_id else {
            return self.apply_once(index, cmd);
        };
        if let Some((_, first)) = self.requests.get(id) {
            return first.clone();
        }
        let outcome = self.apply_once(index, cmd);
        self.remember(id.clone(), index, outcome.clone());
        outcome
    }

    fn apply_once(&mut self, index: u64, cmd: &Command) -> Outcome {
        if let Err(rejection) = self.check(cmd) {
            return Outcome::Rejected(rejection);
        }
        if let Some(format) = cmd.raise_format {
            // Not a change of what Envoys are sent: the revision stays.
            self.format = self.format.max(format);
        }
        let mut changed = false;
        // A stage's promotion replaces the desired state as an apply does; a start or abort
        // changes what the group's Envoys get.
        let mut promoted = None;
        let mut stage_changed = false;
        if let Some(change) = cmd.stage.as_deref() {
            use services::StageChange as S;
            let fenced = |at: &u64| self.stage.as_ref().is_some_and(|s| s.at == *at);
            match change {
                S::Start {
                    desired,
                    group,
                    hold,
                    max_error_increase,
                    min_requests,
                    at_ms,
                } => {
                    self.stage = Some(Arc::new(services::Stage {
                        desired: Desired::clone(desired),
                        group: group.clone(),
                        hold: *hold,
                        max_error_increase: *max_error_increase,
                        min_requests: *min_requests,
                        at: index,
                        at_ms: *at_ms,
                    }));
                    stage_changed = true;
                }
                S::Promote { at, why, at_ms } | S::Abort { at, why, at_ms } if fenced(at) => {
                    let is_promote = matches!(change, S::Promote { .. });
                    if let Some(stage) = self.stage.take()
                        && is_promote
                    {
                        promoted = Some(stage.desired.clone());
                    }
                    self.last_stage = Some(Arc::new(services::StageEnd {
                        at: *at,
                        ended_at: index,
                        ended_at_ms: *at_ms,
                        promoted: is_promote,
                        why: why.clone(),
                    }));
                    stage_changed = true;
                }
                // About a stage that already ended: changes nothing.
                S::Promote { .. } | S::Abort { .. } => {}
            }
        }
        changed |= stage_changed;
        let new_desired = cmd.desired.as_deref().or(promoted.as_ref());
        if let Some(desired) = new_desired
            && *self.desired != *desired
        {
            self.desired = Arc::new(Desired::clone(desired));
            // Endpoints of services that no longer exist go with them.
            let gone: Vec<String> = self
                .endpoints
                .keys()
                .filter(|s| !self.desired.services.contains_key(*s))
                .cloned()
                .collect();
            for s in gone {
                self.endpoints.remove(&s);
            }
            changed = true;
        }
        let mut endpoints_changed = false;
        for change in &cmd.endpoints {
            endpoints_changed |= self.apply_endpoint(index, change);
        }
        changed |= endpoints_changed;
        let mut rollouts_changed = false;
        if !cmd.rollouts.is_empty() {
            // Checked as a whole first (`check`): applied in order, each one on the state the
            // ones before it left.
            let mut rollouts = services::Rollouts::clone(&self.rollouts);
            for change in &cmd.rollouts {
                let of = self.endpoints.get(change.service());
                rollouts_changed |=
                    services::rollout::apply(&mut rollouts, index, change, &self.desired, of)
                        .unwrap_or(false);
            }
            if rollouts_changed {
                self.rollouts = Arc::new(rollouts);
            }
        }
        // Rollouts of services that no longer exist go with them.
        if new_desired.is_some()
            && self
                .rollouts
                .keys()
                .any(|s| !self.desired.services.contains_key(s))
        {
            let mut rollouts = services::Rollouts::clone(&self.rollouts);
            rollouts.retain(|s, _| self.desired.services.contains_key(s));
            self.rollouts = Arc::new(rollouts);
            rollouts_changed = true;
        }
        changed |= rollouts_changed;
        if rollouts_changed
            || new_desired.is_some()
            || (endpoints_changed && !self.rollouts.is_empty())
        {
            self.reroute();
        } else if endpoints_changed {
            self.routed_endpoints = self.endpoints.clone();
        }
        for change in &cmd.certificates {
            changed |= match change {
                services::CertificateChange::Put { name, certificate } => {
                    let same = self
                        .certificates
                        .get(name)
                        .is_some_and(|c| **c == *certificate);
                    if !same {
                        self.certificates
                            .insert(name.clone(), Arc::new(certificate.clone()));
                    }
                    !same
                }
                services::CertificateChange::Remove { name } => {
                    self.certificates.remove(name).is_some()
                }
            };
        }
        for id in &cmd.batch.removes {
            if let Some(old) = self.builders.remove(id) {
                self.sni_index.remove(&old.sni);
                changed = true;
            }
        }
        for b in &cmd.batch.upserts {
            if self.builders.get(&b.id).is_some_and(|old| **old == *b) {
                continue;
            }
            if let Some(old) = self.builders.insert(b.id.clone(), Arc::new(b.clone())) {
                // Only drop the old name if nobody in this batch took it over.
                if self.sni_index.get(&old.sni) == Some(&old.id) {
                    self.sni_index.remove(&old.sni);
                }
            }
            self.sni_index.insert(b.sni.clone(), b.id.clone());
            changed = true;
        }
        if changed {
            self.revision = index;
        }
        Outcome::Applied {
            revision: self.revision,
            changed,
        }
    }

    /// Every rule a command must pass before it changes anything.
    fn check(&self, cmd: &Command) -> Result<(), Rejection> {
        // A raise is checked against nothing else: the leader proposes it once every member
        // supports the format, and the entry itself says it needs that format.
        if cmd.format > self.format && cmd.raise_format.is_none_or(|f| f < cmd.format) {
            return Err(Rejection::FormatNotEnabled {
                format: cmd.format,
                cluster: self.format,
            });
        }
        if let Some(expected) = cmd.if_revision
            && expected != self.revision
        {
            return Err(Rejection::StaleRevision {
                expected,
                actual: self.revision,
            });
        }
        if let Some(desired) = &cmd.desired {
            services::validate(desired)
                .map_err(|problems| Rejection::InvalidServices { problems })?;
        }
        self.check_endpoints(cmd)?;
        self.check_certificates(cmd)?;
        self.check_rollouts(cmd)?;
        self.check_stage(cmd)?;
        let removes: HashSet<&str> = cmd.batch.removes.iter().map(String::as_str).collect();
        let mut upsert_ids: HashMap<&str, &Builder> = HashMap::new();
        for b in &cmd.batch.upserts {
            b.validate().map_err(|e| Rejection::InvalidBuilder {
                message: e.to_string(),
            })?;
            if b.source != cmd.source {
                return Err(Rejection::SourceMismatch {
                    id: b.id.clone(),
                    builder: b.source,
                    command: cmd.source,
                });
            }
            if upsert_ids.insert(&b.id, b).is_some() {
                return Err(Rejection::DuplicateId { id: b.id.clone() });
            }
            if removes.contains(b.id.as_str()) {
                return Err(Rejection::UpsertAndRemove { id: b.id.clone() });
            }
        }
        // Ownership: a source changes only its own builders (the poller never touches `api` ones).
        let touched = cmd
            .batch
            .upserts
            .iter()
            .map(|b| &b.id)
            .chain(&cmd.batch.removes);
        for id in touched {
            if let Some(existing) = self.builders.get(id)
                && existing.source != cmd.source
            {
                return Err(Rejection::OwnedByOtherSource {
                    id: id.clone(),
                    owner: existing.source,
                });
            }
        }
        // SNI names stay unique in the resulting state.
        let mut new_snis: HashMap<&str, &str> = HashMap::new();
        for b in &cmd.batch.upserts {
            if let Some(other) = new_snis.insert(&b.sni, &b.id) {
                return Err(Rejection::DuplicateSni {
                    sni: b.sni.clone(),
                    ids: (other.to_string(), b.id.clone()),
                });
            }
            if let Some(owner) = self.sni_index.get(&b.sni)
                && *owner != b.id
            {
                let released = removes.contains(owner.as_str())
                    || upsert_ids
                        .get(owner.as_str())
                        .is_some_and(|ob| ob.sni != b.sni);
                if !released {
                    return Err(Rejection::DuplicateSni {
                        sni: b.sni.clone(),
                        ids: (owner.clone(), b.id.clone()),
                    });
                }
            }
        }
        Ok(())
    }
}

impl Registry {
    /// Certificate names are valid, every listener of the resulting desired state names a
    /// certificate that is held after the command, and none in use is removed.
    fn check_certificates(&self, cmd: &Command) -> Result<(), Rejection> {
        use services::CertificateChange as C;
        if cmd.desired.is_none() && cmd.certificates.is_empty() {
            return Ok(());
        }
        let mut held: std::collections::BTreeSet<&str> =
            self.certificates.keys().map(String::as_str).collect();
        for change in &cmd.certificates {
            match change {
                C::Put { name, .. } => {
                    let ok = !name.is_empty()
                        && name.len() <= 63
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                    if !ok {
                        return Err(Rejection::InvalidCertificateName { name: name.clone() });
                    }
                    held.insert(name);
                }
                C::Remove { name } => {
                    held.remove(name.as_str());
                }
            }
        }
        let desired = cmd.desired.as_deref().unwrap_or(&self.desired);
        for (listener, l) in &desired.listeners {
            if let Some(tls) = &l.tls
                && !held.contains(tls.certificate.as_str())
            {
                let removed = cmd
                    .certificates
                    .iter()
                    .any(|c| matches!(c, C::Remove { name } if *name == tls.certificate));
                return Err(match removed {
                    true => Rejection::CertificateInUse {
                        certificate: tls.certificate.clone(),
                        listener: listener.clone(),
                    },
                    false => Rejection::UnknownCertificate {
                        listener: listener.clone(),
                        certificate: tls.certificate.clone(),
                    },
                });
            }
        }
        Ok(())
    }

    /// Every rule an endpoint change must pass (against the desired state the command leaves).
    /// A stage starts only when none is staged, with a valid state whose certificates are
    /// held, for a group; an apply waits for the stage to end; an operator's promotion or abort
    /// needs a stage (the leader's, fenced, change nothing once it ended).
    fn check_stage(&self, cmd: &Command) -> Result<(), Rejection> {
        use services::StageChange as S;
        if let (Some(stage), Some(_)) = (&self.stage, &cmd.desired) {
            return Err(Rejection::StageInProgress { at: stage.at });
        }
        let Some(change) = cmd.stage.as_deref() else {
            return Ok(());
        };
        let S::Start {
            desired,
            group,
            hold,
            max_error_increase,
            min_requests,
            ..
        } = change
        else {
            return Ok(());
        };
        if let Some(stage) = &self.stage {
            return Err(Rejection::StageInProgress { at: stage.at });
        }
        services::validate(desired).map_err(|problems| Rejection::InvalidServices { problems })?;
        let invalid = |problem: String| Err(Rejection::InvalidStage { problem });
        if group.is_empty() {
            return invalid("name the group of Envoys that gets it first (--canary)".into());
        }
        if hold.as_millis() > services::stage::LONGEST_HOLD_MS {
            return invalid(format!("hold {hold} is longer than 24h"));
        }
        if *max_error_increase > 100 {
            return invalid(format!(
                "max_error_increase {max_error_increase} is outside 0-100 (percentage points)"
            ));
        }
        if *min_requests > services::rollout::MOST_MIN_REQUESTS {
            return invalid(format!(
                "min_requests {min_requests} is above {}",
                services::rollout::MOST_MIN_REQUESTS
            ));
        }
        for (listener, l) in &desired.listeners {
            if let Some(tls) = &l.tls
                && !self.certificates.contains_key(&tls.certificate)
            {
                return Err(Rejection::UnknownCertificate {
                    listener: listener.clone(),
                    certificate: tls.certificate.clone(),
                });
            }
        }
        Ok(())
    }

    /// Every rollout change must apply to the state the command's earlier parts leave; checked
    /// on a copy (rollouts are few), so a refused one changes nothing. Leaders' decisions about
    /// a step the rollout already left are not refused: they change nothing (fenced).
    fn check_rollouts(&self, cmd: &Command) -> Result<(), Rejection> {
        use services::rollout::RolloutProblem as P;
        if cmd.rollouts.is_empty() {
            return Ok(());
        }
        let desired = cmd.desired.as_deref().unwrap_or(&self.desired);
        let mut rollouts = services::Rollouts::clone(&self.rollouts);
        for change in &cmd.rollouts {
            let service = change.service().to_string();
            let of = self.endpoints.get(&service);
            services::rollout::apply(&mut rollouts, 0, change, desired, of).map_err(
                |p| match p {
                    P::Invalid(problem) => Rejection::InvalidRollout { service, problem },
                    P::InProgress(phase) => Rejection::RolloutInProgress { service, phase },
                    P::NoRollout => Rejection::NoRollout { service },
                    P::WrongPhase(phase) => Rejection::RolloutPhase {
                        service,
                        phase,
                        wanted: match change {
                            services::RolloutChange::Pause { .. } => "only a running one pauses",
                            services::RolloutChange::Resume { .. } => "only a paused one resumes",
                            _ => "only a running or paused one is aborted",
                        }
                        .into(),
                    },
                },
            )?;
        }
        Ok(())
    }

    fn check_endpoints(&self, cmd: &Command) -> Result<(), Rejection> {
        use services::EndpointChange as C;
        let desired = cmd.desired.as_deref().unwrap_or(&self.desired);
        for change in &cmd.endpoints {
            let (service, id) = change.key();
            if !desired.services.contains_key(service) {
                return Err(Rejection::UnknownService {
                    service: service.to_string(),
                });
            }
            let owner = services::endpoint_source(id);
            if owner != cmd.source {
                return Err(Rejection::EndpointOwnedByOtherSource {
                    service: service.to_string(),
                    id: id.to_string(),
                    owner,
                });
            }
            let invalid = |problem: String| Rejection::InvalidEndpoint {
                service: service.to_string(),
                id: id.to_string(),
                problem,
            };
            match change {
                C::Register {
                    addr, weight, ttl, ..
                } => {
                    // The poller's ids are `dns@` and an address; the API's have no `@`.
                    let bare = id.strip_prefix(services::DNS_ENDPOINT_PREFIX).unwrap_or(id);
                    let ok_id = !bare.is_empty()
                        && id.len() <= 128
                        && bare
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.:[]".contains(&b))
                        && (owner == Source::Dns || !bare.contains(['[', ']']));
                    if !ok_id {
                        return Err(invalid(
                            "an id is 1-128 letters, digits, '-', '_', '.' or ':'".into(),
                        ));
                    }
                    if addr.port() == 0 || addr.ip().is_unspecified() {
                        return Err(invalid(format!("{addr} is not an address to send to")));
                    }
                    if !(1..=128).contains(weight) {
                        return Err(invalid(format!("weight {weight} is outside 1-128")));
                    }
                    if let Some(t) = ttl
                        && !(services::SHORTEST_TTL_MS..=services::LONGEST_TTL_MS)
                            .contains(&t.as_millis())
                    {
                        return Err(invalid(format!("a lease of {t} is outside 1s-1h")));
                    }
                }
                C::Drain { .. } if self.endpoint(service, id).is_none() => {
                    return Err(Rejection::UnknownEndpoint {
                        service: service.to_string(),
                        id: id.to_string(),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Applies one checked endpoint change; whether it changed anything.
    fn apply_endpoint(&mut self, index: u64, change: &services::EndpointChange) -> bool {
        use services::EndpointChange as C;
        let (service, id) = change.key();
        let mut m = self.endpoints.get(service).cloned().unwrap_or_default();
        let changed = match change {
            C::Register {
                addr,
                weight,
                labels,
                ttl,
                ..
            } => {
                m.insert(
                    id.to_string(),
                    Arc::new(services::Endpoint {
                        id: id.to_string(),
                        addr: *addr,
                        weight: *weight,
                        labels: labels.clone(),
                        ttl: *ttl,
                        draining: false,
                        registered_at: index,
                    }),
                );
                true
            }
            C::Deregister { .. } => m.remove(id).is_some(),
            C::Drain { .. } => match m.get(id) {
                Some(e) if !e.draining => {
                    let mut e = services::Endpoint::clone(e);
                    e.draining = true;
                    m.insert(id.to_string(), Arc::new(e));
                    true
                }
                _ => false,
            },
            C::Expire { registered_at, .. } => match m.get(id) {
                Some(e) if e.registered_at == *registered_at => m.remove(id).is_some(),
                _ => false,
            },
        };
        if changed {
            match m.is_empty() {
                true => self.endpoints.remove(service),
                false => self.endpoints.insert(service.to_string(), m),
            };
        }
        changed
    }
}

/// The batch that turns the builders `from` into `to`: upserts for what is new or different,
/// removals for what is gone. `apply(diff(a, b))` on a registry holding `a` yields `b`.
pub fn diff(from: &BTreeMap<String, Builder>, to: &BTreeMap<String, Builder>) -> Batch {
    let removes = from
        .keys()
        .filter(|id| !to.contains_key(*id))
        .cloned()
        .collect();
    let upserts = to
        .iter()
        .filter(|(id, b)| from.get(*id) != Some(b))
        .map(|(_, b)| b.clone())
        .collect();
    Batch { upserts, removes }
}

#[cfg(test)]
mod tests;
