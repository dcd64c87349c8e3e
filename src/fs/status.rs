//! The status file, `MOUNT/.vm0fs/status`: what the mount is doing ([`Activity`]: whether
//! the API answers, downloads in flight with their progress, how long they have run and
//! whether they are stalled, the ones queued for a place in the download pool, the errors
//! since start), rendered with the cache's own state (its snapshot) into a text, and the
//! text each reader is shown ([`StatusTexts`]).

use std::collections::{HashMap, VecDeque};
use std::fmt::Write;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::api::ApiError;
use crate::cache::{Snapshot, VersionKey};
use crate::size::ByteSize;

use super::attr::format_time;
use super::fetch::STALL_AFTER;
use super::Fs;

/// The name of the hidden directory that holds the status file.
pub const STATUS_DIR: &str = ".vm0fs";

/// The status file's name in [`STATUS_DIR`].
pub const STATUS_FILE: &str = "status";

/// How many recent errors the status file shows (the count covers all of them).
const RECENT_ERRORS: usize = 10;

/// What a running download has received, kept by its download thread and read by the
/// unpacker (to notice a stall) and the status file.
#[derive(Debug)]
pub struct Meter {
    started: Instant,
    received: AtomicU64,
    /// When the last byte came, in milliseconds since `started` (0: none yet).
    last_byte_ms: AtomicU64,
}

impl Meter {
    fn new() -> Meter {
        Meter {
            started: Instant::now(),
            received: AtomicU64::new(0),
            last_byte_ms: AtomicU64::new(0),
        }
    }

    /// `n` more bytes came from the network.
    pub fn received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        self.last_byte_ms.store(now, Ordering::Relaxed);
    }

    /// When the last byte came, since the start (zero before the first).
    pub fn last_byte(&self) -> Duration {
        Duration::from_millis(self.last_byte_ms.load(Ordering::Relaxed))
    }

    /// How long since the last byte (or the start, before the first).
    pub fn idle(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.last_byte())
    }
}

/// A download in flight, as far as it has come.
#[derive(Debug, Clone)]
pub struct Download {
    pub storage: String,
    /// Uncompressed size announced by the API.
    pub size: u64,
    pub bytes: u64,
    pub files: u64,
    pub meter: Arc<Meter>,
}

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

#[derive(Default)]
pub struct Activity {
    downloads: Mutex<HashMap<VersionKey, Download>>,
    errors: Mutex<(u64, VecDeque<(SystemTime, String)>)>,
    api: Mutex<ApiHealth>,
}

impl Activity {
    /// A download starts; what it receives goes into the returned meter.
    pub fn start(&self, key: &VersionKey, storage: &str, size: u64) -> Arc<Meter> {
        let meter = Arc::new(Meter::new());
        let p = Download {
            storage: storage.to_string(),
            size,
            bytes: 0,
            files: 0,
            meter: meter.clone(),
        };
        self.downloads.lock().insert(key.clone(), p);
        meter
    }

    pub fn update(&self, key: &VersionKey, bytes: u64, files: u64) {
        if let Some(p) = self.downloads.lock().get_mut(key) {
            p.bytes = bytes;
            p.files = files;
        }
    }

    pub fn finish(&self, key: &VersionKey) {
        self.downloads.lock().remove(key);
    }

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

    /// The text of the status file.
    pub fn render(
        &self,
        header: &str,
        cache: &Snapshot,
        root: &str,
        name_of: impl Fn(&VersionKey) -> Option<String>,
    ) -> String {
        let mut s = String::new();
        let pct = |a: u64, b: u64| {
            if b == 0 {
                0.0
            } else {
                a as f64 * 100.0 / b as f64
            }
        };
        let _ = writeln!(s, "{header}");
        let _ = writeln!(s, "{}", self.api_lines());
        let _ = writeln!(
            s,
            "cache: {root}: {} used of {} ({:.1}%), {} versions",
            ByteSize(cache.used),
            ByteSize(cache.budget),
            pct(cache.used, cache.budget),
            cache.resident.len()
        );
        let _ = writeln!(
            s,
            "damaged versions: {} (found damaged on disk, dropped, downloaded again at the next access)",
            cache.damaged
        );
        let _ = writeln!(s, "\ncached versions (most recently used first):");
        if cache.resident.is_empty() {
            let _ = writeln!(s, "  (none)");
        }
        for r in cache.resident.iter().rev() {
            let _ = writeln!(
                s,
                "  {:<8} {:<24} {}  {:>10}  last used {}{}",
                r.key.kind.singular(),
                name_of(&r.key).unwrap_or_else(|| "-".into()),
                r.key.id,
                ByteSize(r.disk_bytes).to_string(),
                format_time(r.last_used),
                if r.pinned { "  [in use]" } else { "" }
            );
        }
        let _ = writeln!(s, "\ndownloads in flight:");
        let downloads = self.downloads.lock().clone();
        if downloads.is_empty() && cache.queued.is_empty() {
            let _ = writeln!(s, "  (none)");
        }
        let mut downloads: Vec<_> = downloads.into_iter().collect();
        downloads.sort_by_key(|(_, p)| p.meter.started);
        for (key, p) in downloads {
            let elapsed = p.meter.started.elapsed();
            let secs = elapsed.as_secs_f64().max(1e-3);
            let idle = p.meter.idle();
            let _ = writeln!(
                s,
                "  {:<8} {:<24} {}  {:.0}%  {} of {}, {} files, {}/s, running for {} s{}",
                key.kind.singular(),
                p.storage,
                key.id,
                pct(p.bytes, p.size).min(100.0),
                ByteSize(p.bytes),
                ByteSize(p.size),
                p.files,
                ByteSize((p.bytes as f64 / secs) as u64),
                elapsed.as_secs(),
                if idle >= STALL_AFTER {
                    format!(", stalled for {} s", idle.as_secs())
                } else {
                    String::new()
                }
            );
        }
        for (key, waited) in &cache.queued {
            let _ = writeln!(
                s,
                "  {:<8} {:<24} {}  queued for {} s (at most {} downloads run at once)",
                key.kind.singular(),
                name_of(key).unwrap_or_else(|| "-".into()),
                key.id,
                waited.as_secs(),
                cache.downloads
            );
        }
        let errors = self.errors.lock();
        let _ = writeln!(s, "\nerrors since start: {}", errors.0);
        for (when, msg) in errors.1.iter() {
            let _ = writeln!(s, "  {}  {msg}", format_time(*when));
        }
        s
    }
}

impl Activity {
    /// `api: ...`: whether the API answers, since when it does not, its last error.
    fn api_lines(&self) -> String {
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

/// How long one reader (a pid) is shown the same status text. Without `OPEN`, the file has
/// no handle to hold a copy: the kernel learns the size at a `LOOKUP` or `GETATTR` and then
/// reads pages, asking for the attributes again before each `read(2)`. So that the size it
/// learnt and the bytes it reads come from one text (a `cat` never prints the start of one
/// and the end of another), each reader keeps its text this long.
const STATUS_HOLD: Duration = Duration::from_secs(1);

/// How many readers' status texts are kept (a reader beyond them gets a fresh text).
const STATUS_READERS: NonZeroUsize = NonZeroUsize::new(64).expect("not zero");

/// One status text, as shown to one reader.
#[derive(Clone)]
pub struct StatusText {
    pub text: Arc<Vec<u8>>,
    made: Instant,
    /// Its mtime: the kernel drops cached pages of the file when this changes.
    pub at: SystemTime,
}

/// The status text each recent reader was shown, see [`STATUS_HOLD`].
pub struct StatusTexts {
    by_reader: Mutex<lru::LruCache<u32, StatusText>>,
}

impl Default for StatusTexts {
    fn default() -> Self {
        StatusTexts {
            by_reader: Mutex::new(lru::LruCache::new(STATUS_READERS)),
        }
    }
}

impl StatusTexts {
    /// The text `reader` is shown: the one made for it less than [`STATUS_HOLD`] ago, else
    /// a new one from `render` (which it keeps). Without a reader, always a new one.
    pub fn for_reader(&self, reader: Option<u32>, render: impl FnOnce() -> String) -> StatusText {
        if let Some(pid) = reader {
            if let Some(t) = self.by_reader.lock().get(&pid) {
                if t.made.elapsed() < STATUS_HOLD {
                    return t.clone();
                }
            }
        }
        // Rendered without the lock: it takes the cache's and the inode table's.
        let t = StatusText {
            text: Arc::new(render().into_bytes()),
            made: Instant::now(),
            at: SystemTime::now(),
        };
        if let Some(pid) = reader {
            self.by_reader.lock().put(pid, t.clone());
        }
        t
    }
}

impl Fs {
    /// The text of `MOUNT/.vm0fs/status`.
    pub fn status_text(&self) -> String {
        let snap = self.cache.snapshot();
        let root = self.cache.root().display().to_string();
        // The names of the versions shown, looked up first: the inode table is not held
        // while the text is rendered.
        let names: HashMap<&VersionKey, String> = {
            let inodes = self.inodes.lock();
            snap.resident
                .iter()
                .map(|r| &r.key)
                .chain(snap.queued.iter().map(|(k, _)| k))
                .filter_map(|key| {
                    let name = inodes.storage_of(key.kind, &key.id)?;
                    Some((key, name.to_string()))
                })
                .collect()
        };
        self.activity
            .render(&self.config.label, &snap, &root, |k| names.get(k).cloned())
    }

    /// The status text `reader` is shown (see [`STATUS_HOLD`]).
    pub(super) fn status_for(&self, reader: Option<u32>) -> StatusText {
        self.status.for_reader(reader, || self.status_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Kind;
    use crate::cache::ResidentInfo;
    use crate::ids::VersionId;

    #[test]
    fn renders_cache_downloads_and_errors() {
        let a = Activity::default();
        let key = VersionKey::new(Kind::Artifact, &VersionId::parse(&"ab".repeat(32)).unwrap());
        a.start(&key, "agent-report", 1000);
        a.update(&key, 500, 3);
        for i in 0..12 {
            a.error(format!("failure {i}"));
        }
        let snap = Snapshot {
            budget: 1 << 30,
            used: 1 << 20,
            resident: vec![ResidentInfo {
                key: VersionKey::new(Kind::Volume, &VersionId::parse(&"cd".repeat(32)).unwrap()),
                disk_bytes: 1 << 20,
                pinned: true,
                last_used: SystemTime::UNIX_EPOCH,
            }],
            in_flight: vec![],
            queued: vec![(
                VersionKey::new(Kind::Volume, &VersionId::parse(&"ef".repeat(32)).unwrap()),
                Duration::from_secs(3),
            )],
            downloads: 4,
            damaged: 2,
        };
        let text = a.render("vm0fs test", &snap, "/cache", |k| {
            (k.kind == Kind::Volume).then(|| "input-data".into())
        });
        assert!(
            text.contains(&format!("{}  queued for 3 s", "ef".repeat(32))),
            "{text}"
        );
        assert!(text.contains("1.0 MiB used of 1.0 GiB"), "{text}");
        assert!(
            text.contains("input-data")
                && text.contains(&"cd".repeat(32))
                && text.contains("[in use]"),
            "{text}"
        );
        assert!(
            text.contains("agent-report") && text.contains("50%"),
            "{text}"
        );
        assert!(text.contains("errors since start: 12"), "{text}");
        assert!(text.contains("damaged versions: 2 "), "{text}");
        assert!(
            !text.contains("failure 1\n") && text.contains("failure 11"),
            "only the last 10: {text}"
        );
        a.finish(&key);
        assert!(!a.render("", &snap, "", |_| None).contains("agent-report"));
    }

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

    #[test]
    fn a_reader_keeps_its_text_for_a_moment_and_others_get_a_new_one() {
        let texts = StatusTexts::default();
        let renders = std::cell::Cell::new(0);
        let render = || {
            renders.set(renders.get() + 1);
            format!("text {}", renders.get())
        };
        let text = |t: StatusText| String::from_utf8(t.text.to_vec()).unwrap();
        assert_eq!(text(texts.for_reader(Some(7), render)), "text 1");
        assert_eq!(text(texts.for_reader(Some(7), render)), "text 1", "kept");
        assert_eq!(
            text(texts.for_reader(Some(8), render)),
            "text 2",
            "another reader"
        );
        assert_eq!(text(texts.for_reader(None, render)), "text 3", "no reader");
        assert_eq!(text(texts.for_reader(None, render)), "text 4");
        assert_eq!(text(texts.for_reader(Some(7), render)), "text 1");
    }
}
