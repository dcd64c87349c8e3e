//! One fetch (or load) of a version in progress, shared by everyone who asked for it
//! ([`Flight`]): what it has published so far, how it ended, and who still wants it
//! ([`Interest`]).
//!
//! Waiting is done in slices of [`WAIT_SLICE`]: between two slices the waiter asks its
//! [`Patience`] whether its caller still wants the answer, so that a caller who gave up (a
//! process that got a signal, or is gone) is let go within a slice, and a caller that may
//! not block at all (a thread whose patience says so, such as a FUSE worker) is told so at once.
//!
//! Nobody is left waiting for ever: a flight always ends, with the version or an error,
//! even when its fetch panics (see `Cache::run`) or the mount shuts down
//! (`Cache::shutdown`), and its first end is the only one.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::archive::{Publish, Published, PublishedNode, Step};

use super::pass::PassView;
use super::{CachedVersion, SharedError};

/// How long a waiter waits before it asks again whether its caller still wants the answer:
/// the latency of an interruption.
pub const WAIT_SLICE: Duration = Duration::from_millis(100);

/// How a caller waits for a flight.
pub trait Patience {
    /// Whether the caller may block at all.
    fn may_block(&self) -> bool;
    /// Whether the caller no longer wants the answer; asked once per [`WAIT_SLICE`] of
    /// waiting, never with a lock held.
    fn gave_up(&self) -> bool;
}

/// Waits until the end, whatever happens: for the cache's own waits, and tests.
pub struct Unbounded;

impl Patience for Unbounded {
    fn may_block(&self) -> bool {
        true
    }

    fn gave_up(&self) -> bool {
        false
    }
}

/// Why a wait ended before the flight had an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The answer is not there yet, and the caller may not block.
    WouldBlock,
    /// The caller gave up while waiting.
    Interrupted,
}

/// How a flight ended.
pub type Outcome = Result<Arc<CachedVersion>, SharedError>;

/// Where a flight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a place in the download pool, since then.
    Queued(Instant),
    /// Fetching (or loading), since then.
    Running(Instant),
}

/// One fetch (or load) of a version, shared by every caller that asked for it meanwhile.
pub struct Flight {
    /// Unique for the life of the process: reservations are kept by flight, since a
    /// cancelled flight may still be winding down when a new one of the same key starts.
    pub(super) id: u64,
    state: Mutex<FlightState>,
    cond: Condvar,
    reported: AtomicBool,
    /// The [`Interest`]s alive. It goes up from zero only under the cache's lock (a caller
    /// joins through the cache), and changes with this flight's lock held, so that the
    /// cache can decide to cancel with both held.
    interest: AtomicUsize,
    /// The last interest to go was given up (its caller was interrupted): the fetch may stop
    /// (see `Cache::cancelled`). A new interest clears it.
    abandoned: AtomicBool,
    /// The fetch must stop: abandoned and confirmed by the cache, or the mount shuts down.
    pub(super) cancel: AtomicBool,
    /// The first pass of a version larger than the cache: what its readers can read of it
    /// while it runs.
    pass: OnceLock<Arc<PassView>>,
}

struct FlightState {
    done: Option<Outcome>,
    published: Published,
    phase: Phase,
    /// Waiters looking for something published (not only for the end): a publish wakes
    /// the waiters only when there are some, since an unpack publishes every file.
    lookers: usize,
}

/// What a caller waiting on a [`Flight`] gets: something published, or the end.
#[derive(Debug)]
pub enum Waited<T> {
    Published(T),
    Done(Outcome),
}

static NEXT_FLIGHT: AtomicU64 = AtomicU64::new(1);

impl Flight {
    pub(super) fn new(phase: Phase) -> Flight {
        Flight {
            id: NEXT_FLIGHT.fetch_add(1, Ordering::Relaxed),
            state: Mutex::new(FlightState {
                done: None,
                published: Published::default(),
                phase,
                lookers: 0,
            }),
            cond: Condvar::new(),
            reported: AtomicBool::new(false),
            interest: AtomicUsize::new(0),
            abandoned: AtomicBool::new(false),
            cancel: AtomicBool::new(false),
            pass: OnceLock::new(),
        }
    }

    pub(super) fn set_pass(&self, view: Arc<PassView>) {
        let _ = self.pass.set(view);
    }

    /// What can be read of a version larger than the cache while its first pass runs.
    pub fn pass(&self) -> Option<&Arc<PassView>> {
        self.pass.get()
    }

    /// A flight that has already ended with `error` (a remembered failure, or a refusal).
    pub(super) fn ended(error: SharedError) -> Flight {
        let f = Flight::new(Phase::Running(Instant::now()));
        f.finish(Err(error));
        f
    }

    /// Whether the fetch has ended (for tests and the status file).
    pub fn is_done(&self) -> bool {
        self.state.lock().done.is_some()
    }

    /// How many [`Interest`]s in this flight are alive: callers waiting for it, or holding
    /// what it published.
    pub fn interest(&self) -> usize {
        self.interest.load(Ordering::SeqCst)
    }

    pub fn phase(&self) -> Phase {
        self.state.lock().phase
    }

    pub(super) fn set_queued(&self) {
        self.state.lock().phase = Phase::Queued(Instant::now());
    }

    pub(super) fn set_running(&self) {
        self.state.lock().phase = Phase::Running(Instant::now());
    }

    /// End the flight and wake every waiter. Only the first end counts: a flight ended by
    /// a shutdown stays ended so when its fetch returns later.
    pub(super) fn finish(&self, result: Outcome) {
        let mut st = self.state.lock();
        if st.done.is_some() {
            return;
        }
        st.done = Some(result);
        // The blob paths it holds are gone (renamed, committed or deleted).
        st.published = Published::default();
        drop(st);
        self.cond.notify_all();
    }

    /// Whether the interest in this flight has gone, the last of it given up.
    pub(super) fn is_abandoned(&self) -> bool {
        let _st = self.state.lock();
        self.interest.load(Ordering::SeqCst) == 0 && self.abandoned.load(Ordering::SeqCst)
    }

    /// Wait for the end, without a patience (the cache's own waits, which a shutdown ends).
    pub(super) fn wait_done(&self) -> Outcome {
        match self.wait_for(None::<fn(&Published) -> Option<()>>, &Unbounded) {
            Ok(Waited::Done(r)) => r,
            Ok(Waited::Published(())) | Err(_) => unreachable!("an unbounded wait for the end"),
        }
    }

    /// Wait until `find` finds something published (when given) or the fetch ends.
    fn wait_for<T>(
        &self,
        mut find: Option<impl FnMut(&Published) -> Option<T>>,
        patience: &dyn Patience,
    ) -> Result<Waited<T>, Stopped> {
        let mut st = self.state.lock();
        let looking = find.is_some();
        st.lookers += usize::from(looking);
        let waited = (|| {
            let mut next_look = Instant::now() + WAIT_SLICE;
            loop {
                if let Some(done) = &st.done {
                    return Ok(Waited::Done(done.clone()));
                }
                if let Some(found) = find.as_mut().and_then(|f| f(&st.published)) {
                    return Ok(Waited::Published(found));
                }
                if !patience.may_block() {
                    return Err(Stopped::WouldBlock);
                }
                self.cond.wait_until(&mut st, next_look);
                if Instant::now() >= next_look {
                    // Asked without the lock: it may read /proc.
                    if MutexGuard::unlocked(&mut st, || patience.gave_up()) {
                        return Err(Stopped::Interrupted);
                    }
                    next_look = Instant::now() + WAIT_SLICE;
                }
            }
        })();
        st.lookers -= usize::from(looking);
        waited
    }
}

impl Publish for Flight {
    fn file(&self, steps: &[Step], _file: &crate::archive::PublishedFile) {
        let mut st = self.state.lock();
        if st.done.is_some() {
            return;
        }
        st.published.add(steps);
        let lookers = st.lookers;
        drop(st);
        if lookers > 0 {
            self.cond.notify_all();
        }
    }

    fn withdraw(&self, dir: u32, name: &[u8], gone: Option<u32>) {
        self.state.lock().published.withdraw(dir, name, gone);
    }
}

/// A caller's claim on a flight's result: a caller waiting for it, or holding a file it
/// published. While one exists the fetch goes on. When the last one goes and its caller
/// had given up (it was interrupted), nobody wants the version any more and the fetch
/// stops (see `Cache::cancelled`); a flight whose last interest simply went (a caller
/// answered from what was published) goes on, for the next access.
pub struct Interest {
    flight: Arc<Flight>,
    gave_up: AtomicBool,
}

impl Interest {
    /// A new interest in `flight`. The caller holds the cache's lock (see
    /// [`Flight::interest`]).
    pub(super) fn join(flight: Arc<Flight>) -> Interest {
        {
            let _st = flight.state.lock();
            flight.interest.fetch_add(1, Ordering::SeqCst);
            flight.abandoned.store(false, Ordering::SeqCst);
        }
        Interest {
            flight,
            gave_up: AtomicBool::new(false),
        }
    }

    pub fn flight(&self) -> &Arc<Flight> {
        &self.flight
    }

    /// Wait for the end of the fetch.
    pub fn wait(&self, patience: &dyn Patience) -> Result<Outcome, Stopped> {
        match self.wait_for(None::<fn(&Published) -> Option<()>>, patience)? {
            Waited::Done(r) => Ok(r),
            Waited::Published(()) => unreachable!("nothing is looked for"),
        }
    }

    /// Wait until `name` in directory node `dir` is published, or the fetch ends. Once it
    /// has ended only the version itself answers: after a failure, nothing published is.
    pub fn lookup(
        &self,
        dir: u32,
        name: &[u8],
        patience: &dyn Patience,
    ) -> Result<Waited<(u32, PublishedNode)>, Stopped> {
        self.wait_for(Some(|p: &Published| p.lookup(dir, name)), patience)
    }

    /// Wait until node `node` is published, or the fetch ends.
    pub fn node(
        &self,
        node: u32,
        patience: &dyn Patience,
    ) -> Result<Waited<PublishedNode>, Stopped> {
        self.wait_for(Some(|p: &Published| p.node(node)), patience)
    }

    /// True for the first caller only: lets one of the many waiters of a failed flight
    /// record its error.
    pub fn report_once(&self) -> bool {
        !self.flight.reported.swap(true, Ordering::Relaxed)
    }

    pub fn is_done(&self) -> bool {
        self.flight.is_done()
    }

    fn wait_for<T>(
        &self,
        find: Option<impl FnMut(&Published) -> Option<T>>,
        patience: &dyn Patience,
    ) -> Result<Waited<T>, Stopped> {
        let waited = self.flight.wait_for(find, patience);
        if waited.as_ref().err() == Some(&Stopped::Interrupted) {
            self.gave_up.store(true, Ordering::SeqCst);
        }
        waited
    }
}

impl Clone for Interest {
    fn clone(&self) -> Interest {
        // Never from zero: this one is alive.
        let _st = self.flight.state.lock();
        self.flight.interest.fetch_add(1, Ordering::SeqCst);
        Interest {
            flight: self.flight.clone(),
            gave_up: AtomicBool::new(false),
        }
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        let _st = self.flight.state.lock();
        let last = self.flight.interest.fetch_sub(1, Ordering::SeqCst) == 1;
        if last && self.gave_up.load(Ordering::SeqCst) {
            self.flight.abandoned.store(true, Ordering::SeqCst);
        }
    }
}

impl std::fmt::Debug for Interest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interest")
            .field("flight", &self.flight.id)
            .finish()
    }
}
