//! The API client's agent and run calls against the emulator (in-process, over real HTTP
//! on loopback), in both shapes: what the client reads must be the same whatever the
//! server's shape, with every key in snake_case.

mod common;

use std::time::{Duration, SystemTime};

use common::Emulator;
use serde_json::Value;
use vm0_emulator::{EmulatorConfig, RunSpec, Shape};
use vm0fs::api::{Client, ClientConfig, LogQuery, RetryPolicy, RunEvent, RunId, RunQuery, Token};

fn emulator(shape: Shape) -> Emulator {
    Emulator::start(EmulatorConfig {
        demo: true,
        shape,
        ..EmulatorConfig::default()
    })
}

fn client(emu: &Emulator) -> Client {
    Client::new(ClientConfig {
        base_url: emu.api_url.clone(),
        token: Token::new(&emu.token),
        retry: RetryPolicy::default(),
        io_timeout: Duration::from_secs(5),
        url_setting: "VM0_API_URL",
    })
    .unwrap()
}

/// Every key of every object in `v`, except below the keys in `skip` (data, not fields).
fn keys(v: &Value, skip: &[&str], out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                out.push(k.clone());
                if !skip.contains(&k.as_str()) {
                    keys(v, skip, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| keys(v, skip, out)),
        _ => {}
    }
}

fn assert_snake(v: &Value, skip: &[&str]) {
    let mut all = Vec::new();
    keys(v, skip, &mut all);
    assert!(!all.is_empty());
    for k in all {
        assert!(!k.chars().any(|c| c.is_ascii_uppercase()), "{k} in {v}");
    }
}

/// What the client makes of the demo's agents and runs, shape-free.
fn demo_view(shape: Shape) -> Vec<Value> {
    let emu = emulator(shape);
    let c = client(&emu);
    let mut out = Vec::new();
    let agents = c.list_agents().unwrap();
    assert_eq!(agents.len(), 2, "{agents:?}");
    for a in &agents {
        let detail = c.get_agent(&a.id).unwrap();
        assert_snake(&detail.json, &[]);
        let versions = c.list_agent_versions(&a.id).unwrap();
        assert_snake(&Value::Array(versions.clone()), &[]);
        out.push(detail.json.clone());
        out.extend(versions);
    }
    let runs = c.list_runs(&RunQuery::default()).unwrap();
    assert_eq!(runs.len(), 7, "six finished runs and the live one");
    for r in &runs {
        let detail = c.get_run(&r.id).unwrap();
        assert_snake(&detail.json, &["volumes"]);
        assert_eq!(detail.id, r.id);
        if detail.is_final() && detail.status == "completed" {
            assert!(detail.artifact_version.is_some(), "{detail:?}");
        }
        let metrics = c.run_metrics(&r.id).unwrap();
        assert_snake(&metrics, &[]);
        if detail.is_final() {
            let page = c.run_logs(&r.id, &LogQuery::default()).unwrap();
            for e in &page.entries {
                assert_snake(&e.json, &["metadata"]);
            }
            out.push(detail.json);
            out.push(metrics);
            out.extend(page.entries.into_iter().map(|e| e.json));
        }
    }
    out
}

#[test]
fn both_shapes_read_the_same_with_snake_case_keys() {
    let snake = demo_view(Shape::Snake);
    let camel = demo_view(Shape::Camel);
    // Ids are the demo's fixed ones, so the same data set reads the same in both shapes.
    let strip = |v: &Vec<Value>| -> Vec<String> {
        v.iter()
            .map(|v| {
                let mut v = v.clone();
                // Times of the demo are relative to its start.
                for k in [
                    "created_at",
                    "updated_at",
                    "started_at",
                    "completed_at",
                    "timestamp",
                ] {
                    if let Some(o) = v.as_object_mut() {
                        o.remove(k);
                    }
                }
                let mut keys_of = Vec::new();
                keys(&v, &["volumes", "metadata"], &mut keys_of);
                keys_of.sort();
                keys_of.join(",")
            })
            .collect()
    };
    assert_eq!(strip(&snake), strip(&camel));
}

#[test]
fn runs_are_listed_newest_first_within_since_and_limit() {
    let emu = emulator(Shape::Camel);
    let c = client(&emu);
    for i in 0..150 {
        emu.running()
            .create_run(RunSpec {
                prompt: Some(format!("run {i}")),
                logs_total: Some(1),
                ..RunSpec::new("report-writer")
            })
            .unwrap();
    }
    emu.reset_counters();
    let all = c
        .list_runs(&RunQuery {
            since: Some(SystemTime::now() - Duration::from_secs(7 * 24 * 3600)),
            limit: Some(120),
            ..RunQuery::default()
        })
        .unwrap();
    assert_eq!(all.len(), 120);
    assert_eq!(emu.counter("runs.list"), 2, "100 a page");
    for pair in all.windows(2) {
        assert!(pair[0].created_at >= pair[1].created_at);
    }
    // Every run, within 7 days: the demo's run older than 7 days is left out.
    let recent = c
        .list_runs(&RunQuery {
            since: Some(SystemTime::now() - Duration::from_secs(7 * 24 * 3600)),
            ..RunQuery::default()
        })
        .unwrap();
    let every = c.list_runs(&RunQuery::default()).unwrap();
    assert_eq!(every.len(), 157);
    assert_eq!(recent.len(), 156);
    // By agent.
    let writer = &every
        .iter()
        .find(|r| r.agent_name == "report-writer")
        .unwrap();
    let of_writer = c
        .list_runs(&RunQuery {
            agent_id: Some(&writer.agent_id),
            ..RunQuery::default()
        })
        .unwrap();
    assert!(of_writer.iter().all(|r| r.agent_name == "report-writer"));
    assert!(of_writer.len() >= 150);
}

#[test]
fn logs_page_with_an_inclusive_since_and_events_stream() {
    for shape in [Shape::Snake, Shape::Camel] {
        let emu = emulator(shape);
        let c = client(&emu);
        let id = emu
            .running()
            .create_run(RunSpec {
                logs_total: Some(250),
                ..RunSpec::new("report-writer")
            })
            .unwrap();
        let id = RunId::parse(&id).unwrap();
        let first = c.run_logs(&id, &LogQuery::default()).unwrap();
        assert_eq!(first.entries.len(), 100);
        let cursor = first.next_cursor.clone().expect("more pages");
        let second = c
            .run_logs(
                &id,
                &LogQuery {
                    cursor: Some(&cursor),
                    ..LogQuery::default()
                },
            )
            .unwrap();
        assert_eq!(second.entries.len(), 100);
        assert!(!first.entries.iter().any(|e| second.entries[0].same(e)));
        // `since` is inclusive: the last entry seen comes again.
        let last = first.entries.last().unwrap();
        let again = c
            .run_logs(
                &id,
                &LogQuery {
                    since: Some(&last.timestamp),
                    ..LogQuery::default()
                },
            )
            .unwrap();
        // (An entry before it may share its timestamp.)
        let at = again
            .entries
            .iter()
            .position(|e| e.same(last))
            .expect("repeated");
        assert!(at < 2, "{at}");
        assert!(again.entries[..at]
            .iter()
            .all(|e| e.timestamp == last.timestamp));
        // A finished run's stream: its status, then complete.
        let events: Vec<RunEvent> = c
            .run_events(&id, None)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(matches!(&events[0], RunEvent::Status { status, .. } if status == "completed"));
        assert!(matches!(events.last(), Some(RunEvent::Complete { .. })));
        // Unknown runs are not found.
        let missing = RunId::parse("00000000-0000-4000-8000-000000000000").unwrap();
        let err = c.get_run(&missing).unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(c.run_events(&missing, None).unwrap_err().is_not_found());
    }
}
