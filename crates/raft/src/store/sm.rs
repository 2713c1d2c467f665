//! The state machine in sled: the registry's builders (`b/<id>`), the last applied log id, the last
//! membership and the revision in tree `sm`; the current snapshot in tree `snapshot`.
//!
//! The applied registry lives in a `watch` channel as an `Arc<Registry>`: readers (the admin API,
//! the xDS server) take the current `Arc` without copying, and apply mutates it in place unless a
//! reader still holds the old revision (copy on write). Readers nearly always do, so the copy
//! happens on most commits; the registry's persistent maps make it O(1), and the change itself
//! O(log n) per builder.

use super::{Db, decode, encode, io_err};
use crate::{NodeId, TypeConfig};
use concord_registry::services::Desired;
use concord_registry::{Builder, Outcome, RecentRequest, Registry};
use concord_telemetry::trace::Span;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

type Membership = StoredMembership<NodeId, openraft::BasicNode>;
type Meta = SnapshotMeta<NodeId, openraft::BasicNode>;

const APPLIED: &[u8] = b"m/applied";
const MEMBERSHIP: &[u8] = b"m/membership";
const REVISION: &[u8] = b"m/revision";
/// The cluster's entry format ([`Registry::format`]); absent before the first raise.
const FORMAT: &[u8] = b"m/format";
/// The services half's desired state ([`Registry::desired`]), replaced whole by each apply.
const DESIRED: &[u8] = b"d/desired";
/// Release rollouts by service ([`Registry::rollouts`]), replaced whole when they change.
const ROLLOUTS: &[u8] = b"r/rollouts";
/// The staged configuration and how the last stage ended ([`StoredStage`]).
const STAGE: &[u8] = b"s/stage";
/// Registered endpoints (`e/<service>/<id>` → [`StoredEndpoint`]).
const ENDPOINT_PREFIX: &[u8] = b"e/";
/// Certificates for TLS termination (`c/<name>` → [`StoredCertificate`]).
const CERTIFICATE_PREFIX: &[u8] = b"c/";

/// A certificate with its name, as stored and in snapshots.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredCertificate {
    name: String,
    certificate: concord_registry::services::Certificate,
}

fn certificate_key(name: &str) -> Vec<u8> {
    [CERTIFICATE_PREFIX, name.as_bytes()].concat()
}

/// The stage and how the last one ended, as stored and in snapshots.
#[derive(Default, Serialize, Deserialize)]
pub(super) struct StoredStage {
    #[serde(default)]
    stage: Option<concord_registry::services::Stage>,
    #[serde(default)]
    last: Option<concord_registry::services::StageEnd>,
}

fn stored_stage(r: &Registry) -> StoredStage {
    StoredStage {
        stage: r
            .stage()
            .map(|s| concord_registry::services::Stage::clone(s)),
        last: r
            .last_stage()
            .map(|s| concord_registry::services::StageEnd::clone(s)),
    }
}

/// A registered endpoint with its service, as stored and in snapshots.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredEndpoint {
    service: String,
    endpoint: concord_registry::services::Endpoint,
}

fn endpoint_key(service: &str, id: &str) -> Vec<u8> {
    [ENDPOINT_PREFIX, service.as_bytes(), b"/", id.as_bytes()].concat()
}
const BUILDER_PREFIX: &[u8] = b"b/";
/// Remembered request ids (`q/<log index, big endian>` → [`RecentRequest`]), so a restarted
/// replica answers retries as the others do.
const REQUEST_PREFIX: &[u8] = b"q/";
const SNAP_META: &str = "meta";
const SNAP_DATA: &str = "data";

/// What a snapshot's data holds (its meta is stored beside it).
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotData {
    revision: u64,
    builders: Vec<Builder>,
    /// Recent request ids and their first outcomes; absent in snapshots of earlier versions.
    #[serde(default)]
    requests: Vec<RecentRequest>,
    /// The cluster's entry format; absent in snapshots of earlier versions (format 1).
    #[serde(default = "builders_format")]
    format: u32,
    /// The services half's desired state; absent in snapshots of earlier versions (none).
    #[serde(default)]
    desired: Desired,
    /// Registered endpoints; absent in snapshots of earlier versions (none).
    #[serde(default)]
    endpoints: Vec<StoredEndpoint>,
    /// Certificates; absent in snapshots of earlier versions (none).
    #[serde(default)]
    certificates: Vec<StoredCertificate>,
    /// Rollouts; absent in snapshots of earlier versions (none).
    #[serde(default)]
    rollouts: concord_registry::services::Rollouts,
    /// The stage; absent in snapshots of earlier versions (none).
    #[serde(default)]
    stage: StoredStage,
}

impl SnapshotData {
    fn registry(&self) -> Result<Registry, concord_registry::Rejection> {
        Ok(
            Registry::from_parts(self.builders.iter().cloned(), self.revision)?
                .with_requests(self.requests.iter().cloned())
                .with_format(self.format)
                .with_desired(self.desired.clone())
                .with_endpoints(
                    self.endpoints
                        .iter()
                        .map(|e| (e.service.clone(), e.endpoint.clone())),
                )
                .with_certificates(
                    self.certificates
                        .iter()
                        .map(|c| (c.name.clone(), c.certificate.clone())),
                )
                .with_rollouts(self.rollouts.clone())
                .with_stage(self.stage.stage.clone(), self.stage.last.clone()),
        )
    }
}

fn builders_format() -> u32 {
    concord_registry::FORMAT_BUILDERS
}

/// The state machine half of the store. Clones share state (the snapshot builder is a clone).
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    tree: sled::Tree,
    snap: sled::Tree,
    registry: watch::Sender<Arc<Registry>>,
    /// Held while applying, so `applied` and `registry` are always read as a consistent pair.
    applied: Mutex<Applied>,
    /// When recent revisions were applied here, and when their change was first seen (the
    /// `seen_at_us` a proposer put in the command): for commit-to-ACK and discovery-to-ACK.
    times: Mutex<std::collections::VecDeque<RevisionTimes>>,
    /// Held while the stored snapshot is compared and replaced: a build reads the state, then
    /// stores it, and an install of a newer snapshot can land in between.
    snap_lock: Mutex<()>,
    /// Test hook: pauses a snapshot build between reading the state and storing it.
    #[cfg(test)]
    build_pause: Mutex<Option<BuildPause>>,
}

/// A paused snapshot build (tests): `read` fires once the state is read, and the build stores
/// its snapshot after `resume` fires.
#[cfg(test)]
pub(super) struct BuildPause {
    pub(super) read: tokio::sync::oneshot::Sender<()>,
    pub(super) resume: tokio::sync::oneshot::Receiver<()>,
}

/// When one revision was applied on this replica, when its change was first seen, its apply span.
pub type RevisionTimes = concord_telemetry::AppliedRevision;

/// Revisions whose times are kept.
const KEPT_TIMES: usize = 4096;

#[derive(Clone, Default)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
}

fn builder_key(id: &str) -> Vec<u8> {
    [BUILDER_PREFIX, id.as_bytes()].concat()
}

fn request_key(index: u64) -> Vec<u8> {
    [REQUEST_PREFIX, &index.to_be_bytes()].concat()
}

/// Why the stored state machine could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// sled failed reading a tree.
    #[error("reading the state machine: {0}")]
    Read(#[from] sled::Error),
    /// A stored record does not decode.
    #[error("the stored {what} does not decode: {source}")]
    Decode {
        /// Which record.
        what: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// The stored builders do not form a valid registry.
    #[error("the stored builders do not form a registry: {0}")]
    Registry(#[source] concord_registry::Rejection),
    /// The stored snapshot could not be read or restored.
    #[error("restoring the stored snapshot: {0}")]
    Snapshot(#[source] Box<StorageError<NodeId>>),
}

impl StateMachine {
    pub(crate) fn open(db: Db) -> Result<Self, StateError> {
        let tree = db.tree("sm")?;
        let snap = db.tree("snapshot")?;
        let decoded = |what: &str| {
            let what = what.to_string();
            move |source| StateError::Decode { what, source }
        };
        let last_applied: Option<LogId<NodeId>> = match tree.get(APPLIED)? {
            Some(raw) => decode(&raw).map_err(decoded("applied id"))?,
            None => None,
        };
        let membership: Membership = match tree.get(MEMBERSHIP)? {
            Some(raw) => decode(&raw).map_err(decoded("membership"))?,
            None => Membership::default(),
        };
        let revision: u64 = match tree.get(REVISION)? {
            Some(raw) => decode(&raw).map_err(decoded("revision"))?,
            None => 0,
        };
        let format: u32 = match tree.get(FORMAT)? {
            Some(raw) => decode(&raw).map_err(decoded("entry format"))?,
            None => concord_registry::FORMAT_BUILDERS,
        };
        let desired: Desired = match tree.get(DESIRED)? {
            Some(raw) => decode(&raw).map_err(decoded("desired services"))?,
            None => Desired::default(),
        };
        let rollouts: concord_registry::services::Rollouts = match tree.get(ROLLOUTS)? {
            Some(raw) => decode(&raw).map_err(decoded("rollouts"))?,
            None => Default::default(),
        };
        let stage: StoredStage = match tree.get(STAGE)? {
            Some(raw) => decode(&raw).map_err(decoded("stage"))?,
            None => StoredStage::default(),
        };
        let mut builders = Vec::new();
        for kv in tree.scan_prefix(BUILDER_PREFIX) {
            let (k, raw) = kv?;
            let what = format!("builder {}", String::from_utf8_lossy(&k));
            let b: Builder = decode(&raw).map_err(decoded(&what))?;
            builders.push(b);
        }
        let mut endpoints = Vec::new();
        for kv in tree.scan_prefix(ENDPOINT_PREFIX) {
            let (k, raw) = kv?;
            let what = format!("endpoint {}", String::from_utf8_lossy(&k));
            let e: StoredEndpoint = decode(&raw).map_err(decoded(&what))?;
            endpoints.push((e.service, e.endpoint));
        }
        let mut certificates = Vec::new();
        for kv in tree.scan_prefix(CERTIFICATE_PREFIX) {
            let (k, raw) = kv?;
            let what = format!("certificate {}", String::from_utf8_lossy(&k));
            let c: StoredCertificate = decode(&raw).map_err(decoded(&what))?;
            certificates.push((c.name, c.certificate));
        }
        let mut requests = Vec::new();
        for kv in tree.scan_prefix(REQUEST_PREFIX) {
            let (_, raw) = kv?;
            requests.push(decode::<RecentRequest>(&raw).map_err(decoded("request id"))?);
        }
        let registry = Registry::from_parts(builders, revision)
            .map_err(StateError::Registry)?
            .with_requests(requests)
            .with_format(format)
            .with_desired(desired)
            .with_endpoints(endpoints)
            .with_certificates(certificates)
            .with_rollouts(rollouts)
            .with_stage(stage.stage, stage.last);
        let sm = StateMachine {
            inner: Arc::new(Inner {
                db,
                tree,
                snap,
                registry: watch::Sender::new(Arc::new(registry)),
                applied: Mutex::new(Applied {
                    last_applied,
                    membership,
                }),
                times: Mutex::default(),
                snap_lock: Mutex::default(),
                #[cfg(test)]
                build_pause: Mutex::default(),
            }),
        };
        // The state machine tree is not flushed on apply; if a crash lost applies that a
        // snapshot holds (and the log was purged behind it), restore from the snapshot.
        if let Some((meta, data)) = sm
            .read_snapshot()
            .map_err(|e| StateError::Snapshot(Box::new(e)))?
            && meta.last_log_id > last_applied
        {
            sm.restore(&meta, &data)
                .map_err(|e| StateError::Snapshot(Box::new(e)))?;
        }
        Ok(sm)
    }

    /// Flushes the store to disk (on the blocking pool); used when the replica stops.
    pub(crate) async fn flush(&self) -> Result<(), std::io::Error> {
        self.inner.db.flush().await
    }

    /// The applied registry, updated after every apply. Borrow it briefly, or clone the `Arc`.
    pub fn registry(&self) -> watch::Receiver<Arc<Registry>> {
        self.inner.registry.subscribe()
    }

    /// When the revisions after `after` up to `upto` were applied here (the recent ones).
    pub fn revision_times(&self, after: u64, upto: u64) -> Vec<RevisionTimes> {
        let times = self.inner.times.lock().unwrap_or_else(|e| e.into_inner());
        // Revisions are kept in increasing order: find the range, do not scan all.
        let from = times.partition_point(|t| t.revision <= after);
        times
            .range(from..)
            .take_while(|t| t.revision <= upto)
            .cloned()
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.inner.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_snapshot(&self) -> Result<Option<(Meta, Vec<u8>)>, StorageError<NodeId>> {
        let read = |e: &dyn std::error::Error| {
            StorageError::from(StorageIOError::<NodeId>::read_snapshot(
                None,
                openraft::AnyError::error(e),
            ))
        };
        let (Some(meta), Some(data)) = (
            self.inner.snap.get(SNAP_META).map_err(|e| read(&e))?,
            self.inner.snap.get(SNAP_DATA).map_err(|e| read(&e))?,
        ) else {
            return Ok(None);
        };
        let meta: Meta = decode(&meta).map_err(|e| read(&e))?;
        Ok(Some((meta, data.to_vec())))
    }

    /// Replaces the state with a snapshot's: the sled tree, then the in-memory registry.
    fn restore(&self, meta: &Meta, data: &[u8]) -> Result<(), StorageError<NodeId>> {
        let write = StorageIOError::<NodeId>::write_state_machine;
        let snap: SnapshotData = decode(data).map_err(|e| io_err(write, &e))?;
        let registry = snap.registry().map_err(|e| io_err(write, &e))?;
        let mut applied = self.lock();
        // Clear first, then write everything with the applied id in one batch: a crash in between
        // leaves a tree whose applied id is older than the snapshot, which `open` restores again.
        self.inner.tree.clear().map_err(|e| io_err(write, &e))?;
        let mut batch = sled::Batch::default();
        for b in &snap.builders {
            batch.insert(builder_key(&b.id), encode(b));
        }
        for r in registry.requests() {
            batch.insert(request_key(r.index), encode(&r));
        }
        batch.insert(APPLIED, encode(&meta.last_log_id));
        batch.insert(MEMBERSHIP, encode(&meta.last_membership));
        batch.insert(REVISION, encode(&snap.revision));
        batch.insert(FORMAT, encode(&snap.format));
        batch.insert(DESIRED, encode(&snap.desired));
        for e in &snap.endpoints {
            batch.insert(endpoint_key(&e.service, &e.endpoint.id), encode(e));
        }
        for c in &snap.certificates {
            batch.insert(certificate_key(&c.name), encode(c));
        }
        batch.insert(ROLLOUTS, encode(&snap.rollouts));
        batch.insert(STAGE, encode(&snap.stage));
        self.inner
            .tree
            .apply_batch(batch)
            .map_err(|e| io_err(write, &e))?;
        *applied = Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        self.inner.registry.send_replace(Arc::new(registry));
        Ok(())
    }

    /// Pauses the next snapshot build between its read and its store (tests).
    #[cfg(test)]
    pub(super) fn pause_next_build(&self, pause: BuildPause) {
        *self
            .inner
            .build_pause
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(pause);
    }

    /// Stores `meta`/`data` as the current snapshot. With `only_if_newest`, a stored snapshot
    /// that covers more of the log is kept instead, and `false` returned: a build holds the
    /// state it read earlier, and an install of a newer snapshot may have landed since; replacing
    /// it would leave a snapshot older than the log openraft then purges up to the installed one.
    async fn store_snapshot(
        &self,
        meta: &Meta,
        data: &[u8],
        only_if_newest: bool,
    ) -> Result<bool, StorageError<NodeId>> {
        let write = |e: &dyn std::error::Error| {
            StorageError::from(StorageIOError::<NodeId>::write_snapshot(
                Some(meta.signature()),
                openraft::AnyError::error(e),
            ))
        };
        {
            let _guard = self
                .inner
                .snap_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if only_if_newest
                && let Some((stored, _)) = self.read_snapshot()?
                && stored.last_log_id > meta.last_log_id
            {
                tracing::info!(
                    built = ?meta.last_log_id,
                    stored = ?stored.last_log_id,
                    "a newer snapshot was installed while this one was built; keeping it"
                );
                return Ok(false);
            }
            let mut batch = sled::Batch::default();
            batch.insert(SNAP_META, encode(meta));
            batch.insert(SNAP_DATA, data);
            self.inner.snap.apply_batch(batch).map_err(|e| write(&e))?;
        }
        self.inner.db.flush().await.map_err(|e| write(&e))?;
        Ok(true)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (applied, registry) = {
            let applied = self.lock();
            (applied.clone(), self.inner.registry.borrow().clone())
        };
        #[cfg(test)]
        {
            let pause = self
                .inner
                .build_pause
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(pause) = pause {
                let _ = pause.read.send(());
                let _ = pause.resume.await;
            }
        }
        let data = encode(&SnapshotData {
            revision: registry.revision(),
            builders: registry.iter().map(|b| Builder::clone(b)).collect(),
            requests: registry.requests().collect(),
            format: registry.format(),
            desired: Desired::clone(registry.desired()),
            endpoints: registry
                .all_endpoints()
                .map(|(service, e)| StoredEndpoint {
                    service: service.to_string(),
                    endpoint: concord_registry::services::Endpoint::clone(e),
                })
                .collect(),
            certificates: registry
                .certificates()
                .iter()
                .map(|(name, c)| StoredCertificate {
                    name: name.clone(),
                    certificate: concord_registry::services::Certificate::clone(c),
                })
                .collect(),
            rollouts: concord_registry::services::Rollouts::clone(registry.rollouts()),
            stage: stored_stage(&registry),
        });
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let snapshot_id = match applied.last_applied {
            Some(id) => format!("{}-{}-{nanos}", id.leader_id, id.index),
            None => format!("none-{nanos}"),
        };
        let meta = Meta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
            snapshot_id,
        };
        if !self.store_snapshot(&meta, &data, true).await? {
            // Hand openraft the newer stored snapshot: it keeps the one it knows of, which is
            // at least as new, and purges nothing beyond it.
            if let Some((meta, data)) = self.read_snapshot()? {
                return Ok(Snapshot {
                    meta,
                    snapshot: Box::new(Cursor::new(data)),
                });
            }
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        let applied = self.lock();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        let mut batch = sled::Batch::default();
        let mut applied = self.lock();
        // Request ids remembered by this batch of entries, by log index.
        let mut remembered = Vec::new();
        // Endpoint keys this batch writes: not in the tree until it is applied, so a later
        // entry of the same batch that drops their service must find them here.
        let mut batched_endpoints: std::collections::BTreeSet<Vec<u8>> = Default::default();
        let mut unknown = None;
        self.inner.registry.send_if_modified(|registry| {
            let before = registry.revision();
            for entry in entries {
                // An entry of a format this build does not know would be applied only in part
                // (its unknown fields ignored): stop here instead, before it counts as applied.
                if let EntryPayload::Normal(cmd) = &entry.payload
                    && let Err(e) = cmd.check_format()
                {
                    unknown = Some((entry.log_id, e));
                    break;
                }
                applied.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => outcomes.push(Outcome::Applied {
                        revision: registry.revision(),
                        changed: false,
                    }),
                    EntryPayload::Normal(cmd) => {
                        // The apply continues the change's trace from the context in the entry.
                        let mut span = Span::remote_child(&cmd.trace, "registry.apply");
                        // A new desired state drops the endpoints of the services it removes:
                        // which services had endpoints before, to delete theirs from the tree.
                        let had_endpoints: Vec<String> = match cmd.may_replace_desired() {
                            true => registry.endpoint_map().keys().cloned().collect(),
                            false => Vec::new(),
                        };
                        let out = Arc::make_mut(registry).apply(entry.log_id.index, &cmd);
                        if let Some(id) = &cmd.request_id
                            && registry
                                .request(id)
                                .is_some_and(|(i, _)| i == entry.log_id.index)
                        {
                            remembered.push(RecentRequest {
                                id: id.clone(),
                                index: entry.log_id.index,
                                outcome: out.clone(),
                            });
                        }
                        if span.is_recording() {
                            span.set("raft.log_index", entry.log_id.index as i64);
                            span.set("registry.upserts", cmd.batch.upserts.len() as i64);
                            span.set("registry.removes", cmd.batch.removes.len() as i64);
                            span.set("registry.revision", registry.revision() as i64);
                        }
                        if let Outcome::Applied {
                            changed: true,
                            revision,
                        } = out
                        {
                            let mut times =
                                self.inner.times.lock().unwrap_or_else(|e| e.into_inner());
                            if times.len() == KEPT_TIMES {
                                times.pop_front();
                            }
                            times.push_back(RevisionTimes {
                                revision,
                                applied_at: std::time::Instant::now(),
                                seen_at_us: cmd.seen_at_us(),
                                trace: span.reference(),
                                what: cmd.summary().into(),
                            });
                            for id in &cmd.batch.removes {
                                batch.remove(builder_key(id));
                            }
                            for b in &cmd.batch.upserts {
                                batch.insert(builder_key(&b.id), encode(b));
                            }
                            if cmd.may_replace_desired() {
                                batch.insert(DESIRED, encode(&**registry.desired()));
                                // Endpoints of services that went with the new state.
                                let gone = had_endpoints
                                    .iter()
                                    .filter(|s| !registry.endpoint_map().contains_key(*s));
                                for service in gone {
                                    let prefix = endpoint_key(service, "");
                                    for k in self.inner.tree.scan_prefix(&prefix).keys().flatten() {
                                        batch.remove(k);
                                    }
                                    for k in
                                        batched_endpoints.iter().filter(|k| k.starts_with(&prefix))
                                    {
                                        batch.remove(k.clone());
                                    }
                                }
                            }
                            if !cmd.rollouts.is_empty() || cmd.may_replace_desired() {
                                batch.insert(ROLLOUTS, encode(&**registry.rollouts()));
                            }
                            if cmd.stage.is_some() {
                                batch.insert(STAGE, encode(&stored_stage(registry)));
                            }
                            for change in &cmd.certificates {
                                let name = match change {
                                    concord_registry::services::CertificateChange::Put {
                                        name,
                                        ..
                                    }
                                    | concord_registry::services::CertificateChange::Remove {
                                        name,
                                    } => name,
                                };
                                match registry.certificates().get(name) {
                                    Some(c) => batch.insert(
                                        certificate_key(name),
                                        encode(&StoredCertificate {
                                            name: name.clone(),
                                            certificate:
                                                concord_registry::services::Certificate::clone(c),
                                        }),
                                    ),
                                    None => batch.remove(certificate_key(name)),
                                }
                            }
                            for change in &cmd.endpoints {
                                let (service, id) = change.key();
                                batched_endpoints.insert(endpoint_key(service, id));
                                match registry.endpoint(service, id) {
                                    Some(e) => batch.insert(
                                        endpoint_key(service, id),
                                        encode(&StoredEndpoint {
                                            service: service.to_string(),
                                            endpoint: concord_registry::services::Endpoint::clone(
                                                e,
                                            ),
                                        }),
                                    ),
                                    None => batch.remove(endpoint_key(service, id)),
                                }
                            }
                        }
                        match &out {
                            Outcome::Rejected(r) => span.fail(r.to_string()),
                            Outcome::Applied { .. } => span.ok(),
                        }
                        outcomes.push(out);
                    }
                    EntryPayload::Membership(m) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), m);
                        outcomes.push(Outcome::Applied {
                            revision: registry.revision(),
                            changed: false,
                        });
                    }
                }
            }
            batch.insert(REVISION, encode(&registry.revision()));
            batch.insert(FORMAT, encode(&registry.format()));
            // Store what is still remembered, and drop what was evicted (by this batch or before).
            let oldest = registry.oldest_request_index().unwrap_or(0);
            for r in remembered.iter().filter(|r| r.index >= oldest) {
                batch.insert(request_key(r.index), encode(r));
            }
            for (k, _) in self
                .inner
                .tree
                .range(request_key(0)..request_key(oldest))
                .flatten()
            {
                batch.remove(k);
            }
            registry.revision() != before
        });
        batch.insert(APPLIED, encode(&applied.last_applied));
        batch.insert(MEMBERSHIP, encode(&applied.membership));
        let write = StorageIOError::<NodeId>::write_state_machine;
        self.inner
            .tree
            .apply_batch(batch)
            .map_err(|e| io_err(write, &e))?;
        if let Some((log_id, e)) = unknown {
            tracing::error!(index = log_id.index, error = %e, "stopped applying the log");
            return Err(io_err(write, &e));
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        // Validate before anything is replaced, then keep the snapshot durable before the state.
        // A snapshot that decodes but is no registry (one SNI name twice) is refused here, before
        // it is stored: stored, it would stop this replica again at every start.
        let write = StorageIOError::<NodeId>::write_state_machine;
        let snap = decode::<SnapshotData>(&data).map_err(|e| io_err(write, &e))?;
        if snap.format > concord_registry::FORMAT {
            let e = concord_registry::UnknownFormat {
                format: snap.format,
            };
            tracing::error!(error = %e, "refused a snapshot");
            return Err(io_err(write, &e));
        }
        snap.registry().map_err(|e| io_err(write, &e))?;
        concord_registry::services::validate(&snap.desired).map_err(|problems| {
            io_err(
                write,
                &concord_registry::Rejection::InvalidServices { problems },
            )
        })?;
        // openraft installs only a snapshot newer than anything committed here, so newer than
        // any snapshot built here: store it unconditionally.
        self.store_snapshot(meta, &data, false).await?;
        self.restore(meta, &data)
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.read_snapshot()?.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
