//! The spans a first pass keeps: the first pass of a version larger than the cache inflates
//! its whole archive once (to build its index and seek index) and writes the tar stream it
//! inflates into span files, one per interval between checkpoints, while the cache has free
//! room for them. Each complete span joins the cache's spans (see `spans.rs`) as if a range
//! request had fetched it, so a reader after the pass finds it on disk. (Such a download
//! keeps no spool of its compressed bytes, see `crate::fetch`: the room goes to spans.)
//!
//! Only free room is taken: the pass evicts nothing, neither versions nor spans (its own
//! earlier ones included). The spans kept are therefore the archive's first ones, which is
//! what a reader that goes through the version in archive order (`cat`, `tar -c`, most
//! `rsync`s) meets first; as it reads on, the spans it has read are the least recently
//! used and make room for those it fetches. A span that finds no room is not kept; the
//! next checkpoint tries again (room may have been given back meanwhile).
//!
//! The pass also writes the version's seek index as it goes ([`SeekWriter`]): each
//! checkpoint's window (32 KiB) goes to disk when it is recorded, so that a pass over an
//! archive of any size holds none of them in memory.
//!
//! Room is counted before bytes are written (in steps of [`STEP`]), so the disk never holds
//! more than the budget. A pass that fails or is cancelled removes the span it was writing;
//! the caller drops the spans it completed ([`super::Cache::drop_spans`]).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;

#[allow(clippy::wildcard_imports)] // The policy in `mod.rs` and its spans are one type.
use super::*;
use crate::archive::seek::{Checkpoint, SeekIndex, SeekWriter};
use crate::archive::{PublishedFile, Step};

/// How much room a span being written counts at a time.
const STEP: u64 = 1 << 20;

/// The spans of one first pass, and the flight it publishes to (a [`Publish`] that hands
/// files and names on to the flight and keeps the stream). Its state is shared with the
/// flight's readers ([`PassView`]).
pub(super) struct PassSpans<'a> {
    cache: &'a Cache,
    flight: &'a Flight,
    view: Arc<PassView>,
}

/// What readers of a version whose first pass is running can read of it: the spans kept so
/// far (in the cache's table), and the one being written up to where it is written.
pub struct PassView {
    version: VersionKey,
    /// The serial the version's checksums will carry ([`crate::archive::Checks::serial`]):
    /// the spans are keyed by it as the spans a reader fetches are.
    pub(super) serial: u64,
    state: Mutex<PassState>,
}

#[derive(Default)]
struct PassState {
    /// Where each span recorded so far starts in the tar stream.
    starts: Vec<u64>,
    /// The seek index, written as its checkpoints come (their windows go to disk at once:
    /// see [`SeekWriter`]); `Err` once a write failed.
    seek: Option<Result<SeekWriter, String>>,
    writing: Option<Writing>,
    /// The stream ended: nothing more is kept.
    ended: bool,
}

/// The span being written.
struct Writing {
    k: u32,
    file: Arc<File>,
    path: PathBuf,
    len: u64,
    /// Room counted for it so far.
    counted: u64,
}

impl<'a> PassSpans<'a> {
    /// The pass of `version` into `dir`, whose seek index it writes there (`seek.bin`).
    pub(super) fn new(
        cache: &'a Cache,
        flight: &'a Flight,
        version: &VersionKey,
        dir: &Path,
    ) -> std::io::Result<Self> {
        let seek = SeekWriter::create(&dir.join(SEEK_FILE))?;
        let view = Arc::new(PassView {
            version: version.clone(),
            serial: crate::archive::fresh_serial(),
            state: Mutex::new(PassState {
                seek: Some(Ok(seek)),
                ..PassState::default()
            }),
        });
        flight.set_pass(view.clone());
        Ok(PassSpans {
            cache,
            flight,
            view,
        })
    }

    /// Finish the seek index of the archive `index` describes (its points without their
    /// windows, which are on disk already).
    pub(super) fn finish_seek(&self, index: &SeekIndex) -> Result<(), String> {
        let seek = self.view.state.lock().seek.take();
        let writer = match seek {
            Some(Ok(writer)) => writer,
            Some(Err(why)) => return Err(why),
            None => return Err("the seek index was finished already".into()),
        };
        let count = self.view.state.lock().starts.len();
        if count != index.points.len() {
            return Err(format!(
                "{count} checkpoints written, the pass recorded {}",
                index.points.len()
            ));
        }
        writer
            .finish(index.compressed_len, index.uncompressed_len, index.spacing)
            .map_err(|e| e.to_string())
    }

    pub(super) fn serial(&self) -> u64 {
        self.view.serial
    }

    /// Start span `k` (after the previous one is kept).
    fn start(&self, st: &mut PassState, k: u32) {
        if st.ended {
            return;
        }
        // The file system's block for the file's last bytes, on top of its length.
        if !self.cache.charge_free(4096) {
            return;
        }
        let path = self
            .cache
            .inner
            .layout
            .span_path(&self.view.version, self.view.serial, k);
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path);
        match opened {
            Ok(file) => {
                st.writing = Some(Writing {
                    k,
                    file: Arc::new(file),
                    path,
                    len: 0,
                    counted: 4096,
                });
            }
            Err(e) => {
                self.cache.discharge(4096);
                tracing::debug!(path = %path.display(), error = %e, "cannot keep the first pass's spans");
            }
        }
    }

    /// Give up the span being written (the next checkpoint tries again).
    fn abandon(&self, st: &mut PassState) {
        if let Some(w) = st.writing.take() {
            let _ = std::fs::remove_file(&w.path);
            self.cache.discharge(w.counted);
        }
    }

    /// Keep the span written so far, complete: it joins the cache's spans with what it
    /// really takes on disk in place of the room counted for it.
    fn keep(&self, st: &mut PassState) {
        let Some(w) = st.writing.take() else {
            return;
        };
        let disk_bytes = match w.file.metadata() {
            Ok(meta) => meta.blocks() * 512,
            Err(_) => {
                let _ = std::fs::remove_file(&w.path);
                self.cache.discharge(w.counted);
                return;
            }
        };
        let key = SpanKey {
            version: self.view.version.clone(),
            serial: self.view.serial,
            k: w.k,
        };
        // A reader may still hold the file it read the span from while it was written.
        let file = Arc::try_unwrap(w.file).or_else(|file| file.try_clone());
        let Ok(file) = file else {
            let _ = std::fs::remove_file(&w.path);
            self.cache.discharge(w.counted);
            return;
        };
        let span = Arc::new(Span::new(file, w.len, w.path.clone(), disk_bytes));
        let mut cs = self.cache.inner.state.lock();
        if cs.spans.lru.contains(&key) || cs.spans.flights.contains_key(&key) {
            // Fetched meanwhile: that one stays.
            cs.used = cs.used.saturating_sub(w.counted);
            drop(cs);
            let _ = std::fs::remove_file(&w.path);
            return;
        }
        cs.used = cs.used.saturating_sub(w.counted) + disk_bytes;
        // Least recently used among the spans: a reader's spans are more recent.
        cs.spans.lru.put(key.clone(), span);
        cs.spans.lru.demote(&key);
        let over = cs.used > self.cache.inner.budget;
        drop(cs);
        if over {
            // The file system allocated more than the length rounded up: only then is the
            // shared eviction (which may walk `/proc`) asked.
            self.cache.charge(0);
        }
    }
}

impl PassView {
    /// What tells the bytes read through this view from any other in the cache of checked
    /// units (the serial of its version's opening, apart from the checksums' own).
    pub fn source(&self) -> u64 {
        (1 << 62) | self.serial
    }
}

impl Cache {
    /// Forget the kept spans among `spans` (read through `view`, their bytes found wrong):
    /// a later read waits for the complete version and fetches them again.
    pub fn drop_passing_spans(&self, view: &PassView, spans: &[(u64, Arc<Span>)]) {
        let st = view.state.lock();
        let ks: Vec<u32> = spans
            .iter()
            .filter_map(|(start, _)| st.starts.binary_search(start).ok())
            .filter_map(|k| u32::try_from(k).ok())
            .filter(|k| st.writing.as_ref().is_none_or(|w| w.k != *k))
            .collect();
        drop(st);
        for k in ks {
            self.drop_span(&SpanKey {
                version: view.version.clone(),
                serial: view.serial,
                k,
            });
        }
    }

    /// The spans that hold offsets `t0..t1` of the tar stream of the version whose first
    /// pass `view` is, each with the offset it starts at, if all of them are on disk now
    /// (kept, or written that far). `None`: some are not (not kept for want of room, or
    /// not inflated yet).
    pub fn passing_spans(
        &self,
        view: &PassView,
        t0: u64,
        t1: u64,
    ) -> Option<Vec<(u64, Arc<Span>)>> {
        let st = view.state.lock();
        let first = st.starts.partition_point(|s| *s <= t0).checked_sub(1)?;
        let mut spans = Vec::new();
        for (k, start) in st.starts.iter().enumerate().skip(first) {
            if *start >= t1 {
                break;
            }
            let k = u32::try_from(k).ok()?;
            let span = match &st.writing {
                Some(w) if w.k == k => {
                    let end = start.saturating_add(w.len);
                    if end < t1.min(st.starts.get(k as usize + 1).copied().unwrap_or(u64::MAX)) {
                        return None;
                    }
                    let file = w.file.try_clone().ok()?;
                    Arc::new(Span::new(file, w.len, w.path.clone(), 0))
                }
                _ => {
                    let key = SpanKey {
                        version: view.version.clone(),
                        serial: view.serial,
                        k,
                    };
                    self.inner.state.lock().spans.lru.get(&key)?.clone()
                }
            };
            spans.push((*start, span));
        }
        Some(spans)
    }
}

impl Publish for PassSpans<'_> {
    fn file(&self, steps: &[Step], file: &PublishedFile) {
        self.flight.file(steps, file);
    }

    fn withdraw(&self, dir: u32, name: &[u8], gone: Option<u32>) {
        self.flight.withdraw(dir, name, gone);
    }

    fn wants_stream(&self) -> bool {
        true
    }

    fn stream(&self, _at: u64, bytes: &[u8]) {
        let mut st = self.view.state.lock();
        let Some(w) = st.writing.as_mut() else {
            return;
        };
        let len = w.len + bytes.len() as u64;
        let need = len.div_ceil(4096) * 4096 + 4096;
        let mut room = true;
        if need > w.counted {
            let more = (need - w.counted).max(STEP);
            room = self.cache.charge_free(more);
            if room {
                w.counted += more;
            }
        }
        let written = if room {
            (&*w.file).write_all(bytes).map_err(|e| {
                tracing::debug!(path = %w.path.display(), error = %e, "cannot keep the first pass's spans");
            })
        } else {
            Err(())
        };
        match written {
            Ok(()) => w.len = len,
            Err(()) => self.abandon(&mut st),
        }
    }

    fn checkpoint(&self, k: u32, point: &Checkpoint) {
        let mut st = self.view.state.lock();
        if let Some(Ok(writer)) = &mut st.seek {
            if let Err(e) = writer.push(point) {
                st.seek = Some(Err(format!("{SEEK_FILE}: {e}")));
            }
        }
        self.keep(&mut st);
        st.starts.push(point.output);
        self.start(&mut st, k);
    }

    fn stream_end(&self, _len: u64) {
        let mut st = self.view.state.lock();
        self.keep(&mut st);
        st.ended = true;
    }
}

impl Drop for PassSpans<'_> {
    fn drop(&mut self) {
        // A pass that ended early: the span it was writing is incomplete.
        let mut st = self.view.state.lock();
        self.abandon(&mut st);
    }
}
