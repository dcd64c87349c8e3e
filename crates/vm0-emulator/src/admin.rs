//! The test-only admin endpoints under `/_emulator/` (no authentication): counters, fault
//! rules, runtime configuration, pushing versions or moving the current one, and creating
//! agents and runs and driving runs (the work itself is `lifecycle`'s), so tests can drive
//! the emulator into every state the real service can be in.
//!
//! It also owns committing a version to a storage ([`commit_version`]), which a push and a
//! completing run share.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::faults::FaultRule;
use crate::http::{Method, Request};
use crate::lifecycle::{self, AgentSpec, NewLog, RunError, RunSpec};
use crate::model::{now_ms, storage_id, Kind, Storage, Version};
use crate::pack::{self, EntryKind, FileBytes, PackEntry};
use crate::runs::Outcome;
use crate::wire::{Json, Reply, Shape};
use crate::{api, runs_api, Shared};

/// Pushed content is JSON in the request, so this bounds memory, not archive sizes.
pub(crate) const MAX_BODY: u64 = 256 * 1024 * 1024;

pub fn handle(shared: &Shared, request: &Request, path: &str) -> Reply {
    let method = &request.method;
    let route = path.trim_start_matches("/_emulator").trim_end_matches('/');
    let body = &request.body;
    match (method, route) {
        (Method::Get, "/counters") => counters(shared),
        (Method::Post, "/counters/reset") => {
            shared.counters.reset();
            ok()
        }
        (Method::Get, "/faults") => faults(shared),
        (Method::Post, "/faults") => add_fault(shared, body),
        (Method::Delete, "/faults") => {
            shared.faults.clear();
            ok()
        }
        (Method::Post, "/release") => {
            shared.holds.release();
            ok()
        }
        (Method::Get, "/config") => config(shared),
        (Method::Post, "/config") => set_config(shared, body),
        (Method::Post, "/push") => push(shared, body),
        (Method::Post, "/current") => set_current(shared, body),
        (Method::Post, "/agents") => create_agent(shared, body),
        (Method::Get, "/streams") => Reply::json(
            200,
            Json::obj().with(
                "open",
                shared
                    .runs
                    .open_streams
                    .load(std::sync::atomic::Ordering::SeqCst) as u64,
            ),
        ),
        (Method::Post, "/runs") => create_runs(shared, body),
        (Method::Post, route) => match route.strip_prefix("/runs/").and_then(|r| r.split_once('/'))
        {
            Some((id, action)) if !id.is_empty() => run_action(shared, id, action, body)
                .unwrap_or_else(|| {
                    Reply::not_found(&format!("Unknown admin route: {method} {path}"))
                }),
            _ => Reply::not_found(&format!("Unknown admin route: {method} {path}")),
        },
        _ => Reply::not_found(&format!("Unknown admin route: {method} {path}")),
    }
}

fn ok() -> Reply {
    Reply::json(200, Json::obj().with("ok", true))
}

fn bad_request(message: &str) -> Reply {
    Reply::error(
        400,
        "invalid_request_error",
        "invalid_parameter",
        message,
        None,
    )
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|err| bad_request(&format!("invalid JSON body: {err}")))
}

fn counters(shared: &Shared) -> Reply {
    let mut counts = shared.counters.snapshot();
    // The agent and run routes are listed beside the storage routes, 0 when never hit.
    for key in runs_api::ROUTE_KEYS {
        counts.entry(key.to_string()).or_insert(0);
    }
    let fields = counts
        .into_iter()
        .map(|(k, v)| (k, Json::from(v)))
        .collect();
    Reply::json(200, Json::Obj(fields))
}

fn faults(shared: &Shared) -> Reply {
    let rules: Vec<Json> = shared
        .faults
        .snapshot()
        .into_iter()
        .map(|(rule, remaining)| {
            let mut value = serde_json::to_value(&rule).expect("a fault rule serializes");
            value["remaining"] = remaining.map_or(serde_json::Value::Null, Into::into);
            Json::from(value)
        })
        .collect();
    Reply::json(200, Json::obj().with("rules", rules))
}

/// [`FaultRule::validate`] knows the route keys of the storages and the store; the agent
/// and run routes' keys are `runs_api`'s, so they are checked here, and the rest of such a
/// rule by `validate` as for any other.
fn validate_rule(rule: &FaultRule) -> Result<(), String> {
    if !runs_api::ROUTE_KEYS.contains(&rule.route.as_str()) {
        return rule.validate().map_err(|message| {
            if message.starts_with("unknown route") {
                format!("{message}, or {}", runs_api::ROUTE_KEYS.join(", "))
            } else {
                message
            }
        });
    }
    FaultRule {
        route: "*".to_string(),
        ..rule.clone()
    }
    .validate()
}

fn add_fault(shared: &Shared, body: &[u8]) -> Reply {
    let rule: FaultRule = match parse(body) {
        Ok(rule) => rule,
        Err(reply) => return reply,
    };
    if let Err(message) = validate_rule(&rule) {
        return bad_request(&message);
    }
    tracing::info!(?rule, "fault rule added");
    let rules = shared.faults.add(rule);
    Reply::json(
        200,
        Json::obj().with("ok", true).with("rules", rules as u64),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigChange {
    url_ttl_secs: Option<u64>,
    token: Option<String>,
    shape: Option<Shape>,
    pagination_quirk: Option<bool>,
    stuck_cursor: Option<bool>,
    heartbeat_ms: Option<u64>,
}

fn config(shared: &Shared) -> Reply {
    let rt = shared.runtime.read().clone();
    let shape = match rt.shape {
        Shape::Snake => "snake",
        Shape::Camel => "camel",
    };
    Reply::json(
        200,
        Json::obj()
            .with("url_ttl_secs", rt.url_ttl_secs)
            .with("token", rt.token)
            .with("shape", shape)
            .with("pagination_quirk", rt.pagination_quirk)
            .with("stuck_cursor", rt.stuck_cursor)
            .with("heartbeat_ms", rt.heartbeat_ms),
    )
}

fn set_config(shared: &Shared, body: &[u8]) -> Reply {
    let change: ConfigChange = match parse(body) {
        Ok(change) => change,
        Err(reply) => return reply,
    };
    let token_changed = change.token.is_some();
    {
        let mut rt = shared.runtime.write();
        if let Some(v) = change.url_ttl_secs {
            rt.url_ttl_secs = v;
        }
        if let Some(v) = change.token {
            rt.token = v;
        }
        if let Some(v) = change.shape {
            rt.shape = v;
        }
        if let Some(v) = change.pagination_quirk {
            rt.pagination_quirk = v;
        }
        if let Some(v) = change.stuck_cursor {
            rt.stuck_cursor = v;
        }
        if let Some(v) = change.heartbeat_ms {
            rt.heartbeat_ms = v.max(1);
        }
        // The token stays out of the log, as in vm0fs itself.
        tracing::info!(
            url_ttl_secs = rt.url_ttl_secs,
            shape = ?rt.shape,
            pagination_quirk = rt.pagination_quirk,
            stuck_cursor = rt.stuck_cursor,
            heartbeat_ms = rt.heartbeat_ms,
            token_changed,
            "runtime configuration changed"
        );
    }
    // Event streams waiting for their next heartbeat pick up a new period at once.
    shared.runs.notify();
    config(shared)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Push {
    kind: String,
    name: String,
    #[serde(default)]
    files: BTreeMap<String, String>,
    /// Beyond the contract's push: `{"path": "target"}` symlinks, as the CLI can push them.
    #[serde(default)]
    symlinks: BTreeMap<String, String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    created_by: Option<String>,
}

fn parse_kind(kind: &str) -> Result<Kind, Reply> {
    Kind::parse(kind).ok_or_else(|| bad_request("kind must be 'volumes' or 'artifacts'"))
}

/// A path the CLI could push: relative, no `.`/`..`, no empty segment.
fn valid_member_path(path: &str) -> bool {
    path.split('/')
        .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
}

fn push(shared: &Shared, body: &[u8]) -> Reply {
    let push: Push = match parse(body) {
        Ok(push) => push,
        Err(reply) => return reply,
    };
    let kind = match parse_kind(&push.kind) {
        Ok(kind) => kind,
        Err(reply) => return reply,
    };
    if push.name.is_empty() || push.name.contains('/') {
        return bad_request("name must be a non-empty storage name");
    }
    if let Some(bad) = push
        .files
        .keys()
        .chain(push.symlinks.keys())
        .find(|p| !valid_member_path(p))
    {
        return bad_request(&format!("invalid path '{bad}'"));
    }
    let created_by = push.created_by.unwrap_or_else(|| "user".to_string());
    if created_by != "user" && created_by != "agent" {
        return bad_request("created_by must be 'user' or 'agent'");
    }
    let version = match commit_version(
        shared,
        kind,
        &push.name,
        push.files,
        push.symlinks,
        push.message,
        created_by,
    ) {
        Ok(version) => version,
        Err(message) => return Reply::error(500, "api_error", "internal_error", &message, None),
    };
    let shape = shared.runtime.read().shape;
    let data = shared.data.read();
    let storage = data
        .get_by_name(kind, &push.name)
        .expect("the version was just committed to the storage");
    Reply::json(200, api::version_json(storage, &version, shape))
}

/// Builds the archive of `files` and `symlinks` (paths already checked), adds the version to
/// the storage `name` of `kind` (created if needed) and makes it current, as a push of the
/// CLI does. The archive is built outside the data lock: readers keep being served.
pub(crate) fn commit_version(
    shared: &Shared,
    kind: Kind,
    name: &str,
    files: BTreeMap<String, String>,
    symlinks: BTreeMap<String, String>,
    message: Option<String>,
    created_by: String,
) -> Result<Version, String> {
    let now = now_ms();
    let mtime = u64::try_from(now / 1000).unwrap_or(0);
    let mut entries: Vec<PackEntry> = files
        .into_iter()
        .map(|(path, content)| PackEntry {
            path: path.into(),
            mtime,
            kind: EntryKind::File {
                size: content.len() as u64,
                source: FileBytes::Memory(content.into_bytes()),
                mode: 0o644,
            },
        })
        .collect();
    entries.extend(symlinks.into_iter().map(|(path, target)| PackEntry {
        path: path.into(),
        mtime,
        kind: EntryKind::Symlink {
            target: target.into(),
        },
    }));
    let sid = storage_id(kind, name);
    let packed = pack::pack(&sid, entries, &shared.archives_dir).map_err(|err| err.to_string())?;
    let mut data = shared.data.write();
    if data.get_mut_by_name(kind, name).is_none() {
        data.storages.push(Storage {
            id: sid.clone(),
            kind,
            name: name.to_string(),
            versions: Vec::new(),
            current: None,
            created_at_ms: now,
            updated_at_ms: now,
        });
    }
    let storage = data
        .get_mut_by_name(kind, name)
        .expect("the storage exists or was created just above");
    // A new version is the newest even if the clock is behind the data set's fixed times.
    let created_at_ms = storage
        .newest_created_at_ms()
        .map_or(now, |newest| now.max(newest + 1));
    let version = Version {
        id: packed.version_id,
        size: packed.size,
        file_count: packed.file_count,
        message,
        created_by,
        created_at_ms,
        archive: packed.archive,
    };
    let version = storage.add_version(version, created_at_ms).clone();
    tracing::info!(kind = kind.as_str(), %name, version = %version.id, "pushed");
    Ok(version)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetCurrent {
    kind: String,
    name: String,
    version: String,
}

fn set_current(shared: &Shared, body: &[u8]) -> Reply {
    let req: SetCurrent = match parse(body) {
        Ok(req) => req,
        Err(reply) => return reply,
    };
    let kind = match parse_kind(&req.kind) {
        Ok(kind) => kind,
        Err(reply) => return reply,
    };
    let shape = shared.runtime.read().shape;
    let mut data = shared.data.write();
    let Some(storage) = data.get_mut_by_name(kind, &req.name) else {
        return Reply::not_found(&format!("{} '{}' not found", kind.singular(), req.name));
    };
    let id = match storage.resolve(&req.version) {
        Ok(version) => version.id.clone(),
        Err(err) => return Reply::not_found(&err.message(storage, Some(&req.version))),
    };
    storage.current = Some(id);
    storage.updated_at_ms = storage.updated_at_ms.max(now_ms());
    let current = storage
        .current_version()
        .map_or(Json::Null, |v| api::version_json(storage, v, shape));
    Reply::json(
        200,
        api::storage_json(storage, shape).with(shape.field("current_version"), current),
    )
}

fn create_agent(shared: &Shared, body: &[u8]) -> Reply {
    let spec: AgentSpec = match parse(body) {
        Ok(spec) => spec,
        Err(reply) => return reply,
    };
    match lifecycle::create_agent(shared, spec) {
        Ok(id) => runs_api::agent_detail_reply(shared, &id),
        Err(err) => err.reply(),
    }
}

/// Most runs a single `POST /_emulator/runs` creates.
const MAX_RUNS_AT_ONCE: u64 = 100_000;

/// `POST /_emulator/runs`: a [`RunSpec`], plus `count` to create that many alike (their
/// ids are then the answer).
fn create_runs(shared: &Shared, body: &[u8]) -> Reply {
    let mut value: serde_json::Value = match parse(body) {
        Ok(value) => value,
        Err(reply) => return reply,
    };
    let count = match value.as_object_mut().and_then(|o| o.remove("count")) {
        None => None,
        Some(n) => match n.as_u64() {
            Some(n) if (1..=MAX_RUNS_AT_ONCE).contains(&n) => Some(n),
            _ => {
                return bad_request(&format!(
                    "count must be an integer between 1 and {MAX_RUNS_AT_ONCE}"
                ))
            }
        },
    };
    let spec: RunSpec = match serde_json::from_value(value) {
        Ok(spec) => spec,
        Err(err) => return bad_request(&format!("invalid JSON body: {err}")),
    };
    let Some(count) = count else {
        return match lifecycle::create_run(shared, spec) {
            Ok(id) => runs_api::run_detail_reply(shared, &id),
            Err(err) => err.reply(),
        };
    };
    if spec.id.is_some() && count > 1 {
        return bad_request("id and a count above 1 exclude each other");
    }
    let mut ids = Vec::new();
    for _ in 0..count {
        match lifecycle::create_run(shared, spec.clone()) {
            Ok(id) => ids.push(Json::from(id)),
            Err(err) => return err.reply(),
        }
    }
    Reply::json(200, Json::obj().with("ids", ids))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Finish {
    outcome: Option<Outcome>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppendLogs {
    entries: Vec<NewLog>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppendOutput {
    #[serde(rename = "type", default = "text")]
    kind: String,
    #[serde(default)]
    data: serde_json::Value,
}

fn text() -> String {
    "text".to_string()
}

/// `POST /_emulator/runs/{id}/{action}`; `None` for an unknown action.
fn run_action(shared: &Shared, id: &str, action: &str, body: &[u8]) -> Option<Reply> {
    // These bodies are optional: no body is `{}`.
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let done = |result: Result<(), RunError>| match result {
        Ok(()) => runs_api::run_detail_reply(shared, id),
        Err(err) => err.reply(),
    };
    Some(match action {
        "advance" => done(lifecycle::advance(shared, id)),
        "finish" => match parse::<Finish>(body) {
            Ok(finish) => done(lifecycle::finish(shared, id, finish.outcome, finish.error)),
            Err(reply) => reply,
        },
        "logs" => match parse::<AppendLogs>(body) {
            Ok(append) => match lifecycle::append_logs(shared, id, append.entries) {
                Ok(()) => {
                    let total = shared
                        .runs
                        .data
                        .read()
                        .run(id)
                        .map_or(0, |r| r.logs.len() as u64);
                    Reply::json(200, Json::obj().with("ok", true).with("logs", total))
                }
                Err(err) => err.reply(),
            },
            Err(reply) => reply,
        },
        "events" => match parse::<AppendOutput>(body) {
            Ok(output) => match lifecycle::append_output(shared, id, &output.kind, output.data) {
                Ok(sequence) => Reply::json(200, Json::obj().with("sequence", sequence)),
                Err(err) => err.reply(),
            },
            Err(reply) => reply,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_paths() {
        for good in ["a", "a/b.txt", "dir with space/ü.txt"] {
            assert!(valid_member_path(good), "{good}");
        }
        for bad in ["", "/a", "a//b", "a/", "../a", "a/./b", "."] {
            assert!(!valid_member_path(bad), "{bad}");
        }
    }
}
