//! The filesystem: the tree `volumes|artifacts/<name>/{latest,<version-id>}/...` and every
//! operation on it as a plain method returning `Result<_, FsError>`.
//!
//! This module owns the inode table, the metadata listings (names and versions, refreshed
//! after a TTL) and the open file and directory handles. It reaches the network only
//! through [`Remote`] and versions only through the [`Cache`], and never sees fuser's
//! requests or replies, so all of it is testable without a mount (see `tests` below).
//!
//! Progressive availability: the first access to a cold version starts its download in
//! the background ([`Cache::start`]) and does not wait for the end of it. While the archive
//! is unpacked, a lookup of a name already published (a file whose content is complete,
//! or a directory on the way to one) is answered at once, `getattr` of a published node
//! too, and `open` of a published file opens its blob where it was unpacked (the
//! descriptor stays valid across the cache's commit rename and even an eviction). These
//! answers carry a zero TTL so that the kernel asks again and gets the final attributes
//! once the version is complete. Everything else (a name not published yet, `readdir`,
//! `readlink`) waits for the end of the archive, so no partial listing and no partial file
//! is ever served. Inode numbers do not change at the end: published nodes carry the
//! numbers of the finished index.
//!
//! Reads come two ways: through a handle from `open` ([`Fs::read`]), or by inode alone
//! ([`Fs::read_ino`]) when the kernel sends no `OPEN` (the default, see `fuse.rs`). Both
//! find the content the same way (`content`); the second pins the version only for the
//! read, so the cache learns about open files from `/proc` instead (`crate::openfiles`).

mod error;
mod fetch;
mod inode;
mod remote;
mod status;

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::api::{Kind, Storage, Version};
use crate::archive::{blob_path, Index, Node, NodeKind, PublishedKind, PublishedNode};
use crate::cache::{
    Access, Announced, Cache, CacheError, CachedVersion, Flight, Progress, SharedError, VersionKey,
};
pub use error::{FetchError, FsError};
pub use inode::ROOT;
use inode::{InodeTable, Meta, Range, Resolved};
pub use remote::{Remote, RemoteArchive};
use status::Activity;

pub type Result<T, E = FsError> = std::result::Result<T, E>;

/// Attributes of what is inside a version never change: the kernel may keep them this long.
pub const IMMUTABLE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long a name that was just missing may be looked up again at the API before the TTL
/// runs out: a user who pushed a version a moment ago finds it without waiting a whole TTL,
/// and a tool that stats many missing names does not flood the API.
const MISS_REFRESH_AFTER: Duration = Duration::from_secs(2);

/// Minimum length of a version id prefix that resolves (same rule as the API's).
const MIN_PREFIX: usize = 8;

#[derive(Debug, Clone)]
pub struct FsConfig {
    /// How long names and version lists are trusted before they are fetched again.
    pub metadata_ttl: Duration,
    /// How often a running download logs its progress.
    pub progress_every: Duration,
    /// First line of the status file (what is mounted where).
    pub label: String,
    /// Owner shown for every inode (the mounting user).
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Directory,
    RegularFile,
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileKind,
    pub size: u64,
    pub blocks: u64,
    pub perm: u16,
    pub nlink: u32,
    pub mtime: SystemTime,
    pub uid: u32,
    pub gid: u32,
}

/// An answer to `lookup`/`getattr`: attributes and how long the kernel may keep them.
#[derive(Debug, Clone)]
pub struct Entry {
    pub attr: Attr,
    pub ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct DirItem {
    pub name: OsString,
    pub entry: Entry,
}

/// `statfs` figures.
#[derive(Debug, Clone)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// An open file handle and how the kernel should cache its pages.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub fh: u64,
    /// Generated content (the status file): no page cache, reads go to the daemon.
    pub direct_io: bool,
    /// Inside a version: the content (or listing) never changes, the kernel may cache it.
    pub immutable: bool,
    /// File size (0 for directories).
    pub size: u64,
}

/// What keeps the version of an open file from being evicted.
#[allow(dead_code)] // Held only for what holding it does: the fields are never read.
enum Pin {
    Version(Arc<CachedVersion>),
    /// A file opened while its version was unpacked: the flight keeps its outcome, so once
    /// the version is complete the flight pins it. (The descriptor alone keeps the content
    /// readable in any case, across the commit rename and a failed download.)
    Flight(Arc<Flight>),
}

/// A version as far as it is available now.
enum Available {
    Ready(Arc<CachedVersion>),
    /// Being downloaded: parts of it may be published already.
    Pending(Arc<Flight>),
}

/// The name of the hidden directory that holds the status file.
pub const STATUS_DIR: &str = ".vm0fs";

enum Handle {
    /// Generated content, fixed at `open`.
    Static(Vec<u8>),
    /// An open file: its content file and a pin on its version.
    File(OpenFile),
    /// A directory listing, built once per handle so that a listing read in many
    /// `readdir` calls is consistent.
    Dir(DirHandle),
}

/// How long one reader (a pid) is shown the same status text. Without `OPEN`, the file has
/// no handle to hold a copy: the kernel learns the size at a `LOOKUP` or `GETATTR` and then
/// reads pages, asking for the attributes again before each `read(2)`. So that the size it
/// learnt and the bytes it reads come from one text (a `cat` never prints the start of one
/// and the end of another), each reader keeps its text this long.
const STATUS_HOLD: Duration = Duration::from_secs(1);

/// How many readers' status texts are kept (a reader beyond them gets a fresh text).
const STATUS_READERS: std::num::NonZeroUsize = std::num::NonZeroUsize::new(64).expect("not zero");

/// One status text, as shown to one reader.
#[derive(Clone)]
struct StatusText {
    text: Arc<Vec<u8>>,
    made: Instant,
    /// Its mtime: the kernel drops cached pages of the file when this changes.
    at: SystemTime,
}

/// An open directory. A listing of storages or versions is taken at `opendir` (it changes
/// over time); a directory inside a version never changes and is listed at the first
/// `readdir`, which often never comes: the kernel keeps such listings (`FOPEN_CACHE_DIR`)
/// and then answers `readdir` itself, so `find` or `rsync` over a warm version only opens
/// and closes directories.
struct DirHandle {
    ino: u64,
    listing: OnceLock<Arc<Vec<DirItem>>>,
}

/// What a file's content is read from.
enum Content {
    /// The status file: generated.
    Status,
    /// A file of a version, and its size.
    File(OpenFile, u64),
}

/// A file opened by the kernel. The content file itself is opened on the first read: a file
/// whose pages the kernel already caches is then opened and closed without a system call.
struct OpenFile {
    path: std::path::PathBuf,
    file: OnceLock<File>,
    _pin: Pin,
}

impl OpenFile {
    fn file(&self) -> std::io::Result<&File> {
        if let Some(f) = self.file.get() {
            return Ok(f);
        }
        let f = File::open(&self.path)?;
        // Two first reads may race; either file will do.
        let _ = self.file.set(f);
        Ok(self.file.get().expect("set just above"))
    }
}

struct Listing<T> {
    fetched: Instant,
    data: Arc<T>,
}

type StorageMap = BTreeMap<String, Storage>;

/// A listing: the storages of a kind (`None`) or the versions of one storage.
type ListingKey = (Kind, Option<String>);

#[derive(Default)]
struct MetaState {
    storages: HashMap<Kind, Listing<StorageMap>>,
    versions: HashMap<(Kind, String), Listing<Vec<Version>>>,
}

/// The filesystem. Every method takes `&self`: the FUSE session is multi-threaded.
pub struct Fs {
    remote: Arc<dyn Remote>,
    cache: Cache,
    config: FsConfig,
    started: SystemTime,
    inodes: Mutex<InodeTable>,
    meta: Mutex<MetaState>,
    /// One lock per listing, so that concurrent misses fetch a listing once.
    fetch_locks: Mutex<HashMap<ListingKey, Arc<Mutex<()>>>>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    /// The status file's text per reader (pid), see [`STATUS_HOLD`].
    status: Mutex<lru::LruCache<u32, StatusText>>,
    activity: Arc<Activity>,
}

fn dir_attr_perm() -> u16 {
    0o755
}

impl Fs {
    pub fn new(remote: Arc<dyn Remote>, cache: Cache, config: FsConfig) -> Fs {
        Fs {
            remote,
            cache,
            config,
            started: SystemTime::now(),
            inodes: Mutex::new(InodeTable::default()),
            meta: Mutex::new(MetaState::default()),
            fetch_locks: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            status: Mutex::new(lru::LruCache::new(STATUS_READERS)),
            activity: Arc::new(Activity::default()),
        }
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    // ----- operations -------------------------------------------------------------------

    /// `reader`: the pid asking, if any (see [`STATUS_HOLD`]).
    pub fn lookup(&self, parent: u64, name: &OsStr, reader: Option<u32>) -> Result<Entry> {
        let resolved = self.resolve(parent)?;
        match resolved {
            Resolved::Meta(Meta::Root) => {
                if name == STATUS_DIR {
                    return self.meta_entry(Meta::StatusDir);
                }
                let kind = name
                    .to_str()
                    .and_then(Kind::from_plural)
                    .ok_or(FsError::NotFound)?;
                self.meta_entry(Meta::KindDir(kind))
            }
            Resolved::Meta(Meta::StatusDir) if name == "status" => {
                let ino = self.inodes.lock().meta_ino(Meta::StatusFile);
                Ok(self.status_entry(ino, reader))
            }
            Resolved::Meta(Meta::StatusDir) => Err(FsError::NotFound),
            Resolved::Meta(Meta::StatusFile) => Err(FsError::NotDir),
            Resolved::Meta(Meta::KindDir(kind)) => {
                let name = name.to_str().ok_or(FsError::NotFound)?;
                self.find_storage(kind, name)?;
                self.meta_entry(Meta::Storage {
                    kind,
                    name: name.to_string(),
                })
            }
            Resolved::Meta(Meta::Storage {
                kind,
                name: storage,
            }) => {
                let name = name.to_str().ok_or(FsError::NotFound)?;
                self.lookup_in_storage(kind, &storage, name)
            }
            Resolved::Meta(Meta::Version {
                kind,
                name: storage,
                version,
            }) => {
                let (range, now) = self.version_now(kind, &storage, &version)?;
                self.lookup_content(&range, now, 0, name)
            }
            Resolved::Content { range, node } => {
                let now = self.version_now_of(&range)?;
                self.lookup_content(&range, now, node, name)
            }
            Resolved::Meta(Meta::Latest { .. } | Meta::PrefixLink { .. }) => Err(FsError::NotDir),
        }
    }

    /// The text of `MOUNT/.vm0fs/status`.
    pub fn status_text(&self) -> String {
        let snap = self.cache.snapshot();
        let root = self.cache.root().display().to_string();
        let inodes = self.inodes.lock();
        self.activity.render(&self.config.label, &snap, &root, |k| {
            inodes.storage_of(k.kind, &k.id)
        })
    }

    /// `reader`: the pid asking, if any (see [`STATUS_HOLD`]).
    pub fn getattr(&self, ino: u64, reader: Option<u32>) -> Result<Entry> {
        match self.resolve(ino)? {
            Resolved::Meta(Meta::StatusFile) => Ok(self.status_entry(ino, reader)),
            Resolved::Meta(m) => self.meta_entry(m),
            Resolved::Content { range, node } => self.content_getattr(&range, node),
        }
    }

    /// The attributes of node `node` of a version: as published while it is being
    /// unpacked, else from the complete version.
    fn content_getattr(&self, range: &Range, node: u32) -> Result<Entry> {
        let v = match self.version_now_of(range)? {
            Available::Ready(v) => v,
            Available::Pending(flight) => match flight.node(node) {
                Progress::Published(attrs) => return Ok(self.published_entry(range, node, &attrs)),
                Progress::Done(r) => self.finished(&range.name, &flight, r)?,
            },
        };
        if v.index.nodes.get(node as usize).is_none() {
            return Err(FsError::NotFound);
        }
        Ok(self.content_entry(range, &v.index, node))
    }

    /// Look up `name` in directory node `dir` of a version: from what is published while it
    /// is being unpacked, else (a name not published yet) from the complete version.
    fn lookup_content(
        &self,
        range: &Range,
        now: Available,
        dir: u32,
        name: &OsStr,
    ) -> Result<Entry> {
        let v = match now {
            Available::Ready(v) => v,
            Available::Pending(flight) => match flight.lookup(dir, name.as_bytes()) {
                Progress::Published((node, attrs)) => {
                    return Ok(self.published_entry(range, node, &attrs))
                }
                Progress::Done(r) => self.finished(&range.name, &flight, r)?,
            },
        };
        match v.index.nodes.get(dir as usize).map(|n| &n.kind) {
            Some(NodeKind::Dir { .. }) => {}
            Some(_) => return Err(FsError::NotDir),
            None => return Err(FsError::NotFound),
        }
        let child = v
            .index
            .lookup(dir, name.as_bytes())
            .ok_or(FsError::NotFound)?;
        Ok(self.content_entry(range, &v.index, child))
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        match self.resolve(ino)? {
            Resolved::Meta(Meta::Latest { kind, name }) => {
                let storage = self.find_storage(kind, &name)?;
                storage
                    .current_version_id
                    .map(String::into_bytes)
                    .ok_or(FsError::NotFound)
            }
            Resolved::Meta(Meta::PrefixLink { version, .. }) => Ok(version.into_bytes()),
            Resolved::Content { range, node } => {
                let v = self.version_of(&range)?;
                match &v
                    .index
                    .nodes
                    .get(node as usize)
                    .ok_or(FsError::NotFound)?
                    .kind
                {
                    NodeKind::Symlink { target } => Ok(target.clone()),
                    _ => Err(FsError::NotSymlink),
                }
            }
            Resolved::Meta(_) => Err(FsError::NotSymlink),
        }
    }

    /// Open a file for reading. Any write access is `EROFS`.
    pub fn open(&self, ino: u64, flags: i32) -> Result<Opened> {
        let write_flags =
            libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC | libc::O_APPEND | libc::O_CREAT;
        if flags & write_flags != 0 {
            return Err(FsError::ReadOnly);
        }
        match self.content(ino)? {
            Content::Status => {
                let fh = self.add_handle(Handle::Static(self.status_text().into_bytes()));
                Ok(Opened {
                    fh,
                    direct_io: true,
                    immutable: false,
                    size: 0,
                })
            }
            Content::File(file, size) => Ok(Opened {
                fh: self.add_handle(Handle::File(file)),
                direct_io: false,
                immutable: true,
                size,
            }),
        }
    }

    /// Where the content of file `ino` comes from, with its version pinned.
    fn content(&self, ino: u64) -> Result<Content> {
        let (range, node) = match self.resolve(ino)? {
            Resolved::Content { range, node } => (range, node),
            Resolved::Meta(Meta::StatusFile) => return Ok(Content::Status),
            Resolved::Meta(Meta::Latest { .. } | Meta::PrefixLink { .. }) => {
                return Err(FsError::NotFound)
            }
            Resolved::Meta(_) => return Err(FsError::IsDir),
        };
        let v = match self.version_now_of(&range)? {
            Available::Ready(v) => v,
            Available::Pending(flight) => match flight.node(node) {
                Progress::Published(attrs) => match &attrs.kind {
                    PublishedKind::Dir => return Err(FsError::IsDir),
                    PublishedKind::File(f) => match open_published(f) {
                        Some(file) => {
                            let open = OpenFile {
                                path: Default::default(),
                                file: OnceLock::from(file),
                                _pin: Pin::Flight(flight.clone()),
                            };
                            return Ok(Content::File(open, f.size));
                        }
                        // The unpack ended in the meantime and moved the blob: the
                        // complete version has it.
                        None => self.finished(&range.name, &flight, flight.wait())?,
                    },
                },
                Progress::Done(r) => self.finished(&range.name, &flight, r)?,
            },
        };
        let (blob, size) = match &v
            .index
            .nodes
            .get(node as usize)
            .ok_or(FsError::NotFound)?
            .kind
        {
            NodeKind::File { blob, size } => (*blob, *size),
            NodeKind::Dir { .. } => return Err(FsError::IsDir),
            NodeKind::Symlink { .. } => return Err(FsError::NotFound),
        };
        let open = OpenFile {
            path: blob_path(&v.dir, blob),
            file: OnceLock::new(),
            _pin: Pin::Version(v),
        };
        Ok(Content::File(open, size))
    }

    /// Read up to `size` bytes at `offset` of an open handle; short only at end of file.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        match &*self.handle(fh)? {
            Handle::File(f) => read_at(f.file()?, offset, size),
            Handle::Static(data) => Ok(slice_at(data, offset, size)),
            Handle::Dir(_) => Err(FsError::IsDir),
        }
    }

    /// Read up to `size` bytes at `offset` of file `ino`, with no handle: when the kernel
    /// sends no `OPEN` (see `fuse.rs`). The version is pinned for the read and its content
    /// file opened for it; a version evicted since an earlier read is fetched again.
    /// `reader` is the pid reading (see [`STATUS_HOLD`]).
    pub fn read_ino(&self, ino: u64, offset: u64, size: u32, reader: u32) -> Result<Vec<u8>> {
        match self.content(ino)? {
            Content::Status => Ok(slice_at(&self.status_for(Some(reader)).text, offset, size)),
            Content::File(f, _) => {
                let file = f.file()?;
                let data = read_at(file, offset, size)?;
                // The kernel keeps what it read in the mount's own page cache: drop the
                // blob's copy, so that a file read through the mount is cached once.
                // SAFETY: posix_fadvise only reads its arguments; `file` is open.
                unsafe {
                    libc::posix_fadvise(
                        file.as_raw_fd(),
                        offset as libc::off_t,
                        data.len() as libc::off_t,
                        libc::POSIX_FADV_DONTNEED,
                    );
                }
                Ok(data)
            }
        }
    }

    /// The status text `reader` is shown: the one made for it less than [`STATUS_HOLD`]
    /// ago, else a new one (which it keeps). Without a reader, always a new one.
    fn status_for(&self, reader: Option<u32>) -> StatusText {
        if let Some(pid) = reader {
            if let Some(t) = self.status.lock().get(&pid) {
                if t.made.elapsed() < STATUS_HOLD {
                    return t.clone();
                }
            }
        }
        let t = StatusText {
            text: Arc::new(self.status_text().into_bytes()),
            made: Instant::now(),
            at: SystemTime::now(),
        };
        if let Some(pid) = reader {
            self.status.lock().put(pid, t.clone());
        }
        t
    }

    /// The status file's attributes as `reader` sees them. They are never cached, and the
    /// size and mtime are those of the text its reads will get: a new text has a new mtime,
    /// which makes the kernel drop the pages it holds of an older one
    /// (`FUSE_AUTO_INVAL_DATA`, where it sends no `OPEN`; else the file is opened with
    /// direct I/O).
    fn status_entry(&self, ino: u64, reader: Option<u32>) -> Entry {
        let t = self.status_for(reader);
        Entry {
            attr: self.attr(
                ino,
                FileKind::RegularFile,
                t.text.len() as u64,
                0o444,
                1,
                t.at,
            ),
            ttl: Duration::ZERO,
        }
    }

    /// Snapshot a directory's listing (`.` and `..` included) into a handle.
    pub fn opendir(&self, ino: u64) -> Result<Opened> {
        let (immutable, listing) = match self.resolve(ino)? {
            // A version's root is always a directory.
            Resolved::Meta(Meta::Version { .. }) => (true, OnceLock::new()),
            Resolved::Content { range, node } => {
                if self.content_getattr(&range, node)?.attr.kind != FileKind::Directory {
                    return Err(FsError::NotDir);
                }
                (true, OnceLock::new())
            }
            Resolved::Meta(_) => (false, OnceLock::from(Arc::new(self.list_dir(ino)?))),
        };
        let fh = self.add_handle(Handle::Dir(DirHandle { ino, listing }));
        Ok(Opened {
            fh,
            direct_io: false,
            immutable,
            size: 0,
        })
    }

    /// The entries of an open directory from position `offset` on.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Arc<Vec<DirItem>>> {
        let _ = offset;
        match &*self.handle(fh)? {
            Handle::Dir(d) => {
                if let Some(items) = d.listing.get() {
                    return Ok(items.clone());
                }
                let items = Arc::new(self.list_dir(d.ino)?);
                // Two first readdirs may race; both lists are the same.
                Ok(d.listing.get_or_init(|| items).clone())
            }
            Handle::File(_) | Handle::Static(_) => Err(FsError::NotDir),
        }
    }

    /// Run `f` on the content file behind an open handle (the FUSE adapter hands it to the
    /// kernel for passthrough reads).
    pub fn with_open_file<R>(&self, fh: u64, f: impl FnOnce(&File) -> R) -> Option<R> {
        match &*self.handle(fh).ok()? {
            Handle::File(open) => open.file().ok().map(f),
            Handle::Static(_) | Handle::Dir(_) => None,
        }
    }

    /// Drop a file or directory handle (and the pin it holds).
    pub fn release(&self, fh: u64) {
        self.handles.lock().remove(&fh);
    }

    pub fn statfs(&self) -> StatFs {
        let (budget, used) = self.cache.usage();
        let bsize = 4096u64;
        StatFs {
            blocks: budget / bsize,
            bfree: budget.saturating_sub(used) / bsize,
            // Room left in the cache; nothing is writable (the mount is read-only), but
            // `df` reads "available" as what is left, and 100% full would alarm for nothing.
            bavail: budget.saturating_sub(used) / bsize,
            files: self.inodes.lock().len(),
            ffree: 0,
            bsize: bsize as u32,
            namelen: 255,
        }
    }

    /// `access(2)`: the mount never grants write access; read and search follow the modes
    /// (the kernel checks them itself with `default_permissions`).
    pub fn access(&self, ino: u64, write: bool) -> Result<()> {
        self.resolve(ino)?;
        if write {
            return Err(FsError::ReadOnly);
        }
        Ok(())
    }

    /// The names of the extended attributes of `ino`, NUL-terminated, as `listxattr` wants.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for (name, _) in self.xattrs(ino)? {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        // `ls -l` asks every entry for its SELinux label, and the kernel caches no answer
        // of a FUSE file system. "Not supported" (rather than "no such attribute") is
        // the truth for these namespaces, and `ls` remembers it for the whole device, so
        // a listing costs one such round trip instead of one per entry.
        let bytes = name.as_encoded_bytes();
        if bytes.starts_with(b"security.") || bytes.starts_with(b"trusted.") {
            return Err(FsError::NotSupported);
        }
        // Other names (ACLs included) are answered without resolving anything.
        let name = name
            .to_str()
            .filter(|n| n.starts_with("user.vm0."))
            .ok_or(FsError::NoAttr)?;
        self.xattrs(ino)?
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.into_bytes())
            .ok_or(FsError::NoAttr)
    }

    /// `user.vm0.*` attributes: what the API says of a storage or a version, so that
    /// `getfattr -d` answers "where does this come from" without another tool.
    fn xattrs(&self, ino: u64) -> Result<Vec<(&'static str, String)>> {
        let mut out = Vec::new();
        match self.resolve(ino)? {
            Resolved::Meta(Meta::Storage { kind, name }) => {
                let s = self.find_storage(kind, &name)?;
                out.push(("user.vm0.kind", kind.singular().to_string()));
                out.push(("user.vm0.id", s.id));
                out.push(("user.vm0.name", s.name));
                if let Some(v) = s.current_version_id {
                    out.push(("user.vm0.current_version_id", v));
                }
                out.push(("user.vm0.created_at", format_time(s.created_at)));
                out.push(("user.vm0.updated_at", format_time(s.updated_at)));
            }
            Resolved::Meta(Meta::Version {
                kind,
                name,
                version,
            }) => {
                let s = self.find_storage(kind, &name)?;
                let v = self.find_version(kind, &name, &version)?;
                out.push(("user.vm0.kind", kind.singular().to_string()));
                out.push(("user.vm0.id", s.id));
                out.push(("user.vm0.name", s.name));
                out.push(("user.vm0.version_id", v.id));
                out.push(("user.vm0.created_at", format_time(v.created_at)));
                if let Some(by) = v.created_by {
                    out.push(("user.vm0.created_by", by));
                }
                if let Some(m) = v.message {
                    out.push(("user.vm0.message", m));
                }
                out.push(("user.vm0.size", v.size.to_string()));
                out.push(("user.vm0.file_count", v.file_count.to_string()));
            }
            _ => {}
        }
        Ok(out)
    }

    // ----- the tree -------------------------------------------------------------------

    fn resolve(&self, ino: u64) -> Result<Resolved> {
        self.inodes.lock().resolve(ino).ok_or(FsError::NotFound)
    }

    fn lookup_in_storage(&self, kind: Kind, storage: &str, name: &str) -> Result<Entry> {
        if name == "latest" {
            let s = self.find_storage(kind, storage)?;
            if s.current_version_id.is_none() {
                return Err(FsError::NotFound);
            }
            return self.meta_entry(Meta::Latest {
                kind,
                name: storage.to_string(),
            });
        }
        if !is_hex(name) || name.len() < MIN_PREFIX || name.len() > 64 {
            return Err(FsError::NotFound);
        }
        let version = self.find_version(kind, storage, name)?;
        if version.id == name {
            self.meta_entry(Meta::Version {
                kind,
                name: storage.to_string(),
                version: version.id,
            })
        } else {
            self.meta_entry(Meta::PrefixLink {
                kind,
                name: storage.to_string(),
                version: version.id,
            })
        }
    }

    fn meta_entry(&self, m: Meta) -> Result<Entry> {
        let ttl = self.config.metadata_ttl;
        let dir = |ino, mtime| self.attr(ino, FileKind::Directory, 4096, dir_attr_perm(), 2, mtime);
        let ino = self.inodes.lock().meta_ino(m.clone());
        let entry = match m {
            Meta::Root | Meta::KindDir(_) => Entry {
                attr: dir(ino, self.started),
                ttl,
            },
            Meta::StatusDir => Entry {
                attr: self.attr(ino, FileKind::Directory, 0, 0o555, 2, self.started),
                ttl,
            },
            Meta::StatusFile => return Ok(self.status_entry(ino, None)),
            Meta::Storage { kind, name } => {
                let s = self.find_storage(kind, &name)?;
                Entry {
                    attr: dir(ino, s.updated_at),
                    ttl,
                }
            }
            Meta::Latest { kind, name } => {
                let s = self.find_storage(kind, &name)?;
                let target = s.current_version_id.ok_or(FsError::NotFound)?;
                Entry {
                    attr: self.attr(
                        ino,
                        FileKind::Symlink,
                        target.len() as u64,
                        0o777,
                        1,
                        s.updated_at,
                    ),
                    ttl,
                }
            }
            Meta::PrefixLink {
                kind,
                name,
                version,
            } => {
                let v = self.find_version(kind, &name, &version)?;
                Entry {
                    attr: self.attr(
                        ino,
                        FileKind::Symlink,
                        version.len() as u64,
                        0o777,
                        1,
                        v.created_at,
                    ),
                    ttl: IMMUTABLE_TTL,
                }
            }
            Meta::Version {
                kind,
                name,
                version,
            } => {
                // A resident version shows its root as unpacked (an archive may carry an
                // entry for "./"); a cold one is described from its metadata alone, so that
                // listing versions never downloads them.
                if let Some(v) = self.cache.peek(&VersionKey::new(kind, &version)) {
                    let range = self.inodes.lock().range(kind, &name, &version);
                    return Ok(self.content_entry(&range, &v.index, 0));
                }
                // Until it is unpacked, its link count (and an archive's own "./" entry) are
                // unknown: keep the kernel's copy short-lived so it picks up the real ones.
                let v = self.find_version(kind, &name, &version)?;
                let secs = v
                    .created_at
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let mtime = UNIX_EPOCH + Duration::from_secs(secs);
                Entry {
                    attr: self.attr(ino, FileKind::Directory, 4096, dir_attr_perm(), 2, mtime),
                    ttl,
                }
            }
        };
        Ok(entry)
    }

    /// The entry of a node published while its version is unpacked. Zero TTL: a directory's
    /// attributes may still change, and a file's name may be taken over by a later member
    /// of the archive, so the kernel must ask again (and gets the final answer once the
    /// version is complete).
    fn published_entry(&self, range: &Range, node: u32, p: &PublishedNode) -> Entry {
        let ino = range.ino(node);
        let mtime = to_system_time(p.mtime_sec, p.mtime_nsec);
        let attr = match &p.kind {
            PublishedKind::Dir => self.attr(ino, FileKind::Directory, 4096, p.perm, p.nlink, mtime),
            PublishedKind::File(f) => {
                self.attr(ino, FileKind::RegularFile, f.size, p.perm, p.nlink, mtime)
            }
        };
        Entry {
            attr,
            ttl: Duration::ZERO,
        }
    }

    fn content_entry(&self, range: &Range, index: &Index, node: u32) -> Entry {
        let ino = range.ino(node);
        let n: &Node = &index.nodes[node as usize];
        let mtime = to_system_time(n.mtime_sec, n.mtime_nsec);
        let attr = match &n.kind {
            NodeKind::Dir { .. } => {
                self.attr(ino, FileKind::Directory, 4096, n.perm, n.nlink, mtime)
            }
            NodeKind::File { size, .. } => {
                self.attr(ino, FileKind::RegularFile, *size, n.perm, n.nlink, mtime)
            }
            NodeKind::Symlink { target } => self.attr(
                ino,
                FileKind::Symlink,
                target.len() as u64,
                0o777,
                n.nlink,
                mtime,
            ),
        };
        Entry {
            attr,
            ttl: IMMUTABLE_TTL,
        }
    }

    fn attr(
        &self,
        ino: u64,
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

    fn list_dir(&self, ino: u64) -> Result<Vec<DirItem>> {
        let mut items = Vec::new();
        let here = self.getattr(ino, None)?;
        if here.attr.kind != FileKind::Directory {
            return Err(FsError::NotDir);
        }
        let item = |name: &[u8], entry: Entry| DirItem {
            name: OsString::from_vec(name.to_vec()),
            entry,
        };
        match self.resolve(ino)? {
            Resolved::Meta(Meta::Root) => {
                items.push(item(b".", here.clone()));
                items.push(item(b"..", here));
                for kind in Kind::ALL {
                    items.push(item(
                        kind.plural().as_bytes(),
                        self.meta_entry(Meta::KindDir(kind))?,
                    ));
                }
                items.push(item(
                    STATUS_DIR.as_bytes(),
                    self.meta_entry(Meta::StatusDir)?,
                ));
            }
            Resolved::Meta(Meta::StatusDir) => {
                items.push(item(b".", here));
                items.push(item(b"..", self.meta_entry(Meta::Root)?));
                items.push(item(b"status", self.meta_entry(Meta::StatusFile)?));
            }
            Resolved::Meta(Meta::KindDir(kind)) => {
                items.push(item(b".", here));
                items.push(item(b"..", self.meta_entry(Meta::Root)?));
                let storages = self.storages(kind, None)?;
                for (name, s) in storages.iter() {
                    let ino = self.inodes.lock().meta_ino(Meta::Storage {
                        kind,
                        name: name.clone(),
                    });
                    let attr = self.attr(
                        ino,
                        FileKind::Directory,
                        0,
                        dir_attr_perm(),
                        2,
                        s.updated_at,
                    );
                    items.push(item(
                        name.as_bytes(),
                        Entry {
                            attr,
                            ttl: self.config.metadata_ttl,
                        },
                    ));
                }
            }
            Resolved::Meta(Meta::Storage { kind, name }) => {
                items.push(item(b".", here));
                items.push(item(b"..", self.meta_entry(Meta::KindDir(kind))?));
                let storage = self.find_storage(kind, &name)?;
                if storage.current_version_id.is_some() {
                    items.push(item(
                        b"latest",
                        self.meta_entry(Meta::Latest {
                            kind,
                            name: name.clone(),
                        })?,
                    ));
                }
                let versions = self.versions(kind, &name, None)?;
                for v in versions.iter() {
                    let version = v.id.clone();
                    // One entry that cannot be described must not hide the others.
                    match self.meta_entry(Meta::Version {
                        kind,
                        name: name.clone(),
                        version,
                    }) {
                        Ok(entry) => items.push(item(v.id.as_bytes(), entry)),
                        Err(e) => {
                            tracing::debug!(storage = %name, version = %v.id, error = %e, "version left out of the listing")
                        }
                    }
                }
            }
            Resolved::Meta(Meta::Version {
                kind,
                name,
                version,
            }) => {
                let (range, v) = self.load_version(kind, &name, &version)?;
                items.push(item(b".", self.content_entry(&range, &v.index, 0)));
                items.push(item(b"..", self.meta_entry(Meta::Storage { kind, name })?));
                self.push_children(&mut items, &range, &v.index, 0);
            }
            Resolved::Content { range, node } => {
                let v = self.version_of(&range)?;
                let parent = match v.index.nodes.get(node as usize).map(|n| &n.kind) {
                    Some(NodeKind::Dir { parent, .. }) => *parent,
                    Some(_) => return Err(FsError::NotDir),
                    None => return Err(FsError::NotFound),
                };
                items.push(item(b".", self.content_entry(&range, &v.index, node)));
                let parent_entry = if parent == 0 {
                    self.getattr(range.root, None)?
                } else {
                    self.content_entry(&range, &v.index, parent)
                };
                items.push(item(b"..", parent_entry));
                self.push_children(&mut items, &range, &v.index, node);
            }
            Resolved::Meta(Meta::Latest { .. } | Meta::PrefixLink { .. } | Meta::StatusFile) => {
                return Err(FsError::NotDir)
            }
        }
        Ok(items)
    }

    fn push_children(&self, items: &mut Vec<DirItem>, range: &Range, index: &Index, node: u32) {
        if let NodeKind::Dir { entries, .. } = &index.nodes[node as usize].kind {
            items.reserve(entries.len());
            for e in entries {
                items.push(DirItem {
                    name: OsString::from_vec(e.name.clone()),
                    entry: self.content_entry(range, index, e.node),
                });
            }
        }
    }

    // ----- metadata -------------------------------------------------------------------

    fn fetch_lock(&self, key: ListingKey) -> Arc<Mutex<()>> {
        self.fetch_locks.lock().entry(key).or_default().clone()
    }

    /// The storages of a kind, fetched if the listing is older than `max_age` (default: the
    /// metadata TTL). A failed refresh serves the previous listing when there is one.
    fn storages(&self, kind: Kind, max_age: Option<Duration>) -> Result<Arc<StorageMap>> {
        let max_age = max_age.unwrap_or(self.config.metadata_ttl);
        let fresh = |st: &MetaState| {
            st.storages
                .get(&kind)
                .filter(|l| l.fetched.elapsed() < max_age)
                .map(|l| l.data.clone())
        };
        if let Some(d) = fresh(&self.meta.lock()) {
            return Ok(d);
        }
        let lock = self.fetch_lock((kind, None));
        let _guard = lock.lock();
        if let Some(d) = fresh(&self.meta.lock()) {
            return Ok(d);
        }
        match self.remote.list_storages(kind) {
            Ok(list) => {
                let map: StorageMap = list
                    .into_iter()
                    .filter_map(|s| sane_storage(kind, s))
                    .map(|s| (s.name.clone(), s))
                    .collect();
                let data = Arc::new(map);
                self.meta.lock().storages.insert(
                    kind,
                    Listing {
                        fetched: Instant::now(),
                        data: data.clone(),
                    },
                );
                Ok(data)
            }
            Err(e) => {
                let stale = self.meta.lock().storages.get(&kind).map(|l| l.data.clone());
                match stale {
                    Some(d) if !e.is_auth() => {
                        tracing::warn!(kind = kind.plural(), error = %e, "refreshing the list failed; serving the previous one");
                        Ok(d)
                    }
                    _ => {
                        tracing::warn!(kind = kind.plural(), error = %e, "listing failed");
                        self.activity
                            .error(format!("listing {}: {e}", kind.plural()));
                        Err(e.into())
                    }
                }
            }
        }
    }

    fn find_storage(&self, kind: Kind, name: &str) -> Result<Storage> {
        if let Some(s) = self.storages(kind, None)?.get(name) {
            return Ok(s.clone());
        }
        // Not in a listing younger than the TTL: look again once, in case it was just made.
        self.storages(kind, Some(MISS_REFRESH_AFTER))?
            .get(name)
            .cloned()
            .ok_or(FsError::NotFound)
    }

    fn versions(
        &self,
        kind: Kind,
        name: &str,
        max_age: Option<Duration>,
    ) -> Result<Arc<Vec<Version>>> {
        let max_age = max_age.unwrap_or(self.config.metadata_ttl);
        let key = (kind, name.to_string());
        let fresh = |st: &MetaState| {
            st.versions
                .get(&key)
                .filter(|l| l.fetched.elapsed() < max_age)
                .map(|l| l.data.clone())
        };
        if let Some(d) = fresh(&self.meta.lock()) {
            return Ok(d);
        }
        let storage = self.find_storage(kind, name)?;
        let lock = self.fetch_lock((kind, Some(name.to_string())));
        let _guard = lock.lock();
        if let Some(d) = fresh(&self.meta.lock()) {
            return Ok(d);
        }
        match self.remote.list_versions(kind, &storage.id) {
            Ok(list) => {
                let list: Vec<Version> = list
                    .into_iter()
                    .filter(|v| {
                        let ok = is_version_id(&v.id);
                        if !ok {
                            tracing::warn!(storage = name, id = ?v.id, "ignoring a version whose id is not 64 hex characters");
                        }
                        ok
                    })
                    .collect();
                let data = Arc::new(list);
                self.meta.lock().versions.insert(
                    key,
                    Listing {
                        fetched: Instant::now(),
                        data: data.clone(),
                    },
                );
                Ok(data)
            }
            Err(e) => {
                let stale = self.meta.lock().versions.get(&key).map(|l| l.data.clone());
                match stale {
                    Some(d) if !e.is_auth() && !e.is_not_found() => {
                        tracing::warn!(storage = name, error = %e, "refreshing versions failed; serving the previous list");
                        Ok(d)
                    }
                    _ => {
                        tracing::warn!(storage = name, error = %e, "listing versions failed");
                        self.activity
                            .error(format!("listing the versions of {kind} {name}: {e}"));
                        Err(e.into())
                    }
                }
            }
        }
    }

    /// The version of `storage` whose id is `id` or starts with it (a unique prefix).
    fn find_version(&self, kind: Kind, storage: &str, id: &str) -> Result<Version> {
        let pick = |list: &[Version]| -> Option<Result<Version>> {
            let mut hits = list.iter().filter(|v| v.id.starts_with(id));
            let first = hits.next()?;
            if first.id != id && hits.next().is_some() {
                // Ambiguous prefix: not found, as the API answers.
                return Some(Err(FsError::NotFound));
            }
            Some(Ok(first.clone()))
        };
        if let Some(r) = pick(&self.versions(kind, storage, None)?) {
            return r;
        }
        pick(&self.versions(kind, storage, Some(MISS_REFRESH_AFTER))?)
            .unwrap_or(Err(FsError::NotFound))
    }

    // ----- versions -------------------------------------------------------------------

    /// A loaded version for a content inode: the cache's copy when resident (no API call),
    /// else through the metadata path (which may download it again after an eviction).
    fn version_of(&self, range: &Range) -> Result<Arc<CachedVersion>> {
        if let Some(v) = self
            .cache
            .peek(&VersionKey::new(range.kind, &range.version))
        {
            return Ok(v);
        }
        Ok(self
            .load_version(range.kind, &range.name, &range.version)?
            .1)
    }

    /// A version for a content inode as far as it is available: the cache's copy when
    /// resident, the running download when there is one, else through the metadata path
    /// (which may start a download again after an eviction).
    fn version_now_of(&self, range: &Range) -> Result<Available> {
        let key = VersionKey::new(range.kind, &range.version);
        if let Some(v) = self.cache.peek(&key) {
            return Ok(Available::Ready(v));
        }
        if let Some(flight) = self.cache.in_flight(&key) {
            return Ok(Available::Pending(flight));
        }
        Ok(self.version_now(range.kind, &range.name, &range.version)?.1)
    }

    /// Make a version available (downloading and unpacking it when cold) and allocate its
    /// content inodes; waits for the end of a download.
    fn load_version(
        &self,
        kind: Kind,
        storage: &str,
        id: &str,
    ) -> Result<(Range, Arc<CachedVersion>)> {
        match self.version_now(kind, storage, id)? {
            (range, Available::Ready(v)) => Ok((range, v)),
            (range, Available::Pending(flight)) => {
                let v = self.finished(storage, &flight, flight.wait())?;
                Ok((range, v))
            }
        }
    }

    /// A version and its content inodes; a cold version's download is started in the
    /// background and not waited for.
    fn version_now(&self, kind: Kind, storage: &str, id: &str) -> Result<(Range, Available)> {
        let key = VersionKey::new(kind, id);
        let now = match self.cache.peek(&key) {
            Some(v) => Available::Ready(v),
            None => {
                let s = self.find_storage(kind, storage)?;
                let version = self.find_version(kind, storage, id)?;
                if version.id != id {
                    return Err(FsError::NotFound);
                }
                if version.file_count == 0 {
                    // No archive exists for a 0-file version (the API answers 404): it is an
                    // empty directory, kept out of the cache.
                    Available::Ready(Arc::new(CachedVersion {
                        key: key.clone(),
                        dir: Default::default(),
                        index: empty_index(version.created_at),
                        disk_bytes: 0,
                    }))
                } else {
                    let announced = Announced {
                        size: version.size,
                        file_count: version.file_count,
                    };
                    let remote = self.remote.clone();
                    let activity = self.activity.clone();
                    let job = fetch::Job {
                        kind,
                        storage: storage.to_string(),
                        storage_id: s.id.clone(),
                        version,
                        progress_every: self.config.progress_every,
                    };
                    let access = self.cache.start(&key, announced, move |target| {
                        fetch::fetch(&*remote, &activity, &job, target)
                    });
                    match access {
                        Access::Ready(v) => Available::Ready(v),
                        Access::Pending(flight) => Available::Pending(flight),
                    }
                }
            }
        };
        let range = self.inodes.lock().range(kind, storage, id);
        Ok((range, now))
    }

    /// The outcome of a flight as the filesystem answers it.
    fn finished(
        &self,
        storage: &str,
        flight: &Flight,
        result: std::result::Result<Arc<CachedVersion>, SharedError>,
    ) -> Result<Arc<CachedVersion>> {
        result.map_err(|e| {
            // Fetch failures were recorded where they happened; refusals by the cache
            // itself (too large, no room, disk errors) are noted here, once per flight.
            if !matches!(*e, CacheError::Fetch { .. }) && flight.report_once() {
                self.activity.error(format!("{storage}: {e}"));
            }
            e.into()
        })
    }

    // ----- handles ----------------------------------------------------------------------

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, Arc::new(h));
        fh
    }

    fn handle(&self, fh: u64) -> Result<Arc<Handle>> {
        self.handles
            .lock()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }
}

/// Up to `size` bytes of `file` at `offset`; short only at end of file.
fn read_at(file: &File, offset: u64, size: u32) -> Result<Vec<u8>> {
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
fn slice_at(data: &[u8], offset: u64, size: u32) -> Vec<u8> {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let end = start.saturating_add(size as usize).min(data.len());
    data[start..end].to_vec()
}

/// Open a blob published during an unpack, if the path still names that blob: the unpack
/// renames blobs when it ends, so another blob could have taken the path by now.
fn open_published(f: &crate::archive::PublishedFile) -> Option<File> {
    use std::os::unix::fs::MetadataExt;
    let file = File::open(&f.blob).ok()?;
    let meta = file.metadata().ok()?;
    (meta.dev() == f.id.dev && meta.ino() == f.id.ino).then_some(file)
}

/// The index of a version with no files: a root directory and nothing else.
fn empty_index(mtime: SystemTime) -> Index {
    let sec = mtime
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Index {
        nodes: vec![Node {
            kind: NodeKind::Dir {
                parent: 0,
                entries: Vec::new(),
            },
            perm: 0o755,
            mtime_sec: sec,
            mtime_nsec: 0,
            nlink: 2,
        }],
    }
}

/// ISO-8601 UTC with milliseconds, as the API writes timestamps.
pub(crate) fn format_time(t: SystemTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from(t)
        .format(&fmt)
        .unwrap_or_else(|_| format!("{t:?}"))
}

/// A storage as the mount can show it, or `None` (with a warning) when the API sent a name
/// that cannot be a file name. A `current_version_id` that is not a version id is dropped,
/// so that `latest` can only ever point at a sibling directory.
fn sane_storage(kind: Kind, mut s: Storage) -> Option<Storage> {
    let name_ok = !s.name.is_empty()
        && s.name != "."
        && s.name != ".."
        && s.name.len() <= 255
        && !s.name.contains(['/', '\0']);
    if !name_ok {
        tracing::warn!(kind = kind.plural(), id = %s.id, name = ?s.name, "ignoring a storage whose name cannot be a file name");
        return None;
    }
    if let Some(cur) = &s.current_version_id {
        if !is_version_id(cur) {
            tracing::warn!(storage = %s.name, current = ?cur, "ignoring a current version id that is not 64 hex characters");
            s.current_version_id = None;
        }
    }
    Some(s)
}

/// A full version id: 64 lowercase hex characters (a SHA-256).
fn is_version_id(id: &str) -> bool {
    id.len() == 64 && is_hex(id)
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn to_system_time(sec: i64, nsec: u32) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(u64::from(nsec))
    }
}

#[cfg(test)]
mod tests;
