//! The `vm0fs` binary: parse the command line, run, print the error chain, exit.

mod cli;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;

use anyhow::Context;
use parking_lot::Mutex;

use cli::{Cli, MountArgs};
use vm0fs::config::MountConfig;

fn main() -> ExitCode {
    // SAFETY: this is the first statement of main: no thread of this process exists yet
    // (nothing is started before main), as mallopt requires.
    unsafe { vm0fs::cache::large_buffers_unpooled() };
    // Whatever vm0fs creates (the cache, its log, spools, listings) is for its user only,
    // whatever the umask it was started with; the places that create files give modes
    // 0600/0700 too.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // Installed as /sbin/mount.vm0fs, this program serves `mount -t vm0fs` and fstab.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if cli::is_mount_helper(&argv0) {
        let args: Vec<String> = std::env::args().skip(1).collect();
        return finish(cli::from_mount_helper(&args).and_then(mount));
    }
    let cli = Cli::parse_args();
    let result = match cli.command {
        cli::Command::Mount(args) => mount(args),
        cli::Command::Unmount(args) => vm0fs::mount::unmount(&args.mountpoint, args.lazy),
    };
    finish(result)
}

/// Print the error chain (`{:#}`: each cause after a colon) and pick the exit code.
fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("vm0fs: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// Where log lines go.
enum LogTo {
    Stderr,
    /// The daemon's log file, once the mount is ready.
    Held(HeldLog),
}

fn init_logging(level: &str, to: LogTo) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    // The level was checked with the other flags; this error is not expected.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("vm0fs={level},warn")))
        .map_err(|_| {
            anyhow::anyhow!("invalid --log-level {level:?}: use error, warn, info, debug or trace")
        })?;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    // Without fuser's ERROR for an answer to a request the kernel dropped: an interrupt.
    let quiet = vm0fs::fuse::QuietDroppedReplies;
    match to {
        LogTo::Held(log) => builder
            .with_ansi(false)
            .with_writer(log)
            .finish()
            .with(quiet)
            .init(),
        LogTo::Stderr => {
            use std::io::IsTerminal;
            let ansi = std::io::stderr().is_terminal();
            builder
                .with_ansi(ansi)
                .with_writer(|| LostStderr)
                .finish()
                .with(quiet)
                .init();
        }
    }
    Ok(())
}

/// Standard error for log lines, which drops what it cannot write. Once the terminal of a
/// foreground mount is closed, every write to it fails (`EIO`); tracing would then report
/// the failure with `eprintln!`, which panics when it cannot write either, and the daemon
/// would abort with its mount left dead instead of unmounting on the SIGHUP that came with
/// the hangup.
struct LostStderr;

impl Write for LostStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// The daemon's log. Until the mount is ready its lines are held in memory; then they are
/// appended to the log file in the cache directory, followed by every later line. A daemon
/// that fails to start writes nothing there: the cache directory, and its log, may belong
/// to another daemon that is running (and the failure is shown by `vm0fs mount`).
#[derive(Clone, Default)]
struct HeldLog(Arc<Mutex<LogSink>>);

enum LogSink {
    Held(Vec<u8>),
    File(File),
}

impl Default for LogSink {
    fn default() -> LogSink {
        LogSink::Held(Vec::new())
    }
}

/// More than a start logs, even at trace level; beyond it lines are dropped.
const HELD_LOG_MAX: usize = 1 << 20;

impl HeldLog {
    /// Append the held lines to `file`, and every later line.
    fn attach(&self, mut file: File) -> std::io::Result<()> {
        let mut sink = self.0.lock();
        if let LogSink::Held(lines) = &*sink {
            file.write_all(lines)?;
        }
        *sink = LogSink::File(file);
        Ok(())
    }
}

impl Write for HeldLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut sink = self.0.lock();
        match &mut *sink {
            LogSink::File(f) => f.write_all(buf)?,
            LogSink::Held(lines) if lines.len() + buf.len() <= HELD_LOG_MAX => {
                lines.extend_from_slice(buf);
            }
            LogSink::Held(_) => {}
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut *self.0.lock() {
            LogSink::File(f) => f.flush(),
            LogSink::Held(_) => Ok(()),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for HeldLog {
    type Writer = HeldLog;

    fn make_writer(&'a self) -> HeldLog {
        self.clone()
    }
}

/// The log file of a daemonized mount: inside the cache directory, next to what it logs.
fn log_file_for(cache_dir: &Path) -> PathBuf {
    cache_dir.join(vm0fs::cache::LOG_FILE)
}

fn mount(args: MountArgs) -> anyhow::Result<()> {
    let config = args.to_config()?;
    let warnings = args.warnings();
    if args.foreground || args.daemon_child {
        // The process that serves the mount keeps no directory busy: a file system the
        // user ran `vm0fs mount` from can still be unmounted. Every path is absolute now.
        std::env::set_current_dir("/").context("cannot change to the root directory")?;
    }
    if args.foreground {
        init_logging(&args.log_level, LogTo::Stderr)?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        return vm0fs::mount::run(&config, |_| {});
    }
    if args.daemon_child {
        return daemon(&args, &config, &warnings);
    }
    for w in &warnings {
        eprintln!("vm0fs: warning: {w}");
    }
    // Check what can be checked here, so that common mistakes are reported at once.
    vm0fs::mount::check_paths(&config)?;
    if args.fake {
        return Ok(());
    }
    daemonize(&args, &config.cache_dir)
}

/// The background process of a mount: serve it, and tell the waiting parent on stdout
/// that it is ready (`ready`) or why it is not (`error: ...`).
fn daemon(args: &MountArgs, config: &MountConfig, warnings: &[String]) -> anyhow::Result<()> {
    let log = HeldLog::default();
    init_logging(&args.log_level, LogTo::Held(log.clone()))?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    let log_path = log_file_for(&config.cache_dir);
    let result = vm0fs::mount::run(config, |cache| {
        // The cache directory is this daemon's now (it holds the cache's lock).
        if let Err(e) = cache.open_log().and_then(|file| log.attach(file)) {
            println!(
                "warning: cannot open the log file {}: {e}; this mount logs nothing",
                log_path.display()
            );
        }
        // Tell the waiting parent, then let go of the pipe: the parent exits next.
        println!("ready");
        let _ = std::io::stdout().flush();
        redirect_output_to_null();
    });
    if let Err(e) = &result {
        tracing::error!("{e:#}");
        // Before "ready" the parent is listening and shows this to the user.
        println!("error: {e:#}");
    }
    result
}

/// Start this program again in the background as the mount's daemon and wait until it says
/// "ready" (or why it failed). The token travels in the environment, never in argv.
fn daemonize(args: &MountArgs, cache_dir: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the vm0fs executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(args.to_argv())
        .arg("--daemon-child")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure only makes the setsid and dup2 system
    // calls (async-signal-safe, as a child of a threaded process requires): it allocates
    // nothing, takes no lock and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            // The daemon must outlive this terminal's session and its signals.
            nix::unistd::setsid()?;
            // Its stderr joins the pipe: what it prints before "ready" (a panic, say) is
            // the reason this process reports.
            nix::unistd::dup2_stderr(std::io::stdout())?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the vm0fs daemon")?;
    let stdout = child.stdout.take().context("daemon stdout")?;
    let log = log_file_for(cache_dir);
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(warning) = line.strip_prefix("warning: ") {
            eprintln!("vm0fs: warning: {warning}");
        } else if line == "ready" {
            eprintln!(
                "vm0fs: mounted at {} (daemon pid {}, log {}); unmount with `vm0fs unmount {}`",
                args.mountpoint.display(),
                child.id(),
                log.display(),
                args.mountpoint.display()
            );
            return Ok(());
        } else {
            let _ = child.wait();
            anyhow::bail!("{}", line.strip_prefix("error: ").unwrap_or(&line))
        }
    }
    let status = child.wait().ok();
    anyhow::bail!("the vm0fs daemon exited before the mount was ready ({status:?})")
}
/// Point stdout and stderr at /dev/null: the parent stops reading them once the mount is
/// ready, and a write to an abandoned pipe would fail.
fn redirect_output_to_null() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}
