//! Storages and their versions in the tree: which names in a storage's directory are
//! versions (full ids, unique prefixes of at least [`MIN_PREFIX`] characters, `latest`),
//! as the listings of [`crate::metadata`] describe them, and the one way to get a version
//! ([`Fs::version`], told by a [`Want`] what to wait for): resident in the cache, being
//! downloaded (parts of it already served), or started now. A version with no files is an
//! empty directory that is never downloaded.
//!
//! A version complete in the cache needs no listing: when the listings cannot describe it
//! (the API is unreachable and nothing was saved), it is still served by its full id, from
//! the cache alone.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::api::{Kind, Storage, Version};
use crate::archive::{Index, IndexTree};
use crate::cache::{
    Announced, Available, CacheError, CachedVersion, Interest, SharedError, VersionKey,
};
use crate::fetch;
use crate::ids::{is_lower_hex, StorageName, VersionId, VERSION_ID_LEN};
use crate::metadata::{Ambiguous, VersionList};

use super::attr::TimedAttr;
use super::inode::{MetaNode, Range};
use super::wait::ThreadPolicy;
use super::{waited, Fs, FsError, Result};

/// Minimum length of a version id prefix that resolves (same rule as the API's).
pub const MIN_PREFIX: usize = 8;

/// The name of the link to a storage's current version.
pub const LATEST: &str = "latest";

/// The version a path inside the mount lies in (or is): `<kind>s/<name>/<version-id>[/...]`
/// as the kernel prints it (in `/proc/PID/maps`, `fd/` links). The status directory,
/// storages, `latest`, prefixes and runs are no version.
pub fn version_at(path: &Path) -> Option<VersionKey> {
    let mut parts = path.components().map(|c| c.as_os_str());
    let kind = Kind::from_plural(parts.next()?.to_str()?)?;
    let _storage = parts.next()?;
    let id = parts.next()?.to_str()?;
    // A path whose dentry the kernel dropped ends in " (deleted)"; a version id never holds
    // a space, and nothing of a version is ever deleted from under its mount path.
    let id = id.strip_suffix(" (deleted)").unwrap_or(id);
    let id = VersionId::parse(id).ok()?;
    Some(VersionKey::new(kind, &id))
}

/// Why a name in a storage's directory is not a version, as the log says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    NotHex,
    TooShort,
    TooLong,
    NoSuchVersion,
    Ambiguous,
}

impl Miss {
    /// The reason, if `name` cannot name a version whatever the listing says.
    fn of_name(name: &str) -> Option<Miss> {
        if !is_lower_hex(name) {
            Some(Miss::NotHex)
        } else if name.len() < MIN_PREFIX {
            Some(Miss::TooShort)
        } else if name.len() > VERSION_ID_LEN {
            Some(Miss::TooLong)
        } else {
            None
        }
    }

    fn why(self) -> &'static str {
        match self {
            Miss::NotHex => "not lowercase hex",
            Miss::TooShort => "too short (prefix needs 8 hex characters)",
            Miss::TooLong => "longer than a version id (64 hex characters)",
            Miss::NoSuchVersion => "no such version",
            Miss::Ambiguous => "ambiguous prefix",
        }
    }
}

/// How often the same missing name is explained in the log at most.
const MISS_LOG_EVERY: Duration = Duration::from_secs(60);

/// The missing names explained recently (bounded: beyond it, a name may be explained
/// again sooner).
pub struct MissLog {
    seen: Mutex<lru::LruCache<(Kind, StorageName, String), Instant>>,
}

impl Default for MissLog {
    fn default() -> Self {
        MissLog {
            seen: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(1024).expect("not zero"),
            )),
        }
    }
}

impl MissLog {
    /// Say at INFO why `name` is not found in a storage's directory, once per name per
    /// [`MISS_LOG_EVERY`]. An ENOENT tells a user nothing of a mistyped or too short
    /// prefix. Names starting with a dot are probes of tools (`.git`), at DEBUG.
    fn note(&self, kind: Kind, storage: &StorageName, name: &str, miss: Miss) {
        let key = (kind, storage.clone(), name.to_string());
        {
            let mut seen = self.seen.lock();
            if seen.get(&key).is_some_and(|t| t.elapsed() < MISS_LOG_EVERY) {
                return;
            }
            seen.put(key, Instant::now());
        }
        let why = miss.why();
        if name.starts_with('.') {
            tracing::debug!(storage = %storage, name, "{name:?} not found in {kind} {storage}: {why}");
        } else {
            tracing::info!(storage = %storage, name, "{name:?} not found in {kind} {storage}: {why}");
        }
    }
}

/// Whether a failure to list may pass (the API down or slow), as opposed to a definite
/// answer (access refused, not found) that nothing cached may override.
fn passing(e: &FsError) -> bool {
    match e {
        FsError::NoAnswer { .. } => true,
        FsError::Remote(e) => !e.is_auth() && !e.is_not_found(),
        _ => false,
    }
}

/// What a caller of [`Fs::version`] waits for, and what it gets.
pub(super) trait Want {
    type Out;
    fn take(self, fs: &Fs, storage: &StorageName, now: Available) -> Result<Self::Out>;
}

/// Nothing: the version as far as it is available now (resident, or the download that
/// makes it, whose published files may already be served).
pub(super) struct Now;

impl Want for Now {
    type Out = Available;
    fn take(self, _: &Fs, _: &StorageName, now: Available) -> Result<Available> {
        Ok(now)
    }
}

/// The end of its download: the complete version. Only a thread that may wait does (a
/// FUSE worker gets [`FsError::WouldBlock`], see `wait`).
pub(super) struct Complete;

impl Want for Complete {
    type Out = Arc<CachedVersion>;
    fn take(self, fs: &Fs, storage: &StorageName, now: Available) -> Result<Arc<CachedVersion>> {
        match now {
            Available::Ready(v) => Ok(v),
            Available::Pending(flight) => {
                let r = waited(flight.wait(&ThreadPolicy))?;
                fs.finished(storage, &flight, r)
            }
        }
    }
}

impl Fs {
    /// `name` in the directory of a storage: `latest`, a version id or a unique prefix of
    /// one (a link to the version).
    pub(super) fn lookup_in_storage(
        &self,
        kind: Kind,
        storage: &StorageName,
        name: &str,
    ) -> Result<TimedAttr> {
        if name == LATEST {
            let s = self.find_storage(kind, storage.as_str())?;
            if s.current_version_id.is_none() {
                return Err(FsError::NotFound);
            }
            return self.meta_attr(MetaNode::Latest {
                kind,
                name: storage.clone(),
            });
        }
        if let Some(miss) = Miss::of_name(name) {
            self.misses.note(kind, storage, name, miss);
            return Err(FsError::NotFound);
        }
        let version = match self.find_version_or_miss(kind, storage, name) {
            Ok(Ok(v)) => v,
            Ok(Err(miss)) => {
                self.misses.note(kind, storage, name, miss);
                return Err(FsError::NotFound);
            }
            // The versions cannot be listed now; a version complete in the cache is
            // served by its full id all the same.
            Err(e) if passing(&e) => match VersionId::parse(name) {
                Ok(id) if self.cached(&VersionKey::new(kind, &id)) => {
                    return self.meta_attr(MetaNode::Version {
                        kind,
                        name: storage.clone(),
                        version: id,
                    });
                }
                _ => return Err(e),
            },
            Err(e) => return Err(e),
        };
        let node = if version.id == *name {
            MetaNode::Version {
                kind,
                name: storage.clone(),
                version: version.id,
            }
        } else {
            MetaNode::PrefixLink {
                kind,
                name: storage.clone(),
                version: version.id,
            }
        };
        self.meta_attr(node)
    }

    /// The storage of `kind` named `name`.
    pub(super) fn find_storage(&self, kind: Kind, name: &str) -> Result<Storage> {
        self.storages
            .find(&kind, &ThreadPolicy, |map| map.get(name).cloned())?
            .ok_or(FsError::NotFound)
    }

    /// The versions of a storage.
    pub(super) fn versions(&self, kind: Kind, storage: &StorageName) -> Result<Arc<VersionList>> {
        Ok(self.versions.get(&(kind, storage.clone()), &ThreadPolicy)?)
    }

    /// The version of `storage` whose id is `id` or starts with it (a unique prefix).
    pub(super) fn find_version(
        &self,
        kind: Kind,
        storage: &StorageName,
        id: &str,
    ) -> Result<Version> {
        // An ambiguous prefix is not found, as the API answers.
        self.find_version_or_miss(kind, storage, id)?
            .map_err(|_| FsError::NotFound)
    }

    /// The version of `storage` whose id is `id` or starts with it, or why there is none.
    fn find_version_or_miss(
        &self,
        kind: Kind,
        storage: &StorageName,
        id: &str,
    ) -> Result<std::result::Result<Version, Miss>> {
        let found = self
            .versions
            .find(&(kind, storage.clone()), &ThreadPolicy, |list| {
                list.find(id).map(|r| r.cloned())
            })?;
        Ok(match found {
            Some(Ok(v)) => Ok(v),
            Some(Err(Ambiguous)) => Err(Miss::Ambiguous),
            None => Err(Miss::NoSuchVersion),
        })
    }

    /// Whether `key` is complete in the cache (its index loaded or not).
    pub(super) fn cached(&self, key: &VersionKey) -> bool {
        self.cache.is_resident(key)
    }

    /// Whether the listings held describe version `id` of `storage` without asking the
    /// API (they may be old: a refresh then runs in the background).
    fn listed_now(&self, kind: Kind, storage: &StorageName, id: &VersionId) -> bool {
        let storage_held = self
            .storages
            .peek(&kind)
            .is_some_and(|m| m.contains_key(storage.as_str()));
        storage_held
            && self
                .versions
                .peek(&(kind, storage.clone()))
                .is_some_and(|l| l.find(id.as_str()).is_some_and(|r| r.is_ok()))
    }

    /// Whether version `id` is to be served from the cache alone: it is complete there,
    /// and the listings held cannot describe it (so asking them would wait for the API).
    pub(super) fn cache_only(&self, kind: Kind, storage: &StorageName, id: &VersionId) -> bool {
        !self.listed_now(kind, storage, id) && self.cached(&VersionKey::new(kind, id))
    }

    /// The content inodes of version `id` of `storage` (allocated the first time).
    pub(super) fn range(&self, kind: Kind, storage: &StorageName, id: &VersionId) -> Range {
        self.inodes.lock().range(kind, storage, id)
    }

    /// The version of a content range, as far as `want` says to wait for it: the one way
    /// every operation gets a version. Resident: no API call. Being fetched: that flight.
    /// Cold: its download is started in the background (through the listings, which
    /// describe it; an evicted version is downloaded again under the same inode numbers),
    /// or, when the listings held cannot describe it and it is complete on disk, loaded
    /// from the disk alone.
    pub(super) fn version<W: Want>(&self, range: &Range, want: W) -> Result<W::Out> {
        let key = VersionKey::new(range.kind, &range.version);
        let now = match self.cache.peek(&key) {
            Some(v) => Available::Ready(v),
            None => match self.cache.in_flight(&key) {
                Some(flight) => Available::Pending(flight),
                None => self.start_version(range, &key)?,
            },
        };
        want.take(self, &range.name, now)
    }

    /// Start making a version that is neither loaded nor being fetched available.
    fn start_version(&self, range: &Range, key: &VersionKey) -> Result<Available> {
        let (kind, storage, id) = (range.kind, &range.name, &range.version);
        // Complete on disk, and the listings held cannot describe it (so asking them would
        // wait for the API): loaded from the disk alone. Should it be evicted in between,
        // that access fails and the next one goes through the listings.
        if self.cache_only(kind, storage, id) {
            return Ok(self.cache.start_resident(key));
        }
        let s = self.find_storage(kind, storage.as_str())?;
        let version = self.find_version(kind, storage, id.as_str())?;
        if version.id != *id {
            return Err(FsError::NotFound);
        }
        if version.file_count == Some(0) && version.size.unwrap_or(0) == 0 {
            // No archive exists for a 0-file version (the API answers 404): it is an
            // empty directory, kept out of the cache. Only when the API says so: a
            // version with no count, or 0 files and bytes, is downloaded.
            return Ok(Available::Ready(Arc::new(CachedVersion {
                key: key.clone(),
                dir: Default::default(),
                index: empty_index(version.created_at),
                checks: None,
                disk_bytes: 0,
                files: Default::default(),
                streamed: None,
            })));
        }
        let announced = Announced {
            size: version.size,
            file_count: version.file_count,
        };
        let remote = self.remote.clone();
        let activity = self.activity.clone();
        let job = fetch::Job {
            kind,
            storage: storage.clone(),
            storage_id: s.id.clone(),
            version,
            progress_every: self.config.progress_every,
            spools: self.spools.clone(),
            downloads: self.downloads.clone(),
        };
        Ok(self.cache.start(key, announced, move |target| {
            fetch::fetch(remote, &activity, &job, target)
        }))
    }

    /// The outcome of a flight as the filesystem answers it.
    pub(super) fn finished(
        &self,
        storage: &StorageName,
        flight: &Interest,
        result: std::result::Result<Arc<CachedVersion>, SharedError>,
    ) -> Result<Arc<CachedVersion>> {
        result.map_err(|e| {
            // Fetch failures were recorded where they happened; refusals by the cache
            // itself (too large, no room, disk errors) are noted here, once per flight.
            if !matches!(*e, CacheError::Fetch { .. }) && flight.report_once() {
                self.activity.error(format!("{storage}: {e}"));
            }
            e.into()
        })
    }
}

/// The index of a version with no files: a root directory and nothing else.
fn empty_index(mtime: SystemTime) -> Index {
    let sec = mtime
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Index::build(&IndexTree::empty(0o755, sec, 0)).expect("a lone root directory is a valid tree")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_versions_say_why() {
        let cases = [
            ("abc", Some(Miss::TooShort)),
            ("abcdef1", Some(Miss::TooShort)),
            ("abcdef12", None),
            ("ABCDEF12", Some(Miss::NotHex)),
            ("latest2", Some(Miss::NotHex)),
            (".git", Some(Miss::NotHex)),
            (&"a".repeat(64), None),
            (&"a".repeat(65), Some(Miss::TooLong)),
        ];
        for (name, want) in cases {
            assert_eq!(Miss::of_name(name), want, "{name}");
        }
        assert_eq!(
            Miss::TooShort.why(),
            "too short (prefix needs 8 hex characters)"
        );
    }
}
