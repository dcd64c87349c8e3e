//! The storages of each kind, as the mount shows them: where their listing comes from
//! ([`StorageSource`] for [`Listings`]), which of the API's storages are kept (a name must
//! be able to be a file name), and finding one by name.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::api::{ApiError, Kind, Storage};
use crate::ids::StorageName;

use super::listings::{Listings, Source};
use super::status::Activity;
use super::{Fs, FsError, Remote, Result};

/// The storages of one kind, by name.
pub type StorageMap = BTreeMap<StorageName, Storage>;

/// The storages of a kind, listed by the API.
pub struct StorageSource {
    pub remote: Arc<dyn Remote>,
    pub activity: Arc<Activity>,
}

impl Source for StorageSource {
    type Key = Kind;
    type Value = StorageMap;
    type Error = ApiError;

    fn fetch(&self, kind: &Kind) -> Result<StorageMap, ApiError> {
        let list = self.remote.list_storages(*kind)?;
        Ok(list
            .into_iter()
            .filter_map(|s| sane_storage(*kind, s))
            .map(|s| (s.name.clone(), s))
            .collect())
    }

    /// Revoked access must not leave the old names visible.
    fn serves_previous(&self, e: &ApiError) -> bool {
        !e.is_auth()
    }

    fn report(&self, kind: &Kind, e: &ApiError, served_previous: bool) {
        if served_previous {
            tracing::warn!(kind = kind.plural(), error = %e, "refreshing the list failed; serving the previous one");
        } else {
            tracing::warn!(kind = kind.plural(), error = %e, "listing failed");
            self.activity
                .error(format!("listing {}: {e}", kind.plural()));
        }
    }
}

/// The storage of `kind` named `name`.
pub fn find_storage(storages: &Listings<StorageSource>, kind: Kind, name: &str) -> Result<Storage> {
    storages
        .find(&kind, |map| map.get(name).cloned())?
        .ok_or(FsError::NotFound)
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

impl Fs {
    /// The storage of `kind` named `name`.
    pub(super) fn find_storage(&self, kind: Kind, name: &str) -> Result<Storage> {
        find_storage(&self.storages, kind, name)
    }
}
