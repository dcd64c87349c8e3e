//! Fetching one version: download from the API and unpack into the cache's temporary
//! directory in one streaming pipeline, with progress in the log. Each file is published
//! to the cache's flight as soon as it is unpacked, for the filesystem to serve early.

use std::io::{self, Read};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::api::{Kind, Version};
use crate::archive::{self, UnpackOptions, UnpackStats, Unpacked};
use crate::cache::FetchTarget;
use crate::ids::{StorageId, StorageName};
use crate::size::ByteSize;

use super::{Activity, FetchError, Remote};
use crate::cache::VersionKey;

/// Chunk size handed from the download thread to the unpacking thread.
const CHUNK: usize = 1 << 20;

/// One version to fetch.
pub struct Job {
    pub kind: Kind,
    /// The storage's name (for messages) and id (for the API).
    pub storage: StorageName,
    pub storage_id: StorageId,
    pub version: Version,
    /// How often a running download logs its progress.
    pub progress_every: Duration,
}

/// Download `job.version` and unpack it into `target.dir`.
///
/// The download runs on its own thread and feeds the unpacker through a bounded channel,
/// so network reads, inflate and disk writes overlap (two of them at least on two cores)
/// without ever holding more than a few MiB of the archive in memory.
pub fn fetch(
    remote: &dyn Remote,
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
    } = job;
    let (kind, storage, storage_id, progress_every) =
        (*kind, storage.as_str(), storage_id, *progress_every);
    let started = Instant::now();
    let key = VersionKey::new(kind, &version.id);
    activity.start(&key, storage, version.size);
    let what = format!("{kind} {storage} version {}", version.id);
    tracing::info!(version = %version.id, storage, size = version.size, files = version.file_count, "downloading {what}");
    let result = (|| -> Result<Unpacked, FetchError> {
        let archive = remote.download(kind, storage_id, &version.id)?;
        let compressed = archive.compressed_size;
        let reader = ChannelReader::spawn(archive.reader);
        let opts = UnpackOptions {
            max_bytes: target.max_bytes,
            implied_dir_mtime: version
                .created_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        };
        let mut last_log = Instant::now();
        let mut progress = |s: &UnpackStats| {
            activity.update(&key, s.bytes, s.files);
            if last_log.elapsed() >= progress_every {
                last_log = Instant::now();
                log_progress(&what, s, version.size, compressed, started);
            }
        };
        match archive::unpack_published(reader, target.dir, &opts, &mut progress, target.publish) {
            Ok(u) => Ok(u),
            // The cache passes the announced size as the limit (it already refused versions
            // larger than the budget), so passing it means the archive lied.
            Err(archive::ArchiveError::TooLarge { .. }) if target.max_bytes == version.size => {
                Err(FetchError::LargerThanAnnounced {
                    announced: version.size,
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
                if u.stats.skipped.is_empty() {
                    String::new()
                } else {
                    format!(", {} members skipped", u.stats.skipped.len())
                }
            );
        }
        Err(e) => {
            tracing::error!(version = %version.id, storage, "could not fetch {what}: {e}");
            activity.error(format!("could not fetch {what}: {e}"));
        }
    }
    activity.finish(&key);
    result.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
}

fn log_progress(what: &str, s: &UnpackStats, size: u64, compressed: Option<u64>, started: Instant) {
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let percent = match compressed {
        Some(c) if c > 0 => s.compressed_bytes as f64 * 100.0 / c as f64,
        _ if size > 0 => s.bytes as f64 * 100.0 / size as f64,
        _ => 0.0,
    };
    tracing::info!(
        "downloading {what}: {:.0}%, {} of {} unpacked, {} files, {}/s",
        percent.min(100.0),
        ByteSize(s.bytes),
        ByteSize(size),
        s.files,
        ByteSize((s.bytes as f64 / secs) as u64)
    );
}

/// A reader fed by a thread that reads the source in large chunks.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl ChannelReader {
    fn spawn(mut source: Box<dyn Read + Send>) -> ChannelReader {
        // Four chunks in flight: enough to keep both sides busy, little memory.
        let (tx, rx) = mpsc::sync_channel(4);
        std::thread::Builder::new()
            .name("vm0fs-download".into())
            .spawn(move || loop {
                let mut chunk = vec![0u8; CHUNK];
                let mut filled = 0;
                // Fill whole chunks: the network hands out small reads.
                let res = loop {
                    match source.read(&mut chunk[filled..]) {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
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
                match res {
                    Ok(()) if eof => return,
                    Ok(()) => {
                        if tx.send(Ok(chunk)).is_err() {
                            return; // the unpacker stopped (an error or a limit): stop downloading
                        }
                    }
                    Err(e) => {
                        if filled > 0 && tx.send(Ok(chunk)).is_err() {
                            return;
                        }
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            })
            .expect("spawning a thread only fails when the system is out of resources");
        ChannelReader {
            rx,
            buf: Vec::new(),
            pos: 0,
            done: false,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
