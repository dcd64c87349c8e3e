//! What the mount is doing, for `MOUNT/.vm0fs/status`: downloads in flight with their
//! progress, and the errors since start. The cache's own state comes from its snapshot.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;

use crate::cache::{Snapshot, VersionKey};
use crate::size::ByteSize;

/// How many recent errors the status file shows (the count covers all of them).
const RECENT_ERRORS: usize = 10;

#[derive(Debug, Clone)]
pub struct Progress {
    pub storage: String,
    /// Uncompressed size announced by the API.
    pub size: u64,
    pub bytes: u64,
    pub files: u64,
    pub started: Instant,
}

#[derive(Default)]
pub struct Activity {
    downloads: Mutex<HashMap<VersionKey, Progress>>,
    errors: Mutex<(u64, VecDeque<(SystemTime, String)>)>,
}

impl Activity {
    pub fn start(&self, key: &VersionKey, storage: &str, size: u64) {
        let p = Progress {
            storage: storage.to_string(),
            size,
            bytes: 0,
            files: 0,
            started: Instant::now(),
        };
        self.downloads.lock().insert(key.clone(), p);
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
        let _ = writeln!(
            s,
            "cache: {root}: {} used of {} ({:.1}%), {} versions",
            ByteSize(cache.used),
            ByteSize(cache.budget),
            pct(cache.used, cache.budget),
            cache.resident.len()
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
                super::format_time(r.last_used),
                if r.pinned { "  [in use]" } else { "" }
            );
        }
        let _ = writeln!(s, "\ndownloads in flight:");
        let downloads = self.downloads.lock().clone();
        if downloads.is_empty() {
            let _ = writeln!(s, "  (none)");
        }
        let mut downloads: Vec<_> = downloads.into_iter().collect();
        downloads.sort_by_key(|(_, p)| p.started);
        for (key, p) in downloads {
            let secs = p.started.elapsed().as_secs_f64().max(1e-3);
            let _ = writeln!(
                s,
                "  {:<8} {:<24} {}  {:.0}%  {} of {}, {} files, {}/s",
                key.kind.singular(),
                p.storage,
                key.id,
                pct(p.bytes, p.size).min(100.0),
                ByteSize(p.bytes),
                ByteSize(p.size),
                p.files,
                ByteSize((p.bytes as f64 / secs) as u64)
            );
        }
        let errors = self.errors.lock();
        let _ = writeln!(s, "\nerrors since start: {}", errors.0);
        for (when, msg) in errors.1.iter() {
            let _ = writeln!(s, "  {}  {msg}", super::format_time(*when));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Kind;
    use crate::cache::ResidentInfo;

    #[test]
    fn renders_cache_downloads_and_errors() {
        let a = Activity::default();
        let key = VersionKey::new(Kind::Artifact, &"ab".repeat(32));
        a.start(&key, "agent-report", 1000);
        a.update(&key, 500, 3);
        for i in 0..12 {
            a.error(format!("failure {i}"));
        }
        let snap = Snapshot {
            budget: 1 << 30,
            used: 1 << 20,
            resident: vec![ResidentInfo {
                key: VersionKey::new(Kind::Volume, &"cd".repeat(32)),
                disk_bytes: 1 << 20,
                pinned: true,
                last_used: SystemTime::UNIX_EPOCH,
            }],
            in_flight: vec![],
        };
        let text = a.render("vm0fs test", &snap, "/cache", |k| {
            (k.kind == Kind::Volume).then(|| "input-data".into())
        });
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
        assert!(
            !text.contains("failure 1\n") && text.contains("failure 11"),
            "only the last 10: {text}"
        );
        a.finish(&key);
        assert!(!a.render("", &snap, "", |_| None).contains("agent-report"));
    }
}
