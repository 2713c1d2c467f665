//! The unsynced changes of one file: written extents and size changes held in memory on top of
//! the backing file's durable bytes. Pure data, no FUSE: [`crate::fs`] keeps one [`Pending`]
//! per file with unsynced changes, reads through it, and applies it to the backing file on fsync.

use std::collections::BTreeMap;
use std::io;

/// What a file looks like to readers beyond what its backing file durably holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The size readers see.
    size: u64,
    /// The smallest size the file had since its last sync: backing bytes at or past `cut` were
    /// truncated away and read as zeros unless written again.
    cut: u64,
    /// Written data, non-overlapping, keyed by offset.
    extents: BTreeMap<u64, Vec<u8>>,
}

impl Pending {
    /// No changes yet on top of a backing file of `durable_size` bytes.
    pub fn new(durable_size: u64) -> Self {
        Pending {
            size: durable_size,
            cut: durable_size,
            extents: BTreeMap::new(),
        }
    }

    /// The size readers see.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes of written data held.
    pub fn held_bytes(&self) -> u64 {
        self.extents.values().map(|v| v.len() as u64).sum()
    }

    /// Records a write of `data` at `off`.
    pub fn write(&mut self, off: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = off + data.len() as u64;
        self.remove_range(off, end);
        // Sequential writes (a log) extend the previous extent instead of adding one each.
        if let Some((&start, prev)) = self.extents.range_mut(..off).next_back()
            && start + prev.len() as u64 == off
        {
            prev.extend_from_slice(data);
        } else {
            self.extents.insert(off, data.to_vec());
        }
        self.size = self.size.max(end);
    }

    /// Records a truncate (or extension) to `size`.
    pub fn truncate(&mut self, size: u64) {
        self.remove_range(size, u64::MAX);
        self.size = size;
        self.cut = self.cut.min(size);
    }

    /// Drops the parts of extents inside `[off, end)`.
    fn remove_range(&mut self, off: u64, end: u64) {
        let hit: Vec<u64> = self
            .extents
            .range(..end)
            .rev()
            .take_while(|&(&s, v)| s + v.len() as u64 > off)
            .map(|(&s, _)| s)
            .collect();
        for start in hit {
            let data = self.extents.remove(&start).expect("listed above");
            let stop = start + data.len() as u64;
            if start < off {
                self.extents
                    .insert(start, data[..(off - start) as usize].to_vec());
            }
            if stop > end {
                self.extents
                    .insert(end, data[(end - start) as usize..].to_vec());
            }
        }
    }

    /// Reads up to `len` bytes at `off` as readers see them; `backing(off, buf)` reads the
    /// durable bytes (and may return fewer than asked, at its end).
    pub fn read(
        &self,
        off: u64,
        len: u32,
        mut backing: impl FnMut(u64, &mut [u8]) -> io::Result<usize>,
    ) -> io::Result<Vec<u8>> {
        let end = self.size.min(off.saturating_add(u64::from(len)));
        if off >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - off) as usize];
        let durable_end = end.min(self.cut);
        if off < durable_end {
            let want = &mut buf[..(durable_end - off) as usize];
            let mut done = 0;
            while done < want.len() {
                let n = backing(off + done as u64, &mut want[done..])?;
                if n == 0 {
                    break;
                }
                done += n;
            }
        }
        let first = self
            .extents
            .range(..off)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(off);
        for (&start, data) in self.extents.range(first..end) {
            let stop = start + data.len() as u64;
            if stop <= off {
                continue;
            }
            let (from, to) = (start.max(off), stop.min(end));
            buf[(from - off) as usize..(to - off) as usize]
                .copy_from_slice(&data[(from - start) as usize..(to - start) as usize]);
        }
        Ok(buf)
    }

    /// Makes the changes durable in the backing file through `apply`: cut it to the smallest size
    /// it had, write every extent, then set the final size.
    pub fn apply(&self, mut target: impl Target) -> io::Result<()> {
        target.set_len(self.cut)?;
        for (&off, data) in &self.extents {
            target.write_at(off, data)?;
        }
        target.set_len(self.size)
    }
}

/// Where [`Pending::apply`] writes: the backing file (a trait so the order of operations can be
/// tested without one).
pub trait Target {
    /// Truncates or extends the file to `len`.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Writes all of `data` at `off`.
    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()>;
}

impl Target for &std::fs::File {
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        std::fs::File::set_len(self, len)
    }

    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(*self, data, off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory file: both the backing bytes and what a sync makes of them.
    #[derive(Clone, Default)]
    struct Mem(Vec<u8>);

    impl Target for &mut Mem {
        fn set_len(&mut self, len: u64) -> io::Result<()> {
            self.0.resize(len as usize, 0);
            Ok(())
        }
        fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
            let end = off as usize + data.len();
            if self.0.len() < end {
                self.0.resize(end, 0);
            }
            self.0[off as usize..end].copy_from_slice(data);
            Ok(())
        }
    }

    fn read_all(p: &Pending, backing: &Mem) -> Vec<u8> {
        p.read(0, u32::MAX, |off, buf| {
            let src = backing.0.get(off as usize..).unwrap_or(&[]);
            let n = src.len().min(buf.len());
            buf[..n].copy_from_slice(&src[..n]);
            Ok(n)
        })
        .unwrap()
    }

    /// A model of the file as plain bytes, against which the overlay is checked.
    fn check(ops: &[(bool, u64, Vec<u8>)]) {
        let backing = Mem(b"0123456789".to_vec());
        let mut model = backing.0.clone();
        let mut p = Pending::new(backing.0.len() as u64);
        for (is_write, off, data) in ops {
            if *is_write {
                let end = *off as usize + data.len();
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[*off as usize..end].copy_from_slice(data);
                p.write(*off, data);
            } else {
                model.resize(*off as usize, 0);
                p.truncate(*off);
            }
            assert_eq!(read_all(&p, &backing), model, "after {ops:?}");
            assert_eq!(p.size(), model.len() as u64);
        }
        let mut synced = backing.clone();
        p.apply(&mut synced).unwrap();
        assert_eq!(synced.0, model, "sync of {ops:?}");
    }

    #[test]
    fn overlapping_writes_read_back_and_sync() {
        check(&[(true, 2, b"ab".to_vec()), (true, 3, b"XYZ".to_vec())]);
        check(&[(true, 8, b"abcd".to_vec()), (true, 0, b"Q".to_vec())]);
        check(&[(true, 1, b"abcdef".to_vec()), (true, 2, b"x".to_vec())]);
        check(&[(true, 12, b"gap".to_vec())]);
        check(&[(true, 0, b"aa".to_vec()), (true, 2, b"bb".to_vec())]);
    }

    #[test]
    fn truncate_hides_backing_bytes_even_after_growing_again() {
        check(&[(false, 3, vec![]), (false, 8, vec![])]);
        check(&[(false, 3, vec![]), (true, 6, b"zz".to_vec())]);
        check(&[
            (true, 4, b"abcd".to_vec()),
            (false, 5, vec![]),
            (false, 9, vec![]),
        ]);
        check(&[(false, 0, vec![]), (true, 0, b"new".to_vec())]);
    }

    #[test]
    fn many_random_operations_match_the_model() {
        // A small deterministic generator: the test needs variety, not a dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for _ in 0..300 {
            let ops: Vec<(bool, u64, Vec<u8>)> = (0..1 + next(8))
                .map(|_| {
                    let is_write = next(4) != 0;
                    let off = next(24);
                    let data = (0..1 + next(9)).map(|_| b'a' + next(26) as u8).collect();
                    (is_write, off, data)
                })
                .collect();
            check(&ops);
        }
    }

    #[test]
    fn sequential_writes_coalesce() {
        let mut p = Pending::new(0);
        for i in 0..100u64 {
            p.write(i * 4, b"abcd");
        }
        assert_eq!(p.extents.len(), 1);
        assert_eq!(p.held_bytes(), 400);
    }
}
