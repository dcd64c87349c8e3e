//! The FUSE adapter: `impl fuser::Filesystem` for [`crate::fs::Fs`].
//!
//! Just a thin wrapper: each callback calls the matching `Fs` method and turns its result
//! into a reply or an errno. No logic lives here, because logic here could only be tested
//! through a real mount. Every operation that would change the tree answers `EROFS`.
//!
//! Operations that may wait for a download (anything that looks inside a version) go
//! through [`Fs::serve`] with their reply (fuser's replies may be answered from any
//! thread): the FUSE worker thread is back for the next request at once, and the answer
//! comes from a waiter thread when the version is there, or `EINTR` when the process that
//! asked has given up. So the status file, listings and cached versions are always served.
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
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    AccessFlags, BackingId, BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

mod convert;
mod quiet;

pub use quiet::QuietDroppedReplies;

use crate::fs::{Backings, Caching, FileKind, Fs, KernelCache, Listing};
use crate::ids::Ino;
use convert::{fail, fh, file_attr, file_type, ino, xattr_reply};

pub struct FuseFs {
    fs: Arc<Fs>,
    /// Whether to have the kernel send `OPEN` and `RELEASE` (`--track-opens`).
    track_opens: bool,
    /// Whether opens are answered `ENOSYS`, so that the kernel stops sending them (set in
    /// `init`, where the kernel says whether it can).
    no_open: bool,
    /// Whether the kernel agreed to passthrough reads (set in `init`).
    passthrough: bool,
    /// Backing files registered with the kernel for passthrough.
    backings: Arc<Backings<BackingId>>,
}

impl FuseFs {
    /// `track_opens`: have the kernel send every open and close (else it sends none where
    /// it can). `allow_passthrough`: with `track_opens`, ask the kernel for passthrough reads
    /// (it may still refuse).
    pub fn new(fs: Arc<Fs>, track_opens: bool, allow_passthrough: bool) -> FuseFs {
        FuseFs {
            fs,
            track_opens,
            no_open: false,
            passthrough: allow_passthrough,
            backings: Arc::default(),
        }
    }
}

/// The kernel's caches, told through the session's notifier (see `fs::kernel`).
pub struct KernelNotifier(fuser::Notifier);

impl KernelNotifier {
    pub fn new(notifier: fuser::Notifier) -> KernelNotifier {
        KernelNotifier(notifier)
    }
}

impl KernelCache for KernelNotifier {
    fn invalidate(&self, i: Ino, data: bool) {
        // A negative offset: the attributes only; from 0 with no length: all the data too.
        let offset = if data { 0 } else { -1 };
        // An inode the kernel does not hold is nothing to drop (fuser takes that as done).
        if let Err(e) = self.0.inval_inode(INodeNo(i.0), offset, 0) {
            tracing::debug!(ino = i.0, error = %e, "the kernel did not take an invalidation");
        }
    }
}

/// What every session asks of the kernel at `INIT`, whatever its options: each optional
/// (an older kernel without one still mounts). `examples/fuse_floor.rs` asks the same, so
/// that the kernel treats the floor the benchmark measures against as it treats vm0fs.
pub fn ask_kernel(config: &mut KernelConfig) {
    for cap in [
        InitFlags::FUSE_DO_READDIRPLUS,
        InitFlags::FUSE_READDIRPLUS_AUTO,
        InitFlags::FUSE_PARALLEL_DIROPS,
        InitFlags::FUSE_MAX_PAGES,
        InitFlags::FUSE_ASYNC_READ,
        // The kernel keeps each symlink's target in its page cache, so a path through
        // `latest` or a prefix costs no READLINK. `latest` is the one link whose target
        // changes: `Fs` has the kernel drop it when it moves (see `Fs::set_kernel`).
        InitFlags::FUSE_CACHE_SYMLINKS,
        // O_DIRECT reads of one file are sent to the daemon as they come, not one at a
        // time: an `io_submit` of 16 reads has 16 requests served on 16 threads.
        InitFlags::FUSE_ASYNC_DIO,
    ] {
        let _ = config.add_capabilities(cap);
    }
    // Not `FUSE_POSIX_ACL`: with it the kernel asks the daemon for the ACL of every new
    // inode, and a "not supported" answer would fail other users' permission checks.
    // Without it the kernel checks the mode bits alone (`default_permissions`), and
    // `ls -l`, which asks `system.posix_acl_access` itself, is told "not supported" once
    // and stops asking for the device (see `Fs::getxattr`).

    // max_pages follows the largest of max_write and max_readahead: 1 MiB requests.
    let _ = config.set_max_write(1 << 20);
    let _ = config.set_max_readahead(1 << 20);
    let _ = config.set_max_background(64);
}

/// No `OPEN` and `RELEASE` (see the module docs), asked by default (not with
/// `--track-opens`); whether the kernel took both flags. Then the status file, whose
/// content changes, cannot be opened with direct I/O: each new text of it has a new mtime,
/// and `FUSE_AUTO_INVAL_DATA` makes the kernel drop its cached pages when it sees that.
pub fn ask_no_open(config: &mut KernelConfig) -> bool {
    config
        .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT)
        .is_ok()
        && config
            .add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA)
            .is_ok()
}

/// Contents never change: keep the page cache across opens; and there is nothing to flush
/// on close, so spare every `close(2)` a round trip to the daemon.
const CACHED_OPEN: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE.union(FopenFlags::FOPEN_NOFLUSH);

/// Callbacks that would change the tree. The mount is read-only (`ro`), so the kernel
/// refuses most of these itself; fuser's default answer to the rest would be `ENOSYS`
/// ("not implemented"), where `EROFS` is the truth.
macro_rules! read_only {
    ($($op:ident($($arg:ty),*) -> $reply:ty;)*) => {
        $(fn $op(&self, _: &Request, $(_: $arg,)* reply: $reply) {
            reply.error(Errno::EROFS);
        })*
    };
}

impl fuser::Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        ask_kernel(config);
        self.no_open = !self.track_opens && ask_no_open(config);
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
        let (pid, name) = (req.pid(), name.to_owned());
        self.fs.serve(
            pid,
            move |fs| fs.lookup(ino(parent), &name, Some(pid)),
            move |r| match r {
                Ok(e) => reply.entry(&e.ttl, &file_attr(&e.attr), Generation(0)),
                Err(e) => reply.error(fail("lookup", &e)),
            },
        );
    }

    fn getattr(&self, req: &Request, i: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let pid = req.pid();
        self.fs.serve(
            pid,
            move |fs| fs.getattr(ino(i), Some(pid)),
            move |r| match r {
                Ok(e) => reply.attr(&e.ttl, &file_attr(&e.attr)),
                Err(e) => reply.error(fail("getattr", &e)),
            },
        );
    }

    fn readlink(&self, req: &Request, i: INodeNo, reply: ReplyData) {
        self.fs.serve(
            req.pid(),
            move |fs| fs.readlink(ino(i)),
            move |r| match r {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(fail("readlink", &e)),
            },
        );
    }

    /// No ioctl means anything here. Most come from `isatty` (`TCGETS`, at every Python
    /// `open()`): `ENOTTY` is the answer a regular file gives, at once and without fuser's
    /// `[Not Implemented]` warning (three log lines per call). The kernel sends each one
    /// all the same: it remembers no refusal of ioctls (see doc/BENCHMARKS.md).
    fn ioctl(
        &self,
        _: &Request,
        _: INodeNo,
        _: FileHandle,
        _: IoctlFlags,
        _: u32,
        _: &[u8],
        _: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn open(&self, req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.no_open {
            // Only the first opens of the connection get here (until the kernel has seen
            // this answer); the mount is read-only, so the kernel has refused opens for
            // writing already.
            return reply.error(Errno::ENOSYS);
        }
        let (fs, backings, passthrough) =
            (self.fs.clone(), self.backings.clone(), self.passthrough);
        self.fs.serve(
            req.pid(),
            move |fs| fs.open(ino(i), flags.0),
            move |r| {
                let o = match r {
                    Ok(o) => o,
                    Err(e) => return reply.error(fail("open", &e)),
                };
                let handle = FileHandle(o.fh.0);
                if o.direct_io {
                    return reply.opened(handle, FopenFlags::FOPEN_DIRECT_IO);
                }
                if passthrough && o.wants_passthrough() {
                    // Register the content file with the kernel, so that reads (and mmap)
                    // of this inode go straight to it without a round trip through the
                    // daemon.
                    let mut damaged = None;
                    let backing = backings.share(ino(i), o.fh, || {
                        match fs.with_open_file(o.fh, |f| reply.open_backing(f)) {
                            Ok(Some(Ok(id))) => Some(id),
                            Ok(Some(Err(e))) => {
                                tracing::debug!(ino = i.0, error = %e, "passthrough refused; serving reads through the daemon");
                                None
                            }
                            Ok(None) => None,
                            Err(e) => {
                                damaged = Some(e);
                                None
                            }
                        }
                    });
                    if let Some(e) = damaged {
                        fs.release(o.fh);
                        return reply.error(fail("open", &e));
                    }
                    // No FOPEN_KEEP_CACHE here: the kernel answers EIO to passthrough
                    // opens that carry it (the page cache is the backing file's own
                    // anyway).
                    if let Some(id) = backing {
                        return reply.opened_passthrough(handle, FopenFlags::FOPEN_NOFLUSH, &id);
                    }
                }
                reply.opened(handle, CACHED_OPEN);
            },
        );
    }

    fn read(
        &self,
        req: &Request,
        i: INodeNo,
        h: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (pid, no_open) = (req.pid(), self.no_open);
        let caching = if flags.0 & libc::O_DIRECT != 0 {
            Caching::Direct
        } else {
            Caching::Kernel
        };
        self.fs.serve(
            pid,
            move |fs| {
                if no_open {
                    fs.read_ino_as(ino(i), offset, size, pid, caching)
                } else {
                    fs.read(fh(h), offset, size)
                }
            },
            move |r| match r {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(fail("read", &e)),
            },
        );
    }

    /// Nothing is ever written, so nothing is flushed. `ENOSYS` (without fuser's default
    /// warning) tells the kernel so once: it stops sending `FLUSH` at each `close` (files
    /// opened without an `OPEN`, which carry no `FOPEN_NOFLUSH`, would otherwise cost one
    /// round trip per close).
    fn flush(&self, _: &Request, _: INodeNo, _: FileHandle, _: LockOwner, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        i: INodeNo,
        h: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.backings.release(ino(i), fh(h));
        self.fs.release(fh(h));
        reply.ok();
    }

    fn opendir(&self, req: &Request, i: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.fs.serve(
            req.pid(),
            move |fs| fs.opendir(ino(i)),
            move |r| match r {
                // A directory inside a version never changes: let the kernel keep its
                // listing.
                Ok(o) if o.immutable => reply.opened(
                    FileHandle(o.fh.0),
                    FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
                ),
                Ok(o) => reply.opened(FileHandle(o.fh.0), FopenFlags::empty()),
                Err(e) => reply.error(fail("opendir", &e)),
            },
        );
    }

    fn readdir(
        &self,
        req: &Request,
        _ino: INodeNo,
        h: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let fs = self.fs.clone();
        self.fs.serve(
            req.pid(),
            move |fs| fs.readdir(fh(h)),
            move |r| match r {
                Ok(listing) => {
                    fill(
                        &fs,
                        &listing,
                        offset,
                        None,
                        "readdir",
                        reply,
                        |reply, at, item| {
                            let a = &item.entry.attr;
                            reply.add(INodeNo(a.ino.0), at, file_type(a.kind), &item.name)
                        },
                    );
                }
                Err(e) => reply.error(fail("readdir", &e)),
            },
        );
    }

    /// The first reply of a directory may be cut short: the kernel makes an inode of every
    /// entry it carries, and a reader that reads names only gets the rest by `readdir`
    /// (see `fs::plus`).
    fn readdirplus(
        &self,
        req: &Request,
        i: INodeNo,
        h: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let fs = self.fs.clone();
        self.fs.serve(
            req.pid(),
            move |fs| fs.readdir(fh(h)),
            move |r| match r {
                Ok(listing) => {
                    let limit = if offset == 0 {
                        fs.first_plus_reply()
                    } else {
                        None
                    };
                    let filled = fill(
                        &fs,
                        &listing,
                        offset,
                        limit,
                        "readdirplus",
                        reply,
                        |reply, at, item| {
                            let attr = file_attr(&item.entry.attr);
                            reply.add(
                                attr.ino,
                                at,
                                &item.name,
                                &item.entry.ttl,
                                &attr,
                                Generation(0),
                            )
                        },
                    );
                    if filled == Filled::Cut {
                        fs.plus_reply_cut(ino(i));
                    }
                }
                Err(e) => reply.error(fail("readdirplus", &e)),
            },
        );
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        h: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh(h));
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
        );
    }

    fn getxattr(&self, _req: &Request, i: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(ino(i), name) {
            Ok(value) => xattr_reply(reply, size, &value),
            Err(e) => reply.error(fail("getxattr", &e)),
        }
    }

    fn listxattr(&self, _req: &Request, i: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino(i)) {
            Ok(names) => xattr_reply(reply, size, &names),
            Err(e) => reply.error(fail("listxattr", &e)),
        }
    }

    fn access(&self, _req: &Request, i: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.fs.access(ino(i), mask.contains(AccessFlags::W_OK)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("access", &e)),
        }
    }

    read_only! {
        setattr(
            INodeNo, Option<u32>, Option<u32>, Option<u32>, Option<u64>, Option<TimeOrNow>,
            Option<TimeOrNow>, Option<SystemTime>, Option<FileHandle>, Option<SystemTime>,
            Option<SystemTime>, Option<SystemTime>, Option<BsdFileFlags>
        ) -> ReplyAttr;
        mknod(INodeNo, &OsStr, u32, u32, u32) -> ReplyEntry;
        mkdir(INodeNo, &OsStr, u32, u32) -> ReplyEntry;
        unlink(INodeNo, &OsStr) -> ReplyEmpty;
        rmdir(INodeNo, &OsStr) -> ReplyEmpty;
        symlink(INodeNo, &OsStr, &Path) -> ReplyEntry;
        rename(INodeNo, &OsStr, INodeNo, &OsStr, RenameFlags) -> ReplyEmpty;
        link(INodeNo, INodeNo, &OsStr) -> ReplyEntry;
        write(
            INodeNo, FileHandle, u64, &[u8], WriteFlags, OpenFlags, Option<LockOwner>
        ) -> ReplyWrite;
        create(INodeNo, &OsStr, u32, u32, i32) -> ReplyCreate;
        setxattr(INodeNo, &OsStr, &[u8], i32, u32) -> ReplyEmpty;
        removexattr(INodeNo, &OsStr) -> ReplyEmpty;
        fallocate(INodeNo, FileHandle, u64, u64, i32) -> ReplyEmpty;
        copy_file_range(
            INodeNo, FileHandle, u64, INodeNo, FileHandle, u64, u64, CopyFileRangeFlags
        ) -> ReplyWrite;
    }
}

/// The directory replies, `ReplyDirectory` and `ReplyDirectoryPlus`.
trait DirReply {
    fn ok(self);
    fn error(self, e: Errno);
}

impl DirReply for ReplyDirectory {
    fn ok(self) {
        ReplyDirectory::ok(self);
    }
    fn error(self, e: Errno) {
        ReplyDirectory::error(self, e);
    }
}

impl DirReply for ReplyDirectoryPlus {
    fn ok(self) {
        ReplyDirectoryPlus::ok(self);
    }
    fn error(self, e: Errno) {
        ReplyDirectoryPlus::error(self, e);
    }
}

/// Whether a reply ended at its `limit` with entries left (see [`fill`]).
#[derive(PartialEq, Eq)]
enum Filled {
    Whole,
    Cut,
}

/// Fill `reply` with the entries of `listing` from position `offset` until it is full
/// (`add` says so), the next entry would be the `limit + 1`th that is not a directory, or
/// the listing ends. An entry's offset is the position of the next one. An entry that
/// cannot be read ends the reply there; with nothing in it, it fails.
fn fill<R: DirReply>(
    fs: &Fs,
    listing: &Listing,
    offset: u64,
    limit: Option<u64>,
    op: &'static str,
    mut reply: R,
    mut add: impl FnMut(&mut R, u64, &crate::fs::DirItem) -> bool,
) -> Filled {
    let mut at = offset;
    let mut others = 0u64;
    loop {
        match fs.dir_item(listing, at) {
            Ok(Some(item)) => {
                if item.entry.attr.kind != FileKind::Directory {
                    if limit.is_some_and(|l| others >= l) {
                        reply.ok();
                        return Filled::Cut;
                    }
                    others += 1;
                }
                if add(&mut reply, at + 1, &item) {
                    break;
                }
                at += 1;
            }
            Ok(None) => break,
            Err(e) if at == offset => {
                reply.error(fail(op, &e));
                return Filled::Whole;
            }
            Err(_) => break,
        }
    }
    reply.ok();
    Filled::Whole
}
