//! What the runs ask of the API: one small trait, which the API client implements and the
//! library tests replace with a fake ([`Reported`] tells [`Activity`] the outcome of every
//! call), and what they fetch as [`ListingSource`]s of the generic
//! [`crate::metadata::Listings`] (runs, agents, an agent's files, a run's detail, a run's
//! files), so that every wait for the API is bounded and interruptible in one place. The
//! agents and their files are saved in the cache directory for mounts started offline.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::api::{Agent, ApiError, Client, LogPage, LogQuery, Run, RunEvent, RunId, RunQuery};

use crate::activity::Activity;
use crate::metadata::{ListingSource, Saved};

use super::files::SyncError;
use super::state::RunState;

/// A run's event stream being read.
pub type Events = Box<dyn Iterator<Item = io::Result<RunEvent>> + Send>;

/// The API calls the runs and agents of the mount are made of.
pub trait RunsApi: Send + Sync + 'static {
    fn list_runs(&self, query: &RunQuery<'_>) -> Result<Vec<Run>, ApiError>;
    fn get_run(&self, id: &RunId) -> Result<Run, ApiError>;
    fn run_logs(&self, id: &RunId, query: &LogQuery<'_>) -> Result<LogPage, ApiError>;
    fn run_metrics(&self, id: &RunId) -> Result<Value, ApiError>;
    /// The run's event stream after `last_event_id`, on a connection that lasts `within`
    /// at most when given.
    fn run_events(
        &self,
        id: &RunId,
        last_event_id: Option<u64>,
        within: Option<Duration>,
    ) -> Result<Events, ApiError>;
    fn list_agents(&self) -> Result<Vec<Agent>, ApiError>;
    fn get_agent(&self, id: &str) -> Result<Agent, ApiError>;
    fn list_agent_versions(&self, id: &str) -> Result<Vec<Value>, ApiError>;
}

impl RunsApi for Client {
    fn list_runs(&self, query: &RunQuery<'_>) -> Result<Vec<Run>, ApiError> {
        Client::list_runs(self, query)
    }
    fn get_run(&self, id: &RunId) -> Result<Run, ApiError> {
        Client::get_run(self, id)
    }
    fn run_logs(&self, id: &RunId, query: &LogQuery<'_>) -> Result<LogPage, ApiError> {
        Client::run_logs(self, id, query)
    }
    fn run_metrics(&self, id: &RunId) -> Result<Value, ApiError> {
        Client::run_metrics(self, id)
    }
    fn run_events(
        &self,
        id: &RunId,
        last_event_id: Option<u64>,
        within: Option<Duration>,
    ) -> Result<Events, ApiError> {
        Ok(Box::new(Client::run_events_within(
            self,
            id,
            last_event_id,
            within,
        )?))
    }
    fn list_agents(&self) -> Result<Vec<Agent>, ApiError> {
        Client::list_agents(self)
    }
    fn get_agent(&self, id: &str) -> Result<Agent, ApiError> {
        Client::get_agent(self, id)
    }
    fn list_agent_versions(&self, id: &str) -> Result<Vec<Value>, ApiError> {
        Client::list_agent_versions(self, id)
    }
}

/// The API with the outcome of every call told to [`Activity`]: whether the API answers,
/// since when it fails and its last error, as the status file shows them.
pub struct Reported {
    pub api: Arc<dyn RunsApi>,
    pub activity: Arc<Activity>,
}

impl Reported {
    fn note<T>(&self, r: Result<T, ApiError>) -> Result<T, ApiError> {
        self.activity.api_result(&r);
        if r.is_ok() {
            // A fetch of many requests (a long log) goes on: its callers wait on.
            crate::metadata::answered();
        }
        r
    }
}

impl RunsApi for Reported {
    fn list_runs(&self, query: &RunQuery<'_>) -> Result<Vec<Run>, ApiError> {
        self.note(self.api.list_runs(query))
    }
    fn get_run(&self, id: &RunId) -> Result<Run, ApiError> {
        self.note(self.api.get_run(id))
    }
    fn run_logs(&self, id: &RunId, query: &LogQuery<'_>) -> Result<LogPage, ApiError> {
        self.note(self.api.run_logs(id, query))
    }
    fn run_metrics(&self, id: &RunId) -> Result<Value, ApiError> {
        self.note(self.api.run_metrics(id))
    }
    fn run_events(
        &self,
        id: &RunId,
        last_event_id: Option<u64>,
        within: Option<Duration>,
    ) -> Result<Events, ApiError> {
        self.note(self.api.run_events(id, last_event_id, within))
    }
    fn list_agents(&self) -> Result<Vec<Agent>, ApiError> {
        self.note(self.api.list_agents())
    }
    fn get_agent(&self, id: &str) -> Result<Agent, ApiError> {
        self.note(self.api.get_agent(id))
    }
    fn list_agent_versions(&self, id: &str) -> Result<Vec<Value>, ApiError> {
        self.note(self.api.list_agent_versions(id))
    }
}

/// Recent runs, newest first, with an index by id.
pub struct RunList {
    pub runs: Vec<Arc<Run>>,
    pub by_id: BTreeMap<RunId, usize>,
    /// When it was fetched.
    pub fetched: std::time::Instant,
}

impl RunList {
    pub fn get(&self, id: &RunId) -> Option<&Arc<Run>> {
        self.by_id.get(id).map(|&i| &self.runs[i])
    }
}

/// Shared by the sources: how failures are logged and shown.
fn report_failure(
    what: &str,
    e: &ApiError,
    served_previous: bool,
    streak: u32,
    activity: &Activity,
) {
    if served_previous && streak > 1 {
        tracing::debug!(error = %e, streak, "refreshing {what} failed again");
    } else if served_previous {
        tracing::warn!(error = %e, "refreshing {what} failed; serving the previous one");
    } else {
        tracing::warn!(error = %e, "listing {what} failed");
        activity.error(format!("listing {what}: {e}"));
    }
}

/// The runs listing: every run (key `None`) or, by `key`, an agent's (its id) or those in
/// a status (as the API filters them), created within `since` of now, at most `limit`.
pub struct RunListSource {
    pub api: Arc<dyn RunsApi>,
    pub activity: Arc<Activity>,
    pub since: Duration,
    pub limit: usize,
    pub key: RunListKey,
}

/// What the key of a [`RunListSource`] filters by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunListKey {
    AgentId,
    Status,
}

impl ListingSource for RunListSource {
    type Key = Option<String>;
    type Value = RunList;
    type Error = ApiError;

    fn fetch(&self, key: &Option<String>) -> Result<RunList, ApiError> {
        let since = SystemTime::now().checked_sub(self.since);
        let (agent_id, status) = match self.key {
            RunListKey::AgentId => (key.as_deref(), None),
            RunListKey::Status => (None, key.as_deref()),
        };
        let runs = self.api.list_runs(&RunQuery {
            agent_id,
            status,
            since,
            limit: Some(self.limit),
        });
        let runs: Vec<Arc<Run>> = runs?.into_iter().map(Arc::new).collect();
        let by_id = runs
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i))
            .collect();
        Ok(RunList {
            runs,
            by_id,
            fetched: std::time::Instant::now(),
        })
    }

    fn serves_previous(&self, e: &ApiError) -> bool {
        !e.is_auth()
    }

    fn report(&self, _: &Option<String>, e: &ApiError, served_previous: bool, streak: u32) {
        report_failure("runs", e, served_previous, streak, &self.activity);
    }

    fn answered_since(&self, t: std::time::Instant) -> bool {
        self.activity.answered_since(t)
    }
}

/// The agents, by name; saved in the cache directory for mounts started offline.
pub struct AgentSource {
    pub api: Arc<dyn RunsApi>,
    pub activity: Arc<Activity>,
    pub saved: Arc<Saved>,
}

/// What the agents listing is saved as.
const SAVED_AGENTS: &str = "agents";

/// What an agent's files are saved as.
fn saved_agent(id: &str) -> String {
    format!("agent {id}")
}

/// An agent's files as saved: the objects as the API gave them.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedAgentFiles {
    agent: Value,
    versions: Vec<Value>,
}

impl ListingSource for AgentSource {
    type Key = ();
    type Value = BTreeMap<String, Agent>;
    type Error = ApiError;

    fn fetch(&self, _: &()) -> Result<BTreeMap<String, Agent>, ApiError> {
        Ok(self
            .api
            .list_agents()?
            .into_iter()
            .filter(|a| super::safe_name(&a.name))
            .map(|a| (a.name.clone(), a))
            .collect())
    }

    fn serves_previous(&self, e: &ApiError) -> bool {
        !e.is_auth()
    }

    fn report(&self, _: &(), e: &ApiError, served_previous: bool, streak: u32) {
        report_failure("agents", e, served_previous, streak, &self.activity);
    }

    fn load(&self, _: &()) -> Option<BTreeMap<String, Agent>> {
        let rows: Vec<Value> = self.saved.load_document(SAVED_AGENTS)?;
        Some(
            rows.into_iter()
                .filter_map(Agent::from_json)
                .filter(|a| super::safe_name(&a.name))
                .map(|a| (a.name.clone(), a))
                .collect(),
        )
    }

    fn save(&self, _: &(), agents: &BTreeMap<String, Agent>) {
        let rows: Vec<&Value> = agents.values().map(|a| &a.json).collect();
        self.saved.save_document(SAVED_AGENTS, &rows);
    }

    fn forget(&self, _: &()) {
        self.saved.forget_document(SAVED_AGENTS);
    }

    fn answered_since(&self, t: std::time::Instant) -> bool {
        self.activity.answered_since(t)
    }
}

/// An agent's two files, rendered when fetched.
pub struct AgentFiles {
    pub agent_json: Vec<u8>,
    pub versions_json: Vec<u8>,
    /// The agent's `updated_at`: the files' mtime.
    pub updated_at: SystemTime,
    /// What they were rendered from, to save.
    saved: SavedAgentFiles,
}

impl AgentFiles {
    fn new(agent: Agent, versions: Vec<Value>) -> AgentFiles {
        AgentFiles {
            agent_json: super::files::pretty(&agent.json),
            versions_json: super::files::pretty(&Value::Array(versions.clone())),
            updated_at: agent.updated_at,
            saved: SavedAgentFiles {
                agent: agent.json,
                versions,
            },
        }
    }
}

/// The files of an agent (by id): its detail and its versions; saved in the cache
/// directory for mounts started offline.
pub struct AgentFilesSource {
    pub api: Arc<dyn RunsApi>,
    pub activity: Arc<Activity>,
    pub saved: Arc<Saved>,
}

impl ListingSource for AgentFilesSource {
    type Key = String;
    type Value = AgentFiles;
    type Error = ApiError;

    fn fetch(&self, id: &String) -> Result<AgentFiles, ApiError> {
        let both = self
            .api
            .get_agent(id)
            .and_then(|a| Ok((a, self.api.list_agent_versions(id)?)));
        let (agent, versions) = both?;
        Ok(AgentFiles::new(agent, versions))
    }

    fn load(&self, id: &String) -> Option<AgentFiles> {
        let saved: SavedAgentFiles = self.saved.load_document(&saved_agent(id))?;
        let agent = Agent::from_json(saved.agent)?;
        Some(AgentFiles::new(agent, saved.versions))
    }

    fn save(&self, id: &String, files: &AgentFiles) {
        self.saved.save_document(&saved_agent(id), &files.saved);
    }

    fn forget(&self, id: &String) {
        self.saved.forget_document(&saved_agent(id));
    }

    fn serves_previous(&self, e: &ApiError) -> bool {
        !e.is_auth() && !e.is_not_found()
    }

    fn report(&self, id: &String, e: &ApiError, served_previous: bool, streak: u32) {
        report_failure(
            &format!("agent {id}"),
            e,
            served_previous,
            streak,
            &self.activity,
        );
    }

    fn answered_since(&self, t: std::time::Instant) -> bool {
        self.activity.answered_since(t)
    }
}

/// A run's detail, asked of the API (by id): one request per run at a time, callers'
/// waits bounded. What the mount knows of the run already serves as the copy held.
pub struct RunDetailSource {
    pub state: Arc<RunState>,
    pub activity: Arc<Activity>,
}

impl ListingSource for RunDetailSource {
    type Key = RunId;
    type Value = Arc<Run>;
    type Error = ApiError;

    fn fetch(&self, id: &RunId) -> Result<Arc<Run>, ApiError> {
        self.state.fetch_detail(id)
    }

    /// A run the API no longer has (or no longer shows) is not served from before.
    fn serves_previous(&self, e: &ApiError) -> bool {
        !e.is_auth() && !e.is_not_found()
    }

    fn report(&self, id: &RunId, e: &ApiError, served_previous: bool, streak: u32) {
        // An unknown id is the user's: `ls runs/<anything>` must not count as a failure.
        if !e.is_not_found() {
            report_failure(
                &format!("run {id}"),
                e,
                served_previous,
                streak,
                &self.activity,
            );
        }
    }

    fn load(&self, id: &RunId) -> Option<Arc<Run>> {
        self.state.known(id)
    }

    fn answered_since(&self, t: std::time::Instant) -> bool {
        self.activity.answered_since(t)
    }
}

/// A run's files, fetched into the cache directory ([`RunState::view`]): a final run's
/// once, a live run's so far. One fetch per run at a time, callers' waits bounded; the
/// files are then at hand ([`RunState::at_hand`]), which is where callers find them (the
/// value kept here is only the fetch's end, so that nothing of a run is held by it).
pub struct RunFilesSource {
    pub state: Arc<RunState>,
    pub activity: Arc<Activity>,
}

impl ListingSource for RunFilesSource {
    type Key = RunId;
    type Value = ();
    type Error = SyncError;

    fn fetch(&self, id: &RunId) -> Result<(), SyncError> {
        self.state.view(id).map(drop)
    }

    /// Callers always ask for a new fetch (`Listings::renew`): nothing is served from
    /// before.
    fn serves_previous(&self, _: &SyncError) -> bool {
        false
    }

    fn report(&self, id: &RunId, e: &SyncError, served_previous: bool, streak: u32) {
        match e {
            SyncError::Api(e) if e.is_not_found() => {}
            SyncError::Api(e) => report_failure(
                &format!("the files of run {id}"),
                e,
                served_previous,
                streak,
                &self.activity,
            ),
            SyncError::Io(e) => {
                tracing::warn!(run = %id, error = %e, "writing a run's files failed");
                self.activity
                    .error(format!("writing the files of run {id}: {e}"));
            }
        }
    }

    fn answered_since(&self, t: std::time::Instant) -> bool {
        self.activity.answered_since(t)
    }
}
