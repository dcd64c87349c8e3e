//! When to retry and how long to wait: exponential backoff with jitter, bounded by the
//! attempts and the time of a [`RetryPolicy`], stretched to honour a server's `Retry-After`.
//!
//! What is worth retrying (connection errors, 5xx, 429) is decided by the caller; this module
//! only does the arithmetic, as pure functions that the tests pin down.

use std::time::{Duration, Instant};

use super::RetryPolicy;

/// The wait before retry number `retry` (1 for the first retry), or `None` to give up.
///
/// `jitter` is in `[0, 1)`: the wait is uniform in `[base/2, base]` where `base` doubles from
/// `initial_backoff` up to `max_backoff` ("equal jitter": clients that failed together do not
/// retry together, yet every wait keeps half of its backoff). A `Retry-After` from the server
/// is a lower bound. No retry is started once `max_attempts` requests were made or when it
/// would start after `max_elapsed`, so a `Retry-After` beyond the budget means giving up now
/// rather than sleeping for nothing.
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
    let doubling = 2u32.saturating_pow(retry - 1);
    let base = policy
        .initial_backoff
        .checked_mul(doubling)
        .unwrap_or(policy.max_backoff)
        .min(policy.max_backoff);
    let jitter = jitter.clamp(0.0, 1.0);
    let mut delay = base / 2 + base.mul_f64(jitter / 2.0);
    if let Some(after) = retry_after {
        delay = delay.max(after);
    }
    if elapsed.saturating_add(delay) > policy.max_elapsed {
        return None;
    }
    Some(delay)
}

/// The retry state of one operation: counts attempts and measures time from its start.
pub(crate) struct Retrier<'a> {
    policy: &'a RetryPolicy,
    start: Instant,
    /// Requests made so far.
    attempts: u32,
}

impl<'a> Retrier<'a> {
    pub fn new(policy: &'a RetryPolicy) -> Retrier<'a> {
        Retrier {
            policy,
            start: Instant::now(),
            attempts: 0,
        }
    }

    /// Call before each request; returns its number (1 for the first).
    pub fn start_attempt(&mut self) -> u32 {
        self.attempts += 1;
        self.attempts
    }

    /// After a failed attempt: the wait before the next one, or `None` to give up.
    pub fn next_delay(&self, retry_after: Option<Duration>) -> Option<Duration> {
        let jitter = fastrand::f64();
        delay_for(
            self.policy,
            self.attempts,
            jitter,
            retry_after,
            self.start.elapsed(),
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
    fn nothing_starts_after_max_elapsed() {
        let p = policy();
        assert_eq!(delay_for(&p, 1, 0.0, None, Duration::from_secs(10)), None);
        assert_eq!(delay_for(&p, 1, 0.0, None, ms(9_960)), None);
        assert_eq!(delay_for(&p, 1, 0.0, None, ms(9_900)), Some(ms(50)));
        // A Retry-After past the budget gives up at once instead of sleeping in vain.
        assert_eq!(
            delay_for(&p, 1, 0.0, Some(Duration::from_secs(11)), Duration::ZERO),
            None
        );
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
