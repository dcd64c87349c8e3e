//! What an agent or run operation is asked for and why it can be refused: the specs of the
//! admin bodies and of `RunningEmulator`'s methods (`AgentSpec`, `RunSpec`, `NewLog`),
//! with the parsing of their timestamps and volume lists, and [`RunError`] with the API
//! answer for each case. Doing the work is the parent module's.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer};

use crate::model::parse_timestamp;
use crate::runs::{LogType, Outcome};
use crate::wire::Reply;

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
    pub(super) fn invalid(param: &str, message: impl Into<String>) -> RunError {
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
}
