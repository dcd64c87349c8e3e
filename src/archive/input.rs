//! The reader stack under the unpacker: the source, gzip members, and the tar reader's
//! input.
//!
//! Each layer keeps the errors it sees in [`Shared`], so that when an `io::Error` comes out
//! of the tar reader the unpacker can say whose fault it was: the download (the source),
//! the gzip stream, or the tar data. The tar input also bounds the metadata the `tar` crate
//! may read (and hold in memory) between two members, and the tar data as a whole.

use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, Read};
use std::rc::Rc;

use super::batch::Pending;
use super::publish::Publish;
use super::seek::Checkpointer;

/// Read buffer around the source: large reads keep the per-call overhead of the network
/// stream and of the decompressor's input handling low.
pub(super) const READ_BUFFER: usize = 256 * 1024;
/// Most bytes the tar reader may read to get from one member to the next: padding, the
/// headers, GNU long names and pax extensions. The `tar` crate holds long names and pax
/// extensions in memory whole, so this bounds the memory a hostile archive can make it use.
pub(super) const MAX_MEMBER_METADATA: u64 = 8 * 1024 * 1024;
/// Most decompressed bytes read after the tar's end-of-archive marker (normally a few KiB
/// of zero padding) to let gzip check its trailer; a gzip bomb after the end is not read.
pub(super) const MAX_TRAILER: u64 = 1024 * 1024;
pub(super) const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// The size of a tar header block.
pub(super) const TAR_BLOCK: usize = 512;

/// State shared by the reader wrappers and the unpacker.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) compressed_bytes: Cell<u64>,
    /// The first error of the source itself.
    pub(super) source_error: RefCell<Option<io::Error>>,
    /// The first error of the gzip decoder (not caused by the source).
    pub(super) gzip_error: RefCell<Option<io::Error>>,
    /// Bytes the tar reader may still read before the current member (`None`: unbounded).
    pub(super) metadata_budget: Cell<Option<u64>>,
    pub(super) metadata_exceeded: Cell<bool>,
    /// Decompressed tar bytes read so far, and the most allowed (content, headers, names,
    /// padding: see `limits.rs`); `stream_exceeded` once a read went past it.
    pub(super) tar_bytes: Cell<u64>,
    pub(super) stream_cap: Cell<u64>,
    pub(super) stream_exceeded: Cell<bool>,
    /// The first header block of the tar data (up to [`TAR_BLOCK`] bytes), kept to tell
    /// "not a tar" from "a tar whose first member is damaged".
    pub(super) first_block: RefCell<Vec<u8>>,
}

/// A copy of `e` to pass up the reader stack while the original is kept in [`Shared`].
fn copy_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// The source, counted; its errors are recorded so they are reported as
/// [`ArchiveError::Read`] whatever the decompressor or tar reader make of them. Before each
/// read, which may wait for the network, what `pending` gathered is written and published.
pub(super) struct CountedInput<'w, R> {
    pub(super) inner: R,
    pub(super) shared: Rc<Shared>,
    pub(super) pending: &'w Pending<'w>,
}

impl<R: Read> Read for CountedInput<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.pending.before_wait();
        loop {
            match self.inner.read(buf) {
                Ok(n) => {
                    let total = &self.shared.compressed_bytes;
                    total.set(total.get() + n as u64);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let copy = copy_error(&e);
                    self.shared.source_error.borrow_mut().get_or_insert(e);
                    return Err(copy);
                }
            }
        }
    }
}

/// The tar reader's input: keeps the decompressor's own errors, and enforces
/// [`MAX_MEMBER_METADATA`] while the tar reader looks for the next member.
pub(super) struct TarInput<R> {
    pub(super) inner: R,
    pub(super) shared: Rc<Shared>,
    /// Where skipped bytes are read to (see the `Seek` impl); allocated on first use.
    skipped: Vec<u8>,
}

impl<R> TarInput<R> {
    pub(super) fn new(inner: R, shared: Rc<Shared>) -> Self {
        TarInput {
            inner,
            shared,
            skipped: Vec::new(),
        }
    }
}

/// Bytes read at a time when skipping.
const SKIP_CHUNK: usize = 32 * 1024;

/// Forward only, by reading: the tar reader skips each member's padding (and the content of
/// a member it does not read) with a seek when its input can seek, and otherwise reads it
/// into a fresh zeroed 32 KiB buffer, which for an archive of tiny files costs more than
/// the rest of its parsing. Skipped bytes go through [`Read::read`] like any others, so
/// every bound and count above holds for them.
impl<R: Read> io::Seek for TarInput<R> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let io::SeekFrom::Current(ahead) = pos else {
            return Err(io::Error::other(
                "the tar stream can only be skipped forward",
            ));
        };
        let mut left = u64::try_from(ahead)
            .map_err(|_| io::Error::other("the tar stream can only be skipped forward"))?;
        if left > 0 && self.skipped.is_empty() {
            self.skipped = vec![0; SKIP_CHUNK];
        }
        let mut buf = std::mem::take(&mut self.skipped);
        let result = (|| {
            while left > 0 {
                let want = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
                match self.read(&mut buf[..want]) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "unexpected EOF during skip",
                        ))
                    }
                    Ok(n) => left -= n as u64,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(self.shared.tar_bytes.get())
        })();
        self.skipped = buf;
        result
    }
}

impl<R: Read> Read for TarInput<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let budget = self.shared.metadata_budget.get();
        let want = match budget {
            Some(0) if !buf.is_empty() => {
                self.shared.metadata_exceeded.set(true);
                return Err(io::Error::other(format!(
                    "a member's headers (long names, pax extensions) are larger than {} MiB",
                    MAX_MEMBER_METADATA >> 20
                )));
            }
            Some(left) => buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        match self.inner.read(&mut buf[..want]) {
            Ok(n) => {
                let mut first = self.shared.first_block.borrow_mut();
                if first.len() < TAR_BLOCK {
                    let take = n.min(TAR_BLOCK - first.len());
                    first.extend_from_slice(&buf[..take]);
                }
                drop(first);
                if let Some(left) = budget {
                    self.shared
                        .metadata_budget
                        .set(Some(left.saturating_sub(n as u64)));
                }
                let total = self.shared.tar_bytes.get().saturating_add(n as u64);
                self.shared.tar_bytes.set(total);
                if total > self.shared.stream_cap.get() {
                    self.shared.stream_exceeded.set(true);
                    return Err(io::Error::other("the archive's tar data passed its limit"));
                }
                Ok(n)
            }
            Err(e) => {
                let copy = copy_error(&e);
                if self.shared.source_error.borrow().is_none() {
                    self.shared.gzip_error.borrow_mut().get_or_insert(e);
                }
                Err(copy)
            }
        }
    }
}

/// Whether `block` is a whole tar header block whose checksum is right.
pub(super) fn is_tar_header(block: &[u8]) -> bool {
    let Ok(block) = <&[u8; TAR_BLOCK]>::try_from(block) else {
        return false;
    };
    let mut header = tar::Header::new_old();
    header.as_mut_bytes().copy_from_slice(block);
    let Ok(stored) = header.cksum() else {
        return false;
    };
    header.set_cksum();
    header.cksum().is_ok_and(|computed| computed == stored)
}

/// The decompressed stream, handed on to a [`Publish`] that wants it (a version larger than
/// the cache keeps the spans of its first pass that fit), cut at each checkpoint the
/// decompressor records, so that each byte is told with the span it belongs to. Each
/// checkpoint is told too, and its window then dropped from the decompressor's list: the
/// [`Publish`] keeps what it needs (on disk), and an unpack holds no window.
pub(super) struct Teed<'p, R> {
    pub(super) inner: Checkpointer<R>,
    publish: &'p dyn Publish,
    /// Whether `publish` wants the stream (asked once).
    on: bool,
    /// Checkpoints told so far.
    told: usize,
}

impl<'p, R: BufRead> Teed<'p, R> {
    pub(super) fn new(inner: Checkpointer<R>, publish: &'p dyn Publish) -> Self {
        Teed {
            inner,
            on: publish.wants_stream(),
            publish,
            told: 0,
        }
    }
}

impl<R: BufRead> Read for Teed<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut at = self.inner.uncompressed_bytes();
        let n = self.inner.read(buf)?;
        // A checkpoint recorded during this read lies within its bytes: the decompressor
        // records them at its output position, between two of the bytes it returns.
        let mut rest = &buf[..n];
        while let Some(output) = self.inner.checkpoints().get(self.told).map(|p| p.output) {
            let cut = usize::try_from(output.saturating_sub(at))
                .map_or(rest.len(), |c| c.min(rest.len()));
            if self.on && cut > 0 {
                self.publish.stream(at, &rest[..cut]);
            }
            rest = &rest[cut..];
            at += cut as u64;
            let k = u32::try_from(self.told).unwrap_or(u32::MAX);
            if let Some(point) = self.inner.checkpoints().get(self.told) {
                self.publish.checkpoint(k, point);
            }
            // Whoever needs the window has it now; the pass does not hold them all.
            drop(self.inner.take_window(self.told));
            self.told += 1;
        }
        if self.on && !rest.is_empty() {
            self.publish.stream(at, rest);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom};

    use super::*;

    #[test]
    fn a_skip_reads_forward_and_counts_what_it_skipped() {
        let shared = Rc::new(Shared::default());
        shared.stream_cap.set(u64::MAX);
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut input = TarInput::new(&data[..], Rc::clone(&shared));
        let mut first = [0u8; 10];
        input.read_exact(&mut first).unwrap();
        // Past a buffer's worth, landing where the next read starts.
        assert_eq!(input.seek(SeekFrom::Current(70_000)).unwrap(), 70_010);
        assert_eq!(shared.tar_bytes.get(), 70_010);
        let mut next = [0u8; 1];
        input.read_exact(&mut next).unwrap();
        assert_eq!(next[0], data[70_010]);
        // Never back, never from elsewhere, never past the end.
        assert!(input.seek(SeekFrom::Current(-1)).is_err());
        assert!(input.seek(SeekFrom::Start(0)).is_err());
        let e = input.seek(SeekFrom::Current(1_000_000)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_skip_is_held_to_the_metadata_budget() {
        let shared = Rc::new(Shared::default());
        shared.stream_cap.set(u64::MAX);
        shared.metadata_budget.set(Some(100));
        let data = vec![0u8; 1000];
        let mut input = TarInput::new(&data[..], Rc::clone(&shared));
        assert!(input.seek(SeekFrom::Current(500)).is_err());
        assert!(shared.metadata_exceeded.get());
    }
}
