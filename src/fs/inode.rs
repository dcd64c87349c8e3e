//! The inode table: stable inode numbers for everything the mount shows.
//!
//! Two families of inodes share one number space:
//!
//! - *Metadata* inodes (the root, `volumes/`, `artifacts/`, a storage's directory, its
//!   `latest` link, prefix links, a version's directory) are allocated one by one, keyed by
//!   what they name, and never reused for the life of the mount.
//! - *Content* inodes (everything inside a version) are a contiguous range per version:
//!   node `n > 0` of the version's index is `base + n - 1`, node 0 is the version's
//!   directory inode. A version's index is deterministic, so its range stays valid when
//!   the version is evicted and downloaded again. Every range spans [`VERSION_SPAN`]
//!   numbers, room for any index (node numbers are `u32`), because a range is handed out
//!   before the version's node count is known: files are served while the archive is
//!   still being unpacked, under the node numbers the finished index will give them.
//!
//! Nothing is freed on `forget`: numbers must stay stable, and the table costs a few dozen
//! bytes per metadata inode and per version.

use std::collections::{BTreeMap, HashMap};

use crate::api::Kind;
use crate::ids::{Ino, StorageName, VersionId};

/// Inode numbers reserved per version: one per possible index node (`u32`) except node 0,
/// the version's directory. With `u64` inode numbers this allows 2^31 versions per mount.
pub const VERSION_SPAN: u64 = 1 << 32;

/// What a metadata inode names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MetaNode {
    Root,
    KindDir(Kind),
    Storage {
        kind: Kind,
        name: StorageName,
    },
    Latest {
        kind: Kind,
        name: StorageName,
    },
    /// A unique id prefix the user looked up: a link to the full id `version`.
    PrefixLink {
        kind: Kind,
        name: StorageName,
        version: VersionId,
    },
    Version {
        kind: Kind,
        name: StorageName,
        version: VersionId,
    },
    /// `MOUNT/.vm0fs/` and its `status` file.
    StatusDir,
    StatusFile,
    /// A node of `runs/` or `agents/`.
    Run(super::runs::RunNode),
}

/// A version whose content inodes are allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub kind: Kind,
    pub name: StorageName,
    pub version: VersionId,
    /// Inode of the version's directory (node 0).
    pub root: Ino,
    /// Inode of node 1; node `n` is `base + n - 1`.
    pub base: Ino,
}

/// What an inode number resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Meta(MetaNode),
    Content { range: Range, node: u32 },
}

#[derive(Debug)]
pub struct InodeTable {
    meta: HashMap<Ino, MetaNode>,
    by_meta: HashMap<MetaNode, Ino>,
    ranges: BTreeMap<Ino, Range>,
    range_of: HashMap<(Kind, VersionId), Ino>,
    /// The next number to hand out.
    next: Ino,
}

impl Default for InodeTable {
    fn default() -> Self {
        let mut t = InodeTable {
            meta: HashMap::new(),
            by_meta: HashMap::new(),
            ranges: BTreeMap::new(),
            range_of: HashMap::new(),
            next: Ino::ROOT,
        };
        t.meta_ino(MetaNode::Root);
        t.meta_ino(MetaNode::KindDir(Kind::Volume));
        t.meta_ino(MetaNode::KindDir(Kind::Artifact));
        t
    }
}

impl InodeTable {
    /// The inode of a metadata node, allocated on first use.
    pub fn meta_ino(&mut self, m: MetaNode) -> Ino {
        if let Some(&ino) = self.by_meta.get(&m) {
            return ino;
        }
        let ino = self.next;
        self.next = Ino(ino.0 + 1);
        self.meta.insert(ino, m.clone());
        self.by_meta.insert(m, ino);
        ino
    }

    /// The content range of a version, allocated on first use.
    pub fn range(&mut self, kind: Kind, name: &StorageName, version: &VersionId) -> Range {
        if let Some(base) = self.range_of.get(&(kind, version.clone())) {
            return self.ranges[base].clone();
        }
        let root = self.meta_ino(MetaNode::Version {
            kind,
            name: name.clone(),
            version: version.clone(),
        });
        let base = self.next;
        self.next = Ino(base.0 + VERSION_SPAN - 1);
        let r = Range {
            kind,
            name: name.clone(),
            version: version.clone(),
            root,
            base,
        };
        self.ranges.insert(base, r.clone());
        self.range_of.insert((kind, version.clone()), base);
        r
    }

    /// The storage name of a version whose inodes are allocated.
    pub fn storage_of(&self, kind: Kind, version: &VersionId) -> Option<StorageName> {
        let base = self.range_of.get(&(kind, version.clone()))?;
        Some(self.ranges[base].name.clone())
    }

    /// Metadata inodes and version ranges allocated so far (for `statfs`).
    pub fn len(&self) -> u64 {
        (self.meta.len() + self.ranges.len()) as u64
    }

    pub fn resolve(&self, ino: Ino) -> Option<Resolved> {
        if let Some(m) = self.meta.get(&ino) {
            return Some(Resolved::Meta(m.clone()));
        }
        let (_, r) = self.ranges.range(..=ino).next_back()?;
        let offset = ino.0 - r.base.0;
        // Whether the node exists is the version's business: its index, or what has been
        // published of it so far.
        if offset + 1 < VERSION_SPAN {
            Some(Resolved::Content {
                range: r.clone(),
                node: (offset + 1) as u32,
            })
        } else {
            None
        }
    }
}

impl Range {
    /// The inode of index node `node` of this version.
    pub fn ino(&self, node: u32) -> Ino {
        if node == 0 {
            self.root
        } else {
            Ino(self.base.0 + u64::from(node) - 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: u8) -> VersionId {
        VersionId::parse(&format!("{n:02x}").repeat(32)).unwrap()
    }

    #[test]
    fn fixed_inodes_for_root_and_kinds() {
        let mut t = InodeTable::default();
        assert_eq!(t.meta_ino(MetaNode::Root), Ino::ROOT);
        assert_eq!(t.meta_ino(MetaNode::KindDir(Kind::Volume)), Ino(2));
        assert_eq!(t.meta_ino(MetaNode::KindDir(Kind::Artifact)), Ino(3));
    }

    #[test]
    fn content_ranges_resolve_and_stay_stable() {
        let mut t = InodeTable::default();
        let a = t.range(Kind::Volume, &"a".into(), &v(1));
        let b = t.range(Kind::Artifact, &"b".into(), &v(2));
        assert_eq!(
            t.range(Kind::Volume, &"a".into(), &v(1)),
            a,
            "same version, same numbers"
        );
        for n in 1..5u32 {
            assert_eq!(
                t.resolve(a.ino(n)),
                Some(Resolved::Content {
                    range: a.clone(),
                    node: n
                })
            );
        }
        for n in 1..3u32 {
            assert_eq!(
                t.resolve(b.ino(n)),
                Some(Resolved::Content {
                    range: b.clone(),
                    node: n
                })
            );
        }
        assert_eq!(
            t.resolve(a.ino(0)),
            Some(Resolved::Meta(MetaNode::Version {
                kind: Kind::Volume,
                name: "a".into(),
                version: v(1)
            }))
        );
        // All numbers distinct and non-zero.
        let mut all: Vec<Ino> = (0..5)
            .map(|n| a.ino(n))
            .chain((0..3).map(|n| b.ino(n)))
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 8);
        assert!(!all.contains(&Ino(0)));
    }

    #[test]
    fn ranges_have_room_for_any_index_and_do_not_overlap() {
        let mut t = InodeTable::default();
        let a = t.range(Kind::Volume, &"a".into(), &v(1));
        let b = t.range(Kind::Volume, &"b".into(), &v(2));
        let last = a.ino(u32::MAX);
        assert!(last < b.base, "the last node of a is below b's range");
        assert_eq!(
            t.resolve(last),
            Some(Resolved::Content {
                range: a.clone(),
                node: u32::MAX
            })
        );
        // Metadata inodes allocated after a range come after it.
        let m = t.meta_ino(MetaNode::StatusDir);
        assert!(m > b.ino(u32::MAX));
        assert!(matches!(
            t.resolve(m),
            Some(Resolved::Meta(MetaNode::StatusDir))
        ));
    }
}
