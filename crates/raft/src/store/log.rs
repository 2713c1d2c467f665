//! The Raft log in sled: entries keyed by big-endian index in tree `log`; vote, committed and
//! last-purged ids in tree `meta`.

use super::{Db, decode, encode, io_err};
use crate::{NodeId, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The log half of the store. Cloning is cheap; clones share the database (openraft hands a
/// clone to each replication task as a reader).
#[derive(Clone)]
pub struct LogStore {
    pub(super) db: Db,
    pub(super) log: sled::Tree,
    meta: sled::Tree,
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl LogStore {
    pub(crate) fn open(db: Db) -> Result<Self, sled::Error> {
        Ok(LogStore {
            log: db.tree("log")?,
            meta: db.tree("meta")?,
            db,
        })
    }

    fn read_meta<T: for<'de> serde::Deserialize<'de>>(
        &self,
        k: &str,
        make: fn(openraft::AnyError) -> StorageIOError<NodeId>,
    ) -> Result<Option<T>, StorageError<NodeId>> {
        match self.meta.get(k).map_err(|e| io_err(make, &e))? {
            Some(raw) => Ok(Some(decode(&raw).map_err(|e| io_err(make, &e))?)),
            None => Ok(None),
        }
    }

    async fn flush(
        &self,
        make: fn(openraft::AnyError) -> StorageIOError<NodeId>,
    ) -> Result<(), StorageError<NodeId>> {
        self.db.flush().await.map_err(|e| io_err(make, &e))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(key(*i)),
            Bound::Excluded(i) => Bound::Excluded(key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let read = StorageIOError::<NodeId>::read_logs;
        self.log
            .range((Bound::Included(key(start)), end))
            .map(|kv| {
                let (_, raw) = kv.map_err(|e| io_err(read, &e))?;
                decode(&raw).map_err(|e| io_err(read, &e))
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let read = StorageIOError::<NodeId>::read_logs;
        let last_purged_log_id: Option<LogId<NodeId>> = self.read_meta(LAST_PURGED, read)?;
        let last = match self.log.last().map_err(|e| io_err(read, &e))? {
            Some((_, raw)) => {
                let entry: Entry<TypeConfig> = decode(&raw).map_err(|e| io_err(read, &e))?;
                Some(entry.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let write = StorageIOError::<NodeId>::write_vote;
        self.meta
            .insert(VOTE, encode(vote))
            .map_err(|e| io_err(write, &e))?;
        // A vote must survive a crash before it is acted on, or a node could vote twice in a term.
        self.flush(write).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(VOTE, StorageIOError::<NodeId>::read_vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not flushed: losing it only means re-learning the commit index from the leader.
        let write = StorageIOError::<NodeId>::write;
        self.meta
            .insert(COMMITTED, encode(&committed))
            .map_err(|e| io_err(write, &e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(COMMITTED, StorageIOError::<NodeId>::read)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let write = StorageIOError::<NodeId>::write_logs;
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&key(entry.log_id.index), encode(&entry));
        }
        self.log.apply_batch(batch).map_err(|e| io_err(write, &e))?;
        // Durable before acknowledged (DESIGN rule 8). The mutant skips it, for crash-disk to catch.
        #[cfg(not(feature = "mutant-no-append-flush"))]
        let res = self.db.flush().await;
        #[cfg(feature = "mutant-no-append-flush")]
        let res: Result<(), std::io::Error> = Ok(());
        let failed = res.as_ref().err().map(|e| io_err(write, e));
        callback.log_io_completed(res);
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let write = StorageIOError::<NodeId>::write_logs;
        let mut batch = sled::Batch::default();
        for kv in self.log.range(key(log_id.index)..) {
            let (k, _) = kv.map_err(|e| io_err(write, &e))?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(|e| io_err(write, &e))?;
        self.flush(write).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let write = StorageIOError::<NodeId>::write_logs;
        // Record the purge point first: a crash between the two steps leaves extra entries
        // (harmless), never a log that starts after an unrecorded gap.
        self.meta
            .insert(LAST_PURGED, encode(&log_id))
            .map_err(|e| io_err(write, &e))?;
        self.flush(write).await?;
        let mut batch = sled::Batch::default();
        for kv in self.log.range(..=key(log_id.index)) {
            let (k, _) = kv.map_err(|e| io_err(write, &e))?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(|e| io_err(write, &e))?;
        Ok(())
    }
}
