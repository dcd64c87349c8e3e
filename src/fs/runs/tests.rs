//! The runs' tree without FUSE: `Fs` operations against a fake API, for what a mount
//! cannot count or stage precisely (requests made, a restart with the API down, a live
//! run's logs with repeats at every page boundary becoming final).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::api::{
    Agent, ApiError, ArchiveRef, Kind, LogEntry, LogPage, LogQuery, Run, RunEvent, RunId, RunQuery,
    Storage, Version,
};
use crate::cache::Cache;
use crate::fs::{Fs, FsConfig, FsError, TimedAttr, IMMUTABLE_TTL};
use crate::ids::{Ino, StorageId};
use crate::remote::{Remote, RemoteArchive};
use crate::runs::{Events, RunsApi, RunsConfig, FOLLOW_POLL, MAX_FOLLOWED};

/// No storages: only the runs matter here.
struct NoStorages;

impl Remote for NoStorages {
    fn list_storages(&self, _: Kind) -> Result<Vec<Storage>, ApiError> {
        Ok(Vec::new())
    }
    fn list_versions(&self, _: Kind, _: &StorageId) -> Result<Vec<Version>, ApiError> {
        Ok(Vec::new())
    }
    fn download(
        &self,
        a: &ArchiveRef,
        _: Option<&crate::api::ResumePoint>,
    ) -> Result<RemoteArchive, ApiError> {
        Err(down(&format!("{a:?}")))
    }
}

fn down(what: &str) -> ApiError {
    ApiError::Server {
        resource: what.into(),
        status: 503,
        message: "down".into(),
        request_id: None,
    }
}

#[derive(Default)]
struct FakeRuns {
    runs: Mutex<BTreeMap<String, Value>>,
    logs: Mutex<HashMap<String, Vec<Value>>>,
    down: AtomicBool,
    gets: AtomicUsize,
    log_pages: AtomicUsize,
    /// Output event sequences of each run.
    outputs: Mutex<HashMap<String, Vec<u64>>>,
}

impl FakeRuns {
    fn add(&self, id: &str, status: &str, entries: Vec<Value>) {
        self.runs.lock().insert(
            id.into(),
            json!({"id": id, "agentId": "a1", "agentName": "writer", "status": status,
                   "prompt": "p", "createdAt": "2026-01-01T00:00:00.000Z",
                   "volumes": {}, "error": null}),
        );
        self.logs.lock().insert(id.into(), entries);
    }

    fn check(&self, what: &str) -> Result<(), ApiError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(down(what));
        }
        Ok(())
    }
}

fn not_found(id: &RunId) -> ApiError {
    ApiError::NotFound {
        resource: format!("run {id}"),
        message: "not found".into(),
        request_id: None,
    }
}

/// Entry `n` at millisecond `ms`.
fn entry(ms: u64, n: usize) -> Value {
    json!({"timestamp": format!("2026-01-01T00:00:{:02}.{:03}Z", ms / 1000, ms % 1000),
           "type": "agent", "level": "info", "message": format!("line {n}")})
}

impl RunsApi for FakeRuns {
    fn list_runs(&self, _: &RunQuery<'_>) -> Result<Vec<Run>, ApiError> {
        self.check("runs")?;
        Ok(Vec::new())
    }
    fn get_run(&self, id: &RunId) -> Result<Run, ApiError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.check("run")?;
        let json = self
            .runs
            .lock()
            .get(id.as_str())
            .cloned()
            .ok_or_else(|| not_found(id))?;
        Ok(Run::from_saved(json.to_string().as_bytes()).unwrap())
    }
    fn run_logs(&self, id: &RunId, q: &LogQuery<'_>) -> Result<LogPage, ApiError> {
        self.log_pages.fetch_add(1, Ordering::SeqCst);
        self.check("logs")?;
        let logs = self.logs.lock();
        let all = logs.get(id.as_str()).ok_or_else(|| not_found(id))?;
        // `since` is inclusive, as the API reads it; the cursor is an offset.
        let matching: Vec<&Value> = all
            .iter()
            .filter(|e| {
                q.since
                    .is_none_or(|s| e["timestamp"].as_str().unwrap() >= s)
            })
            .collect();
        let start: usize = q.cursor.map_or(0, |c| c.parse().unwrap());
        let end = (start + 100).min(matching.len());
        Ok(LogPage {
            entries: matching[start..end]
                .iter()
                .map(|e| LogEntry::from_json((*e).clone()).unwrap())
                .collect(),
            next_cursor: (end < matching.len()).then(|| end.to_string()),
        })
    }
    fn run_metrics(&self, _: &RunId) -> Result<Value, ApiError> {
        self.check("metrics")?;
        Ok(json!({"data": [], "summary": {"avg_cpu_percent": null}}))
    }
    fn run_events(
        &self,
        id: &RunId,
        last: Option<u64>,
        _: Option<Duration>,
    ) -> Result<Events, ApiError> {
        self.check("events")?;
        let status = self.runs.lock()[id.as_str()]["status"]
            .as_str()
            .unwrap()
            .to_string();
        let mut events = vec![RunEvent::Status {
            status: status.clone(),
            json: json!({"status": status, "run_id": id.as_str()}),
        }];
        // As the API: a live run's output events after `last_event_id`, a final one's none.
        if !crate::api::is_final_status(&status) {
            let outputs = self.outputs.lock().get(id.as_str()).cloned();
            for n in outputs.unwrap_or_default() {
                if last.is_none_or(|l| n > l) {
                    events.push(RunEvent::Output {
                        sequence: n,
                        json: json!({"sequence": n, "type": "text", "data": {"n": n}}),
                    });
                }
            }
        }
        if crate::api::is_final_status(&status) {
            events.push(RunEvent::Complete {
                status: status.clone(),
                json: json!({"status": status, "output": null, "error": null}),
            });
        }
        Ok(Box::new(events.into_iter().map(Ok)))
    }
    fn list_agents(&self) -> Result<Vec<Agent>, ApiError> {
        self.check("agents")?;
        Ok(Vec::new())
    }
    fn get_agent(&self, id: &str) -> Result<Agent, ApiError> {
        Err(down(id))
    }
    fn list_agent_versions(&self, id: &str) -> Result<Vec<Value>, ApiError> {
        Err(down(id))
    }
}

fn fs_on(api: Arc<FakeRuns>, dir: &std::path::Path) -> Fs {
    // The fetch threads of an earlier Fs on `dir` may still hold its cache for a moment
    // after their last caller was answered.
    let deadline = Instant::now() + Duration::from_secs(10);
    let cache = loop {
        match Cache::open(dir, 100 << 20) {
            Err(crate::cache::CacheError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            opened => break opened.unwrap(),
        }
    };
    Fs::new(
        Arc::new(NoStorages),
        cache,
        FsConfig {
            metadata_ttl: Duration::from_secs(60),
            uid: 1000,
            gid: 1000,
            label: "test".into(),
            progress_every: Duration::from_secs(2),
        },
    )
    .with_runs(
        api,
        RunsConfig {
            since: Duration::from_secs(7 * 86_400),
            limit: 1000,
        },
    )
    .unwrap()
}

/// Poll `f` until it holds, failing the test after 20 s.
fn poll_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn lookup(fs: &Fs, path: &str) -> Result<TimedAttr, FsError> {
    let mut ino = Ino::ROOT;
    let mut entry = fs.getattr(Ino::ROOT, None)?;
    for c in path.split('/') {
        entry = fs.lookup(ino, OsStr::new(c), None)?;
        ino = entry.attr.ino;
    }
    Ok(entry)
}

fn cat(fs: &Fs, path: &str) -> String {
    let ino = lookup(fs, path).unwrap().attr.ino;
    let mut out = Vec::new();
    loop {
        let chunk = fs.read_ino(ino, out.len() as u64, 1 << 20, 1).unwrap();
        if chunk.is_empty() {
            return String::from_utf8(out).unwrap();
        }
        out.extend_from_slice(&chunk);
    }
}

const RUN: &str = "3f1c9a2e-6b1d-4c1e-9a55-0d2f7b8e4a10";

#[test]
fn unknown_run_ids_are_enoent_and_remembered() {
    let api = Arc::new(FakeRuns::default());
    let dir = tempfile::tempdir().unwrap();
    let fs = fs_on(api.clone(), dir.path());
    for _ in 0..5 {
        let err = lookup(&fs, &format!("runs/{RUN}")).unwrap_err();
        assert_eq!(err.errno(), libc::ENOENT, "{err}");
    }
    assert_eq!(api.gets.load(Ordering::SeqCst), 1, "the miss is remembered");
    // A name that cannot be a run id asks nothing.
    assert!(matches!(lookup(&fs, "runs/a b"), Err(FsError::NotFound)));
    assert_eq!(api.gets.load(Ordering::SeqCst), 1);
}

#[test]
fn a_final_run_is_fetched_once_and_served_after_a_restart_with_the_api_down() {
    let api = Arc::new(FakeRuns::default());
    api.add(
        RUN,
        "completed",
        (0..250).map(|n| entry(n as u64, n)).collect(),
    );
    let dir = tempfile::tempdir().unwrap();
    let (logs, json) = {
        let fs = fs_on(api.clone(), dir.path());
        let logs = cat(&fs, &format!("runs/{RUN}/logs"));
        assert_eq!(logs.lines().count(), 250);
        assert_eq!(
            api.log_pages.load(Ordering::SeqCst),
            3,
            "100 entries a page"
        );
        assert_eq!(
            lookup(&fs, &format!("runs/{RUN}/logs")).unwrap().ttl,
            IMMUTABLE_TTL
        );
        assert_eq!(cat(&fs, &format!("runs/{RUN}/logs")), logs);
        assert_eq!(
            api.log_pages.load(Ordering::SeqCst),
            3,
            "a second read asks nothing"
        );
        let json = cat(&fs, &format!("runs/{RUN}/run.json"));
        assert!(json.contains("\"agent_name\": \"writer\""), "{json}");
        (logs, json)
    };
    api.down.store(true, Ordering::SeqCst);
    let fs = fs_on(api.clone(), dir.path());
    assert_eq!(cat(&fs, &format!("runs/{RUN}/logs")), logs);
    assert_eq!(cat(&fs, &format!("runs/{RUN}/run.json")), json);
    assert_eq!(cat(&fs, &format!("runs/{RUN}/status")), "completed\n");
}

#[test]
fn a_live_run_becomes_final_without_a_gap_or_a_repeated_line() {
    let api = Arc::new(FakeRuns::default());
    // Three entries share each page boundary's timestamp: `since` brings them again.
    let ms = |n: usize| (n - n % 3) as u64;
    api.add(RUN, "running", (0..150).map(|n| entry(ms(n), n)).collect());
    let dir = tempfile::tempdir().unwrap();
    let fs = fs_on(api.clone(), dir.path());
    let first = cat(&fs, &format!("runs/{RUN}/logs"));
    assert_eq!(first.lines().count(), 150);
    assert_eq!(
        lookup(&fs, &format!("runs/{RUN}/logs")).unwrap().ttl,
        Duration::ZERO,
        "a live file is asked for again at every access"
    );
    // More lines at the last timestamp seen and after, then the run ends.
    api.logs
        .lock()
        .get_mut(RUN)
        .unwrap()
        .extend((150..400).map(|n| entry(ms(n), n)));
    api.runs.lock().get_mut(RUN).unwrap()["status"] = json!("completed");
    poll_until("the run to become final", || {
        lookup(&fs, &format!("runs/{RUN}/logs")).unwrap().ttl == IMMUTABLE_TTL
    });
    let all = cat(&fs, &format!("runs/{RUN}/logs"));
    let messages: Vec<&str> = all.lines().map(|l| l.split(' ').nth(4).unwrap()).collect();
    let expected: Vec<String> = (0..400).map(|n| n.to_string()).collect();
    assert_eq!(messages, expected);
    assert!(all.starts_with(&first));
    assert_eq!(cat(&fs, &format!("runs/{RUN}/status")), "completed\n");
    let events = cat(&fs, &format!("runs/{RUN}/events.jsonl"));
    assert!(
        events
            .lines()
            .last()
            .unwrap()
            .contains("\"event\":\"complete\""),
        "{events}"
    );
}

#[test]
fn live_runs_are_followed_while_read_and_at_most_a_few_at_once() {
    let api = Arc::new(FakeRuns::default());
    let ids: Vec<String> = (0..MAX_FOLLOWED + 3)
        .map(|i| format!("{RUN}-{i}"))
        .collect();
    for id in &ids {
        api.add(id, "running", vec![entry(1, 1)]);
    }
    let dir = tempfile::tempdir().unwrap();
    let fs = fs_on(api.clone(), dir.path());
    let state = fs.runs.as_ref().unwrap().state.clone();
    for id in &ids {
        // The log (not `status`, which the detail alone makes) keeps the run's files.
        assert_eq!(cat(&fs, &format!("runs/{id}/logs")).lines().count(), 1);
    }
    assert_eq!(state.followed(), MAX_FOLLOWED, "a bounded number");
    // Nobody reads them any more: they are let go, and the API is no longer asked.
    state.set_follow_idle(Duration::from_millis(300));
    poll_until("every run to be let go", || state.followed() == 0);
    let asked = api.gets.load(Ordering::SeqCst);
    std::thread::sleep(FOLLOW_POLL * 3);
    assert_eq!(
        api.gets.load(Ordering::SeqCst),
        asked,
        "no request once let go"
    );
    // A new read follows the run again.
    cat(&fs, &format!("runs/{}/logs", ids[0]));
    assert_eq!(state.followed(), 1);
}

/// On a FUSE worker (`Policy::Never`) nothing of a run that is not held waits for the
/// API: the access fails with `WouldBlock` (and is run again on a waiter thread); once the
/// run is held, the same access is answered there at once.
#[test]
fn a_worker_never_waits_for_a_run_and_is_answered_from_what_is_held() {
    use crate::fs::{with_policy, Policy};
    let api = Arc::new(FakeRuns::default());
    api.add(
        RUN,
        "completed",
        (0..5).map(|n| entry(n as u64, n)).collect(),
    );
    let dir = tempfile::tempdir().unwrap();
    let fs = fs_on(api.clone(), dir.path());
    let status = format!("runs/{RUN}/status");
    let on_worker = |path: &str| with_policy(Policy::Never, || lookup(&fs, path));
    assert!(
        matches!(on_worker(&status), Err(FsError::WouldBlock)),
        "{:?}",
        on_worker(&status)
    );
    assert_eq!(cat(&fs, &status), "completed\n");
    on_worker(&status).unwrap();
    // Its log keeps the run's files; then they are at hand on a worker too.
    let logs = format!("runs/{RUN}/logs");
    assert!(matches!(on_worker(&logs), Err(FsError::WouldBlock)));
    cat(&fs, &logs);
    on_worker(&logs).unwrap();
    // The same holds for a listing never fetched.
    let agents = with_policy(Policy::Never, || {
        fs.lookup(
            lookup(&fs, "agents").unwrap().attr.ino,
            OsStr::new("nobody"),
            None,
        )
    });
    assert!(matches!(agents, Err(FsError::WouldBlock)), "{agents:?}");
}

#[test]
fn live_runs_beyond_the_stream_limit_take_turns_and_lose_no_event() {
    let api = Arc::new(FakeRuns::default());
    // More runs than are followed, and than streams may be open.
    let ids: Vec<String> = (0..MAX_FOLLOWED + 3)
        .map(|i| format!("{RUN}-{i}"))
        .collect();
    for id in &ids {
        api.add(id, "running", vec![entry(1, 1)]);
    }
    let dir = tempfile::tempdir().unwrap();
    let fs = fs_on(api.clone(), dir.path());
    let state = fs.runs.as_ref().unwrap().state.clone();
    state.set_max_streams(3);
    let read_all = || {
        for id in &ids {
            cat(&fs, &format!("runs/{id}/events.jsonl"));
        }
    };
    read_all();
    // Output events come to every run while they are read, then the runs end.
    for n in 1..=5 {
        for id in &ids {
            api.outputs.lock().entry(id.clone()).or_default().push(n);
        }
        poll_until(&format!("output {n} to reach every run"), || {
            read_all();
            ids.iter().all(|id| {
                cat(&fs, &format!("runs/{id}/events.jsonl")).contains(&format!("\"sequence\":{n}"))
            })
        });
    }
    for id in &ids {
        api.runs.lock().get_mut(id).unwrap()["status"] = json!("completed");
    }
    for id in &ids {
        poll_until(&format!("{id} to become final"), || {
            lookup(&fs, &format!("runs/{id}/events.jsonl")).unwrap().ttl == IMMUTABLE_TTL
        });
        let events = cat(&fs, &format!("runs/{id}/events.jsonl"));
        let outputs: Vec<u64> = events
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["event"] == "output")
            .map(|e| e["sequence"].as_u64().unwrap())
            .collect();
        assert_eq!(outputs, [1, 2, 3, 4, 5], "{id}: {events}");
    }
}
