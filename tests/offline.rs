//! A mount without its API, through real mounts: an API that fails, hangs or is gone is
//! answered from what the mount holds (listings in memory, listings saved by an earlier
//! mount, cached versions), never by waiting for the API; a mount starts offline from a
//! filled cache and recovers by itself; only a refused token stops it.
//!
//! Every access that could hang runs as a child process with a deadline far above what
//! it needs, so that a hang fails the test instead of holding the suite.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use common::hostile::{is_cached, log_when, poll_until, RawMount};
use common::{put_archive, seeded_archive, Emulator, Mount};
use vm0_emulator::EmulatorConfig;

/// Generous bound for any single access: far above what an answer from the cache takes,
/// far below the minutes a hung API holds a request.
const DEADLINE: Duration = Duration::from_secs(40);

/// A small archive: `a.txt` says `archive <seed>`.
fn archive(seed: u64) -> Vec<u8> {
    seeded_archive(seed, None)
}

/// A data directory with artifacts `art-<i>` (one version each).
fn data(n: u64) -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    for i in 0..n {
        put_archive(
            data.path(),
            "artifacts",
            &format!("art-{i}"),
            "v1",
            &archive(i),
        );
    }
    data
}

fn emulator_at(data: &Path, listen: Option<SocketAddr>) -> Emulator {
    let mut cfg = EmulatorConfig {
        data_dirs: vec![data.to_path_buf()],
        ..EmulatorConfig::default()
    };
    if let Some(addr) = listen {
        cfg.listen = addr;
    }
    Emulator::start(cfg)
}

/// The address of the emulator's API listener.
fn api_addr(emu: &Emulator) -> SocketAddr {
    let rest = emu.api_url.strip_prefix("http://").unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

/// Run `cmd` within the deadline; it must succeed. Its stdout.
fn answers(cmd: &mut Command) -> String {
    let out = common::run_within(DEADLINE, cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cmd(program: &str, arg: PathBuf) -> Command {
    let mut c = Command::new(program);
    c.arg(arg);
    c
}

fn mount_with(emu: &Emulator, cache: &Path, extra: &[&str]) -> Mount {
    mount_at(&emu.api_url, &emu.token, cache, extra).unwrap_or_else(|e| panic!("{e}"))
}

/// A mount of the API at `api_url` (which may be down), or the daemon's output if it
/// exits before the mount answers.
fn mount_at(api_url: &str, token: &str, cache: &Path, extra: &[&str]) -> Result<Mount, String> {
    let mut args: Vec<String> = vec![
        "--api-url".into(),
        api_url.into(),
        "--cache-dir".into(),
        cache.display().to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    RawMount::start(&args, &[("VM0_TOKEN", token), ("RUST_LOG", "vm0fs=debug")])
}

/// Fill the mount's listings and cache: `art-0`'s current version read by its full id
/// (and complete in the cache), `art-0`'s versions listed. Returns that version's id.
fn warm(m: &Mount, emu: &Emulator) -> String {
    let id = emu.current_version("artifacts", "art-0");
    answers(&mut cmd("ls", m.join("artifacts")));
    answers(&mut cmd("ls", m.join("artifacts/art-0")));
    let text = answers(&mut cmd(
        "cat",
        m.join(&format!("artifacts/art-0/{id}/a.txt")),
    ));
    assert_eq!(text, "archive 0\n");
    poll_until(DEADLINE, "the version to be cached", || {
        is_cached(&m.cache, &id)
    });
    id
}

/// The accesses that must be answered from what the mount holds, each a child process:
/// a listing of storages, `latest`, a cached file by its version's full id.
fn held_accesses(m: &Mount, id: &str) {
    let listed = answers(&mut cmd("ls", m.join("artifacts")));
    assert!(listed.contains("art-0"), "{listed}");
    let latest = answers(&mut cmd("readlink", m.join("artifacts/art-0/latest")));
    assert_eq!(latest.trim(), id);
    let text = answers(&mut cmd(
        "cat",
        m.join(&format!("artifacts/art-0/{id}/a.txt")),
    ));
    assert_eq!(text, "archive 0\n");
}

/// (a) With the API up but failing every request, past the metadata TTL (0 here: every
/// access finds its listing stale), accesses are answered from what the mount holds. They
/// do not each wait for a refresh that fails: one refresh at a time runs in the
/// background per listing, and its failure is remembered for a backoff, so the requests
/// the API sees are far fewer than the accesses (each access used to run a whole retry
/// cycle: six requests, seconds), and nothing asks for an archive.
#[test]
fn a_failing_api_is_answered_from_the_listings_held_without_waiting() {
    let data = data(2);
    let emu = emulator_at(data.path(), None);
    let cache = tempfile::tempdir().unwrap();
    let m = mount_with(&emu, cache.path(), &["--metadata-ttl", "0"]);
    let id = warm(&m, &emu);

    emu.fault(json!({"route": "*", "status": 503, "count": 0}));
    emu.reset_counters();
    let rounds = 20;
    for _ in 0..rounds {
        held_accesses(&m, &id);
    }
    // Each access used to cost a whole retry cycle (6 requests); now the requests are
    // those of the few refreshes that ran meanwhile, far fewer than the accesses.
    let accesses = 3 * rounds;
    let counters = emu.counters();
    let listings: u64 = ["artifacts.list", "artifacts.versions", "volumes.list"]
        .iter()
        .map(|k| counters[*k].as_u64().unwrap_or(0))
        .sum();
    assert!(
        listings < accesses,
        "{accesses} accesses caused {listings} listing requests: {counters}"
    );
    assert_eq!(
        counters["artifacts.download"].as_u64().unwrap_or(0)
            + counters["store.get"].as_u64().unwrap_or(0),
        0,
        "{counters}"
    );
    log_when(&m, "the failed refresh", |log| {
        log.contains("serving the previous")
    });
}

/// (b) With the API hanging (its port accepts connections and never answers, as a stopped
/// process does), accesses are answered from what the mount holds at once, and an access
/// that needs a listing never fetched gets ETIMEDOUT once the fetch has run for the bound,
/// instead of waiting minutes.
#[test]
fn a_hung_api_holds_no_access() {
    let data = data(2);
    let emu = emulator_at(data.path(), None);
    let cache = tempfile::tempdir().unwrap();
    let m = mount_with(&emu, cache.path(), &["--metadata-ttl", "0"]);
    let id = warm(&m, &emu);

    let addr = api_addr(&emu);
    drop(emu);
    // The kernel completes connections to a listener that never accepts: requests hang.
    let _hung = TcpListener::bind(addr).expect("take over the API's port");
    for _ in 0..3 {
        held_accesses(&m, &id);
    }
    // art-1's versions were never listed: nothing to answer from.
    let out = common::run_within(DEADLINE, &mut cmd("ls", m.join("artifacts/art-1")));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("timed out"), "ETIMEDOUT expected: {err}");
}

/// (c) A mount restarted while the API is down starts from the listings the earlier mount
/// saved (with a warning), serves the cached version by id and through `latest`, fails
/// cleanly for what is not cached, and recovers by itself once the API is back: a storage
/// made meanwhile appears.
#[test]
fn a_restart_with_the_api_down_serves_the_cache_and_recovers() {
    let data = data(2);
    let emu = emulator_at(data.path(), None);
    let cache = tempfile::tempdir().unwrap();
    let m = mount_with(&emu, cache.path(), &["--metadata-ttl", "1"]);
    let id = warm(&m, &emu);
    let art1 = emu.current_version("artifacts", "art-1");
    m.unmount();

    let (api_url, token) = (emu.api_url.clone(), emu.token.clone());
    let addr = api_addr(&emu);
    drop(emu); // Connections are refused from now on.
    let m = mount_at(&api_url, &token, cache.path(), &["--metadata-ttl", "1"])
        .expect("a mount with saved listings starts without the API");
    log_when(&m, "the offline warning", |log| {
        log.lines().any(|l| {
            l.contains("WARN")
                && l.contains("the API is unreachable")
                && l.contains("serving 1 cached versions from")
                && l.contains("will retry")
        })
    });
    held_accesses(&m, &id);
    let text = answers(&mut cmd("cat", m.join("artifacts/art-0/latest/a.txt")));
    assert_eq!(text, "archive 0\n");
    // Not cached: a clean error.
    let out = common::run_within(
        DEADLINE,
        &mut cmd("cat", m.join(&format!("artifacts/art-1/{art1}/a.txt"))),
    );
    assert!(!out.status.success(), "art-1 is not cached");
    let status = answers(&mut cmd("cat", m.join(".vm0fs/status")));
    assert!(status.contains("api: unreachable since"), "{status}");

    // The API is back, on the same address, with a new storage.
    put_archive(data.path(), "artifacts", "art-new", "v1", &archive(9));
    let _emu = emulator_at(data.path(), Some(addr));
    poll_until(
        Duration::from_secs(120),
        "the new storage to appear",
        || {
            common::run_within(DEADLINE, &mut cmd("ls", m.join("artifacts")))
                .stdout
                .windows(7)
                .any(|w| w == b"art-new")
        },
    );
    // What failed while the API was away is fetched again once it answers (a fetch that
    // began while it was away may still be in its retries: its callers get ETIMEDOUT
    // until it ends, so poll).
    poll_until(Duration::from_secs(120), "art-1 to be served", || {
        let out = common::run_within(
            DEADLINE,
            &mut cmd("cat", m.join(&format!("artifacts/art-1/{art1}/a.txt"))),
        );
        out.status.success() && out.stdout == b"archive 1\n"
    });
}

/// (d) A refused token stops a mount even when an earlier mount saved its listings: only
/// an API that cannot be reached is done without.
#[test]
fn a_refused_token_stops_a_mount_even_with_saved_listings() {
    let data = data(1);
    let emu = emulator_at(data.path(), None);
    let cache = tempfile::tempdir().unwrap();
    let m = mount_with(&emu, cache.path(), &[]);
    warm(&m, &emu);
    m.unmount();
    let err = mount_at(&emu.api_url, "vm0_live_bad", cache.path(), &[])
        .err()
        .expect("a refused token stops the mount");
    assert!(
        err.contains("rejected the token") && err.contains("VM0_TOKEN"),
        "{err}"
    );
}

/// (e) The status file says whether the API answers: when it last did, and since when it
/// does not and why, with a hint that names the setting the URL came from.
#[test]
fn the_status_file_says_whether_the_api_answers() {
    let data = data(1);
    let emu = emulator_at(data.path(), None);
    let cache = tempfile::tempdir().unwrap();
    let m = mount_with(&emu, cache.path(), &["--metadata-ttl", "0"]);
    let status = answers(&mut cmd("cat", m.join(".vm0fs/status")));
    assert!(status.contains("api: reachable, last answer"), "{status}");

    drop(emu); // Connections are refused from now on.
    answers(&mut cmd("ls", m.join("volumes"))); // starts a refresh, which fails
    poll_until(DEADLINE, "the status to say the API is unreachable", || {
        let status = answers(&mut cmd("cat", m.join(".vm0fs/status")));
        status.lines().any(|l| {
            l.starts_with("api: unreachable since ")
                && l.contains("Connection refused")
                // The mount was given --api-url: the hint names it.
                && l.contains("check --api-url and the network")
                && l.ends_with("serving cached listings")
        }) && status.contains("api: last answer ")
    });
}

/// (f) The first listing is retried like any request (three 502s in a row no longer stop
/// the mount), and it is the filesystem's first listing: not fetched a second time.
#[test]
fn the_first_listing_is_retried_and_kept() {
    let data = data(1);
    let emu = emulator_at(data.path(), None);
    emu.fault(json!({"route": "volumes.list", "status": 502, "count": 3}));
    let cache = tempfile::tempdir().unwrap();
    let m = mount_with(&emu, cache.path(), &[]);
    assert_eq!(emu.counter("volumes.list"), 4, "{}", emu.counters());
    answers(&mut cmd("ls", m.join("volumes")));
    answers(&mut cmd("ls", m.join("artifacts")));
    assert_eq!(
        emu.counter("volumes.list"),
        4,
        "the startup listing serves: {}",
        emu.counters()
    );
}

/// A name in a storage's directory that is not a version says why in the log, at INFO,
/// once per name and minute: an ENOENT alone does not tell a mistyped id from a short one.
#[test]
fn a_name_that_is_not_a_version_is_explained_in_the_log() {
    let data = data(1);
    let emu = emulator_at(data.path(), None);
    let cache = tempfile::tempdir().unwrap();
    let m = mount_with(&emu, cache.path(), &[]);
    let names = [
        ("abc123", "too short (prefix needs 8 hex characters)"),
        ("ABCDEF12", "not lowercase hex"),
        ("deadbeef00", "no such version"),
    ];
    for _ in 0..2 {
        for (name, _) in names {
            let err = std::fs::metadata(m.join(&format!("artifacts/art-0/{name}"))).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{name}");
        }
    }
    let log = log_when(&m, "the reasons", |log| {
        names.iter().all(|(name, why)| {
            log.lines().any(|l| {
                l.contains(" INFO ")
                    && l.contains(&format!("{name:?} not found in artifact art-0: {why}"))
            })
        })
    });
    for (name, _) in names {
        let lines = log
            .lines()
            .filter(|l| l.contains(&format!("{name:?} not found")))
            .count();
        assert_eq!(lines, 1, "once per name and minute: {log}");
    }
}

/// `df` answers "how much more can be cached": the size is the cache budget, "used" what
/// the cache holds, and "available" the rest.
#[test]
fn df_shows_the_cache_budget_its_use_and_the_rest() {
    let data = data(1);
    let emu = emulator_at(data.path(), None);
    let cache = tempfile::tempdir().unwrap();
    let m = mount_with(&emu, cache.path(), &["--cache-size", "64M"]);
    warm(&m, &emu);
    // The cache's use: what each complete version's record says it takes on disk.
    let used: u64 = std::fs::read_dir(cache.path().join("versions"))
        .unwrap()
        .map(|e| {
            let meta = std::fs::read(e.unwrap().path().join("meta.json")).unwrap();
            let meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
            meta["disk_bytes"].as_u64().unwrap()
        })
        .sum();
    assert!(used > 0);
    let out = answers(
        Command::new("df")
            .args(["--output=size,used,avail", "-B1"])
            .arg(m.path()),
    );
    let figures: Vec<u64> = out
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let budget = 64 << 20;
    let used_blocks = used.div_ceil(4096) * 4096;
    assert_eq!(
        figures,
        [budget, used_blocks, budget - used_blocks],
        "size, used, available: {out}"
    );
}
