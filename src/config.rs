//! Plain configuration structs with their defaults. No clap, no I/O: `cli` fills them from
//! what the user typed, `mount` runs on them.

use std::path::PathBuf;
use std::time::Duration;

use crate::api::Token;

pub const DEFAULT_API_URL: &str = "https://api.vm0.ai/v1";
pub const DEFAULT_CACHE_SIZE: u64 = 10 << 30;
/// The smallest cache budget a mount accepts: 1 MiB. A smaller cache holds no useful
/// version (every access would fail with `EFBIG`), and such a budget almost always comes
/// from a forgotten unit: `--cache-size 10` is ten bytes.
pub const MIN_CACHE_SIZE: u64 = 1 << 20;
pub const DEFAULT_METADATA_TTL: Duration = Duration::from_secs(60);
/// FUSE worker threads. A request that must wait for a download waits on a waiter thread,
/// not on one of these (see `fs::wait`), so they only need to serve the kernel's
/// requests in parallel.
pub const DEFAULT_THREADS: usize = 16;

/// How far back `runs/` lists runs by default.
pub const DEFAULT_RUNS_SINCE: Duration = Duration::from_secs(7 * 86_400);
/// How many runs `runs/` lists at most by default: ten pages of the API.
pub const DEFAULT_RUNS_LIMIT: u64 = 1000;
/// Downloads that run at once; more wait in a queue. Four keep a link busy while bounding
/// the threads, connections and temporary disk space that many cold versions at once
/// (`grep -r` across storages) would take.
pub const DEFAULT_DOWNLOADS: usize = crate::cache::DEFAULT_DOWNLOADS;

/// Where the API URL of a mount came from, so that a message names the setting the user
/// actually used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ApiUrlSource {
    /// `--api-url`.
    Flag,
    /// The environment variable `VM0_API_URL`.
    Env,
    /// `api_url=` of `mount -o` or `/etc/fstab`.
    MountOption,
    /// [`DEFAULT_API_URL`].
    #[default]
    Default,
}

impl ApiUrlSource {
    /// What the user changes to use another URL, for "check ..." and "set ..." hints.
    pub fn setting(self) -> &'static str {
        match self {
            ApiUrlSource::Flag => "--api-url",
            ApiUrlSource::Env => "VM0_API_URL",
            ApiUrlSource::MountOption => "the mount option api_url",
            ApiUrlSource::Default => "--api-url (or VM0_API_URL)",
        }
    }
}

impl std::fmt::Display for ApiUrlSource {
    /// Where the URL came from, as in "the API URL ... (from --api-url)".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApiUrlSource::Flag => "--api-url",
            ApiUrlSource::Env => "VM0_API_URL",
            ApiUrlSource::MountOption => "the mount option api_url",
            ApiUrlSource::Default => "the built-in default",
        })
    }
}

/// Who besides the mounting user may enter the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Owner,
    OwnerAndRoot,
    Everyone,
}

/// What the kernel allows on the mount besides reading (it is always read-only, without
/// access times): running programs from it, honouring their set-user-id bits, opening
/// device files. The defaults are those of `mount -t fuse` by a user: programs run,
/// set-user-id bits and devices do not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelFlags {
    /// `exec` (default) / `noexec`.
    pub exec: bool,
    /// `suid` / `nosuid` (default).
    pub suid: bool,
    /// `dev` / `nodev` (default).
    pub dev: bool,
}

impl Default for KernelFlags {
    fn default() -> KernelFlags {
        KernelFlags {
            exec: true,
            suid: false,
            dev: false,
        }
    }
}

/// What a hangup (SIGHUP) does to a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnHangup {
    /// A `--foreground` mount: its terminal closed, it unmounts as on SIGTERM.
    Unmount,
    /// A daemonized mount has no terminal to lose: the signal is logged and ignored.
    Ignore,
}

/// Everything a mount runs on.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// Absolute.
    pub mountpoint: PathBuf,
    pub api_url: String,
    /// Where the API URL came from, for messages.
    pub api_url_source: ApiUrlSource,
    pub token: Token,
    /// Where the token came from ("VM0_TOKEN" or "the token file PATH"), for messages.
    pub token_source: String,
    /// Absolute: the daemon leaves the caller's working directory.
    pub cache_dir: PathBuf,
    pub cache_size: u64,
    pub metadata_ttl: Duration,
    /// `runs/` lists the runs created within this long of now ...
    pub runs_since: Duration,
    /// ... at most this many.
    pub runs_limit: usize,
    pub access: Access,
    pub threads: usize,
    /// Downloads that run at once.
    pub downloads: usize,
    /// Have the kernel send every open and close to the daemon (else, where it can, it opens
    /// files without asking, and the cache finds the files in use in `/proc`).
    pub track_opens: bool,
    /// With `track_opens`: let the kernel read unpacked files directly (FUSE passthrough)
    /// when it can.
    pub passthrough: bool,
    /// How often a running download logs its progress.
    pub progress_every: Duration,
    /// `exec`, `suid`, `dev` and their `no` forms.
    pub kernel_flags: KernelFlags,
    pub on_hangup: OnHangup,
}

/// The cache directory of root when no other is given or found: the system's place for the
/// caches of services.
pub const ROOT_CACHE_DIR: &str = "/var/cache/vm0fs";

/// The cache directory when `--cache-dir` is not given: `$XDG_CACHE_HOME/vm0fs`, else
/// `$HOME/.cache/vm0fs`, else, for root only, [`ROOT_CACHE_DIR`]. Never a shared directory
/// such as /tmp, where any user could create the name first. `euid` is the daemon's
/// effective user id; `None` when there is no place of its own.
pub fn default_cache_dir(
    xdg_cache_home: Option<&std::ffi::OsStr>,
    home: Option<&std::ffi::OsStr>,
    euid: u32,
) -> Option<PathBuf> {
    let set = |v: Option<&std::ffi::OsStr>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(x) = set(xdg_cache_home) {
        return Some(x.join("vm0fs"));
    }
    if let Some(h) = set(home) {
        return Some(h.join(".cache").join("vm0fs"));
    }
    (euid == 0).then(|| PathBuf::from(ROOT_CACHE_DIR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn the_default_cache_dir_is_never_a_shared_directory() {
        let some = |s: &'static str| Some(OsStr::new(s));
        /// XDG_CACHE_HOME, HOME, the effective uid, and the cache directory.
        type Case = (
            Option<&'static OsStr>,
            Option<&'static OsStr>,
            u32,
            Option<&'static str>,
        );
        let cases: [Case; 6] = [
            (some("/x"), some("/home/me"), 1000, Some("/x/vm0fs")),
            (None, some("/home/me"), 1000, Some("/home/me/.cache/vm0fs")),
            (some(""), some("/root"), 0, Some("/root/.cache/vm0fs")),
            // A boot-time fstab mount: no HOME. Root has a place of its own ...
            (None, None, 0, Some(ROOT_CACHE_DIR)),
            (some(""), some(""), 0, Some(ROOT_CACHE_DIR)),
            // ... another user has none (never /tmp).
            (None, None, 1000, None),
        ];
        for (xdg, home, euid, want) in cases {
            assert_eq!(
                default_cache_dir(xdg, home, euid),
                want.map(PathBuf::from),
                "{xdg:?} {home:?} {euid}"
            );
        }
    }
}
