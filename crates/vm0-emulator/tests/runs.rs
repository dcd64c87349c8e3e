//! Tests of the emulator's agents and runs against the contract's "Agents and runs"
//! section (`vm0-api.md`), over real HTTP on loopback, in both shapes: the emulator runs
//! in the test's process (as vm0fs's own tests start it), driven through its admin
//! endpoints and its Rust API. Waiting is always polling for a state, never a fixed sleep.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};
use vm0_emulator::{
    storage_id, EmulatorConfig, Kind, NewLog, Outcome, RunError, RunSpec, RunStatus,
    RunningEmulator, Shape,
};

/// An emulator in this process, stopped on drop.
struct Emu {
    running: RunningEmulator,
    api: String,
    admin: String,
    token: String,
    http: Client,
}

impl Emu {
    fn start(config: EmulatorConfig) -> Emu {
        let running = vm0_emulator::start(config).expect("start the emulator");
        Emu {
            api: running.api_url(),
            admin: running.admin_url(),
            token: running.token(),
            http: Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client"),
            running,
        }
    }

    fn new() -> Emu {
        Emu::start(EmulatorConfig::default())
    }

    fn get(&self, path: &str) -> Response {
        self.http
            .get(format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .send()
            .expect("API request")
    }

    /// GET that must answer 200 with JSON.
    fn json(&self, path: &str) -> Value {
        let resp = self.get(path);
        assert_eq!(resp.status(), 200, "GET {path}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        resp.json().expect("a JSON body")
    }

    fn post(&self, path: &str, body: &Value) -> Response {
        self.http
            .post(format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .expect("API request")
    }

    /// An admin request: status and JSON answer.
    fn admin_call(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.admin);
        let req = match body {
            Some(body) => self.http.post(url).json(&body),
            None => self.http.get(url),
        };
        let resp = req.send().expect("admin request");
        let status = resp.status().as_u16();
        (status, resp.json().expect("a JSON answer"))
    }

    fn admin(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.admin_call(path, Some(body));
        assert_eq!(status, 200, "admin {path}: {answer}");
        answer
    }

    fn config(&self, change: Value) {
        self.admin("/config", change);
    }

    fn shape(&self, shape: Shape) {
        let name = match shape {
            Shape::Snake => "snake",
            Shape::Camel => "camel",
        };
        self.config(json!({ "shape": name }));
    }

    /// Creates an agent; its id.
    fn agent(&self, name: &str) -> String {
        self.admin("/agents", json!({ "name": name }))["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Creates a run through the admin endpoint; its id.
    fn run(&self, spec: Value) -> String {
        let answer = self.admin("/runs", spec);
        answer["id"].as_str().expect("a run id").to_string()
    }

    /// Pushes a volume version with one file; its id.
    fn volume(&self, name: &str, content: &str) -> String {
        self.admin(
            "/push",
            json!({"kind": "volumes", "name": name, "files": {"data.txt": content}}),
        )["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn detail(&self, id: &str) -> Value {
        self.json(&format!("/runs/{id}"))
    }

    /// Polls the run until it is final; its detail.
    fn wait_final(&self, id: &str) -> Value {
        let mut detail = Value::Null;
        wait_until(&format!("run {id} to end"), || {
            detail = self.detail(id);
            let status = detail["status"].as_str().unwrap();
            RunStatus::ALL
                .iter()
                .any(|s| s.is_final() && s.as_str() == status)
        });
        detail
    }

    /// Every log entry of a run, paged by cursor with `limit`.
    fn all_logs(&self, id: &str, query: &str, limit: usize) -> (Vec<Value>, usize) {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        let mut requests = 0;
        loop {
            let mut path = format!("/runs/{id}/logs?limit={limit}{query}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = self.json(&path);
            requests += 1;
            out.extend(page["data"].as_array().unwrap().iter().cloned());
            let pagination = &page["pagination"];
            let more = pagination["has_more"]
                .as_bool()
                .or(pagination["hasMore"].as_bool())
                .unwrap();
            if !more {
                return (out, requests);
            }
            let next = pagination["next_cursor"]
                .as_str()
                .or(pagination["nextCursor"].as_str())
                .unwrap()
                .to_string();
            assert_ne!(cursor.as_deref(), Some(next.as_str()), "a cursor repeats");
            cursor = Some(next);
        }
    }
}

/// Polls `cond` every 10 ms for up to 30 s.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Pages through a list path with `limit`; each page's rows.
fn pages(emu: &Emu, path: &str, limit: usize) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    let sep = if path.contains('?') { '&' } else { '?' };
    loop {
        let mut url = format!("{path}{sep}limit={limit}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page = emu.json(&url);
        out.push(page["data"].as_array().unwrap().clone());
        assert!(out.len() < 1000, "pagination does not end");
        let p = &page["pagination"];
        let more = p["has_more"].as_bool().or(p["hasMore"].as_bool()).unwrap();
        if !more {
            return out;
        }
        cursor = Some(
            p["next_cursor"]
                .as_str()
                .or(p["nextCursor"].as_str())
                .unwrap()
                .to_string(),
        );
    }
}

fn ids(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// A log entry's identity for the contract's de-duplication: timestamp, type, message.
fn log_key(entry: &Value) -> (String, String, String) {
    (
        entry["timestamp"].as_str().unwrap().to_string(),
        entry["type"].as_str().unwrap().to_string(),
        entry["message"].as_str().unwrap().to_string(),
    )
}

fn assert_error(resp: Response, status: u16, kind: &str, code: &str) -> Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().expect("a JSON error body");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    body
}

fn assert_keys(object: &Value, keys: &[&str]) {
    let have: Vec<&String> = object.as_object().expect("an object").keys().collect();
    for key in keys {
        assert!(object.get(*key).is_some(), "missing {key} in {object}");
    }
    assert_eq!(have.len(), keys.len(), "unexpected keys in {object}");
}

const RUN_ROW: [&str; 8] = [
    "id",
    "agent_id",
    "agent_name",
    "status",
    "prompt",
    "created_at",
    "started_at",
    "completed_at",
];
const RUN_DETAIL_EXTRA: [&str; 7] = [
    "error",
    "execution_time_ms",
    "session_id",
    "checkpoint_id",
    "artifact_name",
    "artifact_version",
    "volumes",
];

fn detail_keys(shape: Shape) -> Vec<String> {
    RUN_ROW
        .iter()
        .chain(RUN_DETAIL_EXTRA.iter())
        .map(|k| shape.key(k))
        .collect()
}

#[test]
fn agents_and_their_versions_in_both_shapes() {
    let emu = Emu::new();
    let body = emu.admin(
        "/agents",
        json!({"name": "analyst", "description": "Reads data",
               "versions": [{"message": "one", "created_at": "2026-01-01T00:00:00.000Z"},
                            {"message": "two", "created_by": "agent"},
                            {"message": "three"}]}),
    );
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(body["current_version"]["version_number"], 3);
    emu.agent("writer");

    for shape in [Shape::Snake, Shape::Camel] {
        emu.shape(shape);
        let k = |s: &str| shape.key(s);
        let list = emu.json("/agents");
        let rows = list["data"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        for row in rows {
            let keys: Vec<String> = [
                "id",
                "name",
                "description",
                "current_version_id",
                "created_at",
                "updated_at",
            ]
            .iter()
            .map(|s| k(s))
            .collect();
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            assert_keys(row, &keys);
        }
        // Newest first: the agent created from an older version comes second.
        assert_eq!(rows[0]["name"], "writer");
        assert_eq!(rows[1][k("created_at")], "2026-01-01T00:00:00.000Z");
        let named = emu.json("/agents?name=analyst");
        assert_eq!(ids(named["data"].as_array().unwrap()), vec![id.clone()]);
        assert_eq!(emu.json("/agents?name=nobody")["data"], json!([]));

        let detail = emu.json(&format!("/agents/{id}"));
        assert_eq!(detail["description"], "Reads data");
        let current = &detail[k("current_version")];
        assert_eq!(current["id"], detail[k("current_version_id")]);
        assert_eq!(current[k("version_number")], 3);
        assert_eq!(current[k("agent_id")], id.as_str());

        let versions = emu.json(&format!("/agents/{id}/versions"));
        let rows = versions["data"].as_array().unwrap();
        let numbers: Vec<i64> = rows
            .iter()
            .map(|v| v[k("version_number")].as_i64().unwrap())
            .collect();
        assert_eq!(numbers, [3, 2, 1], "newest first");
        assert_eq!(rows[1]["message"], "two");
        assert_eq!(rows[1][k("created_by")], "agent");
        for row in rows {
            assert_eq!(row["id"].as_str().unwrap().len(), 64);
            let created = row[k("created_at")].as_str().unwrap();
            assert!(created.ends_with('Z') && created.len() == 24, "{created}");
        }
        let paged = pages(&emu, &format!("/agents/{id}/versions"), 2);
        assert_eq!(paged.len(), 2);
        assert_eq!(
            paged.concat().len(),
            3,
            "no quirk by default: no repeated row"
        );
    }

    // Adding a version to an existing agent makes it current.
    emu.shape(Shape::Snake);
    let body = emu.admin(
        "/agents",
        json!({"name": "analyst", "versions": [{"message": "four"}]}),
    );
    assert_eq!(body["current_version"]["version_number"], 4);
    assert_eq!(body["current_version"]["message"], "four");

    let (status, _) = emu.admin_call("/agents", Some(json!({"name": "Bad_Name"})));
    assert_eq!(status, 400);
    assert_error(
        emu.get("/agents/3f1c9a2e-6b1d-4c1e-9a55-0d2f7b8e4a10"),
        404,
        "not_found_error",
        "resource_not_found",
    );
    assert_error(
        emu.get("/agents/3f1c9a2e-6b1d-4c1e-9a55-0d2f7b8e4a10/versions"),
        404,
        "not_found_error",
        "resource_not_found",
    );
}

#[test]
fn runs_list_pages_filters_and_quirk() {
    let emu = Emu::new();
    let a = emu.agent("analyst");
    let b = emu.agent("writer");
    // Older than the live run below, so that it is the newest.
    let made = emu.admin(
        "/runs",
        json!({"agent": "analyst", "logs_total": 3, "count": 30,
               "created_at": "2026-06-01T00:00:00.000Z"}),
    );
    assert_eq!(made["ids"].as_array().unwrap().len(), 30);
    emu.admin(
        "/runs",
        json!({"agent": b, "logs_total": 3, "outcome": "failed", "count": 14,
               "created_at": "2026-06-02T00:00:00.000Z"}),
    );
    let live = emu.run(json!({"agent": "writer", "duration_ms": 600000}));

    for shape in [Shape::Snake, Shape::Camel] {
        emu.shape(shape);
        let all = pages(&emu, "/runs", 100);
        assert_eq!(all.len(), 1);
        let all = all.concat();
        assert_eq!(all.len(), 45);
        assert_eq!(all[0]["id"], live.as_str(), "the newest run first");
        let created: Vec<&str> = all
            .iter()
            .map(|r| r[shape.key("created_at")].as_str().unwrap())
            .collect();
        assert!(created.windows(2).all(|w| w[0] >= w[1]), "newest first");
        let keys: Vec<String> = RUN_ROW.iter().map(|k| shape.key(k)).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        for row in &all {
            assert_keys(row, &keys);
        }

        let by7 = pages(&emu, "/runs", 7);
        assert_eq!(by7.len(), 7);
        assert_eq!(ids(&by7.concat()), ids(&all));
        assert_eq!(emu.json("/runs")["data"].as_array().unwrap().len(), 20);

        // Filters: the agent id parameter has the shape's name.
        let agent_param = shape.key("agent_id");
        let of_a = pages(&emu, &format!("/runs?{agent_param}={a}"), 100).concat();
        assert_eq!(of_a.len(), 30);
        assert!(of_a.iter().all(|r| r[shape.key("agent_id")] == a.as_str()));
        let failed = pages(&emu, "/runs?status=failed", 100).concat();
        assert_eq!(failed.len(), 14);
        let running = emu.json("/runs?status=running");
        let pending = emu.json("/runs?status=pending");
        assert_eq!(
            running["data"].as_array().unwrap().len() + pending["data"].as_array().unwrap().len(),
            1
        );
        let since = emu.detail(&live)[shape.key("created_at")]
            .as_str()
            .unwrap()
            .to_string();
        let recent = emu.json(&format!("/runs?since={since}"));
        assert!(ids(recent["data"].as_array().unwrap()).contains(&live));
        assert_eq!(
            emu.json("/runs?since=2100-01-01T00:00:00.000Z")["data"],
            json!([])
        );
    }

    // The repeated-row quirk: each page starts with the previous page's last row; a client
    // that de-duplicates by id gets every run once.
    emu.shape(Shape::Snake);
    let plain = ids(&pages(&emu, "/runs", 100).concat());
    emu.config(json!({"pagination_quirk": true}));
    let quirky = pages(&emu, "/runs", 7);
    for pair in quirky.windows(2) {
        assert_eq!(pair[1][0]["id"], pair[0].last().unwrap()["id"]);
    }
    let mut seen = HashSet::new();
    let deduped: Vec<String> = ids(&quirky.concat())
        .into_iter()
        .filter(|id| seen.insert(id.clone()))
        .collect();
    assert_eq!(deduped, plain);

    for (query, param) in [
        ("status=done", "status"),
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("cursor=zz", "cursor"),
    ] {
        let body = assert_error(
            emu.get(&format!("/runs?{query}")),
            400,
            "invalid_request_error",
            "invalid_parameter",
        );
        assert_eq!(body["error"]["param"], param, "{query}");
    }
}

#[test]
fn run_detail_fields_in_both_shapes() {
    let emu = Emu::new();
    emu.agent("analyst");
    let v1 = emu.volume("input-data", "one");
    let v2 = emu.volume("input-data", "two");
    let report = emu.admin(
        "/push",
        json!({"kind": "artifacts", "name": "report", "files": {"r.md": "# r"}}),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let id = emu.run(json!({
        "agent": "analyst", "prompt": "Do it", "logs_total": 10,
        "volumes": {"input-data": &v1[..8]}, "artifact_name": "report",
        "artifact_version": &report[..12], "created_at": "2026-01-20T10:00:00.000Z"
    }));
    let other = emu.run(
        json!({"agent": "analyst", "logs_total": 0, "outcome": "failed",
                               "volumes": ["input-data"]}),
    );

    for shape in [Shape::Snake, Shape::Camel] {
        emu.shape(shape);
        let k = |s: &str| shape.key(s);
        let detail = emu.detail(&id);
        let keys = detail_keys(shape);
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        assert_keys(&detail, &keys);
        assert_eq!(detail["status"], "completed");
        assert_eq!(detail["prompt"], "Do it");
        assert_eq!(detail[k("agent_name")], "analyst");
        assert_eq!(detail[k("created_at")], "2026-01-20T10:00:00.000Z");
        assert_eq!(detail[k("artifact_name")], "report");
        assert_eq!(detail[k("artifact_version")], report.as_str());
        // Volume names are data: the same in both shapes; versions are resolved to full ids.
        assert_eq!(detail["volumes"], json!({ "input-data": v1 }));
        assert!(detail["error"].is_null());
        let started =
            vm0_emulator::model::parse_timestamp(detail[k("started_at")].as_str().unwrap())
                .unwrap();
        let completed =
            vm0_emulator::model::parse_timestamp(detail[k("completed_at")].as_str().unwrap())
                .unwrap();
        assert_eq!(
            detail[k("execution_time_ms")].as_i64().unwrap(),
            completed - started
        );
        assert!(detail[k("session_id")].is_string() && detail[k("checkpoint_id")].is_string());
        if shape == Shape::Camel {
            assert!(detail.get("execution_time_ms").is_none());
            assert!(detail.get("executionTimeMs").is_some());
        }

        let failed = emu.detail(&other);
        assert_eq!(failed["status"], "failed");
        assert!(failed["error"].as_str().is_some_and(|e| !e.is_empty()));
        assert!(failed[k("artifact_version")].is_null());
        assert!(failed[k("checkpoint_id")].is_null());
        assert_eq!(
            failed["volumes"],
            json!({ "input-data": v2 }),
            "the current"
        );
    }

    // Inputs that do not exist.
    let (status, body) = emu.admin_call(
        "/runs",
        Some(json!({"agent": "analyst", "volumes": ["nope"]})),
    );
    assert_eq!(status, 404, "{body}");
    let (status, _) = emu.admin_call("/runs", Some(json!({"agent": "nobody"})));
    assert_eq!(status, 404);
    let (status, _) = emu.admin_call(
        "/runs",
        Some(json!({"agent": "analyst", "artifact_version": "abcdef12"})),
    );
    assert_eq!(status, 400);
}

#[test]
fn a_completed_run_commits_a_downloadable_artifact_version() {
    let emu = Emu::new();
    emu.agent("analyst");
    let input = emu.volume("input-data", "rows");
    let id = emu.run(json!({
        "agent": "analyst", "log_rate": 100, "duration_ms": 300, "pending_ms": 600000,
        "artifact_name": "run-output", "volumes": ["input-data"]
    }));
    let pending = emu.detail(&id);
    assert!(pending["artifact_version"].is_null());
    assert!(pending["started_at"].is_null() && pending["completed_at"].is_null());
    emu.admin(&format!("/runs/{id}/advance"), json!({}));
    let detail = emu.wait_final(&id);
    assert_eq!(detail["status"], "completed");
    let version = detail["artifact_version"].as_str().unwrap().to_string();
    assert_eq!(version.len(), 64);
    assert_eq!(detail["volumes"]["input-data"], input.as_str());

    // The version is a real one: current, listed, downloadable, and holds the run's report.
    let artifact = storage_id(Kind::Artifacts, "run-output");
    let storage = emu.json(&format!("/artifacts/{artifact}"));
    assert_eq!(storage["current_version_id"], version.as_str());
    assert_eq!(storage["current_version"]["created_by"], "agent");
    let resp = emu.get(&format!(
        "/artifacts/{artifact}/download?version_id={version}"
    ));
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let archive = emu.http.get(location).send().unwrap().bytes().unwrap();
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(&archive[..])
        .read_to_end(&mut tar_bytes)
        .unwrap();
    let mut files = BTreeMap::new();
    for entry in tar::Archive::new(&tar_bytes[..]).entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut content = String::new();
        entry.read_to_string(&mut content).unwrap();
        files.insert(path, content);
    }
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["output/result.json", "report.md"]
    );
    assert!(files["report.md"].contains(&id));

    // Its logs: the start line first, the end line last, at completed_at.
    let (logs, _) = emu.all_logs(&id, "", 100);
    assert!(logs.len() >= 20, "{} lines", logs.len());
    assert_eq!(logs[0]["type"], "system");
    let last = logs.last().unwrap();
    assert_eq!(last["timestamp"], detail["completed_at"]);
    assert!(last["message"].as_str().unwrap().contains("completed"));

    // A final run never changes again.
    let again = emu.detail(&id);
    assert_eq!(again, detail);
    assert!(matches!(
        emu.running.cancel_run(&id),
        Err(RunError::Final(_))
    ));
}

#[test]
fn logs_pages_filters_and_quirk_in_both_shapes() {
    let emu = Emu::new();
    emu.agent("analyst");
    let id = emu.run(json!({"agent": "analyst", "logs_total": 250}));
    for shape in [Shape::Snake, Shape::Camel] {
        emu.shape(shape);
        emu.config(json!({"pagination_quirk": false}));
        let first = emu.json(&format!("/runs/{id}/logs"));
        assert_eq!(
            first["data"].as_array().unwrap().len(),
            100,
            "default limit"
        );
        assert_eq!(first["pagination"][shape.key("has_more")], true);
        let (all, requests) = emu.all_logs(&id, "", 100);
        assert_eq!((all.len(), requests), (250, 3));
        let keys: HashSet<_> = all.iter().map(log_key).collect();
        assert_eq!(
            keys.len(),
            250,
            "entries are unique by timestamp, type, message"
        );
        let times: Vec<&str> = all
            .iter()
            .map(|e| e["timestamp"].as_str().unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first");
        assert!(times.windows(2).any(|w| w[0] == w[1]), "some share a time");
        for entry in &all {
            let level = entry["level"].as_str().unwrap();
            assert!(["debug", "info", "warn", "error"].contains(&level));
            if entry["type"] == "network" {
                // Metadata is the agent's: its keys are the same in both shapes.
                assert!(entry["metadata"]["status_code"].is_number(), "{entry}");
            }
        }

        let (desc, _) = emu.all_logs(&id, "&order=desc", 100);
        let mut reversed = all.clone();
        reversed.reverse();
        // Entries that share a timestamp keep their order reversed too.
        assert_eq!(desc, reversed);
        for kind in ["agent", "system", "network"] {
            let (typed, _) = emu.all_logs(&id, &format!("&type={kind}"), 30);
            let want: Vec<&Value> = all.iter().filter(|e| e["type"] == kind).collect();
            assert!(!want.is_empty());
            assert_eq!(typed.iter().collect::<Vec<_>>(), want, "{kind}");
        }
        assert_eq!(emu.all_logs(&id, "&type=all", 100).0, all);
        let (since, until) = (times[100], times[150]);
        let (window, _) = emu.all_logs(&id, &format!("&since={since}&until={until}"), 100);
        let want: Vec<&Value> = all
            .iter()
            .filter(|e| {
                let t = e["timestamp"].as_str().unwrap();
                t >= since && t <= until
            })
            .collect();
        assert_eq!(window.iter().collect::<Vec<_>>(), want, "inclusive bounds");

        // With the quirk, pages overlap by one row; dropping exact repeats restores the log.
        emu.config(json!({"pagination_quirk": true}));
        let (quirky, requests) = emu.all_logs(&id, "", 100);
        assert_eq!(requests, 3);
        assert_eq!(quirky.len(), 252);
        let mut seen = HashSet::new();
        let deduped: Vec<Value> = quirky
            .into_iter()
            .filter(|e| seen.insert(log_key(e)))
            .collect();
        assert_eq!(deduped, all);
    }
    for (query, param) in [
        ("type=debug", "type"),
        ("order=up", "order"),
        ("since=now", "since"),
        ("until=2026", "until"),
        ("limit=101", "limit"),
        ("limit=0", "limit"),
    ] {
        let body = assert_error(
            emu.get(&format!("/runs/{id}/logs?{query}")),
            400,
            "invalid_request_error",
            "invalid_parameter",
        );
        assert_eq!(body["error"]["param"], param, "{query}");
    }
}

/// What a client following a live run with `since` sees: each poll asks for the entries
/// since the last timestamp seen, and drops the exact repeats at that boundary.
#[test]
fn since_paging_of_a_growing_log_meets_boundary_repeats() {
    let emu = Emu::new();
    emu.agent("analyst");
    let id = emu.run(json!({
        "agent": "analyst", "log_rate": 300, "duration_ms": 1500, "pending_ms": 0
    }));
    let mut collected: Vec<Value> = Vec::new();
    let mut at_boundary: HashSet<(String, String, String)> = HashSet::new();
    let mut last_time: Option<String> = None;
    let mut repeats_dropped = 0;
    let mut final_seen = false;
    let mut polls = 0;
    loop {
        // Read the status before the logs: once final before a poll, that poll is the last.
        let done = emu.detail(&id)["status"] == "completed";
        loop {
            let path = match &last_time {
                None => format!("/runs/{id}/logs?limit=100"),
                Some(t) => format!("/runs/{id}/logs?limit=100&since={t}"),
            };
            let page = emu.json(&path);
            polls += 1;
            let rows = page["data"].as_array().unwrap();
            let mut fresh = 0;
            for entry in rows {
                let key = log_key(entry);
                if at_boundary.contains(&key) {
                    repeats_dropped += 1;
                    continue;
                }
                if last_time.as_deref() != Some(key.0.as_str()) {
                    at_boundary.clear();
                    last_time = Some(key.0.clone());
                }
                at_boundary.insert(key);
                collected.push(entry.clone());
                fresh += 1;
            }
            // A full page may have more behind it right now; otherwise poll again later.
            if rows.len() < 100 || fresh == 0 {
                break;
            }
        }
        if final_seen {
            break;
        }
        final_seen = done;
        if !done {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(polls < 10_000);
    }
    assert!(
        repeats_dropped > 0,
        "since is inclusive: the boundary repeats"
    );
    let (all, _) = emu.all_logs(&id, "", 100);
    assert!(all.len() > 300, "{}", all.len());
    assert_eq!(collected, all, "complete, in order, without duplicates");
}

#[test]
fn a_hundred_thousand_entry_log_pages_completely_and_in_order() {
    let emu = Emu::new();
    emu.agent("analyst");
    let started = Instant::now();
    let id = emu
        .running
        .create_run(RunSpec {
            logs_total: Some(100_000),
            ..RunSpec::new("analyst")
        })
        .expect("create a run of 100,000 entries");
    let detail = emu.detail(&id);
    assert_eq!(detail["status"], "completed");
    let (all, requests) = emu.all_logs(&id, "", 100);
    assert_eq!(all.len(), 100_000);
    assert_eq!(requests, 1000);
    let mut keys = HashSet::new();
    let mut shared_times = 0;
    for pair in all.windows(2) {
        let (a, b) = (
            pair[0]["timestamp"].as_str().unwrap(),
            pair[1]["timestamp"].as_str().unwrap(),
        );
        assert!(a <= b, "ordered: {a} then {b}");
        if a == b {
            shared_times += 1;
        }
    }
    for entry in &all {
        assert!(keys.insert(log_key(entry)), "duplicate {entry}");
    }
    assert!(
        shared_times >= 19_000,
        "{shared_times} entries share a time"
    );
    assert_eq!(all.last().unwrap()["timestamp"], detail["completed_at"]);
    // Paging with `since` through the same log reaches the same entries.
    let last = all[99_950]["timestamp"].as_str().unwrap();
    let tail = emu.json(&format!("/runs/{id}/logs?since={last}"));
    assert_eq!(
        tail["data"].as_array().unwrap()[..],
        all[99_950..],
        "since is inclusive"
    );
    eprintln!(
        "100,000 entries: created and paged in {:?}",
        started.elapsed()
    );
}

#[test]
fn metrics_of_finished_and_live_runs() {
    let emu = Emu::new();
    emu.agent("analyst");
    let id = emu.run(json!({"agent": "analyst", "logs_total": 5000}));
    for shape in [Shape::Snake, Shape::Camel] {
        emu.shape(shape);
        let k = |s: &str| shape.key(s);
        let detail = emu.detail(&id);
        let metrics = emu.json(&format!("/runs/{id}/metrics"));
        assert!(metrics.get("pagination").is_none(), "not paginated");
        let samples = metrics["data"].as_array().unwrap();
        // 5,000 lines at 1,000 a second: a sample for each second.
        assert_eq!(samples.len(), 5);
        let keys: Vec<String> = [
            "timestamp",
            "cpu_percent",
            "memory_used_mb",
            "memory_total_mb",
            "disk_used_mb",
            "disk_total_mb",
        ]
        .iter()
        .map(|s| k(s))
        .collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        for sample in samples {
            assert_keys(sample, &keys);
            let cpu = sample[k("cpu_percent")].as_f64().unwrap();
            assert!((0.0..=100.0).contains(&cpu));
            assert!(sample[k("memory_used_mb")].as_u64() <= sample[k("memory_total_mb")].as_u64());
        }
        let summary = &metrics["summary"];
        assert_keys(
            summary,
            &[
                &k("avg_cpu_percent"),
                &k("max_memory_used_mb"),
                &k("total_duration_ms"),
            ],
        );
        assert_eq!(
            summary[k("total_duration_ms")],
            detail[k("execution_time_ms")]
        );
        let max_memory = samples
            .iter()
            .map(|s| s[k("memory_used_mb")].as_u64().unwrap())
            .max();
        assert_eq!(summary[k("max_memory_used_mb")].as_u64(), max_memory);
    }
    emu.shape(Shape::Snake);
    let pending = emu.run(json!({"agent": "analyst", "pending_ms": 600000}));
    let metrics = emu.json(&format!("/runs/{pending}/metrics"));
    assert_eq!(metrics["data"], json!([]));
    assert!(metrics["summary"]["avg_cpu_percent"].is_null());
    let live = emu.run(json!({"agent": "analyst", "pending_ms": 0, "duration_ms": 600000}));
    wait_until("a first sample", || {
        !emu.json(&format!("/runs/{live}/metrics"))["data"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    assert_error(
        emu.get("/runs/nope/metrics"),
        404,
        "not_found_error",
        "resource_not_found",
    );
}

/// One server-sent event.
#[derive(Debug, Clone)]
struct Event {
    id: Option<u64>,
    name: String,
    data: Value,
}

/// Reads server-sent events from a response.
struct Sse {
    reader: BufReader<Response>,
}

impl Sse {
    fn open(emu: &Emu, path: &str) -> Sse {
        let resp = emu.get(path);
        assert_eq!(resp.status(), 200, "GET {path}");
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Sse {
            reader: BufReader::new(resp),
        }
    }

    /// The next event; `None` once the stream has ended.
    fn next(&mut self) -> Option<Event> {
        let (mut id, mut name, mut data): (Option<u64>, Option<String>, Option<String>) =
            (None, None, None);
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).expect("read the stream") == 0 {
                assert!(name.is_none(), "the stream ended inside an event");
                return None;
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if let Some(name) = name {
                    return Some(Event {
                        id,
                        name,
                        data: serde_json::from_str(&data.expect("a data line")).unwrap(),
                    });
                }
                continue;
            }
            let (field, value) = line.split_once(": ").expect("a field line");
            match field {
                "id" => id = Some(value.parse().unwrap()),
                "event" => name = Some(value.to_string()),
                "data" => data = Some(value.to_string()),
                other => panic!("unexpected field {other}"),
            }
        }
    }

    fn rest(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.next()).collect()
    }
}

#[test]
fn events_of_a_finished_run_are_status_then_complete() {
    let emu = Emu::new();
    emu.agent("analyst");
    let done = emu.run(json!({"agent": "analyst", "logs_total": 100}));
    let failed = emu.run(
        json!({"agent": "analyst", "logs_total": 10, "outcome": "failed",
                                "error": "boom"}),
    );
    for shape in [Shape::Snake, Shape::Camel] {
        emu.shape(shape);
        let events = Sse::open(&emu, &format!("/runs/{done}/events")).rest();
        let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["status", "complete"]);
        assert_eq!(
            events[0].data,
            json!({"status": "completed", shape.key("run_id"): done})
        );
        assert_eq!(events[1].data["status"], "completed");
        assert!(events[1].data["output"].is_string());
        assert!(events[1].data["error"].is_null());

        let events = Sse::open(&emu, &format!("/runs/{failed}/events")).rest();
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[1].data,
            json!({"status": "failed", "output": null, "error": "boom"})
        );
    }

    // An HTTP/1.0 client gets the stream until the connection closes.
    let addr = emu
        .api
        .trim_start_matches("http://")
        .trim_end_matches("/v1");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "GET /v1/runs/{done}/events HTTP/1.0\r\nAuthorization: Bearer {}\r\n\r\n",
        emu.token
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.contains("chunked"));
    assert!(answer.ends_with("event: complete\ndata: {\"status\":\"completed\",\"output\":\"Done: the report is in the logs\",\"error\":null}\n\n"), "{answer}");
}

#[test]
fn events_of_a_live_run_arrive_then_complete() {
    let emu = Emu::new();
    emu.agent("analyst");
    let id = emu.run(json!({
        "agent": "analyst", "log_rate": 50, "duration_ms": 1000, "pending_ms": 600000,
        "artifact_name": "live-out"
    }));
    let mut sse = Sse::open(&emu, &format!("/runs/{id}/events"));
    let first = sse.next().unwrap();
    assert_eq!(first.name, "status");
    assert_eq!(first.data["status"], "pending");
    emu.admin(&format!("/runs/{id}/advance"), json!({}));
    let events = sse.rest();
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names.last(), Some(&"complete"));
    let statuses: Vec<&Value> = events
        .iter()
        .filter(|e| e.name == "status")
        .map(|e| &e.data["status"])
        .collect();
    // Each change is sent; a stream that looked only after the run ended would skip
    // `running`, which the run passes through for a second.
    assert!(
        statuses == ["running", "completed"] || statuses == ["completed"],
        "{statuses:?}"
    );
    let outputs: Vec<&Event> = events.iter().filter(|e| e.name == "output").collect();
    // 50 lines in the second: an output with every fifth after the first, then the result.
    assert_eq!(outputs.len(), 10);
    for (i, event) in outputs.iter().enumerate() {
        let sequence = i as u64 + 1;
        assert_eq!(event.id, Some(sequence));
        assert_eq!(event.data["sequence"], sequence);
        assert!(event.data["type"].is_string() && event.data["timestamp"].is_string());
        assert!(event.data["data"].is_object());
    }
    assert_eq!(outputs.last().unwrap().data["type"], "result");
    let complete = &events.last().unwrap().data;
    assert_eq!(complete["status"], "completed");
    assert_eq!(
        complete["output"],
        outputs.last().unwrap().data["data"]["text"]
    );
    // The stream ended after the run's artifact was committed.
    assert!(emu.detail(&id)["artifact_version"].is_string());
}

#[test]
fn events_resume_after_the_last_event_id() {
    let emu = Emu::new();
    emu.agent("analyst");
    // A run that only does what the test tells it.
    let id = emu.run(json!({
        "agent": "analyst", "log_rate": 0, "duration_ms": 600000, "pending_ms": 0
    }));
    for i in 1..=3 {
        let answer = emu.admin(
            &format!("/runs/{id}/events"),
            json!({"type": "text", "data": {"text": format!("part {i}")}}),
        );
        assert_eq!(answer["sequence"], i);
    }
    for shape in [Shape::Snake, Shape::Camel] {
        emu.shape(shape);
        let param = shape.key("last_event_id");
        let mut sse = Sse::open(&emu, &format!("/runs/{id}/events?{param}=2"));
        let status = sse.next().unwrap();
        assert_eq!(status.name, "status");
        let third = sse.next().unwrap();
        assert_eq!((third.name.as_str(), third.id), ("output", Some(3)));
        assert_eq!(third.data["data"]["text"], "part 3");
    }
    emu.shape(Shape::Snake);
    // The standard header of a reconnecting client works too.
    let resp = emu
        .http
        .get(format!("{}/runs/{id}/events", emu.api))
        .bearer_auth(&emu.token)
        .header("Last-Event-ID", "3")
        .send()
        .unwrap();
    let mut sse = Sse {
        reader: BufReader::new(resp),
    };
    assert_eq!(sse.next().unwrap().name, "status");
    let sequence = emu
        .running
        .append_output(&id, "text", json!({"text": "part 4"}))
        .unwrap();
    assert_eq!(sequence, 4);
    let fourth = sse.next().unwrap();
    assert_eq!((fourth.name.as_str(), fourth.id), ("output", Some(4)));
    emu.running
        .finish_run(
            &id,
            Some(Outcome::Failed),
            Some("stopped by the test".into()),
        )
        .unwrap();
    let rest = sse.rest();
    let names: Vec<&str> = rest.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["status", "complete"]);
    assert_eq!(rest[1].data["error"], "stopped by the test");

    let body = assert_error(
        emu.get(&format!("/runs/{id}/events?last_event_id=x")),
        400,
        "invalid_request_error",
        "invalid_parameter",
    );
    assert_eq!(body["error"]["param"], "last_event_id");
}

#[test]
fn heartbeats_and_a_client_that_goes_away() {
    let emu = Emu::new();
    emu.agent("analyst");
    emu.config(json!({"heartbeat_ms": 50}));
    let id = emu.run(
        json!({"agent": "analyst", "log_rate": 0, "duration_ms": 600000,
                            "pending_ms": 0}),
    );
    let mut sse = Sse::open(&emu, &format!("/runs/{id}/events"));
    assert_eq!(sse.next().unwrap().name, "status");
    // The run may become `running` after the stream opened (a second `status`); nothing
    // else is sent by a run that logs nothing.
    let mut beats = 0;
    while beats < 3 {
        let event = sse.next().unwrap();
        match event.name.as_str() {
            "heartbeat" => {
                assert!(event.data["timestamp"].is_string());
                beats += 1;
            }
            "status" => assert_eq!(event.data["status"], "running", "{:?}", event.data),
            other => panic!("unexpected event {other}"),
        }
    }
    assert_eq!(emu.running.open_event_streams(), 1);
    drop(sse);
    // The next heartbeats fail to be written: the stream's thread ends.
    wait_until("the stream to end with its client", || {
        emu.admin_call("/streams", None).1["open"] == 0
    });
    assert_eq!(emu.running.open_event_streams(), 0);
}

#[test]
fn post_runs_and_cancel() {
    let emu = Emu::new();
    let agent = emu.agent("analyst");
    let input = emu.volume("input-data", "v");
    for shape in [Shape::Snake, Shape::Camel] {
        emu.shape(shape);
        let k = |s: &str| shape.key(s);
        let resp = emu.post(
            "/runs",
            &json!({"agent": "analyst", "prompt": "Go", "volumes": ["input-data"],
                    k("artifact_name"): "posted"}),
        );
        assert_eq!(resp.status(), 202);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let run: Value = resp.json().unwrap();
        let keys = detail_keys(shape);
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        assert_keys(&run, &keys);
        assert_eq!(run["status"], "pending");
        assert_eq!(run[k("agent_id")], agent.as_str());
        assert_eq!(run["volumes"]["input-data"], input.as_str());
        assert_eq!(run[k("artifact_name")], "posted");
        let id = run["id"].as_str().unwrap().to_string();
        wait_until("the run to start", || {
            emu.detail(&id)["status"] == "running"
        });

        let resp = emu.post(&format!("/runs/{id}/cancel"), &json!({}));
        assert_eq!(resp.status(), 200);
        let cancelled: Value = resp.json().unwrap();
        assert_eq!(cancelled["status"], "cancelled");
        assert!(cancelled[k("completed_at")].is_string());
        assert!(cancelled[k("artifact_version")].is_null());
        let body = assert_error(
            emu.post(&format!("/runs/{id}/cancel"), &json!({})),
            400,
            "invalid_request_error",
            "invalid_parameter",
        );
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cancelled"));
        let (logs, _) = emu.all_logs(&id, "", 100);
        assert_eq!(logs.last().unwrap()["message"], "run cancelled");
    }

    // With the defaults, by id: a few seconds of logs, then completed.
    emu.shape(Shape::Snake);
    let resp = emu.post("/runs", &json!({"agent": agent, "prompt": "Default"}));
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = emu.wait_final(&id);
    assert_eq!(done["status"], "completed");
    assert!(done["artifact_version"].is_null(), "no artifact name");
    let (logs, _) = emu.all_logs(&id, "", 100);
    assert!(logs.len() >= 25, "{}", logs.len());

    let missing = |body: Value, param: &str| {
        let body = assert_error(
            emu.post("/runs", &body),
            400,
            "invalid_request_error",
            "missing_parameter",
        );
        assert_eq!(body["error"]["param"], param);
    };
    missing(json!({"prompt": "x"}), "agent");
    missing(json!({"agent": "analyst"}), "prompt");
    assert_error(
        emu.post("/runs", &json!({"agent": "nobody", "prompt": "x"})),
        404,
        "not_found_error",
        "resource_not_found",
    );
    assert_error(
        emu.post(
            "/runs",
            &json!({"agent": "analyst", "prompt": "x", "volumes": ["nope"]}),
        ),
        404,
        "not_found_error",
        "resource_not_found",
    );
    assert_error(
        emu.post("/runs/nope/cancel", &json!({})),
        404,
        "not_found_error",
        "resource_not_found",
    );
    let resp = emu
        .http
        .post(format!("{}/runs", emu.api))
        .bearer_auth(&emu.token)
        .body("not json")
        .send()
        .unwrap();
    assert_error(resp, 400, "invalid_request_error", "invalid_parameter");
}

#[test]
fn auth_and_not_found_errors_are_json() {
    let emu = Emu::new();
    emu.agent("analyst");
    let run = emu.run(json!({"agent": "analyst", "logs_total": 3}));
    let agent = emu.agent("writer");
    let expected = r#"{"error":{"type":"authentication_error","code":"invalid_api_key","message":"Invalid API key provided"}}"#;
    let gets = [
        "/agents".to_string(),
        format!("/agents/{agent}"),
        format!("/agents/{agent}/versions"),
        "/runs".to_string(),
        format!("/runs/{run}"),
        format!("/runs/{run}/logs"),
        format!("/runs/{run}/metrics"),
        format!("/runs/{run}/events"),
    ];
    for path in &gets {
        for auth in [None, Some("Bearer vm0_live_wrong")] {
            let mut req = emu.http.get(format!("{}{path}", emu.api));
            if let Some(auth) = auth {
                req = req.header("Authorization", auth);
            }
            let resp = req.send().unwrap();
            assert_eq!(resp.status(), 401, "{path}");
            assert_eq!(resp.headers()["content-type"], "application/json");
            let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
            assert!(request_id.starts_with("req_") && request_id.len() == 36);
            assert_eq!(resp.text().unwrap(), expected, "{path}");
        }
    }
    for path in ["/runs", &format!("/runs/{run}/cancel")] {
        let resp = emu
            .http
            .post(format!("{}{path}", emu.api))
            .json(&json!({}))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 401, "{path}");
    }
    let unknown = "3f1c9a2e-6b1d-4c1e-9a55-0d2f7b8e4a10";
    for path in [
        format!("/agents/{unknown}"),
        format!("/agents/{unknown}/versions"),
        format!("/runs/{unknown}"),
        format!("/runs/{unknown}/logs"),
        format!("/runs/{unknown}/metrics"),
        format!("/runs/{unknown}/events"),
        format!("/runs/{run}/nope"),
        "/runs//logs".to_string(),
        "/agents/x/y/z".to_string(),
    ] {
        let body = assert_error(emu.get(&path), 404, "not_found_error", "resource_not_found");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    // Methods the routes do not have.
    let resp = emu
        .http
        .delete(format!("{}/runs/{run}", emu.api))
        .bearer_auth(&emu.token)
        .send()
        .unwrap();
    assert_error(resp, 404, "not_found_error", "resource_not_found");
}

#[test]
fn faults_apply_to_the_run_routes() {
    let emu = Emu::new();
    emu.agent("analyst");
    let run = emu.run(json!({"agent": "analyst", "logs_total": 30}));
    emu.admin("/counters/reset", json!({}));
    emu.admin(
        "/faults",
        json!({"route": "runs.logs", "status": 503, "count": 1}),
    );
    let resp = emu.get(&format!("/runs/{run}/logs"));
    assert_error(resp, 503, "api_error", "internal_error");
    assert_eq!(emu.get(&format!("/runs/{run}/logs")).status(), 200);

    emu.admin(
        "/faults",
        json!({"route": "runs.events", "status": 500, "count": 1}),
    );
    assert_error(
        emu.get(&format!("/runs/{run}/events")),
        500,
        "api_error",
        "internal_error",
    );
    assert_eq!(
        Sse::open(&emu, &format!("/runs/{run}/events")).rest().len(),
        2
    );

    emu.admin(
        "/faults",
        json!({"route": "runs.list", "status": 429, "retry_after": 3}),
    );
    let resp = emu.get("/runs");
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "3");

    emu.admin(
        "/faults",
        json!({"route": "agents.get", "status": 502, "body": "<html>bad gateway</html>"}),
    );
    let resp = emu.get("/agents/whatever");
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "text/html");

    // A delay holds only the request it applies to.
    emu.admin("/faults", json!({"route": "runs.get", "delay_ms": 300}));
    let started = Instant::now();
    assert_eq!(emu.get(&format!("/runs/{run}")).status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let (status, body) = emu.admin_call("/faults", Some(json!({"route": "runs.nope"})));
    assert_eq!(status, 400);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("runs.logs"));

    let counters = emu.admin_call("/counters", None).1;
    assert_eq!(counters["runs.logs"], 2);
    assert_eq!(counters["runs.events"], 2);
    assert_eq!(counters["runs.get"], 1);
    assert_eq!(counters["agents.get"], 1);
    for key in vm0_emulator::RUN_ROUTE_KEYS {
        assert!(counters[key].is_u64(), "{key} is counted");
    }
}

#[test]
fn admin_drives_runs() {
    let emu = Emu::new();
    emu.agent("analyst");
    let id = emu.run(
        json!({"agent": "analyst", "pending_ms": 600000, "log_rate": 0,
                            "duration_ms": 600000}),
    );
    assert_eq!(emu.detail(&id)["status"], "pending");
    let answer = emu.admin(&format!("/runs/{id}/advance"), json!({}));
    assert_eq!(answer["status"], "running");
    assert!(answer["started_at"].is_string());
    let appended = emu.admin(
        &format!("/runs/{id}/logs"),
        json!({"entries": [
            {"message": "hello"},
            {"type": "network", "level": "warn", "message": "slow", "metadata": {"ms": 900}}
        ]}),
    );
    assert_eq!(appended["logs"], 3, "the start line and two more");
    let (logs, _) = emu.all_logs(&id, "", 100);
    assert_eq!(logs[1]["message"], "hello");
    assert_eq!(logs[1]["type"], "agent");
    assert_eq!(logs[2]["metadata"], json!({"ms": 900}));
    emu.running
        .append_logs(
            &id,
            vec![NewLog {
                kind: vm0_emulator::LogType::System,
                level: "info".into(),
                message: "from Rust".into(),
                metadata: None,
            }],
        )
        .unwrap();
    let answer = emu.admin(&format!("/runs/{id}/advance"), json!({}));
    assert_eq!(answer["status"], "completed");
    let (status, _) = emu.admin_call(&format!("/runs/{id}/advance"), Some(json!({})));
    assert_eq!(status, 400, "a final run does not move");
    let (status, _) = emu.admin_call(&format!("/runs/{id}/logs"), Some(json!({"entries": []})));
    assert_eq!(status, 400);
    let (status, _) = emu.admin_call("/runs/nope/finish", Some(json!({})));
    assert_eq!(status, 404);
    let (status, _) = emu.admin_call(&format!("/runs/{id}/fly"), Some(json!({})));
    assert_eq!(status, 404);

    for (outcome, error) in [
        ("failed", Some("it broke")),
        ("timeout", None),
        ("cancelled", None),
    ] {
        let id = emu.run(json!({"agent": "analyst", "duration_ms": 600000}));
        let mut body = json!({ "outcome": outcome });
        if let Some(error) = error {
            body["error"] = json!(error);
        }
        let answer = emu.admin(&format!("/runs/{id}/finish"), body);
        assert_eq!(answer["status"], outcome);
        match outcome {
            "failed" => assert_eq!(answer["error"], "it broke"),
            "timeout" => assert!(answer["error"].is_string()),
            _ => assert!(answer["error"].is_null()),
        }
    }

    // Planned outcomes, reached by the driver.
    for outcome in ["failed", "timeout", "cancelled"] {
        let id = emu.run(
            json!({"agent": "analyst", "duration_ms": 100, "pending_ms": 0,
                                "outcome": outcome, "artifact_name": "never"}),
        );
        let detail = emu.wait_final(&id);
        assert_eq!(detail["status"], outcome);
        assert!(detail["artifact_version"].is_null());
    }
    assert_eq!(
        emu.get(&format!(
            "/artifacts/{}",
            storage_id(Kind::Artifacts, "never")
        ))
        .status(),
        404,
        "no artifact committed by a run that did not complete"
    );

    // The Rust API gives the same runs.
    let id = emu
        .running
        .create_run(RunSpec {
            logs_total: Some(7),
            outcome: Outcome::Timeout,
            ..RunSpec::new("analyst")
        })
        .unwrap();
    let run = emu.running.run(&id).unwrap();
    assert_eq!(run.status, RunStatus::Timeout);
    assert_eq!(run.logs.len(), 7);
    assert!(matches!(
        emu.running.create_run(RunSpec::new("nobody")),
        Err(RunError::NotFound(_))
    ));
}

#[test]
fn demo_runs_link_to_existing_versions() {
    let emu = Emu::start(EmulatorConfig {
        demo: true,
        ..EmulatorConfig::default()
    });
    let agents = emu.json("/agents")["data"].as_array().unwrap().clone();
    let mut version_counts: Vec<(String, usize)> = agents
        .iter()
        .map(|a| {
            let id = a["id"].as_str().unwrap();
            let versions = emu.json(&format!("/agents/{id}/versions"));
            (
                a["name"].as_str().unwrap().to_string(),
                versions["data"].as_array().unwrap().len(),
            )
        })
        .collect();
    version_counts.sort();
    assert_eq!(
        version_counts,
        [
            ("onboarding-analyst".to_string(), 3),
            ("report-writer".to_string(), 2)
        ]
    );

    let runs = pages(&emu, "/runs", 100).concat();
    assert_eq!(runs.len(), 7);
    let week_ago = vm0_emulator::model::format_timestamp(
        vm0_emulator::model::now_ms() - 7 * vm0_emulator::model::DAY_MS,
    );
    let recent = emu.json(&format!("/runs?since={week_ago}"));
    assert_eq!(
        recent["data"].as_array().unwrap().len(),
        6,
        "the oldest run is outside the last 7 days"
    );
    let mut statuses: Vec<&str> = runs
        .iter()
        .map(|r| match r["status"].as_str().unwrap() {
            "pending" | "running" => "live",
            other => other,
        })
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [
            "cancelled",
            "completed",
            "completed",
            "completed",
            "failed",
            "live",
            "timeout"
        ]
    );
    for row in &runs {
        let id = row["id"].as_str().unwrap();
        let detail = emu.detail(id);
        if detail["status"] == "pending" || detail["status"] == "running" {
            assert_eq!(id, vm0_emulator::demo::live_run_id());
            assert!(detail["artifact_version"].is_null());
            assert_eq!(detail["artifact_name"], "live-report");
        }
        if let Some(version) = detail["artifact_version"].as_str() {
            let name = detail["artifact_name"].as_str().unwrap();
            let versions = emu.json(&format!(
                "/artifacts/{}/versions?limit=100",
                storage_id(Kind::Artifacts, name)
            ));
            assert!(
                ids(versions["data"].as_array().unwrap()).contains(&version.to_string()),
                "{name} has {version}"
            );
        }
        for (name, version) in detail["volumes"].as_object().unwrap() {
            let versions = emu.json(&format!(
                "/volumes/{}/versions?limit=100",
                storage_id(Kind::Volumes, name)
            ));
            assert!(
                ids(versions["data"].as_array().unwrap())
                    .contains(&version.as_str().unwrap().to_string()),
                "{name} has {version}"
            );
        }
        let (logs, _) = emu.all_logs(id, "", 100);
        if detail["status"] != "pending" {
            assert!(!logs.is_empty(), "{id} has logs");
        }
    }
    // The live run starts after two seconds and then logs a line a second.
    let live = vm0_emulator::demo::live_run_id();
    wait_until("the demo's live run to log", || {
        emu.all_logs(&live, "", 100).0.len() >= 2
    });
    assert_eq!(emu.detail(&live)["status"], "running");
    assert!(emu.detail(&live)["artifact_version"].is_null());
}

#[test]
fn the_binary_serves_runs_with_a_heartbeat_flag() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vm0-emulator"))
        .args(["--demo", "--heartbeat-ms", "40"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn vm0-emulator");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready: Value = serde_json::from_str(&line).expect("the ready line");
    let api = ready["api_url"].as_str().unwrap();
    let token = ready["token"].as_str().unwrap();
    let http = Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let live = vm0_emulator::demo::live_run_id();
    let resp = http
        .get(format!("{api}/runs/{live}/events"))
        .bearer_auth(token)
        .send()
        .unwrap();
    let mut sse = Sse {
        reader: BufReader::new(resp),
    };
    assert_eq!(sse.next().unwrap().name, "status");
    let beat = std::iter::from_fn(|| sse.next()).find(|e| e.name == "heartbeat");
    assert!(beat.is_some());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn shutdown_ends_live_streams_and_the_driver() {
    let emu = Emu::new();
    emu.agent("analyst");
    let id = emu
        .running
        .create_run(RunSpec {
            duration_ms: Some(600_000),
            pending_ms: Some(0),
            ..RunSpec::new("analyst")
        })
        .unwrap();
    let mut sse = Sse::open(&emu, &format!("/runs/{id}/events"));
    assert_eq!(sse.next().unwrap().name, "status");
    let Emu { running, .. } = emu;
    running.shutdown();
    // The stream is cut, as by a server that went away: no `complete`.
    let rest: Vec<Event> = std::iter::from_fn(|| {
        let mut line = String::new();
        match sse.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(Event {
                id: None,
                name: line,
                data: Value::Null,
            }),
        }
    })
    .collect();
    assert!(
        rest.iter().all(|e| !e.name.contains("complete")),
        "{rest:?}"
    );
}
