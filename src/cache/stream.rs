//! How a buffered reader of the mount reads a content file of its own, and which of the
//! content file's pages are dropped after: the kernel keeps what that reader reads in the
//! mount's own page cache, so the content file's copy is only a second one.
//!
//! A read that continues where the last read of the file ended (give or take the
//! requests of the kernel's read-ahead that are served out of order) is part of a
//! sequential stream. It is read through the content file's page cache, whose read-ahead
//! keeps the disk busy ahead of the reader, and its pages are dropped behind it, a chunk
//! of [`DROP_CHUNK`] at a time once the stream has moved a chunk past them, and all that
//! is left at the end of the file. So a file read from start to end is cached once but
//! for at most two chunks at a time and the read-ahead beyond them (its last two are
//! dropped when the read reaches the end; a reader that stops midway leaves them).
//! Dropping a chunk at a time also spares each request `POSIX_FADV_DONTNEED` of pages the
//! kernel has only just added, which makes it drain every CPU's page lists.
//!
//! Any other read (a first read that does not start at the beginning, a seek, two readers
//! of one file at once) reads a large span with direct I/O, which bypasses the page cache,
//! and has the span it read dropped at once (a small one is read through the page cache).
//! Measured in doc/BENCHMARKS.md ("The floor of a FUSE daemon").

use std::sync::atomic::{AtomicU64, Ordering};

/// Pages of a sequential stream are dropped this many bytes at a time, one chunk behind.
const DROP_CHUNK: u64 = 8 << 20;

/// How far from where the last read ended a read may start and still continue the
/// stream: the kernel's read-ahead has a few requests of up to 1 MiB in flight, served by
/// different threads in any order.
const STREAM_SLACK: u64 = 4 << 20;

/// The sequential stream of one open content file: where its last read ended.
#[derive(Debug, Default)]
pub struct ReadStream {
    end: AtomicU64,
}

impl ReadStream {
    /// Whether a read at `at` (an offset in the content file) continues the stream.
    pub fn continues(&self, at: u64) -> bool {
        let end = self.end.load(Ordering::Relaxed);
        at.abs_diff(end) <= STREAM_SLACK
    }

    /// Record a read of `span` (offset and length in the content file, whole check
    /// units), which `sequential` says continued the stream, of a file whose content ends
    /// at `file_end`: the range to drop from the content file's page cache now, if any.
    pub fn advance(&self, span: (u64, u64), sequential: bool, file_end: u64) -> Option<(u64, u64)> {
        let (at, len) = span;
        let end = at.saturating_add(len);
        let before = self.end.swap(end, Ordering::Relaxed);
        // A read served after the one that reached the end (the read-ahead's requests
        // finish in any order) comes after the end's advice: it drops its own pages.
        if !sequential || (before >= file_end && end < file_end) {
            return (len > 0).then_some(span);
        }
        if end >= file_end {
            // The end of the file: the two chunks still held.
            let from = (end / DROP_CHUNK).saturating_sub(1) * DROP_CHUNK;
            return Some((from, file_end.saturating_sub(from)));
        }
        let (first, last) = (at / DROP_CHUNK, end / DROP_CHUNK);
        // Crossing into chunk `last`: the chunks up to two behind it are done with.
        (last > first && last >= 2).then(|| {
            let from = first.saturating_sub(1) * DROP_CHUNK;
            (from, (last - 1) * DROP_CHUNK - from)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// A file read from start to end in 1 MiB requests: every byte is dropped exactly once,
    /// never more than two chunks behind the reader, and nothing is left at the end.
    #[test]
    fn a_whole_read_drops_every_chunk_once_behind_the_reader() {
        let size = 3 * DROP_CHUNK + 12_345;
        let s = ReadStream::default();
        let mut dropped = Vec::new();
        let mut at = 0;
        while at < size {
            let len = MIB.min(size - at);
            assert!(s.continues(at), "a read at {at} continues the stream");
            if let Some((from, n)) = s.advance((at, len), true, size) {
                assert!(
                    at + len - (from + n) <= 2 * DROP_CHUNK,
                    "dropped far behind the reader"
                );
                dropped.push((from, n));
            }
            at += len;
        }
        // Contiguous from 0 to the end: nothing twice, nothing missed.
        let mut next = 0;
        for (from, n) in &dropped {
            assert_eq!(*from, next, "{dropped:?}");
            next = from + n;
        }
        assert_eq!(next, size, "{dropped:?}");
        // One advice per chunk, not one per request.
        assert_eq!(dropped.len(), 3, "{dropped:?}");
    }

    #[test]
    fn reads_out_of_order_within_the_slack_continue_the_stream() {
        let s = ReadStream::default();
        s.advance((0, MIB), true, 100 * MIB);
        assert!(s.continues(2 * MIB), "a read ahead of the last one");
        s.advance((2 * MIB, MIB), true, 100 * MIB);
        assert!(s.continues(MIB), "the one the read-ahead sent before it");
        assert!(!s.continues(50 * MIB), "a seek");
        // A new pass from the start after the end of an earlier one begins as a seek, and
        // continues the stream from its second read.
        s.advance((99 * MIB, MIB), true, 100 * MIB);
        assert!(!s.continues(0));
        s.advance((0, MIB), false, 100 * MIB);
        assert!(s.continues(MIB));
    }

    #[test]
    fn a_read_that_is_not_sequential_drops_what_it_read_at_once() {
        let s = ReadStream::default();
        assert_eq!(
            s.advance((40 * MIB, MIB), false, 100 * MIB),
            Some((40 * MIB, MIB))
        );
        assert_eq!(s.advance((41 * MIB, 0), false, 100 * MIB), None);
        // Within a chunk, a sequential read drops nothing yet.
        assert_eq!(s.advance((41 * MIB, MIB), true, 100 * MIB), None);
        // A request of the read-ahead served after the one that reached the end.
        assert_eq!(
            s.advance((99 * MIB, MIB), true, 100 * MIB),
            Some((88 * MIB, 12 * MIB))
        );
        assert_eq!(
            s.advance((98 * MIB, MIB), true, 100 * MIB),
            Some((98 * MIB, MIB))
        );
    }
}
