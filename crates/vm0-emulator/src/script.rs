//! What the emulator's runs say: the log lines, metrics samples and output events a run
//! generates, when each one is due, and the files of the artifact version a completed run
//! commits. Pure functions of the run and a line or sample number, so a run's content is
//! the same whether it is generated live by the driver or all at once for a finished run.
//!
//! Two properties the clients' tests rely on:
//! - every generated line is unique by (timestamp, type, message) (messages carry the line
//!   number), so dropping exact repeats at a page boundary never drops a real line;
//! - every fifth line shares the timestamp of the line before it, so paging with `since`
//!   meets several entries at the boundary timestamp.

use std::collections::BTreeMap;

use serde_json::json;

use crate::model::sha256;
use crate::runs::{LogEntry, LogType, MetricSample, Outcome, Run};

/// Milliseconds between metrics samples.
pub const SAMPLE_INTERVAL_MS: i64 = 1000;

/// Every how many generated lines an output event is emitted.
pub const LINES_PER_OUTPUT: u64 = 5;

/// When generated line `i` is due, in milliseconds after the run started, at `rate` lines
/// per second: line `i` at `i / rate` seconds, except that every fifth line (4, 9, 14...)
/// shares the timestamp of the line before it.
pub fn line_offset_ms(i: u64, rate: f64) -> i64 {
    let slot = if i % 5 == 4 { i - 1 } else { i };
    (slot as f64 * 1000.0 / rate).floor() as i64
}

/// The templates of generated lines: type, level, message (after the line number).
const TEMPLATES: [(LogType, &str, &str); 8] = [
    (LogType::Agent, "info", "reading data/customers.csv"),
    (
        LogType::Agent,
        "debug",
        "tool call read_file(path=\"data/orders.csv\")",
    ),
    (
        LogType::Network,
        "info",
        "GET https://api.example.com/v1/rates -> 200",
    ),
    (
        LogType::Agent,
        "info",
        "summarizing 5 customers and 4 orders",
    ),
    (LogType::System, "info", "workspace snapshot saved"),
    (LogType::Agent, "warn", "slow tool call, retrying once"),
    (
        LogType::Network,
        "info",
        "POST https://api.example.com/v1/reports -> 201",
    ),
    (LogType::Agent, "info", "writing report.md"),
];

/// Generated line `i` (0-based) of a run, at `timestamp_ms`. Line 0 announces the start:
/// every run that started has it, whatever its log rate.
pub fn log_line(run: &Run, i: u64, timestamp_ms: i64) -> LogEntry {
    let n = i + 1;
    if i == 0 {
        return LogEntry {
            timestamp_ms,
            kind: LogType::System,
            level: "info".to_string(),
            message: format!(
                "[{n}] run {} started: agent {}, prompt of {} characters",
                run.id,
                run.agent_name,
                run.prompt.chars().count()
            ),
            metadata: Some(json!({ "volumes": run.volumes.keys().collect::<Vec<_>>() })),
        };
    }
    let (kind, level, text) = TEMPLATES[(i % TEMPLATES.len() as u64) as usize];
    let metadata = match kind {
        LogType::Network => {
            let (method, rest) = text.split_once(' ').unwrap_or(("GET", text));
            let url = rest.split(' ').next().unwrap_or(rest);
            Some(json!({
                "method": method,
                "url": url,
                "status_code": if method == "POST" { 201 } else { 200 },
                "duration_ms": 20 + noise(&run.id, i) % 180,
            }))
        }
        _ if level == "warn" => Some(json!({ "attempt": 2 })),
        _ => None,
    };
    LogEntry {
        timestamp_ms,
        kind,
        level: level.to_string(),
        message: format!("[{n}] {text}"),
        metadata,
    }
}

/// The line a run's end adds, at its `completed_at`.
pub fn end_line(outcome: Outcome, error: Option<&str>, lines: u64, timestamp_ms: i64) -> LogEntry {
    let (level, message) = match outcome {
        Outcome::Completed => ("info", format!("run completed after {lines} lines")),
        Outcome::Failed => (
            "error",
            format!("run failed: {}", error.unwrap_or("unknown error")),
        ),
        Outcome::Timeout => (
            "error",
            format!("run timed out: {}", error.unwrap_or("time limit exceeded")),
        ),
        Outcome::Cancelled => ("warn", "run cancelled".to_string()),
    };
    LogEntry {
        timestamp_ms,
        kind: LogType::System,
        level: level.to_string(),
        message,
        metadata: None,
    }
}

/// The output event generated line `i` comes with, if any: `(type, data)`. Lines 5, 10,
/// 15... have one; the start line has none, so a run without generated lines has no
/// outputs but those it is given.
pub fn output_for_line(i: u64) -> Option<(&'static str, serde_json::Value)> {
    if i == 0 || !i.is_multiple_of(LINES_PER_OUTPUT) {
        return None;
    }
    let step = i / LINES_PER_OUTPUT;
    Some(if step % 2 == 1 {
        (
            "text",
            json!({ "text": format!("Step {step}: working through the input data") }),
        )
    } else {
        (
            "tool_use",
            json!({ "name": "read_file", "input": { "path": "data/orders.csv" }, "step": step }),
        )
    })
}

/// Metrics sample `k` (0-based) of a run.
pub fn sample(run: &Run, k: u64, timestamp_ms: i64) -> MetricSample {
    let cpu_tenths = 150 + noise(&run.id, 1_000_000 + k) % 650;
    MetricSample {
        timestamp_ms,
        cpu_percent: cpu_tenths as f64 / 10.0,
        memory_used_mb: (512 + 16 * k + noise(&run.id, 2_000_000 + k) % 64).min(3900),
        memory_total_mb: 4096,
        disk_used_mb: (1200 + 3 * k).min(10_000),
        disk_total_mb: 10_240,
    }
}

/// The error a run ends with when none was given.
pub fn default_error(outcome: Outcome, duration_ms: i64) -> Option<String> {
    match outcome {
        Outcome::Completed | Outcome::Cancelled => None,
        Outcome::Failed => Some(
            "agent exited with code 1: read_file(\"data/missing.csv\") failed: no such file"
                .to_string(),
        ),
        Outcome::Timeout => Some(format!(
            "run exceeded its time limit of {} ms",
            duration_ms.max(0)
        )),
    }
}

/// The `output` of a completed run (the stream's `complete` event and last output event).
pub fn output_text(run: &Run) -> String {
    match &run.artifact_name {
        Some(name) => format!("Wrote report.md and output/result.json to the artifact {name}"),
        None => "Done: the report is in the logs".to_string(),
    }
}

/// The files of the artifact version a completed run commits: unique to the run, so each
/// run's version is a new one.
pub fn artifact_files(run: &Run, lines: u64) -> BTreeMap<String, String> {
    let inputs: Vec<String> = run
        .volumes
        .iter()
        .map(|(name, version)| format!("- {name} @ {version}"))
        .collect();
    let report = format!(
        "# Report of run {}\n\nAgent: {}\n\nPrompt:\n\n> {}\n\nInputs:\n{}\n\nLog lines: {lines}\n",
        run.id,
        run.agent_name,
        run.prompt,
        if inputs.is_empty() {
            "- none".to_string()
        } else {
            inputs.join("\n")
        }
    );
    let result = json!({
        "run_id": run.id,
        "agent": run.agent_name,
        "log_lines": lines,
        "inputs": run.volumes,
    });
    BTreeMap::from([
        ("report.md".to_string(), report),
        ("output/result.json".to_string(), format!("{:#}\n", result)),
    ])
}

/// Deterministic noise from a run id and a number.
fn noise(seed: &str, n: u64) -> u64 {
    let digest = sha256(format!("{seed}/{n}").as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes of a 32-byte digest"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fifth_line_shares_a_timestamp() {
        let offsets: Vec<i64> = (0..10).map(|i| line_offset_ms(i, 1.0)).collect();
        assert_eq!(
            offsets,
            [0, 1000, 2000, 3000, 3000, 5000, 6000, 7000, 8000, 8000]
        );
        assert_eq!(line_offset_ms(1000, 1000.0), 1000);
        assert_eq!(line_offset_ms(3, 3.0), 1000);
    }

    #[test]
    fn outputs_every_fifth_line() {
        let with_output: Vec<u64> = (0..12).filter(|i| output_for_line(*i).is_some()).collect();
        assert_eq!(with_output, [5, 10]);
    }
}
