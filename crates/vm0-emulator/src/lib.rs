//! vm0-emulator: a faithful stand-in for the VM0 API (the contract in `vm0-api.md`),
//! served over real HTTP on loopback, for the tests, the demo and the benchmarks of vm0fs.
//!
//! The crate owns everything that plays the service's side: the API listener (`/v1/...`,
//! plus the test-only [admin endpoints](#admin-endpoints) under `/_emulator/`), an S3-like
//! object store that the API's download redirects point to, the data they serve (data
//! directories, see [`load`], and a built-in demo set, see [`demo`]), agents and runs with
//! their lifecycle (see [`runs`]: live runs log, sample metrics and emit events, then end
//! and commit an artifact version), and the archive builders that tests share ([`pack`]).
//! It does not depend on vm0fs: it checks vm0fs's client against the contract, not against
//! itself. vm0fs takes it as a dev-dependency; nothing of it ships in the product.
//!
//! Archives live on disk, never in memory, so gigabyte versions are fine. Both listeners
//! serve every connection on a thread of its own (the `http` module), up to
//! [`EmulatorConfig::max_connections`], so no request waits behind another one.
//!
//! # Admin endpoints
//!
//! No authentication; JSON in, JSON out (the crate's README.md says what each one does):
//! `GET /_emulator/counters`, `POST /_emulator/counters/reset`, `GET|POST|DELETE
//! /_emulator/faults`, `GET|POST /_emulator/config`, `POST /_emulator/push`,
//! `POST /_emulator/current`, `POST /_emulator/agents`, `POST /_emulator/runs`,
//! `POST /_emulator/runs/{id}/{advance,finish,logs,events}`, `GET /_emulator/streams`.
//!
//! Tests in the same process can also drive agents and runs through the methods of
//! [`RunningEmulator`] ([`RunningEmulator::create_run`] with a [`RunSpec`], ...).
//!
//! This file owns the configuration, the state the listeners share, and starting and
//! stopping them. The `vm0-emulator` binary is a thin wrapper around [`start`]; tests call
//! [`start`] in-process:
//!
//! ```no_run
//! let emu = vm0_emulator::start(vm0_emulator::EmulatorConfig {
//!     demo: true,
//!     ..Default::default()
//! })?;
//! println!("{} {}", emu.api_url(), emu.token());
//! emu.shutdown();
//! # anyhow::Ok(())
//! ```

mod admin;
mod api;
pub mod demo;
mod events;
pub mod faults;
mod http;
mod lifecycle;
pub mod load;
pub mod model;
pub mod pack;
pub mod runs;
mod runs_api;
pub mod script;
mod store;
pub mod wire;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use parking_lot::RwLock;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use lifecycle::{
    AgentSpec, AgentVersionSpec, NewLog, RunError, RunSpec, DEFAULT_DURATION_MS, DEFAULT_LOG_RATE,
    DEFAULT_PENDING_MS, FINISHED_LOG_RATE,
};
pub use model::{content_version_id, sha256, sha256_hex, storage_id, Kind};
pub use runs::{LogType, Outcome, Run, RunStatus};
pub use runs_api::ROUTE_KEYS as RUN_ROUTE_KEYS;
pub use wire::Shape;

/// The token the emulator accepts when none is configured:
/// `vm0_test_` + hex(sha256("vm0fs-emulator-demo")). Fixed so the demo and scripts can use
/// it without passing it around.
pub fn default_token() -> String {
    format!(
        "vm0_test_{}",
        hex::encode(Sha256::digest(b"vm0fs-emulator-demo"))
    )
}

/// How to start an emulator. `Default` gives a snake-shaped API on random loopback ports
/// with no data, the default token and one-hour URLs.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Data directories to load (layout in [`load`]).
    pub data_dirs: Vec<PathBuf>,
    /// Add the built-in demo data set.
    pub demo: bool,
    pub shape: Shape,
    /// `None`: [`default_token`].
    pub token: Option<String>,
    pub listen: SocketAddr,
    pub store_listen: SocketAddr,
    /// Every page after the first repeats the last row of the previous page, as the real
    /// service can (it orders by creation time but filters on id).
    pub pagination_quirk: bool,
    /// Lifetime of presigned store URLs; 0 makes them expire at once.
    pub url_ttl_secs: u64,
    /// Where built archives go; `None`: a temporary directory removed on shutdown.
    pub work_dir: Option<PathBuf>,
    /// Connections each listener serves at once, each on a thread of its own (idle
    /// kept-alive ones included); a connection beyond them is answered `503` and closed.
    pub max_connections: usize,
    /// Milliseconds between the heartbeats of run event streams (the service: about 15 s).
    pub heartbeat_ms: u64,
}

/// The heartbeat period of the service's event streams.
pub const DEFAULT_HEARTBEAT_MS: u64 = 15_000;

/// Connections each listener serves at once by default: far more than any test opens
/// (a thread each, mostly idle), few enough that a runaway client meets a `503`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// An idle kept-alive connection to the API is closed after this long: longer than
/// clients keep idle connections (reqwest: 90 s), so a client never has one closed under
/// the request it is sending, and abandoned ones are reclaimed.
const API_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

impl Default for EmulatorConfig {
    fn default() -> Self {
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("a valid socket address");
        EmulatorConfig {
            data_dirs: Vec::new(),
            demo: false,
            shape: Shape::Snake,
            token: None,
            listen: loopback,
            store_listen: loopback,
            pagination_quirk: false,
            url_ttl_secs: 3600,
            work_dir: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
        }
    }
}

/// What the admin endpoint `/_emulator/config` can change while running.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Runtime {
    pub token: String,
    pub shape: Shape,
    pub pagination_quirk: bool,
    /// Every list page says `has_more` with the same next cursor, so a client must detect
    /// the repeated cursor instead of looping.
    pub stuck_cursor: bool,
    pub url_ttl_secs: u64,
    pub heartbeat_ms: u64,
}

/// State shared by the connection threads of both listeners, the run driver and the
/// run event streams.
pub(crate) struct Shared {
    pub runtime: RwLock<Runtime>,
    pub data: RwLock<model::Data>,
    /// Agents and runs; never locked together with `data`.
    pub runs: lifecycle::Board,
    pub faults: faults::Faults,
    pub counters: faults::Counters,
    pub holds: faults::Holds,
    /// Per-process key of the store's URL signatures: URLs of an earlier run are invalid.
    pub secret: [u8; 32],
    /// `http://127.0.0.1:PORT`, the base of presigned URLs.
    pub store_url: String,
    /// Where pushed versions' archives are written.
    pub archives_dir: PathBuf,
}

/// The one line the binary prints on stdout once both listeners are bound.
#[derive(Debug, Serialize)]
pub struct ReadyLine {
    pub api_url: String,
    pub store_url: String,
    pub admin_url: String,
    pub token: String,
}

/// A running emulator; dropping it shuts it down.
pub struct RunningEmulator {
    api_addr: SocketAddr,
    shared: Arc<Shared>,
    /// `None` once stopped.
    api: Option<http::Server>,
    /// The thread that moves live runs.
    driver: Option<JoinHandle<()>>,
    store: Option<http::Server>,
    /// A work directory we created, removed on shutdown.
    temp_dir: Option<PathBuf>,
}

/// Loads the data, binds both listeners and starts serving.
pub fn start(config: EmulatorConfig) -> anyhow::Result<RunningEmulator> {
    let (work_dir, temp_dir) = match &config.work_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            remove_stale_work_dirs();
            let dir = std::env::temp_dir().join(format!(
                "{TEMP_PREFIX}{}-{}",
                std::process::id(),
                hex::encode(rand::random::<[u8; 4]>())
            ));
            (dir.clone(), Some(dir))
        }
    };
    let result = start_in(&config, work_dir, temp_dir.clone());
    if result.is_err() {
        if let Some(dir) = &temp_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    result
}

/// Prefix of the temporary work directories, followed by `<pid>-<random>`.
const TEMP_PREFIX: &str = "vm0-emulator-";

/// Removes the temporary work directories of emulators that died without cleaning up
/// (tests kill the emulator with SIGKILL when they cannot wait for it), so that runs of a
/// test suite do not fill the temporary directory with archives.
fn remove_stale_work_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists; nothing is delivered.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn start_in(
    config: &EmulatorConfig,
    work_dir: PathBuf,
    temp_dir: Option<PathBuf>,
) -> anyhow::Result<RunningEmulator> {
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("cannot create the work directory {}", work_dir.display()))?;
    let archives_dir = work_dir.join("archives");
    let mut roots = config.data_dirs.clone();
    if config.demo {
        let demo_dir = work_dir.join("demo");
        demo::write(&demo_dir).context("cannot write the demo data set")?;
        roots.push(demo_dir);
    }
    let storages = load::load(&roots, &archives_dir)?;
    tracing::info!(storages = storages.len(), "data loaded");

    let api_listener = TcpListener::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let api_addr = api_listener.local_addr()?;
    let store_listener = TcpListener::bind(config.store_listen)
        .with_context(|| format!("cannot listen on {}", config.store_listen))?;
    let store_addr = store_listener.local_addr()?;

    let shared = Arc::new(Shared {
        runtime: RwLock::new(Runtime {
            token: config.token.clone().unwrap_or_else(default_token),
            shape: config.shape,
            pagination_quirk: config.pagination_quirk,
            stuck_cursor: false,
            url_ttl_secs: config.url_ttl_secs,
            heartbeat_ms: config.heartbeat_ms,
        }),
        data: RwLock::new(model::Data { storages }),
        runs: lifecycle::Board::new(runs::RunsData::default()),
        faults: faults::Faults::default(),
        counters: faults::Counters::default(),
        holds: faults::Holds::default(),
        secret: rand::random(),
        store_url: format!("http://{store_addr}"),
        archives_dir,
    });

    if config.demo {
        demo::add_agents_and_runs(&shared).context("cannot create the demo's agents and runs")?;
    }

    let max_connections = config.max_connections.max(1);
    let api = http::Server::spawn(
        "api",
        api_listener,
        http::Limits {
            max_connections,
            max_body: admin::MAX_BODY,
            idle_timeout: API_IDLE_TIMEOUT,
        },
        Arc::new(api::ApiHandler(Arc::clone(&shared))),
    )?;
    let store = http::Server::spawn(
        "store",
        store_listener,
        http::Limits {
            max_connections,
            max_body: store::MAX_BODY,
            idle_timeout: store::IDLE_TIMEOUT,
        },
        Arc::new(store::StoreHandler(Arc::clone(&shared))),
    )?;
    let driver = lifecycle::spawn_driver(Arc::clone(&shared))?;
    tracing::info!(api = %api_addr, store = %store_addr, "emulator listening");
    Ok(RunningEmulator {
        api_addr,
        shared,
        api: Some(api),
        driver: Some(driver),
        store: Some(store),
        temp_dir,
    })
}

impl RunningEmulator {
    /// `http://127.0.0.1:PORT/v1`
    pub fn api_url(&self) -> String {
        format!("http://{}/v1", self.api_addr)
    }

    /// `http://127.0.0.1:PORT2`
    pub fn store_url(&self) -> String {
        self.shared.store_url.clone()
    }

    /// `http://127.0.0.1:PORT/_emulator`
    pub fn admin_url(&self) -> String {
        format!("http://{}/_emulator", self.api_addr)
    }

    /// The token accepted right now (the admin endpoint can change it).
    pub fn token(&self) -> String {
        self.shared.runtime.read().token.clone()
    }

    pub fn ready_line(&self) -> ReadyLine {
        ReadyLine {
            api_url: self.api_url(),
            store_url: self.store_url(),
            admin_url: self.admin_url(),
            token: self.token(),
        }
    }

    /// Creates an agent, or adds versions to an existing one (as `POST /_emulator/agents`);
    /// returns its id.
    pub fn create_agent(&self, spec: AgentSpec) -> Result<String, RunError> {
        lifecycle::create_agent(&self.shared, spec)
    }

    /// Creates a run (as `POST /_emulator/runs`): live, or finished at once with
    /// `logs_total`; returns its id.
    pub fn create_run(&self, spec: RunSpec) -> Result<String, RunError> {
        lifecycle::create_run(&self.shared, spec)
    }

    /// Moves a run to its next state now: a pending run starts, a running one ends with its
    /// planned outcome.
    pub fn advance_run(&self, id: &str) -> Result<(), RunError> {
        lifecycle::advance(&self.shared, id)
    }

    /// Ends a live run now, with `outcome` and `error` (default: the planned ones).
    pub fn finish_run(
        &self,
        id: &str,
        outcome: Option<Outcome>,
        error: Option<String>,
    ) -> Result<(), RunError> {
        lifecycle::finish(&self.shared, id, outcome, error)
    }

    /// Cancels a live run, as `POST /v1/runs/{id}/cancel`.
    pub fn cancel_run(&self, id: &str) -> Result<(), RunError> {
        lifecycle::cancel(&self.shared, id)
    }

    /// Appends log entries to a live run, timestamped now.
    pub fn append_logs(&self, id: &str, entries: Vec<NewLog>) -> Result<(), RunError> {
        lifecycle::append_logs(&self.shared, id, entries)
    }

    /// Appends an output event to a live run; returns its sequence number.
    pub fn append_output(
        &self,
        id: &str,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<u64, RunError> {
        lifecycle::append_output(&self.shared, id, kind, data)
    }

    /// A copy of a run as it is now (its logs included).
    pub fn run(&self, id: &str) -> Option<Run> {
        self.shared.runs.data.read().run(id).cloned()
    }

    /// Event streams being served right now.
    pub fn open_event_streams(&self) -> usize {
        self.shared
            .runs
            .open_streams
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops as the exit of the process would (both listeners closed, every open
    /// connection cut, so that clients see the server gone rather than hung) and removes a
    /// temporary work directory. A connection in the middle of a delayed answer is waited
    /// for (30 s at most).
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        let Some(mut api) = self.api.take() else {
            return;
        };
        // Ends the run driver and the event streams.
        self.shared.runs.stop();
        if let Some(driver) = self.driver.take() {
            let _ = driver.join();
        }
        api.shutdown();
        if let Some(mut store) = self.store.take() {
            store.shutdown();
        }
        if let Some(dir) = self.temp_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        self.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_and_shuts_down_in_process() {
        let emu = start(EmulatorConfig {
            demo: true,
            ..EmulatorConfig::default()
        })
        .expect("start the emulator");
        let work_dir = emu.temp_dir.clone().expect("a temporary work directory");
        assert!(work_dir.join("archives").is_dir());
        let http = reqwest::blocking::Client::new();
        let resp = http
            .get(format!("{}/volumes", emu.api_url()))
            .bearer_auth(emu.token())
            .send()
            .expect("GET /volumes");
        assert_eq!(resp.status(), 200);
        let api = emu.api_addr;
        emu.shutdown();
        assert!(
            !work_dir.exists(),
            "the temporary work directory is removed"
        );
        // The listener is gone: a connection is refused or closed without an answer.
        let after = http
            .get(format!("http://{api}/v1/volumes"))
            .timeout(Duration::from_secs(2))
            .send();
        assert!(after.is_err());
    }

    /// Stopping an emulator that runs inside a test's process must look like the process
    /// exiting: a client's kept-alive connection is closed, not left open with requests on
    /// it that nothing answers.
    #[test]
    fn shutdown_closes_a_kept_alive_connection() {
        use std::io::{Read, Write};

        let emu = start(EmulatorConfig::default()).expect("start the emulator");
        let mut conn = std::net::TcpStream::connect(emu.api_addr).expect("connect");
        write!(
            conn,
            "GET /v1/volumes HTTP/1.1\r\nHost: emulator\r\nAuthorization: Bearer {}\r\n\r\n",
            emu.token()
        )
        .expect("send a request");
        // Read the answer until the server goes quiet: it keeps the connection open.
        conn.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("set a read timeout");
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => panic!("the connection closed before the shutdown"),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        emu.shutdown();
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set a read timeout");
        assert_eq!(
            conn.read(&mut buf).expect("end-of-file, not a timeout"),
            0,
            "the connection is closed"
        );
    }
}
