//! What the runs ask of the API: one small trait, which the API client implements and the
//! library tests replace with a fake, and the listings they keep (runs, agents, an agent's
//! files) as [`ListingSource`]s of the generic [`crate::metadata::Listings`].

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::api::{Agent, ApiError, Client, LogPage, LogQuery, Run, RunEvent, RunId, RunQuery};

use crate::activity::Activity;
use crate::metadata::ListingSource;

/// A run's event stream being read.
pub type Events = Box<dyn Iterator<Item = io::Result<RunEvent>> + Send>;

/// The API calls the runs and agents of the mount are made of.
pub trait RunsApi: Send + Sync + 'static {
    fn list_runs(&self, query: &RunQuery<'_>) -> Result<Vec<Run>, ApiError>;
    fn get_run(&self, id: &RunId) -> Result<Run, ApiError>;
    fn run_logs(&self, id: &RunId, query: &LogQuery<'_>) -> Result<LogPage, ApiError>;
    fn run_metrics(&self, id: &RunId) -> Result<Value, ApiError>;
    fn run_events(&self, id: &RunId, last_event_id: Option<u64>) -> Result<Events, ApiError>;
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
    fn run_events(&self, id: &RunId, last_event_id: Option<u64>) -> Result<Events, ApiError> {
        Ok(Box::new(Client::run_events(self, id, last_event_id)?))
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
        self.activity.api_result(&runs);
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

/// The agents, by name.
pub struct AgentSource {
    pub api: Arc<dyn RunsApi>,
    pub activity: Arc<Activity>,
}

impl ListingSource for AgentSource {
    type Key = ();
    type Value = BTreeMap<String, Agent>;
    type Error = ApiError;

    fn fetch(&self, _: &()) -> Result<BTreeMap<String, Agent>, ApiError> {
        let agents = self.api.list_agents();
        self.activity.api_result(&agents);
        Ok(agents?
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

    fn answered_since(&self, t: std::time::Instant) -> bool {
        self.activity.answered_since(t)
    }
}

/// An agent's two files, rendered when fetched.
pub struct AgentFiles {
    pub agent_json: Vec<u8>,
    pub versions_json: Vec<u8>,
    pub fetched: SystemTime,
}

/// The files of an agent (by id): its detail and its versions.
pub struct AgentFilesSource {
    pub api: Arc<dyn RunsApi>,
    pub activity: Arc<Activity>,
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
        self.activity.api_result(&both);
        let (agent, versions) = both?;
        Ok(AgentFiles {
            agent_json: super::files::pretty(&agent.json),
            versions_json: super::files::pretty(&Value::Array(versions)),
            fetched: SystemTime::now(),
        })
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
