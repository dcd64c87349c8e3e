//! Between `fs` types and fuser's: inode numbers and handles, attributes, the errno of a
//! failed operation (mapped in one place, [`FsError::errno`]), and the xattr reply protocol.

use fuser::{Errno, FileAttr, FileHandle, FileType, INodeNo, ReplyXattr};

use crate::fs::{Attr, FileKind, FsError};
use crate::ids::{Fh, Ino};

pub(super) fn ino(i: INodeNo) -> Ino {
    Ino(i.0)
}

pub(super) fn fh(h: FileHandle) -> Fh {
    Fh(h.0)
}

pub(super) fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::Directory => FileType::Directory,
        FileKind::RegularFile => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
    }
}

pub(super) fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.blocks,
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// Log a failed operation and give its errno (mapped in one place, [`FsError::errno`]).
/// User-caused misses are routine (shells probe for many names); real failures were
/// already logged where they happened, with their context.
pub(super) fn fail(op: &str, e: &FsError) -> Errno {
    tracing::debug!(op, error = %e, "operation failed");
    Errno::from_i32(e.errno())
}

/// The xattr protocol: a size of 0 asks for the length; too small a buffer is ERANGE.
pub(super) fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if (size as usize) < value.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}
