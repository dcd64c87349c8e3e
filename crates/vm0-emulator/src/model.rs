//! The emulator's data: storages (volumes and artifacts), their versions, and the rules the
//! contract gives for them: content-addressed version ids, UUID storage ids, "current"
//! versions, and the resolution of a version parameter (full id or unique prefix).
//!
//! It also owns the ids, timestamps and clock that every part of the emulator shares (UUIDs,
//! the contract's timestamp format). Agents and runs have their own model in `runs`.
//!
//! This module is pure data and holds no I/O; loading from disk lives in `load`, building
//! archives in `pack`, and the HTTP faces in `api` and `store`.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

/// The two kinds of storage. The emulator keeps its own type rather than vm0fs's client's
/// (`vm0fs::api::Kind`) so that it checks the client against the contract, not against
/// itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Volumes,
    Artifacts,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Volumes, Kind::Artifacts];

    /// The path segment of the API (`volumes`, `artifacts`), also used in route keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Volumes => "volumes",
            Kind::Artifacts => "artifacts",
        }
    }

    /// The singular noun, for messages and the `volume_id`/`artifact_id` field.
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Volumes => "volume",
            Kind::Artifacts => "artifact",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "volumes" => Some(Kind::Volumes),
            "artifacts" => Some(Kind::Artifacts),
            _ => None,
        }
    }
}

/// One immutable version of a storage.
#[derive(Debug, Clone)]
pub struct Version {
    /// 64 lowercase hex characters, see [`VersionHasher`].
    pub id: String,
    /// Uncompressed total of the regular files.
    pub size: u64,
    pub file_count: u64,
    pub message: Option<String>,
    /// `"user"` or `"agent"`.
    pub created_by: String,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// The `tar.gz` served by the object store; `None` for a 0-file version, which the
    /// contract says has no archive (download answers 404).
    pub archive: Option<PathBuf>,
}

/// A volume or an artifact.
#[derive(Debug, Clone)]
pub struct Storage {
    pub id: String,
    pub kind: Kind,
    pub name: String,
    /// In creation order (the order of labels on disk, then pushes).
    pub versions: Vec<Version>,
    /// Id of the current version. It may point to an older version than the newest one,
    /// as after a re-push of old content on the real service.
    pub current: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Why a version parameter did not name exactly one version. Every case is a 404 for the
/// contract; the variants exist to give each a clear message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    NoVersions,
    NotHex,
    TooShort,
    Unknown,
    Ambiguous(usize),
    NoFiles,
}

/// The shortest version prefix the API accepts.
pub const MIN_PREFIX: usize = 8;

impl Storage {
    pub fn current_version(&self) -> Option<&Version> {
        let id = self.current.as_deref()?;
        self.versions.iter().find(|v| v.id == id)
    }

    /// Versions newest `created_at` first, ties broken by id so pages are stable.
    pub fn versions_newest_first(&self) -> Vec<&Version> {
        let mut all: Vec<&Version> = self.versions.iter().collect();
        all.sort_by(|a, b| {
            b.created_at_ms
                .cmp(&a.created_at_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        all
    }

    /// Resolves a full id or a unique prefix of at least [`MIN_PREFIX`] hex characters.
    /// `latest` is not accepted by the real service, and is not hex, so it fails here too.
    pub fn resolve(&self, query: &str) -> Result<&Version, LookupError> {
        if self.versions.is_empty() {
            return Err(LookupError::NoVersions);
        }
        if !query
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(LookupError::NotHex);
        }
        if query.len() < MIN_PREFIX {
            return Err(LookupError::TooShort);
        }
        let matches: Vec<&Version> = self
            .versions
            .iter()
            .filter(|v| v.id.starts_with(query))
            .collect();
        match matches.as_slice() {
            [] => Err(LookupError::Unknown),
            [one] => Ok(one),
            many => Err(LookupError::Ambiguous(many.len())),
        }
    }

    /// The version a download asks for (`None`: the current one), which must have an archive.
    pub fn resolve_download(&self, query: Option<&str>) -> Result<&Version, LookupError> {
        let version = match query {
            Some(q) => self.resolve(q)?,
            None => self.current_version().ok_or(LookupError::NoVersions)?,
        };
        if version.archive.is_none() {
            return Err(LookupError::NoFiles);
        }
        Ok(version)
    }

    /// Adds a version unless one with the same id exists (versions are content-addressed,
    /// so the same content pushed twice is one version), then makes it current. Returns it.
    pub fn add_version(&mut self, version: Version, now_ms: i64) -> &Version {
        let id = version.id.clone();
        if !self.versions.iter().any(|v| v.id == id) {
            self.versions.push(version);
        }
        self.current = Some(id.clone());
        self.updated_at_ms = self.updated_at_ms.max(now_ms);
        self.versions
            .iter()
            .find(|v| v.id == id)
            .expect("the version was found or pushed just above")
    }

    pub fn newest_created_at_ms(&self) -> Option<i64> {
        self.versions.iter().map(|v| v.created_at_ms).max()
    }
}

impl LookupError {
    pub fn message(&self, storage: &Storage, query: Option<&str>) -> String {
        let what = format!("{} '{}'", storage.kind.singular(), storage.name);
        let q = query.unwrap_or("");
        match self {
            LookupError::NoVersions => format!("The {what} has no versions"),
            LookupError::NotHex => format!("Version '{q}' not found in {what}"),
            LookupError::TooShort => format!(
                "Version '{q}' not found in {what}: a version prefix needs at least {MIN_PREFIX} \
                 hex characters"
            ),
            LookupError::Unknown => format!("Version '{q}' not found in {what}"),
            LookupError::Ambiguous(n) => {
                format!("Version prefix '{q}' is ambiguous in {what}: it matches {n} versions")
            }
            LookupError::NoFiles => {
                format!("The version of the {what} has no files, so it has no archive to download")
            }
        }
    }
}

/// Every storage the emulator serves.
#[derive(Debug, Default)]
pub struct Data {
    pub storages: Vec<Storage>,
}

impl Data {
    pub fn get(&self, kind: Kind, id: &str) -> Option<&Storage> {
        self.storages.iter().find(|s| s.kind == kind && s.id == id)
    }

    pub fn get_by_name(&self, kind: Kind, name: &str) -> Option<&Storage> {
        self.storages
            .iter()
            .find(|s| s.kind == kind && s.name == name)
    }

    pub fn get_mut_by_name(&mut self, kind: Kind, name: &str) -> Option<&mut Storage> {
        self.storages
            .iter_mut()
            .find(|s| s.kind == kind && s.name == name)
    }

    /// Storages of a kind, newest `created_at` first (ties by id), like the versions list.
    pub fn list(&self, kind: Kind) -> Vec<&Storage> {
        let mut all: Vec<&Storage> = self.storages.iter().filter(|s| s.kind == kind).collect();
        all.sort_by(|a, b| {
            b.created_at_ms
                .cmp(&a.created_at_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        all
    }

    /// Finds a version by its full id in a storage, for the object store.
    pub fn version(&self, kind: Kind, storage_id: &str, version_id: &str) -> Option<&Version> {
        self.get(kind, storage_id)?
            .versions
            .iter()
            .find(|v| v.id == version_id)
    }
}

/// The contract's rule for names of storages (and, in the emulator, of agents):
/// `^[a-z0-9][a-z0-9-]{1,62}[a-z0-9]$`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (3..=64).contains(&b.len())
        && edge(&b[0])
        && edge(&b[b.len() - 1])
        && b.iter().all(|c| edge(c) || *c == b'-')
}

/// The stable id of a storage: a UUID-formatted string derived from sha256(kind/name), so
/// ids survive restarts of the emulator and tests can predict them.
pub fn storage_id(kind: Kind, name: &str) -> String {
    uuid_from_seed(&format!("{}/{}", kind.as_str(), name))
}

/// A UUID-formatted id derived from sha256(`seed`): the same seed always gives the same id
/// (storages, agents and the demo's runs keep their ids across restarts).
pub fn uuid_from_seed(seed: &str) -> String {
    let digest = Sha256::digest(seed.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    format_uuid(b)
}

/// A random UUID, for runs created while the emulator runs.
pub fn random_uuid() -> String {
    format_uuid(rand::random())
}

fn format_uuid(mut b: [u8; 16]) -> String {
    // Version 4 and RFC 4122 variant bits, so strict UUID parsers accept the id.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Computes a version id: SHA-256 over the storage id and the sorted list of
/// `path:sha256(content)` lines (`path:symlink:target` for symlinks), as the contract says.
/// Exact bytes hashed: the storage id, `\n`, then each sorted line followed by `\n`.
#[derive(Debug, Default, Clone)]
pub struct VersionHasher {
    lines: Vec<String>,
}

impl VersionHasher {
    pub fn file(&mut self, path: &str, content_sha256_hex: &str) {
        self.lines.push(format!("{path}:{content_sha256_hex}"));
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.lines.push(format!("{path}:symlink:{target}"));
    }

    /// Members other than files and symlinks (hard links, devices, ...) of archives that were
    /// not written by the CLI: they still have to change the id when they change.
    pub fn other(&mut self, path: &str, tag: &str) {
        self.lines.push(format!("{path}:{tag}"));
    }

    pub fn finish(mut self, storage_id: &str) -> String {
        self.lines.sort();
        let mut h = Sha256::new();
        h.update(storage_id.as_bytes());
        h.update(b"\n");
        for line in &self.lines {
            h.update(line.as_bytes());
            h.update(b"\n");
        }
        hex::encode(h.finalize())
    }
}

/// The version id of in-memory content (what `POST /_emulator/push` creates). Public so
/// tests can predict ids, e.g. to build two versions that share a prefix.
pub fn content_version_id<'a>(
    storage_id: &str,
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> String {
    let mut hasher = VersionHasher::default();
    for (path, content) in files {
        hasher.file(path, &sha256_hex(content));
    }
    hasher.finish(storage_id)
}

/// SHA-256 of `bytes`, the digest of every id of the contract. Public so that vm0fs's
/// tests hash with the emulator's digest instead of carrying their own SHA crate.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// [`sha256`] as 64 lowercase hex characters, the form of version ids.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha256(bytes))
}

/// Milliseconds of the emulator's fixed base time, 2026-01-20T10:00:00.000Z: data loaded
/// from disk gets deterministic timestamps counted from it.
pub const BASE_TIME_MS: i64 = 1_768_903_200_000;
pub const MINUTE_MS: i64 = 60_000;
pub const DAY_MS: i64 = 24 * 60 * MINUTE_MS;

/// ISO-8601 UTC with milliseconds, as the contract writes timestamps.
pub fn format_timestamp(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Parses an RFC 3339 timestamp (as in a sidecar's `created_at`) to milliseconds.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_time_is_the_documented_one() {
        assert_eq!(format_timestamp(BASE_TIME_MS), "2026-01-20T10:00:00.000Z");
        assert_eq!(
            parse_timestamp("2026-01-20T10:00:00.000Z"),
            Some(BASE_TIME_MS)
        );
        assert_eq!(
            format_timestamp(BASE_TIME_MS + 61_001),
            "2026-01-20T10:01:01.001Z"
        );
    }

    #[test]
    fn names() {
        for good in ["abc", "input-data", "a1-2b", &"a".repeat(64)] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["ab", "-ab", "ab-", "Abc", "a_b", "a.b", &"a".repeat(65), ""] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn storage_ids_are_stable_uuids() {
        let id = storage_id(Kind::Volumes, "input-data");
        assert_eq!(id, storage_id(Kind::Volumes, "input-data"));
        assert_ne!(id, storage_id(Kind::Artifacts, "input-data"));
        let parts: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
        assert_eq!(&id[14..15], "4");
    }

    #[test]
    fn version_ids_ignore_line_order() {
        let a = content_version_id("s", [("a", &b"1"[..]), ("b", &b"2"[..])]);
        let b = content_version_id("s", [("b", &b"2"[..]), ("a", &b"1"[..])]);
        assert_eq!(a, b);
        assert_ne!(
            a,
            content_version_id("t", [("a", &b"1"[..]), ("b", &b"2"[..])])
        );
    }

    fn storage_with(ids: &[&str]) -> Storage {
        Storage {
            id: "s".into(),
            kind: Kind::Volumes,
            name: "x".into(),
            versions: ids
                .iter()
                .map(|id| Version {
                    id: id.to_string(),
                    size: 0,
                    file_count: 1,
                    message: None,
                    created_by: "user".into(),
                    created_at_ms: 0,
                    archive: Some(PathBuf::from("/nonexistent")),
                })
                .collect(),
            current: ids.last().map(|s| s.to_string()),
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn resolve_cases() {
        let s = storage_with(&["aaaaaaaa11", "aaaaaaaa22", "bbbbbbbb33"]);
        let cases: &[(&str, Result<&str, LookupError>)] = &[
            ("bbbbbbbb33", Ok("bbbbbbbb33")),
            ("bbbbbbbb", Ok("bbbbbbbb33")),
            ("bbbbbbb", Err(LookupError::TooShort)),
            ("aaaaaaaa", Err(LookupError::Ambiguous(2))),
            ("aaaaaaaa1", Ok("aaaaaaaa11")),
            ("cccccccc", Err(LookupError::Unknown)),
            ("latest", Err(LookupError::NotHex)),
            ("BBBBBBBB", Err(LookupError::NotHex)),
        ];
        for (query, want) in cases {
            let got = s.resolve(query).map(|v| v.id.as_str());
            assert_eq!(&got, want, "query {query}");
        }
        assert_eq!(
            storage_with(&[]).resolve("aaaaaaaa").map(|v| v.id.clone()),
            Err(LookupError::NoVersions)
        );
    }
}
