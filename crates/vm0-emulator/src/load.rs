//! Loading a data directory into storages:
//!
//! ```text
//! DIR/{volumes,artifacts}/<name>/<label>/...   a version built from that tree
//! DIR/{volumes,artifacts}/<name>/<label>.tar.gz a version served byte-for-byte
//! DIR/{volumes,artifacts}/<name>/<label>.json   overrides for that version
//! DIR/{volumes,artifacts}/<name>/current        label of the current version
//! ```
//!
//! Versions are ordered by label (byte order) and get deterministic timestamps from a
//! fixed base time, so a data directory always yields the same API answers. Archives are
//! built in parallel because big trees take seconds each.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context};
use parking_lot::Mutex;
use serde::Deserialize;

use crate::model::{
    parse_timestamp, storage_id, Kind, Storage, Version, BASE_TIME_MS, DAY_MS, MINUTE_MS,
};
use crate::pack;

/// Overrides for one version, from `<label>.json`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sidecar {
    size: Option<u64>,
    file_count: Option<u64>,
    message: Option<String>,
    created_by: Option<String>,
    created_at: Option<String>,
}

#[derive(Debug, Default)]
struct LabelFiles {
    tree: Option<PathBuf>,
    archive: Option<PathBuf>,
    sidecar: Option<PathBuf>,
}

#[derive(Debug)]
struct StorageDir {
    labels: BTreeMap<String, LabelFiles>,
    current: Option<String>,
}

/// What to compute for one label.
enum Job {
    Tree(PathBuf),
    Archive(PathBuf),
}

/// Loads every storage under `roots` (a storage defined in two roots is an error), building
/// archives of directory versions into `archives_dir`.
pub fn load(roots: &[PathBuf], archives_dir: &Path) -> anyhow::Result<Vec<Storage>> {
    let mut dirs: BTreeMap<(Kind, String), StorageDir> = BTreeMap::new();
    for root in roots {
        if !root.is_dir() {
            bail!("data directory {} does not exist", root.display());
        }
        for kind in Kind::ALL {
            let kind_dir = root.join(kind.as_str());
            if !kind_dir.is_dir() {
                continue;
            }
            for entry in read_dir_sorted(&kind_dir)? {
                let path = kind_dir.join(&entry);
                if !path.is_dir() {
                    tracing::warn!(path = %path.display(), "skipping: not a storage directory");
                    continue;
                }
                let dir = read_storage_dir(&path)?;
                if dirs.insert((kind, entry.clone()), dir).is_some() {
                    bail!(
                        "{} '{}' is defined in two data directories",
                        kind.singular(),
                        entry
                    );
                }
            }
        }
    }

    let mut jobs = Vec::new();
    for ((kind, name), dir) in &dirs {
        let sid = storage_id(*kind, name);
        for (label, files) in &dir.labels {
            let job = match (&files.tree, &files.archive) {
                (Some(tree), None) => Job::Tree(tree.clone()),
                (None, Some(archive)) => Job::Archive(archive.clone()),
                (Some(_), Some(_)) => {
                    bail!(
                        "{} '{name}': label '{label}' is both a directory and a .tar.gz",
                        kind.singular()
                    )
                }
                (None, None) => {
                    tracing::warn!(storage = %name, %label, "sidecar without a version, ignored");
                    continue;
                }
            };
            jobs.push((sid.clone(), (*kind, name.clone(), label.clone()), job));
        }
    }
    let cache = LoadCache::open(archives_dir);
    let results = parallel_map(jobs, |(sid, key, job)| {
        let packed = match job {
            Job::Tree(tree) => build_tree(&sid, &tree, archives_dir, &cache)
                .with_context(|| format!("cannot build the archive of {}", tree.display())),
            Job::Archive(path) => scan_ready_archive(&sid, &path, &cache),
        };
        (key, packed)
    });
    cache.save();
    let mut packed: BTreeMap<(Kind, String, String), pack::Packed> = BTreeMap::new();
    for (key, result) in results {
        packed.insert(key, result?);
    }

    let mut storages = Vec::new();
    for kind in Kind::ALL {
        let names = dirs
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| n.clone());
        for (index, name) in names.enumerate() {
            let dir = &dirs[&(kind, name.clone())];
            // One day per storage keeps the order across storages deterministic.
            let storage_base = BASE_TIME_MS + DAY_MS * index as i64;
            storages.push(assemble(kind, &name, dir, &packed, storage_base)?);
        }
    }
    Ok(storages)
}

/// Results of earlier runs in a persistent work directory (`--work-dir`), so restarting
/// the emulator over gigabytes of data (the benchmarks do) neither rebuilds nor rescans
/// archives whose inputs did not change. Keys digest the inputs' metadata.
struct LoadCache {
    file: PathBuf,
    old: BTreeMap<String, pack::Packed>,
    /// Entries used by this run: what is saved, so stale entries drop out.
    used: Mutex<BTreeMap<String, pack::Packed>>,
}

const CACHE_FILE: &str = "load-cache.json";

impl LoadCache {
    fn open(dir: &Path) -> LoadCache {
        let file = dir.join(CACHE_FILE);
        // A missing or unreadable cache only costs time.
        let old = fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        LoadCache {
            file,
            old,
            used: Mutex::new(BTreeMap::new()),
        }
    }

    fn get(&self, key: &str) -> Option<pack::Packed> {
        let hit = self.old.get(key)?;
        // The archive may have been deleted since: then it is rebuilt.
        if hit.archive.as_ref().is_some_and(|a| !a.exists()) {
            return None;
        }
        self.put(key, hit.clone());
        Some(hit.clone())
    }

    fn put(&self, key: &str, packed: pack::Packed) {
        self.used.lock().insert(key.to_string(), packed);
    }

    fn save(&self) {
        let used = self.used.lock();
        if used.is_empty() && self.old.is_empty() {
            return;
        }
        let tmp = self.file.with_extension("json.tmp");
        let written = fs::create_dir_all(self.file.parent().unwrap_or(Path::new(".")))
            .and_then(|()| fs::write(&tmp, serde_json::to_vec(&*used).unwrap_or_default()))
            .and_then(|()| fs::rename(&tmp, &self.file));
        if let Err(err) = written {
            tracing::warn!(%err, "cannot save the load cache");
        }
    }
}

fn build_tree(
    sid: &str,
    tree: &Path,
    archives_dir: &Path,
    cache: &LoadCache,
) -> std::io::Result<pack::Packed> {
    let entries = pack::scan_dir(tree)?;
    let key = format!("tree:{}", pack::tree_fingerprint(sid, &entries));
    if let Some(hit) = cache.get(&key) {
        return Ok(hit);
    }
    let packed = pack::pack(sid, entries, archives_dir)?;
    cache.put(&key, packed.clone());
    Ok(packed)
}

fn scan_ready_archive(sid: &str, path: &Path, cache: &LoadCache) -> anyhow::Result<pack::Packed> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let key = format!(
        "archive:{sid}:{}:{}:{}:{}.{}",
        path.display(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    if let Some(hit) = cache.get(&key) {
        return Ok(hit);
    }
    let packed = match pack::scan_archive(sid, path) {
        Ok(packed) => packed,
        Err(err) => {
            // Corrupt on purpose, most likely: the version still has an archive, the client
            // is the one that has to cope with it.
            tracing::info!(path = %path.display(), %err, "unreadable archive, hashing raw bytes");
            let version_id = pack::raw_archive_id(sid, path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            pack::Packed {
                version_id,
                size: 0,
                file_count: 0,
                archive: Some(path.to_path_buf()),
            }
        }
    };
    cache.put(&key, packed.clone());
    Ok(packed)
}

fn assemble(
    kind: Kind,
    name: &str,
    dir: &StorageDir,
    packed: &BTreeMap<(Kind, String, String), pack::Packed>,
    storage_base: i64,
) -> anyhow::Result<Storage> {
    let mut versions: Vec<Version> = Vec::new();
    let mut current = None;
    let mut last_label_id = None;
    for (index, (label, files)) in dir.labels.iter().enumerate() {
        let Some(p) = packed.get(&(kind, name.to_string(), label.clone())) else {
            continue;
        };
        let sidecar: Sidecar = match &files.sidecar {
            Some(path) => serde_json::from_slice(&fs::read(path)?)
                .with_context(|| format!("invalid sidecar {}", path.display()))?,
            None => Sidecar::default(),
        };
        let created_at_ms = match &sidecar.created_at {
            Some(s) => parse_timestamp(s).with_context(|| format!("bad created_at {s:?}"))?,
            None => storage_base + MINUTE_MS * index as i64,
        };
        let version = Version {
            id: p.version_id.clone(),
            size: sidecar.size.unwrap_or(p.size),
            file_count: sidecar.file_count.unwrap_or(p.file_count),
            message: sidecar.message,
            created_by: sidecar.created_by.unwrap_or_else(|| "user".to_string()),
            created_at_ms,
            archive: p.archive.clone(),
        };
        if dir.current.as_deref() == Some(label.as_str()) {
            current = Some(version.id.clone());
        }
        last_label_id = Some(version.id.clone());
        // The same content under two labels is one version (ids are content addresses);
        // the first label keeps its timestamp, as the first push would on the service.
        if !versions.iter().any(|v| v.id == version.id) {
            versions.push(version);
        }
    }
    if let Some(label) = &dir.current {
        if current.is_none() {
            bail!(
                "{} '{name}': current label '{label}' is not a version",
                kind.singular()
            );
        }
    }
    let current = current.or(last_label_id);
    let created_at_ms = versions.first().map_or(storage_base, |v| v.created_at_ms);
    let updated_at_ms = versions.last().map_or(storage_base, |v| v.created_at_ms);
    Ok(Storage {
        id: storage_id(kind, name),
        kind,
        name: name.to_string(),
        versions,
        current,
        created_at_ms,
        updated_at_ms,
    })
}

fn read_storage_dir(path: &Path) -> anyhow::Result<StorageDir> {
    let mut labels: BTreeMap<String, LabelFiles> = BTreeMap::new();
    let mut current = None;
    for name in read_dir_sorted(path)? {
        let full = path.join(&name);
        if name == "current" && full.is_file() {
            current = Some(fs::read_to_string(&full)?.trim().to_string());
        } else if full.is_dir() {
            labels.entry(name).or_default().tree = Some(full);
        } else if let Some(label) = name.strip_suffix(".tar.gz") {
            labels.entry(label.to_string()).or_default().archive = Some(full);
        } else if let Some(label) = name.strip_suffix(".json") {
            labels.entry(label.to_string()).or_default().sidecar = Some(full);
        } else {
            tracing::warn!(path = %full.display(), "skipping an unknown file in a storage directory");
        }
    }
    Ok(StorageDir { labels, current })
}

/// Names in a directory, sorted bytewise; names that are not UTF-8 cannot be storage
/// names or labels, so they are an error rather than silently skipped.
fn read_dir_sorted(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let name = entry?.file_name();
        match name.into_string() {
            Ok(s) => names.push(s),
            Err(raw) => bail!("{}: name {raw:?} is not UTF-8", dir.display()),
        }
    }
    names.sort();
    Ok(names)
}

/// Runs `f` over `items` on as many threads as there are cores, keeping the order.
fn parallel_map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len())
        .max(1);
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let results: Vec<Mutex<Option<R>>> = slots.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(slot) = slots.get(i) else { break };
                let item = slot.lock().take().expect("each index is taken once");
                *results[i].lock() = Some(f(item));
            });
        }
    });
    results
        .into_iter()
        .map(|r| r.into_inner().expect("every item was processed"))
        .collect()
}
