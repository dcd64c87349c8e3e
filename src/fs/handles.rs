//! Handles: the file and directory handles vm0fs hands the kernel at `open` and `opendir`
//! (what each one reads from and what it keeps pinned), and, for files read through kernel
//! passthrough, which backing file each open inode shares ([`Backings`]) and which files
//! are worth one ([`PASSTHROUGH_MIN_SIZE`]). Registering a backing file is a call on the
//! FUSE connection, made by the adapter; the bookkeeping is here, testable without a mount.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;

use crate::archive::{Damage, PublishedFile};
use crate::cache::{
    Bytes, CachedVersion, CheckedFile, Interest, OpenContent, PassView, Sums, Verified,
};
use crate::ids::{Fh, Ino};

use super::inode::Range;
use super::{Fs, FsError, Listing, Result};

/// Files at least this large are read through kernel passthrough (when available). Small
/// files go through the page cache: once read, opening one again costs a single round trip,
/// where passthrough would register and unregister a backing file on every open and close.
pub const PASSTHROUGH_MIN_SIZE: u64 = 1 << 20;

// A packed file shares its content file with others and must never be handed to the kernel.
const _: () = assert!(crate::archive::PACK_MAX <= PASSTHROUGH_MIN_SIZE);

/// A handle just opened, and how the kernel should cache what it reads through it.
#[derive(Debug, Clone, Copy)]
pub struct OpenedHandle {
    pub fh: Fh,
    /// Generated content (the status file): no page cache, reads go to the daemon.
    pub direct_io: bool,
    /// Inside a version: the content (or listing) never changes, the kernel may cache it.
    pub immutable: bool,
    /// File size (0 for directories).
    pub size: u64,
}

impl OpenedHandle {
    /// Whether reads of this file are better served by kernel passthrough, where the
    /// kernel offers it.
    pub fn wants_passthrough(&self) -> bool {
        !self.direct_io && self.size >= PASSTHROUGH_MIN_SIZE
    }
}

pub(super) enum Handle {
    /// Generated content, fixed at `open`.
    Static(Vec<u8>),
    /// An open file: its content file and a pin on its version.
    File(OpenFile),
    /// A directory listing, built once per handle so that a listing read in many
    /// `readdir` calls is consistent.
    Dir(DirHandle),
}

/// What keeps the version of an open file from being evicted.
#[allow(dead_code)] // Held only for what holding it does: the fields are never read.
pub(super) enum Pin {
    Version(Arc<CachedVersion>),
    /// A file opened while its version was unpacked: an interest in the flight keeps the
    /// download going (see [`Interest`]), and the flight keeps its outcome, so once the
    /// version is complete it pins it. (The descriptor alone keeps the content readable in
    /// any case, across the commit rename and a failed download.)
    Flight(Interest),
    /// A file outside versions (a run's): nothing to pin.
    Nothing,
}

/// How the bytes of an open file are checked before they are served.
pub(super) enum Check {
    /// Node `node` of a complete version, against the version's `checks.bin`.
    Version {
        version: Arc<CachedVersion>,
        ino: Ino,
        node: u32,
    },
    /// A file published while its version is unpacked: its checksums came with it.
    Published {
        ino: Ino,
        node: u32,
        sums: Arc<[u32]>,
    },
    /// A run's file: not part of a version (written by this daemon as its pages arrive).
    Unchecked,
    /// Node `node` of a version larger than the cache whose first pass is running, at
    /// offset `at` of its tar stream: read from the spans the pass has kept or is writing,
    /// else from the complete version once the pass ends (see `streamed.rs`). Its
    /// checksums came with it, as a published file's do.
    Passing(Box<InPass>),
    /// Node `node` of a version larger than the cache, whose content is read from the
    /// spans of its tar stream from offset `at` (see `streamed.rs`), against `checks.bin`.
    Streamed {
        version: Arc<CachedVersion>,
        ino: Ino,
        node: u32,
        range: Range,
        at: u64,
    },
}

/// A file of a version whose first pass is running ([`Check::Passing`]).
pub(super) struct InPass {
    pub ino: Ino,
    pub node: u32,
    pub sums: Arc<[u32]>,
    pub at: u64,
    pub range: Range,
    pub view: Arc<PassView>,
    pub flight: Interest,
}

/// What [`OpenFile::read`] read: the bytes, the content file they came from, and the range
/// of that file (offset, length) whose pages to drop from the page cache now, if any.
pub(super) type Read<'a> = (Bytes, &'a File, Option<(u64, u64)>);

/// A file opened by the kernel: `size` bytes at `offset` of a content file (the version's
/// pack, or a file of its own at offset 0). The content file itself is opened on the first
/// read: a file whose pages the kernel already caches is then opened and closed without a
/// system call. Every read of a version's file goes through the cache's checking reader
/// ([`Verified`]).
pub(super) struct OpenFile {
    path: PathBuf,
    file: OnceLock<Arc<File>>,
    /// A version's content file as the version keeps it open (with its direct opening).
    opened: OnceLock<Arc<OpenContent>>,
    offset: u64,
    size: u64,
    check: Check,
    /// A read found the content damaged: the version was dropped, later reads of this
    /// handle are served from the version downloaded again.
    damaged: AtomicBool,
    _pin: Pin,
}

impl OpenFile {
    /// The content at `offset` of the file at `path`, opened at its first read.
    pub fn at(path: PathBuf, offset: u64, size: u64, check: Check, pin: Pin) -> OpenFile {
        OpenFile {
            path,
            file: OnceLock::new(),
            opened: OnceLock::new(),
            offset,
            size,
            check,
            damaged: AtomicBool::new(false),
            _pin: pin,
        }
    }

    /// A published file (`f`, node `node` shown as `ino`), already open as `file`.
    pub fn published(file: File, ino: Ino, node: u32, f: &PublishedFile, pin: Pin) -> OpenFile {
        OpenFile {
            path: f.blob.to_path_buf(),
            file: OnceLock::from(Arc::new(file)),
            opened: OnceLock::new(),
            offset: f.offset,
            size: f.size,
            check: Check::Published {
                ino,
                node,
                sums: f.sums.clone(),
            },
            damaged: AtomicBool::new(false),
            _pin: pin,
        }
    }

    /// A file of a version larger than the cache, published by its first pass (`f`, its
    /// `id` [`crate::archive::BlobId::in_stream`]), read from the pass's spans.
    pub fn in_pass(
        ino: Ino,
        node: u32,
        f: &PublishedFile,
        range: Range,
        view: Arc<PassView>,
        flight: Interest,
    ) -> OpenFile {
        OpenFile::at(
            PathBuf::new(),
            f.offset,
            f.size,
            Check::Passing(Box::new(InPass {
                ino,
                node,
                sums: f.sums.clone(),
                at: f.offset,
                range,
                view,
                flight,
            })),
            Pin::Nothing,
        )
    }

    /// A whole file already open, read to its end (which may move: a live run's file).
    pub fn whole(file: File, pin: Pin) -> OpenFile {
        OpenFile {
            path: PathBuf::new(),
            file: OnceLock::from(Arc::new(file)),
            opened: OnceLock::new(),
            offset: 0,
            size: u64::MAX,
            check: Check::Unchecked,
            damaged: AtomicBool::new(false),
            _pin: pin,
        }
    }

    /// The version this file's content belongs to, when it is a complete one.
    pub fn version(&self) -> Option<&Arc<CachedVersion>> {
        match &self.check {
            Check::Version { version, .. } | Check::Streamed { version, .. } => Some(version),
            Check::Published { .. } | Check::Passing(_) | Check::Unchecked => None,
        }
    }

    /// The inode of a version's file.
    pub fn ino(&self) -> Option<Ino> {
        match &self.check {
            Check::Version { ino, .. }
            | Check::Published { ino, .. }
            | Check::Streamed { ino, .. } => Some(*ino),
            Check::Passing(p) => Some(p.ino),
            Check::Unchecked => None,
        }
    }

    /// For a file of a version larger than the cache: its version, where it lies, its
    /// node and the offset of its content in the tar stream.
    pub fn streamed(&self) -> Option<(&Arc<CachedVersion>, &Range, u32, u64)> {
        match &self.check {
            Check::Streamed {
                version,
                range,
                node,
                at,
                ..
            } => Some((version, range, *node, *at)),
            _ => None,
        }
    }

    /// For a file of a version larger than the cache whose first pass is running.
    pub fn passing(&self) -> Option<&InPass> {
        match &self.check {
            Check::Passing(p) => Some(p),
            _ => None,
        }
    }

    /// Whether reads go to the spans of a tar stream (a version larger than the cache).
    pub fn is_in_stream(&self) -> bool {
        matches!(self.check, Check::Streamed { .. } | Check::Passing(_))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_damaged(&self) -> bool {
        self.damaged.load(Ordering::Relaxed)
    }

    pub fn set_damaged(&self) {
        self.damaged.store(true, Ordering::Relaxed);
    }

    /// The content file as the checking reader reads it, or `None` for an unchecked one.
    /// `direct`: whether large reads may bypass the page cache (see `Verified`).
    fn checked<'a>(
        &'a self,
        file: &'a File,
        direct: bool,
    ) -> Result<Option<CheckedFile<'a>>, Damage> {
        let packed = self.size < crate::archive::PACK_MAX;
        let (node, sums) = match &self.check {
            Check::Unchecked => return Ok(None),
            Check::Streamed { .. } | Check::Passing(_) => {
                return Err(Damage(
                    "a file of a version larger than the cache has no content file".into(),
                ))
            }
            Check::Version { version, node, .. } => match &version.checks {
                Some(checks) => (*node, Sums::Stored { checks }),
                None => return Err(Damage("the version has no checksums".into())),
            },
            Check::Published { node, sums, .. } => {
                // A published file is keyed by its content file's identity: no other
                // unpack's file has it while this one is open.
                use std::os::unix::fs::MetadataExt;
                let meta = file
                    .metadata()
                    .map_err(|e| Damage(format!("{}: {e}", self.path.display())))?;
                let source = (1 << 63) | (meta.ino() ^ meta.dev().rotate_left(32));
                (*node, Sums::Known { source, sums })
            }
        };
        let direct = match (&self.check, direct) {
            // Only a complete version's: a file being unpacked is still being written.
            (Check::Version { .. }, true) => self.opened.get().and_then(|o| o.direct()),
            _ => None,
        };
        Ok(Some(CheckedFile {
            file,
            direct,
            path: &self.path,
            base: self.offset,
            size: self.size,
            packed,
            node,
            sums,
        }))
    }

    /// Check the whole content, for a file handed to the kernel for passthrough reads.
    pub fn check_all(&self, verified: &Verified) -> Result<()> {
        let file = self.file().map_err(|e| self.missing(e))?;
        match self.checked(file, false).map_err(FsError::Damaged)? {
            Some(f) => verified.check_all(&f).map_err(FsError::Damaged),
            None => Ok(()),
        }
    }

    /// The error for a content file that cannot be opened: a version's is damaged (it was
    /// deleted under the daemon), a run's is an I/O error.
    fn missing(&self, e: std::io::Error) -> FsError {
        match self.check {
            Check::Unchecked => e.into(),
            Check::Version { .. }
            | Check::Published { .. }
            | Check::Streamed { .. }
            | Check::Passing(_) => {
                FsError::Damaged(Damage(format!("{}: {e}", self.path.display())))
            }
        }
    }

    /// Whether the content is a whole file of its own (what passthrough can be given):
    /// the files not packed, which are those of at least `PACK_MAX` bytes, and whole files.
    pub fn is_whole_file(&self) -> bool {
        self.size >= crate::archive::PACK_MAX && !self.is_in_stream()
    }

    /// Up to `len` bytes at `at` of the content (short only at its end), checked. With
    /// `kernel` (the caller's pages are kept by the kernel, in the mount's own page cache),
    /// also the range of the content file whose pages to drop now, so that what the reader
    /// reads is cached once: a read of a file of its own that continues a sequential stream
    /// goes through the content file's page cache (its read-ahead), and its pages are
    /// dropped behind it a chunk at a time; any other large read bypasses the page cache
    /// (direct I/O), and drops what it read at once (see `cache::ReadStream`).
    pub fn read(&self, at: u64, len: u32, verified: &Verified, kernel: bool) -> Result<Read<'_>> {
        let file = self.file().map_err(|e| self.missing(e))?;
        let from = self.offset.saturating_add(at);
        // Only a complete version's file is kept open with a stream of its own.
        let stream = self.opened.get().filter(|_| kernel).map(|o| &o.stream);
        let sequential = stream.is_some_and(|s| s.continues(from));
        match self
            .checked(file, kernel && !sequential)
            .map_err(FsError::Damaged)?
        {
            Some(f) => {
                let data = verified.read(&f, at, len).map_err(FsError::Damaged)?;
                // The whole units the read checked: what it may have brought into the
                // content file's page cache.
                let (packed, span) = if f.packed {
                    (true, (self.offset, self.size))
                } else {
                    let block = crate::archive::CHECK_BLOCK;
                    let start = at / block * block;
                    let end = at.saturating_add(data.len() as u64).div_ceil(block) * block;
                    (false, (start, end.min(self.size).saturating_sub(start)))
                };
                let drop = match stream {
                    _ if !kernel => None,
                    Some(s) if !packed => s.advance(span, sequential, self.size),
                    _ => Some(span),
                };
                Ok((data, file, drop))
            }
            None => {
                let left = self.size.saturating_sub(at);
                let len = u32::try_from(left).map_or(len, |l| l.min(len));
                let data = Bytes::from(read_at(file, from, len)?);
                let span = (from, data.len() as u64);
                Ok((data, file, kernel.then_some(span)))
            }
        }
    }

    pub fn file(&self) -> std::io::Result<&File> {
        if let Some(f) = self.file.get() {
            return Ok(f);
        }
        let f = match &self.check {
            Check::Version { version, .. } => {
                let opened = version.files.open(&self.path)?;
                let file = opened.file.clone();
                let _ = self.opened.set(opened);
                file
            }
            Check::Streamed { .. } | Check::Passing(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "a file of a version larger than the cache is read from its archive",
                ))
            }
            Check::Published { .. } | Check::Unchecked => Arc::new(File::open(&self.path)?),
        };
        // Two first reads may race; either file will do.
        let _ = self.file.set(f);
        Ok(self.file.get().expect("set just above"))
    }
}

/// An open directory. A listing of storages or versions is taken at `opendir` (it changes
/// over time); a directory inside a version never changes and is listed at the first
/// `readdir` (from its index, entry by entry: see `dir`), which often never comes: the
/// kernel keeps such listings (`FOPEN_CACHE_DIR`) and then answers `readdir` itself, so
/// `find` or `rsync` over a warm version only opens and closes directories.
pub(super) struct DirHandle {
    pub ino: Ino,
    pub listing: OnceLock<Arc<Listing>>,
}

/// The open handles, by number.
#[derive(Default)]
pub(super) struct Handles {
    open: Mutex<HashMap<Fh, Arc<Handle>>>,
    last: AtomicU64,
}

impl Handles {
    pub fn add(&self, h: Handle) -> Fh {
        let fh = Fh(self.last.fetch_add(1, Ordering::Relaxed) + 1);
        self.open.lock().insert(fh, Arc::new(h));
        fh
    }

    pub fn get(&self, fh: Fh) -> Result<Arc<Handle>> {
        self.open.lock().get(&fh).cloned().ok_or(FsError::BadHandle)
    }

    pub fn release(&self, fh: Fh) {
        let handle = self.open.lock().remove(&fh);
        // Closing the file and unpinning the version happen here, outside the lock.
        drop(handle);
    }
}

impl Fs {
    /// Run `f` on the content file behind an open handle (the FUSE adapter hands it to the
    /// kernel for passthrough reads). The kernel then reads the file without the daemon,
    /// so its whole content is checked first: damaged content fails the open (`EIO`) and
    /// drops its version, like a read. Damage that comes after this check is not seen
    /// (doc/SEMANTICS.md, "Cached bytes are checked").
    pub fn with_open_file<R>(&self, fh: Fh, f: impl FnOnce(&File) -> R) -> Result<Option<R>> {
        let handle = self.handles.get(fh)?;
        match &*handle {
            // A packed file shares its content file with others: never handed over.
            Handle::File(open) if open.is_whole_file() => {
                open.check_all(self.cache.verified())
                    .map_err(|e| self.read_failed(open, e))?;
                Ok(open.file().ok().map(f))
            }
            Handle::File(_) => Ok(None),
            Handle::Static(_) | Handle::Dir(_) => Ok(None),
        }
    }
}

/// Backing files registered with the kernel for passthrough reads, by the id the kernel
/// gave each (`Id`). The kernel wants one backing file per inode for as long as any handle
/// of that inode is open, so ids are shared by inode (weakly) and held by handle (strongly),
/// as in fuser's passthrough example: the last handle released drops the id, which
/// unregisters it. Generic over the id so that it can be tested without a kernel.
pub struct Backings<Id> {
    held: Mutex<BackingMap<Id>>,
}

struct BackingMap<Id> {
    by_handle: HashMap<Fh, Arc<Id>>,
    by_inode: HashMap<Ino, Weak<Id>>,
}

impl<Id> Default for Backings<Id> {
    fn default() -> Self {
        Backings {
            held: Mutex::new(BackingMap {
                by_handle: HashMap::new(),
                by_inode: HashMap::new(),
            }),
        }
    }
}

impl<Id> Backings<Id> {
    /// The backing id for handle `fh` of `ino`: the one the inode's other open handles
    /// share, else one made by `register` (`None`: the kernel refused). `register` runs
    /// without the lock held (it opens a file and calls the kernel); if another handle of
    /// the same inode registered one meanwhile, that one is shared and the new one dropped.
    pub fn share(
        &self,
        ino: Ino,
        fh: Fh,
        register: impl FnOnce() -> Option<Id>,
    ) -> Option<Arc<Id>> {
        {
            let mut held = self.held.lock();
            if let Some(id) = held.by_inode.get(&ino).and_then(Weak::upgrade) {
                held.by_handle.insert(fh, id.clone());
                return Some(id);
            }
        }
        let new = Arc::new(register()?);
        let (id, loser) = {
            let mut held = self.held.lock();
            let (id, loser) = match held.by_inode.get(&ino).and_then(Weak::upgrade) {
                Some(theirs) => (theirs, Some(new)),
                None => {
                    held.by_inode.insert(ino, Arc::downgrade(&new));
                    (new, None)
                }
            };
            held.by_handle.insert(fh, id.clone());
            (id, loser)
        };
        // Unregistering the losing id is a kernel call too: outside the lock.
        drop(loser);
        Some(id)
    }

    /// Handle `fh` of `ino` is closed: drop its hold, and the inode's id with the last one.
    pub fn release(&self, ino: Ino, fh: Fh) {
        let released = {
            let mut held = self.held.lock();
            let released = held.by_handle.remove(&fh);
            // Whether the inode's id has no holder left but this one is decided under the
            // lock, so that no open can pick it up between that and the drop below.
            let ours = |w: &Weak<Id>| {
                released
                    .as_ref()
                    .is_some_and(|id| std::ptr::eq(w.as_ptr(), Arc::as_ptr(id)))
            };
            if held
                .by_inode
                .get(&ino)
                .is_some_and(|w| w.strong_count() == usize::from(ours(w)))
            {
                held.by_inode.remove(&ino);
            }
            released
        };
        // Dropping the last hold unregisters the id, a kernel call: outside the lock.
        drop(released);
    }

    /// How many handles hold a backing id, and how many inodes share one (for tests).
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let held = self.held.lock();
        (held.by_handle.len(), held.by_inode.len())
    }
}

/// Up to `size` bytes of `file` at `offset`; short only at end of file.
pub(super) fn read_at(file: &File, offset: u64, size: u32) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; size as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Up to `size` bytes of `data` at `offset`.
pub(super) fn slice_at(data: &[u8], offset: u64, size: u32) -> Vec<u8> {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let end = start.saturating_add(size as usize).min(data.len());
    data[start..end].to_vec()
}

/// Open a blob published during an unpack, if the path still names that blob: the unpack
/// renames blobs when it ends, so another blob could have taken the path by now.
pub(super) fn open_published(f: &PublishedFile) -> Option<File> {
    use std::os::unix::fs::MetadataExt;
    let file = File::open(&f.blob).ok()?;
    let meta = file.metadata().ok()?;
    (meta.dev() == f.id.dev && meta.ino() == f.id.ino).then_some(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A backing id that counts how many of its kind are registered.
    struct Id(u32, Arc<AtomicUsize>);

    impl Drop for Id {
        fn drop(&mut self) {
            self.1.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn register(n: u32, live: &Arc<AtomicUsize>) -> impl FnOnce() -> Option<Id> + '_ {
        move || {
            live.fetch_add(1, Ordering::SeqCst);
            Some(Id(n, live.clone()))
        }
    }

    /// A packed file reads as its own bytes at every offset and length: never a byte of
    /// its neighbours in the pack, short only at its end.
    #[test]
    fn a_packed_file_reads_its_own_bytes_at_every_boundary() {
        let tmp = tempfile::tempdir().unwrap();
        let pack = tmp.path().join("pack");
        std::fs::write(&pack, b"before|content|after").unwrap();
        let (offset, want) = (7u64, b"content");
        let check = |sums: &[u32]| Check::Published {
            ino: Ino(5),
            node: 1,
            sums: sums.into(),
        };
        let sums = [crate::archive::checksum(want)];
        let published = PublishedFile {
            size: 7,
            blob: Arc::from(pack.as_path()),
            offset,
            id: crate::archive::BlobId { dev: 0, ino: 0 },
            packed: true,
            sums: sums.into(),
        };
        let files = [
            OpenFile::at(pack.clone(), offset, 7, check(&sums), Pin::Nothing),
            OpenFile::published(
                File::open(&pack).unwrap(),
                Ino(5),
                1,
                &published,
                Pin::Nothing,
            ),
        ];
        let verified = Verified::default();
        for f in &files {
            for at in 0..=9u64 {
                for len in 0..=9u32 {
                    let (data, _, drop) = f.read(at, len, &verified, true).unwrap();
                    let start = (at as usize).min(want.len());
                    let end = (start + len as usize).min(want.len());
                    assert_eq!(data, &want[start..end], "at {at} len {len}");
                    assert_eq!(drop, Some((offset, 7)), "the whole packed file is read");
                }
            }
            assert!(
                !f.is_whole_file(),
                "a packed file is never handed to the kernel"
            );
        }
        let empty = OpenFile::at(pack.clone(), 20, 0, check(&[0]), Pin::Nothing);
        assert_eq!(empty.read(0, 100, &verified, false).unwrap().0, b"");
        // A neighbour's checksum: the bytes are refused, not served.
        let wrong = OpenFile::at(pack.clone(), 0, 7, check(&sums), Pin::Nothing);
        assert!(matches!(
            wrong.read(0, 1, &verified, false),
            Err(FsError::Damaged(_))
        ));
        let own = OpenFile::at(pack, 0, crate::archive::PACK_MAX, check(&[]), Pin::Nothing);
        assert!(own.is_whole_file());
    }

    #[test]
    fn handles_of_one_inode_share_an_id_until_the_last_is_released() {
        let live = Arc::new(AtomicUsize::new(0));
        let b = Backings::default();
        let a1 = b.share(Ino(10), Fh(1), register(1, &live)).unwrap();
        let a2 = b.share(Ino(10), Fh(2), register(2, &live)).unwrap();
        let other = b.share(Ino(11), Fh(3), register(3, &live)).unwrap();
        assert_eq!((a1.0, a2.0, other.0), (1, 1, 3), "one id per inode");
        assert_eq!(live.load(Ordering::SeqCst), 2);
        drop((a1, a2, other));

        b.release(Ino(10), Fh(1));
        assert_eq!(live.load(Ordering::SeqCst), 2, "fh 2 still holds it");
        b.release(Ino(10), Fh(2));
        assert_eq!(
            live.load(Ordering::SeqCst),
            1,
            "the last handle unregisters it"
        );
        assert_eq!(b.counts(), (1, 1));

        // Opened again: a new registration.
        let again = b.share(Ino(10), Fh(4), register(4, &live)).unwrap();
        assert_eq!(again.0, 4);
        drop(again);
        b.release(Ino(10), Fh(4));
        b.release(Ino(11), Fh(3));
        assert_eq!(live.load(Ordering::SeqCst), 0);
        assert_eq!(b.counts(), (0, 0));
    }

    #[test]
    fn a_refused_registration_holds_nothing() {
        let b: Backings<Id> = Backings::default();
        assert!(b.share(Ino(10), Fh(1), || None).is_none());
        assert_eq!(b.counts(), (0, 0));
        // Releasing a handle that never had an id is harmless.
        b.release(Ino(10), Fh(1));
    }

    /// Two first opens of one inode may both register (the lock is not held across the
    /// kernel call); one id is kept and shared, the other dropped at once.
    #[test]
    fn racing_registrations_keep_one_id() {
        let live = Arc::new(AtomicUsize::new(0));
        let b = Backings::default();
        let inner = b.share(Ino(10), Fh(1), || {
            // Another handle of the inode registers while this one is in the kernel.
            let theirs = b.share(Ino(10), Fh(2), register(2, &live)).unwrap();
            assert_eq!(theirs.0, 2);
            register(1, &live)()
        });
        assert_eq!(inner.unwrap().0, 2, "the id registered first is shared");
        assert_eq!(live.load(Ordering::SeqCst), 1, "the other was dropped");
        b.release(Ino(10), Fh(1));
        b.release(Ino(10), Fh(2));
        assert_eq!(live.load(Ordering::SeqCst), 0);
        assert_eq!(b.counts(), (0, 0));
    }

    #[test]
    fn passthrough_is_for_large_cached_files() {
        let opened = |size, direct_io| OpenedHandle {
            fh: Fh(1),
            direct_io,
            immutable: !direct_io,
            size,
        };
        let cases = [
            (0, false, false),
            (PASSTHROUGH_MIN_SIZE - 1, false, false),
            (PASSTHROUGH_MIN_SIZE, false, true),
            (PASSTHROUGH_MIN_SIZE << 4, false, true),
            (PASSTHROUGH_MIN_SIZE, true, false),
        ];
        for (size, direct_io, want) in cases {
            assert_eq!(
                opened(size, direct_io).wants_passthrough(),
                want,
                "{size} {direct_io}"
            );
        }
    }

    #[test]
    fn handles_are_numbered_from_one_and_checked() {
        let h = Handles::default();
        let a = h.add(Handle::Static(b"a".to_vec()));
        let b = h.add(Handle::Static(b"b".to_vec()));
        assert_eq!((a, b), (Fh(1), Fh(2)));
        assert!(h.get(a).is_ok());
        h.release(a);
        assert!(matches!(h.get(a), Err(FsError::BadHandle)));
        assert!(h.get(b).is_ok());
    }

    #[test]
    fn slices_past_the_end_are_short_or_empty() {
        let cases: [(u64, u32, &[u8]); 5] = [
            (0, 3, b"abc"),
            (1, 10, b"bcdef"),
            (5, 1, b"f"),
            (6, 1, b""),
            (u64::MAX, 1, b""),
        ];
        for (offset, size, want) in cases {
            assert_eq!(slice_at(b"abcdef", offset, size), want, "{offset} {size}");
        }
    }
}
