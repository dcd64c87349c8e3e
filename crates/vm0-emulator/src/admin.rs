//! The test-only admin endpoints under `/_emulator/` (no authentication): counters, fault
//! rules, runtime configuration, and pushing versions or moving the current one, so tests
//! can drive the emulator into every state the real service can be in.

use std::collections::BTreeMap;
use std::io::Read;

use serde::Deserialize;
use tiny_http::Method;

use crate::faults::FaultRule;
use crate::model::{now_ms, storage_id, Kind, Storage};
use crate::pack::{self, EntryKind, PackEntry, Source};
use crate::wire::{Json, Reply, Shape};
use crate::{api, Shared};

/// Pushed content is JSON in the request, so this bounds memory, not archive sizes.
const MAX_BODY: u64 = 256 * 1024 * 1024;

pub fn handle(shared: &Shared, request: &mut tiny_http::Request, path: &str) -> Reply {
    let method = request.method().clone();
    let route = path.trim_start_matches("/_emulator").trim_end_matches('/');
    let mut body = Vec::new();
    if let Err(err) = request.as_reader().take(MAX_BODY).read_to_end(&mut body) {
        return bad_request(&format!("cannot read the request body: {err}"));
    }
    match (&method, route) {
        (Method::Get, "/counters") => counters(shared),
        (Method::Post, "/counters/reset") => {
            shared.counters.reset();
            ok()
        }
        (Method::Get, "/faults") => faults(shared),
        (Method::Post, "/faults") => add_fault(shared, &body),
        (Method::Delete, "/faults") => {
            shared.faults.clear();
            ok()
        }
        (Method::Post, "/release") => {
            shared.holds.release();
            ok()
        }
        (Method::Get, "/config") => config(shared),
        (Method::Post, "/config") => set_config(shared, &body),
        (Method::Post, "/push") => push(shared, &body),
        (Method::Post, "/current") => set_current(shared, &body),
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
    let fields = shared
        .counters
        .snapshot()
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

fn add_fault(shared: &Shared, body: &[u8]) -> Reply {
    let rule: FaultRule = match parse(body) {
        Ok(rule) => rule,
        Err(reply) => return reply,
    };
    if let Err(message) = rule.validate() {
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
            .with("stuck_cursor", rt.stuck_cursor),
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
        // The token stays out of the log, as in vm0fs itself.
        tracing::info!(
            url_ttl_secs = rt.url_ttl_secs,
            shape = ?rt.shape,
            pagination_quirk = rt.pagination_quirk,
            stuck_cursor = rt.stuck_cursor,
            token_changed,
            "runtime configuration changed"
        );
    }
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
    let now = now_ms();
    let mtime = u64::try_from(now / 1000).unwrap_or(0);
    let mut entries: Vec<PackEntry> = push
        .files
        .into_iter()
        .map(|(path, content)| PackEntry {
            path: path.into(),
            mtime,
            kind: EntryKind::File {
                size: content.len() as u64,
                source: Source::Memory(content.into_bytes()),
                mode: 0o644,
            },
        })
        .collect();
    entries.extend(push.symlinks.into_iter().map(|(path, target)| PackEntry {
        path: path.into(),
        mtime,
        kind: EntryKind::Symlink {
            target: target.into(),
        },
    }));
    let sid = storage_id(kind, &push.name);
    // Build the archive outside the data lock: readers keep being served meanwhile.
    let packed = match pack::pack(&sid, entries, &shared.archives_dir) {
        Ok(packed) => packed,
        Err(err) => {
            return Reply::error(500, "api_error", "internal_error", &err.to_string(), None)
        }
    };
    let shape = shared.runtime.read().shape;
    let mut data = shared.data.write();
    if data.get_mut_by_name(kind, &push.name).is_none() {
        data.storages.push(Storage {
            id: sid.clone(),
            kind,
            name: push.name.clone(),
            versions: Vec::new(),
            current: None,
            created_at_ms: now,
            updated_at_ms: now,
        });
    }
    let storage = data
        .get_mut_by_name(kind, &push.name)
        .expect("the storage exists or was created just above");
    // A new version is the newest even if the clock is behind the data set's fixed times.
    let created_at_ms = storage
        .newest_created_at_ms()
        .map_or(now, |newest| now.max(newest + 1));
    let version = crate::model::Version {
        id: packed.version_id,
        size: packed.size,
        file_count: packed.file_count,
        message: push.message,
        created_by,
        created_at_ms,
        archive: packed.archive,
    };
    let version = storage.add_version(version, created_at_ms).clone();
    let storage = data
        .get_mut_by_name(kind, &push.name)
        .expect("the storage exists");
    tracing::info!(kind = kind.as_str(), name = %storage.name, version = %version.id, "pushed");
    Reply::json(200, api::version_json(storage, &version, shape))
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
