//! What the cache counts and tells: bytes charged to the budget beside the versions (the
//! files of final runs, the spools of downloads), the probe of which versions are in use,
//! and the picture of the whole cache that the status file and the tests read.

#[allow(clippy::wildcard_imports)] // The policy in `mod.rs` and its accounting are one type.
use super::*;

/// One version's line in [`Cache::snapshot`].
#[derive(Debug, Clone)]
pub struct ResidentInfo {
    pub key: VersionKey,
    pub disk_bytes: u64,
    pub pinned: bool,
    pub last_used: SystemTime,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub budget: u64,
    /// Bytes of resident versions plus reservations of fetches in flight.
    pub used: u64,
    /// Least recently used first.
    pub resident: Vec<ResidentInfo>,
    /// Every flight, running or queued.
    pub in_flight: Vec<VersionKey>,
    /// The flights waiting for a place in the download pool, and how long they have.
    pub queued: Vec<(VersionKey, Duration)>,
    /// How many downloads run at once at most.
    pub downloads: usize,
    /// Versions found damaged (a content file missing, short or failing its checksum, a
    /// damaged index or checksum file) and dropped since start.
    pub damaged: u64,
}

impl Cache {
    /// Count `bytes` kept beside the versions in the budget, evicting versions (least
    /// recently used, not pinned, not in use) to make room. Whether the total is now
    /// within the budget.
    pub fn charge(&self, bytes: u64) -> bool {
        let in_use = if self.over_budget_with(bytes) {
            self.in_use()
        } else {
            Arc::default()
        };
        let mut st = self.inner.state.lock();
        st.used += bytes;
        let evicted = self.evict_until(&mut st, self.inner.budget, None, &in_use);
        let within = st.used <= self.inner.budget;
        drop(st);
        purge(self.move_aside(evicted));
        within
    }

    /// Count `bytes` in the budget only if it has that much room free, evicting nothing:
    /// for bytes that help but are not worth a cached version (the spool of a download).
    pub fn charge_free(&self, bytes: u64) -> bool {
        let mut st = self.inner.state.lock();
        let fits = st.used + bytes <= self.inner.budget;
        if fits {
            st.used += bytes;
        }
        fits
    }

    /// Stop counting `bytes` charged before.
    pub fn discharge(&self, bytes: u64) {
        let mut st = self.inner.state.lock();
        st.used = st.used.saturating_sub(bytes);
    }

    /// Whether more is counted than the budget (charges included).
    pub fn over_budget(&self) -> bool {
        let st = self.inner.state.lock();
        st.used > self.inner.budget
    }

    /// Pin the versions `probe` names whenever eviction is considered (set once; later
    /// calls are ignored).
    pub fn set_in_use(&self, probe: InUse) {
        let _ = self.inner.in_use.set(probe);
    }

    pub(super) fn in_use(&self) -> Arc<HashSet<VersionKey>> {
        let Some(probe) = self.inner.in_use.get() else {
            return Arc::default();
        };
        let found = Arc::new(probe());
        *self.inner.in_use_seen.lock() = Some((Instant::now(), found.clone()));
        found
    }

    /// The probe's answer, at most [`IN_USE_SNAPSHOT_AGE`] old.
    pub(super) fn in_use_recent(&self) -> Arc<HashSet<VersionKey>> {
        if let Some((at, found)) = &*self.inner.in_use_seen.lock() {
            if at.elapsed() < IN_USE_SNAPSHOT_AGE {
                return found.clone();
            }
        }
        self.in_use()
    }

    /// Whether adding `need` bytes would pass the budget, so that eviction must look for
    /// victims (and needs to know which versions are in use).
    pub(super) fn over_budget_with(&self, need: u64) -> bool {
        self.inner.state.lock().used + need > self.inner.budget
    }

    /// The budget and the bytes in use (resident versions plus reservations), without the
    /// cost of [`Cache::snapshot`].
    pub fn usage(&self) -> (u64, u64) {
        (self.inner.budget, self.inner.state.lock().used)
    }

    /// How many downloads run at once at most.
    pub fn downloads(&self) -> usize {
        self.inner.pool.max()
    }

    /// A consistent picture of the cache for the status file and tests (the versions in
    /// use per the probe, as of at most a second ago, count as pinned).
    pub fn snapshot(&self) -> Snapshot {
        let in_use = self.in_use_recent();
        let st = self.inner.state.lock();
        let mut queued: Vec<(VersionKey, Duration)> = st
            .flights
            .iter()
            .filter_map(|(k, f)| match f.phase() {
                Phase::Queued(since) => Some((k.clone(), since.elapsed())),
                Phase::Running(_) => None,
            })
            .collect();
        // Longest waiting first: the order they will run in.
        queued.sort_by_key(|(_, waited)| std::cmp::Reverse(*waited));
        Snapshot {
            budget: self.inner.budget,
            used: st.used,
            resident: st
                .lru
                .iter()
                .rev()
                .map(|(k, e)| ResidentInfo {
                    key: k.clone(),
                    disk_bytes: e.disk_bytes,
                    pinned: e.pinned() || in_use.contains(k),
                    last_used: e.last_used,
                })
                .collect(),
            in_flight: st.flights.keys().cloned().collect(),
            queued,
            downloads: self.inner.pool.max(),
            damaged: st.damaged,
        }
    }
}
