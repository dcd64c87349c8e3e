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
//! Room is counted before bytes are written (in steps of [`STEP`]), so the disk never holds
//! more than the budget. A pass that fails or is cancelled removes the span it was writing;
//! the caller drops the spans it completed ([`super::Cache::drop_spans`]).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;

#[allow(clippy::wildcard_imports)] // The policy in `mod.rs` and its spans are one type.
use super::*;
use crate::archive::{PublishedFile, Step};

/// How much room a span being written counts at a time.
const STEP: u64 = 1 << 20;

/// The spans of one first pass, and the flight it publishes to (a [`Publish`] that hands
/// files and names on to the flight and keeps the stream).
pub(super) struct PassSpans<'a> {
    cache: &'a Cache,
    flight: &'a Flight,
    version: VersionKey,
    /// The serial the version's checksums will carry ([`crate::archive::Checks::serial`]):
    /// the spans are keyed by it as the spans a reader fetches are.
    pub(super) serial: u64,
    state: Mutex<PassState>,
}

#[derive(Default)]
struct PassState {
    writing: Option<Writing>,
    /// The stream ended: nothing more is kept.
    ended: bool,
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
    pub(super) fn new(cache: &'a Cache, flight: &'a Flight, version: &VersionKey) -> Self {
        PassSpans {
            cache,
            flight,
            version: version.clone(),
            serial: crate::archive::fresh_serial(),
            state: Mutex::new(PassState::default()),
        }
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
            .span_path(&self.version, self.serial, k);
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
            version: self.version.clone(),
            serial: self.serial,
            k: w.k,
        };
        let span = Arc::new(Span::new(w.file, w.len, w.path.clone(), disk_bytes));
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
        let mut st = self.state.lock();
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

    fn checkpoint(&self, k: u32, _at: u64) {
        let mut st = self.state.lock();
        self.keep(&mut st);
        self.start(&mut st, k);
    }

    fn stream_end(&self, _len: u64) {
        let mut st = self.state.lock();
        self.keep(&mut st);
        st.ended = true;
    }
}

impl Drop for PassSpans<'_> {
    fn drop(&mut self) {
        // A pass that ended early: the span it was writing is incomplete.
        let mut st = self.state.lock();
        self.abandon(&mut st);
    }
}
