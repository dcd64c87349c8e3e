//! Runs and agents through a real mount, with the real tools: `tail -f` of a live run,
//! final runs served from the cache after a restart with the API down, a run's `artifact/`
//! and `volumes/` compared with `tar -xzf` of the same archives, a 100,000-entry log,
//! unknown ids, request counts, and both shapes of the API.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::hostile::poll_until;
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
    assert_eq!(listed.lines().filter(|l| l.starts_with('d')).count(), 1_000);
    let requests = emu.counter("runs.list");
    assert!((1..=10).contains(&requests), "{requests}");
    // Only the demo's live run is asked for its detail (its status may have changed).
    assert!(emu.counter("runs.get") <= 1, "{}", emu.counter("runs.get"));
    ok(Command::new("ls").arg("-l").arg(m.join("runs")));
    assert_eq!(emu.counter("runs.list"), requests, "none within the TTL");
}
