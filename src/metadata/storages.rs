//! The storages of each kind, as the mount shows them: where their listing comes from
//! ([`StorageSource`] for [`super::Listings`]: the API, and the copy saved by an earlier mount),
//! which of the API's storages are kept (a name must be able to be a file name), and
//! finding one by name.

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::api::{ApiError, Kind, Storage};
use crate::ids::StorageName;

use crate::activity::Activity;
use crate::remote::Remote;

use super::listings::ListingSource;
use super::saved::Saved;

/// The storages of one kind, by name.
pub type StorageMap = BTreeMap<StorageName, Storage>;

/// The storages of a kind, listed by the API.
pub struct StorageSource {
    pub remote: Arc<dyn Remote>,
    pub activity: Arc<Activity>,
    pub saved: Arc<Saved>,
    /// Told of each listing fetched (the filesystem, to have the kernel drop the `latest`
    /// links that moved).
    pub listed: Option<Listed>,
}

/// What is told of each storages listing fetched.
pub type Listed = Arc<dyn Fn(Kind, &StorageMap) + Send + Sync>;

/// The storages the mount shows, by name, out of a listing of the API.
pub fn storage_map(kind: Kind, list: Vec<Storage>) -> StorageMap {
    list.into_iter()
        .filter_map(|s| sane_storage(kind, s))
        .map(|s| (s.name.clone(), s))
        .collect()
}

impl ListingSource for StorageSource {
    type Key = Kind;
    type Value = StorageMap;
    type Error = ApiError;

    fn fetch(&self, kind: &Kind) -> Result<StorageMap, ApiError> {
        let list = self.remote.list_storages(*kind);
        self.activity.api_result(&list);
        Ok(storage_map(*kind, list?))
    }

    /// Revoked access must not leave the old names visible.
    fn serves_previous(&self, e: &ApiError) -> bool {
        !e.is_auth()
    }

    fn report(&self, kind: &Kind, e: &ApiError, served_previous: bool, streak: u32) {
        if served_previous {
            // Once per outage at WARN: the status file tells the rest.
            if streak == 1 {
                tracing::warn!(kind = kind.plural(), error = %e, "refreshing the list failed; serving the previous one and retrying in the background");
            } else {
                tracing::debug!(kind = kind.plural(), error = %e, streak, "refreshing the list failed again");
            }
        } else {
            tracing::warn!(kind = kind.plural(), error = %e, "listing failed");
            self.activity
                .error(format!("listing {}: {e}", kind.plural()));
        }
    }

    fn load(&self, kind: &Kind) -> Option<StorageMap> {
        Some(storage_map(*kind, self.saved.load_storages(*kind)?))
    }

    fn save(&self, kind: &Kind, map: &StorageMap) {
        self.saved.save_storages(*kind, map.values());
        if let Some(listed) = &self.listed {
            listed(*kind, map);
        }
    }

    fn forget(&self, kind: &Kind) {
        self.saved.forget_storages(*kind);
    }

    fn answered_since(&self, t: Instant) -> bool {
        self.activity.answered_since(t)
    }
}

/// What became of the first listing a mount asks for (see [`first_listing`]).
#[derive(Debug)]
pub enum FirstListing {
    Listed(Vec<Storage>),
    Failed(ApiError),
    /// No answer within the wait; the request was left to end on its own.
    NoAnswer(Duration),
}

/// The volumes, listed before anything is mounted: the request that checks the API URL and
/// the token, and the filesystem's first listing (`Fs::seed_storages`). It is retried as
/// any request is; `wait` bounds how long the caller waits for it (`None`: to its end).
pub fn first_listing(remote: &Arc<dyn Remote>, wait: Option<Duration>) -> FirstListing {
    let (tx, rx) = mpsc::channel();
    let asking = remote.clone();
    let spawned = std::thread::Builder::new()
        .name("vm0fs-first-listing".into())
        .spawn(move || {
            let _ = tx.send(asking.list_storages(Kind::Volume));
        });
    let answer = match (spawned, wait) {
        (Err(_), _) => Ok(remote.list_storages(Kind::Volume)),
        (Ok(_), Some(wait)) => rx.recv_timeout(wait).map_err(|_| wait),
        (Ok(_), None) => rx.recv().map_err(|_| Duration::ZERO),
    };
    match answer {
        Ok(Ok(list)) => FirstListing::Listed(list),
        Ok(Err(e)) => FirstListing::Failed(e),
        Err(waited) => FirstListing::NoAnswer(waited),
    }
}

/// A storage as the mount can show it, or `None` (with a warning) when the API sent a name
/// that cannot be a file name. (A `current_version_id` that is not a version id was dropped
/// by the API client already, so `latest` can only ever point at a sibling directory.)
fn sane_storage(kind: Kind, s: Storage) -> Option<Storage> {
    let name = s.name.as_str();
    let name_ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && !name.contains(['/', '\0']);
    if !name_ok {
        tracing::warn!(kind = kind.plural(), id = %s.id, name = ?name, "ignoring a storage whose name cannot be a file name");
        return None;
    }
    Some(s)
}
