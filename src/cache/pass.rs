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
use crate::archive::seek::{read_checkpoint, Checkpoint, SeekIndex, SeekWriter, WindowAt};
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
    /// Told at each checkpoint and at the end: readers waiting for a span to be known.
    changed: Condvar,
}

#[derive(Default)]
struct PassState {
    /// The checkpoints recorded so far, without their windows (on disk: `windows`).
    points: Vec<Checkpoint>,
    windows: Vec<WindowAt>,
    /// The seek index being written, opened again to read windows from.
    seek_read: Option<File>,
    /// The archive at the store (`ETag`, length), when the store named it.
    origin: Option<(String, u64)>,
    /// The seek index, written as its checkpoints come (their windows go to disk at once:
    /// see [`SeekWriter`]); `Err` once a write failed.
    seek: Option<Result<SeekWriter, String>>,
    writing: Option<Writing>,
    /// The stream ended: nothing more is kept.
    ended: bool,
    /// The bytes of the current span so far, kept or not, and the length of the one before:
    /// the room a span asks for at its start.
    current_len: u64,
    last_len: u64,
}

/// The span being written.
struct Writing {
    k: u32,
    file: File,
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
        let seek_read = seek.file().try_clone()?;
        let view = Arc::new(PassView {
            version: version.clone(),
            serial: crate::archive::fresh_serial(),
            state: Mutex::new(PassState {
                seek: Some(Ok(seek)),
                seek_read: Some(seek_read),
                ..PassState::default()
            }),
            changed: Condvar::new(),
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
        let mut st = self.view.state.lock();
        let (seek, count) = (st.seek.take(), st.points.len());
        drop(st);
        let writer = match seek {
            Some(Ok(writer)) => writer,
            Some(Err(why)) => return Err(why),
            None => return Err("the seek index was finished already".into()),
        };
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
        // Room for a span as long as the last one (spans are about as long as each other,
        // each the same stretch of the archive), and the file system's block for its last
        // bytes: a span that would not fit is not begun, rather than written in part and
        // deleted.
        let counted = st.last_len.div_ceil(4096) * 4096 + 4096;
        if !self.cache.charge_free(counted) {
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
                    file,
                    path,
                    len: 0,
                    counted,
                });
            }
            Err(e) => {
                self.cache.discharge(counted);
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
        let span = Arc::new(Span::new(w.file, w.len, w.path.clone(), disk_bytes));
        let mut cs = self.cache.inner.state.lock();
        if cs.spans.lru.contains(&key) || cs.spans.flights.contains_key(&key) {
            // Not expected: a reader fetches a span only once the pass has gone past it
            // without keeping it (see `passing_spans`). The one in the table stays; it has
            // the same path, so nothing is removed.
            cs.used = cs.used.saturating_sub(w.counted);
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
    /// the next read fetches them again.
    pub fn drop_passing_spans(&self, view: &PassView, spans: &[(u64, Arc<Span>)]) {
        let st = view.state.lock();
        let ks: Vec<u32> = spans
            .iter()
            .filter_map(|(start, _)| st.points.binary_search_by_key(start, |p| p.output).ok())
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
    /// pass `view` is, each with the offset it starts at: on disk (kept, or written that
    /// far), or to fetch by a range request (passed by and not kept). `None`: some span is
    /// not known well enough yet (the pass has not recorded its end, or the store did not
    /// name the archive): wait for a change ([`PassView::wait_change`]).
    pub fn passing_spans(&self, view: &PassView, t0: u64, t1: u64) -> Option<Vec<(u64, PassSpan)>> {
        let st = view.state.lock();
        let first = st
            .points
            .partition_point(|p| p.output <= t0)
            .checked_sub(1)?;
        let mut spans = Vec::new();
        for (k, point) in st.points.iter().enumerate().skip(first) {
            let start = point.output;
            if start >= t1 {
                break;
            }
            let next = st.points.get(k + 1);
            let k = u32::try_from(k).ok()?;
            let key = SpanKey {
                version: view.version.clone(),
                serial: view.serial,
                k,
            };
            if let Some(w) = st.writing.as_ref().filter(|w| w.k == k) {
                let needed = t1.min(next.map_or(u64::MAX, |n| n.output));
                if start.saturating_add(w.len) < needed {
                    return None;
                }
                let file = w.file.try_clone().ok()?;
                let span = Arc::new(Span::new(file, w.len, w.path.clone(), 0));
                spans.push((start, PassSpan::Have(span)));
                continue;
            }
            if let Some(span) = self.inner.state.lock().spans.lru.get(&key) {
                spans.push((start, PassSpan::Have(span.clone())));
                continue;
            }
            // Passed by and not kept: a range request from its checkpoint to the next.
            let (next, (etag, total)) = (next?, st.origin.as_ref()?);
            let input = point.input;
            let point = match &st.seek_read {
                Some(file) => read_checkpoint(&st.points, &st.windows, file, k as usize)
                    .map_err(|e| format!("{SEEK_FILE}: {e}")),
                None => Err(format!("{SEEK_FILE}: not open")),
            };
            spans.push((
                start,
                PassSpan::Fetch(SpanRange {
                    key,
                    len: next.output - start,
                    point,
                    input,
                    end: (next.input + 1).min(*total),
                    etag: etag.clone(),
                    total: *total,
                }),
            ));
        }
        Some(spans)
    }
}

/// A span of a first pass, as a reader finds it ([`Cache::passing_spans`]).
pub enum PassSpan {
    /// On disk.
    Have(Arc<Span>),
    /// Passed by and not kept: to fetch with a range request.
    Fetch(SpanRange),
}

/// What a range request for one span of an archive needs.
pub struct SpanRange {
    pub key: SpanKey,
    /// The span's length in the tar stream.
    pub len: u64,
    /// Its checkpoint, with its window (or why the window could not be read).
    pub point: Result<Checkpoint, String>,
    /// The archive's bytes `input..end`: from the checkpoint to the next (and the byte a
    /// block may share).
    pub input: u64,
    pub end: u64,
    /// The object at the store: its `ETag` and whole length.
    pub etag: String,
    pub total: u64,
}

impl PassView {
    /// Wait until the pass records a checkpoint or ends, or `timeout` passes.
    pub fn wait_change(&self, timeout: Duration) {
        let mut st = self.state.lock();
        if !st.ended {
            self.changed.wait_for(&mut st, timeout);
        }
    }

    /// Whether the pass has ended (well or not): what it did not make readable, the
    /// complete version will.
    pub fn ended(&self) -> bool {
        self.state.lock().ended
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
        st.current_len += bytes.len() as u64;
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
            w.file.write_all(bytes).map_err(|e| {
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
        let window = match &mut st.seek {
            Some(Ok(writer)) => writer.push(point).map_err(|e| format!("{SEEK_FILE}: {e}")),
            Some(Err(why)) => Err(why.clone()),
            None => Err("the seek index was finished already".into()),
        };
        match window {
            Ok(at) => st.windows.push(at),
            Err(why) => st.seek = Some(Err(why)),
        }
        self.keep(&mut st);
        st.last_len = std::mem::take(&mut st.current_len);
        st.points.push(point.clone_lean());
        self.start(&mut st, k);
        drop(st);
        self.view.changed.notify_all();
    }

    fn stream_end(&self, _len: u64) {
        let mut st = self.view.state.lock();
        self.keep(&mut st);
        st.ended = true;
        drop(st);
        self.view.changed.notify_all();
    }

    fn archive(&self, etag: &str, len: u64) {
        self.view.state.lock().origin = Some((etag.to_string(), len));
    }
}

impl Drop for PassSpans<'_> {
    fn drop(&mut self) {
        // A pass that ended early: the span it was writing is incomplete.
        let mut st = self.view.state.lock();
        self.abandon(&mut st);
        st.ended = true;
        drop(st);
        self.view.changed.notify_all();
    }
}
