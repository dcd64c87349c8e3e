//! What the mount knows of each run, and keeping its files: a final run's files fetched
//! once into the cache directory ([`RunStore`]); a live run's files growing in place while
//! someone reads them (a follower thread per run, at most [`MAX_FOLLOWED`] at once, each
//! stopping [`FOLLOW_IDLE`] after the last read; a run not followed is brought up to date
//! before a read answers), its event stream recorded (at most [`MAX_STREAMS`] at once, the
//! others taking turns), and turning into the final ones, with the same log state,
//! when the run ends. A run the API no longer knows (404) is dropped.
//!
//! Nothing here waits for a caller on a FUSE worker: the network is asked on threads of
//! this module (the followers, the event readers) or on the listings' fetch threads that
//! run [`RunState::view`] (see `crate::runs`); what needs no request is answered by
//! [`RunState::at_hand`], and what a reader needs at once (a live run's detail) is kept
//! under a lock of its own that no request is made under.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::activity::Activity;
use crate::api::{ApiError, Run, RunId};

use super::api::RunsApi;
use super::files::{self, LogSync, RunFile, SyncError};
use super::store::RunStore;

mod events;

use events::{write_event, Streams};

/// How often a followed live run is asked for what is new. With `tail -f` looking once a
/// second, a new log entry is printed within about 1.5 s of the API having it.
pub const FOLLOW_POLL: Duration = Duration::from_millis(400);
/// A live run nobody read for this long is no longer followed.
pub const FOLLOW_IDLE: Duration = Duration::from_secs(30);
/// Live runs followed at once at most; a live run read beyond that is brought up to date
/// when it is read, at most once per [`UNFOLLOWED_REFRESH`].
pub const MAX_FOLLOWED: usize = 8;
pub const UNFOLLOWED_REFRESH: Duration = Duration::from_secs(1);
/// How long an unknown run id is remembered as unknown: a tool that stats many names
/// costs one request per name and per this long.
pub const MISS_MEMORY: Duration = Duration::from_secs(10);
/// Metrics of a followed run are asked every this many polls.
const METRICS_EVERY: u32 = 3;
/// Event streams read at once at most. The API replays a live run's output events after
/// `last_event_id` on a new stream (but not a finished run's), so the runs beyond wait for
/// a stream in turn (see [`STREAM_TURN`]) and lose only what they emit after their last turn
/// when they end before their next.
pub const MAX_STREAMS: usize = 64;
/// The longest a connection of an event stream lasts: then the run is read again on a new
/// one, after the last event written, or waits at the back when others wait. The turns
/// shrink as more runs wait, to `STREAM_TURN × streams / runs read` but not below
/// [`MIN_STREAM_TURN`], so that every live run read is on a stream at least once per about
/// `STREAM_TURN` (up to `STREAM_TURN / MIN_STREAM_TURN × MAX_STREAMS` runs; beyond, once per
/// `runs / MAX_STREAMS × MIN_STREAM_TURN`).
pub const STREAM_TURN: Duration = Duration::from_secs(5);
/// The shortest turn: the head of the answer and the replay of what is new fit in it.
pub const MIN_STREAM_TURN: Duration = Duration::from_secs(1);
/// How long the first look at a live run waits for its first event (the API sends the
/// status at once), so that the first read of `events.jsonl` is not empty.
pub const FIRST_EVENT_WAIT: Duration = Duration::from_secs(2);

/// Where a run's files are read from.
#[derive(Clone)]
pub enum View {
    /// Final: its complete directory in the cache, never changing.
    Final { dir: PathBuf, run: Arc<Run> },
    /// Live: its files growing.
    Live(Arc<Live>),
}

impl View {
    pub fn run(&self) -> Arc<Run> {
        match self {
            View::Final { run, .. } => run.clone(),
            View::Live(l) => l.run.lock().clone(),
        }
    }

    pub fn dir(&self) -> PathBuf {
        match self {
            View::Final { dir, .. } => dir.clone(),
            View::Live(l) => l.dir.clone(),
        }
    }

    pub fn is_final(&self) -> bool {
        matches!(self, View::Final { .. })
    }
}

/// A live run whose files are kept.
pub struct Live {
    id: RunId,
    dir: PathBuf,
    /// The run's detail as last fetched: never locked across a request, so a reader gets
    /// it at once while the follower waits for the API.
    run: Mutex<Arc<Run>>,
    /// The files' state; the follower holds it during its requests.
    state: Mutex<LiveState>,
    last_read: Mutex<Instant>,
    /// When its files were last brought up to date (`LiveState::synced`), readable while a
    /// poll holds the state: for the status file.
    refreshed: Mutex<Instant>,
    following: AtomicBool,
    /// Set once the files have become the final ones (the directory is gone).
    done: AtomicBool,
    /// Whether an event stream reader runs.
    streaming: AtomicBool,
}

struct LiveState {
    logs: LogSync,
    synced: Instant,
    /// The last output event written, and whether the final one was.
    last_sequence: Option<u64>,
    last_status: Option<String>,
    complete: bool,
    polls: u32,
}

/// The runs' state shared by the filesystem and the follower threads.
pub struct RunState {
    pub api: Arc<dyn RunsApi>,
    /// Where a followed run's failing API is reported.
    activity: Arc<Activity>,
    pub store: RunStore,
    live: Mutex<HashMap<RunId, Arc<Live>>>,
    finals: Mutex<HashMap<RunId, Arc<Run>>>,
    /// Details fetched for runs looked up directly, with when.
    details: Mutex<HashMap<RunId, (Arc<Run>, Instant)>>,
    misses: Mutex<HashMap<RunId, Instant>>,
    /// One fetch of a run's files at a time.
    locks: Mutex<HashMap<RunId, Arc<Mutex<()>>>>,
    /// Held (written) while a live run's directory becomes a final one, so that a reader
    /// finds it in one place or the other, never between (a local move, no request).
    moving: parking_lot::RwLock<()>,
    /// [`FOLLOW_IDLE`], shorter in tests.
    follow_idle: Mutex<Duration>,
    /// The event streams being read, and the live runs waiting for one.
    streams: Mutex<Streams>,
    /// `metrics.json` of runs whose files are not kept, with when it was fetched.
    metrics: Mutex<HashMap<RunId, Fetched>>,
}

/// The live runs followed, as the status file shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Followed {
    pub count: usize,
    /// Since the last successful refresh of the one refreshed least recently.
    pub oldest: Option<Duration>,
}

/// A file's bytes, and when they were fetched.
type Fetched = (Arc<Vec<u8>>, Instant);

impl RunState {
    pub fn new(api: Arc<dyn RunsApi>, store: RunStore, activity: Arc<Activity>) -> Arc<RunState> {
        Arc::new(RunState {
            api,
            activity,
            store,
            live: Mutex::default(),
            finals: Mutex::default(),
            details: Mutex::default(),
            misses: Mutex::default(),
            locks: Mutex::default(),
            moving: parking_lot::RwLock::new(()),
            follow_idle: Mutex::new(FOLLOW_IDLE),
            streams: Mutex::new(Streams {
                max: MAX_STREAMS,
                open: 0,
                waiting: VecDeque::new(),
            }),
            metrics: Mutex::default(),
        })
    }

    /// How long a live run nobody reads is still followed ([`FOLLOW_IDLE`] unless set,
    /// which tests and `VM0FS_FOLLOW_IDLE_MS` do).
    pub fn set_follow_idle(&self, idle: Duration) {
        *self.follow_idle.lock() = idle;
    }

    /// How many event streams are read at once at most ([`MAX_STREAMS`] unless set, which
    /// tests and `VM0FS_MAX_STREAMS` do).
    pub fn set_max_streams(&self, max: usize) {
        self.streams.lock().max = max.max(1);
    }

    /// Whether reading run `id`'s files now asks nothing of the API first: final in the
    /// cache, or live and followed or brought up to date a moment ago.
    pub fn answers_now(&self, id: &RunId) -> bool {
        if self.store.contains(id.as_str()) {
            return true;
        }
        let live = self.live.lock().get(id).cloned();
        let Some(live) = live else { return false };
        if live.done.load(Ordering::SeqCst) || live.following.load(Ordering::SeqCst) {
            return true;
        }
        // A poll holding the state is asking the API now.
        live.state
            .try_lock()
            .is_some_and(|st| st.synced.elapsed() < UNFOLLOWED_REFRESH)
    }

    /// `metrics.json` of run `run` whose files are not kept: a final run's asked once, a
    /// live run's at most once per [`UNFOLLOWED_REFRESH`].
    pub fn metrics_file(&self, run: &Run) -> Result<Arc<Vec<u8>>, ApiError> {
        if let Some((m, at)) = self.metrics.lock().get(&run.id) {
            if run.is_final() || at.elapsed() < UNFOLLOWED_REFRESH {
                return Ok(m.clone());
            }
        }
        let m = Arc::new(files::pretty(&self.api.run_metrics(&run.id)?));
        let mut metrics = self.metrics.lock();
        if metrics.len() > 10_000 {
            metrics.clear();
        }
        metrics.insert(run.id.clone(), (m.clone(), Instant::now()));
        Ok(m)
    }

    /// How many live runs are followed now.
    pub fn followed(&self) -> usize {
        self.live
            .lock()
            .values()
            .filter(|l| l.following.load(Ordering::SeqCst))
            .count()
    }

    /// The live runs followed now: how many, and how long ago the one least recently
    /// brought up to date was (it grows while the API fails).
    pub fn followed_ages(&self) -> Followed {
        let live = self.live.lock();
        let followed = live
            .values()
            .filter(|l| l.following.load(Ordering::SeqCst) && !l.done.load(Ordering::SeqCst));
        let mut count = 0;
        let mut oldest = None;
        for l in followed {
            count += 1;
            let age = l.refreshed.lock().elapsed();
            oldest = Some(oldest.map_or(age, |o: Duration| o.max(age)));
        }
        Followed { count, oldest }
    }

    /// Whether `id` was found unknown a moment ago.
    pub fn missed(&self, id: &RunId) -> bool {
        let mut misses = self.misses.lock();
        match misses.get(id) {
            Some(t) if t.elapsed() < MISS_MEMORY => true,
            Some(_) => {
                misses.remove(id);
                false
            }
            None => false,
        }
    }

    fn remember_miss(&self, id: &RunId) {
        let mut misses = self.misses.lock();
        if misses.len() > 10_000 {
            misses.retain(|_, t| t.elapsed() < MISS_MEMORY);
        }
        misses.insert(id.clone(), Instant::now());
    }

    /// Whether run `id`'s files are at hand (final in the cache, or live and kept), so that
    /// reading them asks nothing of the API first.
    pub fn ready(&self, id: &RunId) -> bool {
        self.store.contains(id.as_str()) || self.live.lock().contains_key(id)
    }

    /// The run's detail as known without a request: final on disk, live, or fetched
    /// directly a moment ago.
    pub fn known(&self, id: &RunId) -> Option<Arc<Run>> {
        if let Some(r) = self.final_run(id) {
            return Some(r);
        }
        let live = self.live.lock().get(id).cloned();
        if let Some(l) = live {
            return Some(l.run.lock().clone());
        }
        self.details.lock().get(id).map(|(r, _)| r.clone())
    }

    /// The run's detail as known without a request, if it is up to date: final, live and
    /// followed, or fetched a moment ago.
    pub fn known_detail(&self, id: &RunId) -> Option<Arc<Run>> {
        if let Some(r) = self.final_run(id) {
            return Some(r);
        }
        let live = self.live.lock().get(id).cloned();
        if let Some(l) = live {
            if l.following.load(Ordering::SeqCst) {
                return Some(l.run.lock().clone());
            }
        }
        self.details
            .lock()
            .get(id)
            .filter(|(r, at)| r.is_final() || at.elapsed() < UNFOLLOWED_REFRESH)
            .map(|(r, _)| r.clone())
    }

    /// Final run `id`'s detail, if its files are in the cache.
    fn final_run(&self, id: &RunId) -> Option<Arc<Run>> {
        if !self.store.contains(id.as_str()) {
            return None;
        }
        if let Some(r) = self.finals.lock().get(id) {
            return Some(r.clone());
        }
        let dir = self.store.final_dir(id.as_str())?;
        let json = std::fs::read(dir.join(RunFile::Json.name())).ok()?;
        let run = Arc::new(Run::from_saved(&json)?);
        self.finals.lock().insert(id.clone(), run.clone());
        Some(run)
    }

    /// The detail of run `id`, asked of the API (an unknown id is remembered as such).
    pub fn fetch_detail(&self, id: &RunId) -> Result<Arc<Run>, ApiError> {
        match self.api.get_run(id) {
            Ok(run) => {
                let run = Arc::new(run);
                self.details
                    .lock()
                    .insert(id.clone(), (run.clone(), Instant::now()));
                Ok(run)
            }
            Err(e) => {
                if e.is_not_found() {
                    self.forget_gone(id);
                }
                Err(e)
            }
        }
    }

    /// Where run `id`'s files are, if that needs no request: final in the cache, or live
    /// and followed or brought up to date a moment ago (a live run read after an idle
    /// time is not at hand: [`RunState::view`] brings it up to date first). Any caller may
    /// ask; a live run's read keeps it followed.
    pub fn at_hand(self: &Arc<Self>, id: &RunId) -> Option<View> {
        let _moving = self.moving.read();
        if let Some(view) = self.final_view(id) {
            return Some(view);
        }
        let live = self.live.lock().get(id).cloned()?;
        if !live.following.load(Ordering::SeqCst) && !live.done.load(Ordering::SeqCst) {
            // A poll holding the state is asking the API now: not at hand either.
            let fresh = live
                .state
                .try_lock()
                .is_some_and(|st| st.synced.elapsed() < UNFOLLOWED_REFRESH);
            if !fresh {
                return None;
            }
        }
        self.touch(&live, false).ok()?;
        Some(View::Live(live))
    }

    /// Where run `id`'s files are, fetching them if needed: a final run's once, a live
    /// run's so far (brought up to date first when nobody followed it, and followed from
    /// now on while it is read). It waits for the API as long as that takes: callers go
    /// through `crate::runs::Runs::files`, which runs it on a thread of its own and bounds
    /// their wait.
    pub fn view(self: &Arc<Self>, id: &RunId) -> Result<View, SyncError> {
        if let Some(view) = self.at_hand(id) {
            return Ok(view);
        }
        let live = self.live.lock().get(id).cloned();
        if let Some(live) = live {
            self.touch(&live, true)?;
            // A poll may have found it final (or gone) just now.
            if live.done.load(Ordering::SeqCst) {
                return self.final_view(id).ok_or_else(|| gone(id));
            }
            return Ok(View::Live(live));
        }
        let lock = self.lock_of(id);
        let _guard = lock.lock();
        // Another caller may have done it meanwhile.
        if let Some(view) = self.final_view(id) {
            return Ok(view);
        }
        if let Some(live) = self.live.lock().get(id).cloned() {
            return Ok(View::Live(live));
        }
        let recent = self
            .details
            .lock()
            .get(id)
            .filter(|(_, at)| at.elapsed() < UNFOLLOWED_REFRESH)
            .map(|(r, _)| r.clone());
        let run = match recent {
            Some(r) => r,
            None => self.fetch_detail(id)?,
        };
        let dir = self.store.fresh_live_dir(id.as_str())?;
        let logs = LogSync::create(&dir)?;
        let live = Arc::new(Live {
            id: id.clone(),
            dir,
            run: Mutex::new(run.clone()),
            state: Mutex::new(LiveState {
                logs,
                synced: Instant::now(),
                last_sequence: None,
                last_status: None,
                complete: false,
                polls: 0,
            }),
            last_read: Mutex::new(Instant::now()),
            refreshed: Mutex::new(Instant::now()),
            following: AtomicBool::new(false),
            done: AtomicBool::new(false),
            streaming: AtomicBool::new(false),
        });
        if run.is_final() {
            return self.finalize(&live, run);
        }
        let first = self.refresh(&live, &mut live.state.lock(), true);
        if let Err(e) = first {
            if matches!(&e, SyncError::Api(e) if e.is_not_found()) {
                self.forget_gone(id);
            }
            if let Err(e) = std::fs::remove_dir_all(&live.dir) {
                tracing::debug!(run = %id, error = %e, "removing the files of a run not fetched");
            }
            return Err(e);
        }
        self.live.lock().insert(id.clone(), live.clone());
        self.touch(&live, false)?;
        // The stream sends the run's status at once: wait for it (briefly), so that the
        // first read of `events.jsonl` is not empty.
        let events = live.dir.join(RunFile::Events.name());
        let until = Instant::now() + FIRST_EVENT_WAIT;
        while Instant::now() < until
            && !live.done.load(Ordering::SeqCst)
            && std::fs::metadata(&events).is_ok_and(|m| m.len() == 0)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(View::Live(live))
    }

    fn final_view(&self, id: &RunId) -> Option<View> {
        let run = self.final_run(id)?;
        let dir = self.store.final_dir(id.as_str())?;
        Some(View::Final { dir, run })
    }

    fn lock_of(&self, id: &RunId) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock();
        if locks.len() > 1_000 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(id.clone()).or_default().clone()
    }

    /// A read of a live run: its event stream is read (or waits its turn); with
    /// `refresh`, a run not followed is first brought up to date when its last update is
    /// older than [`UNFOLLOWED_REFRESH`] (the first read after an idle time answers what
    /// the API says now, not what it said then: only on a thread that may wait, see
    /// [`RunState::view`]); then it is followed (again) if there is room. Fails only when
    /// the API says the run is gone; other failures leave what is known.
    fn touch(self: &Arc<Self>, live: &Arc<Live>, refresh: bool) -> Result<(), SyncError> {
        *live.last_read.lock() = Instant::now();
        if live.done.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.start_events(live);
        if live.following.load(Ordering::SeqCst) {
            return Ok(());
        }
        if refresh {
            let mut st = live.state.lock();
            if st.synced.elapsed() >= UNFOLLOWED_REFRESH && !live.done.load(Ordering::SeqCst) {
                match self.poll(live, &mut st) {
                    Err(SyncError::Api(e)) if e.is_not_found() => return Err(SyncError::Api(e)),
                    Err(e) => {
                        tracing::debug!(run = %live.id, error = %e, "refreshing a live run failed");
                    }
                    Ok(()) => {}
                }
            }
        }
        if !live.done.load(Ordering::SeqCst)
            && self.followed() < MAX_FOLLOWED
            && !live.following.swap(true, Ordering::SeqCst)
        {
            let (state, l) = (self.clone(), live.clone());
            let spawned = std::thread::Builder::new()
                .name("vm0fs-follow".into())
                .spawn(move || state.follow(l));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a thread to follow a live run");
                live.following.store(false, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    /// The follower of a live run: polls until nobody reads it or it ends.
    fn follow(self: Arc<Self>, live: Arc<Live>) {
        tracing::debug!(run = %live.id, "following a live run");
        let mut failing = false;
        loop {
            std::thread::sleep(FOLLOW_POLL);
            if live.done.load(Ordering::SeqCst) {
                break;
            }
            let idle = *self.follow_idle.lock();
            if live.last_read.lock().elapsed() >= idle {
                tracing::debug!(run = %live.id, "nobody reads the live run any more; no longer following it");
                break;
            }
            let mut st = live.state.lock();
            match self.poll(&live, &mut st) {
                Ok(()) => failing = false,
                // Once per outage: the status file counts it and names it.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(run = %live.id, error = %e, "following a live run: the API failed; serving its files as they are and trying again");
                    self.activity
                        .error(format!("following run {}: {e}", live.id));
                }
                Err(e) => {
                    tracing::debug!(run = %live.id, error = %e, "following a live run: the API failed again");
                }
            }
        }
        live.following.store(false, Ordering::SeqCst);
    }

    /// One look at a live run: its detail, then its logs (and now and then its metrics);
    /// the run made final when it has ended.
    fn poll(&self, live: &Arc<Live>, st: &mut LiveState) -> Result<(), SyncError> {
        let run = match self.api.get_run(&live.id) {
            Ok(run) => Arc::new(run),
            Err(e) if e.is_not_found() => {
                self.forget_gone(&live.id);
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        if run.is_final() {
            drop(self.finalize_locked(live, st, run)?);
            return Ok(());
        }
        *live.run.lock() = run;
        st.polls += 1;
        let metrics = st.polls.is_multiple_of(METRICS_EVERY);
        self.refresh(live, st, metrics)
    }

    /// Bring a live run's files up to date with its detail.
    fn refresh(&self, live: &Live, st: &mut LiveState, metrics: bool) -> Result<(), SyncError> {
        st.logs.sync(&*self.api, &live.id)?;
        let run = live.run.lock().clone();
        files::write_detail(&live.dir, &run)?;
        if metrics {
            let m = self.api.run_metrics(&live.id)?;
            files::write_if_changed(&live.dir.join(RunFile::Metrics.name()), &files::pretty(&m))?;
        } else if !live.dir.join(RunFile::Metrics.name()).exists() {
            files::write_if_changed(&live.dir.join(RunFile::Metrics.name()), b"{}\n")?;
        }
        st.synced = Instant::now();
        *live.refreshed.lock() = st.synced;
        Ok(())
    }

    /// The API says run `id` is gone (404): it is gone from the mount too (a live run's
    /// files removed, its id remembered as unknown), so that reads fail with `ENOENT` and a
    /// `tail -f` ends, instead of showing it running for ever. Said once at WARN when the
    /// mount had shown the run.
    fn forget_gone(&self, id: &RunId) {
        let known = self.details.lock().remove(id).is_some();
        let live = self.live.lock().remove(id);
        self.remember_miss(id);
        if let Some(live) = &live {
            if !live.done.swap(true, Ordering::SeqCst) {
                if let Err(e) = std::fs::remove_dir_all(&live.dir) {
                    tracing::debug!(run = %id, error = %e, "removing the files of a gone run");
                }
            }
        }
        if known || live.is_some() {
            tracing::warn!(run = %id, "the API no longer knows this run (404); it is gone from the mount");
        }
    }

    /// Make `live`'s files final with `run` (its final detail).
    fn finalize(&self, live: &Arc<Live>, run: Arc<Run>) -> Result<View, SyncError> {
        let mut st = live.state.lock();
        self.finalize_locked(live, &mut st, run)
    }

    fn finalize_locked(
        &self,
        live: &Arc<Live>,
        st: &mut LiveState,
        run: Arc<Run>,
    ) -> Result<View, SyncError> {
        if live.done.load(Ordering::SeqCst) {
            if let Some(view) = self.final_view(&live.id) {
                return Ok(view);
            }
        }
        // The logs of a final run are complete: this sync ends them, from where the live
        // files stopped (so nothing is missing and nothing written twice).
        st.logs.sync(&*self.api, &live.id)?;
        *live.run.lock() = run.clone();
        files::write_detail(&live.dir, &run)?;
        let m = self.api.run_metrics(&live.id)?;
        files::write_if_changed(&live.dir.join(RunFile::Metrics.name()), &files::pretty(&m))?;
        if !st.complete {
            let events = self.api.run_events(&live.id, st.last_sequence, None)?;
            for event in events {
                let event = event?;
                write_event(live, st, &event)?;
                if st.complete {
                    break;
                }
            }
        }
        let moving = self.moving.write();
        let dir = self.store.commit(live.id.as_str(), &live.dir)?;
        live.done.store(true, Ordering::SeqCst);
        self.finals.lock().insert(live.id.clone(), run.clone());
        self.live.lock().remove(&live.id);
        self.details.lock().remove(&live.id);
        drop(moving);
        tracing::debug!(run = %live.id, entries = st.logs.entries, "the run is final; its files are kept");
        Ok(View::Final { dir, run })
    }
}

/// The error of a run that went away while it was looked at.
fn gone(id: &RunId) -> SyncError {
    tracing::debug!(run = %id, "the run went away while it was looked at");
    SyncError::Io(std::io::Error::from_raw_os_error(libc::ENOENT))
}
