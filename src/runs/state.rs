//! What the mount knows of each run, and keeping its files: a final run's files fetched
//! once into the cache directory ([`RunStore`]); a live run's files growing in place while
//! someone reads them (a follower thread per run, at most [`MAX_FOLLOWED`] at once, each
//! stopping [`FOLLOW_IDLE`] after the last read), and turning into the final ones, with the
//! same log state, when the run ends.
//!
//! Nothing here waits for a caller: the network is asked on threads of this module (the
//! followers, the event readers, a refresh of a run read beyond [`MAX_FOLLOWED`]) or on
//! the listings' fetch threads that run [`RunState::view`] (see `crate::runs`), and what a
//! reader needs at once (a live run's detail) is kept under a lock of its own that no
//! request is made under.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::activity::Activity;
use crate::api::{ApiError, Run, RunEvent, RunId};

use super::api::RunsApi;
use super::files::{self, LogSync, RunFile, SyncError};
use super::store::RunStore;

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
    following: AtomicBool,
    /// Set once the files have become the final ones (the directory is gone).
    done: AtomicBool,
    /// Whether an event stream reader runs.
    streaming: AtomicBool,
    /// Whether a refresh of the run (read while not followed) runs.
    refreshing: AtomicBool,
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
}

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
        })
    }

    #[cfg(test)]
    pub fn set_follow_idle(&self, idle: Duration) {
        *self.follow_idle.lock() = idle;
    }

    /// How many live runs are followed now.
    pub fn followed(&self) -> usize {
        self.live
            .lock()
            .values()
            .filter(|l| l.following.load(Ordering::SeqCst))
            .count()
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
                    self.remember_miss(id);
                }
                Err(e)
            }
        }
    }

    /// Where run `id`'s files are, if they are at hand (final in the cache, or live and
    /// kept): never a request, so any caller may ask. A live run's read keeps it followed.
    pub fn at_hand(self: &Arc<Self>, id: &RunId) -> Option<View> {
        let _moving = self.moving.read();
        if let Some(view) = self.final_view(id) {
            return Some(view);
        }
        let live = self.live.lock().get(id).cloned()?;
        self.touch(&live);
        Some(View::Live(live))
    }

    /// Where run `id`'s files are, fetching them if needed: a final run's once, a live
    /// run's so far (and followed from now on while it is read). It waits for the API as
    /// long as that takes: callers go through `crate::runs::Runs::files`, which runs it
    /// on a thread of its own and bounds their wait.
    pub fn view(self: &Arc<Self>, id: &RunId) -> Result<View, SyncError> {
        if let Some(view) = self.at_hand(id) {
            return Ok(view);
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
            following: AtomicBool::new(false),
            done: AtomicBool::new(false),
            streaming: AtomicBool::new(false),
            refreshing: AtomicBool::new(false),
        });
        if run.is_final() {
            return self.finalize(&live, run);
        }
        {
            let mut st = live.state.lock();
            self.refresh(&live, &mut st, true)?;
        }
        self.live.lock().insert(id.clone(), live.clone());
        self.touch(&live);
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

    /// A read of a live run: it is followed (again) if there is room, else brought up to
    /// date in the background when its last update is older than [`UNFOLLOWED_REFRESH`]
    /// (the reader is answered from the files as they are: it never waits for the API).
    pub fn touch(self: &Arc<Self>, live: &Arc<Live>) {
        *live.last_read.lock() = Instant::now();
        if live.done.load(Ordering::SeqCst) || live.following.load(Ordering::SeqCst) {
            return;
        }
        if self.followed() < MAX_FOLLOWED && !live.following.swap(true, Ordering::SeqCst) {
            let (state, l) = (self.clone(), live.clone());
            let spawned = std::thread::Builder::new()
                .name("vm0fs-follow".into())
                .spawn(move || state.follow(l));
            match spawned {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a thread to follow a live run");
                    live.following.store(false, Ordering::SeqCst);
                }
            }
        }
        let Some(st) = live.state.try_lock() else {
            // Being brought up to date already.
            return;
        };
        if st.synced.elapsed() < UNFOLLOWED_REFRESH || live.done.load(Ordering::SeqCst) {
            return;
        }
        drop(st);
        if live.refreshing.swap(true, Ordering::SeqCst) {
            return;
        }
        let (state, l) = (self.clone(), live.clone());
        let spawned = std::thread::Builder::new()
            .name("vm0fs-refresh".into())
            .spawn(move || {
                let mut st = l.state.lock();
                if !l.done.load(Ordering::SeqCst) {
                    if let Err(e) = state.poll(&l, &mut st) {
                        tracing::debug!(run = %l.id, error = %e, "refreshing a live run failed");
                    }
                }
                drop(st);
                l.refreshing.store(false, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a thread to refresh a live run");
            live.refreshing.store(false, Ordering::SeqCst);
        }
    }

    /// The follower of a live run: polls until nobody reads it or it ends.
    fn follow(self: Arc<Self>, live: Arc<Live>) {
        tracing::debug!(run = %live.id, "following a live run");
        self.start_events(&live);
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
        let run = Arc::new(self.api.get_run(&live.id)?);
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
        Ok(())
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
            let events = self.api.run_events(&live.id, st.last_sequence)?;
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

    /// Read the run's event stream on a thread of its own while it is followed, writing
    /// each event as it comes.
    fn start_events(self: &Arc<Self>, live: &Arc<Live>) {
        if live.streaming.swap(true, Ordering::SeqCst) {
            return;
        }
        let (state, live) = (self.clone(), live.clone());
        let spawned = std::thread::Builder::new()
            .name("vm0fs-events".into())
            .spawn({
                let live = live.clone();
                move || {
                    while !live.done.load(Ordering::SeqCst)
                        && live.following.load(Ordering::SeqCst)
                    {
                        let last = live.state.lock().last_sequence;
                        match state.api.run_events(&live.id, last) {
                            Ok(events) => {
                                for event in events {
                                    let Ok(event) = event else { break };
                                    let mut st = live.state.lock();
                                    if live.done.load(Ordering::SeqCst) {
                                        break;
                                    }
                                    if let Err(e) = write_event(&live, &mut st, &event) {
                                        tracing::debug!(run = %live.id, error = %e, "writing an event failed");
                                    }
                                    if !live.following.load(Ordering::SeqCst) {
                                        break;
                                    }
                                }
                            }
                            Err(e) => {
                                tracing::debug!(run = %live.id, error = %e, "the run's event stream failed");
                                std::thread::sleep(FOLLOW_POLL * 5);
                            }
                        }
                        if live.state.lock().complete {
                            break;
                        }
                        // A stream that ended early (a proxy's timeout): not at once again.
                        std::thread::sleep(FOLLOW_POLL);
                    }
                    live.streaming.store(false, Ordering::SeqCst);
                }
            });
        if spawned.is_err() {
            live.streaming.store(false, Ordering::SeqCst);
        }
    }
}

/// Write one event into `events.jsonl` unless it repeats one written (an output event
/// seen before a reconnection, the same status again).
fn write_event(live: &Live, st: &mut LiveState, event: &RunEvent) -> std::io::Result<()> {
    match event {
        RunEvent::Output { sequence, .. } => {
            if st.last_sequence.is_some_and(|s| *sequence <= s) {
                return Ok(());
            }
            st.last_sequence = Some(*sequence);
        }
        RunEvent::Status { status, .. } => {
            if st.last_status.as_deref() == Some(status.as_str()) {
                return Ok(());
            }
            st.last_status = Some(status.clone());
        }
        RunEvent::Complete { .. } => {
            if st.complete {
                return Ok(());
            }
            st.complete = true;
        }
    }
    files::append_to(
        &live.dir.join(RunFile::Events.name()),
        &files::event_line(event),
    )
}
