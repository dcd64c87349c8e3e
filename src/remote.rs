//! The filesystem's only way to reach the network: a small trait that the API client
//! implements and that library tests replace with an in-memory fake.

use std::io::Read;

use crate::api::{ApiError, ArchiveRef, Client, Download, Kind, ResumePoint, Storage, Version};
use crate::ids::StorageId;

/// A version's archive, streamed.
pub struct RemoteArchive {
    pub reader: Box<dyn ArchiveStream>,
    /// Compressed size, when known (for progress).
    pub compressed_size: Option<u64>,
}

impl RemoteArchive {
    /// An archive read from `reader`, which cannot be continued by a later download.
    pub fn plain(reader: impl Read + Send + 'static, compressed_size: Option<u64>) -> Self {
        RemoteArchive {
            reader: Box::new(Plain(reader)),
            compressed_size,
        }
    }
}

/// The bytes of an archive, and where a later download could continue them.
pub trait ArchiveStream: Read + Send {
    /// Where the bytes read so far end, for a later download to continue from; `None` when
    /// a continuation could not be checked (the store sent no `ETag`).
    fn resume_point(&self) -> Option<ResumePoint>;
}

impl ArchiveStream for Download {
    fn resume_point(&self) -> Option<ResumePoint> {
        Download::resume_point(self)
    }
}

struct Plain<R>(R);

impl<R: Read> Read for Plain<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read + Send> ArchiveStream for Plain<R> {
    fn resume_point(&self) -> Option<ResumePoint> {
        None
    }
}

pub trait Remote: Send + Sync + 'static {
    fn list_storages(&self, kind: Kind) -> Result<Vec<Storage>, ApiError>;
    fn list_versions(&self, kind: Kind, storage_id: &StorageId) -> Result<Vec<Version>, ApiError>;
    /// The archive of one version (`archive` names the storage by id, and by name for
    /// messages); with `from`, only its bytes after the point where an earlier download
    /// stopped ([`ApiError::Changed`] when the object is no longer that one).
    fn download(
        &self,
        archive: &ArchiveRef,
        from: Option<&ResumePoint>,
    ) -> Result<RemoteArchive, ApiError>;

    /// The bytes `from.offset..end` of the archive (of the object `from.etag` names). A
    /// source that cannot ask for a range gives everything from `from.offset` on: the
    /// caller reads what it needs.
    fn download_range(
        &self,
        archive: &ArchiveRef,
        from: &ResumePoint,
        end: u64,
    ) -> Result<RemoteArchive, ApiError> {
        let _ = end;
        self.download(archive, Some(from))
    }
}

impl From<Download> for RemoteArchive {
    fn from(d: Download) -> RemoteArchive {
        let compressed_size = d.compressed_size;
        RemoteArchive {
            reader: Box::new(d),
            compressed_size,
        }
    }
}

impl Remote for Client {
    fn list_storages(&self, kind: Kind) -> Result<Vec<Storage>, ApiError> {
        Client::list_storages(self, kind)
    }

    fn list_versions(&self, kind: Kind, storage_id: &StorageId) -> Result<Vec<Version>, ApiError> {
        Client::list_versions(self, kind, storage_id)
    }

    fn download(
        &self,
        archive: &ArchiveRef,
        from: Option<&ResumePoint>,
    ) -> Result<RemoteArchive, ApiError> {
        Client::download_archive(self, archive, from).map(RemoteArchive::from)
    }

    fn download_range(
        &self,
        archive: &ArchiveRef,
        from: &ResumePoint,
        end: u64,
    ) -> Result<RemoteArchive, ApiError> {
        Client::download_archive_range(self, archive, from, end).map(RemoteArchive::from)
    }
}
