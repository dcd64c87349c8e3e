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
use crate::metadata::{Listings, Saved, Timing};

pub use api::{
    AgentFiles, AgentFilesSource, AgentSource, Events, Reported, RunDetailSource, RunFilesSource,
    RunList, RunListKey, RunListSource, RunsApi,
};
pub use files::{detail_file, level_lines, RunFile, SyncError, LEVELS};
pub use state::{
    Followed, RunState, View, FIRST_EVENT_WAIT, FOLLOW_IDLE, FOLLOW_POLL, MAX_FOLLOWED,
    MAX_STREAMS, MIN_STREAM_TURN, MISS_MEMORY, STREAM_TURN, UNFOLLOWED_REFRESH,
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

/// How long a listing of runs (`runs/`, `agents/<name>/runs/`, `runs/by-status/<status>/`)
/// is served before it is asked again, when the metadata TTL is longer: a run started a few
/// seconds ago is in `ls runs`. Each refresh is one request per 100 runs listed.
pub const RUNS_LIST_TTL: Duration = Duration::from_secs(5);

/// The statuses a run can be in, as the API names them (`runs/by-status/<status>/`).
pub const STATUSES: [&str; 6] = [
    "pending",
    "running",
    "completed",
    "failed",
    "timeout",
    "cancelled",
];

/// The runs and agents of a mount. Every wait for the API goes through one of these
/// [`Listings`], so it is bounded, interruptible and never on a FUSE worker (see
/// `crate::metadata`'s listings).
pub struct Runs {
    pub state: Arc<RunState>,
    /// Recent runs: all (key `None`) or an agent's (`Some(agent id)`).
    pub lists: Listings<RunListSource>,
    /// Recent runs in a status (`Some(status)`), as the API's filter lists them.
    pub by_status: Listings<RunListSource>,
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
    /// files under `store`, the agents saved in `saved` (the filesystem's saved listings)
    /// for mounts started offline.
    pub fn new(
        api: Arc<dyn RunsApi>,
        store: RunStore,
        config: RunsConfig,
        activity: Arc<Activity>,
        metadata_ttl: Duration,
        saved: Arc<Saved>,
    ) -> Runs {
        let timing = Timing::with_ttl(metadata_ttl);
        let api: Arc<dyn RunsApi> = Arc::new(Reported {
            api,
            activity: activity.clone(),
        });
        let state = RunState::new(api.clone(), store, activity.clone());
        let run_timing = Timing::with_ttl(metadata_ttl.min(RUNS_LIST_TTL));
        let run_list = |key| RunListSource {
            api: api.clone(),
            activity: activity.clone(),
            since: config.since,
            limit: config.limit,
            key,
        };
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
            lists: Listings::new(run_list(RunListKey::AgentId), run_timing.clone()),
            by_status: Listings::new(run_list(RunListKey::Status), run_timing),
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
