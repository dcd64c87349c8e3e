//! The emulator's agents and runs, as the contract's "Agents and runs" section describes
//! them: agents with numbered versions, and runs with their status, inputs (resolved volume
//! versions), output (an artifact version), logs, metrics samples and output events.
//!
//! This module is pure data: no clock, no I/O, no locks. What makes a run move (the
//! driver, the admin's orders, committing its artifact) lives in `lifecycle`, what it
//! says in `script`, and its HTTP faces in `runs_api` and `events`.
//!
//! Rules kept here because every face relies on them:
//! - a run in a final status (`completed`, `failed`, `timeout`, `cancelled`) never changes
//!   again: [`Run::plan`] is `None` for it and nothing appends to it;
//! - a run's logs are in non-decreasing timestamp order (appends clamp to the last
//!   timestamp), which is what `since`/`until` paging relies on;
//! - output event sequences start at 1 and increase by 1.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// The status of a run; the last four are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Timeout,
    Cancelled,
}

impl RunStatus {
    pub const ALL: [RunStatus; 6] = [
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Timeout,
        RunStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Timeout => "timeout",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Final statuses never change again.
    pub fn is_final(self) -> bool {
        !matches!(self, RunStatus::Pending | RunStatus::Running)
    }
}

/// How a run ends: one of the final statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    #[default]
    Completed,
    Failed,
    Timeout,
    Cancelled,
}

impl Outcome {
    pub fn status(self) -> RunStatus {
        match self {
            Outcome::Completed => RunStatus::Completed,
            Outcome::Failed => RunStatus::Failed,
            Outcome::Timeout => RunStatus::Timeout,
            Outcome::Cancelled => RunStatus::Cancelled,
        }
    }
}

/// The `type` of a log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogType {
    #[default]
    Agent,
    System,
    Network,
}

impl LogType {
    pub fn as_str(self) -> &'static str {
        match self {
            LogType::Agent => "agent",
            LogType::System => "system",
            LogType::Network => "network",
        }
    }

    pub fn parse(s: &str) -> Option<LogType> {
        [LogType::Agent, LogType::System, LogType::Network]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// One log entry of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Milliseconds since the Unix epoch; several entries can share one.
    pub timestamp_ms: i64,
    pub kind: LogType,
    /// `debug`, `info`, `warn` or `error`.
    pub level: String,
    pub message: String,
    /// Free-form, served as it is in both shapes (it is the agent's data, not the API's).
    pub metadata: Option<serde_json::Value>,
}

/// One metrics sample of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    pub timestamp_ms: i64,
    pub cpu_percent: f64,
    pub memory_used_mb: u64,
    pub memory_total_mb: u64,
    pub disk_used_mb: u64,
    pub disk_total_mb: u64,
}

/// One output event of a run (the `output` events of the event stream).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputEvent {
    /// 1, 2, 3... in the order of the run's events.
    pub sequence: u64,
    /// `text`, `tool_use`, `result`...
    pub kind: String,
    /// Free-form, served as it is in both shapes.
    pub data: serde_json::Value,
    pub timestamp_ms: i64,
}

/// What a run that is not final yet will still do; the driver in `lifecycle` follows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// When a pending run starts running.
    pub start_at_ms: i64,
    /// Generated log lines per second while running (0: none).
    pub log_rate: f64,
    /// How long it runs, from its start.
    pub duration_ms: i64,
    /// How it ends when the duration is over.
    pub outcome: Outcome,
    /// The error it ends with (failed and timeout runs get a default one).
    pub error: Option<String>,
    /// An existing artifact version to name when it ends, instead of committing one.
    pub artifact_version: Option<String>,
    /// Generated log lines so far.
    pub lines: u64,
    /// Metrics samples so far.
    pub samples: u64,
}

/// A run.
#[derive(Debug, Clone)]
pub struct Run {
    pub id: String,
    pub agent_id: String,
    pub agent_name: String,
    pub status: RunStatus,
    pub prompt: String,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub completed_at_ms: Option<i64>,
    pub error: Option<String>,
    pub session_id: Option<String>,
    pub checkpoint_id: Option<String>,
    pub artifact_name: Option<String>,
    /// The artifact version the run produced; `None` until committed.
    pub artifact_version: Option<String>,
    /// Volume name -> the full id of the version the run read.
    pub volumes: BTreeMap<String, String>,
    pub logs: Vec<LogEntry>,
    pub metrics: Vec<MetricSample>,
    pub events: Vec<OutputEvent>,
    /// The `output` of the stream's `complete` event.
    pub output: Option<String>,
    /// `Some` while the run is not final.
    pub plan: Option<Plan>,
}

impl Run {
    /// A copy without the logs, metrics and events, which can be large.
    pub fn header(&self) -> Run {
        Run {
            id: self.id.clone(),
            agent_id: self.agent_id.clone(),
            agent_name: self.agent_name.clone(),
            status: self.status,
            prompt: self.prompt.clone(),
            created_at_ms: self.created_at_ms,
            started_at_ms: self.started_at_ms,
            completed_at_ms: self.completed_at_ms,
            error: self.error.clone(),
            session_id: self.session_id.clone(),
            checkpoint_id: self.checkpoint_id.clone(),
            artifact_name: self.artifact_name.clone(),
            artifact_version: self.artifact_version.clone(),
            volumes: self.volumes.clone(),
            logs: Vec::new(),
            metrics: Vec::new(),
            events: Vec::new(),
            output: self.output.clone(),
            plan: self.plan.clone(),
        }
    }

    /// From start to end, once the run has both.
    pub fn execution_time_ms(&self) -> Option<i64> {
        Some(self.completed_at_ms? - self.started_at_ms?)
    }

    /// Appends a log entry, keeping timestamps in order: an entry older than the last one
    /// gets the last one's timestamp.
    pub fn push_log(&mut self, mut entry: LogEntry) {
        if let Some(last) = self.logs.last() {
            entry.timestamp_ms = entry.timestamp_ms.max(last.timestamp_ms);
        }
        self.logs.push(entry);
    }

    /// Appends an output event with the next sequence number; returns that number.
    pub fn push_event(&mut self, kind: &str, data: serde_json::Value, timestamp_ms: i64) -> u64 {
        let sequence = self.events.last().map_or(1, |e| e.sequence + 1);
        self.events.push(OutputEvent {
            sequence,
            kind: kind.to_string(),
            data,
            timestamp_ms,
        });
        sequence
    }

    /// One page of the logs matching `query`, from the `start`th match; and whether more
    /// matches follow. Logs are in timestamp order, so `since` and `until` are binary
    /// searches and a page of the unfiltered log costs its own length, even in a log of
    /// 100,000 entries.
    pub fn logs_page(
        &self,
        query: &LogQuery,
        start: usize,
        limit: usize,
    ) -> (Vec<&LogEntry>, bool) {
        let lo = query
            .since_ms
            .map_or(0, |s| self.logs.partition_point(|e| e.timestamp_ms < s));
        let hi = query.until_ms.map_or(self.logs.len(), |u| {
            self.logs.partition_point(|e| e.timestamp_ms <= u)
        });
        let window = &self.logs[lo..hi.max(lo)];
        let kind = query.kind;
        let wanted = move |e: &&LogEntry| kind.is_none_or(|k| e.kind == k);
        let matches: Box<dyn Iterator<Item = &LogEntry>> = match (query.descending, kind) {
            // Without a type filter `skip` is a jump, not a walk.
            (false, None) => Box::new(window.iter()),
            (true, None) => Box::new(window.iter().rev()),
            (false, Some(_)) => Box::new(window.iter().filter(wanted)),
            (true, Some(_)) => Box::new(window.iter().rev().filter(wanted)),
        };
        let mut rest = matches.skip(start);
        let page: Vec<&LogEntry> = rest.by_ref().take(limit).collect();
        let more = rest.next().is_some();
        (page, more)
    }
}

/// The filters of `GET /v1/runs/{id}/logs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// `None`: every type (`type=all`).
    pub kind: Option<LogType>,
    /// Inclusive: entries at exactly `since` are returned again, so a client paging with
    /// `since` = the last timestamp it saw meets repeats at the boundary, as the contract
    /// warns.
    pub since_ms: Option<i64>,
    /// Inclusive.
    pub until_ms: Option<i64>,
    pub descending: bool,
}

/// One version of an agent.
#[derive(Debug, Clone)]
pub struct AgentVersion {
    /// 64 lowercase hex characters.
    pub id: String,
    pub message: Option<String>,
    /// `"user"` or `"agent"`.
    pub created_by: String,
    pub created_at_ms: i64,
}

/// An agent (read-only through the API).
#[derive(Debug, Clone)]
pub struct Agent {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    /// In creation order.
    pub versions: Vec<AgentVersion>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl Agent {
    /// Versions newest first, each with its `version_number` (1-based by `created_at`,
    /// ties by id).
    pub fn numbered_versions_newest_first(&self) -> Vec<(u64, &AgentVersion)> {
        let mut all: Vec<&AgentVersion> = self.versions.iter().collect();
        all.sort_by(|a, b| {
            a.created_at_ms
                .cmp(&b.created_at_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        let mut numbered: Vec<(u64, &AgentVersion)> = all
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i as u64 + 1, v))
            .collect();
        numbered.reverse();
        numbered
    }

    /// The current version: the newest one.
    pub fn current_version(&self) -> Option<(u64, &AgentVersion)> {
        self.numbered_versions_newest_first().into_iter().next()
    }
}

/// The filters of `GET /v1/runs`.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub agent_id: Option<String>,
    pub status: Option<RunStatus>,
    /// Inclusive lower bound of `created_at`.
    pub since_ms: Option<i64>,
}

/// Every agent and run the emulator serves.
#[derive(Debug, Default)]
pub struct RunsData {
    pub agents: Vec<Agent>,
    runs: HashMap<String, Run>,
}

impl RunsData {
    pub fn agent(&self, id: &str) -> Option<&Agent> {
        self.agents.iter().find(|a| a.id == id)
    }

    pub fn agent_by_name(&self, name: &str) -> Option<&Agent> {
        self.agents.iter().find(|a| a.name == name)
    }

    pub fn agent_mut_by_name(&mut self, name: &str) -> Option<&mut Agent> {
        self.agents.iter_mut().find(|a| a.name == name)
    }

    /// An agent named by its name or its id, as `POST /v1/runs` accepts.
    pub fn agent_by_name_or_id(&self, key: &str) -> Option<&Agent> {
        self.agent_by_name(key).or_else(|| self.agent(key))
    }

    /// Agents newest `created_at` first (ties by id), only `name` when given.
    pub fn agents_newest_first(&self, name: Option<&str>) -> Vec<&Agent> {
        let mut all: Vec<&Agent> = self
            .agents
            .iter()
            .filter(|a| name.is_none_or(|n| a.name == n))
            .collect();
        all.sort_by(|a, b| {
            b.created_at_ms
                .cmp(&a.created_at_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        all
    }

    pub fn run(&self, id: &str) -> Option<&Run> {
        self.runs.get(id)
    }

    pub fn run_mut(&mut self, id: &str) -> Option<&mut Run> {
        self.runs.get_mut(id)
    }

    pub fn insert_run(&mut self, run: Run) {
        self.runs.insert(run.id.clone(), run);
    }

    /// Runs matching `filter`, newest `created_at` first (ties by id).
    pub fn runs_newest_first(&self, filter: &RunFilter) -> Vec<&Run> {
        let mut all: Vec<&Run> = self
            .runs
            .values()
            .filter(|r| filter.agent_id.as_ref().is_none_or(|a| &r.agent_id == a))
            .filter(|r| filter.status.is_none_or(|s| r.status == s))
            .filter(|r| filter.since_ms.is_none_or(|s| r.created_at_ms >= s))
            .collect();
        all.sort_by(|a, b| {
            b.created_at_ms
                .cmp(&a.created_at_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        all
    }

    /// Ids of the runs that are not final yet.
    pub fn live_run_ids(&self) -> Vec<String> {
        self.runs
            .values()
            .filter(|r| r.plan.is_some())
            .map(|r| r.id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(timestamp_ms: i64, kind: LogType, message: &str) -> LogEntry {
        LogEntry {
            timestamp_ms,
            kind,
            level: "info".into(),
            message: message.into(),
            metadata: None,
        }
    }

    fn run_with_logs(logs: Vec<LogEntry>) -> Run {
        Run {
            id: "r".into(),
            agent_id: "a".into(),
            agent_name: "agent".into(),
            status: RunStatus::Completed,
            prompt: String::new(),
            created_at_ms: 0,
            started_at_ms: Some(1),
            completed_at_ms: Some(11),
            error: None,
            session_id: None,
            checkpoint_id: None,
            artifact_name: None,
            artifact_version: None,
            volumes: BTreeMap::new(),
            logs,
            metrics: Vec::new(),
            events: Vec::new(),
            output: None,
            plan: None,
        }
    }

    fn messages(page: &[&LogEntry]) -> Vec<String> {
        page.iter().map(|e| e.message.clone()).collect()
    }

    #[test]
    fn log_pages_filter_and_order() {
        let run = run_with_logs(vec![
            entry(10, LogType::System, "a"),
            entry(20, LogType::Agent, "b"),
            entry(20, LogType::Network, "c"),
            entry(30, LogType::Agent, "d"),
            entry(40, LogType::Agent, "e"),
        ]);
        let cases: &[(LogQuery, usize, usize, &[&str], bool)] = &[
            (LogQuery::default(), 0, 2, &["a", "b"], true),
            (LogQuery::default(), 3, 2, &["d", "e"], false),
            (LogQuery::default(), 9, 2, &[], false),
            (
                LogQuery {
                    since_ms: Some(20),
                    ..LogQuery::default()
                },
                0,
                10,
                &["b", "c", "d", "e"],
                false,
            ),
            (
                LogQuery {
                    since_ms: Some(20),
                    until_ms: Some(30),
                    ..LogQuery::default()
                },
                0,
                10,
                &["b", "c", "d"],
                false,
            ),
            (
                LogQuery {
                    kind: Some(LogType::Agent),
                    ..LogQuery::default()
                },
                1,
                1,
                &["d"],
                true,
            ),
            (
                LogQuery {
                    descending: true,
                    ..LogQuery::default()
                },
                0,
                2,
                &["e", "d"],
                true,
            ),
            (
                LogQuery {
                    descending: true,
                    kind: Some(LogType::Agent),
                    until_ms: Some(30),
                    ..LogQuery::default()
                },
                0,
                5,
                &["d", "b"],
                false,
            ),
            (
                LogQuery {
                    since_ms: Some(50),
                    until_ms: Some(5),
                    ..LogQuery::default()
                },
                0,
                5,
                &[],
                false,
            ),
        ];
        for (query, start, limit, want, more) in cases {
            let (page, has_more) = run.logs_page(query, *start, *limit);
            assert_eq!(messages(&page), *want, "{query:?} {start} {limit}");
            assert_eq!(has_more, *more, "{query:?} {start} {limit}");
        }
    }

    #[test]
    fn appends_keep_timestamps_in_order_and_sequences_count() {
        let mut run = run_with_logs(Vec::new());
        run.push_log(entry(50, LogType::Agent, "a"));
        run.push_log(entry(40, LogType::Agent, "b"));
        assert_eq!(run.logs[1].timestamp_ms, 50);
        assert_eq!(run.push_event("text", serde_json::json!({}), 1), 1);
        assert_eq!(run.push_event("text", serde_json::json!({}), 2), 2);
        assert_eq!(run.execution_time_ms(), Some(10));
    }

    #[test]
    fn agent_versions_are_numbered_by_creation() {
        let version = |id: &str, at: i64| AgentVersion {
            id: id.into(),
            message: None,
            created_by: "user".into(),
            created_at_ms: at,
        };
        let agent = Agent {
            id: "a".into(),
            name: "x".into(),
            description: None,
            versions: vec![version("bb", 20), version("aa", 10), version("cc", 30)],
            created_at_ms: 10,
            updated_at_ms: 30,
        };
        let numbered: Vec<(u64, &str)> = agent
            .numbered_versions_newest_first()
            .into_iter()
            .map(|(n, v)| (n, v.id.as_str()))
            .collect();
        assert_eq!(numbered, [(3, "cc"), (2, "bb"), (1, "aa")]);
        assert_eq!(agent.current_version().map(|(n, _)| n), Some(3));
    }

    #[test]
    fn statuses() {
        for status in RunStatus::ALL {
            assert_eq!(RunStatus::parse(status.as_str()), Some(status));
        }
        assert!(!RunStatus::Running.is_final() && RunStatus::Timeout.is_final());
        assert_eq!(RunStatus::parse("done"), None);
    }
}
