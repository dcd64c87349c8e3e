//! Writing an index: the byte image of [`Index`](super::Index) encoded from any tree that
//! can be read node by node ([`TreeSource`]), streamed to its destination section by section so
//! that the image is never in memory as a whole (an unpack writes it straight to
//! `index.bin`). The layout is described in `index.rs` and `doc/ARCHITECTURE.md`.

use std::io::{self, Seek, Write};

use super::index::{CRC_AT, ENTRY, HEADER, KIND_DIR, KIND_FILE, KIND_SYMLINK, MAGIC, NODE};
use super::{IndexTree, NodeKind, INDEX_FORMAT_VERSION};

/// Where an index is encoded: every byte goes to `out` and, but for the checksum field,
/// into the checksum.
struct Sink<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Sink<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.out.write_all(bytes)
    }
}

/// A tree as [`encode`] reads it: nodes in number order, each directory's entries sorted
/// by name. [`IndexTree`] is one; an unpack encodes its own work tree directly, without
/// building an [`IndexTree`] first (see `tree.rs`).
pub(crate) trait TreeSource {
    fn len(&self) -> usize;
    /// Node `n` (below [`TreeSource::len`]).
    fn node(&self, n: usize) -> TreeSourceNode<'_>;
    /// The entries of directory `n`, sorted by name; nothing for other nodes.
    fn entries(&self, n: usize) -> impl Iterator<Item = (&[u8], u32)> + '_;
}

/// A node as a [`TreeSource`] gives it.
pub(crate) struct TreeSourceNode<'a> {
    pub kind: TreeSourceKind<'a>,
    pub perm: u16,
    pub nlink: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
}

pub(crate) enum TreeSourceKind<'a> {
    Dir {
        parent: u32,
    },
    File {
        size: u64,
        blob: u32,
        packed: Option<u64>,
    },
    Symlink(&'a [u8]),
}

impl TreeSource for IndexTree {
    fn len(&self) -> usize {
        self.nodes.len()
    }

    fn node(&self, n: usize) -> TreeSourceNode<'_> {
        let node = &self.nodes[n];
        let kind = match &node.kind {
            NodeKind::Dir { parent, .. } => TreeSourceKind::Dir { parent: *parent },
            NodeKind::File { size, blob, packed } => TreeSourceKind::File {
                size: *size,
                blob: *blob,
                packed: *packed,
            },
            NodeKind::Symlink { target } => TreeSourceKind::Symlink(target),
        };
        TreeSourceNode {
            kind,
            perm: node.perm,
            nlink: node.nlink,
            mtime_sec: node.mtime_sec,
            mtime_nsec: node.mtime_nsec,
        }
    }

    fn entries(&self, n: usize) -> impl Iterator<Item = (&[u8], u32)> + '_ {
        let list = match &self.nodes[n].kind {
            NodeKind::Dir { entries, .. } => &entries[..],
            _ => &[],
        };
        list.iter().map(|e| (&e.name[..], e.node))
    }
}

/// The bytes of names node `n` adds (a directory's entry names, a symlink's target).
fn name_len(tree: &impl TreeSource, n: usize) -> u64 {
    match tree.node(n).kind {
        TreeSourceKind::Dir { .. } => tree.entries(n).map(|(name, _)| name.len() as u64).sum(),
        TreeSourceKind::Symlink(target) => target.len() as u64,
        TreeSourceKind::File { .. } => 0,
    }
}

/// The entry count and the name bytes of `tree`.
fn sizes(tree: &impl TreeSource) -> (u64, u64) {
    let (mut entry_count, mut names_len) = (0u64, 0u64);
    for n in 0..tree.len() {
        entry_count += tree.entries(n).count() as u64;
        names_len += name_len(tree, n);
    }
    (entry_count, names_len)
}

/// The length of the image [`encode`] writes for `tree`, without writing it.
pub(super) fn encoded_len(tree: &impl TreeSource) -> u64 {
    let (entries, names) = sizes(tree);
    (HEADER as u64)
        .saturating_add((tree.len() as u64).saturating_mul(NODE as u64))
        .saturating_add(entries.saturating_mul(ENTRY as u64))
        .saturating_add(names)
}

/// Encode `tree` (checked) to `out`, section by section (header, nodes, entries, names),
/// so that no copy of the image is ever in memory; the checksum is written last, at its
/// place in the header.
pub(super) fn encode<W: Write + Seek>(tree: &impl TreeSource, out: W) -> io::Result<W> {
    let count = tree.len();
    let (entry_count, names_len) = sizes(tree);
    let node_count = u32::try_from(count)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "more than 2^32 nodes"))?;
    let mut header = [0u8; HEADER];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&INDEX_FORMAT_VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&node_count.to_le_bytes());
    header[16..24].copy_from_slice(&entry_count.to_le_bytes());
    header[24..32].copy_from_slice(&names_len.to_le_bytes());
    let mut sink = Sink {
        out,
        crc: crc32fast::Hasher::new(),
    };
    sink.put(&header[..CRC_AT])?;
    sink.out.write_all(&header[CRC_AT..CRC_AT + 4])?;
    sink.put(&header[CRC_AT + 4..])?;
    // Three passes in node order: node records, entry records, then the names (each
    // directory's entry names, or a symlink's target, where its node comes).
    let (mut first_entry, mut names_before) = (0u64, 0u64);
    for i in 0..count {
        let n = tree.node(i);
        let (kind, packed, a, b, c) = match n.kind {
            TreeSourceKind::Dir { parent } => {
                let len = tree.entries(i).count() as u64;
                let first = first_entry;
                first_entry += len;
                (KIND_DIR, 0u8, parent, first, len)
            }
            TreeSourceKind::File { size, blob, packed } => match packed {
                Some(offset) => (KIND_FILE, 1, blob, size, offset),
                None => (KIND_FILE, 0, blob, size, 0),
            },
            TreeSourceKind::Symlink(target) => {
                (KIND_SYMLINK, 0, target.len() as u32, names_before, 0)
            }
        };
        names_before += name_len(tree, i);
        let mut record = [0u8; NODE];
        record[0] = kind;
        record[1] = packed;
        record[2..4].copy_from_slice(&n.perm.to_le_bytes());
        record[4..8].copy_from_slice(&n.nlink.to_le_bytes());
        record[8..16].copy_from_slice(&n.mtime_sec.to_le_bytes());
        record[16..20].copy_from_slice(&n.mtime_nsec.to_le_bytes());
        record[20..24].copy_from_slice(&a.to_le_bytes());
        record[24..32].copy_from_slice(&b.to_le_bytes());
        record[32..40].copy_from_slice(&c.to_le_bytes());
        sink.put(&record)?;
    }
    let mut name_at = 0u64;
    for i in 0..count {
        if let TreeSourceKind::Symlink(target) = tree.node(i).kind {
            name_at += target.len() as u64;
        }
        for (name, node) in tree.entries(i) {
            let mut record = [0u8; ENTRY];
            record[..4].copy_from_slice(&node.to_le_bytes());
            record[4..8].copy_from_slice(&(name.len() as u32).to_le_bytes());
            record[8..16].copy_from_slice(&name_at.to_le_bytes());
            name_at += name.len() as u64;
            sink.put(&record)?;
        }
    }
    for i in 0..count {
        if let TreeSourceKind::Symlink(target) = tree.node(i).kind {
            sink.put(target)?;
        }
        for (name, _) in tree.entries(i) {
            sink.put(name)?;
        }
    }
    let crc = sink.crc.finalize();
    let mut out = sink.out;
    out.seek(io::SeekFrom::Start(CRC_AT as u64))?;
    out.write_all(&crc.to_le_bytes())?;
    out.seek(io::SeekFrom::End(0))?;
    Ok(out)
}
