//! How much of everything but content an archive may hold: the member cap derived from the
//! file count the API announces, the bytes of headers and names allowed next to the
//! content, and the room the index of a version may take. The cache reserves room with
//! [`index_allowance`]; the unpacker enforces the rest (`unpack.rs`, `input.rs`).
//!
//! Why: an empty tar member costs about 6 compressed bytes and some 180 bytes of memory
//! while the tree is built, so a small archive of millions of members would exhaust the
//! daemon's memory and write an index far outside the room reserved for it, while every
//! content byte stays within the announced size. See `doc/SEMANTICS.md`, "Archives".

use super::input::{MAX_MEMBER_METADATA, MAX_TRAILER};

/// Members allowed for every announced file: the API's `file_count` counts regular files
/// only, and directories, symlinks and hard links come on top (a real tree has fewer of
/// them than files).
const MEMBERS_PER_FILE: u64 = 2;
/// Members allowed whatever the announced count (a stale or rounded count, a small version
/// of many directories).
const MEMBER_SLACK: u64 = 1024;
/// With no file count announced: one member per this many bytes of the version's byte
/// limit (a file takes at least one 4 KiB block on the disks the cache lives on).
const BYTES_PER_UNKNOWN_MEMBER: u64 = 4096;
/// Bytes of tar data other than content allowed per member: its 512-byte header, a pax
/// or GNU long-name record with its own header (what `tar --format=posix` writes for every
/// member), and the padding of its content to 512 bytes.
pub(super) const METADATA_PER_MEMBER: u64 = 2048;
/// Index bytes reserved per announced file: a node (40 bytes) and an entry (16) for it and
/// for as many other members, and some 400 bytes of names.
const INDEX_PER_FILE: u64 = 512;
/// Index bytes reserved per allowed member when no file count is known.
const INDEX_PER_UNKNOWN_MEMBER: u64 = 256;

/// The most members (and nodes) an archive may hold: `2 * file_count + 1024`, or, when
/// no file count is known (`0`), one per 4 KiB of `max_bytes` (at least 1024).
pub fn member_cap(file_count: u64, max_bytes: u64) -> u64 {
    if file_count == 0 {
        (max_bytes / BYTES_PER_UNKNOWN_MEMBER).max(MEMBER_SLACK)
    } else {
        file_count
            .saturating_mul(MEMBERS_PER_FILE)
            .saturating_add(MEMBER_SLACK)
    }
}

/// The room the cache reserves for the index of a version of `file_count` files: 512
/// bytes a file, or, with no count (`0`), 256 bytes per member [`member_cap`] allows under
/// `max_bytes`. The cache adds a fixed 64 KiB (the index header, the completion record);
/// an index larger than what was reserved is refused.
pub fn index_allowance(file_count: u64, max_bytes: u64) -> u64 {
    if file_count == 0 {
        member_cap(0, max_bytes).saturating_mul(INDEX_PER_UNKNOWN_MEMBER)
    } else {
        file_count.saturating_mul(INDEX_PER_FILE)
    }
}

/// The most tar bytes (decompressed) an archive may hold: `max_bytes` of content plus
/// [`METADATA_PER_MEMBER`] per allowed member, plus one member's largest headers and the
/// end-of-archive padding, so that headers and names count against the version's limit
/// as content does.
pub(super) fn stream_cap(max_bytes: u64, max_members: u64) -> u64 {
    max_bytes
        .saturating_add(max_members.saturating_mul(METADATA_PER_MEMBER))
        .saturating_add(MAX_MEMBER_METADATA)
        .saturating_add(MAX_TRAILER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_follow_the_announced_count_or_the_byte_limit() {
        let cases = [
            // (file_count, max_bytes, members)
            (1, 10, 1026),
            (1000, 1 << 30, 3024),
            (10_000_000, 0, 20_001_024),
            (0, 0, 1024),
            (0, 1 << 30, 262_144),
            (u64::MAX, 0, u64::MAX),
        ];
        for (files, bytes, want) in cases {
            assert_eq!(
                member_cap(files, bytes),
                want,
                "{files} files, {bytes} bytes"
            );
        }
        assert_eq!(index_allowance(1000, 0), 512_000);
        assert_eq!(index_allowance(0, 1 << 30), 262_144 * 256);
        assert_eq!(index_allowance(0, 0), 1024 * 256);
        assert_eq!(index_allowance(u64::MAX, 0), u64::MAX);
        assert_eq!(stream_cap(u64::MAX, 1), u64::MAX);
    }
}
