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
//! Rooms: `spec` holds what an operation is asked for and why it is refused (`RunSpec`,
//! `RunError`, ...); `driver` the one thread that moves every live run ([`spawn_driver`])
//! and the [`Board`] that holds the data and tells waiting event streams that something
//! changed; this file creating runs and agents and ending runs. Locks: the board's data and
//! the storages' data are never held together; an artifact is packed with neither held.

mod driver;
mod spec;

pub(crate) use driver::{spawn_driver, Board};
pub use spec::{AgentSpec, AgentVersionSpec, NewLog, RunError, RunSpec};

use std::collections::BTreeMap;

use crate::model::{now_ms, random_uuid, sha256_hex, uuid_from_seed, Kind};
use crate::runs::{Agent, AgentVersion, LogEntry, Outcome, Plan, Run, RunStatus, RunsData};
use crate::script;
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
/// How long a run built finished stayed pending.
const FINISHED_PENDING_MS: i64 = 250;
/// Bounds the metrics samples of a run built finished.
const MAX_FINISHED_SAMPLES: i64 = 100_000;

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

/// A run with nothing in it, for the unit tests here and in `driver`.
#[cfg(test)]
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
