//! The command line: clap types only, turned into plain [`vm0fs::config`] structs.
//! Populating these must not need anything but validating what the user typed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use vm0fs::api::Token;
use vm0fs::config::{self, Access, MountConfig};
use vm0fs::size::ByteSize;

/// The environment variables, shown under every `--help`.
const ENV_HELP: &str = "Environment:
  VM0_TOKEN       API token (vm0_live_... or vm0_test_...); never passed on the command line
  VM0_API_URL     API base URL (default https://api.vm0.ai/v1)
  RUST_LOG        log filter, e.g. vm0fs=debug (overrides --log-level)
  XDG_CACHE_HOME  default cache location ($XDG_CACHE_HOME/vm0fs, else ~/.cache/vm0fs)";

#[derive(Debug, Parser)]
#[command(
    name = "vm0fs",
    version,
    about = "Mount the volumes and artifacts of the VM0 agent platform as a read-only directory tree",
    after_help = ENV_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount the VM0 volumes and artifacts at MOUNTPOINT (read-only).
    #[command(after_help = ENV_HELP)]
    Mount(MountArgs),
    /// Unmount a vm0fs mount (also one whose daemon died).
    Unmount(UnmountArgs),
}

#[derive(Debug, Clone, Args)]
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
    /// Have the kernel ask the daemon at every open and close (one round trip per open).
    /// Default: files open without a round trip, and the cache finds open files in /proc.
    /// Needed for kernel passthrough reads of large files.
    #[arg(long)]
    pub track_opens: bool,
    /// With --track-opens: serve every read through the daemon instead of kernel
    /// passthrough (which needs Linux 6.9+ and root, and is used automatically when
    /// available).
    #[arg(long)]
    pub no_passthrough: bool,
    /// Seconds between progress lines of a running download in the log.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    pub progress_interval: f64,
    /// Log level: error, warn, info, debug or trace (RUST_LOG overrides it).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Internal: `mount -f` through the mount helper: check everything, mount nothing.
    #[arg(long, hide = true)]
    pub fake: bool,
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
    /// The `vm0fs mount ...` arguments that mean these settings, for the background daemon
    /// (whatever form they were given in: flags, or mount helper options).
    pub fn to_argv(&self) -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = vec!["mount".into(), self.mountpoint.clone().into()];
        let mut flag = |name: &str, value: std::ffi::OsString| {
            v.push(name.into());
            v.push(value);
        };
        flag("--api-url", self.api_url.clone().into());
        if let Some(f) = &self.token_file {
            flag("--token-file", f.clone().into());
        }
        if let Some(d) = &self.cache_dir {
            flag("--cache-dir", d.clone().into());
        }
        flag("--cache-size", self.cache_size.0.to_string().into());
        flag("--metadata-ttl", self.metadata_ttl.to_string().into());
        flag("--threads", self.threads.to_string().into());
        flag("--log-level", self.log_level.clone().into());
        flag(
            "--progress-interval",
            self.progress_interval.to_string().into(),
        );
        if self.allow_other {
            v.push("--allow-other".into());
        }
        if self.allow_root {
            v.push("--allow-root".into());
        }
        if self.track_opens {
            v.push("--track-opens".into());
        }
        if self.no_passthrough {
            v.push("--no-passthrough".into());
        }
        v
    }

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
            token_source: match &self.token_file {
                Some(path) => format!("the token file {}", path.display()),
                None => "VM0_TOKEN".into(),
            },
            cache_dir: self
                .cache_dir
                .clone()
                .unwrap_or_else(config::default_cache_dir),
            cache_size: self.cache_size.0,
            metadata_ttl: Duration::from_secs(self.metadata_ttl),
            access,
            threads: self.threads,
            track_opens: self.track_opens,
            passthrough: !self.no_passthrough,
            progress_every: Duration::try_from_secs_f64(self.progress_interval)
                .ok()
                .filter(|d| !d.is_zero())
                .context("--progress-interval must be a positive number of seconds")?,
        })
    }
}

/// Whether this program was started as a mount(8) helper (`/sbin/mount.vm0fs` or
/// `/sbin/mount.fuse.vm0fs`, usually a symlink to `vm0fs`).
pub fn is_mount_helper(argv0: &std::ffi::OsStr) -> bool {
    let name = std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    name == "mount.vm0fs" || name == "mount.fuse.vm0fs"
}

/// Options of mount(8) and fstab that say nothing to vm0fs: accepted and ignored.
fn is_generic_mount_option(o: &str) -> bool {
    matches!(
        o,
        // mount(8) passes `rw` unless told `ro`; the mount is read-only either way.
        "defaults"
            | "ro"
            | "rw"
            | "auto"
            | "noauto"
            | "nofail"
            | "_netdev"
            | "user"
            | "nouser"
            | "users"
            | "owner"
            | "group"
            | "nosuid"
            | "nodev"
            | "noexec"
            | "exec"
            | "suid"
            | "dev"
            | "atime"
            | "noatime"
            | "relatime"
            | "async"
            | "sync"
            | "nodiratime"
            | "comment"
    ) || o.starts_with("x-")
        || o.starts_with("user=")
        || o.starts_with("comment=")
}

/// Parse the arguments mount(8) gives a helper: `SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`.
/// SOURCE is ignored; OPTIONS are vm0fs's flags in fstab form (`cache_size=20G`, `allow_other`).
pub fn from_mount_helper(args: &[String]) -> anyhow::Result<MountArgs> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut m_fake = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => options.extend(
                it.next()
                    .context("-o needs a value, e.g. -o token_file=/etc/vm0fs/token")?
                    .split(',')
                    .map(String::from),
            ),
            o if o.starts_with("-o") => options.extend(o[2..].split(',').map(String::from)),
            // sloppy, no-mtab, verbose: nothing to do for a FUSE mount.
            "-s" | "-n" | "-v" => {}
            // "fake": mount(8) -f wants everything done but the mount itself.
            "-f" => m_fake = true,
            o if o.starts_with('-') => bail!("unknown mount helper option {o:?}"),
            p => positional.push(p.to_string()),
        }
    }
    let [_source, mountpoint] = <[String; 2]>::try_from(positional).map_err(|p| {
        anyhow::anyhow!("usage: mount.vm0fs vm0fs MOUNTPOINT -o OPTIONS (got {p:?})")
    })?;
    let mut m = MountArgs {
        mountpoint: PathBuf::from(mountpoint),
        api_url: std::env::var("VM0_API_URL")
            .unwrap_or_else(|_| config::DEFAULT_API_URL.to_string()),
        token_file: None,
        cache_dir: None,
        cache_size: ByteSize(config::DEFAULT_CACHE_SIZE),
        metadata_ttl: config::DEFAULT_METADATA_TTL.as_secs(),
        foreground: false,
        allow_other: false,
        allow_root: false,
        threads: config::DEFAULT_THREADS,
        log_level: "info".into(),
        progress_interval: 2.0,
        track_opens: false,
        no_passthrough: false,
        daemon_child: false,
        fake: m_fake,
    };
    for o in options.iter().filter(|o| !o.is_empty()) {
        if is_generic_mount_option(o) {
            continue;
        }
        let (key, value) = match o.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (o.as_str(), None),
        };
        let need =
            || value.with_context(|| format!("mount option {key} needs a value ({key}=...)"));
        match key {
            "api_url" => m.api_url = need()?.to_string(),
            "token_file" => m.token_file = Some(PathBuf::from(need()?)),
            "cache_dir" => m.cache_dir = Some(PathBuf::from(need()?)),
            "cache_size" => m.cache_size = need()?.parse().map_err(|e: String| anyhow::anyhow!(e))?,
            "metadata_ttl" => {
                m.metadata_ttl = need()?.parse().with_context(|| format!("metadata_ttl={:?} is not a number of seconds", value))?
            }
            "threads" => m.threads = need()?.parse().with_context(|| format!("threads={value:?} is not a number"))?,
            "log_level" => m.log_level = need()?.to_string(),
            "progress_interval" => {
                m.progress_interval = need()?.parse().with_context(|| format!("progress_interval={value:?} is not a number of seconds"))?
            }
            "allow_other" => m.allow_other = true,
            "allow_root" => m.allow_root = true,
            "track_opens" => m.track_opens = true,
            "no_passthrough" => m.no_passthrough = true,
            other => bail!(
                "unknown mount option {other:?}; vm0fs takes api_url, token_file, cache_dir, cache_size, metadata_ttl, threads, log_level, progress_interval, allow_other, allow_root, track_opens, no_passthrough"
            ),
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn mount_helper_options_map_to_flags() {
        let m = from_mount_helper(&args(
            "vm0fs /mnt/vm0 -o rw=no,noauto,nofail,_netdev,x-systemd.automount,token_file=/etc/vm0fs/token,cache_dir=/var/cache/vm0fs,cache_size=20G,allow_other,metadata_ttl=5,threads=4,log_level=debug,api_url=http://127.0.0.1:1/v1",
        ));
        // `rw=no` is not the `rw` flag but it is not a vm0fs option either.
        assert!(m.is_err());
        let m = from_mount_helper(&args(
            "vm0fs /mnt/vm0 -n -o noauto,nofail,_netdev,x-systemd.automount,token_file=/etc/vm0fs/token -o cache_dir=/var/cache/vm0fs,cache_size=20G,allow_other,metadata_ttl=5,threads=4,log_level=debug,api_url=http://127.0.0.1:1/v1,track_opens,no_passthrough",
        ))
        .unwrap();
        assert_eq!(m.mountpoint, PathBuf::from("/mnt/vm0"));
        assert_eq!(m.token_file, Some(PathBuf::from("/etc/vm0fs/token")));
        assert_eq!(m.cache_dir, Some(PathBuf::from("/var/cache/vm0fs")));
        assert_eq!(m.cache_size, ByteSize(20 << 30));
        assert!(m.allow_other && !m.allow_root && !m.foreground);
        assert!(m.track_opens && m.no_passthrough);
        assert_eq!(
            (m.metadata_ttl, m.threads, m.log_level.as_str()),
            (5, 4, "debug")
        );
        assert_eq!(m.api_url, "http://127.0.0.1:1/v1");
    }

    #[test]
    fn mount_helper_refuses_unknown_options_with_the_list() {
        assert!(
            from_mount_helper(&args("vm0fs /m -o rw")).is_ok(),
            "mount(8) passes rw by default"
        );
        let err = from_mount_helper(&args("vm0fs /m -o colour=blue"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("colour") && err.contains("token_file"),
            "{err}"
        );
        let err = from_mount_helper(&args("/m")).unwrap_err().to_string();
        assert!(err.contains("usage"), "{err}");
    }

    #[test]
    fn helper_names() {
        assert!(is_mount_helper(std::ffi::OsStr::new("/sbin/mount.vm0fs")));
        assert!(is_mount_helper(std::ffi::OsStr::new("mount.fuse.vm0fs")));
        assert!(!is_mount_helper(std::ffi::OsStr::new("/usr/bin/vm0fs")));
    }
}
