//! Real mounts against the emulator, checked with real tools (`ls`, `stat`, `cat`, `find`,
//! `diff`, `rsync`) and compared with `tar -xzf` of the very same archive.

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use common::{
    c_path, libc_errno, ok, put_archive, run, sh, tar_extract, tree_listing, Emulator, Mount,
    MountOpts,
};
use vm0_emulator::pack::{feature_archive, pattern, ArchiveBuilder};
use vm0_emulator::EmulatorConfig;

/// An emulator serving the feature archive as artifact `report` (two versions: an older
/// small one and the feature archive, current), plus a 0-file version.
struct Fixture {
    _data: tempfile::TempDir,
    archive: std::path::PathBuf,
    emu: Emulator,
}

fn fixture() -> Fixture {
    let data = tempfile::tempdir().unwrap();
    let mut old = ArchiveBuilder::new();
    old.file("old.txt", 0o644, 1_600_000_000, b"old\n");
    put_archive(data.path(), "artifacts", "report", "v1", &old.finish());
    let archive = put_archive(data.path(), "artifacts", "report", "v2", &feature_archive());
    std::fs::create_dir_all(data.path().join("volumes/empty-vol/v1")).unwrap();
    let emu = Emulator::with_data(data.path());
    Fixture {
        _data: data,
        archive,
        emu,
    }
}

#[test]
fn tree_matches_tar_xzf_of_the_same_archive() {
    let f = fixture();
    let m = Mount::new(&f.emu);
    let id = f.emu.current_version("artifacts", "report");
    let version = m.join(&format!("artifacts/report/{id}"));
    let expected = tar_extract(&f.archive);

    // Content, types, modes, sizes, mtimes (with nanoseconds), link counts and targets.
    assert_eq!(tree_listing(&version), tree_listing(expected.path()));
    ok(Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(expected.path())
        .arg(&version));

    // rsync sees nothing to change, in either direction, with checksums.
    for (from, to) in [
        (&version, expected.path()),
        (&expected.path().to_path_buf(), version.as_path()),
    ] {
        let out = ok(Command::new("rsync")
            .args([
                "-a",
                "-c",
                "-H",
                "--dry-run",
                "--itemize-changes",
                "--exclude=/.",
            ])
            .arg(format!("{}/", from.display()))
            .arg(format!("{}/", to.display())));
        let changes: Vec<&str> = out
            .lines()
            .filter(|l| !l.starts_with(".d") || !l.ends_with("./"))
            .collect();
        assert!(changes.is_empty(), "rsync itemized changes: {changes:#?}");
    }
}

#[test]
fn inode_numbers_agree_between_stat_and_readdir_and_hard_links_share_one() {
    let f = fixture();
    let m = Mount::new(&f.emu);
    let root = m.join("artifacts/report/latest/");
    let mut seen = BTreeSet::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            assert_eq!(
                e.ino(),
                meta.ino(),
                "d_ino vs st_ino of {}",
                e.path().display()
            );
            assert_ne!(meta.ino(), 0);
            seen.insert(meta.ino());
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    let a = std::fs::metadata(root.join("README.md")).unwrap();
    let b = std::fs::metadata(root.join("readme-hardlink.md")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);
    // Stable: the same numbers on a second walk.
    assert_eq!(
        std::fs::metadata(root.join("README.md")).unwrap().ino(),
        a.ino()
    );
}

#[test]
fn random_reads_past_eof_and_mmap_match_the_archive() {
    // By default the kernel sends no OPEN: reads carry no handle.
    random_reads_and_mmap(&[], "open_requests=false");
}

/// Every open a request: large files are read through kernel passthrough where the kernel
/// offers it (Linux 6.9+ as root), the others through their handle.
#[test]
fn random_reads_and_mmap_with_tracked_opens() {
    random_reads_and_mmap(&["--track-opens"], "open_requests=true");
}

/// Every open a request, and every read served by the daemon through its handle.
#[test]
fn random_reads_and_mmap_with_tracked_opens_without_passthrough() {
    random_reads_and_mmap(
        &["--track-opens", "--no-passthrough"],
        "open_requests=true passthrough=false",
    );
}

/// `session` is what the daemon's "FUSE session initialized" line must say.
fn random_reads_and_mmap(flags: &[&str], session: &str) {
    let f = fixture();
    let extra = flags.iter().map(|s| s.to_string()).collect();
    let m = Mount::with(
        &f.emu,
        MountOpts {
            extra,
            ..Default::default()
        },
    );
    let log = m.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("FUSE session initialized") && l.contains(session)),
        "{log}"
    );
    // Read-ahead as large as a request (root may set it; these tests run as root). The
    // daemon raises it once its mount answers, which the test may see first: polled.
    let dev = std::fs::metadata(m.path()).unwrap().dev();
    let ra = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_to_string(&ra).unwrap().trim() != "1024" {
        assert!(
            std::time::Instant::now() < deadline,
            "{ra} never became 1024"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let expected = tar_extract(&f.archive);
    for name in [
        "sizes/f4095.bin",
        "sizes/f131073.bin",
        "sizes/big.bin",
        "empty.txt",
    ] {
        let want = std::fs::read(expected.path().join(name)).unwrap();
        let path = m.join(&format!("artifacts/report/latest/{name}"));
        let file = File::open(&path).unwrap();
        // Whole file, then offsets chosen from the pattern (deterministic, varied).
        assert_eq!(std::fs::read(&path).unwrap(), want, "{name}");
        let picks = pattern(64, want.len() as u64);
        for (i, p) in picks.chunks(2).enumerate() {
            let off = (u16::from_le_bytes([p[0], p[1]]) as usize * 7 + i * 131) % (want.len() + 10);
            let len = (p[0] as usize * 97 + 1) % 70_000;
            let mut buf = vec![0u8; len];
            let mut got = 0;
            while got < len {
                match file.read_at(&mut buf[got..], (off + got) as u64).unwrap() {
                    0 => break,
                    n => got += n,
                }
            }
            let end = (off + len).min(want.len());
            let exp = if off >= want.len() {
                &[][..]
            } else {
                &want[off..end]
            };
            assert_eq!(&buf[..got], exp, "{name} at {off}+{len}");
        }
        if !want.is_empty() {
            assert_eq!(mmap_read(&file, want.len()), want, "mmap of {name}");
        }
    }
}

fn mmap_read(file: &File, len: usize) -> Vec<u8> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: a private read-only mapping of `len` bytes of an open file; it is copied out
    // and unmapped before returning, and the file is not truncated meanwhile (read-only fs).
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let out = std::slice::from_raw_parts(p as *const u8, len).to_vec();
        libc::munmap(p, len);
        out
    }
}

#[test]
fn latest_prefixes_and_listing() {
    let f = fixture();
    let m = Mount::new(&f.emu);
    let current = f.emu.current_version("artifacts", "report");
    let all = f.emu.versions("artifacts", "report");
    assert_eq!(all.len(), 2);

    let latest = std::fs::read_link(m.join("artifacts/report/latest")).unwrap();
    assert_eq!(latest, Path::new(&current));

    // The storage directory lists `latest` and each full id once, no prefixes.
    let ls = ok(Command::new("ls").arg("-1").arg(m.join("artifacts/report")));
    let mut want: Vec<String> = all.clone();
    want.push("latest".into());
    want.sort();
    let mut got: Vec<String> = ls.lines().map(String::from).collect();
    got.sort();
    assert_eq!(got, want);

    // A unique prefix of 8+ hex characters is a link to the full id.
    let prefix = &current[..8];
    assert_eq!(
        std::fs::read_link(m.join(&format!("artifacts/report/{prefix}"))).unwrap(),
        Path::new(&current)
    );
    assert_eq!(
        std::fs::read(m.join(&format!("artifacts/report/{prefix}/README.md"))).unwrap(),
        b"# Agent output\n\nSee docs/.\n"
    );
    // Too short, unknown, or not hex: not found.
    for bad in [&current[..7], "0000000000000000", "zzzzzzzz", "latestx"] {
        assert!(
            !m.join(&format!("artifacts/report/{bad}")).exists(),
            "{bad} should not exist"
        );
    }
    // Top level.
    assert_eq!(
        ok(Command::new("ls").arg(m.path()))
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["agents", "artifacts", "runs", "volumes"]
    );
    assert!(!m.join("artifacts/no-such-name").exists());
}

#[test]
fn an_empty_version_is_an_empty_directory() {
    let f = fixture();
    let m = Mount::new(&f.emu);
    let id = f.emu.current_version("volumes", "empty-vol");
    let dir = m.join(&format!("volumes/empty-vol/{id}"));
    assert!(dir.is_dir());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_dir(m.join("volumes/empty-vol/latest/"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn many_names_across_pages() {
    let data = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for i in 0..230 {
        let name = format!("vol-{i:04}");
        std::fs::create_dir_all(data.path().join(format!("volumes/{name}/v1"))).unwrap();
        std::fs::write(
            data.path().join(format!("volumes/{name}/v1/f.txt")),
            format!("{i}\n"),
        )
        .unwrap();
        names.push(name);
    }
    let emu = Emulator::start(EmulatorConfig {
        data_dirs: vec![data.path().to_path_buf()],
        pagination_quirk: true,
        ..EmulatorConfig::default()
    });
    let m = Mount::new(&emu);
    let got: Vec<String> = ok(Command::new("ls").arg("-1").arg(m.join("volumes")))
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(got, names);
    assert_eq!(
        std::fs::read_to_string(m.join("volumes/vol-0177/latest/f.txt")).unwrap(),
        "177\n"
    );
}

#[test]
fn sixteen_parallel_readers_of_a_cold_version_download_it_once() {
    let f = fixture();
    let m = Mount::new(&f.emu);
    let id = f.emu.current_version("artifacts", "report");
    f.emu.reset_counters();
    // Slow the object store so that every reader arrives while the download runs.
    f.emu
        .fault(serde_json::json!({"route": "store.get", "delay_ms": 500, "count": 1}));
    let expected = std::fs::read(tar_extract(&f.archive).path().join("sizes/f131072.bin")).unwrap();
    let path = m.join(&format!("artifacts/report/{id}/sizes/f131072.bin"));
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let p = path.clone();
            std::thread::spawn(move || std::fs::read(p).unwrap())
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), expected);
    }
    assert_eq!(
        f.emu.counter(&format!("store.get:{id}")),
        1,
        "{}",
        f.emu.counters()
    );
    // Warm now: more reads, no more downloads.
    let _ = std::fs::read(m.join(&format!("artifacts/report/{id}/README.md"))).unwrap();
    assert_eq!(f.emu.counter(&format!("store.get:{id}")), 1);
}

#[test]
fn listing_versions_does_not_download_them() {
    let f = fixture();
    let m = Mount::new(&f.emu);
    f.emu.reset_counters();
    ok(Command::new("ls").arg("-l").arg(m.join("artifacts/report")));
    ok(Command::new("stat").arg(m.join("artifacts/report/latest")));
    assert_eq!(f.emu.counter("store.get"), 0, "{}", f.emu.counters());
}

#[test]
fn every_write_is_refused_with_erofs() {
    let f = fixture();
    let m = Mount::new(&f.emu);
    let v = m.join("artifacts/report/latest");
    let attempts = [
        format!("touch {}/new.txt", v.display()),
        format!("mkdir {}/newdir", v.display()),
        format!("rm {}/README.md", v.display()),
        format!("echo x > {}/README.md", v.display()),
        format!("echo x >> {}/README.md", v.display()),
        format!("mv {}/README.md {}/moved.md", v.display(), v.display()),
        format!("ln -s x {}/newlink", v.display()),
        format!("chmod 777 {}/README.md", v.display()),
        format!("touch {}/README.md", v.display()),
        format!("mkdir {}/volumes/new", m.path().display()),
    ];
    for a in attempts {
        let out = run(Command::new("bash").arg("-c").arg(&a));
        assert!(!out.status.success(), "{a} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Read-only file system"), "{a}: {err}");
    }
    let out = ok(Command::new("stat")
        .arg("-f")
        .arg("-c")
        .arg("%T")
        .arg(m.path()));
    assert!(out.contains("fuse"), "{out}");
    let opts = sh(&format!(
        "findmnt -n -o OPTIONS --target {}",
        m.path().display()
    ));
    assert!(opts.split(',').any(|o| o == "ro"), "mount options: {opts}");
}

#[test]
fn rsync_twice_gives_the_tar_tree_and_transfers_nothing_the_second_time() {
    let f = fixture();
    let m = Mount::new(&f.emu);
    let out = tempfile::tempdir().unwrap();
    let src = format!("{}/", m.join("artifacts/report/latest").display());
    let dst = format!("{}/", out.path().display());
    ok(Command::new("rsync").args(["-a", "-H"]).arg(&src).arg(&dst));
    let expected = tar_extract(&f.archive);
    assert_eq!(tree_listing(out.path()), tree_listing(expected.path()));
    ok(Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(expected.path())
        .arg(out.path()));
    let second = ok(Command::new("rsync")
        .args(["-a", "-H", "--stats"])
        .arg(&src)
        .arg(&dst));
    assert!(
        second.contains("Number of regular files transferred: 0"),
        "second rsync transferred files:\n{second}"
    );
}

#[test]
fn a_failed_download_is_eio_remembered_briefly_then_retried() {
    let f = fixture();
    let m = Mount::new(&f.emu);
    let id = f.emu.current_version("artifacts", "report");
    f.emu
        .fault(serde_json::json!({"route": "store.get", "corrupt": "garbage", "count": 1}));
    let path = m.join(&format!("artifacts/report/{id}/README.md"));
    let err = std::fs::read(&path).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let log = m.log_text();
    assert!(
        log.contains(&id) && log.contains("report"),
        "the log names the version:\n{log}"
    );
    // The failure is remembered for a moment: the next access gets it without a download.
    let err = std::fs::read(&path).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(f.emu.counter(&format!("download:{id}")), 1);
    // Nothing was cached: once the failure is forgotten, an access downloads again and
    // succeeds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let got = loop {
        if let Ok(got) = std::fs::read(&path) {
            break got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never downloaded again"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(got, b"# Agent output\n\nSee docs/.\n");
    assert_eq!(f.emu.counter(&format!("download:{id}")), 2);
    // The read may be answered while the rest is still unpacked; a listing waits for the
    // end, after which the temporary directory is gone.
    std::fs::read_dir(m.join(&format!("artifacts/report/{id}")))
        .unwrap()
        .count();
    let cached: Vec<_> = std::fs::read_dir(m.cache.join("tmp")).unwrap().collect();
    assert!(cached.is_empty(), "no leftovers in tmp/");
}

#[test]
fn a_bad_token_fails_before_mounting_and_names_the_fix() {
    let f = fixture();
    let err = Mount::try_with(
        &f.emu,
        MountOpts {
            token: Some("vm0_live_bad"),
            ..Default::default()
        },
    )
    .err()
    .expect("mount with a bad token must fail");
    assert!(err.contains("VM0_TOKEN"), "{err}");
    assert!(
        !err.contains("vm0_live_bad"),
        "the token must not be printed: {err}"
    );
}

#[test]
fn an_unreachable_api_fails_before_mounting() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    // An empty cache: listings saved by an earlier mount would let it start offline.
    let cache = tempfile::tempdir().unwrap();
    let out = run(Command::new(common::vm0fs_bin())
        .args([
            "mount",
            "--foreground",
            "--api-url",
            "http://127.0.0.1:9/v1",
        ])
        .arg("--cache-dir")
        .arg(cache.path())
        .arg(dir.path())
        .env("VM0_TOKEN", &f.emu.token));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("127.0.0.1:9"), "{err}");
    assert!(!vm0fs::mount::is_mounted(dir.path()));
}

#[test]
fn unmount_works_for_a_live_and_for_a_dead_daemon_and_sigterm_exits_zero() {
    let f = fixture();
    // Live: `vm0fs unmount`, the daemon exits 0.
    let m = Mount::new(&f.emu);
    let path = m.path().to_path_buf();
    let status = m.unmount();
    assert!(status.success(), "{status}");
    assert!(!vm0fs::mount::is_mounted(&path));

    // SIGTERM: unmounts and exits 0.
    let mut m = Mount::new(&f.emu);
    let mut child = m.take_child();
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = common::wait_timeout(&mut child, std::time::Duration::from_secs(20))
        .expect("exit on SIGTERM");
    assert!(status.success(), "{status}");
    assert!(!vm0fs::mount::is_mounted(m.path()));

    // Dead: kill -9 leaves "Transport endpoint is not connected"; unmount still works.
    let mut m = Mount::new(&f.emu);
    let mut child = m.take_child();
    child.kill().unwrap();
    child.wait().unwrap();
    // (readdir, not stat: the kernel may still answer a stat from its attribute cache)
    let err = std::fs::read_dir(m.path()).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    ok(Command::new(common::vm0fs_bin())
        .arg("unmount")
        .arg(m.path()));
    assert!(!vm0fs::mount::is_mounted(m.path()));
    // And the mountpoint can be mounted again.
    let again = Mount::with(
        &f.emu,
        MountOpts {
            ..Default::default()
        },
    );
    assert!(again.join("artifacts/report/latest").exists());
}

#[test]
fn daemon_mode_returns_once_the_mount_answers() {
    let f = fixture();
    common::require_fuse();
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = run(Command::new(common::vm0fs_bin())
        .arg("mount")
        .arg(dir.path())
        .arg("--api-url")
        .arg(&f.emu.api_url)
        .arg("--cache-dir")
        .arg(cache.path())
        .env("VM0_TOKEN", &f.emu.token));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No polling: it must answer right away.
    let listed = std::fs::read_dir(dir.path().join("artifacts"))
        .unwrap()
        .count();
    assert_eq!(listed, 1);
    assert!(cache.path().join("vm0fs.log").exists());
    let pid: u32 = std::fs::read_to_string(cache.path().join("lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = ok(Command::new("cat").arg(dir.path().join(".vm0fs/status")));
    assert!(status.contains(&format!("(pid {pid})")), "{status}");
    ok(Command::new(common::vm0fs_bin())
        .arg("unmount")
        .arg(dir.path()));
    assert!(!vm0fs::mount::is_mounted(dir.path()));
    // `vm0fs unmount` returned after the daemon exited: its lock on the cache is free now.
    let lock = File::open(cache.path().join("lock")).unwrap();
    // SAFETY: flock on a descriptor owned by `lock`.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&lock),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(rc, 0, "the daemon (pid {pid}) still holds the cache");
}

#[test]
fn the_status_file_shows_the_cache_and_its_versions() {
    let f = fixture();
    let m = Mount::new(&f.emu);
    let id = f.emu.current_version("artifacts", "report");
    let before = ok(Command::new("cat").arg(m.join(".vm0fs/status")));
    assert!(
        before.contains("cache:") && before.contains("errors since start: 0"),
        "{before}"
    );
    assert!(!before.contains(&id), "{before}");
    std::fs::read(m.join("artifacts/report/latest/README.md")).unwrap();
    // The read may be answered before the version is complete; a listing waits for it.
    std::fs::read_dir(m.join("artifacts/report/latest"))
        .unwrap()
        .count();
    let after = ok(Command::new("cat").arg(m.join(".vm0fs/status")));
    let line = after
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("{after}"));
    assert!(
        line.contains("artifact") && line.contains("report"),
        "{line}"
    );
    // A file held open marks its version in use. The mark may lag an open or a close by
    // up to a second (the status file walks /proc at most once a second): poll for it.
    let status = || ok(Command::new("cat").arg(m.join(".vm0fs/status")));
    let in_use = |text: &str| {
        text.lines()
            .any(|l| l.contains(&id) && l.ends_with("[in use]"))
    };
    let held = File::open(m.join("artifacts/report/latest/run.sh")).unwrap();
    common::hostile::poll_until(
        std::time::Duration::from_secs(10),
        "the held version marked in use",
        || in_use(&status()),
    );
    drop(held);
    common::hostile::poll_until(
        std::time::Duration::from_secs(10),
        "the mark gone once the file is closed",
        || !status().contains("[in use]"),
    );
    let closed = status();
    assert!(!closed.contains("[in use]"), "{closed}");
    // The text changes while its size stays the same: the version's last use moves on.
    // A cached page of the old text must not be served. (The pause makes the next use's
    // time differ from the last one's; it waits for no state.)
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::read(m.join("artifacts/report/latest/frozen.txt")).unwrap();
    let later = ok(Command::new("cat").arg(m.join(".vm0fs/status")));
    assert_eq!(later.len(), closed.len(), "{closed}\n{later}");
    assert_ne!(later, closed, "stale status text");
    assert!(ok(Command::new("ls").arg("-a").arg(m.path())).contains(".vm0fs"));
    let err = run(Command::new("bash")
        .arg("-c")
        .arg(format!("echo x > {}/.vm0fs/status", m.path().display())));
    assert!(!err.status.success());
}

#[test]
fn extended_attributes_describe_storages_and_versions() {
    let f = fixture();
    let m = Mount::new(&f.emu);
    let id = f.emu.current_version("artifacts", "report");
    let storage = f.emu.storage("artifacts", "report");
    let out = ok(Command::new("getfattr")
        .arg("-d")
        .arg(m.join(&format!("artifacts/report/{id}"))));
    assert!(
        out.contains(&format!("user.vm0.version_id=\"{id}\"")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "user.vm0.id=\"{}\"",
            storage["id"].as_str().unwrap()
        )),
        "{out}"
    );
    for key in [
        "user.vm0.created_at",
        "user.vm0.size",
        "user.vm0.file_count",
        "user.vm0.name=\"report\"",
    ] {
        assert!(out.contains(key), "{key} missing: {out}");
    }
    let out = ok(Command::new("getfattr")
        .arg("-d")
        .arg(m.join("artifacts/report")));
    assert!(
        out.contains(&format!("user.vm0.current_version_id=\"{id}\"")),
        "{out}"
    );

    // Labels, trusted attributes and ACLs are not carried at all: "not supported", which
    // `ls -l` remembers for the whole device. An unknown user attribute is simply absent.
    let file = m.join(&format!("artifacts/report/{id}/README.md"));
    let path = c_path(&file);
    for (name, expected) in [
        ("security.selinux", libc::EOPNOTSUPP),
        ("trusted.x", libc::EOPNOTSUPP),
        ("user.vm0.nope", libc::ENODATA),
        ("system.posix_acl_access", libc::EOPNOTSUPP),
        ("system.posix_acl_default", libc::EOPNOTSUPP),
    ] {
        let cname = std::ffi::CString::new(name).unwrap();
        let mut buf = [0u8; 256];
        // SAFETY: both strings are NUL-terminated and the buffer's length is passed.
        let rc = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                cname.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(
            libc_errno(rc),
            expected,
            "lgetxattr {name} on {}",
            file.display()
        );
    }
}

#[test]
fn latest_follows_a_new_push_after_the_metadata_ttl() {
    let f = fixture();
    let m = Mount::with(
        &f.emu,
        MountOpts {
            extra: vec!["--metadata-ttl".into(), "1".into()],
            ..Default::default()
        },
    );
    let old = std::fs::read_link(m.join("artifacts/report/latest")).unwrap();
    let pushed = f.emu.post(
        "push",
        &serde_json::json!({"kind": "artifacts", "name": "report", "files": {"new.txt": "fresh\n"}}),
    );
    let new_id = pushed["id"]
        .as_str()
        .unwrap_or_else(|| panic!("push answer: {pushed}"))
        .to_string();
    assert_ne!(old, Path::new(&new_id));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if std::fs::read_link(m.join("artifacts/report/latest")).unwrap() == Path::new(&new_id) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "latest never moved to {new_id}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        std::fs::read_to_string(m.join("artifacts/report/latest/new.txt")).unwrap(),
        "fresh\n"
    );
    // A brand-new storage appears too.
    f.emu.post(
        "push",
        &serde_json::json!({"kind": "volumes", "name": "brand-new", "files": {"a": "b"}}),
    );
    assert_eq!(
        std::fs::read_to_string(m.join("volumes/brand-new/latest/a")).unwrap(),
        "b"
    );
}

/// `mount -t vm0fs` and an fstab line, through the `mount.vm0fs` helper (a symlink to the
/// vm0fs binary, installed for the test where mount(8) looks for helpers).
#[test]
fn mount_t_vm0fs_and_fstab_work_through_the_helper() {
    let f = fixture();
    common::require_fuse();
    let helper = Path::new("/sbin/mount.vm0fs");
    let _ = std::fs::remove_file(helper);
    std::os::unix::fs::symlink(common::vm0fs_bin(), helper)
        .expect("install /sbin/mount.vm0fs (tests run as root)");
    struct Remove<'a>(&'a Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _cleanup = Remove(helper);

    let work = tempfile::tempdir().unwrap();
    let token = work.path().join("token");
    std::fs::write(&token, format!("{}\n", f.emu.token)).unwrap();
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let opts = format!(
        "noauto,nofail,_netdev,api_url={},token_file={},cache_dir={},cache_size=100M",
        f.emu.api_url,
        token.display(),
        work.path().join("cache").display()
    );
    ok(Command::new("mount")
        .args(["-t", "vm0fs", "vm0fs"])
        .arg(&mnt)
        .arg("-o")
        .arg(&opts)
        .env_remove("VM0_TOKEN"));
    assert_eq!(
        std::fs::read_to_string(mnt.join("artifacts/report/latest/README.md")).unwrap(),
        "# Agent output\n\nSee docs/.\n"
    );
    ok(Command::new(common::vm0fs_bin()).arg("unmount").arg(&mnt));

    // The same from an fstab line.
    let fstab = work.path().join("fstab");
    std::fs::write(
        &fstab,
        format!("vm0fs {} vm0fs {opts} 0 0\n", mnt.display()),
    )
    .unwrap();
    ok(Command::new("mount")
        .arg("--fstab")
        .arg(&fstab)
        .arg(&mnt)
        .env_remove("VM0_TOKEN"));
    assert!(mnt.join("artifacts/report/latest/README.md").exists());
    ok(Command::new(common::vm0fs_bin()).arg("unmount").arg(&mnt));
    assert!(!vm0fs::mount::is_mounted(&mnt));
}

#[test]
fn a_download_logs_its_progress_and_a_summary() {
    let data = tempfile::tempdir().unwrap();
    let mut b = ArchiveBuilder::new();
    for j in 0..6 {
        b.file(
            &format!("part-{j}.bin"),
            0o644,
            1_700_000_000,
            &pattern(4 << 20, j),
        );
    }
    put_archive(data.path(), "artifacts", "big", "v1", &b.finish());
    let emu = Emulator::with_data(data.path());
    let m = Mount::with(
        &emu,
        MountOpts {
            extra: vec!["--progress-interval".into(), "0.001".into()],
            ..Default::default()
        },
    );
    let id = emu.current_version("artifacts", "big");
    // Listing waits for the whole version, so the log is complete afterwards.
    assert_eq!(
        std::fs::read_dir(m.join("artifacts/big/latest/"))
            .unwrap()
            .count(),
        6
    );
    let log = m.log_text();
    let progress: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("downloading artifact big version {}:", &id[..8])))
        .collect();
    assert!(!progress.is_empty(), "no progress lines:\n{log}");
    assert!(
        progress
            .iter()
            .all(|l| l.contains('%') && l.contains("unpacked") && l.contains("/s")),
        "{progress:#?}"
    );
    let summary = log
        .lines()
        .find(|l| l.contains(&format!("downloaded artifact big version {}:", &id[..8])))
        .unwrap_or_else(|| panic!("no summary line:\n{log}"));
    assert!(
        summary.contains("24.0 MiB in 6 files") && summary.contains("/s"),
        "{summary}"
    );
}
