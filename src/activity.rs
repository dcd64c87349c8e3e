//! What the daemon has seen of the VM0 API and what went wrong: whether the API answers
//! (the last answer, since when it fails and its last error, whether it refused the token)
//! and the recent errors a user would want to know about. Every room that talks to the API
//! reports here (listings, runs, downloads); the status file shows it. A low room: it knows
//! nothing of the filesystem.

use std::collections::VecDeque;
use std::fmt::Write;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;

use crate::api::ApiError;
use crate::dates::format_time;

/// How many recent errors are kept (the count covers all of them).
pub const RECENT_ERRORS: usize = 10;

/// What the mount knows of the API from the answers of its listings.
#[derive(Debug, Default, Clone)]
struct ApiHealth {
    /// The last answer (a listing, or a definite "not found").
    answered: Option<Instant>,
    /// The first failure since the last answer: the API is failing since then.
    failing_since: Option<SystemTime>,
    /// The last failure, when and what.
    last_error: Option<(SystemTime, String)>,
    /// The last failure was a refused token, not an unreachable API.
    refused: bool,
}

/// The API's health and the errors since start.
#[derive(Default)]
pub struct Activity {
    errors: Mutex<(u64, VecDeque<(SystemTime, String)>)>,
    api: Mutex<ApiHealth>,
}

impl Activity {
    /// The API answered.
    pub fn api_answered(&self) {
        let mut api = self.api.lock();
        api.answered = Some(Instant::now());
        api.failing_since = None;
    }

    /// A request to the API failed (after its retries); `refused`: it refused the token.
    pub fn api_failed(&self, message: String, refused: bool) {
        let now = SystemTime::now();
        let mut api = self.api.lock();
        api.failing_since.get_or_insert(now);
        api.last_error = Some((now, message));
        api.refused = refused;
    }

    /// Whether the API answered after `t`.
    pub fn answered_since(&self, t: Instant) -> bool {
        self.api.lock().answered.is_some_and(|a| a > t)
    }

    /// Note the outcome of a request to the API. A "not found" is an answer.
    pub fn api_result<T>(&self, r: &Result<T, ApiError>) {
        match r {
            Ok(_) => self.api_answered(),
            Err(e) if e.is_not_found() => self.api_answered(),
            Err(e) => self.api_failed(crate::api::error_chain(e), e.is_auth()),
        }
    }

    /// Record an error a user would want to know about (already logged by the caller).
    pub fn error(&self, message: String) {
        let mut e = self.errors.lock();
        e.0 += 1;
        if e.1.len() == RECENT_ERRORS {
            e.1.pop_front();
        }
        e.1.push_back((SystemTime::now(), message));
    }

    /// How many errors since start, and the last [`RECENT_ERRORS`] of them with their time.
    pub fn errors(&self) -> (u64, Vec<(SystemTime, String)>) {
        let e = self.errors.lock();
        (e.0, e.1.iter().cloned().collect())
    }
}

impl Activity {
    /// `api: ...`: whether the API answers, since when it does not, its last error.
    pub fn api_lines(&self) -> String {
        let api = self.api.lock().clone();
        let mut s = match (&api.failing_since, &api.last_error) {
            (Some(since), Some((_, msg))) if api.refused => format!(
                "api: rejecting the token since {} ({msg}); names are not served",
                format_time(*since)
            ),
            (Some(since), Some((_, msg))) => format!(
                "api: unreachable since {} ({msg}), serving cached listings",
                format_time(*since)
            ),
            _ => match api.answered {
                Some(t) => format!(
                    "api: reachable, last answer {} s ago",
                    t.elapsed().as_secs()
                ),
                None => "api: not asked yet".to_string(),
            },
        };
        match (api.failing_since, &api.last_error) {
            (None, Some((when, msg))) => {
                let _ = write!(s, "\napi: last error {}: {msg}", format_time(*when));
            }
            (Some(_), _) => {
                let last = match api.answered {
                    Some(t) => format!("{} s ago", t.elapsed().as_secs()),
                    None => "never in this mount".into(),
                };
                let _ = write!(s, "\napi: last answer {last}; retrying in the background");
            }
            (None, None) => {}
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_lines_say_whether_the_api_answers() {
        let a = Activity::default();
        assert_eq!(a.api_lines(), "api: not asked yet");
        a.api_answered();
        assert_eq!(a.api_lines(), "api: reachable, last answer 0 s ago");
        let refused = ApiError::Transport {
            resource: "the list of volumes".into(),
            server: crate::api::Server::Api,
            host: Some("127.0.0.1:9".into()),
            stalled: None,
            setting: "--api-url",
            source: Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused",
            )),
        };
        a.api_result::<()>(&Err(refused));
        let lines = a.api_lines();
        assert!(
            lines.starts_with("api: unreachable since ")
                && lines.contains("(could not reach the VM0 API at 127.0.0.1:9")
                && lines.contains("connection refused")
                && lines.contains("), serving cached listings\napi: last answer 0 s ago"),
            "{lines}"
        );
        // A "not found" is an answer; the last error stays shown.
        a.api_result::<()>(&Err(ApiError::NotFound {
            resource: "volume v".into(),
            message: "gone".into(),
            request_id: None,
        }));
        let lines = a.api_lines();
        assert!(
            lines.starts_with("api: reachable, last answer 0 s ago\napi: last error ")
                && lines.contains("connection refused"),
            "{lines}"
        );
        a.api_result::<()>(&Err(ApiError::Authentication { request_id: None }));
        assert!(
            a.api_lines().starts_with("api: rejecting the token since "),
            "{}",
            a.api_lines()
        );
    }
}
