//! Unpacked versions on disk under a byte budget.
//!
//! The cache owns the cache directory (see [`disk`] for its layout): it decides which
//! versions stay (LRU order, the `lru` crate), makes room before a download starts, pins
//! versions that are in use, makes sure that concurrent requests for the same cold version
//! fetch it once (single-flight, [`Flight`]), runs the fetches in a bounded pool ([`pool`]),
//! and commits new versions crash-safely.
//!
//! It stores versions under their immutable id and knows nothing of HTTP or inodes: the
//! caller passes a `fetch` closure that fills a directory (with [`crate::archive::unpack`]).
//!
//! Pinning: every [`CachedVersion`] handed out is an `Arc`; while any caller holds one
//! (an open file, an operation in progress) the version is never evicted. Where the kernel
//! does not report opens, the owner also installs an [`InUse`] probe (see
//! [`crate::openfiles`]), asked before each eviction: the versions it names are pinned too.
//!
//! Progressive availability: [`Cache::start`] queues a fetch for the download pool and
//! returns at once. At most [`CacheOptions::downloads`] fetches run at a time; the others
//! wait their turn (shown as queued by [`Cache::snapshot`]). The fetch publishes each file
//! as soon as it is unpacked (see [`crate::archive::Publish`]) into the flight, where callers
//! can wait for either a name to be published or the whole fetch to end
//! ([`Interest::lookup`]). Nothing published is cached: only a complete, committed version
//! enters the LRU, and a failed fetch leaves nothing behind (its published files live on
//! only in handles already open).
//!
//! Every flight ends, and ends once: with the version, with the fetch's error, with an
//! error when the fetch panics (its reservation returned), when nobody wants it any more
//! (the last waiter was interrupted, see [`Interest`]), or when the mount shuts down
//! ([`Cache::shutdown`]). A failed download is remembered for
//! [`CacheOptions::failure_memory`]: accesses in that time get the same error at once
//! instead of downloading again.
//!
//! Rooms: `disk` (the layout, the only code that touches it), `flight` (one fetch shared by
//! its waiters), `pool` (the bounded download pool), `fill` (loading, fetching under a
//! reservation, evicting), `error` (why a version was refused or failed). Others keep
//! files beside the versions under the same budget (final runs, download spools) through
//! [`Cache::charge`] and [`Cache::charge_free`]; the cache counts their bytes and knows
//! nothing else of them.
//!
//! No lock is held across disk I/O: recording a use (`touch`) and moving an evicted
//! version aside happen after the state lock is let go.

mod bytes;
mod disk;
mod error;
mod fill;
mod flight;
mod heap;
mod held;
mod pass;
mod pool;
mod spans;
mod stream;
mod usage;
mod verified;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::api::Kind;
use crate::archive::{Index, Publish, Unpacked};
use crate::size::ByteSize;
pub use bytes::Bytes;
pub use disk::ArchiveOrigin;
pub use disk::{disk_usage, make_dir, remove_all, CACHE_FORMAT_VERSION};
use disk::{Completion, Layout};
pub use error::{CacheError, SharedError};
use fill::purge;
pub use flight::{
    Flight, Interest, Outcome, Patience, Phase, Stopped, Unbounded, Waited, WAIT_SLICE,
};
pub use heap::large_buffers_unpooled;
pub use held::{check_dir, LOG_FILE};
pub use pass::{PassSpan, PassView, SpanRange};
use pool::Pool;
pub use spans::{Span, SpanError, SpanFailure, SpanFill, SpanKey};
pub use stream::ReadStream;
pub use usage::{ResidentInfo, Snapshot};
pub use verified::{CheckedFile, ReadAt, Sums, Verified, DIRECT_MIN, VERIFIED_MEMORY};

use crate::ids::VersionId;

/// A version's identity in the cache: its kind and its immutable, content-addressed id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionKey {
    pub kind: Kind,
    pub id: VersionId,
}

impl VersionKey {
    pub fn new(kind: Kind, id: &VersionId) -> VersionKey {
        VersionKey {
            kind,
            id: id.clone(),
        }
    }

    /// The directory name under `versions/`. A [`VersionId`] is 64 lowercase hex characters,
    /// so no id can name a path outside the cache.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.kind.plural(), self.id)
    }
}

impl fmt::Display for VersionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} version {}", self.kind, self.id)
    }
}

/// A complete version on disk. Holding the `Arc` pins it.
#[derive(Debug)]
pub struct CachedVersion {
    pub key: VersionKey,
    /// The version directory: contents at [`crate::archive::blob_path`]`(dir, n)`.
    pub dir: PathBuf,
    pub index: Index,
    /// The checksums of its content, open (`None` only for a version with no files and
    /// no directory).
    pub checks: Option<crate::archive::Checks>,
    pub disk_bytes: u64,
    /// Its content files opened for reads.
    pub files: ContentFiles,
    /// A version larger than the cache: what it keeps to read its content from the archive
    /// (`None`: its content is on disk).
    pub streamed: Option<Streamed>,
}

/// What a version larger than the cache keeps to read its content from its archive: where
/// each file lies in the tar stream, the checkpoints of the gzip stream, and which object
/// at the store they describe.
#[derive(Debug)]
pub struct Streamed {
    pub positions: crate::archive::Positions,
    /// The checkpoints, their windows left in `seek.bin` (32 KiB each once inflated: a
    /// version of 100 GiB has 25,000 of them): read when a span is fetched. Never held in
    /// memory, not even by the first pass (see `pass.rs`).
    pub seek: crate::archive::seek::SeekIndex,
    windows: Vec<crate::archive::seek::WindowAt>,
    /// `seek.bin`, held open (the windows are read from this opening).
    seek_file: std::fs::File,
    pub origin: ArchiveOrigin,
}

impl Streamed {
    /// Read a version directory's positions and seek index (both untrusted: checked whole).
    pub fn open(dir: &Path, origin: ArchiveOrigin) -> Result<Streamed, crate::archive::Damage> {
        use crate::archive::Damage;
        let read =
            |name: &str| std::fs::read(dir.join(name)).map_err(|e| Damage(format!("{name}: {e}")));
        let positions = crate::archive::Positions::decode(&read(POSITIONS_FILE)?)
            .map_err(|e| Damage(format!("{POSITIONS_FILE}: {e}")))?;
        let seek_file = std::fs::File::open(dir.join(SEEK_FILE))
            .map_err(|e| Damage(format!("{SEEK_FILE}: {e}")))?;
        // Checked whole, read a piece at a time: the image is not held.
        let (seek, windows) = crate::archive::seek::SeekIndex::decode_lean_file(&seek_file)
            .map_err(|e| Damage(format!("{SEEK_FILE}: {e}")))?;
        if seek.compressed_len != origin.len {
            return Err(Damage(format!(
                "{SEEK_FILE}: for an archive of {} bytes, the record says {}",
                seek.compressed_len, origin.len
            )));
        }
        Ok(Streamed {
            positions,
            seek,
            windows,
            seek_file,
            origin,
        })
    }

    /// Checkpoint `k`, its window read from `seek.bin`.
    pub fn checkpoint(
        &self,
        k: usize,
    ) -> Result<crate::archive::seek::Checkpoint, crate::archive::Damage> {
        crate::archive::seek::read_checkpoint(&self.seek.points, &self.windows, &self.seek_file, k)
            .map_err(|e| crate::archive::Damage(format!("{SEEK_FILE}: {e}")))
    }

    /// Write the positions [`Streamed::open`] reads into a version directory being
    /// committed (its seek index was written by its first pass, see `pass.rs`).
    pub fn save_positions(
        dir: &Path,
        positions: &crate::archive::Positions,
    ) -> std::io::Result<()> {
        let mut f = std::fs::File::create(dir.join(POSITIONS_FILE))?;
        std::io::Write::write_all(&mut f, &positions.encode())?;
        f.sync_all()
    }
}

/// The files of a version larger than the cache (see [`Streamed`]).
pub const POSITIONS_FILE: &str = "positions.bin";
pub const SEEK_FILE: &str = "seek.bin";

/// How many content files of one version are kept open at most.
const OPEN_FILES: usize = 8;

/// How many content files all versions together keep open at most. Each loaded version
/// keeps a few, and a mount may have thousands loaded: beyond this, a file is opened for
/// its read and closed after, as if nothing were kept, so that the daemon never runs out
/// of descriptors (the usual soft limit is 1,024; each kept file may hold a second
/// descriptor, its direct opening).
const OPEN_FILES_ALL: usize = 256;

/// Content files kept open by all versions.
static KEPT_OPEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The content files of a loaded version kept open, the most recently read first, so that
/// a read (most come without a handle: see `crate::fuse`) costs no `open`, and the
/// kernel's read-ahead of a content file, which lives in its open file, carries on from
/// one request to the next instead of starting over at each. They close when the version
/// is dropped from memory (evicted, or found damaged and no longer read).
pub struct ContentFiles {
    open: Mutex<lru::LruCache<PathBuf, Arc<OpenContent>>>,
}

/// A content file kept open: for reads through the page cache, and (opened at its first
/// use) for direct reads, which bypass it (see `Verified`).
pub struct OpenContent {
    pub file: Arc<std::fs::File>,
    direct: OnceLock<Option<std::fs::File>>,
    /// Where the last read of it ended: which reads go through its page cache and which
    /// of its pages are dropped after (see [`ReadStream`]).
    pub stream: ReadStream,
}

impl OpenContent {
    /// The same file opened with `O_DIRECT` (through `/proc/self/fd`, so the very same
    /// inode), or `None` where that cannot be (a file system without direct I/O, such as
    /// tmpfs; no `/proc`).
    pub fn direct(&self) -> Option<&std::fs::File> {
        self.direct
            .get_or_init(|| {
                use std::os::fd::AsRawFd;
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
                    .ok()
            })
            .as_ref()
    }
}

impl fmt::Debug for ContentFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentFiles({} open)", self.open.lock().len())
    }
}

impl Default for ContentFiles {
    fn default() -> Self {
        ContentFiles {
            open: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(OPEN_FILES).expect("not zero"),
            )),
        }
    }
}

impl Drop for ContentFiles {
    fn drop(&mut self) {
        KEPT_OPEN.fetch_sub(self.open.get_mut().len(), Ordering::Relaxed);
    }
}

impl ContentFiles {
    /// The content file at `path`, open. A file kept open that has lost its name since (a
    /// temp cleaner deleted it) is opened again by its name, which fails: the content of
    /// the cache is what its directory holds, not what this process still has open.
    pub fn open(&self, path: &Path) -> std::io::Result<Arc<OpenContent>> {
        use std::os::unix::fs::MetadataExt;
        let kept = self.open.lock().get(path).cloned();
        if let Some(f) = kept {
            if f.file.metadata().is_ok_and(|m| m.nlink() > 0) {
                return Ok(f);
            }
            if self.open.lock().pop(path).is_some() {
                KEPT_OPEN.fetch_sub(1, Ordering::Relaxed);
            }
        }
        // Opened without the lock: two first reads may both open it; one is kept.
        let f = Arc::new(OpenContent {
            file: Arc::new(std::fs::File::open(path)?),
            direct: OnceLock::new(),
            stream: ReadStream::default(),
        });
        let mut open = self.open.lock();
        let room = open.contains(path)
            || open.len() == OPEN_FILES
            || KEPT_OPEN.load(Ordering::Relaxed) < OPEN_FILES_ALL;
        if room {
            // `push` hands back the entry it replaced or pushed out, if any.
            if open.push(path.to_path_buf(), f.clone()).is_none() {
                KEPT_OPEN.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(f)
    }
}

/// What the caller knows of a version before fetching it (from the API's version object).
#[derive(Debug, Clone, Copy)]
pub struct Announced {
    /// Uncompressed total of the files; `None` when the API did not say: the whole budget
    /// is then reserved and is the limit of the unpack.
    pub size: Option<u64>,
    /// `None` when the API did not say.
    pub file_count: Option<u64>,
}

/// What a fetch closure gets: where to unpack, how many content bytes it may write, where
/// to publish files as they are complete, and whether to stop.
pub struct FetchTarget<'a> {
    pub dir: &'a Path,
    pub max_bytes: u64,
    /// The room reserved for the version's index ([`crate::archive::UnpackOptions`]).
    pub max_index_bytes: u64,
    pub publish: &'a dyn Publish,
    /// True once the fetch should stop: nobody wants the version any more, or the mount is
    /// shutting down. The fetch checks it between reads and returns any error; the flight
    /// ends with [`CacheError::Cancelled`] or [`CacheError::ShuttingDown`].
    pub cancelled: &'a (dyn Fn() -> bool + Sync),
    /// Whether to write the content (`false`: a version larger than the cache, whose
    /// fetch keeps its index, positions and seek index, see [`Streamed`]).
    pub keep_content: bool,
}

/// A boxed fetch error, as fetch closures return it.
pub type FetchResult = Result<Unpacked, Box<dyn std::error::Error + Send + Sync>>;

/// A fetch closure as the pool runs it.
type BoxedFetch = Box<dyn FnOnce(FetchTarget<'_>) -> FetchResult + Send>;

/// How the cache runs.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// The byte budget.
    pub budget: u64,
    /// How many downloads run at once; the others wait in a queue.
    pub downloads: usize,
    /// How long a failed download is remembered: an access in that time gets the same
    /// error at once, without downloading again.
    pub failure_memory: Duration,
}

/// How long a failed download is remembered by default (see
/// [`CacheOptions::failure_memory`]). Long enough that a burst of accesses (a `cat` loop,
/// many readers queued behind one failing lookup) costs one download, short enough that a
/// server that is back is used again in seconds.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(10);

/// How many downloads run at once by default.
pub const DEFAULT_DOWNLOADS: usize = 4;

impl CacheOptions {
    /// The defaults, with `budget`.
    pub fn with_budget(budget: u64) -> CacheOptions {
        CacheOptions {
            budget,
            downloads: DEFAULT_DOWNLOADS,
            failure_memory: FAILURE_MEMORY,
        }
    }
}

/// Whether a resident version's index is loaded.
enum Loaded {
    /// Loaded: index in memory. Pinned while the `Arc` has other holders.
    Ready(Arc<CachedVersion>),
    /// Complete on disk (found at start), index not read yet.
    OnDisk,
}

struct Resident {
    slot: Loaded,
    disk_bytes: u64,
    /// Set for a version larger than the cache: its archive.
    archive: Option<ArchiveOrigin>,
    last_used: SystemTime,
    last_touch: Instant,
}

impl Resident {
    fn pinned(&self) -> bool {
        matches!(&self.slot, Loaded::Ready(v) if Arc::strong_count(v) > 1)
    }
}

/// What [`Cache::start`] returns.
pub enum Available {
    /// Complete and loaded; pinned while held.
    Ready(Arc<CachedVersion>),
    /// Being fetched in the background, queued for it, or failed a moment ago (the
    /// flight has ended with the error).
    Pending(Interest),
}

/// What [`Cache::begin`] found.
enum Begin {
    Ready(Arc<CachedVersion>),
    Join(Interest),
    /// A new flight the caller must run; `on_disk`: complete on disk, only to be loaded.
    Run {
        flight: Arc<Flight>,
        interest: Interest,
        on_disk: bool,
    },
}

struct State {
    lru: lru::LruCache<VersionKey, Resident>,
    flights: HashMap<VersionKey, Arc<Flight>>,
    /// Reservations of fetches in flight, by flight id (a cancelled flight may still be
    /// winding down beside a new one of the same key).
    reserved: HashMap<u64, (Arc<Flight>, u64)>,
    used: u64,
    /// Failed flights, remembered until then.
    failed: HashMap<VersionKey, (Instant, Arc<Flight>)>,
    /// Versions evicted whose directory is being moved aside (outside the lock); a commit
    /// of the same key waits for the move (see [`Cache::wait_moved_aside`]).
    evicting: HashSet<VersionKey>,
    /// Versions refused as larger than the budget, logged at ERROR once each (every access
    /// to one is refused again; a `stat` loop must not write a log line each).
    told_too_large: HashSet<VersionKey>,
    /// Versions found damaged and dropped since start (at the scan and while serving).
    damaged: u64,
    shutting_down: bool,
    /// Spans of versions larger than the cache, on disk and being fetched.
    spans: spans::Spans,
}

/// The version cache. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    layout: Layout,
    budget: u64,
    failure_memory: Duration,
    state: Mutex<State>,
    /// Signalled when an evicted version's directory has been moved aside.
    moved_aside: Condvar,
    pool: Arc<Pool>,
    in_use: OnceLock<InUse>,
    /// The probe's last answer and when it came, for [`Cache::snapshot`].
    in_use_seen: Mutex<Option<(Instant, Arc<HashSet<VersionKey>>)>>,
    /// The reader of cached bytes, and the units it checked a moment ago.
    verified: Verified,
}

/// How old an answer of the in-use probe [`Cache::snapshot`] may show. Eviction always asks
/// afresh; the status file, which may be read many times a second, need not walk `/proc`
/// each time.
const IN_USE_SNAPSHOT_AGE: Duration = Duration::from_secs(1);

/// Names the versions in use beyond the `Arc`s the cache handed out: files that processes
/// hold open without the daemon holding a handle for them. It may take milliseconds, so it
/// is asked only when something must be evicted (and for [`Cache::snapshot`]), and never
/// while the cache's lock is held.
pub type InUse = Box<dyn Fn() -> HashSet<VersionKey> + Send + Sync>;

/// How long a fetch that finds every other version pinned waits for a pin to drop before
/// it refuses with `NoRoom`.
const PIN_GRACE: Duration = Duration::from_millis(500);

/// How often a version's last use is written to disk at most (its `meta.json` mtime).
const TOUCH_INTERVAL: Duration = Duration::from_secs(30);

impl Cache {
    /// Open (or create) the cache directory with a byte budget and the default options.
    pub fn open(dir: &Path, budget: u64) -> Result<Cache, CacheError> {
        Cache::open_with(dir, CacheOptions::with_budget(budget))
    }

    /// Open (or create) the cache directory. Reuses every complete version found there,
    /// removes leftovers, and trims to the budget.
    pub fn open_with(dir: &Path, options: CacheOptions) -> Result<Cache, CacheError> {
        let budget = options.budget;
        let layout = Layout::open(dir)?;
        let (mut found, damaged) = layout.scan();
        // Oldest use first, so that pushing in order leaves the newest most recent.
        found.sort_by_key(|f| f.last_used);
        let mut state = State {
            lru: lru::LruCache::unbounded(),
            flights: HashMap::new(),
            reserved: HashMap::new(),
            used: 0,
            failed: HashMap::new(),
            evicting: HashSet::new(),
            told_too_large: HashSet::new(),
            damaged,
            shutting_down: false,
            spans: spans::Spans::default(),
        };
        for f in found {
            state.used += f.disk_bytes;
            state.lru.put(
                f.key,
                Resident {
                    slot: Loaded::OnDisk,
                    disk_bytes: f.disk_bytes,
                    archive: f.archive,
                    last_used: f.last_used,
                    last_touch: Instant::now(),
                },
            );
        }
        let cache = Cache {
            inner: Arc::new(Inner {
                layout,
                budget,
                failure_memory: options.failure_memory,
                state: Mutex::new(state),
                moved_aside: Condvar::new(),
                pool: Pool::new(options.downloads),
                in_use: OnceLock::new(),
                in_use_seen: Mutex::new(None),
                verified: Verified::default(),
            }),
        };
        let mut st = cache.inner.state.lock();
        let count = st.lru.len();
        let evicted = cache.evict_until(&mut st, budget, None, &HashSet::new());
        tracing::info!(
            cache = %dir.display(),
            versions = st.lru.len(),
            trimmed = count - st.lru.len(),
            used = %ByteSize(st.used),
            budget = %ByteSize(budget),
            downloads = options.downloads,
            "cache opened"
        );
        drop(st);
        purge(cache.move_aside(evicted));
        Ok(cache)
    }

    pub fn budget(&self) -> u64 {
        self.inner.budget
    }

    pub fn root(&self) -> &Path {
        &self.inner.layout.root
    }

    /// The reader every byte served from a version goes through (see `verified`).
    pub fn verified(&self) -> &Verified {
        &self.inner.verified
    }

    /// The version `key` if it is complete, else an interest in the flight that fetches
    /// it: one that runs or waits in the download pool's queue, started now if there is
    /// none, or one that failed less than [`CacheOptions::failure_memory`] ago. Never waits
    /// for a download. A version found complete on disk at start is loaded here, on the
    /// calling thread (reading its index is quick, and must not queue behind downloads).
    pub fn start<F>(&self, key: &VersionKey, announced: Announced, fetch: F) -> Available
    where
        F: FnOnce(FetchTarget<'_>) -> FetchResult + Send + 'static,
    {
        self.start_or_load(key, Some((announced, Box::new(fetch))))
    }

    /// The version `key` from the disk alone, for a caller that has nothing to fetch it
    /// with (the API cannot describe it now): as [`Cache::start`], but a version that is
    /// not resident ends its flight at once with [`CacheError::NotResident`].
    pub fn start_resident(&self, key: &VersionKey) -> Available {
        self.start_or_load(key, None)
    }

    fn start_or_load(&self, key: &VersionKey, fetch: Option<(Announced, BoxedFetch)>) -> Available {
        let (flight, interest, on_disk) = match self.begin(key) {
            Begin::Ready(v) => return Available::Ready(v),
            Begin::Join(interest) => return Available::Pending(interest),
            Begin::Run {
                flight,
                interest,
                on_disk,
            } => (flight, interest, on_disk),
        };
        if on_disk {
            let loaded = catch_unwind(AssertUnwindSafe(|| self.load(key)));
            match loaded {
                Ok(Some(v)) => {
                    self.conclude(key, &flight, &Ok(v.clone()));
                    flight.finish(Ok(v.clone()));
                    return Available::Ready(v);
                }
                // A damaged index: the version was dropped, fetch it again.
                Ok(None) => {}
                Err(panic) => {
                    let result = Err(Arc::new(CacheError::Panicked {
                        key: key.clone(),
                        message: crate::panics::message(&*panic),
                    }));
                    self.conclude(key, &flight, &result);
                    flight.finish(result);
                    return Available::Pending(interest);
                }
            }
        }
        match fetch {
            Some((announced, fetch)) => self.queue(key, flight, announced, fetch),
            None => {
                let result = Err(Arc::new(CacheError::NotResident { key: key.clone() }));
                self.conclude(key, &flight, &result);
                flight.finish(result);
            }
        }
        Available::Pending(interest)
    }

    /// The flight of `key`, if one is running or queued (or failed a moment ago), with an
    /// interest in it.
    pub fn in_flight(&self, key: &VersionKey) -> Option<Interest> {
        let mut st = self.inner.state.lock();
        if let Some(flight) = st.flights.get(key) {
            return Some(Interest::join(flight.clone()));
        }
        self.remembered_failure(&mut st, key).map(Interest::join)
    }

    /// Stop everything, for a shutdown: every flight ends now with
    /// [`CacheError::ShuttingDown`] (its waiters are answered at once), the running fetches
    /// are told to stop, the queued ones never start, and no new one is started.
    pub fn shutdown(&self) {
        let flights: Vec<Arc<Flight>> = {
            let mut st = self.inner.state.lock();
            st.shutting_down = true;
            st.flights.drain().map(|(_, f)| f).collect()
        };
        let dropped = self.inner.pool.clear();
        tracing::info!(
            flights = flights.len(),
            queued = dropped,
            "stopping every download: the mount is shutting down"
        );
        let err = Arc::new(CacheError::ShuttingDown);
        for f in flights {
            f.cancel.store(true, Ordering::SeqCst);
            f.finish(Err(err.clone()));
        }
    }

    fn begin(&self, key: &VersionKey) -> Begin {
        let mut st = self.inner.state.lock();
        if st.shutting_down {
            let ended = Arc::new(Flight::ended(Arc::new(CacheError::ShuttingDown)));
            return Begin::Join(Interest::join(ended));
        }
        if let Some(lost) = self.lost_error() {
            return Begin::Join(Interest::join(Arc::new(Flight::ended(lost))));
        }
        if let Some(flight) = st.flights.get(key).cloned() {
            return Begin::Join(Interest::join(flight));
        }
        if let Some(failed) = self.remembered_failure(&mut st, key) {
            return Begin::Join(Interest::join(failed));
        }
        let mut touch = false;
        let on_disk = match st.lru.get_mut(key) {
            Some(entry) => {
                touch = used_now(entry);
                match &entry.slot {
                    Loaded::Ready(v) => {
                        let v = v.clone();
                        drop(st);
                        self.touch(key, touch);
                        return Begin::Ready(v);
                    }
                    Loaded::OnDisk => true,
                }
            }
            None => false,
        };
        let flight = Arc::new(Flight::new(if on_disk {
            Phase::Running(Instant::now())
        } else {
            Phase::Queued(Instant::now())
        }));
        st.flights.insert(key.clone(), flight.clone());
        let interest = Interest::join(flight.clone());
        drop(st);
        self.touch(key, touch);
        Begin::Run {
            flight,
            interest,
            on_disk,
        }
    }

    /// The failed flight of `key` if its failure is still remembered.
    fn remembered_failure(&self, st: &mut State, key: &VersionKey) -> Option<Arc<Flight>> {
        let (at, flight) = st.failed.get(key)?;
        if at.elapsed() < self.inner.failure_memory {
            return Some(flight.clone());
        }
        st.failed.remove(key);
        None
    }

    /// Queue the fetch of `key` for the download pool.
    fn queue(
        &self,
        key: &VersionKey,
        flight: Arc<Flight>,
        announced: Announced,
        fetch: BoxedFetch,
    ) {
        // The job holds the cache weakly: a cache dropped (a test's, or at exit) with jobs
        // queued is not kept alive by them, and lets go of its directory's lock.
        flight.set_queued();
        // A download starts only into a cache directory that is still ours.
        if let Err(lost) = self.check_held() {
            let result = Err(Arc::new(lost));
            self.conclude(key, &flight, &result);
            flight.finish(result);
            return;
        }
        let cache = Arc::downgrade(&self.inner);
        let (k, f) = (key.clone(), flight.clone());
        let job: pool::Job = Box::new(move || run_job(cache, k, f, announced, fetch));
        if let Err((job, source)) = self.inner.pool.submit(job) {
            drop(job);
            tracing::error!(version = %key, error = %source, "cannot start a download thread");
            let result = Err(Arc::new(CacheError::Spawn {
                key: key.clone(),
                source,
            }));
            self.conclude(key, &flight, &result);
            flight.finish(result);
        }
    }

    /// Fetch `key` for `flight` (the body of a pool job). The flight is not ended here but
    /// by the caller, once it has let go of the cache (see [`run_job`]).
    fn run(
        &self,
        key: &VersionKey,
        flight: &Arc<Flight>,
        announced: Announced,
        fetch: BoxedFetch,
    ) -> Outcome {
        flight.set_running();
        let result = if self.cancelled(key, flight) {
            Err(self.cancel_error(key))
        } else {
            self.fetch(key, flight, announced, fetch)
        };
        self.conclude(key, flight, &result);
        result
    }

    /// The bookkeeping at the end of a flight: it leaves the map of flights (unless a
    /// cancel took it out already, and a new one of the same key may be there), and a
    /// failure worth remembering is remembered.
    fn conclude(&self, key: &VersionKey, flight: &Arc<Flight>, result: &Outcome) {
        let mut st = self.inner.state.lock();
        if st.flights.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            st.flights.remove(key);
        }
        if let Some(r) = st.reserved.remove(&flight.id) {
            st.used -= r.1;
        }
        if let Err(e) = result {
            if e.remembered() && !st.shutting_down && !self.inner.failure_memory.is_zero() {
                let memory = self.inner.failure_memory;
                st.failed.retain(|_, (at, _)| at.elapsed() < memory);
                st.failed
                    .insert(key.clone(), (Instant::now(), flight.clone()));
            }
        }
    }

    /// Whether the fetch of `flight` must stop. A flight abandoned (its last interest was
    /// given up) is cancelled here, under the lock under which new interest is taken, so
    /// that a caller joining at the same moment either keeps it going or finds it gone and
    /// starts a new one.
    fn cancelled(&self, key: &VersionKey, flight: &Arc<Flight>) -> bool {
        if flight.cancel.load(Ordering::SeqCst) {
            return true;
        }
        if !flight.is_abandoned() {
            return false;
        }
        let mut st = self.inner.state.lock();
        if !flight.is_abandoned() {
            return false;
        }
        flight.cancel.store(true, Ordering::SeqCst);
        if st.flights.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            st.flights.remove(key);
        }
        tracing::info!(version = %key, "nobody waits for the download any more; stopping it");
        true
    }

    fn cancel_error(&self, key: &VersionKey) -> SharedError {
        if self.inner.state.lock().shutting_down {
            Arc::new(CacheError::ShuttingDown)
        } else {
            Arc::new(CacheError::Cancelled { key: key.clone() })
        }
    }

    /// Whether `key` is complete in the cache (its index loaded or not). Not a use: the LRU
    /// order does not move.
    pub fn is_resident(&self, key: &VersionKey) -> bool {
        self.inner.state.lock().lru.contains(key)
    }

    /// The version `key` if it is resident and loaded; never fetches. Pins like
    /// [`Cache::start`], and like it a hit counts as a use (LRU order, and the last use
    /// recorded on disk).
    pub fn peek(&self, key: &VersionKey) -> Option<Arc<CachedVersion>> {
        if self.lost().is_some() {
            return None;
        }
        let mut st = self.inner.state.lock();
        let entry = st.lru.get_mut(key)?;
        let Loaded::Ready(v) = &entry.slot else {
            return None;
        };
        let v = v.clone();
        let touch = used_now(entry);
        drop(st);
        self.touch(key, touch);
        Some(v)
    }

    /// Record a use of `key` on disk when [`used_now`] says so; never under the lock.
    fn touch(&self, key: &VersionKey, due: bool) {
        if due {
            self.inner.layout.touch(key);
        }
    }
}

/// The body of a pool job: run the fetch of `key`, then end its flight, and end it even if
/// the cache's own code panics (the reservation is returned then too). The flight is ended
/// after the job has let go of the cache, so that whoever the flight wakes may drop the
/// last handle on it (and its directory's lock) at once.
fn run_job(
    cache: Weak<Inner>,
    key: VersionKey,
    flight: Arc<Flight>,
    announced: Announced,
    fetch: BoxedFetch,
) {
    let Some(inner) = cache.upgrade() else {
        flight.finish(Err(Arc::new(CacheError::ShuttingDown)));
        return;
    };
    let cache = Cache { inner };
    let result = catch_unwind(AssertUnwindSafe(|| {
        cache.run(&key, &flight, announced, fetch)
    }))
    .unwrap_or_else(|panic| {
        let result = Err(Arc::new(CacheError::Panicked {
            key: key.clone(),
            message: crate::panics::message(&*panic),
        }));
        cache.conclude(&key, &flight, &result);
        result
    });
    drop(cache);
    flight.finish(result);
    heap::return_free_memory();
}

/// Whether a use of `entry` now should also be recorded on disk (its `meta.json` mtime, at
/// most every [`TOUCH_INTERVAL`]); the caller does so after letting go of the lock.
fn used_now(entry: &mut Resident) -> bool {
    entry.last_used = SystemTime::now();
    if entry.last_touch.elapsed() >= TOUCH_INTERVAL {
        entry.last_touch = Instant::now();
        return true;
    }
    false
}

#[cfg(test)]
mod tests;
