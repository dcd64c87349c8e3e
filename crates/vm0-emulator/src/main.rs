//! `vm0-emulator`: serves the VM0 API and its object store on loopback, for the tests, the
//! demo and the benchmarks of vm0fs. A thin wrapper around the `vm0_emulator` library:
//! parse flags, start, print one JSON line with the URLs and the token, serve until
//! SIGTERM or SIGINT.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use vm0_emulator::{EmulatorConfig, Shape};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ShapeArg {
    /// The documented shape: `has_more`, `file_count`, `?version_id=`.
    Snake,
    /// The final shape: `hasMore`, `fileCount`, `?versionId=`.
    Camel,
}

/// Serve an emulated VM0 API on loopback.
///
/// Prints one JSON line on stdout once ready:
/// {"api_url":…,"store_url":…,"admin_url":…,"token":…}. Logs go to stderr (RUST_LOG).
#[derive(Debug, Parser)]
#[command(version, after_long_help = ADMIN_HELP)]
struct Args {
    /// Data directory: DIR/{volumes,artifacts}/<name>/<label>[/ | .tar.gz | .json]
    /// (repeatable).
    #[arg(long, value_name = "DIR")]
    data: Vec<PathBuf>,
    /// Add the built-in demo data set.
    #[arg(long)]
    demo: bool,
    /// JSON shape of the API.
    #[arg(long, value_enum, default_value = "snake")]
    shape: ShapeArg,
    /// Accepted Bearer token (default: vm0_test_ + sha256("vm0fs-emulator-demo")).
    #[arg(long)]
    token: Option<String>,
    /// Address of the API listener.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address of the object store listener.
    #[arg(long, default_value = "127.0.0.1:0")]
    store_listen: SocketAddr,
    /// Repeat the last row of a page at the start of the next one, like the real service.
    #[arg(long)]
    pagination_quirk: bool,
    /// Lifetime of presigned download URLs, in seconds (0: expired at once).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    url_ttl: u64,
    /// Where to build archives (default: a temporary directory removed on exit).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Milliseconds between the heartbeats of run event streams.
    #[arg(long, value_name = "MS", default_value_t = vm0_emulator::DEFAULT_HEARTBEAT_MS)]
    heartbeat_ms: u64,
    /// Connections each listener serves at once, each on a thread of its own; one beyond
    /// them is answered 503 (Retry-After: 1) and closed.
    #[arg(
        long,
        value_name = "N",
        default_value_t = vm0_emulator::DEFAULT_MAX_CONNECTIONS,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    max_connections: usize,
}

/// The end of `--help`: the admin endpoints, which flags cannot show.
const ADMIN_HELP: &str = "\
Admin endpoints (on the API listener, no authentication, JSON bodies; details in
crates/vm0-emulator/README.md):
  GET    /_emulator/counters        requests served per route key
  POST   /_emulator/counters/reset  set every counter to zero
  GET    /_emulator/faults          fault rules with their remaining uses
  POST   /_emulator/faults          add a fault rule (status, delay, cut, corrupt, etag)
  DELETE /_emulator/faults          remove every fault rule
  GET    /_emulator/config          the runtime configuration
  POST   /_emulator/config          change url_ttl_secs, token, shape, pagination_quirk,
                                    stuck_cursor, heartbeat_ms while running
  POST   /_emulator/push            create a version from JSON content; it becomes current
  POST   /_emulator/current         make a version (id or prefix) the current one
  POST   /_emulator/agents          create an agent, or add versions to one
  POST   /_emulator/runs            create a run: live (log_rate, duration_ms, outcome...)
                                    or finished at once (logs_total); count: that many
  POST   /_emulator/runs/ID/advance start a pending run now, or end a running one now
  POST   /_emulator/runs/ID/finish  end a live run now ({outcome, error} optional)
  POST   /_emulator/runs/ID/logs    append log entries to a live run ({entries: [...]})
  POST   /_emulator/runs/ID/events  append an output event to a live run ({type, data})
  GET    /_emulator/streams         how many run event streams are open";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("vm0-emulator: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    // Block the signals before any thread exists, so every thread inherits the mask and
    // only `sigwait` below receives them: a clean shutdown without a signal handler.
    let signals = block_termination_signals()?;
    let config = EmulatorConfig {
        data_dirs: args.data,
        demo: args.demo,
        shape: match args.shape {
            ShapeArg::Snake => Shape::Snake,
            ShapeArg::Camel => Shape::Camel,
        },
        token: args.token,
        listen: args.listen,
        store_listen: args.store_listen,
        pagination_quirk: args.pagination_quirk,
        url_ttl_secs: args.url_ttl,
        work_dir: args.work_dir,
        heartbeat_ms: args.heartbeat_ms.max(1),
        max_connections: args.max_connections,
    };
    let running = vm0_emulator::start(config)?;
    let line = serde_json::to_string(&running.ready_line())?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    let signal = wait_for(&signals)?;
    tracing::info!(signal, "shutting down");
    running.shutdown();
    Ok(())
}

fn block_termination_signals() -> anyhow::Result<libc::sigset_t> {
    // SAFETY: `sigset_t` is plain data; `sigemptyset` initializes it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed `sigset_t` for all three calls.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
    }
    // SAFETY: `set` is initialized; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        anyhow::bail!("pthread_sigmask: {}", std::io::Error::from_raw_os_error(rc));
    }
    Ok(set)
}

fn wait_for(set: &libc::sigset_t) -> anyhow::Result<i32> {
    let mut signal = 0;
    // SAFETY: `set` is an initialized signal set and `signal` a valid out pointer.
    let rc = unsafe { libc::sigwait(set, &mut signal) };
    if rc != 0 {
        anyhow::bail!("sigwait: {}", std::io::Error::from_raw_os_error(rc));
    }
    Ok(signal)
}
