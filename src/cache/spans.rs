//! Spans of the tar streams of versions larger than the cache: the stretch of a version's
//! decompressed archive between two checkpoints of its seek index, inflated again from a
//! range request and kept on disk under the same budget as the versions.
//!
//! A span is fetched once however many readers want it at once (single-flight, like a
//! version), on a thread of its own, while the readers wait under their [`Patience`] (a
//! FUSE worker never waits: it gets [`Stopped::WouldBlock`] and hands the operation to a
//! waiter, see `crate::fs::wait`). A span held by a reader (its `Arc`) is never evicted;
//! the others go least recently used first, after the versions (see
//! [`Cache::evict_until`]). Spans are keyed by the opening of their version (a serial):
//! a version indexed again (its archive changed at the store) never meets the spans of
//! the one it replaced. They are removed at start: the next run fetches what it reads.

use std::fs::File;
use std::os::unix::fs::MetadataExt;

#[allow(clippy::wildcard_imports)] // The policy in `mod.rs` and its spans are one type.
use super::*;

/// One span: which version opening, and which interval of its seek index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpanKey {
    pub version: VersionKey,
    /// The opening of the version ([`crate::archive::Checks::serial`]).
    pub serial: u64,
    pub k: u32,
}

/// A span on disk, open. Holding the `Arc` pins it.
#[derive(Debug)]
pub struct Span {
    pub file: File,
    /// Its length: the tar stream's bytes from the span's checkpoint on.
    pub len: u64,
    path: PathBuf,
    disk_bytes: u64,
}

impl Span {
    pub(super) fn new(file: File, len: u64, path: PathBuf, disk_bytes: u64) -> Span {
        Span {
            file,
            len,
            path,
            disk_bytes,
        }
    }
}

/// Why a span could not be had.
#[derive(Debug, Clone)]
pub enum SpanError {
    /// The caller may not wait, or gave up waiting.
    Stopped(Stopped),
    /// Its fetch failed.
    Failed(Arc<SpanFailure>),
}

/// Why a span's fetch failed: what went wrong (for the log and the reader's error), and
/// whether the store's object is no longer the one the version was indexed from.
#[derive(Debug, Clone)]
pub struct SpanFailure {
    pub why: String,
    pub changed: bool,
}

impl From<String> for SpanFailure {
    fn from(why: String) -> SpanFailure {
        SpanFailure {
            why,
            changed: false,
        }
    }
}

/// A span being fetched, shared by its waiters.
#[derive(Default)]
pub(super) struct SpanFlight {
    done: Mutex<Option<Result<Arc<Span>, Arc<SpanFailure>>>>,
    ended: Condvar,
    /// Started ahead of its reader: it gives up when the cache has no room at once, which
    /// a reader that joined it does not have to accept.
    ahead: bool,
}

impl SpanFlight {
    fn wait(&self, patience: &dyn Patience) -> Result<Arc<Span>, SpanError> {
        let mut done = self.done.lock();
        loop {
            if let Some(result) = &*done {
                return result.clone().map_err(SpanError::Failed);
            }
            if !patience.may_block() {
                return Err(SpanError::Stopped(Stopped::WouldBlock));
            }
            self.ended.wait_for(&mut done, WAIT_SLICE);
            if done.is_none() {
                // Asked without the lock: it may read `/proc`.
                drop(done);
                if patience.gave_up() {
                    return Err(SpanError::Stopped(Stopped::Interrupted));
                }
                done = self.done.lock();
            }
        }
    }

    fn end(&self, result: Result<Arc<Span>, Arc<SpanFailure>>) {
        *self.done.lock() = Some(result);
        self.ended.notify_all();
    }
}

/// The spans on disk and those being fetched (part of the cache's state).
pub(super) struct Spans {
    pub(super) lru: lru::LruCache<SpanKey, Arc<Span>>,
    pub(super) flights: HashMap<SpanKey, Arc<SpanFlight>>,
}

impl Default for Spans {
    fn default() -> Self {
        Spans {
            lru: lru::LruCache::unbounded(),
            flights: HashMap::new(),
        }
    }
}

impl Spans {
    /// Take the least recently used span nobody holds out of the table: its disk bytes and
    /// its path, to delete once the lock is let go.
    pub(super) fn evict_one(&mut self) -> Option<(u64, PathBuf)> {
        let victim = self
            .lru
            .iter()
            .rev()
            .find(|(_, s)| Arc::strong_count(s) == 1)
            .map(|(k, _)| k.clone())?;
        let span = self.lru.pop(&victim)?;
        Some((span.disk_bytes, span.path.clone()))
    }

    /// Take every span of `version` out of the table (the version is gone): their bytes,
    /// and their paths to delete.
    pub(super) fn drop_version(&mut self, version: &VersionKey) -> (u64, Vec<PathBuf>) {
        let keys: Vec<SpanKey> = self
            .lru
            .iter()
            .filter(|(k, _)| &k.version == version)
            .map(|(k, _)| k.clone())
            .collect();
        let mut bytes = 0;
        let mut paths = Vec::new();
        for k in keys {
            if let Some(s) = self.lru.pop(&k) {
                bytes += s.disk_bytes;
                paths.push(s.path.clone());
            }
        }
        (bytes, paths)
    }
}

/// How long a span's fetch waits for room in the cache while what would make it is in
/// use, before it fails.
const SPAN_ROOM_WAIT: Duration = Duration::from_secs(30);

/// Whether a span's fetch may wait for room ([`Cache::span`]) or takes it only if it is
/// there now (read-ahead, [`Cache::span_ahead`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    Wait,
    Now,
}

/// Fills a span's file with its bytes (the tar stream from the span's checkpoint on, as
/// many as the span holds); an error says what went wrong.
pub type SpanFill = Box<dyn FnOnce(&mut File) -> Result<(), SpanFailure> + Send>;

impl Cache {
    /// Span `key`, from disk, or fetched with `fill` (on a thread of its own, once however
    /// many ask) while the caller waits as its `patience` allows.
    pub fn span(
        &self,
        key: &SpanKey,
        len: u64,
        patience: &dyn Patience,
        fill: impl FnOnce() -> SpanFill,
    ) -> Result<Arc<Span>, SpanError> {
        let mut st = self.inner.state.lock();
        if let Some(span) = st.spans.lru.get(key) {
            return Ok(span.clone());
        }
        if let Some(flight) = st.spans.flights.get(key).cloned() {
            drop(st);
            match flight.wait(patience) {
                // A read-ahead that found no room at once: this reader may wait for it.
                Err(SpanError::Failed(_)) if flight.ahead => {}
                other => return other,
            }
        } else {
            drop(st);
        }
        if !patience.may_block() {
            // The fetch starts now; the waiter that runs the operation again joins it.
            self.start_span(key, len, Room::Wait, fill());
            return Err(SpanError::Stopped(Stopped::WouldBlock));
        }
        let flight = self.start_span(key, len, Room::Wait, fill());
        flight.wait(patience)
    }

    /// Start fetching span `key` ahead of its reader, if the cache has room for it now
    /// without evicting what is in use: read-ahead never pushes the budget.
    pub fn span_ahead(&self, key: &SpanKey, len: u64, fill: impl FnOnce() -> SpanFill) {
        let st = self.inner.state.lock();
        if st.spans.lru.contains(key) || st.spans.flights.contains_key(key) {
            return;
        }
        drop(st);
        self.start_span(key, len, Room::Now, fill());
    }

    /// Start fetching span `key` unless it is on disk or being fetched already.
    fn start_span(&self, key: &SpanKey, len: u64, room: Room, fill: SpanFill) -> Arc<SpanFlight> {
        let mut st = self.inner.state.lock();
        if let Some(flight) = st.spans.flights.get(key) {
            return flight.clone();
        }
        let flight = Arc::new(SpanFlight {
            ahead: room == Room::Now,
            ..SpanFlight::default()
        });
        if let Some(span) = st.spans.lru.get(key) {
            flight.end(Ok(span.clone()));
            return flight;
        }
        st.spans.flights.insert(key.clone(), flight.clone());
        drop(st);
        let cache = self.clone();
        let (fetched, ended) = (key.clone(), flight.clone());
        let spawned = std::thread::Builder::new()
            .name("vm0fs-span".into())
            .spawn(move || {
                let result = cache.fetch_span(&fetched, len, room, fill);
                cache.inner.state.lock().spans.flights.remove(&fetched);
                ended.end(result);
            });
        if let Err(e) = spawned {
            self.inner.state.lock().spans.flights.remove(key);
            let why = format!("cannot start a thread to fetch it: {e}");
            flight.end(Err(Arc::new(why.into())));
        }
        flight
    }

    /// Whether `key` was not told as too large before (its ERROR line is written once per
    /// version and mount; later refusals are logged at DEBUG).
    pub fn first_told_too_large(&self, key: &VersionKey) -> bool {
        self.inner.state.lock().told_too_large.insert(key.clone())
    }

    /// Forget span `key` (its bytes were found wrong): the next read fetches it again.
    /// A reader holding it keeps its open file.
    pub fn drop_span(&self, key: &SpanKey) {
        let mut st = self.inner.state.lock();
        if let Some(span) = st.spans.lru.pop(key) {
            st.used -= span.disk_bytes;
            drop(st);
            let _ = std::fs::remove_file(&span.path);
        }
    }

    /// Fill span `key`'s file, count it in the budget (evicting to make room) and keep it.
    fn fetch_span(
        &self,
        key: &SpanKey,
        len: u64,
        room: Room,
        fill: SpanFill,
    ) -> Result<Arc<Span>, Arc<SpanFailure>> {
        let path = self.inner.layout.span_path(&key.version, key.serial, key.k);
        let fail = |failure: SpanFailure| Arc::new(failure);
        // Room first, then the bytes: the disk never holds more than the budget, not even
        // while the span is written.
        let need = len.div_ceil(4096).saturating_add(1).saturating_mul(4096);
        self.reserve_span(need, room)
            .map_err(|why| fail(why.into()))?;
        let result = self.fill_span(key, &path, need, fill);
        if result.is_err() {
            self.discharge(need);
        }
        result
    }

    /// Count `need` bytes in the budget, evicting what may be evicted. A span that waits
    /// for room ([`Room::Wait`]) looks again every 20 ms while others hold the spans and
    /// versions that would make it (a reader holds its spans for the length of one read),
    /// for [`SPAN_ROOM_WAIT`] at most.
    fn reserve_span(&self, need: u64, room: Room) -> Result<(), String> {
        let budget = self.inner.budget;
        let deadline = Instant::now() + SPAN_ROOM_WAIT;
        loop {
            let in_use = if self.over_budget_with(need) {
                self.in_use()
            } else {
                Arc::default()
            };
            let mut st = self.inner.state.lock();
            let evicted = self.evict_until(&mut st, budget.saturating_sub(need), None, &in_use);
            let fits = st.used + need <= budget;
            if fits {
                st.used += need;
            }
            drop(st);
            purge(self.move_aside(evicted));
            if fits {
                return Ok(());
            }
            if room == Room::Now || Instant::now() >= deadline {
                return Err(format!(
                    "no room in the cache for a span of {} of its archive: what the budget \
                     holds is in use; close files or raise --cache-size",
                    ByteSize(need)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fill the span's file and keep it, its room `need` reserved: what it really takes
    /// on disk replaces the reservation.
    fn fill_span(
        &self,
        key: &SpanKey,
        path: &Path,
        need: u64,
        fill: SpanFill,
    ) -> Result<Arc<Span>, Arc<SpanFailure>> {
        let fail = |failure: SpanFailure| Arc::new(failure);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| fail(format!("{}: {e}", path.display()).into()))?;
        let filled = catch_unwind(AssertUnwindSafe(|| fill(&mut file)))
            .unwrap_or_else(|panic| Err(crate::panics::message(&*panic).into()));
        let meta = filled
            .and_then(|()| file.metadata().map_err(|e| e.to_string().into()))
            .map_err(|failure| {
                let _ = std::fs::remove_file(path);
                fail(failure)
            })?;
        let span = Arc::new(Span::new(
            file,
            meta.len(),
            path.to_path_buf(),
            meta.blocks() * 512,
        ));
        let mut st = self.inner.state.lock();
        st.used = st.used.saturating_sub(need) + span.disk_bytes;
        st.spans.lru.put(key.clone(), span.clone());
        // The reservation covered it, unless the file system allocated more than its
        // length rounded up: only then is the in-use probe (a walk of `/proc`) asked.
        if st.used > self.inner.budget {
            drop(st);
            self.charge(0);
        }
        Ok(span)
    }
}
