//! The sled-backed Raft store: one sled database per replica holding the log, the vote, the
//! committed and purged ids ([`LogStore`]), and the state machine with its snapshot
//! ([`StateMachine`]).
//!
//! Durability (DESIGN rule 8): a vote or a log entry is reported to openraft only after a
//! synchronous `flush()` of the database followed by an fsync of its files ([`Db::flush`]).
//! Flushes are serialised by one lock and run on the blocking pool; sled 0.34's `flush_async` can
//! deadlock when called concurrently, so it is never used.
//!
//! sled 0.34.7's `flush()` alone is not durable on Linux: it writes with `sync_file_range(2)`,
//! which flushes neither the disk's write cache nor the file's size, and it never syncs blob
//! files; only its background flusher calls `fsync`, once per `flush_every_ms`. The crash-disk
//! chaos run (a disk that drops unsynced writes) lost a third of the acknowledged writes that way.

// openraft's `StorageError` is large by design and is what the storage traits return; boxing it
// in our helpers would only add a conversion at every call site.
#![allow(clippy::result_large_err)]

mod log;
mod sm;

pub use log::LogStore;
pub use sm::{RevisionTimes, StateError, StateMachine};

use openraft::{AnyError, StorageError, StorageIOError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::NodeId;

/// Version of the on-disk layout, stored with the identity; bumped on incompatible changes.
const FORMAT: u32 = 1;

/// Who a data dir belongs to, written on first start and checked on every start after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The cluster's name.
    pub cluster: String,
    /// This replica's Raft node id.
    pub node_id: NodeId,
    /// On-disk layout version.
    #[serde(default)]
    pub format: u32,
}

/// Why a data dir could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// sled could not open the directory (locked by another process, corrupt, no permission).
    #[error("cannot open data dir {dir}: {source}")]
    Sled {
        /// The data dir.
        dir: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// Another process has the data dir open.
    #[error("data dir {dir} is in use by another process (is another concord running on it?)")]
    Locked {
        /// The data dir.
        dir: PathBuf,
    },
    /// The data dir was created by another cluster.
    #[error(
        "data dir {dir} belongs to cluster {found:?}, not {expected:?}; \
         point --data-dir at this node's own directory, or at an empty one to join as a new node"
    )]
    ForeignCluster {
        /// The data dir.
        dir: PathBuf,
        /// The cluster name in the data dir.
        found: String,
        /// The configured cluster name.
        expected: String,
    },
    /// The data dir was created by another node of this cluster.
    #[error(
        "data dir {dir} belongs to node {found}, but this node was started as node {expected}; \
         a node id is tied to its data dir"
    )]
    NodeIdMismatch {
        /// The data dir.
        dir: PathBuf,
        /// The node id in the data dir.
        found: NodeId,
        /// The configured node id.
        expected: NodeId,
    },
    /// The data dir was written by an incompatible version of concord.
    #[error("data dir {dir} has on-disk format {found}, this concord reads format {FORMAT}")]
    Format {
        /// The data dir.
        dir: PathBuf,
        /// The format found.
        found: u32,
    },
    /// The stored state machine could not be read back.
    #[error("data dir {dir} is unreadable: {source}")]
    State {
        /// The data dir.
        dir: PathBuf,
        /// What was wrong.
        #[source]
        source: StateError,
    },
    /// A stored record could not be read back.
    #[error("data dir {dir} is unreadable: {reason}")]
    Corrupt {
        /// The data dir.
        dir: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// The sled database shared by the log store and the state machine.
#[derive(Clone)]
pub(crate) struct Db {
    db: sled::Db,
    /// sled's directory (`<data dir>/db`).
    path: Arc<PathBuf>,
    /// Serialises flushes (see the module docs).
    flush_lock: Arc<Mutex<()>>,
}

impl Db {
    /// Flushes every tree to disk, on the blocking pool; returns once the data is durable.
    pub(crate) async fn flush(&self) -> Result<(), std::io::Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = this.flush_lock.lock().unwrap_or_else(|e| e.into_inner());
            this.db.flush().map_err(std::io::Error::other)?;
            fsync_sled_files(&this.path)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    pub(crate) fn tree(&self, name: &str) -> Result<sled::Tree, sled::Error> {
        self.db.open_tree(name)
    }
}

/// Opens (or creates) the store in `dir` for `identity`, refusing a data dir of another cluster
/// or node.
pub async fn open(dir: &Path, identity: &Identity) -> Result<(LogStore, StateMachine), OpenError> {
    let sled_err = |source| OpenError::Sled {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| sled_err(sled::Error::Io(e)))?;
    let config = sled::Config::new()
        .path(dir.join("db"))
        // The flusher thread only bounds the loss of state machine writes, which are re-applied
        // from the log anyway; the log itself is flushed before it is acknowledged.
        .flush_every_ms(Some(1000));
    // The lock of a database closed a moment ago (a replica restarting in place) can linger
    // briefly; another live process holding it is reported after a short wait.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let db = loop {
        match config.open() {
            Ok(db) => break db,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    return Err(OpenError::Locked {
                        dir: dir.to_path_buf(),
                    });
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => return Err(sled_err(e)),
        }
    };
    let db = Db {
        db,
        path: Arc::new(dir.join("db")),
        flush_lock: Arc::new(Mutex::new(())),
    };
    check_identity(&db, dir, identity).await?;
    let log = LogStore::open(db.clone()).map_err(sled_err)?;
    let sm = StateMachine::open(db).map_err(|source| OpenError::State {
        dir: dir.to_path_buf(),
        source,
    })?;
    Ok((log, sm))
}

/// fsyncs what sled's `flush()` wrote but did not make durable (see the module docs): its log
/// file, its blob files, and the directories that name them.
fn fsync_sled_files(path: &Path) -> std::io::Result<()> {
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    std::fs::File::open(path.join("db"))?.sync_data()?;
    let blobs = path.join("blobs");
    match std::fs::read_dir(&blobs) {
        Ok(entries) => {
            for e in entries {
                // A blob sled removed meanwhile needs no sync.
                match std::fs::File::open(e?.path()).and_then(|f| f.sync_data()) {
                    Err(e) if !gone(&e) => return Err(e),
                    _ => {}
                }
            }
            std::fs::File::open(&blobs)?.sync_all()?;
        }
        Err(e) if gone(&e) => {}
        Err(e) => return Err(e),
    }
    std::fs::File::open(path)?.sync_all()
}

async fn check_identity(db: &Db, dir: &Path, want: &Identity) -> Result<(), OpenError> {
    let sled_err = |source| OpenError::Sled {
        dir: dir.to_path_buf(),
        source,
    };
    let meta = db.tree("meta").map_err(sled_err)?;
    match meta.get("identity").map_err(sled_err)? {
        Some(raw) => {
            let found: Identity = serde_json::from_slice(&raw).map_err(|e| OpenError::Corrupt {
                dir: dir.to_path_buf(),
                reason: format!("identity record: {e}"),
            })?;
            if found.format != FORMAT {
                return Err(OpenError::Format {
                    dir: dir.to_path_buf(),
                    found: found.format,
                });
            }
            if found.cluster != want.cluster {
                return Err(OpenError::ForeignCluster {
                    dir: dir.to_path_buf(),
                    found: found.cluster,
                    expected: want.cluster.clone(),
                });
            }
            if found.node_id != want.node_id {
                return Err(OpenError::NodeIdMismatch {
                    dir: dir.to_path_buf(),
                    found: found.node_id,
                    expected: want.node_id,
                });
            }
        }
        None => {
            let id = Identity {
                format: FORMAT,
                ..want.clone()
            };
            let raw = serde_json::to_vec(&id).expect("identity serialises");
            meta.insert("identity", raw).map_err(sled_err)?;
            db.flush().await.map_err(|e| sled_err(sled::Error::Io(e)))?;
        }
    }
    Ok(())
}

/// JSON encoding of stored values; a decode failure is a storage error (corrupt record).
pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("raft types serialise to JSON")
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(raw: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(raw)
}

/// Shorthand for the storage errors openraft wants.
pub(crate) fn io_err(
    make: fn(AnyError) -> StorageIOError<NodeId>,
    e: &(impl std::error::Error + 'static),
) -> StorageError<NodeId> {
    make(AnyError::new(e)).into()
}

#[cfg(test)]
mod tests;
