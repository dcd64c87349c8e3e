//! Pure `tar.gz` streaming: turn an archive (any `impl Read`) into an unpacked version on
//! disk, plus an [`Index`] of its tree, under safe unpacking rules.
//!
//! The layout this module writes inside a version directory `DEST` is:
//!
//! - `DEST/pack`: the content of every regular file smaller than [`PACK_MAX`], back to
//!   back (hard links are one node, so share one copy).
//! - `DEST/data/<n>`: the content of larger regular file number `n`, one file each.
//!   Nothing else is ever created from archive member names, so no member can create,
//!   change or follow anything outside `DEST`.
//! - `DEST/index.bin`: the tree itself (names, directories, symlinks, modes, mtimes, where
//!   each file's content lies), written at the end of the unpack and mapped: the
//!   [`Index`].
//! - `DEST/checks.bin`: a checksum of every unit of content (a block of a file of its own,
//!   a whole packed file), computed as the content is written ([`Checks`]); readers check
//!   each unit before serving a byte of it.
//!
//! The rules for an untrusted archive (each refused member is skipped, counted, and the
//! first few listed in [`UnpackStats::skipped`] with a reason and logged at WARN; the rest
//! is unpacked):
//!
//! - Paths are normalized (`./a//b/` is `a/b`); absolute paths, `..` components, NUL bytes
//!   and names longer than 255 bytes are refused, and so is any path that goes through a
//!   symlink or a regular file the archive made earlier.
//! - Symlinks are kept as their target bytes, never followed or created on disk. Hard links
//!   must name an earlier non-directory member; they become a second name of its node.
//! - Device nodes, FIFOs and unknown member types are skipped; pax global headers are
//!   ignored; GNU sparse files are expanded (the pax-format variant is skipped).
//! - A repeated name: the last member wins, as with GNU tar, except that a non-empty
//!   directory is never replaced by a non-directory.
//! - Modes keep their permission bits without setuid and setgid; directories the archive
//!   only implies are 0755 with [`UnpackOptions::implied_dir_mtime`].
//! - Content is checked against [`UnpackOptions::max_bytes`] before it is written, and the
//!   metadata held in memory per member (long names, pax records) is bounded.
//! - Members and nodes are capped relative to the announced file count, headers and names
//!   count against the version's limit next to its content, and the index must fit the
//!   room reserved for it ([`member_cap`], [`index_allowance`], `limits.rs`).
//!
//! While the archive is read, each regular file is published ([`Publish`]) as soon as its
//! content is complete, under the node number it keeps in the finished index (nodes are
//! numbered in creation order, see `tree.rs`), so that a reader can serve it early.
//!
//! This module knows nothing of HTTP, the cache budget's bookkeeping or inodes.

mod batch;
mod blobs;
mod checks;
mod encode;
pub(crate) mod index;
mod input;
mod limits;
mod names;
mod outcome;
mod pax;
mod positions;
mod publish;
pub mod seek;
mod tree;
mod unpack;

pub use blobs::{blob_path, index_path, pack_path, PACK_MAX};
pub use checks::{
    checks_path, checksum, fresh_serial, quick_check, read_header, unit_count, unit_span, Checks,
    ChecksHeader, Damage, CHECKS_FORMAT_VERSION, CHECK_BLOCK,
};
pub use index::{
    DirEntry, Entries, Index, IndexError, IndexTree, Node, NodeKind, NodeRef, NodeRefKind, Stored,
    INDEX_FORMAT_VERSION,
};
pub use limits::{index_allowance, member_cap};
pub use outcome::{ArchiveError, Skipped, UnpackOptions, UnpackStats, Unpacked, SKIPPED_KEPT};
pub use positions::{At, Positions, POSITIONS_FORMAT_VERSION};
pub use publish::{BlobId, Publish, Published, PublishedFile, PublishedKind, PublishedNode, Step};
pub use unpack::{unpack, unpack_published};

#[cfg(test)]
mod index_tests;
#[cfg(test)]
mod seek_tests;
#[cfg(test)]
mod tests;
