//! Real mounts of crashfs (needs root and /dev/fuse): what survives a simulated power loss.

use concord_crashfs::Mounted;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use tempfile::TempDir;

/// A crashfs over a fresh backing dir; the mount point and backing dir go with it.
struct Fixture {
    fs: Mounted,
    backing: PathBuf,
    _dir: TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
        fs::create_dir(&backing).unwrap();
        fs::create_dir(&mnt).unwrap();
        let fs = Mounted::mount(&backing, &mnt).expect("mount crashfs (root and /dev/fuse)");
        Fixture {
            fs,
            backing,
            _dir: dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.fs.mountpoint().join(name)
    }
}

#[test]
fn reads_see_unsynced_data_before_the_loss() {
    let f = Fixture::new();
    let mut file = File::create(f.path("a")).unwrap();
    file.write_all(b"hello world").unwrap();
    assert_eq!(fs::read(f.path("a")).unwrap(), b"hello world");
    assert_eq!(fs::metadata(f.path("a")).unwrap().len(), 11);
    // Nothing of it reached the backing file yet.
    assert_eq!(fs::read(f.backing.join("a")).unwrap(), b"");
}

#[test]
fn unsynced_write_is_lost_on_power_loss() {
    let f = Fixture::new();
    let mut file = File::create(f.path("a")).unwrap();
    file.write_all(b"never synced").unwrap();
    drop(file);
    let (files, bytes) = f.fs.power_loss();
    assert_eq!((files, bytes), (1, 12));
    // The file itself was created (metadata passes through); its data is gone.
    assert_eq!(fs::read(f.path("a")).unwrap(), b"");
    assert_eq!(fs::metadata(f.path("a")).unwrap().len(), 0);
}

#[test]
fn fsynced_write_is_kept() {
    let f = Fixture::new();
    let mut file = File::create(f.path("a")).unwrap();
    file.write_all(b"synced").unwrap();
    file.sync_all().unwrap();
    file.write_all(b" then not").unwrap();
    drop(file);
    f.fs.power_loss();
    assert_eq!(fs::read(f.path("a")).unwrap(), b"synced");
    assert_eq!(f.fs.stats().fsyncs, 1);
}

#[test]
fn fdatasync_counts_as_a_sync() {
    let f = Fixture::new();
    let mut file = File::create(f.path("a")).unwrap();
    file.write_all(b"data").unwrap();
    file.sync_data().unwrap();
    drop(file);
    f.fs.power_loss();
    assert_eq!(fs::read(f.path("a")).unwrap(), b"data");
}

#[test]
fn fsync_through_another_handle_syncs_the_file() {
    // Linux fsync works on the inode, not the descriptor: sled-style "fsync a second handle".
    let f = Fixture::new();
    let mut w = File::create(f.path("a")).unwrap();
    w.write_all(b"via w").unwrap();
    File::open(f.path("a")).unwrap().sync_all().unwrap();
    drop(w);
    f.fs.power_loss();
    assert_eq!(fs::read(f.path("a")).unwrap(), b"via w");
}

#[test]
fn overwrites_and_truncates_are_held_too() {
    let f = Fixture::new();
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(f.path("a"))
        .unwrap();
    file.write_all(b"0123456789").unwrap();
    file.sync_all().unwrap();
    file.seek(SeekFrom::Start(3)).unwrap();
    file.write_all(b"XY").unwrap();
    file.set_len(7).unwrap();
    let mut now = String::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_string(&mut now).unwrap();
    assert_eq!(now, "012XY56");
    drop(file);
    f.fs.power_loss();
    assert_eq!(fs::read(f.path("a")).unwrap(), b"0123456789");
}

#[test]
fn sync_all_makes_everything_durable() {
    let f = Fixture::new();
    fs::create_dir(f.path("d")).unwrap();
    fs::write(f.path("d/x"), b"x").unwrap();
    fs::write(f.path("y"), b"yy").unwrap();
    f.fs.sync_all().unwrap();
    assert_eq!(f.fs.power_loss(), (0, 0));
    assert_eq!(fs::read(f.path("d/x")).unwrap(), b"x");
    assert_eq!(fs::read(f.backing.join("y")).unwrap(), b"yy");
}

#[test]
fn renamed_file_keeps_its_unsynced_data_until_the_loss() {
    // Metadata passes through: the rename survives, the unsynced data under it does not.
    let f = Fixture::new();
    fs::write(f.path("tmp"), b"content").unwrap();
    fs::rename(f.path("tmp"), f.path("final")).unwrap();
    assert_eq!(fs::read(f.path("final")).unwrap(), b"content");
    let mut names: Vec<String> = fs::read_dir(f.fs.mountpoint())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["final"]);
    f.fs.power_loss();
    assert_eq!(fs::read(f.path("final")).unwrap(), b"");
    assert!(!f.path("tmp").exists());
}
