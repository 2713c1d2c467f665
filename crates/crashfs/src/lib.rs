//! concord-crashfs: a FUSE filesystem for tests that loses unsynced writes, as a disk does on
//! power loss (the idea of Jepsen's lazyfs). A SIGKILL keeps the kernel's page cache, so a kill
//! test cannot see a missing fsync; a replica whose data dir is on a crashfs mount can.
//!
//! It mirrors a backing directory. Semantics:
//!
//! - **File data** (writes, and truncates or extensions of the size) is held in memory per file;
//!   reads through the mount see it. `fsync(2)` or `fdatasync(2)` on the file, or
//!   [`Mounted::sync_all`], writes it to the backing file. [`Mounted::power_loss`] drops every
//!   change not synced that way. `sync_file_range(2)` never reaches a FUSE filesystem, so it makes
//!   nothing durable here — as on a real disk, where it does not flush the disk's cache nor the
//!   file's size (see its man page).
//! - **Metadata** (create, mkdir, rename, unlink, rmdir, chmod, chown) passes through to the
//!   backing directory at once and survives a power loss, synced or not. This is a limitation:
//!   a real file system may lose a rename or a new directory entry that was not followed by an
//!   fsync of its directory. Timestamps set by `utimes` are not applied.
//! - The page cache is bypassed (direct I/O, zero attribute TTLs), so after a power loss every
//!   read comes from what this filesystem holds.
//!
//! A power loss should come while no process has files open on the mount (kill the processes
//! first), as with a real machine; handles that stay open keep working on the durable state.
//!
//! Mounting needs root (`mount(2)` on `/dev/fuse`; no `fusermount3` and no libfuse are used).

mod fs;
mod pending;

pub use fs::Stats;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Why a crashfs could not be mounted or synced.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backing directory or the mount point is missing or not a directory.
    #[error("{path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel refused the mount (not root, no `/dev/fuse`).
    #[error("mounting a crashfs at {mountpoint}: {source}")]
    Mount {
        /// The mount point.
        mountpoint: PathBuf,
        /// The error from `fuser`.
        source: std::io::Error,
    },
    /// Writing held changes to the backing directory failed.
    #[error("syncing into the backing directory: {0}")]
    Sync(#[source] std::io::Error),
}

/// A mounted crashfs; unmounted when dropped.
pub struct Mounted {
    state: Arc<Mutex<fs::State>>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl Mounted {
    /// Mounts a crashfs mirroring `backing` at `mountpoint` (both existing directories), served
    /// by a thread of this process.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<Mounted, Error> {
        let dir = |path: &Path| {
            std::fs::canonicalize(path).map_err(|source| Error::Dir {
                path: path.to_path_buf(),
                source,
            })
        };
        let (backing, mountpoint) = (dir(backing)?, dir(mountpoint)?);
        let state = Arc::new(Mutex::new(fs::State::new(backing)));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("crashfs".into()),
            fuser::MountOption::Subtype("crashfs".into()),
            fuser::MountOption::RW,
        ];
        let session = fuser::spawn_mount(fs::CrashFs(state.clone()), &mountpoint, &config)
            .map_err(|source| Error::Mount {
                mountpoint: mountpoint.clone(),
                source,
            })?;
        tracing::debug!(mountpoint = %mountpoint.display(), "crashfs mounted");
        Ok(Mounted {
            state,
            mountpoint,
            session: Some(session),
        })
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Simulates a power loss: every change not yet fsynced is dropped. Returns how many files
    /// and written bytes were lost.
    pub fn power_loss(&self) -> (u64, u64) {
        let lost = fs::lock(&self.state).power_loss();
        tracing::debug!(mountpoint = %self.mountpoint.display(), files = lost.0, bytes = lost.1, "power loss");
        lost
    }

    /// Makes every held change durable, as `sync(2)` would.
    pub fn sync_all(&self) -> Result<(), Error> {
        fs::lock(&self.state).sync_all().map_err(Error::Sync)
    }

    /// What the filesystem did so far.
    pub fn stats(&self) -> Stats {
        fs::lock(&self.state).stats
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take()
            && let Err(error) = s.umount_and_join()
        {
            tracing::warn!(%error, mountpoint = %self.mountpoint.display(), "crashfs unmount failed");
        }
    }
}
