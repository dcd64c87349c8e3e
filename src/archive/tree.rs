//! The tree of a version while it is being unpacked, and the path rules that keep an
//! untrusted archive inside it.
//!
//! Members arrive in any order and may repeat, so the tree is kept in a form that is cheap
//! to change (one compact table of every (directory, name), nodes that can be detached)
//! and sorted for the [`Index`] once at the end by [`Tree::finish`]. Nothing here touches
//! the disk: the caller writes and deletes blobs as this module tells it to.
//!
//! Node numbers are final from the moment a node is created: the index keeps creation
//! order, so that a file published while the archive is still being read (see
//! [`super::Publish`]) already has the number, and so the inode, it has in the finished
//! version. For the same reason a member that replaces the last name of a node takes over
//! that node's number; only a node that loses its last name to a hard link leaves a hole,
//! kept in the index as an empty directory that no name reaches.

use super::encode::{TreeSource, TreeSourceKind, TreeSourceNode};
use super::names::{Names, SortedNames};
#[cfg(doc)]
use super::IndexTree;

/// Longest name of one path component Linux can represent (`NAME_MAX`). FUSE would fail a
/// whole `readdir` on longer names, so such members are refused.
const NAME_MAX: usize = 255;

/// Why a member is not unpacked, in words for the log.
pub(super) type Refusal = String;

/// Permission bits and modification time of a node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct ModeTime {
    pub perm: u16,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
}

/// What a new member will be, for [`Tree::prepare`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Want {
    Dir,
    NonDir,
    /// A second name for this existing node.
    HardLink(u32),
}

/// Where a member goes, decided by [`Tree::prepare`].
#[derive(Debug, PartialEq)]
pub(super) enum Slot {
    /// A free name in directory `dir`: call [`Tree::attach`] or [`Tree::link`]. `reuse`
    /// is the number of the node the member replaces, for [`Tree::attach`] to take over.
    Free {
        dir: u32,
        name: Vec<u8>,
        reuse: Option<u32>,
    },
    /// The member is a directory and this directory already exists.
    ExistingDir(u32),
    /// The member is a hard link and the name already refers to its target.
    AlreadyLinked,
}

/// The result of [`Tree::prepare`]: where the member goes, the blob of a file that lost
/// its last name to it (the caller deletes that blob), and the name it took from an older
/// node (the caller withdraws what it published under that name).
#[derive(Debug, PartialEq)]
pub(super) struct Prepared {
    pub slot: Slot,
    pub freed: Option<Freed>,
    pub replaced: Option<Replaced>,
}

/// The content of a file that lost its last name, for the caller to delete or write off.
#[derive(Debug, PartialEq)]
pub(super) struct Freed {
    pub blob: u32,
    pub size: u64,
    /// Its offset in the pack, or `None` for a file of its own.
    pub packed: Option<u64>,
}

/// A name taken from an older node by a later member.
#[derive(Debug, PartialEq)]
pub(super) struct Replaced {
    pub dir: u32,
    pub node: u32,
    /// The old node lost its last name (its number is reused or becomes a hole).
    pub gone: bool,
}

/// What [`Tree::finish`] returns: the tree, ready to be encoded, plus the blob renames
/// (`from`, `to`) that make blob numbers dense again, to be done in order.
pub(super) struct Finished {
    pub tree: FinishedTree,
    pub renames: Vec<(u32, u32)>,
}

/// A finished tree as the index encoder reads it ([`TreeSource`]): the work nodes, changed in
/// place (link counts, final blob numbers, pack offsets), and the names sorted. Nothing is
/// copied into an [`IndexTree`]: a large archive's tree is in memory once.
pub(super) struct FinishedTree {
    /// `names` holds each node's link count now.
    nodes: Vec<WorkNode>,
    names: SortedNames,
    /// `starts[d]..starts[d + 1]`: the names in directory `d`.
    starts: Vec<u32>,
}

impl TreeSource for FinishedTree {
    fn len(&self) -> usize {
        self.nodes.len()
    }

    fn node(&self, n: usize) -> TreeSourceNode<'_> {
        let w = &self.nodes[n];
        let kind = match &w.kind {
            Kind::Dir { parent, .. } => TreeSourceKind::Dir { parent: *parent },
            // A hole: an empty directory that no name reaches.
            Kind::Gone => TreeSourceKind::Dir { parent: 0 },
            Kind::File { size, blob, packed } => TreeSourceKind::File {
                size: *size,
                blob: *blob,
                packed: (*packed != NOT_PACKED).then_some(*packed),
            },
            Kind::Symlink { target } => TreeSourceKind::Symlink(target),
        };
        TreeSourceNode {
            kind,
            perm: w.meta.perm,
            nlink: w.names,
            mtime_sec: w.meta.mtime_sec,
            mtime_nsec: w.meta.mtime_nsec,
        }
    }

    fn entries(&self, n: usize) -> impl Iterator<Item = (&[u8], u32)> + '_ {
        let run = match self.nodes[n].kind {
            Kind::Dir { .. } => self.starts[n] as usize..self.starts[n + 1] as usize,
            _ => 0..0,
        };
        run.map(|i| {
            let e = self.names.get(i);
            (e.name, e.node)
        })
    }
}

/// [`Kind::File::packed`] of a file that has a file of its own.
const NOT_PACKED: u64 = u64::MAX;

/// What a node is. Kept small (24 bytes): there is one per member. A directory's names
/// are in the tree's [`Names`]; it counts them.
#[derive(Debug)]
enum Kind {
    Dir {
        parent: u32,
        children: u32,
    },
    File {
        size: u64,
        blob: u32,
        /// Its offset in the pack, or [`NOT_PACKED`].
        packed: u64,
    },
    Symlink {
        target: Box<[u8]>,
    },
    /// A node that lost its last name; a hole in the index (an unreachable empty directory).
    Gone,
}

#[derive(Debug)]
struct WorkNode {
    kind: Kind,
    meta: ModeTime,
    /// Names that refer to this node (only kept for non-directories).
    names: u32,
    /// The metadata comes from a member of its own (not implied by a path).
    explicit: bool,
}

/// One step of a path, from [`Tree::chain`].
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ChainStep {
    pub dir: u32,
    pub name: Vec<u8>,
    pub node: u32,
    pub meta: ModeTime,
    pub is_dir: bool,
}

/// The content of a new non-directory node.
pub(super) enum Content {
    File {
        size: u64,
        blob: u32,
        /// Its offset in the pack, or `None` for a file of its own.
        packed: Option<u64>,
    },
    Symlink {
        target: Vec<u8>,
    },
}

pub(super) struct Tree {
    nodes: Vec<WorkNode>,
    /// Every (directory, name) -> node.
    names: Names,
}

/// Split a member path into its components under the path rules: a leading `/` is refused,
/// `.` and empty components (from `./a` or `a//b`) are dropped, a `..` component is refused
/// (an archive has no business naming anything above its root), and so are names Linux
/// cannot hold (a NUL byte, a component longer than `NAME_MAX`).
pub(super) fn normalize(path: &[u8]) -> Result<Vec<&[u8]>, Refusal> {
    if path.first() == Some(&b'/') {
        return Err("the path is absolute".into());
    }
    if path.contains(&0) {
        return Err("the path contains a NUL byte".into());
    }
    let mut comps = Vec::new();
    for comp in path.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("the path has a `..` component".into()),
            _ if comp.len() > NAME_MAX => {
                return Err(format!(
                    "a name in the path is longer than {NAME_MAX} bytes"
                ))
            }
            _ => comps.push(comp),
        }
    }
    Ok(comps)
}

/// `a/b/c` for the first `n` components, for messages.
fn shown(comps: &[&[u8]], n: usize) -> String {
    let joined = comps
        .iter()
        .take(n)
        .copied()
        .collect::<Vec<_>>()
        .join(&b'/');
    String::from_utf8_lossy(&joined).into_owned()
}

impl Tree {
    /// A tree holding only its root directory.
    pub fn new(root: ModeTime) -> Tree {
        Tree {
            nodes: vec![WorkNode {
                kind: Kind::Dir {
                    parent: 0,
                    children: 0,
                },
                meta: root,
                names: 1,
                explicit: false,
            }],
            names: Names::default(),
        }
    }

    /// How many nodes the tree has (holes included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    fn child(&self, dir: u32, name: &[u8]) -> Option<u32> {
        match &self.nodes.get(dir as usize)?.kind {
            Kind::Dir { .. } => self.names.get(dir, name),
            _ => None,
        }
    }

    fn is_dir(&self, node: u32) -> bool {
        matches!(
            self.nodes.get(node as usize).map(|n| &n.kind),
            Some(Kind::Dir { .. })
        )
    }

    fn push(&mut self, node: WorkNode) -> Result<u32, Refusal> {
        let id = u32::try_from(self.nodes.len())
            .map_err(|_| Refusal::from("the archive has more than 2^32 members"))?;
        self.nodes.push(node);
        Ok(id)
    }

    /// Walk from the root through `comps` (all of them directories), creating the missing
    /// ones with `implied` metadata when `create` is set.
    fn walk(&mut self, comps: &[&[u8]], implied: ModeTime, create: bool) -> Result<u32, Refusal> {
        let mut dir = 0u32;
        for (i, comp) in comps.iter().enumerate() {
            let next = match self.child(dir, comp) {
                Some(node) => node,
                None if create => {
                    let node = self.push(WorkNode {
                        kind: Kind::Dir {
                            parent: dir,
                            children: 0,
                        },
                        meta: implied,
                        names: 1,
                        explicit: false,
                    })?;
                    self.insert_name(dir, comp, node);
                    node
                }
                None => return Err(format!("`{}` does not exist", shown(comps, i + 1))),
            };
            match self.nodes.get(next as usize).map(|n| &n.kind) {
                Some(Kind::Dir { .. }) => dir = next,
                Some(Kind::Symlink { .. }) => {
                    return Err(format!(
                        "the path goes through the symbolic link `{}`",
                        shown(comps, i + 1)
                    ))
                }
                _ => {
                    return Err(format!(
                        "the path goes through the regular file `{}`",
                        shown(comps, i + 1)
                    ))
                }
            }
        }
        Ok(dir)
    }

    /// Name `node` `name` in `dir`, a name that is free there.
    fn insert_name(&mut self, dir: u32, name: &[u8], node: u32) {
        if let Some(WorkNode {
            kind: Kind::Dir { children, .. },
            ..
        }) = self.nodes.get_mut(dir as usize)
        {
            self.names.insert(dir, name, node);
            *children += 1;
        }
    }

    /// The existing non-directory node at `comps` (the target of a hard link). Nothing is
    /// created: a hard link may only name what the archive already holds.
    pub fn link_target(&mut self, comps: &[&[u8]]) -> Result<u32, Refusal> {
        let Some((last, parents)) = comps.split_last() else {
            return Err("it links to the archive's root directory".into());
        };
        // `walk` without `create` never changes the tree; the placeholder meta is unused.
        let unused = ModeTime {
            perm: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
        };
        let dir = self.walk(parents, unused, false)?;
        match self.child(dir, last) {
            None => Err(format!(
                "its target `{}` is not an earlier member of the archive",
                shown(comps, comps.len())
            )),
            Some(node) if self.is_dir(node) => Err(format!(
                "its target `{}` is a directory",
                shown(comps, comps.len())
            )),
            Some(node) => Ok(node),
        }
    }

    /// Decide where a member at `comps` goes, creating the directories its path implies and
    /// removing what it replaces. The last member of a name wins, as with GNU tar, except
    /// that a non-empty directory is never replaced by a non-directory.
    pub fn prepare(
        &mut self,
        comps: &[&[u8]],
        implied: ModeTime,
        want: Want,
    ) -> Result<Prepared, Refusal> {
        let Some((last, parents)) = comps.split_last() else {
            return match want {
                Want::Dir => Ok(Prepared {
                    slot: Slot::ExistingDir(0),
                    freed: None,
                    replaced: None,
                }),
                _ => Err("it names the archive's root directory".into()),
            };
        };
        let dir = self.walk(parents, implied, true)?;
        let Some(old) = self.child(dir, last) else {
            return Ok(Prepared {
                slot: Slot::Free {
                    dir,
                    name: last.to_vec(),
                    reuse: None,
                },
                freed: None,
                replaced: None,
            });
        };
        if want == Want::HardLink(old) {
            return Ok(Prepared {
                slot: Slot::AlreadyLinked,
                freed: None,
                replaced: None,
            });
        }
        if let Some(&Kind::Dir { children, .. }) = self.nodes.get(old as usize).map(|n| &n.kind) {
            if want == Want::Dir {
                return Ok(Prepared {
                    slot: Slot::ExistingDir(old),
                    freed: None,
                    replaced: None,
                });
            }
            if children > 0 {
                return Err(format!(
                    "it would replace the non-empty directory `{}`",
                    shown(comps, comps.len())
                ));
            }
        }
        let (freed, gone) = self.unlink(dir, last, old);
        // A new node takes over the number of the one it replaces, so that an inode handed
        // out for this path while the archive was read stays this path's inode. A hard
        // link brings its own node: the old number becomes a hole.
        let reuse = (gone && !matches!(want, Want::HardLink(_))).then_some(old);
        Ok(Prepared {
            slot: Slot::Free {
                dir,
                name: last.to_vec(),
                reuse,
            },
            freed,
            replaced: Some(Replaced {
                dir,
                node: old,
                gone,
            }),
        })
    }

    /// Remove the name `name` (of `node`) from `dir`; returns the content of a file that lost
    /// its last name, and whether the node lost its last name.
    fn unlink(&mut self, dir: u32, name: &[u8], node: u32) -> (Option<Freed>, bool) {
        if let Some(WorkNode {
            kind: Kind::Dir { children, .. },
            ..
        }) = self.nodes.get_mut(dir as usize)
        {
            if self.names.remove(dir, name).is_some() {
                *children -= 1;
            }
        }
        let Some(n) = self.nodes.get_mut(node as usize) else {
            return (None, false);
        };
        n.names = n.names.saturating_sub(1);
        if n.names > 0 {
            return (None, false);
        }
        match std::mem::replace(&mut n.kind, Kind::Gone) {
            Kind::File { blob, size, packed } => (
                Some(Freed {
                    blob,
                    size,
                    packed: (packed != NOT_PACKED).then_some(packed),
                }),
                true,
            ),
            _ => (None, true),
        }
    }

    /// A new node under a [`Slot::Free`] name; `None` content makes a directory. `reuse`
    /// (from the slot) is the number it takes over, if any.
    pub fn attach(
        &mut self,
        dir: u32,
        name: Vec<u8>,
        reuse: Option<u32>,
        content: Option<Content>,
        meta: ModeTime,
    ) -> Result<u32, Refusal> {
        let kind = match content {
            None => Kind::Dir {
                parent: dir,
                children: 0,
            },
            Some(Content::File { size, blob, packed }) => Kind::File {
                size,
                blob,
                packed: packed.unwrap_or(NOT_PACKED),
            },
            Some(Content::Symlink { target }) => Kind::Symlink {
                target: target.into_boxed_slice(),
            },
        };
        let new = WorkNode {
            kind,
            meta,
            names: 1,
            explicit: true,
        };
        let node = match reuse {
            Some(old)
                if matches!(
                    self.nodes.get(old as usize).map(|n| &n.kind),
                    Some(Kind::Gone)
                ) =>
            {
                self.nodes[old as usize] = new;
                old
            }
            _ => self.push(new)?,
        };
        self.insert_name(dir, &name, node);
        Ok(node)
    }

    /// The nodes on the way to the node at `comps`, as (directory, name, node, metadata,
    /// is a directory), or `None` if the path does not lead to a node (for publishing).
    pub fn chain(&self, comps: &[&[u8]]) -> Option<Vec<ChainStep>> {
        let mut dir = 0u32;
        let mut steps = Vec::with_capacity(comps.len());
        for comp in comps {
            let node = self.child(dir, comp)?;
            let n = &self.nodes[node as usize];
            let is_dir = matches!(n.kind, Kind::Dir { .. });
            let mut meta = n.meta;
            if is_dir && !n.explicit {
                // The archive may still give this directory a member of its own with a
                // stricter mode (tar writes a directory's entry after its files when it
                // restores modes). Until then only the owner may enter: a mode shown
                // early must never grant what the final one refuses to other users.
                meta.perm &= 0o700;
            }
            steps.push(ChainStep {
                dir,
                name: comp.to_vec(),
                node,
                meta,
                is_dir,
            });
            dir = node;
        }
        Some(steps)
    }

    /// A second name for the existing non-directory `node` under a [`Slot::Free`] name.
    pub fn link(&mut self, dir: u32, name: Vec<u8>, node: u32) {
        if let Some(n) = self.nodes.get_mut(node as usize) {
            n.names = n.names.saturating_add(1);
            self.insert_name(dir, &name, node);
        }
    }

    /// Change the metadata of `node` (a directory entry for an existing directory).
    pub fn set_meta(&mut self, node: u32, meta: ModeTime) {
        if let Some(n) = self.nodes.get_mut(node as usize) {
            n.meta = meta;
            n.explicit = true;
        }
    }

    /// Finish the tree for the index: every node under the number it was created with (a
    /// node that lost its last name stays as a hole: an empty directory no name reaches);
    /// entries sorted by name bytes; link counts counted from the tree; blob numbers made
    /// dense again in their old order (so that renaming `from -> to` in the returned order
    /// never overwrites a live blob; only files of their own are on disk under their
    /// number, so only theirs are renamed).
    pub fn finish(self) -> Finished {
        let Tree {
            nodes: mut work,
            names,
        } = self;
        // The table goes, the sorted records come: each directory's entries are one run.
        let names = names.into_sorted();
        for n in &mut work {
            n.names = match n.kind {
                Kind::Dir { .. } | Kind::Gone => 2,
                _ => 0,
            };
        }
        for i in 0..names.len() {
            let e = names.get(i);
            if matches!(work[e.node as usize].kind, Kind::Dir { .. }) {
                work[e.dir as usize].names += 1;
            } else {
                work[e.node as usize].names += 1;
            }
        }

        let mut live_blobs: Vec<(u32, bool)> = work
            .iter()
            .filter_map(|n| match n.kind {
                Kind::File { blob, packed, .. } => Some((blob, packed != NOT_PACKED)),
                _ => None,
            })
            .collect();
        live_blobs.sort_unstable();
        live_blobs.dedup();
        let renames = live_blobs
            .iter()
            .enumerate()
            .filter(|&(rank, &(blob, packed))| rank as u32 != blob && !packed)
            .map(|(rank, &(blob, _))| (blob, rank as u32))
            .collect();
        for n in &mut work {
            if let Kind::File { blob, .. } = &mut n.kind {
                *blob = live_blobs
                    .binary_search_by_key(blob, |&(b, _)| b)
                    .map_or(*blob, |rank| rank as u32);
            }
        }
        let starts = names.starts(work.len());
        Finished {
            tree: FinishedTree {
                nodes: work,
                names,
                starts,
            },
            renames,
        }
    }
}
