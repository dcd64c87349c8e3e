//! Agents and runs: the client calls of the contract's "Agents and runs" section, and the
//! one set of types both shapes of the API are read into.
//!
//! Every object is first normalized: its keys are turned into snake_case (`agentId` ->
//! `agent_id`), except where the value is data rather than fields (a log entry's
//! `metadata`, an output event's `data`, a run's volume names), which is kept as sent. The
//! typed fields are then read from the normalized object, and the normalized object itself
//! is kept (`json`) for the files vm0fs writes, so that scripts reading them never depend
//! on the server's shape, and fields this version does not know are kept too.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::answer::Resource;
use super::client::{Client, MAX_JSON_BODY};
use super::rows::Skipped;
use super::wire::parse_time;
use super::ApiError;
use crate::ids::VersionId;

/// Rows asked per page: the largest page of the contract.
const PAGE_LIMIT: usize = 100;

/// A run's id (a UUID for the service). Only [`RunId::parse`] makes one, so every `RunId`
/// is safe as a file name and a cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(Box<str>);

impl RunId {
    /// 1 to 128 ASCII letters, digits, `-` and `_`; `None` otherwise.
    pub fn parse(s: &str) -> Option<RunId> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| RunId(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a run's status is final: `completed`, `failed`, `timeout` and `cancelled`
/// never change again. An unknown status is taken as live (the files are then re-read
/// rather than frozen on a guess).
pub fn is_final_status(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "timeout" | "cancelled")
}

/// An agent (`GET /v1/agents` row, or the detail with `current_version`).
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub id: String,
    pub name: String,
    pub updated_at: SystemTime,
    /// The object, keys in snake_case.
    pub json: Value,
}

/// A run as listed, or its detail (`error`, `artifact_*`, `volumes`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub id: RunId,
    pub agent_id: String,
    pub agent_name: String,
    pub status: String,
    pub prompt: String,
    pub created_at: SystemTime,
    /// When it ended (final runs).
    pub completed_at: Option<SystemTime>,
    pub error: Option<String>,
    pub artifact_name: Option<String>,
    /// The artifact version the run produced, once committed.
    pub artifact_version: Option<VersionId>,
    /// The exact input versions, by volume name.
    pub volumes: BTreeMap<String, VersionId>,
    /// The object, keys in snake_case (volume names as sent).
    pub json: Value,
}

impl Run {
    /// A run's detail as vm0fs saved it (its `json`).
    pub fn from_saved(bytes: &[u8]) -> Option<Run> {
        Run::from_json(serde_json::from_slice(bytes).ok()?)
    }

    pub fn is_final(&self) -> bool {
        is_final_status(&self.status)
    }
}

/// One log entry. Entries have no id: two with the same timestamp, type and message are
/// the same entry (see [`LogEntry::same`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// As the API wrote it (ISO-8601 with milliseconds): also the `since` of the next page.
    pub timestamp: String,
    pub kind: String,
    pub level: String,
    pub message: String,
    /// The entry, keys in snake_case (`metadata` as sent).
    pub json: Value,
}

impl LogEntry {
    /// Whether `other` is a repeat of this entry (same timestamp, type and message).
    pub fn same(&self, other: &LogEntry) -> bool {
        self.timestamp == other.timestamp
            && self.kind == other.kind
            && self.message == other.message
    }
}

/// One page of a run's logs.
#[derive(Debug, Clone, PartialEq)]
pub struct LogPage {
    pub entries: Vec<LogEntry>,
    /// The cursor of the next page, when there is one.
    pub next_cursor: Option<String>,
}

/// Which page of a run's logs to ask for (oldest first).
#[derive(Debug, Clone, Default)]
pub struct LogQuery<'a> {
    /// Entries at or after this timestamp (inclusive, as the API reads it).
    pub since: Option<&'a str>,
    pub cursor: Option<&'a str>,
    /// 1 to 100 (100 when `None`).
    pub limit: Option<usize>,
}

/// Which runs to list.
#[derive(Debug, Clone, Default)]
pub struct RunQuery<'a> {
    /// Only the runs of this agent (by id).
    pub agent_id: Option<&'a str>,
    /// Only the runs in this status (`running`, `failed`, ...).
    pub status: Option<&'a str>,
    /// Only runs created at or after this time.
    pub since: Option<SystemTime>,
    /// At most this many runs (newest first); `None`: every run.
    pub limit: Option<usize>,
}

/// One event of a run's event stream (heartbeats are left out).
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    /// `{"status","run_id"}`: the run's status, first and at each change.
    Status { status: String, json: Value },
    /// `{"sequence","type","data","timestamp"}`: an output event.
    Output { sequence: u64, json: Value },
    /// `{"status","output","error"}`: the run is final; the stream ends.
    Complete { status: String, json: Value },
}

/// The key `key` in snake_case: `executionTimeMs` -> `execution_time_ms`; a key already in
/// snake_case is unchanged.
pub fn snake_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for (i, c) in key.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `value` with the keys of its objects in snake_case, nested objects and arrays too,
/// except the values of the keys in `verbatim` (after normalization), kept as sent: they
/// hold data, not field names.
pub fn snake_keys(value: Value, verbatim: &[&str]) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (k, v) in map {
                let k = snake_key(&k);
                let v = if verbatim.contains(&k.as_str()) {
                    v
                } else {
                    snake_keys(v, verbatim)
                };
                out.insert(k, v);
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| snake_keys(v, verbatim)).collect())
        }
        other => other,
    }
}

/// What is data in each kind of object, kept as sent.
const RUN_VERBATIM: &[&str] = &["volumes"];
const LOG_VERBATIM: &[&str] = &["metadata"];
const EVENT_VERBATIM: &[&str] = &["data", "output"];

fn str_field<'a>(json: &'a Value, key: &str) -> Option<&'a str> {
    json.get(key).and_then(Value::as_str)
}

fn string_field(json: &Value, key: &str) -> String {
    str_field(json, key).unwrap_or_default().to_string()
}

impl Agent {
    pub fn from_json(json: Value) -> Option<Agent> {
        let json = snake_keys(json, &[]);
        let id = str_field(&json, "id")?.to_string();
        let name = str_field(&json, "name")?.to_string();
        Some(Agent {
            id,
            name,
            updated_at: parse_time("updated_at", str_field(&json, "updated_at")),
            json,
        })
    }
}

impl Run {
    /// `None` (logged) for a run whose id cannot be a file name.
    fn from_json(json: Value) -> Option<Run> {
        let json = snake_keys(json, RUN_VERBATIM);
        let raw_id = str_field(&json, "id")?;
        // The callers say what they do without it (a listing leaves the row out, with one
        // WARN for the listing).
        let id = RunId::parse(raw_id)?;
        let version = |v: &Value| {
            v.as_str().and_then(|s| match VersionId::parse(s) {
                Ok(id) => Some(id),
                Err(e) => {
                    tracing::warn!(run = %id, error = %e, "ignoring a version named by a run");
                    None
                }
            })
        };
        let volumes = json
            .get("volumes")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(name, v)| Some((name.clone(), version(v)?)))
                    .collect()
            })
            .unwrap_or_default();
        Some(Run {
            agent_id: string_field(&json, "agent_id"),
            agent_name: string_field(&json, "agent_name"),
            status: string_field(&json, "status"),
            prompt: string_field(&json, "prompt"),
            created_at: parse_time("created_at", str_field(&json, "created_at")),
            completed_at: str_field(&json, "completed_at")
                .map(|t| parse_time("completed_at", Some(t))),
            error: str_field(&json, "error").map(str::to_string),
            artifact_name: str_field(&json, "artifact_name").map(str::to_string),
            artifact_version: json.get("artifact_version").and_then(version),
            volumes,
            id,
            json,
        })
    }
}

impl LogEntry {
    pub fn from_json(json: Value) -> Option<LogEntry> {
        let json = snake_keys(json, LOG_VERBATIM);
        Some(LogEntry {
            timestamp: str_field(&json, "timestamp")?.to_string(),
            kind: string_field(&json, "type"),
            level: string_field(&json, "level"),
            message: string_field(&json, "message"),
            json,
        })
    }
}

/// A row of a list, with the id the client de-duplicates pages by.
#[derive(Deserialize)]
struct Row {
    id: String,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

impl Row {
    fn into_json(self) -> Value {
        let mut map = self.rest;
        map.insert("id".into(), Value::String(self.id));
        Value::Object(map)
    }
}

impl Client {
    /// Every agent (all pages, de-duplicated by id).
    pub fn list_agents(&self) -> Result<Vec<Agent>, ApiError> {
        let resource = Resource::same("the list of agents".into());
        self.list_all_with(
            &["agents"],
            &resource,
            |a: &Agent| &a.id,
            |row| {
                let row: Row = serde_json::from_str(row).map_err(|e| e.to_string())?;
                Agent::from_json(row.into_json())
                    .ok_or_else(|| "the agent has no name (a string)".to_string())
            },
        )
    }

    /// One agent, with its current version.
    pub fn get_agent(&self, id: &str) -> Result<Agent, ApiError> {
        let resource = Resource::same(format!("agent {id}"));
        let url = self.api_url(&["agents", id]);
        let json: Value = self.decode_ok(&self.api_get(&url, &resource)?, &resource)?;
        Agent::from_json(json).ok_or_else(|| protocol(&resource, "the agent has no id or name"))
    }

    /// The versions of an agent, newest first, keys in snake_case.
    pub fn list_agent_versions(&self, id: &str) -> Result<Vec<Value>, ApiError> {
        let resource = Resource {
            what: format!("the versions of agent {id}"),
            missing: format!("agent {id}"),
        };
        let rows: Vec<Row> =
            self.list_all(&["agents", id, "versions"], &resource, |r: &Row| &r.id)?;
        let mut versions: Vec<Value> = rows
            .into_iter()
            .map(|r| snake_keys(r.into_json(), &[]))
            .collect();
        // Pages may repeat or skip rows: the contract's order is newest first.
        versions.sort_by_key(|v| {
            std::cmp::Reverse(parse_time("created_at", str_field(v, "created_at")))
        });
        Ok(versions)
    }

    /// Runs, newest first: every page until `query.limit` runs or the end (de-duplicated by
    /// id, since pages may repeat rows).
    pub fn list_runs(&self, query: &RunQuery<'_>) -> Result<Vec<Run>, ApiError> {
        let resource = Resource::same("the list of runs".into());
        let wanted = query.limit.unwrap_or(usize::MAX);
        let mut runs: Vec<Run> = Vec::new();
        let mut ids = std::collections::HashSet::new();
        let mut cursors = std::collections::HashSet::new();
        let mut cursor: Option<String> = None;
        let since = query.since.map(crate::dates::format_time);
        let mut skipped = Skipped::new(&resource);
        let mut page_number = 0;
        while runs.len() < wanted {
            page_number += 1;
            let mut url = self.api_url(&["runs"]);
            {
                let mut q = url.query_pairs_mut();
                let limit = (wanted - runs.len()).clamp(1, PAGE_LIMIT);
                q.append_pair("limit", &limit.to_string());
                if let Some(agent) = query.agent_id {
                    // Both names: the documented shape reads `agent_id`, the final one
                    // `agentId`.
                    q.append_pair("agent_id", agent)
                        .append_pair("agentId", agent);
                }
                if let Some(status) = query.status {
                    q.append_pair("status", status);
                }
                if let Some(since) = &since {
                    q.append_pair("since", since);
                }
                if let Some(c) = &cursor {
                    q.append_pair("cursor", c);
                }
            }
            let answer = self.api_get(&url, &resource)?;
            let (page, pagination) =
                self.decode_page_with(&answer, &resource, page_number, &mut skipped, run_row)?;
            for run in page {
                if ids.insert(run.id.clone()) && runs.len() < wanted {
                    runs.push(run);
                }
            }
            match next_cursor(Some(pagination), &resource)? {
                None => break,
                Some(next) if !cursors.insert(next.clone()) => {
                    return Err(protocol(
                        &resource,
                        "the pagination cursor came back a second time; stopped instead of looping forever",
                    ))
                }
                Some(next) => cursor = Some(next),
            }
        }
        skipped.report();
        runs.sort_by_key(|r| std::cmp::Reverse(r.created_at));
        Ok(runs)
    }

    /// One run's detail.
    pub fn get_run(&self, id: &RunId) -> Result<Run, ApiError> {
        let resource = Resource::same(format!("run {id}"));
        let url = self.api_url(&["runs", id.as_str()]);
        let json: Value = self.decode_ok(&self.api_get(&url, &resource)?, &resource)?;
        Run::from_json(json).ok_or_else(|| protocol(&resource, "the run has no usable id"))
    }

    /// One page of a run's logs, oldest first.
    pub fn run_logs(&self, id: &RunId, query: &LogQuery<'_>) -> Result<LogPage, ApiError> {
        let resource = Resource {
            what: format!("the logs of run {id}"),
            missing: format!("run {id}"),
        };
        let mut url = self.api_url(&["runs", id.as_str(), "logs"]);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("order", "asc");
            let limit = query.limit.unwrap_or(PAGE_LIMIT).clamp(1, PAGE_LIMIT);
            q.append_pair("limit", &limit.to_string());
            if let Some(since) = query.since {
                q.append_pair("since", since);
            }
            if let Some(c) = query.cursor {
                q.append_pair("cursor", c);
            }
        }
        let answer = self.api_get(&url, &resource)?;
        let mut skipped = Skipped::new(&resource);
        let (entries, pagination) =
            self.decode_page_with(&answer, &resource, 1, &mut skipped, |row| {
                let json: Value = serde_json::from_str(row).map_err(|e| e.to_string())?;
                LogEntry::from_json(json)
                    .ok_or_else(|| "the entry has no timestamp (a string)".to_string())
            })?;
        let next_cursor = next_cursor(Some(pagination), &resource)?;
        skipped.report();
        Ok(LogPage {
            entries,
            next_cursor,
        })
    }

    /// A run's metrics (samples and summary), keys in snake_case.
    pub fn run_metrics(&self, id: &RunId) -> Result<Value, ApiError> {
        let resource = Resource {
            what: format!("the metrics of run {id}"),
            missing: format!("run {id}"),
        };
        let url = self.api_url(&["runs", id.as_str(), "metrics"]);
        let json: Value = self.decode_ok(&self.api_get(&url, &resource)?, &resource)?;
        Ok(snake_keys(json, &[]))
    }

    /// The event stream of a run, from the output event after `last_event_id`: one
    /// request, read as the events come (the iterator ends with the stream).
    pub fn run_events(
        &self,
        id: &RunId,
        last_event_id: Option<u64>,
    ) -> Result<RunEvents, ApiError> {
        self.run_events_within(id, last_event_id, None)
    }

    /// [`Client::run_events`] on a connection that lasts `within` at most, when given (the
    /// iterator then ends with an error at that time, if the stream has not ended before).
    pub fn run_events_within(
        &self,
        id: &RunId,
        last_event_id: Option<u64>,
        within: Option<std::time::Duration>,
    ) -> Result<RunEvents, ApiError> {
        let resource = Resource {
            what: format!("the events of run {id}"),
            missing: format!("run {id}"),
        };
        let mut url = self.api_url(&["runs", id.as_str(), "events"]);
        if let Some(n) = last_event_id {
            let n = n.to_string();
            url.query_pairs_mut()
                .append_pair("last_event_id", &n)
                .append_pair("lastEventId", &n);
        }
        let response = self.api_stream(&url, &resource, within)?;
        Ok(RunEvents {
            reader: BufReader::new(Box::new(response)),
        })
    }
}

/// A row of the list of runs, or why it is left out.
fn run_row(row: &str) -> Result<Run, String> {
    let json: Value = serde_json::from_str(row).map_err(|e| e.to_string())?;
    Run::from_json(json).ok_or_else(|| {
        "the run has no id, or one that cannot be a file name (1 to 128 letters, digits, - and _)"
            .to_string()
    })
}

/// The next cursor of a page, or `None` at the end.
fn next_cursor(
    pagination: Option<super::wire::Pagination>,
    resource: &Resource,
) -> Result<Option<String>, ApiError> {
    let pagination = pagination.unwrap_or_default();
    let next = pagination.next_cursor.filter(|c| !c.is_empty());
    if !pagination.has_more.unwrap_or(next.is_some()) {
        return Ok(None);
    }
    match next {
        Some(next) => Ok(Some(next)),
        None => Err(protocol(
            resource,
            "a page says there are more rows but gives no cursor",
        )),
    }
}

fn protocol(resource: &Resource, detail: &str) -> ApiError {
    ApiError::Protocol {
        resource: resource.what.clone(),
        detail: detail.into(),
    }
}

/// A run's event stream being read (`text/event-stream`).
pub struct RunEvents {
    reader: BufReader<Box<dyn Read + Send>>,
}

impl fmt::Debug for RunEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RunEvents")
    }
}

impl Iterator for RunEvents {
    type Item = std::io::Result<RunEvent>;

    /// The next event other than a heartbeat; `None` once the stream has ended. An event
    /// longer than [`MAX_JSON_BODY`] (its lines together) is an error, not read on: the
    /// stream is a JSON answer like any other, bounded like them.
    fn next(&mut self) -> Option<Self::Item> {
        let mut name = String::new();
        let mut data = String::new();
        let mut line = String::new();
        let mut event_bytes = 0u64;
        loop {
            line.clear();
            // One byte past what is left tells a line that runs past the cap.
            let left = MAX_JSON_BODY - event_bytes;
            match (&mut self.reader).take(left + 1).read_line(&mut line) {
                Ok(0) => return None,
                Ok(n) => {
                    event_bytes += n as u64;
                    if event_bytes > MAX_JSON_BODY {
                        return Some(Err(std::io::Error::other(format!(
                            "an event of the stream is longer than {}, far more than any event of the API holds; stopped reading the stream",
                            crate::size::ByteSize(MAX_JSON_BODY)
                        ))));
                    }
                }
                Err(e) => return Some(Err(e)),
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                if let Some(event) = parse_event(&name, &data) {
                    return Some(Ok(event));
                }
                name.clear();
                data.clear();
                event_bytes = 0;
            } else if let Some(v) = l.strip_prefix("event:") {
                name = v.trim().to_string();
            } else if let Some(v) = l.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
            // `id:` repeats the output's sequence, which its data holds; comments and
            // other fields are ignored, as the SSE rules say.
        }
    }
}

/// One event of the stream, or `None` for heartbeats and what cannot be read.
fn parse_event(name: &str, data: &str) -> Option<RunEvent> {
    let json: Value = match serde_json::from_str(data) {
        Ok(json) => json,
        Err(_) if name == "heartbeat" || data.is_empty() => return None,
        Err(e) => {
            tracing::warn!(event = name, error = %e, "ignoring an event that is not JSON");
            return None;
        }
    };
    let json = snake_keys(json, EVENT_VERBATIM);
    let status = || string_field(&json, "status");
    match name {
        "status" => Some(RunEvent::Status {
            status: status(),
            json,
        }),
        "output" => Some(RunEvent::Output {
            sequence: json.get("sequence").and_then(Value::as_u64)?,
            json,
        }),
        "complete" => Some(RunEvent::Complete {
            status: status(),
            json,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_become_snake_case_but_data_stays_as_sent() {
        let cases = [
            ("agentId", "agent_id"),
            ("executionTimeMs", "execution_time_ms"),
            ("agent_id", "agent_id"),
            ("id", "id"),
            ("cpuPercent", "cpu_percent"),
        ];
        for (camel, snake) in cases {
            assert_eq!(snake_key(camel), snake, "{camel}");
        }
        let run = json!({"id": "r-1", "agentName": "a", "volumes": {"inputData": "x"},
                         "artifactVersion": null, "nested": {"sessionId": 1}});
        let out = snake_keys(run, RUN_VERBATIM);
        assert_eq!(
            out,
            json!({"id": "r-1", "agent_name": "a", "volumes": {"inputData": "x"},
                   "artifact_version": null, "nested": {"session_id": 1}})
        );
        let log = json!({"timestamp": "t", "metadata": {"requestId": 1}});
        assert_eq!(
            snake_keys(log, LOG_VERBATIM),
            json!({"timestamp": "t", "metadata": {"requestId": 1}})
        );
    }

    #[test]
    fn run_ids_must_be_safe_file_names() {
        for ok in ["3f1c9a2e-6b1d-4c1e-9a55-0d2f7b8e4a10", "run_1", "A"] {
            assert!(RunId::parse(ok).is_some(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "a\0", &"x".repeat(129)] {
            assert!(RunId::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn both_shapes_read_into_the_same_run() {
        let v = "ab".repeat(32);
        let snake = json!({"id": "r1", "agent_id": "a1", "agent_name": "writer",
            "status": "completed", "prompt": "p", "created_at": "2026-01-20T10:00:00.000Z",
            "error": null, "artifact_name": "out", "artifact_version": v,
            "volumes": {"input-data": v}});
        let camel = json!({"id": "r1", "agentId": "a1", "agentName": "writer",
            "status": "completed", "prompt": "p", "createdAt": "2026-01-20T10:00:00.000Z",
            "error": null, "artifactName": "out", "artifactVersion": v,
            "volumes": {"input-data": v}});
        let a = Run::from_json(snake).unwrap();
        let b = Run::from_json(camel).unwrap();
        assert_eq!(a, b);
        assert!(a.is_final());
        assert_eq!(a.volumes.len(), 1);
        assert_eq!(a.artifact_version.as_ref().unwrap().as_str(), v);
    }

    #[test]
    fn events_are_read_from_the_stream_text() {
        let text = "event: status\ndata: {\"status\":\"running\",\"runId\":\"r\"}\n\n\
                    event: heartbeat\ndata: {\"timestamp\":\"t\"}\n\n\
                    id: 3\nevent: output\ndata: {\"sequence\":3,\"type\":\"text\",\"data\":{\"aB\":1},\"timestamp\":\"t\"}\n\n\
                    event: complete\ndata: {\"status\":\"completed\",\"output\":null,\"error\":null}\n\n";
        let events = RunEvents {
            reader: BufReader::new(Box::new(std::io::Cursor::new(text.as_bytes().to_vec()))),
        };
        let got: Vec<RunEvent> = events.map(Result::unwrap).collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            matches!(&got[0], RunEvent::Status { status, json } if status == "running" && json["run_id"] == "r")
        );
        assert!(
            matches!(&got[1], RunEvent::Output { sequence: 3, json } if json["data"] == json!({"aB": 1}))
        );
        assert!(matches!(&got[2], RunEvent::Complete { status, .. } if status == "completed"));
    }

    #[test]
    fn an_event_past_the_cap_is_an_error_not_read_whole() {
        /// `data: xxxx…` without end (until `len` bytes), produced as it is read.
        struct Endless {
            left: u64,
            started: bool,
        }
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let head: &[u8] = b"event: output\ndata: ";
                if !self.started {
                    self.started = true;
                    buf[..head.len()].copy_from_slice(head);
                    return Ok(head.len());
                }
                let n = (buf.len() as u64).min(self.left) as usize;
                buf[..n].fill(b'x');
                self.left -= n as u64;
                Ok(n)
            }
        }
        let mut events = RunEvents {
            reader: BufReader::new(Box::new(Endless {
                left: 1 << 30,
                started: false,
            })),
        };
        let err = events.next().unwrap().unwrap_err();
        assert!(err.to_string().contains("longer than 16.0 MiB"), "{err}");
    }
}
