//! The command line: clap types only, turned into plain [`vm0fs::config`] structs.
//! Populating these must not need anything but validating what the user typed. The mount
//! helper's form of the same settings (`mount -t vm0fs`, fstab) is parsed in [`options`].

mod options;

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use vm0fs::api::Token;
use vm0fs::config::{self, Access, ApiUrlSource, KernelFlags, MountConfig, OnHangup};
use vm0fs::size::ByteSize;

/// The values of `--log-level`.
const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// The environment variables, shown under every `--help`.
const ENV_HELP: &str = "Environment:
  VM0_TOKEN       API token (vm0_live_... or vm0_test_...); never passed on the command line
  VM0_API_URL     API base URL (default https://api.vm0.ai/v1)
  RUST_LOG        log filter, e.g. vm0fs=debug (overrides --log-level)
  XDG_CACHE_HOME  default cache location ($XDG_CACHE_HOME/vm0fs, else ~/.cache/vm0fs;
                  with neither HOME nor XDG_CACHE_HOME: /var/cache/vm0fs for root)";

pub use options::{from_mount_helper, is_mount_helper};

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

impl Cli {
    /// Parse the process's arguments (exiting with clap's message when they are wrong),
    /// noting where the API URL came from.
    pub fn parse_args() -> Cli {
        Cli::try_parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Parse `argv` (program name first). Besides the values, records whether the API URL
    /// came from `--api-url`, `VM0_API_URL` or the default, which only the matches know.
    pub fn try_parse_args<I, T>(argv: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Cli::command().try_get_matches_from(argv)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        if let (Command::Mount(args), Some(("mount", m))) = (&mut cli.command, matches.subcommand())
        {
            args.api_url_source = match m.value_source("api_url") {
                Some(ValueSource::CommandLine) => ApiUrlSource::Flag,
                Some(ValueSource::EnvVariable) => ApiUrlSource::Env,
                _ => ApiUrlSource::Default,
            };
        }
        Ok(cli)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount the VM0 volumes and artifacts at MOUNTPOINT (read-only).
    #[command(after_help = ENV_HELP)]
    Mount(MountArgs),
    /// Unmount a vm0fs mount (also one whose daemon died).
    Unmount(UnmountArgs),
}

#[derive(Debug, Clone, PartialEq, Args)]
pub struct MountArgs {
    /// An existing, empty directory.
    pub mountpoint: PathBuf,
    /// Base URL of the VM0 API.
    #[arg(long, env = "VM0_API_URL", default_value = config::DEFAULT_API_URL)]
    pub api_url: String,
    /// Where `api_url` came from (set by [`Cli::try_parse_args`] and the mount helper).
    #[arg(skip)]
    pub api_url_source: ApiUrlSource,
    /// Read the token from this file instead of VM0_TOKEN.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Where unpacked versions are kept: a directory of this user that nobody else may
    /// write [default: $XDG_CACHE_HOME/vm0fs, ~/.cache/vm0fs, or for root without either
    /// /var/cache/vm0fs].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Disk budget of the cache (e.g. 500M, 10G; at least 1M); least recently used versions
    /// are evicted.
    // Negative numbers reach the size parser, which says "not a size", instead of reading
    // as an unknown flag `-1`.
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "10G",
        allow_negative_numbers = true
    )]
    pub cache_size: ByteSize,
    /// Seconds before names, versions and `latest` are fetched again from the API.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub metadata_ttl: u64,
    /// How far back `runs/` lists runs: a number of seconds, or with a unit (30m, 12h, 7d).
    /// Any run can still be looked up by its id.
    #[arg(long, value_name = "AGE", default_value = "7d", value_parser = parse_age)]
    pub runs_since: u64,
    /// At most this many runs in `runs/` (the newest).
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_RUNS_LIMIT, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub runs_limit: u64,
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
    /// Downloads that run at once; more versions wait in a queue.
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_DOWNLOADS)]
    pub downloads: usize,
    /// Have the kernel ask the daemon at every open and close (one round trip per open).
    /// Default: files open without a round trip, and the cache finds open files in /proc.
    /// Needed for kernel passthrough reads of large files.
    #[arg(long)]
    pub track_opens: bool,
    /// With --track-opens (refused without it): serve every read through the daemon
    /// instead of kernel passthrough (which needs Linux 6.9+ and root, and is used
    /// automatically when available).
    #[arg(long)]
    pub no_passthrough: bool,
    /// Seconds between progress lines of a running download in the log.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    pub progress_interval: f64,
    /// Refuse to run programs from the mount (the kernel's noexec). Default: they run.
    #[arg(long)]
    pub noexec: bool,
    /// Honour set-user-id and set-group-id bits of programs in the mount (the kernel's
    /// suid; only for root). Default: nosuid.
    #[arg(long)]
    pub suid: bool,
    /// Let device files in the mount be opened as devices (the kernel's dev; only for
    /// root). Default: nodev.
    #[arg(long)]
    pub dev: bool,
    /// Log level (RUST_LOG overrides it).
    #[arg(long, default_value = "info", value_parser = LOG_LEVELS)]
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
    /// Every flag of [`MountArgs`] must appear here, save those that concern only the
    /// process the user started (`--foreground`, `--fake`, `--daemon-child`); the test
    /// `to_argv_passes_every_flag_on` fails for a flag that is missing.
    pub fn to_argv(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec!["mount".into(), self.mountpoint.clone().into()];
        let mut flag = |name: &str, value: OsString| {
            v.push(name.into());
            v.push(value);
        };
        // A URL from VM0_API_URL or the default reaches the daemon the same way (it inherits
        // the environment), so that its messages name the same source.
        match self.api_url_source {
            ApiUrlSource::Flag | ApiUrlSource::MountOption => {
                flag("--api-url", self.api_url.clone().into());
            }
            ApiUrlSource::Env | ApiUrlSource::Default => {}
        }
        if let Some(f) = &self.token_file {
            flag("--token-file", f.clone().into());
        }
        if let Some(d) = &self.cache_dir {
            flag("--cache-dir", d.clone().into());
        }
        flag("--cache-size", self.cache_size.0.to_string().into());
        flag("--metadata-ttl", self.metadata_ttl.to_string().into());
        flag("--runs-since", format!("{}s", self.runs_since).into());
        flag("--runs-limit", self.runs_limit.to_string().into());
        flag("--threads", self.threads.to_string().into());
        flag("--downloads", self.downloads.to_string().into());
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
        for (on, name) in [
            (self.noexec, "--noexec"),
            (self.suid, "--suid"),
            (self.dev, "--dev"),
        ] {
            if on {
                v.push(name.into());
            }
        }
        v
    }

    /// Check what the user typed and resolve it into what a mount runs on. Relative paths
    /// become absolute here, against the current directory, because the daemon leaves it.
    pub fn to_config(&self) -> anyhow::Result<MountConfig> {
        let token = match &self.token_file {
            Some(path) => read_token_file(path)?,
            None => std::env::var("VM0_TOKEN")
                .unwrap_or_default()
                .trim()
                .to_string(),
        };
        if token.is_empty() {
            bail!("no API token: set VM0_TOKEN (export VM0_TOKEN=vm0_live_...) or pass --token-file FILE");
        }
        check_api_url(&self.api_url, self.api_url_source)?;
        if self.threads == 0 {
            bail!("--threads must be at least 1");
        }
        if self.downloads == 0 {
            bail!("--downloads must be at least 1");
        }
        if self.cache_size.0 < config::MIN_CACHE_SIZE {
            bail!(
                "--cache-size {} is below the minimum of {}: such a cache holds no version, and every access would fail with EFBIG (a number without a unit counts bytes: write 10G for 10 GiB)",
                self.cache_size,
                ByteSize(config::MIN_CACHE_SIZE)
            );
        }
        // The mount helper takes any string; the flag is checked by clap already.
        if !LOG_LEVELS.contains(&self.log_level.as_str()) {
            bail!(
                "invalid log level {:?}: use one of {}",
                self.log_level,
                LOG_LEVELS.join(", ")
            );
        }
        if self.no_passthrough && !self.track_opens {
            bail!(
                "--no-passthrough only applies with --track-opens: without it the kernel reads files without asking vm0fs, and there is no passthrough to turn off; add --track-opens or drop --no-passthrough"
            );
        }
        let access = if self.allow_other {
            Access::Everyone
        } else if self.allow_root {
            Access::OwnerAndRoot
        } else {
            Access::Owner
        };
        Ok(MountConfig {
            mountpoint: absolute(&self.mountpoint)?,
            api_url: self.api_url.clone(),
            api_url_source: self.api_url_source,
            token: Token::new(token),
            token_source: match &self.token_file {
                Some(path) => format!("the token file {}", path.display()),
                None => "VM0_TOKEN".into(),
            },
            cache_dir: absolute(&self.cache_dir()?)?,
            cache_size: self.cache_size.0,
            metadata_ttl: Duration::from_secs(self.metadata_ttl),
            runs_since: Duration::from_secs(self.runs_since),
            runs_limit: usize::try_from(self.runs_limit).unwrap_or(usize::MAX),
            access,
            threads: self.threads,
            downloads: self.downloads,
            track_opens: self.track_opens,
            passthrough: !self.no_passthrough,
            progress_every: Duration::try_from_secs_f64(self.progress_interval)
                .ok()
                .filter(|d| !d.is_zero())
                .context("--progress-interval must be a positive number of seconds")?,
            kernel_flags: KernelFlags {
                exec: !self.noexec,
                suid: self.suid,
                dev: self.dev,
            },
            on_hangup: if self.foreground {
                OnHangup::Unmount
            } else {
                OnHangup::Ignore
            },
        })
    }

    /// `--cache-dir`, else the default of this user (see [`config::default_cache_dir`]).
    fn cache_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.cache_dir {
            return Ok(dir.clone());
        }
        let xdg = std::env::var_os("XDG_CACHE_HOME");
        let home = std::env::var_os("HOME");
        let euid = nix::unistd::geteuid().as_raw();
        config::default_cache_dir(xdg.as_deref(), home.as_deref(), euid).context(
            "no cache directory: neither HOME nor XDG_CACHE_HOME is set, and vm0fs keeps no cache in a shared directory such as /tmp (another user could create it first); pass a directory of your own with --cache-dir (cache_dir= in fstab), or set HOME",
        )
    }

    /// What is accepted but deserves a word to the user.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(path) = &self.token_file {
            // As ssh does with a private key: a secret that others can read is no longer
            // only yours (ssh refuses such a key; a mount only warns).
            if let Ok(meta) = std::fs::metadata(path) {
                let mode = meta.mode() & 0o777;
                if mode & 0o077 != 0 {
                    warnings.push(format!(
                        "the token file {} is accessible to other users (mode {mode:04o}): anyone who reads it can use your VM0 account; restrict it with `chmod 600 {}`",
                        path.display(),
                        path.display()
                    ));
                }
            }
        }
        warnings
    }
}

/// An age as `--runs-since` takes it: seconds, or a number with a unit (`s`, `m`, `h`,
/// `d`); in seconds.
fn parse_age(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (number, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let per = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => 0,
    };
    match number.parse::<u64>() {
        Ok(n) if per > 0 && n > 0 => n
            .checked_mul(per)
            .ok_or_else(|| format!("{s:?} is too long an age")),
        _ => Err(format!(
            "{s:?} is not an age: write a positive number of seconds, or one with a unit: 30m, 12h, 7d"
        )),
    }
}

/// The token in `path`, without surrounding whitespace.
fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the token file {} (given with --token-file)",
            path.display()
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        bail!(
            "the token file {} is empty; write the API token (vm0_live_...) into it",
            path.display()
        );
    }
    Ok(token.to_string())
}

/// An http(s) URL, or a message that names where it came from.
fn check_api_url(url: &str, source: ApiUrlSource) -> anyhow::Result<()> {
    let fix = format!(
        "set {} to the URL of the VM0 API, e.g. {}",
        source.setting(),
        config::DEFAULT_API_URL
    );
    let parsed = reqwest::Url::parse(url.trim())
        .with_context(|| format!("the API URL {url:?} (from {source}) is not a URL; {fix}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
        bail!("the API URL {url:?} (from {source}) is not an http(s) URL; {fix}");
    }
    Ok(())
}

/// `path` made absolute against the current directory. Of a relative path the parent is
/// canonicalized when it exists (`../mnt` reads better as `/home/me/mnt`); the last
/// component never is: it may be a dead mount, or not exist yet.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let joined = std::env::current_dir()
        .context("cannot read the current directory")?
        .join(path);
    let tidy = match (joined.parent(), path.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent).ok().map(|p| p.join(name)),
        _ => None,
    };
    Ok(tidy.unwrap_or(joined))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    /// `vm0fs mount ARGS` parsed as the binary parses it.
    fn parse_mount(args: &[OsString]) -> MountArgs {
        let argv = ["vm0fs".into(), "mount".into()]
            .into_iter()
            .chain(args.iter().cloned());
        match Cli::try_parse_args(argv).unwrap_or_else(|e| panic!("{args:?}: {e}")) {
            Cli {
                command: Command::Mount(m),
            } => m,
            other => panic!("{other:?}"),
        }
    }

    /// A value unlike the default for every flag of `vm0fs mount` that takes one.
    fn sample_value(id: &str) -> Option<&'static str> {
        Some(match id {
            "api_url" => "http://127.0.0.1:1/v1",
            "token_file" => "/etc/vm0fs/token",
            "cache_dir" => "/var/cache/vm0fs",
            "cache_size" => "20G",
            "metadata_ttl" => "5",
            "runs_since" => "12h",
            "runs_limit" => "50",
            "threads" => "3",
            "downloads" => "2",
            "progress_interval" => "0.5",
            "log_level" => "debug",
            _ => return None,
        })
    }

    /// Flags that concern only the process the user started, never its daemon.
    const NOT_FOR_THE_DAEMON: [&str; 3] = ["foreground", "fake", "daemon_child"];

    #[test]
    fn to_argv_passes_every_flag_on() {
        // Every flag clap knows, so that a new flag fails here until to_argv passes it on.
        let command = Cli::command();
        let mount = command.find_subcommand("mount").expect("mount subcommand");
        let base: Vec<OsString> = vec!["/mnt/vm0".into()];
        let default = parse_mount(&base);
        let mut seen = 0;
        for arg in mount.get_arguments().filter(|a| !a.is_positional()) {
            let id = arg.get_id().as_str();
            if NOT_FOR_THE_DAEMON.contains(&id) || matches!(id, "help" | "version") {
                continue;
            }
            let long = arg.get_long().expect("every flag has a long name");
            let mut argv = base.clone();
            argv.push(format!("--{long}").into());
            if arg.get_action().takes_values() {
                let value = sample_value(id).unwrap_or_else(|| {
                    panic!("--{long} is new: give it a sample value here, and pass it on in MountArgs::to_argv")
                });
                argv.push(value.into());
            }
            let given = parse_mount(&argv);
            assert_ne!(
                given, default,
                "the sample of --{long} must differ from its default"
            );
            let again = parse_mount(&given.to_argv()[1..]);
            assert_eq!(
                again,
                given,
                "--{long} does not survive to_argv: {:?}",
                given.to_argv()
            );
            seen += 1;
        }
        assert!(seen >= 12, "only {seen} flags seen");
    }

    #[test]
    fn to_argv_leaves_the_url_to_the_environment_it_came_from() {
        let m = parse_mount(&["/mnt/vm0".into()]);
        if std::env::var_os("VM0_API_URL").is_none() {
            assert_eq!(m.api_url_source, ApiUrlSource::Default);
        }
        assert!(
            !m.to_argv().contains(&"--api-url".into()),
            "{:?}",
            m.to_argv()
        );
        let m = parse_mount(&["/mnt/vm0".into(), "--api-url".into(), "http://h/v1".into()]);
        assert_eq!(m.api_url_source, ApiUrlSource::Flag);
        let m = from_mount_helper(&args("vm0fs /m -o api_url=http://h/v1")).unwrap();
        assert_eq!(m.api_url_source, ApiUrlSource::MountOption);
        assert!(m.to_argv().contains(&"--api-url".into()));
    }
}
