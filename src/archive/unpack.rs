//! Streaming unpack of a `tar.gz` into a version directory.
//!
//! The pipeline, one member at a time and never the whole archive in memory:
//!
//! ```text
//! source -> Source (counts, keeps the source's errors) -> BufReader (256 KiB)
//!        -> GzMembers (gzip members, one after another) -> TarInput (keeps gzip errors,
//!           bounds the metadata read per member) -> tar::Archive -> Unpacker
//! ```
//!
//! The wrappers exist so that an `io::Error` coming out of the tar reader can be told
//! apart: a failing download, a truncated or corrupt gzip stream, or bad tar data each
//! become their own [`ArchiveError`].
//!
//! Each regular file is published ([`Publish`]) right after its blob is written and closed,
//! and a name a later member takes over is withdrawn before that member writes anything.
//! Published content is complete as the tar stream gave it; the gzip checksum of the whole
//! stream is only known at the end, which is why a version is committed only then.

use std::cell::{Cell, RefCell};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use flate2::bufread::GzDecoder;
use tar::EntryType;

use super::publish::{BlobId, Publish, PublishedFile, PublishedKind, PublishedNode, Step};
use super::tree::{normalize, Content, Meta, Prepared, Replaced, Slot, Tree, Want};
use super::Index;
use crate::size::ByteSize;

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
    /// Regular-file nodes written (and still in the tree: a file replaced by a later member
    /// of the same name is no longer counted).
    pub files: u64,
    /// Content bytes written (of the files counted in `files`).
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
    #[error("cannot write {} in the cache: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where the content of blob `blob` lives under a version directory.
pub fn blob_path(dest: &Path, blob: u32) -> PathBuf {
    dest.join("data").join(blob.to_string())
}

/// Read buffer around the source: large reads keep the per-call overhead of the network
/// stream and of the decompressor's input handling low.
const READ_BUFFER: usize = 256 * 1024;
/// File content is decompressed straight into this buffer and written with one `write`
/// per chunk (so a small file costs one `write`).
const WRITE_CHUNK: usize = 1024 * 1024;
/// Call `progress` after at least this many content bytes.
const PROGRESS_EVERY: u64 = 4 * 1024 * 1024;
/// Most bytes the tar reader may read to get from one member to the next: padding, the
/// headers, GNU long names and pax extensions. The `tar` crate holds long names and pax
/// extensions in memory whole, so this bounds the memory a hostile archive can make it use.
const MAX_MEMBER_METADATA: u64 = 8 * 1024 * 1024;
/// Most decompressed bytes read after the tar's end-of-archive marker (normally a few KiB
/// of zero padding) to let gzip check its trailer; a gzip bomb after the end is not read.
const MAX_TRAILER: u64 = 1024 * 1024;
/// Linux's `PATH_MAX` including the terminating NUL: longer symlink targets cannot exist.
const MAX_SYMLINK_TARGET: usize = 4095;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// The size of a tar header block.
const TAR_BLOCK: usize = 512;

/// State shared by the reader wrappers and the unpacker.
#[derive(Default)]
struct Shared {
    compressed_bytes: Cell<u64>,
    /// The first error of the source itself.
    source_error: RefCell<Option<io::Error>>,
    /// The first error of the gzip decoder (not caused by the source).
    gzip_error: RefCell<Option<io::Error>>,
    /// Bytes the tar reader may still read before the current member (`None`: unbounded).
    metadata_budget: Cell<Option<u64>>,
    metadata_exceeded: Cell<bool>,
    /// The first header block of the tar data (up to [`TAR_BLOCK`] bytes), kept to tell
    /// "not a tar" from "a tar whose first member is damaged".
    first_block: RefCell<Vec<u8>>,
}

/// A copy of `e` to pass up the reader stack while the original is kept in [`Shared`].
fn copy_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// The source, counted; its errors are recorded so they are reported as
/// [`ArchiveError::Read`] whatever the decompressor or tar reader make of them.
struct Source<R> {
    inner: R,
    shared: Rc<Shared>,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
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

/// The decompressed content of all gzip members in a row (a gzip file may have several:
/// `cat a.gz b.gz` is valid gzip). Like `gzip -d`, trailing bytes that do not start another
/// member (zero padding from some tools) end the stream with a warning, not an error.
struct GzMembers<R> {
    decoder: Option<GzDecoder<R>>,
}

impl<R: BufRead> Read for GzMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while let Some(decoder) = self.decoder.as_mut() {
            let n = decoder.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            // This member ended and its CRC and length matched; is there another one?
            let Some(decoder) = self.decoder.take() else {
                break;
            };
            let mut rest = decoder.into_inner();
            let next = rest.fill_buf()?;
            match next.first() {
                None => {}
                Some(&b) if b == GZIP_MAGIC[0] => self.decoder = Some(GzDecoder::new(rest)),
                Some(_) => tracing::warn!("ignoring trailing data after the archive's gzip stream"),
            }
        }
        Ok(0)
    }
}

/// The tar reader's input: keeps the decompressor's own errors, and enforces
/// [`MAX_MEMBER_METADATA`] while the tar reader looks for the next member.
struct TarInput<R> {
    inner: R,
    shared: Rc<Shared>,
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

/// Unpack `reader` (gzip-compressed tar) into `dest` (an existing empty directory).
///
/// Regular files go to [`blob_path`]`(dest, n)`; the tree goes into the returned index.
/// Members that cannot be unpacked safely are skipped (listed in `stats.skipped`, logged);
/// see the module documentation for the rules. An empty input, or an empty tar, is a valid
/// empty version. `progress` is called every few MiB written and once at the end.
pub fn unpack(
    reader: impl Read,
    dest: &Path,
    opts: &UnpackOptions,
    progress: &mut dyn FnMut(&UnpackStats),
) -> Result<Unpacked, ArchiveError> {
    unpack_published(reader, dest, opts, progress, &())
}

/// [`unpack`], publishing each regular file to `publish` as soon as its content is
/// complete (see [`Publish`]).
pub fn unpack_published(
    reader: impl Read,
    dest: &Path,
    opts: &UnpackOptions,
    progress: &mut dyn FnMut(&UnpackStats),
    publish: &dyn Publish,
) -> Result<Unpacked, ArchiveError> {
    let shared = Rc::new(Shared::default());
    let data_dir = dest.join("data");
    fs::create_dir(&data_dir).map_err(|source| ArchiveError::Write {
        path: data_dir.clone(),
        source,
    })?;
    let implied = Meta {
        perm: 0o755,
        mtime_sec: opts.implied_dir_mtime,
        mtime_nsec: 0,
    };
    let mut unpacker = Unpacker {
        dest,
        opts,
        progress,
        publish,
        shared: Rc::clone(&shared),
        tree: Tree::new(implied),
        implied,
        blobs: Vec::new(),
        buf: Vec::new(),
        unreported: 0,
        stats: UnpackStats::default(),
    };

    let mut input = BufReader::with_capacity(
        READ_BUFFER,
        Source {
            inner: reader,
            shared: Rc::clone(&shared),
        },
    );
    let start = input.fill_buf().map_err(|e| unpacker.error(e, false))?;
    match start {
        [] => return unpacker.finish(),
        [a, ..] if *a != GZIP_MAGIC[0] => return Err(ArchiveError::NotGzip),
        [_, b, ..] if *b != GZIP_MAGIC[1] => return Err(ArchiveError::NotGzip),
        _ => {}
    }
    let gunzip = GzMembers {
        decoder: Some(GzDecoder::new(input)),
    };
    let mut archive = tar::Archive::new(TarInput {
        inner: gunzip,
        shared: Rc::clone(&shared),
    });
    unpacker.members(&mut archive)?;

    // Read on to the end of the gzip stream so that its CRC is checked: a corrupt archive
    // must not become a silently wrong version.
    let mut rest = archive.into_inner();
    let trailer = io::copy(&mut (&mut rest).take(MAX_TRAILER + 1), &mut io::sink())
        .map_err(|e| unpacker.error(e, false))?;
    if trailer > MAX_TRAILER {
        tracing::warn!(
            bytes = trailer,
            "ignoring data after the end of the archive's tar content"
        );
    }
    unpacker.finish()
}

/// Whether `block` is a whole tar header block whose checksum is right.
fn is_tar_header(block: &[u8]) -> bool {
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

/// A blob written so far.
struct Blob {
    size: u64,
    disk_bytes: u64,
}

struct Unpacker<'a> {
    dest: &'a Path,
    opts: &'a UnpackOptions,
    progress: &'a mut dyn FnMut(&UnpackStats),
    publish: &'a dyn Publish,
    shared: Rc<Shared>,
    tree: Tree,
    implied: Meta,
    /// Every blob number handed out; `None` once deleted (its file lost its last name).
    blobs: Vec<Option<Blob>>,
    /// Reused for every file's content; grown on first use.
    buf: Vec<u8>,
    /// Content bytes written since the last `progress` call.
    unreported: u64,
    stats: UnpackStats,
}

impl Unpacker<'_> {
    /// Turn an `io::Error` from the reader stack into what actually went wrong.
    /// `first_header` is set while reading the first member's header.
    fn error(&self, e: io::Error, first_header: bool) -> ArchiveError {
        if let Some(source) = self.shared.source_error.borrow_mut().take() {
            return ArchiveError::Read(source);
        }
        if let Some(gzip) = self.shared.gzip_error.borrow_mut().take() {
            return if gzip.kind() == io::ErrorKind::UnexpectedEof {
                ArchiveError::Truncated
            } else {
                ArchiveError::Gzip(gzip)
            };
        }
        // Only a first block that is not a tar header means "not a tar". A valid first
        // header followed by trouble (an extension header with no member after it, a GNU
        // sparse header whose map is invalid) is damaged tar data (found by
        // tests/fuzz_props.rs).
        if first_header
            && !self.shared.metadata_exceeded.get()
            && !is_tar_header(&self.shared.first_block.borrow())
        {
            return ArchiveError::NotTar;
        }
        ArchiveError::Tar(e)
    }

    fn write_error(path: PathBuf) -> impl FnOnce(io::Error) -> ArchiveError {
        move |source| ArchiveError::Write { path, source }
    }

    fn members<R: Read>(&mut self, archive: &mut tar::Archive<R>) -> Result<(), ArchiveError> {
        let mut entries = archive.entries().map_err(|e| self.error(e, true))?;
        let mut first = true;
        // Stored content of the previous member left unread (a skipped member's): the tar
        // reader skips it on its way to the next header, so the budget allows for it.
        let mut left = 0u64;
        loop {
            let budget = MAX_MEMBER_METADATA.saturating_add(left);
            self.shared.metadata_budget.set(Some(budget));
            let next = entries.next();
            self.shared.metadata_budget.set(None);
            let mut entry = match next {
                None => return Ok(()),
                Some(Ok(entry)) => entry,
                Some(Err(e)) => return Err(self.error(e, first)),
            };
            first = false;
            let name = entry.path_bytes().into_owned();
            left = self.member(&mut entry, &name)?;
        }
    }

    /// The error for a member whose content ends early: within a complete gzip stream the
    /// tar data itself is cut short.
    fn short(&self, name: &[u8]) -> ArchiveError {
        let e = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the tar data ends in the middle of `{}`",
                String::from_utf8_lossy(name)
            ),
        );
        self.error(e, false)
    }

    fn skip(&mut self, name: &[u8], reason: impl Into<String>) {
        let member = String::from_utf8_lossy(name).into_owned();
        let reason = reason.into();
        tracing::warn!(%member, %reason, "skipping archive member");
        self.stats.skipped.push(Skipped { member, reason });
    }

    /// Handle one member; returns how many bytes of its stored content it left unread.
    fn member<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &[u8],
    ) -> Result<u64, ArchiveError> {
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            // Global pax headers set defaults (often just a comment, e.g. from `git archive`)
            // that vm0fs has no use for: each member's own fields are what it shows. (A local
            // `x` header only comes here in an old-style header the tar crate does not apply.)
            tracing::debug!(member = %String::from_utf8_lossy(name), "ignoring a pax header");
            return Ok(entry.size());
        }
        let pax = PaxFields::of(entry).map_err(|e| self.error(e, false))?;
        // A GNU sparse member's size is its expanded size; what is stored is smaller.
        let stored = if kind == EntryType::GNUSparse {
            pax.size
                .or_else(|| entry.header().entry_size().ok())
                .unwrap_or(0)
        } else {
            entry.size()
        };
        let refusal = match normalize(name) {
            Err(reason) => Err(reason),
            Ok(_) if pax.sparse => {
                Err("it is a pax-format GNU sparse file, which is not supported".to_string())
            }
            Ok(comps) => member_meta(entry.header(), &pax).map(|meta| (comps, meta)),
        };
        let (comps, meta) = match refusal {
            Ok(ok) => ok,
            Err(reason) => {
                self.skip(name, reason);
                return Ok(stored);
            }
        };
        // Old (V7) tar marks directories with a trailing slash on a regular member.
        let is_dir = kind == EntryType::Directory
            || (kind == EntryType::Regular && name.last() == Some(&b'/'));
        match kind {
            _ if is_dir => self.directory(name, &comps, meta),
            // GNU sparse members (`S`) are expanded to their full content by the tar crate.
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                if self.file(entry, name, &comps, meta)? {
                    return Ok(0);
                }
            }
            EntryType::Symlink => self.symlink(entry, name, &comps, meta),
            EntryType::Link => self.hard_link(entry, name, &comps),
            EntryType::Char | EntryType::Block => self.skip(name, "device nodes are not supported"),
            EntryType::Fifo => self.skip(name, "FIFOs are not supported"),
            other => self.skip(
                name,
                format!(
                    "unsupported member type `{}`",
                    char::from(other.as_byte()).escape_default()
                ),
            ),
        }
        Ok(stored)
    }

    fn directory(&mut self, name: &[u8], comps: &[&[u8]], meta: Meta) {
        match self.prepare(name, comps, Want::Dir) {
            Some(Slot::ExistingDir(node)) => self.tree.set_meta(node, meta),
            Some(Slot::Free {
                dir,
                name: last,
                reuse,
            }) => {
                if let Err(reason) = self.tree.attach(dir, last, reuse, None, meta) {
                    self.skip(name, reason);
                }
            }
            Some(Slot::AlreadyLinked) | None => {}
        }
    }

    /// Makes room for member `name` at `comps` (replacing what was there, as tar does),
    /// or skips it with the reason. `None` when it was skipped.
    fn prepare(&mut self, name: &[u8], comps: &[&[u8]], want: Want) -> Option<Slot> {
        match self.tree.prepare(comps, self.implied, want) {
            Err(reason) => {
                self.skip(name, reason);
                None
            }
            Ok(Prepared {
                slot,
                freed_blob,
                replaced,
            }) => {
                self.replaced(&slot, replaced);
                self.free_blob(freed_blob);
                Some(slot)
            }
        }
    }

    fn symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        name: &[u8],
        comps: &[&[u8]],
        meta: Meta,
    ) {
        let target = entry.link_name_bytes().map(|t| t.into_owned());
        let target = match target {
            None => return self.skip(name, "the symbolic link has no target"),
            Some(t) if t.is_empty() => {
                return self.skip(name, "the symbolic link's target is empty")
            }
            Some(t) if t.contains(&0) => {
                return self.skip(name, "the symbolic link's target contains a NUL byte")
            }
            Some(t) if t.len() > MAX_SYMLINK_TARGET => {
                return self.skip(
                    name,
                    format!("the symbolic link's target is longer than {MAX_SYMLINK_TARGET} bytes"),
                )
            }
            Some(t) => t,
        };
        // Linux shows every symlink as 0777; its own mode bits mean nothing.
        let meta = Meta {
            perm: 0o777,
            ..meta
        };
        if let Some(Slot::Free {
            dir,
            name: last,
            reuse,
        }) = self.prepare(name, comps, Want::NonDir)
        {
            let content = Some(Content::Symlink { target });
            if let Err(reason) = self.tree.attach(dir, last, reuse, content, meta) {
                self.skip(name, reason);
            }
        }
    }

    fn hard_link<R: Read>(&mut self, entry: &tar::Entry<'_, R>, name: &[u8], comps: &[&[u8]]) {
        let Some(target) = entry.link_name_bytes().map(|t| t.into_owned()) else {
            return self.skip(name, "the hard link has no target");
        };
        let target_comps = match normalize(&target) {
            Ok(c) => c,
            Err(reason) => return self.skip(name, format!("hard link target: {reason}")),
        };
        let node = match self.tree.link_target(&target_comps) {
            Ok(node) => node,
            Err(reason) => return self.skip(name, format!("hard link target: {reason}")),
        };
        if let Some(Slot::Free {
            dir, name: last, ..
        }) = self.prepare(name, comps, Want::HardLink(node))
        {
            self.tree.link(dir, last, node);
        }
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &[u8],
        comps: &[&[u8]],
        meta: Meta,
    ) -> Result<bool, ArchiveError> {
        let Some(Slot::Free {
            dir,
            name: last,
            reuse,
        }) = self.prepare(name, comps, Want::NonDir)
        else {
            return Ok(false);
        };
        let size = entry.size();
        // Checked before a single byte is written, so that a decompression bomb stops at
        // the limit instead of filling the disk.
        if self.stats.bytes.saturating_add(size) > self.opts.max_bytes {
            return Err(ArchiveError::TooLarge {
                limit: self.opts.max_bytes,
                written: self.stats.bytes,
            });
        }
        let Ok(blob) = u32::try_from(self.blobs.len()) else {
            return Err(ArchiveError::Tar(io::Error::other(
                "the archive has more than 2^32 files",
            )));
        };
        let path = blob_path(self.dest, blob);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(Self::write_error(path.clone()))?;
        self.copy(entry, &mut file, &path, name, size)?;
        let written = file.metadata().map_err(Self::write_error(path.clone()))?;
        let disk_bytes = written.blocks() * 512;
        drop(file);
        self.blobs.push(Some(Blob { size, disk_bytes }));
        self.stats.files += 1;
        self.stats.disk_bytes += disk_bytes;
        let content = Some(Content::File { size, blob });
        match self.tree.attach(dir, last, reuse, content, meta) {
            Ok(_) => {
                let published = PublishedFile {
                    size,
                    blob: path,
                    id: BlobId {
                        dev: written.dev(),
                        ino: written.ino(),
                    },
                };
                self.publish_file(comps, published);
            }
            Err(reason) => {
                self.free_blob(Some(blob));
                self.skip(name, reason);
            }
        }
        Ok(true)
    }

    /// Publish the file at `comps` (just written and closed) and the directories on its way.
    fn publish_file(&mut self, comps: &[&[u8]], file: PublishedFile) {
        let Some(chain) = self.tree.chain(comps) else {
            return;
        };
        let steps: Vec<Step> = chain
            .into_iter()
            .map(|c| {
                let kind = if c.is_dir {
                    PublishedKind::Dir
                } else {
                    PublishedKind::File(file.clone())
                };
                Step {
                    dir: c.dir,
                    name: c.name,
                    node: c.node,
                    attrs: PublishedNode {
                        kind,
                        perm: c.meta.perm,
                        mtime_sec: c.meta.mtime_sec,
                        mtime_nsec: c.meta.mtime_nsec,
                        // A new file has one name; a directory's count is not known yet.
                        nlink: if c.is_dir { 2 } else { 1 },
                    },
                }
            })
            .collect();
        self.publish.file(&steps, &file);
    }

    /// Withdraw what was published under a name a later member takes over, before anything
    /// of the new member is written.
    fn replaced(&self, slot: &Slot, replaced: Option<Replaced>) {
        let (Some(r), Slot::Free { name, .. }) = (replaced, slot) else {
            return;
        };
        self.publish.withdraw(r.dir, name, r.gone.then_some(r.node));
    }

    /// Copy `size` bytes of content from `entry` to `file`, counting them and calling
    /// `progress` now and then.
    fn copy<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        file: &mut File,
        path: &Path,
        name: &[u8],
        size: u64,
    ) -> Result<(), ArchiveError> {
        if size > 0 && self.buf.is_empty() {
            self.buf = vec![0; WRITE_CHUNK];
        }
        let mut left = size;
        while left > 0 {
            let want = usize::try_from(left).map_or(self.buf.len(), |l| l.min(self.buf.len()));
            let mut filled = 0;
            while filled < want {
                match entry.read(&mut self.buf[filled..want]) {
                    Ok(0) => return Err(self.short(name)),
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.error(e, false)),
                }
            }
            file.write_all(&self.buf[..filled])
                .map_err(Self::write_error(path.to_path_buf()))?;
            left -= filled as u64;
            self.stats.bytes += filled as u64;
            self.unreported += filled as u64;
            if self.unreported >= PROGRESS_EVERY {
                self.report();
            }
        }
        Ok(())
    }

    fn report(&mut self) {
        self.unreported = 0;
        self.stats.compressed_bytes = self.shared.compressed_bytes.get();
        (self.progress)(&self.stats);
    }

    /// Delete the blob of a file that lost its last name to a later member.
    fn free_blob(&mut self, blob: Option<u32>) {
        let Some(blob) = blob else { return };
        let Some(Some(old)) = self.blobs.get_mut(blob as usize).map(Option::take) else {
            return;
        };
        self.stats.files = self.stats.files.saturating_sub(1);
        self.stats.bytes = self.stats.bytes.saturating_sub(old.size);
        self.stats.disk_bytes = self.stats.disk_bytes.saturating_sub(old.disk_bytes);
        let path = blob_path(self.dest, blob);
        if let Err(e) = fs::remove_file(&path) {
            // Only disk space is at stake: the blob is no longer in the index.
            tracing::warn!(path = %path.display(), error = %e, "cannot delete a replaced file");
        }
    }

    /// Build the index, make blob numbers dense again, and measure the data directory.
    fn finish(mut self) -> Result<Unpacked, ArchiveError> {
        let tree = std::mem::replace(&mut self.tree, Tree::new(self.implied));
        let finished = tree.finish();
        for (from, to) in finished.renames {
            let (from, to) = (blob_path(self.dest, from), blob_path(self.dest, to));
            fs::rename(&from, &to).map_err(Self::write_error(to))?;
        }
        let data_dir = self.dest.join("data");
        let dir_blocks = fs::metadata(&data_dir)
            .map_err(Self::write_error(data_dir))?
            .blocks();
        self.stats.disk_bytes += dir_blocks * 512;
        self.report();
        Ok(Unpacked {
            index: finished.index,
            stats: self.stats,
        })
    }
}

/// What the member's pax extensions say that the `tar` crate does not apply itself.
#[derive(Default)]
struct PaxFields {
    mtime: Option<(i64, u32)>,
    size: Option<u64>,
    /// GNU sparse file in pax format (`GNU.sparse.*` keys): its data is a sparse map plus
    /// the non-hole parts, which the `tar` crate does not expand.
    sparse: bool,
}

impl PaxFields {
    fn of<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<PaxFields> {
        let mut fields = PaxFields::default();
        if let Some(extensions) = entry.pax_extensions()? {
            // A malformed record is ignored, as the tar crate does for `path`.
            for ext in extensions.flatten() {
                match ext.key_bytes() {
                    b"mtime" => fields.mtime = parse_pax_time(ext.value_bytes()),
                    b"size" => {
                        fields.size = std::str::from_utf8(ext.value_bytes())
                            .ok()
                            .and_then(|v| v.parse().ok())
                    }
                    key if key.starts_with(b"GNU.sparse.") => fields.sparse = true,
                    _ => {}
                }
            }
        }
        Ok(fields)
    }
}

/// A pax time: decimal seconds, optionally negative, optionally with a fraction
/// (`1700000000.123456789`); digits past nanoseconds are dropped.
pub(super) fn parse_pax_time(value: &[u8]) -> Option<(i64, u32)> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let sec: i64 = int.parse().ok()?;
    let mut nsec: u32 = 0;
    for i in 0..9 {
        let digit = frac.as_bytes().get(i).map_or(0, |d| u32::from(d - b'0'));
        nsec = nsec * 10 + digit;
    }
    if !negative {
        Some((sec, nsec))
    } else if nsec == 0 {
        Some((-sec, 0))
    } else {
        // -1.25 s is 1.75 s before -1 s... that is, -2 s plus 0.75 s.
        Some((-sec - 1, 1_000_000_000 - nsec))
    }
}

/// The mtime a member's header gives, pax first.
fn member_mtime(header: &tar::Header, pax: &PaxFields) -> Meta {
    let (mtime_sec, mtime_nsec) = pax.mtime.unwrap_or_else(|| {
        let sec = header
            .mtime()
            .map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX));
        (sec, 0)
    });
    Meta {
        perm: 0,
        mtime_sec,
        mtime_nsec,
    }
}

/// Permission bits and mtime of a member. Setuid and setgid are dropped: nothing on a
/// vm0fs mount should run with another user's rights.
fn member_meta(header: &tar::Header, pax: &PaxFields) -> Result<Meta, String> {
    let mode = header
        .mode()
        .map_err(|_| "its header's mode field is unreadable".to_string())?;
    let perm = (mode & 0o7777 & !0o6000) as u16;
    Ok(Meta {
        perm,
        ..member_mtime(header, pax)
    })
}
