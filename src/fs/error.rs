//! The filesystem's error type and its mapping to errno: the one place where a failure
//! becomes a number the kernel understands.

use std::sync::Arc;

use crate::api::ApiError;
use crate::archive::ArchiveError;
use crate::cache::{CacheError, SharedError};
use crate::fetch::FetchError;
use crate::metadata::{Unavailable, VersionsFailed};

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A name or inode that does not exist (user-caused: logged at DEBUG only).
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("not a symbolic link")]
    NotSymlink,
    /// Any attempt to change the mount.
    #[error("read-only file system")]
    ReadOnly,
    #[error("no such attribute")]
    NoAttr,
    /// An attribute namespace the mount does not carry at all (`security.*`, `trusted.*`).
    #[error("attribute namespace not supported")]
    NotSupported,
    #[error("buffer too small")]
    Range,
    /// A file or directory handle the kernel should not have sent.
    #[error("bad file handle")]
    BadHandle,
    /// The API failed to answer a metadata request (listing names or versions).
    #[error("{0}")]
    Remote(Arc<ApiError>),
    /// Nothing is known of a listing yet and the API has not answered its fetch within
    /// the wait bound (`metadata::FIRST_FETCH_WAIT`); the fetch goes on in the background.
    #[error("the VM0 API has not answered within {} s; still trying in the background", .waited.as_secs())]
    NoAnswer { waited: std::time::Duration },
    /// A version could not be made available (download, unpack, budget).
    #[error("{0}")]
    Cache(SharedError),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A cached version is damaged: its index, its checksums, or a content file missing,
    /// short or failing its checksum (the version is dropped from the cache and
    /// downloaded again at the next access).
    #[error("{0}")]
    Damaged(crate::archive::Damage),
    /// The operation would have to wait for the network (a download, a listing, a run),
    /// and its thread may not (a FUSE worker: [`super::Fs::serve`] then runs it again on a
    /// waiter thread). Never answered.
    #[error("the operation would wait for the network")]
    WouldBlock,
    /// The process that asked got a signal (or is gone) while waiting for the network.
    #[error("interrupted while waiting for the network")]
    Interrupted,
    /// The operation panicked (a bug, logged where it happened).
    #[error("internal error: {0}")]
    Internal(String),
}

impl FsError {
    /// The errno answered to the kernel. Exhaustive on purpose: a new variant must be
    /// given its errno here, not fall into a default.
    pub fn errno(&self) -> libc::c_int {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotSymlink => libc::EINVAL,
            FsError::ReadOnly => libc::EROFS,
            FsError::NoAttr => libc::ENODATA,
            FsError::NotSupported => libc::EOPNOTSUPP,
            FsError::Range => libc::ERANGE,
            FsError::BadHandle => libc::EBADF,
            FsError::Remote(e) => api_errno(e),
            // "Try again": nothing is wrong with the name, the answer is late.
            FsError::NoAnswer { .. } => libc::ETIMEDOUT,
            FsError::Cache(e) => match e.as_ref() {
                CacheError::TooLarge { .. } | CacheError::SpanTooLarge { .. } => libc::EFBIG,
                CacheError::NoRoom { .. } => libc::ENOSPC,
                CacheError::Io { source, .. } => disk_errno(source),
                CacheError::Locked { .. }
                | CacheError::NotOurs { .. }
                | CacheError::Lost { .. }
                | CacheError::Spawn { .. }
                | CacheError::Panicked { .. }
                | CacheError::NotResident { .. }
                | CacheError::Unindexed { .. }
                | CacheError::ShuttingDown => libc::EIO,
                // Only a flight nobody waits for is cancelled: nobody should see this.
                CacheError::Cancelled { .. } => libc::EINTR,
                CacheError::Fetch { source, .. } => match source.downcast_ref::<FetchError>() {
                    Some(FetchError::Api(api)) => api_errno(api),
                    Some(FetchError::LargerThanBudget { .. }) => libc::EFBIG,
                    Some(FetchError::Archive(ArchiveError::Write { source, .. })) => {
                        disk_errno(source)
                    }
                    Some(
                        FetchError::Archive(_)
                        | FetchError::LargerThanAnnounced { .. }
                        | FetchError::Spawn(_)
                        | FetchError::Stopped,
                    )
                    | None => libc::EIO,
                },
            },
            FsError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            FsError::Damaged(_) => libc::EIO,
            // Handled by `Fs::serve`, which never answers it; EIO if that ever changes.
            FsError::WouldBlock => libc::EIO,
            FsError::Interrupted => libc::EINTR,
            FsError::Internal(_) => libc::EIO,
        }
    }
}

/// A failure to write the cache: a full disk (or quota) says so, which is what the user
/// can act on; any other is `EIO`.
fn disk_errno(e: &std::io::Error) -> libc::c_int {
    match e.raw_os_error() {
        Some(n @ (libc::ENOSPC | libc::EDQUOT)) => n,
        _ if e.kind() == std::io::ErrorKind::StorageFull => libc::ENOSPC,
        _ => libc::EIO,
    }
}

fn api_errno(e: &ApiError) -> libc::c_int {
    if e.is_auth() {
        libc::EACCES
    } else if e.is_not_found() {
        libc::ENOENT
    } else {
        libc::EIO
    }
}

impl From<Unavailable<ApiError>> for FsError {
    fn from(e: Unavailable<ApiError>) -> FsError {
        match e {
            Unavailable::Failed(e) => FsError::Remote(e),
            Unavailable::NoAnswer { waited } => FsError::NoAnswer { waited },
            Unavailable::WouldBlock => FsError::WouldBlock,
            Unavailable::Interrupted => FsError::Interrupted,
        }
    }
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
            Unavailable::WouldBlock => FsError::WouldBlock,
            Unavailable::Interrupted => FsError::Interrupted,
        }
    }
}

impl From<SharedError> for FsError {
    fn from(e: SharedError) -> Self {
        FsError::Cache(e)
    }
}

impl From<ApiError> for FsError {
    fn from(e: ApiError) -> Self {
        FsError::Remote(Arc::new(e))
    }
}
