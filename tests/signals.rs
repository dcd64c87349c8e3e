//! Signals and the kernel's mount options. No signal leaves a dead mount ("Transport
//! endpoint is not connected"): SIGHUP unmounts a foreground mount cleanly (its terminal
//! closed) and is ignored by a daemonized one, SIGUSR1, SIGUSR2 and SIGPIPE are ignored.
//! `noexec` given to `mount -t` (the mount helper) or as `--noexec` reaches the kernel:
//! a script of a volume cannot be run, and `findmnt` shows the option.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::hostile::poll_until;
use common::{ok, put_archive, run, vm0fs_bin, wait_timeout, Emulator, Mount, MountOpts};
use vm0_emulator::pack::ArchiveBuilder;

const DEADLINE: Duration = Duration::from_secs(60);

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory effects; the pid is a daemon this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// Whether process `pid` still runs (a zombie does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')) != Some(false))
        .unwrap_or(false)
}

/// The errno of `stat` on `path`, 0 when it works.
fn stat_errno(path: &Path) -> i32 {
    match std::fs::metadata(path) {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

#[test]
fn sighup_unmounts_a_foreground_mount_cleanly() {
    let emu = Emulator::demo();
    let mut m = Mount::new(&emu);
    ok(Command::new("ls").arg(m.join("volumes")));
    let mut child = m.take_child();
    signal(child.id(), libc::SIGHUP);
    let status = wait_timeout(&mut child, DEADLINE).expect("the daemon exits on SIGHUP");
    assert!(status.success(), "{status:?}: {}", m.log_text());
    assert!(!vm0fs::mount::is_mounted(m.path()), "the mount stays");
    assert_eq!(stat_errno(m.path()), 0, "the mountpoint is usable again");
    let log = m.log_text();
    assert!(log.contains("unmounting on signal"), "{log}");
}

/// A daemonized mount (as `vm0fs mount` makes it without `--foreground`); its pid.
fn daemon_mount(emu: &Emulator, mnt: &Path, cache: &Path) -> u32 {
    common::require_fuse();
    let out = run(Command::new(vm0fs_bin())
        .arg("mount")
        .arg(mnt)
        .arg("--api-url")
        .arg(&emu.api_url)
        .arg("--cache-dir")
        .arg(cache)
        .env("VM0_TOKEN", &emu.token));
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    said.split_once("daemon pid ")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no daemon pid in {said:?}"))
}

#[test]
fn a_daemonized_mount_outlives_sighup_sigusr1_sigusr2_and_sigpipe() {
    let emu = Emulator::demo();
    let mnt = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let pid = daemon_mount(&emu, mnt.path(), &cache);
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _cleanup = Unmount(mnt.path());
    // SIGPIPE first: it is ignored without a word, so the lines of the others (each
    // handled in order) show that it was survived.
    for sig in [libc::SIGPIPE, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2] {
        signal(pid, sig);
    }
    let log = cache.join("vm0fs.log");
    poll_until(DEADLINE, "the signals to be logged", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.matches("signal ignored").count() >= 2)
    });
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("SIGHUP ignored"), "{said}");
    assert!(alive(pid), "the daemon died: {said}");
    assert_eq!(stat_errno(mnt.path()), 0);
    ok(Command::new("ls").arg(mnt.path().join("volumes")));
    ok(Command::new(vm0fs_bin()).arg("unmount").arg(mnt.path()));
    poll_until(DEADLINE, "the daemon to exit", || !alive(pid));
}

/// An archive with a script that runs (mode 0755).
fn script_volume() -> (tempfile::TempDir, Emulator) {
    let data = tempfile::tempdir().unwrap();
    let mut b = ArchiveBuilder::new();
    b.file("run.sh", 0o755, 1_700_000_000, b"#!/bin/sh\necho ran\n");
    put_archive(data.path(), "volumes", "tools", "v1", &b.finish());
    let emu = Emulator::with_data(data.path());
    (data, emu)
}

/// Run `script`: its stdout, or the errno of the failed exec.
fn exec(script: &Path) -> Result<String, i32> {
    match Command::new(script).output() {
        Ok(out) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Err(e) => Err(e.raw_os_error().unwrap_or(-1)),
    }
}

fn findmnt_options(mnt: &Path) -> String {
    ok(Command::new("findmnt")
        .args(["-n", "-o", "OPTIONS", "--mountpoint"])
        .arg(mnt))
}

#[test]
fn noexec_flag_reaches_the_kernel_and_the_default_still_runs_programs() {
    let (_data, emu) = script_volume();
    let m = Mount::new(&emu);
    let script = m.join("volumes/tools/latest/run.sh");
    assert_eq!(exec(&script), Ok("ran\n".into()), "the default is exec");
    let options = findmnt_options(m.path());
    assert!(
        options.contains("nosuid") && options.contains("nodev") && !options.contains("noexec"),
        "{options}"
    );
    drop(m);

    let m = Mount::with(
        &emu,
        MountOpts {
            extra: vec!["--noexec".into()],
            ..Default::default()
        },
    );
    let script = m.join("volumes/tools/latest/run.sh");
    assert_eq!(exec(&script), Err(libc::EACCES));
    let options = findmnt_options(m.path());
    assert!(options.split(',').any(|o| o == "noexec"), "{options}");
}

/// `/sbin/mount.fuse.vm0fs`, the helper that mount(8) runs for `-t fuse.vm0fs`, installed
/// for one test and removed again. (`tests/mount.rs` installs `/sbin/mount.vm0fs`: another
/// path, so the two tests can run at once.)
struct Helper(PathBuf);

impl Helper {
    fn install() -> Helper {
        let path = PathBuf::from("/sbin/mount.fuse.vm0fs");
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(vm0fs_bin(), &path)
            .expect("install /sbin/mount.fuse.vm0fs (tests run as root)");
        Helper(path)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn noexec_through_mount_t_and_fstab_is_honoured_and_findmnt_shows_it() {
    let (_data, emu) = script_volume();
    common::require_fuse();
    let _helper = Helper::install();
    let work = tempfile::tempdir().unwrap();
    let token = work.path().join("token");
    std::fs::write(&token, format!("{}\n", emu.token)).unwrap();
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _cleanup = Unmount(&mnt);
    let opts = format!(
        "noauto,noexec,api_url={},token_file={},cache_dir={}",
        emu.api_url,
        token.display(),
        work.path().join("cache").display()
    );
    ok(Command::new("mount")
        .args(["-t", "fuse.vm0fs", "vm0fs"])
        .arg(&mnt)
        .arg("-o")
        .arg(&opts)
        .env_remove("VM0_TOKEN"));
    let script = mnt.join("volumes/tools/latest/run.sh");
    assert_eq!(exec(&script), Err(libc::EACCES));
    let options = findmnt_options(&mnt);
    assert!(options.split(',').any(|o| o == "noexec"), "{options}");
    ok(Command::new(vm0fs_bin()).arg("unmount").arg(&mnt));

    // From an fstab line, `exec` after `user` (which implies noexec) lets programs run.
    let fstab = work.path().join("fstab");
    let opts = opts.replace("noexec", "user,exec");
    std::fs::write(
        &fstab,
        format!("vm0fs {} fuse.vm0fs {opts} 0 0\n", mnt.display()),
    )
    .unwrap();
    ok(Command::new("mount")
        .arg("--fstab")
        .arg(&fstab)
        .arg(&mnt)
        .env_remove("VM0_TOKEN"));
    assert_eq!(exec(&script), Ok("ran\n".into()));
    let options = findmnt_options(&mnt);
    assert!(!options.contains("noexec"), "{options}");
    ok(Command::new(vm0fs_bin()).arg("unmount").arg(&mnt));
}

#[test]
fn closing_the_terminal_of_a_foreground_mount_unmounts_it() {
    let emu = Emulator::demo();
    common::require_fuse();
    let mnt = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            if vm0fs::mount::is_mounted(self.0) {
                let _ = Command::new("umount").arg("-l").arg(self.0).status();
            }
        }
    }
    let _cleanup = Unmount(mnt.path());
    // `script` runs the mount on a terminal of its own (a pty); killing `script` closes
    // the terminal's other end, and the kernel hangs the terminal up (SIGHUP).
    let line = format!(
        "exec {} mount {} --foreground --api-url {} --cache-dir {}",
        vm0fs_bin(),
        mnt.path().display(),
        emu.api_url,
        work.path().join("cache").display()
    );
    let mut terminal = Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env("VM0_TOKEN", &emu.token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("script (util-linux)");
    poll_until(DEADLINE, "the mount on a terminal", || {
        vm0fs::mount::is_mounted(mnt.path())
            && std::fs::metadata(mnt.path()).is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                m.ino() == 1
            })
    });
    terminal.kill().unwrap();
    terminal.wait().unwrap();
    poll_until(DEADLINE, "the mount to go with its terminal", || {
        !vm0fs::mount::is_mounted(mnt.path())
    });
    assert_eq!(stat_errno(mnt.path()), 0, "no dead mount left behind");
}
