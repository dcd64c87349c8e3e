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

use std::sync::Arc;
use std::time::Duration;

use crate::activity::Activity;
use crate::metadata::{Listings, Timing};

pub use api::{AgentFiles, AgentFilesSource, AgentSource, Events, RunList, RunListSource, RunsApi};
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

/// The runs and agents of a mount.
pub struct Runs {
    pub state: Arc<RunState>,
    pub lists: Listings<RunListSource>,
    pub agents: Listings<AgentSource>,
    pub agent_files: Listings<AgentFilesSource>,
}

impl Runs {
    pub fn new(
        api: Arc<dyn RunsApi>,
        store: RunStore,
        config: RunsConfig,
        activity: Arc<Activity>,
        metadata_ttl: Duration,
    ) -> Runs {
        let timing = Timing::with_ttl(metadata_ttl);
        Runs {
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
                },
                timing.clone(),
            ),
            agent_files: Listings::new(
                AgentFilesSource {
                    api: api.clone(),
                    activity,
                },
                timing,
            ),
            state: RunState::new(api, store),
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
