//! The filesystem's only way to reach the network: a small trait that the API client
//! implements and that library tests replace with an in-memory fake.

use std::io::Read;

use crate::api::{ApiError, ArchiveRef, Client, Kind, Storage, Version};
use crate::ids::StorageId;

/// A version's archive, streamed.
pub struct RemoteArchive {
    pub reader: Box<dyn Read + Send>,
    /// Compressed size, when known (for progress).
    pub compressed_size: Option<u64>,
}

pub trait Remote: Send + Sync + 'static {
    fn list_storages(&self, kind: Kind) -> Result<Vec<Storage>, ApiError>;
    fn list_versions(&self, kind: Kind, storage_id: &StorageId) -> Result<Vec<Version>, ApiError>;
    /// The archive of one version (`archive` names the storage by id, and by name for
    /// messages).
    fn download(&self, archive: &ArchiveRef) -> Result<RemoteArchive, ApiError>;
}

impl Remote for Client {
    fn list_storages(&self, kind: Kind) -> Result<Vec<Storage>, ApiError> {
        Client::list_storages(self, kind)
    }

    fn list_versions(&self, kind: Kind, storage_id: &StorageId) -> Result<Vec<Version>, ApiError> {
        Client::list_versions(self, kind, storage_id)
    }

    fn download(&self, archive: &ArchiveRef) -> Result<RemoteArchive, ApiError> {
        let d = Client::download_archive(self, archive, None)?;
        let compressed_size = d.compressed_size;
        Ok(RemoteArchive {
            reader: Box::new(d),
            compressed_size,
        })
    }
}
