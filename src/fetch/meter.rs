//! The meters of the downloads in flight: what each has received and when its last byte
//! came ([`Meter`], kept by the download thread and read by the unpacker to notice a stall),
//! and how far each has come ([`Downloads`], what the status file lists).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::cache::VersionKey;

/// What a running download has received, kept by its download thread and read by the
/// unpacker (to notice a stall) and the status file.
#[derive(Debug)]
pub struct Meter {
    pub started: Instant,
    received: AtomicU64,
    /// When the last byte came, in milliseconds since `started` (0: none yet).
    last_byte_ms: AtomicU64,
}

impl Meter {
    fn new() -> Meter {
        Meter {
            started: Instant::now(),
            received: AtomicU64::new(0),
            last_byte_ms: AtomicU64::new(0),
        }
    }

    /// `n` more bytes came from the network.
    pub fn received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        self.last_byte_ms.store(now, Ordering::Relaxed);
    }

    /// When the last byte came, since the start (zero before the first).
    pub fn last_byte(&self) -> Duration {
        Duration::from_millis(self.last_byte_ms.load(Ordering::Relaxed))
    }

    /// How long since the last byte (or the start, before the first).
    pub fn idle(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.last_byte())
    }
}

/// A download in flight, as far as it has come.
#[derive(Debug, Clone)]
pub struct Progress {
    pub storage: String,
    /// Uncompressed size announced by the API.
    pub size: u64,
    pub bytes: u64,
    pub files: u64,
    pub meter: Arc<Meter>,
}

/// The downloads in flight, by version.
#[derive(Default)]
pub struct Downloads {
    by_key: Mutex<HashMap<VersionKey, Progress>>,
}

impl Downloads {
    /// A download starts; what it receives goes into the returned meter.
    pub fn start(&self, key: &VersionKey, storage: &str, size: u64) -> Arc<Meter> {
        let meter = Arc::new(Meter::new());
        let p = Progress {
            storage: storage.to_string(),
            size,
            bytes: 0,
            files: 0,
            meter: meter.clone(),
        };
        self.by_key.lock().insert(key.clone(), p);
        meter
    }

    pub fn update(&self, key: &VersionKey, bytes: u64, files: u64) {
        if let Some(p) = self.by_key.lock().get_mut(key) {
            p.bytes = bytes;
            p.files = files;
        }
    }

    pub fn finish(&self, key: &VersionKey) {
        self.by_key.lock().remove(key);
    }

    /// The downloads in flight, oldest first.
    pub fn list(&self) -> Vec<(VersionKey, Progress)> {
        let mut all: Vec<_> = self.by_key.lock().clone().into_iter().collect();
        all.sort_by_key(|(_, p)| p.meter.started);
        all
    }
}
