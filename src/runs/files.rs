//! What is in each file of a run, and writing it: the JSON files pretty-printed with keys
//! in snake_case (normalized by the API client), the text files, and the logs, appended
//! page by page as they arrive ([`LogSync`]), never held whole in memory.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::api::{ApiError, LogEntry, LogQuery, Run, RunEvent, RunId};

use super::api::RunsApi;

/// The files of a run directory, in the order `ls` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunFile {
    Json,
    Status,
    Prompt,
    Error,
    Logs,
    LogsJsonl,
    Events,
    Metrics,
}

impl RunFile {
    pub const ALL: [RunFile; 8] = [
        RunFile::Json,
        RunFile::Status,
        RunFile::Prompt,
        RunFile::Error,
        RunFile::Logs,
        RunFile::LogsJsonl,
        RunFile::Events,
        RunFile::Metrics,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RunFile::Json => "run.json",
            RunFile::Status => "status",
            RunFile::Prompt => "prompt",
            RunFile::Error => "error",
            RunFile::Logs => "logs",
            RunFile::LogsJsonl => "logs.jsonl",
            RunFile::Events => "events.jsonl",
            RunFile::Metrics => "metrics.json",
        }
    }

    pub fn from_name(name: &str) -> Option<RunFile> {
        RunFile::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether a run has this file (`error` only when it has an error).
    pub fn present(self, run: &Run) -> bool {
        self != RunFile::Error || run.error.as_deref().is_some_and(|e| !e.is_empty())
    }
}

/// The levels `logs.d/` has a file for.
pub const LEVELS: [&str; 4] = ["debug", "info", "warn", "error"];

impl RunFile {
    /// Whether the file is made from the run's detail (and metrics) alone, so that it can
    /// be served without fetching the run's logs or events.
    pub fn from_detail(self) -> bool {
        matches!(
            self,
            RunFile::Json | RunFile::Status | RunFile::Prompt | RunFile::Error | RunFile::Metrics
        )
    }
}

/// What file `f` (one that the detail alone makes, other than `metrics.json`) holds for
/// `run`, the same bytes [`write_detail`] writes; `None` for the other files, or an
/// `error` the run does not have.
pub fn detail_file(run: &Run, f: RunFile) -> Option<Vec<u8>> {
    match f {
        RunFile::Json => Some(pretty(&run.json)),
        RunFile::Status => Some(line(&run.status)),
        RunFile::Prompt => Some(line(&run.prompt)),
        RunFile::Error if f.present(run) => Some(line(run.error.as_deref().unwrap_or_default())),
        _ => None,
    }
}

/// The lines of the `logs` file at `logs` whose level (third field) is `level`.
pub fn level_lines(logs: &Path, level: &str) -> io::Result<Vec<u8>> {
    let text = fs::read(logs)?;
    let mut out = Vec::new();
    for l in text.split_inclusive(|&b| b == b'\n') {
        if l.split(|&b| b == b' ').nth(2) == Some(level.as_bytes()) && l.ends_with(b"\n") {
            out.extend_from_slice(l);
        }
    }
    Ok(out)
}

/// `value` pretty-printed, with a final newline.
pub fn pretty(value: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(value).unwrap_or_default();
    out.push(b'\n');
    out
}

/// `text` with a final newline (a file of one line reads well with `cat`).
fn line(text: &str) -> Vec<u8> {
    let mut out = text.as_bytes().to_vec();
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out
}

/// `<timestamp> <type> <level> <message>`; newlines inside the message are written `\n`, so
/// that one entry stays one line.
pub fn log_line(e: &LogEntry, out: &mut Vec<u8>) {
    let message = e
        .message
        .replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\r', "\\r");
    out.extend_from_slice(
        format!("{} {} {} {}\n", e.timestamp, e.kind, e.level, message).as_bytes(),
    );
}

/// One line of `events.jsonl`: `{"event": name, ...the event's fields}`.
pub fn event_line(event: &RunEvent) -> Vec<u8> {
    let (name, json) = match event {
        RunEvent::Status { json, .. } => ("status", json),
        RunEvent::Output { json, .. } => ("output", json),
        RunEvent::Complete { json, .. } => ("complete", json),
    };
    let mut map = Map::new();
    map.insert("event".into(), Value::String(name.into()));
    if let Value::Object(fields) = json {
        for (k, v) in fields {
            map.insert(k.clone(), v.clone());
        }
    }
    let mut out = serde_json::to_vec(&Value::Object(map)).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Write the files that a run's detail makes (`run.json`, `status`, `prompt`, `error`) in
/// `dir`, each only when its content changed (so that a file's mtime moves only then).
pub fn write_detail(dir: &Path, run: &Run) -> io::Result<()> {
    for f in [
        RunFile::Json,
        RunFile::Status,
        RunFile::Prompt,
        RunFile::Error,
    ] {
        if let Some(bytes) = detail_file(run, f) {
            write_if_changed(&dir.join(f.name()), &bytes)?;
        }
    }
    let error = dir.join(RunFile::Error.name());
    if !RunFile::Error.present(run) && error.exists() {
        fs::remove_file(&error)?;
    }
    Ok(())
}

/// Replace `path` by `content` (atomically: a reader sees the old file or the new one),
/// unless it holds that already.
pub fn write_if_changed(path: &Path, content: &[u8]) -> io::Result<()> {
    if fs::read(path).is_ok_and(|old| old == content) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp~");
    fs::write(&tmp, content)?;
    fs::rename(&tmp, path)
}

/// Why a run's files could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Shared, so that every caller waiting for the same fetch gets it.
    #[error("{0}")]
    Api(Arc<ApiError>),
    #[error("writing the run's files in the cache directory: {0}")]
    Io(#[from] io::Error),
}

impl From<ApiError> for SyncError {
    fn from(e: ApiError) -> SyncError {
        SyncError::Api(Arc::new(e))
    }
}

/// Log pages asked per sync at most: 100,000 entries at 100 a page, with room for the
/// repeats that paging with an inclusive `since` brings.
const MAX_PAGES_PER_SYNC: usize = 2_000;

/// A run's logs as far as they were fetched, appended to `logs` and `logs.jsonl` as they
/// arrive. The API has no id for log entries, and `since` is inclusive: each sync asks from
/// the last timestamp seen, and the entries at that timestamp already written (same
/// timestamp, type and message) are dropped.
pub struct LogSync {
    dir: PathBuf,
    /// Entries written.
    pub entries: u64,
    last_timestamp: Option<String>,
    /// (type, message) of the entries written at `last_timestamp`.
    tail: HashSet<(String, String)>,
}

impl LogSync {
    /// Start the logs of a run in `dir` (empty files).
    pub fn create(dir: &Path) -> io::Result<LogSync> {
        for f in [RunFile::Logs, RunFile::LogsJsonl, RunFile::Events] {
            File::create(dir.join(f.name()))?;
        }
        Ok(LogSync {
            dir: dir.to_path_buf(),
            entries: 0,
            last_timestamp: None,
            tail: HashSet::new(),
        })
    }

    /// Fetch every entry after those written, page by page, appending each page to the
    /// files before asking for the next. The number of requests made.
    pub fn sync(&mut self, api: &dyn RunsApi, id: &RunId) -> Result<usize, SyncError> {
        let since = self.last_timestamp.clone();
        let mut cursor: Option<String> = None;
        let mut cursors = HashSet::new();
        for requests in 1..=MAX_PAGES_PER_SYNC {
            let page = api.run_logs(
                id,
                &LogQuery {
                    since: since.as_deref(),
                    cursor: cursor.as_deref(),
                    limit: None,
                },
            )?;
            self.append(page.entries)?;
            match page.next_cursor {
                Some(next) if cursors.insert(next.clone()) => cursor = Some(next),
                _ => return Ok(requests),
            }
        }
        Ok(MAX_PAGES_PER_SYNC)
    }

    /// Append the entries not written yet (in the API's order, oldest first).
    pub fn append(&mut self, entries: Vec<LogEntry>) -> io::Result<()> {
        let mut text = Vec::new();
        let mut jsonl = Vec::new();
        for e in entries {
            match self.last_timestamp.as_deref() {
                Some(last) if e.timestamp.as_str() < last => continue,
                Some(last) if e.timestamp == last => {
                    if !self.tail.insert((e.kind.clone(), e.message.clone())) {
                        continue;
                    }
                }
                _ => {
                    self.last_timestamp = Some(e.timestamp.clone());
                    self.tail.clear();
                    self.tail.insert((e.kind.clone(), e.message.clone()));
                }
            }
            log_line(&e, &mut text);
            jsonl.extend(serde_json::to_vec(&e.json).unwrap_or_default());
            jsonl.push(b'\n');
            self.entries += 1;
        }
        if !text.is_empty() {
            append_to(&self.dir.join(RunFile::LogsJsonl.name()), &jsonl)?;
            append_to(&self.dir.join(RunFile::Logs.name()), &text)?;
        }
        Ok(())
    }
}

/// Append `bytes` to `path` in one write.
pub fn append_to(path: &Path, bytes: &[u8]) -> io::Result<()> {
    OpenOptions::new().append(true).open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(ts: &str, message: &str) -> LogEntry {
        LogEntry::from_json(json!({"timestamp": ts, "type": "agent", "level": "info",
            "message": message}))
        .unwrap()
    }

    #[test]
    fn repeats_at_the_page_boundary_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut sync = LogSync::create(dir.path()).unwrap();
        let t1 = "2026-01-01T00:00:00.001Z";
        let t2 = "2026-01-01T00:00:00.002Z";
        sync.append(vec![entry(t1, "a"), entry(t2, "b"), entry(t2, "c")])
            .unwrap();
        // The next page asked with since = t2 repeats b and c, then goes on.
        sync.append(vec![
            entry(t2, "b"),
            entry(t2, "c"),
            entry(t2, "d"),
            entry(t1, "a"),
        ])
        .unwrap();
        let text = fs::read_to_string(dir.path().join("logs")).unwrap();
        let messages: Vec<&str> = text
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        assert_eq!(messages, ["a", "b", "c", "d"]);
        assert_eq!(sync.entries, 4);
        let jsonl = fs::read_to_string(dir.path().join("logs.jsonl")).unwrap();
        assert_eq!(jsonl.lines().count(), 4);
    }

    #[test]
    fn a_message_stays_on_one_line() {
        let mut out = Vec::new();
        log_line(&entry("t", "two\nlines"), &mut out);
        assert_eq!(out, b"t agent info two\\nlines\n");
    }
}
