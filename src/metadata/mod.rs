//! Metadata: the names the mount shows, as the API lists them. The storages of each kind
//! (`storages`) and the versions of each storage (`versions`), kept by one generic type
//! ([`Listings`]: served at once and refreshed in the background after the metadata TTL,
//! fetched once at a time however many callers miss, failures remembered, waits bounded by
//! [`FIRST_FETCH_WAIT`]), and their copies saved in the cache directory so that a mount
//! started with the API down still has them (`saved`).
//!
//! It reaches the API only through [`crate::remote::Remote`] and reports what it saw to
//! [`crate::activity::Activity`]; it knows nothing of inodes or of the cache's versions.
//! The filesystem (`crate::fs`) maps these listings to directories; the runs' and agents'
//! listings use the same [`Listings`] from `crate::runs`.

mod listings;
mod saved;
mod storages;
mod versions;

pub use listings::{
    answered, Age, ListingSource, Listings, Timing, Unavailable, FIRST_FETCH_WAIT,
    MISS_REFRESH_AFTER,
};
pub use saved::Saved;
pub use storages::{first_listing, storage_map, FirstListing, StorageMap, StorageSource};
pub use versions::{Ambiguous, VersionList, VersionSource, VersionsFailed};
