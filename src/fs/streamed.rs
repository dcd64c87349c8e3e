//! Reading the files of a version larger than the cache. Its first pass kept the tree, the
//! checksums, where each file lies in the tar stream and the checkpoints of the gzip
//! stream (`crate::cache::Streamed`), and of its content only the spans that fit the
//! cache's free room (`crate::cache::PassView`). A read finds the spans of the tar
//! stream that hold the units it touches (a span runs from one checkpoint to the next),
//! has the cache fetch those not on disk (one range request each, inflated from the
//! checkpoint, see `crate::cache::Cache::span`), and reads through the cache's checking
//! reader as any cached file is read: no byte is served before its unit passed its
//! checksum. A sequential reader near the end of a span has the next one fetched ahead.
//! While the first pass runs, a file it has gone by is read the same way, from what its
//! `PassView` says of each span: on disk (kept, or being written that far), or to fetch
//! once the checkpoint after it is recorded.
//!
//! What goes wrong stays with the read: a span that cannot be fetched or inflated fails
//! the read (`EIO`) and is not kept; a span whose bytes fail their checksums is dropped,
//! the read fails, and the next read fetches it again. An archive that changed at the
//! store (another `ETag`) drops the version's index: the next access indexes the new
//! archive, and its spans never mix with the old one's.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use crate::api::{ApiError, ArchiveRef, ResumePoint};
use crate::archive::seek::{inflate_from, Checkpoint};
use crate::archive::{At, Damage, CHECK_BLOCK, PACK_MAX};
use crate::cache::{
    Bytes, CacheError, CachedVersion, CheckedFile, PassSpan, Patience, ReadAt, Span, SpanError,
    SpanFailure, SpanFill, SpanKey, Stopped, Streamed, Sums, VersionKey, WAIT_SLICE,
};

use super::content::waited;
use super::handles::{InPass, OpenFile};
use super::inode::Range;
use super::wait::ThreadPolicy;
use super::{Fs, FsError, Result};

/// The spans a read covers, each with the tar-stream offset it starts at.
struct SpanSource {
    spans: Vec<(u64, Arc<Span>)>,
}

impl ReadAt for SpanSource {
    fn read_exact_at(&self, mut buf: &mut [u8], mut at: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        while !buf.is_empty() {
            let found = self
                .spans
                .iter()
                .find(|(start, s)| *start <= at && at < start + s.len);
            let Some((start, span)) = found else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("no span holds offset {at} of the tar stream"),
                ));
            };
            let within = at - start;
            let n = usize::try_from(span.len - within).map_or(buf.len(), |l| l.min(buf.len()));
            FileExt::read_exact_at(&span.file, &mut buf[..n], within)?;
            buf = &mut buf[n..];
            at += n as u64;
        }
        Ok(())
    }
}

/// Where span `k` starts in the tar stream, and its length.
fn span_bounds(streamed: &Streamed, k: u32) -> (u64, u64) {
    let points = &streamed.seek.points;
    let start = points[k as usize].output;
    let end = points
        .get(k as usize + 1)
        .map_or(streamed.seek.uncompressed_len, |n| n.output);
    (start, end.saturating_sub(start))
}

/// The whole units a read of `len` bytes at `offset` of a file of `size` bytes touches
/// (their start and end in the file), and whether the file is packed (one unit); `None`
/// for a read at or past the end.
fn units(size: u64, offset: u64, len: u32) -> Option<(u64, u64, bool)> {
    let end = offset.saturating_add(u64::from(len)).min(size);
    if offset >= end {
        return None;
    }
    let packed = size < PACK_MAX;
    if packed {
        return Some((0, size, true));
    }
    let first = offset / CHECK_BLOCK * CHECK_BLOCK;
    let last = end
        .div_ceil(CHECK_BLOCK)
        .saturating_mul(CHECK_BLOCK)
        .min(size);
    Some((first, last, false))
}

impl Fs {
    /// Up to `len` bytes at `offset` of `open`, a file of a version larger than the cache:
    /// from the spans of its first pass while it runs, else from the complete version.
    pub(super) fn read_streamed(&self, open: &OpenFile, offset: u64, len: u32) -> Result<Bytes> {
        if let Some(p) = open.passing() {
            return self.read_passing(p, open.size(), offset, len);
        }
        let Some((v, range, node, at)) = open.streamed() else {
            return Err(FsError::Damaged(Damage("not a streamed file".into())));
        };
        self.read_in_version(v, range, node, at, open.size(), offset, len)
    }

    /// A read of a file published by the first pass of its version: from the spans the
    /// pass kept or is writing, and by range requests for those it passed by and did not
    /// keep, as soon as the checkpoints around them are recorded; from the complete version
    /// if the pass ends first.
    fn read_passing(&self, p: &InPass, size: u64, offset: u64, len: u32) -> Result<Bytes> {
        let Some((from, to, packed)) = units(size, offset, len) else {
            return Ok(Bytes::empty());
        };
        let (t0, t1) = (p.at.saturating_add(from), p.at.saturating_add(to));
        let planned = loop {
            if let Some(spans) = self.cache.passing_spans(&p.view, t0, t1) {
                break spans;
            }
            // The pass ends (its `PassSpans` is dropped) before its flight does.
            if p.view.ended() {
                return self.read_after_pass(p, size, offset, len);
            }
            if !ThreadPolicy.may_block() {
                return Err(FsError::WouldBlock);
            }
            p.view.wait_change(WAIT_SLICE);
            if ThreadPolicy.gave_up() {
                return Err(FsError::Interrupted);
            }
        };
        let mut spans = Vec::with_capacity(planned.len());
        for (start, span) in planned {
            let span = match span {
                PassSpan::Have(span) => span,
                PassSpan::Fetch(r) => {
                    self.check_span_fits(&r.key.version, r.len)?;
                    let fill = || {
                        let from = ResumePoint {
                            offset: r.input,
                            etag: r.etag.clone(),
                            total: Some(r.total),
                        };
                        let point = r.point.clone().map_err(Damage);
                        self.range_fill(&p.range, point, from, r.end, r.len)
                    };
                    match self.cache.span(&r.key, r.len, &ThreadPolicy, fill) {
                        Ok(span) => span,
                        Err(e) => return Err(self.span_failed(&r.key.version, r.key.k, e)),
                    }
                }
            };
            spans.push((start, span));
        }
        let source = SpanSource { spans };
        let f = CheckedFile {
            file: &source,
            direct: None,
            path: Path::new(""),
            base: p.at,
            size,
            packed,
            node: p.node,
            sums: Sums::Known {
                source: p.view.source(),
                sums: &p.sums,
            },
        };
        self.cache.verified().read(&f, offset, len).map_err(|damage| {
            self.cache.drop_passing_spans(&p.view, &source.spans);
            tracing::warn!(version = %p.range.version, problem = %damage, "bytes read during a first pass fail their checksums; the read fails and the next one reads them again");
            FsError::Damaged(damage)
        })
    }

    /// A read of a file published by a first pass that has ended: from the version.
    fn read_after_pass(&self, p: &InPass, size: u64, offset: u64, len: u32) -> Result<Bytes> {
        let r = waited(p.flight.wait(&ThreadPolicy))?;
        let v = self.finished(&p.range.name, &p.flight, r)?;
        let at = v.streamed.as_ref().and_then(|s| s.positions.get(p.node));
        match at {
            Some(At::Data(at)) => self.read_in_version(&v, &p.range, p.node, at, size, offset, len),
            _ => Err(self.streamed_damage(
                &v,
                format!("node {} has no place in the tar stream", p.node),
            )),
        }
    }

    /// Up to `len` bytes at `offset` of node `node` of `v`, a version larger than the
    /// cache, whose content lies at `at` of its tar stream.
    #[allow(clippy::too_many_arguments)] // One read: where it is, and what it asks.
    fn read_in_version(
        &self,
        v: &Arc<CachedVersion>,
        range: &Range,
        node: u32,
        at: u64,
        size: u64,
        offset: u64,
        len: u32,
    ) -> Result<Bytes> {
        let (Some(streamed), Some(checks)) = (&v.streamed, &v.checks) else {
            return Err(FsError::Damaged(Damage(
                "a version larger than the cache without its seek index".into(),
            )));
        };
        let Some((from, to, packed)) = units(size, offset, len) else {
            return Ok(Bytes::empty());
        };
        let (t0, t1) = match (at.checked_add(from), at.checked_add(to)) {
            (Some(t0), Some(t1)) if t1 <= streamed.seek.uncompressed_len => (t0, t1),
            _ => {
                return Err(self.streamed_damage(
                    v,
                    format!("node {node} lies past the end of the tar stream"),
                ))
            }
        };
        let serial = checks.serial();
        let mut spans = Vec::new();
        let mut k = self.span_index(v, streamed, t0)?;
        loop {
            let (start, span) = self.span(v, streamed, range, serial, k, &ThreadPolicy)?;
            let span_end = start + span.len;
            spans.push((start, span));
            if span_end >= t1 {
                // Read-ahead: a reader in the second half of a span will want the next.
                let half = start + (span_end - start) / 2;
                if t1 > half && (k as usize + 1) < streamed.seek.points.len() {
                    self.span_ahead(v, streamed, range, serial, k + 1);
                }
                break;
            }
            if k as usize + 1 >= streamed.seek.points.len() {
                // The spans end before the file does: the index does not hold together.
                return Err(self.streamed_damage(
                    v,
                    format!("the tar stream ends before the content of node {node} does"),
                ));
            }
            k += 1;
        }
        let source = SpanSource { spans };
        let f = CheckedFile {
            file: &source,
            direct: None,
            path: &v.dir,
            base: at,
            size,
            packed,
            node,
            sums: Sums::Stored { checks },
        };
        self.cache.verified().read(&f, offset, len).map_err(|damage| {
            // The spans are wrong, not the index: they go, and the next read fetches them.
            for (start, _) in &source.spans {
                if let Ok(k) = self.span_index(v, streamed, *start) {
                    self.cache.drop_span(&SpanKey {
                        version: v.key.clone(),
                        serial,
                        k,
                    });
                }
            }
            tracing::warn!(version = %v.key, problem = %damage, "bytes read again from the archive fail their checksums; the read fails and the next one fetches them again");
            FsError::Damaged(damage)
        })
    }

    /// The span that holds tar-stream offset `t`.
    fn span_index(&self, v: &CachedVersion, streamed: &Streamed, t: u64) -> Result<u32> {
        let points = &streamed.seek.points;
        let k = points.partition_point(|p| p.output <= t);
        match k.checked_sub(1).and_then(|k| u32::try_from(k).ok()) {
            Some(k) => Ok(k),
            None => Err(self.streamed_damage(
                v,
                format!("no checkpoint before offset {t} of the tar stream"),
            )),
        }
    }

    /// Span `k` of version `v`, with the tar-stream offset it starts at: from disk, or
    /// fetched while the caller waits as `patience` allows.
    fn span(
        &self,
        v: &Arc<CachedVersion>,
        streamed: &Streamed,
        range: &Range,
        serial: u64,
        k: u32,
        patience: &dyn Patience,
    ) -> Result<(u64, Arc<Span>)> {
        let (start, span_len) = span_bounds(streamed, k);
        self.check_span_fits(&v.key, span_len)?;
        let key = SpanKey {
            version: v.key.clone(),
            serial,
            k,
        };
        let got = self.cache.span(&key, span_len, patience, || {
            self.span_fill(range, streamed, k, span_len)
        });
        match got {
            Ok(span) => Ok((start, span)),
            Err(e) => Err(self.span_failed(&v.key, k, e)),
        }
    }

    /// Refuse a span of version `key` that the whole cache cannot hold: the one thing that
    /// cannot work (a stretch of the archive between two checkpoints that unpacks to more
    /// than the budget).
    fn check_span_fits(&self, key: &VersionKey, span_len: u64) -> Result<()> {
        let budget = self.cache.usage().0;
        if span_len <= budget {
            return Ok(());
        }
        let err = CacheError::SpanTooLarge {
            key: key.clone(),
            span: span_len,
            budget,
        };
        if self.cache.first_told_too_large(key) {
            tracing::error!(version = %key, span = span_len, budget, "{err}");
        } else {
            tracing::debug!(version = %key, span = span_len, budget, "{err}");
        }
        Err(FsError::Cache(Arc::new(err)))
    }

    /// A span of version `key` that could not be had, as the read answers it.
    fn span_failed(&self, key: &VersionKey, k: u32, e: SpanError) -> FsError {
        match e {
            SpanError::Stopped(Stopped::WouldBlock) => FsError::WouldBlock,
            SpanError::Stopped(Stopped::Interrupted) => FsError::Interrupted,
            SpanError::Failed(failure) => {
                let why = &failure.why;
                if failure.changed && self.cache.discard_damaged(key) {
                    tracing::warn!(version = %key, problem = %why, "the archive of a version larger than the cache changed at the store; its index is dropped, the next access builds it again");
                } else {
                    tracing::warn!(version = %key, span = k, problem = %why, "could not read a span of the archive of a version larger than the cache");
                }
                FsError::Io(io::Error::other(format!(
                    "{key}: reading span {k} of its archive failed: {why}"
                )))
            }
        }
    }

    /// Start fetching span `k` for a reader that will want it next, when there is room.
    fn span_ahead(
        &self,
        v: &CachedVersion,
        streamed: &Streamed,
        range: &Range,
        serial: u64,
        k: u32,
    ) {
        let (_, span_len) = span_bounds(streamed, k);
        let key = SpanKey {
            version: v.key.clone(),
            serial,
            k,
        };
        self.cache.span_ahead(&key, span_len, || {
            self.span_fill(range, streamed, k, span_len)
        });
    }

    /// What fetches span `k`: one range request from its checkpoint to the next (plus the
    /// byte a block may share), inflated from the checkpoint, `span_len` bytes written.
    fn span_fill(&self, range: &Range, streamed: &Streamed, k: u32, span_len: u64) -> SpanFill {
        let points = &streamed.seek.points;
        let end = points
            .get(k as usize + 1)
            .map_or(streamed.seek.compressed_len, |n| {
                (n.input + 1).min(streamed.seek.compressed_len)
            });
        let from = ResumePoint {
            offset: points[k as usize].input,
            etag: streamed.origin.etag.clone(),
            total: Some(streamed.origin.len),
        };
        self.range_fill(range, streamed.checkpoint(k as usize), from, end, span_len)
    }

    /// What fetches a span: the archive's bytes `from..end` with one range request,
    /// inflated from `point`, `span_len` bytes written.
    fn range_fill(
        &self,
        range: &Range,
        point: std::result::Result<Checkpoint, Damage>,
        from: ResumePoint,
        end: u64,
        span_len: u64,
    ) -> SpanFill {
        let remote = self.remote.clone();
        let storage = self.find_storage(range.kind, range.name.as_str());
        let archive = storage.map(|s| {
            ArchiveRef::version(range.kind, s.id, range.version.as_str()).named(range.name.clone())
        });
        Box::new(move |file: &mut std::fs::File| {
            let archive = archive.map_err(|e| format!("its storage is not known: {e}"))?;
            let point = point.map_err(|e| e.0)?;
            let failed = |e: &io::Error| SpanFailure {
                why: e.to_string(),
                changed: e
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<ApiError>())
                    .is_some_and(ApiError::is_changed),
            };
            let compressed =
                remote
                    .download_range(&archive, &from, end)
                    .map_err(|e| SpanFailure {
                        why: e.to_string(),
                        changed: e.is_changed(),
                    })?;
            let inflated = inflate_from(&point, compressed.reader).map_err(|e| failed(&e))?;
            let mut out = io::BufWriter::with_capacity(1 << 20, file);
            let copied =
                io::copy(&mut inflated.take(span_len), &mut out).map_err(|e| failed(&e))?;
            out.flush().map_err(|e| failed(&e))?;
            if copied < span_len {
                return Err(format!(
                    "the archive's range ended after {copied} of the span's {span_len} bytes"
                )
                .into());
            }
            Ok(())
        })
    }

    /// A version larger than the cache whose index does not hold together: dropped, so
    /// that the next access indexes it again.
    fn streamed_damage(&self, v: &CachedVersion, why: String) -> FsError {
        let damage = Damage(why);
        if self.cache.discard_damaged(&v.key) {
            tracing::warn!(version = %v.key, problem = %damage, "the index of a version larger than the cache is damaged; dropped it, the next access builds it again");
        }
        FsError::Damaged(damage)
    }
}
