//! The command line: clap types only, turned into plain [`vm0fs::config`] structs.
//! Populating these must not need anything but validating what the user typed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use vm0fs::api::Token;
use vm0fs::config::{self, Access, MountConfig};
use vm0fs::size::ByteSize;

#[derive(Debug, Parser)]
#[command(
    name = "vm0fs",
    version,
    about = "Mount the volumes and artifacts of the VM0 agent platform as a read-only directory tree",
    after_help = "Environment:\n  VM0_TOKEN     API token (vm0_live_... or vm0_test_...); never passed on the command line\n  VM0_API_URL   API base URL (default https://api.vm0.ai/v1)\n  RUST_LOG      log filter, e.g. vm0fs=debug (overrides --log-level)\n  XDG_CACHE_HOME  default cache location ($XDG_CACHE_HOME/vm0fs, else ~/.cache/vm0fs)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount the VM0 volumes and artifacts at MOUNTPOINT (read-only).
    Mount(MountArgs),
    /// Unmount a vm0fs mount (also one whose daemon died).
    Unmount(UnmountArgs),
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// An existing, empty directory.
    pub mountpoint: PathBuf,
    /// Base URL of the VM0 API.
    #[arg(long, env = "VM0_API_URL", default_value = config::DEFAULT_API_URL)]
    pub api_url: String,
    /// Read the token from this file instead of VM0_TOKEN.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Where unpacked versions are kept [default: $XDG_CACHE_HOME/vm0fs or ~/.cache/vm0fs].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Disk budget of the cache (e.g. 500M, 10G); least recently used versions are evicted.
    #[arg(long, value_name = "SIZE", default_value = "10G")]
    pub cache_size: ByteSize,
    /// Seconds before names, versions and `latest` are fetched again from the API.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub metadata_ttl: u64,
    /// Stay attached to the terminal and log to stderr (default: run in the background).
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Let other users enter the mount (non-root users need user_allow_other in /etc/fuse.conf).
    #[arg(long, conflicts_with = "allow_root")]
    pub allow_other: bool,
    /// Let root enter the mount besides the mounting user.
    #[arg(long)]
    pub allow_root: bool,
    /// FUSE worker threads.
    #[arg(long, default_value_t = config::DEFAULT_THREADS)]
    pub threads: usize,
    /// Log level: error, warn, info, debug or trace (RUST_LOG overrides it).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Internal: set on the background process that `vm0fs mount` starts.
    #[arg(long, hide = true)]
    pub daemon_child: bool,
}

#[derive(Debug, Args)]
pub struct UnmountArgs {
    pub mountpoint: PathBuf,
    /// Detach now and finish when the mount is no longer busy.
    #[arg(long)]
    pub lazy: bool,
}

impl MountArgs {
    pub fn to_config(&self) -> anyhow::Result<MountConfig> {
        let token = match &self.token_file {
            Some(path) => {
                let s = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the token file {}", path.display()))?;
                s.trim().to_string()
            }
            None => std::env::var("VM0_TOKEN")
                .unwrap_or_default()
                .trim()
                .to_string(),
        };
        if token.is_empty() {
            bail!("no API token: set VM0_TOKEN (export VM0_TOKEN=vm0_live_...) or pass --token-file FILE");
        }
        if self.threads == 0 {
            bail!("--threads must be at least 1");
        }
        let access = if self.allow_other {
            Access::Everyone
        } else if self.allow_root {
            Access::OwnerAndRoot
        } else {
            Access::Owner
        };
        let mountpoint = if self.mountpoint.is_absolute() {
            self.mountpoint.clone()
        } else {
            std::env::current_dir()
                .context("cannot read the current directory")?
                .join(&self.mountpoint)
        };
        Ok(MountConfig {
            mountpoint,
            api_url: self.api_url.clone(),
            token: Token::new(token),
            cache_dir: self
                .cache_dir
                .clone()
                .unwrap_or_else(config::default_cache_dir),
            cache_size: self.cache_size.0,
            metadata_ttl: Duration::from_secs(self.metadata_ttl),
            access,
            threads: self.threads,
        })
    }
}
