//! The index of an unpacked version: its whole tree in one flat byte image, written once at
//! the end of the unpack and used in place ever after.
//!
//! The file is read, not trusted: [`Index::open`] reads it whole into memory (a private
//! copy: nothing done to the file afterwards, a truncation included, can reach it; a map of
//! the file could be cut short under the daemon and kill it with `SIGBUS` at the next
//! read), checks its header, its length and its checksum, and walks the tree once to check
//! what `doc/SEMANTICS.md` promises (names valid and sorted, the tree whole: see
//! [`Index::check`]). Nothing is decoded into heap objects: every accessor then reads the
//! fixed-size records it needs, checking each offset and count it reads against the image.
//! A damaged image is an [`IndexError`], never a panic and never a read outside the image.
//! The layout,
//! byte by byte, is in `doc/ARCHITECTURE.md` ("The index of a version"); in short:
//!
//! ```text
//! header   64 bytes     magic, format version, counts, CRC-32 of the whole image
//! nodes    40 bytes * node count      node n at 64 + 40 n
//! entries  16 bytes * entry count     each directory's entries contiguous, sorted by name
//! names    the bytes of every entry name and symlink target, back to back
//! ```
//!
//! Writing the image is `encode.rs`: an unpack streams it from its own finished tree
//! ([`Index::write`]). [`IndexTree`] is the same tree as plain Rust values: what
//! [`Index::build`] encodes in memory and [`Index::tree`] decodes (for tests and tools; the
//! filesystem never decodes a whole index).

use std::fs::File;
use std::io::{self, Read, Write};

use super::encode::{encode, TreeSource};
use std::path::Path;

/// Bump when the byte image changes; `tests::index_format_is_pinned` pins the current one.
/// Format 3: the mapped image described in the module documentation (format 2 was a
/// `postcard` encoding decoded into the heap).
pub const INDEX_FORMAT_VERSION: u32 = 3;

pub(super) const MAGIC: &[u8; 8] = b"VM0FSIDX";
pub(super) const HEADER: usize = 64;
pub(super) const NODE: usize = 40;
pub(super) const ENTRY: usize = 16;
/// Where the checksum lies in the header; it covers every other byte of the image.
pub(super) const CRC_AT: usize = 32;

pub(super) const KIND_DIR: u8 = 1;
pub(super) const KIND_FILE: u8 = 2;
pub(super) const KIND_SYMLINK: u8 = 3;

/// A version's tree as plain values. `nodes[0]` is the version's root directory.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexTree {
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    /// Permission bits (`mode & 0o7777`, setuid and setgid dropped).
    pub perm: u16,
    /// Modification time: seconds since the epoch (may be negative) and nanoseconds.
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// Hard link count: names that refer to this node (directories: 2 + subdirectories).
    pub nlink: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// `entries` sorted by name bytes (lookups binary-search them); `parent` is the index of
    /// the parent directory (the root's parent is itself, 0).
    Dir { parent: u32, entries: Vec<DirEntry> },
    /// A regular file of `size` bytes: at offset `packed` of the version's pack file, or,
    /// when `packed` is `None`, in a file of its own ([`crate::archive::blob_path`]). Every
    /// file has a distinct `blob` number (hard links are one node).
    File {
        size: u64,
        blob: u32,
        packed: Option<u64>,
    },
    /// The target exactly as stored in the archive; never followed by vm0fs.
    Symlink { target: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct DirEntry {
    /// One path component, raw bytes (never empty, never `.` or `..`, never contains `/`).
    pub name: Vec<u8>,
    pub node: u32,
}

/// Where a file's content lies in its version directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// At this offset of the pack file ([`crate::archive::pack_path`]).
    Packed { offset: u64 },
    /// In a file of its own ([`crate::archive::blob_path`]).
    Own { blob: u32 },
}

/// One node as read from the image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeRef {
    pub kind: NodeRefKind,
    pub perm: u16,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub nlink: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NodeRefKind {
    Dir {
        parent: u32,
        entries: u32,
    },
    File {
        size: u64,
        stored: Stored,
    },
    /// The target's length; [`Index::symlink_target`] reads it.
    Symlink {
        len: u32,
    },
}

/// A damaged index: something read from the image points outside it or makes no sense.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("damaged index: {0}")]
pub struct IndexError(pub String);

fn damaged<T>(what: impl Into<String>) -> Result<T, IndexError> {
    Err(IndexError(what.into()))
}

/// A version's tree, used in place. Its heap cost is its image (56 bytes per node plus
/// the names), the same bytes a map of the file held once a `find` had touched them all.
pub struct Index {
    image: Vec<u8>,
    nodes: u32,
    entries: u64,
    /// Where the entries and the names start in the image.
    entries_at: usize,
    names_at: usize,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("nodes", &self.nodes)
            .field("entries", &self.entries)
            .field("bytes", &self.bytes().len())
            .finish()
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Make `image` pass its checksum again after a test changed it (to test what the reads
/// themselves catch).
#[cfg(test)]
pub(crate) fn reseal(image: &mut [u8]) {
    let crc = checksum(image);
    image[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Where entry `i` lies in an image of `nodes` nodes (for tests that damage one).
#[cfg(test)]
pub(crate) fn entry_offset(nodes: u32, i: u64) -> usize {
    HEADER + nodes as usize * NODE + i as usize * ENTRY
}

/// The CRC-32 of an image, over every byte but the checksum's own four.
fn checksum(image: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&image[..CRC_AT]);
    h.update(&image[CRC_AT + 4..]);
    h.finalize()
}

impl Index {
    /// Encode `tree`, which must pass [`IndexTree::check`] (an index that would fail at a
    /// read is never written).
    pub fn build(tree: &IndexTree) -> Result<Index, IndexError> {
        tree.check().map_err(IndexError)?;
        let image = encode(tree, io::Cursor::new(Vec::new()))
            .map_err(|e| IndexError(e.to_string()))?
            .into_inner();
        Index::from_image(image)
    }

    /// Write the index of `tree` to a new file at `path`, synced: the index of a new
    /// version never exists in memory twice (the tree, then its image). The caller
    /// vouches for the tree's invariants ([`IndexTree::check`]); [`Index::open`] checks
    /// them again on what was written.
    pub(crate) fn write(tree: &impl TreeSource, path: &Path) -> io::Result<()> {
        let file = File::create(path)?;
        let out = encode(tree, io::BufWriter::with_capacity(256 << 10, file))?;
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()
    }

    /// An index from bytes (as [`Index::save`] writes them), checked like [`Index::open`].
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Index, IndexError> {
        Index::from_image(bytes)
    }

    /// Read the index at `path` into memory and check it: its header, its length, its
    /// checksum and its tree ([`Index::check`]). A damaged or truncated file, or one of
    /// another format, is an error of kind `InvalidData`.
    ///
    /// The file is read once, whole, and never looked at again: whatever happens to it
    /// later (index files live in the cache directory, where anything with write access
    /// could cut one short) cannot change what this index serves.
    pub fn open(path: &Path) -> io::Result<Index> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        // The length read at open bounds what is read: a file that grows meanwhile is
        // caught by the length check below, not read without end.
        let mut image = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.take(len.saturating_add(1)).read_to_end(&mut image)?;
        Index::from_image(image)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }

    fn from_image(image: Vec<u8>) -> Result<Index, IndexError> {
        let mut index = Index {
            image,
            nodes: 0,
            entries: 0,
            entries_at: 0,
            names_at: 0,
        };
        let b = index.bytes();
        if b.len() < HEADER {
            return damaged(format!("{} bytes, shorter than its header", b.len()));
        }
        if &b[..8] != MAGIC {
            return damaged("not a vm0fs index (wrong magic number)");
        }
        let version = u32_at(b, 8);
        if version != INDEX_FORMAT_VERSION {
            return damaged(format!(
                "index format {version}, expected {INDEX_FORMAT_VERSION}"
            ));
        }
        if b[36..HEADER].iter().any(|&x| x != 0) {
            return damaged("reserved header bytes are not zero");
        }
        let nodes = u32_at(b, 12);
        let entries = u64_at(b, 16);
        let names = u64_at(b, 24);
        let expected = u64::from(nodes)
            .checked_mul(NODE as u64)
            .and_then(|n| entries.checked_mul(ENTRY as u64)?.checked_add(n))
            .and_then(|n| n.checked_add(names)?.checked_add(HEADER as u64));
        if expected != Some(b.len() as u64) {
            return damaged(format!(
                "{} bytes, but its header describes {}",
                b.len(),
                expected.map_or("more than 2^64".into(), |e| e.to_string())
            ));
        }
        if u32_at(b, CRC_AT) != checksum(b) {
            return damaged("checksum mismatch");
        }
        if nodes == 0 {
            return damaged("no root node");
        }
        let entries_at = HEADER + nodes as usize * NODE;
        let names_at = entries_at + entries as usize * ENTRY;
        index.nodes = nodes;
        index.entries = entries;
        index.entries_at = entries_at;
        index.names_at = names_at;
        index.check()?;
        Ok(index)
    }

    /// The tree's invariants, checked on the image in one pass over the nodes and one walk
    /// from the root (time linear in the image, memory one bit per node plus the stack of
    /// directories still to visit): every record in range; node 0 a directory that is its
    /// own parent; each directory reached from the root listed once, by the directory
    /// its record names as its parent; entry names valid path components (not empty, `.`
    /// or `..`, no `/` or NUL, at most 255 bytes) in strictly increasing byte order (lookups
    /// binary-search them); distinct blob numbers; and nothing unreachable but empty
    /// directories (the holes an unpack leaves). What [`IndexTree::check`] asks of a tree
    /// before it is written, asked again of what was read.
    pub fn check(&self) -> Result<(), IndexError> {
        let n = self.nodes as usize;
        let mut blobs = Bits::new(n);
        for id in 0..self.nodes {
            if let NodeRefKind::File { .. } = self.node(id)?.kind {
                let blob = u32_at(self.bytes(), HEADER + id as usize * NODE + 20);
                if blob >= self.nodes || !blobs.insert(blob) {
                    return damaged(format!("file {id} has blob {blob}, out of range or shared"));
                }
            }
        }
        match self.node(0)?.kind {
            NodeRefKind::Dir { parent: 0, .. } => {}
            _ => return damaged("node 0 is not a directory that is its own parent"),
        }
        let mut reached = Bits::new(n);
        reached.insert(0);
        let mut dirs = vec![0u32];
        while let Some(dir) = dirs.pop() {
            let mut previous: Option<&[u8]> = None;
            for entry in self.entries(dir)? {
                let (name, child) = entry?;
                if name.is_empty()
                    || name == b"."
                    || name == b".."
                    || name.len() > 255
                    || name.iter().any(|&b| b == b'/' || b == 0)
                {
                    return damaged(format!("directory {dir} has an invalid name {name:?}"));
                }
                if previous.is_some_and(|p| p >= name) {
                    return damaged(format!("directory {dir} is not sorted by name"));
                }
                previous = Some(name);
                let first = reached.insert(child);
                if let NodeRefKind::Dir { parent, .. } = self.node(child)?.kind {
                    if parent != dir {
                        return damaged(format!(
                            "directory {child} has parent {parent}, but {dir} lists it"
                        ));
                    }
                    if !first {
                        return damaged(format!("directory {child} is listed twice"));
                    }
                    dirs.push(child);
                }
            }
        }
        for id in 0..self.nodes {
            let hole = matches!(self.node(id)?.kind, NodeRefKind::Dir { entries: 0, .. });
            if !reached.contains(id) && !hole {
                return damaged(format!("node {id} is not reachable from the root"));
            }
        }
        Ok(())
    }

    fn bytes(&self) -> &[u8] {
        &self.image
    }

    /// The whole image, as [`Index::save`] writes it.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes()
    }

    /// Write the image to `path`, synced, for the caller's own temp-dir-then-rename commit.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let mut file = File::create(path)?;
        file.write_all(self.bytes())?;
        file.sync_all()
    }

    /// How many nodes the tree has (node numbers are `0..len`).
    pub fn len(&self) -> u32 {
        self.nodes
    }

    /// Never true: an index always has its root.
    pub fn is_empty(&self) -> bool {
        self.nodes == 0
    }

    /// Node `n`, or `None` if there is no such node; an error if its record is damaged.
    pub fn get(&self, n: u32) -> Result<Option<NodeRef>, IndexError> {
        if n >= self.nodes {
            return Ok(None);
        }
        self.node(n).map(Some)
    }

    /// Node `n`, which must exist.
    pub fn node(&self, n: u32) -> Result<NodeRef, IndexError> {
        if n >= self.nodes {
            return damaged(format!("node {n} of {}", self.nodes));
        }
        let b = self.bytes();
        let at = HEADER + n as usize * NODE;
        let r = &b[at..at + NODE];
        let (a, x, y) = (u32_at(r, 20), u64_at(r, 24), u64_at(r, 32));
        let kind = match (r[0], r[1]) {
            (KIND_DIR, 0) => {
                let count = u32::try_from(y).ok();
                match (x.checked_add(y), count) {
                    (Some(end), Some(count)) if end <= self.entries && a < self.nodes => {
                        NodeRefKind::Dir {
                            parent: a,
                            entries: count,
                        }
                    }
                    _ => return damaged(format!("directory {n} has entries out of range")),
                }
            }
            (KIND_FILE, 0) => NodeRefKind::File {
                size: x,
                stored: Stored::Own { blob: a },
            },
            (KIND_FILE, 1) => NodeRefKind::File {
                size: x,
                stored: Stored::Packed { offset: y },
            },
            (KIND_SYMLINK, 0) => {
                self.name_range(x, u64::from(a))?;
                NodeRefKind::Symlink { len: a }
            }
            (kind, flag) => return damaged(format!("node {n} has kind {kind}.{flag}")),
        };
        Ok(NodeRef {
            kind,
            perm: u16_at(r, 2),
            nlink: u32_at(r, 4),
            mtime_sec: u64_at(r, 8) as i64,
            mtime_nsec: u32_at(r, 16),
        })
    }

    /// Where `len` bytes at `at` of the name arena lie in the image.
    fn name_range(&self, at: u64, len: u64) -> Result<std::ops::Range<usize>, IndexError> {
        let names = (self.bytes().len() - self.names_at) as u64;
        match at.checked_add(len) {
            Some(end) if end <= names => {
                Ok(self.names_at + at as usize..self.names_at + end as usize)
            }
            _ => damaged(format!("a name at {at} of {len} bytes is out of range")),
        }
    }

    /// Entry `i` of the entry table: (name, node).
    fn entry(&self, i: u64) -> Result<(&[u8], u32), IndexError> {
        if i >= self.entries {
            return damaged(format!("entry {i} of {}", self.entries));
        }
        let b = self.bytes();
        let at = self.entries_at + i as usize * ENTRY;
        let node = u32_at(b, at);
        let len = u32_at(b, at + 4);
        let name_at = u64_at(b, at + 8);
        if node == 0 || node >= self.nodes {
            return damaged(format!("entry {i} names node {node} of {}", self.nodes));
        }
        let range = self.name_range(name_at, u64::from(len))?;
        Ok((&b[range], node))
    }

    /// The entries of directory `dir`, sorted by name: an error if `dir` is not a
    /// directory (or damaged).
    pub fn entries(&self, dir: u32) -> Result<Entries<'_>, IndexError> {
        let at = HEADER + dir.min(self.nodes.saturating_sub(1)) as usize * NODE;
        match self.node(dir)?.kind {
            NodeRefKind::Dir { entries, .. } => Ok(Entries {
                index: self,
                next: u64_at(self.bytes(), at + 24),
                end: u64_at(self.bytes(), at + 24) + u64::from(entries),
            }),
            _ => damaged(format!("node {dir} is not a directory")),
        }
    }

    /// Look up `name` in directory node `dir` (a binary search). `None` if there is no
    /// such name or `dir` is not a directory.
    pub fn lookup(&self, dir: u32, name: &[u8]) -> Result<Option<u32>, IndexError> {
        match self.get(dir)?.map(|n| n.kind) {
            Some(NodeRefKind::Dir { .. }) => {}
            _ => return Ok(None),
        }
        let Entries {
            next: mut lo,
            end: mut hi,
            ..
        } = self.entries(dir)?;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (found, node) = self.entry(mid)?;
            match found.cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(Some(node)),
            }
        }
        Ok(None)
    }

    /// The target of symlink node `n`.
    pub fn symlink_target(&self, n: u32) -> Result<&[u8], IndexError> {
        match self.node(n)?.kind {
            NodeRefKind::Symlink { len } => {
                let at = u64_at(self.bytes(), HEADER + n as usize * NODE + 24);
                let range = self.name_range(at, u64::from(len))?;
                Ok(&self.bytes()[range])
            }
            _ => damaged(format!("node {n} is not a symbolic link")),
        }
    }

    /// Decode the whole tree (tests and tools; the filesystem reads records in place).
    pub fn tree(&self) -> Result<IndexTree, IndexError> {
        let mut nodes = Vec::with_capacity(self.nodes as usize);
        for n in 0..self.nodes {
            let r = self.node(n)?;
            let kind = match r.kind {
                NodeRefKind::Dir { parent, .. } => NodeKind::Dir {
                    parent,
                    entries: self
                        .entries(n)?
                        .map(|e| {
                            e.map(|(name, node)| DirEntry {
                                name: name.to_vec(),
                                node,
                            })
                        })
                        .collect::<Result<_, _>>()?,
                },
                NodeRefKind::File { size, stored } => {
                    let at = HEADER + n as usize * NODE;
                    let blob = u32_at(self.bytes(), at + 20);
                    let packed = match stored {
                        Stored::Packed { offset } => Some(offset),
                        Stored::Own { .. } => None,
                    };
                    NodeKind::File { size, blob, packed }
                }
                NodeRefKind::Symlink { .. } => NodeKind::Symlink {
                    target: self.symlink_target(n)?.to_vec(),
                },
            };
            nodes.push(Node {
                kind,
                perm: r.perm,
                mtime_sec: r.mtime_sec,
                mtime_nsec: r.mtime_nsec,
                nlink: r.nlink,
            });
        }
        Ok(IndexTree { nodes })
    }
}

/// The entries of one directory, read in place: `(name, node)` in name order.
pub struct Entries<'a> {
    index: &'a Index,
    next: u64,
    end: u64,
}

impl ExactSizeIterator for Entries<'_> {}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<(&'a [u8], u32), IndexError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let e = self.index.entry(self.next);
        self.next += 1;
        Some(e)
    }

    /// Entry `n` from here, without reading the ones before it: a directory is listed a
    /// reply at a time from any position.
    fn nth(&mut self, n: usize) -> Option<Self::Item> {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        self.next = self.next.saturating_add(n).min(self.end);
        self.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::try_from(self.end - self.next).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

/// One bit per node, for [`Index::check`].
struct Bits(Vec<u64>);

impl Bits {
    fn new(len: usize) -> Bits {
        Bits(vec![0; len.div_ceil(64)])
    }

    /// Set bit `i` (below the length); whether it was clear.
    fn insert(&mut self, i: u32) -> bool {
        let (word, bit) = (i as usize / 64, 1u64 << (i % 64));
        let clear = self.0[word] & bit == 0;
        self.0[word] |= bit;
        clear
    }

    fn contains(&self, i: u32) -> bool {
        self.0[i as usize / 64] & (1u64 << (i % 64)) != 0
    }
}

impl IndexTree {
    /// A tree of one empty root directory with these attributes.
    pub fn empty(perm: u16, mtime_sec: i64, mtime_nsec: u32) -> IndexTree {
        IndexTree {
            nodes: vec![Node {
                kind: NodeKind::Dir {
                    parent: 0,
                    entries: Vec::new(),
                },
                perm,
                mtime_sec,
                mtime_nsec,
                nlink: 2,
            }],
        }
    }

    /// Look up `name` in directory node `dir`. `None` if `dir` is not a directory.
    pub fn lookup(&self, dir: u32, name: &[u8]) -> Option<u32> {
        match &self.nodes.get(dir as usize)?.kind {
            NodeKind::Dir { entries, .. } => entries
                .binary_search_by(|e| e.name.as_slice().cmp(name))
                .ok()
                .map(|i| entries[i].node),
            _ => None,
        }
    }

    /// Check that the tree is one the filesystem can serve as it expects. Every node:
    /// entries naming nodes in range other than the root, with valid names in strictly
    /// increasing order (lookups binary-search them), a parent in range, distinct blob
    /// numbers below the node count (an unpack numbers them densely). The tree: node 0 is
    /// a directory that is its own parent; each directory reached from it is listed once,
    /// by its parent; what no name reaches is an empty directory (the holes `Tree::finish`
    /// leaves). [`Index::build`] refuses a tree that fails here, so that no index on disk
    /// holds one; [`Index::check`] asks the same of an image.
    pub fn check(&self) -> Result<(), String> {
        let n = self.nodes.len();
        let mut blobs = std::collections::HashSet::new();
        for (id, node) in self.nodes.iter().enumerate() {
            match &node.kind {
                NodeKind::Dir { parent, entries } => {
                    if *parent as usize >= n {
                        return Err(format!("directory {id} has parent {parent} of {n}"));
                    }
                    for (i, e) in entries.iter().enumerate() {
                        let name = e.name.as_slice();
                        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/')
                        {
                            return Err(format!("directory {id} has an invalid name {name:?}"));
                        }
                        if i > 0 && entries[i - 1].name.as_slice() >= name {
                            return Err(format!("directory {id} is not sorted by name"));
                        }
                        if e.node == 0 || e.node as usize >= n {
                            return Err(format!("directory {id} names node {} of {n}", e.node));
                        }
                    }
                }
                NodeKind::File { blob, .. } => {
                    if *blob as usize >= n {
                        return Err(format!("file {id} has blob {blob} of {n} nodes"));
                    }
                    if !blobs.insert(*blob) {
                        return Err(format!("file {id} shares blob {blob} with another node"));
                    }
                }
                NodeKind::Symlink { .. } => {}
            }
        }
        match self.nodes.first().map(|r| &r.kind) {
            Some(NodeKind::Dir { parent: 0, .. }) => {}
            Some(_) => return Err("node 0 is not a directory that is its own parent".into()),
            None => return Err("no root node".into()),
        }
        let mut seen = vec![false; n];
        seen[0] = true;
        let mut dirs = vec![0usize];
        while let Some(dir) = dirs.pop() {
            let NodeKind::Dir { entries, .. } = &self.nodes[dir].kind else {
                unreachable!("only directories are pushed");
            };
            for e in entries {
                let child = e.node as usize;
                if let NodeKind::Dir { parent, .. } = &self.nodes[child].kind {
                    if *parent as usize != dir {
                        return Err(format!(
                            "directory {child} has parent {parent}, but {dir} lists it"
                        ));
                    }
                    if seen[child] {
                        return Err(format!("directory {child} is listed twice"));
                    }
                    dirs.push(child);
                }
                seen[child] = true;
            }
        }
        for (id, node) in self.nodes.iter().enumerate() {
            let hole = matches!(&node.kind, NodeKind::Dir { entries, .. } if entries.is_empty());
            if !seen[id] && !hole {
                return Err(format!("node {id} is not reachable from the root"));
            }
        }
        Ok(())
    }
}
