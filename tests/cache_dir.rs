//! The cache directory is the mount's own, or the mount is refused: a directory of another
//! user, one that others may write, or a link is refused with the fix; links planted as
//! its `lock` or `vm0fs.log` are never followed; whatever vm0fs writes there is private
//! (0600/0700), an interrupted download included; and a cache directory removed under a
//! running mount is noticed, not served around.
//!
//! The attacks are those of issue 19: another local user prepares the directory (or its
//! files) before root mounts.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use common::hostile::{poll_until, read_within};
use common::{ok, put_archive, run, vm0fs_bin, Emulator, Mount, MountOpts};
use vm0_emulator::pack::{pattern, ArchiveBuilder};

const DEADLINE: Duration = Duration::from_secs(60);
/// The uid of `nobody`, the "other user" of these tests.
const NOBODY: u32 = 65534;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `vm0fs mount` (the daemon form, as users run it) of `emu` at a new directory with
/// `cache`; what it said, and the mountpoint (unmounted again if it mounted).
fn try_daemon_mount(emu: &Emulator, cache: &Path) -> (bool, String) {
    common::require_fuse();
    let mnt = tempfile::tempdir().unwrap();
    let out = run(Command::new(vm0fs_bin())
        .arg("mount")
        .arg(mnt.path())
        .arg("--api-url")
        .arg(&emu.api_url)
        .arg("--cache-dir")
        .arg(cache)
        .env("VM0_TOKEN", &emu.token));
    let mounted = out.status.success();
    if mounted {
        ok(Command::new(vm0fs_bin()).arg("unmount").arg(mnt.path()));
    }
    (mounted, text(&out))
}

/// A file owned by root outside the cache, whose content must never change.
fn precious(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, b"root's file: must never change\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn assert_unchanged(p: &Path) {
    assert_eq!(
        std::fs::read(p).unwrap(),
        b"root's file: must never change\n",
        "{} was written through a link",
        p.display()
    );
}

#[test]
fn a_cache_dir_of_another_user_open_to_all_or_a_link_is_refused_with_the_fix() {
    let emu = Emulator::demo();
    let root = tempfile::tempdir().unwrap();

    // Another user made it first (in a shared directory, say) and planted links.
    let theirs = root.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    let lock_target = precious(root.path(), "lock-target");
    let log_target = precious(root.path(), "log-target");
    std::os::unix::fs::symlink(&lock_target, theirs.join("lock")).unwrap();
    std::os::unix::fs::symlink(&log_target, theirs.join("vm0fs.log")).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let (mounted, said) = try_daemon_mount(&emu, &theirs);
    assert!(!mounted, "mounted on a cache of another user: {said}");
    assert!(
        said.contains(&theirs.display().to_string())
            && said.contains("belongs to uid 65534")
            && said.contains("--cache-dir"),
        "{said}"
    );
    assert_unchanged(&lock_target);
    assert_unchanged(&log_target);
    assert_eq!(
        std::fs::read_dir(&theirs).unwrap().count(),
        2,
        "nothing added"
    );

    // Ours, but every user may write into it.
    let open = root.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (mounted, said) = try_daemon_mount(&emu, &open);
    assert!(!mounted, "mounted on a 0777 cache: {said}");
    assert!(
        said.contains("every user") && said.contains(&format!("chmod 700 {}", open.display())),
        "{said}"
    );
    assert_eq!(
        std::fs::read_dir(&open).unwrap().count(),
        0,
        "nothing created"
    );

    // A link to a good directory.
    let good = root.path().join("good");
    std::fs::create_dir(&good).unwrap();
    let link = root.path().join("link");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let (mounted, said) = try_daemon_mount(&emu, &link);
    assert!(!mounted, "mounted through a link: {said}");
    assert!(said.contains("symbolic link"), "{said}");
    assert_eq!(std::fs::read_dir(&good).unwrap().count(), 0);

    // The same directory, private: accepted.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (mounted, said) = try_daemon_mount(&emu, &open);
    assert!(mounted, "{said}");
}

#[test]
fn links_planted_as_lock_or_log_in_our_own_cache_are_never_followed() {
    let emu = Emulator::demo();
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let target = precious(root.path(), "target");

    std::os::unix::fs::symlink(&target, cache.join("lock")).unwrap();
    let (mounted, said) = try_daemon_mount(&emu, &cache);
    assert!(!mounted, "{said}");
    assert!(
        said.contains("symbolic link as its lock file") && said.contains("rm "),
        "{said}"
    );
    assert_unchanged(&target);

    // The log: the mount runs, without a log, and says so.
    std::fs::remove_file(cache.join("lock")).unwrap();
    std::os::unix::fs::symlink(&target, cache.join("vm0fs.log")).unwrap();
    let (mounted, said) = try_daemon_mount(&emu, &cache);
    assert!(mounted, "{said}");
    assert!(said.contains("cannot open the log file"), "{said}");
    assert_unchanged(&target);
    assert!(std::fs::symlink_metadata(cache.join("vm0fs.log"))
        .unwrap()
        .file_type()
        .is_symlink());
}

/// Every entry under `dir` (not `dir` itself) with a mode other than 0700 (directories)
/// or 0600 (files).
fn not_private(dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = e.metadata().unwrap();
            let mode = meta.mode() & 0o7777;
            let want = if meta.is_dir() { 0o700 } else { 0o600 };
            if mode != want {
                bad.push(format!("{} {mode:04o}", e.path().display()));
            }
            if meta.is_dir() {
                todo.push(e.path());
            }
        }
    }
    bad
}

#[test]
fn everything_written_into_the_cache_is_private_after_an_interrupted_download() {
    let data = tempfile::tempdir().unwrap();
    let mut b = ArchiveBuilder::new();
    b.file("secret.bin", 0o600, 1_700_000_000, &pattern(4 << 20, 7));
    b.file("small.txt", 0o644, 1_700_000_000, b"small\n");
    put_archive(data.path(), "artifacts", "big", "v1", &b.finish());
    put_archive(data.path(), "volumes", "small", "v1", &{
        let mut b = ArchiveBuilder::new();
        b.file("a.txt", 0o644, 1_700_000_000, b"a\n");
        b.finish()
    });
    let emu = Emulator::with_data(data.path());
    // A cache directory that exists, 0755 as `mkdir` makes it, with an old, open `partial/`.
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(cache.join("partial")).unwrap();
    std::fs::set_permissions(
        cache.join("partial"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let mut m = Mount::with(
        &emu,
        MountOpts {
            cache: Some(cache.clone()),
            ..Default::default()
        },
    );
    // One version cached whole, listings saved.
    assert_eq!(
        read_within(DEADLINE, &m.join("volumes/small/latest/a.txt")).unwrap(),
        b"a\n"
    );
    // The download stalls after 1 MB, and the daemon is killed in the middle of it: its
    // spool stays behind in `partial/`.
    emu.fault(json!({"route": "store.get", "hold_after_bytes": 1_000_000}));
    let id = emu.current_version("artifacts", "big");
    let mut reader = Command::new("cat")
        .arg(m.join(&format!("artifacts/big/{id}/secret.bin")))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    poll_until(DEADLINE, "the spool of the stalled download", || {
        std::fs::read_dir(cache.join("partial"))
            .map(|d| d.flatten().any(|e| e.metadata().is_ok_and(|m| m.len() > 0)))
            .unwrap_or(false)
    });
    let mut daemon = m.take_child();
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let _ = reader.wait();
    let bad = not_private(&cache);
    assert!(bad.is_empty(), "open to others: {bad:#?}");
    drop(m);
    emu.clear_faults();
    emu.post("release", &json!({}));
}

#[test]
fn a_cache_dir_removed_under_a_running_mount_is_noticed_and_not_served_around() {
    let data = tempfile::tempdir().unwrap();
    for name in ["warm", "cold"] {
        let mut b = ArchiveBuilder::new();
        b.file(
            "a.txt",
            0o644,
            1_700_000_000,
            format!("{name}\n").as_bytes(),
        );
        put_archive(data.path(), "volumes", name, "v1", &b.finish());
    }
    let emu = Emulator::with_data(data.path());
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("cache");
    let m = Mount::with(
        &emu,
        MountOpts {
            cache: Some(cache.clone()),
            ..Default::default()
        },
    );
    let warm = m.join("volumes/warm/latest/a.txt");
    assert_eq!(read_within(DEADLINE, &warm).unwrap(), b"warm\n");
    let cold_id = emu.current_version("volumes", "cold");
    ok(Command::new("ls").arg(m.join("volumes/cold")));

    // A temp cleaner (or a user) removes the whole cache, and it is made again.
    std::fs::remove_dir_all(&cache).unwrap();
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();

    let status = m.join(".vm0fs/status");
    poll_until(
        DEADLINE,
        "the status file to tell of the lost cache",
        || std::fs::read_to_string(&status).is_ok_and(|s| s.contains("NO LONGER THIS MOUNT'S")),
    );
    let said = std::fs::read_to_string(&status).unwrap();
    assert!(said.contains("the directory was replaced"), "{said}");
    let log = m.log_text();
    assert!(
        log.contains("ERROR") && log.contains("no longer this mount's"),
        "{log}"
    );
    // Neither what was cached nor a new download: EIO, never served around.
    let errno = |r: std::io::Result<Vec<u8>>| r.err().and_then(|e| e.raw_os_error());
    let cold = m.join(&format!("volumes/cold/{cold_id}/a.txt"));
    assert_eq!(errno(read_within(DEADLINE, &cold)), Some(libc::EIO));
    assert!(
        !cache.join("versions").exists(),
        "nothing is written into the new directory"
    );
    // The new directory can be mounted by a second daemon: the first one serves nothing
    // from it, so they do not share it.
    let second = Mount::with(
        &emu,
        MountOpts {
            cache: Some(cache.clone()),
            ..Default::default()
        },
    );
    assert_eq!(
        read_within(DEADLINE, &second.join("volumes/cold/latest/a.txt")).unwrap(),
        b"cold\n"
    );
    assert_eq!(errno(read_within(DEADLINE, &cold)), Some(libc::EIO));
}

#[test]
fn without_home_a_user_other_than_root_is_refused_rather_than_given_a_cache_in_tmp() {
    let mnt = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(mnt.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    // A copy of the binary nobody can reach: the checkout may lie in a directory only
    // root can enter.
    let bin_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin_dir.path().join("vm0fs");
    std::fs::copy(vm0fs_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    // As nobody, with an environment that holds nothing but the token (a boot-time
    // mount, a bare service): no HOME, no XDG_CACHE_HOME.
    let out = run(Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(["env", "-i", "VM0_TOKEN=vm0_test_x", "TMPDIR=/tmp"])
        .arg(&bin)
        .arg("mount")
        .arg(mnt.path())
        .args(["--api-url", "http://127.0.0.1:9/v1"]));
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("no cache directory")
            && said.contains("--cache-dir")
            && said.contains("HOME"),
        "{said}"
    );
    assert!(
        !Path::new(&format!("/tmp/vm0fs-cache-{NOBODY}")).exists(),
        "a cache in /tmp"
    );
}
