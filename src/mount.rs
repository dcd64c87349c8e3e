//! Mounting and unmounting: checks before the mount, the FUSE session's life, signals, and
//! `vm0fs unmount` (for live and for dead daemons).
//!
//! Everything here happens at the edge of the program, so errors are `anyhow` with
//! messages that name the thing, the cause and the fix.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fuser::{MountOption, SessionACL};

use crate::api::{Client, ClientConfig, Kind, RetryPolicy};
use crate::cache::Cache;
use crate::config::{Access, MountConfig};
use crate::fs::{first_listing, FirstListing, Fs, FsConfig, Remote, Saved, FIRST_FETCH_WAIT};
use crate::fuse::FuseFs;
use crate::openfiles::OpenFiles;
use crate::size::ByteSize;

/// Check a mountpoint before mounting: it exists, is a directory, is empty and is not
/// already a mount (live or dead).
pub fn check_mountpoint(path: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => bail!("mountpoint {} is not a directory; pass an empty directory", path.display()),
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => bail!(
            "mountpoint {} is still mounted by a vm0fs that is no longer running; run `vm0fs unmount {}` first",
            path.display(),
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "mountpoint {} does not exist; create it with `mkdir -p {}`",
            path.display(),
            path.display()
        ),
        Err(e) => bail!("cannot use mountpoint {}: {e}", path.display()),
    }
    if is_mounted(path) {
        bail!(
            "{} is already a mount point; unmount it first (`vm0fs unmount {}`) or pick another directory",
            path.display(),
            path.display()
        );
    }
    let mut entries = std::fs::read_dir(path)
        .with_context(|| format!("cannot read mountpoint {}", path.display()))?;
    if entries.next().is_some() {
        bail!(
            "mountpoint {} is not empty; mounting over it would hide its files: use an empty directory",
            path.display()
        );
    }
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse does not exist: load the fuse kernel module (`modprobe fuse`) or, in a container, pass the device (`--device /dev/fuse`)");
    }
    Ok(())
}

/// Whether `path` is a mount point, from `/proc/self/mountinfo` (no `stat`, which would hang
/// or fail on a dead FUSE mount).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(abs) = absolute(path) else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .map(unescape_mountinfo)
            .is_some_and(|p| Path::new(&p) == abs)
    })
}

/// An absolute, `..`-free path without following the last component (which may be a
/// dead mount that cannot be stat'ed).
fn absolute(path: &Path) -> io::Result<PathBuf> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no final component"))?;
    Ok(std::fs::canonicalize(parent)?.join(name))
}

/// Mount paths in mountinfo escape space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Create the cache directory (mode 0700) if needed and check that it is writable, with a
/// message that says what to do when it is not.
pub fn prepare_cache_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let fix = "pass a writable directory with --cache-dir";
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the cache directory {}; {fix}", dir.display()))?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"").with_context(|| {
        format!(
            "the cache directory {} is not writable; {fix}",
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// The client used by a mount.
pub fn client(cfg: &MountConfig, retry: RetryPolicy) -> anyhow::Result<Client> {
    Ok(Client::new(ClientConfig {
        base_url: cfg.api_url.clone(),
        token: cfg.token.clone(),
        retry,
        io_timeout: Duration::from_secs(30),
    })?)
}

/// Run a mount until it is unmounted or the process gets SIGINT/SIGTERM. `ready` is called
/// once the mount answers.
pub fn run(cfg: &MountConfig, ready: impl FnOnce()) -> anyhow::Result<()> {
    check_mountpoint(&cfg.mountpoint)?;

    // The first listing (the volumes, all pages) checks the URL and the token before
    // anything is mounted, with the retries of any request, and is the filesystem's first
    // listing. A mount can start without it when an earlier mount saved its listings (they
    // and the cached versions are served until the API answers): then it is waited for
    // only as long as any listing is. Only a refused token, or no API and nothing saved,
    // stop the mount.
    let remote: Arc<dyn Remote> = Arc::new(client(cfg, RetryPolicy::default())?);
    let saved = Saved::exist(&cfg.cache_dir);
    let (seed, offline) = match first_listing(&remote, saved.then_some(FIRST_FETCH_WAIT)) {
        FirstListing::Listed(list) => (Some(list), None),
        FirstListing::Failed(e) if e.is_auth() => {
            bail!(
            "the VM0 API at {} rejected the token from {}{}; check that it holds a valid API key",
            cfg.api_url,
            cfg.token_source,
            e.request_id().map(|id| format!(" (request id {id})")).unwrap_or_default()
        )
        }
        FirstListing::Failed(e) if !saved => {
            return Err(
                anyhow::Error::new(e).context(format!("cannot use the VM0 API at {}", cfg.api_url))
            )
        }
        FirstListing::Failed(e) => (None, Some(format!("{:#}", anyhow::Error::new(e)))),
        FirstListing::NoAnswer(_) if !saved => {
            bail!("cannot use the VM0 API at {}: the request to list the volumes ended without an answer", cfg.api_url)
        }
        FirstListing::NoAnswer(waited) => (
            None,
            Some(format!("no answer within {} s", waited.as_secs())),
        ),
    };

    prepare_cache_dir(&cfg.cache_dir)?;
    let cache = Cache::open(&cfg.cache_dir, cfg.cache_size).with_context(|| {
        format!(
            "cannot open the cache directory {}",
            cfg.cache_dir.display()
        )
    })?;
    if let Some(why) = &offline {
        tracing::warn!(
            "the API is unreachable ({why}); serving {} cached versions from {}, read-only view may be stale; will retry",
            cache.snapshot().resident.len(),
            cfg.cache_dir.display()
        );
    }
    // SAFETY: getuid/getgid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let fs = Fs::new(
        remote,
        cache,
        FsConfig {
            metadata_ttl: cfg.metadata_ttl,
            progress_every: cfg.progress_every,
            uid,
            gid,
            label: format!(
                "vm0fs {} mounted at {} from {} since {}",
                env!("CARGO_PKG_VERSION"),
                cfg.mountpoint.display(),
                cfg.api_url,
                crate::fs::format_time(std::time::SystemTime::now())
            ),
        },
    );
    match (seed, offline) {
        (Some(list), _) => fs.seed_storages(Kind::Volume, list),
        (None, Some(why)) => fs.started_offline(why),
        (None, None) => {}
    }

    let mut options = vec![
        MountOption::FSName("vm0fs".into()),
        MountOption::Subtype("vm0fs".into()),
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoAtime,
        MountOption::DefaultPermissions,
    ];
    let acl = match cfg.access {
        Access::Owner => SessionACL::Owner,
        Access::OwnerAndRoot => SessionACL::RootAndOwner,
        Access::Everyone => SessionACL::All,
    };
    if acl != SessionACL::Owner {
        options.push(MountOption::CUSTOM("allow_other".into()));
    }
    let mut fuse_cfg = fuser::Config::default();
    fuse_cfg.mount_options = options;
    fuse_cfg.acl = acl;
    fuse_cfg.n_threads = Some(cfg.threads.max(1));
    fuse_cfg.clone_fd = true;

    if !cfg.track_opens {
        // The kernel will not say which files are open: the cache looks in /proc for them
        // under the path the kernel prints, the canonical one (taken before mounting).
        let canonical = std::fs::canonicalize(&cfg.mountpoint)
            .with_context(|| format!("cannot resolve mountpoint {}", cfg.mountpoint.display()))?;
        let open_files = OpenFiles::new(canonical);
        fs.cache()
            .set_in_use(Box::new(move || open_files.versions()));
    }
    let fuse_fs = FuseFs::new(fs, cfg.track_opens, cfg.passthrough);
    let mut session = fuser::Session::new(fuse_fs, &cfg.mountpoint, &fuse_cfg)
        .map_err(|e| mount_error(&cfg.mountpoint, e, cfg.access))?;
    let mut unmounter = session.unmount_callable();

    let (tx, rx) = mpsc::channel::<Event>();
    let session_tx = tx.clone();
    std::thread::Builder::new()
        .name("vm0fs-session".into())
        .spawn(move || {
            let result = session.run();
            let _ = session_tx.send(Event::Ended(result));
        })?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let handle = signals.handle();
    let signal_tx = tx;
    std::thread::Builder::new()
        .name("vm0fs-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let _ = signal_tx.send(Event::Signal(sig));
            }
        })?;

    let device = wait_until_answering(&cfg.mountpoint)?;
    raise_read_ahead(device);
    tracing::info!(
        mountpoint = %cfg.mountpoint.display(),
        api = %cfg.api_url,
        cache = %cfg.cache_dir.display(),
        budget = %ByteSize(cfg.cache_size),
        "ready"
    );
    ready();

    let outcome = match rx.recv() {
        Ok(Event::Signal(sig)) => {
            tracing::info!(signal = sig, "unmounting on signal");
            if let Err(e) = unmounter.unmount() {
                tracing::warn!(error = %e, "unmount failed; detaching the mount");
                let _ = detach(&cfg.mountpoint);
            }
            // The session ends once the kernel lets go of the mount.
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Event::Ended(r)) => r.map_err(anyhow::Error::from),
                _ => Ok(()),
            }
        }
        Ok(Event::Ended(r)) => {
            tracing::info!("the mount was unmounted");
            r.map_err(anyhow::Error::from)
        }
        Err(_) => Ok(()),
    };
    handle.close();
    outcome.context("the FUSE session ended with an error")
}

enum Event {
    Signal(i32),
    Ended(io::Result<()>),
}

fn mount_error(path: &Path, e: io::Error, access: Access) -> anyhow::Error {
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) if access != Access::Owner => {
            "--allow-other and --allow-root need `user_allow_other` in /etc/fuse.conf for non-root users"
        }
        Some(libc::EPERM) | Some(libc::EACCES) => "mounting needs root or the fusermount3 helper (apt-get install fuse3)",
        Some(libc::ENOENT) => "is fuse3 installed (fusermount3)? apt-get install fuse3",
        _ => "check that /dev/fuse is usable and the mountpoint is an empty directory",
    };
    anyhow::anyhow!("cannot mount vm0fs at {}: {e}; {hint}", path.display())
}

/// Poll the mountpoint until the new mount answers (its root has inode 1), so that
/// `vm0fs mount` returns only once the mount is usable. Returns the mount's device number.
fn wait_until_answering(path: &Path) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(m) = std::fs::metadata(path) {
            if m.ino() == crate::ids::Ino::ROOT.0 && is_mounted(path) {
                return Ok(m.dev());
            }
        }
        if Instant::now() > deadline {
            bail!("the mount at {} did not answer within 30 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The read-ahead the mount asks for: as large as one FUSE request (1 MiB, see `fuse.rs`).
const READ_AHEAD_KB: u32 = 1024;

/// Raise the read-ahead of the mount on device `dev` to [`READ_AHEAD_KB`]. The kernel starts
/// every FUSE mount at its default (128 KiB) whatever the daemon asks at INIT, so sequential
/// reads that miss the page cache would come in 128 KiB requests; 1 MiB requests cost an
/// eighth of the round trips. Only root may write the setting
/// (`/sys/class/bdi/<dev>/read_ahead_kb`, which lives as long as the mount); otherwise the
/// default stays, which is only slower.
fn raise_read_ahead(dev: u64) {
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    match std::fs::write(&path, format!("{READ_AHEAD_KB}\n")) {
        Ok(()) => tracing::debug!(path, kb = READ_AHEAD_KB, "read-ahead raised"),
        Err(e) => tracing::debug!(path, error = %e, "read-ahead left at the kernel's default"),
    }
}

/// Unmount a vm0fs mount, live or dead ("Transport endpoint is not connected").
pub fn unmount(path: &Path, lazy: bool) -> anyhow::Result<()> {
    if !is_mounted(path) {
        bail!("{} is not mounted", path.display());
    }
    let abs = absolute(path)?;
    let c = CString::new(abs.as_os_str().as_bytes()).context("path contains a NUL byte")?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: c is a valid NUL-terminated path; umount2 reads it only.
    let rc = unsafe { libc::umount2(c.as_ptr(), flags) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EBUSY) => bail!(
            "{} is busy: a process has a file or its working directory inside it; close it, or use `vm0fs unmount --lazy {}`",
            path.display(),
            path.display()
        ),
        // Not root: the setuid helper unmounts mounts the user owns.
        Some(libc::EPERM) => fusermount_unmount(&abs, lazy),
        _ => bail!("cannot unmount {}: {err}", path.display()),
    }
}

fn detach(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn fusermount_unmount(path: &Path, lazy: bool) -> anyhow::Result<()> {
    let mut last = None;
    for bin in ["fusermount3", "fusermount"] {
        let mut cmd = std::process::Command::new(bin);
        cmd.arg("-u");
        if lazy {
            cmd.arg("-z");
        }
        match cmd.arg(path).output() {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                bail!(
                    "cannot unmount {}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            }
            Err(e) => last = Some(e),
        }
    }
    bail!(
        "cannot unmount {}: not permitted, and no fusermount3 helper ({}); install fuse3 or run as root",
        path.display(),
        last.map(|e| e.to_string()).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Kind;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/tmp/x\134y"), r"/tmp/x\y");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\04"), r"/end\04");
    }

    #[test]
    fn a_missing_mountpoint_says_how_to_create_it() {
        let err = check_mountpoint(Path::new("/nonexistent/vm0fs-mnt"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not exist") && err.contains("mkdir -p"),
            "{err}"
        );
    }

    #[test]
    fn a_non_empty_mountpoint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let err = check_mountpoint(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
    }

    #[test]
    fn kinds_are_the_top_level_names() {
        assert_eq!(Kind::ALL.map(Kind::plural), ["volumes", "artifacts"]);
    }
}
