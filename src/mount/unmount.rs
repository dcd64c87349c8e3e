//! `vm0fs unmount`: detach a vm0fs mount, and wait for its daemon to exit, so that
//! `vm0fs unmount M && vm0fs mount M` finds the cache directory free and the old log
//! complete.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::{attach, mount_at, on_probe_thread, Probe, FS_TYPE};
use crate::fs::{STATUS_DIR, STATUS_FILE};

/// How long `vm0fs unmount` waits for the daemon to exit once its mount is gone: it stops
/// its downloads at once, so this is only reached by a daemon stuck in the kernel.
const DAEMON_EXIT_WAIT: Duration = Duration::from_secs(10);

/// Unmount a vm0fs mount, live or dead ("Transport endpoint is not connected"). Anything
/// else mounted is refused, root or not. Unless `lazy`, returns once the daemon that
/// served the mount has exited (or, after [`DAEMON_EXIT_WAIT`], says it has not).
pub fn unmount(path: &Path, lazy: bool) -> anyhow::Result<()> {
    let p = path.display();
    let Some(entry) = mount_at(path) else {
        if let Err(e) = std::fs::symlink_metadata(path) {
            if e.kind() == io::ErrorKind::NotFound {
                bail!("{p} does not exist; give the mountpoint of a vm0fs mount (`findmnt -t {FS_TYPE}` lists them)");
            }
        }
        bail!("{p} is not mounted; `findmnt -t {FS_TYPE}` lists the vm0fs mounts");
    };
    if !entry.is_vm0fs() {
        bail!(
            "{p} is not a vm0fs mount (it is a {} file system from {}); `vm0fs unmount` only unmounts vm0fs mounts: use umount(8) for others",
            entry.fs_type,
            entry.source
        );
    }
    // Asked before the mount goes: afterwards the daemon cannot be reached.
    let daemon = if lazy {
        None
    } else {
        daemon_pid(&entry.mount_point)
    };
    match attach::detach(&entry.mount_point, lazy) {
        Ok(()) => {}
        Err(attach::DetachError::Busy) => bail!(
            "{p} is busy: a process has a file or its working directory inside it, or is waiting there for a download; close or interrupt it, or use `vm0fs unmount --lazy {p}`"
        ),
        Err(attach::DetachError::Other(reason)) => bail!("cannot unmount {p}: {reason}"),
    }
    if let Some(pid) = daemon {
        if !wait_for_exit(pid, DAEMON_EXIT_WAIT) {
            eprintln!(
                "vm0fs: unmounted {p}, but its daemon (pid {pid}) has not exited after {} s; its log says what it is doing",
                DAEMON_EXIT_WAIT.as_secs()
            );
        }
    }
    Ok(())
}

/// The pid of the daemon serving the mount at `mountpoint`, from the first line of its
/// status file (`... (pid N)`). `None` when the daemon is dead or does not answer within
/// the probe's time (see [`on_probe_thread`]).
fn daemon_pid(mountpoint: &Path) -> Option<u32> {
    let status = mountpoint.join(STATUS_DIR).join(STATUS_FILE);
    let Probe::Answer(Ok(text)) = on_probe_thread(move || std::fs::read_to_string(status)) else {
        return None;
    };
    pid_in_header(text.lines().next()?)
}

/// The pid in the status file's first line: `vm0fs 0.3.0 mounted at ... (pid 1234)`.
fn pid_in_header(line: &str) -> Option<u32> {
    let (_, rest) = line.rsplit_once("(pid ")?;
    rest.strip_suffix(')')?.parse().ok()
}

/// Wait until process `pid` has exited (a zombie, not yet reaped by its parent, has).
/// False if it still runs after `limit`.
fn wait_for_exit(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !running(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether process `pid` exists and is not a zombie.
pub(super) fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pid_is_read_from_the_status_header() {
        assert_eq!(
            pid_in_header("vm0fs 0.3.0 mounted at /m (x) from http://h/v1 since 2026-01-01 00:00:00 UTC (pid 4321)"),
            Some(4321)
        );
        assert_eq!(pid_in_header("vm0fs 0.3.0 mounted at /m"), None);
        assert_eq!(pid_in_header("(pid x)"), None);
    }

    #[test]
    fn an_exited_process_is_not_running_and_a_live_one_is() {
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(running(pid));
        assert!(!wait_for_exit(pid, Duration::ZERO));
        child.kill().unwrap();
        // Killed but not reaped: a zombie has exited.
        assert!(wait_for_exit(pid, Duration::from_secs(10)));
        child.wait().unwrap();
        assert!(!running(pid));
    }
}
