//! Runs and agents through a real mount, with the real tools: `tail -f` of a live run,
//! final runs served from the cache after a restart with the API down, a run's `artifact/`
//! and `volumes/` compared with `tar -xzf` of the same archives, a 100,000-entry log,
//! unknown ids, request counts, and both shapes of the API.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::hostile::{poll_every, poll_until};
use common::{ok, sh, tar_extract, Emulator, Mount, MountOpts};
use serde_json::Value;
use vm0_emulator::{EmulatorConfig, NewLog, Outcome, RunSpec, Shape};

fn demo(shape: Shape) -> Emulator {
    Emulator::start(EmulatorConfig {
        demo: true,
        shape,
        ..EmulatorConfig::default()
    })
}

/// A log entry of the emulator as the `logs` file shows it.
fn line_of(e: &vm0_emulator::runs::LogEntry) -> String {
    format!(
        "{} {} {} {}",
        vm0_emulator::model::format_timestamp(e.timestamp_ms),
        e.kind.as_str(),
        e.level,
        e.message.replace('\\', "\\\\").replace('\n', "\\n")
    )
}

/// Every line the emulator holds for run `id`, oldest first.
fn expected_lines(emu: &Emulator, id: &str) -> Vec<String> {
    emu.running()
        .run(id)
        .unwrap()
        .logs
        .iter()
        .map(line_of)
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The tree of a version: `tar -xzf` of its archive as the API serves it (through its
/// redirect to the store), or an empty directory for a version of no files (which has no
/// archive).
fn version_tree(
    emu: &Emulator,
    kind: &str,
    name: &str,
    version: &str,
    into: &Path,
) -> tempfile::TempDir {
    let id = emu.storage(kind, name)["id"].as_str().unwrap().to_string();
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let answer = http
        .get(format!(
            "{}/{kind}/{id}/download?version_id={version}&versionId={version}",
            emu.api_url
        ))
        .bearer_auth(&emu.token)
        .send()
        .unwrap();
    let location = match answer.headers().get("location") {
        Some(l) => l.to_str().unwrap().to_string(),
        None => {
            let text = answer.text().unwrap();
            assert!(
                text.contains("has no files"),
                "{kind} {name} {version}: {text}"
            );
            return tempfile::tempdir().unwrap();
        }
    };
    let bytes = http.get(location).send().unwrap().bytes().unwrap();
    let path = into.join(format!("{name}-{version}.tar.gz"));
    std::fs::write(&path, bytes).unwrap();
    tar_extract(&path)
}

/// The ids of the demo's finished runs that produced an artifact.
fn finished_with_artifact(emu: &Emulator) -> Vec<String> {
    let runs = emu.api_get("/runs?limit=100");
    runs["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .filter(|id| {
            let r = emu.running().run(id).unwrap();
            r.status.is_final() && r.artifact_version.is_some() && !r.volumes.is_empty()
        })
        .collect()
}

#[test]
fn tail_f_of_a_live_run_sees_its_lines_and_its_end() {
    let emu = demo(Shape::Snake);
    let id = emu
        .running()
        .create_run(RunSpec {
            log_rate: Some(5.0),
            duration_ms: Some(600_000),
            pending_ms: Some(0),
            artifact_name: Some("tail-out".into()),
            ..RunSpec::new("report-writer")
        })
        .unwrap();
    let m = Mount::new(&emu);
    let logs = m.join(&format!("runs/{id}/logs"));
    poll_until(Duration::from_secs(20), "the live run's status", || {
        std::fs::read_to_string(m.join(&format!("runs/{id}/status")))
            .is_ok_and(|s| s == "running\n")
    });
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("tail.out");
    let mut tail = Command::new("tail")
        .arg("-n")
        .arg("+1")
        .arg("-f")
        .arg(&logs)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Lines appear as the run logs them...
    poll_until(Duration::from_secs(30), "lines in tail -f", || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.lines().count() >= 10)
    });
    // ... and a line appended now shows up.
    emu.running()
        .append_logs(
            &id,
            vec![NewLog {
                kind: Default::default(),
                level: "warn".into(),
                message: "a line the test appended".into(),
                metadata: None,
            }],
        )
        .unwrap();
    poll_until(
        Duration::from_secs(30),
        "the appended line in tail -f",
        || read(&out).contains("a line the test appended"),
    );
    // The run ends: tail -f sees its last line, and what it printed is the final file, line
    // for line (no gap, no duplicate), which is the emulator's log.
    emu.running()
        .finish_run(&id, Some(Outcome::Completed), None)
        .unwrap();
    let expected = expected_lines(&emu, &id);
    let last = expected.last().unwrap().clone();
    poll_until(
        Duration::from_secs(30),
        "the run's last line in tail -f",
        || read(&out).lines().last() == Some(last.as_str()),
    );
    tail.kill().unwrap();
    tail.wait().unwrap();
    let printed: Vec<String> = read(&out).lines().map(String::from).collect();
    assert_eq!(printed, expected);
    poll_until(Duration::from_secs(30), "the final status", || {
        read(&m.join(&format!("runs/{id}/status"))) == "completed\n"
    });
    let file: Vec<String> = read(&logs).lines().map(String::from).collect();
    assert_eq!(file, expected);
    // The artifact committed at completion is linked once the detail names it.
    poll_until(Duration::from_secs(30), "the artifact link", || {
        m.join(&format!("runs/{id}/artifact/report.md")).exists()
    });
}

#[test]
fn a_final_run_is_served_after_a_restart_with_the_api_down() {
    let emu = demo(Shape::Snake);
    let id = finished_with_artifact(&emu).remove(0);
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let files = [
        "run.json",
        "status",
        "prompt",
        "logs",
        "logs.jsonl",
        "events.jsonl",
        "metrics.json",
    ];
    let before: Vec<String> = {
        let m = Mount::with(
            &emu,
            MountOpts {
                cache: Some(cache.clone()),
                ..MountOpts::default()
            },
        );
        let seen = files
            .iter()
            .map(|f| read(&m.join(&format!("runs/{id}/{f}"))))
            .collect();
        // A second read asks the API nothing.
        emu.reset_counters();
        ok(Command::new("cat").args(files.iter().map(|f| m.join(&format!("runs/{id}/{f}")))));
        for key in ["runs.get", "runs.logs", "runs.metrics", "runs.events"] {
            assert_eq!(emu.counter(key), 0, "{key}");
        }
        m.unmount();
        seen
    };
    let api_url = emu.api_url.clone();
    let token = emu.token.clone();
    drop(emu); // Connections are refused from now on.
               // A mount of the dead URL: the `Mount` helper takes the URL of an emulator, so point a
               // fresh one's at the old, closed port.
    let mut down = Emulator::start(EmulatorConfig::default());
    down.api_url = api_url;
    down.token = token;
    let m = Mount::with(
        &down,
        MountOpts {
            cache: Some(cache),
            ..MountOpts::default()
        },
    );
    let after: Vec<String> = files
        .iter()
        .map(|f| read(&m.join(&format!("runs/{id}/{f}"))))
        .collect();
    assert_eq!(after, before);
    // The listing falls back to the runs kept.
    let listed = sh(&format!("ls {}", m.join("runs").display()));
    assert!(listed.lines().any(|l| l == id), "{listed}");
}

#[test]
fn artifact_and_volumes_are_the_archives_of_those_versions() {
    for shape in [Shape::Snake, Shape::Camel] {
        let emu = demo(shape);
        let m = Mount::new(&emu);
        let work = tempfile::tempdir().unwrap();
        for id in finished_with_artifact(&emu) {
            let run = emu.running().run(&id).unwrap();
            let artifact = run.artifact_name.clone().unwrap();
            let version = run.artifact_version.clone().unwrap();
            let extracted = version_tree(&emu, "artifacts", &artifact, &version, work.path());
            ok(Command::new("diff")
                .arg("-r")
                .arg(extracted.path())
                .arg(m.join(&format!("runs/{id}/artifact/"))));
            for (name, version) in &run.volumes {
                let extracted = version_tree(&emu, "volumes", name, version, work.path());
                ok(Command::new("diff")
                    .arg("-r")
                    .arg(extracted.path())
                    .arg(m.join(&format!("runs/{id}/volumes/{name}/"))));
            }
            // Every JSON file has its keys in snake_case, whatever the server's shape.
            let detail: Value =
                serde_json::from_str(&read(&m.join(&format!("runs/{id}/run.json")))).unwrap();
            assert_eq!(detail["id"], id.as_str());
            assert_eq!(detail["artifact_version"], version.as_str());
            assert!(
                detail.get("agent_name").is_some() && detail.get("agentName").is_none(),
                "{detail}"
            );
            let metrics: Value =
                serde_json::from_str(&read(&m.join(&format!("runs/{id}/metrics.json")))).unwrap();
            assert!(
                metrics["summary"].get("avg_cpu_percent").is_some(),
                "{metrics}"
            );
            let agent = read(&m.join(&format!("runs/{id}/agent/agent.json")));
            assert!(agent.contains("\"current_version_id\""), "{agent}");
            assert_eq!(
                read(&m.join(&format!("runs/{id}/status"))),
                format!("{}\n", run.status.as_str())
            );
            let link = std::fs::read_link(m.join(&format!("runs/{id}/agent"))).unwrap();
            assert_eq!(link, Path::new("../../agents").join(&run.agent_name));
            let back = sh(&format!(
                "ls {}",
                m.join(&format!("agents/{}/runs", run.agent_name)).display()
            ));
            // The agent's runs follow the same window as `runs/`.
            let recent = sh(&format!("ls {}", m.join("runs").display()));
            let within = recent.lines().any(|l| l == id);
            assert_eq!(back.lines().any(|l| l == id), within, "{id}: {back}");
        }
    }
}

#[test]
fn a_100k_entry_log_is_complete_ordered_and_without_duplicates() {
    let emu = demo(Shape::Snake);
    let id = emu
        .running()
        .create_run(RunSpec {
            logs_total: Some(100_000),
            ..RunSpec::new("report-writer")
        })
        .unwrap();
    let m = Mount::new(&emu);
    emu.reset_counters();
    let text = read(&m.join(&format!("runs/{id}/logs")));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 100_000);
    let unique: HashSet<&str> = lines.iter().copied().collect();
    assert_eq!(unique.len(), 100_000, "no duplicate line");
    assert!(
        lines.windows(2).all(|w| w[0][..24] <= w[1][..24]),
        "oldest first"
    );
    assert_eq!(lines, expected_lines(&emu, &id));
    assert!(
        emu.counter("runs.logs") <= 1_000,
        "{}",
        emu.counter("runs.logs")
    );
    let jsonl = read(&m.join(&format!("runs/{id}/logs.jsonl")));
    assert_eq!(jsonl.lines().count(), 100_000);
    emu.reset_counters();
    let again = read(&m.join(&format!("runs/{id}/logs")));
    assert_eq!(again, text);
    assert_eq!(emu.counter("runs.logs"), 0, "a second cat asks nothing");
}

#[test]
fn unknown_ids_and_names_are_enoent_and_remembered() {
    let emu = demo(Shape::Camel);
    let m = Mount::new(&emu);
    emu.reset_counters();
    let missing = m.join("runs/00000000-0000-4000-8000-000000000000");
    for _ in 0..5 {
        let err = std::fs::metadata(&missing).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }
    assert_eq!(emu.counter("runs.get"), 1, "the miss is remembered");
    for bad in [
        "runs/..x",
        "runs/a b",
        "agents/nobody",
        "runs/00000000-0000-4000-8000-000000000000/logs",
    ] {
        let err = std::fs::metadata(m.join(bad)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{bad}");
    }
    assert_eq!(emu.counter("runs.get"), 1);
    // A run outside the listing (older than 7 days) is found by its id.
    let every = emu.api_get("/runs?limit=100");
    let listed = sh(&format!("ls {}", m.join("runs").display()));
    let old: Vec<String> = every["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .filter(|id| !listed.lines().any(|l| l == id))
        .collect();
    assert_eq!(old.len(), 1, "the demo's old run is outside 7 days");
    assert!(read(&m.join(&format!("runs/{}/status", old[0]))).ends_with('\n'));
}

#[test]
fn ls_of_1000_runs_costs_at_most_10_requests_and_none_within_the_ttl() {
    let emu = demo(Shape::Snake);
    for _ in 0..1_000 {
        emu.running()
            .create_run(RunSpec {
                logs_total: Some(1),
                ..RunSpec::new("onboarding-analyst")
            })
            .unwrap();
    }
    let m = Mount::new(&emu);
    emu.reset_counters();
    let listed = ok(Command::new("ls").arg("-l").arg(m.join("runs")));
    let runs = |l: &&str| l.starts_with('d') && !l.ends_with(" by-status");
    assert_eq!(listed.lines().filter(runs).count(), 1_000);
    let requests = emu.counter("runs.list");
    assert!((1..=10).contains(&requests), "{requests}");
    // Only the demo's live run is asked for its detail (its status may have changed).
    assert!(emu.counter("runs.get") <= 1, "{}", emu.counter("runs.get"));
    ok(Command::new("ls").arg("-l").arg(m.join("runs")));
    assert_eq!(emu.counter("runs.list"), requests, "none within the TTL");
}

/// A live run of `agent` that logs now and then and lasts ten minutes unless ended.
fn live_run(emu: &Emulator, agent: &str) -> String {
    emu.running()
        .create_run(RunSpec {
            log_rate: Some(2.0),
            duration_ms: Some(600_000),
            pending_ms: Some(0),
            ..RunSpec::new(agent)
        })
        .unwrap()
}

/// The `sequence` of each output event in an `events.jsonl`.
fn output_sequences(text: &str) -> Vec<u64> {
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "output")
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect()
}

#[test]
fn cat_status_of_a_100k_entry_run_costs_its_detail_and_no_logs() {
    let emu = demo(Shape::Snake);
    let id = emu
        .running()
        .create_run(RunSpec {
            logs_total: Some(100_000),
            ..RunSpec::new("report-writer")
        })
        .unwrap();
    let m = Mount::new(&emu);
    emu.reset_counters();
    let status = read(&m.join(&format!("runs/{id}/status")));
    assert_eq!(status, "completed\n");
    let counters = emu.counters();
    let total: u64 = [
        "runs.list",
        "runs.get",
        "runs.logs",
        "runs.metrics",
        "runs.events",
    ]
    .iter()
    .map(|k| counters[*k].as_u64().unwrap_or(0))
    .sum();
    assert!(total <= 2, "{counters}");
    assert_eq!(emu.counter("runs.logs"), 0);
    // The other files the detail makes cost no logs or events either, and hold what the
    // full fetch holds.
    let cheap = ["run.json", "prompt", "metrics.json"];
    let before: Vec<String> = cheap
        .iter()
        .map(|f| read(&m.join(&format!("runs/{id}/{f}"))))
        .collect();
    assert_eq!(emu.counter("runs.logs"), 0);
    assert_eq!(emu.counter("runs.events"), 0);
    assert_eq!(emu.counter("runs.metrics"), 1);
    let logs = read(&m.join(&format!("runs/{id}/logs")));
    assert_eq!(logs.lines().count(), 100_000);
    let after: Vec<String> = cheap
        .iter()
        .map(|f| read(&m.join(&format!("runs/{id}/{f}"))))
        .collect();
    assert_eq!(after, before);
}

#[test]
fn the_first_read_of_a_live_runs_events_is_not_empty() {
    let emu = demo(Shape::Snake);
    let id = live_run(&emu, "report-writer");
    emu.running()
        .append_output(&id, "text", serde_json::json!({"text": "hello"}))
        .unwrap();
    let m = Mount::new(&emu);
    let path = m.join(&format!("runs/{id}/events.jsonl"));
    let first = read(&path);
    assert!(!first.is_empty(), "the first read of events.jsonl is empty");
    assert!(
        first.lines().next().unwrap().contains("\"status\""),
        "{first}"
    );
}

#[test]
fn the_first_read_after_an_idle_time_is_what_the_api_says() {
    let emu = demo(Shape::Snake);
    let id = live_run(&emu, "report-writer");
    // Nobody reading for 300 ms ends the following, instead of 30 s.
    let m = Mount::with(
        &emu,
        MountOpts {
            env: vec![("VM0FS_FOLLOW_IDLE_MS", "300".into())],
            ..MountOpts::default()
        },
    );
    let status = m.join(&format!("runs/{id}/status"));
    let logs = m.join(&format!("runs/{id}/logs"));
    assert_eq!(read(&status), "running\n");
    read(&logs);
    // Wait until the mount no longer asks about the run: nobody follows it.
    let mut last = u64::MAX;
    poll_until(
        Duration::from_secs(30),
        "the run no longer followed",
        || {
            let now = emu.counter("runs.get") + emu.counter("runs.events");
            let quiet = now == last && emu.running().open_event_streams() == 0;
            last = now;
            quiet
        },
    );
    // Meanwhile the run logs a line and fails.
    emu.running()
        .append_logs(
            &id,
            vec![NewLog {
                kind: Default::default(),
                level: "error".into(),
                message: "logged while nobody read".into(),
                metadata: None,
            }],
        )
        .unwrap();
    emu.running()
        .finish_run(&id, Some(Outcome::Failed), Some("it broke".into()))
        .unwrap();
    assert_eq!(
        read(&status),
        "failed\n",
        "the first read after the idle time"
    );
    assert_eq!(read(&logs), expected_lines(&emu, &id).join("\n") + "\n");
    assert_eq!(read(&m.join(&format!("runs/{id}/error"))), "it broke\n");
}

#[test]
fn a_run_the_api_no_longer_knows_is_gone_and_tail_f_ends() {
    let emu = demo(Shape::Snake);
    let id = live_run(&emu, "report-writer");
    let m = Mount::new(&emu);
    let logs = m.join(&format!("runs/{id}/logs"));
    assert_eq!(read(&m.join(&format!("runs/{id}/status"))), "running\n");
    let mut tail = Command::new("tail")
        .arg("-f")
        .arg(&logs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for route in ["runs.get", "runs.logs", "runs.metrics", "runs.events"] {
        emu.fault(serde_json::json!({"route": route, "status": 404, "count": 0}));
    }
    poll_until(Duration::from_secs(20), "ENOENT for the gone run", || {
        std::fs::metadata(m.join(&format!("runs/{id}/status")))
            .is_err_and(|e| e.raw_os_error() == Some(libc::ENOENT))
    });
    poll_until(Duration::from_secs(20), "tail -f to end", || {
        tail.try_wait().unwrap().is_some()
    });
    let log = m.log_text();
    let warned = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(&id) && l.contains("404"))
        .count();
    assert_eq!(warned, 1, "{log}");
}

#[test]
fn twelve_live_runs_tailed_at_once_keep_every_output_event() {
    let emu = demo(Shape::Snake);
    let ids: Vec<String> = (0..12).map(|_| live_run(&emu, "report-writer")).collect();
    let m = Mount::new(&emu);
    let mut tails: Vec<_> = ids
        .iter()
        .map(|id| {
            Command::new("tail")
                .arg("-f")
                .arg(m.join(&format!("runs/{id}/events.jsonl")))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    poll_until(Duration::from_secs(60), "a stream for every run", || {
        emu.running().open_event_streams() >= 12
    });
    for round in 0..25 {
        for id in &ids {
            emu.running()
                .append_output(id, "text", serde_json::json!({ "n": round }))
                .unwrap();
        }
    }
    for id in &ids {
        emu.running()
            .finish_run(id, Some(Outcome::Completed), None)
            .unwrap();
    }
    for id in &ids {
        let expected: Vec<u64> = emu
            .running()
            .run(id)
            .unwrap()
            .events
            .iter()
            .map(|e| e.sequence)
            .collect();
        assert!(expected.len() >= 25);
        poll_until(Duration::from_secs(60), "the final events.jsonl", || {
            let text = read(&m.join(&format!("runs/{id}/events.jsonl")));
            text.contains("\"complete\"")
        });
        let text = read(&m.join(&format!("runs/{id}/events.jsonl")));
        assert_eq!(output_sequences(&text), expected, "{id}: {text}");
    }
    for t in &mut tails {
        t.kill().unwrap();
        t.wait().unwrap();
    }
}

#[test]
fn latest_by_status_prefixes_and_log_levels() {
    let emu = demo(Shape::Snake);
    let m = Mount::new(&emu);
    // `runs/latest` is the newest run; a run started now is listed within seconds, and
    // becomes `latest` if it is the newest.
    let first = emu.api_get("/runs?limit=1");
    let newest = first["data"][0]["id"].as_str().unwrap();
    let link = std::fs::read_link(m.join("runs/latest")).unwrap();
    assert_eq!(link, Path::new(newest));
    let id = emu
        .running()
        .create_run(RunSpec {
            logs_total: Some(40),
            ..RunSpec::new("report-writer")
        })
        .unwrap();
    poll_until(Duration::from_secs(10), "the new run in ls runs", || {
        sh(&format!("ls {}", m.join("runs").display()))
            .lines()
            .any(|l| l == id)
    });
    let now_newest = emu.api_get("/runs?limit=1")["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        std::fs::read_link(m.join("runs/latest")).unwrap(),
        Path::new(&now_newest)
    );
    // A run started now is the newest: `latest` names it within seconds.
    let started = live_run(&emu, "report-writer");
    poll_until(
        Duration::from_secs(10),
        "runs/latest to be the new run",
        || std::fs::read_link(m.join("runs/latest")).is_ok_and(|l| l == Path::new(&started)),
    );
    let agent = emu.api_get("/agents?name=report-writer")["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let newest_of_agent = emu.api_get(&format!("/runs?limit=1&agent_id={agent}"))["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        std::fs::read_link(m.join("agents/report-writer/runs/latest")).unwrap(),
        Path::new("../../../runs").join(&newest_of_agent)
    );
    assert_eq!(
        read(&m.join("agents/report-writer/runs/latest/run.json")),
        read(&m.join(&format!("runs/{newest_of_agent}/run.json")))
    );
    // by-status: what the API's filter lists, each a link to the run.
    for status in [
        "pending",
        "running",
        "completed",
        "failed",
        "timeout",
        "cancelled",
    ] {
        let listed = emu.api_get(&format!("/runs?limit=100&status={status}"));
        let mut want: Vec<String> = listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .filter(|id| {
                sh(&format!("ls {}", m.join("runs").display()))
                    .lines()
                    .any(|l| l == id)
            })
            .collect();
        want.sort();
        let dir = m.join(&format!("runs/by-status/{status}"));
        let mut got: Vec<String> = sh(&format!("ls {}", dir.display()))
            .lines()
            .map(String::from)
            .collect();
        got.sort();
        assert_eq!(got, want, "{status}");
        for id in &got {
            assert_eq!(
                std::fs::read_link(dir.join(id)).unwrap(),
                Path::new("../..").join(id)
            );
            assert_eq!(read(&dir.join(id).join("status")), format!("{status}\n"));
        }
    }
    // A unique prefix of 8 hex or more is a link to the full id; shorter ones are not.
    let prefix = &id[..8];
    assert_eq!(
        std::fs::read_link(m.join(&format!("runs/{prefix}"))).unwrap(),
        Path::new(&id)
    );
    assert_eq!(
        read(&m.join(&format!("runs/{}/status", &id[..13]))),
        "completed\n"
    );
    let short = std::fs::metadata(m.join(&format!("runs/{}", &id[..7]))).unwrap_err();
    assert_eq!(short.raw_os_error(), Some(libc::ENOENT));
    // logs.d/<level>: the lines of `logs` at that level, as awk picks them.
    let logs = m.join(&format!("runs/{id}/logs"));
    for level in ["debug", "info", "warn", "error"] {
        let awk = sh(&format!("awk '$3==\"{level}\"' {}", logs.display()));
        assert_eq!(
            read(&m.join(&format!("runs/{id}/logs.d/{level}"))),
            awk,
            "{level}"
        );
    }
    let levels = sh(&format!(
        "ls {}",
        m.join(&format!("runs/{id}/logs.d")).display()
    ));
    assert_eq!(levels, "debug\nerror\ninfo\nwarn\n");
}

/// More live runs read than event streams may be open (2 here, through the daemon's test
/// knob): the runs take turns, so a run that waits for a stream is still polled (what it
/// emits while it waits reaches its `events.jsonl`), and runs that end while they wait keep
/// every output event the emulator made for them. The runs are quiet between the test's
/// events: a stream that held its place until its run's next event would starve the others.
#[test]
fn live_runs_beyond_the_stream_limit_are_polled_and_end_with_every_output_event() {
    const STREAMS: usize = 2;
    const RUNS: usize = 6;
    const ROUNDS: usize = 3;
    let emu = demo(Shape::Snake);
    let ids: Vec<String> = (0..RUNS)
        .map(|_| {
            emu.running()
                .create_run(RunSpec {
                    log_rate: Some(0.0),
                    duration_ms: Some(600_000),
                    pending_ms: Some(0),
                    ..RunSpec::new("report-writer")
                })
                .unwrap()
        })
        .collect();
    let m = Mount::with(
        &emu,
        MountOpts {
            env: vec![("VM0FS_MAX_STREAMS", STREAMS.to_string())],
            ..MountOpts::default()
        },
    );
    let events = |id: &str| read(&m.join(&format!("runs/{id}/events.jsonl")));
    let emitted = |id: &str| -> Vec<u64> {
        emu.running()
            .run(id)
            .unwrap()
            .events
            .iter()
            .map(|e| e.sequence)
            .collect()
    };
    for id in &ids {
        events(id);
    }
    poll_until(Duration::from_secs(30), "the streams to open", || {
        emu.running().open_event_streams() >= STREAMS
    });
    for round in 0..ROUNDS {
        for id in &ids {
            emu.running()
                .append_output(id, "text", serde_json::json!({ "round": round }))
                .unwrap();
        }
        let started = std::time::Instant::now();
        // Every run, the ones waiting for a stream too, gets this round's event while the
        // test reads them (reading keeps them wanted).
        poll_every(
            Duration::from_millis(200),
            Duration::from_secs(60),
            "every run's events.jsonl to have the round's event",
            || {
                ids.iter()
                    .all(|id| output_sequences(&events(id)) == emitted(id))
            },
        );
        eprintln!(
            "round {round}: every run had its event after {:?}",
            started.elapsed()
        );
    }
    // The runs end; at most STREAMS of them have a stream now: the others end waiting.
    for (i, id) in ids.iter().enumerate() {
        let outcome = if i % 2 == 0 {
            Outcome::Failed
        } else {
            Outcome::Cancelled
        };
        emu.running().finish_run(id, Some(outcome), None).unwrap();
    }
    for id in &ids {
        poll_every(
            Duration::from_millis(200),
            Duration::from_secs(60),
            "the final events.jsonl",
            || events(id).contains("\"complete\""),
        );
        let text = events(id);
        let expected = emitted(id);
        assert_eq!(expected.len(), ROUNDS, "{id}");
        assert_eq!(output_sequences(&text), expected, "{id}: {text}");
    }
}
