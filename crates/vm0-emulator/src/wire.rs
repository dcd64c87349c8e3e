//! What goes on the wire of the API listener: JSON with a stable field order, the two
//! shapes of field names, the contract's error bodies, and sending a reply with the headers
//! every JSON answer carries (`X-Request-Id`, `X-API-Version`).

use std::io::{self, Write};

use crate::http::{self, Flow, Method, Request};

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};

/// The two shapes of the API (see the contract's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Snake,
    Camel,
}

impl Shape {
    /// The name of a field in this shape, given its snake_case name.
    pub fn field(self, snake: &'static str) -> &'static str {
        if self == Shape::Snake {
            return snake;
        }
        match snake {
            "current_version_id" => "currentVersionId",
            "current_version" => "currentVersion",
            "file_count" => "fileCount",
            "created_at" => "createdAt",
            "updated_at" => "updatedAt",
            "volume_id" => "volumeId",
            "artifact_id" => "artifactId",
            "created_by" => "createdBy",
            "has_more" => "hasMore",
            "next_cursor" => "nextCursor",
            "version_id" => "versionId",
            other => other,
        }
    }

    /// The name of any field in this shape, given its snake_case name: camel turns every
    /// `a_b` into `aB` (`execution_time_ms` -> `executionTimeMs`). The agent and run routes
    /// use it for their many fields; [`Shape::field`] is the same rule for the storage
    /// routes' fixed list.
    pub fn key(self, snake: &str) -> String {
        if self == Shape::Snake {
            return snake.to_string();
        }
        let mut out = String::with_capacity(snake.len());
        let mut upper = false;
        for c in snake.chars() {
            if c == '_' && !out.is_empty() {
                upper = true;
            } else if upper {
                out.extend(c.to_uppercase());
                upper = false;
            } else {
                out.push(c);
            }
        }
        out
    }
}

/// A JSON value whose objects keep their insertion order: `serde_json::Value` sorts keys
/// (the crate is built without `preserve_order`), and answers read better with `id` first.
#[derive(Debug, Clone)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub fn obj() -> Json {
        Json::Obj(Vec::new())
    }

    /// Adds a field (on an object; a no-op on anything else).
    pub fn with(mut self, key: &str, value: impl Into<Json>) -> Json {
        if let Json::Obj(fields) = &mut self {
            fields.push((key.to_string(), value.into()));
        }
        self
    }

    pub fn render(&self) -> String {
        serde_json::to_string(self).expect("serializing JSON to a string cannot fail")
    }
}

impl From<&str> for Json {
    fn from(s: &str) -> Json {
        Json::Str(s.to_string())
    }
}
impl From<String> for Json {
    fn from(s: String) -> Json {
        Json::Str(s)
    }
}
impl From<u64> for Json {
    fn from(n: u64) -> Json {
        Json::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}
impl From<i64> for Json {
    fn from(n: i64) -> Json {
        Json::Int(n)
    }
}
impl From<f64> for Json {
    fn from(x: f64) -> Json {
        Json::Float(x)
    }
}
impl From<bool> for Json {
    fn from(b: bool) -> Json {
        Json::Bool(b)
    }
}
impl<T: Into<Json>> From<Option<T>> for Json {
    fn from(o: Option<T>) -> Json {
        o.map_or(Json::Null, Into::into)
    }
}
impl From<Vec<Json>> for Json {
    fn from(v: Vec<Json>) -> Json {
        Json::Arr(v)
    }
}

impl From<serde_json::Value> for Json {
    fn from(v: serde_json::Value) -> Json {
        use serde_json::Value;
        match v {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(b),
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Json::Int(i),
                (None, Some(x)) => Json::Float(x),
                (None, None) => Json::Str(n.to_string()),
            },
            Value::String(s) => Json::Str(s),
            Value::Array(items) => Json::Arr(items.into_iter().map(Json::from).collect()),
            Value::Object(map) => Json::Obj(map.into_iter().map(|(k, v)| (k, v.into())).collect()),
        }
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Int(n) => s.serialize_i64(*n),
            Json::Float(x) => s.serialize_f64(*x),
            Json::Str(v) => s.serialize_str(v),
            Json::Arr(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Obj(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// An answer of the API listener, before headers are added.
#[derive(Debug)]
pub enum Reply {
    /// A JSON answer: carries `X-Request-Id`, `X-API-Version` and `Content-Type`.
    Json {
        status: u16,
        body: Json,
        headers: Vec<(String, String)>,
    },
    /// A 302 to the object store: redirects carry none of the JSON headers.
    Redirect { location: String },
    /// A body that is not the API's (a proxy's HTML page from a fault rule).
    Raw {
        status: u16,
        content_type: String,
        body: String,
        headers: Vec<(String, String)>,
    },
}

impl Reply {
    pub fn json(status: u16, body: Json) -> Reply {
        Reply::Json {
            status,
            body,
            headers: Vec::new(),
        }
    }

    /// The contract's error body `{"error":{"type","code","message","param"?}}`.
    pub fn error(status: u16, kind: &str, code: &str, message: &str, param: Option<&str>) -> Reply {
        let mut error = Json::obj()
            .with("type", kind)
            .with("code", code)
            .with("message", message);
        if let Some(param) = param {
            error = error.with("param", param);
        }
        Reply::json(status, Json::obj().with("error", error))
    }

    pub fn unauthorized() -> Reply {
        Reply::error(
            401,
            "authentication_error",
            "invalid_api_key",
            "Invalid API key provided",
            None,
        )
    }

    pub fn not_found(message: &str) -> Reply {
        Reply::error(404, "not_found_error", "resource_not_found", message, None)
    }

    pub fn bad_param(param: &str, message: &str) -> Reply {
        Reply::error(
            400,
            "invalid_request_error",
            "invalid_parameter",
            message,
            Some(param),
        )
    }

    /// The error the real service would give for a status, for fault rules.
    pub fn for_status(status: u16) -> Reply {
        let (kind, code, message) = match status {
            400 => (
                "invalid_request_error",
                "invalid_parameter",
                "Invalid request",
            ),
            401 => return Reply::unauthorized(),
            403 => (
                "authorization_error",
                "scope_not_configured",
                "The API key does not have the scope required for this request",
            ),
            404 => (
                "not_found_error",
                "resource_not_found",
                "Resource not found",
            ),
            429 => (
                "rate_limit_error",
                "rate_limit_exceeded",
                "Too many requests",
            ),
            s if s >= 500 => ("api_error", "internal_error", "An internal error occurred"),
            _ => (
                "invalid_request_error",
                "invalid_parameter",
                "Invalid request",
            ),
        };
        Reply::error(status, kind, code, message, None)
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        match &mut self {
            Reply::Json { headers, .. } | Reply::Raw { headers, .. } => {
                headers.push((name.to_string(), value.to_string()));
            }
            Reply::Redirect { .. } => {}
        }
        self
    }

    pub fn status(&self) -> u16 {
        match self {
            Reply::Json { status, .. } | Reply::Raw { status, .. } => *status,
            Reply::Redirect { .. } => 302,
        }
    }
}

/// A fresh `req_<32 hex>` request id.
pub fn request_id() -> String {
    format!("req_{}", hex::encode(rand::random::<[u8; 16]>()))
}

impl Reply {
    /// The whole answer on the wire: status line, `Date`, the headers of its kind, its
    /// own headers, `Content-Length`, and `Connection: close` unless `keep_alive`.
    pub(crate) fn to_bytes(&self, keep_alive: bool, head_only: bool) -> Vec<u8> {
        match self {
            Reply::Json {
                status,
                body,
                headers,
            } => {
                let id = request_id();
                let mut all = vec![
                    ("Content-Type", "application/json"),
                    ("X-Request-Id", id.as_str()),
                    ("X-API-Version", "v1"),
                ];
                all.extend(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
                let body = body.render();
                http::answer(*status, &all, body.as_bytes(), keep_alive, head_only)
            }
            Reply::Redirect { location } => http::answer(
                302,
                &[("Location", location.as_str())],
                b"",
                keep_alive,
                head_only,
            ),
            Reply::Raw {
                status,
                content_type,
                body,
                headers,
            } => {
                let mut all = vec![("Content-Type", content_type.as_str())];
                all.extend(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
                http::answer(*status, &all, body.as_bytes(), keep_alive, head_only)
            }
        }
    }
}

/// Sends a reply to `request`; an error is the client hanging up, which is its business
/// (the connection then ends).
pub(crate) fn send(out: &mut impl Write, request: &Request, reply: &Reply) -> io::Result<Flow> {
    let bytes = reply.to_bytes(request.keep_alive, request.method == Method::Head);
    out.write_all(&bytes)?;
    out.flush()?;
    Ok(Flow::KeepAlive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_keys() {
        let cases = [
            ("id", "id"),
            ("agent_id", "agentId"),
            ("execution_time_ms", "executionTimeMs"),
            ("avg_cpu_percent", "avgCpuPercent"),
            ("last_event_id", "lastEventId"),
        ];
        for (snake, camel) in cases {
            assert_eq!(Shape::Camel.key(snake), camel);
            assert_eq!(Shape::Snake.key(snake), snake);
        }
        // The storage routes' fixed list follows the same rule.
        for snake in [
            "current_version_id",
            "current_version",
            "file_count",
            "created_at",
            "updated_at",
            "volume_id",
            "artifact_id",
            "created_by",
            "has_more",
            "next_cursor",
            "version_id",
        ] {
            assert_eq!(Shape::Camel.field(snake), Shape::Camel.key(snake));
        }
    }

    #[test]
    fn floats_render_as_numbers() {
        let json = Json::obj().with("cpu", 12.5).with("n", 3i64);
        assert_eq!(json.render(), r#"{"cpu":12.5,"n":3}"#);
    }
}
