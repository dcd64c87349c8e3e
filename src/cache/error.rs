//! Why the cache refused or failed a version, and which failures are worth remembering.

use std::path::PathBuf;
use std::sync::Arc;

use super::VersionKey;
use crate::size::ByteSize;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{key} is {} unpacked, and the cache budget of {} cannot hold even its index and seek checkpoints (about 1% of it, at least one span of its archive); raise --cache-size", ByteSize(*.size), ByteSize(*.budget))]
    TooLarge {
        key: VersionKey,
        size: u64,
        budget: u64,
    },
    /// A span of the archive of a version larger than the cache (the stretch between two
    /// checkpoints of its seek index) that unpacks to more than the whole budget.
    #[error("{key} is larger than the cache, and a stretch of its archive between two checkpoints unpacks to {}, more than the whole cache budget of {}; raise --cache-size", ByteSize(*.span), ByteSize(*.budget))]
    SpanTooLarge {
        key: VersionKey,
        span: u64,
        budget: u64,
    },
    /// A version larger than the cache whose archive could not be indexed for range reads.
    #[error("{key} is larger than the cache, and its archive cannot be read by ranges: {why}")]
    Unindexed { key: VersionKey, why: String },
    #[error("no room in the cache for {key} ({} needed, budget {}): every cached version is in use; close files or raise --cache-size", ByteSize(*.needed), ByteSize(*.budget))]
    NoRoom {
        key: VersionKey,
        needed: u64,
        budget: u64,
    },
    #[error("cache directory {} is in use by another vm0fs (pid {holder}); unmount it or pass another --cache-dir", .dir.display())]
    Locked { dir: PathBuf, holder: String },
    /// The cache directory is not one the daemon may trust (see `held`).
    #[error("the cache directory {} {why}; {fix}", .dir.display())]
    NotOurs {
        dir: PathBuf,
        why: String,
        fix: String,
    },
    /// The cache directory or its lock vanished or changed under the running daemon.
    #[error("the cache directory {} is no longer this mount's ({why}): nothing is served from it or written into it any more; unmount and mount again to start a fresh cache", .dir.display())]
    Lost { dir: PathBuf, why: String },
    #[error("cache I/O error on {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}: {source}")]
    Fetch {
        key: VersionKey,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{key}: cannot start a download thread: {source}")]
    Spawn {
        key: VersionKey,
        #[source]
        source: std::io::Error,
    },
    /// A fetch (or the cache's own code around it) panicked: a bug, logged by the panic
    /// hook where it happened (see [`crate::panics`]).
    #[error("{key}: the download failed on an internal error ({message}); see the log")]
    Panicked { key: VersionKey, message: String },
    /// Nobody waited for the version any more: the fetch was stopped.
    #[error("{key}: stopped, nobody waits for it any more")]
    Cancelled { key: VersionKey },
    #[error("the mount is shutting down")]
    ShuttingDown,
    /// Asked for from the disk alone ([`super::Cache::start_resident`]), and not there:
    /// evicted since it was found there.
    #[error("{key} left the cache and the VM0 API cannot describe it now; try again once the API answers (see .vm0fs/status)")]
    NotResident { key: VersionKey },
}

impl CacheError {
    /// Whether a flight that ended with this error is remembered (see
    /// [`CacheOptions::failure_memory`]): failures of the download and of the disk, which
    /// would most likely happen again at once. Not a refusal for lack of room (it changes
    /// as soon as a file is closed), nor one that asking again cannot change or that was
    /// never tried.
    pub(super) fn remembered(&self) -> bool {
        match self {
            CacheError::Fetch { .. }
            | CacheError::Io { .. }
            | CacheError::Panicked { .. }
            | CacheError::Unindexed { .. } => true,
            CacheError::TooLarge { .. }
            | CacheError::SpanTooLarge { .. }
            | CacheError::NoRoom { .. }
            | CacheError::Locked { .. }
            | CacheError::NotOurs { .. }
            | CacheError::Lost { .. }
            | CacheError::Spawn { .. }
            | CacheError::Cancelled { .. }
            | CacheError::NotResident { .. }
            | CacheError::ShuttingDown => false,
        }
    }
}

/// A failure shared by every caller that waited on the same fetch.
pub type SharedError = Arc<CacheError>;
