//! The runs' and agents' trees with the API down (503, hung, or gone) through a real mount:
//! while a live run is tailed, every access answers or fails within the documented bound,
//! a waiting `cat` dies on SIGINT at once, a mount with `--threads 1` still answers its
//! status file and its cached content, the status file counts the run API's failures, and
//! after a restart with the API gone the agents (and each run's `agent` link) are served
//! from the cache directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use common::hostile::{poll_every, poll_until, RawMount};
use common::{wait_timeout, Emulator, Mount, MountOpts};
use vm0_emulator::{EmulatorConfig, RunSpec, Shape};

/// The documented bound of a wait for the API (`FIRST_FETCH_WAIT`, 10 s), and a second for
/// the rest of the access.
const BOUND: Duration = Duration::from_secs(11);
/// How soon a process waiting in the mount must be gone after SIGINT.
const SIGINT_DEADLINE: Duration = Duration::from_secs(1);
/// How long a hung request of the emulator stays hung: well past every bound checked.
const HANG_MS: u64 = 25_000;
/// A generous limit for what the API answers normally.
const SETTLE: Duration = Duration::from_secs(40);

fn demo() -> Emulator {
    Emulator::start(EmulatorConfig {
        demo: true,
        shape: Shape::Snake,
        ..EmulatorConfig::default()
    })
}

fn cmd(program: &str, args: &[&Path]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

fn text(out: &Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A live run of the demo's `report-writer` that logs 5 lines a second for 10 minutes.
fn live_run(emu: &Emulator) -> String {
    emu.running()
        .create_run(RunSpec {
            log_rate: Some(5.0),
            duration_ms: Some(600_000),
            pending_ms: Some(0),
            ..RunSpec::new("report-writer")
        })
        .unwrap()
}

/// Ids of finished runs of the API, never read through the mount by the test.
fn finished_runs(emu: &Emulator) -> Vec<String> {
    emu.api_get("/runs?limit=100")["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .filter(|id| emu.running().run(id).unwrap().status.is_final())
        .collect()
}

/// `tail -f` of a live run's logs, with what it printed so far in `out`.
fn tail_f(logs: &Path, out: &Path) -> Child {
    Command::new("tail")
        .args(["-n", "+1", "-f"])
        .arg(logs)
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The one-character state of process `pid` (`S`, `D`, `R`, ...), if it runs.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Start `cat` of `path`, wait until it is asleep in the mount (its request reached the
/// daemon and waits for the API: `request_count` went up), send it SIGINT, and check that
/// it is gone within [`SIGINT_DEADLINE`].
fn sigint_ends_a_waiting_cat(path: &Path, request_count: impl Fn() -> u64) {
    let before = request_count();
    let mut cat = Command::new("cat")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = cat.id();
    poll_until(SETTLE, "the cat to wait for the API", || {
        request_count() > before && matches!(proc_state(pid), Some('S' | 'D'))
    });
    assert_eq!(cat.try_wait().unwrap(), None, "cat ended before the signal");
    let sent = Instant::now();
    // SAFETY: kill(2) on our own child, which is not reaped yet.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
    let ended = wait_timeout(&mut cat, SIGINT_DEADLINE);
    if ended.is_none() {
        let _ = cat.kill();
        let _ = cat.wait();
        panic!("cat waited in the mount {SIGINT_DEADLINE:?} after SIGINT");
    }
    eprintln!("cat ended {:?} after SIGINT", sent.elapsed());
}

/// How the API goes away in [`outage_while_a_live_run_is_tailed`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outage {
    /// Every request answered 503.
    Unavailable,
    /// Every request held for [`HANG_MS`].
    Hung,
    /// The emulator stopped: connections refused.
    Gone,
}

/// A live run is tailed; the API goes away. Every access of the runs' tree answers or
/// fails within [`BOUND`] (the run tailed answers from what the mount holds), a `cat`
/// waiting for a run never fetched dies on SIGINT at once, and the `tail` goes on.
fn outage_while_a_live_run_is_tailed(outage: Outage) {
    let emu = demo();
    let id = live_run(&emu);
    let never_read = finished_runs(&emu);
    assert!(never_read.len() >= 3, "{never_read:?}");
    let m = Mount::new(&emu);
    let run = |p: &str| m.join(&format!("runs/{id}/{p}"));
    poll_until(SETTLE, "the live run's status", || {
        std::fs::read_to_string(run("status")).is_ok_and(|s| s == "running\n")
    });
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("tail.out");
    let mut tail = tail_f(&run("logs"), &out);
    poll_until(SETTLE, "lines in tail -f", || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.lines().count() >= 5)
    });
    // Known before the outage: the run's agent link.
    let agent = text(&common::run_within(
        BOUND,
        &mut cmd("readlink", &[&run("agent")]),
    ));

    let emu = match outage {
        Outage::Unavailable => {
            emu.fault(json!({"route": "*", "status": 503, "count": 0}));
            Some(emu)
        }
        Outage::Hung => {
            emu.fault(json!({"route": "*", "delay_ms": HANG_MS, "count": 0}));
            Some(emu)
        }
        Outage::Gone => {
            drop(emu);
            None
        }
    };

    // The live run tailed: answered from what the mount holds.
    let started = Instant::now();
    let status = text(&common::run_within(
        BOUND,
        &mut cmd("cat", &[&run("status")]),
    ));
    assert_eq!(status, "running\n");
    text(&common::run_within(
        BOUND,
        &mut cmd("ls", &[&m.join(&format!("runs/{id}"))]),
    ));
    text(&common::run_within(
        BOUND,
        &mut cmd("stat", &[&run("logs"), &run("run.json")]),
    ));
    text(&common::run_within(
        BOUND,
        &mut cmd("cat", &[&run("run.json")]),
    ));
    assert_eq!(
        text(&common::run_within(
            BOUND,
            &mut cmd("readlink", &[&run("agent")])
        )),
        agent
    );
    eprintln!(
        "{outage:?}: the tailed run answered in {:?}",
        started.elapsed()
    );

    // Runs never read: answered or failed within the bound, every time.
    for other in &never_read[..2] {
        for file in ["status", "logs"] {
            let path = m.join(&format!("runs/{other}/{file}"));
            let t = Instant::now();
            let out = common::run_within(BOUND, &mut cmd("cat", &[&path]));
            eprintln!(
                "{outage:?}: cat runs/{other}/{file}: {:?} in {:?}",
                out.status,
                t.elapsed()
            );
        }
    }
    common::run_within(BOUND, &mut cmd("ls", &[&m.join("runs")]));
    common::run_within(BOUND, &mut cmd("ls", &[&m.join("agents")]));

    // A cat waiting for a run never fetched ends at SIGINT. With the API gone or
    // failing fast there is no wait long enough to interrupt, so only a hung API tells.
    if outage == Outage::Hung {
        let emu = emu.as_ref().unwrap();
        let path = m.join(&format!("runs/{}/status", never_read[2]));
        sigint_ends_a_waiting_cat(&path, || emu.counter("runs.get"));
    }

    // The status file answers, and names the run API's failure.
    let status = text(&common::run_within(
        BOUND,
        &mut cmd("cat", &[&m.join(".vm0fs/status")]),
    ));
    if outage != Outage::Hung {
        assert!(status.contains("api: unreachable since"), "{status}");
        let errors = status
            .lines()
            .find_map(|l| l.split("errors since start: ").nth(1))
            .and_then(|n| n.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no error count in:\n{status}"));
        assert!(errors >= 1, "{status}");
        assert!(
            status.contains("run "),
            "the last error names a run:\n{status}"
        );
    }

    // tail -f is still there, and goes when asked.
    assert_eq!(tail.try_wait().unwrap(), None, "tail -f ended");
    // SAFETY: kill(2) on our own child, which is not reaped yet.
    assert_eq!(unsafe { libc::kill(tail.id() as i32, libc::SIGINT) }, 0);
    assert!(
        wait_timeout(&mut tail, SIGINT_DEADLINE).is_some(),
        "tail -f waited in the mount after SIGINT"
    );
    // Nothing is left inside the mount: it unmounts.
    m.unmount();
    drop(emu);
}

#[test]
fn a_503_api_while_a_live_run_is_tailed_is_answered_within_the_bound() {
    outage_while_a_live_run_is_tailed(Outage::Unavailable);
}

#[test]
fn a_hung_api_while_a_live_run_is_tailed_is_answered_within_the_bound() {
    outage_while_a_live_run_is_tailed(Outage::Hung);
}

#[test]
fn a_gone_api_while_a_live_run_is_tailed_is_answered_within_the_bound() {
    outage_while_a_live_run_is_tailed(Outage::Gone);
}

/// With one FUSE worker thread and the API hung, a `cat` waiting for a run never fetched
/// does not hold the worker: the status file and a cached file answer at once.
#[test]
fn threads_1_with_a_hung_api_answers_the_status_file_and_cached_content() {
    /// What "at once" allows here: the status file is made in memory and the file is in
    /// the cache; a worker held by the API would take the whole hang.
    const AT_ONCE: Duration = Duration::from_secs(1);
    let emu = demo();
    let never_read = finished_runs(&emu);
    let m = Mount::with(
        &emu,
        MountOpts {
            extra: vec!["--threads".into(), "1".into()],
            ..Default::default()
        },
    );
    // A file of a volume, read once so that it is in the cache.
    let volume = text(&common::run_within(
        SETTLE,
        &mut cmd("ls", &[&m.join("volumes")]),
    ))
    .lines()
    .next()
    .expect("the demo has volumes")
    .to_string();
    let found = text(&common::run_within(
        SETTLE,
        Command::new("find")
            .arg(m.join(&format!("volumes/{volume}/latest/")))
            .args(["-type", "f"]),
    ));
    let file = PathBuf::from(found.lines().next().expect("a file in the volume"));
    let content = common::run_within(SETTLE, &mut cmd("cat", &[&file])).stdout;

    emu.fault(json!({"route": "*", "delay_ms": HANG_MS, "count": 0}));
    let before = emu.counter("runs.get");
    let mut waiting: Vec<Child> = never_read[..3]
        .iter()
        .map(|id| {
            Command::new("cat")
                .arg(m.join(&format!("runs/{id}/status")))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    poll_until(SETTLE, "the cats to wait for the API", || {
        emu.counter("runs.get") > before
    });
    for _ in 0..3 {
        let t = Instant::now();
        let status = text(&common::run_within(
            AT_ONCE,
            &mut cmd("cat", &[&m.join(".vm0fs/status")]),
        ));
        assert!(status.contains("vm0fs"), "{status}");
        let again = common::run_within(AT_ONCE, &mut cmd("cat", &[&file]));
        assert_eq!(again.stdout, content);
        eprintln!("status file and cached file in {:?}", t.elapsed());
    }
    for c in &mut waiting {
        // SAFETY: kill(2) on our own child, which is not reaped yet.
        assert_eq!(unsafe { libc::kill(c.id() as i32, libc::SIGINT) }, 0);
        assert!(
            wait_timeout(c, SIGINT_DEADLINE).is_some(),
            "a waiting cat outlived SIGINT"
        );
    }
    m.unmount();
}

/// The agents as the API lists them: name -> (id, updated_at).
fn api_agents(emu: &Emulator) -> Vec<(String, String, String)> {
    let mut agents: Vec<(String, String, String)> = emu.api_get("/agents?limit=100")["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["id"].as_str().unwrap().to_string(),
                a["updated_at"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    agents.sort();
    agents
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// The agents' listing and each agent's files are saved in the cache directory: after a
/// restart with the API gone, `ls agents`, each agent's files (dated from the agent's
/// `updated_at`, not from the fetch) and each final run's `agent` link serve from disk.
#[test]
fn agents_and_agent_links_serve_from_disk_after_a_restart_with_the_api_down() {
    let emu = demo();
    let agents = api_agents(&emu);
    assert!(agents.len() >= 2, "{agents:?}");
    let finished = finished_runs(&emu);
    let runs: Vec<String> = finished.iter().take(4).cloned().collect();
    let never_read = finished.last().unwrap().clone();
    assert!(!runs.contains(&never_read));
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let read_all = |m: &Mount| -> Vec<(String, Vec<u8>, Vec<u8>, SystemTime)> {
        let listed = text(&common::run_within(
            BOUND,
            &mut cmd("ls", &[&m.join("agents")]),
        ));
        let names: Vec<&str> = listed.lines().collect();
        let mut expected: Vec<&str> = agents.iter().map(|a| a.0.as_str()).collect();
        expected.sort();
        assert_eq!(names, expected);
        agents
            .iter()
            .map(|(name, _, _)| {
                let json = m.join(&format!("agents/{name}/agent.json"));
                let versions = m.join(&format!("agents/{name}/versions.json"));
                let a = common::run_within(BOUND, &mut cmd("cat", &[&json]));
                let v = common::run_within(BOUND, &mut cmd("cat", &[&versions]));
                assert!(a.status.success() && v.status.success(), "{a:?} {v:?}");
                assert_eq!(mtime(&json), mtime(&versions));
                (name.clone(), a.stdout, v.stdout, mtime(&json))
            })
            .collect()
    };
    let links = |m: &Mount| -> Vec<(String, String)> {
        runs.iter()
            .map(|id| {
                let link = m.join(&format!("runs/{id}/agent"));
                let target = text(&common::run_within(BOUND, &mut cmd("readlink", &[&link])));
                // The link resolves: the agent's directory lists.
                let inside = text(&common::run_within(
                    BOUND,
                    &mut cmd("ls", &[&link.join("")]),
                ));
                assert!(inside.contains("agent.json"), "{id}: {inside}");
                (id.clone(), target)
            })
            .collect()
    };
    let m = Mount::with(
        &emu,
        MountOpts {
            cache: Some(cache.clone()),
            ..Default::default()
        },
    );
    let before = read_all(&m);
    let links_before = links(&m);
    // Reading a run's log keeps its files (its `status` alone is made from its detail).
    for id in &runs {
        common::run_within(
            BOUND,
            &mut cmd("cat", &[&m.join(&format!("runs/{id}/logs"))]),
        );
    }
    m.unmount();
    // mtimes are the agents' updated_at, as the API gives it.
    for ((name, _, _, t), (_, _, updated)) in before.iter().zip(&agents) {
        let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        let parsed =
            time::OffsetDateTime::parse(updated, &time::format_description::well_known::Rfc3339)
                .unwrap();
        assert_eq!(
            since.as_secs() as i64,
            parsed.unix_timestamp(),
            "{name}: mtime {since:?}, updated_at {updated}"
        );
    }

    let (api_url, token) = (emu.api_url.clone(), emu.token.clone());
    drop(emu); // Connections are refused from now on.
    let args: Vec<String> = vec![
        "--api-url".into(),
        api_url,
        "--cache-dir".into(),
        cache.display().to_string(),
    ];
    let m = RawMount::start(&args, &[("VM0_TOKEN", &token), ("RUST_LOG", "vm0fs=debug")])
        .expect("a mount with saved listings starts without the API");
    for _ in 0..2 {
        let t = Instant::now();
        assert_eq!(read_all(&m), before);
        assert_eq!(links(&m), links_before);
        eprintln!("offline agents and links in {:?}", t.elapsed());
        // A run never fetched fails within the bound, every time.
        let path = m.join(&format!("runs/{never_read}/status"));
        let t = Instant::now();
        let out = common::run_within(BOUND, &mut cmd("cat", &[&path]));
        assert!(!out.status.success(), "{out:?}");
        eprintln!("a run never fetched: {:?} in {:?}", out.status, t.elapsed());
    }
    let saved = std::fs::read_dir(cache.join("listings/documents"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect::<Vec<_>>();
    for p in &saved {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
        let v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        assert!(v["format"].is_u64(), "{}", p.display());
    }
    assert_eq!(saved.len(), agents.len() + 1, "{saved:?}");
    m.unmount();
}

/// The age in seconds that the status file gives `name` on its `listings:` line (`volumes 4
/// s old`), if it gives one in seconds.
fn listing_age(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("listings: "))?;
    line.split(", ")
        .find_map(|item| {
            item.strip_prefix(&format!("{name} "))?
                .strip_suffix(" s old")
        })?
        .parse()
        .ok()
}

/// How many live runs the status file says are followed, and the age in seconds of the
/// least recently refreshed (`live runs followed: 1, the least recently refreshed 3 s ago`).
fn followed_age(status: &str) -> Option<(u64, u64)> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("live runs followed: "))?;
    let (count, rest) = line.split_once(", the least recently refreshed ")?;
    let age = rest.strip_suffix(" s ago")?;
    Some((count.parse().ok()?, age.parse().ok()?))
}

/// The status file gives the age of each listing held and of the followed live run: with
/// the API answering 503, the ages grow past the listing TTL (1 s here), as long as the
/// test waits; once the API answers again, the next refresh starts them again from zero.
#[test]
fn the_status_file_gives_the_age_of_what_is_served_and_it_grows_in_an_outage() {
    /// The ages looked for: well past the TTL.
    const PAST_TTL: u64 = 4;
    const LISTINGS: [&str; 4] = ["volumes", "artifacts", "runs", "agents"];
    let emu = demo();
    let id = live_run(&emu);
    // Before the mount: it fetches its first listing as it starts.
    let before_reads = Instant::now();
    let m = Mount::with(
        &emu,
        MountOpts {
            extra: vec!["--metadata-ttl".into(), "1".into()],
            ..Default::default()
        },
    );
    let status = || {
        text(&common::run_within(
            BOUND,
            &mut cmd("cat", &[&m.join(".vm0fs/status")]),
        ))
    };
    let run_logs = m.join(&format!("runs/{id}/logs"));
    // Every listing asked (a stale one starts its refresh), the live run read (followed).
    let read_all = || {
        for dir in LISTINGS {
            common::run_within(BOUND, &mut cmd("ls", &[&m.join(dir)]));
        }
        common::run_within(BOUND, &mut cmd("cat", &[&run_logs]));
    };
    read_all();
    poll_until(SETTLE, "every listing held and the run followed", || {
        read_all();
        let s = status();
        LISTINGS.iter().all(|l| listing_age(&s, l).is_some())
            && followed_age(&s).is_some_and(|(n, _)| n == 1)
    });

    emu.fault(json!({"route": "*", "status": 503, "count": 0}));
    let outage = Instant::now();
    let mut last = String::new();
    poll_every(
        Duration::from_millis(250),
        SETTLE,
        "the ages to grow past the TTL, the API known to fail",
        || {
            read_all();
            let asked = Instant::now();
            last = status();
            let answered = Instant::now();
            let ages: Vec<u64> = LISTINGS
                .iter()
                .map(|l| listing_age(&last, l).unwrap_or_else(|| panic!("{l}:\n{last}")))
                .collect();
            let (followed, run_age) =
                followed_age(&last).unwrap_or_else(|| panic!("no followed run:\n{last}"));
            assert_eq!(followed, 1, "{last}");
            // Each was last confirmed between the first reads and the outage: its age is
            // at most the time since the first, and about at least the time since the other.
            let upper = answered.duration_since(before_reads).as_secs();
            let lower = asked.duration_since(outage).as_secs();
            for (name, age) in LISTINGS.iter().zip(&ages).chain([(&"run", &run_age)]) {
                assert!(
                    *age <= upper && age + 1 >= lower,
                    "{name}: {age} s old, not within [{lower} - 1, {upper}]:\n{last}"
                );
            }
            // Also once the failures are known (the status file says so): they leave every
            // age growing.
            let grown = ages.iter().all(|&a| a >= PAST_TTL) && run_age >= PAST_TTL;
            grown && last.contains("api: unreachable since")
        },
    );
    eprintln!("during the outage, after {:?}:\n{last}", outage.elapsed());

    emu.clear_faults();
    let back = Instant::now();
    poll_every(
        Duration::from_millis(250),
        SETTLE,
        "the ages to start again",
        || {
            read_all();
            last = status();
            let since_back = back.elapsed().as_secs();
            LISTINGS
                .iter()
                .all(|l| listing_age(&last, l).is_some_and(|a| a <= since_back))
                && followed_age(&last).is_some_and(|(n, a)| n == 1 && a <= since_back)
        },
    );
    assert!(last.contains("api: reachable"), "{last}");
    m.unmount();
}
