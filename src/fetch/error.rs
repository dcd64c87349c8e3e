//! Why fetching a version failed: the network, the archive, or the fetch itself.

use crate::api::ApiError;
use crate::archive::ArchiveError;
use crate::size::ByteSize;

/// Why fetching a version failed: the network or the archive.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("download failed: {0}")]
    Api(#[from] ApiError),
    #[error("{0}")]
    Archive(#[from] ArchiveError),
    /// The archive unpacks to more than the API announced: an archive can lie, and a
    /// decompression bomb must not fill the disk.
    #[error("the archive unpacks to more than the {} the API announced for it; stopped and discarded (a corrupt or hostile archive)", ByteSize(*.announced))]
    LargerThanAnnounced { announced: u64 },
    /// A version whose size the API did not announce unpacks to more than the room the
    /// cache could give it (the budget, less the versions in use), its limit.
    #[error("the archive unpacks to more than the {} the cache could make room for (the VM0 API announced no size for it, so the room in the cache budget is its limit); stopped and discarded; raise --cache-size, or close the files of other versions", ByteSize(*.room))]
    LargerThanBudget { room: u64 },
    #[error("cannot start the download thread: {0}")]
    Spawn(std::io::Error),
    /// Told to stop (nobody wants the version any more, or the mount shuts down).
    #[error("stopped")]
    Stopped,
}
