//! Random access into a gzip archive: the decompressor checkpoints ("access points") that
//! let any byte range of the uncompressed stream be inflated again without decompressing
//! everything before it.
//!
//! This is the technique of zlib's `examples/zran.c` (also used by SOCI's zinfo and by
//! `indexed_gzip`). A deflate stream is a sequence of blocks; at the boundary between two
//! blocks, the decoder's whole state is the bit position in the compressed stream and the
//! last 32 KiB of output (the most a match can reach back). So while the archive is read
//! once, front to back, [`Checkpointer`] records at some block boundaries a [`Checkpoint`]:
//! the compressed offset of the next block's first whole byte, the 0 to 7 bits of the byte
//! before it that still belong to the next block (and that byte), the uncompressed offset,
//! and the window of output before it. Later, [`inflate_from`] starts a raw inflate there
//! (`inflatePrime` for the stray bits, `inflateSetDictionary` for the window) and needs only
//! the compressed bytes from [`Checkpoint::input`] on: what one HTTP range request returns.
//!
//! A checkpoint is recorded at the first block boundary after at least the spacing (in
//! compressed bytes, as that is what a later range request costs) has passed since the
//! previous one. The start of each gzip member's deflate data is a checkpoint too when as
//! much has passed (it needs no window: a member starts with an empty history), and the
//! first member's start always is one, so that every uncompressed offset has a checkpoint
//! at or before it. [`SeekIndex`] is the list in a compact, versioned, checked byte image
//! (each window deflated).
//!
//! The block boundaries and stray bits are only visible through zlib's C interface
//! (`inflate(Z_BLOCK)`, `data_type`, `inflatePrime`), which flate2 does not expose: the
//! module drives the same zlib-rs that flate2 runs on through `libz-rs-sys`, inside one
//! small type (`raw::Inflater`) that holds all the unsafe code.
//!
//! This module owns the checkpoints and their encoding; where the index is stored, which
//! range to fetch and how the content is checked afterwards belong to its callers.

use std::fmt;
use std::io::{self, BufRead, Read, Write};

use flate2::write::DeflateEncoder;
use flate2::{Compression, Decompress, FlushDecompress, Status};

/// Bump when the byte image of [`SeekIndex`] changes; `seek_format_is_pinned` (in
/// `seek_tests.rs`) pins the current one.
pub const SEEK_FORMAT_VERSION: u32 = 1;
/// Compressed bytes between two checkpoints, at least, unless told otherwise. At 4 MiB the
/// index is about 0.4% of the archive for text-like data and 0.7% for incompressible data
/// (under 1%; at 1 MiB it is 1.5 - 3%: see `doc/BENCHMARKS.md`), and a read inflates from
/// 2 MiB of compressed data before it on average.
pub const DEFAULT_SPACING: u64 = 4 << 20;
/// The deflate window: the most output a checkpoint must keep.
pub const WINDOW_SIZE: usize = 32 * 1024;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// windowBits for a gzip member with its header and trailer (CRC-32, ISIZE) checked.
const GZIP_BITS: i32 = 15 + 16;
/// windowBits for a raw deflate stream (a resume starts in the middle of one).
const RAW_BITS: i32 = -15;
/// The gzip trailer: CRC-32 and ISIZE.
const TRAILER: u8 = 8;
/// Input buffer of [`Resume`]: large reads keep the per-call cost of the source low.
const RESUME_BUFFER: usize = 128 * 1024;
/// Consecutive inflate calls that consume, produce and reach nothing before the decoder is
/// declared stuck (zlib always makes progress with input and room for output; this only
/// turns a decoder bug into an error instead of a loop).
const MAX_STALLS: u32 = 4;

/// The state of the decoder at a deflate block boundary (or the start of a gzip member's
/// deflate data), from which the uncompressed stream can be inflated again.
#[derive(Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Compressed offset (from the start of the archive) of the first whole byte of the
    /// next block: a resume reads the archive from here.
    pub input: u64,
    /// Uncompressed offset (across all members) of the first byte the next block produces.
    pub output: u64,
    /// How many high bits (0 to 7) of the byte at `input - 1` belong to the next block.
    pub bits: u8,
    /// The byte at `input - 1` when `bits > 0` (0 otherwise): kept so that a resume needs no
    /// byte before `input`.
    pub byte: u8,
    /// Up to [`WINDOW_SIZE`] bytes of this member's output just before `output` (fewer
    /// near the start of a member, none at its start).
    pub window: Vec<u8>,
}

impl Checkpoint {
    /// This checkpoint without its window (which its owner keeps elsewhere).
    pub fn clone_lean(&self) -> Checkpoint {
        Checkpoint {
            input: self.input,
            output: self.output,
            bits: self.bits,
            byte: self.byte,
            window: Vec::new(),
        }
    }
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("input", &self.input)
            .field("output", &self.output)
            .field("bits", &self.bits)
            .field("byte", &self.byte)
            .field("window_len", &self.window.len())
            .finish()
    }
}

/// Where the forward pass is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Before a member (the first one, or after the trailer of the previous one).
    NextMember,
    /// Inside a member; `header` until the member's header has been read.
    Member { header: bool },
    /// After the last member (and before any trailing data).
    Done,
    /// After an error: every later read repeats it.
    Failed,
}

/// A [`Read`] of the uncompressed content of a gzip stream of one or more members, which
/// records [`Checkpoint`]s on the way.
///
/// Each member's CRC-32 and length (ISIZE) are checked against its trailer. As with
/// `gzip -d`, bytes after the last member that do not start another member (zero padding
/// some tools add) end the stream with a warning, not an error ([`Self::trailing_data`]).
/// The checkpoints depend only on the archive and the spacing, not on the sizes of the
/// reads.
pub struct Checkpointer<R> {
    input: R,
    inflater: raw::Inflater,
    spacing: u64,
    pass: Pass,
    /// The first error, repeated by every later read.
    failure: Option<(io::ErrorKind, String)>,
    points: Vec<Checkpoint>,
    /// `(input, output)` of the last checkpoint recorded (kept when the list is taken).
    last: Option<(u64, u64)>,
    /// Compressed bytes consumed (the offset of the next unread byte).
    compressed: u64,
    uncompressed: u64,
    /// The last byte the decoder consumed: the one at `compressed - 1`.
    last_byte: u8,
    member_start: u64,
    members: u64,
    stalls: u32,
    trailing: bool,
}

impl<R: BufRead> Checkpointer<R> {
    /// A checkpointer with [`DEFAULT_SPACING`].
    pub fn new(input: R) -> io::Result<Self> {
        Self::with_spacing(input, DEFAULT_SPACING)
    }

    /// A checkpointer that records a checkpoint every `spacing` compressed bytes or more
    /// (0 is taken as 1).
    pub fn with_spacing(input: R, spacing: u64) -> io::Result<Self> {
        Ok(Self {
            input,
            inflater: raw::Inflater::new(GZIP_BITS)?,
            spacing: spacing.max(1),
            pass: Pass::NextMember,
            failure: None,
            points: Vec::new(),
            last: None,
            compressed: 0,
            uncompressed: 0,
            last_byte: 0,
            member_start: 0,
            members: 0,
            stalls: 0,
            trailing: false,
        })
    }

    /// The checkpoints recorded so far (since the last [`Self::take_checkpoints`]).
    pub fn checkpoints(&self) -> &[Checkpoint] {
        &self.points
    }

    /// Take the window of checkpoint `i` out of the list (its owner keeps it elsewhere, see
    /// [`SeekWriter`]): a first pass need not hold 32 KiB per 4 MiB of archive.
    pub fn take_window(&mut self, i: usize) -> Vec<u8> {
        self.points
            .get_mut(i)
            .map(|p| std::mem::take(&mut p.window))
            .unwrap_or_default()
    }

    /// Moves the checkpoints recorded so far out (later ones are recorded as before).
    pub fn take_checkpoints(&mut self) -> Vec<Checkpoint> {
        std::mem::take(&mut self.points)
    }

    /// Compressed bytes consumed so far (at the end: the archive's length without any
    /// trailing data).
    pub fn compressed_bytes(&self) -> u64 {
        self.compressed
    }

    /// Uncompressed bytes produced so far.
    pub fn uncompressed_bytes(&self) -> u64 {
        self.uncompressed
    }

    /// The spacing in use.
    pub fn spacing(&self) -> u64 {
        self.spacing
    }

    /// Whether the last member ended with a good trailer and nothing (or only trailing data)
    /// followed: the stream was read to its end.
    pub fn is_finished(&self) -> bool {
        self.pass == Pass::Done
    }

    /// Whether bytes that do not start a gzip member followed the last member (ignored).
    pub fn trailing_data(&self) -> bool {
        self.trailing
    }

    /// The index of the whole archive, once it was read to its end ([`Self::is_finished`]);
    /// `None` before (its lengths would be wrong).
    pub fn into_index(self) -> Option<SeekIndex> {
        let finished = self.is_finished();
        finished.then_some(SeekIndex {
            compressed_len: self.compressed,
            uncompressed_len: self.uncompressed,
            spacing: self.spacing,
            points: self.points,
        })
    }

    pub fn get_ref(&self) -> &R {
        &self.input
    }

    /// The source, positioned after the last byte the decoder consumed.
    pub fn into_inner(self) -> R {
        self.input
    }

    fn fail(&mut self, kind: io::ErrorKind, message: String) -> io::Error {
        self.pass = Pass::Failed;
        self.failure = Some((kind, message.clone()));
        io::Error::new(kind, message)
    }

    /// Keeps a source error to repeat it.
    fn source_error(&mut self, e: io::Error) -> io::Error {
        self.pass = Pass::Failed;
        self.failure = Some((e.kind(), e.to_string()));
        e
    }

    /// Looks at what follows a member (or the start): another member, the end, or trailing
    /// data.
    fn next_member(&mut self) -> io::Result<()> {
        let first = match fill_buf(&mut self.input) {
            Ok(avail) => avail.first().copied(),
            Err(e) => return Err(self.source_error(e)),
        };
        match first {
            None if self.members == 0 => Err(self.fail(
                io::ErrorKind::UnexpectedEof,
                "the archive is empty: a gzip stream has at least one member".to_string(),
            )),
            None => {
                self.pass = Pass::Done;
                Ok(())
            }
            Some(b) if b != GZIP_MAGIC[0] && self.members > 0 => {
                tracing::warn!(
                    offset = self.compressed,
                    "ignoring trailing data after the archive's gzip stream"
                );
                self.trailing = true;
                self.pass = Pass::Done;
                Ok(())
            }
            Some(_) => {
                // A first byte that is not gzip's is left to zlib, whose header check names
                // the fault.
                if self.members > 0 {
                    if let Err(e) = self.inflater.reset(GZIP_BITS) {
                        return Err(self.fail(e.kind(), e.to_string()));
                    }
                }
                self.members += 1;
                self.member_start = self.compressed;
                self.pass = Pass::Member { header: true };
                Ok(())
            }
        }
    }

    /// Records a checkpoint at the decoder's position (a block boundary or the end of a
    /// member's header) if it is due and moves the output forward.
    fn maybe_record(&mut self, bits: u8) {
        let due = match self.last {
            None => true,
            Some((input, output)) => {
                self.compressed - input >= self.spacing && self.uncompressed > output
            }
        };
        if !due {
            return;
        }
        // Only a corrupted stream state makes this fail; a missing checkpoint costs only a
        // longer inflate later.
        let Ok(window) = self.inflater.window() else {
            return;
        };
        self.points.push(Checkpoint {
            input: self.compressed,
            output: self.uncompressed,
            bits,
            byte: if bits > 0 { self.last_byte } else { 0 },
            window,
        });
        self.last = Some((self.compressed, self.uncompressed));
    }

    /// One inflate call into `out`; returns the bytes written (0: call again).
    fn step(&mut self, out: &mut [u8], header: bool) -> io::Result<usize> {
        let next_due = match self.last {
            None => 0,
            Some((input, _)) => input.saturating_add(self.spacing),
        };
        // Stop at block boundaries only when a checkpoint is due (or at the end of the
        // header, for the member start): between checkpoints the decoder runs freely, and
        // its input is cut where one becomes due, so that where checkpoints fall does not
        // depend on the sizes of the reads.
        let due = header || self.compressed >= next_due;
        let compressed = self.compressed;
        let avail = match fill_buf(&mut self.input) {
            Ok(avail) => avail,
            Err(e) => return Err(self.source_error(e)),
        };
        let eof = avail.is_empty();
        let limit = if due {
            avail.len()
        } else {
            avail
                .len()
                .min(usize::try_from(next_due - compressed).unwrap_or(usize::MAX))
        };
        let flush = if due { raw::Z_BLOCK } else { raw::Z_NO_FLUSH };
        let step = self.inflater.inflate(&avail[..limit], out, flush);
        if step.read > 0 {
            self.last_byte = avail[step.read - 1];
        }
        self.input.consume(step.read);
        self.compressed += step.read as u64;
        self.uncompressed += step.written as u64;
        match step.code {
            raw::Z_STREAM_END => {
                self.pass = Pass::NextMember;
                self.stalls = 0;
                return Ok(step.written);
            }
            raw::Z_OK | raw::Z_BUF_ERROR => {}
            _ => return Err(self.decode_error()),
        }
        // data_type: the unused bits of the last byte consumed (below 8 at a boundary),
        // plus 64 in the last block, plus 128 at a block boundary or the end of the header.
        let boundary = flush == raw::Z_BLOCK
            && step.data_type & 0x80 != 0
            && step.data_type & 0x40 == 0
            && step.data_type & 0x38 == 0;
        if boundary {
            if header {
                // The end of the member's header: the start of its deflate data is a
                // checkpoint like a block boundary (with an empty window).
                self.pass = Pass::Member { header: false };
            }
            // Below 8 (checked above).
            self.maybe_record((step.data_type & 7) as u8);
        }
        if step.read == 0 && step.written == 0 && !boundary {
            if eof {
                return Err(self.fail(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the gzip stream ends in the middle of the member that starts at \
                         compressed byte {}: the archive is truncated (download it again)",
                        self.member_start
                    ),
                ));
            }
            self.stalls += 1;
            if self.stalls >= MAX_STALLS {
                return Err(self.fail(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the gzip decoder made no progress at compressed byte {}",
                        self.compressed
                    ),
                ));
            }
        } else {
            self.stalls = 0;
        }
        Ok(step.written)
    }

    fn decode_error(&mut self) -> io::Error {
        let message = self.inflater.message();
        let text = match message.as_str() {
            "incorrect data check" => format!(
                "the gzip member that starts at compressed byte {} fails its CRC-32 check: \
                 the archive is damaged (download it again)",
                self.member_start
            ),
            "incorrect length check" => format!(
                "the gzip member that starts at compressed byte {} holds a different \
                 length than its trailer (ISIZE) says: the archive is damaged (download it \
                 again)",
                self.member_start
            ),
            _ => format!(
                "the gzip stream is damaged near compressed byte {} ({message}): the archive \
                 is not a valid gzip file",
                self.compressed
            ),
        };
        self.fail(io::ErrorKind::InvalidData, text)
    }
}

/// `input.fill_buf()`, retried when interrupted.
fn fill_buf<R: BufRead>(input: &mut R) -> io::Result<&[u8]> {
    loop {
        match input.fill_buf() {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    input.fill_buf()
}

/// The error of a reader that failed before, for every later read.
fn failed_again(failure: &Option<(io::ErrorKind, String)>) -> io::Error {
    let (kind, message) = failure
        .clone()
        .unwrap_or((io::ErrorKind::Other, "the gzip stream failed".into()));
    io::Error::new(kind, message)
}

impl<R: BufRead> Read for Checkpointer<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.pass {
                Pass::Done => return Ok(0),
                Pass::Failed => return Err(failed_again(&self.failure)),
                Pass::NextMember => self.next_member()?,
                Pass::Member { header } => {
                    let n = self.step(buf, header)?;
                    if n > 0 {
                        return Ok(n);
                    }
                }
            }
        }
    }
}

/// Where a [`Resume`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Inflating a member (`raw`: the one the checkpoint lies in, whose header was not read
    /// and whose trailer is not checked).
    Member {
        raw: bool,
    },
    /// Skipping the unchecked trailer of the member the checkpoint lies in.
    Trailer(u8),
    NextMember,
    Done,
    Failed,
}

/// The uncompressed stream from a [`Checkpoint`] on: see [`inflate_from`].
pub struct Resume<R> {
    input: R,
    inflater: raw::Inflater,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    eof: bool,
    phase: Phase,
    failure: Option<(io::ErrorKind, String)>,
    /// Compressed offset of `buf[pos]` (for messages).
    offset: u64,
    stalls: u32,
}

/// Inflates the archive again from `point`: `compressed` must yield the archive's bytes
/// from `point.input` on (to its end, or at least as far as the caller will read). The
/// reader yields the uncompressed stream from `point.output` on, through the following
/// gzip members; a stream cut short is an `UnexpectedEof` error, never a short read.
///
/// The CRC-32 of the member the checkpoint lies in cannot be checked from its middle and is
/// not; the members after it are read from their headers and are checked. Callers check the
/// content they read with their own checksums.
pub fn inflate_from<R: Read>(point: &Checkpoint, compressed: R) -> io::Result<Resume<R>> {
    Resume::new(point, compressed)
}

impl<R: Read> Resume<R> {
    /// See [`inflate_from`].
    pub fn new(point: &Checkpoint, compressed: R) -> io::Result<Self> {
        if point.bits > 7 || point.window.len() > WINDOW_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a valid checkpoint: {point:?}"),
            ));
        }
        let mut inflater = raw::Inflater::new(RAW_BITS)?;
        if point.bits > 0 {
            // The high `bits` bits of the byte before `input` start the next block.
            inflater.prime(point.bits, point.byte >> (8 - point.bits))?;
        }
        inflater.set_dictionary(&point.window)?;
        Ok(Self {
            input: compressed,
            inflater,
            buf: vec![0; RESUME_BUFFER].into_boxed_slice(),
            pos: 0,
            end: 0,
            eof: false,
            phase: Phase::Member { raw: true },
            failure: None,
            offset: point.input,
            stalls: 0,
        })
    }

    pub fn into_inner(self) -> R {
        self.input
    }

    fn fail(&mut self, kind: io::ErrorKind, message: String) -> io::Error {
        self.phase = Phase::Failed;
        self.failure = Some((kind, message.clone()));
        io::Error::new(kind, message)
    }

    fn truncated(&mut self) -> io::Error {
        self.fail(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the compressed data ends at byte {} of the archive, in the middle of a gzip \
                 member: the range read is too short or the archive is truncated",
                self.offset
            ),
        )
    }

    /// Makes input available unless the source is at its end.
    fn refill(&mut self) -> io::Result<()> {
        if self.pos < self.end || self.eof {
            return Ok(());
        }
        loop {
            match self.input.read(&mut self.buf) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => {
                    self.pos = 0;
                    self.end = n;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.phase = Phase::Failed;
                    self.failure = Some((e.kind(), e.to_string()));
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        self.offset += n as u64;
    }
}

impl<R: Read> Read for Resume<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            match self.phase {
                Phase::Done => return Ok(0),
                Phase::Failed => return Err(failed_again(&self.failure)),
                Phase::Trailer(left) => {
                    self.refill()?;
                    if self.pos == self.end {
                        return Err(self.truncated());
                    }
                    let n = (self.end - self.pos).min(usize::from(left));
                    self.consume(n);
                    // n <= left, a u8.
                    let left = left - n as u8;
                    self.phase = if left == 0 {
                        Phase::NextMember
                    } else {
                        Phase::Trailer(left)
                    };
                }
                Phase::NextMember => {
                    self.refill()?;
                    if self.pos == self.end || self.buf[self.pos] != GZIP_MAGIC[0] {
                        // The end, or trailing data (ignored, as by the forward pass).
                        self.phase = Phase::Done;
                        continue;
                    }
                    if let Err(e) = self.inflater.reset(GZIP_BITS) {
                        return Err(self.fail(e.kind(), e.to_string()));
                    }
                    self.phase = Phase::Member { raw: false };
                }
                Phase::Member { raw } => {
                    self.refill()?;
                    let step =
                        self.inflater
                            .inflate(&self.buf[self.pos..self.end], out, raw::Z_NO_FLUSH);
                    self.consume(step.read);
                    match step.code {
                        raw::Z_STREAM_END => {
                            self.phase = if raw {
                                Phase::Trailer(TRAILER)
                            } else {
                                Phase::NextMember
                            };
                        }
                        raw::Z_OK | raw::Z_BUF_ERROR => {
                            if step.read == 0 && step.written == 0 {
                                if self.pos == self.end && self.eof {
                                    return Err(self.truncated());
                                }
                                self.stalls += 1;
                                if self.stalls >= MAX_STALLS {
                                    let offset = self.offset;
                                    return Err(self.fail(
                                        io::ErrorKind::InvalidData,
                                        format!(
                                            "the gzip decoder made no progress at compressed \
                                             byte {offset}"
                                        ),
                                    ));
                                }
                            } else {
                                self.stalls = 0;
                            }
                        }
                        _ => {
                            let message = self.inflater.message();
                            let offset = self.offset;
                            return Err(self.fail(
                                io::ErrorKind::InvalidData,
                                format!(
                                    "the gzip stream is damaged near compressed byte {offset} \
                                     ({message}), or the checkpoint does not belong to it"
                                ),
                            ));
                        }
                    }
                    if step.written > 0 {
                        return Ok(step.written);
                    }
                }
            }
        }
    }
}

/// The checkpoints of a whole archive, with its lengths: what is stored beside it.
///
/// The byte image ([`Self::encode`], [`Self::decode`]), little-endian:
///
/// ```text
/// header  48 bytes   magic "VM0FSEEK", format version (u32), point count (u32),
///                    compressed_len (u64), uncompressed_len (u64), spacing (u64),
///                    CRC-32 of the image without these 4 bytes (u32), 4 zero bytes
/// points  each:      input (u64), output (u64), bits (u8), byte (u8), window length (u16),
///                    deflated window length (u32), the window deflated (raw deflate)
/// ```
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SeekIndex {
    pub compressed_len: u64,
    pub uncompressed_len: u64,
    pub spacing: u64,
    /// In order of offset, both offsets strictly increasing.
    pub points: Vec<Checkpoint>,
}

/// Why a [`SeekIndex`] image was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeekError {
    #[error("damaged seek index: not a seek index (bad magic bytes)")]
    Magic,
    #[error(
        "seek index of format {found}, this build reads format {SEEK_FORMAT_VERSION}: \
         build the index again"
    )]
    Version { found: u32 },
    #[error("damaged seek index: its checksum does not match (build the index again)")]
    Checksum,
    #[error("damaged seek index: {0} (build the index again)")]
    Damaged(String),
}

const MAGIC: &[u8; 8] = b"VM0FSEEK";
const HEADER: usize = 48;
const CRC_AT: usize = 40;
/// The fixed part of a point: input, output, bits, byte, window length, packed length.
const POINT: usize = 8 + 8 + 1 + 1 + 2 + 4;

fn image_crc(image: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&image[..CRC_AT]);
    h.update(&image[CRC_AT + 4..]);
    h.finalize()
}

/// `window` deflated (raw deflate).
fn deflate_window(window: &[u8]) -> Vec<u8> {
    let mut encoder =
        DeflateEncoder::new(Vec::with_capacity(window.len() / 2), Compression::new(6));
    // Writes into a Vec cannot fail.
    encoder
        .write_all(window)
        .expect("writing into a Vec cannot fail");
    encoder.finish().expect("writing into a Vec cannot fail")
}

/// Inflates a stored window, which must inflate to exactly `len` bytes using all of `packed`.
fn inflate_window(packed: &[u8], len: usize) -> Result<Vec<u8>, SeekError> {
    let bad = || SeekError::Damaged("a checkpoint's window does not inflate".into());
    // One byte of room more than expected, to see a window that would be longer.
    let mut out = vec![0; len + 1];
    let mut z = Decompress::new(false);
    let status = z
        .decompress(packed, &mut out, FlushDecompress::Finish)
        .map_err(|_| bad())?;
    if status != Status::StreamEnd
        || z.total_in() != packed.len() as u64
        || z.total_out() != len as u64
    {
        return Err(bad());
    }
    out.truncate(len);
    Ok(out)
}

/// Append the record of `p` to `image`: its fixed part, then its window deflated. Returns
/// where the deflated window lies in `image` and its length.
fn encode_point(image: &mut Vec<u8>, p: &Checkpoint) -> (usize, usize) {
    assert!(p.window.len() <= WINDOW_SIZE, "a window of at most 32 KiB");
    let packed = deflate_window(&p.window);
    image.extend_from_slice(&p.input.to_le_bytes());
    image.extend_from_slice(&p.output.to_le_bytes());
    image.push(p.bits);
    image.push(p.byte);
    // At most WINDOW_SIZE (32768), so within u16.
    image.extend_from_slice(&(p.window.len() as u16).to_le_bytes());
    // Deflate of 32 KiB is well under 4 GiB.
    image.extend_from_slice(&(packed.len() as u32).to_le_bytes());
    let at = image.len();
    image.extend_from_slice(&packed);
    (at, packed.len())
}

/// Writes the image [`SeekIndex::encode`] makes one checkpoint at a time, as a first pass
/// records them, so that no window stays in memory: each is deflated into the file at
/// once, and read back from it when it is needed ([`read_window`]). The header, which
/// counts the points and holds the image's checksum, is written last ([`Self::finish`]).
pub struct SeekWriter {
    file: std::fs::File,
    len: u64,
    count: u32,
    /// The last point's offsets: the points must be pushed in increasing order.
    last: Option<(u64, u64)>,
}

impl SeekWriter {
    /// A new image at `path` (replacing any file there).
    pub fn create(path: &std::path::Path) -> io::Result<SeekWriter> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.write_all(&[0; HEADER])?;
        Ok(SeekWriter {
            file,
            len: HEADER as u64,
            count: 0,
            last: None,
        })
    }

    /// Append `point` (after every point pushed before it); where its window lies.
    pub fn push(&mut self, point: &Checkpoint) -> io::Result<WindowAt> {
        if self
            .last
            .is_some_and(|(input, output)| point.input <= input || point.output < output)
            || point.window.len() > WINDOW_SIZE
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a checkpoint out of order: {point:?}"),
            ));
        }
        let count = self
            .count
            .checked_add(1)
            .ok_or_else(|| io::Error::other("more than 2^32 checkpoints"))?;
        let mut record = Vec::with_capacity(POINT + WINDOW_SIZE / 2);
        let (at, packed_len) = encode_point(&mut record, point);
        self.file.write_all(&record)?;
        let window = WindowAt {
            offset: self.len + at as u64,
            packed_len,
            len: point.window.len(),
        };
        self.len += record.len() as u64;
        self.count = count;
        self.last = Some((point.input, point.output));
        Ok(window)
    }

    /// The file being written (to read windows from while it is: see [`read_window`]).
    pub fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// Write the header of the archive's lengths and the spacing, with the checksum of
    /// the whole image, and flush it to disk.
    pub fn finish(
        self,
        compressed_len: u64,
        uncompressed_len: u64,
        spacing: u64,
    ) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&SEEK_FORMAT_VERSION.to_le_bytes());
        header.extend_from_slice(&self.count.to_le_bytes());
        header.extend_from_slice(&compressed_len.to_le_bytes());
        header.extend_from_slice(&uncompressed_len.to_le_bytes());
        header.extend_from_slice(&spacing.to_le_bytes());
        header.extend_from_slice(&[0; 8]);
        // The checksum covers the whole image but its own four bytes.
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header[..CRC_AT]);
        crc.update(&header[CRC_AT + 4..]);
        let mut buf = vec![0u8; 256 << 10];
        let mut at = HEADER as u64;
        while at < self.len {
            let n = usize::try_from(self.len - at).map_or(buf.len(), |l| l.min(buf.len()));
            self.file.read_exact_at(&mut buf[..n], at)?;
            crc.update(&buf[..n]);
            at += n as u64;
        }
        header[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.finalize().to_le_bytes());
        self.file.write_all_at(&header, 0)?;
        self.file.sync_all()
    }
}

impl SeekIndex {
    /// The checkpoint to resume from to read the uncompressed byte at `offset`: the last one
    /// at or before it (`None` if the list has none there).
    pub fn point_for(&self, offset: u64) -> Option<&Checkpoint> {
        let after = self.points.partition_point(|p| p.output <= offset);
        after.checked_sub(1).map(|i| &self.points[i])
    }

    /// The byte image (see the type's documentation).
    ///
    /// # Panics
    ///
    /// Never for an index made by [`Checkpointer`] or [`Self::decode`]; a hand-made one with
    /// more than `u32::MAX` points or a window longer than [`WINDOW_SIZE`] is a bug of its
    /// maker and panics.
    pub fn encode(&self) -> Vec<u8> {
        let count = u32::try_from(self.points.len()).expect("fewer than 2^32 checkpoints");
        let mut image = Vec::with_capacity(HEADER + self.points.len() * (POINT + WINDOW_SIZE / 3));
        image.extend_from_slice(MAGIC);
        image.extend_from_slice(&SEEK_FORMAT_VERSION.to_le_bytes());
        image.extend_from_slice(&count.to_le_bytes());
        image.extend_from_slice(&self.compressed_len.to_le_bytes());
        image.extend_from_slice(&self.uncompressed_len.to_le_bytes());
        image.extend_from_slice(&self.spacing.to_le_bytes());
        image.extend_from_slice(&[0; 8]);
        for p in &self.points {
            encode_point(&mut image, p);
        }
        let crc = image_crc(&image);
        image[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        image
    }

    /// Reads an image made by [`Self::encode`], checking all of it: the input is untrusted
    /// (a damaged image is an error, never a panic or an allocation larger than the image
    /// allows).
    pub fn decode(image: &[u8]) -> Result<SeekIndex, SeekError> {
        Self::decode_with(image, true).map(|(index, _)| index)
    }

    /// [`Self::decode`] without holding the windows (32 KiB each once inflated): the points
    /// with empty windows, and where each one's window lies in the image, to be read when
    /// it is needed ([`read_window`]). Everything is checked as by `decode`, the windows
    /// included (each is inflated once, then dropped).
    pub fn decode_lean(image: &[u8]) -> Result<(SeekIndex, Vec<WindowAt>), SeekError> {
        Self::decode_with(image, false)
    }

    fn decode_with(image: &[u8], keep: bool) -> Result<(SeekIndex, Vec<WindowAt>), SeekError> {
        decode_from(image, image.len() as u64, keep)
    }

    /// [`Self::decode_lean`] of the image in `file`, read in order a bounded piece at a time:
    /// an index of any size is checked without holding its image (0.5 – 1 % of the archive)
    /// in memory.
    pub fn decode_lean_file(file: &std::fs::File) -> Result<(SeekIndex, Vec<WindowAt>), SeekError> {
        let len = file
            .metadata()
            .map_err(|e| SeekError::Damaged(format!("it cannot be read: {e}")))?
            .len();
        decode_from(
            io::BufReader::with_capacity(256 << 10, FromStart { file, pos: 0 }),
            len,
            false,
        )
    }
}

/// A file read from its start with `pread`, whatever its own offset (which a reader of its
/// windows may share).
struct FromStart<'a> {
    file: &'a std::fs::File,
    pos: u64,
}

impl Read for FromStart<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The most bytes one window takes deflated: 32 KiB that do not compress, in stored
/// blocks, and their few bytes of framing.
const MAX_PACKED: usize = WINDOW_SIZE + 1024;

/// An image read in order, a bounded piece at a time, its checksum taken as it goes.
struct ImageReader<R> {
    input: R,
    /// Bytes of the image not read yet.
    left: u64,
    /// The offset of the next byte.
    at: u64,
    crc: crc32fast::Hasher,
}

impl<R: Read> ImageReader<R> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), SeekError> {
        if buf.len() as u64 > self.left {
            return Err(SeekError::Damaged(
                "it ends in the middle of a point".into(),
            ));
        }
        self.input
            .read_exact(buf)
            .map_err(|e| SeekError::Damaged(format!("it cannot be read: {e}")))?;
        self.crc.update(buf);
        self.left -= buf.len() as u64;
        self.at += buf.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SeekError> {
        let mut a = [0; N];
        self.fill(&mut a)?;
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, SeekError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, SeekError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, SeekError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, SeekError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// The checksum of the whole image: what is left is read (and hashed) too.
    fn finish(mut self) -> Result<u32, SeekError> {
        let mut buf = vec![0u8; 64 << 10];
        while self.left > 0 {
            let n = usize::try_from(self.left).map_or(buf.len(), |l| l.min(buf.len()));
            self.fill(&mut buf[..n])?;
        }
        Ok(self.crc.finalize())
    }
}

/// Read an image of `len` bytes from `input`, checking all of it: the input is untrusted (a
/// damaged image is an error, never a panic or an allocation larger than the image allows).
/// Its checksum is taken as it is read: an image whose points do not hold together is
/// `Checksum` when its checksum is wrong too (a damaged file), `Damaged` when it is right
/// (a writer's bug). With `keep`, the windows are held, else only where each lies.
fn decode_from(
    input: impl Read,
    len: u64,
    keep: bool,
) -> Result<(SeekIndex, Vec<WindowAt>), SeekError> {
    let mut r = ImageReader {
        input,
        left: len,
        at: 0,
        crc: crc32fast::Hasher::new(),
    };
    if len < MAGIC.len() as u64 || &r.array::<8>()? != MAGIC {
        return Err(SeekError::Magic);
    }
    if len < HEADER as u64 {
        return Err(SeekError::Damaged("it is shorter than its header".into()));
    }
    let version = r.u32()?;
    if version != SEEK_FORMAT_VERSION {
        return Err(SeekError::Version { found: version });
    }
    let count = r.u32()?;
    let compressed_len = r.u64()?;
    let uncompressed_len = r.u64()?;
    let spacing = r.u64()?;
    // The checksum's own bytes are not part of it.
    let mut stored = [0u8; 4];
    r.input
        .read_exact(&mut stored)
        .map_err(|e| SeekError::Damaged(format!("it cannot be read: {e}")))?;
    r.left -= 4;
    r.at += 4;
    let stored = u32::from_le_bytes(stored);
    let reserved = r.u32()?;
    let header = Header {
        count,
        compressed_len,
        uncompressed_len,
        spacing,
        reserved,
    };
    let parsed = decode_points(&mut r, &header, keep);
    if r.finish()? != stored {
        return Err(SeekError::Checksum);
    }
    let (points, windows) = parsed?;
    let index = SeekIndex {
        compressed_len,
        uncompressed_len,
        spacing,
        points,
    };
    Ok((index, windows))
}

/// The fields of an image's header after the format version.
struct Header {
    count: u32,
    compressed_len: u64,
    uncompressed_len: u64,
    spacing: u64,
    reserved: u32,
}

/// The points of an image, read after its header, and where each one's window lies.
fn decode_points<R: Read>(
    r: &mut ImageReader<R>,
    h: &Header,
    keep: bool,
) -> Result<(Vec<Checkpoint>, Vec<WindowAt>), SeekError> {
    let damaged = |what: String| Err(SeekError::Damaged(what));
    if h.reserved != 0 {
        return damaged("its reserved header bytes are not zero".into());
    }
    if h.spacing == 0 {
        return damaged("its spacing is 0".into());
    }
    // Each point takes POINT bytes or more: bounds the allocation by the image's size.
    let count = usize::try_from(h.count).unwrap_or(usize::MAX);
    if count as u64 > r.left / POINT as u64 {
        return damaged(format!("{count} points cannot fit in {} bytes", r.left));
    }
    let mut points: Vec<Checkpoint> = Vec::with_capacity(count);
    let mut windows: Vec<WindowAt> = Vec::with_capacity(count);
    let mut packed = Vec::new();
    for i in 0..count {
        let input = r.u64()?;
        let output = r.u64()?;
        let bits = r.u8()?;
        let byte = r.u8()?;
        let window_len = usize::from(r.u16()?);
        let packed_len = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
        if bits > 7 || (bits == 0 && byte != 0) {
            return damaged(format!("point {i} has bits {bits} and byte {byte}"));
        }
        if input >= h.compressed_len || output > h.uncompressed_len {
            return damaged(format!(
                "point {i} at {input}/{output} lies past the archive's \
                 {}/{} bytes",
                h.compressed_len, h.uncompressed_len
            ));
        }
        if let Some(prev) = points.last() {
            if input <= prev.input || output <= prev.output {
                return damaged(format!("point {i} does not lie after the one before"));
            }
        }
        if window_len > WINDOW_SIZE || window_len as u64 > output {
            return damaged(format!(
                "point {i} has a window of {window_len} bytes at output {output}"
            ));
        }
        if packed_len > MAX_PACKED {
            return damaged(format!(
                "point {i} has a window of {packed_len} bytes deflated"
            ));
        }
        let at = r.at;
        packed.resize(packed_len, 0);
        r.fill(&mut packed)?;
        let mut window = inflate_window(&packed, window_len)?;
        windows.push(WindowAt {
            offset: at,
            packed_len,
            len: window_len,
        });
        if !keep {
            window = Vec::new();
        }
        points.push(Checkpoint {
            input,
            output,
            bits,
            byte,
            window,
        });
    }
    if r.left > 0 {
        return damaged(format!("{} bytes follow its last point", r.left));
    }
    Ok((points, windows))
}

/// Where a checkpoint's window lies in a seek index image (see [`SeekIndex::decode_lean`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowAt {
    /// Offset of the deflated window in the image.
    pub offset: u64,
    pub packed_len: usize,
    /// Its length once inflated.
    pub len: usize,
}

/// Read and inflate the window `at` from the image in `file`. The file is read again, so
/// it is untrusted again: a window of another length is an error; one whose bytes changed
/// inflates to content that fails its checksums where it is read.
pub fn read_window(file: &std::fs::File, at: &WindowAt) -> Result<Vec<u8>, SeekError> {
    use std::os::unix::fs::FileExt;
    let mut packed = vec![0; at.packed_len];
    file.read_exact_at(&mut packed, at.offset).map_err(|e| {
        SeekError::Damaged(format!("its window at {} cannot be read: {e}", at.offset))
    })?;
    inflate_window(&packed, at.len)
}

/// Checkpoint `k` of `points` (held without their windows), its window read from the
/// image in `file` where `windows` says it lies.
pub fn read_checkpoint(
    points: &[Checkpoint],
    windows: &[WindowAt],
    file: &std::fs::File,
    k: usize,
) -> Result<Checkpoint, SeekError> {
    let (Some(point), Some(at)) = (points.get(k), windows.get(k)) else {
        return Err(SeekError::Damaged(format!("it has no checkpoint {k}")));
    };
    Ok(Checkpoint {
        window: read_window(file, at)?,
        ..point.clone_lean()
    })
}

/// zlib's C interface (as implemented by zlib-rs): the only unsafe code of the module.
mod raw {
    use std::ffi::{c_int, c_uint, CStr};
    use std::io;

    use libz_rs_sys as z;

    pub(super) use z::{Z_BLOCK, Z_BUF_ERROR, Z_NO_FLUSH, Z_OK, Z_STREAM_END};

    /// The outcome of one [`Inflater::inflate`] call.
    pub(super) struct Step {
        pub(super) code: c_int,
        pub(super) read: usize,
        pub(super) written: usize,
        pub(super) data_type: c_int,
    }

    /// An initialized inflate stream. The `z_stream` lives in a `Box` because zlib's state
    /// points back to it (and checks that it did not move); between calls its input and
    /// output pointers are null, so that it never refers to memory it does not own.
    pub(super) struct Inflater {
        strm: Box<z::z_stream>,
    }

    // SAFETY: the z_stream and the state it points to are owned by this value alone
    // (allocated by inflateInit2_ through the Rust global allocator, which any thread may
    // free), and between calls it holds no pointer to anything else (`next_in`/`next_out`
    // are reset to null after each call; `msg` points to static strings).
    unsafe impl Send for Inflater {}

    fn error(what: &str, code: c_int) -> io::Error {
        io::Error::other(format!("zlib {what} failed (code {code})"))
    }

    impl Inflater {
        /// `inflateInit2` with `window_bits` (15 + 16: gzip; -15: raw deflate).
        pub(super) fn new(window_bits: c_int) -> io::Result<Self> {
            // Default sets zalloc/zfree/opaque to zlib-rs's Rust allocator.
            let mut strm = Box::<z::z_stream>::default();
            let size = c_int::try_from(size_of::<z::z_stream>())
                .map_err(|_| error("inflateInit2", z::Z_VERSION_ERROR))?;
            // SAFETY: `strm` is a valid, exclusively borrowed z_stream with zalloc, zfree and
            // opaque set; zlibVersion() is a static NUL-terminated string; `size` is the size
            // of the struct passed.
            let code = unsafe { z::inflateInit2_(&mut *strm, window_bits, z::zlibVersion(), size) };
            if code != Z_OK {
                // The state was not allocated: nothing to end.
                return Err(error("inflateInit2", code));
            }
            Ok(Self { strm })
        }

        /// One `inflate` call from `input` into `output` (each cut to 4 GiB).
        pub(super) fn inflate(&mut self, input: &[u8], output: &mut [u8], flush: c_int) -> Step {
            let avail_in = c_uint::try_from(input.len()).unwrap_or(c_uint::MAX);
            let avail_out = c_uint::try_from(output.len()).unwrap_or(c_uint::MAX);
            self.strm.next_in = input.as_ptr();
            self.strm.avail_in = avail_in;
            self.strm.next_out = output.as_mut_ptr();
            self.strm.avail_out = avail_out;
            // SAFETY: the stream was initialized by inflateInit2_ and has not moved (boxed);
            // next_in/avail_in describe at most `input` and next_out/avail_out at most
            // `output`, both borrowed for the length of this call, and inflate reads and
            // writes only within them.
            let code = unsafe { z::inflate(&mut *self.strm, flush) };
            let read = (avail_in - self.strm.avail_in) as usize;
            let written = (avail_out - self.strm.avail_out) as usize;
            self.strm.next_in = std::ptr::null();
            self.strm.avail_in = 0;
            self.strm.next_out = std::ptr::null_mut();
            self.strm.avail_out = 0;
            Step {
                code,
                read,
                written,
                data_type: self.strm.data_type,
            }
        }

        /// `inflatePrime`: the next `bits` bits of input are the low bits of `value`.
        pub(super) fn prime(&mut self, bits: u8, value: u8) -> io::Result<()> {
            // SAFETY: the stream was initialized by inflateInit2_ and has not moved.
            let code =
                unsafe { z::inflatePrime(&mut *self.strm, c_int::from(bits), c_int::from(value)) };
            match code {
                Z_OK => Ok(()),
                _ => Err(error("inflatePrime", code)),
            }
        }

        /// `inflateSetDictionary`: the window of a raw stream.
        pub(super) fn set_dictionary(&mut self, window: &[u8]) -> io::Result<()> {
            if window.is_empty() {
                return Ok(());
            }
            let len =
                c_uint::try_from(window.len()).map_err(|_| error("inflateSetDictionary", 0))?;
            // SAFETY: the stream was initialized by inflateInit2_ and has not moved; the
            // pointer and length describe `window`, which zlib only reads (copies).
            let code = unsafe { z::inflateSetDictionary(&mut *self.strm, window.as_ptr(), len) };
            match code {
                Z_OK => Ok(()),
                _ => Err(error("inflateSetDictionary", code)),
            }
        }

        /// The decoder's window: up to 32 KiB of its latest output (this member's only).
        pub(super) fn window(&mut self) -> io::Result<Vec<u8>> {
            let mut len: c_uint = 0;
            // SAFETY: the stream was initialized and has not moved; a null dictionary asks
            // for the length alone, written to `len`, a valid c_uint.
            let code =
                unsafe { z::inflateGetDictionary(&*self.strm, std::ptr::null_mut(), &mut len) };
            if code != Z_OK {
                return Err(error("inflateGetDictionary", code));
            }
            let mut window = vec![0u8; len as usize];
            let mut copied: c_uint = 0;
            // SAFETY: as above; `window` has exactly `len` writable bytes, the length zlib
            // just gave, and nothing changed the stream in between.
            let code =
                unsafe { z::inflateGetDictionary(&*self.strm, window.as_mut_ptr(), &mut copied) };
            if code != Z_OK || copied != len {
                return Err(error("inflateGetDictionary", code));
            }
            Ok(window)
        }

        /// `inflateReset2`: start a new stream (a member) with `window_bits`.
        pub(super) fn reset(&mut self, window_bits: c_int) -> io::Result<()> {
            // SAFETY: the stream was initialized by inflateInit2_ and has not moved.
            let code = unsafe { z::inflateReset2(&mut *self.strm, window_bits) };
            match code {
                Z_OK => Ok(()),
                _ => Err(error("inflateReset2", code)),
            }
        }

        /// zlib's message for the last error.
        pub(super) fn message(&self) -> String {
            if self.strm.msg.is_null() {
                return "no message".into();
            }
            // SAFETY: zlib-rs sets `msg` only to its own static NUL-terminated strings
            // (zlib_rs::inflate asserts the NUL).
            let msg = unsafe { CStr::from_ptr(self.strm.msg) };
            msg.to_string_lossy().into_owned()
        }
    }

    impl Drop for Inflater {
        fn drop(&mut self) {
            // SAFETY: the stream was initialized by inflateInit2_ (a value exists only
            // then), has not moved, and is ended once, here.
            unsafe { z::inflateEnd(&mut *self.strm) };
        }
    }
}
