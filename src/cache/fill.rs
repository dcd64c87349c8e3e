//! Filling the cache: loading a version found on disk, fetching one into a temporary
//! directory under a reservation of the budget, committing it, and making room by
//! evicting least recently used versions that are neither pinned nor open.

use super::pass::PassSpans;
#[allow(clippy::wildcard_imports)] // The policy in `mod.rs` and its filling are one type.
use super::*;
use crate::archive::{self, Checks, Damage};

/// Room kept for a version before it is unpacked: its content bytes, the index
/// ([`archive::index_allowance`]: 512 bytes a file; the unpack refuses a larger index), the
/// last block of each file of its own (at most one per `PACK_MAX` bytes) and of the pack,
/// and [`SLACK`] for the index header and the completion record. The real usage is counted
/// once the version is complete.
///
/// A version of unknown size may unpack to the whole budget: the whole budget is asked
/// for (the caller caps every reservation at the budget, and settles for the room that
/// evicting everything it may evict leaves).
pub(super) fn reservation(a: Announced) -> u64 {
    let Some(size) = a.size else {
        return u64::MAX;
    };
    let own_files = size / archive::PACK_MAX + 1;
    size.saturating_add(archive::index_allowance(a.file_count.unwrap_or(0), size))
        .saturating_add(own_files.saturating_mul(4096))
        .saturating_add(SLACK)
}

/// See [`reservation`].
const SLACK: u64 = 64 * 1024;

/// Room kept for a version larger than the cache, whose content is not kept: its index
/// (as [`reservation`] counts it), its checksums (8 bytes a node, 4 a unit of 64 KiB),
/// its positions (8 bytes a node) and its seek index (a checkpoint of at most 33 KiB per
/// [`archive::seek::DEFAULT_SPACING`] of the archive, which is about as long as its
/// content at most), and [`SLACK`].
pub(super) fn streamed_reservation(size: u64, file_count: u64) -> u64 {
    let nodes = file_count.saturating_mul(2).saturating_add(1);
    let units = (size / archive::CHECK_BLOCK).saturating_add(file_count);
    let checkpoints = size / archive::seek::DEFAULT_SPACING + 2;
    archive::index_allowance(file_count, size)
        .saturating_add(nodes.saturating_mul(16))
        .saturating_add(units.saturating_mul(4))
        .saturating_add(checkpoints.saturating_mul(33 * 1024))
        .saturating_add(SLACK)
}

/// The part of the room of a version of unknown size that its index may take (one in 16):
/// with no file count, an archive may hold one member per 4 KiB of content
/// ([`archive::member_cap`]), and each costs the index at most 256 bytes.
const UNKNOWN_INDEX_SHARE: u64 = 16;

/// The most the index of a version of `a` may take when unpacked under a byte limit of
/// `max_bytes` with `need` bytes reserved: what [`reservation`] set aside for it, no more
/// (the reservation is cut to the budget when it is larger).
fn index_room(a: Announced, max_bytes: u64, need: u64) -> u64 {
    archive::index_allowance(a.file_count.unwrap_or(0), max_bytes)
        .saturating_add(SLACK)
        .min(need.saturating_sub(max_bytes))
}

/// Versions taken out of the LRU whose directories are still to be moved aside (see
/// [`Cache::move_aside`]).
#[must_use]
pub(super) struct Evicted(Vec<VersionKey>, Vec<PathBuf>);

impl Cache {
    /// Read the index of a version found on disk at start. On failure (a damaged index), the
    /// version is dropped from the cache and `None` tells the caller to fetch it again.
    pub(super) fn load(&self, key: &VersionKey) -> Option<Arc<CachedVersion>> {
        let dir = self.inner.layout.version_dir(key);
        let origin = self.inner.state.lock().lru.peek(key)?.archive.clone();
        // The index and the checksums are each checked whole (header, length, checksum),
        // and so are the positions and the seek index of a version larger than the cache.
        let loaded = Index::open(&archive::index_path(&dir))
            .map_err(|e| Damage(format!("index.bin: {e}")))
            .and_then(|index| {
                let checks = Checks::open(&dir, index.len(), true)?;
                let streamed = origin.map(|o| Streamed::open(&dir, o)).transpose()?;
                Ok((index, checks, streamed))
            });
        let mut st = self.inner.state.lock();
        let entry = st.lru.get_mut(key)?;
        match loaded {
            Ok((index, checks, streamed)) => {
                let v = Arc::new(CachedVersion {
                    key: key.clone(),
                    dir,
                    index,
                    checks: Some(checks),
                    disk_bytes: entry.disk_bytes,
                    files: Default::default(),
                    streamed,
                });
                entry.slot = Loaded::Ready(v.clone());
                Some(v)
            }
            Err(e) => {
                tracing::warn!(version = %key, problem = %e, "a cached version is damaged; dropping it, the next access downloads it again");
                let bytes = entry.disk_bytes;
                st.lru.pop(key);
                st.used -= bytes;
                st.damaged += 1;
                st.evicting.insert(key.clone());
                drop(st);
                purge(self.move_aside(Evicted(vec![key.clone()], self.drop_spans(key))));
                None
            }
        }
    }

    /// Drop a version found damaged while it was served (its index, a content file, or
    /// its checksums): the next access downloads it again. Those holding it keep their
    /// map of the old index and their open content files (deleting a file does not take
    /// it from under them). Whether this call dropped it (a version found damaged by
    /// several readers at once is dropped, and counted, once).
    pub fn discard_damaged(&self, key: &VersionKey) -> bool {
        let mut st = self.inner.state.lock();
        let Some(entry) = st.lru.pop(key) else {
            return false;
        };
        st.used -= entry.disk_bytes;
        st.damaged += 1;
        st.evicting.insert(key.clone());
        drop(st);
        purge(self.move_aside(Evicted(vec![key.clone()], self.drop_spans(key))));
        true
    }

    pub(super) fn fetch(
        &self,
        key: &VersionKey,
        flight: &Arc<Flight>,
        announced: Announced,
        fetch: BoxedFetch,
    ) -> Outcome {
        let budget = self.inner.budget;
        // A version larger than the budget keeps its index and reads its content from the
        // archive by ranges; only one whose index cannot fit is refused.
        let streamed = announced.size.filter(|size| *size > budget);
        let need = streamed.map_or_else(
            || reservation(announced).min(budget),
            |size| streamed_reservation(size, announced.file_count.unwrap_or(0)),
        );
        if let Some(size) = streamed.filter(|_| need > budget) {
            let err = CacheError::TooLarge {
                key: key.clone(),
                size,
                budget,
            };
            if self.first_told_too_large(key) {
                tracing::error!(version = %key, size, budget, "{err}");
            } else {
                tracing::debug!(version = %key, size, budget, "{err}");
            }
            return Err(Arc::new(err));
        }
        let mut need = need;
        let mut trash = Vec::new();
        let mut refuse_after: Option<Instant> = None;
        loop {
            if self.cancelled(key, flight) {
                purge(trash);
                return Err(self.cancel_error(key));
            }
            let in_use = if self.over_budget_with(need) {
                self.in_use()
            } else {
                Arc::default()
            };
            let mut st = self.inner.state.lock();
            let target = budget.saturating_sub(need);
            let evicted = self.evict_until(&mut st, target, None, &in_use);
            if announced.size.is_none() && st.used < budget {
                // Unknown size: all the room there is, after evicting all that may be
                // evicted. It is also the unpack's limit.
                need = budget - st.used;
            }
            if st.used + need <= budget {
                st.used += need;
                st.reserved.insert(flight.id, (flight.clone(), need));
                drop(st);
                trash.extend(self.move_aside(evicted));
                break;
            }
            // Other downloads in progress hold reservations; once complete (and unpinned)
            // they can be evicted, so wait for one rather than refuse. Only flights that
            // hold a reservation are waited for: they never wait for room themselves, so
            // two fetches can never wait for each other.
            let busy = st.reserved.values().map(|(f, _)| f.clone()).next();
            drop(st);
            trash.extend(self.move_aside(evicted));
            match busy {
                Some(other) => {
                    let _ = other.wait_done();
                }
                // A file closed a moment ago may still hold its pin: the kernel sends
                // FUSE_RELEASE asynchronously after close(2) returns. Give such pins a
                // moment to drop before refusing. (Each round asks the in-use probe again,
                // which walks /proc: a few rounds, not hundreds.)
                None if *refuse_after.get_or_insert_with(|| Instant::now() + PIN_GRACE)
                    > Instant::now() =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                None => {
                    purge(trash);
                    let err = CacheError::NoRoom {
                        key: key.clone(),
                        needed: need,
                        budget,
                    };
                    tracing::error!(version = %key, "{err}");
                    return Err(Arc::new(err));
                }
            }
        }
        // Deleting evicted versions before the download starts keeps the real usage
        // within the budget plus the one version being unpacked.
        purge(trash);

        let result = self.fetch_into_tmp(key, flight, announced, need, streamed.is_some(), fetch);
        let mut st = self.inner.state.lock();
        if let Some((_, r)) = st.reserved.remove(&flight.id) {
            st.used -= r;
        }
        let (dir, unpacked, streamed, disk_bytes) = match result {
            Ok(ok) => ok,
            Err(e) => {
                drop(st);
                if streamed.is_some() {
                    // The spans its first pass kept are keyed by checksums never used.
                    purge(self.drop_spans(key));
                }
                if flight.cancel.load(Ordering::SeqCst) {
                    return Err(self.cancel_error(key));
                }
                return Err(Arc::new(e));
            }
        };
        let v = Arc::new(CachedVersion {
            key: key.clone(),
            dir,
            index: unpacked.index,
            checks: Some(unpacked.checks),
            disk_bytes,
            files: Default::default(),
            streamed,
        });
        st.used += disk_bytes;
        st.lru.put(
            key.clone(),
            Resident {
                slot: Loaded::Ready(v.clone()),
                disk_bytes,
                archive: v.streamed.as_ref().map(|s| s.origin.clone()),
                last_used: SystemTime::now(),
                last_touch: Instant::now(),
            },
        );
        // The real usage can exceed the reservation only by what blocks cost beyond the
        // estimate; trim others (never the new one) to get back under the budget.
        if st.used > budget {
            drop(st);
            let in_use = self.in_use();
            let mut st = self.inner.state.lock();
            let evicted = self.evict_until(&mut st, budget, Some(key), &in_use);
            drop(st);
            purge(self.move_aside(evicted));
        }
        Ok(v)
    }

    pub(super) fn fetch_into_tmp(
        &self,
        key: &VersionKey,
        flight: &Arc<Flight>,
        announced: Announced,
        need: u64,
        streamed: bool,
        fetch: BoxedFetch,
    ) -> Result<(PathBuf, Unpacked, Option<Streamed>, u64), CacheError> {
        let layout = &self.inner.layout;
        let tmp = layout.new_tmp_dir(key)?;
        let outcome = (|| {
            let cancelled = || self.cancelled(key, flight);
            // The unpack's limits: the announced size and the index room reserved for it;
            // or, for an unknown size, the room reserved holds both: the index gets the
            // share its members could take at most ([`UNKNOWN_INDEX_SHARE`]), the content
            // the rest.
            let (max_bytes, max_index_bytes) = match announced.size {
                // Its content is not written: the announced size bounds the tar stream.
                Some(size) if streamed => (
                    size,
                    archive::index_allowance(announced.file_count.unwrap_or(0), size) + SLACK,
                ),
                Some(size) => {
                    let max_bytes = size.min(self.inner.budget);
                    (max_bytes, index_room(announced, max_bytes, need))
                }
                None => {
                    let index = need / UNKNOWN_INDEX_SHARE;
                    (need - index, index)
                }
            };
            // A version larger than the cache keeps what fits of the tar stream its first
            // pass inflates (see `pass.rs`).
            let pass = streamed
                .then(|| PassSpans::new(self, flight, key, &tmp))
                .transpose()
                .map_err(|source| CacheError::Io {
                    path: tmp.join(SEEK_FILE),
                    source,
                })?;
            let publish: &dyn Publish = match &pass {
                Some(pass) => pass,
                None => &**flight,
            };
            let target = FetchTarget {
                dir: &tmp,
                max_bytes,
                max_index_bytes,
                publish,
                cancelled: &cancelled,
                keep_content: !streamed,
            };
            // A fetch that panics fails like one that errs: its temporary directory is
            // removed and its reservation returned below, and its flight ends.
            let fetched = catch_unwind(AssertUnwindSafe(|| fetch(target))).map_err(|panic| {
                CacheError::Panicked {
                    key: key.clone(),
                    message: crate::panics::message(&*panic),
                }
            })?;
            let mut unpacked = fetched.map_err(|source| CacheError::Fetch {
                key: key.clone(),
                source,
            })?;
            if let Some(pass) = &pass {
                unpacked.checks.adopt_serial(pass.serial());
            }
            let streamed = match &pass {
                Some(pass) => {
                    let unindexed = |why: String| CacheError::Unindexed {
                        key: key.clone(),
                        why,
                    };
                    let seek = unpacked.seek.take().ok_or_else(|| {
                        unindexed("the archive's seek index was not built".into())
                    })?;
                    let origin = unpacked.origin.take().ok_or_else(|| {
                        unindexed(
                            "the object store sent no ETag, so ranges of the archive could not \
                             be checked to come from the same object"
                                .into(),
                        )
                    })?;
                    pass.finish_seek(&seek).map_err(unindexed)?;
                    Streamed::save_positions(&tmp, &unpacked.positions).map_err(|source| {
                        CacheError::Io {
                            path: tmp.clone(),
                            source,
                        }
                    })?;
                    // Read back as a later start reads it: checked whole, windows on disk.
                    Some(Streamed::open(&tmp, origin).map_err(|damage| unindexed(damage.0))?)
                }
                None => None,
            };
            let disk_bytes = disk_usage(&tmp) + 4096;
            let meta = Completion {
                format: CACHE_FORMAT_VERSION,
                kind: key.kind,
                id: key.id.clone(),
                disk_bytes,
                files: unpacked.stats.files,
                bytes: unpacked.stats.bytes,
                archive: streamed.as_ref().map(|s| s.origin.clone()),
            };
            self.wait_moved_aside(key);
            let dir = layout.commit(key, &tmp, &meta)?;
            Ok((dir, unpacked, streamed, disk_bytes))
        })();
        if outcome.is_err() {
            // Nothing of a failed fetch is kept.
            remove_all(&tmp);
        }
        outcome
    }

    /// Take unpinned versions not `in_use` out of the LRU, least recently used first, until
    /// `used <= target`. Their directories are moved aside by [`Cache::move_aside`], after
    /// the caller lets go of the lock.
    pub(super) fn evict_until(
        &self,
        st: &mut State,
        target: u64,
        keep: Option<&VersionKey>,
        in_use: &HashSet<VersionKey>,
    ) -> Evicted {
        let mut victims = Vec::new();
        let mut spans = Vec::new();
        while st.used > target {
            let victim = st
                .lru
                .iter()
                .rev()
                .find(|(k, e)| {
                    !e.pinned()
                        && Some(*k) != keep
                        && !in_use.contains(*k)
                        && !st.flights.contains_key(*k)
                })
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else { break };
            let entry = st.lru.pop(&victim).expect("victim was just found");
            st.used -= entry.disk_bytes;
            tracing::info!(version = %victim, bytes = entry.disk_bytes, "evicting from the cache");
            st.evicting.insert(victim.clone());
            let (bytes, paths) = st.spans.drop_version(&victim);
            st.used -= bytes;
            spans.extend(paths);
            victims.push(victim);
        }
        // Then the spans of versions larger than the cache that nobody reads.
        while st.used > target {
            let Some((bytes, path)) = st.spans.evict_one() else {
                break;
            };
            st.used -= bytes;
            spans.push(path);
        }
        Evicted(victims, spans)
    }

    /// Take the spans of `key` out of the table (the version is dropped): the paths to
    /// delete.
    pub(super) fn drop_spans(&self, key: &VersionKey) -> Vec<PathBuf> {
        let mut st = self.inner.state.lock();
        let (bytes, paths) = st.spans.drop_version(key);
        st.used -= bytes;
        paths
    }

    /// Move the directories of evicted versions out of sight (a rename each), without the
    /// lock; the paths to delete.
    pub(super) fn move_aside(&self, evicted: Evicted) -> Vec<PathBuf> {
        // Spans are files of their own, deleted as they are (a reader holding one keeps
        // its open file).
        for span in &evicted.1 {
            let _ = std::fs::remove_file(span);
        }
        if evicted.0.is_empty() {
            return Vec::new();
        }
        let layout = &self.inner.layout;
        let trash: Vec<PathBuf> = evicted
            .0
            .iter()
            .filter_map(|k| layout.discard(&layout.version_dir(k)))
            .collect();
        let mut st = self.inner.state.lock();
        for k in &evicted.0 {
            st.evicting.remove(k);
        }
        drop(st);
        self.inner.moved_aside.notify_all();
        trash
    }

    /// Wait until no evicted directory of `key` is still to be moved aside, so that a new
    /// commit of the same key is not moved aside in its place.
    pub(super) fn wait_moved_aside(&self, key: &VersionKey) {
        let mut st: MutexGuard<'_, State> = self.inner.state.lock();
        while st.evicting.contains(key) {
            self.inner.moved_aside.wait(&mut st);
        }
    }
}

/// Delete evicted version directories moved aside. A version is a handful of files (the
/// pack, the index, the record and its larger files), so this takes about as long
/// whatever its member count; the time is logged for the benchmark.
pub(super) fn purge(paths: Vec<PathBuf>) {
    for p in paths {
        let started = Instant::now();
        remove_all(&p);
        tracing::info!(
            path = %p.display(),
            ms = format!("{:.2}", started.elapsed().as_secs_f64() * 1000.0),
            "removed an evicted version"
        );
    }
}
