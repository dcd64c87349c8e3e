//! Test instrumentation: request counters per route key, and fault rules that make a route
//! misbehave a given number of times (an error status, a delay, a cut connection, a corrupt
//! archive, another ETag). Both are driven through the admin endpoints (`/_emulator/...`).

use std::collections::BTreeMap;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// The route keys of the API and the store, as counters and fault rules name them.
pub const ROUTE_KEYS: [&str; 9] = [
    "volumes.list",
    "volumes.get",
    "volumes.versions",
    "volumes.download",
    "artifacts.list",
    "artifacts.get",
    "artifacts.versions",
    "artifacts.download",
    "store.get",
];

/// How the store damages an archive it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Corrupt {
    /// The first half of the archive, with a matching Content-Length: a truncated gzip.
    Truncate,
    /// Random bytes (not gzip) of the archive's length.
    Garbage,
    /// A valid gzip stream whose content is not a tar.
    Notar,
}

/// One fault rule, as posted to `/_emulator/faults`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// A route key of [`ROUTE_KEYS`] or `*`.
    pub route: String,
    /// Full version id or prefix; the rule then only matches downloads and store requests
    /// of a version with that id.
    #[serde(default)]
    pub version: Option<String>,
    /// How many requests the rule affects; 0 means every request, forever.
    #[serde(default = "one")]
    pub count: u64,
    #[serde(default)]
    pub status: Option<u16>,
    /// Seconds of `Retry-After` on a 429 (default 1).
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// A raw body to send instead of the API's error JSON.
    #[serde(default)]
    pub body: Option<String>,
    /// Content type of `body` (default `text/html`).
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Store only: send that many body bytes after full headers, then drop the connection.
    #[serde(default)]
    pub cut_after_bytes: Option<u64>,
    /// Store only: send that many body bytes after full headers, then send nothing more
    /// until `POST /_emulator/release` (a stalled download a test can end when it likes).
    /// Counted as `store.held` when the hold begins; a client that closes the connection
    /// while held is counted as `store.hung_up`.
    #[serde(default)]
    pub hold_after_bytes: Option<u64>,
    /// Store only: damage the archive.
    #[serde(default)]
    pub corrupt: Option<Corrupt>,
    /// Store only: serve the archive under this `ETag` (quoted, as sent) instead of its own,
    /// as a store does once the object behind a URL was replaced.
    #[serde(default)]
    pub etag: Option<String>,
}

fn one() -> u64 {
    1
}

impl FaultRule {
    pub fn validate(&self) -> Result<(), String> {
        if self.route != "*" && !ROUTE_KEYS.contains(&self.route.as_str()) {
            return Err(format!(
                "unknown route '{}': use one of {} or '*'",
                self.route,
                ROUTE_KEYS.join(", ")
            ));
        }
        if let Some(status) = self.status {
            if !(100..=599).contains(&status) {
                return Err(format!("status {status} is not an HTTP status"));
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Active {
    rule: FaultRule,
    /// `None`: unlimited.
    remaining: Option<u64>,
}

/// The list of fault rules; the first matching rule with uses left applies.
#[derive(Debug, Default)]
pub struct Faults {
    rules: Mutex<Vec<Active>>,
}

impl Faults {
    pub fn add(&self, rule: FaultRule) -> usize {
        let remaining = (rule.count > 0).then_some(rule.count);
        let mut rules = self.rules.lock();
        rules.push(Active { rule, remaining });
        rules.len()
    }

    pub fn clear(&self) {
        self.rules.lock().clear();
    }

    /// Rules with their remaining uses, for `GET /_emulator/faults`.
    pub fn snapshot(&self) -> Vec<(FaultRule, Option<u64>)> {
        self.rules
            .lock()
            .iter()
            .map(|a| (a.rule.clone(), a.remaining))
            .collect()
    }

    /// Consumes one use of the first rule matching `route` (and `version`, the full id of
    /// the version the request is about, if any).
    pub fn take(&self, route: &str, version: Option<&str>) -> Option<FaultRule> {
        let mut rules = self.rules.lock();
        let active = rules.iter_mut().find(|a| {
            a.remaining != Some(0)
                && (a.rule.route == "*" || a.rule.route == route)
                && match (&a.rule.version, version) {
                    (None, _) => true,
                    (Some(want), Some(have)) => have.starts_with(want.as_str()),
                    (Some(_), None) => false,
                }
        })?;
        if let Some(n) = &mut active.remaining {
            *n -= 1;
        }
        Some(active.rule.clone())
    }
}

/// The store's held downloads (see [`FaultRule::hold_after_bytes`]): each waits until the
/// release count moves past the one it saw when it began.
#[derive(Debug, Default)]
pub struct Holds {
    released: Mutex<u64>,
    cond: parking_lot::Condvar,
}

impl Holds {
    /// Let every download held now go on.
    pub fn release(&self) {
        *self.released.lock() += 1;
        self.cond.notify_all();
    }

    /// The release count, to wait for a later one with [`Holds::wait_past`].
    pub fn current(&self) -> u64 {
        *self.released.lock()
    }

    /// Wait at most `limit` for a release after `seen`; whether one came.
    pub fn wait_past(&self, seen: u64, limit: std::time::Duration) -> bool {
        let mut released = self.released.lock();
        if *released == seen {
            self.cond.wait_for(&mut released, limit);
        }
        *released != seen
    }
}

/// Request counts per route key (and per version: `store.get:<id>`, `download:<id>`).
#[derive(Debug, Default)]
pub struct Counters {
    counts: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    pub fn hit(&self, key: &str) {
        self.add(key, 1);
    }

    /// Add `n` to the counter `key`.
    pub fn add(&self, key: &str, n: u64) {
        *self.counts.lock().entry(key.to_string()).or_default() += n;
    }

    pub fn reset(&self) {
        self.counts.lock().clear();
    }

    /// Every fixed route key (0 when never hit) plus the per-version keys seen.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let mut all: BTreeMap<String, u64> =
            ROUTE_KEYS.iter().map(|k| (k.to_string(), 0)).collect();
        all.extend(self.counts.lock().iter().map(|(k, v)| (k.clone(), *v)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(json: &str) -> FaultRule {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn rules_are_consumed_in_order() {
        let faults = Faults::default();
        faults.add(rule(r#"{"route":"volumes.list","status":500,"count":2}"#));
        faults.add(rule(r#"{"route":"*","status":429}"#));
        assert_eq!(faults.take("volumes.list", None).unwrap().status, Some(500));
        assert_eq!(faults.take("volumes.list", None).unwrap().status, Some(500));
        assert_eq!(faults.take("volumes.list", None).unwrap().status, Some(429));
        assert!(faults.take("volumes.list", None).is_none());
    }

    #[test]
    fn version_rules_match_by_prefix() {
        let faults = Faults::default();
        faults.add(rule(
            r#"{"route":"store.get","version":"abcd1234","count":0}"#,
        ));
        assert!(faults.take("store.get", None).is_none());
        assert!(faults.take("store.get", Some("ffff")).is_none());
        assert!(faults.take("store.get", Some("abcd1234ef")).is_some());
        assert!(faults.take("store.get", Some("abcd1234ef")).is_some());
    }

    #[test]
    fn unknown_routes_are_rejected() {
        assert!(rule(r#"{"route":"volumes.lst"}"#).validate().is_err());
        assert!(rule(r#"{"route":"*"}"#).validate().is_ok());
    }
}
