//! Plain configuration structs with their defaults. No clap, no I/O: `cli` fills them from
//! what the user typed, `mount` runs on them.

use std::path::PathBuf;
use std::time::Duration;

use crate::api::Token;

pub const DEFAULT_API_URL: &str = "https://api.vm0.ai/v1";
pub const DEFAULT_CACHE_SIZE: u64 = 10 << 30;
pub const DEFAULT_METADATA_TTL: Duration = Duration::from_secs(60);
/// FUSE worker threads. Each one can be held by a request waiting for a cold version, so
/// there are enough for downloads not to block the rest of the mount.
pub const DEFAULT_THREADS: usize = 16;

/// Who besides the mounting user may enter the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Owner,
    OwnerAndRoot,
    Everyone,
}

/// Everything a mount runs on.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub mountpoint: PathBuf,
    pub api_url: String,
    pub token: Token,
    /// Where the token came from ("VM0_TOKEN" or "the token file PATH"), for messages.
    pub token_source: String,
    pub cache_dir: PathBuf,
    pub cache_size: u64,
    pub metadata_ttl: Duration,
    pub access: Access,
    pub threads: usize,
    /// Have the kernel send every open and close to the daemon (else, where it can, it opens
    /// files without asking, and the cache finds the files in use in `/proc`).
    pub track_opens: bool,
    /// With `track_opens`: let the kernel read unpacked files directly (FUSE passthrough)
    /// when it can.
    pub passthrough: bool,
    /// How often a running download logs its progress.
    pub progress_every: Duration,
}

/// `$XDG_CACHE_HOME/vm0fs`, else `~/.cache/vm0fs`, else a directory under /tmp.
pub fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("vm0fs");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".cache").join("vm0fs");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("vm0fs-cache-{uid}"))
}
