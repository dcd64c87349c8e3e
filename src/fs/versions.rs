//! Versions: which names in a storage's directory are versions (full ids, unique prefixes
//! of at least [`MIN_PREFIX`] characters, `latest`), where their listing comes from
//! ([`VersionSource`]), and making one available: resident in the cache, being downloaded
//! (parts of it already served), or started now. A version with no files is an empty
//! directory that is never downloaded.
//!
//! Each listing of versions is indexed by id once, when it is fetched ([`VersionList`]), so
//! that resolving a name costs a lookup and listing a storage is linear in its versions.
//!
//! A version complete in the cache needs no listing: when the listings cannot describe it
//! (the API is unreachable and nothing was saved), it is still served by its full id, from
//! the cache alone.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::api::{ApiError, Kind, Version};
use crate::archive::{Index, IndexTree};
use crate::cache::{
    Announced, Available, CacheError, CachedVersion, Interest, SharedError, VersionKey,
};
use crate::ids::{is_lower_hex, StorageName, VersionId, VERSION_ID_LEN};

use super::attr::TimedAttr;
use super::inode::{MetaNode, Range};
use super::listings::{Listings, Source, Unavailable};
use super::saved::Saved;
use super::status::Activity;
use super::storages::StorageSource;
use super::wait::ThreadPolicy;
use super::{fetch, waited, Fs, FsError, Remote, Result};

/// Minimum length of a version id prefix that resolves (same rule as the API's).
pub const MIN_PREFIX: usize = 8;

/// The name of the link to a storage's current version.
pub const LATEST: &str = "latest";

/// The versions of one storage: in the order the API lists them (newest first), and by id.
pub struct VersionList {
    in_order: Vec<Version>,
    by_id: BTreeMap<VersionId, usize>,
}

/// A prefix shared by more than one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ambiguous;

impl VersionList {
    pub fn new(in_order: Vec<Version>) -> VersionList {
        let mut by_id = BTreeMap::new();
        for (i, v) in in_order.iter().enumerate() {
            // An id listed twice (the API should not) resolves to its first listing.
            by_id.entry(v.id.clone()).or_insert(i);
        }
        VersionList { in_order, by_id }
    }

    /// The versions, newest first.
    pub fn iter(&self) -> impl Iterator<Item = &Version> {
        self.in_order.iter()
    }

    /// The version whose id is `id` or starts with it: `None` when there is none,
    /// `Ambiguous` when the prefix is shared.
    pub fn find(&self, id: &str) -> Option<std::result::Result<&Version, Ambiguous>> {
        let mut hits = self
            .by_id
            .range::<str, _>((Bound::Included(id), Bound::Unbounded))
            .take_while(|(k, _)| k.as_str().starts_with(id));
        let (first, &i) = hits.next()?;
        if first != id && hits.next().is_some() {
            return Some(Err(Ambiguous));
        }
        Some(Ok(&self.in_order[i]))
    }
}

/// Why the versions of a storage could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum VersionsFailed {
    /// The storage is not in the listing of its kind (gone, or never was).
    #[error("no such storage")]
    NoStorage,
    /// The listing of storages is unavailable (reported there).
    #[error("{0}")]
    Storages(Unavailable<ApiError>),
    #[error("{0}")]
    Api(Arc<ApiError>),
}

impl From<Unavailable<VersionsFailed>> for FsError {
    fn from(e: Unavailable<VersionsFailed>) -> FsError {
        match e {
            Unavailable::Failed(e) => match &*e {
                VersionsFailed::NoStorage => FsError::NotFound,
                VersionsFailed::Storages(e) => e.clone().into(),
                VersionsFailed::Api(e) => FsError::Remote(e.clone()),
            },
            Unavailable::NoAnswer { waited } => FsError::NoAnswer { waited },
        }
    }
}

/// The versions of a storage (by kind and name), listed by the API.
pub struct VersionSource {
    pub remote: Arc<dyn Remote>,
    pub activity: Arc<Activity>,
    /// Where the storage's id comes from.
    pub storages: Listings<StorageSource>,
    pub saved: Arc<Saved>,
}

impl Source for VersionSource {
    type Key = (Kind, StorageName);
    type Value = VersionList;
    type Error = VersionsFailed;

    fn fetch(&self, (kind, name): &(Kind, StorageName)) -> Result<VersionList, VersionsFailed> {
        let storage = self
            .storages
            .find(kind, |map| map.get(name.as_str()).cloned())
            .map_err(VersionsFailed::Storages)?
            .ok_or(VersionsFailed::NoStorage)?;
        let list = self.remote.list_versions(*kind, &storage.id);
        self.activity.api_result(&list);
        // Versions whose id is not a version id were dropped by the API client already.
        Ok(VersionList::new(
            list.map_err(|e| VersionsFailed::Api(Arc::new(e)))?,
        ))
    }

    /// A storage that is gone, or revoked access, must not leave old versions visible.
    fn serves_previous(&self, e: &VersionsFailed) -> bool {
        match e {
            VersionsFailed::NoStorage => false,
            VersionsFailed::Storages(Unavailable::Failed(e)) | VersionsFailed::Api(e) => {
                !e.is_auth() && !e.is_not_found()
            }
            VersionsFailed::Storages(Unavailable::NoAnswer { .. }) => true,
        }
    }

    fn report(
        &self,
        (kind, name): &(Kind, StorageName),
        e: &VersionsFailed,
        served_previous: bool,
        streak: u32,
    ) {
        let VersionsFailed::Api(e) = e else {
            // Not found is the user's, and a failed storage listing was reported there.
            return;
        };
        if served_previous {
            // Once per outage at WARN: the status file tells the rest.
            if streak == 1 {
                tracing::warn!(storage = %name, error = %e, "refreshing versions failed; serving the previous list and retrying in the background");
            } else {
                tracing::debug!(storage = %name, error = %e, streak, "refreshing versions failed again");
            }
        } else {
            tracing::warn!(storage = %name, error = %e, "listing versions failed");
            self.activity
                .error(format!("listing the versions of {kind} {name}: {e}"));
        }
    }

    fn load(&self, (kind, name): &(Kind, StorageName)) -> Option<VersionList> {
        Some(VersionList::new(self.saved.load_versions(*kind, name)?))
    }

    fn save(&self, (kind, name): &(Kind, StorageName), list: &VersionList) {
        self.saved.save_versions(*kind, name, list.iter());
    }

    fn forget(&self, (kind, name): &(Kind, StorageName)) {
        self.saved.forget_versions(*kind, name);
    }

    fn answered_since(&self, t: Instant) -> bool {
        self.activity.answered_since(t)
    }
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

    /// The versions of a storage.
    pub(super) fn versions(&self, kind: Kind, storage: &StorageName) -> Result<Arc<VersionList>> {
        Ok(self.versions.get(&(kind, storage.clone()))?)
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
        let found = self.versions.find(&(kind, storage.clone()), |list| {
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

    /// A loaded version for a content inode: the cache's copy when resident (no API call),
    /// else through the metadata path (which may download it again after an eviction).
    pub(super) fn version_of(&self, range: &Range) -> Result<Arc<CachedVersion>> {
        if let Some(v) = self
            .cache
            .peek(&VersionKey::new(range.kind, &range.version))
        {
            return Ok(v);
        }
        Ok(self
            .load_version(range.kind, &range.name, &range.version)?
            .1)
    }

    /// A version for a content inode as far as it is available: the cache's copy when
    /// resident, the running download when there is one, else through the metadata path
    /// (which may start a download again after an eviction).
    pub(super) fn version_now_of(&self, range: &Range) -> Result<Available> {
        let key = VersionKey::new(range.kind, &range.version);
        if let Some(v) = self.cache.peek(&key) {
            return Ok(Available::Ready(v));
        }
        if let Some(flight) = self.cache.in_flight(&key) {
            return Ok(Available::Pending(flight));
        }
        Ok(self.version_now(range.kind, &range.name, &range.version)?.1)
    }

    /// Make a version available (downloading and unpacking it when cold) and allocate its
    /// content inodes; waits for the end of a download.
    pub(super) fn load_version(
        &self,
        kind: Kind,
        storage: &StorageName,
        id: &VersionId,
    ) -> Result<(Range, Arc<CachedVersion>)> {
        match self.version_now(kind, storage, id)? {
            (range, Available::Ready(v)) => Ok((range, v)),
            (range, Available::Pending(flight)) => {
                let r = waited(flight.wait(&ThreadPolicy))?;
                let v = self.finished(storage, &flight, r)?;
                Ok((range, v))
            }
        }
    }

    /// A version and its content inodes; a cold version's download is started in the
    /// background and not waited for.
    pub(super) fn version_now(
        &self,
        kind: Kind,
        storage: &StorageName,
        id: &VersionId,
    ) -> Result<(Range, Available)> {
        let key = VersionKey::new(kind, id);
        let now = match self.cache.peek(&key) {
            Some(v) => Available::Ready(v),
            // Loaded from disk with no API call. Should the version be evicted in between,
            // nothing describes it to download it again: that access fails, the next one
            // goes through the listings.
            None if self.cache_only(kind, storage, id) => {
                let what = format!("{kind} {storage} version {id}");
                self.cache
                    .start(&key, Announced { size: 0, file_count: 0 }, move |_| {
                        Err(format!("{what} left the cache and the VM0 API cannot describe it now; try again later").into())
                    })
            }
            None => {
                let s = self.find_storage(kind, storage.as_str())?;
                let version = self.find_version(kind, storage, id.as_str())?;
                if version.id != *id {
                    return Err(FsError::NotFound);
                }
                if version.file_count == 0 {
                    // No archive exists for a 0-file version (the API answers 404): it is an
                    // empty directory, kept out of the cache.
                    Available::Ready(Arc::new(CachedVersion {
                        key: key.clone(),
                        dir: Default::default(),
                        index: empty_index(version.created_at),
                        checks: None,
                        disk_bytes: 0,
                    }))
                } else {
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
                    };
                    self.cache.start(&key, announced, move |target| {
                        fetch::fetch(remote, &activity, &job, target)
                    })
                }
            }
        };
        let range = self.inodes.lock().range(kind, storage, id);
        Ok((range, now))
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

    fn version(id: String) -> Version {
        Version {
            id: VersionId::parse(&id).unwrap(),
            storage_id: "s".into(),
            size: 0,
            file_count: 0,
            message: None,
            created_by: None,
            created_at: UNIX_EPOCH,
        }
    }

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

    #[test]
    fn versions_resolve_by_full_id_and_unique_prefix() {
        let ids = [
            format!("aaaa1111{}", "0".repeat(56)),
            format!("aaaa2222{}", "0".repeat(56)),
            format!("bbbb1111{}", "0".repeat(56)),
        ];
        let list = VersionList::new(ids.iter().cloned().map(version).collect());
        let cases: Vec<(&str, Option<std::result::Result<&str, Ambiguous>>)> = vec![
            (&ids[0], Some(Ok(&ids[0]))),
            (&ids[2], Some(Ok(&ids[2]))),
            ("aaaa2222", Some(Ok(&ids[1]))),
            ("bbbb", Some(Ok(&ids[2]))),
            ("aaaa", Some(Err(Ambiguous))),
            ("a", Some(Err(Ambiguous))),
            ("cccc", None),
            ("aaaa3", None),
            ("b", Some(Ok(&ids[2]))),
        ];
        for (query, want) in cases {
            let got = list.find(query).map(|r| r.map(|v| v.id.as_str()));
            assert_eq!(got, want, "{query}");
        }
        // The order the API gave is kept for listings.
        let order: Vec<&str> = list.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(order, [&ids[0], &ids[1], &ids[2]]);
    }
}
