//! Runs and agents, end to end: what the API says of them (`api`: the [`RunsApi`] trait and
//! the listings of recent runs, agents and an agent's files), what each run's files hold
//! and writing them (`files`), what the mount knows of each run and keeping its files up to
//! date (`state`: final runs fetched once, live runs followed while they are read), and
//! their directories on disk under the cache's budget (`store`).
//!
//! The filesystem (`crate::fs`) maps these to inodes and answers the kernel; nothing here
//! knows of inodes, and the cache knows nothing of runs (it counts their bytes when told).

mod api;
mod files;
mod state;
mod store;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::activity::Activity;
use crate::metadata::{Listings, Saved, Timing};

pub use api::{
    AgentFiles, AgentFilesSource, AgentSource, Events, Reported, RunDetailSource, RunFilesSource,
    RunList, RunListSource, RunsApi,
};
pub use files::{RunFile, SyncError};
pub use state::{
    RunState, View, FOLLOW_IDLE, FOLLOW_POLL, MAX_FOLLOWED, MISS_MEMORY, UNFOLLOWED_REFRESH,
};
pub use store::{RunStore, RUN_COMPLETE};

/// How far back and how many runs `runs/` lists.
#[derive(Debug, Clone)]
pub struct RunsConfig {
    /// Runs created within this long of now.
    pub since: Duration,
    /// At most this many, newest first.
    pub limit: usize,
}

/// The runs and agents of a mount. Every wait for the API goes through one of these
/// [`Listings`], so it is bounded, interruptible and never on a FUSE worker (see
/// `crate::metadata`'s listings).
pub struct Runs {
    pub state: Arc<RunState>,
    pub lists: Listings<RunListSource>,
    pub agents: Listings<AgentSource>,
    pub agent_files: Listings<AgentFilesSource>,
    /// Runs' details asked by id (served for [`UNFOLLOWED_REFRESH`], then refreshed in
    /// the background).
    pub details: Listings<RunDetailSource>,
    /// Fetches of runs' files (always asked anew: `Listings::renew`).
    pub files: Listings<RunFilesSource>,
}

impl Runs {
    /// The runs and agents asked of `api` (every call's outcome told to `activity`), their
    /// files under `store`, the agents saved in `cache_dir` for mounts started offline.
    pub fn new(
        api: Arc<dyn RunsApi>,
        store: RunStore,
        config: RunsConfig,
        activity: Arc<Activity>,
        metadata_ttl: Duration,
        cache_dir: &Path,
    ) -> Runs {
        let timing = Timing::with_ttl(metadata_ttl);
        let api: Arc<dyn RunsApi> = Arc::new(Reported {
            api,
            activity: activity.clone(),
        });
        let saved = Arc::new(Saved::new(cache_dir));
        let state = RunState::new(api.clone(), store, activity.clone());
        Runs {
            details: Listings::new(
                RunDetailSource {
                    state: state.clone(),
                    activity: activity.clone(),
                },
                Timing::with_ttl(UNFOLLOWED_REFRESH),
            ),
            files: Listings::new(
                RunFilesSource {
                    state: state.clone(),
                    activity: activity.clone(),
                },
                Timing::with_ttl(Duration::ZERO),
            ),
            lists: Listings::new(
                RunListSource {
                    api: api.clone(),
                    activity: activity.clone(),
                    since: config.since,
                    limit: config.limit,
                },
                timing.clone(),
            ),
            agents: Listings::new(
                AgentSource {
                    api: api.clone(),
                    activity: activity.clone(),
                    saved: saved.clone(),
                },
                timing.clone(),
            ),
            agent_files: Listings::new(
                AgentFilesSource {
                    api,
                    activity,
                    saved,
                },
                timing,
            ),
            state,
        }
    }
}

/// Whether an agent's or volume's name can be a file name.
pub fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && !name.contains(['/', '\0'])
}
