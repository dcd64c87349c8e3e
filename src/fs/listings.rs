//! Listings fetched from the API and trusted for a while: the storages of a kind, the
//! versions of a storage. One generic type, [`Listings`], keeps them all: each listing with
//! the time it was fetched, one fetch at a time per listing, and the two rules that say
//! when to fetch again (the metadata TTL, and [`MISS_REFRESH_AFTER`] for a name that is
//! missing). What a listing is, where it comes from and how its failures are reported is
//! the business of its [`Source`]; this module knows nothing of the API.
//!
//! Callers only ask ([`Listings::get`], [`Listings::find`]); when and how a listing is
//! fetched is decided here, with the source the listings were built with. So serving an
//! old listing while a new one is fetched in the background, or keeping listings on disk
//! across mounts, can be added here alone.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long a name that was just missing may be looked up again at the API before the TTL
/// runs out: a user who pushed a version a moment ago finds it without waiting a whole TTL,
/// and a tool that stats many missing names does not flood the API.
pub const MISS_REFRESH_AFTER: Duration = Duration::from_secs(2);

/// Where one family of listings comes from.
pub trait Source: Send + Sync + 'static {
    /// Which listing: a kind, or a storage of a kind.
    type Key: Clone + Eq + Hash;
    type Value;
    type Error: fmt::Display;

    fn fetch(&self, key: &Self::Key) -> Result<Self::Value, Self::Error>;

    /// Whether a failed refresh may be answered with the listing fetched before: yes for a
    /// failure that passes (a server error, a timeout); no where the old listing must not
    /// outlive the answer (access refused, the storage gone).
    fn serves_previous(&self, error: &Self::Error) -> bool;

    /// A fetch of `key` failed (`served_previous`: the listing fetched before answered in
    /// its place). Where the failure is logged and shown to the user.
    fn report(&self, key: &Self::Key, error: &Self::Error, served_previous: bool);
}

/// One listing as fetched.
struct Listing<T> {
    fetched: Instant,
    value: Arc<T>,
}

/// The listings of one [`Source`], each trusted for the TTL after it was fetched.
pub struct Listings<S: Source> {
    source: S,
    ttl: Duration,
    miss_refresh_after: Duration,
    held: Mutex<HashMap<S::Key, Listing<S::Value>>>,
    /// One lock per listing, so that concurrent misses fetch a listing once.
    fetching: Mutex<HashMap<S::Key, Arc<Mutex<()>>>>,
}

impl<S: Source> Listings<S> {
    pub fn new(source: S, ttl: Duration) -> Listings<S> {
        Listings {
            source,
            ttl,
            miss_refresh_after: MISS_REFRESH_AFTER,
            held: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
        }
    }

    /// The listing of `key`: the one held if it is younger than the TTL, else a new one.
    /// A failed refresh is answered with the listing held, where the source allows it.
    pub fn get(&self, key: &S::Key) -> Result<Arc<S::Value>, S::Error> {
        self.younger_than(key, self.ttl)
    }

    /// What `pick` finds in the listing of `key`. When it finds nothing in a listing older
    /// than [`MISS_REFRESH_AFTER`], the listing is fetched again once, in case what is
    /// missing was just made.
    pub fn find<R>(
        &self,
        key: &S::Key,
        pick: impl Fn(&S::Value) -> Option<R>,
    ) -> Result<Option<R>, S::Error> {
        if let Some(found) = pick(&*self.get(key)?) {
            return Ok(Some(found));
        }
        Ok(pick(&*self.younger_than(key, self.miss_refresh_after)?))
    }

    fn held(&self, key: &S::Key, max_age: Duration) -> Option<Arc<S::Value>> {
        self.held
            .lock()
            .get(key)
            .filter(|l| l.fetched.elapsed() < max_age)
            .map(|l| l.value.clone())
    }

    fn younger_than(&self, key: &S::Key, max_age: Duration) -> Result<Arc<S::Value>, S::Error> {
        if let Some(v) = self.held(key, max_age) {
            return Ok(v);
        }
        let lock = self.fetching.lock().entry(key.clone()).or_default().clone();
        let _fetching = lock.lock();
        // Another caller may have fetched it while this one waited for the lock.
        if let Some(v) = self.held(key, max_age) {
            return Ok(v);
        }
        match self.source.fetch(key) {
            Ok(value) => {
                let value = Arc::new(value);
                let listing = Listing {
                    fetched: Instant::now(),
                    value: value.clone(),
                };
                self.held.lock().insert(key.clone(), listing);
                Ok(value)
            }
            Err(e) => {
                let previous = self.held.lock().get(key).map(|l| l.value.clone());
                match previous {
                    Some(v) if self.source.serves_previous(&e) => {
                        self.source.report(key, &e, true);
                        Ok(v)
                    }
                    _ => {
                        self.source.report(key, &e, false);
                        Err(e)
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A source whose fetches answer from a script: `Ok(names)`, `Err("transient")` (the
    /// previous listing may answer) or `Err("final")`.
    #[derive(Default)]
    struct Script {
        answers: Mutex<VecDeque<Result<Vec<&'static str>, &'static str>>>,
        fetches: AtomicUsize,
        reports: Mutex<Vec<(&'static str, bool)>>,
        /// How long a fetch takes, so that concurrent callers pile up behind it.
        takes: Duration,
    }

    impl Source for Script {
        type Key = u8;
        type Value = Vec<&'static str>;
        type Error = &'static str;

        fn fetch(&self, _key: &u8) -> Result<Vec<&'static str>, &'static str> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.takes);
            self.answers
                .lock()
                .pop_front()
                .expect("a fetch the test did not script")
        }

        fn serves_previous(&self, error: &&'static str) -> bool {
            *error == "transient"
        }

        fn report(&self, _key: &u8, error: &&'static str, served_previous: bool) {
            self.reports.lock().push((error, served_previous));
        }
    }

    fn listings(
        ttl: Duration,
        answers: &[Result<Vec<&'static str>, &'static str>],
    ) -> Listings<Script> {
        let source = Script {
            answers: Mutex::new(answers.iter().cloned().collect()),
            ..Default::default()
        };
        Listings::new(source, ttl)
    }

    const HOUR: Duration = Duration::from_secs(3600);

    type Answer = Result<Vec<&'static str>, &'static str>;

    struct Case {
        what: &'static str,
        ttl: Duration,
        /// What the source answers, fetch after fetch.
        script: Vec<Answer>,
        /// What three `get`s in a row answer.
        want: [Answer; 3],
        fetches: usize,
    }

    #[test]
    fn get_fetches_when_the_listing_is_older_than_the_ttl() {
        let cases = [
            Case {
                what: "a fresh listing is answered without a fetch",
                ttl: HOUR,
                script: vec![Ok(vec!["a"])],
                want: [Ok(vec!["a"]), Ok(vec!["a"]), Ok(vec!["a"])],
                fetches: 1,
            },
            Case {
                what: "a stale listing is fetched again",
                ttl: Duration::ZERO,
                script: vec![Ok(vec!["a"]), Ok(vec!["a", "b"]), Ok(vec!["c"])],
                want: [Ok(vec!["a"]), Ok(vec!["a", "b"]), Ok(vec!["c"])],
                fetches: 3,
            },
            Case {
                what: "a failed first fetch is the error, and is not remembered",
                ttl: HOUR,
                script: vec![Err("transient"), Err("final"), Ok(vec!["a"])],
                want: [Err("transient"), Err("final"), Ok(vec!["a"])],
                fetches: 3,
            },
            Case {
                what: "a failed refresh that passes serves the previous listing",
                ttl: Duration::ZERO,
                script: vec![Ok(vec!["a"]), Err("transient"), Ok(vec!["b"])],
                want: [Ok(vec!["a"]), Ok(vec!["a"]), Ok(vec!["b"])],
                fetches: 3,
            },
            Case {
                what: "a final failure is the error even with a previous listing",
                ttl: Duration::ZERO,
                script: vec![Ok(vec!["a"]), Err("final"), Ok(vec!["b"])],
                want: [Ok(vec!["a"]), Err("final"), Ok(vec!["b"])],
                fetches: 3,
            },
        ];
        for c in cases {
            let l = listings(c.ttl, &c.script);
            let got = [(); 3].map(|_| l.get(&1).map(|v| (*v).clone()));
            assert_eq!(got, c.want, "{}", c.what);
            assert_eq!(
                l.source.fetches.load(Ordering::SeqCst),
                c.fetches,
                "{}",
                c.what
            );
        }
    }

    #[test]
    fn failures_are_reported_with_whether_the_previous_listing_answered() {
        let l = listings(
            Duration::ZERO,
            &[
                Err("transient"),
                Ok(vec!["a"]),
                Err("transient"),
                Err("final"),
            ],
        );
        for _ in 0..4 {
            let _ = l.get(&1);
        }
        assert_eq!(
            *l.source.reports.lock(),
            [("transient", false), ("transient", true), ("final", false)]
        );
    }

    #[test]
    fn listings_of_different_keys_are_kept_apart() {
        let l = listings(HOUR, &[Ok(vec!["one"]), Ok(vec!["two"])]);
        assert_eq!(*l.get(&1).unwrap(), ["one"]);
        assert_eq!(*l.get(&2).unwrap(), ["two"]);
        assert_eq!(*l.get(&1).unwrap(), ["one"]);
        assert_eq!(l.source.fetches.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn concurrent_misses_fetch_once() {
        let mut l = listings(HOUR, &[Ok(vec!["a"])]);
        l.source.takes = Duration::from_millis(50);
        let start = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    start.wait();
                    assert_eq!(*l.get(&1).unwrap(), ["a"]);
                });
            }
        });
        assert_eq!(l.source.fetches.load(Ordering::SeqCst), 1);
    }

    /// `find` looks again once when a name is missing from a listing older than
    /// `MISS_REFRESH_AFTER`, and not at all when the listing is younger.
    #[test]
    fn a_miss_refetches_once_when_the_listing_is_old_enough() {
        let pick =
            |name: &'static str| move |v: &Vec<&'static str>| v.contains(&name).then_some(name);
        // Younger than MISS_REFRESH_AFTER: the miss is answered from the listing.
        let l = listings(HOUR, &[Ok(vec!["a"])]);
        assert_eq!(l.find(&1, pick("a")), Ok(Some("a")));
        assert_eq!(l.find(&1, pick("new")), Ok(None));
        assert_eq!(l.source.fetches.load(Ordering::SeqCst), 1);

        // Older: one more fetch per miss, which finds a name made since.
        let mut l = listings(
            HOUR,
            &[Ok(vec!["a"]), Ok(vec!["a", "new"]), Ok(vec!["a", "new"])],
        );
        l.miss_refresh_after = Duration::ZERO;
        assert_eq!(l.find(&1, pick("a")), Ok(Some("a")));
        assert_eq!(
            l.source.fetches.load(Ordering::SeqCst),
            1,
            "a hit fetches nothing"
        );
        assert_eq!(l.find(&1, pick("new")), Ok(Some("new")));
        assert_eq!(l.source.fetches.load(Ordering::SeqCst), 2);
        assert_eq!(l.find(&1, pick("gone")), Ok(None));
        assert_eq!(
            l.source.fetches.load(Ordering::SeqCst),
            3,
            "one refetch per miss"
        );
        // The refetched listing is the one held from then on.
        assert_eq!(*l.get(&1).unwrap(), ["a", "new"]);
        assert_eq!(l.source.fetches.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn find_passes_on_a_failed_fetch() {
        let l = listings(HOUR, &[Err("final")]);
        assert_eq!(l.find(&1, |v| v.first().copied()), Err("final"));
    }
}
