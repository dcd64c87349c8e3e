//! What the kernel keeps of the tree that can change under it, and telling it so.
//!
//! The kernel keeps every symlink's target (`FUSE_CACHE_SYMLINKS`, see `fuse.rs`) until it
//! is told otherwise, whatever the attributes' TTL: a path through `latest` or a prefix
//! link then costs no `READLINK`. Of all links, only `latest` ever changes its target, when
//! a storage's current version moves. So each target shown for a `latest` is noted here,
//! and when a storages listing (fetched in the background once the old one is older than
//! the metadata TTL) or a lookup shows another one, the kernel is told to drop that link's
//! attributes and target ([`KernelCache::invalidate`]) before anyone is answered the new
//! one. The kernel therefore never follows an old `latest` longer than it would have read
//! it from the daemon without the cache.
//!
//! This room never sees fuser: the adapter hands over its notifier as a [`KernelCache`]
//! once the session exists (tests without a mount have none, and nothing to tell).

use std::collections::HashMap;
use std::sync::OnceLock;

use parking_lot::Mutex;

use crate::api::Kind;
use crate::ids::{Ino, StorageName, VersionId};
use crate::metadata::StorageMap;

/// The kernel's caches, as the filesystem may tell it about them.
pub trait KernelCache: Send + Sync {
    /// Forget the attributes of inode `ino`, and its data too (a symlink's target) if
    /// `data`. Never called from the answer to a request about `ino`'s data itself (a
    /// `READLINK` of it): the kernel waits for that answer with the page locked that this
    /// would drop.
    fn invalidate(&self, ino: Ino, data: bool);
}

/// The targets of the `latest` links the kernel was shown, and how to tell it when they
/// move (see the module docs).
#[derive(Default)]
pub(super) struct KernelNotes {
    kernel: OnceLock<Box<dyn KernelCache>>,
    latest: Mutex<HashMap<(Kind, StorageName), Shown>>,
}

/// A `latest` link as the kernel was last shown it.
struct Shown {
    ino: Ino,
    target: VersionId,
}

impl KernelNotes {
    /// From now on, tell `kernel` (once only: a mount has one session).
    pub fn set(&self, kernel: Box<dyn KernelCache>) {
        let _ = self.kernel.set(kernel);
    }

    /// The `latest` link `ino` of a storage is shown with `target` (in a lookup, its
    /// attributes or a listing). If the kernel was shown another target, it drops what it
    /// holds of the link first. `tell`: whether the kernel may be told now (not while it
    /// waits for this link's target, see [`KernelCache::invalidate`]).
    pub fn latest_shown(
        &self,
        kind: Kind,
        storage: &StorageName,
        ino: Ino,
        target: &VersionId,
        tell: bool,
    ) {
        let moved = {
            let mut latest = self.latest.lock();
            let shown = Shown {
                ino,
                target: target.clone(),
            };
            match latest.insert((kind, storage.clone()), shown) {
                Some(old) => old.target != *target,
                None => false,
            }
        };
        if moved && tell {
            tracing::debug!(%storage, ino = ino.0, version = %target, "latest moved; the kernel drops its copy of the link");
            self.tell(ino);
        }
    }

    /// The storages of `kind` were just listed: every `latest` shown with a target other
    /// than its storage's current version (or of a storage gone) is dropped by the kernel.
    pub fn storages_listed(&self, kind: Kind, map: &StorageMap) {
        let mut moved = Vec::new();
        self.latest.lock().retain(|(k, storage), shown| {
            if *k != kind {
                return true;
            }
            match map.get(storage).and_then(|s| s.current_version_id.as_ref()) {
                Some(now) if *now == shown.target => true,
                Some(now) => {
                    moved.push((storage.clone(), shown.ino, Some(now.clone())));
                    shown.target = now.clone();
                    true
                }
                None => {
                    moved.push((storage.clone(), shown.ino, None));
                    false
                }
            }
        });
        for (storage, ino, now) in moved {
            tracing::debug!(%storage, ino = ino.0, version = ?now.as_ref().map(|v| v.as_str()), "latest moved; the kernel drops its copy of the link");
            self.tell(ino);
        }
    }

    fn tell(&self, ino: Ino) {
        if let Some(k) = self.kernel.get() {
            k.invalidate(ino, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::api::Storage;
    use crate::ids::StorageId;

    /// Records what the kernel is told.
    struct Told(Arc<Mutex<Vec<(u64, bool)>>>);

    impl KernelCache for Told {
        fn invalidate(&self, ino: Ino, data: bool) {
            self.0.lock().push((ino.0, data));
        }
    }

    fn id(c: char) -> VersionId {
        VersionId::parse(&c.to_string().repeat(64)).unwrap()
    }

    fn listing(current: Option<VersionId>) -> StorageMap {
        let name = StorageName::new("report");
        let s = Storage {
            id: StorageId::new("s1"),
            name: name.clone(),
            current_version_id: current,
            size: 0,
            file_count: 0,
            created_at: UNIX_EPOCH,
            updated_at: UNIX_EPOCH,
        };
        StorageMap::from([(name, s)])
    }

    #[test]
    fn the_kernel_drops_a_latest_link_only_when_it_moves() {
        let told = Arc::new(Mutex::new(Vec::new()));
        let notes = KernelNotes::default();
        notes.set(Box::new(Told(told.clone())));
        let name = StorageName::new("report");
        let (kind, ino) = (Kind::Artifact, Ino(7));

        notes.latest_shown(kind, &name, ino, &id('a'), true);
        notes.latest_shown(kind, &name, ino, &id('a'), true);
        notes.storages_listed(kind, &listing(Some(id('a'))));
        notes.storages_listed(Kind::Volume, &StorageMap::new());
        assert!(told.lock().is_empty(), "nothing moved");

        // A listing refresh sees the move: the link and its target are dropped, once.
        notes.storages_listed(kind, &listing(Some(id('b'))));
        notes.latest_shown(kind, &name, ino, &id('b'), true);
        assert_eq!(*told.lock(), [(7, true)]);

        // A lookup sees it first; a READLINK (no telling) only notes it.
        notes.latest_shown(kind, &name, ino, &id('c'), true);
        notes.latest_shown(kind, &name, ino, &id('d'), false);
        assert_eq!(*told.lock(), [(7, true), (7, true)]);

        // The storage lost its current version: dropped, and forgotten.
        notes.storages_listed(kind, &listing(None));
        notes.storages_listed(kind, &listing(None));
        assert_eq!(told.lock().len(), 3);
    }
}
