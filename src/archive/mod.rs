//! Pure `tar.gz` streaming: turn an archive (any `impl Read`) into an unpacked version on
//! disk, plus an [`Index`] of its tree, under safe unpacking rules.
//!
//! The layout this module writes inside a version directory `DEST` is:
//!
//! - `DEST/data/<n>`: the content of regular file number `n` (one file per distinct content
//!   node; hard links share one). Nothing else is ever created from archive member names,
//!   so no member can create, change or follow anything outside `DEST`.
//! - The tree itself (names, directories, symlinks, modes, mtimes) lives only in the
//!   [`Index`], which the caller persists with [`Index::save`].
//!
//! This module knows nothing of HTTP, the cache budget's bookkeeping or inodes.

mod index;
mod tree;
mod unpack;

pub use index::{DirEntry, Index, Node, NodeKind, INDEX_FORMAT_VERSION};
pub use unpack::{blob_path, unpack, ArchiveError, Skipped, UnpackOptions, UnpackStats, Unpacked};

#[cfg(test)]
mod tests;
