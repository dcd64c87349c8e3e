//! The inside of a version: attributes, names, content and child entries of the nodes
//! of a cached version, or of one being unpacked (answered from what is published while
//! it is, from the complete version after), and the one place a damaged version (its
//! index, its checksums, or content that fails them) is turned into `EIO` and a
//! re-download.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::archive::{
    blob_path, pack_path, At, Damage, IndexError, NodeRefKind, PublishedKind, Stored,
};
use crate::cache::{Available, CachedVersion, Stopped, VersionKey, Waited};
use crate::ids::Ino;

use super::handles::{open_published, Check, OpenFile, Pin};
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
                    PublishedKind::File(f) if f.id.is_in_stream() => {
                        // A version larger than the cache: read from its first pass.
                        match flight.flight().pass() {
                            Some(view) => {
                                let open = OpenFile::in_pass(
                                    ino,
                                    node,
                                    f,
                                    range,
                                    view.clone(),
                                    flight.clone(),
                                );
                                return Ok(Content::File(open, f.size));
                            }
                            None => {
                                let r = waited(flight.wait(&ThreadPolicy))?;
                                self.finished(&range.name, &flight, r)?
                            }
                        }
                    }
                    PublishedKind::File(f) => match open_published(f) {
                        Some(file) => {
                            let pin = Pin::Flight(flight.clone());
                            let open = OpenFile::published(file, ino, node, f, pin);
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
        if let Some(streamed) = &v.streamed {
            // A version larger than the cache: read from its archive, unless its content
            // is on disk (a sparse file's, kept whole by the first pass).
            if let Some(At::Data(at)) = streamed.positions.get(node) {
                let check = Check::Streamed {
                    version: v.clone(),
                    ino,
                    node,
                    range,
                    at,
                };
                let open = OpenFile::at(v.dir.clone(), 0, size, check, Pin::Version(v));
                return Ok(Content::File(open, size));
            }
        }
        let (path, offset) = match stored {
            Stored::Own { blob } => (blob_path(&v.dir, blob), 0),
            Stored::Packed { offset } => (pack_path(&v.dir), offset),
        };
        let check = Check::Version {
            version: v.clone(),
            ino,
            node,
        };
        let open = OpenFile::at(path, offset, size, check, Pin::Version(v));
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
            let damage = Damage::from(e);
            self.drop_damaged(&v.key, &damage);
            FsError::Damaged(damage)
        })
    }

    /// A read of `open` failed with `e`: damaged content (missing, short, failing its
    /// checksum) drops its version, and this handle's later reads go to the version
    /// downloaded again. The read itself fails (`EIO`): no byte of a damaged unit is
    /// ever served.
    pub(super) fn read_failed(&self, open: &OpenFile, e: FsError) -> FsError {
        if let FsError::Damaged(damage) = &e {
            open.set_damaged();
            match open.version() {
                Some(v) => self.drop_damaged(&v.key, damage),
                // Its version is not complete yet: when it is, its reads find the same
                // damage and drop it.
                None => {
                    tracing::warn!(problem = %damage, "a file being unpacked is damaged; its read fails");
                }
            }
        }
        e
    }

    /// Drop the damaged version `key` from the cache, so that the next access downloads
    /// it again: one warning per version, however many readers found the damage.
    fn drop_damaged(&self, key: &VersionKey, damage: &Damage) {
        if self.cache.discard_damaged(key) {
            tracing::warn!(version = %key, problem = %damage, "a cached version is damaged; dropped it, the next access downloads it again");
        } else {
            tracing::debug!(version = %key, problem = %damage, "a damaged version, already dropped");
        }
    }
}

/// A wait for a flight that ended early, as the filesystem answers it.
pub(super) fn waited<T>(r: std::result::Result<T, Stopped>) -> Result<T> {
    r.map_err(|stopped| match stopped {
        Stopped::WouldBlock => FsError::WouldBlock,
        Stopped::Interrupted => FsError::Interrupted,
    })
}
