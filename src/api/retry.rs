//! When to retry and how long to wait: the [`RetryPolicy`], exponential backoff with jitter
//! bounded by attempts and by time, stretched to honour a server's `Retry-After`.
//!
//! What is worth retrying (connection errors, stalls, 5xx, 429) is decided by the caller;
//! this module only does the arithmetic, as pure functions that the tests pin down.
//!
//! The time budget runs from the first *failure*, not from the first request: a request
//! that stalled for the whole `io_timeout` before failing would otherwise have spent the
//! budget before its first retry, and a server that holds one request too long (then
//! answers the next) would cost an error that one retry avoids.

use std::time::{Duration, Instant};

/// How transient failures (connection errors, stalls, 5xx, 429) are retried.
///
/// The default retries for 30 s after the first failure, with waits of 0.1–0.2 s doubling
/// up to 2.5–5 s: a failure that lasts gets its final error about 30 s after it began (plus
/// the last request's own time, at most `io_timeout`), after 11 to 17 requests.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Requests in all, the first included: a safety net. With the default backoff the time
    /// budget ends first.
    pub max_attempts: u32,
    /// First backoff; doubles each time (with jitter), capped at `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// No retry starts later than this after the first failure; the last wait is shortened
    /// so that the last retry starts at this point.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 20,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(30),
        }
    }
}

/// The wait before retry number `retry` (1 for the first retry), or `None` to give up.
///
/// `jitter` is in `[0, 1]`: the wait is uniform in `[base/2, base]` where `base` doubles from
/// `initial_backoff` up to `max_backoff` ("equal jitter": clients that failed together do not
/// retry together, yet every wait keeps half of its backoff). A `Retry-After` from the server
/// is a lower bound. `elapsed` is the time since the first failure: no retry starts once
/// `max_attempts` requests were made or past `max_elapsed`, and a wait that would end past
/// it is shortened to end there. A `Retry-After` beyond what is left of the budget means
/// giving up now rather than sleeping for nothing.
pub(crate) fn delay_for(
    policy: &RetryPolicy,
    retry: u32,
    jitter: f64,
    retry_after: Option<Duration>,
    elapsed: Duration,
) -> Option<Duration> {
    if retry == 0 || retry >= policy.max_attempts {
        return None;
    }
    let left = policy
        .max_elapsed
        .checked_sub(elapsed)
        .filter(|left| !left.is_zero())?;
    let doubling = 2u32.saturating_pow(retry - 1);
    let base = policy
        .initial_backoff
        .checked_mul(doubling)
        .unwrap_or(policy.max_backoff)
        .min(policy.max_backoff);
    let jitter = jitter.clamp(0.0, 1.0);
    let mut delay = base / 2 + base.mul_f64(jitter / 2.0);
    if let Some(after) = retry_after {
        if after > left {
            return None;
        }
        delay = delay.max(after);
    }
    Some(delay.min(left))
}

/// The retry state of one operation: counts requests and measures time from the first
/// failure.
pub(crate) struct Retrier<'a> {
    policy: &'a RetryPolicy,
    first_failure: Option<Instant>,
    /// Requests made so far.
    attempts: u32,
}

impl<'a> Retrier<'a> {
    pub fn new(policy: &'a RetryPolicy) -> Retrier<'a> {
        Retrier {
            policy,
            first_failure: None,
            attempts: 0,
        }
    }

    /// Call before each request; returns its number (1 for the first).
    pub fn start_attempt(&mut self) -> u32 {
        self.attempts += 1;
        self.attempts
    }

    /// After a failed attempt: the wait before the next one, or `None` to give up.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        let first_failure = *self.first_failure.get_or_insert_with(Instant::now);
        delay_for(
            self.policy,
            self.attempts,
            fastrand::f64(),
            retry_after,
            first_failure.elapsed(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            max_elapsed: Duration::from_secs(10),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The waits of an operation that fails until the policy gives up, each request taking
    /// `request` and the first one failing after `first_request`: what the retry loops do,
    /// without a clock.
    fn schedule(
        policy: &RetryPolicy,
        jitter: impl Fn(u32) -> f64,
        retry_after: Option<Duration>,
        request: Duration,
    ) -> Vec<Duration> {
        let mut waits = Vec::new();
        // Time since the first failure, when the next wait is decided.
        let mut elapsed = Duration::ZERO;
        let mut retry = 1;
        while let Some(wait) = delay_for(policy, retry, jitter(retry), retry_after, elapsed) {
            waits.push(wait);
            elapsed += wait + request;
            retry += 1;
        }
        waits
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let p = policy();
        // (retry, jitter, expected)
        let cases = [
            (1, 0.0, ms(50)),
            (1, 0.999_999, ms(100)),
            (2, 0.0, ms(100)),
            (2, 0.5, ms(150)),
            (3, 1.0, ms(400)),
            (4, 0.0, ms(250)), // 800 ms capped at 500
            (4, 1.0, ms(500)),
        ];
        for (retry, jitter, expected) in cases {
            let got = delay_for(&p, retry, jitter, None, Duration::ZERO).unwrap();
            assert!(
                got.abs_diff(expected) < ms(1),
                "retry {retry} jitter {jitter}: {got:?} != {expected:?}"
            );
        }
    }

    #[test]
    fn attempts_are_bounded() {
        let p = policy();
        assert!(delay_for(&p, 4, 0.0, None, Duration::ZERO).is_some());
        assert_eq!(delay_for(&p, 5, 0.0, None, Duration::ZERO), None);
        assert_eq!(delay_for(&p, 0, 0.0, None, Duration::ZERO), None);
        let huge = RetryPolicy {
            max_attempts: u32::MAX,
            max_elapsed: Duration::MAX,
            ..p
        };
        assert_eq!(
            delay_for(&huge, 1000, 1.0, None, Duration::ZERO),
            Some(ms(500))
        );
    }

    #[test]
    fn retry_after_is_a_lower_bound() {
        let p = policy();
        assert_eq!(
            delay_for(&p, 1, 0.0, Some(Duration::from_secs(2)), Duration::ZERO),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            delay_for(&p, 1, 0.0, Some(ms(10)), Duration::ZERO),
            Some(ms(50))
        );
    }

    #[test]
    fn nothing_starts_after_max_elapsed_and_the_last_wait_ends_on_it() {
        let p = policy();
        assert_eq!(delay_for(&p, 1, 0.0, None, Duration::from_secs(10)), None);
        assert_eq!(delay_for(&p, 1, 0.0, None, Duration::from_secs(11)), None);
        // A wait that would end past the budget is shortened to end on it.
        assert_eq!(delay_for(&p, 1, 0.0, None, ms(9_960)), Some(ms(40)));
        assert_eq!(delay_for(&p, 1, 0.0, None, ms(9_900)), Some(ms(50)));
        // A Retry-After past the budget gives up at once instead of sleeping in vain; one
        // within it is honoured.
        assert_eq!(
            delay_for(&p, 1, 0.0, Some(Duration::from_secs(11)), Duration::ZERO),
            None
        );
        assert_eq!(delay_for(&p, 1, 0.0, Some(ms(200)), ms(9_900)), None);
        assert_eq!(
            delay_for(&p, 1, 0.0, Some(ms(100)), ms(9_900)),
            Some(ms(100))
        );
    }

    /// Persistent 5xx (answered at once) under the default policy: the last retry starts 30 s
    /// after the first failure, whatever the jitter, after 11 to 17 requests, and the
    /// attempt cap is never what stops it. (It used to stop at 6 requests, 3.1 to 6.2 s.)
    #[test]
    fn the_default_policy_retries_for_30_seconds_not_for_6_attempts() {
        let p = RetryPolicy::default();
        let mut rng = fastrand::Rng::with_seed(13);
        let random: Vec<f64> = (0..64).map(|_| rng.f64()).collect();
        let jitters = [
            ("0", vec![0.0; 64]),
            ("1", vec![1.0; 64]),
            ("random", random),
        ];
        for (name, jitter) in jitters {
            let waits = schedule(&p, |r| jitter[r as usize % 64], None, Duration::ZERO);
            let total: Duration = waits.iter().sum();
            assert_eq!(total, p.max_elapsed, "jitter {name}: {waits:?}");
            let requests = waits.len() as u32 + 1;
            assert!(
                (11..=17).contains(&requests) && requests < p.max_attempts,
                "jitter {name}: {requests} requests"
            );
            // No wait is longer than the cap, none shorter than half the first backoff.
            assert!(waits
                .iter()
                .all(|w| *w <= p.max_backoff && *w > Duration::ZERO));
            assert!(waits[0] >= p.initial_backoff / 2, "{waits:?}");
        }
        // Jitter 0 and 1 bound the schedule: 0.1 s, 0.2 s, … 1.6 s then 2.5 s waits (16
        // retries), or 0.2 s, … 3.2 s then 5 s waits (10 retries); each ends on the budget.
        let low = schedule(&p, |_| 0.0, None, Duration::ZERO);
        let high = schedule(&p, |_| 1.0, None, Duration::ZERO);
        assert_eq!((low.len(), high.len()), (16, 10));
        assert_eq!(
            &low[..6],
            &[ms(100), ms(200), ms(400), ms(800), ms(1600), ms(2500)]
        );
        assert_eq!(
            &high[..6],
            &[ms(200), ms(400), ms(800), ms(1600), ms(3200), ms(5000)]
        );
        assert_eq!(*low.last().unwrap(), ms(1900));
        assert_eq!(*high.last().unwrap(), ms(3800));
    }

    /// 429 with `Retry-After: 1` used to give up after 7.5 s; it now goes on for 30 s too.
    #[test]
    fn a_persistent_429_is_retried_for_the_same_30_seconds() {
        let p = RetryPolicy::default();
        for jitter in [0.0, 1.0] {
            let waits = schedule(&p, |_| jitter, Some(Duration::from_secs(1)), ms(5));
            // Each retry failed 5 ms after it started; the last one started after every wait
            // and every earlier retry.
            let last_start: Duration =
                waits.iter().sum::<Duration>() + ms(5) * (waits.len() as u32 - 1);
            assert!(
                last_start <= p.max_elapsed && last_start > p.max_elapsed - ms(1000),
                "jitter {jitter}: the last retry starts at {last_start:?}"
            );
            assert!(
                waits.iter().all(|w| *w >= Duration::from_secs(1)),
                "{waits:?}"
            );
        }
    }

    /// Requests that take time themselves (each failing after 2 s) never make a retry start
    /// past the budget.
    #[test]
    fn slow_failures_never_push_a_retry_past_the_budget() {
        let p = RetryPolicy::default();
        for jitter in [0.0, 0.3, 1.0] {
            let request = Duration::from_secs(2);
            let waits = schedule(&p, |_| jitter, None, request);
            let mut start = Duration::ZERO;
            for wait in &waits {
                start += *wait;
                assert!(start <= p.max_elapsed, "jitter {jitter}: {waits:?}");
                start += request;
            }
            // It gave up because time ran out: the last retry failed past the budget.
            assert!(start >= p.max_elapsed, "jitter {jitter}: {waits:?}");
        }
    }

    /// A stall as long as the whole budget (the default `io_timeout` is 30 s, like
    /// `max_elapsed`) still leaves the retries their budget: it is counted from the failure.
    #[test]
    fn a_first_request_that_stalled_still_gets_retried() {
        let p = RetryPolicy::default();
        let mut r = Retrier::new(&p);
        assert_eq!(r.start_attempt(), 1);
        // The request stalled for 30 s; the clock starts when it is reported.
        let wait = r.next_delay(None).expect("a retry");
        assert!(wait <= ms(200), "{wait:?}");
    }

    #[test]
    fn the_retrier_counts_attempts() {
        let p = RetryPolicy {
            max_attempts: 2,
            ..policy()
        };
        let mut r = Retrier::new(&p);
        assert_eq!(r.start_attempt(), 1);
        assert!(r.next_delay(None).is_some());
        assert_eq!(r.start_attempt(), 2);
        assert_eq!(r.next_delay(None), None);
    }
}
