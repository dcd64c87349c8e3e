//! The tree of a version while it is being unpacked, and the path rules that keep an
//! untrusted archive inside it.
//!
//! Members arrive in any order and may repeat, so the tree is kept in a form that is cheap
//! to change (a hash map of names per directory, nodes that can be detached) and turned
//! into the sorted [`Index`] once at the end by [`Tree::finish`]. Nothing here touches the
//! disk: the caller writes and deletes blobs as this module tells it to.
//!
//! Node numbers are final from the moment a node is created: the index keeps creation
//! order, so that a file published while the archive is still being read (see
//! [`super::Publish`]) already has the number, and so the inode, it has in the finished
//! version. For the same reason a member that replaces the last name of a node takes over
//! that node's number; only a node that loses its last name to a hard link leaves a hole,
//! kept in the index as an empty directory that no name reaches.

use std::collections::HashMap;

use super::{DirEntry, IndexTree, Node, NodeKind};

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
    pub freed_blob: Option<u32>,
    pub replaced: Option<Replaced>,
}

/// A name taken from an older node by a later member.
#[derive(Debug, PartialEq)]
pub(super) struct Replaced {
    pub dir: u32,
    pub node: u32,
    /// The old node lost its last name (its number is reused or becomes a hole).
    pub gone: bool,
}

/// What [`Tree::finish`] returns: the tree, plus the blob renames (`from`, `to`) that make
/// blob numbers dense again, to be done in order, and the old number of each new one
/// (`blob_order[new] = old`).
pub(super) struct Finished {
    pub tree: IndexTree,
    pub renames: Vec<(u32, u32)>,
    pub blob_order: Vec<u32>,
}

#[derive(Debug)]
enum Kind {
    Dir {
        parent: u32,
        entries: HashMap<Vec<u8>, u32>,
    },
    File {
        size: u64,
        blob: u32,
    },
    Symlink {
        target: Vec<u8>,
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
    File { size: u64, blob: u32 },
    Symlink { target: Vec<u8> },
}

#[derive(Debug)]
pub(super) struct Tree {
    nodes: Vec<WorkNode>,
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
                    entries: HashMap::new(),
                },
                meta: root,
                names: 1,
                explicit: false,
            }],
        }
    }

    fn child(&self, dir: u32, name: &[u8]) -> Option<u32> {
        match &self.nodes.get(dir as usize)?.kind {
            Kind::Dir { entries, .. } => entries.get(name).copied(),
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
                            entries: HashMap::new(),
                        },
                        meta: implied,
                        names: 1,
                        explicit: false,
                    })?;
                    self.insert_name(dir, comp.to_vec(), node);
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

    fn insert_name(&mut self, dir: u32, name: Vec<u8>, node: u32) {
        if let Some(WorkNode {
            kind: Kind::Dir { entries, .. },
            ..
        }) = self.nodes.get_mut(dir as usize)
        {
            entries.insert(name, node);
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
                    freed_blob: None,
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
                freed_blob: None,
                replaced: None,
            });
        };
        if want == Want::HardLink(old) {
            return Ok(Prepared {
                slot: Slot::AlreadyLinked,
                freed_blob: None,
                replaced: None,
            });
        }
        if let Some(Kind::Dir { entries, .. }) = self.nodes.get(old as usize).map(|n| &n.kind) {
            if want == Want::Dir {
                return Ok(Prepared {
                    slot: Slot::ExistingDir(old),
                    freed_blob: None,
                    replaced: None,
                });
            }
            if !entries.is_empty() {
                return Err(format!(
                    "it would replace the non-empty directory `{}`",
                    shown(comps, comps.len())
                ));
            }
        }
        let (freed_blob, gone) = self.unlink(dir, last, old);
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
            freed_blob,
            replaced: Some(Replaced {
                dir,
                node: old,
                gone,
            }),
        })
    }

    /// Remove the name `name` (of `node`) from `dir`; returns the blob of a file that lost
    /// its last name, and whether the node lost its last name.
    fn unlink(&mut self, dir: u32, name: &[u8], node: u32) -> (Option<u32>, bool) {
        if let Some(WorkNode {
            kind: Kind::Dir { entries, .. },
            ..
        }) = self.nodes.get_mut(dir as usize)
        {
            entries.remove(name);
        }
        let Some(n) = self.nodes.get_mut(node as usize) else {
            return (None, false);
        };
        n.names = n.names.saturating_sub(1);
        if n.names > 0 {
            return (None, false);
        }
        match std::mem::replace(&mut n.kind, Kind::Gone) {
            Kind::File { blob, .. } => (Some(blob), true),
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
                entries: HashMap::new(),
            },
            Some(Content::File { size, blob }) => Kind::File { size, blob },
            Some(Content::Symlink { target }) => Kind::Symlink { target },
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
        self.insert_name(dir, name, node);
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
            self.insert_name(dir, name, node);
        }
    }

    /// Change the metadata of `node` (a directory entry for an existing directory).
    pub fn set_meta(&mut self, node: u32, meta: ModeTime) {
        if let Some(n) = self.nodes.get_mut(node as usize) {
            n.meta = meta;
            n.explicit = true;
        }
    }

    /// Build the index: every node under the number it was created with (a node that lost
    /// its last name stays as a hole: an empty directory no name reaches); entries sorted
    /// by name bytes; link counts counted from the tree; blob numbers made dense again in
    /// their old order (so that renaming `from -> to` in the returned order never
    /// overwrites a live blob).
    pub fn finish(self) -> Finished {
        let count = self.nodes.len();
        let mut nlink: Vec<u32> = self
            .nodes
            .iter()
            .map(|n| match n.kind {
                Kind::Dir { .. } | Kind::Gone => 2,
                _ => 0,
            })
            .collect();
        for (id, n) in self.nodes.iter().enumerate() {
            if let Kind::Dir { entries, .. } = &n.kind {
                for &child in entries.values() {
                    if matches!(self.nodes[child as usize].kind, Kind::Dir { .. }) {
                        nlink[id] += 1;
                    } else {
                        nlink[child as usize] += 1;
                    }
                }
            }
        }

        let mut live_blobs: Vec<u32> = self
            .nodes
            .iter()
            .filter_map(|n| match n.kind {
                Kind::File { blob, .. } => Some(blob),
                _ => None,
            })
            .collect();
        live_blobs.sort_unstable();
        live_blobs.dedup();
        let new_blob: HashMap<u32, u32> = live_blobs
            .iter()
            .enumerate()
            .map(|(rank, &blob)| (blob, rank as u32))
            .collect();
        let renames = live_blobs
            .iter()
            .enumerate()
            .filter(|&(rank, &blob)| rank as u32 != blob)
            .map(|(rank, &blob)| (blob, rank as u32))
            .collect();

        let mut nodes = Vec::with_capacity(count);
        for (id, node) in self.nodes.into_iter().enumerate() {
            let kind = match node.kind {
                Kind::Dir { parent, entries } => {
                    let mut entries: Vec<DirEntry> = entries
                        .into_iter()
                        .map(|(name, node)| DirEntry { name, node })
                        .collect();
                    entries.sort_unstable_by(|a, b| a.name.cmp(&b.name));
                    NodeKind::Dir { parent, entries }
                }
                Kind::File { size, blob } => NodeKind::File {
                    size,
                    blob: new_blob.get(&blob).copied().unwrap_or(blob),
                    packed: None,
                },
                Kind::Symlink { target } => NodeKind::Symlink { target },
                Kind::Gone => NodeKind::Dir {
                    parent: 0,
                    entries: Vec::new(),
                },
            };
            nodes.push(Node {
                kind,
                perm: node.meta.perm,
                mtime_sec: node.meta.mtime_sec,
                mtime_nsec: node.meta.mtime_nsec,
                nlink: nlink[id],
            });
        }
        Finished {
            tree: IndexTree { nodes },
            renames,
            blob_order: live_blobs,
        }
    }
}
