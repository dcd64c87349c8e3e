//! What an unpack is told and what it gives back: its limits ([`UnpackOptions`]), its
//! figures and the members it skipped ([`UnpackStats`]), the version it made
//! ([`Unpacked`]), and why it failed ([`ArchiveError`]). The pipeline itself is
//! `unpack.rs`'s.

use std::io;
use std::path::PathBuf;

use super::limits::member_cap;
use super::{Index, IndexError};
use crate::size::ByteSize;

/// Limits and defaults for one unpack.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Stop with [`ArchiveError::TooLarge`] as soon as the content bytes written pass this.
    pub max_bytes: u64,
    /// The file count the API announced (`0`: unknown). The archive may hold at most
    /// [`member_cap`]`(file_count, max_bytes)` members, and its tree as many nodes
    /// ([`ArchiveError::TooManyMembers`]); its tar data as a whole, content plus 2 KiB of
    /// headers and names a member ([`ArchiveError::MetadataTooLarge`]).
    pub file_count: u64,
    /// The room reserved for the index: a larger one is refused
    /// ([`ArchiveError::IndexTooLarge`]) before it is written.
    pub max_index_bytes: u64,
    /// mtime of directories the archive implies but has no entry for (seconds since epoch).
    pub implied_dir_mtime: i64,
    /// Write the content of files (`false`: a version larger than the cache, whose first
    /// pass keeps its tree, checksums and where each file lies in the tar stream, and
    /// whose content is read later from the archive by ranges).
    pub keep_content: bool,
}

impl UnpackOptions {
    /// The most members (and nodes) the archive may hold.
    pub fn max_members(&self) -> u64 {
        member_cap(self.file_count, self.max_bytes)
    }
}

/// A member that was not unpacked, and why (for the log).
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub member: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnpackStats {
    /// Regular-file nodes written (and still in the tree: a file replaced by a later member
    /// of the same name is no longer counted).
    pub files: u64,
    /// Content bytes written (of the files counted in `files`).
    pub bytes: u64,
    /// Real disk usage of everything written under DEST (allocated blocks * 512).
    pub disk_bytes: u64,
    /// Compressed bytes read from the input.
    pub compressed_bytes: u64,
    /// The first [`SKIPPED_KEPT`] members skipped, with why.
    pub skipped: Vec<Skipped>,
    /// How many members were skipped in all.
    pub skipped_count: u64,
}

/// Skipped members listed in [`UnpackStats::skipped`] and logged one by one; the rest are
/// counted, and one line at the end gives the count.
pub const SKIPPED_KEPT: usize = 10;

#[derive(Debug)]
pub struct Unpacked {
    pub index: Index,
    /// The checksums of its content (`checks.bin`), open.
    pub checks: super::Checks,
    pub stats: UnpackStats,
    /// Where each file's content lies in the tar stream, by node.
    pub positions: super::Positions,
    /// The checkpoints of the gzip stream (`None` for an empty input).
    pub seek: Option<super::seek::SeekIndex>,
    /// The archive's `ETag` and length at the store, when the caller knows them (a
    /// download does; see [`crate::cache::ArchiveOrigin`]).
    pub origin: Option<crate::cache::ArchiveOrigin>,
}

/// Why an unpack failed. The caller deletes the version directory on any of these.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading the archive from its source (the download) failed.
    #[error("reading the archive failed: {0}")]
    Read(#[source] io::Error),
    #[error("the archive is not gzip-compressed data (a version archive must be a .tar.gz file)")]
    NotGzip,
    #[error("the archive ends early (truncated download?); try again")]
    Truncated,
    #[error("the archive's gzip data is corrupt: {0}")]
    Gzip(#[source] io::Error),
    #[error("the archive is gzip-compressed but does not hold a tar archive")]
    NotTar,
    #[error("the archive's tar data is damaged: {0}")]
    Tar(#[source] io::Error),
    /// Writing the next file would pass [`UnpackOptions::max_bytes`]; checked before it is
    /// written, so at most `limit` bytes are on disk.
    #[error(
        "the archive unpacks to more than the limit of {} for it; stopped after writing {} \
         so as not to fill the disk",
        ByteSize(*limit),
        ByteSize(*written)
    )]
    TooLarge { limit: u64, written: u64 },
    #[error(
        "the archive holds more than {limit} members (files, directories, links); the API \
         announced {announced}, so it is not the version it claims to be (refused before it \
         could exhaust memory)",
        announced = announced_files(*file_count)
    )]
    TooManyMembers { limit: u64, file_count: u64 },
    /// The tar data as a whole passed its cap (`limits.rs`), made of the content limit and
    /// the member cap: headers and names count against the version's limit.
    #[error(
        "the archive's tar data passed {}: {} of content and 2 KiB of headers and names for \
         each of at most {members} members (plus 9 MiB); its headers, long names or pax \
         records are far larger than any real archive's, so it is refused as a metadata bomb",
        ByteSize(*limit),
        ByteSize(*content)
    )]
    MetadataTooLarge {
        limit: u64,
        content: u64,
        members: u64,
    },
    #[error(
        "the archive's index would take {}, more than the {} reserved for it (its names \
         are far longer than a version of its announced file count has)",
        ByteSize(*bytes),
        ByteSize(*limit)
    )]
    IndexTooLarge { bytes: u64, limit: u64 },
    /// The finished tree failed its own check (a defect of the unpacker, never of input).
    #[error("the unpacked tree is inconsistent: {0}")]
    Index(#[source] IndexError),
    #[error("cannot write {} in the cache: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The announced file count, in words for [`ArchiveError::TooManyMembers`].
fn announced_files(file_count: u64) -> String {
    match file_count {
        0 => "no file count".to_string(),
        1 => "1 file".to_string(),
        n => format!("{n} files"),
    }
}
