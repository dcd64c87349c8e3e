//! Directory listings as `readdir` serves them: one entry at a time, by position.
//!
//! The kernel asks for a directory's entries a reply's worth at a time, from an offset it
//! got with the previous reply (each entry's offset is the position of the next one). A
//! directory of a version never changes and its entries lie in the version's index in
//! order, so the entry at any position is read from the index when it is asked for
//! ([`Listing::Version`]): a handle of a 200,000-entry directory holds the version and
//! three numbers, not 200,000 entries with their attributes. The directories outside
//! versions (storages, versions, runs) change over time and are short; each handle takes
//! them whole at `opendir` ([`Listing::Items`]), so that one pass sees one listing.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::sync::Arc;

use crate::archive::NodeRefKind;
use crate::cache::CachedVersion;
use crate::ids::Ino;

use super::inode::{MetaNode, Range, Resolved};
use super::versions::Complete;
use super::{DirItem, FileKind, Fs, FsError, Result, TimedAttr};

/// The entries of an open directory, `.` and `..` first.
#[derive(Debug)]
pub enum Listing {
    /// Taken whole: a directory outside versions.
    Items(Vec<DirItem>),
    /// Directory `node` of a complete version: `.` and `..`, then the index's entries.
    Version {
        range: Range,
        v: Arc<CachedVersion>,
        node: u32,
        dot: TimedAttr,
        dotdot: TimedAttr,
    },
}

impl Fs {
    /// The listing of directory `ino`. Inside a version, this waits for the version to be
    /// complete (no partial listing is ever served).
    pub(super) fn listing(&self, ino: Ino) -> Result<Listing> {
        let (range, node) = match self.resolve(ino)? {
            Resolved::Meta(MetaNode::Version {
                kind,
                name,
                version,
            }) => (self.range(kind, &name, &version), 0),
            Resolved::Content { range, node } => (range, node),
            Resolved::Meta(_) => return Ok(Listing::Items(self.dir_items(ino)?)),
        };
        let v = self.version(&range, Complete)?;
        let parent = match self.checked(&v, v.index.get(node))?.map(|n| n.kind) {
            Some(NodeRefKind::Dir { parent, .. }) => parent,
            Some(_) => return Err(FsError::NotDir),
            None => return Err(FsError::NotFound),
        };
        let dot = self.content_attr(&range, &v, node)?;
        let dotdot = if node == 0 {
            // The version's own parent: its storage's directory.
            self.meta_attr(MetaNode::Storage {
                kind: range.kind,
                name: range.name.clone(),
            })?
        } else if parent == 0 {
            self.getattr(range.root, None)?
        } else {
            self.content_attr(&range, &v, parent)?
        };
        if dot.attr.kind != FileKind::Directory {
            return Err(FsError::NotDir);
        }
        Ok(Listing::Version {
            range,
            v,
            node,
            dot,
            dotdot,
        })
    }

    /// The entry at position `pos` of a listing (`None` past the end). Inside a version it
    /// is read from the index: the entries before it are not looked at.
    pub fn dir_item(&self, listing: &Listing, pos: u64) -> Result<Option<DirItem>> {
        let (range, v, node, dot, dotdot) = match listing {
            Listing::Items(items) => {
                let at = usize::try_from(pos).unwrap_or(usize::MAX);
                return Ok(items.get(at).cloned());
            }
            Listing::Version {
                range,
                v,
                node,
                dot,
                dotdot,
            } => (range, v, *node, dot, dotdot),
        };
        let item = |name: &[u8], entry: &TimedAttr| DirItem {
            name: OsString::from_vec(name.to_vec()),
            entry: entry.clone(),
        };
        match pos {
            0 => return Ok(Some(item(b".", dot))),
            1 => return Ok(Some(item(b"..", dotdot))),
            _ => {}
        }
        let at = usize::try_from(pos - 2).unwrap_or(usize::MAX);
        let Some(entry) = self.checked(v, v.index.entries(node))?.nth(at) else {
            return Ok(None);
        };
        let (name, child) = self.checked(v, entry)?;
        let entry = self.content_attr(range, v, child)?;
        Ok(Some(item(name, &entry)))
    }
}
