//! The FUSE side: a pass-through filesystem over a backing directory that holds file data
//! writes and truncates in [`Pending`] overlays until the file is fsynced. The kernel talks to it
//! through `fuser`; the test talks to it through [`State`], shared with [`crate::Mounted`].
//!
//! Every open is answered with `FOPEN_DIRECT_IO` and every attribute and entry with a TTL of
//! zero, so the kernel's page cache never serves a byte this filesystem has since dropped.

use crate::pending::Pending;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TTL: Duration = Duration::ZERO;
const ROOT: u64 = 1;

/// Counters of what the filesystem did, for tests and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// fsync/fdatasync calls on files.
    pub fsyncs: u64,
    /// Simulated power losses.
    pub power_losses: u64,
    /// Files whose unsynced changes the power losses dropped.
    pub files_dropped: u64,
    /// Written bytes the power losses dropped.
    pub bytes_dropped: u64,
}

/// The state shared between the FUSE thread and the test.
pub(crate) struct State {
    backing: PathBuf,
    /// Inode → path relative to `backing` (the root is the empty path).
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    files: HashMap<u64, (u64, File)>,
    next_fh: u64,
    /// Unsynced changes by inode.
    pending: HashMap<u64, Pending>,
    pub(crate) stats: Stats,
}

/// Locks the shared state; a panic on another thread does not make it unusable.
pub(crate) fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    pub(crate) fn new(backing: PathBuf) -> Self {
        State {
            backing,
            paths: HashMap::from([(ROOT, PathBuf::new())]),
            inos: HashMap::from([(PathBuf::new(), ROOT)]),
            next_ino: ROOT + 1,
            files: HashMap::new(),
            next_fh: 1,
            pending: HashMap::new(),
            stats: Stats::default(),
        }
    }

    fn rel(&self, ino: u64) -> Result<&Path, Errno> {
        self.paths
            .get(&ino)
            .map(PathBuf::as_path)
            .ok_or(Errno::ENOENT)
    }

    fn abs(&self, ino: u64) -> Result<PathBuf, Errno> {
        Ok(self.backing.join(self.rel(ino)?))
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.rel(parent)?.join(name))
    }

    fn intern(&mut self, rel: PathBuf) -> u64 {
        if let Some(&ino) = self.inos.get(&rel) {
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.paths.insert(ino, rel.clone());
        self.inos.insert(rel, ino);
        ino
    }

    /// Forgets a path that no longer exists, with its unsynced changes.
    fn forget_path(&mut self, rel: &Path) {
        if let Some(ino) = self.inos.remove(rel) {
            self.paths.remove(&ino);
            self.pending.remove(&ino);
        }
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let md = std::fs::symlink_metadata(self.abs(ino)?)?;
        let kind = FileType::from_std(md.file_type()).ok_or(Errno::EIO)?;
        let size = self.pending.get(&ino).map_or(md.size(), Pending::size);
        let time = |s: i64, ns: i64| {
            UNIX_EPOCH + Duration::new(s.max(0) as u64, ns.clamp(0, 999_999_999) as u32)
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(md.atime(), md.atime_nsec()),
            mtime: time(md.mtime(), md.mtime_nsec()),
            ctime: time(md.ctime(), md.ctime_nsec()),
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev() as u32,
            blksize: 4096,
            flags: 0,
        })
    }

    /// The durable size of a file, as the backing file has it.
    fn durable_size(&self, ino: u64) -> Result<u64, Errno> {
        Ok(std::fs::metadata(self.abs(ino)?)?.len())
    }

    fn pending_mut(&mut self, ino: u64) -> Result<&mut Pending, Errno> {
        if !self.pending.contains_key(&ino) {
            let p = Pending::new(self.durable_size(ino)?);
            self.pending.insert(ino, p);
        }
        Ok(self.pending.get_mut(&ino).expect("inserted above"))
    }

    /// Writes a file's unsynced changes to its backing file.
    fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        let Some(p) = self.pending.get(&ino) else {
            return Ok(());
        };
        // The backing file only has to survive this process, not a real power loss: no fsync of
        // the backing file system (that would cost every test a real disk flush).
        let file = OpenOptions::new().write(true).open(self.abs(ino)?)?;
        p.apply(&file)?;
        self.pending.remove(&ino);
        Ok(())
    }

    /// Makes every unsynced change durable (as `sync(2)` would).
    pub(crate) fn sync_all(&mut self) -> io::Result<()> {
        let inos: Vec<u64> = self.pending.keys().copied().collect();
        for ino in inos {
            self.sync(ino)
                .map_err(|e| io::Error::from_raw_os_error(e.code()))?;
        }
        Ok(())
    }

    /// Drops every unsynced change: the simulated power loss.
    pub(crate) fn power_loss(&mut self) -> (u64, u64) {
        let files = self.pending.len() as u64;
        let bytes = self.pending.values().map(Pending::held_bytes).sum();
        self.pending.clear();
        self.stats.power_losses += 1;
        self.stats.files_dropped += files;
        self.stats.bytes_dropped += bytes;
        (files, bytes)
    }

    fn open_backing(&mut self, ino: u64, path: &Path) -> io::Result<u64> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .or_else(|_| File::open(path))?;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.files.insert(fh, (ino, file));
        Ok(fh)
    }
}

/// The `fuser` filesystem; a thin shell over the shared [`State`].
pub(crate) struct CrashFs(pub(crate) Arc<Mutex<State>>);

impl CrashFs {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.0)
    }
}

/// Answers a reply from a `Result`, the error as an errno.
macro_rules! answer {
    ($reply:expr, $res:expr, $ok:expr) => {
        match $res {
            Ok(v) => $ok($reply, v),
            Err(e) => $reply.error(e),
        }
    };
}

impl Filesystem for CrashFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.state();
        let res = s.child(parent.0, name).and_then(|rel| {
            std::fs::symlink_metadata(s.backing.join(&rel))?;
            let ino = s.intern(rel);
            s.attr(ino)
        });
        answer!(reply, res, |r: ReplyEntry, a| r.entry(
            &TTL,
            &a,
            Generation(0)
        ));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        answer!(reply, self.state().attr(ino.0), |r: ReplyAttr, a| r
            .attr(&TTL, &a));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.state();
        let res = (|| {
            let path = s.abs(ino.0)?;
            // Metadata passes through; a size change is file data and is held.
            if let Some(mode) = mode {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::chown(&path, uid, gid)?;
            }
            if let Some(size) = size {
                s.pending_mut(ino.0)?.truncate(size);
            }
            s.attr(ino.0)
        })();
        answer!(reply, res, |r: ReplyAttr, a| r.attr(&TTL, &a));
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let mut s = self.state();
        let res = (|| {
            if mode & libc_s_ifmt() != libc_s_ifreg() {
                return Err(Errno::EPERM);
            }
            let rel = s.child(parent.0, name)?;
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode & !umask & 0o7777)
                .open(s.backing.join(&rel))?;
            let ino = s.intern(rel);
            s.attr(ino)
        })();
        answer!(reply, res, |r: ReplyEntry, a| r.entry(
            &TTL,
            &a,
            Generation(0)
        ));
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut s = self.state();
        let res = (|| {
            let rel = s.child(parent.0, name)?;
            std::fs::create_dir(s.backing.join(&rel))?;
            std::fs::set_permissions(
                s.backing.join(&rel),
                std::fs::Permissions::from_mode(mode & !umask & 0o7777),
            )?;
            let ino = s.intern(rel);
            s.attr(ino)
        })();
        answer!(reply, res, |r: ReplyEntry, a| r.entry(
            &TTL,
            &a,
            Generation(0)
        ));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.state();
        let res = s.child(parent.0, name).and_then(|rel| {
            std::fs::remove_file(s.backing.join(&rel))?;
            s.forget_path(&rel);
            Ok(())
        });
        answer!(reply, res, |r: ReplyEmpty, ()| r.ok());
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.state();
        let res = s.child(parent.0, name).and_then(|rel| {
            std::fs::remove_dir(s.backing.join(&rel))?;
            s.forget_path(&rel);
            Ok(())
        });
        answer!(reply, res, |r: ReplyEmpty, ()| r.ok());
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state();
        let res = (|| {
            if !flags.is_empty() {
                return Err(Errno::EINVAL);
            }
            let from = s.child(parent.0, name)?;
            let to = s.child(newparent.0, newname)?;
            std::fs::rename(s.backing.join(&from), s.backing.join(&to))?;
            // The replaced file is gone; the moved inode (and everything under it) keeps its
            // number and its unsynced changes under the new path.
            s.forget_path(&to);
            let moved: Vec<(u64, PathBuf)> = s
                .paths
                .iter()
                .filter_map(|(&ino, p)| {
                    // (`join("")` would add a trailing slash.)
                    p.strip_prefix(&from)
                        .ok()
                        .map(|rest| match rest.as_os_str() {
                            r if r.is_empty() => (ino, to.clone()),
                            _ => (ino, to.join(rest)),
                        })
                })
                .collect();
            for (ino, new) in moved {
                let old = s.paths.insert(ino, new.clone()).expect("listed above");
                s.inos.remove(&old);
                s.inos.insert(new, ino);
            }
            Ok(())
        })();
        answer!(reply, res, |r: ReplyEmpty, ()| r.ok());
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.state();
        let res = s.abs(ino.0).and_then(|p| Ok(s.open_backing(ino.0, &p)?));
        answer!(reply, res, |r: ReplyOpen, fh| r
            .opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO));
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.state();
        let res = (|| {
            let rel = s.child(parent.0, name)?;
            let path = s.backing.join(&rel);
            let mut o = OpenOptions::new();
            o.read(true).write(true).mode(mode & !umask & 0o7777);
            if flags & O_EXCL != 0 {
                o.create_new(true);
            } else {
                o.create(true);
            }
            drop(o.open(&path)?);
            let ino = s.intern(rel);
            if flags & O_TRUNC != 0 {
                s.pending_mut(ino)?.truncate(0);
            }
            let fh = s.open_backing(ino, &path)?;
            Ok((s.attr(ino)?, fh))
        })();
        answer!(reply, res, |r: ReplyCreate, (a, fh)| r.created(
            &TTL,
            &a,
            Generation(0),
            FileHandle(fh),
            FopenFlags::FOPEN_DIRECT_IO
        ));
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let s = self.state();
        let res = (|| {
            let (_, file) = s.files.get(&fh.0).ok_or(Errno::EBADF)?;
            let backing = |off, buf: &mut [u8]| file.read_at(buf, off);
            let fresh;
            let view = match s.pending.get(&ino.0) {
                Some(p) => p,
                None => {
                    fresh = Pending::new(file.metadata()?.len());
                    &fresh
                }
            };
            Ok::<_, Errno>(view.read(offset, size, backing)?)
        })();
        answer!(reply, res, |r: ReplyData, d: Vec<u8>| r.data(&d));
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.state();
        let res = (|| {
            if !s.files.contains_key(&fh.0) {
                return Err(Errno::EBADF);
            }
            s.pending_mut(ino.0)?.write(offset, data);
            Ok(data.len() as u32)
        })();
        answer!(reply, res, |r: ReplyWrite, n| r.written(n));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) does not make data durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().files.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // fsync and fdatasync both make the file's data durable (the size is data here).
        let mut s = self.state();
        s.stats.fsyncs += 1;
        let res = s.sync(ino.0);
        answer!(reply, res, |r: ReplyEmpty, ()| r.ok());
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut s = self.state();
        let res = (|| {
            let rel = s.rel(ino.0)?.to_path_buf();
            let mut names: Vec<(std::ffi::OsString, FileType)> = Vec::new();
            for e in std::fs::read_dir(s.backing.join(&rel))? {
                let e = e?;
                let kind = FileType::from_std(e.file_type()?).unwrap_or(FileType::RegularFile);
                names.push((e.file_name(), kind));
            }
            names.sort_by(|a, b| a.0.cmp(&b.0));
            let parent = rel
                .parent()
                .map_or(ROOT, |p| s.inos.get(p).copied().unwrap_or(ROOT));
            let mut all = vec![
                (ino.0, FileType::Directory, std::ffi::OsString::from(".")),
                (parent, FileType::Directory, std::ffi::OsString::from("..")),
            ];
            for (name, kind) in names {
                let child = s.intern(rel.join(&name));
                all.push((child, kind, name));
            }
            Ok::<_, Errno>(all)
        })();
        match res {
            Ok(all) => {
                for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(child), i as u64 + 1, kind, &name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Metadata operations pass through at once (see the crate docs): nothing to hold.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Nominal figures: nothing in the tests depends on free space.
        reply.statfs(1 << 28, 1 << 27, 1 << 27, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}

const O_EXCL: i32 = 0o200;
const O_TRUNC: i32 = 0o1000;

fn libc_s_ifmt() -> u32 {
    0o170000
}

fn libc_s_ifreg() -> u32 {
    0o100000
}
