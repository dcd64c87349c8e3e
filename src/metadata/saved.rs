//! Listings kept on disk across mounts, so that a mount started while the API is down
//! still knows the names of the storages, their versions and their `latest`, and serves
//! what is cached.
//!
//! ```text
//! CACHE/listings/volumes.json              the storages of a kind
//! CACHE/listings/artifacts.json
//! CACHE/listings/volumes/<hash>.json       the versions of one storage; <hash>: FNV-1a
//! CACHE/listings/artifacts/<hash>.json     (64 bits, hex) of its name, which is also inside
//! CACHE/listings/documents/<hash>.json     another listing (the agents, an agent's files),
//!                                          <hash> of what it is, which is also inside
//! ```
//!
//! Each file is written whole after each successful fetch (a temporary file renamed over
//! it, so a reader sees the old or the new one) and carries [`LISTINGS_FORMAT`]. A file of
//! another format, or one that does not read, is ignored with one log line and replaced at
//! the next fetch. These files are a cache of what the API said: losing them costs only
//! the ability to start offline.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::api::{Kind, Storage, Version};
use crate::ids::{StorageId, StorageName, VersionId};

/// Bump when the meaning of a saved listing changes; files of another format are ignored.
/// `tests::format_is_pinned` fails when the serialized records change without a bump.
pub const LISTINGS_FORMAT: u32 = 1;

/// The directory of saved listings inside a cache directory.
pub fn dir_in(cache_dir: &Path) -> PathBuf {
    cache_dir.join("listings")
}

/// Where the listings of one cache directory are saved.
pub struct Saved {
    dir: PathBuf,
    /// Nothing is saved any more (see [`Saved::close`]). Read-held while a file is
    /// written, so that closing waits for the saves under way and saves run side by side.
    closed: RwLock<bool>,
}

/// A time as seconds and nanoseconds since 1970 (before it when `secs` is negative), so
/// that any time the API sends can be saved.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct UnixTime {
    secs: i64,
    nanos: u32,
}

impl From<SystemTime> for UnixTime {
    fn from(t: SystemTime) -> UnixTime {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => UnixTime {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                // -1.25 s is secs -2, nanos 0.75e9.
                let (secs, nanos) = if d.subsec_nanos() == 0 {
                    (-(d.as_secs() as i64), 0)
                } else {
                    (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
                };
                UnixTime { secs, nanos }
            }
        }
    }
}

impl From<UnixTime> for SystemTime {
    fn from(t: UnixTime) -> SystemTime {
        let nanos = Duration::from_nanos(u64::from(t.nanos.min(999_999_999)));
        if t.secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(t.secs as u64) + nanos
        } else {
            UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs()) + nanos
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SavedStorage {
    id: StorageId,
    name: StorageName,
    current_version_id: Option<VersionId>,
    size: u64,
    file_count: u64,
    created_at: UnixTime,
    updated_at: UnixTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SavedVersion {
    id: VersionId,
    storage_id: StorageId,
    /// `null` when the API did not say (a missing field reads as `null` too).
    size: Option<u64>,
    file_count: Option<u64>,
    message: Option<String>,
    created_by: Option<String>,
    created_at: UnixTime,
}

/// One saved file: what it lists, when it was fetched, and the rows as the API gave them.
#[derive(Debug, Serialize, Deserialize)]
struct File<T> {
    format: u32,
    kind: Kind,
    /// The storage whose versions these are (absent for a listing of storages).
    storage: Option<StorageName>,
    fetched_at: UnixTime,
    rows: Vec<T>,
}

/// A saved document of another room (the agents, an agent's files): what it is, when it
/// was fetched, and its body.
#[derive(Debug, Serialize, Deserialize)]
struct Document<T> {
    format: u32,
    what: String,
    fetched_at: UnixTime,
    body: T,
}

impl From<&Storage> for SavedStorage {
    fn from(s: &Storage) -> SavedStorage {
        SavedStorage {
            id: s.id.clone(),
            name: s.name.clone(),
            current_version_id: s.current_version_id.clone(),
            size: s.size,
            file_count: s.file_count,
            created_at: s.created_at.into(),
            updated_at: s.updated_at.into(),
        }
    }
}

impl From<SavedStorage> for Storage {
    fn from(s: SavedStorage) -> Storage {
        Storage {
            id: s.id,
            name: s.name,
            current_version_id: s.current_version_id,
            size: s.size,
            file_count: s.file_count,
            created_at: s.created_at.into(),
            updated_at: s.updated_at.into(),
        }
    }
}

impl From<&Version> for SavedVersion {
    fn from(v: &Version) -> SavedVersion {
        SavedVersion {
            id: v.id.clone(),
            storage_id: v.storage_id.clone(),
            size: v.size,
            file_count: v.file_count,
            message: v.message.clone(),
            created_by: v.created_by.clone(),
            created_at: v.created_at.into(),
        }
    }
}

impl From<SavedVersion> for Version {
    fn from(v: SavedVersion) -> Version {
        Version {
            id: v.id,
            storage_id: v.storage_id,
            size: v.size,
            file_count: v.file_count,
            message: v.message,
            created_by: v.created_by,
            created_at: v.created_at.into(),
        }
    }
}

/// FNV-1a, 64 bits: a stable hash for file names (Rust's own hasher may change between
/// releases, and a saved file must be found again by the next vm0fs).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Saved {
    /// The saved listings of the cache directory `cache_dir` (nothing is read or created
    /// before it is needed).
    pub fn new(cache_dir: &Path) -> Saved {
        Saved {
            dir: dir_in(cache_dir),
            closed: RwLock::new(false),
        }
    }

    /// Save nothing from now on: called when the filesystem that owns these listings is
    /// dropped, as a fetch still running in the background may end after it (and after its
    /// cache directory is gone). Returns once no save is being written.
    pub fn close(&self) {
        *self.closed.write() = true;
    }

    /// Whether a listing of storages was saved in `cache_dir`: what a mount needs to start
    /// while the API cannot be reached. Creates nothing.
    pub fn exist(cache_dir: &Path) -> bool {
        let saved = Saved::new(cache_dir);
        Kind::ALL.iter().any(|k| {
            saved
                .read::<SavedStorage>(&saved.storages_path(*k), *k, None)
                .is_some()
        })
    }

    fn storages_path(&self, kind: Kind) -> PathBuf {
        self.dir.join(format!("{}.json", kind.plural()))
    }

    fn versions_path(&self, kind: Kind, storage: &StorageName) -> PathBuf {
        self.dir
            .join(kind.plural())
            .join(format!("{:016x}.json", fnv1a(storage.as_str().as_bytes())))
    }

    pub fn load_storages(&self, kind: Kind) -> Option<Vec<Storage>> {
        let rows = self.read::<SavedStorage>(&self.storages_path(kind), kind, None)?;
        Some(rows.into_iter().map(Storage::from).collect())
    }

    pub fn save_storages<'a>(&self, kind: Kind, storages: impl Iterator<Item = &'a Storage>) {
        let rows: Vec<SavedStorage> = storages.map(SavedStorage::from).collect();
        self.write(&self.storages_path(kind), kind, None, rows);
    }

    pub fn forget_storages(&self, kind: Kind) {
        remove(&self.storages_path(kind));
    }

    pub fn load_versions(&self, kind: Kind, storage: &StorageName) -> Option<Vec<Version>> {
        let path = self.versions_path(kind, storage);
        let rows = self.read::<SavedVersion>(&path, kind, Some(storage))?;
        Some(rows.into_iter().map(Version::from).collect())
    }

    pub fn save_versions<'a>(
        &self,
        kind: Kind,
        storage: &StorageName,
        versions: impl Iterator<Item = &'a Version>,
    ) {
        let rows: Vec<SavedVersion> = versions.map(SavedVersion::from).collect();
        self.write(
            &self.versions_path(kind, storage),
            kind,
            Some(storage),
            rows,
        );
    }

    pub fn forget_versions(&self, kind: Kind, storage: &StorageName) {
        remove(&self.versions_path(kind, storage));
    }

    fn document_path(&self, what: &str) -> PathBuf {
        self.dir
            .join("documents")
            .join(format!("{:016x}.json", fnv1a(what.as_bytes())))
    }

    /// The document saved as `what` (for example "agents"), if one is, reads, and is that.
    pub fn load_document<T: for<'de> Deserialize<'de>>(&self, what: &str) -> Option<T> {
        let path = self.document_path(what);
        let bytes = self.read_format(&path)?;
        match serde_json::from_slice::<Document<T>>(&bytes) {
            Ok(d) if d.what == what => Some(d.body),
            // Another document whose name has the same hash.
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring a damaged saved listing");
                None
            }
        }
    }

    /// Save `body` as the document `what`, replacing the one saved before.
    pub fn save_document<T: Serialize>(&self, what: &str, body: &T) {
        let path = self.document_path(what);
        let doc = Document {
            format: LISTINGS_FORMAT,
            what: what.to_string(),
            fetched_at: SystemTime::now().into(),
            body,
        };
        let bytes = serde_json::to_vec(&doc).expect("a saved document always serializes");
        self.store(&path, &bytes);
    }

    pub fn forget_document(&self, what: &str) {
        remove(&self.document_path(what));
    }

    /// The bytes of a saved file, if it exists, reads, and is of [`LISTINGS_FORMAT`].
    fn read_format(&self, path: &Path) -> Option<Vec<u8>> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read a saved listing; ignoring it");
                return None;
            }
        };
        // The format first, so that a file of another vm0fs is told apart from a damaged one.
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        match serde_json::from_slice::<Format>(&bytes) {
            Ok(f) if f.format == LISTINGS_FORMAT => Some(bytes),
            Ok(f) => {
                tracing::info!(path = %path.display(), found = f.format, expected = LISTINGS_FORMAT, "ignoring a saved listing of another format");
                None
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring a damaged saved listing");
                None
            }
        }
    }

    /// The rows of a saved file, if it exists, reads, and is the listing asked for.
    fn read<T: for<'de> Deserialize<'de>>(
        &self,
        path: &Path,
        kind: Kind,
        storage: Option<&StorageName>,
    ) -> Option<Vec<T>> {
        let bytes = self.read_format(path)?;
        match serde_json::from_slice::<File<T>>(&bytes) {
            Ok(f) if f.kind == kind && f.storage.as_ref() == storage => Some(f.rows),
            // Another storage whose name has the same hash: not this one's listing.
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring a damaged saved listing");
                None
            }
        }
    }

    fn write<T: Serialize>(
        &self,
        path: &Path,
        kind: Kind,
        storage: Option<&StorageName>,
        rows: Vec<T>,
    ) {
        let file = File {
            format: LISTINGS_FORMAT,
            kind,
            storage: storage.cloned(),
            fetched_at: SystemTime::now().into(),
            rows,
        };
        let body = serde_json::to_vec(&file).expect("a saved listing always serializes");
        self.store(path, &body);
    }

    /// Write `bytes` at `path` unless closed; a failure is logged, as a listing that
    /// cannot be saved is only missing for a later mount started offline.
    fn store(&self, path: &Path, bytes: &[u8]) {
        let closed = self.closed.read();
        if *closed {
            return;
        }
        if let Err(e) = write_atomic(&self.dir, path, bytes) {
            tracing::warn!(path = %path.display(), error = %e, "cannot save a listing for later mounts");
        }
    }
}

/// Replace `path` (below `dir`, the listings directory) with `bytes` (mode 0600, the
/// directories from `dir` down created 0700 as needed) so that a reader sees the old or the
/// new content, never a part of it. Not synced: after a crash a file may be empty, which
/// reads as damaged and is replaced at the next fetch. The cache directory above `dir` is
/// never made again: once it is gone (removed by its owner, or by a test that ended while a
/// refresh was still running) nothing is saved, rather than a directory recreated at a path
/// the mount no longer owns.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let parent = path.parent().expect("saved listings live in a directory");
    let below = parent.strip_prefix(dir).map_err(|_| {
        io::Error::other(format!("{} is outside {}", path.display(), dir.display()))
    })?;
    let mut at = dir.to_path_buf();
    crate::cache::make_dir(&at)?;
    for part in below.components() {
        at.push(part);
        crate::cache::make_dir(&at)?;
    }
    let tmp = path.with_extension(format!("{}.partial", std::process::id()));
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn remove(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a saved listing");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(name: &str) -> Storage {
        Storage {
            id: format!("id-{name}").as_str().into(),
            name: name.into(),
            current_version_id: Some(VersionId::parse(&"ab".repeat(32)).unwrap()),
            size: 10,
            file_count: 2,
            created_at: UNIX_EPOCH - Duration::from_millis(1_250),
            updated_at: UNIX_EPOCH + Duration::new(1_700_000_000, 5),
        }
    }

    fn version() -> Version {
        Version {
            id: VersionId::parse(&"cd".repeat(32)).unwrap(),
            storage_id: "id-a".into(),
            size: Some(3),
            file_count: Some(1),
            message: Some("m".into()),
            created_by: None,
            created_at: UNIX_EPOCH + Duration::from_secs(7),
        }
    }

    #[test]
    fn listings_round_trip_and_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let saved = Saved::new(dir.path());
        assert!(!Saved::exist(dir.path()));
        assert!(
            !dir_in(dir.path()).exists(),
            "nothing created before a save"
        );
        assert_eq!(saved.load_storages(Kind::Volume), None);

        let storages = [storage("a"), storage("b/c")];
        saved.save_storages(Kind::Volume, storages.iter());
        assert!(Saved::exist(dir.path()));
        assert_eq!(saved.load_storages(Kind::Volume).unwrap(), storages);
        assert_eq!(saved.load_storages(Kind::Artifact), None);

        let a: StorageName = "a".into();
        let b: StorageName = "b/c".into();
        saved.save_versions(Kind::Volume, &a, [version()].iter());
        assert_eq!(saved.load_versions(Kind::Volume, &a).unwrap(), [version()]);
        assert_eq!(saved.load_versions(Kind::Volume, &b), None);
        assert_eq!(saved.load_versions(Kind::Artifact, &a), None);

        saved.forget_versions(Kind::Volume, &a);
        assert_eq!(saved.load_versions(Kind::Volume, &a), None);
        saved.forget_storages(Kind::Volume);
        assert!(!Saved::exist(dir.path()));
    }

    #[test]
    fn a_removed_cache_directory_is_not_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        fs::create_dir(&cache).unwrap();
        let saved = Saved::new(&cache);
        saved.save_document("agents", &vec![1u32]);
        saved.save_versions(Kind::Volume, &"a".into(), [version()].iter());
        assert_eq!(saved.load_document::<Vec<u32>>("agents"), Some(vec![1]));
        fs::remove_dir_all(&cache).unwrap();
        // A save after the cache directory went away (a refresh that was still running).
        saved.save_document("agents", &vec![2u32]);
        saved.save_storages(Kind::Volume, [storage("a")].iter());
        saved.save_versions(Kind::Volume, &"a".into(), [version()].iter());
        assert!(!cache.exists(), "the cache directory was made again");
    }

    #[test]
    fn a_closed_saved_saves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let saved = Saved::new(dir.path());
        saved.close();
        saved.save_document("agents", &vec![1u32]);
        saved.save_storages(Kind::Volume, [storage("a")].iter());
        assert!(!dir_in(dir.path()).exists());
    }

    #[test]
    fn damaged_files_and_other_formats_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let saved = Saved::new(dir.path());
        saved.save_storages(Kind::Artifact, [storage("a")].iter());
        let path = saved.storages_path(Kind::Artifact);
        for bad in [
            &b""[..],
            b"{not json",
            br#"{"format":999,"kind":"Artifact","rows":[]}"#,
            br#"{"format":1,"kind":"Artifact","storage":null,"fetched_at":{"secs":0,"nanos":0},"rows":[{"id":1}]}"#,
        ] {
            fs::write(&path, bad).unwrap();
            assert_eq!(saved.load_storages(Kind::Artifact), None, "{bad:?}");
        }
        // The next save replaces it.
        saved.save_storages(Kind::Artifact, [storage("a")].iter());
        assert_eq!(saved.load_storages(Kind::Artifact).unwrap().len(), 1);
    }

    #[test]
    fn format_is_pinned() {
        let file = File {
            format: LISTINGS_FORMAT,
            kind: Kind::Volume,
            storage: Some("a".into()),
            fetched_at: UnixTime { secs: 1, nanos: 2 },
            rows: vec![SavedVersion::from(&version())],
        };
        let expected = format!(
            r#"{{"format":1,"kind":"Volume","storage":"a","fetched_at":{{"secs":1,"nanos":2}},"rows":[{{"id":"{}","storage_id":"id-a","size":3,"file_count":1,"message":"m","created_by":null,"created_at":{{"secs":7,"nanos":0}}}}]}}"#,
            "cd".repeat(32)
        );
        assert_eq!(
            serde_json::to_string(&file).unwrap(),
            expected,
            "serialized listing format appears to have changed, version bump required"
        );
        let s = SavedStorage::from(&storage("a"));
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            format!(
                r#"{{"id":"id-a","name":"a","current_version_id":"{}","size":10,"file_count":2,"created_at":{{"secs":-2,"nanos":750000000}},"updated_at":{{"secs":1700000000,"nanos":5}}}}"#,
                "ab".repeat(32)
            ),
            "serialized listing format appears to have changed, version bump required"
        );
        assert_eq!(
            LISTINGS_FORMAT, 1,
            "update the pinned records above with the bump"
        );
    }

    #[test]
    fn documents_round_trip_are_private_and_told_apart() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let saved = Saved::new(dir.path());
        assert_eq!(saved.load_document::<Vec<u32>>("agents"), None);
        saved.save_document("agents", &vec![1u32, 2]);
        saved.save_document("agent x", &vec![3u32]);
        assert_eq!(saved.load_document::<Vec<u32>>("agents"), Some(vec![1, 2]));
        assert_eq!(saved.load_document::<Vec<u32>>("agent x"), Some(vec![3]));
        let path = saved.document_path("agents");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Another document under the same file name is not this one.
        let other = fs::read_to_string(&path)
            .unwrap()
            .replace("\"agents\"", "\"agentz\"");
        fs::write(&path, other).unwrap();
        assert_eq!(saved.load_document::<Vec<u32>>("agents"), None);
        // Another format is ignored.
        saved.save_document("agents", &vec![1u32]);
        let old = fs::read_to_string(&path)
            .unwrap()
            .replace(&format!("\"format\":{LISTINGS_FORMAT}"), "\"format\":0");
        fs::write(&path, old).unwrap();
        assert_eq!(saved.load_document::<Vec<u32>>("agents"), None);
        saved.forget_document("agent x");
        assert_eq!(saved.load_document::<Vec<u32>>("agent x"), None);
    }
}
