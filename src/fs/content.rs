//! The inside of a version: attributes, names, content and child entries of the nodes
//! of a cached version, or of one being unpacked (answered from what is published while
//! it is, from the complete version after), and the one place a damaged index is turned
//! into `EIO` and a re-download.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::archive::{blob_path, pack_path, IndexError, NodeRefKind, PublishedKind, Stored};
use crate::cache::{Available, CachedVersion, Stopped, Waited};
use crate::ids::Ino;

use super::handles::{open_published, OpenFile, Pin};
use super::inode::{MetaNode, Range, Resolved};
use super::versions::Now;
use super::wait::ThreadPolicy;
use super::{Content, Fs, FsError, Result, TimedAttr};

impl Fs {
    /// The attributes of node `node` of a version: as published while it is being
    /// unpacked, else from the complete version.
    pub(super) fn content_getattr(&self, range: &Range, node: u32) -> Result<TimedAttr> {
        let v = match self.version(range, Now)? {
            Available::Ready(v) => v,
            Available::Pending(flight) => match waited(flight.node(node, &ThreadPolicy))? {
                Waited::Published(attrs) => return Ok(self.published_attr(range, node, &attrs)),
                Waited::Done(r) => self.finished(&range.name, &flight, r)?,
            },
        };
        if self.checked(&v, v.index.get(node))?.is_none() {
            return Err(FsError::NotFound);
        }
        self.content_attr(range, &v, node)
    }

    /// Look up `name` in directory node `dir` of a version: from what is published while it
    /// is being unpacked, else (a name not published yet) from the complete version.
    pub(super) fn lookup_content(
        &self,
        range: &Range,
        now: Available,
        dir: u32,
        name: &OsStr,
    ) -> Result<TimedAttr> {
        let v = match now {
            Available::Ready(v) => v,
            Available::Pending(flight) => {
                match waited(flight.lookup(dir, name.as_bytes(), &ThreadPolicy))? {
                    Waited::Published((node, attrs)) => {
                        return Ok(self.published_attr(range, node, &attrs))
                    }
                    Waited::Done(r) => self.finished(&range.name, &flight, r)?,
                }
            }
        };
        match self.checked(&v, v.index.get(dir))?.map(|n| n.kind) {
            Some(NodeRefKind::Dir { .. }) => {}
            Some(_) => return Err(FsError::NotDir),
            None => return Err(FsError::NotFound),
        }
        let child = self
            .checked(&v, v.index.lookup(dir, name.as_bytes()))?
            .ok_or(FsError::NotFound)?;
        self.content_attr(range, &v, child)
    }

    /// Where the content of file `ino` comes from, with its version pinned.
    pub(super) fn content(&self, ino: Ino) -> Result<Content> {
        let (range, node) = match self.resolve(ino)? {
            Resolved::Content { range, node } => (range, node),
            Resolved::Meta(MetaNode::StatusFile) => return Ok(Content::Status),
            Resolved::Meta(MetaNode::Run(n)) => return Ok(Content::Run(self.run_content(n)?)),
            Resolved::Meta(MetaNode::Latest { .. } | MetaNode::PrefixLink { .. }) => {
                return Err(FsError::NotFound)
            }
            Resolved::Meta(_) => return Err(FsError::IsDir),
        };
        let v = match self.version(&range, Now)? {
            Available::Ready(v) => v,
            Available::Pending(flight) => match waited(flight.node(node, &ThreadPolicy))? {
                Waited::Published(attrs) => match &attrs.kind {
                    PublishedKind::Dir => return Err(FsError::IsDir),
                    PublishedKind::File(f) => match open_published(f) {
                        Some(file) => {
                            let pin = Pin::Flight(flight.clone());
                            let open = OpenFile::opened(file, f.offset, f.size, pin);
                            return Ok(Content::File(open, f.size));
                        }
                        // The unpack ended in the meantime and moved the blob: the
                        // complete version has it.
                        None => {
                            let r = waited(flight.wait(&ThreadPolicy))?;
                            self.finished(&range.name, &flight, r)?
                        }
                    },
                },
                Waited::Done(r) => self.finished(&range.name, &flight, r)?,
            },
        };
        let (stored, size) = match self.checked(&v, v.index.get(node))?.map(|n| n.kind) {
            Some(NodeRefKind::File { size, stored }) => (stored, size),
            Some(NodeRefKind::Dir { .. }) => return Err(FsError::IsDir),
            Some(NodeRefKind::Symlink { .. }) | None => return Err(FsError::NotFound),
        };
        let (path, offset) = match stored {
            Stored::Own { blob } => (blob_path(&v.dir, blob), 0),
            Stored::Packed { offset } => (pack_path(&v.dir), offset),
        };
        let open = OpenFile::at(path, offset, size, Pin::Version(v));
        Ok(Content::File(open, size))
    }

    /// A read of a version's index: a damaged index fails the operation (`EIO`) and drops
    /// the version from the cache, so that the next access downloads it again. (An index
    /// is checked whole when it is opened; this catches what the checksum cannot.)
    pub(super) fn checked<T>(
        &self,
        v: &CachedVersion,
        r: std::result::Result<T, IndexError>,
    ) -> Result<T> {
        r.map_err(|e| {
            tracing::error!(version = %v.key, error = %e, "a cached index is damaged; the version will be downloaded again");
            self.cache.discard_damaged(&v.key);
            FsError::Damaged(e)
        })
    }
}

/// A wait for a flight that ended early, as the filesystem answers it.
pub(super) fn waited<T>(r: std::result::Result<T, Stopped>) -> Result<T> {
    r.map_err(|stopped| match stopped {
        Stopped::WouldBlock => FsError::WouldBlock,
        Stopped::Interrupted => FsError::Interrupted,
    })
}
