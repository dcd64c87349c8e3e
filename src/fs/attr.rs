//! Attributes: what `lookup`, `getattr` and `readdirplus` answer for each kind of inode
//! (the fixed directories, a storage, `latest` and prefix links, a version, what is inside
//! a version, complete or only published so far), and how long the kernel may keep them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::archive::{NodeRefKind, PublishedKind, PublishedNode};
use crate::cache::CachedVersion;
use crate::cache::VersionKey;
use crate::ids::Ino;

use super::inode::{MetaNode, Range};
use super::versions::Complete;
use super::{Fs, Result};

/// Attributes of what is inside a version never change: the kernel may keep them this long.
pub const IMMUTABLE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The mode of the directories the mount makes up (the root, a kind, a storage, a version
/// not unpacked yet).
const DIR_PERM: u16 = 0o755;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Directory,
    RegularFile,
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileKind,
    pub size: u64,
    pub blocks: u64,
    pub perm: u16,
    pub nlink: u32,
    pub mtime: SystemTime,
    pub uid: u32,
    pub gid: u32,
}

/// Attributes and how long the kernel may keep them: the answer to `lookup` and `getattr`,
/// and each item of a directory listing.
#[derive(Debug, Clone)]
pub struct TimedAttr {
    pub attr: Attr,
    pub ttl: Duration,
}

impl Fs {
    pub(super) fn attr(
        &self,
        ino: Ino,
        kind: FileKind,
        size: u64,
        perm: u16,
        nlink: u32,
        mtime: SystemTime,
    ) -> Attr {
        Attr {
            ino,
            kind,
            size,
            blocks: size.div_ceil(512),
            perm,
            nlink,
            mtime,
            uid: self.config.uid,
            gid: self.config.gid,
        }
    }

    /// A directory the mount makes up.
    pub(super) fn dir_attr(&self, ino: Ino, size: u64, mtime: SystemTime) -> Attr {
        self.attr(ino, FileKind::Directory, size, DIR_PERM, 2, mtime)
    }

    /// The attributes of a metadata inode (allocated here if it is new).
    pub(super) fn meta_attr(&self, m: MetaNode) -> Result<TimedAttr> {
        let ttl = self.config.metadata_ttl;
        let ino = self.inodes.lock().meta_ino(m.clone());
        let attr = match m {
            MetaNode::Root | MetaNode::KindDir(_) => self.dir_attr(ino, 4096, self.started),
            MetaNode::StatusDir => self.attr(ino, FileKind::Directory, 0, 0o555, 2, self.started),
            MetaNode::StatusFile => return Ok(self.status_attr(ino, None)),
            MetaNode::Run(n) => return self.run_attr(ino, n),
            MetaNode::Storage { kind, name } => {
                let s = self.find_storage(kind, name.as_str())?;
                self.dir_attr(ino, 4096, s.updated_at)
            }
            MetaNode::Latest { kind, name } => {
                let s = self.find_storage(kind, name.as_str())?;
                let target = s.current_version_id.ok_or(super::FsError::NotFound)?;
                self.kernel.latest_shown(kind, &name, ino, &target, true);
                let size = target.as_str().len() as u64;
                self.attr(ino, FileKind::Symlink, size, 0o777, 1, s.updated_at)
            }
            MetaNode::PrefixLink {
                kind,
                name,
                version,
            } => {
                let v = self.find_version(kind, &name, version.as_str())?;
                let size = version.as_str().len() as u64;
                let attr = self.attr(ino, FileKind::Symlink, size, 0o777, 1, v.created_at);
                return Ok(TimedAttr {
                    attr,
                    ttl: IMMUTABLE_TTL,
                });
            }
            MetaNode::Version {
                kind,
                name,
                version,
            } => {
                // A resident version shows its root as unpacked (an archive may carry an
                // entry for "./"); a cold one is described from its metadata alone, so that
                // listing versions never downloads them.
                if let Some(v) = self.cache.peek(&VersionKey::new(kind, &version)) {
                    let range = self.range(kind, &name, &version);
                    return self.content_attr(&range, &v, 0);
                }
                // Complete in the cache but not described by the listings held (the API is
                // unreachable): loaded from disk, which is quick, rather than waiting for it.
                if self.cache_only(kind, &name, &version) {
                    let range = self.range(kind, &name, &version);
                    let v = self.version(&range, Complete)?;
                    return self.content_attr(&range, &v, 0);
                }
                // Until it is unpacked, its link count (and an archive's own "./" entry) are
                // unknown: the kernel keeps none of these attributes (zero TTL), so that the
                // first question once the version is complete gets the final ones, which it
                // then keeps for good. Asking again costs no API call (the listing is held).
                let v = self.find_version(kind, &name, version.as_str())?;
                let secs = v
                    .created_at
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let attr = self.dir_attr(ino, 4096, UNIX_EPOCH + Duration::from_secs(secs));
                return Ok(TimedAttr {
                    attr,
                    ttl: Duration::ZERO,
                });
            }
        };
        Ok(TimedAttr { attr, ttl })
    }

    /// The attributes of a node published while its version is unpacked. Zero TTL: a
    /// directory's attributes may still change, and a file's name may be taken over by a
    /// later member of the archive, so the kernel must ask again (and gets the final answer
    /// once the version is complete).
    pub(super) fn published_attr(&self, range: &Range, node: u32, p: &PublishedNode) -> TimedAttr {
        let ino = range.ino(node);
        let mtime = crate::dates::from_unix(p.mtime_sec, p.mtime_nsec);
        let attr = match &p.kind {
            PublishedKind::Dir => self.attr(ino, FileKind::Directory, 4096, p.perm, p.nlink, mtime),
            PublishedKind::File(f) => {
                self.attr(ino, FileKind::RegularFile, f.size, p.perm, p.nlink, mtime)
            }
        };
        TimedAttr {
            attr,
            ttl: Duration::ZERO,
        }
    }

    /// The attributes of node `node` of a complete version: they never change.
    pub(super) fn content_attr(
        &self,
        range: &Range,
        v: &CachedVersion,
        node: u32,
    ) -> Result<TimedAttr> {
        let ino = range.ino(node);
        let n = self.checked(v, v.index.node(node))?;
        let mtime = crate::dates::from_unix(n.mtime_sec, n.mtime_nsec);
        let attr = match n.kind {
            NodeRefKind::Dir { .. } => {
                self.attr(ino, FileKind::Directory, 4096, n.perm, n.nlink, mtime)
            }
            NodeRefKind::File { size, .. } => {
                self.attr(ino, FileKind::RegularFile, size, n.perm, n.nlink, mtime)
            }
            NodeRefKind::Symlink { len } => {
                self.attr(ino, FileKind::Symlink, len.into(), 0o777, n.nlink, mtime)
            }
        };
        Ok(TimedAttr {
            attr,
            ttl: IMMUTABLE_TTL,
        })
    }

    /// The status file's attributes as `reader` sees them. They are never cached, and the
    /// size and mtime are those of the text its reads will get: a new text has a new mtime,
    /// which makes the kernel drop the pages it holds of an older one
    /// (`FUSE_AUTO_INVAL_DATA`, where it sends no `OPEN`; else the file is opened with
    /// direct I/O).
    pub(super) fn status_attr(&self, ino: Ino, reader: Option<u32>) -> TimedAttr {
        let t = self.status_for(reader);
        let size = t.text.len() as u64;
        TimedAttr {
            attr: self.attr(ino, FileKind::RegularFile, size, 0o444, 1, t.at),
            ttl: Duration::ZERO,
        }
    }
}
