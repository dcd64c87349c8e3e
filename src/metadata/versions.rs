//! The versions of each storage: where their listing comes from ([`VersionSource`] for
//! [`Listings`]: the API, and the copy saved by an earlier mount), indexed by id once per
//! fetch ([`VersionList`]: the API's order for listings, a `BTreeMap` for full ids and
//! unique prefixes, so that resolving a name costs a lookup and listing a storage is linear
//! in its versions).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

use crate::activity::Activity;
use crate::api::{ApiError, Kind, Version};
use crate::ids::{StorageName, VersionId};
use crate::remote::Remote;

use super::listings::{ListingSource, Listings, Unavailable};
use super::saved::Saved;
use super::storages::StorageSource;
use crate::cache::Unbounded;

/// The versions of one storage: in the order the API lists them (newest first), and by id.
pub struct VersionList {
    in_order: Vec<Version>,
    by_id: BTreeMap<VersionId, usize>,
}

/// A prefix shared by more than one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ambiguous;

impl VersionList {
    pub fn new(in_order: Vec<Version>) -> VersionList {
        let mut by_id = BTreeMap::new();
        for (i, v) in in_order.iter().enumerate() {
            // An id listed twice (the API should not) resolves to its first listing.
            by_id.entry(v.id.clone()).or_insert(i);
        }
        VersionList { in_order, by_id }
    }

    /// The versions, newest first.
    pub fn iter(&self) -> impl Iterator<Item = &Version> {
        self.in_order.iter()
    }

    /// The version whose id is `id` or starts with it: `None` when there is none,
    /// `Ambiguous` when the prefix is shared.
    pub fn find(&self, id: &str) -> Option<Result<&Version, Ambiguous>> {
        let mut hits = self
            .by_id
            .range::<str, _>((Bound::Included(id), Bound::Unbounded))
            .take_while(|(k, _)| k.as_str().starts_with(id));
        let (first, &i) = hits.next()?;
        if first != id && hits.next().is_some() {
            return Some(Err(Ambiguous));
        }
        Some(Ok(&self.in_order[i]))
    }
}

/// Why the versions of a storage could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum VersionsFailed {
    /// The storage is not in the listing of its kind (gone, or never was).
    #[error("no such storage")]
    NoStorage,
    /// The listing of storages is unavailable (reported there).
    #[error("{0}")]
    Storages(Unavailable<ApiError>),
    #[error("{0}")]
    Api(Arc<ApiError>),
}

/// The versions of a storage (by kind and name), listed by the API.
pub struct VersionSource {
    pub remote: Arc<dyn Remote>,
    pub activity: Arc<Activity>,
    /// Where the storage's id comes from.
    pub storages: Listings<StorageSource>,
    pub saved: Arc<Saved>,
}

impl ListingSource for VersionSource {
    type Key = (Kind, StorageName);
    type Value = VersionList;
    type Error = VersionsFailed;

    fn fetch(&self, (kind, name): &(Kind, StorageName)) -> Result<VersionList, VersionsFailed> {
        let storage = self
            .storages
            .find(kind, &Unbounded, |map| map.get(name.as_str()).cloned())
            .map_err(VersionsFailed::Storages)?
            .ok_or(VersionsFailed::NoStorage)?;
        let list = self.remote.list_versions(*kind, &storage.id);
        self.activity.api_result(&list);
        // Versions whose id is not a version id were dropped by the API client already.
        Ok(VersionList::new(
            list.map_err(|e| VersionsFailed::Api(Arc::new(e)))?,
        ))
    }

    /// A storage that is gone, or revoked access, must not leave old versions visible.
    fn serves_previous(&self, e: &VersionsFailed) -> bool {
        match e {
            VersionsFailed::NoStorage => false,
            VersionsFailed::Storages(Unavailable::Failed(e)) | VersionsFailed::Api(e) => {
                !e.is_auth() && !e.is_not_found()
            }
            VersionsFailed::Storages(
                Unavailable::NoAnswer { .. } | Unavailable::WouldBlock | Unavailable::Interrupted,
            ) => true,
        }
    }

    fn report(
        &self,
        (kind, name): &(Kind, StorageName),
        e: &VersionsFailed,
        served_previous: bool,
        streak: u32,
    ) {
        let VersionsFailed::Api(e) = e else {
            // Not found is the user's, and a failed storage listing was reported there.
            return;
        };
        if served_previous {
            // Once per outage at WARN: the status file tells the rest.
            if streak == 1 {
                tracing::warn!(storage = %name, error = %e, "refreshing versions failed; serving the previous list and retrying in the background");
            } else {
                tracing::debug!(storage = %name, error = %e, streak, "refreshing versions failed again");
            }
        } else {
            tracing::warn!(storage = %name, error = %e, "listing versions failed");
            self.activity
                .error(format!("listing the versions of {kind} {name}: {e}"));
        }
    }

    fn load(&self, (kind, name): &(Kind, StorageName)) -> Option<VersionList> {
        Some(VersionList::new(self.saved.load_versions(*kind, name)?))
    }

    fn save(&self, (kind, name): &(Kind, StorageName), list: &VersionList) {
        self.saved.save_versions(*kind, name, list.iter());
    }

    fn forget(&self, (kind, name): &(Kind, StorageName)) {
        self.saved.forget_versions(*kind, name);
    }

    fn answered_since(&self, t: Instant) -> bool {
        self.activity.answered_since(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn version(id: String) -> Version {
        Version {
            id: VersionId::parse(&id).unwrap(),
            storage_id: "s".into(),
            size: Some(0),
            file_count: Some(0),
            message: None,
            created_by: None,
            created_at: UNIX_EPOCH,
        }
    }

    #[test]
    fn versions_resolve_by_full_id_and_unique_prefix() {
        let ids = [
            format!("aaaa1111{}", "0".repeat(56)),
            format!("aaaa2222{}", "0".repeat(56)),
            format!("bbbb1111{}", "0".repeat(56)),
        ];
        let list = VersionList::new(ids.iter().cloned().map(version).collect());
        let cases: Vec<(&str, Option<Result<&str, Ambiguous>>)> = vec![
            (&ids[0], Some(Ok(&ids[0]))),
            (&ids[2], Some(Ok(&ids[2]))),
            ("aaaa2222", Some(Ok(&ids[1]))),
            ("bbbb", Some(Ok(&ids[2]))),
            ("aaaa", Some(Err(Ambiguous))),
            ("a", Some(Err(Ambiguous))),
            ("cccc", None),
            ("aaaa3", None),
            ("b", Some(Ok(&ids[2]))),
        ];
        for (query, want) in cases {
            let got = list.find(query).map(|r| r.map(|v| v.id.as_str()));
            assert_eq!(got, want, "{query}");
        }
        // The order the API gave is kept for listings.
        let order: Vec<&str> = list.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(order, [&ids[0], &ids[1], &ids[2]]);
    }
}
