//! The `vm0fs` binary: parse the command line, run, print the error chain, exit.

mod cli;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::Context;
use clap::Parser;

use cli::{Cli, MountArgs};

fn main() -> ExitCode {
    // Installed as /sbin/mount.vm0fs, this program serves `mount -t vm0fs` and fstab.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if cli::is_mount_helper(&argv0) {
        let args: Vec<String> = std::env::args().skip(1).collect();
        return finish(cli::from_mount_helper(&args).and_then(mount));
    }
    let cli = Cli::parse();
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

fn init_logging(level: &str, log_file: Option<&Path>) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("vm0fs={level},warn")))
        .with_context(|| {
            format!("invalid --log-level {level:?}: use error, warn, info, debug or trace")
        })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open the log file {}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        None => {
            use std::io::IsTerminal;
            let ansi = std::io::stderr().is_terminal();
            builder.with_ansi(ansi).with_writer(std::io::stderr).init()
        }
    }
    Ok(())
}

/// The log file of a daemonized mount: inside the cache directory, next to what it logs.
fn log_file_for(cache_dir: &Path) -> PathBuf {
    cache_dir.join("vm0fs.log")
}

fn mount(args: MountArgs) -> anyhow::Result<()> {
    let config = args.to_config()?;
    if args.foreground {
        init_logging(&args.log_level, None)?;
        return vm0fs::mount::run(&config, || {});
    }
    if args.daemon_child {
        let result = vm0fs::mount::prepare_cache_dir(&config.cache_dir)
            .and_then(|()| init_logging(&args.log_level, Some(&log_file_for(&config.cache_dir))))
            .and_then(|()| {
                vm0fs::mount::run(&config, || {
                    // Tell the waiting parent, then let go of the pipe: the parent exits next.
                    println!("ready");
                    let _ = std::io::stdout().flush();
                    redirect_stdout_to_null();
                })
            });
        if let Err(e) = &result {
            tracing::error!("{e:#}");
            // Before "ready" the parent is listening and shows this to the user.
            println!("error: {e:#}");
        }
        return result;
    }
    // Check what can be checked here, so that common mistakes are reported at once.
    vm0fs::mount::check_mountpoint(&config.mountpoint)?;
    if args.fake {
        return Ok(());
    }
    daemonize(&args, &config.cache_dir)
}

/// Start this program again in the background as the mount's daemon and wait until it says
/// "ready" (or why it failed). The token travels in the environment, never in argv.
fn daemonize(args: &MountArgs, cache_dir: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the vm0fs executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(args.to_argv())
        .arg("--daemon-child")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // The daemon must outlive this terminal's session and its signals.
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the vm0fs daemon")?;
    let stdout = child.stdout.take().context("daemon stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let log = log_file_for(cache_dir);
    match lines.next() {
        Some(Ok(line)) if line == "ready" => {
            eprintln!(
                "vm0fs: mounted at {} (daemon pid {}, log {}); unmount with `vm0fs unmount {}`",
                args.mountpoint.display(),
                child.id(),
                log.display(),
                args.mountpoint.display()
            );
            Ok(())
        }
        Some(Ok(line)) => {
            let _ = child.wait();
            anyhow::bail!("{}", line.strip_prefix("error: ").unwrap_or(&line))
        }
        _ => {
            let status = child.wait().ok();
            anyhow::bail!(
                "the vm0fs daemon exited before the mount was ready ({status:?}); see {}",
                log.display()
            )
        }
    }
}

fn redirect_stdout_to_null() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::unix::io::AsRawFd;
        // SAFETY: dup2 onto fd 1 replaces our stdout with /dev/null; both fds are valid.
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
}
