//! Where a version's file contents go: the pack (every file smaller than [`PACK_MAX`],
//! back to back, appended to and never rewritten) and files of their own for the rest.
//! The index says which and where ([`super::Stored`]); readers never look at names here.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::outcome::ArchiveError;
use super::publish::BlobId;

/// Where the content of blob `blob` lives under a version directory, for a file of its
/// own (at least [`PACK_MAX`] bytes).
pub fn blob_path(dest: &Path, blob: u32) -> PathBuf {
    dest.join("data").join(blob.to_string())
}

/// The index file of a version directory (see [`super::Index`]), written at the end of
/// its unpack.
pub fn index_path(dest: &Path) -> PathBuf {
    dest.join("index.bin")
}

/// The pack file of a version directory: the content of every file smaller than
/// [`PACK_MAX`], back to back, each read at its offset.
pub fn pack_path(dest: &Path) -> PathBuf {
    dest.join("pack")
}

/// Files smaller than this go into the pack; larger ones get a file of their own (so
/// that passthrough and page-cache advice work on them alone). A small file costs its
/// bytes in the pack instead of a 4 KiB block and an inode; past 1 MiB the block rounding
/// is under 0.4% and a file of its own costs nothing more. A packed file shares its content
/// file with others, so whoever hands content files to the kernel (passthrough) must hand
/// only files of their own: at least this large.
pub const PACK_MAX: u64 = 1 << 20;

/// The pack file being written: appended to, never rewritten (a published file's bytes
/// stay where a reader found them).
pub(super) struct Pack {
    /// Kept open for the unpack's end (its size on disk); content is written through a
    /// descriptor of its own ([`Pack::handle`]).
    pub file: File,
    pub path: Arc<Path>,
    pub id: BlobId,
    pub len: u64,
}

impl Pack {
    pub fn create(dest: &Path) -> Result<Pack, ArchiveError> {
        let path = pack_path(dest);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(write_error(path.clone()))?;
        let meta = file.metadata().map_err(write_error(path.clone()))?;
        Ok(Pack {
            file,
            path: Arc::from(path),
            id: BlobId {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            len: 0,
        })
    }

    /// Another descriptor of the pack, for writes that say where they go.
    pub fn handle(&self) -> Result<File, ArchiveError> {
        self.file
            .try_clone()
            .map_err(write_error(self.path.to_path_buf()))
    }
}

fn write_error(path: PathBuf) -> impl FnOnce(std::io::Error) -> ArchiveError {
    move |source| ArchiveError::Write { path, source }
}
