//! Attaching the file system to its mountpoint, and detaching it again.
//!
//! vm0fs does this itself and hands the `/dev/fuse` descriptor to fuser
//! (`Session::from_fd`), rather than letting `fuser::Session::new` mount, because fuser
//! 0.18 (pure Rust, without libfuse):
//! - mounts as root with the file system type `fuse`, whatever the subtype, so that
//!   `findmnt -t fuse.vm0fs` and updatedb's `PRUNEFS` miss root mounts;
//! - falls back to the setuid `fusermount3` only when mount(2) is refused, not when the user
//!   cannot open `/dev/fuse` (the usual case: the device is mode 0600 without udev rules);
//! - unmounts again when its session ends, although the mount is gone by then, and logs
//!   `Failed to umount filesystem: Invalid argument` on every clean unmount.
//!
//! Root mounts through mount(2); anyone else, or root where mount(2) is refused, through
//! `fusermount3` (from the fuse3 package), exactly as libfuse does. The mount is
//! `fuse.vm0fs` with the source `vm0fs` either way.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::KernelFlags;

/// The file system type every vm0fs mount has in `/proc/self/mountinfo`.
pub const FS_TYPE: &str = "fuse.vm0fs";
/// The source ("device") of every vm0fs mount.
pub const SOURCE: &str = "vm0fs";
/// The subtype, the part of [`FS_TYPE`] after `fuse.`.
const SUBTYPE: &str = "vm0fs";

/// The mount flags for mount(2): always read-only and without access times; set-user-id
/// programs, device files and running programs as `flags` say.
fn ms_flags(flags: KernelFlags) -> nix::mount::MsFlags {
    use nix::mount::MsFlags;
    let mut ms = MsFlags::MS_RDONLY | MsFlags::MS_NOATIME;
    ms.set(MsFlags::MS_NOSUID, !flags.suid);
    ms.set(MsFlags::MS_NODEV, !flags.dev);
    ms.set(MsFlags::MS_NOEXEC, !flags.exec);
    ms
}

/// The same as options for fusermount3.
fn helper_flags(flags: KernelFlags) -> String {
    let word = |on: bool, name: &str| {
        if on {
            name.to_string()
        } else {
            format!("no{name}")
        }
    };
    format!(
        "ro,noatime,{},{},{}",
        word(flags.suid, "suid"),
        word(flags.dev, "dev"),
        word(flags.exec, "exec")
    )
}

/// The helpers that mount and unmount FUSE file systems for users, newest first
/// (`fusermount` is the fuse 2 name; it speaks the same protocol).
const HELPERS: [&str; 2] = ["fusermount3", "fusermount"];
/// Where to look for a helper when `PATH` lacks it (a setuid helper under a daemon's or
/// sudo's reduced `PATH`).
const HELPER_DIRS: [&str; 5] = ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"];

/// The environment variable through which fusermount3 finds the socket to send the
/// `/dev/fuse` descriptor over (libfuse's `_FUSE_COMMFD` protocol).
const COMMFD_ENV: &str = "_FUSE_COMMFD";

/// What to do when the `/dev/fuse` descriptor cannot be had directly.
const INSTALL_FUSE3: &str =
    "install fuse3 (apt-get install fuse3), which provides the setuid fusermount3, or mount as root";

/// Mount the file system at `mountpoint` and return the `/dev/fuse` descriptor that serves
/// it. `allow_other` lets other users (the kernel's `allow_other`) in.
pub fn attach(mountpoint: &Path, allow_other: bool, flags: KernelFlags) -> anyhow::Result<OwnedFd> {
    let direct = match mount_direct(mountpoint, allow_other, flags) {
        Ok(fd) => return Ok(fd),
        Err(failure) => failure,
    };
    let helper = find_helper();
    match next_step(&direct, helper.as_deref()) {
        Next::UseHelper(helper) => {
            tracing::debug!(helper = %helper.display(), direct = %direct, "mounting through the helper");
            mount_with_helper(helper, mountpoint, allow_other, flags).map_err(|reason| {
                anyhow::anyhow!(
                    "cannot mount vm0fs at {}: {} failed: {reason}{}",
                    mountpoint.display(),
                    helper.display(),
                    helper_hint(&reason, allow_other)
                )
            })
        }
        Next::Fail(reason) => {
            anyhow::bail!("cannot mount vm0fs at {}: {reason}", mountpoint.display())
        }
    }
}

/// Why mounting through `/dev/fuse` and mount(2) did not work.
#[derive(Debug)]
enum DirectFailure {
    /// `/dev/fuse` could not be opened.
    Open(io::Error),
    /// mount(2) refused.
    Mount(io::Error),
}

impl std::fmt::Display for DirectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirectFailure::Open(e) => write!(f, "cannot open /dev/fuse: {e}"),
            DirectFailure::Mount(e) => write!(f, "mount(2): {e}"),
        }
    }
}

/// The decision after a failed direct mount.
#[derive(Debug, PartialEq)]
enum Next<'a> {
    UseHelper(&'a Path),
    Fail(String),
}

/// Whether the setuid helper can succeed where the direct way failed: it opens
/// `/dev/fuse` and mounts as root, so it gets past a permission, and nothing else.
fn next_step<'a>(direct: &DirectFailure, helper: Option<&'a Path>) -> Next<'a> {
    let (DirectFailure::Open(e) | DirectFailure::Mount(e)) = direct;
    let permission = matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM));
    match (direct, permission, helper) {
        (_, true, Some(helper)) => Next::UseHelper(helper),
        (DirectFailure::Open(e), true, None) => Next::Fail(format!(
            "/dev/fuse is not accessible to this user ({e}), and no fusermount3 helper was found; {INSTALL_FUSE3}"
        )),
        (DirectFailure::Mount(e), true, None) => Next::Fail(format!(
            "mounting needs root (mount(2): {e}), and no fusermount3 helper was found; {INSTALL_FUSE3}"
        )),
        (DirectFailure::Open(e), false, _)
            if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENODEV)) =>
        {
            Next::Fail(format!(
                "cannot open /dev/fuse ({e}): load the fuse kernel module (`modprobe fuse`) or, in a container, pass the device (`--device /dev/fuse`)"
            ))
        }
        (failure, false, _) => Next::Fail(format!(
            "{failure}; check that /dev/fuse is usable and the mountpoint is an empty directory"
        )),
    }
}

/// What to do about a helper's refusal, for the refusals a user can fix.
fn helper_hint(reason: &str, allow_other: bool) -> String {
    if allow_other && reason.contains("user_allow_other") {
        return "; add the line user_allow_other to /etc/fuse.conf, or mount without --allow-other and --allow-root".into();
    }
    // fusermount3 opens the device with the user's own rights: the device's mode is how
    // an administrator says who may use FUSE.
    if reason.contains("/dev/fuse") && reason.contains("Permission denied") {
        let mode = std::fs::metadata("/dev/fuse")
            .map(|m| format!(" (its mode is {:04o})", m.permissions().mode() & 0o7777))
            .unwrap_or_default();
        return format!(
            "; this user may not use /dev/fuse{mode}: an administrator can allow every user with `chmod 0666 /dev/fuse` (the mode most distributions give it), or mount as root"
        );
    }
    String::new()
}

/// Open `/dev/fuse` and mount(2) it, as root does.
fn mount_direct(
    mountpoint: &Path,
    allow_other: bool,
    flags: KernelFlags,
) -> Result<OwnedFd, DirectFailure> {
    // std opens with O_CLOEXEC: helpers the daemon runs later do not inherit the device.
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(DirectFailure::Open)?;
    let fd = OwnedFd::from(device);
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let data = mount_data(fd.as_raw_fd(), uid, gid, allow_other);
    // "fuse.vm0fs": the kernel splits off the subtype, and mountinfo shows the whole name.
    nix::mount::mount(
        Some(SOURCE),
        mountpoint,
        Some(FS_TYPE),
        ms_flags(flags),
        Some(data.as_str()),
    )
    .map_err(|e| DirectFailure::Mount(e.into()))?;
    Ok(fd)
}

/// The FUSE mount data (see the kernel's Documentation/filesystems/fuse.rst). The root's
/// mode is only its type here (a directory); its permissions come from the daemon.
fn mount_data(fd: i32, uid: u32, gid: u32, allow_other: bool) -> String {
    let mut data = format!(
        "fd={fd},rootmode={:o},user_id={uid},group_id={gid},default_permissions",
        libc::S_IFDIR
    );
    if allow_other {
        data.push_str(",allow_other");
    }
    data
}

/// The first helper found on `PATH` or in the usual directories.
fn find_helper() -> Option<PathBuf> {
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let dirs: Vec<&Path> = path_dirs
        .iter()
        .map(PathBuf::as_path)
        .chain(HELPER_DIRS.iter().map(Path::new))
        .collect();
    HELPERS.iter().find_map(|name| {
        dirs.iter().map(|dir| dir.join(name)).find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Have the setuid helper mount, and receive the `/dev/fuse` descriptor it opened. The
/// error is what the helper said.
fn mount_with_helper(
    helper: &Path,
    mountpoint: &Path,
    allow_other: bool,
    flags: KernelFlags,
) -> Result<OwnedFd, String> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("cannot create a socket: {e}"))?;
    let mut options = format!(
        "{},default_permissions,fsname={SOURCE},subtype={SUBTYPE}",
        helper_flags(flags)
    );
    if allow_other {
        options.push_str(",allow_other");
    }
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = Command::new(helper);
    cmd.arg("-o")
        .arg(options)
        .arg("--")
        .arg(mountpoint)
        .env(COMMFD_ENV, theirs_fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec only fcntl runs, which is async-signal-safe; the
    // descriptor is the child's copy of `theirs`, open until exec.
    unsafe {
        cmd.pre_exec(move || {
            // The helper must inherit its end of the socket (std made it close-on-exec).
            let flags = libc::fcntl(theirs_fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(theirs_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| format!("cannot run it: {e}"))?;
    drop(theirs);
    let received = receive_fd(&ours);
    // Without auto_unmount the helper exits once it has sent the descriptor.
    let output = child
        .wait_with_output()
        .map_err(|e| format!("cannot wait for it: {e}"))?;
    let said = String::from_utf8_lossy(&output.stderr).trim().to_string();
    match received {
        Ok(Some(fd)) if output.status.success() => Ok(fd),
        Ok(_) if !said.is_empty() => Err(said),
        Ok(_) => Err(format!("it exited ({}) without mounting", output.status)),
        Err(e) => Err(format!(
            "cannot receive the /dev/fuse descriptor: {e}; {said}"
        )),
    }
}

/// Receive one descriptor (`SCM_RIGHTS`) over `sock`; `None` when the helper closed the
/// socket without sending one.
fn receive_fd(sock: &UnixStream) -> io::Result<Option<OwnedFd>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    // Room for exactly one descriptor: a message with more is truncated (MSG_CTRUNC),
    // which `cmsgs` reports as an error rather than handing out a partial message.
    let mut control = nix::cmsg_space!(libc::c_int);
    let mut fds = loop {
        let mut iov = [io::IoSliceMut::new(&mut byte)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) if msg.bytes == 0 => return Ok(None),
            Ok(msg) => {
                let cmsgs = msg.cmsgs().map_err(|_| {
                    io::Error::other("the helper sent more than one descriptor (truncated)")
                })?;
                let fds: Vec<_> = cmsgs
                    .flat_map(|c| match c {
                        ControlMessageOwned::ScmRights(fds) => fds,
                        _ => Vec::new(),
                    })
                    .collect();
                break fds;
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let Some(fd) = fds.pop() else {
        return Ok(None);
    };
    // SAFETY: the kernel installed `fd` in this process by SCM_RIGHTS just now (nix's
    // parser checked the message's length and type); nothing else holds it, so it is
    // ours to own and close.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if !fds.is_empty() {
        for extra in fds {
            // SAFETY: as above, each was installed by this message and is owned by no one;
            // closing it here is the only use.
            drop(unsafe { OwnedFd::from_raw_fd(extra) });
        }
        return Err(io::Error::other("the helper sent more than one descriptor"));
    }
    Ok(Some(fd))
}

/// Why a mount could not be detached.
#[derive(Debug)]
pub enum DetachError {
    /// A process uses the mount (`EBUSY`).
    Busy,
    Other(String),
}

/// Unmount the mount at `mountpoint` (`lazy`: detach it now, and let the kernel finish
/// when it is no longer busy). Root unmounts with umount2(2); others through the helper,
/// which unmounts the mounts a user made.
pub fn detach(mountpoint: &Path, lazy: bool) -> Result<(), DetachError> {
    use nix::mount::MntFlags;
    // The caller found the mount at exactly this path: never follow a symlink elsewhere.
    let mut flags = MntFlags::UMOUNT_NOFOLLOW;
    if lazy {
        flags |= MntFlags::MNT_DETACH;
    }
    // A path lookup in flight (a `stat` of the mountpoint, say) holds the mount for a
    // moment and makes umount2 answer EBUSY: only a mount busy for longer is "busy".
    let deadline = Instant::now() + BUSY_GRACE;
    loop {
        let err = match nix::mount::umount2(mountpoint, flags) {
            Ok(()) => return Ok(()),
            Err(e) => io::Error::from(e),
        };
        match err.raw_os_error() {
            Some(libc::EBUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(libc::EBUSY) => return Err(DetachError::Busy),
            Some(libc::EPERM) => return detach_with_helper(mountpoint, lazy),
            _ => return Err(DetachError::Other(err.to_string())),
        }
    }
}

/// How long a mount may stay busy before [`detach`] says it is.
const BUSY_GRACE: Duration = Duration::from_millis(500);

fn detach_with_helper(mountpoint: &Path, lazy: bool) -> Result<(), DetachError> {
    let Some(helper) = find_helper() else {
        return Err(DetachError::Other(format!(
            "not permitted, and no fusermount3 helper was found; {INSTALL_FUSE3}"
        )));
    };
    let mut cmd = Command::new(&helper);
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd
        .arg("--")
        .arg(mountpoint)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| DetachError::Other(format!("cannot run {}: {e}", helper.display())))?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if said.contains("busy") {
        return Err(DetachError::Busy);
    }
    Err(DetachError::Other(said))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn the_helper_is_tried_exactly_when_a_permission_stopped_the_direct_mount() {
        let helper = Path::new("/usr/bin/fusermount3");
        /// `Ok`: the helper is tried; `Err`: the words the refusal must contain.
        type Want = Result<(), &'static [&'static str]>;
        let cases: [(DirectFailure, Option<&Path>, Want); 7] = [
            // /dev/fuse is mode 0600 (no udev rule) and the user is not root.
            (DirectFailure::Open(os(libc::EACCES)), Some(helper), Ok(())),
            // The device opens, but mount(2) needs CAP_SYS_ADMIN.
            (DirectFailure::Mount(os(libc::EPERM)), Some(helper), Ok(())),
            // Neither way works: only now is fuse3 the advice.
            (
                DirectFailure::Open(os(libc::EACCES)),
                None,
                Err(&["not accessible", "apt-get install fuse3"]),
            ),
            (
                DirectFailure::Mount(os(libc::EPERM)),
                None,
                Err(&["needs root", "apt-get install fuse3"]),
            ),
            // No device at all: the helper cannot help, and fuse3 is not the fix.
            (
                DirectFailure::Open(os(libc::ENOENT)),
                Some(helper),
                Err(&["modprobe fuse"]),
            ),
            (
                DirectFailure::Open(os(libc::ENODEV)),
                None,
                Err(&["modprobe fuse"]),
            ),
            (
                DirectFailure::Mount(os(libc::EINVAL)),
                Some(helper),
                Err(&["mount(2)", "empty directory"]),
            ),
        ];
        for (failure, found, want) in cases {
            let got = next_step(&failure, found);
            match (want, &got) {
                (Ok(()), Next::UseHelper(h)) => assert_eq!(*h, helper),
                (Err(needles), Next::Fail(message)) => {
                    for needle in needles {
                        assert!(message.contains(needle), "{failure:?}: {message}");
                    }
                    if !needles.contains(&"apt-get install fuse3") {
                        assert!(!message.contains("fuse3"), "{failure:?}: {message}");
                    }
                }
                (want, got) => panic!("{failure:?} with {found:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn mount_data_names_a_directory_root_and_permissions() {
        assert_eq!(
            mount_data(7, 1000, 100, false),
            "fd=7,rootmode=40000,user_id=1000,group_id=100,default_permissions"
        );
        assert!(mount_data(7, 0, 0, true).ends_with(",allow_other"));
    }

    #[test]
    fn kernel_flags_keep_the_defaults_and_pass_what_was_asked() {
        use nix::mount::MsFlags;
        let default = KernelFlags::default();
        assert_eq!(helper_flags(default), "ro,noatime,nosuid,nodev,exec");
        let ms = ms_flags(default);
        assert!(ms.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV));
        assert!(!ms.contains(MsFlags::MS_NOEXEC));
        let asked = KernelFlags {
            exec: false,
            suid: true,
            dev: true,
        };
        assert_eq!(helper_flags(asked), "ro,noatime,suid,dev,noexec");
        let ms = ms_flags(asked);
        assert!(ms.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC));
        assert!(!ms.intersects(MsFlags::MS_NOSUID | MsFlags::MS_NODEV));
    }
}
