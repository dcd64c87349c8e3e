//! A well-mannered mount: what a vm0fs mount does to the rest of the machine. Its daemon
//! keeps no directory busy, it is always of type `fuse.vm0fs`, `vm0fs unmount` touches
//! nothing else, a user without root mounts through fusermount3, a refused mount leaves
//! nothing behind (no cache directory, no line in another mount's log), a clean mount logs
//! no warning, and the messages of the usual mistakes name the cause and the fix.
//!
//! Most tests run `vm0fs mount` as users do, in the daemon form, and find the daemon by the
//! pid that `vm0fs mount` prints.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{run, Emulator, Mount, MountOpts};

/// stdout and stderr of a finished command, as one text.
fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether process `pid` still runs (a zombie does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            // The state follows the command name, which is in parentheses.
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            state != Some(Some('Z'))
        })
        .unwrap_or(false)
}

/// Poll until `done` holds, or fail after `timeout` saying `what`.
fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid in `vm0fs mount`'s "mounted at ... (daemon pid N, ...)" line.
fn daemon_pid(said: &str) -> u32 {
    said.split_once("daemon pid ")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no daemon pid in {said:?}"))
}

/// A mount in the daemon form, as `vm0fs mount` (without `--foreground`) makes it. Dropping
/// it unmounts (lazily, so that it works whatever state the daemon is in) and waits for the
/// daemon to exit.
struct Daemon {
    mnt: PathBuf,
    pid: u32,
    /// What `vm0fs mount` printed.
    said: String,
}

impl Daemon {
    /// `vm0fs mount MNT --api-url ... --cache-dir CACHE EXTRA` run from `cwd`; the daemon, or
    /// what `vm0fs mount` said when it failed.
    fn start(
        emu: &Emulator,
        mnt: &Path,
        cache: &Path,
        cwd: &Path,
        extra: &[&str],
    ) -> Result<Daemon, String> {
        common::require_fuse();
        let out = run(Command::new(common::vm0fs_bin())
            .arg("mount")
            .arg(mnt)
            .arg("--api-url")
            .arg(&emu.api_url)
            .arg("--cache-dir")
            .arg(cache)
            .args(extra)
            .env("VM0_TOKEN", &emu.token)
            // The log level users get: vm0fs at info, everything else at warn.
            .env_remove("RUST_LOG")
            .current_dir(cwd));
        let said = text(&out);
        if !out.status.success() {
            return Err(said);
        }
        Ok(Daemon {
            mnt: cwd.join(mnt),
            pid: daemon_pid(&said),
            said,
        })
    }

    /// `vm0fs unmount`, then wait for the daemon to exit.
    fn unmount(self) {
        let out = run(Command::new(common::vm0fs_bin())
            .arg("unmount")
            .arg(&self.mnt));
        assert!(out.status.success(), "vm0fs unmount: {}", text(&out));
        wait_for("the daemon to exit", Duration::from_secs(20), || {
            !alive(self.pid)
        });
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if vm0fs::mount::is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(self.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(self.pid) {
            // SAFETY: kill has no memory effects; the pid is the daemon this test started.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
    }
}

/// A tmpfs mounted at a new directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new() -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("vm0fs-tmpfs")
            .tempdir()
            .unwrap();
        common::ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
                .arg(dir.path()),
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if vm0fs::mount::is_mounted(self.dir.path()) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// The lines of a log at WARN or ERROR level.
fn warnings_and_errors(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect()
}

#[test]
fn the_daemon_leaves_the_callers_directory_and_resolves_a_relative_cache_dir() {
    let emu = Emulator::demo();
    let mnt = tempfile::tempdir().unwrap();
    // The user runs `vm0fs mount` from a file system of its own...
    let caller = Tmpfs::new();
    let d = Daemon::start(&emu, mnt.path(), Path::new("cache"), caller.path(), &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", d.pid)).unwrap();
    assert_eq!(cwd, Path::new("/"), "the daemon's working directory");
    // ...and the relative cache directory is where it said, against the caller's directory.
    let cache = caller.path().join("cache");
    assert_eq!(
        std::fs::read_to_string(cache.join("lock")).unwrap().trim(),
        d.pid.to_string()
    );
    assert!(
        d.said
            .contains(&format!("log {}", cache.join("vm0fs.log").display())),
        "{}",
        d.said
    );
    d.unmount();
    // ...which can be unmounted once the mount is gone (the daemon held nothing in it).
    // The daemon's main thread is a zombie a moment before its last thread lets go of its
    // files (the cache directory's among them): the file system is busy until then.
    let mut last = String::new();
    wait_for(
        "the caller's file system to unmount",
        Duration::from_secs(10),
        || {
            let out = run(Command::new("umount").arg(caller.path()));
            last = text(&out);
            out.status.success()
        },
    );
    assert!(!vm0fs::mount::is_mounted(caller.path()), "{last}");
}

#[test]
fn every_mount_has_the_type_fuse_vm0fs() {
    let emu = Emulator::demo();
    let m = Mount::new(&emu);
    let out = run(Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE,SOURCE", "-t", "fuse.vm0fs"])
        .arg(m.path()));
    assert!(
        out.status.success(),
        "findmnt -t fuse.vm0fs does not find the mount: {}\n{}",
        text(&out),
        std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()
    );
    let fields: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(fields, ["fuse.vm0fs", "vm0fs"]);
}

#[test]
fn unmount_refuses_what_is_not_a_vm0fs_mount() {
    let tmpfs = Tmpfs::new();
    std::fs::write(tmpfs.path().join("precious"), b"x").unwrap();
    for args in [&[][..], &["--lazy"][..]] {
        let out = run(Command::new(common::vm0fs_bin())
            .arg("unmount")
            .args(args)
            .arg(tmpfs.path()));
        let said = text(&out);
        assert!(!out.status.success(), "{said}");
        assert!(
            said.contains("not a vm0fs mount") && said.contains("tmpfs") && said.contains("umount"),
            "{args:?}: {said}"
        );
        assert!(
            vm0fs::mount::is_mounted(tmpfs.path()),
            "the tmpfs went away"
        );
        assert!(tmpfs.path().join("precious").exists());
    }
}

/// The shell steps of the non-root test, run by root in a mount namespace of their own:
/// a `/dev/fuse` of mode `$MODE` replaces the real one there (whatever its mode on this
/// machine), then user nobody mounts, lists and unmounts.
const AS_NOBODY: &str = r#"
set -u
T=$1; MODE=$2; BIN=$3
trap 'umount -l "$T/m" 2>/dev/null || true' EXIT
mount -t tmpfs -o mode=755 tmpfs "$T/dev"
mknod -m "$MODE" "$T/dev/fuse" c 10 229
mount --bind "$T/dev/fuse" /dev/fuse
nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
if ! nobody test -x "$BIN"; then
    cp "$BIN" "$T/vm0fs" && chmod 755 "$T/vm0fs" && BIN="$T/vm0fs"
fi
if ! nobody "$BIN" mount "$T/m" --api-url "$API_URL" --cache-dir "$T/cache" 2>&1; then
    echo "MOUNT FAILED"
    exit 0
fi
echo "TYPE $(findmnt -n -o FSTYPE "$T/m")"
nobody ls "$T/m/volumes"
nobody "$BIN" unmount "$T/m" 2>&1 && echo "UNMOUNTED"
"#;

fn mount_as_nobody(emu: &Emulator, dev_fuse_mode: &str) -> String {
    common::require_fuse();
    for tool in ["unshare", "setpriv", "mknod"] {
        assert!(
            Command::new("which")
                .arg(tool)
                .output()
                .is_ok_and(|o| o.status.success()),
            "the non-root mount test needs {tool} (util-linux, coreutils)"
        );
    }
    assert!(
        Command::new("fusermount3").arg("-V").output().is_ok(),
        "the non-root mount test needs fusermount3 (apt-get install fuse3)"
    );
    let t = tempfile::Builder::new()
        .prefix("vm0fs-nobody")
        .tempdir()
        .unwrap();
    for d in ["dev", "m"] {
        std::fs::create_dir(t.path().join(d)).unwrap();
    }
    common::ok(
        Command::new("chown")
            .arg("65534:65534")
            .arg(t.path())
            .arg(t.path().join("m")),
    );
    common::ok(Command::new("chmod").arg("755").arg(t.path()));
    let out = run(Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "bash",
            "-c",
            AS_NOBODY,
            "as-nobody",
        ])
        .arg(t.path())
        .arg(dev_fuse_mode)
        .arg(common::vm0fs_bin())
        .env("API_URL", &emu.api_url)
        .env("VM0_TOKEN", &emu.token)
        .env_remove("RUST_LOG"));
    let said = text(&out);
    if said.contains("daemon pid ") {
        let pid = daemon_pid(&said);
        wait_for("the daemon to exit", Duration::from_secs(20), || {
            !alive(pid)
        });
    }
    assert!(
        !t.path().join("cache").exists() || said.contains("UNMOUNTED"),
        "a refused mount left its cache directory behind: {said}"
    );
    said
}

#[test]
fn a_user_without_root_mounts_through_fusermount3() {
    let emu = Emulator::demo();
    // /dev/fuse open to everyone (as udev makes it): mount(2) is refused to the user, and
    // the setuid helper mounts.
    let said = mount_as_nobody(&emu, "0666");
    assert!(said.contains("TYPE fuse.vm0fs"), "{said}");
    assert!(
        said.contains("input-data"),
        "nobody cannot list the mount: {said}"
    );
    assert!(said.contains("UNMOUNTED"), "{said}");
}

#[test]
fn a_user_whom_dev_fuse_refuses_is_told_so_not_to_install_fuse3() {
    let emu = Emulator::demo();
    // /dev/fuse closed to the user (as without udev): fusermount3 is tried, and refuses too,
    // because it opens the device with the user's own rights.
    let said = mount_as_nobody(&emu, "0600");
    assert!(said.contains("MOUNT FAILED"), "{said}");
    assert!(
        said.contains("fusermount3") && said.contains("/dev/fuse") && said.contains("0600"),
        "{said}"
    );
    assert!(
        said.contains("chmod 0666 /dev/fuse") && said.contains("root"),
        "{said}"
    );
    assert!(
        !said.contains("install fuse3"),
        "fuse3 is installed: {said}"
    );
}

#[test]
fn a_refused_mount_leaves_no_cache_dir_behind() {
    let emu = Emulator::demo();
    let root = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let cache = root.path().join("new/cache");
    let refused = |args: &[&str], token: &str| {
        let out = run(Command::new(common::vm0fs_bin())
            .arg("mount")
            .arg(mnt.path())
            .arg("--cache-dir")
            .arg(&cache)
            .args(args)
            .env("VM0_TOKEN", token));
        assert!(!out.status.success());
        assert!(
            !root.path().join("new").exists(),
            "{args:?} left {} behind: {}",
            cache.display(),
            text(&out)
        );
        text(&out)
    };
    let said = refused(&["--api-url", &emu.api_url], "vm0_test_wrong");
    assert!(said.contains("rejected the token"), "{said}");
    // The URL without its /v1: the API has no such route.
    let base = emu.api_url.trim_end_matches("/v1");
    let said = refused(&["--api-url", base], &emu.token);
    assert!(
        said.contains("404") && said.contains(&format!("try {base}/v1")),
        "{said}"
    );
    let said = refused(&["--api-url", "http://127.0.0.1:9/v1"], &emu.token);
    assert!(said.contains("cannot reach"), "{said}");
    assert!(!vm0fs::mount::is_mounted(mnt.path()));
}

#[test]
fn a_clean_mount_and_unmount_log_no_warning_or_error() {
    let emu = Emulator::demo();
    let mnt = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let d =
        Daemon::start(&emu, mnt.path(), &cache, work.path(), &[]).unwrap_or_else(|e| panic!("{e}"));
    let listing = common::ok(Command::new("ls").arg("-l").arg(mnt.path().join("volumes")));
    assert!(listing.contains("input-data"), "{listing}");
    // A file opened and closed (the kernel then asks the daemon to flush it).
    let status = common::ok(Command::new("cat").arg(mnt.path().join(".vm0fs/status")));
    assert!(status.contains("cache:"), "{status}");
    d.unmount();
    let log = std::fs::read_to_string(cache.join("vm0fs.log")).unwrap();
    assert!(
        log.contains("ready") && log.contains("the mount was unmounted"),
        "{log}"
    );
    assert_eq!(warnings_and_errors(&log), Vec::<&str>::new(), "{log}");
}

#[test]
fn after_kill_9_a_new_mount_names_the_dead_daemon_and_the_fix() {
    let emu = Emulator::demo();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let mut m = Mount::with(
        &emu,
        MountOpts {
            cache: Some(cache.clone()),
            ..Default::default()
        },
    );
    // Look inside first, so that the kernel holds the root's attributes.
    assert!(m.join("volumes").is_dir());
    let pid = m.pid();
    let mut child = m.take_child();
    child.kill().unwrap();
    child.wait().unwrap();
    let out = run(Command::new(common::vm0fs_bin())
        .arg("mount")
        .arg(m.path())
        .arg("--api-url")
        .arg(&emu.api_url)
        .arg("--cache-dir")
        .arg(&cache)
        .env("VM0_TOKEN", &emu.token));
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!("a vm0fs daemon (pid {pid}) died"))
            && said.contains(&format!("vm0fs unmount {}", m.path().display())),
        "{said}"
    );
    // The advice works.
    common::ok(
        Command::new(common::vm0fs_bin())
            .arg("unmount")
            .arg(m.path()),
    );
    assert!(!vm0fs::mount::is_mounted(m.path()));
}

#[test]
fn a_refused_second_mount_writes_nothing_into_the_first_mounts_log() {
    let emu = Emulator::demo();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let (first_mnt, second_mnt) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = Daemon::start(&emu, first_mnt.path(), &cache, work.path(), &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let log = cache.join("vm0fs.log");
    let before = std::fs::read_to_string(&log).unwrap();
    let said = Daemon::start(&emu, second_mnt.path(), &cache, work.path(), &[])
        .err()
        .expect("a second mount on the same cache is refused");
    assert!(
        said.contains(&first.pid.to_string()),
        "names the running daemon: {said}"
    );
    let after = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        after,
        before,
        "the refused mount wrote into {}",
        log.display()
    );
    assert!(!vm0fs::mount::is_mounted(second_mnt.path()));
    first.unmount();
}

#[test]
fn the_demo_shows_the_build_and_the_readme_says_how_long_it_takes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let demo = std::fs::read_to_string(root.join("scripts/demo.sh")).unwrap();
    let builds: Vec<&str> = demo
        .lines()
        .filter(|l| l.trim_start().starts_with("cargo build"))
        .collect();
    assert!(!builds.is_empty(), "scripts/demo.sh builds nothing");
    for line in builds {
        let quiet = line.split_whitespace().any(|w| w == "-q" || w == "--quiet");
        assert!(
            !quiet,
            "a quiet build looks like a hang for minutes: {line}"
        );
    }
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let said = readme
        .lines()
        .find(|l| l.contains("first") && l.contains("build") && l.contains("minutes"));
    assert!(
        said.is_some(),
        "README.md does not say how long the first build takes"
    );
}
