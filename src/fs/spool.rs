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
//! might see replaced), and at most [`MAX_KEPT`] are kept at once (the oldest goes first),
//! so their disk use is bounded by a few archives' compressed size.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::api::ResumePoint;
use crate::cache::VersionKey;

/// At most this many failed downloads are kept for resuming.
pub const MAX_KEPT: usize = 4;

/// The spools of failed downloads, by version.
pub struct Spools {
    dir: PathBuf,
    /// Oldest first.
    kept: Mutex<VecDeque<(VersionKey, Kept)>>,
}

/// A failed download's bytes on disk and where the store should continue.
pub struct Kept {
    pub path: PathBuf,
    pub point: ResumePoint,
}

impl Spools {
    /// Spools in `dir`, which is emptied first (what is there is from an earlier mount).
    pub fn new(dir: &Path) -> Spools {
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
        fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(key.dir_name());
        let file = File::create(&path)?;
        Ok(Spool {
            path,
            file: Some(BufWriter::with_capacity(SPOOL_BUFFER, file)),
            len: 0,
        })
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
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
}

/// Bytes gathered before a write to the spool file.
const SPOOL_BUFFER: usize = 256 << 10;

impl Spool {
    /// A spool that continues `kept`, whose bytes are already in its file.
    pub fn continuing(kept: &Kept) -> io::Result<Spool> {
        let file = fs::OpenOptions::new().append(true).open(&kept.path)?;
        Ok(Spool {
            path: kept.path.clone(),
            file: Some(BufWriter::with_capacity(SPOOL_BUFFER, file)),
            len: kept.point.offset,
        })
    }

    /// Add the next bytes of the archive.
    pub fn write(&mut self, bytes: &[u8]) {
        let Some(file) = &mut self.file else { return };
        match file.write_all(bytes) {
            Ok(()) => self.len += bytes.len() as u64,
            Err(e) => {
                tracing::debug!("stopped spooling to {}: {e}", self.path.display());
                self.file = None;
            }
        }
    }

    /// The download ended without the whole archive, stopped at `point`: the spool, if it
    /// holds exactly the bytes before `point`.
    pub fn stopped_at(mut self, point: Option<ResumePoint>) -> Option<Kept> {
        let point = point?;
        let written = self.file.take().is_some_and(|mut f| f.flush().is_ok());
        (written && point.offset == self.len && self.len > 0).then(|| Kept {
            path: std::mem::take(&mut self.path),
            point,
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
        let spools = Spools::new(&dir.path().join("partial"));
        let mut s = spools.create(&key('a')).unwrap();
        s.write(b"hello");
        let kept = s.stopped_at(point(5)).expect("kept");
        assert_eq!(fs::read(&kept.path).unwrap(), b"hello");
        // Continued, then stopped at an offset the file does not match: deleted.
        let mut s = Spool::continuing(&kept).unwrap();
        s.write(b" world");
        let path = kept.path.clone();
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
        let spools = Spools::new(&dir.path().join("partial"));
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
    fn spools_of_an_earlier_mount_are_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("partial");
        fs::create_dir_all(&partial).unwrap();
        fs::write(partial.join("old"), b"x").unwrap();
        let _spools = Spools::new(&partial);
        assert!(!partial.join("old").exists());
    }
}
