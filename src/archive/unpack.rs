//! Streaming unpack of a `tar.gz` into a version directory.
//!
//! The pipeline, one member at a time and never the whole archive in memory:
//!
//! ```text
//! source -> CountedInput (counts, keeps the source's errors) -> BufReader (256 KiB)
//!        -> Checkpointer (gzip members, one after another, and the seek index: see `seek`)
//!        -> Teed (the stream, for a version larger than the cache) -> BufReader (64 KiB)
//!        -> TarInput (keeps gzip errors, bounds the metadata read per member)
//!        -> tar::Archive -> Unpacker -> Pending (packed content and publishing: `batch`)
//! ```
//!
//! The wrappers (`input.rs`) exist so that an `io::Error` coming out of the tar reader can
//! be told apart: a failing download, a truncated or corrupt gzip stream, or bad tar data
//! each become their own [`ArchiveError`]. Pax records the `tar` crate leaves to its caller
//! are read in `pax.rs`; this file holds the per-member rules.
//!
//! Each regular file is published ([`Publish`]) once its content is written: a file of its
//! own right after it is closed, a packed one with the batch it is written in (see
//! `batch`). A name a later member takes over is withdrawn, in that order, before anything
//! of the new member is published.
//! Published content is complete as the tar stream gave it; the gzip checksum of the whole
//! stream is only known at the end, which is why a version is committed only then.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use tar::EntryType;

use super::batch::Pending;
use super::blobs::{blob_path, index_path, Pack, PACK_MAX};
use super::checks::{checksum, Sums};
use super::encode::encoded_len;
use super::input::{
    is_tar_header, CountedInput, Shared, TarInput, Teed, GZIP_MAGIC, MAX_MEMBER_METADATA,
    MAX_TRAILER, READ_BUFFER,
};
use super::limits::stream_cap;
use super::outcome::{ArchiveError, Skipped, UnpackOptions, UnpackStats, Unpacked, SKIPPED_KEPT};
use super::pax::{bad_size, member_meta, PaxFields};
use super::publish::{BlobId, Publish, PublishedFile, PublishedKind, PublishedNode, Step};
use super::seek::Checkpointer;
use super::tree::{normalize, Content, Freed, ModeTime, Prepared, Replaced, Slot, Tree, Want};
use super::Index;

/// File content is decompressed straight into this buffer and written with one `write`
/// per chunk (so a small file, up to `PACK_MAX`, costs one `write`); a chunk holds whole
/// checked units (`CHECK_BLOCK` divides it).
const WRITE_CHUNK: usize = PACK_MAX as usize;
const _: () = assert!(WRITE_CHUNK.is_multiple_of(super::checks::CHECK_BLOCK as usize));
/// The decompressed stream is read this much at a time (see `unpack_published`).
const TAR_BUFFER: usize = 64 * 1024;
/// Call `progress` after at least this many content bytes.
const PROGRESS_EVERY: u64 = 4 * 1024 * 1024;
/// Linux's `PATH_MAX` including the terminating NUL: longer symlink targets cannot exist.
const MAX_SYMLINK_TARGET: usize = 4095;

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
    shared
        .stream_cap
        .set(stream_cap(opts.max_bytes, opts.max_members()));
    let data_dir = dest.join("data");
    fs::create_dir(&data_dir).map_err(|source| ArchiveError::Write {
        path: data_dir.clone(),
        source,
    })?;
    let pack = Pack::create(dest)?;
    let pending = Pending::new(pack.handle()?, publish);
    let implied = ModeTime {
        perm: 0o755,
        mtime_sec: opts.implied_dir_mtime,
        mtime_nsec: 0,
    };
    let mut unpacker = Unpacker {
        dest,
        opts,
        progress,
        pending: &pending,
        shared: Rc::clone(&shared),
        tree: Tree::new(implied),
        implied,
        blobs: 0,
        own_disk_bytes: HashMap::new(),
        pack,
        dead_packed: 0,
        buf: Vec::new(),
        sums: Sums::default(),
        positions: super::Positions::default(),
        seek: None,
        unreported: 0,
        members: 0,
        stats: UnpackStats::default(),
    };

    let mut input = BufReader::with_capacity(
        READ_BUFFER,
        CountedInput {
            inner: reader,
            shared: Rc::clone(&shared),
            pending: &pending,
        },
    );
    let start = input.fill_buf().map_err(|e| unpacker.error(e, false))?;
    match start {
        [] => return unpacker.finish(),
        [a, ..] if *a != GZIP_MAGIC[0] => return Err(ArchiveError::NotGzip),
        [_, b, ..] if *b != GZIP_MAGIC[1] => return Err(ArchiveError::NotGzip),
        _ => {}
    }
    // Inflated with checkpoints of the decompressor's state: the seek index a version
    // larger than the cache reads its content back by (see `seek`).
    let gunzip = Checkpointer::new(input).map_err(|e| unpacker.error(e, false))?;
    // The tar reader reads a header (512 bytes) or a small file's content at a time; from a
    // buffer, the decompressor inflates large runs instead of a call per small read.
    let mut archive = tar::Archive::new(TarInput::new(
        BufReader::with_capacity(TAR_BUFFER, Teed::new(gunzip, publish)),
        Rc::clone(&shared),
    ));
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
    let gunzip = rest.inner.into_inner().inner;
    if gunzip.is_finished() {
        publish.stream_end(gunzip.uncompressed_bytes());
    }
    if gunzip.trailing_data() {
        tracing::warn!("ignoring trailing data after the archive's gzip stream");
    }
    unpacker.seek = gunzip.into_index();
    unpacker.finish()
}

/// Packed content, handed to [`Pending`] to be written with the files around it.
struct Gather<'a> {
    pending: &'a Pending<'a>,
    offset: u64,
}

impl Write for Gather<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.content(self.offset, buf);
        self.offset += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Unpacker<'a> {
    dest: &'a Path,
    opts: &'a UnpackOptions,
    progress: &'a mut dyn FnMut(&UnpackStats),
    /// Where files are published from, once their content is written (see `batch`).
    pending: &'a Pending<'a>,
    shared: Rc<Shared>,
    tree: Tree,
    implied: ModeTime,
    /// Blob numbers handed out (every file gets the next; the tree knows what each is).
    blobs: u32,
    /// The disk use of each file of its own, by blob number (they are few: 1 MiB or more
    /// each), to take off the count when one is replaced.
    own_disk_bytes: HashMap<u32, u64>,
    pack: Pack,
    /// Bytes of packed files that lost their last name (still in the pack).
    dead_packed: u64,
    /// Reused for every file's content; grown on first use.
    buf: Vec<u8>,
    /// The checksums of the files written, computed as they are written.
    sums: Sums,
    /// Where each file's content lies in the tar stream.
    positions: super::Positions,
    /// The gzip stream's checkpoints, once it was read to its end.
    seek: Option<super::seek::SeekIndex>,
    /// Content bytes written since the last `progress` call.
    unreported: u64,
    /// Members read so far, against [`UnpackOptions::max_members`].
    members: u64,
    stats: UnpackStats,
}

impl Unpacker<'_> {
    /// Turn an `io::Error` from the reader stack into what actually went wrong.
    /// `first_header` is set while reading the first member's header.
    fn error(&self, e: io::Error, first_header: bool) -> ArchiveError {
        if let Some(source) = self.shared.source_error.borrow_mut().take() {
            return ArchiveError::Read(source);
        }
        if self.shared.stream_exceeded.get() {
            return ArchiveError::MetadataTooLarge {
                limit: self.shared.stream_cap.get(),
                content: self.opts.max_bytes,
                members: self.opts.max_members(),
            };
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

    fn members<R: Read + io::Seek>(
        &mut self,
        archive: &mut tar::Archive<R>,
    ) -> Result<(), ArchiveError> {
        // With seek: skips go through `TarInput`'s own buffer (see its `Seek`).
        let mut entries = archive
            .entries_with_seek()
            .map_err(|e| self.error(e, true))?;
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
            self.members += 1;
            self.check_members()?;
            let name = entry.path_bytes().into_owned();
            left = self.member(&mut entry, &name)?;
            if self.pending.failed() {
                return self.pending.finish(&self.pack.path);
            }
            // The directories a path implies are nodes too.
            self.check_members()?;
        }
    }

    /// Members and nodes within [`UnpackOptions::max_members`].
    fn check_members(&self) -> Result<(), ArchiveError> {
        if self.members.max(self.tree.len() as u64) > self.opts.max_members() {
            return Err(ArchiveError::TooManyMembers {
                limit: self.opts.max_members(),
                file_count: self.opts.file_count,
            });
        }
        Ok(())
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

    /// Skip a member: the first [`SKIPPED_KEPT`] are logged and listed, the rest counted
    /// (an archive of a million device nodes writes a dozen log lines, not a million).
    fn skip(&mut self, name: &[u8], reason: impl Into<String>) {
        self.stats.skipped_count += 1;
        if self.stats.skipped.len() >= SKIPPED_KEPT {
            return;
        }
        let member = String::from_utf8_lossy(name).into_owned();
        let reason = reason.into();
        tracing::warn!(%member, %reason, "skipping archive member");
        self.stats.skipped.push(Skipped { member, reason });
        if self.stats.skipped.len() == SKIPPED_KEPT {
            tracing::warn!(
                "further skipped archive members are counted, not logged; the count comes \
                 at the end of the unpack"
            );
        }
    }

    /// Handle one member; returns how many bytes of its stored content it left unread.
    fn member<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &[u8],
    ) -> Result<u64, ArchiveError> {
        if let Some(why) = bad_size(entry.header()) {
            // The tar reader has gone past where GNU tar would go: nothing after it is
            // where it should be.
            let e = io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{why} (`{}`)", String::from_utf8_lossy(name)),
            );
            return Err(ArchiveError::Tar(e));
        }
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

    fn directory(&mut self, name: &[u8], comps: &[&[u8]], meta: ModeTime) {
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
                freed,
                replaced,
            }) => {
                self.replaced(&slot, replaced);
                self.free_blob(freed);
                Some(slot)
            }
        }
    }

    fn symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        name: &[u8],
        comps: &[&[u8]],
        meta: ModeTime,
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
        let meta = ModeTime {
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
        meta: ModeTime,
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
        // the limit instead of filling the disk. The bytes of replaced packed files stay
        // in the pack, so they count too: an archive repeating one name cannot grow the
        // pack past the limit.
        let on_disk = self.stats.bytes.saturating_add(self.dead_packed);
        if on_disk.saturating_add(size) > self.opts.max_bytes {
            return Err(ArchiveError::TooLarge {
                limit: self.opts.max_bytes,
                written: on_disk,
            });
        }
        let blob = self.blobs;
        if blob == u32::MAX {
            return Err(ArchiveError::Tar(io::Error::other(
                "the archive has more than 2^32 files",
            )));
        }
        // The tar reader reads the decompressed stream from its start: its positions are
        // offsets in the tar stream. A GNU sparse member's stored data is a map of runs,
        // so it is found again by its header.
        // Such a member's content is kept on disk even when no other is (a version larger
        // than the cache): it cannot be read from one run of the tar stream.
        let (at, keep) = if entry.header().entry_type() == EntryType::GNUSparse {
            let header = entry.raw_header_position();
            (super::At::Sparse { header }, true)
        } else {
            let data = entry.raw_file_position();
            (super::At::Data(data), self.opts.keep_content)
        };
        let (published, disk_bytes, packed) = if size < PACK_MAX {
            let offset = self.pack.len;
            let path = self.pack.path.clone();
            let mut units = if keep {
                // At its offset: without content, the pack has holes where the other
                // files would lie.
                let mut gather = Gather {
                    pending: self.pending,
                    offset,
                };
                self.copy(entry, &mut gather, &path, name, size, true)?
            } else {
                self.copy(entry, &mut io::sink(), &path, name, size, true)?
            };
            if units.is_empty() {
                // An empty packed file is one empty unit (see `checks::unit_count`).
                units.push(checksum(&[]));
            }
            self.pack.len += size;
            let published = PublishedFile {
                size,
                blob: self.pack.path.clone(),
                offset,
                id: self.pack.id,
                packed: true,
                sums: units.into(),
            };
            (published, 0, Some(offset))
        } else if !keep {
            // Read for its checksums only: nothing of it is written.
            let path = blob_path(self.dest, blob);
            let units = self.copy(entry, &mut io::sink(), &path, name, size, false)?;
            let published = PublishedFile {
                size,
                blob: Arc::from(path),
                offset: 0,
                id: BlobId { dev: 0, ino: 0 },
                packed: false,
                sums: units.into(),
            };
            (published, 0, None)
        } else {
            let path = blob_path(self.dest, blob);
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(Self::write_error(path.clone()))?;
            let units = self.copy(entry, &mut file, &path, name, size, false)?;
            let written = file.metadata().map_err(Self::write_error(path.clone()))?;
            drop(file);
            let published = PublishedFile {
                size,
                blob: Arc::from(path),
                offset: 0,
                id: BlobId {
                    dev: written.dev(),
                    ino: written.ino(),
                },
                packed: false,
                sums: units.into(),
            };
            (published, written.blocks() * 512, None)
        };
        self.blobs += 1;
        if packed.is_none() {
            self.own_disk_bytes.insert(blob, disk_bytes);
        }
        self.stats.files += 1;
        self.stats.disk_bytes += disk_bytes;
        let content = Some(Content::File { size, blob, packed });
        match self.tree.attach(dir, last, reuse, content, meta) {
            Ok(node) => {
                self.sums.set(node, &published.sums);
                self.positions.set(node, at);
                let published = match at {
                    // Not written: read from the tar stream where it lies.
                    super::At::Data(data) if !keep => PublishedFile {
                        blob: Arc::from(Path::new("")),
                        offset: data,
                        id: BlobId::in_stream(if packed.is_some() { u32::MAX } else { blob }),
                        ..published
                    },
                    _ => published,
                };
                self.publish_file(comps, published);
            }
            Err(reason) => {
                self.free_blob(Some(Freed { blob, size, packed }));
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
        self.pending.file(steps, file);
    }

    /// Withdraw what was published under a name a later member takes over, before anything
    /// of the new member is written.
    fn replaced(&self, slot: &Slot, replaced: Option<Replaced>) {
        let (Some(r), Slot::Free { name, .. }) = (replaced, slot) else {
            return;
        };
        self.pending.withdraw(r.dir, name, r.gone.then_some(r.node));
    }

    /// Copy `size` bytes of content from `entry` to `file`, counting them and calling
    /// `progress` now and then. Returns the checksums of the file's units: one per
    /// [`CHECK_BLOCK`](super::checks::CHECK_BLOCK) bytes, or for a `packed` file (smaller
    /// than one chunk) one for its whole content, unless it is empty.
    fn copy<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        file: &mut impl Write,
        path: &Path,
        name: &[u8],
        size: u64,
        packed: bool,
    ) -> Result<Vec<u32>, ArchiveError> {
        if size > 0 && self.buf.is_empty() {
            self.buf = vec![0; WRITE_CHUNK];
        }
        let mut units = Vec::new();
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
            if packed {
                units.push(checksum(&self.buf[..filled]));
            } else {
                let block = super::checks::CHECK_BLOCK as usize;
                units.extend(self.buf[..filled].chunks(block).map(checksum));
            }
            left -= filled as u64;
            self.stats.bytes += filled as u64;
            self.unreported += filled as u64;
            if self.unreported >= PROGRESS_EVERY {
                self.report();
            }
        }
        Ok(units)
    }

    fn report(&mut self) {
        self.unreported = 0;
        self.stats.compressed_bytes = self.shared.compressed_bytes.get();
        (self.progress)(&self.stats);
    }

    /// Delete the blob of a file that lost its last name to a later member.
    fn free_blob(&mut self, freed: Option<Freed>) {
        let Some(Freed { blob, size, packed }) = freed else {
            return;
        };
        self.stats.files = self.stats.files.saturating_sub(1);
        self.stats.bytes = self.stats.bytes.saturating_sub(size);
        let disk_bytes = self.own_disk_bytes.remove(&blob).unwrap_or(0);
        self.stats.disk_bytes = self.stats.disk_bytes.saturating_sub(disk_bytes);
        if packed.is_some() {
            // Its bytes stay in the pack (a reader may hold its offset): they still count
            // against the byte limit, and the version's real usage is measured at the end.
            self.dead_packed += size;
            return;
        }
        let path = blob_path(self.dest, blob);
        if let Err(e) = fs::remove_file(&path) {
            if !self.opts.keep_content && e.kind() == io::ErrorKind::NotFound {
                // Never written: a version without content keeps only its sparse files.
                return;
            }
            // Only disk space is at stake: the blob is no longer in the index.
            tracing::warn!(path = %path.display(), error = %e, "cannot delete a replaced file");
        }
    }

    /// Build the index, make blob numbers dense again, and measure the data directory.
    fn finish(mut self) -> Result<Unpacked, ArchiveError> {
        self.pending.finish(&self.pack.path)?;
        let tree = std::mem::replace(&mut self.tree, Tree::new(self.implied));
        let super::tree::Finished {
            tree: finished,
            renames,
        } = tree.finish();
        // Without content there is no file to rename (the index has the new numbers).
        for (from, to) in renames {
            let (from, to) = (blob_path(self.dest, from), blob_path(self.dest, to));
            if !self.opts.keep_content && !from.exists() {
                // Never written (see `free_blob`): the index has its new number.
                continue;
            }
            fs::rename(&from, &to).map_err(Self::write_error(to))?;
        }
        let bytes = encoded_len(&finished);
        if bytes > self.opts.max_index_bytes {
            return Err(ArchiveError::IndexTooLarge {
                bytes,
                limit: self.opts.max_index_bytes,
            });
        }
        if self.stats.skipped_count > SKIPPED_KEPT as u64 {
            tracing::warn!(
                skipped = self.stats.skipped_count,
                "skipped {} archive members in all; the first {SKIPPED_KEPT} are logged above",
                self.stats.skipped_count
            );
        }
        let path = index_path(self.dest);
        Index::write(&finished, &path).map_err(Self::write_error(path.clone()))?;
        let checks = super::checks::checks_path(self.dest);
        self.sums
            .write(&finished, self.dest, self.pack.len)
            .map_err(Self::write_error(checks))?;
        drop(finished);
        // Read back and checked like any index found on disk: the tree's invariants hold
        // in release builds too, on what the version will serve.
        let image = fs::read(&path).map_err(Self::write_error(path))?;
        let index = Index::from_bytes(image).map_err(ArchiveError::Index)?;
        // Not synced, like every content file: a cache survives a crash of the daemon
        // (the page cache keeps what was written); only the index, the checksums and the
        // commit rename are synced. After a power loss, content that did not reach the
        // disk fails its checksums when read and the version is downloaded again (see
        // doc/SEMANTICS.md, "What a cached version survives").
        let pack_blocks = self
            .pack
            .file
            .metadata()
            .map_err(Self::write_error(self.pack.path.to_path_buf()))?
            .blocks();
        let data_dir = self.dest.join("data");
        let dir_blocks = fs::metadata(&data_dir)
            .map_err(Self::write_error(data_dir))?
            .blocks();
        self.stats.disk_bytes += (dir_blocks + pack_blocks) * 512;
        self.report();
        // Just written by this process: its own checksum is not read back.
        let checks = super::Checks::open(self.dest, index.len(), false).map_err(|e| {
            Self::write_error(super::checks::checks_path(self.dest))(io::Error::other(e.0))
        })?;
        Ok(Unpacked {
            index,
            checks,
            stats: self.stats,
            positions: std::mem::take(&mut self.positions),
            seek: self.seek.take(),
            origin: None,
        })
    }
}
