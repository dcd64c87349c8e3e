//! What an unpack in progress makes visible before the archive ends.
//!
//! A regular file is *published* once its content is completely written and closed: its
//! node, attributes and blob, and every (directory, name) -> node step of its path. A
//! reader may then serve it while the rest of the archive is still being read. Node numbers
//! are the final ones (see [`super::Tree`]'s numbering), so an inode derived from a
//! published node is the inode the finished version gives the same path.
//!
//! Directories on the way are only *seen*: their mode, mtime and link count may still
//! change (a directory member may come after its children), so readers should not let
//! them be cached. A name that a later member takes over is withdrawn at once, before the
//! new member's content is written, so that nothing partial or stale is ever answered for
//! it; the new content is published again when it is complete. Blob paths are only valid
//! until the unpack ends (blobs are renamed then, and the directory is moved by the
//! cache): a reader checks that the file it opened is the one published ([`BlobId`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::names::Names;

/// Where published state goes. The unpack calls it from its own thread.
pub trait Publish: Sync {
    /// The file `steps.last()` is complete; `steps` are the path to it from the root.
    fn file(&self, steps: &[Step], file: &PublishedFile);
    /// The name `name` in `dir` was taken by a later member; `gone` is the node that lost
    /// its last name with it (it is not valid until it is published again).
    fn withdraw(&self, dir: u32, name: &[u8], gone: Option<u32>);

    /// Whether the unpack hands over the tar stream it inflates ([`Publish::stream`],
    /// [`Publish::checkpoint`], [`Publish::stream_end`]): the first pass of a version larger
    /// than the cache keeps the spans of it that fit.
    fn wants_stream(&self) -> bool {
        false
    }

    /// The archive is the object `etag` at the store, `len` bytes long (told before its
    /// first byte, when the store names it).
    fn archive(&self, _etag: &str, _len: u64) {}

    /// `bytes` of the tar stream at offset `at`: every byte once, in order.
    fn stream(&self, _at: u64, _bytes: &[u8]) {}

    /// Checkpoint `k` of the seek index was recorded: the bytes of the tar stream from
    /// `point.output` on belong to span `k` (see `super::seek`). Its window is dropped
    /// after this call: one who needs it keeps it.
    fn checkpoint(&self, _k: u32, _point: &super::seek::Checkpoint) {}

    /// The tar stream ended after `len` bytes, read to the end of the gzip stream and its
    /// checksums good.
    fn stream_end(&self, _len: u64) {}
}

/// Publishing nowhere (an unpack nobody reads early).
impl Publish for () {
    fn file(&self, _: &[Step], _: &PublishedFile) {}
    fn withdraw(&self, _: u32, _: &[u8], _: Option<u32>) {}
}

/// One step of a published path.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub dir: u32,
    pub name: Vec<u8>,
    pub node: u32,
    /// Attributes at the time of publishing; for directories they may still change.
    pub attrs: PublishedNode,
}

/// The identity of a blob file on disk (device and inode), to tell after `open` that a
/// path still names the published blob and not one renamed into its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlobId {
    pub dev: u64,
    pub ino: u64,
}

impl BlobId {
    /// The identity of content that was not written (a version larger than the cache):
    /// the file's bytes are read from the tar stream, at the published `offset`. `blob` is
    /// the file's own blob number (each file's checksums are its own), or `u32::MAX` for
    /// every packed file (one unit each, kept in its node).
    pub const fn in_stream(blob: u32) -> BlobId {
        BlobId {
            dev: u64::MAX,
            ino: blob as u64,
        }
    }

    /// Whether the content is read from the tar stream ([`BlobId::in_stream`]).
    pub const fn is_in_stream(&self) -> bool {
        self.dev == u64::MAX
    }
}

/// A complete regular file: `size` bytes at `offset` of the file `blob` (the pack, shared
/// by every small file, or a file of its own at offset 0), and the checksums of its units
/// (see `checks.rs`), computed as it was written: a published file is checked like a
/// committed one. The content of a version larger than the cache is not written: its
/// `id` is [`BlobId::in_stream`], `offset` is where it lies in the tar stream, and `blob`
/// is empty.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedFile {
    pub size: u64,
    pub blob: Arc<Path>,
    pub offset: u64,
    pub id: BlobId,
    /// In the pack (one unit), or a file of its own (one unit per block).
    pub packed: bool,
    pub sums: Arc<[u32]>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PublishedKind {
    /// Seen on the way to a published file; attributes not final.
    Dir,
    File(PublishedFile),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PublishedNode {
    pub kind: PublishedKind,
    pub perm: u16,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub nlink: u32,
}

/// The published state of one unpack: plain data, for a [`Publish`] implementation to
/// keep under its own lock.
///
/// It is held for every file of a version while the version is unpacked, so it is kept
/// compact (about 90 bytes a file): names in a [`Names`] table, node attributes in a vector by node number (numbers are dense), and the
/// content files (the pack, shared by every small file) in a short table.
#[derive(Default)]
pub struct Published {
    names: Names,
    /// By node number; `Absent` where nothing is published.
    nodes: Vec<PubNode>,
    /// Content files, with the checksums of a file of its own (a packed file's one
    /// checksum is in its node).
    blobs: Vec<(Arc<Path>, BlobId, Arc<[u32]>)>,
    blob_numbers: HashMap<BlobId, u32>,
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Published")
            .field("names", &self.names.len())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Default, PartialEq)]
enum Present {
    #[default]
    Absent,
    Dir,
    File,
}

/// A [`PublishedNode`] without its pointers: its content file by number in `blobs`.
#[derive(Clone, Copy, Default)]
struct PubNode {
    size: u64,
    offset: u64,
    mtime_sec: i64,
    mtime_nsec: u32,
    nlink: u32,
    blob: u32,
    /// The checksum of a packed file.
    crc: u32,
    perm: u16,
    present: Present,
}

impl Published {
    /// Record a published file and the path to it.
    pub fn add(&mut self, steps: &[Step]) {
        for step in steps {
            self.names.insert(step.dir, &step.name, step.node);
            self.set_node(step.node, &step.attrs);
        }
    }

    fn set_node(&mut self, node: u32, attrs: &PublishedNode) {
        let mut n = PubNode {
            mtime_sec: attrs.mtime_sec,
            mtime_nsec: attrs.mtime_nsec,
            nlink: attrs.nlink,
            perm: attrs.perm,
            present: Present::Dir,
            ..PubNode::default()
        };
        if let PublishedKind::File(f) = &attrs.kind {
            let own_sums = if f.packed {
                Arc::from([])
            } else {
                f.sums.clone()
            };
            let blob = match self.blob_numbers.get(&f.id) {
                // A file of its own whose inode number was freed by a replaced one and
                // reused: the entry is the new file's.
                Some(&b) => {
                    self.blobs[b as usize] = (f.blob.clone(), f.id, own_sums);
                    b
                }
                None => {
                    let b = self.blobs.len() as u32;
                    self.blobs.push((f.blob.clone(), f.id, own_sums));
                    self.blob_numbers.insert(f.id, b);
                    b
                }
            };
            if f.packed {
                n.crc = f.sums.first().copied().unwrap_or_default();
            }
            n.present = Present::File;
            n.size = f.size;
            n.offset = f.offset;
            n.blob = blob;
        }
        let at = node as usize;
        if self.nodes.len() <= at {
            self.nodes.resize(at + 1, PubNode::default());
        }
        self.nodes[at] = n;
    }

    /// Forget `name` in `dir`, and the node `gone` (see [`Publish::withdraw`]).
    pub fn withdraw(&mut self, dir: u32, name: &[u8], gone: Option<u32>) {
        self.names.remove(dir, name);
        // A node that is gone has no other name (it lost its last one), and only an empty
        // directory can be replaced, so no name lives under it: forgetting the node is all.
        if let Some(n) = gone.and_then(|g| self.nodes.get_mut(g as usize)) {
            n.present = Present::Absent;
        }
    }

    /// The node published as `name` in `dir`.
    pub fn lookup(&self, dir: u32, name: &[u8]) -> Option<(u32, PublishedNode)> {
        let node = self.names.get(dir, name)?;
        Some((node, self.node(node)?))
    }

    /// The attributes of a published node.
    pub fn node(&self, node: u32) -> Option<PublishedNode> {
        let n = self.nodes.get(node as usize)?;
        let kind = match n.present {
            Present::Absent => return None,
            Present::Dir => PublishedKind::Dir,
            Present::File => {
                let (blob, id, own_sums) = self.blobs.get(n.blob as usize)?;
                let packed = own_sums.is_empty();
                PublishedKind::File(PublishedFile {
                    size: n.size,
                    blob: blob.clone(),
                    offset: n.offset,
                    id: *id,
                    packed,
                    sums: if packed {
                        Arc::from([n.crc])
                    } else {
                        own_sums.clone()
                    },
                })
            }
        };
        Some(PublishedNode {
            kind,
            perm: n.perm,
            mtime_sec: n.mtime_sec,
            mtime_nsec: n.mtime_nsec,
            nlink: n.nlink,
        })
    }

    /// Published names (for the status file and tests).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_step(dir: u32, name: &str, node: u32) -> Step {
        Step {
            dir,
            name: name.into(),
            node,
            attrs: PublishedNode {
                kind: PublishedKind::Dir,
                perm: 0o755,
                mtime_sec: 0,
                mtime_nsec: 0,
                nlink: 2,
            },
        }
    }

    fn file_step(dir: u32, name: &str, node: u32, size: u64) -> Step {
        Step {
            dir,
            name: name.into(),
            node,
            attrs: PublishedNode {
                kind: PublishedKind::File(PublishedFile {
                    size,
                    blob: Arc::from(Path::new(&format!("data/{node}"))),
                    offset: 0,
                    id: BlobId {
                        dev: 1,
                        ino: node.into(),
                    },
                    packed: false,
                    sums: Arc::from(vec![7; size.div_ceil(1 << 20) as usize]),
                }),
                perm: 0o644,
                mtime_sec: 1,
                mtime_nsec: 0,
                nlink: 1,
            },
        }
    }

    #[test]
    fn published_paths_resolve_step_by_step() {
        let mut p = Published::default();
        assert!(p.is_empty());
        p.add(&[dir_step(0, "a", 1), file_step(1, "f", 2, 10)]);
        p.add(&[dir_step(0, "a", 1), file_step(1, "g", 3, 20)]);
        assert_eq!(p.lookup(0, b"a").map(|(n, _)| n), Some(1));
        assert!(matches!(
            p.lookup(0, b"a").unwrap().1.kind,
            PublishedKind::Dir
        ));
        let (node, attrs) = p.lookup(1, b"g").unwrap();
        assert_eq!(node, 3);
        assert!(matches!(&attrs.kind, PublishedKind::File(f) if f.size == 20));
        assert_eq!(p.lookup(1, b"missing"), None);
        assert_eq!(p.lookup(0, b"f"), None, "names are per directory");
        assert!(p.node(2).is_some());
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn withdrawn_names_and_nodes_are_not_answered() {
        let mut p = Published::default();
        p.add(&[file_step(0, "f", 1, 3)]);
        p.add(&[file_step(0, "link", 1, 3)]);
        // One name of a hard-linked node taken over: the node stays under its other name.
        p.withdraw(0, b"link", None);
        assert_eq!(p.lookup(0, b"link"), None);
        assert!(p.lookup(0, b"f").is_some());
        // Its last name taken over: neither the name nor the node is answered until the
        // new content is published (under the same number).
        p.withdraw(0, b"f", Some(1));
        assert_eq!(p.lookup(0, b"f"), None);
        assert_eq!(p.node(1), None);
        p.add(&[file_step(0, "f", 1, 7)]);
        assert!(matches!(&p.node(1).unwrap().kind, PublishedKind::File(f) if f.size == 7));
    }
}
