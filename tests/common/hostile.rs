//! Helpers of the hostile-archive, fault and security tests: a sandbox around the cache
//! directory that proves nothing was written outside it, polling with deadlines, and a
//! mount started with an environment of the test's choosing (the shared [`super::Mount`]
//! always sets `VM0_TOKEN`). The hostile archives themselves are written by hand with
//! `vm0_emulator::pack::RawTar`.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::{Emulator, Mount, MountOpts};

/// Write the `<label>.json` sidecar of a data-dir version (what the API announces).
pub fn put_sidecar(data: &Path, kind: &str, name: &str, label: &str, sidecar: &Value) {
    let dir = data.join(kind).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{label}.json")), sidecar.to_string()).unwrap();
}

// ---------------------------------------------------------------------------------------
// The sandbox around the cache

/// A directory holding the cache directory, a sentinel directory next to it, a file
/// `outside` (the target of hostile hard links), and a sentinel directory under /tmp: an
/// archive that escapes its version directory would write into one of them.
pub struct Sandbox {
    pub root: TempDir,
    pub cache: PathBuf,
    pub sentinel: PathBuf,
    pub outside: PathBuf,
    /// `/tmp/vm0fs-sentinel-<pid>-<n>`: the target of absolute member paths.
    pub tmp_sentinel: PathBuf,
    root_entries: BTreeSet<String>,
}

pub const OUTSIDE_CONTENT: &[u8] = b"outside the cache: must never change\n";

impl Sandbox {
    pub fn new() -> Sandbox {
        let root = tempfile::Builder::new()
            .prefix("vm0fs-sandbox")
            .tempdir()
            .unwrap();
        let cache = root.path().join("cache");
        let sentinel = root.path().join("sentinel");
        std::fs::create_dir(&sentinel).unwrap();
        let outside = root.path().join("outside");
        std::fs::write(&outside, OUTSIDE_CONTENT).unwrap();
        let tmp_sentinel = tempfile::Builder::new()
            .prefix("vm0fs-sentinel")
            .tempdir()
            .unwrap()
            .keep();
        let root_entries = ["cache", "outside", "sentinel"].map(String::from).into();
        Sandbox {
            root,
            cache,
            sentinel,
            outside,
            tmp_sentinel,
            root_entries,
        }
    }

    pub fn opts(&self) -> MountOpts<'static> {
        MountOpts {
            cache: Some(self.cache.clone()),
            ..Default::default()
        }
    }

    /// Nothing was written outside the cache's own layout: the sentinels are empty, the
    /// cache's parent holds only what it held, `outside` is unchanged, and every path under
    /// the cache directory is one the cache itself makes.
    pub fn assert_untouched(&self) {
        for dir in [&self.sentinel, &self.tmp_sentinel] {
            let found: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .collect();
            assert!(
                found.is_empty(),
                "written into the sentinel {}: {found:?}",
                dir.display()
            );
        }
        let entries: BTreeSet<String> = std::fs::read_dir(self.root.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            entries, self.root_entries,
            "new entries next to the cache directory"
        );
        assert_eq!(
            std::fs::read(&self.outside).unwrap(),
            OUTSIDE_CONTENT,
            "`outside` changed"
        );
        assert_eq!(
            std::fs::metadata(&self.outside).unwrap().nlink(),
            1,
            "`outside` got a hard link"
        );
        assert_cache_layout(&self.cache);
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tmp_sentinel);
    }
}

/// Every path under a cache directory is one the cache makes (see `src/cache/disk.rs`):
/// `lock`, `FORMAT`, `versions|tmp|trash/<key>/{index.bin,checks.bin,meta.json,pack,data/<n>}`,
/// and the saved listings `listings/{volumes,artifacts}{.json,/<16 hex>.json}` (see
/// `src/fs/saved.rs`), and the runs' files `runs{,-live}/<run id>/<file>` (see
/// `src/cache/runs.rs`). Anything else (a name that came from an archive member) fails
/// the test.
pub fn assert_cache_layout(cache: &Path) {
    let mut bad = Vec::new();
    walk(cache, &mut |rel: &Path, meta: &std::fs::Metadata| {
        let parts: Vec<String> = rel
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        let p: Vec<&str> = parts.iter().map(String::as_str).collect();
        let key_ok = |k: &str| k.starts_with("volumes-") || k.starts_with("artifacts-");
        // A saved listing, or its temporary file (`<name>.<pid>.partial`) mid-write.
        let listing_ok = |f: &str, stem_ok: &dyn Fn(&str) -> bool| {
            let stem = f.split('.').next().unwrap_or("");
            stem_ok(stem) && (f == format!("{stem}.json") || f.ends_with(".partial"))
        };
        let hash_ok = |h: &str| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit());
        let kind_ok = |k: &str| k == "volumes" || k == "artifacts";
        let ok = match p.as_slice() {
            ["listings"] => meta.is_dir(),
            ["listings", k] if kind_ok(k) => meta.is_dir(),
            ["listings", f] => listing_ok(f, &kind_ok) && meta.is_file(),
            ["listings", k, f] => kind_ok(k) && listing_ok(f, &hash_ok) && meta.is_file(),
            // Runs' files (see `src/cache/runs.rs`): a run id, then the files of a run.
            ["runs" | "runs-live"] => meta.is_dir(),
            ["runs" | "runs-live", id] => run_id_ok(id) && meta.is_dir(),
            ["runs" | "runs-live", id, f] => run_id_ok(id) && run_file_ok(f) && meta.is_file(),
            ["lock" | "FORMAT"] => meta.is_file(),
            [f] if f.starts_with("FORMAT") || f.starts_with("vm0fs.log") => meta.is_file(),
            ["versions" | "tmp" | "trash" | "partial" | "spans"] => meta.is_dir(),
            // A span of the archive of a version larger than the cache: `<key>.<s>.<k>`.
            ["spans", f] => {
                let mut parts = f.rsplitn(3, '.');
                let (k, serial, key) = (parts.next(), parts.next(), parts.next());
                let digits = |s: Option<&str>| {
                    s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                };
                digits(k) && digits(serial) && key.is_some_and(key_ok) && meta.is_file()
            }
            // The compressed bytes of a download, kept if it fails part way.
            ["partial", k] => key_ok(k) && meta.is_file(),
            ["versions" | "tmp" | "trash", k] => key_ok(k) && meta.is_dir(),
            ["versions" | "tmp" | "trash", k, "data"] => key_ok(k) && meta.is_dir(),
            ["versions" | "tmp" | "trash", k, "index.bin" | "checks.bin" | "meta.json" | "pack" | "positions.bin" | "seek.bin"] => {
                key_ok(k) && meta.is_file()
            }
            ["versions" | "tmp" | "trash", k, f] if f.starts_with("meta.json") => {
                key_ok(k) && meta.is_file()
            }
            ["versions" | "tmp" | "trash", k, "data", n] => {
                key_ok(k)
                    && meta.is_file()
                    && !n.is_empty()
                    && n.bytes().all(|b| b.is_ascii_digit())
            }
            _ => false,
        };
        // Nothing the cache makes is a symlink, a device, a FIFO, or has several names.
        let plain = meta.file_type().is_dir() || (meta.file_type().is_file() && meta.nlink() == 1);
        if !ok || !plain {
            bad.push(rel.display().to_string());
        }
    });
    assert!(
        bad.is_empty(),
        "paths in the cache directory that the cache does not make: {bad:#?}"
    );
}

/// A run id as vm0fs takes one (`api::RunId`).
fn run_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A file of a run directory, or one being replaced (`<name>.tmp~`).
fn run_file_ok(f: &str) -> bool {
    const FILES: [&str; 9] = [
        "run.json",
        "status",
        "prompt",
        "error",
        "logs",
        "logs.jsonl",
        "events.jsonl",
        "metrics.json",
        "complete.json",
    ];
    FILES.contains(&f) || f.ends_with(".tmp~")
}

fn walk(root: &Path, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    fn inner(root: &Path, dir: &Path, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            f(path.strip_prefix(root).unwrap(), &meta);
            if meta.is_dir() {
                inner(root, &path, f);
            }
        }
    }
    inner(root, root, f);
}

/// Names under the cache's `versions/`.
pub fn cached_versions(cache: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(cache.join("versions"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Whether `versions/` holds the version `id`.
pub fn is_cached(cache: &Path, id: &str) -> bool {
    cached_versions(cache).iter().any(|v| v.ends_with(id))
}

/// Entries of the cache's `tmp/`.
pub fn tmp_entries(cache: &Path) -> Vec<String> {
    std::fs::read_dir(cache.join("tmp"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Allocated bytes under `path`, as the cache's budget counts them.
pub fn disk_usage(path: &Path) -> u64 {
    usage_by_entry(path).0
}

/// The largest [`disk_usage`] of a directory seen while something runs: sampled on a
/// thread every 2 ms (a sampling rate, not a wait) until [`DiskPeak::finish`].
pub struct DiskPeak {
    stop: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<(u64, Peak)>,
}

/// The largest usage seen, and what made it up (for the message of a test that fails).
#[derive(Default)]
pub struct Peak {
    pub bytes: u64,
    /// The top-level entries' and versions' bytes at that moment.
    pub detail: String,
}

impl Peak {
    /// Assert that the peak was within `budget`, plus what lives beside the versions and
    /// spans (the log and the saved listings: 64 KiB).
    pub fn assert_within(&self, budget: u64) {
        assert!(
            self.bytes <= budget + 64 * 1024,
            "peak usage {} over the budget {budget}: {}",
            self.bytes,
            self.detail
        );
    }
}

/// Allocated bytes under `root`, and by its first two levels of names (`versions/<id>`).
/// Each inode counts once, as `du` counts: a hard link is not two files, and a directory
/// renamed while the walk runs (`tmp/<id>` to `versions/<id>`, as a version is committed)
/// can be met twice but is one.
fn usage_by_entry(root: &Path) -> (u64, Vec<(String, u64)>) {
    let mut total = std::fs::symlink_metadata(root)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0);
    let mut by: std::collections::BTreeMap<String, u64> = Default::default();
    let mut seen = std::collections::HashSet::new();
    walk(root, &mut |rel, m| {
        if !seen.insert((m.dev(), m.ino())) {
            return;
        }
        let bytes = m.blocks() * 512;
        total += bytes;
        let key: Vec<_> = rel.components().take(2).collect();
        let key: PathBuf = key.iter().collect();
        *by.entry(key.display().to_string()).or_default() += bytes;
    });
    (total, by.into_iter().filter(|(_, b)| *b > 0).collect())
}

impl DiskPeak {
    pub fn start(root: &Path) -> DiskPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (stop, root) = (stop.clone(), root.to_path_buf());
            std::thread::spawn(move || {
                let mut samples = 0u64;
                let mut peak = Peak::default();
                while !stop.load(Ordering::Relaxed) {
                    let (bytes, by) = usage_by_entry(&root);
                    if bytes > peak.bytes {
                        let detail: Vec<String> =
                            by.iter().map(|(k, b)| format!("{k}: {b}")).collect();
                        peak = Peak {
                            bytes,
                            detail: detail.join(", "),
                        };
                    }
                    samples += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                (samples, peak)
            })
        };
        DiskPeak { stop, sampler }
    }

    /// Stop sampling: the peak, after checking that enough samples were taken for it to
    /// mean something.
    pub fn finish(self) -> Peak {
        self.stop.store(true, Ordering::Relaxed);
        let (samples, peak) = self.sampler.join().unwrap();
        assert!(
            samples > 10,
            "too few samples of the disk usage ({samples})"
        );
        peak
    }
}

// ---------------------------------------------------------------------------------------
// Waiting

/// Poll `f` until it is true; panic with `what` after `limit`.
pub fn poll_until(limit: Duration, what: &str, f: impl FnMut() -> bool) {
    poll_every(Duration::from_millis(20), limit, what, f);
}

/// [`poll_until`], looking every `every` (for a state that may not last long).
pub fn poll_every(every: Duration, limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(every);
    }
}

/// A crash in the middle of an unpack: read `file` (of a version not cached yet) through
/// `m`, whose cache is `cache`, and `kill -9` the daemon once the unpack has written
/// 2 MiB into `CACHE/tmp`. Returns the restarted mount on the same cache (`opts`), after
/// checking that no version was complete before the restart and that the restart removed
/// what the unpack left.
pub fn kill_9_during_an_unpack(
    mut m: Mount,
    emu: &Emulator,
    cache: &Path,
    opts: MountOpts<'_>,
    file: &str,
) -> Mount {
    let reader = {
        let p = m.join(file);
        std::thread::spawn(move || std::fs::read(p).is_ok())
    };
    let tmp = cache.join("tmp");
    poll_every(
        Duration::from_millis(2),
        Duration::from_secs(60),
        "the unpack to write 2 MiB",
        || disk_usage(&tmp) >= 2 << 20,
    );
    let mut child = m.take_child();
    child.kill().unwrap();
    child.wait().unwrap();
    let complete = std::fs::read_dir(cache.join("versions")).unwrap().count();
    assert_eq!(complete, 0, "killed before completion: nothing complete");
    let _ = reader.join();
    drop(m);
    emu.reset_counters();
    let m = Mount::with(emu, opts);
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "leftovers removed at start"
    );
    m
}

/// Run `f` on a thread and wait for it at most `limit`; `None` if it did not return (the
/// thread is left behind, stuck in the mount, which the test then fails on).
pub fn within<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

/// Read a file through the mount, failing the test if the read does not return in time.
pub fn read_within(limit: Duration, path: &Path) -> std::io::Result<Vec<u8>> {
    let p = path.to_path_buf();
    within(limit, move || std::fs::read(p))
        .unwrap_or_else(|| panic!("reading {} did not return within {limit:?}", path.display()))
}

/// The daemon's log once `pred` holds for it (polled: the daemon logs after it answers).
/// The deadline is past one whole retry cycle (30 s), since a failure is logged at its end.
pub fn log_when(m: &Mount, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = m.log_text();
        if pred(&log) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "the log never showed {what}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The log line saying member `member` was skipped, if there is one.
pub fn skip_line<'a>(log: &'a str, member: &str) -> Option<&'a str> {
    let field = format!("member={member} reason=");
    log.lines()
        .find(|l| l.contains("WARN") && l.contains("skipping archive member") && l.contains(&field))
}

// ---------------------------------------------------------------------------------------
// The emulator's versions

/// The id of the version of `kind/name` whose message is `message` (the sidecars of the
/// tests set the message to the label, so a test can find each version).
pub fn version_with_message(emu: &Emulator, kind: &str, name: &str, message: &str) -> String {
    let id = emu.storage(kind, name)["id"].as_str().unwrap().to_string();
    let page = emu.api_get(&format!("/{kind}/{id}/versions?limit=100"));
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["message"] == message)
        .unwrap_or_else(|| panic!("no version of {kind}/{name} with message {message}: {page}"))
        ["id"]
        .as_str()
        .unwrap()
        .to_string()
}

// ---------------------------------------------------------------------------------------
// A mount with an environment of the test's choosing

/// `vm0fs mount --foreground` with exactly the arguments and environment given (no
/// `VM0_TOKEN` unless the test sets it); unmounted and stopped on drop.
pub struct RawMount;

impl RawMount {
    /// Start and wait until the mount answers, or the daemon's output if it exits first.
    pub fn start(args: &[String], env: &[(&str, &str)]) -> Result<Mount, String> {
        super::require_fuse();
        let dir = tempfile::Builder::new()
            .prefix("vm0fs-mnt")
            .tempdir()
            .unwrap();
        let work = tempfile::Builder::new()
            .prefix("vm0fs-work")
            .tempdir()
            .unwrap();
        let log = work.path().join("vm0fs.log");
        let mut cmd = Command::new(super::vm0fs_bin());
        cmd.arg("mount")
            .arg(dir.path())
            .arg("--foreground")
            .args(args);
        // A fresh cache unless the test gives one: never the user's default cache, whose
        // versions from an earlier run would be served without a download.
        let given = args
            .iter()
            .position(|a| a == "--cache-dir")
            .and_then(|i| args.get(i + 1));
        let cache = match given {
            Some(dir) => PathBuf::from(dir),
            None => {
                let cache = work.path().join("cache");
                cmd.arg("--cache-dir").arg(&cache);
                cache
            }
        };
        cmd.env_remove("VM0_TOKEN")
            .env_remove("VM0_API_URL")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Mount::spawn(cmd, dir, cache, log, work)
    }
}
