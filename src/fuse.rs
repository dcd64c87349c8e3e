//! The FUSE adapter: `impl fuser::Filesystem` for [`crate::fs::Fs`].
//!
//! Just a thin wrapper: each callback calls the matching `Fs` method and turns its result
//! into a reply or an errno. No logic lives here, because logic here could only be tested
//! through a real mount. Every operation that would change the tree answers `EROFS`.
//!
//! Opens: by default the kernel opens and closes files without a round trip. The first
//! `OPEN` answers `ENOSYS` (`FUSE_NO_OPEN_SUPPORT`), after which the kernel sends no `OPEN`
//! and no `RELEASE` for the whole connection, keeps every file's pages across opens, and
//! reads carry no handle: [`Fs::read_ino`] serves them. Contents are immutable, so nothing
//! per open is needed, except knowing which versions are in use, which the cache learns
//! from `/proc` instead ([`crate::openfiles`]). With `--track-opens` every open is a request
//! and a handle, which kernel passthrough for large files needs.

use std::ffi::OsStr;
use std::path::Path;
use std::time::SystemTime;

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use fuser::BackingId;
use parking_lot::Mutex;

use crate::fs::{Attr, FileKind, Fs, FsError};

pub struct FuseFs {
    fs: Fs,
    /// Whether to have the kernel send `OPEN` and `RELEASE` (`--track-opens`).
    track_opens: bool,
    /// Whether opens are answered `ENOSYS`, so that the kernel stops sending them (set in
    /// `init`, where the kernel says whether it can).
    no_open: bool,
    /// Whether the kernel agreed to passthrough reads (set in `init`).
    passthrough: bool,
    backing: Mutex<Backing>,
}

/// Backing files registered with the kernel for passthrough. The kernel wants one backing
/// file per inode for as long as any handle of that inode is open, so ids are shared by
/// inode (weakly) and held by handle (strongly), as in fuser's passthrough example.
#[derive(Default)]
struct Backing {
    by_handle: HashMap<u64, Arc<BackingId>>,
    by_inode: HashMap<u64, Weak<BackingId>>,
}

impl FuseFs {
    /// `track_opens`: have the kernel send every open and close (else it sends none where
    /// it can). `allow_passthrough`: with `track_opens`, ask the kernel for passthrough reads
    /// (it may still refuse).
    pub fn new(fs: Fs, track_opens: bool, allow_passthrough: bool) -> FuseFs {
        FuseFs {
            fs,
            track_opens,
            no_open: false,
            passthrough: allow_passthrough,
            backing: Mutex::new(Backing::default()),
        }
    }

    /// Register the content file of `fh` with the kernel, so that reads (and mmap) of this
    /// inode go straight to it without a round trip through the daemon.
    fn backing_for(&self, reply: &ReplyOpen, ino: u64, fh: u64) -> Option<Arc<BackingId>> {
        let mut b = self.backing.lock();
        let id = match b.by_inode.get(&ino).and_then(Weak::upgrade) {
            Some(id) => id,
            None => {
                let id = self.fs.with_open_file(fh, |f| reply.open_backing(f))?;
                match id {
                    Ok(id) => Arc::new(id),
                    Err(e) => {
                        tracing::debug!(ino, error = %e, "passthrough refused; serving reads through the daemon");
                        return None;
                    }
                }
            }
        };
        b.by_inode.insert(ino, Arc::downgrade(&id));
        b.by_handle.insert(fh, id.clone());
        Some(id)
    }
}

/// Contents never change: keep the page cache across opens; and there is nothing to flush
/// on close, so spare every `close(2)` a round trip to the daemon.
const CACHED_OPEN: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE.union(FopenFlags::FOPEN_NOFLUSH);

/// Files at least this large are read through kernel passthrough (when available).
const PASSTHROUGH_MIN_SIZE: u64 = 1 << 20;

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::Directory => FileType::Directory,
        FileKind::RegularFile => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
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

/// Log a failed operation. User-caused misses are routine (shells probe for many names);
/// real failures were already logged where they happened, with their context.
fn fail(op: &str, e: &FsError) -> Errno {
    tracing::debug!(op, error = %e, "operation failed");
    errno(e)
}

impl fuser::Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each is optional: an older kernel without one still mounts.
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_MAX_PAGES,
            InitFlags::FUSE_ASYNC_READ,
            // The kernel then caches each inode's (absent) ACL, so `ls -l` stops asking the
            // daemon for `system.posix_acl_access` of every file on every listing.
            InitFlags::FUSE_POSIX_ACL,
        ] {
            let _ = config.add_capabilities(cap);
        }
        // max_pages follows the largest of max_write and max_readahead: 1 MiB requests.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        // No OPEN and RELEASE (see the module docs). Then the status file, whose content
        // changes, cannot be opened with direct I/O: each new text of it has a new mtime,
        // and FUSE_AUTO_INVAL_DATA makes the kernel drop its cached pages when it sees that.
        self.no_open = !self.track_opens
            && config
                .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT)
                .is_ok()
            && config
                .add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA)
                .is_ok();
        // Passthrough (Linux 6.9+, needs CAP_SYS_ADMIN): reads of unpacked files go from the
        // kernel to the cache's files directly. It is handed over at OPEN, so only with
        // `--track-opens`. Without it, reads go through `read` below.
        self.passthrough = self.passthrough
            && !self.no_open
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        tracing::info!(
            open_requests = !self.no_open,
            passthrough = self.passthrough,
            "FUSE session initialized"
        );
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(parent.0, name, Some(req.pid())) {
            Ok(e) => reply.entry(&e.ttl, &file_attr(&e.attr), Generation(0)),
            Err(e) => reply.error(fail("lookup", &e)),
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0, Some(req.pid())) {
            Ok(e) => reply.attr(&e.ttl, &file_attr(&e.attr)),
            Err(e) => reply.error(fail("getattr", &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(fail("readlink", &e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.no_open {
            // Only the first opens of the connection get here (until the kernel has seen
            // this answer); the mount is read-only, so the kernel has refused opens for
            // writing already.
            return reply.error(Errno::ENOSYS);
        }
        match self.fs.open(ino.0, flags.0) {
            Ok(o) if o.direct_io => reply.opened(FileHandle(o.fh), FopenFlags::FOPEN_DIRECT_IO),
            // Small files go through the page cache: once read, opening one again costs a
            // single round trip, where passthrough would register and unregister a backing
            // file with the kernel on every open and close.
            Ok(o) if self.passthrough && o.size >= PASSTHROUGH_MIN_SIZE => {
                match self.backing_for(&reply, ino.0, o.fh) {
                    // No FOPEN_KEEP_CACHE here: the kernel answers EIO to passthrough opens that
                    // carry it (the page cache is the backing file's own anyway).
                    Some(id) => {
                        reply.opened_passthrough(FileHandle(o.fh), FopenFlags::FOPEN_NOFLUSH, &id)
                    }
                    None => reply.opened(FileHandle(o.fh), CACHED_OPEN),
                }
            }
            Ok(o) => reply.opened(FileHandle(o.fh), CACHED_OPEN),
            Err(e) => reply.error(fail("open", &e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let data = if self.no_open {
            self.fs.read_ino(ino.0, offset, size, req.pid())
        } else {
            self.fs.read(fh.0, offset, size)
        };
        match data {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(fail("read", &e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        {
            let mut b = self.backing.lock();
            b.by_handle.remove(&fh.0);
            if b.by_inode
                .get(&ino.0)
                .is_some_and(|w| w.strong_count() == 0)
            {
                b.by_inode.remove(&ino.0);
            }
        }
        self.fs.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            // A directory inside a version never changes: let the kernel keep its listing.
            Ok(o) if o.immutable => reply.opened(
                FileHandle(o.fh),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Ok(o) => reply.opened(FileHandle(o.fh), FopenFlags::empty()),
            Err(e) => reply.error(fail("opendir", &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let items = match self.fs.readdir(fh.0, offset) {
            Ok(items) => items,
            Err(e) => return reply.error(fail("readdir", &e)),
        };
        for (i, item) in items.iter().enumerate().skip(offset as usize) {
            let kind = file_type(item.entry.attr.kind);
            if reply.add(INodeNo(item.entry.attr.ino), i as u64 + 1, kind, &item.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let items = match self.fs.readdir(fh.0, offset) {
            Ok(items) => items,
            Err(e) => return reply.error(fail("readdirplus", &e)),
        };
        for (i, item) in items.iter().enumerate().skip(offset as usize) {
            let attr = file_attr(&item.entry.attr);
            let ino = INodeNo(item.entry.attr.ino);
            if reply.add(
                ino,
                i as u64 + 1,
                &item.name,
                &item.entry.ttl,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(ino.0, name) {
            Ok(value) => xattr_reply(reply, size, &value),
            Err(e) => reply.error(fail("getxattr", &e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0) {
            Ok(names) => xattr_reply(reply, size, &names),
            Err(e) => reply.error(fail("listxattr", &e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.fs.access(ino.0, mask.contains(AccessFlags::W_OK)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("access", &e)),
        }
    }

    // ----- everything that writes: EROFS --------------------------------------------

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }
}

/// The xattr protocol: a size of 0 asks for the length; too small a buffer is ERANGE.
fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if (size as usize) < value.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}
