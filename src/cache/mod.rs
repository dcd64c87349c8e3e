//! Unpacked versions on disk under a byte budget.
//!
//! The cache owns the cache directory (see [`disk`] for its layout): it decides which
//! versions stay (LRU order, the `lru` crate), makes room before a download starts, pins
//! versions that are in use, makes sure that concurrent requests for the same cold version
//! fetch it once (single-flight), and commits new versions crash-safely.
//!
//! It stores versions under their immutable id and knows nothing of HTTP or inodes: the
//! caller passes a `fetch` closure that fills a directory (with [`crate::archive::unpack`]).
//!
//! Pinning: every [`CachedVersion`] handed out is an `Arc`; while any caller holds one
//! (an open file, an operation in progress) the version is never evicted. Where the kernel
//! does not report opens, the owner also installs an [`InUse`] probe (see
//! [`crate::openfiles`]), asked before each eviction: the versions it names are pinned too.
//!
//! Progressive availability: [`Cache::start`] runs a fetch on a background thread owned by
//! its [`Flight`] and returns at once. The fetch publishes each file as soon as it is
//! unpacked (see [`crate::archive::Publish`]) into the flight, where callers can wait for
//! either a name to be published or the whole fetch to end ([`Flight::lookup`]). Nothing
//! published is cached: only a complete, committed version enters the LRU, and a failed
//! fetch leaves nothing behind (its published files live on only in handles already open).

mod disk;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};

use crate::api::Kind;
use crate::archive::{Index, Publish, Published, PublishedNode, Step, Unpacked};
use crate::size::ByteSize;
pub use disk::CACHE_FORMAT_VERSION;
use disk::{Completion, Layout};

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
    pub disk_bytes: u64,
}

/// What the caller knows of a version before fetching it (from the API's version object).
#[derive(Debug, Clone, Copy)]
pub struct Announced {
    /// Uncompressed total of the files.
    pub size: u64,
    pub file_count: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{key} is {} unpacked, more than the whole cache budget of {}; raise --cache-size", ByteSize(*.size), ByteSize(*.budget))]
    TooLarge {
        key: VersionKey,
        size: u64,
        budget: u64,
    },
    #[error("no room in the cache for {key} ({} needed, budget {}): every cached version is in use; close files or raise --cache-size", ByteSize(*.needed), ByteSize(*.budget))]
    NoRoom {
        key: VersionKey,
        needed: u64,
        budget: u64,
    },
    #[error("cache directory {} is in use by another vm0fs (pid {holder}); unmount it or pass another --cache-dir", .dir.display())]
    Locked { dir: PathBuf, holder: String },
    #[error("cache I/O error on {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}: {source}")]
    Fetch {
        key: VersionKey,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A failure shared by every caller that waited on the same fetch.
pub type SharedError = Arc<CacheError>;

/// What a fetch closure gets: where to unpack, how many content bytes it may write, and
/// where to publish files as they are complete.
pub struct FetchTarget<'a> {
    pub dir: &'a Path,
    pub max_bytes: u64,
    pub publish: &'a dyn Publish,
}

/// A boxed fetch error, as fetch closures return it.
pub type FetchResult = Result<Unpacked, Box<dyn std::error::Error + Send + Sync>>;

/// One version's line in [`Cache::snapshot`].
#[derive(Debug, Clone)]
pub struct ResidentInfo {
    pub key: VersionKey,
    pub disk_bytes: u64,
    pub pinned: bool,
    pub last_used: SystemTime,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub budget: u64,
    /// Bytes of resident versions plus reservations of fetches in flight.
    pub used: u64,
    /// Least recently used first.
    pub resident: Vec<ResidentInfo>,
    pub in_flight: Vec<VersionKey>,
}

enum Slot {
    /// Loaded: index in memory. Pinned while the `Arc` has other holders.
    Ready(Arc<CachedVersion>),
    /// Complete on disk (found at start), index not read yet.
    OnDisk,
}

struct Resident {
    slot: Slot,
    disk_bytes: u64,
    last_used: SystemTime,
    last_touch: Instant,
}

impl Resident {
    fn pinned(&self) -> bool {
        matches!(&self.slot, Slot::Ready(v) if Arc::strong_count(v) > 1)
    }
}

/// One fetch (or load) of a version in progress, shared by everyone who asked for it.
#[derive(Default)]
pub struct Flight {
    state: Mutex<FlightState>,
    cond: Condvar,
    reported: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct FlightState {
    done: Option<Result<Arc<CachedVersion>, SharedError>>,
    published: Published,
}

/// What a caller waiting on a [`Flight`] gets: something published, or the end.
#[derive(Debug)]
pub enum Waited<T> {
    Published(T),
    Done(Result<Arc<CachedVersion>, SharedError>),
}

impl Flight {
    /// Wait for the end of the fetch.
    pub fn wait(&self) -> Result<Arc<CachedVersion>, SharedError> {
        let mut st = self.state.lock();
        loop {
            if let Some(done) = &st.done {
                return done.clone();
            }
            self.cond.wait(&mut st);
        }
    }

    /// Wait until `name` in directory node `dir` is published, or the fetch ends. Once it
    /// has ended only the version itself answers: after a failure, nothing published is.
    pub fn lookup(&self, dir: u32, name: &[u8]) -> Waited<(u32, PublishedNode)> {
        self.wait_for(|p| p.lookup(dir, name).map(|(n, a)| (n, a.clone())))
    }

    /// Wait until node `node` is published, or the fetch ends.
    pub fn node(&self, node: u32) -> Waited<PublishedNode> {
        self.wait_for(|p| p.node(node).cloned())
    }

    /// True for the first caller only: lets one of the many waiters of a failed flight
    /// record its error.
    pub fn report_once(&self) -> bool {
        !self
            .reported
            .swap(true, std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the fetch has ended (for tests and the status file).
    pub fn is_done(&self) -> bool {
        self.state.lock().done.is_some()
    }

    fn wait_for<T>(&self, mut find: impl FnMut(&Published) -> Option<T>) -> Waited<T> {
        let mut st = self.state.lock();
        loop {
            if let Some(done) = &st.done {
                return Waited::Done(done.clone());
            }
            if let Some(found) = find(&st.published) {
                return Waited::Published(found);
            }
            self.cond.wait(&mut st);
        }
    }

    fn finish(&self, result: Result<Arc<CachedVersion>, SharedError>) {
        let mut st = self.state.lock();
        st.done = Some(result);
        // The blob paths it holds are gone (renamed, committed or deleted).
        st.published = Published::default();
        drop(st);
        self.cond.notify_all();
    }
}

impl Publish for Flight {
    fn file(&self, steps: &[Step], _file: &crate::archive::PublishedFile) {
        self.state.lock().published.add(steps);
        self.cond.notify_all();
    }

    fn withdraw(&self, dir: u32, name: &[u8], gone: Option<u32>) {
        self.state.lock().published.withdraw(dir, name, gone);
    }
}

/// What [`Cache::start`] returns.
pub enum Available {
    /// Complete and loaded; pinned while held.
    Ready(Arc<CachedVersion>),
    /// Being fetched (or loaded) in the background.
    Pending(Arc<Flight>),
}

/// What [`Cache::begin`] found.
enum Begin {
    Ready(Arc<CachedVersion>),
    Join(Arc<Flight>),
    /// A new flight the caller must run; `on_disk`: complete on disk, only to be loaded.
    Run {
        flight: Arc<Flight>,
        on_disk: bool,
    },
}

struct State {
    lru: lru::LruCache<VersionKey, Resident>,
    flights: HashMap<VersionKey, Arc<Flight>>,
    /// Reservations of fetches in flight, by key.
    reserved: HashMap<VersionKey, u64>,
    used: u64,
}

/// The version cache. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    layout: Layout,
    budget: u64,
    state: Mutex<State>,
    in_use: OnceLock<InUse>,
    /// The probe's last answer and when it came, for [`Cache::snapshot`].
    in_use_seen: Mutex<Option<(Instant, Arc<HashSet<VersionKey>>)>>,
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

/// Room kept for a version beyond its content bytes: one block per file (small files
/// still take a whole block) plus the index and the completion record.
fn reservation(a: Announced) -> u64 {
    a.size
        .saturating_add(a.file_count.saturating_mul(4096))
        .saturating_add(64 * 1024)
}

impl Cache {
    /// Open (or create) the cache directory with a byte budget. Reuses every complete
    /// version found there, removes leftovers, and trims to the budget.
    pub fn open(dir: &Path, budget: u64) -> Result<Cache, CacheError> {
        let layout = Layout::open(dir)?;
        let mut found = layout.scan();
        // Oldest use first, so that pushing in order leaves the newest most recent.
        found.sort_by_key(|f| f.last_used);
        let mut state = State {
            lru: lru::LruCache::unbounded(),
            flights: HashMap::new(),
            reserved: HashMap::new(),
            used: 0,
        };
        for f in found {
            state.used += f.disk_bytes;
            state.lru.put(
                f.key,
                Resident {
                    slot: Slot::OnDisk,
                    disk_bytes: f.disk_bytes,
                    last_used: f.last_used,
                    last_touch: Instant::now(),
                },
            );
        }
        let cache = Cache {
            inner: Arc::new(Inner {
                layout,
                budget,
                state: Mutex::new(state),
                in_use: OnceLock::new(),
                in_use_seen: Mutex::new(None),
            }),
        };
        let count = cache.inner.state.lock().lru.len();
        let mut trash = Vec::new();
        {
            let mut st = cache.inner.state.lock();
            cache.evict_until(&mut st, budget, None, &HashSet::new(), &mut trash);
            tracing::info!(
                cache = %dir.display(),
                versions = st.lru.len(),
                trimmed = count - st.lru.len(),
                used = %ByteSize(st.used),
                budget = %ByteSize(budget),
                "cache opened"
            );
        }
        purge(trash);
        Ok(cache)
    }

    pub fn budget(&self) -> u64 {
        self.inner.budget
    }

    pub fn root(&self) -> &Path {
        &self.inner.layout.root
    }

    /// The version `key`, from the cache or fetched now on the calling thread. Concurrent
    /// calls for the same key share one fetch. The returned `Arc` pins the version until
    /// dropped.
    pub fn get<F>(
        &self,
        key: &VersionKey,
        announced: Announced,
        fetch: F,
    ) -> Result<Arc<CachedVersion>, SharedError>
    where
        F: FnOnce(FetchTarget<'_>) -> FetchResult,
    {
        match self.begin(key) {
            Begin::Ready(v) => Ok(v),
            Begin::Join(flight) => flight.wait(),
            Begin::Run { flight, on_disk } => self.run(key, &flight, on_disk, announced, fetch),
        }
    }

    /// The version `key` if it is complete, else the flight that fetches it, started now on
    /// a background thread if none is running. Never waits for a download.
    pub fn start<F>(&self, key: &VersionKey, announced: Announced, fetch: F) -> Available
    where
        F: FnOnce(FetchTarget<'_>) -> FetchResult + Send + 'static,
    {
        let (flight, on_disk) = match self.begin(key) {
            Begin::Ready(v) => return Available::Ready(v),
            Begin::Join(flight) => return Available::Pending(flight),
            Begin::Run { flight, on_disk } => (flight, on_disk),
        };
        let cache = self.clone();
        let owned = key.clone();
        let running = flight.clone();
        let spawned = std::thread::Builder::new()
            .name("vm0fs-fetch".into())
            .spawn(move || {
                let _ = cache.run(&owned, &running, on_disk, announced, fetch);
            });
        if let Err(e) = spawned {
            self.inner.state.lock().flights.remove(key);
            flight.finish(Err(Arc::new(CacheError::Io {
                path: self.root().to_path_buf(),
                source: e,
            })));
        }
        Available::Pending(flight)
    }

    /// The flight of `key`, if one is running.
    pub fn in_flight(&self, key: &VersionKey) -> Option<Arc<Flight>> {
        self.inner.state.lock().flights.get(key).cloned()
    }

    fn begin(&self, key: &VersionKey) -> Begin {
        let mut st = self.inner.state.lock();
        if let Some(flight) = st.flights.get(key).cloned() {
            return Begin::Join(flight);
        }
        let on_disk = match st.lru.get_mut(key) {
            Some(entry) => {
                self.used_now(key, entry);
                match &entry.slot {
                    Slot::Ready(v) => return Begin::Ready(v.clone()),
                    Slot::OnDisk => true,
                }
            }
            None => false,
        };
        let flight = Arc::new(Flight::default());
        st.flights.insert(key.clone(), flight.clone());
        Begin::Run { flight, on_disk }
    }

    /// Load or fetch `key` for `flight`, then end the flight.
    fn run<F>(
        &self,
        key: &VersionKey,
        flight: &Arc<Flight>,
        on_disk: bool,
        announced: Announced,
        fetch: F,
    ) -> Result<Arc<CachedVersion>, SharedError>
    where
        F: FnOnce(FetchTarget<'_>) -> FetchResult,
    {
        let result = match on_disk.then(|| self.load(key)).flatten() {
            Some(v) => Ok(v),
            None => self.fetch(key, announced, fetch, &**flight),
        };
        self.inner.state.lock().flights.remove(key);
        flight.finish(result.clone());
        result
    }

    /// The version `key` if it is resident and loaded; never fetches. Pins like [`Cache::get`].
    /// Like `get`, a hit counts as a use (LRU order, and the last use recorded on disk).
    pub fn peek(&self, key: &VersionKey) -> Option<Arc<CachedVersion>> {
        let mut st = self.inner.state.lock();
        let entry = st.lru.get_mut(key)?;
        let Slot::Ready(v) = &entry.slot else {
            return None;
        };
        let v = v.clone();
        self.used_now(key, entry);
        Some(v)
    }

    fn used_now(&self, key: &VersionKey, entry: &mut Resident) {
        entry.last_used = SystemTime::now();
        if entry.last_touch.elapsed() >= TOUCH_INTERVAL {
            entry.last_touch = Instant::now();
            self.inner.layout.touch(key);
        }
    }

    /// Pin the versions `probe` names whenever eviction is considered (set once; later
    /// calls are ignored).
    pub fn set_in_use(&self, probe: InUse) {
        let _ = self.inner.in_use.set(probe);
    }

    fn in_use(&self) -> Arc<HashSet<VersionKey>> {
        let Some(probe) = self.inner.in_use.get() else {
            return Arc::default();
        };
        let found = Arc::new(probe());
        *self.inner.in_use_seen.lock() = Some((Instant::now(), found.clone()));
        found
    }

    /// The probe's answer, at most [`IN_USE_SNAPSHOT_AGE`] old.
    fn in_use_recent(&self) -> Arc<HashSet<VersionKey>> {
        if let Some((at, found)) = &*self.inner.in_use_seen.lock() {
            if at.elapsed() < IN_USE_SNAPSHOT_AGE {
                return found.clone();
            }
        }
        self.in_use()
    }

    /// Whether adding `need` bytes would pass the budget, so that eviction must look for
    /// victims (and needs to know which versions are in use).
    fn over_budget_with(&self, need: u64) -> bool {
        self.inner.state.lock().used + need > self.inner.budget
    }

    /// The budget and the bytes in use (resident versions plus reservations), without the
    /// cost of [`Cache::snapshot`].
    pub fn usage(&self) -> (u64, u64) {
        (self.inner.budget, self.inner.state.lock().used)
    }

    /// A consistent picture of the cache for the status file and tests (the versions in
    /// use per the probe, as of at most a second ago, count as pinned).
    pub fn snapshot(&self) -> Snapshot {
        let in_use = self.in_use_recent();
        let st = self.inner.state.lock();
        Snapshot {
            budget: self.inner.budget,
            used: st.used,
            resident: st
                .lru
                .iter()
                .rev()
                .map(|(k, e)| ResidentInfo {
                    key: k.clone(),
                    disk_bytes: e.disk_bytes,
                    pinned: e.pinned() || in_use.contains(k),
                    last_used: e.last_used,
                })
                .collect(),
            in_flight: st.flights.keys().cloned().collect(),
        }
    }

    /// Read the index of a version found on disk at start. On failure (a damaged index), the
    /// version is dropped from the cache and `None` tells the caller to fetch it again.
    fn load(&self, key: &VersionKey) -> Option<Arc<CachedVersion>> {
        let dir = self.inner.layout.version_dir(key);
        let loaded = Index::load(&dir.join("index.bin"));
        let mut st = self.inner.state.lock();
        let entry = st.lru.get_mut(key)?;
        match loaded {
            Ok(index) => {
                let v = Arc::new(CachedVersion {
                    key: key.clone(),
                    dir,
                    index,
                    disk_bytes: entry.disk_bytes,
                });
                entry.slot = Slot::Ready(v.clone());
                Some(v)
            }
            Err(e) => {
                tracing::warn!(version = %key, error = %e, "cached index unreadable; downloading the version again");
                let bytes = entry.disk_bytes;
                st.lru.pop(key);
                st.used -= bytes;
                let trash = self.inner.layout.discard(&dir);
                drop(st);
                purge(trash.into_iter().collect());
                None
            }
        }
    }

    fn fetch<F>(
        &self,
        key: &VersionKey,
        announced: Announced,
        fetch: F,
        publish: &dyn Publish,
    ) -> Result<Arc<CachedVersion>, SharedError>
    where
        F: FnOnce(FetchTarget<'_>) -> FetchResult,
    {
        let budget = self.inner.budget;
        if announced.size > budget {
            let err = CacheError::TooLarge {
                key: key.clone(),
                size: announced.size,
                budget,
            };
            tracing::error!(version = %key, size = announced.size, budget, "{err}");
            return Err(Arc::new(err));
        }
        let need = reservation(announced).min(budget);
        let mut trash = Vec::new();
        let mut refuse_after: Option<Instant> = None;
        loop {
            let in_use = if self.over_budget_with(need) {
                self.in_use()
            } else {
                Arc::default()
            };
            let mut st = self.inner.state.lock();
            let target = budget.saturating_sub(need);
            self.evict_until(&mut st, target, None, &in_use, &mut trash);
            if st.used + need <= budget {
                st.used += need;
                st.reserved.insert(key.clone(), need);
                break;
            }
            // Other downloads in progress hold reservations; once complete (and unpinned)
            // they can be evicted, so wait for one rather than refuse. Only flights that
            // hold a reservation are waited for: they never wait for room themselves, so
            // two fetches can never wait for each other.
            let busy = st.reserved.keys().find_map(|k| st.flights.get(k).cloned());
            drop(st);
            match busy {
                Some(flight) => {
                    let _ = flight.wait();
                }
                // A file closed a moment ago may still hold its pin: the kernel sends
                // FUSE_RELEASE asynchronously after close(2) returns. Give such pins a
                // moment to drop before refusing. (Each round asks the in-use probe again,
                // which walks /proc: a few rounds, not hundreds.)
                None if *refuse_after.get_or_insert_with(|| Instant::now() + PIN_GRACE)
                    > Instant::now() =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                None => {
                    purge(trash);
                    let err = CacheError::NoRoom {
                        key: key.clone(),
                        needed: need,
                        budget,
                    };
                    tracing::error!(version = %key, "{err}");
                    return Err(Arc::new(err));
                }
            }
        }
        // Deleting evicted versions before the download starts keeps the real usage
        // within the budget plus the one version being unpacked.
        purge(trash);

        let release = |st: &mut State| {
            if let Some(r) = st.reserved.remove(key) {
                st.used -= r;
            }
        };
        let result = self.fetch_into_tmp(key, announced, fetch, publish);
        let mut st = self.inner.state.lock();
        release(&mut st);
        let (dir, unpacked, disk_bytes) = match result {
            Ok(ok) => ok,
            Err(e) => return Err(Arc::new(e)),
        };
        let v = Arc::new(CachedVersion {
            key: key.clone(),
            dir,
            index: unpacked.index,
            disk_bytes,
        });
        st.used += disk_bytes;
        st.lru.put(
            key.clone(),
            Resident {
                slot: Slot::Ready(v.clone()),
                disk_bytes,
                last_used: SystemTime::now(),
                last_touch: Instant::now(),
            },
        );
        let mut trash = Vec::new();
        // The real usage can exceed the reservation only by what blocks cost beyond the
        // estimate; trim others (never the new one) to get back under the budget.
        if st.used > budget {
            drop(st);
            let in_use = self.in_use();
            st = self.inner.state.lock();
            self.evict_until(&mut st, budget, Some(key), &in_use, &mut trash);
        }
        drop(st);
        purge(trash);
        Ok(v)
    }

    fn fetch_into_tmp<F>(
        &self,
        key: &VersionKey,
        announced: Announced,
        fetch: F,
        publish: &dyn Publish,
    ) -> Result<(PathBuf, Unpacked, u64), CacheError>
    where
        F: FnOnce(FetchTarget<'_>) -> FetchResult,
    {
        let layout = &self.inner.layout;
        let tmp = layout.new_tmp_dir(key)?;
        let outcome = (|| {
            let unpacked = fetch(FetchTarget {
                dir: &tmp,
                max_bytes: announced.size.min(self.inner.budget),
                publish,
            })
            .map_err(|source| CacheError::Fetch {
                key: key.clone(),
                source,
            })?;
            let index_path = tmp.join("index.bin");
            unpacked
                .index
                .save(&index_path)
                .map_err(|source| CacheError::Io {
                    path: index_path,
                    source,
                })?;
            let disk_bytes = disk::disk_usage(&tmp) + 4096;
            let meta = Completion {
                format: CACHE_FORMAT_VERSION,
                kind: key.kind,
                id: key.id.clone(),
                disk_bytes,
                files: unpacked.stats.files,
                bytes: unpacked.stats.bytes,
            };
            let dir = layout.commit(key, &tmp, &meta)?;
            Ok((dir, unpacked, disk_bytes))
        })();
        if outcome.is_err() {
            // Nothing of a failed fetch is kept.
            disk::remove_all(&tmp);
        }
        outcome
    }

    /// Evict unpinned versions not `in_use`, least recently used first, until
    /// `used <= target`.
    fn evict_until(
        &self,
        st: &mut State,
        target: u64,
        keep: Option<&VersionKey>,
        in_use: &HashSet<VersionKey>,
        trash: &mut Vec<PathBuf>,
    ) {
        while st.used > target {
            let victim = st
                .lru
                .iter()
                .rev()
                .find(|(k, e)| {
                    !e.pinned()
                        && Some(*k) != keep
                        && !in_use.contains(*k)
                        && !st.flights.contains_key(*k)
                })
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else { break };
            let entry = st.lru.pop(&victim).expect("victim was just found");
            st.used -= entry.disk_bytes;
            tracing::info!(version = %victim, bytes = entry.disk_bytes, "evicting from the cache");
            if let Some(t) = self
                .inner
                .layout
                .discard(&self.inner.layout.version_dir(&victim))
            {
                trash.push(t);
            }
        }
    }
}

fn purge(paths: Vec<PathBuf>) {
    for p in paths {
        disk::remove_all(&p);
    }
}

#[cfg(test)]
mod tests;
