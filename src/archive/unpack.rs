//! Streaming unpack of a `tar.gz` into a version directory.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::Index;

/// Limits and defaults for one unpack.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Stop with [`ArchiveError::TooLarge`] as soon as the content bytes written pass this.
    pub max_bytes: u64,
    /// mtime of directories the archive implies but has no entry for (seconds since epoch).
    pub implied_dir_mtime: i64,
}

/// A member that was not unpacked, and why (for the log).
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub member: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnpackStats {
    /// Regular-file nodes written.
    pub files: u64,
    /// Content bytes written.
    pub bytes: u64,
    /// Real disk usage of everything written under DEST (allocated blocks * 512).
    pub disk_bytes: u64,
    /// Compressed bytes read from the input.
    pub compressed_bytes: u64,
    pub skipped: Vec<Skipped>,
}

#[derive(Debug)]
pub struct Unpacked {
    pub index: Index,
    pub stats: UnpackStats,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("placeholder")]
    Placeholder,
}

/// Where the content of blob `blob` lives under a version directory.
pub fn blob_path(dest: &Path, blob: u32) -> PathBuf {
    dest.join("data").join(blob.to_string())
}

/// Unpack `reader` (gzip-compressed tar) into `dest` (an existing empty directory).
pub fn unpack(
    _reader: impl Read,
    _dest: &Path,
    _opts: &UnpackOptions,
    _progress: &mut dyn FnMut(&UnpackStats),
) -> Result<Unpacked, ArchiveError> {
    todo!()
}
