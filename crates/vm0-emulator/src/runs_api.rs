//! The `/v1` routes of agents and runs: `GET /v1/agents[/{id}[/versions]]`,
//! `GET /v1/runs[/{id}[/logs|/metrics|/events]]`, `POST /v1/runs` and
//! `POST /v1/runs/{id}/cancel`, in both shapes (camel turns every `a_b` field into `aB`;
//! the free-form `metadata` of logs and `data` of output events are served as they are).
//!
//! Requests go through the same steps as the storage routes (`api`): route match, count,
//! fault rule by route key ([`ROUTE_KEYS`]), token, answer; lists use the same pagination,
//! with its quirks. The event stream itself is `events`'s; this module checks the request
//! and hands it over.

use std::time::Duration;

use crate::api::{self, Page};
use crate::events::EventStream;
use crate::http::{Method, Request};
use crate::lifecycle::{self, RunSpec};
use crate::model::{format_timestamp, parse_timestamp};
use crate::runs::{
    Agent, AgentVersion, LogEntry, LogQuery, LogType, MetricSample, Run, RunFilter, RunStatus,
};
use crate::wire::{Json, Reply, Shape};
use crate::{Runtime, Shared};

/// The route keys of the agent and run routes, as counters and fault rules name them.
pub const ROUTE_KEYS: [&str; 10] = [
    "agents.list",
    "agents.get",
    "agents.versions",
    "runs.list",
    "runs.get",
    "runs.logs",
    "runs.metrics",
    "runs.events",
    "runs.create",
    "runs.cancel",
];

/// Default page size of the logs (other lists: the contract's 20).
const LOGS_DEFAULT_LIMIT: usize = 100;
/// Largest `POST /v1/runs` body.
const MAX_BODY: u64 = 1024 * 1024;

/// What a request of these routes gets.
pub(crate) enum Answer {
    Reply(Reply),
    /// `GET /v1/runs/{id}/events` passed its checks: the stream starts.
    Events(EventStream),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    AgentsList,
    AgentsGet(&'a str),
    AgentsVersions(&'a str),
    RunsList,
    RunsCreate,
    RunsGet(&'a str),
    RunsLogs(&'a str),
    RunsMetrics(&'a str),
    RunsEvents(&'a str),
    RunsCancel(&'a str),
}

impl Route<'_> {
    fn key(self) -> &'static str {
        match self {
            Route::AgentsList => "agents.list",
            Route::AgentsGet(_) => "agents.get",
            Route::AgentsVersions(_) => "agents.versions",
            Route::RunsList => "runs.list",
            Route::RunsCreate => "runs.create",
            Route::RunsGet(_) => "runs.get",
            Route::RunsLogs(_) => "runs.logs",
            Route::RunsMetrics(_) => "runs.metrics",
            Route::RunsEvents(_) => "runs.events",
            Route::RunsCancel(_) => "runs.cancel",
        }
    }
}

/// Answers a request under `/v1/agents` or `/v1/runs`; `None` for any other path.
pub(crate) fn handle(
    shared: &Shared,
    request: &Request,
    path: &str,
    query: &str,
) -> Option<Answer> {
    let rest = path.strip_prefix("/v1/")?;
    let segments: Vec<&str> = rest.split('/').collect();
    if !matches!(segments[0], "agents" | "runs") {
        return None;
    }
    let method = &request.method;
    let route = match (method, segments.as_slice()) {
        (Method::Get, ["agents"]) => Route::AgentsList,
        (Method::Get, ["agents", id]) => Route::AgentsGet(id),
        (Method::Get, ["agents", id, "versions"]) => Route::AgentsVersions(id),
        (Method::Get, ["runs"]) => Route::RunsList,
        (Method::Post, ["runs"]) => Route::RunsCreate,
        (Method::Get, ["runs", id]) => Route::RunsGet(id),
        (Method::Get, ["runs", id, "logs"]) => Route::RunsLogs(id),
        (Method::Get, ["runs", id, "metrics"]) => Route::RunsMetrics(id),
        (Method::Get, ["runs", id, "events"]) => Route::RunsEvents(id),
        (Method::Post, ["runs", id, "cancel"]) => Route::RunsCancel(id),
        _ => return Some(Answer::Reply(api::unknown_route(method, path))),
    };
    if segments.get(1) == Some(&"") {
        return Some(Answer::Reply(api::unknown_route(method, path)));
    }
    let key = route.key();
    shared.counters.hit(key);
    if let Some(rule) = shared.faults.take(key, None) {
        if let Some(delay) = rule.delay_ms {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if rule.status.is_some() {
            return Some(Answer::Reply(api::fault_reply(&rule)));
        }
    }
    let runtime = shared.runtime.read().clone();
    if !api::authorized(request, &runtime.token) {
        return Some(Answer::Reply(Reply::unauthorized()));
    }
    let params = api::query_params(query);
    let reply = match route {
        Route::AgentsList => agents_list(shared, &params, &runtime),
        Route::AgentsGet(id) => agent_detail_reply(shared, id),
        Route::AgentsVersions(id) => agent_versions(shared, id, &params, &runtime),
        Route::RunsList => runs_list(shared, &params, &runtime),
        Route::RunsCreate => runs_create(shared, request, runtime.shape),
        Route::RunsGet(id) => run_detail_reply(shared, id),
        Route::RunsLogs(id) => run_logs(shared, id, &params, &runtime),
        Route::RunsMetrics(id) => run_metrics(shared, id, runtime.shape),
        Route::RunsEvents(id) => match event_stream(shared, request, id, &params, runtime.shape) {
            Ok(stream) => return Some(Answer::Events(stream)),
            Err(reply) => reply,
        },
        Route::RunsCancel(id) => match lifecycle::cancel(shared, id) {
            Ok(()) => run_detail_reply(shared, id),
            Err(err) => err.reply(),
        },
    };
    Some(Answer::Reply(reply))
}

/// One page of `items` per `limit` and `cursor`, rendering only the rows of the page.
fn paginate_with<T>(
    items: &[T],
    params: &[(String, String)],
    runtime: &Runtime,
    render: impl Fn(&T) -> Json,
) -> Reply {
    let page = match Page::from_params(params, api::DEFAULT_LIMIT) {
        Ok(page) => page,
        Err(reply) => return reply,
    };
    let start = page.start.min(items.len());
    let end = (start + page.limit).min(items.len());
    let rows = items[start..end].iter().map(render).collect();
    Page { start, ..page }.answer(rows, end < items.len(), runtime)
}

fn agents_list(shared: &Shared, params: &[(String, String)], runtime: &Runtime) -> Reply {
    let data = shared.runs.data.read();
    let agents = data.agents_newest_first(api::param(params, "name"));
    paginate_with(&agents, params, runtime, |a| agent_json(a, runtime.shape))
}

fn agent_not_found(id: &str) -> Reply {
    Reply::not_found(&format!("Agent '{id}' not found"))
}

fn run_not_found(id: &str) -> Reply {
    Reply::not_found(&format!("Run '{id}' not found"))
}

/// `GET /v1/agents/{id}`; also the answer of the admin's agent creation.
pub(crate) fn agent_detail_reply(shared: &Shared, id: &str) -> Reply {
    let shape = shared.runtime.read().shape;
    let data = shared.runs.data.read();
    let Some(agent) = data.agent(id) else {
        return agent_not_found(id);
    };
    let current = agent
        .current_version()
        .map_or(Json::Null, |(n, v)| agent_version_json(agent, n, v, shape));
    Reply::json(
        200,
        agent_json(agent, shape).with(&shape.key("current_version"), current),
    )
}

fn agent_versions(
    shared: &Shared,
    id: &str,
    params: &[(String, String)],
    runtime: &Runtime,
) -> Reply {
    let data = shared.runs.data.read();
    let Some(agent) = data.agent(id) else {
        return agent_not_found(id);
    };
    let versions = agent.numbered_versions_newest_first();
    paginate_with(&versions, params, runtime, |(n, v)| {
        agent_version_json(agent, *n, v, runtime.shape)
    })
}

fn runs_list(shared: &Shared, params: &[(String, String)], runtime: &Runtime) -> Reply {
    let shape = runtime.shape;
    let status = match api::param(params, "status") {
        None => None,
        Some(s) => match RunStatus::parse(s) {
            Some(status) => Some(status),
            None => {
                return Reply::bad_param(
                    "status",
                    &format!(
                        "status must be one of pending, running, completed, failed, timeout, \
                         cancelled, got '{s}'"
                    ),
                )
            }
        },
    };
    let since_ms = match time_param(params, "since") {
        Ok(since) => since,
        Err(reply) => return reply,
    };
    // A server of one shape reads its own name of the parameter, as for `version_id`.
    let filter = RunFilter {
        agent_id: api::param(params, &shape.key("agent_id")).map(str::to_string),
        status,
        since_ms,
    };
    let data = shared.runs.data.read();
    let runs = data.runs_newest_first(&filter);
    paginate_with(&runs, params, runtime, |r| run_row_json(r, shape))
}

/// An ISO-8601 parameter, in milliseconds.
fn time_param(params: &[(String, String)], name: &str) -> Result<Option<i64>, Reply> {
    match api::param(params, name) {
        None => Ok(None),
        Some(s) => parse_timestamp(s).map(Some).ok_or_else(|| {
            Reply::bad_param(
                name,
                &format!("{name} must be an ISO-8601 timestamp, got '{s}'"),
            )
        }),
    }
}

/// `GET /v1/runs/{id}`; also the answer of the admin's run routes.
pub(crate) fn run_detail_reply(shared: &Shared, id: &str) -> Reply {
    let shape = shared.runtime.read().shape;
    let data = shared.runs.data.read();
    match data.run(id) {
        Some(run) => Reply::json(200, run_detail_json(run, shape)),
        None => run_not_found(id),
    }
}

fn run_logs(shared: &Shared, id: &str, params: &[(String, String)], runtime: &Runtime) -> Reply {
    let kind = match api::param(params, "type") {
        None | Some("all") => None,
        Some(s) => match LogType::parse(s) {
            Some(kind) => Some(kind),
            None => {
                return Reply::bad_param(
                    "type",
                    &format!("type must be agent, system, network or all, got '{s}'"),
                )
            }
        },
    };
    let descending = match api::param(params, "order") {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(s) => {
            return Reply::bad_param("order", &format!("order must be asc or desc, got '{s}'"))
        }
    };
    let (since_ms, until_ms) = match (time_param(params, "since"), time_param(params, "until")) {
        (Ok(since), Ok(until)) => (since, until),
        (Err(reply), _) | (_, Err(reply)) => return reply,
    };
    let page = match Page::from_params(params, LOGS_DEFAULT_LIMIT) {
        Ok(page) => page,
        Err(reply) => return reply,
    };
    let data = shared.runs.data.read();
    let Some(run) = data.run(id) else {
        return run_not_found(id);
    };
    let query = LogQuery {
        kind,
        since_ms,
        until_ms,
        descending,
    };
    let (entries, more) = run.logs_page(&query, page.start, page.limit);
    let rows = entries.into_iter().map(log_json).collect();
    page.answer(rows, more, runtime)
}

fn run_metrics(shared: &Shared, id: &str, shape: Shape) -> Reply {
    let data = shared.runs.data.read();
    let Some(run) = data.run(id) else {
        return run_not_found(id);
    };
    let k = |s: &str| shape.key(s);
    let samples: Vec<Json> = run.metrics.iter().map(|m| sample_json(m, shape)).collect();
    let avg_cpu = (!run.metrics.is_empty()).then(|| {
        let sum: f64 = run.metrics.iter().map(|m| m.cpu_percent).sum();
        (sum / run.metrics.len() as f64 * 10.0).round() / 10.0
    });
    let max_memory = run.metrics.iter().map(|m| m.memory_used_mb).max();
    // So far for a running run; the execution time once it is final.
    let duration = match (run.execution_time_ms(), run.started_at_ms) {
        (Some(total), _) => Some(total),
        (None, Some(started)) => Some((crate::model::now_ms() - started).max(0)),
        (None, None) => None,
    };
    Reply::json(
        200,
        Json::obj().with("data", samples).with(
            "summary",
            Json::obj()
                .with(&k("avg_cpu_percent"), avg_cpu)
                .with(&k("max_memory_used_mb"), max_memory)
                .with(&k("total_duration_ms"), duration),
        ),
    )
}

fn event_stream(
    shared: &Shared,
    request: &Request,
    id: &str,
    params: &[(String, String)],
    shape: Shape,
) -> Result<EventStream, Reply> {
    let name = shape.key("last_event_id");
    // The query parameter, or the header a reconnecting SSE client sends.
    let given = api::param(params, &name)
        .map(|v| (name.as_str(), v.to_string()))
        .or_else(|| {
            request
                .header("last-event-id")
                .map(|v| ("Last-Event-ID", v.to_string()))
        });
    let after = match given {
        None => 0,
        Some((param, value)) => value.parse::<u64>().map_err(|_| {
            Reply::bad_param(
                param,
                &format!("{param} must be an event sequence number, got '{value}'"),
            )
        })?,
    };
    if shared.runs.data.read().run(id).is_none() {
        return Err(run_not_found(id));
    }
    Ok(EventStream {
        run_id: id.to_string(),
        after,
    })
}

/// `POST /v1/runs`: `{agent (name or id), prompt, volumes?, artifact_name?}`, 202 with the
/// new run (pending). The run gets the defaults of a live run: a few seconds of logs, then
/// completed.
fn runs_create(shared: &Shared, request: &Request, shape: Shape) -> Reply {
    if request.body.len() as u64 > MAX_BODY {
        return Reply::error(
            400,
            "invalid_request_error",
            "invalid_parameter",
            &format!("The request body is larger than the {MAX_BODY} bytes accepted"),
            None,
        );
    }
    let value: serde_json::Value = match serde_json::from_slice(&request.body) {
        Ok(serde_json::Value::Object(map)) => serde_json::Value::Object(map),
        _ => {
            return Reply::error(
                400,
                "invalid_request_error",
                "invalid_parameter",
                "The request body must be a JSON object",
                None,
            )
        }
    };
    let text = |name: &str| -> Result<Option<String>, Reply> {
        match &value[name] {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::String(s) => Ok(Some(s.clone())),
            _ => Err(Reply::bad_param(name, &format!("{name} must be a string"))),
        }
    };
    let missing = |name: &str| {
        Reply::error(
            400,
            "invalid_request_error",
            "missing_parameter",
            &format!("Missing required parameter: {name}"),
            Some(name),
        )
    };
    let artifact_key = shape.key("artifact_name");
    let (agent, prompt, artifact_name) = match (text("agent"), text("prompt"), text(&artifact_key))
    {
        (Ok(Some(agent)), Ok(Some(prompt)), Ok(artifact)) => (agent, prompt, artifact),
        (Err(reply), _, _) | (_, Err(reply), _) | (_, _, Err(reply)) => return reply,
        (Ok(None), _, _) => return missing("agent"),
        (_, Ok(None), _) => return missing("prompt"),
    };
    let volumes = match &value["volumes"] {
        serde_json::Value::Null => Default::default(),
        serde_json::Value::Array(names) => {
            let mut volumes = std::collections::BTreeMap::new();
            for name in names {
                let Some(name) = name.as_str() else {
                    return Reply::bad_param("volumes", "volumes must be a list of names");
                };
                volumes.insert(name.to_string(), None);
            }
            volumes
        }
        serde_json::Value::Object(map) => {
            let mut volumes = std::collections::BTreeMap::new();
            for (name, version) in map {
                let version = match version {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(v) => Some(v.clone()),
                    _ => {
                        return Reply::bad_param("volumes", "volumes must map names to version ids")
                    }
                };
                volumes.insert(name.clone(), version);
            }
            volumes
        }
        _ => return Reply::bad_param("volumes", "volumes must be a list of names"),
    };
    let spec = RunSpec {
        agent,
        prompt: Some(prompt),
        volumes,
        artifact_name,
        ..RunSpec::default()
    };
    match lifecycle::create_run(shared, spec) {
        Ok(id) => match run_detail_reply(shared, &id) {
            Reply::Json { body, headers, .. } => Reply::Json {
                status: 202,
                body,
                headers,
            },
            other => other,
        },
        Err(err) => err.reply(),
    }
}

fn timestamp(ms: Option<i64>) -> Json {
    ms.map(format_timestamp).into()
}

pub(crate) fn agent_json(agent: &Agent, shape: Shape) -> Json {
    let k = |s: &str| shape.key(s);
    Json::obj()
        .with("id", agent.id.as_str())
        .with("name", agent.name.as_str())
        .with("description", agent.description.clone())
        .with(
            &k("current_version_id"),
            agent.current_version().map(|(_, v)| v.id.clone()),
        )
        .with(&k("created_at"), format_timestamp(agent.created_at_ms))
        .with(&k("updated_at"), format_timestamp(agent.updated_at_ms))
}

fn agent_version_json(agent: &Agent, number: u64, version: &AgentVersion, shape: Shape) -> Json {
    let k = |s: &str| shape.key(s);
    Json::obj()
        .with("id", version.id.as_str())
        .with(&k("agent_id"), agent.id.as_str())
        .with(&k("version_number"), number)
        .with("message", version.message.clone())
        .with(&k("created_by"), version.created_by.as_str())
        .with(&k("created_at"), format_timestamp(version.created_at_ms))
}

/// A run as a list row.
pub(crate) fn run_row_json(run: &Run, shape: Shape) -> Json {
    let k = |s: &str| shape.key(s);
    Json::obj()
        .with("id", run.id.as_str())
        .with(&k("agent_id"), run.agent_id.as_str())
        .with(&k("agent_name"), run.agent_name.as_str())
        .with("status", run.status.as_str())
        .with("prompt", run.prompt.as_str())
        .with(&k("created_at"), format_timestamp(run.created_at_ms))
        .with(&k("started_at"), timestamp(run.started_at_ms))
        .with(&k("completed_at"), timestamp(run.completed_at_ms))
}

/// A run's detail: the row and the rest.
pub(crate) fn run_detail_json(run: &Run, shape: Shape) -> Json {
    let k = |s: &str| shape.key(s);
    // Volume names are data, not field names: the same in both shapes.
    let volumes = Json::Obj(
        run.volumes
            .iter()
            .map(|(name, version)| (name.clone(), Json::from(version.as_str())))
            .collect(),
    );
    run_row_json(run, shape)
        .with("error", run.error.clone())
        .with(&k("execution_time_ms"), run.execution_time_ms())
        .with(&k("session_id"), run.session_id.clone())
        .with(&k("checkpoint_id"), run.checkpoint_id.clone())
        .with(&k("artifact_name"), run.artifact_name.clone())
        .with(&k("artifact_version"), run.artifact_version.clone())
        .with("volumes", volumes)
}

/// A log entry; its fields are single words, the same in both shapes.
fn log_json(entry: &LogEntry) -> Json {
    let mut json = Json::obj()
        .with("timestamp", format_timestamp(entry.timestamp_ms))
        .with("type", entry.kind.as_str())
        .with("level", entry.level.as_str())
        .with("message", entry.message.as_str());
    if let Some(metadata) = &entry.metadata {
        json = json.with("metadata", Json::from(metadata.clone()));
    }
    json
}

fn sample_json(sample: &MetricSample, shape: Shape) -> Json {
    let k = |s: &str| shape.key(s);
    Json::obj()
        .with("timestamp", format_timestamp(sample.timestamp_ms))
        .with(&k("cpu_percent"), sample.cpu_percent)
        .with(&k("memory_used_mb"), sample.memory_used_mb)
        .with(&k("memory_total_mb"), sample.memory_total_mb)
        .with(&k("disk_used_mb"), sample.disk_used_mb)
        .with(&k("disk_total_mb"), sample.disk_total_mb)
}
