//! The one reader of cached bytes: every byte the daemon serves from a cached version, or
//! from a file published while its version is unpacked, is read here, as whole checked
//! units (see `crate::archive::checks`: a block of 64 KiB of a file of its own, a whole
//! packed file), compared with the unit's checksum, and only then handed to the caller.
//! A unit that cannot be read whole or fails its checksum is a [`Damage`], never bytes.
//!
//! A read covers whole units: the span of the units it touches is read with one `pread`
//! into a buffer of the pool (`bytes`), each unit checked in place, and the caller gets
//! the part it asked for, with no copy. A large read for a buffered reader of the mount is
//! made with direct I/O ([`DIRECT_MIN`]): the kernel keeps what it reads in the mount's
//! page cache, so a copy in the content file's page cache would only be a second one, and
//! copying out of it cost the daemon most of its time. A read within one unit, not all of
//! it (a 4 KiB `O_DIRECT` read, a few bytes of a packed file), would read and check that
//! unit again for each of its neighbours: so such a unit is kept in memory
//! ([`VERIFIED_MEMORY`] bytes at most, least recently used dropped first). Its key is the
//! opening of the version it belongs to, its place in it and the checksum it passed, so a
//! version downloaded again never meets the units of the one it replaced.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::archive::{checksum, unit_count, unit_span, Checks, Damage};

use super::bytes::{self, Bytes};

/// How many bytes of checked units are kept in memory.
pub const VERIFIED_MEMORY: usize = 8 << 20;

/// The smallest read of a file of its own made with direct I/O when the caller allows it
/// (a buffered reader of the mount, whose pages the kernel keeps in the mount's own page
/// cache): the content is read by the disk straight into the daemon's buffer, never copied
/// from a page cache that would only hold a second copy. Smaller reads (random ones, whose
/// neighbours may follow) go through the page cache.
pub const DIRECT_MIN: u64 = 256 << 10;

/// What direct I/O wants aligned: buffer, offset and length.
const DIRECT_ALIGN: usize = 4096;

/// Where the checksums of a file's units come from.
#[derive(Clone, Copy)]
pub enum Sums<'a> {
    /// A complete version's `checks.bin`.
    Stored { checks: &'a Checks },
    /// Known in memory: a file published while its version is unpacked. `source` tells
    /// this unpack's files from any other's (a fresh serial per unpack).
    Known { source: u64, sums: &'a [u32] },
}

/// Where the checking reader reads content from: a content file, or the spans of the tar
/// stream of a version larger than the cache.
pub trait ReadAt: Sync {
    /// Exactly `buf.len()` bytes at `at` (an `UnexpectedEof` error when there are fewer).
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, at)
    }
}

/// A file as the checking reader reads it: `size` bytes at `base` of the content file
/// `file` (named `path` in messages), node `node` of its version.
pub struct CheckedFile<'a> {
    pub file: &'a dyn ReadAt,
    /// The same file opened with `O_DIRECT`, for reads whose pages nobody would keep (see
    /// [`DIRECT_MIN`]); `None` reads through the page cache.
    pub direct: Option<&'a File>,
    pub path: &'a Path,
    pub base: u64,
    pub size: u64,
    pub packed: bool,
    pub node: u32,
    pub sums: Sums<'a>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct UnitKey {
    source: u64,
    node: u32,
    /// Where the unit lies in its content file, and its length: with the checksum it
    /// passed, the key names exactly the bytes that were checked.
    at: u64,
    len: u64,
    crc: u32,
}

/// Units checked a moment ago, shared by every reader of the mount.
pub struct Verified {
    units: Mutex<Units>,
    capacity: usize,
}

struct Units {
    lru: lru::LruCache<UnitKey, Arc<Vec<u8>>>,
    bytes: usize,
}

impl Default for Verified {
    fn default() -> Self {
        Verified::with_capacity(VERIFIED_MEMORY)
    }
}

impl CheckedFile<'_> {
    fn key(&self, start: u64, len: u64, crc: u32) -> UnitKey {
        let source = match self.sums {
            Sums::Stored { checks } => checks.serial(),
            Sums::Known { source, .. } => source,
        };
        UnitKey {
            source,
            node: self.node,
            at: self.base.saturating_add(start),
            len,
            crc,
        }
    }

    /// The checksums units `units` must pass, appended to `out`.
    fn expected(
        &self,
        count: u64,
        units: std::ops::Range<u64>,
        out: &mut Vec<u32>,
    ) -> Result<(), Damage> {
        match self.sums {
            Sums::Stored { checks } => checks.units(self.node, count, units, out),
            Sums::Known { sums, .. } => {
                let known = (sums.len() as u64 == count)
                    .then(|| sums.get(units.start as usize..units.end as usize))
                    .flatten();
                match known {
                    Some(s) => {
                        out.extend_from_slice(s);
                        Ok(())
                    }
                    None => Err(Damage(format!(
                        "{} checksums known for node {}, expected {count}",
                        sums.len(),
                        self.node
                    ))),
                }
            }
        }
    }

    /// Read `buf.len()` bytes at `start` of the content into `buf`, whole.
    fn read_span(&self, buf: &mut [u8], start: u64) -> Result<(), Damage> {
        let at = self.base.saturating_add(start);
        self.file.read_exact_at(buf, at).map_err(|e| {
            Damage(if e.kind() == io::ErrorKind::UnexpectedEof {
                format!(
                    "{}: shorter than the {} bytes at {at} of node {}",
                    self.path.display(),
                    buf.len(),
                    self.node
                )
            } else {
                format!("{}: {e}", self.path.display())
            })
        })
    }

    /// `n` bytes at `start` of the content read with direct I/O, when this read is one for
    /// it: a buffer and where in it the bytes begin. `None` when it is not (no direct
    /// opening, a packed file, a small read, an offset direct I/O cannot take) or when the
    /// file system refuses the read (it is then made through the page cache).
    fn read_direct(&self, start: u64, n: usize) -> Result<Option<(Vec<u8>, usize)>, Damage> {
        let Some(direct) = self.direct else {
            return Ok(None);
        };
        let at = self.base.saturating_add(start);
        if self.packed || (n as u64) < DIRECT_MIN || !at.is_multiple_of(DIRECT_ALIGN as u64) {
            return Ok(None);
        }
        let len = n.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        let mut buf = bytes::take(len + DIRECT_ALIGN);
        let origin = buf.as_ptr().align_offset(DIRECT_ALIGN);
        let mut filled = 0;
        while filled < n {
            match direct.read_at(&mut buf[origin + filled..origin + len], at + filled as u64) {
                Ok(0) => {
                    return Err(Damage(format!(
                        "{}: shorter than the {n} bytes at {at} of node {}",
                        self.path.display(),
                        self.node
                    )))
                }
                Ok(got) => filled += got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Direct I/O refused (alignment, the file system): the page cache will do.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
                Err(e) => return Err(Damage(format!("{}: {e}", self.path.display()))),
            }
            // A short direct read ends on an aligned boundary, or at the end of the file.
            if filled % DIRECT_ALIGN != 0 && filled < n {
                return Ok(None);
            }
        }
        Ok(Some((buf, origin)))
    }

    /// Whether `bytes`, unit `unit` (at `start` of the content), pass checksum `crc`.
    fn check(&self, unit: u64, start: u64, bytes: &[u8], crc: u32) -> Result<(), Damage> {
        if checksum(bytes) == crc {
            return Ok(());
        }
        Err(Damage(format!(
            "{}: unit {unit} of node {} ({} bytes at {}) fails its checksum",
            self.path.display(),
            self.node,
            bytes.len(),
            self.base.saturating_add(start)
        )))
    }
}

impl Verified {
    pub fn with_capacity(capacity: usize) -> Verified {
        Verified {
            units: Mutex::new(Units {
                lru: lru::LruCache::unbounded(),
                bytes: 0,
            }),
            capacity,
        }
    }

    /// Up to `len` bytes at `at` of `f` (short only at its end), every unit they lie in
    /// checked first.
    pub fn read(&self, f: &CheckedFile<'_>, at: u64, len: u32) -> Result<Bytes, Damage> {
        let end = at.saturating_add(u64::from(len)).min(f.size);
        if at >= end {
            return Ok(Bytes::empty());
        }
        let count = unit_count(f.size, f.packed);
        let (first, last) = if f.packed {
            (0, 0)
        } else {
            (
                at / crate::archive::CHECK_BLOCK,
                (end - 1) / crate::archive::CHECK_BLOCK,
            )
        };
        let mut sums = Vec::with_capacity((last - first + 1) as usize);
        f.expected(count, first..last + 1, &mut sums)?;
        let span_start = unit_span(f.size, f.packed, first).0;
        let span_end = {
            let (start, len) = unit_span(f.size, f.packed, last);
            start + len
        };
        // Within one unit, not all of it: kept for the reads of its neighbours.
        let kept = (first == last && (at > span_start || end < span_end))
            .then(|| f.key(span_start, span_end - span_start, sums[0]));
        if let Some(key) = &kept {
            if let Some(unit) = self.units.lock().lru.get(key) {
                let from = (at - span_start) as usize;
                return Ok(Bytes::copy_of(&unit[from..from + (end - at) as usize]));
            }
        }
        let n = usize::try_from(span_end - span_start)
            .map_err(|_| Damage("a read too large".into()))?;
        let (buf, origin) = match f.read_direct(span_start, n)? {
            Some(read) => read,
            None => {
                let mut buf = bytes::take(n);
                f.read_span(&mut buf[..n], span_start)?;
                (buf, 0)
            }
        };
        let span = &buf[origin..origin + n];
        for (unit, &crc) in (first..=last).zip(&sums) {
            let (start, ulen) = unit_span(f.size, f.packed, unit);
            let from = (start - span_start) as usize;
            f.check(unit, start, &span[from..from + ulen as usize], crc)?;
        }
        if let Some(key) = kept {
            self.keep(key, span);
        }
        let from = origin + (at - span_start) as usize;
        Ok(Bytes::within(buf, from, from + (end - at) as usize))
    }

    /// Check every unit of `f`, for a file handed to the kernel whole (passthrough): the
    /// units are not kept.
    pub fn check_all(&self, f: &CheckedFile<'_>) -> Result<(), Damage> {
        let count = unit_count(f.size, f.packed);
        let mut sums = Vec::new();
        let mut buf = Vec::new();
        // In runs of units of about 1 MiB: few checksum reads, a bounded buffer.
        let step = (crate::archive::PACK_MAX / crate::archive::CHECK_BLOCK).max(1);
        let mut first = 0;
        while first < count {
            let last = (first + step).min(count);
            sums.clear();
            f.expected(count, first..last, &mut sums)?;
            for (unit, &crc) in (first..last).zip(&sums) {
                let (start, len) = unit_span(f.size, f.packed, unit);
                let n = usize::try_from(len).map_err(|_| Damage("a unit too large".into()))?;
                buf.resize(n, 0);
                f.read_span(&mut buf, start)?;
                f.check(unit, start, &buf, crc)?;
            }
            first = last;
        }
        Ok(())
    }

    /// Keep a copy of unit `key`'s checked bytes, within the capacity.
    fn keep(&self, key: UnitKey, bytes: &[u8]) {
        if bytes.len() > self.capacity {
            return;
        }
        let mut units = self.units.lock();
        if units.lru.put(key, Arc::new(bytes.to_vec())).is_none() {
            units.bytes += bytes.len();
        }
        while units.bytes > self.capacity {
            match units.lru.pop_lru() {
                Some((_, old)) => units.bytes -= old.len(),
                None => break,
            }
        }
    }

    /// Bytes of checked units kept (for tests).
    #[cfg(test)]
    pub fn kept(&self) -> usize {
        self.units.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::CHECK_BLOCK;

    struct Case {
        dir: tempfile::TempDir,
        content: Vec<u8>,
        sums: Vec<u32>,
    }

    /// A file of its own of 2.5 blocks at offset 0 of `data`, and its unit checksums.
    fn own_file() -> Case {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..CHECK_BLOCK * 5 / 2).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("data"), &content).unwrap();
        let sums = content.chunks(CHECK_BLOCK as usize).map(checksum).collect();
        Case { dir, content, sums }
    }

    fn read(v: &Verified, c: &Case, at: u64, len: u32) -> Result<Bytes, Damage> {
        let path = c.dir.path().join("data");
        let file = File::open(&path).unwrap();
        let f = CheckedFile {
            file: &file,
            direct: None,
            path: &path,
            base: 0,
            size: c.content.len() as u64,
            packed: false,
            node: 1,
            sums: Sums::Known {
                source: 1,
                sums: &c.sums,
            },
        };
        v.read(&f, at, len)
    }

    #[test]
    fn reads_across_units_return_the_right_bytes() {
        let c = own_file();
        let v = Verified::default();
        let size = c.content.len() as u64;
        let b = CHECK_BLOCK;
        for (at, len) in [
            (0, 10),
            (b - 3, 6),
            (b - 1, (2 * b + 2) as u32),
            (2 * b, 1 << 20),
            (size - 1, 100),
            (size, 1),
            (size + 5, 1),
            (0, u32::MAX),
        ] {
            let got = read(&v, &c, at, len).unwrap();
            let from = (at.min(size)) as usize;
            let to = (at.saturating_add(u64::from(len)).min(size)) as usize;
            assert_eq!(got, &c.content[from..to], "at {at} len {len}");
        }
        assert!(v.kept() <= VERIFIED_MEMORY);
    }

    #[test]
    fn a_flipped_byte_is_damage_in_its_unit_only() {
        let c = own_file();
        let mut bytes = c.content.clone();
        bytes[CHECK_BLOCK as usize + 7] ^= 1;
        std::fs::write(c.dir.path().join("data"), &bytes).unwrap();
        let v = Verified::default();
        assert_eq!(read(&v, &c, 0, 100).unwrap(), &c.content[..100]);
        let err = read(&v, &c, CHECK_BLOCK + 100, 10).unwrap_err();
        assert!(err.0.contains("fails its checksum"), "{err}");
        let err = read(&v, &c, CHECK_BLOCK - 1, 2).unwrap_err();
        assert!(err.0.contains("unit 1"), "{err}");
    }

    #[test]
    fn a_short_or_missing_file_is_damage() {
        let c = own_file();
        let path = c.dir.path().join("data");
        std::fs::write(&path, &c.content[..c.content.len() - 1]).unwrap();
        let v = Verified::default();
        let err = read(&v, &c, 0, u32::MAX).unwrap_err();
        assert!(err.0.contains("shorter"), "{err}");
        // Missing: the handle is opened by path first (as the filesystem does).
        std::fs::remove_file(&path).unwrap();
        assert!(File::open(&path).is_err());
    }

    /// A unit checked once is served from memory (the file no longer matters), and memory
    /// stays within the capacity.
    #[test]
    fn checked_units_are_kept_within_the_capacity() {
        let c = own_file();
        let v = Verified::with_capacity(CHECK_BLOCK as usize * 2);
        read(&v, &c, 0, 10).unwrap();
        std::fs::write(c.dir.path().join("data"), vec![0u8; c.content.len()]).unwrap();
        assert_eq!(
            read(&v, &c, 5, 5).unwrap(),
            &c.content[5..10],
            "from memory"
        );
        read(&v, &c, CHECK_BLOCK, 1).unwrap_err();
        assert!(v.kept() <= CHECK_BLOCK as usize * 2);
    }

    /// A read of many units reads and checks them all, and one bad unit among them fails
    /// the whole read: no byte of it is returned.
    #[test]
    fn one_bad_unit_fails_a_read_of_many() {
        let c = own_file();
        let mut bytes = c.content.clone();
        bytes[CHECK_BLOCK as usize * 2 + 1] ^= 0x40;
        std::fs::write(c.dir.path().join("data"), &bytes).unwrap();
        let v = Verified::default();
        let b = CHECK_BLOCK;
        assert_eq!(
            read(&v, &c, 0, (2 * b) as u32).unwrap(),
            &c.content[..2 * b as usize]
        );
        let err = read(&v, &c, 10, (3 * b) as u32).unwrap_err();
        assert!(err.0.contains("unit 2"), "{err}");
        assert!(read(&v, &c, 2 * b, 1).is_err());
    }

    /// Reads that cover their units whole keep nothing in memory (a sequential reader does
    /// not push out what small readers use); a read of part of one unit keeps that unit.
    #[test]
    fn only_units_read_in_part_are_kept() {
        let c = own_file();
        let v = Verified::default();
        let b = CHECK_BLOCK;
        read(&v, &c, 0, (2 * b) as u32).unwrap();
        read(&v, &c, 2 * b, u32::MAX).unwrap();
        assert_eq!(v.kept(), 0);
        read(&v, &c, b + 4096, 4096).unwrap();
        assert_eq!(v.kept(), b as usize);
        read(&v, &c, b + 8192, 4096).unwrap();
        assert_eq!(v.kept(), b as usize, "the same unit, from memory");
    }

    /// Reads of a file of its own through its direct opening give the same bytes as
    /// through the page cache, and damage is found the same way. (Where the file system
    /// has no direct I/O, such as tmpfs, the opening fails and reads take the page cache,
    /// which the other tests cover.)
    #[test]
    fn direct_reads_give_the_same_checked_bytes() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let content: Vec<u8> = (0..CHECK_BLOCK * 20 + 1234)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(&path, &content).unwrap();
        let sums: Vec<u32> = content.chunks(CHECK_BLOCK as usize).map(checksum).collect();
        let file = File::open(&path).unwrap();
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .ok();
        let f = CheckedFile {
            file: &file,
            direct: direct.as_ref(),
            path: &path,
            base: 0,
            size: content.len() as u64,
            packed: false,
            node: 1,
            sums: Sums::Known {
                source: 9,
                sums: &sums,
            },
        };
        let v = Verified::default();
        let b = CHECK_BLOCK;
        for (at, len) in [(0, 1 << 20), (b + 5, 700_000), (b * 15, u32::MAX), (3, 10)] {
            let got = v.read(&f, at, len).unwrap();
            let end = at.saturating_add(u64::from(len)).min(content.len() as u64);
            assert_eq!(
                got,
                &content[at as usize..end as usize],
                "at {at} len {len}"
            );
        }
        let mut bad = content.clone();
        bad[(b * 7 + 3) as usize] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let err = v.read(&f, 0, 1 << 20).unwrap_err();
        assert!(err.0.contains("unit 7"), "{err}");
    }

    #[test]
    fn a_packed_file_is_one_unit_at_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pack");
        std::fs::write(&path, b"before|content|after").unwrap();
        let file = File::open(&path).unwrap();
        let sums = [checksum(b"content")];
        let f = CheckedFile {
            file: &file,
            direct: None,
            path: &path,
            base: 7,
            size: 7,
            packed: true,
            node: 3,
            sums: Sums::Known {
                source: 2,
                sums: &sums,
            },
        };
        let v = Verified::default();
        for at in 0..=9u64 {
            for len in 0..=9u32 {
                let got = v.read(&f, at, len).unwrap();
                let start = (at as usize).min(7);
                let end = (start + len as usize).min(7);
                assert_eq!(got, &b"content"[start..end], "at {at} len {len}");
            }
        }
        v.check_all(&f).unwrap();
        let wrong = [checksum(b"contenT")];
        let f = CheckedFile {
            sums: Sums::Known {
                source: 3,
                sums: &wrong,
            },
            ..f
        };
        assert!(v.read(&f, 0, 1).is_err());
        assert!(v.check_all(&f).is_err());
    }
}
