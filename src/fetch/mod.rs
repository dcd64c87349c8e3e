//! Fetching one version: download from the API and unpack into the cache's temporary
//! directory in one streaming pipeline, with progress in the log and the status file. Each
//! file is published to the cache's flight as soon as it is unpacked, for the filesystem
//! to serve early.
//!
//! The download (the API request included) runs on a thread of its own and hands the
//! archive to the unpacker in chunks. The unpacker's side never blocks for long: every
//! [`WAIT_SLICE`] without a chunk it checks whether the fetch should stop (nobody wants
//! the version any more, or the mount shuts down: it stops at once, and the download
//! thread stops at its next read) and whether the download has stalled: no byte for
//! [`STALL_AFTER`] is logged once (WARN) and shown in the status file, and logged again
//! (INFO) when bytes come back.
//!
//! The room: this file is the pipeline; `spool` keeps the compressed bytes of a download
//! that failed part way, for the next attempt to continue them; `meter` is what each
//! download in flight has received (for the stall watch and the status file); `error` is
//! why a fetch failed. The cache calls [`fetch`] (through the closure the filesystem
//! hands [`crate::cache::Cache::start`]) with a temporary directory and a byte limit; the
//! network is reached through [`Remote`] only.

use std::cell::RefCell;
use std::io::{self, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::activity::Activity;
use crate::api::{ApiError, ArchiveRef, Kind, Version};
use crate::archive::{self, ArchiveError, UnpackOptions, UnpackStats, Unpacked};
use crate::cache::{ArchiveOrigin, FetchTarget, VersionKey, WAIT_SLICE};
use crate::ids::{StorageId, StorageName};
use crate::remote::Remote;
use crate::size::ByteSize;

mod error;
mod meter;
mod spool;

pub use error::FetchError;
pub use meter::{Downloads, Meter, Progress};
pub use spool::{Spools, MAX_KEPT};

use spool::{Kept, Spool};

/// Chunk size handed from the download thread to the unpacking thread. Small enough that
/// the chunks in flight (at most [`CHUNKS_QUEUED`] plus one at each end) are a small part
/// of the daemon's memory, large enough that handing them over costs nothing measurable.
const CHUNK: usize = 256 << 10;

/// Chunks the download thread may be ahead of the unpacker.
const CHUNKS_QUEUED: usize = 8;

/// How long a download may go without receiving a byte before it is called stalled (in
/// the log, once per stall, and in the status file).
pub const STALL_AFTER: Duration = Duration::from_secs(5);

/// One version to fetch.
pub struct Job {
    pub kind: Kind,
    /// The storage's name (for messages) and id (for the API).
    pub storage: StorageName,
    pub storage_id: StorageId,
    pub version: Version,
    /// How often a running download logs its progress.
    pub progress_every: Duration,
    /// Where the download keeps its bytes, and finds those of an earlier attempt.
    pub spools: Arc<Spools>,
    /// Where its progress is shown.
    pub downloads: Arc<Downloads>,
}

/// Download `job.version` and unpack it into `target.dir`.
///
/// The download runs on its own thread and feeds the unpacker through a bounded channel,
/// so network reads, inflate and disk writes overlap (two of them at least on two cores)
/// without ever holding more than a few MiB of the archive in memory.
pub fn fetch(
    remote: Arc<dyn Remote>,
    activity: &Activity,
    job: &Job,
    target: FetchTarget<'_>,
) -> Result<Unpacked, Box<dyn std::error::Error + Send + Sync>> {
    let Job {
        kind,
        storage,
        storage_id,
        version,
        progress_every,
        spools,
        downloads,
    } = job;
    let (kind, progress_every) = (*kind, *progress_every);
    let started = Instant::now();
    let key = VersionKey::new(kind, &version.id);
    let meter = downloads.start(&key, storage.as_str(), version.size.unwrap_or(0));
    let what = format!("{kind} {storage} version {}", version.id.short());
    tracing::info!(version = %version.id, size = version.size, files = version.file_count, "downloading {what}");
    let mut watch = Watch {
        what: &what,
        meter: &meter,
        cancelled: target.cancelled,
        stalled_at: None,
    };
    let result = (|| -> Result<Unpacked, FetchError> {
        let archive = ArchiveRef::version(kind, storage_id.clone(), version.id.as_str())
            .named(storage.clone());
        let from = Origin {
            key: key.clone(),
            spools: spools.clone(),
            spool: target.keep_content,
            what: what.clone(),
        };
        let download = DownloadThread::spawn(remote, archive, from, meter.clone())
            .map_err(FetchError::Spawn)?;
        let (compressed, at_store) = download.started(&mut watch)?;
        if let Some(o) = &at_store {
            target.publish.archive(&o.etag, o.len);
        }
        let origin = Rc::new(RefCell::new(None));
        let reader = ChannelReader {
            download,
            watch,
            buf: Vec::new(),
            pos: 0,
            done: false,
            origin: origin.clone(),
        };
        let opts = UnpackOptions {
            max_bytes: target.max_bytes,
            file_count: version.file_count.unwrap_or(0), // 0: not announced
            max_index_bytes: target.max_index_bytes,
            implied_dir_mtime: version
                .created_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            keep_content: target.keep_content,
        };
        let mut last_log = Instant::now();
        let mut progress = |s: &UnpackStats| {
            downloads.update(&key, s.bytes, s.files);
            if last_log.elapsed() >= progress_every {
                last_log = Instant::now();
                log_progress(&what, s, version.size, compressed, started);
            }
        };
        match archive::unpack_published(reader, target.dir, &opts, &mut progress, target.publish) {
            Ok(mut u) => {
                u.origin = origin.take();
                Ok(u)
            }
            // Stopped on purpose: whatever the unpacker made of it.
            Err(_) if (target.cancelled)() => Err(FetchError::Stopped),
            // The cache passes the announced size as the limit (it already refused versions
            // larger than the budget), so passing it means the archive lied.
            Err(ArchiveError::TooLarge { .. }) if Some(target.max_bytes) == version.size => {
                Err(FetchError::LargerThanAnnounced {
                    announced: target.max_bytes,
                })
            }
            // No size announced: the cache gave the room it had as the limit.
            Err(ArchiveError::TooLarge { .. }) if version.size.is_none() => {
                Err(FetchError::LargerThanBudget {
                    room: target.max_bytes,
                })
            }
            Err(e) => Err(e.into()),
        }
    })();
    match &result {
        Ok(u) => {
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(
                version = %version.id,
                files = u.stats.files,
                bytes = u.stats.bytes,
                "downloaded {what}: {} in {} files, {secs:.1} s, {}/s{}",
                ByteSize(u.stats.bytes),
                u.stats.files,
                ByteSize((u.stats.bytes as f64 / secs) as u64),
                if u.stats.skipped_count == 0 {
                    String::new()
                } else {
                    format!(", {} members skipped", u.stats.skipped_count)
                }
            );
        }
        Err(FetchError::Stopped) => {
            tracing::info!(version = %version.id, storage = %storage, "stopped downloading {what}");
        }
        Err(e) => {
            tracing::error!(version = %version.id, storage = %storage, "could not fetch {what}: {e}");
            activity.error(format!("could not fetch {what}: {e}"));
        }
    }
    downloads.finish(&key);
    result.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
}

fn log_progress(
    what: &str,
    s: &UnpackStats,
    size: Option<u64>,
    compressed: Option<u64>,
    started: Instant,
) {
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let percent = match (compressed, size) {
        (Some(c), _) if c > 0 => s.compressed_bytes as f64 * 100.0 / c as f64,
        (_, Some(size)) if size > 0 => s.bytes as f64 * 100.0 / size as f64,
        _ => 0.0,
    };
    tracing::info!(
        "downloading {what}: {:.0}%, {} of {} unpacked, {} files, {}/s",
        percent.min(100.0),
        ByteSize(s.bytes),
        // What the API did not say is not shown as 0 B.
        size.map_or_else(
            || "an unknown size".to_string(),
            |n| ByteSize(n).to_string()
        ),
        s.files,
        ByteSize((s.bytes as f64 / secs) as u64)
    );
}

/// The unpacker's side of a download's watch: stops when told to, and notices stalls.
struct Watch<'a> {
    what: &'a str,
    meter: &'a Meter,
    cancelled: &'a (dyn Fn() -> bool + Sync),
    /// When the stall being reported began (the last byte before it), if one is.
    stalled_at: Option<Duration>,
}

impl Watch<'_> {
    /// Called at least once per [`WAIT_SLICE`] while the download runs.
    fn look(&mut self) {
        let idle = self.meter.idle();
        match self.stalled_at {
            None if idle >= STALL_AFTER => {
                self.stalled_at = Some(self.meter.last_byte());
                tracing::warn!(
                    "download of {} stalled: no data for {} s (the store or the network is slow or hung; it goes on as soon as data comes)",
                    self.what,
                    idle.as_secs()
                );
            }
            Some(since) if idle < STALL_AFTER => {
                self.stalled_at = None;
                let stall = self.meter.last_byte().saturating_sub(since);
                tracing::info!(
                    "download of {} resumed after {} s without data",
                    self.what,
                    stall.as_secs()
                );
            }
            _ => {}
        }
    }
}

/// What the download thread hands the unpacker.
enum Message {
    /// The archive's response has come; its compressed size if known. Always first.
    Started {
        compressed: Option<u64>,
        /// The object at the store, when it named it (`ETag`) and told its whole length:
        /// a version larger than the cache reads ranges of it before the pass ends.
        origin: Option<ArchiveOrigin>,
    },
    Chunk(Vec<u8>),
    /// The whole archive was read: which object it was at the store, when the store told
    /// (its `ETag`), for the range reads of a version larger than the cache.
    End(Option<ArchiveOrigin>),
    /// The API refused the download (before any byte of it).
    Refused(ApiError),
    /// Reading the archive failed.
    Failed(io::Error),
}

/// A download running on a thread of its own. Dropping it (the unpacker is done, or
/// stopped) tells the thread to stop at its next read, which closes the connection.
struct DownloadThread {
    rx: mpsc::Receiver<Message>,
    end: Arc<End>,
}

impl Drop for DownloadThread {
    fn drop(&mut self) {
        self.end.unpacker_done();
    }
}

/// How the unpacker's side ended, as the download thread sees it: still reading; done or
/// failed (the archive is whole, or its bytes are wrong: nothing worth keeping); or
/// stopped because nobody wants the version any more (the bytes received are good, and
/// kept for the next attempt).
#[derive(Default)]
struct End(AtomicU8);

impl End {
    const READING: u8 = 0;
    const DONE: u8 = 1;
    const STOPPED: u8 = 2;

    fn unpacker_done(&self) {
        let _ = self.0.compare_exchange(
            Self::READING,
            Self::DONE,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    fn unpacker_stopped(&self) {
        let _ = self.0.compare_exchange(
            Self::READING,
            Self::STOPPED,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    fn gone(&self) -> bool {
        self.0.load(Ordering::SeqCst) != Self::READING
    }

    fn keeps_spool(&self) -> bool {
        self.0.load(Ordering::SeqCst) == Self::STOPPED
    }
}

impl DownloadThread {
    fn spawn(
        remote: Arc<dyn Remote>,
        archive: ArchiveRef,
        origin: Origin,
        meter: Arc<Meter>,
    ) -> io::Result<DownloadThread> {
        // Four chunks in flight: enough to keep both sides busy, little memory.
        let (tx, rx) = mpsc::sync_channel(CHUNKS_QUEUED);
        let end = Arc::new(End::default());
        let unpacker_end = end.clone();
        std::thread::Builder::new()
            .name("vm0fs-download".into())
            .spawn(move || {
                let to = ToUnpacker {
                    tx: &tx,
                    end: &unpacker_end,
                };
                let run = || download(&*remote, &archive, &origin, &meter, &to);
                if let Err(panic) = catch_unwind(AssertUnwindSafe(run)) {
                    // Logged by the panic hook; the unpacker is told, and fails the fetch.
                    let _ = tx.send(Message::Failed(io::Error::other(format!(
                        "the download failed on an internal error ({})",
                        crate::panics::message(&*panic)
                    ))));
                }
            })?;
        Ok(DownloadThread { rx, end })
    }

    /// Wait for the archive's response (the API request and the store's headers); its
    /// compressed size if known, and the object it is.
    fn started(
        &self,
        watch: &mut Watch<'_>,
    ) -> Result<(Option<u64>, Option<ArchiveOrigin>), FetchError> {
        match self.next(watch)? {
            Message::Started { compressed, origin } => Ok((compressed, origin)),
            Message::Refused(e) => Err(FetchError::Api(e)),
            Message::Failed(e) => Err(ArchiveError::Read(e).into()),
            Message::Chunk(_) | Message::End(_) => {
                Err(ArchiveError::Read(io::Error::other("data before the response")).into())
            }
        }
    }

    /// The next message, looking at the watch at least once per [`WAIT_SLICE`]. The end of
    /// the thread without an end message is a failure (it panicked, or was killed).
    fn next(&self, watch: &mut Watch<'_>) -> Result<Message, FetchError> {
        loop {
            if (watch.cancelled)() {
                self.end.unpacker_stopped();
                return Err(FetchError::Stopped);
            }
            match self.rx.recv_timeout(WAIT_SLICE) {
                Ok(m) => {
                    watch.look();
                    return Ok(m);
                }
                Err(RecvTimeoutError::Timeout) => watch.look(),
                Err(RecvTimeoutError::Disconnected) => {
                    return Ok(Message::Failed(io::Error::other(
                        "the download thread ended before the archive did",
                    )))
                }
            }
        }
    }
}

/// Where the download thread hands its messages, and whether anyone still takes them.
struct ToUnpacker<'a> {
    tx: &'a mpsc::SyncSender<Message>,
    end: &'a End,
}

/// Which version a download thread fetches, for its spool.
struct Origin {
    key: VersionKey,
    spools: Arc<Spools>,
    /// Whether a new download is spooled: not a version larger than the cache, whose first
    /// pass keeps spans of its tar stream in the room a spool would take, and which serve
    /// reads (a spool only helps a retry).
    spool: bool,
    what: String,
}

/// The body of the download thread: ask the API, then read the archive in whole chunks.
/// It ends when the archive does, on an error, or when the unpacker has gone (looked at
/// before each read, and a send fails): then the response is dropped, which closes the
/// connection. (A read already waiting for the network ends when bytes or the client's
/// I/O timeout come.)
///
/// What it receives goes to a spool file too; a download that stops before the end keeps
/// it (see [`spool`]), and the next one for the version starts with those bytes and
/// asks the store only for the rest.
fn download(
    remote: &dyn Remote,
    archive: &ArchiveRef,
    origin: &Origin,
    meter: &Meter,
    to: &ToUnpacker<'_>,
) {
    let tx = to.tx;
    let (opened, kept) = open(remote, archive, origin);
    let archive = match opened {
        Ok(a) => a,
        Err(e) => {
            if let Some(kept) = kept {
                // Still good for the next attempt.
                origin.spools.keep(&origin.key, kept.kept);
            }
            let _ = tx.send(Message::Refused(e));
            return;
        }
    };
    if tx
        .send(Message::Started {
            compressed: archive.compressed_size,
            origin: archive.reader.resume_point().and_then(|p| {
                Some(ArchiveOrigin {
                    etag: p.etag,
                    len: p.total?,
                })
            }),
        })
        .is_err()
    {
        if let Some(Continued { kept, .. }) = kept {
            give_back(kept, to, origin);
        }
        return;
    }
    let mut spool = match kept {
        Some(Continued { kept, file }) => {
            if !replay(file, kept.point.offset, to) {
                return give_back(kept, to, origin);
            }
            Spool::continuing(kept).ok()
        }
        None if origin.spool => origin.spools.create(&origin.key).ok(),
        None => None,
    };
    let mut source = archive.reader;
    // A stop before the end keeps what came for the next attempt, unless the unpacker
    // found those bytes wrong.
    let stop = |spool: Option<Spool>, source: &dyn crate::remote::ArchiveStream| {
        if to.end.gone() && !to.end.keeps_spool() {
            return;
        }
        if let Some(kept) = spool.and_then(|s| s.stopped_at(source.resume_point())) {
            origin.spools.keep(&origin.key, kept);
        }
    };
    loop {
        let mut chunk = vec![0u8; CHUNK];
        let mut filled = 0;
        // Fill whole chunks: the network hands out small reads.
        let res = loop {
            if to.end.gone() {
                return stop(spool, &*source);
            }
            match source.read(&mut chunk[filled..]) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    meter.received(n as u64);
                    if let Some(spool) = &mut spool {
                        spool.write(&chunk[filled..filled + n]);
                    }
                    filled += n;
                    if filled == chunk.len() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        chunk.truncate(filled);
        let eof = filled == 0;
        let sent = match res {
            Ok(()) if eof => {
                // Deleted before the unpacker hears of the end, so that the version is
                // never complete while its spool still takes room.
                drop(spool);
                let origin = source.resume_point().map(|p| ArchiveOrigin {
                    etag: p.etag,
                    len: p.offset,
                });
                let _ = tx.send(Message::End(origin));
                return;
            }
            Ok(()) => tx.send(Message::Chunk(chunk)),
            Err(e) => {
                let changed = e
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<ApiError>())
                    .is_some_and(ApiError::is_changed);
                // Bytes of an object the store no longer has are of no use.
                if !changed {
                    stop(spool, &*source);
                }
                if filled > 0 && tx.send(Message::Chunk(chunk)).is_err() {
                    return;
                }
                let _ = tx.send(Message::Failed(e));
                return;
            }
        };
        if sent.is_err() {
            // The unpacker stopped (an error, a limit, a cancel): stop downloading.
            return stop(spool, &*source);
        }
    }
}

/// A kept spool that this download took but did not get to continue: kept again when the
/// unpacker only stopped (nobody waits), deleted when it found the bytes wrong.
fn give_back(kept: Kept, to: &ToUnpacker<'_>, origin: &Origin) {
    if to.end.keeps_spool() {
        origin.spools.keep(&origin.key, kept);
    } else {
        let _ = std::fs::remove_file(&kept.path);
    }
}

/// A kept spool being continued, its file open for reading.
struct Continued {
    kept: Kept,
    file: std::fs::File,
}

/// Open the archive: after the bytes of an earlier attempt, if some were kept and the
/// store still has that object, or from its start.
fn open(
    remote: &dyn Remote,
    archive: &ArchiveRef,
    origin: &Origin,
) -> (
    Result<crate::remote::RemoteArchive, ApiError>,
    Option<Continued>,
) {
    let continued = origin.spools.take(&origin.key).and_then(|kept| {
        let file = std::fs::File::open(&kept.path).ok()?;
        Some(Continued { kept, file })
    });
    let Some(continued) = continued else {
        return (remote.download(archive, None), None);
    };
    let point = &continued.kept.point;
    match remote.download(archive, Some(point)) {
        Ok(a) => {
            tracing::info!(
                "continuing the download of {} after the {} received before",
                origin.what,
                ByteSize(point.offset)
            );
            (Ok(a), Some(continued))
        }
        Err(e) if e.is_changed() => {
            tracing::info!(
                "the archive of {} changed since the last attempt; downloading it from the start",
                origin.what
            );
            let _ = std::fs::remove_file(&continued.kept.path);
            (remote.download(archive, None), None)
        }
        Err(e) => (Err(e), Some(continued)),
    }
}

/// Hand the unpacker the `len` bytes of a kept spool. False when it has gone or the spool
/// could not be read (then told to the unpacker as the download's failure).
fn replay(mut file: std::fs::File, len: u64, to: &ToUnpacker<'_>) -> bool {
    let mut left = len;
    while left > 0 {
        if to.end.gone() {
            return false;
        }
        let mut chunk = vec![0u8; CHUNK.min(left as usize)];
        if let Err(e) = file.read_exact(&mut chunk) {
            let _ = to.tx.send(Message::Failed(io::Error::new(
                e.kind(),
                format!("could not read back the bytes kept from an earlier attempt: {e}"),
            )));
            return false;
        }
        left -= chunk.len() as u64;
        if to.tx.send(Message::Chunk(chunk)).is_err() {
            return false;
        }
    }
    true
}

/// The archive as the unpacker reads it: the download's chunks, in order.
struct ChannelReader<'a> {
    download: DownloadThread,
    watch: Watch<'a>,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
    /// Set at the end of the archive (see [`Message::End`]).
    origin: Rc<RefCell<Option<ArchiveOrigin>>>,
}

impl Read for ChannelReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            // Stopped: an error that is not `Interrupted`, which readers would retry.
            let Ok(message) = self.download.next(&mut self.watch) else {
                self.done = true;
                return Err(io::Error::other("the download was stopped"));
            };
            match message {
                Message::Chunk(chunk) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Message::End(origin) => {
                    self.done = true;
                    *self.origin.borrow_mut() = origin;
                    return Ok(0);
                }
                Message::Failed(e) => {
                    self.done = true;
                    return Err(e);
                }
                Message::Started { .. } | Message::Refused(_) => {
                    self.done = true;
                    return Err(io::Error::other("a second response in one download"));
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
