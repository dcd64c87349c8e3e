//! The filesystem: the tree `volumes|artifacts/<name>/{latest,<version-id>}/...` and every
//! operation on it as a plain method returning `Result<_, FsError>`.
//!
//! This module holds [`Fs`] and its operations, in the order the kernel calls them; each
//! job they share has a room of its own:
//!
//! - `inode`: the inode table (stable numbers for everything shown);
//! - `versions`: storages and versions in the tree (`latest`, ids, prefixes) and the one
//!   way to get a version ([`Fs::version`]);
//! - `content`: the inside of a version; `runs`: `runs/` and `agents/` as inodes;
//! - `attr`: the attributes each kind of inode answers; `xattr`: the `user.vm0.*` ones;
//! - `handles`: file and directory handles, and passthrough backing files;
//! - `dir`: directory listings, served entry by entry from any position;
//! - `plus`: how many entries of a directory the kernel first gets with attributes;
//! - `kernel`: what the kernel keeps that can change (`latest`), and telling it so;
//! - `status`: the status file; `error`: the error type and its errno;
//! - `wait`: how long an operation may wait for a download, and the threads where the
//!   operations that must wait do so ([`Fs::serve`]).
//!
//! What it shows comes from the rooms below: the names from [`crate::metadata`]'s
//! listings, versions from the [`Cache`] (filled by [`crate::fetch`]), runs and agents from
//! [`crate::runs`]. It reaches the network only through [`Remote`] (and
//! [`crate::runs::RunsApi`]), and never sees fuser's requests or replies, so all of it is
//! testable without a mount (see `tests` below).
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
//! Waiting is bounded: an operation waits for a download, or for the API (a listing, a run,
//! an agent: always through [`crate::metadata::Listings`], given the thread's policy), only
//! on a waiter thread, never on a FUSE worker (see [`Fs::serve`] and `wait`), and a waiter
//! lets go within [`crate::cache::WAIT_SLICE`] once the process that asked no longer wants
//! the answer (`EINTR`). A panic in an operation is contained there too (`EIO`, see
//! [`crate::panics`]).
//!
//! Reads come two ways: through a handle from `open` ([`Fs::read`]), or by inode alone
//! ([`Fs::read_ino`]) when the kernel sends no `OPEN` (the default, see `fuse.rs`). Both
//! find the content the same way (`content`); the second pins the version only for the
//! read, so the cache learns about open files from `/proc` instead (`crate::openfiles`).

mod attr;
mod content;
mod dir;
mod error;
mod handles;
mod inode;
mod kernel;
mod plus;
mod runs;
mod status;
mod streamed;
mod versions;
mod wait;
mod xattr;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStringExt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use crate::activity::Activity;
use crate::api::Kind;
use crate::archive::NodeRefKind;
use crate::cache::{Bytes, Cache};
use crate::fetch::{Downloads, Spools};
use crate::ids::{Fh, Ino};
use crate::metadata::{storage_map, Listings, Saved, StorageSource, Timing, VersionSource};
use crate::remote::Remote;

pub use attr::{Attr, FileKind, TimedAttr, IMMUTABLE_TTL};
pub use dir::Listing;
pub use error::FsError;
pub use handles::{Backings, OpenedHandle, PASSTHROUGH_MIN_SIZE};
pub use kernel::KernelCache;
pub use plus::PROBE;
pub use status::{STATUS_DIR, STATUS_FILE};
pub use versions::version_at;
pub use wait::{with_policy, Policy, WAITERS};

use content::waited;
use handles::{slice_at, DirHandle, Handle, Handles, OpenFile};
use inode::{InodeTable, MetaNode, Resolved};
use kernel::KernelNotes;
use plus::PlusAdvice;
use status::StatusTexts;
use versions::{Complete, MissLog, Now, LATEST};
use wait::{ThreadPolicy, Turn, Waiters};

/// Whether the kernel keeps the pages a read returns (see [`Fs::read_ino_as`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caching {
    /// A buffered read: the kernel keeps its pages in the mount's page cache.
    Kernel,
    /// An `O_DIRECT` read: nothing is kept by the kernel.
    Direct,
}

pub type Result<T, E = FsError> = std::result::Result<T, E>;

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

/// One name in a directory, with its attributes (for `readdirplus`).
#[derive(Debug, Clone)]
pub struct DirItem {
    pub name: OsString,
    pub entry: TimedAttr,
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

/// What a file's content is read from.
enum Content {
    /// The status file: generated.
    Status,
    /// A file of a version, and its size.
    File(OpenFile, u64),
    /// A file of a run or an agent.
    Run(runs::Readable),
}

/// The filesystem. Every method takes `&self`: the FUSE session is multi-threaded.
pub struct Fs {
    remote: Arc<dyn Remote>,
    cache: Cache,
    config: FsConfig,
    started: SystemTime,
    inodes: Mutex<InodeTable>,
    /// The storages of each kind, by name.
    storages: Listings<StorageSource>,
    /// The versions of each storage.
    versions: Listings<VersionSource>,
    /// Names recently explained as missing from a storage (see `versions`).
    misses: MissLog,
    handles: Handles,
    /// The status file's text per reader (pid).
    status: StatusTexts,
    activity: Arc<Activity>,
    /// The downloads in flight, for the status file.
    downloads: Arc<Downloads>,
    /// Where operations that must wait for a download do so.
    waiters: Waiters,
    /// The bytes of downloads that failed part way, for the next attempt to continue.
    spools: Arc<Spools>,
    /// `runs/` and `agents/`, when shown (see [`Fs::with_runs`]).
    runs: Option<crate::runs::Runs>,
    /// What the kernel holds that may change (`latest` links), and how to tell it.
    kernel: Arc<KernelNotes>,
    /// How many entries a directory's first `READDIRPLUS` carries (see `plus`).
    plus: PlusAdvice,
    /// Where the listings (storages, versions, and the agents of `runs`) are saved; closed
    /// when the `Fs` is dropped.
    saved: Arc<Saved>,
}

/// A listing fetch still running in the background saves nothing once the `Fs` is gone.
impl Drop for Fs {
    fn drop(&mut self) {
        self.saved.close();
    }
}

impl Fs {
    pub fn new(remote: Arc<dyn Remote>, cache: Cache, config: FsConfig) -> Fs {
        let activity = Arc::new(Activity::default());
        let timing = Timing::with_ttl(config.metadata_ttl);
        // Listings are saved in the cache directory, for mounts started while the API is down.
        let saved = Arc::new(Saved::new(cache.root()));
        let cache_root = cache.root().to_path_buf();
        let kernel = Arc::new(KernelNotes::default());
        let told = kernel.clone();
        let storages = Listings::new(
            StorageSource {
                remote: remote.clone(),
                activity: activity.clone(),
                saved: saved.clone(),
                listed: Some(Arc::new(move |kind, map| told.storages_listed(kind, map))),
            },
            timing.clone(),
        );
        let versions = Listings::new(
            VersionSource {
                remote: remote.clone(),
                activity: activity.clone(),
                storages: storages.clone(),
                saved: saved.clone(),
            },
            timing,
        );
        let spools = Arc::new(Spools::new(&cache_root.join("partial"), cache.clone()));
        Fs {
            remote,
            cache,
            config,
            started: SystemTime::now(),
            inodes: Mutex::new(InodeTable::default()),
            storages,
            versions,
            misses: MissLog::default(),
            handles: Handles::default(),
            status: StatusTexts::default(),
            activity,
            downloads: Arc::new(Downloads::default()),
            waiters: Waiters::default(),
            spools,
            runs: None,
            kernel,
            plus: PlusAdvice::default(),
            saved,
        }
    }

    /// Tell `kernel` from now on when something it may hold changes (see `kernel`).
    pub fn set_kernel(&self, kernel: Box<dyn KernelCache>) {
        self.kernel.set(kernel);
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Run operation `op` for the thread `requester` (0: unknown) and hand its result to
    /// `answer`, without ever blocking the calling thread on a download: `op` runs here
    /// first with [`Policy::Never`]; if it would have to wait for a version being fetched,
    /// it is handed to a waiter thread (see `wait`) and runs again there, waiting as long
    /// as the requester wants the answer (`EINTR` once it does not). A panic in `op` is
    /// answered `EIO` (see [`crate::panics`]). `op` may thus run twice; what it does
    /// before it would wait (resolving names, starting a download) is idempotent.
    pub fn serve<T: 'static>(
        self: &Arc<Self>,
        requester: u32,
        op: impl Fn(&Fs) -> Result<T> + Send + 'static,
        answer: impl FnOnce(Result<T>) + Send + 'static,
    ) {
        match contained(|| with_policy(Policy::Never, || op(self))) {
            Err(FsError::WouldBlock) => {}
            done => return answer(done),
        }
        let fs = self.clone();
        self.waiters.submit(wait::Task {
            requester,
            run: Box::new(move |turn| {
                let result = match turn {
                    Turn::Run => {
                        let policy = Policy::Wait {
                            requester: (requester != 0).then_some(requester),
                        };
                        contained(|| with_policy(policy, || op(&fs)))
                    }
                    Turn::Interrupted => Err(FsError::Interrupted),
                };
                answer(result);
            }),
        });
    }

    /// Stop for a shutdown: every download stops and every operation waiting for one is
    /// answered now (`EIO`), so that the unmount that follows finds nobody inside.
    pub fn shutdown(&self) {
        self.cache.shutdown();
    }

    /// Take `list` as the storages of `kind`, just fetched: the mount fetches its first
    /// listing before the filesystem exists, to check the API and the token with it.
    pub fn seed_storages(&self, kind: Kind, list: Vec<crate::api::Storage>) {
        self.activity.api_answered();
        self.storages.seed(&kind, storage_map(kind, list));
    }

    /// The mount started without the API (`why`): the status file says so until it answers.
    pub fn started_offline(&self, why: String) {
        self.activity.api_failed(why, false);
    }

    // ----- operations -------------------------------------------------------------------

    /// `reader`: the pid asking, if any (it keeps one status text for a moment).
    pub fn lookup(&self, parent: Ino, name: &OsStr, reader: Option<u32>) -> Result<TimedAttr> {
        let found = self.find_entry(parent, name, reader);
        if let Ok(e) = &found {
            let is_dir = e.attr.kind == FileKind::Directory;
            self.plus
                .looked_up(parent, is_dir, std::time::Instant::now());
        }
        found
    }

    /// How many entries other than directories a directory's first `READDIRPLUS` reply may
    /// carry now (`None`: as many as fit); [`Fs::plus_reply_cut`] is told when it left
    /// entries out (see `plus`).
    pub fn first_plus_reply(&self) -> Option<u64> {
        self.plus.first_reply(std::time::Instant::now())
    }

    /// The first `READDIRPLUS` reply of directory `dir` left entries out (see `plus`).
    pub fn plus_reply_cut(&self, dir: Ino) {
        self.plus.cut(dir);
    }

    fn find_entry(&self, parent: Ino, name: &OsStr, reader: Option<u32>) -> Result<TimedAttr> {
        match self.resolve(parent)? {
            Resolved::Meta(MetaNode::Root) => {
                if name == STATUS_DIR {
                    return self.meta_attr(MetaNode::StatusDir);
                }
                if let Some((_, n)) = self.root_run_dirs().into_iter().find(|(d, _)| name == *d) {
                    return self.meta_attr(MetaNode::Run(n));
                }
                let kind = name
                    .to_str()
                    .and_then(Kind::from_plural)
                    .ok_or(FsError::NotFound)?;
                self.meta_attr(MetaNode::KindDir(kind))
            }
            Resolved::Meta(MetaNode::StatusDir) if name == STATUS_FILE => {
                let ino = self.inodes.lock().meta_ino(MetaNode::StatusFile);
                Ok(self.status_attr(ino, reader))
            }
            Resolved::Meta(MetaNode::StatusDir) => Err(FsError::NotFound),
            Resolved::Meta(MetaNode::StatusFile) => Err(FsError::NotDir),
            Resolved::Meta(MetaNode::Run(n)) => {
                self.run_lookup(n, name.to_str().ok_or(FsError::NotFound)?)
            }
            Resolved::Meta(MetaNode::KindDir(kind)) => {
                let name = name.to_str().ok_or(FsError::NotFound)?;
                let storage = self.find_storage(kind, name)?;
                self.meta_attr(MetaNode::Storage {
                    kind,
                    name: storage.name,
                })
            }
            Resolved::Meta(MetaNode::Storage {
                kind,
                name: storage,
            }) => {
                let name = name.to_str().ok_or(FsError::NotFound)?;
                self.lookup_in_storage(kind, &storage, name)
            }
            Resolved::Meta(MetaNode::Version {
                kind,
                name: storage,
                version,
            }) => {
                let range = self.range(kind, &storage, &version);
                let now = self.version(&range, Now)?;
                self.lookup_content(&range, now, 0, name)
            }
            Resolved::Content { range, node } => {
                let now = self.version(&range, Now)?;
                self.lookup_content(&range, now, node, name)
            }
            Resolved::Meta(MetaNode::Latest { .. } | MetaNode::PrefixLink { .. }) => {
                Err(FsError::NotDir)
            }
        }
    }

    /// `reader`: the pid asking, if any (it keeps one status text for a moment).
    pub fn getattr(&self, ino: Ino, reader: Option<u32>) -> Result<TimedAttr> {
        match self.resolve(ino)? {
            Resolved::Meta(MetaNode::StatusFile) => Ok(self.status_attr(ino, reader)),
            Resolved::Meta(m) => self.meta_attr(m),
            Resolved::Content { range, node } => self.content_getattr(&range, node),
        }
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        match self.resolve(ino)? {
            Resolved::Meta(MetaNode::Latest { kind, name }) => {
                let storage = self.find_storage(kind, name.as_str())?;
                let target = storage.current_version_id.ok_or(FsError::NotFound)?;
                // The kernel keeps this answer as the link's target (`kernel`), and waits
                // for it: it is not told to drop anything now.
                self.kernel.latest_shown(kind, &name, ino, &target, false);
                tracing::debug!(ino = ino.0, storage = %name, version = %target, "readlink of latest");
                Ok(target.as_str().as_bytes().to_vec())
            }
            Resolved::Meta(MetaNode::PrefixLink { version, .. }) => {
                Ok(version.as_str().as_bytes().to_vec())
            }
            Resolved::Meta(MetaNode::Run(n)) => self.run_readlink(n),
            Resolved::Content { range, node } => {
                let v = self.version(&range, Complete)?;
                match self.checked(&v, v.index.get(node))?.map(|n| n.kind) {
                    Some(NodeRefKind::Symlink { .. }) => {
                        Ok(self.checked(&v, v.index.symlink_target(node))?.to_vec())
                    }
                    Some(_) => Err(FsError::NotSymlink),
                    None => Err(FsError::NotFound),
                }
            }
            Resolved::Meta(_) => Err(FsError::NotSymlink),
        }
    }

    /// Open a file for reading. Any write access is `EROFS`.
    pub fn open(&self, ino: Ino, flags: i32) -> Result<OpenedHandle> {
        let write_flags =
            libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC | libc::O_APPEND | libc::O_CREAT;
        if flags & write_flags != 0 {
            return Err(FsError::ReadOnly);
        }
        match self.content(ino)? {
            Content::Status => {
                let fh = self
                    .handles
                    .add(Handle::Static(self.status_text().into_bytes()));
                Ok(OpenedHandle {
                    fh,
                    direct_io: true,
                    immutable: false,
                    size: 0,
                })
            }
            Content::File(file, size) => Ok(OpenedHandle {
                fh: self.handles.add(Handle::File(file)),
                direct_io: false,
                immutable: true,
                size,
            }),
            Content::Run(r) => Ok(self.run_opened(r)),
        }
    }

    /// Read up to `size` bytes at `offset` of an open handle; short only at end of file.
    /// A handle whose content was found damaged reads the version downloaded again, as a
    /// read without a handle does.
    pub fn read(&self, fh: Fh, offset: u64, size: u32) -> Result<Bytes> {
        match &*self.handles.get(fh)? {
            Handle::File(f) if f.is_damaged() => match f.ino() {
                Some(ino) => self.read_ino(ino, offset, size, 0),
                None => Err(FsError::Damaged(crate::archive::Damage(
                    "the file was found damaged".into(),
                ))),
            },
            Handle::File(f) if f.is_in_stream() => self.read_streamed(f, offset, size),
            Handle::File(f) => match f.read(offset, size, self.cache.verified(), false) {
                Ok((data, _, _)) => Ok(data),
                Err(e) => Err(self.read_failed(f, e)),
            },
            Handle::Static(data) => Ok(slice_at(data, offset, size).into()),
            Handle::Dir(_) => Err(FsError::IsDir),
        }
    }

    /// Read up to `size` bytes at `offset` of file `ino`, with no handle: when the kernel
    /// sends no `OPEN` (see `fuse.rs`). The version is pinned for the read; a version
    /// evicted since an earlier read is fetched again. `reader` is the pid reading (it
    /// keeps one status text for a moment).
    pub fn read_ino(&self, ino: Ino, offset: u64, size: u32, reader: u32) -> Result<Bytes> {
        self.read_ino_as(ino, offset, size, reader, Caching::Kernel)
    }

    /// [`Fs::read_ino`] for a reader whose pages the kernel keeps (`Caching::Kernel`) or
    /// not (`Caching::Direct`, an `O_DIRECT` read).
    pub fn read_ino_as(
        &self,
        ino: Ino,
        offset: u64,
        size: u32,
        reader: u32,
        caching: Caching,
    ) -> Result<Bytes> {
        match self.content(ino)? {
            Content::Status => {
                Ok(slice_at(&self.status_for(Some(reader)).text, offset, size).into())
            }
            Content::File(f, _) if f.is_in_stream() => self.read_streamed(&f, offset, size),
            Content::File(f, _) => {
                // The kernel keeps what a buffered reader reads in the mount's own page
                // cache: the read says which of the content file's pages to drop, so that
                // a file read through the mount is cached once (see `OpenFile::read`). A
                // direct reader has no copy in the kernel: the content file's pages are
                // its only cache, and are kept. Only advice: a failure changes nothing
                // that matters.
                let kernel = caching == Caching::Kernel;
                let (data, file, drop) = f
                    .read(offset, size, self.cache.verified(), kernel)
                    .map_err(|e| self.read_failed(&f, e))?;
                if let Some((at, len)) = drop {
                    let _ = nix::fcntl::posix_fadvise(
                        file,
                        at as libc::off_t,
                        len as libc::off_t,
                        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                    );
                }
                Ok(data)
            }
            Content::Run(r) => r.read_at(offset, size).map(Bytes::from),
        }
    }

    /// Open a directory. The listing of a directory outside versions is taken now (it
    /// changes over time); one inside a version is listed at the first `readdir`.
    pub fn opendir(&self, ino: Ino) -> Result<OpenedHandle> {
        let (immutable, listing) = match self.resolve(ino)? {
            // A version's root is always a directory.
            Resolved::Meta(MetaNode::Version { .. }) => (true, OnceLock::new()),
            Resolved::Content { range, node } => {
                if self.content_getattr(&range, node)?.attr.kind != FileKind::Directory {
                    return Err(FsError::NotDir);
                }
                (true, OnceLock::new())
            }
            Resolved::Meta(_) => (false, OnceLock::from(Arc::new(self.listing(ino)?))),
        };
        let fh = self.handles.add(Handle::Dir(DirHandle { ino, listing }));
        Ok(OpenedHandle {
            fh,
            direct_io: false,
            immutable,
            size: 0,
        })
    }

    /// The listing of an open directory; the adapter takes its entries from the position
    /// the kernel asks for ([`Fs::dir_item`]).
    pub fn readdir(&self, fh: Fh) -> Result<Arc<Listing>> {
        match &*self.handles.get(fh)? {
            Handle::Dir(d) => {
                if let Some(listing) = d.listing.get() {
                    return Ok(listing.clone());
                }
                let listing = Arc::new(self.listing(d.ino)?);
                // Two first readdirs may race; both listings are the same.
                Ok(d.listing.get_or_init(|| listing).clone())
            }
            Handle::File(_) | Handle::Static(_) => Err(FsError::NotDir),
        }
    }

    /// Drop a file or directory handle (and the pin it holds).
    pub fn release(&self, fh: Fh) {
        self.handles.release(fh);
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
    pub fn access(&self, ino: Ino, write: bool) -> Result<()> {
        self.resolve(ino)?;
        if write {
            return Err(FsError::ReadOnly);
        }
        Ok(())
    }

    // `listxattr` and `getxattr` are in `xattr.rs`.

    // ----- the tree -------------------------------------------------------------------

    fn resolve(&self, ino: Ino) -> Result<Resolved> {
        self.inodes.lock().resolve(ino).ok_or(FsError::NotFound)
    }

    /// The entries of directory `ino` outside versions, `.` and `..` first.
    fn dir_items(&self, ino: Ino) -> Result<Vec<DirItem>> {
        let mut items = Vec::new();
        let here = self.getattr(ino, None)?;
        if here.attr.kind != FileKind::Directory {
            return Err(FsError::NotDir);
        }
        let item = |name: &[u8], entry: TimedAttr| DirItem {
            name: OsString::from_vec(name.to_vec()),
            entry,
        };
        match self.resolve(ino)? {
            Resolved::Meta(MetaNode::Root) => {
                items.push(item(b".", here.clone()));
                items.push(item(b"..", here));
                for kind in Kind::ALL {
                    let entry = self.meta_attr(MetaNode::KindDir(kind))?;
                    items.push(item(kind.plural().as_bytes(), entry));
                }
                for (name, n) in self.root_run_dirs() {
                    items.push(item(name.as_bytes(), self.meta_attr(MetaNode::Run(n))?));
                }
                let status = self.meta_attr(MetaNode::StatusDir)?;
                items.push(item(STATUS_DIR.as_bytes(), status));
            }
            Resolved::Meta(MetaNode::Run(n)) => {
                items.push(item(b".", here));
                let parent = self.run_parent(&n);
                items.push(item(b"..", self.meta_attr(parent)?));
                self.run_dir_items(n, &mut items)?;
            }
            Resolved::Meta(MetaNode::StatusDir) => {
                items.push(item(b".", here));
                items.push(item(b"..", self.meta_attr(MetaNode::Root)?));
                let status = self.meta_attr(MetaNode::StatusFile)?;
                items.push(item(STATUS_FILE.as_bytes(), status));
            }
            Resolved::Meta(MetaNode::KindDir(kind)) => {
                items.push(item(b".", here));
                items.push(item(b"..", self.meta_attr(MetaNode::Root)?));
                let storages = self.storages.get(&kind, &ThreadPolicy)?;
                items.reserve(storages.len());
                for (name, s) in storages.iter() {
                    let ino = self.inodes.lock().meta_ino(MetaNode::Storage {
                        kind,
                        name: name.clone(),
                    });
                    let entry = TimedAttr {
                        attr: self.dir_attr(ino, 0, s.updated_at),
                        ttl: self.config.metadata_ttl,
                    };
                    items.push(item(name.as_str().as_bytes(), entry));
                }
            }
            Resolved::Meta(MetaNode::Storage { kind, name }) => {
                items.push(item(b".", here));
                items.push(item(b"..", self.meta_attr(MetaNode::KindDir(kind))?));
                let storage = self.find_storage(kind, name.as_str())?;
                if storage.current_version_id.is_some() {
                    let latest = self.meta_attr(MetaNode::Latest {
                        kind,
                        name: name.clone(),
                    })?;
                    items.push(item(LATEST.as_bytes(), latest));
                }
                let versions = self.versions(kind, &name)?;
                for v in versions.iter() {
                    let version = v.id.clone();
                    // One entry that cannot be described must not hide the others.
                    match self.meta_attr(MetaNode::Version {
                        kind,
                        name: name.clone(),
                        version,
                    }) {
                        Ok(entry) => items.push(item(v.id.as_str().as_bytes(), entry)),
                        Err(e) => {
                            tracing::debug!(storage = %name, version = %v.id, error = %e, "version left out of the listing");
                        }
                    }
                }
            }
            Resolved::Meta(
                MetaNode::Latest { .. } | MetaNode::PrefixLink { .. } | MetaNode::StatusFile,
            ) => return Err(FsError::NotDir),
            // Listed from the index, entry by entry (see `dir`).
            Resolved::Meta(MetaNode::Version { .. }) | Resolved::Content { .. } => {
                return Err(FsError::Internal(
                    "a version's directory is listed from its index".into(),
                ))
            }
        }
        Ok(items)
    }
}

/// Run `f`, turning a panic into an error (the panic hook has logged it, see
/// [`crate::panics`]).
fn contained<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|panic| Err(FsError::Internal(crate::panics::message(&*panic))))
}

#[cfg(test)]
mod tests;
