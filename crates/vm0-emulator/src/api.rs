//! The entry of the API listener and the `/v1` routes of the storages: authentication, the
//! four routes of each storage kind, both JSON shapes, pagination (with the real service's
//! repeated-row quirk on demand), and the 302 to the object store. Requests under
//! `/_emulator/` go to `admin`, the agent and run routes to `runs_api`, which share the
//! authentication, fault answers and pagination defined here.
//!
//! Order of a request: route match, count it, apply a fault rule, check the token, answer.
//! Faults come before authentication so a test can fault a route whatever the token.

use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use crate::faults::FaultRule;
use crate::http::{self, Flow, Method, Request};
use crate::model::{format_timestamp, Kind, LookupError, Storage, Version};
use crate::runs_api::{self, Answer};
use crate::wire::{Json, Reply, Shape};
use crate::{admin, events, store, Runtime, Shared};

/// Default and largest page sizes of the contract.
pub(crate) const DEFAULT_LIMIT: usize = 20;
pub(crate) const MAX_LIMIT: usize = 100;

/// The API listener's side of [`http::Server`]: every request goes through [`handle`].
pub(crate) struct ApiHandler(pub Arc<Shared>);

impl http::Handler for ApiHandler {
    fn handle(&self, stream: &mut TcpStream, request: Request) -> io::Result<Flow> {
        handle(&self.0, stream, &request)
    }

    fn refusal(&self, status: u16, message: &str) -> Vec<u8> {
        let mut reply = Reply::error(
            status,
            if status >= 500 {
                "api_error"
            } else {
                "invalid_request_error"
            },
            if status == 503 {
                "service_unavailable"
            } else {
                "invalid_request"
            },
            message,
            None,
        );
        if status == 503 {
            reply = reply.with_header("Retry-After", "1");
        }
        reply.to_bytes(false, false)
    }
}

/// Entry point of every request on the API listener.
pub fn handle(shared: &Arc<Shared>, stream: &mut TcpStream, request: &Request) -> io::Result<Flow> {
    let (path, query) = request.path_and_query();
    let method = &request.method;
    let reply = if path == "/_emulator" || path.starts_with("/_emulator/") {
        admin::handle(shared, request, path)
    } else if let Some(answer) = runs_api::handle(shared, request, path, query) {
        match answer {
            Answer::Reply(reply) => reply,
            Answer::Events(events) => {
                tracing::debug!(%method, url = %request.target, "API request: event stream");
                return events::serve(shared, stream, request, &events);
            }
        }
    } else {
        api(shared, request, path, query)
    };
    tracing::debug!(%method, url = %request.target, status = reply.status(), "API request");
    crate::wire::send(stream, request, &reply)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    List,
    Get,
    Versions,
    Download,
}

impl Route {
    fn key(self, kind: Kind) -> String {
        let name = match self {
            Route::List => "list",
            Route::Get => "get",
            Route::Versions => "versions",
            Route::Download => "download",
        };
        format!("{}.{name}", kind.as_str())
    }
}

pub(crate) fn unknown_route(method: &Method, path: &str) -> Reply {
    Reply::not_found(&format!("Unknown route: {method} {path}"))
}

fn api(shared: &Shared, request: &Request, path: &str, query: &str) -> Reply {
    let method = &request.method;
    let Some(rest) = path.strip_prefix("/v1/") else {
        return unknown_route(method, path);
    };
    if *method != Method::Get {
        return unknown_route(method, path);
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let (kind, id, route) = match segments.as_slice() {
        [kind] => (*kind, None, Route::List),
        [kind, id] => (*kind, Some(*id), Route::Get),
        [kind, id, "versions"] => (*kind, Some(*id), Route::Versions),
        [kind, id, "download"] => (*kind, Some(*id), Route::Download),
        _ => return unknown_route(method, path),
    };
    let (Some(kind), false) = (Kind::parse(kind), id == Some("")) else {
        return unknown_route(method, path);
    };
    let key = route.key(kind);
    shared.counters.hit(&key);

    let runtime = shared.runtime.read().clone();
    let params = query_params(query);
    let param = |name: &str| param(&params, name);
    // The download's version parameter has one name per shape: a server of one shape does
    // not read the other's (the contract's advice to clients is to send both).
    let version_param = param(runtime.shape.field("version_id"));

    // The full id a download is about, for per-version counters and fault rules.
    let download_version = if route == Route::Download {
        let data = shared.data.read();
        id.and_then(|id| data.get(kind, id)).and_then(|s| {
            match version_param {
                Some(q) => s.resolve(q).ok(),
                None => s.current_version(),
            }
            .map(|v| v.id.clone())
        })
    } else {
        None
    };
    if let Some(v) = &download_version {
        shared.counters.hit(&format!("download:{v}"));
    }
    if let Some(rule) = shared.faults.take(&key, download_version.as_deref()) {
        if let Some(delay) = rule.delay_ms {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if rule.status.is_some() {
            return fault_reply(&rule);
        }
    }

    if !authorized(request, &runtime.token) {
        return Reply::unauthorized();
    }

    let data = shared.data.read();
    let storage = match id {
        None => {
            let rows = data
                .list(kind)
                .into_iter()
                .map(|s| storage_json(s, runtime.shape))
                .collect();
            return paginate(rows, &params, &runtime);
        }
        Some(id) => match data.get(kind, id) {
            Some(storage) => storage,
            None => {
                return Reply::not_found(&format!(
                    "{} '{id}' not found",
                    capitalize(kind.singular())
                ))
            }
        },
    };
    match route {
        Route::List => unreachable!("lists have no id and returned above"),
        Route::Get => {
            let current = storage
                .current_version()
                .map_or(Json::Null, |v| version_json(storage, v, runtime.shape));
            Reply::json(
                200,
                storage_json(storage, runtime.shape)
                    .with(runtime.shape.field("current_version"), current),
            )
        }
        Route::Versions => {
            let rows = storage
                .versions_newest_first()
                .into_iter()
                .map(|v| version_json(storage, v, runtime.shape))
                .collect();
            paginate(rows, &params, &runtime)
        }
        Route::Download => match storage.resolve_download(version_param) {
            Ok(version) => Reply::Redirect {
                location: store::presign(shared, kind, &storage.id, &version.id),
            },
            Err(err) => lookup_failed(storage, &err, version_param),
        },
    }
}

fn lookup_failed(storage: &Storage, err: &LookupError, query: Option<&str>) -> Reply {
    Reply::not_found(&err.message(storage, query))
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// `Authorization: Bearer <token>`, the scheme case-insensitive (RFC 9110, 11.1), the token
/// compared exactly.
pub(crate) fn authorized(request: &Request, token: &str) -> bool {
    let Some(value) = request.header("authorization") else {
        return false;
    };
    match value.split_once(' ') {
        Some((scheme, given)) => scheme.eq_ignore_ascii_case("bearer") && given == token,
        None => false,
    }
}

/// The answer a fault rule asks for instead of the real one.
pub(crate) fn fault_reply(rule: &FaultRule) -> Reply {
    let status = rule.status.unwrap_or(500);
    let mut reply = match &rule.body {
        // A body from somewhere in front of the API (a proxy's page): none of its headers.
        Some(body) => Reply::Raw {
            status,
            content_type: rule
                .content_type
                .clone()
                .unwrap_or_else(|| "text/html".to_string()),
            body: body.clone(),
            headers: Vec::new(),
        },
        None => Reply::for_status(status),
    };
    if status == 429 || rule.retry_after.is_some() {
        let secs = rule.retry_after.unwrap_or(1);
        reply = reply.with_header("Retry-After", &secs.to_string());
    }
    reply
}

pub(crate) fn storage_json(storage: &Storage, shape: Shape) -> Json {
    // The storage's size and count are the current version's; the contract warns clients
    // that on the real service they can be stale, so they must not rely on them.
    let current = storage.current_version();
    Json::obj()
        .with("id", storage.id.as_str())
        .with("name", storage.name.as_str())
        .with(shape.field("current_version_id"), storage.current.clone())
        .with("size", current.map_or(0, |v| v.size))
        .with(
            shape.field("file_count"),
            current.map_or(0, |v| v.file_count),
        )
        .with(
            shape.field("created_at"),
            format_timestamp(storage.created_at_ms),
        )
        .with(
            shape.field("updated_at"),
            format_timestamp(storage.updated_at_ms),
        )
}

pub(crate) fn version_json(storage: &Storage, version: &Version, shape: Shape) -> Json {
    let owner = match storage.kind {
        Kind::Volumes => "volume_id",
        Kind::Artifacts => "artifact_id",
    };
    Json::obj()
        .with("id", version.id.as_str())
        .with(shape.field(owner), storage.id.as_str())
        .with("size", version.size)
        .with(shape.field("file_count"), version.file_count)
        .with("message", version.message.clone())
        .with(shape.field("created_by"), version.created_by.as_str())
        .with(
            shape.field("created_at"),
            format_timestamp(version.created_at_ms),
        )
}

/// Cursors are opaque to clients; here, the hex of `offset:N`.
fn encode_cursor(offset: usize) -> String {
    hex::encode(format!("offset:{offset}"))
}

fn decode_cursor(cursor: &str) -> Option<usize> {
    let bytes = hex::decode(cursor).ok()?;
    std::str::from_utf8(&bytes)
        .ok()?
        .strip_prefix("offset:")?
        .parse()
        .ok()
}

/// The parameters of a query string, decoded, in order.
pub(crate) fn query_params(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// The first value of a parameter.
pub(crate) fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Where a page starts and how long it is, from the `cursor` and `limit` parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Page {
    pub start: usize,
    pub limit: usize,
}

impl Page {
    /// Reads `limit` (1 to 100, `default_limit` when absent) and `cursor`.
    pub fn from_params(params: &[(String, String)], default_limit: usize) -> Result<Page, Reply> {
        let limit = match param(params, "limit") {
            None => default_limit,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(Reply::bad_param(
                        "limit",
                        &format!("limit must be an integer between 1 and {MAX_LIMIT}, got '{s}'"),
                    ))
                }
            },
        };
        let start = match param(params, "cursor") {
            None => 0,
            Some(c) => match decode_cursor(c) {
                Some(offset) => offset,
                None => return Err(Reply::bad_param("cursor", "Invalid cursor")),
            },
        };
        Ok(Page { start, limit })
    }

    /// The answer holding `data`, the rows of this page, with the pagination object: the
    /// next cursor (with the quirks the runtime configuration asks for) when `has_more`.
    pub fn answer(&self, data: Vec<Json>, has_more: bool, runtime: &Runtime) -> Reply {
        let end = self.start + data.len();
        // The quirk: the next page starts one row early, so it begins with this page's last
        // row. Not with a limit of 1, where it would never advance.
        let next = if runtime.pagination_quirk && self.limit > 1 && end > 0 {
            end - 1
        } else {
            end
        };
        let mut has_more = has_more;
        let mut next_cursor = has_more.then(|| encode_cursor(next));
        if runtime.stuck_cursor {
            has_more = true;
            next_cursor = Some(encode_cursor(0));
        }
        let shape = runtime.shape;
        Reply::json(
            200,
            Json::obj().with("data", data).with(
                "pagination",
                Json::obj()
                    .with(shape.field("has_more"), has_more)
                    .with(shape.field("next_cursor"), next_cursor),
            ),
        )
    }
}

/// One page of `rows` per the `limit` and `cursor` parameters.
pub(crate) fn paginate(rows: Vec<Json>, params: &[(String, String)], runtime: &Runtime) -> Reply {
    let page = match Page::from_params(params, DEFAULT_LIMIT) {
        Ok(page) => page,
        Err(reply) => return reply,
    };
    let total = rows.len();
    let start = page.start.min(total);
    let end = (start + page.limit).min(total);
    let data: Vec<Json> = rows.into_iter().skip(start).take(end - start).collect();
    Page { start, ..page }.answer(data, end < total, runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        assert_eq!(decode_cursor(&encode_cursor(42)), Some(42));
        assert_eq!(decode_cursor("zz"), None);
        assert_eq!(decode_cursor(&hex::encode("offset:x")), None);
    }

    #[test]
    fn capitalizes() {
        assert_eq!(capitalize("volume"), "Volume");
        assert_eq!(capitalize(""), "");
    }
}
