//! Runs on disk, beside the versions: the files of runs that are final (they never change
//! again) kept under the cache's byte budget, and the files of live runs being written.
//!
//! ```text
//! CACHE/runs/<run-id>/        a final run's files, complete; `complete.json` last
//! CACHE/runs-live/<run-id>/   a live run's files as they grow; removed at start
//! ```
//!
//! A final run enters `runs/` by the rename of its complete directory (the live one, or
//! one filled at once), so a crash leaves either a complete run or a leftover in
//! `runs-live/` that the next start removes. Its bytes are counted in the cache's budget
//! ([`Cache::charge`]: versions are evicted to make room for them, as for a new version),
//! and when runs alone pass the budget the least recently used are removed. Which files a
//! run has and what is in them is `files`'s and `state`'s business; this module only keeps
//! directories. The cache knows nothing of runs: it counts their bytes when told to.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::cache::{disk_usage, remove_all, Cache, CacheError};

/// Written last into a final run's directory: its presence says the directory is complete.
pub const RUN_COMPLETE: &str = "complete.json";

/// The final runs kept on disk, least recently used first out.
pub struct RunStore {
    cache: Cache,
    root: PathBuf,
    live_root: PathBuf,
    state: Mutex<lru::LruCache<String, u64>>,
}

impl RunStore {
    /// Open the runs' directories of `cache`: clear what live runs left, and count every
    /// complete final run found (an incomplete one is removed).
    pub fn open(cache: &Cache) -> Result<RunStore, CacheError> {
        let root = cache.root().join("runs");
        let live_root = cache.root().join("runs-live");
        for dir in [&root, &live_root] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| CacheError::Io {
                    path: dir.clone(),
                    source,
                })?;
        }
        if let Ok(entries) = fs::read_dir(&live_root) {
            for e in entries.flatten() {
                remove_all(&e.path());
            }
        }
        let mut found = Vec::new();
        if let Ok(entries) = fs::read_dir(&root) {
            for e in entries.flatten() {
                let path = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                match fs::metadata(path.join(RUN_COMPLETE)) {
                    Ok(m) => found.push((m.modified().ok(), name, disk_usage(&path))),
                    Err(_) => {
                        tracing::info!(path = %path.display(), "removing an incomplete run");
                        remove_all(&path);
                    }
                }
            }
        }
        // Oldest use first, so that the newest ends most recent.
        found.sort();
        let store = RunStore {
            cache: cache.clone(),
            root,
            live_root,
            state: Mutex::new(lru::LruCache::unbounded()),
        };
        let total: u64 = found.iter().map(|f| f.2).sum();
        {
            let mut st = store.state.lock();
            for (_, name, bytes) in found {
                st.put(name, bytes);
            }
        }
        if total > 0 && !cache.charge(total) {
            store.trim();
        }
        Ok(store)
    }

    /// The directory of final run `id`, if it is complete here (a use: it moves up in the
    /// LRU order).
    pub fn final_dir(&self, id: &str) -> Option<PathBuf> {
        let mut st = self.state.lock();
        st.get(id)?;
        Some(self.root.join(id))
    }

    /// Whether final run `id` is here, without counting a use.
    pub fn contains(&self, id: &str) -> bool {
        self.state.lock().contains(id)
    }

    /// The final runs here.
    pub fn ids(&self) -> Vec<String> {
        self.state.lock().iter().map(|(k, _)| k.clone()).collect()
    }

    /// The directory where live run `id`'s files grow (made if needed, in the runs'
    /// directory made at open).
    pub fn live_dir(&self, id: &str) -> io::Result<PathBuf> {
        let dir = self.live_root.join(id);
        crate::cache::make_dir(&dir)?;
        Ok(dir)
    }

    /// A fresh, empty directory for run `id`'s files (what an earlier attempt left is
    /// removed).
    pub fn fresh_live_dir(&self, id: &str) -> io::Result<PathBuf> {
        remove_all(&self.live_root.join(id));
        self.live_dir(id)
    }

    /// Make the complete directory `dir` (from [`RunStore::live_dir`]) final run `id`:
    /// synced, marked complete, renamed into place, counted in the budget.
    pub fn commit(&self, id: &str, dir: &Path) -> io::Result<PathBuf> {
        for e in fs::read_dir(dir)?.flatten() {
            fs::File::open(e.path())?.sync_all()?;
        }
        let bytes = disk_usage(dir);
        let mut mark = fs::File::create(dir.join(RUN_COMPLETE))?;
        writeln!(mark, "{{\"run_id\":{:?},\"disk_bytes\":{bytes}}}", id)?;
        mark.sync_all()?;
        let target = self.root.join(id);
        remove_all(&target);
        fs::rename(dir, &target)?;
        fs::File::open(&self.root)?.sync_all()?;
        let bytes = disk_usage(&target);
        self.state.lock().put(id.to_string(), bytes);
        if !self.cache.charge(bytes) {
            self.trim_keeping(Some(id));
        }
        Ok(target)
    }

    /// Remove final runs, least recently used first, until the cache is within its budget.
    fn trim(&self) {
        self.trim_keeping(None);
    }

    fn trim_keeping(&self, keep: Option<&str>) {
        let mut removed = HashSet::new();
        while self.cache.over_budget() {
            let victim = {
                let mut st = self.state.lock();
                let victim = st
                    .iter()
                    .rev()
                    .map(|(k, _)| k.clone())
                    .find(|k| Some(k.as_str()) != keep && !removed.contains(k));
                let Some(victim) = victim else { break };
                let bytes = st.pop(&victim).unwrap_or(0);
                (victim, bytes)
            };
            tracing::info!(run = %victim.0, bytes = victim.1, "evicting a run's files from the cache");
            remove_all(&self.root.join(&victim.0));
            self.cache.discharge(victim.1);
            removed.insert(victim.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A complete run directory of `bytes` bytes of logs, committed as run `id`.
    fn commit(store: &RunStore, id: &str, bytes: usize) {
        let dir = store.fresh_live_dir(id).unwrap();
        fs::write(dir.join("logs"), vec![b'x'; bytes]).unwrap();
        store.commit(id, &dir).unwrap();
    }

    #[test]
    fn final_runs_count_in_the_budget_and_the_least_recently_used_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        let store = RunStore::open(&cache).unwrap();
        commit(&store, "a", 400 << 10);
        commit(&store, "b", 400 << 10);
        assert!(cache.usage().1 >= 800 << 10, "{:?}", cache.usage());
        // A use of `a` makes `b` the least recently used.
        assert!(store.final_dir("a").is_some());
        commit(&store, "c", 400 << 10);
        assert!(store.contains("a") && store.contains("c"));
        assert!(!store.contains("b"), "b was evicted");
        assert!(!dir.path().join("runs/b").exists());
        assert!(cache.usage().1 <= 1 << 20, "{:?}", cache.usage());
    }

    #[test]
    fn complete_runs_survive_a_restart_and_incomplete_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        {
            let cache = Cache::open(dir.path(), 10 << 20).unwrap();
            let store = RunStore::open(&cache).unwrap();
            commit(&store, "done", 1000);
            let live = store.live_dir("live").unwrap();
            fs::write(live.join("logs"), b"partial").unwrap();
            // A final directory without its completion mark (a crash during a commit).
            fs::create_dir_all(dir.path().join("runs/torn")).unwrap();
        }
        let cache = Cache::open(dir.path(), 10 << 20).unwrap();
        let store = RunStore::open(&cache).unwrap();
        assert_eq!(store.ids(), ["done"]);
        assert!(cache.usage().1 > 0, "counted again at start");
        assert!(!dir.path().join("runs-live/live").exists());
        assert!(!dir.path().join("runs/torn").exists());
        let logs = store.final_dir("done").unwrap().join("logs");
        assert_eq!(fs::read(logs).unwrap().len(), 1000);
    }
}
