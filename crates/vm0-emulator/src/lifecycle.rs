//! What makes agents and runs change: creating them (from the admin endpoints,
//! `POST /v1/runs`, the demo or a test's Rust call), the driver that moves live runs along
//! their plan, and the orders that end a run early (cancel, finish, advance).
//!
//! A live run goes pending -> running (at its `pending_ms`) and then, while running,
//! gets its generated log lines at `log_rate` lines per second, a metrics sample every
//! second and an output event every fifth line; after `duration_ms` it ends with its
//! planned outcome. A completed run with an `artifact_name` commits an artifact version
//! through the storage model, as a push would, so the version exists (and downloads)
//! before the run detail names it. A run created with `logs_total` is built finished at
//! once, with exactly that many log entries.
//!
//! One driver thread moves every live run ([`spawn_driver`]); the [`Board`] holds the data
//! and tells waiting event streams that something changed. Locks: the board's data and the
//! storages' data are never held together; an artifact is packed with neither held.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};
use serde::{Deserialize, Deserializer};

use crate::model::{now_ms, parse_timestamp, random_uuid, sha256_hex, uuid_from_seed, Kind};
use crate::runs::{
    Agent, AgentVersion, LogEntry, LogType, Outcome, Plan, Run, RunStatus, RunsData,
};
use crate::script;
use crate::wire::Reply;
use crate::{admin, Shared};

/// Log lines per second of a live run created without `log_rate`.
pub const DEFAULT_LOG_RATE: f64 = 10.0;
/// How long a live run created without `duration_ms` runs.
pub const DEFAULT_DURATION_MS: u64 = 3000;
/// How long a live run created without `pending_ms` stays pending.
pub const DEFAULT_PENDING_MS: u64 = 100;
/// Spacing of the lines of a run built finished (`logs_total`) without `log_rate`:
/// 1,000 lines per second, so 100,000 lines span 100 seconds.
pub const FINISHED_LOG_RATE: f64 = 1000.0;
/// The prompt of a run created without one.
pub const DEFAULT_PROMPT: &str = "Analyze the input data and write a short report.";

const MAX_LOG_RATE: f64 = 100_000.0;
/// How often the driver looks at live runs.
const TICK: Duration = Duration::from_millis(10);
/// How long an idle driver sleeps when nothing wakes it.
const IDLE: Duration = Duration::from_secs(1);
/// Bounds the time the driver holds the lock for one run in one tick.
const MAX_LINES_PER_TICK: u64 = 20_000;
/// How long a run built finished stayed pending.
const FINISHED_PENDING_MS: i64 = 250;
/// Bounds the metrics samples of a run built finished.
const MAX_FINISHED_SAMPLES: i64 = 100_000;

/// The agents and runs, and the signal of their changes.
pub(crate) struct Board {
    pub data: RwLock<RunsData>,
    /// Bumped on every change; event streams wait for it to move.
    generation: Mutex<u64>,
    changed: Condvar,
    stopping: AtomicBool,
    /// Event streams being served, for tests that check a stream ends with its client.
    pub open_streams: AtomicUsize,
}

impl Board {
    pub fn new(data: RunsData) -> Board {
        Board {
            data: RwLock::new(data),
            generation: Mutex::new(0),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            open_streams: AtomicUsize::new(0),
        }
    }

    /// Tells every waiter that the data changed.
    pub fn notify(&self) {
        let mut generation = self.generation.lock();
        *generation += 1;
        self.changed.notify_all();
    }

    pub fn generation(&self) -> u64 {
        *self.generation.lock()
    }

    /// Waits until the generation is no longer `seen`, the emulator stops, or `timeout`.
    pub fn wait_for_change(&self, seen: u64, timeout: Duration) {
        let mut generation = self.generation.lock();
        if *generation == seen && !self.stopping() {
            self.changed.wait_for(&mut generation, timeout);
        }
    }

    /// Ends the driver and every event stream.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.notify();
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// Why an agent or run operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// No such agent, run, volume or version (the API's 404).
    NotFound(String),
    /// A parameter that is not valid (400, naming the parameter).
    Invalid { param: String, message: String },
    /// The run is final: nothing can change it any more (400).
    Final(String),
    /// The artifact version could not be built (500).
    Internal(String),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::NotFound(message) | RunError::Final(message) => f.write_str(message),
            RunError::Invalid { param, message } => write!(f, "{param}: {message}"),
            RunError::Internal(message) => write!(f, "internal error: {message}"),
        }
    }
}

impl std::error::Error for RunError {}

impl RunError {
    fn invalid(param: &str, message: impl Into<String>) -> RunError {
        RunError::Invalid {
            param: param.to_string(),
            message: message.into(),
        }
    }

    /// The API's error answer for it.
    pub(crate) fn reply(&self) -> Reply {
        match self {
            RunError::NotFound(message) => Reply::not_found(message),
            RunError::Invalid { param, message } => Reply::bad_param(param, message),
            RunError::Final(message) => Reply::error(
                400,
                "invalid_request_error",
                "invalid_parameter",
                message,
                None,
            ),
            RunError::Internal(message) => {
                Reply::error(500, "api_error", "internal_error", message, None)
            }
        }
    }
}

/// An agent to create, or versions to add to an existing one (`POST /_emulator/agents`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSpec {
    /// Follows the storage name rule (`my-agent`).
    pub name: String,
    /// Replaces the description when given.
    pub description: Option<String>,
    /// Versions to add, oldest first; a new agent without any gets one.
    pub versions: Vec<AgentVersionSpec>,
}

/// One agent version to add.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentVersionSpec {
    pub message: Option<String>,
    /// `user` (default) or `agent`.
    pub created_by: Option<String>,
    /// Default: now (and after the agent's newest version).
    #[serde(rename = "created_at", deserialize_with = "timestamp_arg")]
    pub created_at_ms: Option<i64>,
}

/// A run to create (`POST /_emulator/runs`; `POST /v1/runs` makes one with the defaults).
///
/// Without `logs_total` the run is live: pending for `pending_ms`, then running for
/// `duration_ms` with `log_rate` lines per second, then it ends with `outcome`. With
/// `logs_total` it is built finished at once, with exactly that many log entries spaced
/// by `log_rate` (default 1,000 per second), every fifth one sharing the timestamp of the
/// one before it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSpec {
    /// Default: a random UUID.
    pub id: Option<String>,
    /// The agent's name or id.
    pub agent: String,
    pub prompt: Option<String>,
    /// Log lines per second (0: none but the start and end lines).
    pub log_rate: Option<f64>,
    pub duration_ms: Option<u64>,
    pub pending_ms: Option<u64>,
    pub outcome: Outcome,
    /// Default for failed and timeout runs: a made-up error.
    pub error: Option<String>,
    /// Volume name -> version (full id or prefix; `None`: the current one). The admin body
    /// takes this object or a list of names.
    #[serde(deserialize_with = "volumes_arg")]
    pub volumes: BTreeMap<String, Option<String>>,
    /// Where a completed run commits its output.
    pub artifact_name: Option<String>,
    /// An existing version of `artifact_name` (full id or prefix) to name instead of
    /// committing one.
    pub artifact_version: Option<String>,
    /// Build the run finished, with exactly this many log entries.
    pub logs_total: Option<u64>,
    /// Default: now, or for a run built finished, early enough that it ended by now.
    #[serde(rename = "created_at", deserialize_with = "timestamp_arg")]
    pub created_at_ms: Option<i64>,
}

impl RunSpec {
    /// A live run of `agent` with every default.
    pub fn new(agent: &str) -> RunSpec {
        RunSpec {
            agent: agent.to_string(),
            ..RunSpec::default()
        }
    }
}

/// A log entry to append to a live run, at the current time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewLog {
    #[serde(rename = "type", default)]
    pub kind: LogType,
    #[serde(default = "info")]
    pub level: String,
    pub message: String,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

fn info() -> String {
    "info".to_string()
}

fn timestamp_arg<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let Some(s) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    parse_timestamp(&s)
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("invalid timestamp {s:?}")))
}

fn volumes_arg<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Option<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Volumes {
        Names(Vec<String>),
        Versions(BTreeMap<String, Option<String>>),
    }
    Ok(match Option::<Volumes>::deserialize(d)? {
        None => BTreeMap::new(),
        Some(Volumes::Names(names)) => names.into_iter().map(|n| (n, None)).collect(),
        Some(Volumes::Versions(map)) => map,
    })
}

/// Creates an agent, or adds versions to (and updates the description of) an existing one.
/// Returns its id.
pub(crate) fn create_agent(shared: &Shared, spec: AgentSpec) -> Result<String, RunError> {
    if !crate::model::valid_name(&spec.name) {
        return Err(RunError::invalid(
            "name",
            format!("'{}' is not a valid agent name", spec.name),
        ));
    }
    for version in &spec.versions {
        if let Some(by) = version.created_by.as_deref() {
            if by != "user" && by != "agent" {
                return Err(RunError::invalid(
                    "created_by",
                    "created_by must be 'user' or 'agent'",
                ));
            }
        }
    }
    let now = now_ms();
    let mut data = shared.runs.data.write();
    let created = data.agent_by_name(&spec.name).is_none();
    if created {
        data.agents.push(Agent {
            id: uuid_from_seed(&format!("agents/{}", spec.name)),
            name: spec.name.clone(),
            description: None,
            versions: Vec::new(),
            created_at_ms: now,
            updated_at_ms: now,
        });
    }
    let agent = data
        .agent_mut_by_name(&spec.name)
        .expect("the agent exists or was created just above");
    if spec.description.is_some() {
        agent.description = spec.description;
    }
    let mut versions = spec.versions;
    if created && versions.is_empty() {
        versions.push(AgentVersionSpec {
            message: Some("Initial version".to_string()),
            ..AgentVersionSpec::default()
        });
    }
    for version in versions {
        let newest = agent.versions.iter().map(|v| v.created_at_ms).max();
        let created_at_ms = version
            .created_at_ms
            .unwrap_or_else(|| newest.map_or(now, |n| now.max(n + 1)));
        let number = agent.versions.len() + 1;
        let message = version.message;
        agent.versions.push(AgentVersion {
            id: sha256_hex(
                format!(
                    "{}\n{number}\n{}",
                    agent.id,
                    message.as_deref().unwrap_or("")
                )
                .as_bytes(),
            ),
            message,
            created_by: version.created_by.unwrap_or_else(|| "user".to_string()),
            created_at_ms,
        });
        agent.updated_at_ms = agent.updated_at_ms.max(created_at_ms);
    }
    if created {
        // A new agent dates from its first version, which may be given in the past.
        let times = agent.versions.iter().map(|v| v.created_at_ms);
        agent.created_at_ms = times.clone().min().unwrap_or(now);
        agent.updated_at_ms = times.max().unwrap_or(now);
    }
    let id = agent.id.clone();
    drop(data);
    shared.runs.notify();
    Ok(id)
}

/// Creates a run; returns its id.
pub(crate) fn create_run(shared: &Shared, spec: RunSpec) -> Result<String, RunError> {
    let now = now_ms();
    if spec.agent.is_empty() {
        return Err(RunError::invalid("agent", "agent is required"));
    }
    let (agent_id, agent_name) = {
        let data = shared.runs.data.read();
        let agent = data
            .agent_by_name_or_id(&spec.agent)
            .ok_or_else(|| RunError::NotFound(format!("Agent '{}' not found", spec.agent)))?;
        (agent.id.clone(), agent.name.clone())
    };
    let live = spec.logs_total.is_none();
    let default_rate = if live {
        DEFAULT_LOG_RATE
    } else {
        FINISHED_LOG_RATE
    };
    let log_rate = spec.log_rate.unwrap_or(default_rate);
    if !(0.0..=MAX_LOG_RATE).contains(&log_rate) {
        return Err(RunError::invalid(
            "log_rate",
            format!("log_rate must be between 0 and {MAX_LOG_RATE} lines per second"),
        ));
    }
    if let Some(name) = &spec.artifact_name {
        if !crate::model::valid_name(name) {
            return Err(RunError::invalid(
                "artifact_name",
                format!("'{name}' is not a valid artifact name"),
            ));
        }
    }
    let (volumes, preset) = resolve_storages(shared, &spec)?;
    let id = match spec.id {
        Some(id)
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            return Err(RunError::invalid(
                "id",
                "a run id is made of letters, digits and '-'",
            ))
        }
        Some(id) => id,
        None => random_uuid(),
    };
    let mut run = Run {
        id,
        agent_id,
        agent_name,
        status: RunStatus::Pending,
        prompt: spec.prompt.unwrap_or_else(|| DEFAULT_PROMPT.to_string()),
        created_at_ms: spec.created_at_ms.unwrap_or(now),
        started_at_ms: None,
        completed_at_ms: None,
        error: None,
        session_id: None,
        checkpoint_id: None,
        artifact_name: spec.artifact_name,
        artifact_version: None,
        volumes,
        logs: Vec::new(),
        metrics: Vec::new(),
        events: Vec::new(),
        output: None,
        plan: None,
    };
    match spec.logs_total {
        None => {
            let pending_ms = spec.pending_ms.unwrap_or(DEFAULT_PENDING_MS);
            run.plan = Some(Plan {
                start_at_ms: now.saturating_add(millis(pending_ms)),
                log_rate,
                duration_ms: millis(spec.duration_ms.unwrap_or(DEFAULT_DURATION_MS)),
                outcome: spec.outcome,
                error: spec.error,
                artifact_version: preset,
                lines: 0,
                samples: 0,
            });
        }
        Some(total) => {
            let rate = if log_rate > 0.0 {
                log_rate
            } else {
                FINISHED_LOG_RATE
            };
            build_finished(&mut run, total, rate, spec.created_at_ms, now);
            let error = spec.error.or_else(|| {
                let duration = run.execution_time_ms().unwrap_or(0);
                script::default_error(spec.outcome, duration)
            });
            let version = match preset {
                Some(version) => Some(version),
                None => commit_artifact(shared, &run, spec.outcome, total)?,
            };
            let completed_at = run.completed_at_ms.unwrap_or(now);
            finalize(
                &mut run,
                spec.outcome,
                error,
                completed_at,
                version,
                total > 0,
            );
        }
    }
    let id = run.id.clone();
    {
        let mut data = shared.runs.data.write();
        if data.run(&id).is_some() {
            return Err(RunError::invalid(
                "id",
                format!("run '{id}' already exists"),
            ));
        }
        data.insert_run(run);
    }
    shared.runs.notify();
    tracing::debug!(run = %id, live, "run created");
    Ok(id)
}

fn millis(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX / 4)
}

/// Resolves a run's volumes to full version ids, and its preset artifact version.
fn resolve_storages(
    shared: &Shared,
    spec: &RunSpec,
) -> Result<(BTreeMap<String, String>, Option<String>), RunError> {
    let data = shared.data.read();
    let mut volumes = BTreeMap::new();
    for (name, query) in &spec.volumes {
        let storage = data
            .get_by_name(Kind::Volumes, name)
            .ok_or_else(|| RunError::NotFound(format!("Volume '{name}' not found")))?;
        let version = match query {
            Some(q) => storage
                .resolve(q)
                .map_err(|err| RunError::NotFound(err.message(storage, Some(q))))?,
            None => storage
                .current_version()
                .ok_or_else(|| RunError::NotFound(format!("Volume '{name}' has no versions")))?,
        };
        volumes.insert(name.clone(), version.id.clone());
    }
    let preset = match (&spec.artifact_version, &spec.artifact_name) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(RunError::invalid(
                "artifact_version",
                "artifact_version needs artifact_name",
            ))
        }
        (Some(q), Some(name)) => {
            let storage = data
                .get_by_name(Kind::Artifacts, name)
                .ok_or_else(|| RunError::NotFound(format!("Artifact '{name}' not found")))?;
            let version = storage
                .resolve(q)
                .map_err(|err| RunError::NotFound(err.message(storage, Some(q))))?;
            Some(version.id.clone())
        }
    };
    Ok((volumes, preset))
}

/// Fills a run built finished: `total` log entries (the generated lines, then the end
/// line), its output events and metrics samples, and its times.
fn build_finished(run: &mut Run, total: u64, rate: f64, created_at_ms: Option<i64>, now: i64) {
    let generated = total.saturating_sub(1);
    let span = match generated {
        0 => 0,
        n => script::line_offset_ms(n - 1, rate),
    };
    let created = created_at_ms.unwrap_or(now - span - FINISHED_PENDING_MS - 1000);
    let started = created + FINISHED_PENDING_MS;
    run.created_at_ms = created;
    run.started_at_ms = Some(started);
    run.session_id = Some(random_uuid());
    run.logs.reserve(usize::try_from(total).unwrap_or(0));
    for i in 0..generated {
        let at = started + script::line_offset_ms(i, rate);
        let entry = script::log_line(run, i, at);
        run.push_log(entry);
        if let Some((kind, data)) = script::output_for_line(i) {
            run.push_event(kind, data, at);
        }
    }
    let completed = started + span + 1;
    let samples = (span / script::SAMPLE_INTERVAL_MS + 1).min(MAX_FINISHED_SAMPLES);
    for k in 0..samples {
        let sample = script::sample(run, k as u64, started + k * script::SAMPLE_INTERVAL_MS);
        run.metrics.push(sample);
    }
    run.completed_at_ms = Some(completed);
}

/// Commits the artifact version of a run that completes with an `artifact_name`; `None`
/// for any other run.
fn commit_artifact(
    shared: &Shared,
    run: &Run,
    outcome: Outcome,
    lines: u64,
) -> Result<Option<String>, RunError> {
    let Some(name) = (outcome == Outcome::Completed)
        .then_some(run.artifact_name.as_ref())
        .flatten()
    else {
        return Ok(None);
    };
    let version = admin::commit_version(
        shared,
        Kind::Artifacts,
        name,
        script::artifact_files(run, lines),
        BTreeMap::new(),
        Some(format!("Output of run {}", run.id)),
        "agent".to_string(),
    )
    .map_err(RunError::Internal)?;
    tracing::info!(run = %run.id, artifact = %name, version = %version.id, "artifact committed");
    Ok(Some(version.id))
}

/// Makes a run final: status, times, error, output, artifact version, the end line.
fn finalize(
    run: &mut Run,
    outcome: Outcome,
    error: Option<String>,
    at_ms: i64,
    artifact_version: Option<String>,
    end_line: bool,
) {
    // A run ended before it started only has a start when it is said to have run.
    if run.started_at_ms.is_none() && outcome != Outcome::Cancelled {
        start(run, at_ms);
    }
    let last_log = run.logs.last().map_or(at_ms, |e| e.timestamp_ms);
    let completed = at_ms.max(last_log).max(run.started_at_ms.unwrap_or(at_ms));
    let lines = run.plan.as_ref().map_or(run.logs.len() as u64, |p| p.lines);
    run.completed_at_ms = Some(completed);
    run.status = outcome.status();
    run.error = error;
    run.artifact_version = artifact_version;
    if outcome == Outcome::Completed {
        run.checkpoint_id = Some(random_uuid());
        let output = script::output_text(run);
        run.push_event("result", serde_json::json!({ "text": output }), completed);
        run.output = Some(output);
    }
    if end_line {
        let line = script::end_line(outcome, run.error.as_deref(), lines, completed);
        run.push_log(line);
    }
    run.plan = None;
}

/// Ends a live run now, with `outcome` (default: its planned one) and `error` (default:
/// its planned one, or a made-up one for failed and timeout runs).
pub(crate) fn finish(
    shared: &Shared,
    id: &str,
    outcome: Option<Outcome>,
    error: Option<String>,
) -> Result<(), RunError> {
    let (outcome, error, preset, snapshot, lines) = {
        let data = shared.runs.data.read();
        let run = data.run(id).ok_or_else(|| run_not_found(id))?;
        let plan = run.plan.as_ref().ok_or_else(|| already_final(run))?;
        let outcome = outcome.unwrap_or(plan.outcome);
        let error = error
            .or_else(|| plan.error.clone())
            .or_else(|| script::default_error(outcome, plan.duration_ms));
        // Only what the artifact's content needs: not the logs.
        let snapshot = run.header();
        (
            outcome,
            error,
            plan.artifact_version.clone(),
            snapshot,
            plan.lines,
        )
    };
    let version = match preset {
        Some(version) => Some(version),
        None => commit_artifact(shared, &snapshot, outcome, lines)?,
    };
    {
        let mut data = shared.runs.data.write();
        let run = data.run_mut(id).ok_or_else(|| run_not_found(id))?;
        if run.plan.is_none() {
            // Ended by someone else while the artifact was being built.
            return Err(already_final(run));
        }
        finalize(run, outcome, error, now_ms(), version, true);
    }
    shared.runs.notify();
    tracing::info!(run = %id, status = outcome.status().as_str(), "run ended");
    Ok(())
}

/// `POST /v1/runs/{id}/cancel`.
pub(crate) fn cancel(shared: &Shared, id: &str) -> Result<(), RunError> {
    finish(shared, id, Some(Outcome::Cancelled), None)
}

/// Moves a run to its next state now: a pending run starts, a running run ends with its
/// planned outcome.
pub(crate) fn advance(shared: &Shared, id: &str) -> Result<(), RunError> {
    {
        let mut data = shared.runs.data.write();
        let run = data.run_mut(id).ok_or_else(|| run_not_found(id))?;
        if run.plan.is_none() {
            return Err(already_final(run));
        }
        if run.status == RunStatus::Pending {
            start(run, now_ms());
            drop(data);
            shared.runs.notify();
            return Ok(());
        }
    }
    finish(shared, id, None, None)
}

/// Appends log entries to a live run, at the current time.
pub(crate) fn append_logs(shared: &Shared, id: &str, entries: Vec<NewLog>) -> Result<(), RunError> {
    {
        let mut data = shared.runs.data.write();
        let run = live_run(&mut data, id)?;
        let now = now_ms();
        for entry in entries {
            run.push_log(LogEntry {
                timestamp_ms: now,
                kind: entry.kind,
                level: entry.level,
                message: entry.message,
                metadata: entry.metadata,
            });
        }
    }
    shared.runs.notify();
    Ok(())
}

/// Appends an output event to a live run; returns its sequence number.
pub(crate) fn append_output(
    shared: &Shared,
    id: &str,
    kind: &str,
    data: serde_json::Value,
) -> Result<u64, RunError> {
    let sequence = {
        let mut runs = shared.runs.data.write();
        let run = live_run(&mut runs, id)?;
        run.push_event(kind, data, now_ms())
    };
    shared.runs.notify();
    Ok(sequence)
}

fn live_run<'a>(data: &'a mut RunsData, id: &str) -> Result<&'a mut Run, RunError> {
    let run = data.run_mut(id).ok_or_else(|| run_not_found(id))?;
    if run.plan.is_none() {
        return Err(already_final(run));
    }
    Ok(run)
}

fn run_not_found(id: &str) -> RunError {
    RunError::NotFound(format!("Run '{id}' not found"))
}

fn already_final(run: &Run) -> RunError {
    RunError::Final(format!(
        "Run '{}' is already {}: it cannot change any more",
        run.id,
        run.status.as_str()
    ))
}

/// A pending run starts running, with its start line.
fn start(run: &mut Run, now: i64) {
    run.status = RunStatus::Running;
    run.started_at_ms = Some(now);
    run.session_id = Some(random_uuid());
    let line = script::log_line(run, 0, now);
    run.push_log(line);
    if let Some(plan) = &mut run.plan {
        plan.start_at_ms = now;
        plan.lines = 1;
    }
}

/// Moves one live run along its plan up to `now`; returns whether it changed and whether
/// its time is up.
fn step(run: &mut Run, now: i64) -> (bool, bool) {
    let Some(mut plan) = run.plan.take() else {
        return (false, false);
    };
    let mut changed = false;
    if run.status == RunStatus::Pending && now >= plan.start_at_ms {
        run.plan = Some(plan);
        start(run, now);
        plan = run.plan.take().expect("start keeps the plan");
        changed = true;
    }
    let mut due = false;
    if let (RunStatus::Running, Some(started)) = (run.status, run.started_at_ms) {
        let elapsed = now - started;
        // Line 0, the start line, came with the start.
        let mut lines_done = plan.log_rate <= 0.0;
        let mut budget = MAX_LINES_PER_TICK;
        while !lines_done && budget > 0 {
            let offset = script::line_offset_ms(plan.lines, plan.log_rate);
            if offset >= plan.duration_ms {
                lines_done = true;
            } else if offset > elapsed {
                break;
            } else {
                let at = started + offset;
                let entry = script::log_line(run, plan.lines, at);
                run.push_log(entry);
                if let Some((kind, data)) = script::output_for_line(plan.lines) {
                    run.push_event(kind, data, at);
                }
                plan.lines += 1;
                budget -= 1;
                changed = true;
            }
        }
        loop {
            let offset = plan.samples as i64 * script::SAMPLE_INTERVAL_MS;
            if offset > elapsed || offset >= plan.duration_ms.max(1) {
                break;
            }
            let sample = script::sample(run, plan.samples, started + offset);
            run.metrics.push(sample);
            plan.samples += 1;
            changed = true;
        }
        due = elapsed >= plan.duration_ms && lines_done;
    }
    run.plan = Some(plan);
    (changed, due)
}

/// One pass of the driver over every live run; returns whether any is left.
fn tick(shared: &Shared) -> bool {
    let now = now_ms();
    let mut changed = false;
    let mut due = Vec::new();
    let live = {
        let mut data = shared.runs.data.write();
        let ids = data.live_run_ids();
        for id in &ids {
            let run = data.run_mut(id).expect("a live id names a run");
            let (run_changed, run_due) = step(run, now);
            changed |= run_changed;
            if run_due {
                due.push(id.clone());
            }
        }
        !ids.is_empty()
    };
    if changed {
        shared.runs.notify();
    }
    for id in due {
        match finish(shared, &id, None, None) {
            Ok(()) | Err(RunError::Final(_)) => {}
            Err(err) => {
                // The run must still end: without its artifact rather than never.
                tracing::warn!(run = %id, %err, "cannot end the run as planned; it fails");
                let _ = finish(shared, &id, Some(Outcome::Failed), Some(err.to_string()));
            }
        }
    }
    live
}

/// Starts the thread that moves live runs; it ends when the board stops.
pub(crate) fn spawn_driver(shared: Arc<Shared>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("runs-driver".into())
        .spawn(move || {
            while !shared.runs.stopping() {
                // Read before the tick: a run created during it must not wait for `IDLE`.
                let seen = shared.runs.generation();
                let live = tick(&shared);
                shared
                    .runs
                    .wait_for_change(seen, if live { TICK } else { IDLE });
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_specs_from_admin_json() {
        let spec: RunSpec = serde_json::from_str(
            r#"{"agent":"a","volumes":["input-data"],"outcome":"failed",
                "created_at":"2026-01-20T10:00:00.000Z","logs_total":5}"#,
        )
        .unwrap();
        assert_eq!(spec.volumes, BTreeMap::from([("input-data".into(), None)]));
        assert_eq!(spec.outcome, Outcome::Failed);
        assert_eq!(spec.created_at_ms, Some(crate::model::BASE_TIME_MS));
        let spec: RunSpec =
            serde_json::from_str(r#"{"agent":"a","volumes":{"input-data":"abcd1234"}}"#).unwrap();
        assert_eq!(spec.volumes["input-data"].as_deref(), Some("abcd1234"));
        assert_eq!(spec.outcome, Outcome::Completed);
        assert!(serde_json::from_str::<RunSpec>(r#"{"agent":"a","nope":1}"#).is_err());
        assert!(serde_json::from_str::<RunSpec>(r#"{"agent":"a","created_at":"x"}"#).is_err());
    }

    fn bare_run() -> Run {
        Run {
            id: "r".into(),
            agent_id: "a".into(),
            agent_name: "agent".into(),
            status: RunStatus::Pending,
            prompt: "p".into(),
            created_at_ms: 0,
            started_at_ms: None,
            completed_at_ms: None,
            error: None,
            session_id: None,
            checkpoint_id: None,
            artifact_name: None,
            artifact_version: None,
            volumes: BTreeMap::new(),
            logs: Vec::new(),
            metrics: Vec::new(),
            events: Vec::new(),
            output: None,
            plan: None,
        }
    }

    #[test]
    fn finished_runs_have_exactly_the_entries_asked_for() {
        for total in [0u64, 1, 2, 7, 1000] {
            let mut run = bare_run();
            build_finished(&mut run, total, 1000.0, None, 10_000_000);
            finalize(&mut run, Outcome::Completed, None, 0, None, total > 0);
            assert_eq!(run.logs.len() as u64, total);
            assert!(run
                .logs
                .windows(2)
                .all(|w| w[0].timestamp_ms <= w[1].timestamp_ms));
            assert!(run.completed_at_ms.unwrap() <= 10_000_000);
            assert_eq!(run.status, RunStatus::Completed);
            if total > 0 {
                assert_eq!(
                    run.logs.last().unwrap().timestamp_ms,
                    run.completed_at_ms.unwrap()
                );
            }
        }
    }

    #[test]
    fn a_live_run_follows_its_plan() {
        let mut run = bare_run();
        run.plan = Some(Plan {
            start_at_ms: 100,
            log_rate: 10.0,
            duration_ms: 1000,
            outcome: Outcome::Completed,
            error: None,
            artifact_version: None,
            lines: 0,
            samples: 0,
        });
        assert_eq!(step(&mut run, 50), (false, false));
        assert_eq!(run.status, RunStatus::Pending);
        assert_eq!(step(&mut run, 100), (true, false));
        assert_eq!(run.status, RunStatus::Running);
        assert_eq!(run.logs.len(), 1);
        step(&mut run, 650);
        // Lines at 0, 100, 200, 300, 300 (shared), 500 ms.
        assert_eq!(run.logs.len(), 6);
        assert_eq!(run.logs[4].timestamp_ms, run.logs[3].timestamp_ms);
        assert!(!step(&mut run, 1099).1);
        let (_, due) = step(&mut run, 1100);
        assert!(due);
        // Every line due within the duration, no more: offsets 0..=900 at 10 per second.
        assert_eq!(run.logs.len(), 10);
        assert_eq!(run.metrics.len(), 1);
        // Line 5's output event.
        assert_eq!(run.events.len(), 1);
    }
}
