//! Mounting and unmounting: checks before the mount, the FUSE session's life, signals, and
//! `vm0fs unmount` (for live and for dead daemons). How the file system is attached to
//! the mountpoint and detached again (mount(2) or fusermount3) is in [`attach`].
//!
//! Everything here happens at the edge of the program, so errors are `anyhow` with
//! messages that name the thing, the cause and the fix.

mod attach;
mod mountinfo;
mod unmount;

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fuser::SessionACL;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;

use crate::api::{ApiError, Client, ClientConfig, Kind, RetryPolicy};
use crate::cache::{Cache, CacheOptions};
use crate::config::{Access, MountConfig, OnHangup};
use crate::fs::{Fs, FsConfig};
use crate::fuse::{FuseFs, KernelNotifier};
use crate::metadata::{first_listing, FirstListing, Saved, FIRST_FETCH_WAIT};
use crate::openfiles::OpenFiles;
use crate::remote::Remote;
use crate::runs::RunsConfig;
use crate::size::ByteSize;

pub use attach::{FS_TYPE, SOURCE};
pub use mountinfo::{is_mounted, mount_at, MountEntry};
pub use unmount::unmount;

/// How long `vm0fs mount` waits for the daemon of an existing vm0fs mount to answer before
/// calling it hung.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a mount waits for the cache's lock to be let go of (see
/// [`wait_for_cache_lock`]).
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Check the paths of a mount before anything is created or mounted: the mountpoint (see
/// [`check_mountpoint`]) and a cache directory outside it.
pub fn check_paths(cfg: &MountConfig) -> anyhow::Result<()> {
    check_mountpoint(&cfg.mountpoint, &cfg.cache_dir)?;
    check_cache_dir_outside(&cfg.cache_dir, &cfg.mountpoint)
}

/// Check a mountpoint before mounting: it exists, is a directory, is empty and is not
/// already a mount (live or dead). `cache_dir` is where to look for the pid of a daemon
/// that died and left its mount.
pub fn check_mountpoint(path: &Path, cache_dir: &Path) -> anyhow::Result<()> {
    if let Some(entry) = mount_at(path) {
        let p = path.display();
        if !entry.is_vm0fs() {
            bail!(
                "{p} is already a mount point (of a {} file system from {}); pick another directory, or unmount it first",
                entry.fs_type,
                entry.source
            );
        }
        match probe_daemon(path) {
            Daemon::Answers => bail!(
                "{p} is already a mount point of a running vm0fs; unmount it first (`vm0fs unmount {p}`) or pick another directory"
            ),
            Daemon::Dead => bail!(
                "{} and left its mount at {p} (\"Transport endpoint is not connected\"); run `vm0fs unmount {p}`, then mount again",
                match dead_daemon_pid(cache_dir) {
                    Some(pid) => format!("a vm0fs daemon (pid {pid}) died"),
                    None => "the vm0fs daemon of this mount died".to_string(),
                }
            ),
            Daemon::Silent => bail!(
                "{p} is mounted by a vm0fs daemon that does not answer within {} s; run `vm0fs unmount --lazy {p}`, then mount again",
                PROBE_TIMEOUT.as_secs()
            ),
        }
    }
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => bail!(
            "mountpoint {} is not a directory; pass an empty directory",
            path.display()
        ),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "mountpoint {} does not exist; create it with `mkdir -p {}`",
            path.display(),
            path.display()
        ),
        Err(e) => bail!("cannot use mountpoint {}: {e}", path.display()),
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

/// Whether the daemon of a vm0fs mount is there.
enum Daemon {
    Answers,
    /// The kernel says "Transport endpoint is not connected": the daemon is gone.
    Dead,
    /// No answer within [`PROBE_TIMEOUT`].
    Silent,
}

/// Ask the file system at `path` for its statistics. Unlike `stat`, whose answer the
/// kernel may have cached, `statfs` always goes to the daemon, and fails at once with
/// `ENOTCONN` when the daemon is dead. It runs on a thread of its own, so that a hung
/// daemon cannot hang the caller.
fn probe_daemon(path: &Path) -> Daemon {
    let path = path.to_path_buf();
    let statfs = move || nix::sys::statfs::statfs(&path).err().map(|e| e as i32);
    match on_probe_thread(statfs) {
        Probe::Answer(Some(libc::ENOTCONN)) => Daemon::Dead,
        Probe::Answer(_) | Probe::NoThread => Daemon::Answers,
        Probe::Silent => Daemon::Silent,
    }
}

/// What [`on_probe_thread`] got.
enum Probe<T> {
    Answer(T),
    /// No answer within [`PROBE_TIMEOUT`].
    Silent,
    /// No thread could be started to ask.
    NoThread,
}

/// Run `ask` (a file system call into a mount whose daemon may be hung) on a thread of its
/// own, and wait for its answer at most [`PROBE_TIMEOUT`], so that the caller never hangs.
fn on_probe_thread<T: Send + 'static>(ask: impl FnOnce() -> T + Send + 'static) -> Probe<T> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("vm0fs-probe".into())
        .spawn(move || {
            let _ = tx.send(ask());
        });
    if spawned.is_err() {
        return Probe::NoThread;
    }
    match rx.recv_timeout(PROBE_TIMEOUT) {
        Ok(answer) => Probe::Answer(answer),
        Err(_) => Probe::Silent,
    }
}

/// The pid in `CACHE/lock` when that process no longer exists: the daemon that last used
/// this cache died (a running daemon holds the lock, with its pid in it).
fn dead_daemon_pid(cache_dir: &Path) -> Option<u32> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut text = String::new();
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(cache_dir.join("lock"))
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    (!unmount::running(pid)).then_some(pid)
}

/// Refuse a cache directory inside the mountpoint: the mount would hide it, and the
/// daemon would keep its cache inside its own mount.
fn check_cache_dir_outside(cache_dir: &Path, mountpoint: &Path) -> anyhow::Result<()> {
    let mount = std::fs::canonicalize(mountpoint)
        .with_context(|| format!("cannot resolve mountpoint {}", mountpoint.display()))?;
    if resolve(cache_dir).starts_with(&mount) {
        bail!(
            "the cache directory {} is inside the mountpoint {}: the mount would hide it; pick a cache directory outside the mount (--cache-dir)",
            cache_dir.display(),
            mountpoint.display()
        );
    }
    Ok(())
}

/// `path` (absolute) with `.` and `..` resolved and its longest existing part
/// canonicalized, so that symbolic links count; the rest may not exist yet.
fn resolve(path: &Path) -> PathBuf {
    let mut lexical = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    let mut missing = Vec::new();
    let mut existing = lexical.as_path();
    loop {
        if let Ok(canonical) = std::fs::canonicalize(existing) {
            return missing.iter().rev().fold(canonical, |p, name| p.join(name));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                existing = parent;
            }
            _ => return lexical,
        }
    }
}

/// The directories that a mount attempt created for its cache. Unless the mount comes up
/// ([`CreatedDir::keep`]), they are removed again, so that a refused mount leaves nothing
/// behind.
struct CreatedDir(Option<PathBuf>);

impl CreatedDir {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for CreatedDir {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Create the cache directory (mode 0700) if needed and check that it is ours (see
/// [`crate::cache::check_dir`]) and writable, with a message that says what to do when it
/// is not.
fn prepare_cache_dir(dir: &Path) -> anyhow::Result<CreatedDir> {
    use std::os::unix::fs::DirBuilderExt;
    let fix = "pass a writable directory of your own with --cache-dir";
    // The topmost directory this call creates.
    let created = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && std::fs::symlink_metadata(d).is_err())
        .last()
        .map(Path::to_path_buf);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the cache directory {}; {fix}", dir.display()))?;
    let created = CreatedDir(created);
    crate::cache::check_dir(dir)?;
    // Only now, in a directory of ours: a name nobody else can have put there.
    if let Err(e) = nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK) {
        bail!(
            "the cache directory {} is not writable ({e}); {fix}",
            dir.display()
        );
    }
    Ok(created)
}

/// Wait up to [`LOCK_WAIT`] until no daemon holds the cache's lock (`CACHE/lock`, an
/// exclusive `flock`). `vm0fs unmount` waits for the daemon to exit, but `umount(8)` and
/// `fusermount3 -u` return once the mount is gone, and its daemon exits a moment later:
/// `umount M && vm0fs mount M` must not find the cache still in use. A lock held beyond
/// the wait belongs to a running mount, and `Cache::open` says so.
fn wait_for_cache_lock(cache_dir: &Path) {
    use nix::fcntl::{Flock, FlockArg};
    use std::os::unix::fs::OpenOptionsExt;
    // Never through a symbolic link: the cache directory is checked after this wait.
    let Ok(mut lock) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(cache_dir.join("lock"))
    else {
        return; // No lock file: a new cache.
    };
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // A shared lock taken here is let go of at once (dropping the `Flock`).
        match Flock::lock(lock, FlockArg::LockSharedNonblock) {
            Ok(_held) => return,
            Err((file, _)) => lock = file,
        }
        if Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The client used by a mount.
pub fn client(cfg: &MountConfig, retry: RetryPolicy) -> anyhow::Result<Client> {
    Ok(Client::new(ClientConfig {
        base_url: cfg.api_url.clone(),
        token: cfg.token.clone(),
        retry,
        io_timeout: Duration::from_secs(30),
        url_setting: cfg.api_url_source.setting(),
    })?)
}

/// Why the first listing refused the mount, with messages that name where the URL and the
/// token came from.
fn api_refusal(cfg: &MountConfig, e: ApiError) -> anyhow::Error {
    let url = &cfg.api_url;
    let from = cfg.api_url_source;
    let setting = from.setting();
    if e.is_auth() {
        return anyhow::anyhow!(
            "the VM0 API at {url} rejected the token from {}{}; check that it holds a valid API key",
            cfg.token_source,
            e.request_id()
                .map(|id| format!(" (request id {id})"))
                .unwrap_or_default()
        );
    }
    if e.status() == Some(404) {
        // Listing volumes is the API's most basic route: a 404 means the URL does not point
        // at the API, most often because its version part is missing.
        let hint = if url.trim_end_matches('/').ends_with("/v1") {
            format!("check that {setting} points at the VM0 API")
        } else {
            format!(
                "the API URL usually ends in /v1: try {}/v1",
                url.trim_end_matches('/')
            )
        };
        return anyhow::anyhow!(
            "the VM0 API URL {url} (from {from}) has no list of volumes (HTTP 404: {e}); {hint}"
        );
    }
    if matches!(e, ApiError::Transport { .. }) {
        let cause = std::error::Error::source(&e)
            .map(crate::api::error_chain)
            .unwrap_or_default();
        return anyhow::anyhow!("cannot reach the VM0 API at {url} (from {from}): {cause}; check {setting} and the network");
    }
    anyhow::anyhow!("cannot use the VM0 API at {url} (from {from}): {e}")
}

/// Run a mount until it is unmounted or the process gets SIGINT/SIGTERM (or SIGHUP, as
/// [`MountConfig::on_hangup`] says). `ready` is called once the mount answers, with the
/// cache (whose directory it may write its log into). Until then nothing is left behind on
/// failure: no mount, and no cache directory that this call created.
pub fn run(cfg: &MountConfig, ready: impl FnOnce(&Cache)) -> anyhow::Result<()> {
    check_paths(cfg)?;

    // The first listing (the volumes, all pages) checks the URL and the token before
    // anything is mounted, with the retries of any request, and is the filesystem's first
    // listing. A mount can start without it when an earlier mount saved its listings (they
    // and the cached versions are served until the API answers): then it is waited for
    // only as long as any listing is. Only a refused token, or no API and nothing saved,
    // stop the mount.
    let api = client(cfg, RetryPolicy::default())?;
    let remote: Arc<dyn Remote> = Arc::new(api.clone());
    let saved = Saved::exist(&cfg.cache_dir);
    let (seed, offline) = match first_listing(&remote, saved.then_some(FIRST_FETCH_WAIT)) {
        FirstListing::Listed(list) => (Some(list), None),
        FirstListing::Failed(e) if e.is_auth() || !saved => return Err(api_refusal(cfg, e)),
        FirstListing::Failed(e) => (None, Some(format!("{:#}", anyhow::Error::new(e)))),
        FirstListing::NoAnswer(_) if !saved => {
            bail!(
                "cannot use the VM0 API at {} (from {}): the request to list the volumes ended without an answer; check {} and the network",
                cfg.api_url,
                cfg.api_url_source,
                cfg.api_url_source.setting()
            )
        }
        FirstListing::NoAnswer(waited) => (
            None,
            Some(format!("no answer within {} s", waited.as_secs())),
        ),
    };

    crate::panics::install_hook();
    let created = prepare_cache_dir(&cfg.cache_dir)?;
    wait_for_cache_lock(&cfg.cache_dir);
    let options = CacheOptions {
        downloads: cfg.downloads,
        ..CacheOptions::with_budget(cfg.cache_size)
    };
    let cache = Cache::open_with(&cfg.cache_dir, options).with_context(|| {
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
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let fs = Arc::new(
        Fs::new(
            remote,
            cache,
            FsConfig {
                metadata_ttl: cfg.metadata_ttl,
                progress_every: cfg.progress_every,
                uid,
                gid,
                label: format!(
                    "vm0fs {} mounted at {} from {} since {} (pid {})",
                    env!("CARGO_PKG_VERSION"),
                    cfg.mountpoint.display(),
                    cfg.api_url,
                    crate::dates::format_time(std::time::SystemTime::now()),
                    std::process::id()
                ),
            },
        )
        .with_runs(
            Arc::new(api),
            RunsConfig {
                since: cfg.runs_since,
                limit: cfg.runs_limit,
            },
        )?,
    );
    match (seed, offline) {
        (Some(list), _) => fs.seed_storages(Kind::Volume, list),
        (None, Some(why)) => fs.started_offline(why),
        (None, None) => {}
    }

    let acl = match cfg.access {
        Access::Owner => SessionACL::Owner,
        Access::OwnerAndRoot => SessionACL::RootAndOwner,
        Access::Everyone => SessionACL::All,
    };
    // Mount options are not fuser's business here: `attach` mounts (see there why).
    let mut fuse_cfg = fuser::Config::default();
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
    let fuse_fs = FuseFs::new(fs.clone(), cfg.track_opens, cfg.passthrough);
    // Signals are caught from before the mount exists: none of them may end this process
    // without unmounting (see `signals`).
    let mut signals = Signals::new(SIGNALS)?;
    let device = attach::attach(&cfg.mountpoint, acl != SessionACL::Owner, cfg.kernel_flags)?;
    // Mounted: from here on, a failure must take the mount away again.
    let undo = |e: anyhow::Error| {
        let _ = attach::detach(&cfg.mountpoint, true);
        e
    };
    // fuser answers the kernel's INIT here; the session never unmounts by itself.
    let session = fuser::Session::from_fd(fuse_fs, device, acl, fuse_cfg)
        .map_err(|e| undo(anyhow::Error::new(e).context("the FUSE session did not start")))?;
    fs.set_kernel(Box::new(KernelNotifier::new(session.notifier())));
    // After INIT, which sets the read-ahead (the kernel applies the reply as it is
    // written), and before the first read is served.
    if let Some(entry) = mount_at(&cfg.mountpoint) {
        raise_read_ahead(entry.dev);
    }

    let (tx, rx) = mpsc::channel::<Event>();
    let session_tx = tx.clone();
    std::thread::Builder::new()
        .name("vm0fs-session".into())
        .spawn(move || {
            let result = session.run();
            let _ = session_tx.send(Event::Ended(result));
        })
        .map_err(|e| undo(e.into()))?;
    let handle = signals.handle();
    let signal_tx = tx;
    let on_hangup = cfg.on_hangup;
    std::thread::Builder::new()
        .name("vm0fs-signals".into())
        .spawn(move || {
            if let Some(sig) = signals
                .forever()
                .find(|&sig| ends_the_mount(sig, on_hangup))
            {
                let _ = signal_tx.send(Event::Signal(sig));
            }
        })
        .map_err(|e| undo(e.into()))?;
    let watched = fs.cache().clone();
    // Dropped when this function returns, which ends the watch.
    let (_watching, stop) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("vm0fs-watch".into())
        .spawn(move || watch_cache_dir(&watched, &stop))
        .map_err(|e| undo(e.into()))?;

    wait_until_answering(&cfg.mountpoint).map_err(undo)?;
    created.keep();
    tracing::info!(
        mountpoint = %cfg.mountpoint.display(),
        api = %cfg.api_url,
        cache = %cfg.cache_dir.display(),
        budget = %ByteSize(cfg.cache_size),
        "ready"
    );
    ready(fs.cache());

    let outcome = match rx.recv() {
        Ok(Event::Signal(sig)) => {
            tracing::info!(signal = sig, "unmounting on signal");
            // Downloads stop and every request waiting for one is answered first: a
            // process waiting in the mount would keep it busy, and the unmount would have
            // to wait for the download.
            fs.shutdown();
            match attach::detach(&cfg.mountpoint, false) {
                Ok(()) => {}
                // Our own unmount, refused only because a process still has a file or its
                // working directory inside: detach, the kernel lets go when it does.
                Err(attach::DetachError::Busy) => {
                    tracing::info!("the mount is still in use; detaching it (it goes when the processes inside let go)");
                    let _ = attach::detach(&cfg.mountpoint, true);
                }
                Err(e) => {
                    tracing::warn!(error = ?e, "unmount failed; detaching the mount");
                    let _ = attach::detach(&cfg.mountpoint, true);
                }
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

/// The signals a mount catches. SIGINT and SIGTERM unmount; SIGHUP unmounts a foreground
/// mount (its terminal closed) and is ignored by a daemonized one, which has no terminal;
/// SIGUSR1 and SIGUSR2, whose default action would kill the daemon and leave a dead mount
/// ("Transport endpoint is not connected"), are logged and ignored. SIGPIPE is not caught
/// here: Rust's runtime ignores it before `main` (a write to a closed pipe or socket fails
/// with EPIPE instead), and catching it would turn signal-hook's own wake-up write to a
/// closed socket into a SIGPIPE of its own, for ever.
const SIGNALS: [i32; 5] = [SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2];

/// Whether `sig` unmounts; if it does not, it is logged here.
fn ends_the_mount(sig: i32, on_hangup: OnHangup) -> bool {
    match sig {
        SIGHUP if on_hangup == OnHangup::Unmount => true,
        SIGINT | SIGTERM => true,
        SIGHUP => {
            tracing::info!(
                signal = sig,
                "SIGHUP ignored: a background mount has no terminal to lose; unmount with `vm0fs unmount`"
            );
            false
        }
        _ => {
            tracing::info!(
                signal = sig,
                "signal ignored: only SIGINT and SIGTERM unmount (or `vm0fs unmount`)"
            );
            false
        }
    }
}

/// How often a running mount checks that its cache directory is still its own.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Check every [`WATCH_EVERY`] that the cache directory and its lock are still the ones the
/// mount took (see [`Cache::check_held`], which logs and remembers a loss). Ends when the
/// mount does (`stop`'s sender is dropped) or once the loss is found.
fn watch_cache_dir(cache: &Cache, stop: &mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(WATCH_EVERY) {
        if cache.check_held().is_err() {
            return;
        }
    }
}

/// Poll the mountpoint until the new mount answers (its root has inode 1), so that
/// `vm0fs mount` returns only once the mount is usable.
fn wait_until_answering(path: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(m) = std::fs::metadata(path) {
            if m.ino() == crate::ids::Ino::ROOT.0 && is_mounted(path) {
                return Ok(());
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

/// Raise the read-ahead of the mount on device `dev` (major, minor) to [`READ_AHEAD_KB`]. The kernel starts
/// every FUSE mount at its default (128 KiB) whatever the daemon asks at INIT, so sequential
/// reads that miss the page cache would come in 128 KiB requests; 1 MiB requests cost an
/// eighth of the round trips. Only root may write the setting
/// (`/sys/class/bdi/<dev>/read_ahead_kb`, which lives as long as the mount); otherwise the
/// default stays, which is only slower.
fn raise_read_ahead((major, minor): (u32, u32)) {
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    match std::fs::write(&path, format!("{READ_AHEAD_KB}\n")) {
        Ok(()) => tracing::debug!(path, kb = READ_AHEAD_KB, "read-ahead raised"),
        Err(e) => tracing::debug!(path, error = %e, "read-ahead left at the kernel's default"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Kind;

    #[test]
    fn a_cache_dir_inside_the_mountpoint_is_refused_before_it_exists() {
        let root = tempfile::tempdir().unwrap();
        let mnt = root.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        for inside in ["mnt/cache", "mnt", "other/../mnt/./deep/cache"] {
            let cache = root.path().join(inside);
            let err = check_cache_dir_outside(&cache, &mnt)
                .unwrap_err()
                .to_string();
            assert!(err.contains("inside the mountpoint"), "{inside}: {err}");
            assert!(!mnt.join("cache").exists() && !mnt.join("deep").exists());
        }
        // Through a symbolic link to the mountpoint, too.
        std::os::unix::fs::symlink(&mnt, root.path().join("link")).unwrap();
        assert!(check_cache_dir_outside(&root.path().join("link/c"), &mnt).is_err());
        for outside in ["cache", "mnt-cache", "mnt2/cache"] {
            check_cache_dir_outside(&root.path().join(outside), &mnt).unwrap();
        }
    }

    #[test]
    fn a_refused_attempt_removes_the_cache_dirs_it_created_and_only_those() {
        let root = tempfile::tempdir().unwrap();
        let made = prepare_cache_dir(&root.path().join("a/b/cache")).unwrap();
        assert!(root.path().join("a/b/cache").is_dir());
        drop(made);
        assert!(!root.path().join("a").exists());
        std::fs::create_dir(root.path().join("kept")).unwrap();
        drop(prepare_cache_dir(&root.path().join("kept")).unwrap());
        assert!(root.path().join("kept").is_dir(), "it existed before");
        prepare_cache_dir(&root.path().join("up")).unwrap().keep();
        assert!(root.path().join("up").is_dir());
    }

    #[test]
    fn a_missing_mountpoint_says_how_to_create_it() {
        let err = check_mountpoint(
            Path::new("/nonexistent/vm0fs-mnt"),
            Path::new("/nonexistent/c"),
        )
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
        let err = check_mountpoint(dir.path(), &dir.path().join("c"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not empty"), "{err}");
    }

    #[test]
    fn kinds_are_the_top_level_names() {
        assert_eq!(Kind::ALL.map(Kind::plural), ["volumes", "artifacts"]);
    }
}
