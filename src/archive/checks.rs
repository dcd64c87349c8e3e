//! The checksums of a version's content (`checks.bin`, beside `index.bin`), and the rule
//! that cuts each file into checked units.
//!
//! Every byte a version serves is covered by a CRC-32 computed while it was written by the
//! unpack (never in a second pass): a file of its own (`data/<n>`) has one per block of
//! [`CHECK_BLOCK`] bytes, a packed file one for its whole content, so that serving a 4 KiB
//! file reads 4 KiB, not the 1 MiB around it. Readers check a unit before any byte of it
//! leaves the daemon (`crate::cache::Verified`); a unit that is missing, short or fails its
//! checksum makes the version damaged, never a wrong answer.
//!
//! The file is read with `pread`, never mapped, so that nothing done to it under a running
//! daemon (truncated, rewritten) can do more than fail a read. Its layout:
//!
//! ```text
//! header  64 bytes             magic "VM0FSCRC", format version, block size, node count,
//!                              unit count, pack length, files of their own and their
//!                              bytes (for the cheap check at start), CRC-32 of the file
//! starts  8 bytes * (nodes+1)  node n's units are units[starts[n]..starts[n + 1]]
//! units   4 bytes * units      the CRC-32 of each unit, in node order
//! ```
//!
//! A node that is not a regular file has no units. The checksum is crc32fast's CRC-32
//! (IEEE), which measured twice as fast as the `crc32c` crate's CRC-32C on the machines we
//! run on (about 40 GB/s against 20, both hardware accelerated).

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::encode::{TreeSource, TreeSourceKind};

/// Bump when the layout above changes; `tests::checks_format_is_pinned` pins it.
/// Format 2: 64 KiB blocks (format 1 had 1 MiB).
pub const CHECKS_FORMAT_VERSION: u32 = 2;

/// The unit of a file of its own: 64 KiB. A read checks every unit it touches whole, so
/// the unit is what a small random read costs (a 4 KiB `O_DIRECT` read of a 1 MiB unit
/// read and checked 1 MiB); a 1 MiB request reads its 16 or 17 units in one read.
/// Checksums cost 4 bytes a unit, 64 KiB per GiB.
pub const CHECK_BLOCK: u64 = 64 << 10;

const MAGIC: &[u8; 8] = b"VM0FSCRC";
const HEADER: usize = 64;
/// Where the file's own checksum lies in the header; it covers every other byte.
const CRC_AT: usize = 56;

/// The checksum of a unit's bytes.
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The checksum file of a version directory.
pub fn checks_path(dest: &Path) -> PathBuf {
    dest.join("checks.bin")
}

/// How many units a file of `size` bytes has: one for a packed file, one per
/// [`CHECK_BLOCK`] for a file of its own.
pub fn unit_count(size: u64, packed: bool) -> u64 {
    if packed {
        1
    } else {
        size.div_ceil(CHECK_BLOCK)
    }
}

/// Where unit `unit` of a file lies in its content (from its first byte) and how long it
/// is.
pub fn unit_span(size: u64, packed: bool, unit: u64) -> (u64, u64) {
    if packed {
        return (0, size);
    }
    let start = unit.saturating_mul(CHECK_BLOCK);
    (start, size.saturating_sub(start).min(CHECK_BLOCK))
}

/// What is wrong with a version's content or checksums, in words for the log (the
/// version is dropped and downloaded again).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Damage(pub String);

impl From<super::IndexError> for Damage {
    fn from(e: super::IndexError) -> Damage {
        Damage(e.to_string())
    }
}

fn damage<T>(what: impl Into<String>) -> Result<T, Damage> {
    Err(Damage(what.into()))
}

/// The checksums of the files of an unpack, as they are written: each node's units, by
/// node number (a member that replaces a path takes over its node number, and its
/// checksums replace the old ones).
#[derive(Default)]
pub(super) struct Sums {
    /// Where each node's units start in `units`; `u64::MAX` where no file was written.
    starts: Vec<u64>,
    units: Vec<u32>,
}

impl Sums {
    /// Record the units of the file just written as `node`.
    pub fn set(&mut self, node: u32, units: &[u32]) {
        let at = node as usize;
        if self.starts.len() <= at {
            self.starts.resize(at + 1, u64::MAX);
        }
        self.starts[at] = self.units.len() as u64;
        self.units.extend_from_slice(units);
    }

    /// Write `checks.bin` for the finished `tree` into `dest`, synced like the index.
    pub fn write(&self, tree: &impl TreeSource, dest: &Path, pack_len: u64) -> io::Result<()> {
        let mut own_files = 0u64;
        let mut own_bytes = 0u64;
        let mut total = 0u64;
        let units_of = |n: usize| -> io::Result<Option<(u64, u64)>> {
            let TreeSourceKind::File { size, packed, .. } = tree.node(n).kind else {
                return Ok(None);
            };
            let count = unit_count(size, packed.is_some());
            let start = self.starts.get(n).copied().unwrap_or(u64::MAX);
            if start == u64::MAX || start.saturating_add(count) > self.units.len() as u64 {
                return Err(io::Error::other(format!(
                    "no checksums were recorded for node {n} (a defect of the unpacker)"
                )));
            }
            Ok(Some((start, count)))
        };
        for n in 0..tree.len() {
            if let Some((_, count)) = units_of(n)? {
                total += count;
                if let TreeSourceKind::File {
                    size, packed: None, ..
                } = tree.node(n).kind
                {
                    own_files += 1;
                    own_bytes += size;
                }
            }
        }
        let header = ChecksHeader {
            nodes: u32::try_from(tree.len()).map_err(io::Error::other)?,
            units: total,
            pack_len,
            own_files,
            own_bytes,
        };
        let path = checks_path(dest);
        let file = File::create(&path)?;
        let mut out = BufWriter::with_capacity(256 << 10, file);
        let mut crc = crc32fast::Hasher::new();
        let mut put = |out: &mut BufWriter<File>, bytes: &[u8]| {
            crc.update(bytes);
            out.write_all(bytes)
        };
        let head = header.encode();
        put(&mut out, &head[..CRC_AT])?;
        out.write_all(&[0; 4])?;
        put(&mut out, &head[CRC_AT + 4..])?;
        let mut at = 0u64;
        for n in 0..tree.len() {
            put(&mut out, &at.to_le_bytes())?;
            at += units_of(n)?.map_or(0, |(_, count)| count);
        }
        put(&mut out, &at.to_le_bytes())?;
        for n in 0..tree.len() {
            if let Some((start, count)) = units_of(n)? {
                for u in &self.units[start as usize..(start + count) as usize] {
                    put(&mut out, &u.to_le_bytes())?;
                }
            }
        }
        let mut file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.seek(SeekFrom::Start(CRC_AT as u64))?;
        file.write_all(&crc.finalize().to_le_bytes())?;
        file.sync_all()
    }
}

/// The header's fields.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChecksHeader {
    pub nodes: u32,
    pub units: u64,
    /// The length of `pack`.
    pub pack_len: u64,
    /// How many files of their own (`data/<n>`) the version has, and their bytes.
    pub own_files: u64,
    pub own_bytes: u64,
}

impl ChecksHeader {
    fn encode(&self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&CHECKS_FORMAT_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(CHECK_BLOCK as u32).to_le_bytes());
        h[16..20].copy_from_slice(&self.nodes.to_le_bytes());
        h[24..32].copy_from_slice(&self.units.to_le_bytes());
        h[32..40].copy_from_slice(&self.pack_len.to_le_bytes());
        h[40..48].copy_from_slice(&self.own_files.to_le_bytes());
        h[48..56].copy_from_slice(&self.own_bytes.to_le_bytes());
        h
    }

    /// The header of a checksum file `len` bytes long, checked for everything but the
    /// file's checksum.
    fn decode(h: &[u8], len: u64) -> Result<ChecksHeader, Damage> {
        if h.len() < HEADER || len < HEADER as u64 {
            return damage(format!("checks.bin: {len} bytes, shorter than its header"));
        }
        if &h[..8] != MAGIC {
            return damage("checks.bin: not a vm0fs checksum file (wrong magic number)");
        }
        let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != CHECKS_FORMAT_VERSION {
            return damage(format!(
                "checks.bin: format {version}, expected {CHECKS_FORMAT_VERSION}"
            ));
        }
        if u64::from(u32_at(12)) != CHECK_BLOCK {
            return damage(format!("checks.bin: block size {}", u32_at(12)));
        }
        if h[20..24].iter().chain(&h[60..64]).any(|&b| b != 0) {
            return damage("checks.bin: reserved header bytes are not zero");
        }
        let header = ChecksHeader {
            nodes: u32_at(16),
            units: u64_at(24),
            pack_len: u64_at(32),
            own_files: u64_at(40),
            own_bytes: u64_at(48),
        };
        let expected = (u64::from(header.nodes) + 1)
            .checked_mul(8)
            .and_then(|s| s.checked_add(header.units.checked_mul(4)?))
            .and_then(|s| s.checked_add(HEADER as u64));
        if expected != Some(len) {
            return damage(format!(
                "checks.bin: {len} bytes, but its header describes {}",
                expected.map_or("more than 2^64".into(), |e| e.to_string())
            ));
        }
        Ok(header)
    }
}

/// Read the header of the checksum file in `dir`, checked against its length (not its
/// checksum): the cheap check of a version found at start.
pub fn read_header(dir: &Path) -> Result<ChecksHeader, Damage> {
    open_header(dir).map(|(_, _, header, _)| header)
}

/// The checksum file in `dir`, open and read past its header: the file, the header's
/// bytes, the header checked against the file's length (not its checksum), and the length.
fn open_header(dir: &Path) -> Result<(File, [u8; HEADER], ChecksHeader, u64), Damage> {
    let mut file = File::open(checks_path(dir)).or_else(|e| damage(format!("checks.bin: {e}")))?;
    let len = file
        .metadata()
        .or_else(|e| damage(format!("checks.bin: {e}")))?
        .len();
    let mut head = [0u8; HEADER];
    file.read_exact(&mut head)
        .or_else(|_| damage(format!("checks.bin: {len} bytes, shorter than its header")))?;
    let header = ChecksHeader::decode(&head, len)?;
    Ok((file, head, header, len))
}

/// The cheap check of a complete version directory found at start: the headers of the
/// index and of the checksum file agree with their lengths and with each other, the pack
/// has the length the checksum file recorded, and `data/` holds as many files of their
/// own with as many bytes. Content is not read (that is checked at each read).
pub fn quick_check(dir: &Path, with_content: bool) -> Result<(), Damage> {
    use super::index::{ENTRY, HEADER as INDEX_HEADER, MAGIC as INDEX_MAGIC, NODE};
    let index = super::index_path(dir);
    let mut head = [0u8; INDEX_HEADER];
    let len = File::open(&index)
        .and_then(|mut f| {
            let len = f.metadata()?.len();
            f.read_exact(&mut head)?;
            Ok(len)
        })
        .or_else(|e| damage(format!("index.bin: {e}")))?;
    let u64_at = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes"));
    let nodes = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes"));
    let expected = u64_at(16)
        .checked_mul(ENTRY as u64)
        .and_then(|e| e.checked_add(u64::from(nodes) * NODE as u64))
        .and_then(|n| n.checked_add(u64_at(24)))
        .and_then(|n| n.checked_add(INDEX_HEADER as u64));
    if &head[..8] != INDEX_MAGIC || expected != Some(len) {
        return damage(format!(
            "index.bin: a header that does not describe its {len} bytes"
        ));
    }
    let header = read_header(dir)?;
    if header.nodes != nodes {
        return damage(format!(
            "checks.bin: {} nodes, but the index has {nodes}",
            header.nodes
        ));
    }
    if !with_content {
        // A version larger than the cache: its content is read from the archive, and the
        // little it keeps (sparse files) is checked when read.
        return Ok(());
    }
    let pack = super::pack_path(dir);
    let pack_len = std::fs::metadata(&pack)
        .map(|m| m.len())
        .or_else(|e| damage(format!("pack: {e}")))?;
    if pack_len != header.pack_len {
        return damage(format!(
            "pack: {pack_len} bytes, expected {}",
            header.pack_len
        ));
    }
    let (mut files, mut bytes) = (0u64, 0u64);
    let data = dir.join("data");
    for e in std::fs::read_dir(&data).or_else(|e| damage(format!("data: {e}")))? {
        let meta = e
            .and_then(|e| e.metadata())
            .or_else(|e| damage(format!("data: {e}")))?;
        files += 1;
        bytes += meta.len();
    }
    if (files, bytes) != (header.own_files, header.own_bytes) {
        return damage(format!(
            "data: {files} files of {bytes} bytes, expected {} of {}",
            header.own_files, header.own_bytes
        ));
    }
    Ok(())
}

/// A version's checksums, read from its open file on demand (a few bytes per unit).
#[derive(Debug)]
pub struct Checks {
    file: File,
    header: ChecksHeader,
    /// Tells this opening of a version from any other, for caches of verified bytes.
    serial: u64,
}

static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// A number never given before in this process (shared by [`Checks::serial`] and the
/// sources of published files).
pub fn fresh_serial() -> u64 {
    NEXT_SERIAL.fetch_add(1, Ordering::Relaxed)
}

impl Checks {
    /// Open the checksum file in `dir` for an index of `nodes` nodes: its header, its length
    /// and (with `verify`) its own checksum are checked. The file is held open: deleting
    /// it under a running daemon changes nothing.
    pub fn open(dir: &Path, nodes: u32, verify: bool) -> Result<Checks, Damage> {
        let (mut file, head, header, len) = open_header(dir)?;
        if header.nodes != nodes {
            return damage(format!(
                "checks.bin: {} nodes, but the index has {nodes}",
                header.nodes
            ));
        }
        if verify {
            let mut crc = crc32fast::Hasher::new();
            crc.update(&head[..CRC_AT]);
            crc.update(&head[CRC_AT + 4..]);
            let mut buf = vec![0u8; 256 << 10];
            let mut left = len - HEADER as u64;
            while left > 0 {
                let n = file
                    .read(&mut buf)
                    .or_else(|e| damage(format!("checks.bin: {e}")))?;
                if n == 0 {
                    return damage("checks.bin: shorter than its header says");
                }
                crc.update(&buf[..n]);
                left = left.saturating_sub(n as u64);
            }
            let stored = u32::from_le_bytes(head[CRC_AT..CRC_AT + 4].try_into().expect("4"));
            if crc.finalize() != stored {
                return damage("checks.bin: checksum mismatch");
            }
        }
        Ok(Checks {
            file,
            header,
            serial: fresh_serial(),
        })
    }

    pub fn header(&self) -> &ChecksHeader {
        &self.header
    }

    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// Tell this opening by `serial` from now on: one from [`fresh_serial`] taken for it
    /// before it was made (the first pass of a version larger than the cache keys the
    /// spans it keeps by it).
    pub fn adopt_serial(&mut self, serial: u64) {
        self.serial = serial;
    }

    /// The checksum of unit `unit` of node `node`, a file of `count` units.
    pub fn unit(&self, node: u32, count: u64, unit: u64) -> Result<u32, Damage> {
        let mut crc = Vec::with_capacity(1);
        self.units(node, count, unit..unit + 1, &mut crc)?;
        Ok(crc[0])
    }

    /// The checksums of units `units` of node `node`, a file of `count` units, appended to
    /// `out`: two `pread`s however many units (a 1 MiB read checks 16).
    pub fn units(
        &self,
        node: u32,
        count: u64,
        units: std::ops::Range<u64>,
        out: &mut Vec<u32>,
    ) -> Result<(), Damage> {
        if node >= self.header.nodes {
            return damage(format!(
                "checks.bin: no node {node} (it has {})",
                self.header.nodes
            ));
        }
        let mut se = [0u8; 16];
        self.read_exact_at(&mut se, HEADER as u64 + u64::from(node) * 8)?;
        let start = u64::from_le_bytes(se[..8].try_into().expect("8 bytes"));
        let end = u64::from_le_bytes(se[8..].try_into().expect("8 bytes"));
        if start > end
            || end > self.header.units
            || end - start != count
            || units.start >= units.end
            || units.end > count
        {
            return damage(format!(
                "checks.bin: node {node} has units {start}..{end}, expected {count}"
            ));
        }
        let at = HEADER as u64 + (u64::from(self.header.nodes) + 1) * 8 + (start + units.start) * 4;
        let n = usize::try_from(units.end - units.start)
            .map_err(|_| Damage("checks.bin: too many units asked at once".into()))?;
        let mut raw = vec![0u8; n * 4];
        self.read_exact_at(&mut raw, at)?;
        out.extend(
            raw.chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))),
        );
        Ok(())
    }

    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> Result<(), Damage> {
        self.file.read_exact_at(buf, at).or_else(|e| {
            damage(if e.kind() == io::ErrorKind::UnexpectedEof {
                "checks.bin: shorter than its header says".to_string()
            } else {
                format!("checks.bin: {e}")
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{IndexTree, Node, NodeKind};

    fn file(size: u64, blob: u32, packed: Option<u64>) -> Node {
        Node {
            kind: NodeKind::File { size, blob, packed },
            perm: 0o644,
            mtime_sec: 0,
            mtime_nsec: 0,
            nlink: 1,
        }
    }

    /// A tree of a root, a packed file of 5 bytes and a file of its own of 2.5 blocks.
    fn tree() -> IndexTree {
        let mut t = IndexTree::empty(0o755, 0, 0);
        t.nodes.push(file(5, 0, Some(0)));
        t.nodes.push(file(CHECK_BLOCK * 5 / 2, 1, None));
        t
    }

    fn written(dir: &Path) -> Vec<u8> {
        let mut sums = Sums::default();
        sums.set(1, &[0xdead_beef]);
        sums.set(2, &[1, 2, 3]);
        sums.write(&tree(), dir, 5).unwrap();
        std::fs::read(checks_path(dir)).unwrap()
    }

    #[test]
    fn checks_format_is_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = written(dir.path());
        let mut expected = Vec::new();
        expected.extend_from_slice(b"VM0FSCRC");
        expected.extend_from_slice(&2u32.to_le_bytes()); // format
        expected.extend_from_slice(&(64u32 << 10).to_le_bytes()); // block
        expected.extend_from_slice(&3u32.to_le_bytes()); // nodes
        expected.extend_from_slice(&[0; 4]);
        expected.extend_from_slice(&4u64.to_le_bytes()); // units
        expected.extend_from_slice(&5u64.to_le_bytes()); // pack length
        expected.extend_from_slice(&1u64.to_le_bytes()); // files of their own
        expected.extend_from_slice(&(CHECK_BLOCK * 5 / 2).to_le_bytes());
        expected.extend_from_slice(&bytes[56..60]); // the checksum, checked below
        expected.extend_from_slice(&[0; 4]);
        for start in [0u64, 0, 1, 4] {
            expected.extend_from_slice(&start.to_le_bytes());
        }
        for crc in [0xdead_beef_u32, 1, 2, 3] {
            expected.extend_from_slice(&crc.to_le_bytes());
        }
        assert_eq!(
            bytes, expected,
            "serialized checksum format appears to have changed, version bump required"
        );
        let mut crc = crc32fast::Hasher::new();
        crc.update(&bytes[..56]);
        crc.update(&bytes[60..]);
        assert_eq!(bytes[56..60], crc.finalize().to_le_bytes());
        assert_eq!(
            CHECKS_FORMAT_VERSION, 2,
            "update the pinned bytes with the bump"
        );
    }

    #[test]
    fn units_are_read_back_by_node() {
        let dir = tempfile::tempdir().unwrap();
        written(dir.path());
        let checks = Checks::open(dir.path(), 3, true).unwrap();
        assert_eq!(checks.unit(1, 1, 0), Ok(0xdead_beef));
        assert_eq!(checks.unit(2, 3, 2), Ok(3));
        assert!(checks.unit(2, 2, 0).is_err(), "a unit count that disagrees");
        assert!(checks.unit(0, 1, 0).is_err(), "a directory has no units");
        assert!(checks.unit(3, 1, 0).is_err(), "no such node");
        let mut got = vec![7];
        checks.units(2, 3, 0..3, &mut got).unwrap();
        assert_eq!(got, [7, 1, 2, 3], "appended, in order");
        got.clear();
        checks.units(2, 3, 1..3, &mut got).unwrap();
        assert_eq!(got, [2, 3]);
        for bad in [0..4, 2..2, 3..4] {
            assert!(
                checks.units(2, 3, bad.clone(), &mut got).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(
            read_header(dir.path()).unwrap(),
            ChecksHeader {
                nodes: 3,
                units: 4,
                pack_len: 5,
                own_files: 1,
                own_bytes: CHECK_BLOCK * 5 / 2
            }
        );
        assert!(Checks::open(dir.path(), 4, true).is_err(), "node count");
    }

    /// Every kind of damage to the file is an error when it is opened, never a panic.
    #[test]
    fn a_damaged_checksum_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = written(dir.path());
        let path = checks_path(dir.path());
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("short header", good[..40].to_vec()),
            ("truncated", good[..good.len() - 1].to_vec()),
            ("longer", [&good[..], &[0]].concat()),
        ];
        for at in [0, 8, 12, 16, 20, 24, 60, 70, good.len() - 1] {
            let mut b = good.clone();
            b[at] ^= 0x40;
            cases.push(("flipped", b));
        }
        for (what, bytes) in cases {
            std::fs::write(&path, &bytes).unwrap();
            assert!(
                Checks::open(dir.path(), 3, true).is_err(),
                "{what}: {bytes:?}"
            );
        }
        std::fs::remove_file(&path).unwrap();
        let missing = Checks::open(dir.path(), 3, true).unwrap_err();
        assert!(missing.0.contains("checks.bin"), "{missing}");
        assert!(read_header(dir.path()).is_err());
    }

    /// Truncated under a reader that opened it whole: a read fails, nothing panics.
    #[test]
    fn a_checksum_file_truncated_after_open_fails_reads() {
        let dir = tempfile::tempdir().unwrap();
        written(dir.path());
        let checks = Checks::open(dir.path(), 3, true).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(checks_path(dir.path()))
            .unwrap();
        f.set_len(70).unwrap();
        let err = checks.unit(2, 3, 2).unwrap_err();
        assert!(err.0.contains("shorter"), "{err}");
    }

    #[test]
    fn units_cover_each_file_once() {
        let cases = [
            (0, true, 1),
            (5, true, 1),
            (CHECK_BLOCK, false, 1),
            (CHECK_BLOCK + 1, false, 2),
            (CHECK_BLOCK * 3, false, 3),
        ];
        for (size, packed, count) in cases {
            assert_eq!(unit_count(size, packed), count, "{size}");
            let covered: u64 = (0..count).map(|u| unit_span(size, packed, u).1).sum();
            assert_eq!(covered, size);
        }
        assert_eq!(
            unit_span(CHECK_BLOCK + 1, false, 1),
            (CHECK_BLOCK, 1),
            "the last block is short"
        );
    }
}
