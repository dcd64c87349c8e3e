//! Wire types of the VM0 API. Every struct reads both the documented snake_case shape and
//! the final camelCase shape (serde aliases), so one client works against either server.

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::ids::{StorageId, StorageName, VersionId};

/// The two kinds of storage the API serves; they are mirror images of each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Volume,
    Artifact,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Volume, Kind::Artifact];

    /// The path segment of this kind in the API and in the mount (`volumes`, `artifacts`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Volume => "volumes",
            Kind::Artifact => "artifacts",
        }
    }

    /// The singular noun, for messages ("volume input-data").
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Volume => "volume",
            Kind::Artifact => "artifact",
        }
    }

    pub fn from_plural(s: &str) -> Option<Kind> {
        match s {
            "volumes" => Some(Kind::Volume),
            "artifacts" => Some(Kind::Artifact),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.singular())
    }
}

/// A volume or an artifact, as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct Storage {
    pub id: StorageId,
    pub name: StorageName,
    /// The current ("latest") version; may be older than the newest row of the versions list.
    pub current_version_id: Option<VersionId>,
    /// May be stale: trust the version object's size.
    pub size: u64,
    pub file_count: u64,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// `GET /v1/{kind}/{id}`: the storage plus its current version object.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageDetail {
    pub storage: Storage,
    pub current_version: Option<Version>,
}

/// One immutable, content-addressed version of a storage.
#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    pub id: VersionId,
    /// `volume_id` or `artifact_id` on the wire.
    pub storage_id: StorageId,
    /// Uncompressed total of the files, when the API said. Only a fact to check against:
    /// a version without it is still downloaded, under the cache budget.
    pub size: Option<u64>,
    /// The number of files, when the API said. A version with no count (or 0 while
    /// `size` says there are bytes) is downloaded all the same: only a version with 0
    /// files and no bytes is taken for one without an archive.
    pub file_count: Option<u64>,
    pub message: Option<String>,
    /// `"user"` or `"agent"`.
    pub created_by: Option<String>,
    pub created_at: SystemTime,
}

/// Which archive to download, and how messages name it.
///
/// With a storage name, errors read "version 9b2d1f0c of volume input-data"; without one,
/// they name the storage by its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRef {
    pub kind: Kind,
    pub storage_id: StorageId,
    /// The storage's name, for messages only (the API is asked by id).
    pub storage_name: Option<StorageName>,
    /// A full version id or a unique prefix of at least 8 hex characters, as the API takes
    /// it; `None`: the storage's current version.
    pub version: Option<String>,
}

impl ArchiveRef {
    /// The current version of a storage.
    pub fn current(kind: Kind, storage_id: StorageId) -> ArchiveRef {
        ArchiveRef {
            kind,
            storage_id,
            storage_name: None,
            version: None,
        }
    }

    /// One version of a storage: a full id or a unique prefix.
    pub fn version(kind: Kind, storage_id: StorageId, version: impl Into<String>) -> ArchiveRef {
        ArchiveRef {
            version: Some(version.into()),
            ..ArchiveRef::current(kind, storage_id)
        }
    }

    /// The same archive, named in messages by the storage's name.
    pub fn named(self, name: StorageName) -> ArchiveRef {
        ArchiveRef {
            storage_name: Some(name),
            ..self
        }
    }
}
