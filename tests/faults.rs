//! A failing server through real mounts: the emulator's fault rules (`/_emulator/faults`)
//! make the API and the object store answer 500 and 429, cut connections, serve slowly,
//! expire download URLs, stay down, or refuse a revoked token, and the mount must cope:
//! transient failures are retried invisibly, lasting ones are a clear error in bounded
//! time, and the mount stays up and recovers.
//!
//! A mount retries with `RetryPolicy::default()` (200 ms doubling backoff, for 30 s after
//! the first failure), which bounds how long each test waits. A failed download is
//! remembered for `cache::FAILURE_MEMORY` (10 s): a test that makes the server good again
//! reads until the failure is forgotten.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use common::hostile::{is_cached, log_when, poll_until, read_within, tmp_entries, within, Sandbox};
use common::{a_txt, ok, put_archive, seeded_archive, tar_extract, Emulator, Mount, MountOpts};
use vm0_emulator::pack::{pattern, ArchiveBuilder};
use vm0_emulator::sha256_hex;

/// Generous bound for any single operation on the mount.
const DEADLINE: Duration = Duration::from_secs(60);

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// A small archive, distinct per `seed`: `a.txt` says `archive <seed>`.
fn small_archive(seed: u64) -> Vec<u8> {
    seeded_archive(seed, Some(("b.bin", 50_000)))
}

/// An emulator serving artifacts `art-<i>` (one version each, `small_archive(i)`) and the
/// extra archives given.
fn emulator(n: u64, extra: &[(&str, &str, &[u8])]) -> (tempfile::TempDir, Emulator) {
    let data = tempfile::tempdir().unwrap();
    for i in 0..n {
        put_archive(
            data.path(),
            "artifacts",
            &format!("art-{i}"),
            "v1",
            &small_archive(i),
        );
    }
    for (name, label, bytes) in extra {
        put_archive(data.path(), "artifacts", name, label, bytes);
    }
    let emu = Emulator::with_data(data.path());
    (data, emu)
}

/// Read `path` once the failure of its version is no longer remembered (a failed download
/// answers the same error, without a new download, for `cache::FAILURE_MEMORY`).
fn read_once_remembered(path: &std::path::Path) -> Vec<u8> {
    let mut got = None;
    poll_until(DEADLINE, "the read to succeed", || {
        got = read_within(DEADLINE, path).ok();
        got.is_some()
    });
    got.unwrap()
}

fn art(m: &Mount, i: u64) -> std::path::PathBuf {
    m.join(&format!("artifacts/art-{i}/latest/a.txt"))
}

#[test]
fn errors_500_and_429_on_the_api_and_the_store_are_retried_until_the_read_succeeds() {
    let (_data, emu) = emulator(3, &[]);
    let m = Mount::new(&emu);
    // Names and versions are listed before the faults, so that only the download is hit.
    ok(Command::new("ls")
        .arg(m.join("artifacts/art-0"))
        .arg(m.join("artifacts/art-1"))
        .arg(m.join("artifacts/art-2")));
    emu.reset_counters();

    // The API's download endpoint: two 500s (one with a proxy's HTML page), then fine.
    emu.fault(json!({"route": "artifacts.download", "status": 500, "count": 1}));
    emu.fault(json!({"route": "artifacts.download", "status": 502, "body": "<html>bad gateway</html>", "count": 1}));
    assert_eq!(read_within(DEADLINE, &art(&m, 0)).unwrap(), a_txt(0));
    assert_eq!(emu.counter("artifacts.download"), 3, "{}", emu.counters());

    // The object store: two 503s and a 500.
    emu.reset_counters();
    emu.fault(json!({"route": "store.get", "status": 503, "retry_after": 0, "count": 2}));
    emu.fault(json!({"route": "store.get", "status": 500, "count": 1}));
    assert_eq!(read_within(DEADLINE, &art(&m, 1)).unwrap(), a_txt(1));
    assert_eq!(emu.counter("store.get"), 4, "{}", emu.counters());

    // 429 with Retry-After on both: the client waits as asked, then succeeds.
    emu.reset_counters();
    emu.fault(json!({"route": "artifacts.download", "status": 429, "retry_after": 1, "count": 1}));
    emu.fault(json!({"route": "store.get", "status": 429, "retry_after": 1, "count": 1}));
    let started = Instant::now();
    assert_eq!(read_within(DEADLINE, &art(&m, 2)).unwrap(), a_txt(2));
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After was not honoured"
    );
    assert_eq!(emu.counter("artifacts.download"), 2, "{}", emu.counters());
    assert_eq!(emu.counter("store.get"), 2, "{}", emu.counters());

    // Each retry is in the log with its status.
    let log = log_when(&m, "the retries", |log| {
        ["500", "502", "503", "429"]
            .iter()
            .all(|s| log.lines().any(|l| l.contains("retrying") && l.contains(s)))
    });
    assert!(
        !log.contains("could not fetch"),
        "a retried failure was reported as final:\n{log}"
    );
}

#[test]
fn a_connection_cut_in_the_middle_of_an_archive_is_resumed_and_the_content_is_exact() {
    // Several MiB of incompressible content, so the cuts land inside file data.
    let mut b = ArchiveBuilder::new();
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                format!("part-{i}.bin"),
                pattern(1 << 20 | (i * 4099), 100 + i as u64),
            )
        })
        .collect();
    for (name, data) in &files {
        b.file(name, 0o644, 1_700_000_000, data);
    }
    b.file("small.txt", 0o644, 1_700_000_000, b"small\n");
    let archive = b.finish();
    assert!(archive.len() > 6 << 20);
    let (data, emu) = emulator(0, &[("big", "v1", &archive)]);
    let m = Mount::new(&emu);
    let id = emu.current_version("artifacts", "big");
    ok(Command::new("ls").arg(m.join("artifacts/big")));
    emu.reset_counters();
    // The first answer and the first resumed one are both cut after ~1.5 MB.
    emu.fault(json!({"route": "store.get", "cut_after_bytes": 1_500_000, "count": 2}));

    let version = m.join(&format!("artifacts/big/{id}"));
    let expected = tar_extract(&data.path().join("artifacts/big/v1.tar.gz"));
    for (name, want) in &files {
        let got = read_within(DEADLINE, &version.join(name)).unwrap();
        let from_tar = std::fs::read(expected.path().join(name)).unwrap();
        assert_eq!(sha256_hex(&got), sha256_hex(want), "{name}");
        assert_eq!(
            sha256_hex(&got),
            sha256_hex(&from_tar),
            "{name} against tar -xzf"
        );
    }
    assert_eq!(
        std::fs::read(version.join("small.txt")).unwrap(),
        b"small\n"
    );
    // One download, resumed twice: three requests of the store, one URL.
    assert_eq!(
        emu.counter(&format!("store.get:{id}")),
        3,
        "{}",
        emu.counters()
    );
    assert_eq!(emu.counter("artifacts.download"), 1, "{}", emu.counters());
    let log = log_when(&m, "the resumes", |log| {
        log.matches("resuming with a Range request").count() >= 2
    });
    assert!(!log.contains("could not fetch"), "{log}");
}

/// The emulator's URL expiry is checked after a fault's delay, so a delay longer than the
/// URL's lifetime makes exactly that request find its URL expired (403), whatever the
/// clock. (`url_ttl_secs: 0` alone would expire every URL, the fresh ones too: the client
/// can then never succeed, which `a_url_that_is_always_expired_fails_in_bounded_time`
/// checks.)
#[test]
fn an_expired_download_url_is_replaced_by_a_fresh_one() {
    let (_data, emu) = emulator(1, &[]);
    let m = Mount::new(&emu);
    ok(Command::new("ls").arg(m.join("artifacts/art-0")));
    emu.config(json!({"url_ttl_secs": 1}));
    emu.reset_counters();
    emu.fault(json!({"route": "store.get", "delay_ms": 2100, "count": 1}));
    assert_eq!(read_within(DEADLINE, &art(&m, 0)).unwrap(), a_txt(0));
    let downloads = emu.counter("artifacts.download");
    assert!(
        downloads >= 2,
        "the client did not ask for a fresh URL: {}",
        emu.counters()
    );
    assert!(emu.counter("store.get") >= 2, "{}", emu.counters());
    log_when(&m, "the refresh", |log| {
        log.contains("asking the API for a fresh one")
    });
}

#[test]
fn a_url_that_is_always_expired_fails_in_bounded_time() {
    let (_data, emu) = emulator(2, &[]);
    let sb = Sandbox::new();
    let m = Mount::with(&emu, sb.opts());
    ok(Command::new("ls").arg(m.join("artifacts/art-0")));
    emu.config(json!({"url_ttl_secs": 0}));
    emu.reset_counters();
    let err = read_within(DEADLINE, &art(&m, 0)).expect_err("every URL is expired");
    assert_eq!(errno(&err), libc::EIO, "{err}");
    let downloads = emu.counter("artifacts.download");
    assert!(
        (2..=10).contains(&downloads),
        "fresh URLs asked: {downloads}"
    );
    let id = emu.current_version("artifacts", "art-0");
    log_when(&m, "the failure", |log| {
        log.lines()
            .any(|l| l.contains(&id) && l.contains("refused the download URL"))
    });
    assert!(!is_cached(&sb.cache, &id) && tmp_entries(&sb.cache).is_empty());
    // Valid URLs again: the same version reads, once its failure is no longer remembered.
    emu.config(json!({"url_ttl_secs": 3600}));
    assert_eq!(read_once_remembered(&art(&m, 0)), a_txt(0));
}

#[test]
fn a_slow_download_does_not_hold_up_other_versions() {
    let data = tempfile::tempdir().unwrap();
    put_archive(data.path(), "artifacts", "slow", "v1", &small_archive(10));
    put_archive(data.path(), "artifacts", "slow", "v2", &small_archive(11));
    put_archive(data.path(), "artifacts", "fast", "v1", &small_archive(12));
    let emu = Emulator::with_data(data.path());
    let m = Mount::new(&emu);
    let versions = emu.versions("artifacts", "slow");
    let (slow_id, sibling_id) = (versions[0].clone(), versions[1].clone());
    ok(Command::new("ls")
        .arg(m.join("artifacts/slow"))
        .arg(m.join("artifacts/fast")));
    emu.reset_counters();
    emu.fault(json!({"route": "store.get", "version": slow_id, "delay_ms": 15_000, "count": 1}));

    let slow_path = m.join(&format!("artifacts/slow/{slow_id}/a.txt"));
    let slow = std::thread::spawn(move || std::fs::read(slow_path));
    // The slow request has reached the store (and sleeps there).
    poll_until(DEADLINE, "the slow download to start", || {
        emu.counter(&format!("store.get:{slow_id}")) == 1
    });

    // Meanwhile: another version of the same storage, another storage, the listings.
    let sibling = read_within(
        DEADLINE,
        &m.join(&format!("artifacts/slow/{sibling_id}/a.txt")),
    )
    .unwrap();
    let fast = read_within(DEADLINE, &m.join("artifacts/fast/latest/a.txt")).unwrap();
    ok(Command::new("ls")
        .arg("-l")
        .arg(m.join("artifacts"))
        .arg(m.join("artifacts/slow")));
    assert!(
        !slow.is_finished(),
        "the slow read finished before the others: the test proves nothing"
    );
    // Versions are listed newest first: the slow one is label v2, its sibling v1.
    assert_eq!(sibling, a_txt(10));
    assert_eq!(fast, a_txt(12));

    // The slow one completes, correctly.
    let deadline = Instant::now() + DEADLINE;
    while !slow.is_finished() {
        assert!(Instant::now() < deadline, "the slow read never finished");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        slow.join().unwrap().expect("the slow read succeeds"),
        a_txt(11)
    );
}

/// A cold version while every request fails: EIO about 30 s after the failures began (the
/// retry budget, counted from the first failure), not after 6 tries in 6 s, and not never.
/// The listings are fresh (the default TTL), so only the download meets the failures.
#[test]
fn a_server_that_stays_down_gives_eio_in_bounded_time_and_the_mount_recovers() {
    let (_data, emu) = emulator(3, &[]);
    let sb = Sandbox::new();
    let m = Mount::with(&emu, sb.opts());
    // art-0 is read (cached); art-1 is only listed.
    assert_eq!(read_within(DEADLINE, &art(&m, 0)).unwrap(), a_txt(0));
    ok(Command::new("ls")
        .arg(m.join("artifacts/art-1"))
        .arg(m.join("artifacts/art-2")));
    let cold = emu.current_version("artifacts", "art-1");
    let cold_path = m.join(&format!("artifacts/art-1/{cold}/a.txt"));

    // Every request of the API and the store fails, for good.
    emu.fault(json!({"route": "*", "status": 500, "count": 0}));
    emu.reset_counters();
    let err = read_within(DEADLINE, &cold_path).expect_err("the server is down");
    assert_eq!(errno(&err), libc::EIO, "{err}");
    // Retried for the whole budget: far more requests than the 6 of the old policy.
    assert!(
        emu.counter("artifacts.download") >= 11,
        "{}",
        emu.counters()
    );
    let log = log_when(&m, "the failure", |log| {
        log.lines()
            .any(|l| l.contains(&cold) && l.contains("could not fetch") && l.contains("HTTP 500"))
    });
    assert!(log.contains("try again later"), "{log}");
    assert!(!is_cached(&sb.cache, &cold) && tmp_entries(&sb.cache).is_empty());

    // The mount stays up: the listings and the cached version are served.
    let listed = within(DEADLINE, {
        let p = m.join("artifacts");
        move || std::fs::read_dir(p).map(|d| d.count())
    })
    .expect("listing returns");
    assert_eq!(listed.unwrap(), 3, "listing while the server is down");
    assert_eq!(read_within(DEADLINE, &art(&m, 0)).unwrap(), a_txt(0));

    // The server is back: the cold version reads (once its failure is forgotten).
    emu.clear_faults();
    assert_eq!(read_once_remembered(&cold_path), a_txt(1));
    // The read may be answered before the version is complete and committed.
    poll_until(DEADLINE, "the version to be cached", || {
        is_cached(&sb.cache, &cold)
    });
}

#[test]
fn a_listing_past_its_ttl_is_served_from_memory_while_the_api_is_down() {
    let (_data, emu) = emulator(3, &[]);
    let m = Mount::with(
        &emu,
        MountOpts {
            extra: vec!["--metadata-ttl".into(), "1".into()],
            ..Default::default()
        },
    );
    let listed = |m: &Mount| {
        let p = m.join("artifacts");
        within(DEADLINE, move || std::fs::read_dir(p).map(|d| d.count()))
            .expect("listing returns")
            .unwrap()
    };
    assert_eq!(listed(&m), 3);
    emu.fault(json!({"route": "*", "status": 500, "count": 0}));
    emu.reset_counters();
    // Once the TTL has passed, a listing starts a refresh in the background and is
    // answered at once with the listing held; the refresh fails after its retries (30 s).
    poll_until(DEADLINE, "a refresh of the listing", || {
        assert_eq!(listed(&m), 3, "listing while the server is down");
        emu.counter("artifacts.list") > 0
    });
    poll_until(DEADLINE, "the failed refresh in the log", || {
        assert_eq!(listed(&m), 3, "listing while the refresh fails");
        m.log_text().contains("serving the previous")
    });
}

#[test]
fn an_unreachable_server_gives_eio_in_bounded_time_and_the_mount_stays_up() {
    let (_data, emu) = emulator(2, &[]);
    let m = Mount::new(&emu);
    assert_eq!(read_within(DEADLINE, &art(&m, 0)).unwrap(), a_txt(0));
    ok(Command::new("ls").arg(m.join("artifacts/art-1")));
    let cold = emu.current_version("artifacts", "art-1");
    drop(emu); // Connections are refused from now on.
    let err = read_within(DEADLINE, &m.join(&format!("artifacts/art-1/{cold}/a.txt")))
        .expect_err("nothing answers");
    assert_eq!(errno(&err), libc::EIO, "{err}");
    log_when(&m, "the failure", |log| {
        log.lines()
            .any(|l| l.contains(&cold) && l.contains("could not reach"))
    });
    assert_eq!(read_within(DEADLINE, &art(&m, 0)).unwrap(), a_txt(0));
    assert!(std::fs::read_dir(m.join("artifacts")).is_ok());
}

#[test]
fn a_token_revoked_while_mounted_is_eacces_and_the_log_says_to_check_vm0_token() {
    let (_data, emu) = emulator(2, &[]);
    let m = Mount::new(&emu);
    assert_eq!(read_within(DEADLINE, &art(&m, 0)).unwrap(), a_txt(0));
    ok(Command::new("ls").arg(m.join("artifacts/art-1")));
    let cold = emu.current_version("artifacts", "art-1");
    let cold_path = m.join(&format!("artifacts/art-1/{cold}/a.txt"));
    emu.config(json!({"token": "vm0_live_0000000000000000000000000000000000000000000000000000000000000000"}));
    let err = read_within(DEADLINE, &cold_path).expect_err("the token is revoked");
    assert_eq!(
        errno(&err),
        libc::EACCES,
        "a refused token is a permission error: {err}"
    );
    log_when(&m, "the token hint", |log| {
        log.lines()
            .any(|l| l.contains(&cold) && l.contains("VM0_TOKEN"))
    });
    // What is cached still reads; a valid token again, and the cold version reads.
    assert_eq!(read_within(DEADLINE, &art(&m, 0)).unwrap(), a_txt(0));
    emu.config(json!({"token": emu.token}));
    assert_eq!(read_once_remembered(&cold_path), a_txt(1));
}

/// A download that fails part way keeps what it received: when the version is read again
/// in the same mount, the store is asked only for the rest, and the content is exact.
#[test]
fn a_download_failed_part_way_continues_where_it_stopped_when_read_again() {
    let mut b = ArchiveBuilder::new();
    let big = pattern(4 << 20, 11);
    b.file("big.bin", 0o644, 1_700_000_000, &big);
    b.file("small.txt", 0o644, 1_700_000_000, b"small\n");
    let archive = b.finish();
    let (data, emu) = emulator(0, &[("big", "v1", &archive)]);
    let m = Mount::new(&emu);
    let id = emu.current_version("artifacts", "big");
    ok(Command::new("ls").arg(m.join("artifacts/big")));
    emu.reset_counters();
    // The connection breaks after 1.5 MB, and the store refuses the resumed request.
    emu.fault(json!({"route": "store.get", "cut_after_bytes": 1_500_000, "count": 1}));
    emu.fault(json!({"route": "store.get", "status": 404, "count": 1}));
    let path = m.join(&format!("artifacts/big/{id}/big.bin"));
    let err = read_within(DEADLINE, &path).unwrap_err();
    assert_eq!(errno(&err), libc::EIO, "{err}");
    let got = read_once_remembered(&path);
    let expected = tar_extract(&data.path().join("artifacts/big/v1.tar.gz"));
    assert_eq!(
        sha256_hex(&got),
        sha256_hex(&std::fs::read(expected.path().join("big.bin")).unwrap())
    );
    // Every byte of the archive was sent once: 1.5 MB, then the rest.
    assert_eq!(
        emu.counter(&format!("store.bytes:{id}")),
        archive.len() as u64,
        "{}",
        emu.counters()
    );
    log_when(&m, "the continued download", |log| {
        log.contains("continuing the download of artifact big")
    });
}
