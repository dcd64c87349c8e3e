//! The compressed bytes of downloads that failed part way, kept so that the next fetch of
//! the same version continues where the last one stopped instead of starting from byte 0.
//!
//! Every download writes what it receives to a spool file (`CACHE/partial/<kind>-<id>`)
//! as it goes. When it ends well, the spool is deleted. When it fails (the network, the
//! store, a stop because nobody waits any more) and the store named the object by an
//! `ETag`, the spool and its [`ResumePoint`] are kept: the next fetch of that version asks
//! the store for the bytes after the spool only, and feeds the unpacker the spool first,
//! then the rest. The store checks the `ETag`; if the object changed, the spool is dropped
//! and the download starts again from byte 0.
//!
//! Spools live only as long as the mount: the directory is emptied when a mount starts
//! (an unpack cannot resume, so what counts is the compressed bytes, which a later mount
//! might see replaced), and at most [`MAX_KEPT`] are kept at once (the oldest goes first).
//! Their bytes count in the cache's budget ([`Cache::charge_free`], before they are
//! written), in room the budget has free: a spool never evicts a cached version (it only
//! helps a retry). A spool without room is given up and deleted, and the download goes on
//! without it, so the cache directory as a whole stays within the budget. A download
//! that ends well deletes its spool before it tells the unpacker the archive is complete.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::api::ResumePoint;
use crate::cache::{Cache, VersionKey};

/// At most this many failed downloads are kept for resuming.
pub const MAX_KEPT: usize = 4;

/// The spools of failed downloads, by version.
pub struct Spools {
    dir: PathBuf,
    /// Where spool bytes are counted.
    budget: Cache,
    /// Oldest first.
    kept: Mutex<VecDeque<(VersionKey, Kept)>>,
}

/// A failed download's bytes on disk and where the store should continue.
pub struct Kept {
    pub path: PathBuf,
    pub point: ResumePoint,
    /// The file's bytes in the budget, released when this goes.
    charged: Charged,
}

/// Bytes counted in the cache's budget for a spool file, no longer counted once dropped.
struct Charged {
    cache: Cache,
    bytes: u64,
}

/// Spool bytes are counted in steps of this, so that not every write takes the cache lock.
const CHARGE_STEP: u64 = 1 << 20;

impl Charged {
    /// Count enough for `total` bytes on disk. False when the budget has no room.
    fn cover(&mut self, total: u64) -> bool {
        if total <= self.bytes {
            return true;
        }
        let more = (total - self.bytes).div_ceil(CHARGE_STEP) * CHARGE_STEP;
        if !self.cache.charge_free(more) {
            return false;
        }
        self.bytes += more;
        true
    }

    /// No longer count what was counted.
    fn release(&mut self) {
        self.cache.discharge(std::mem::take(&mut self.bytes));
    }

    /// What is counted, handed over to a new owner (this one counts nothing any more).
    fn take(&mut self) -> Charged {
        Charged {
            cache: self.cache.clone(),
            bytes: std::mem::take(&mut self.bytes),
        }
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        self.release();
    }
}

impl Spools {
    /// Spools in `dir`, which is emptied first (what is there is from an earlier mount),
    /// their bytes counted in the budget of `budget`.
    pub fn new(dir: &Path, budget: Cache) -> Spools {
        if let Err(e) = fs::remove_dir_all(dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(
                    "could not clear {} ({e}); failed downloads will start again from the start",
                    dir.display()
                );
            }
        }
        Spools {
            dir: dir.to_path_buf(),
            budget,
            kept: Mutex::new(VecDeque::new()),
        }
    }

    /// Take the kept spool of `key`, if any: the fetch that takes it owns the file.
    pub fn take(&self, key: &VersionKey) -> Option<Kept> {
        let mut kept = self.kept.lock();
        let at = kept.iter().position(|(k, _)| k == key)?;
        kept.remove(at).map(|(_, s)| s)
    }

    /// Keep `spool` for the next fetch of `key`; the oldest kept one goes if there are
    /// too many.
    pub fn keep(&self, key: &VersionKey, spool: Kept) {
        let dropped = {
            let mut kept = self.kept.lock();
            kept.push_back((key.clone(), spool));
            if kept.len() > MAX_KEPT {
                kept.pop_front()
            } else {
                None
            }
        };
        if let Some((_, old)) = dropped {
            let _ = fs::remove_file(old.path);
        }
    }

    /// A new spool file for a download of `key`, empty.
    pub fn create(&self, key: &VersionKey) -> io::Result<Spool> {
        // Private: a spool holds the bytes of a version, whatever its files' modes.
        crate::cache::make_dir(&self.dir)?;
        let path = self.dir.join(key.dir_name());
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        Ok(Spool {
            path,
            file: Some(BufWriter::with_capacity(SPOOL_BUFFER, file)),
            len: 0,
            charged: Charged {
                cache: self.budget.clone(),
                bytes: 0,
            },
        })
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.kept.lock().len()
    }
}

impl Drop for Spools {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The file a running download writes its bytes to. Writing is best effort: after a
/// failed write (a full disk) the spool is given up and the download goes on without it.
pub struct Spool {
    path: PathBuf,
    /// Buffered: the network hands out small reads, and each would be a write.
    file: Option<BufWriter<File>>,
    len: u64,
    charged: Charged,
}

/// Bytes gathered before a write to the spool file.
const SPOOL_BUFFER: usize = 256 << 10;

impl Spool {
    /// A spool that continues `kept`, whose bytes are already in its file (deleted when
    /// it cannot be opened).
    pub fn continuing(kept: Kept) -> io::Result<Spool> {
        let Kept {
            path,
            point,
            charged,
        } = kept;
        match fs::OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(file) => Ok(Spool {
                path,
                file: Some(BufWriter::with_capacity(SPOOL_BUFFER, file)),
                len: point.offset,
                charged,
            }),
            Err(e) => {
                let _ = fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Add the next bytes of the archive.
    pub fn write(&mut self, bytes: &[u8]) {
        let Some(file) = &mut self.file else { return };
        let total = self.len + bytes.len() as u64;
        if !self.charged.cover(total) {
            tracing::debug!(
                "stopped spooling to {}: the cache budget has no room for it",
                self.path.display()
            );
            self.give_up();
            return;
        }
        match file.write_all(bytes) {
            Ok(()) => self.len = total,
            Err(e) => {
                tracing::debug!("stopped spooling to {}: {e}", self.path.display());
                self.give_up();
            }
        }
    }

    /// Stop spooling: the file goes now, not when the download ends, and so does its
    /// place in the budget.
    fn give_up(&mut self) {
        self.file = None;
        let _ = fs::remove_file(&self.path);
        self.charged.release();
    }

    /// The download ended without the whole archive, stopped at `point`: the spool, if it
    /// holds exactly the bytes before `point`.
    pub fn stopped_at(mut self, point: Option<ResumePoint>) -> Option<Kept> {
        let point = point?;
        let written = self.file.take().is_some_and(|mut f| f.flush().is_ok());
        (written && point.offset == self.len && self.len > 0).then(|| Kept {
            path: std::mem::take(&mut self.path),
            point,
            charged: self.charged.take(),
        })
    }
}

impl Drop for Spool {
    /// A spool not kept is deleted.
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Kind;
    use crate::ids::VersionId;

    fn key(c: char) -> VersionKey {
        VersionKey::new(
            Kind::Volume,
            &VersionId::parse(&c.to_string().repeat(64)).unwrap(),
        )
    }

    /// A cache whose budget never stands in a spool's way.
    fn roomy_cache(dir: &Path) -> Cache {
        Cache::open(&dir.join("cache"), 1 << 40).unwrap()
    }

    fn point(offset: u64) -> Option<ResumePoint> {
        Some(ResumePoint {
            offset,
            etag: "\"e\"".into(),
            total: Some(100),
        })
    }

    #[test]
    fn a_spool_is_kept_only_when_it_holds_exactly_the_bytes_before_the_resume_point() {
        let dir = tempfile::tempdir().unwrap();
        let spools = Spools::new(&dir.path().join("partial"), roomy_cache(dir.path()));
        let mut s = spools.create(&key('a')).unwrap();
        s.write(b"hello");
        let kept = s.stopped_at(point(5)).expect("kept");
        assert_eq!(fs::read(&kept.path).unwrap(), b"hello");
        // Continued, then stopped at an offset the file does not match: deleted.
        let path = kept.path.clone();
        let mut s = Spool::continuing(kept).unwrap();
        s.write(b" world");
        assert!(s.stopped_at(point(7)).is_none());
        assert!(!path.exists());
        // Without an ETag there is nothing to check a continuation with.
        let mut s = spools.create(&key('b')).unwrap();
        s.write(b"x");
        assert!(s.stopped_at(None).is_none());
        // Nothing received: nothing to keep.
        assert!(spools
            .create(&key('c'))
            .unwrap()
            .stopped_at(point(0))
            .is_none());
    }

    #[test]
    fn at_most_a_few_spools_are_kept_and_the_oldest_goes_first() {
        let dir = tempfile::tempdir().unwrap();
        let spools = Spools::new(&dir.path().join("partial"), roomy_cache(dir.path()));
        let keys: Vec<_> = "abcdef".chars().map(key).collect();
        let mut paths = Vec::new();
        for k in &keys {
            let mut s = spools.create(k).unwrap();
            s.write(b"123");
            let kept = s.stopped_at(point(3)).unwrap();
            paths.push(kept.path.clone());
            spools.keep(k, kept);
        }
        assert_eq!(spools.len(), MAX_KEPT);
        assert!(!paths[0].exists() && !paths[1].exists());
        assert!(spools.take(&keys[0]).is_none());
        let last = spools.take(&keys[5]).unwrap();
        assert_eq!(last.path, paths[5]);
        assert_eq!(spools.len(), MAX_KEPT - 1);
        drop(spools);
        assert!(!dir.path().join("partial").exists());
    }

    #[test]
    fn spool_bytes_count_in_the_budget_and_a_spool_without_room_is_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(&dir.path().join("cache"), 3 * CHARGE_STEP).unwrap();
        let used = || cache.usage().1;
        let spools = Spools::new(&dir.path().join("partial"), cache.clone());
        let mut s = spools.create(&key('a')).unwrap();
        s.write(&[1; 10]);
        assert_eq!(used(), CHARGE_STEP, "counted before it is written");
        s.write(&vec![2; CHARGE_STEP as usize]);
        assert_eq!(used(), 2 * CHARGE_STEP);
        // Kept, it stays counted; taken and dropped, it is not.
        let kept = s.stopped_at(point(CHARGE_STEP + 10)).expect("kept");
        assert_eq!(used(), 2 * CHARGE_STEP);
        spools.keep(&key('a'), kept);
        let kept = spools.take(&key('a')).unwrap();
        let path = kept.path.clone();
        let mut s = Spool::continuing(kept).unwrap();
        assert_eq!(used(), 2 * CHARGE_STEP);
        // Past the budget: given up at once, file and count.
        s.write(&vec![3; 2 * CHARGE_STEP as usize]);
        assert!(
            !path.exists(),
            "a spool the budget has no room for is deleted"
        );
        assert_eq!(used(), 0);
        assert!(s.stopped_at(point(3 * CHARGE_STEP + 10)).is_none());
        // A spool that ends is no longer counted.
        let mut s = spools.create(&key('b')).unwrap();
        s.write(b"x");
        assert_eq!(used(), CHARGE_STEP);
        drop(s);
        assert_eq!(used(), 0);
    }

    #[test]
    fn spools_of_an_earlier_mount_are_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("partial");
        fs::create_dir_all(&partial).unwrap();
        fs::write(partial.join("old"), b"x").unwrap();
        let _spools = Spools::new(&partial, roomy_cache(dir.path()));
        assert!(!partial.join("old").exists());
    }
}
