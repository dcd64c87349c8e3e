//! Shared helpers of the integration tests: the emulator started in-process, a real vm0fs
//! mount of it, writing test archives into its data directories, and running real tools.
//! The archives themselves are built with `vm0_emulator::pack`.
//!
//! Mount tests need root (or fusermount3) and /dev/fuse. When they are missing the tests
//! fail loudly: a mount test that silently skips proves nothing.

#![allow(dead_code)] // Each test binary uses a different part of this module.

pub mod hostile;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use vm0_emulator::{EmulatorConfig, RunningEmulator};

/// A `vm0-emulator` running in the test's process, stopped on drop.
pub struct Emulator {
    /// Stopped when dropped, as if its process had exited.
    running: RunningEmulator,
    pub api_url: String,
    pub store_url: String,
    pub admin_url: String,
    pub token: String,
    http: reqwest::blocking::Client,
}

impl Emulator {
    /// Start an emulator with `config` (its listeners on random loopback ports).
    pub fn start(config: EmulatorConfig) -> Emulator {
        let running = vm0_emulator::start(config).expect("start the emulator");
        Emulator {
            api_url: running.api_url(),
            store_url: running.store_url(),
            admin_url: running.admin_url(),
            token: running.token(),
            running,
            http: reqwest::blocking::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    /// The built-in demo data set (`vm0-emulator --demo`).
    pub fn demo() -> Emulator {
        Emulator::start(EmulatorConfig {
            demo: true,
            ..EmulatorConfig::default()
        })
    }

    /// One data directory (`vm0-emulator --data DIR`).
    pub fn with_data(dir: &Path) -> Emulator {
        Emulator::start(EmulatorConfig {
            data_dirs: vec![dir.to_path_buf()],
            ..EmulatorConfig::default()
        })
    }

    /// The emulator itself, to drive its agents and runs.
    pub fn running(&self) -> &RunningEmulator {
        &self.running
    }

    pub fn counters(&self) -> Value {
        self.http
            .get(format!("{}/counters", self.admin_url))
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    /// A counter by key (0 when absent).
    pub fn counter(&self, key: &str) -> u64 {
        self.counters()[key].as_u64().unwrap_or(0)
    }

    pub fn reset_counters(&self) {
        self.post("counters/reset", &serde_json::json!({}));
    }

    pub fn fault(&self, rule: Value) {
        self.post("faults", &rule);
    }

    pub fn clear_faults(&self) {
        self.http
            .delete(format!("{}/faults", self.admin_url))
            .send()
            .unwrap();
    }

    pub fn config(&self, cfg: Value) {
        self.post("config", &cfg);
    }

    pub fn post(&self, path: &str, body: &Value) -> Value {
        let resp = self
            .http
            .post(format!("{}/{path}", self.admin_url))
            .json(body)
            .send()
            .unwrap();
        assert!(
            resp.status().is_success(),
            "admin {path}: {}",
            resp.status()
        );
        resp.json().unwrap_or(Value::Null)
    }

    /// GET an API path (e.g. `/volumes`) with the token; the JSON answer.
    pub fn api_get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.api_url))
            .bearer_auth(&self.token)
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    /// The storage object named `name` of `kind` (`volumes`/`artifacts`), all pages read.
    pub fn storage(&self, kind: &str, name: &str) -> Value {
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/{kind}?limit=100");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = self.api_get(&path);
            if let Some(s) = page["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == name)
            {
                return s.clone();
            }
            let p = &page["pagination"];
            if !(p["has_more"]
                .as_bool()
                .or(p["hasMore"].as_bool())
                .unwrap_or(false))
            {
                panic!("{kind} {name} not found");
            }
            cursor = p["next_cursor"]
                .as_str()
                .or(p["nextCursor"].as_str())
                .map(String::from);
        }
    }

    /// The current version id of a storage, as the API says.
    pub fn current_version(&self, kind: &str, name: &str) -> String {
        let s = self.storage(kind, name);
        s["current_version_id"]
            .as_str()
            .or(s["currentVersionId"].as_str())
            .unwrap()
            .to_string()
    }

    /// Every version id of a storage, newest first.
    pub fn versions(&self, kind: &str, name: &str) -> Vec<String> {
        let id = self.storage(kind, name)["id"].as_str().unwrap().to_string();
        let page = self.api_get(&format!("/{kind}/{id}/versions?limit=100"));
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect()
    }
}

/// Write `bytes` as the version `label` of storage `name` of `kind` in an emulator data dir.
pub fn put_archive(data: &Path, kind: &str, name: &str, label: &str, bytes: &[u8]) -> PathBuf {
    let dir = data.join(kind).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{label}.tar.gz"));
    std::fs::write(&path, bytes).unwrap();
    path
}

pub fn vm0fs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vm0fs")
}

/// Fail (never skip) when this machine cannot mount.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: mount tests need FUSE (they fail rather than skip)"
    );
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let helper = Command::new("fusermount3").arg("-V").output().is_ok();
    assert!(
        root || helper,
        "mount tests need root or fusermount3 (apt-get install fuse3)"
    );
}

/// A vm0fs mount of an emulator, in the foreground as a child process; unmounted and
/// stopped on drop.
pub struct Mount {
    pub dir: TempDir,
    pub cache: PathBuf,
    child: Option<Child>,
    pub log: PathBuf,
    /// The log and (by default) the cache: removed with the mount, kept when the test
    /// failed, for a look at what happened.
    work: Option<TempDir>,
}

#[derive(Default)]
pub struct MountOpts<'a> {
    pub token: Option<&'a str>,
    pub extra: Vec<String>,
    pub cache: Option<PathBuf>,
    /// Environment variables of the daemon (test knobs).
    pub env: Vec<(&'a str, String)>,
}

impl Mount {
    pub fn new(emu: &Emulator) -> Mount {
        Mount::with(emu, MountOpts::default())
    }

    pub fn with(emu: &Emulator, opts: MountOpts<'_>) -> Mount {
        Mount::try_with(emu, opts).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Mount, or the daemon's output if it exited before the mount answered.
    pub fn try_with(emu: &Emulator, opts: MountOpts<'_>) -> Result<Mount, String> {
        require_fuse();
        let dir = tempfile::Builder::new()
            .prefix("vm0fs-mnt")
            .tempdir()
            .unwrap();
        let work = tempfile::Builder::new()
            .prefix("vm0fs-work")
            .tempdir()
            .unwrap();
        let cache = opts
            .cache
            .clone()
            .unwrap_or_else(|| work.path().join("cache"));
        let log = work.path().join("vm0fs.log");
        let mut cmd = Command::new(vm0fs_bin());
        cmd.arg("mount")
            .arg(dir.path())
            .arg("--foreground")
            .arg("--api-url")
            .arg(&emu.api_url)
            .arg("--cache-dir")
            .arg(&cache)
            .args(&opts.extra)
            .env("VM0_TOKEN", opts.token.unwrap_or(&emu.token))
            .env("RUST_LOG", "vm0fs=debug,warn")
            .envs(opts.env.iter().map(|(k, v)| (*k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        Mount::spawn(cmd, dir, cache, log, work)
    }

    /// Start `cmd` (a `vm0fs mount --foreground` of `dir`, stderr to `log`) and wait until
    /// the mount answers, or return the daemon's output if it exits first.
    pub fn spawn(
        mut cmd: Command,
        dir: TempDir,
        cache: PathBuf,
        log: PathBuf,
        work: TempDir,
    ) -> Result<Mount, String> {
        let mut child = cmd.spawn().expect("start vm0fs");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let out = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!(
                    "vm0fs exited with {status} before mounting:\n{out}"
                ));
            }
            if std::fs::metadata(dir.path())
                .map(|m| m.ino() == 1)
                .unwrap_or(false)
            {
                return Ok(Mount {
                    dir,
                    cache,
                    child: Some(child),
                    log,
                    work: Some(work),
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "mount did not answer within 60 s:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Unmount with `vm0fs unmount` and wait for the daemon to exit; its exit status.
    pub fn unmount(mut self) -> std::process::ExitStatus {
        let out = run(Command::new(vm0fs_bin())
            .arg("unmount")
            .arg(self.dir.path()));
        assert!(
            out.status.success(),
            "vm0fs unmount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut child = self.child.take().unwrap();
        wait_timeout(&mut child, Duration::from_secs(20)).expect("daemon exits after unmount")
    }

    /// Take the daemon process (the caller kills or signals it); the mount stays.
    pub fn take_child(&mut self) -> Child {
        self.child.take().unwrap()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Lazy unmount first: it works even when the daemon is dead or wedged.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .stderr(Stdio::null())
            .status();
        if let Some(mut c) = self.child.take() {
            if wait_timeout(&mut c, Duration::from_secs(10)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // A failed test keeps its log and cache for a look; a passing one leaves nothing.
        if let Some(work) = self.work.take() {
            if std::thread::panicking() {
                let kept = work.keep();
                eprintln!("kept the mount's log and cache in {}", kept.display());
            }
        }
    }
}

pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run `cmd` to its end (output captured, no standard input), which must come within
/// `limit`: a command that hangs on the mount is killed and the test fails, so a hang
/// never holds the suite.
pub fn run_within(limit: Duration, cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if wait_timeout(&mut child, limit).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not return within {limit:?}: the mount waited for the API");
    }
    child.wait_with_output().unwrap()
}

/// Run a command to completion, capturing its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Run a command that must succeed; its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A shell command line that must succeed; its stdout.
pub fn sh(script: &str) -> String {
    ok(Command::new("bash").arg("-c").arg(script))
}

/// Extract `archive` with the real `tar -xzf` into a new directory.
pub fn tar_extract(archive: &Path) -> TempDir {
    let out = tempfile::Builder::new()
        .prefix("vm0fs-tar")
        .tempdir()
        .unwrap();
    ok(Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(out.path()));
    out
}

/// The trees at `got` and `want` agree in everything [`tree_listing`] shows (a failure names
/// the lines that differ, at most ten a side, not the whole listings).
pub fn assert_same_listing(got_dir: &Path, want_dir: &Path) {
    let (got, want) = (tree_listing(got_dir), tree_listing(want_dir));
    let only = |a: &str, b: &str| -> Vec<String> {
        let b: std::collections::HashSet<&str> = b.lines().collect();
        a.lines()
            .filter(|l| !b.contains(l))
            .take(10)
            .map(String::from)
            .collect()
    };
    assert!(
        got == want,
        "only in {}: {:?}\nonly in {}: {:?}",
        got_dir.display(),
        only(&got, &want),
        want_dir.display(),
        only(&want, &got)
    );
}

/// One line per path below `dir`: type, mode, size, mtime (ns), link count, link target,
/// as `find -printf` reports them through `lstat`. Two trees with equal listings agree in
/// everything `ls -l` and `rsync -a` look at.
pub fn tree_listing(dir: &Path) -> String {
    let out = ok(Command::new("find")
        .arg(".")
        .arg("-mindepth")
        .arg("1")
        .arg("-printf")
        .arg("%P|%y|%m|%s|%T@|%n|%l\n")
        .current_dir(dir));
    // A directory's size is the file system's business (ext4 and tmpfs differ): blank it.
    let mut lines: Vec<String> = out
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split('|').collect();
            if f.get(1) == Some(&"d") {
                f[3] = "-";
            }
            f.join("|")
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

/// `p` as a C string, for calling libc directly.
pub fn c_path(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

/// The errno of a libc call that returns -1 on failure; 0 when it succeeded.
pub fn libc_errno<T: PartialEq + From<i8>>(rc: T) -> i32 {
    if rc != T::from(-1) {
        return 0;
    }
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

/// What `a.txt` of [`seeded_archive`]`(seed, ..)` holds.
pub fn a_txt(seed: u64) -> Vec<u8> {
    format!("archive {seed}\n").into_bytes()
}

/// An archive distinct per `seed`: `a.txt` (see [`a_txt`]) first, then, when `filler` is
/// given, a file of that name and size that gzip cannot shrink (a download that takes a
/// while, or a version that takes room).
pub fn seeded_archive(seed: u64, filler: Option<(&str, usize)>) -> Vec<u8> {
    let mut b = vm0_emulator::pack::ArchiveBuilder::new();
    b.file("a.txt", 0o644, 1_700_000_000, &a_txt(seed));
    if let Some((name, size)) = filler {
        b.file(
            name,
            0o644,
            1_700_000_000,
            &vm0_emulator::pack::pattern(size, seed),
        );
    }
    b.finish()
}
