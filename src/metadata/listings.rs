//! Listings fetched from the API and kept: the storages of a kind, the versions of a
//! storage. One generic type, [`Listings`], keeps them all, and decides alone when one is
//! fetched and who waits for it. What a listing is, where it comes from, how it is saved
//! across mounts and how its failures are reported is the business of its [`ListingSource`]; this
//! module knows nothing of the API or of files.
//!
//! The rules, each with its number in [`Timing`]:
//!
//! - **Stale while revalidate.** A listing held is answered at once, whatever its age.
//!   Once it is older than the TTL, the access that finds it so starts a refresh in the
//!   background (one at a time per listing) and is answered with the listing held; later
//!   accesses get the new one once it has come.
//! - **Failures are remembered.** After a failed fetch the next one waits for a backoff
//!   (1 s, doubling up to 60 s); meanwhile a listing held is served, and an access that has
//!   none gets the failure at once instead of running the whole retry cycle again.
//! - **Bounded waits, by the caller's patience.** Only an access that has no listing at
//!   all waits for a fetch, and only until the fetch has run for [`FIRST_FETCH_WAIT`]: then
//!   it gets [`Unavailable::NoAnswer`] and the fetch goes on in the background. So a hung
//!   API never holds a caller longer than that. Every access that may wait names its
//!   [`Patience`] (there is no other way in): a caller that may not block at all (a FUSE
//!   worker) gets [`Unavailable::WouldBlock`] instead of waiting, with the fetch started;
//!   one that waits looks every [`WAIT_SLICE`] whether its caller still wants the answer,
//!   and gets [`Unavailable::Interrupted`] as soon as it does not.
//!   The bound counts from the start of the fetch, or from the last request of it that the
//!   API answered (see [`answered`]): a fetch that makes progress is waited for.
//! - **A missing name looks again.** When a name is missing from a listing older than
//!   [`MISS_REFRESH_AFTER`], the listing is fetched again and the caller waits for it
//!   (within the same bound), in case what is missing was just made.
//! - **Definite refusals end the old listing.** A failure that the source says must not
//!   be papered over (access refused, the storage gone) drops the listing held, in memory
//!   and on disk.
//! - **Saved across mounts.** Each listing fetched is handed to [`ListingSource::save`]; a listing
//!   never fetched in this mount is first looked for with [`ListingSource::load`]. A loaded listing
//!   is served like a stale one: at once, with a refresh in the background.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::cache::{Patience, WAIT_SLICE};

/// How long a name that was just missing may be looked up again at the API before the TTL
/// runs out: a user who pushed a version a moment ago finds it without waiting a whole TTL,
/// and a tool that stats many missing names does not flood the API.
pub const MISS_REFRESH_AFTER: Duration = Duration::from_secs(2);

/// The longest any caller waits for a fetch, counted from the start of the fetch: less than
/// one HTTP retry cycle (about 30 s), so that a hung or failing API is answered promptly.
/// The fetch itself goes on in the background and its listing serves later callers.
pub const FIRST_FETCH_WAIT: Duration = Duration::from_secs(10);

/// The wait before fetching a listing again after a failed fetch; it doubles with each
/// failure in a row, up to [`RETRY_BACKOFF_MAX`].
pub const RETRY_BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(60);

thread_local! {
    /// On a fetch's thread: tells the fetch's entry that the API answered.
    static PROGRESS: std::cell::RefCell<Option<Box<dyn Fn()>>> = const { std::cell::RefCell::new(None) };
}

/// The API answered a request. Called by a source's API (here: the runs'); on the thread of
/// a fetch, the fetch's callers' wait bound starts again from now, so that a fetch made of
/// many requests that each answer (a long log, page by page) is waited for as long as it
/// goes on, and only a fetch that gets no answer for [`FIRST_FETCH_WAIT`] is given up.
/// Elsewhere it does nothing.
pub fn answered() {
    PROGRESS.with(|p| {
        if let Some(f) = &*p.borrow() {
            f();
        }
    });
}

/// Where one family of listings comes from.
pub trait ListingSource: Send + Sync + 'static {
    /// Which listing: a kind, or a storage of a kind.
    type Key: Clone + Eq + Hash + Send + Sync + 'static;
    type Value: Send + Sync + 'static;
    type Error: fmt::Display + Send + Sync + 'static;

    fn fetch(&self, key: &Self::Key) -> Result<Self::Value, Self::Error>;

    /// Whether a failed refresh may leave the listing fetched before in service: yes for a
    /// failure that passes (a server error, a timeout); no where the old listing must not
    /// outlive the answer (access refused, the storage gone).
    fn serves_previous(&self, error: &Self::Error) -> bool;

    /// A fetch of `key` failed (`served_previous`: the listing held stays in service;
    /// `streak`: failures in a row, 1 for the first). Where the failure is logged and
    /// shown to the user.
    fn report(&self, key: &Self::Key, error: &Self::Error, served_previous: bool, streak: u32);

    /// The listing of `key` that an earlier mount saved, if any.
    fn load(&self, _key: &Self::Key) -> Option<Self::Value> {
        None
    }

    /// Keep a listing just fetched for later mounts.
    fn save(&self, _key: &Self::Key, _value: &Self::Value) {}

    /// Drop what was saved of `key` (after a definite refusal).
    fn forget(&self, _key: &Self::Key) {}

    /// Whether the API answered (any request) since `t`: a listing whose fetch failed
    /// before is then fetched again at the next access, without waiting for its backoff.
    fn answered_since(&self, _t: Instant) -> bool {
        false
    }
}

/// Why no listing can be answered.
#[derive(Debug)]
pub enum Unavailable<E> {
    /// The last fetch failed (shared by every caller that waited for it, and remembered
    /// until the next fetch is due).
    Failed(Arc<E>),
    /// No listing is held and its fetch has not ended within [`Timing::first_wait`]; it
    /// goes on in the background.
    NoAnswer { waited: Duration },
    /// The listing would have to be waited for, and the caller may not block (its
    /// [`Patience`] says so); the fetch has been started.
    WouldBlock,
    /// The caller gave up while waiting (its [`Patience`] says so).
    Interrupted,
}

impl<E> Clone for Unavailable<E> {
    fn clone(&self) -> Self {
        match self {
            Unavailable::Failed(e) => Unavailable::Failed(e.clone()),
            Unavailable::NoAnswer { waited } => Unavailable::NoAnswer { waited: *waited },
            Unavailable::WouldBlock => Unavailable::WouldBlock,
            Unavailable::Interrupted => Unavailable::Interrupted,
        }
    }
}

impl<E: fmt::Display> fmt::Display for Unavailable<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::Failed(e) => e.fmt(f),
            Unavailable::NoAnswer { waited } => write!(
                f,
                "the VM0 API has not answered within {} s; still trying in the background",
                waited.as_secs()
            ),
            Unavailable::WouldBlock => f.write_str("the listing would be waited for"),
            Unavailable::Interrupted => f.write_str("interrupted while waiting for the VM0 API"),
        }
    }
}

/// How old a listing held is: what the status file shows of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Age {
    /// Last fetched (confirmed by the API) this long ago.
    Confirmed(Duration),
    /// A copy saved by an earlier mount, not confirmed by the API in this one.
    Saved,
    /// None held: its last fetch failed (and none was held, or a refusal ended it).
    Failed,
    /// None held, none fetched yet.
    Never,
}

/// The numbers of the rules in the module's documentation.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How long a listing is served without a refresh.
    pub ttl: Duration,
    pub miss_refresh_after: Duration,
    pub first_wait: Duration,
    pub backoff_first: Duration,
    pub backoff_max: Duration,
}

impl Timing {
    /// The documented numbers, with a metadata TTL.
    pub fn with_ttl(ttl: Duration) -> Timing {
        Timing {
            ttl,
            miss_refresh_after: MISS_REFRESH_AFTER,
            first_wait: FIRST_FETCH_WAIT,
            backoff_first: RETRY_BACKOFF_FIRST,
            backoff_max: RETRY_BACKOFF_MAX,
        }
    }

    /// The wait after `streak` failures in a row.
    fn backoff(&self, streak: u32) -> Duration {
        let doubling = 2u32.saturating_pow(streak.saturating_sub(1).min(31));
        self.backoff_first
            .checked_mul(doubling)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max)
    }
}

/// The last fetch of a listing failed.
struct Failure<E> {
    error: Arc<E>,
    at: Instant,
    /// Failures in a row.
    streak: u32,
    /// No fetch starts before this.
    retry_at: Instant,
}

/// Everything known of one listing.
struct Entry<S: ListingSource> {
    /// Whether the saved copy was looked for (once per listing and mount).
    loaded: bool,
    value: Option<Arc<S::Value>>,
    /// When `value` was fetched; `None` for a saved copy of unknown age (stale at once).
    fetched: Option<Instant>,
    /// When the fetch in progress started, if one is.
    fetching: Option<Instant>,
    /// When the API last answered a request of the fetch in progress (see [`answered`]).
    progress: Option<Instant>,
    /// Fetches ended so far: a caller knows that the fetch it waits for has ended when
    /// this moves.
    ended: u64,
    failure: Option<Failure<S::Error>>,
}

impl<S: ListingSource> Default for Entry<S> {
    fn default() -> Self {
        Entry {
            loaded: false,
            value: None,
            fetched: None,
            fetching: None,
            progress: None,
            ended: 0,
            failure: None,
        }
    }
}

impl<S: ListingSource> Entry<S> {
    /// Until when callers wait for the fetch in progress: the bound, counted from its start
    /// or from the last answer the API gave it.
    fn wait_deadline(&self, first_wait: Duration) -> Option<Instant> {
        let start = self.fetching?;
        let since = match self.progress {
            Some(p) if p > start => p,
            _ => start,
        };
        Some(since + first_wait)
    }

    fn stale(&self, max_age: Duration) -> bool {
        self.fetched.is_none_or(|t| t.elapsed() >= max_age)
    }

    /// Whether a new fetch may start now: none is running, and no backoff is in the way
    /// (it ends early when the API has answered since the failure).
    fn due(&self, source: &S) -> bool {
        self.fetching.is_none()
            && self
                .failure
                .as_ref()
                .is_none_or(|f| Instant::now() >= f.retry_at || source.answered_since(f.at))
    }
}

/// The entries of a source's listings, locked.
type Held<'a, S> = MutexGuard<'a, HashMap<<S as ListingSource>::Key, Entry<S>>>;

struct Shared<S: ListingSource> {
    source: S,
    timing: Timing,
    entries: Mutex<HashMap<S::Key, Entry<S>>>,
    /// Notified at the end of every fetch.
    ended: Condvar,
}

/// The listings of one [`ListingSource`]. Cheap to clone (the listings are shared).
pub struct Listings<S: ListingSource> {
    shared: Arc<Shared<S>>,
}

impl<S: ListingSource> Clone for Listings<S> {
    fn clone(&self) -> Self {
        Listings {
            shared: self.shared.clone(),
        }
    }
}

impl<S: ListingSource> Listings<S> {
    pub fn new(source: S, timing: Timing) -> Listings<S> {
        Listings {
            shared: Arc::new(Shared {
                source,
                timing,
                entries: Mutex::new(HashMap::new()),
                ended: Condvar::new(),
            }),
        }
    }

    #[cfg(test)]
    pub fn source(&self) -> &S {
        &self.shared.source
    }

    /// The listing of `key`: the one held, at once (refreshed in the background when it is
    /// older than the TTL), else the one a fetch brings within the wait bound, waited for
    /// as `patience` allows.
    pub fn get(
        &self,
        key: &S::Key,
        patience: &dyn Patience,
    ) -> Result<Arc<S::Value>, Unavailable<S::Error>> {
        let mut entries = self.entries(key);
        let e = entries.get_mut(key).expect("made by entries()");
        if let Some(v) = e.value.clone() {
            if e.stale(self.shared.timing.ttl) && e.due(&self.shared.source) {
                self.start_fetch(e, key);
            }
            return Ok(v);
        }
        if e.fetching.is_none() {
            if !e.due(&self.shared.source) {
                let f = e.failure.as_ref().expect("not due: a failure");
                return Err(Unavailable::Failed(f.error.clone()));
            }
            self.start_fetch(e, key);
        }
        let entries = self.wait_for_fetch(entries, key, patience)?;
        let e = &entries[key];
        match (&e.value, &e.failure) {
            (Some(v), _) => Ok(v.clone()),
            (None, Some(f)) if e.fetching.is_none() => Err(Unavailable::Failed(f.error.clone())),
            _ => Err(self.no_answer(e)),
        }
    }

    /// What `pick` finds in the listing of `key`. When it finds nothing in a listing older
    /// than [`MISS_REFRESH_AFTER`], the listing is fetched again (or the refresh running is
    /// joined) and waited for within the bound, in case what is missing was just made; a
    /// refresh that fails or does not end in time leaves the answer to the listing held.
    pub fn find<R>(
        &self,
        key: &S::Key,
        patience: &dyn Patience,
        pick: impl Fn(&S::Value) -> Option<R>,
    ) -> Result<Option<R>, Unavailable<S::Error>> {
        if let Some(found) = pick(&*self.get(key, patience)?) {
            return Ok(Some(found));
        }
        let mut entries = self.entries(key);
        let e = entries.get_mut(key).expect("made by entries()");
        if e.fetching.is_none() {
            if !(e.stale(self.shared.timing.miss_refresh_after) && e.due(&self.shared.source)) {
                return Ok(e.value.as_deref().and_then(&pick));
            }
            self.start_fetch(e, key);
        }
        let entries = self.wait_for_fetch(entries, key, patience)?;
        let e = &entries[key];
        match (&e.value, &e.failure) {
            (Some(v), _) => Ok(pick(v)),
            // A definite refusal took the listing away.
            (None, Some(f)) => Err(Unavailable::Failed(f.error.clone())),
            (None, None) => Err(self.no_answer(e)),
        }
    }

    /// The listing of `key` as a fetch that starts now brings it (or the fetch running, if
    /// one is), waited for within the bound as `patience` allows: for a listing that must
    /// be asked again whatever is held. During a backoff, the last failure at once.
    pub fn renew(
        &self,
        key: &S::Key,
        patience: &dyn Patience,
    ) -> Result<Arc<S::Value>, Unavailable<S::Error>> {
        let mut entries = self.entries(key);
        let e = entries.get_mut(key).expect("made by entries()");
        if e.fetching.is_none() {
            if !e.due(&self.shared.source) {
                let f = e.failure.as_ref().expect("not due: a failure");
                return Err(Unavailable::Failed(f.error.clone()));
            }
            self.start_fetch(e, key);
        }
        let entries = self.wait_for_fetch(entries, key, patience)?;
        let e = &entries[key];
        match (&e.value, &e.failure) {
            _ if e.fetching.is_some() => Err(self.no_answer(e)),
            (_, Some(f)) => Err(Unavailable::Failed(f.error.clone())),
            (Some(v), None) => Ok(v.clone()),
            (None, None) => Err(self.no_answer(e)),
        }
    }

    /// The listing of `key` if one is held (fetched, or saved by an earlier mount), of any
    /// age; never fetches.
    pub fn peek(&self, key: &S::Key) -> Option<Arc<S::Value>> {
        self.entries(key)[key].value.clone()
    }

    /// How old the listing of `key` held is (for the status file); never fetches or loads.
    pub fn age(&self, key: &S::Key) -> Age {
        let entries = self.shared.entries.lock();
        let Some(e) = entries.get(key) else {
            return Age::Never;
        };
        match (&e.value, e.fetched, &e.failure) {
            (Some(_), Some(at), _) => Age::Confirmed(at.elapsed()),
            (Some(_), None, _) => Age::Saved,
            (None, _, Some(_)) => Age::Failed,
            (None, _, None) => Age::Never,
        }
    }

    /// Take `value` as the listing of `key`, fetched just now (by someone else: the mount
    /// asks for its first listing before the filesystem exists).
    pub fn seed(&self, key: &S::Key, value: S::Value) {
        self.shared.source.save(key, &value);
        let mut entries = self.entries(key);
        let e = entries.get_mut(key).expect("made by entries()");
        e.value = Some(Arc::new(value));
        e.fetched = Some(Instant::now());
        e.failure = None;
    }

    /// The entries, with the one of `key` made (and its saved copy loaded) if it was not.
    fn entries(&self, key: &S::Key) -> MutexGuard<'_, HashMap<S::Key, Entry<S>>> {
        let mut entries = self.shared.entries.lock();
        if entries.get(key).is_some_and(|e| e.loaded) {
            return entries;
        }
        // Read from disk without the lock; another caller may load the same copy meanwhile,
        // and only the first one to come back puts it in.
        drop(entries);
        let saved = self.shared.source.load(key);
        entries = self.shared.entries.lock();
        let e = entries.entry(key.clone()).or_default();
        if !e.loaded {
            e.loaded = true;
            if e.value.is_none() {
                e.value = saved.map(Arc::new);
            }
        }
        entries
    }

    fn no_answer(&self, e: &Entry<S>) -> Unavailable<S::Error> {
        Unavailable::NoAnswer {
            waited: e
                .fetching
                .map_or(self.shared.timing.first_wait, |t| t.elapsed()),
        }
    }

    /// Wait until the fetch of `key` in progress ends, or until it has run for the wait
    /// bound (at once if it already has), as `patience` allows: not at all for a caller
    /// that may not block, and no longer than its caller wants the answer. The one place
    /// where a caller of listings waits.
    fn wait_for_fetch<'a>(
        &'a self,
        mut entries: Held<'a, S>,
        key: &S::Key,
        patience: &dyn Patience,
    ) -> Result<Held<'a, S>, Unavailable<S::Error>> {
        let first_wait = self.shared.timing.first_wait;
        let e = &entries[key];
        let Some(deadline) = e.wait_deadline(first_wait) else {
            return Ok(entries);
        };
        let ended = e.ended;
        if Instant::now() >= deadline {
            return Ok(entries);
        }
        if !patience.may_block() {
            return Err(Unavailable::WouldBlock);
        }
        while entries[key].ended == ended {
            // A fetch that gets answers (a long log, page by page) moves the deadline on.
            let Some(deadline) = entries[key].wait_deadline(first_wait) else {
                break;
            };
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let until = deadline.min(now + WAIT_SLICE);
            if self
                .shared
                .ended
                .wait_until(&mut entries, until)
                .timed_out()
                && Instant::now() < deadline
            {
                // Asked without the lock: the caller's patience may read /proc.
                let gave_up = MutexGuard::unlocked(&mut entries, || patience.gave_up());
                if gave_up {
                    return Err(Unavailable::Interrupted);
                }
            }
        }
        Ok(entries)
    }

    /// Start fetching `key` in the background.
    fn start_fetch(&self, e: &mut Entry<S>, key: &S::Key) {
        e.fetching = Some(Instant::now());
        e.progress = None;
        let listings = self.clone();
        let owned = key.clone();
        let spawned = std::thread::Builder::new()
            .name("vm0fs-listing".into())
            .spawn(move || listings.fetch(&owned));
        if let Err(err) = spawned {
            // Nothing was started: callers are answered from what is held (or not at all,
            // within the bound), and the next access tries again.
            tracing::warn!(error = %err, "cannot start a thread to fetch a listing");
            e.fetching = None;
        }
    }

    /// The background side of a fetch: fetch, keep the outcome, wake the waiters.
    fn fetch(&self, key: &S::Key) {
        let shared = &*self.shared;
        let progress: Box<dyn Fn()> = Box::new({
            let listings = self.clone();
            let key = key.clone();
            move || {
                if let Some(e) = listings.shared.entries.lock().get_mut(&key) {
                    e.progress = Some(Instant::now());
                }
            }
        });
        PROGRESS.with(|p| *p.borrow_mut() = Some(progress));
        let outcome = catch_unwind(AssertUnwindSafe(|| shared.source.fetch(key)));
        PROGRESS.with(|p| *p.borrow_mut() = None);
        let Ok(outcome) = outcome else {
            // The panic was logged by the hook. Nothing changes but the end of the fetch:
            // callers are answered from what is held, and the next access tries again.
            let mut entries = shared.entries.lock();
            if let Some(e) = entries.get_mut(key) {
                e.fetching = None;
                e.ended += 1;
            }
            drop(entries);
            shared.ended.notify_all();
            return;
        };
        // Saved before the fetch is marked ended, so that the next fetch of the same
        // listing (which cannot start before) never has its copy overwritten by this one.
        let served_previous = match &outcome {
            Ok(value) => {
                shared.source.save(key, value);
                None
            }
            Err(error) if !shared.source.serves_previous(error) => {
                shared.source.forget(key);
                Some(false)
            }
            Err(_) => Some(true),
        };
        let mut entries = shared.entries.lock();
        let e = entries.entry(key.clone()).or_default();
        e.fetching = None;
        e.ended += 1;
        let report = match outcome {
            Ok(value) => {
                e.value = Some(Arc::new(value));
                e.fetched = Some(Instant::now());
                e.failure = None;
                None
            }
            Err(error) => {
                let served_previous = served_previous == Some(true) && e.value.is_some();
                if !served_previous {
                    e.value = None;
                    e.fetched = None;
                }
                let streak = e.failure.as_ref().map_or(1, |f| f.streak + 1);
                let error = Arc::new(error);
                e.failure = Some(Failure {
                    error: error.clone(),
                    at: Instant::now(),
                    streak,
                    retry_at: Instant::now() + shared.timing.backoff(streak),
                });
                Some((error, served_previous, streak))
            }
        };
        drop(entries);
        if let Some((error, served_previous, streak)) = report {
            shared.source.report(key, &error, served_previous, streak);
        }
        shared.ended.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Unbounded;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    type Answer = Result<Vec<&'static str>, &'static str>;

    /// A source whose fetches answer from a script: `Ok(names)`, `Err("transient")` (the
    /// previous listing stays in service) or `Err("final")`. With a gate, each fetch waits
    /// for the test to let it go on.
    #[derive(Default)]
    struct Script {
        answers: Mutex<VecDeque<Answer>>,
        fetches: AtomicUsize,
        reports: Mutex<Vec<(&'static str, bool, u32)>>,
        gate: Mutex<Option<mpsc::Receiver<()>>>,
        saved: Mutex<HashMap<u8, Vec<&'static str>>>,
        /// When the API last answered (for `answered_since`).
        answered: Mutex<Option<Instant>>,
        /// Requests each fetch makes before its answer, each answered after this long.
        pages: Mutex<Option<(usize, Duration)>>,
    }

    impl ListingSource for Script {
        type Key = u8;
        type Value = Vec<&'static str>;
        type Error = &'static str;

        fn fetch(&self, _key: &u8) -> Answer {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            if let Some(gate) = &*self.gate.lock() {
                let _ = gate.recv();
            }
            let pages = *self.pages.lock();
            if let Some((n, each)) = pages {
                for _ in 0..n {
                    std::thread::sleep(each);
                    answered();
                }
            }
            // The last answer repeats.
            let mut answers = self.answers.lock();
            if answers.len() > 1 {
                answers.pop_front().unwrap()
            } else {
                answers.front().cloned().expect("a script")
            }
        }

        fn serves_previous(&self, error: &&'static str) -> bool {
            *error == "transient"
        }

        fn report(&self, _key: &u8, error: &&'static str, served_previous: bool, streak: u32) {
            self.reports.lock().push((error, served_previous, streak));
        }

        fn load(&self, key: &u8) -> Option<Vec<&'static str>> {
            self.saved.lock().get(key).cloned()
        }

        fn save(&self, key: &u8, value: &Vec<&'static str>) {
            self.saved.lock().insert(*key, value.clone());
        }

        fn forget(&self, key: &u8) {
            self.saved.lock().remove(key);
        }

        fn answered_since(&self, t: Instant) -> bool {
            self.answered.lock().is_some_and(|a| a > t)
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    /// Listings with no backoff and no miss refresh unless a test sets them.
    fn timing(ttl: Duration) -> Timing {
        Timing {
            ttl,
            miss_refresh_after: HOUR,
            first_wait: HOUR,
            backoff_first: Duration::ZERO,
            backoff_max: Duration::ZERO,
        }
    }

    fn listings(timing: Timing, answers: &[Answer]) -> Listings<Script> {
        let source = Script {
            answers: Mutex::new(answers.iter().cloned().collect()),
            ..Default::default()
        };
        Listings::new(source, timing)
    }

    fn fetches(l: &Listings<Script>) -> usize {
        l.source().fetches.load(Ordering::SeqCst)
    }

    /// Poll until `done` (a background refresh has no caller to wait for it).
    fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn idle(l: &Listings<Script>) -> bool {
        l.shared
            .entries
            .lock()
            .values()
            .all(|e| e.fetching.is_none())
    }

    fn get(l: &Listings<Script>) -> Result<Vec<&'static str>, String> {
        l.get(&1, &Unbounded)
            .map(|v| (*v).clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_fresh_listing_is_answered_without_a_fetch() {
        let l = listings(timing(HOUR), &[Ok(vec!["a"])]);
        for _ in 0..3 {
            assert_eq!(get(&l), Ok(vec!["a"]));
        }
        assert_eq!(fetches(&l), 1);
    }

    /// A stale listing is answered at once, and the refresh it starts answers the next
    /// access; a refresh that fails leaves the old listing in service.
    #[test]
    fn a_stale_listing_is_served_while_it_is_refreshed_in_the_background() {
        let l = listings(
            timing(Duration::ZERO),
            &[Ok(vec!["a"]), Err("transient"), Ok(vec!["b"])],
        );
        assert_eq!(get(&l), Ok(vec!["a"]), "the first fetch is waited for");
        assert_eq!(get(&l), Ok(vec!["a"]), "stale: served, refresh started");
        until("the failed refresh", || idle(&l) && fetches(&l) == 2);
        assert_eq!(get(&l), Ok(vec!["a"]), "the refresh failed: still served");
        until("the next refresh", || idle(&l) && fetches(&l) == 3);
        assert_eq!(get(&l), Ok(vec!["b"]));
        assert_eq!(*l.source().reports.lock(), [("transient", true, 1)]);
    }

    /// The caller of a stale listing never waits for its refresh, even one that hangs.
    #[test]
    fn a_hung_refresh_holds_nobody() {
        let l = listings(timing(Duration::ZERO), &[Ok(vec!["a"]), Ok(vec!["b"])]);
        assert_eq!(get(&l), Ok(vec!["a"]));
        let (go, gate) = mpsc::channel();
        *l.source().gate.lock() = Some(gate);
        for _ in 0..5 {
            assert_eq!(get(&l), Ok(vec!["a"]));
        }
        until("the refresh to start", || fetches(&l) == 2);
        assert_eq!(fetches(&l), 2, "one refresh at a time");
        go.send(()).unwrap();
        *l.source().gate.lock() = None;
        until("the refresh to end", || idle(&l));
        assert_eq!(get(&l), Ok(vec!["b"]));
    }

    /// After a failure, no fetch starts before the backoff; a caller with no listing gets
    /// the failure at once, and the backoff doubles with each failure in a row.
    #[test]
    fn failures_are_remembered_for_a_backoff() {
        let mut t = timing(HOUR);
        t.backoff_first = HOUR;
        t.backoff_max = 4 * HOUR;
        let l = listings(t, &[Err("transient")]);
        assert_eq!(get(&l), Err("transient".into()));
        assert_eq!(get(&l), Err("transient".into()));
        assert_eq!(fetches(&l), 1, "remembered, not fetched again");
        let e = &l.shared.entries.lock()[&1];
        let f = e.failure.as_ref().unwrap();
        assert_eq!(f.streak, 1);
        assert!(f.retry_at > Instant::now() + HOUR / 2);

        let t = Timing::with_ttl(HOUR);
        let backoffs: Vec<u64> = (1..=9).map(|n| t.backoff(n).as_secs()).collect();
        assert_eq!(backoffs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(t.backoff(u32::MAX), RETRY_BACKOFF_MAX);
    }

    /// An answer of the API to any request since a failure ends that failure's backoff.
    #[test]
    fn a_backoff_ends_when_the_api_answers_again() {
        let mut t = timing(HOUR);
        t.backoff_first = HOUR;
        t.backoff_max = HOUR;
        let l = listings(t, &[Err("transient"), Ok(vec!["a"])]);
        assert_eq!(get(&l), Err("transient".into()));
        assert_eq!(get(&l), Err("transient".into()), "within the backoff");
        assert_eq!(fetches(&l), 1);
        *l.source().answered.lock() = Some(Instant::now());
        assert_eq!(get(&l), Ok(vec!["a"]));
        assert_eq!(fetches(&l), 2);
    }

    #[test]
    fn a_definite_refusal_ends_the_listing_in_memory_and_on_disk() {
        let mut t = timing(Duration::ZERO);
        t.backoff_first = HOUR;
        t.backoff_max = HOUR;
        let l = listings(t, &[Ok(vec!["a"]), Err("final")]);
        assert_eq!(get(&l), Ok(vec!["a"]));
        assert_eq!(l.source().saved.lock()[&1], ["a"]);
        assert_eq!(get(&l), Ok(vec!["a"]), "served while the refresh runs");
        until("the refresh", || idle(&l) && fetches(&l) == 2);
        assert_eq!(get(&l), Err("final".into()));
        assert!(l.source().saved.lock().is_empty());
        assert_eq!(*l.source().reports.lock(), [("final", false, 1)]);
    }

    /// A caller with no listing waits for the first fetch only until the fetch has run for
    /// the bound; later callers do not wait at all while it goes on; its listing serves
    /// once it comes.
    #[test]
    fn a_first_fetch_is_waited_for_within_the_bound_only() {
        let mut t = timing(HOUR);
        t.first_wait = Duration::from_millis(50);
        let l = listings(t, &[Ok(vec!["a"])]);
        let (go, gate) = mpsc::channel();
        *l.source().gate.lock() = Some(gate);
        let err = l.get(&1, &Unbounded).unwrap_err();
        assert!(matches!(err, Unavailable::NoAnswer { .. }), "{err}");
        assert!(err.to_string().contains("not answered"), "{err}");
        // The bound is counted from the start of the fetch: this one has run past it.
        std::thread::scope(|s| {
            let late = s.spawn(|| l.get(&1, &Unbounded).map(|_| ()).unwrap_err());
            let err = late.join().unwrap();
            assert!(matches!(err, Unavailable::NoAnswer { .. }), "{err}");
        });
        go.send(()).unwrap();
        *l.source().gate.lock() = None;
        until("the fetch to end", || idle(&l));
        assert_eq!(get(&l), Ok(vec!["a"]));
        assert_eq!(fetches(&l), 1);
    }

    #[test]
    fn concurrent_first_callers_share_one_fetch_and_its_failure() {
        let mut t = timing(HOUR);
        t.backoff_first = HOUR;
        t.backoff_max = HOUR;
        let l = listings(t, &[Err("final")]);
        let (go, gate) = mpsc::channel();
        *l.source().gate.lock() = Some(gate);
        std::thread::scope(|s| {
            let callers: Vec<_> = (0..8).map(|_| s.spawn(|| get(&l))).collect();
            until("the fetch to start", || fetches(&l) == 1);
            go.send(()).unwrap();
            for c in callers {
                assert_eq!(c.join().unwrap(), Err("final".into()));
            }
        });
        assert_eq!(fetches(&l), 1, "late callers get the failure remembered");
    }

    #[test]
    fn listings_of_different_keys_are_kept_apart() {
        let l = listings(timing(HOUR), &[Ok(vec!["one"]), Ok(vec!["two"])]);
        assert_eq!(*l.get(&1, &Unbounded).unwrap(), ["one"]);
        assert_eq!(*l.get(&2, &Unbounded).unwrap(), ["two"]);
        assert_eq!(*l.get(&1, &Unbounded).unwrap(), ["one"]);
        assert_eq!(fetches(&l), 2);
    }

    /// `find` looks again once when a name is missing from a listing older than
    /// `MISS_REFRESH_AFTER`, and not at all when the listing is younger.
    #[test]
    fn a_miss_refetches_once_when_the_listing_is_old_enough() {
        let pick =
            |name: &'static str| move |v: &Vec<&'static str>| v.contains(&name).then_some(name);
        // Younger than MISS_REFRESH_AFTER: the miss is answered from the listing.
        let l = listings(timing(HOUR), &[Ok(vec!["a"])]);
        assert_eq!(l.find(&1, &Unbounded, pick("a")).unwrap(), Some("a"));
        assert_eq!(l.find(&1, &Unbounded, pick("new")).unwrap(), None);
        assert_eq!(fetches(&l), 1);

        // Older: one more fetch per miss, which finds a name made since.
        let mut t = timing(HOUR);
        t.miss_refresh_after = Duration::ZERO;
        let l = listings(
            t,
            &[
                Ok(vec!["a"]),
                Ok(vec!["a", "new"]),
                Ok(vec!["a", "new"]),
                Err("transient"),
            ],
        );
        assert_eq!(l.find(&1, &Unbounded, pick("a")).unwrap(), Some("a"));
        assert_eq!(fetches(&l), 1, "a hit fetches nothing");
        assert_eq!(l.find(&1, &Unbounded, pick("new")).unwrap(), Some("new"));
        assert_eq!(fetches(&l), 2);
        assert_eq!(l.find(&1, &Unbounded, pick("gone")).unwrap(), None);
        assert_eq!(fetches(&l), 3, "one refetch per miss");
        // The refetched listing is the one held from then on.
        assert_eq!(*l.get(&1, &Unbounded).unwrap(), ["a", "new"]);
        assert_eq!(fetches(&l), 3);
        // A refresh that fails leaves the answer to the listing held.
        assert_eq!(l.find(&1, &Unbounded, pick("gone")).unwrap(), None);
        assert_eq!(l.find(&1, &Unbounded, pick("new")).unwrap(), Some("new"));
    }

    #[test]
    fn find_passes_on_a_failed_fetch() {
        let l = listings(timing(HOUR), &[Err("final")]);
        assert_eq!(
            l.find(&1, &Unbounded, |v| v.first().copied())
                .unwrap_err()
                .to_string(),
            "final"
        );
    }

    /// A listing saved by an earlier mount serves at once and is refreshed in the
    /// background; `peek` sees it without fetching; `seed` takes a listing as fresh.
    #[test]
    fn a_saved_listing_serves_at_once_and_is_refreshed() {
        let l = listings(timing(HOUR), &[Ok(vec!["new"])]);
        l.source().saved.lock().insert(1, vec!["old"]);
        assert_eq!(*l.peek(&1).unwrap(), ["old"]);
        assert_eq!(fetches(&l), 0, "peek never fetches");
        assert_eq!(get(&l), Ok(vec!["old"]));
        until("the refresh", || idle(&l) && fetches(&l) == 1);
        assert_eq!(get(&l), Ok(vec!["new"]));
        assert_eq!(l.source().saved.lock()[&1], ["new"]);

        l.seed(&2, vec!["seeded"]);
        assert_eq!(*l.get(&2, &Unbounded).unwrap(), ["seeded"]);
        assert_eq!(fetches(&l), 1, "a seeded listing is fresh");
        assert_eq!(l.source().saved.lock()[&2], ["seeded"]);
        assert!(l.peek(&3).is_none());
    }
    /// The age of a listing is that of its last fetch: a failed refresh leaves it growing,
    /// a fetch that comes resets it; a saved copy, a failure and nothing are told apart.
    #[test]
    fn the_age_of_a_listing_is_that_of_its_last_fetch() {
        let mut t = timing(Duration::ZERO);
        t.backoff_first = Duration::ZERO;
        let l = listings(t, &[Ok(vec!["a"]), Err("transient"), Ok(vec!["b"])]);
        assert_eq!(l.age(&1), Age::Never);
        assert_eq!(get(&l), Ok(vec!["a"]));
        let fetched = Instant::now();
        assert_eq!(get(&l), Ok(vec!["a"]), "the refresh that fails starts");
        until("the failed refresh", || idle(&l) && fetches(&l) == 2);
        let at_least = fetched.elapsed();
        let Age::Confirmed(grown) = l.age(&1) else {
            panic!("{:?}", l.age(&1))
        };
        assert!(grown >= at_least, "the failure reset it: {grown:?}");
        let asked = Instant::now();
        assert_eq!(get(&l), Ok(vec!["a"]));
        until("the refresh that comes", || idle(&l) && fetches(&l) == 3);
        let Age::Confirmed(reset) = l.age(&1) else {
            panic!("{:?}", l.age(&1))
        };
        assert!(reset <= asked.elapsed(), "not reset: {reset:?}");

        let l = listings(timing(HOUR), &[Err("final")]);
        assert_eq!(get(&l), Err("final".into()));
        assert_eq!(l.age(&1), Age::Failed);
        l.source().saved.lock().insert(2, vec!["old"]);
        assert_eq!(l.age(&2), Age::Never, "not looked for yet");
        assert!(l.peek(&2).is_some());
        assert_eq!(l.age(&2), Age::Saved);
    }

    /// A caller's patience as a test sets it.
    struct Caller {
        may_block: bool,
        gave_up: std::sync::atomic::AtomicBool,
    }

    impl Caller {
        fn new(may_block: bool) -> Caller {
            Caller {
                may_block,
                gave_up: Default::default(),
            }
        }
    }

    impl Patience for Caller {
        fn may_block(&self) -> bool {
            self.may_block
        }
        fn gave_up(&self) -> bool {
            self.gave_up.load(Ordering::SeqCst)
        }
    }

    /// A caller that may not block is answered at once: from the listing held, or with
    /// `WouldBlock` and the fetch started (which a later caller that may wait joins).
    #[test]
    fn a_caller_that_may_not_block_never_waits() {
        let l = listings(timing(HOUR), &[Ok(vec!["a"])]);
        let (go, gate) = mpsc::channel();
        *l.source().gate.lock() = Some(gate);
        let worker = Caller::new(false);
        for _ in 0..3 {
            let err = l.get(&1, &worker).unwrap_err();
            assert!(matches!(err, Unavailable::WouldBlock), "{err}");
            let err = l.find(&1, &worker, |v| v.first().copied()).unwrap_err();
            assert!(matches!(err, Unavailable::WouldBlock), "{err}");
        }
        until("the fetch to start", || fetches(&l) == 1);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| get(&l));
            go.send(()).unwrap();
            assert_eq!(waiter.join().unwrap(), Ok(vec!["a"]));
        });
        *l.source().gate.lock() = None;
        assert_eq!(fetches(&l), 1, "one fetch for every caller");
        // Held: answered at once, even to a caller that may not block.
        assert_eq!(*l.get(&1, &worker).unwrap(), ["a"]);
        // A miss in a listing too young to look again is answered from it.
        assert_eq!(l.find(&1, &worker, |_| None::<()>).unwrap(), None);
    }

    /// A waiting caller whose caller gives up is let go within a slice or two, long before
    /// the bound; the fetch goes on and serves the next caller.
    #[test]
    fn a_waiting_caller_that_gives_up_is_let_go_at_once() {
        let l = listings(timing(HOUR), &[Ok(vec!["a"])]);
        let (go, gate) = mpsc::channel();
        *l.source().gate.lock() = Some(gate);
        let caller = Caller::new(true);
        std::thread::scope(|s| {
            let waiting = s.spawn(|| {
                let r = l.get(&1, &caller).map(|_| ());
                (r, Instant::now())
            });
            until("the fetch to start", || fetches(&l) == 1);
            let gave_up = Instant::now();
            caller.gave_up.store(true, Ordering::SeqCst);
            let (r, answered) = waiting.join().unwrap();
            assert!(matches!(r, Err(Unavailable::Interrupted)), "{r:?}");
            assert!(
                answered.duration_since(gave_up) < 20 * WAIT_SLICE,
                "let go after {:?}",
                answered.duration_since(gave_up)
            );
        });
        go.send(()).unwrap();
        *l.source().gate.lock() = None;
        until("the fetch to end", || idle(&l));
        assert_eq!(get(&l), Ok(vec!["a"]));
        assert_eq!(fetches(&l), 1);
    }

    /// `renew` asks again whatever is held, waits within the bound, and passes a failure
    /// on (remembered for the backoff).
    #[test]
    fn renew_fetches_again_and_passes_failures_on() {
        let mut t = timing(HOUR);
        t.backoff_first = HOUR;
        t.backoff_max = HOUR;
        let l = listings(t, &[Ok(vec!["a"]), Ok(vec!["b"]), Err("transient")]);
        assert_eq!(get(&l), Ok(vec!["a"]));
        assert_eq!(*l.renew(&1, &Unbounded).unwrap(), ["b"]);
        assert_eq!(fetches(&l), 2);
        assert_eq!(
            l.renew(&1, &Unbounded).unwrap_err().to_string(),
            "transient"
        );
        assert_eq!(
            l.renew(&1, &Unbounded).unwrap_err().to_string(),
            "transient",
            "within the backoff"
        );
        assert_eq!(fetches(&l), 3);
        assert_eq!(get(&l), Ok(vec!["b"]), "get serves the listing held");
        let err = l.renew(&1, &Caller::new(false)).unwrap_err();
        assert!(matches!(err, Unavailable::Failed(_)), "{err}");
    }

    /// A fetch made of many requests that each answer (a long log) is waited for past the
    /// bound; the bound counts from its last answer.
    #[test]
    fn a_fetch_that_makes_progress_is_waited_for_past_the_bound() {
        let mut t = timing(HOUR);
        t.first_wait = Duration::from_millis(300);
        let l = listings(t, &[Ok(vec!["a"])]);
        *l.source().pages.lock() = Some((8, Duration::from_millis(100)));
        let started = Instant::now();
        assert_eq!(get(&l), Ok(vec!["a"]));
        assert!(started.elapsed() >= Duration::from_millis(800));
        // Without answers, the bound holds.
        let mut t = timing(HOUR);
        t.first_wait = Duration::from_millis(50);
        let l = listings(t, &[Ok(vec!["a"])]);
        let (go, gate) = mpsc::channel();
        *l.source().gate.lock() = Some(gate);
        let err = l.get(&1, &Unbounded).unwrap_err();
        assert!(matches!(err, Unavailable::NoAnswer { .. }), "{err}");
        go.send(()).unwrap();
    }
}
