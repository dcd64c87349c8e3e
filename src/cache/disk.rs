//! The cache directory's on-disk layout, and the only code that touches it.
//!
//! ```text
//! CACHE/                      ours or refused, opened once without following links (held)
//! CACHE/lock                  flock(2)ed by the running daemon; holds its pid
//! CACHE/vm0fs.log             the log of a daemonized mount
//! CACHE/FORMAT                the on-disk format version (CACHE_FORMAT_VERSION)
//! CACHE/versions/<key>/       complete versions, <key> = "<kind>-<64-hex id>"
//!        pack                 contents of the files under 1 MiB, back to back
//!        data/<n>             contents of larger files, one each (written by crate::archive)
//!        index.bin            the version's tree (crate::archive::Index), used mapped
//!        checks.bin           the checksums of its content (crate::archive::Checks)
//!        positions.bin        a version larger than the cache: where each file lies in
//!        seek.bin             its tar stream, and the checkpoints of the gzip stream
//!        meta.json            the completion record; its mtime is the version's last use
//! CACHE/spans/<key>.<s>.<k>   spans of the tar streams of versions larger than the cache,
//!                             read by range requests; removed at start
//! CACHE/tmp/<key>.<pid>.<n>/  versions being unpacked; removed at start
//! CACHE/trash/<...>/          evicted versions being deleted; removed at start
//! CACHE/listings/             API listings saved for later mounts: written and read by
//!                             their owner (`crate::metadata`), never touched here
//! ```
//!
//! A version becomes visible only by the atomic rename of its fully written temporary
//! directory (completion record included) into `versions/`, so a crash at any moment
//! leaves either a complete version or garbage in `tmp/` that the next start removes.
//!
//! Everything here is private to the daemon's user: directories 0700, files 0600 (the
//! daemon's umask is 077 as well), and what an older vm0fs left more open is closed at
//! start.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::held::HeldDir;
use super::{CacheError, VersionKey};
use crate::api::Kind;
use crate::ids::VersionId;

/// Bump when anything under `CACHE/` changes meaning; a cache of another format is cleared.
/// `tests::format_is_pinned` fails when the serialized records change without a bump.
/// Format 6: versions larger than the cache (`positions.bin`, `seek.bin`, the archive in
/// the completion record); format 5: checksums of 64 KiB units (format 4 had 1 MiB;
/// format 3 no `checks.bin`; format 2: one file per member, a `postcard` index).
pub const CACHE_FORMAT_VERSION: u32 = 6;

/// The completion record of a version (`meta.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub format: u32,
    pub kind: Kind,
    pub id: VersionId,
    /// Real disk usage of the version directory, in bytes of allocated blocks.
    pub disk_bytes: u64,
    pub files: u64,
    pub bytes: u64,
    /// A version larger than the cache (its content read from the archive by ranges): the
    /// archive it was indexed from. Absent for a version whose content is on disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveOrigin>,
}

/// The archive a version larger than the cache was indexed from: range reads must find the
/// very same object at the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveOrigin {
    /// The object's `ETag` as the store sent it.
    pub etag: String,
    /// The archive's length in bytes.
    pub len: u64,
}

/// A complete version found in the cache directory at start.
#[derive(Debug)]
pub struct Found {
    pub key: VersionKey,
    pub disk_bytes: u64,
    pub last_used: SystemTime,
    /// Set for a version larger than the cache (see [`Completion::archive`]).
    pub archive: Option<ArchiveOrigin>,
}

pub struct Layout {
    pub root: PathBuf,
    held: HeldDir,
    tmp_counter: AtomicU64,
}

/// What lives at the top of the cache directory: made private at every start.
const TOP_DIRS: [&str; 8] = [
    "versions",
    "tmp",
    "spans",
    "trash",
    "partial",
    "listings",
    "runs",
    "runs-live",
];
const TOP_FILES: [&str; 2] = ["FORMAT", "vm0fs.log"];

impl Layout {
    /// Create (mode 0700) or open the cache directory, take its lock, check its format, and
    /// clear leftovers of interrupted unpacks and evictions.
    pub fn open(root: &Path) -> Result<Layout, CacheError> {
        let io_err = |path: &Path, source| CacheError::Io {
            path: path.to_path_buf(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| io_err(root, e))?;
        let held = HeldDir::open(root)?;
        let layout = Layout {
            root: root.to_path_buf(),
            held,
            tmp_counter: AtomicU64::new(0),
        };
        make_private(root);

        let format_path = root.join("FORMAT");
        let found_format = fs::read_to_string(&format_path).ok();
        let expected = CACHE_FORMAT_VERSION.to_string();
        match found_format.as_deref().map(str::trim) {
            Some(f) if f == expected => {}
            other => {
                if let Some(other) = other {
                    tracing::warn!(
                        cache = %root.display(),
                        found = other,
                        expected = CACHE_FORMAT_VERSION,
                        "cache directory was written by an incompatible vm0fs; clearing it"
                    );
                }
                for sub in ["versions", "tmp", "trash"] {
                    remove_all(&root.join(sub));
                }
                write_file_atomic(&format_path, expected.as_bytes())
                    .map_err(|e| io_err(&format_path, e))?;
            }
        }
        for sub in ["versions", "tmp", "trash", "spans"] {
            let p = root.join(sub);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&p)
                .map_err(|e| io_err(&p, e))?;
        }
        // Leftovers of an interrupted run: never served, always removed. (The spans of
        // versions larger than the cache live as long as the run that fetched or kept
        // them: their keys hold serials of that run's openings.)
        for sub in ["tmp", "trash", "spans"] {
            let dir = root.join(sub);
            if let Ok(entries) = fs::read_dir(&dir) {
                for e in entries.flatten() {
                    tracing::info!(path = %e.path().display(), "removing leftover of an interrupted run");
                    remove_all(&e.path());
                }
            }
        }
        Ok(layout)
    }

    /// The cache directory as held (open, checked, locked).
    pub fn held(&self) -> &HeldDir {
        &self.held
    }

    pub fn version_dir(&self, key: &VersionKey) -> PathBuf {
        self.root.join("versions").join(key.dir_name())
    }

    /// Where span `k` of the tar stream of `key` (a version larger than the cache) is kept.
    pub fn span_path(&self, key: &VersionKey, serial: u64, k: u32) -> PathBuf {
        self.root
            .join("spans")
            .join(format!("{}.{serial}.{k}", key.dir_name()))
    }

    /// The error for a write into a directory this daemon no longer holds.
    fn refuse_lost(&self) -> Result<(), CacheError> {
        match self.held.lost.get() {
            Some(why) => Err(CacheError::Lost {
                dir: self.root.clone(),
                why: why.clone(),
            }),
            None => Ok(()),
        }
    }

    /// A fresh temporary directory to unpack `key` into.
    pub fn new_tmp_dir(&self, key: &VersionKey) -> Result<PathBuf, CacheError> {
        self.refuse_lost()?;
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let path =
            self.root
                .join("tmp")
                .join(format!("{}.{}.{n}", key.dir_name(), std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| CacheError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(path)
    }

    /// Scan `versions/` for complete versions: one small `meta.json` read per version, and
    /// the cheap check of its files ([`crate::archive::quick_check`]: headers and lengths,
    /// not content). A damaged version is removed with a warning; how many were is the
    /// second value.
    pub fn scan(&self) -> (Vec<Found>, u64) {
        let mut found = Vec::new();
        let mut damaged = 0;
        let dir = self.root.join("versions");
        let Ok(entries) = fs::read_dir(&dir) else {
            return (found, damaged);
        };
        for e in entries.flatten() {
            let path = e.path();
            let meta_path = path.join("meta.json");
            let parsed = fs::read(&meta_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Completion>(&b).ok())
                .filter(|m| m.format == CACHE_FORMAT_VERSION);
            let key = parsed.as_ref().map(|m| VersionKey::new(m.kind, &m.id));
            match (parsed, key) {
                (Some(meta), Some(key))
                    if Some(key.dir_name().as_str())
                        == path.file_name().and_then(|n| n.to_str()) =>
                {
                    if let Err(problem) = crate::archive::quick_check(&path, meta.archive.is_none())
                    {
                        tracing::warn!(version = %key, %problem, "a cached version is damaged; removing it, the next access downloads it again");
                        damaged += 1;
                        remove_all(&path);
                        continue;
                    }
                    let last_used = fs::metadata(&meta_path)
                        .and_then(|m| m.modified())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push(Found {
                        key,
                        disk_bytes: meta.disk_bytes,
                        last_used,
                        archive: meta.archive,
                    });
                }
                _ => {
                    tracing::warn!(path = %path.display(), "removing a cache entry without a valid completion record");
                    remove_all(&path);
                }
            }
        }
        (found, damaged)
    }

    /// Write the completion record into `tmp` and atomically move it into `versions/`.
    /// Returns the final directory.
    pub fn commit(
        &self,
        key: &VersionKey,
        tmp: &Path,
        meta: &Completion,
    ) -> Result<PathBuf, CacheError> {
        // What is at the path now may be another daemon's cache: nothing is moved into it.
        self.refuse_lost()?;
        let meta_path = tmp.join("meta.json");
        let body = serde_json::to_vec(meta).expect("a completion record always serializes");
        // Written in place: `tmp` is out of sight until the rename below, which is the
        // atomic step; the sync makes the record durable before the version can be.
        write_synced(&meta_path, &body).map_err(|source| CacheError::Io {
            path: meta_path,
            source,
        })?;
        let dest = self.version_dir(key);
        // A stale copy (cannot normally exist: the caller owns the key) is replaced.
        if dest.exists() {
            self.discard(&dest);
        }
        fs::rename(tmp, &dest).map_err(|source| CacheError::Io {
            path: dest.clone(),
            source,
        })?;
        if let Ok(d) = File::open(self.root.join("versions")) {
            // The rename is only durable once the directory itself is synced.
            let _ = d.sync_all();
        }
        Ok(dest)
    }

    /// Move a version directory out of sight (atomic), to be deleted by [`Layout::purge`].
    pub fn discard(&self, dir: &Path) -> Option<PathBuf> {
        // The path may now name another daemon's version: it is left alone.
        if self.held.is_lost() {
            return None;
        }
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let name = dir.file_name()?.to_string_lossy().into_owned();
        let trash = self
            .root
            .join("trash")
            .join(format!("{name}.{}.{n}", std::process::id()));
        match fs::rename(dir, &trash) {
            Ok(()) => Some(trash),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "could not move an evicted version aside; deleting in place");
                Some(dir.to_path_buf())
            }
        }
    }

    /// Record a use of a version (its `meta.json` mtime), so LRU order survives restarts.
    pub fn touch(&self, key: &VersionKey) {
        if self.held.is_lost() {
            return;
        }
        let path = self.version_dir(key).join("meta.json");
        let opened = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path);
        if let Ok(f) = opened {
            let _ = f.set_modified(SystemTime::now());
        }
    }
}

/// Delete a directory tree, logging (not failing) on error: a leftover is retried at the
/// next start.
pub fn remove_all(path: &Path) {
    // A file (a span) is removed as a file: `remove_dir_all` refuses anything else.
    let is_dir = fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    let removed = if is_dir {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match removed {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a cache directory");
        }
    }
}

/// Allocated bytes of every file under `path` (blocks * 512), like `du -s --bytes` of the
/// allocation rather than of the apparent sizes.
pub fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        if let Ok(entries) = fs::read_dir(path) {
            for e in entries.flatten() {
                total += disk_usage(&e.path());
            }
        }
    }
    total
}

/// Create or replace `path` with `bytes` (mode 0600), synced to disk. A link at `path` is
/// never followed (`ELOOP`).
fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Replace `path` with `bytes` so that a reader sees the old or the new content, never a
/// part of it.
fn write_file_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("partial");
    write_synced(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// Make directory `dir` (0700) if it is not there. Its parent must be: directories made
/// while the mount runs are never made from the cache directory down, so that a cache
/// directory removed under a running mount (by its owner, or by a test that ended while a
/// download or refresh still ran) is not made again at a path the mount no longer owns.
pub fn make_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Close what an older vm0fs (or another umask) left open to others at the top of the
/// cache directory: its directories become 0700, its files 0600. Links are never followed
/// (`lstat`), and only entries of this user are touched.
fn make_private(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let me = nix::unistd::geteuid().as_raw();
    let entries = TOP_DIRS
        .iter()
        .map(|d| (d, 0o700))
        .chain(TOP_FILES.iter().map(|f| (f, 0o600)));
    for (name, mode) in entries {
        let path = root.join(name);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let wrong = meta.mode() & 0o7777 != mode;
        if wrong && meta.uid() == me && !meta.file_type().is_symlink() {
            if let Err(e) = fs::set_permissions(&path, fs::Permissions::from_mode(mode)) {
                tracing::warn!(path = %path.display(), error = %e, "cannot make a cache entry private");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_is_pinned() {
        let meta = Completion {
            format: CACHE_FORMAT_VERSION,
            kind: Kind::Artifact,
            id: VersionId::parse(&"ab".repeat(32)).unwrap(),
            disk_bytes: 8192,
            files: 2,
            bytes: 10,
            archive: None,
        };
        let json = serde_json::to_string(&meta).unwrap();
        let expected = format!(
            r#"{{"format":6,"kind":"Artifact","id":"{}","disk_bytes":8192,"files":2,"bytes":10}}"#,
            "ab".repeat(32)
        );
        assert_eq!(
            json, expected,
            "serialized disk format appears to have changed, version bump required"
        );
        assert_eq!(
            CACHE_FORMAT_VERSION, 6,
            "update the pinned record above with the bump"
        );
        // A version larger than the cache names its archive.
        let streamed = Completion {
            archive: Some(ArchiveOrigin {
                etag: "\"e\"".into(),
                len: 99,
            }),
            ..meta
        };
        assert!(serde_json::to_string(&streamed)
            .unwrap()
            .ends_with(r#""bytes":10,"archive":{"etag":"\"e\"","len":99}}"#));
    }
}
