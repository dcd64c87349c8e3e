//! Waiting for downloads, on real mounts: a process waiting for a cold version can be
//! interrupted or killed at once, waiting readers never keep the rest of the mount from
//! being served, a stalled download shows in the status file and the log, one failure is
//! shared by every reader (and remembered briefly), a shutdown stops downloads and answers
//! the readers, and a full cache disk reads as ENOSPC.
//!
//! The order is made certain by the emulator, not by timing: its store holds a download
//! (`hold_after_bytes`) until the test releases it, and counts the holds and the clients
//! that hang up on one. Every tool that might hang runs as a child process with a deadline
//! far beyond what the behaviour needs, so the suite itself cannot hang; nothing asserts a
//! duration.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::json;

use common::hostile::{log_when, poll_until, within};
use common::{a_txt, ok, put_archive, seeded_archive, wait_timeout, Emulator, Mount, MountOpts};

/// Generous bound for anything that should happen at once.
const DEADLINE: Duration = Duration::from_secs(60);

/// An archive with a small first member (`a.txt`), then 4 MiB that gzip cannot shrink.
fn archive(seed: u64) -> Vec<u8> {
    seeded_archive(seed, Some(("big.bin", 4 << 20)))
}

/// An emulator serving artifacts `art-<i>` (one version each, `archive(i)`).
fn emulator(n: u64) -> (tempfile::TempDir, Emulator) {
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
    let emu = Emulator::with_data(data.path());
    (data, emu)
}

fn mount_with(emu: &Emulator, extra: &[&str]) -> Mount {
    Mount::with(
        emu,
        MountOpts {
            extra: extra.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    )
}

/// Every store request from now on is held until [`release`].
fn hold_downloads(emu: &Emulator) {
    emu.fault(json!({"route": "store.get", "hold_after_bytes": 0, "count": 0}));
}

/// Let the held downloads go, and hold no more.
fn release(emu: &Emulator) {
    emu.clear_faults();
    emu.post("release", &json!({}));
}

/// Run `cmd` to its end, as a child with `DEADLINE`; panics if it does not end by then.
fn run_within(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    within(DEADLINE, move || child.wait_with_output())
        .unwrap_or_else(|| panic!("{shown} did not return within {DEADLINE:?}"))
        .unwrap()
}

/// A `cat` of `path` started in the background (its output captured).
fn cat(path: &Path) -> Child {
    Command::new("cat")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The status file, read by a child with a deadline (a mount whose workers are all held
/// would never answer).
fn status(m: &Mount) -> String {
    let out = run_within(Command::new("cat").arg(m.join(".vm0fs/status")));
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The state letter of process `pid` (`/proc/PID/stat`), if it exists.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

fn latest_a(m: &Mount, i: u64) -> PathBuf {
    m.join(&format!("artifacts/art-{i}/latest/a.txt"))
}

/// `timeout -s INT 3 ls` of a version whose download is held: `ls` gets SIGINT after 3 s
/// and must end then, not when the download does. (fuser passes no FUSE_INTERRUPT on; the
/// daemon sees the signal pending in /proc and answers EINTR.) The download goes on for
/// nobody: it stops, and the version reads once the store answers.
#[test]
fn an_interrupted_listing_of_a_held_version_returns_at_once() {
    let (_data, emu) = emulator(1);
    let m = Mount::new(&emu);
    ok(Command::new("ls").arg(m.join("artifacts/art-0")));
    hold_downloads(&emu);
    let ls = Command::new("timeout")
        .args(["-s", "INT", "3", "ls"])
        .arg(m.join("artifacts/art-0/latest/"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The listing waits for the whole version, whose download the store holds.
    poll_until(DEADLINE, "the download to be held", || {
        emu.counter("store.held") >= 1
    });
    let out = within(DEADLINE, move || ls.wait_with_output())
        .expect("the interrupted `ls` did not return")
        .unwrap();
    // 124: the command timed out and got its signal (SIGINT kills `ls`).
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    release(&emu);
    assert_eq!(std::fs::read(latest_a(&m, 0)).unwrap(), a_txt(0));
}

/// `kill -9` of a `cat` waiting for a held download: the process goes at once instead of
/// staying in the `D` state until the download ends, and `vm0fs unmount` then finds
/// nothing inside the mount.
#[test]
fn kill_9_of_a_waiting_reader_leaves_no_process_behind() {
    let (_data, emu) = emulator(1);
    let m = Mount::new(&emu);
    ok(Command::new("ls").arg(m.join("artifacts/art-0")));
    hold_downloads(&emu);
    let mut reader = cat(&latest_a(&m, 0));
    let pid = reader.id();
    poll_until(DEADLINE, "the download to be held", || {
        emu.counter("store.held") >= 1
    });
    // SAFETY: kill(2) on our own child, which we have not reaped.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let status = wait_timeout(&mut reader, DEADLINE).unwrap_or_else(|| {
        panic!(
            "the killed reader is still there, in state {:?}",
            state(pid)
        )
    });
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_eq!(state(pid), None);
    let log = m.log_text();
    assert!(!log.contains("Failed to send FUSE reply"), "{log}");
    assert!(m.unmount().success());
}

/// More readers waiting for held downloads than the mount has FUSE threads (2), and more
/// versions than may download at once (1): the status file (which shows the queued ones),
/// a listing and a cached version are still answered, and every reader gets its file once
/// the store answers.
#[test]
fn waiting_readers_never_keep_the_rest_of_the_mount_from_being_served() {
    let (_data, emu) = emulator(5);
    let m = mount_with(&emu, &["--threads", "2", "--downloads", "1"]);
    // art-0 is cached (a listing waits for the whole version); the others are listed only.
    ok(Command::new("ls").arg(m.join("artifacts/art-0/latest/")));
    for i in 1..5 {
        ok(Command::new("ls").arg(m.join(&format!("artifacts/art-{i}"))));
    }
    hold_downloads(&emu);
    let readers: Vec<Child> = (1..5).map(|i| cat(&latest_a(&m, i))).collect();
    poll_until(DEADLINE, "one download held and three queued", || {
        emu.counter("store.held") == 1 && status(&m).matches("queued for").count() == 3
    });
    let listing = run_within(Command::new("ls").arg(m.join("artifacts/art-0/latest/")));
    assert!(listing.status.success(), "{listing:?}");
    assert_eq!(String::from_utf8_lossy(&listing.stdout), "a.txt\nbig.bin\n");
    let cached = run_within(Command::new("cat").arg(latest_a(&m, 0)));
    assert_eq!(cached.stdout, a_txt(0));
    let names = run_within(Command::new("ls").arg(m.join("artifacts")));
    assert!(names.status.success(), "{names:?}");
    release(&emu);
    for (i, r) in (1..5).zip(readers) {
        let out = within(DEADLINE, move || r.wait_with_output())
            .expect("the reader returns")
            .unwrap();
        assert!(out.status.success(), "art-{i}: {out:?}");
        assert_eq!(out.stdout, a_txt(i));
    }
}

/// A download that receives nothing is shown stalled in the status file (with its storage's
/// name and how long it has run), and the log says so once, and again when it goes on.
#[test]
fn a_stalled_download_shows_in_the_status_file_and_the_log() {
    let (_data, emu) = emulator(1);
    let m = Mount::new(&emu);
    ok(Command::new("ls").arg(m.join("artifacts/art-0")));
    hold_downloads(&emu);
    let reader = cat(&latest_a(&m, 0));
    let mut shown = String::new();
    poll_until(DEADLINE, "the stall in the status file", || {
        shown = status(&m);
        shown.contains("stalled for")
    });
    let line = shown
        .lines()
        .find(|l| l.contains("stalled for"))
        .unwrap()
        .to_string();
    assert!(line.contains("art-0"), "{line}");
    let log = log_when(&m, "the stall", |log| {
        log.lines()
            .any(|l| l.contains("art-0") && l.contains("stalled: no data for"))
    });
    assert_eq!(log.matches("stalled: no data for").count(), 1, "{log}");
    release(&emu);
    log_when(&m, "the resume", |log| {
        log.lines()
            .any(|l| l.contains("art-0") && l.contains("resumed after"))
    });
    let out = within(DEADLINE, move || reader.wait_with_output())
        .expect("the reader returns")
        .unwrap();
    assert_eq!(out.stdout, a_txt(0));
}

/// Sixteen readers of a cold file whose store answers 500 for good: one download (one
/// `/download` call, its retries), every reader gets EIO, and none starts another.
#[test]
fn one_failure_reaches_every_reader_with_one_download() {
    let (_data, emu) = emulator(1);
    let m = Mount::new(&emu);
    ok(Command::new("ls").arg(m.join("artifacts/art-0")));
    let id = emu.current_version("artifacts", "art-0");
    emu.fault(json!({"route": "store.get", "status": 500, "count": 0}));
    emu.reset_counters();
    let path = m.join(&format!("artifacts/art-0/{id}/a.txt"));
    let readers: Vec<Child> = (0..16).map(|_| cat(&path)).collect();
    for r in readers {
        let out = within(DEADLINE * 2, move || r.wait_with_output())
            .expect("every reader returns")
            .unwrap();
        assert!(!out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Input/output error"), "{err}");
    }
    assert_eq!(
        emu.counter(&format!("download:{id}")),
        1,
        "{}",
        emu.counters()
    );
}

/// A `cat` loop on the first member of an archive whose gzip CRC is wrong: the member may
/// be served before the end of the archive shows the damage, but the archive is downloaded
/// once, not once per `cat`.
#[test]
fn a_cat_loop_on_a_corrupt_archive_downloads_it_once() {
    let data = tempfile::tempdir().unwrap();
    let mut bad = archive(7);
    let n = bad.len();
    // The gzip trailer: CRC32, then the size. A wrong CRC is only found at the very end.
    bad[n - 8] ^= 0xff;
    put_archive(data.path(), "artifacts", "bad", "v1", &bad);
    let emu = Emulator::with_data(data.path());
    let m = Mount::new(&emu);
    let id = emu.current_version("artifacts", "bad");
    ok(Command::new("ls").arg(m.join("artifacts/bad")));
    emu.reset_counters();
    let first = m.join(&format!("artifacts/bad/{id}/a.txt"));
    // Served early, or failed: either is right, as long as the archive is not downloaded
    // again for each.
    for _ in 0..10 {
        run_within(Command::new("cat").arg(&first));
    }
    // A listing waits for the end of the archive, which is the failure.
    let listing = run_within(Command::new("ls").arg(m.join(&format!("artifacts/bad/{id}"))));
    assert!(!listing.status.success(), "{listing:?}");
    for _ in 0..5 {
        assert!(!run_within(Command::new("cat").arg(&first)).status.success());
    }
    assert_eq!(
        emu.counter(&format!("download:{id}")),
        1,
        "{}",
        emu.counters()
    );
}

/// SIGTERM to the daemon while a reader waits for a held download: the download stops (the
/// store sees the connection closed), the reader is answered with an error before the
/// unmount (EIO, not the ECONNABORTED of a connection torn down under it), the unmount is
/// not reported as failed, and the daemon exits.
#[test]
fn sigterm_during_a_download_stops_it_and_answers_the_reader() {
    let (_data, emu) = emulator(1);
    let mut m = Mount::new(&emu);
    ok(Command::new("ls").arg(m.join("artifacts/art-0")));
    hold_downloads(&emu);
    let reader = cat(&latest_a(&m, 0));
    let reader_pid = reader.id();
    poll_until(DEADLINE, "the download to be held", || {
        emu.counter("store.held") >= 1
    });
    let mut daemon = m.take_child();
    // SAFETY: kill(2) on our own child, which we have not reaped.
    assert_eq!(unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) }, 0);
    let out = within(DEADLINE, move || reader.wait_with_output())
        .expect("the reader is answered")
        .unwrap();
    assert_eq!(state(reader_pid), None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Input/output error"),
        "{out:?}"
    );
    let exit = wait_timeout(&mut daemon, DEADLINE).expect("the daemon exits");
    assert!(exit.success(), "{exit:?}");
    poll_until(DEADLINE, "the store to see the connection closed", || {
        emu.counter("store.hung_up") >= 1
    });
    let log = m.log_text();
    assert!(!log.contains("unmount failed"), "{log}");
    assert!(log.contains("stopping every download"), "{log}");
}

/// A tmpfs of `size`, unmounted (lazily) on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("vm0fs-tmpfs")
            .tempdir()
            .unwrap();
        ok(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "vm0fs-test"])
            .arg(dir.path()));
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// A cache directory on a disk that fills up before the version fits (the budget allows
/// it): the reader gets ENOSPC, which it can act on, not EIO.
#[test]
fn a_full_cache_disk_is_enospc() {
    let (_data, emu) = emulator(1);
    let disk = Tmpfs::new("1m");
    let cache = disk.0.path().join("cache");
    let m = Mount::with(
        &emu,
        MountOpts {
            cache: Some(cache),
            extra: vec!["--cache-size".into(), "100M".into()],
            ..Default::default()
        },
    );
    let big = m.join("artifacts/art-0/latest/big.bin");
    let err = within(DEADLINE, move || std::fs::read(big))
        .expect("the read returns")
        .expect_err("the disk is full");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(m);
}
