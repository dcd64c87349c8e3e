//! The security of the mount: the token never leaks (logs, error messages, the cache
//! directory, process listings, the object store), `--token-file` works without the
//! environment, other users are kept out unless `--allow-other` is given (and then the
//! modes hold), and every operation that would write is refused with EROFS.

mod common;

use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use common::hostile::{read_within, RawMount, Sandbox};
use common::{c_path, libc_errno, ok, put_archive, run, vm0fs_bin, Emulator, Mount, MountOpts};
use vm0_emulator::pack::{feature_archive, ArchiveBuilder};

const DEADLINE: Duration = Duration::from_secs(60);

/// The errno of a failed call; 0 when it succeeded.
fn errno<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn small_archive(text: &str) -> Vec<u8> {
    let mut b = ArchiveBuilder::new();
    b.file("a.txt", 0o644, 1_700_000_000, text.as_bytes());
    b.finish()
}

/// Every file under `dir` (recursively) that contains `needle`, binary files included.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                let bytes = std::fs::read(&p).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    hits.push(p);
                }
            }
        }
    }
    hits
}

/// The arguments of process `pid`, as `ps` shows them.
fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

// ---------------------------------------------------------------------------------------
// The token

#[test]
fn the_token_never_appears_in_the_log_the_cache_or_the_process_list() {
    let data = tempfile::tempdir().unwrap();
    for i in 0..4 {
        put_archive(
            data.path(),
            "artifacts",
            &format!("art-{i}"),
            "v1",
            &small_archive(&format!("art {i}\n")),
        );
    }
    let emu = Emulator::with_data(data.path());
    let token = emu.token.clone();
    let sb = Sandbox::new();
    // Trace level for every crate (reqwest, hyper...): nothing may print the token.
    let args: Vec<String> = vec![
        "--api-url".into(),
        emu.api_url.clone(),
        "--cache-dir".into(),
        sb.cache.to_str().unwrap().into(),
    ];
    let m = RawMount::start(&args, &[("VM0_TOKEN", &token), ("RUST_LOG", "trace")]).unwrap();
    let a = |i: u32| m.join(&format!("artifacts/art-{i}/latest/a.txt"));
    assert_eq!(read_within(DEADLINE, &a(0)).unwrap(), b"art 0\n");

    // Servers that echo the token back in their error pages (a proxy, a debug page).
    let echo = format!("<html>your token {token} is fine, but we are down</html>");
    emu.fault(json!({"route": "artifacts.download", "status": 500, "body": echo, "count": 1}));
    assert_eq!(read_within(DEADLINE, &a(1)).unwrap(), b"art 1\n");
    let xml =
        format!("<Error><Code>AccessDenied</Code><Message>token {token} refused</Message></Error>");
    emu.fault(json!({"route": "store.get", "status": 403, "body": xml, "content_type": "application/xml", "count": 0}));
    assert!(read_within(DEADLINE, &a(2)).is_err());
    emu.clear_faults();
    // A revoked token.
    emu.config(json!({"token": "vm0_live_1111111111111111111111111111111111111111111111111111111111111111"}));
    assert!(read_within(DEADLINE, &a(3)).is_err());

    // The mount's own status file says what it is doing, never with what token.
    let status = std::fs::read_to_string(m.join(".vm0fs/status")).unwrap_or_default();
    assert!(!status.contains(&token), "the token is in .vm0fs/status");
    let log = m.log_text();
    // The errors did happen and were logged: the test is not vacuous.
    assert!(
        log.contains("retrying") && log.contains("VM0_TOKEN") && log.contains("refused"),
        "{log}"
    );
    assert!(
        log.contains("<redacted>"),
        "the echoed token was not redacted:\n{log}"
    );
    assert!(!log.contains(&token), "the token is in the daemon's log");
    assert_eq!(
        files_containing(&sb.cache, &token),
        Vec::<PathBuf>::new(),
        "the token is in the cache"
    );
    assert!(
        !cmdline(m.pid()).contains(&token),
        "the token is in /proc/<pid>/cmdline"
    );
    let ps = ok(Command::new("ps").arg("-efww"));
    assert!(
        ps.contains(vm0fs_bin()) || ps.contains("vm0fs"),
        "ps does not list the daemon:\n{ps}"
    );
    assert!(!ps.contains(&token), "the token is in `ps -ef`");
}

#[test]
fn a_daemonized_mount_keeps_the_token_out_of_its_arguments_and_its_log() {
    let data = tempfile::tempdir().unwrap();
    put_archive(
        data.path(),
        "artifacts",
        "art",
        "v1",
        &small_archive("daemon\n"),
    );
    put_archive(
        data.path(),
        "artifacts",
        "cold",
        "v1",
        &small_archive("cold\n"),
    );
    let emu = Emulator::with_data(data.path());
    common::require_fuse();
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = run(Command::new(vm0fs_bin())
        .arg("mount")
        .arg(dir.path())
        .arg("--api-url")
        .arg(&emu.api_url)
        .arg("--cache-dir")
        .arg(cache.path())
        .env("VM0_TOKEN", &emu.token)
        .env("RUST_LOG", "trace"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains(&emu.token), "{stderr}");
    let pid: u32 = stderr
        .split("daemon pid ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no daemon pid in {stderr:?}"));
    let unmount = || ok(Command::new(vm0fs_bin()).arg("unmount").arg(dir.path()));
    let text = read_within(DEADLINE, &dir.path().join("artifacts/art/latest/a.txt"));
    let _ = std::fs::read_dir(dir.path().join("artifacts/cold")).map(|d| d.count());
    // Errors to log: an echoed token, then a revoked one.
    emu.fault(json!({"route": "store.get", "status": 500, "body": format!("echo {}", emu.token), "count": 1}));
    emu.config(json!({"token": "vm0_live_2222222222222222222222222222222222222222222222222222222222222222"}));
    let cold = read_within(DEADLINE, &dir.path().join("artifacts/cold/latest/a.txt"));
    let args = cmdline(pid);
    let ps = ok(Command::new("ps").arg("-efww"));
    unmount();
    assert_eq!(text.unwrap(), b"daemon\n");
    assert!(cold.is_err(), "read with a revoked token");
    assert!(
        args.contains("--daemon-child"),
        "{pid} is not the daemon: {args}"
    );
    assert!(
        !args.contains(&emu.token),
        "the token is in the daemon's arguments: {args}"
    );
    assert!(!ps.contains(&emu.token), "the token is in `ps -ef`");
    let log = std::fs::read_to_string(cache.path().join("vm0fs.log")).unwrap();
    assert!(log.contains("ready") && log.contains("VM0_TOKEN"), "{log}");
    assert_eq!(
        files_containing(cache.path(), &emu.token),
        Vec::<PathBuf>::new()
    );
}

#[test]
fn error_messages_of_a_failed_mount_never_show_the_token() {
    let data = tempfile::tempdir().unwrap();
    put_archive(data.path(), "artifacts", "art", "v1", &small_archive("x\n"));
    let emu = Emulator::with_data(data.path());
    let bad = "vm0_live_abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd";
    let mount = |token: &str, foreground: bool| {
        let dir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(vm0fs_bin());
        cmd.arg("mount")
            .arg(dir.path())
            .arg("--api-url")
            .arg(&emu.api_url)
            .arg("--cache-dir")
            .arg(cache.path());
        if foreground {
            cmd.arg("--foreground").env("RUST_LOG", "trace");
        }
        let out = run(cmd.env("VM0_TOKEN", token));
        assert!(!out.status.success(), "mounted with {token}");
        assert!(!vm0fs::mount::is_mounted(dir.path()));
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        if let Ok(log) = std::fs::read_to_string(cache.path().join("vm0fs.log")) {
            text.push_str(&log);
        }
        text
    };
    // A wrong token: 401.
    for foreground in [true, false] {
        let text = mount(bad, foreground);
        assert!(text.contains("VM0_TOKEN"), "{text}");
        assert!(!text.contains(bad), "the token is in the error: {text}");
        assert!(
            !text.contains("abcdefabcdef"),
            "part of the token is in the error: {text}"
        );
    }
    // A server that echoes the token in a 500 page, for good.
    emu.fault(json!({"route": "*", "status": 500, "body": format!("<pre>Authorization: Bearer {}</pre>", emu.token), "count": 0}));
    let text = mount(&emu.token, true);
    assert!(text.contains("500"), "{text}");
    assert!(
        !text.contains(&emu.token),
        "the echoed token is in the error: {text}"
    );
}

#[test]
fn the_object_store_never_receives_the_token_per_the_emulator() {
    // The emulator's store answers 400 to any request with an Authorization header, and the
    // client treats a 400 from the store as final: a read that succeeds after exactly one
    // store request per version had no such 400.
    let data = tempfile::tempdir().unwrap();
    for i in 0..3 {
        put_archive(
            data.path(),
            "volumes",
            &format!("vol-{i}"),
            "v1",
            &small_archive(&format!("vol {i}\n")),
        );
    }
    let emu = Emulator::with_data(data.path());
    let m = Mount::new(&emu);
    emu.reset_counters();
    for i in 0..3 {
        let got = read_within(DEADLINE, &m.join(&format!("volumes/vol-{i}/latest/a.txt"))).unwrap();
        assert_eq!(got, format!("vol {i}\n").into_bytes());
    }
    assert_eq!(emu.counter("store.get"), 3, "{}", emu.counters());
    assert_eq!(emu.counter("volumes.download"), 3, "{}", emu.counters());
}

/// One request as a recording server saw it.
#[derive(Debug, Clone)]
struct Seen {
    /// `api` or `store`.
    listener: &'static str,
    head: String,
}

/// An artifact of the [`FakeApi`], its fields exactly as the fake server sends them (a
/// hostile server sends whatever it likes).
#[derive(Debug, Clone)]
struct FakeStorage {
    sid: String,
    name: String,
    current: String,
    versions: Vec<String>,
    /// The download redirects to a path of the API's own host and port (a client that
    /// decides by origin whether to send the token would leak it there) instead of the
    /// separate store listener.
    same_origin: bool,
}

impl FakeStorage {
    fn new(n: u32, name: &str, current: &str, versions: &[&str]) -> FakeStorage {
        FakeStorage {
            sid: format!("3f1c9a2e-6b1d-4c1e-9a55-{n:012x}"),
            name: name.to_string(),
            current: current.to_string(),
            versions: versions.iter().map(|v| v.to_string()).collect(),
            same_origin: false,
        }
    }
}

/// A minimal VM0 API and object store on loopback that serve the given artifacts (every
/// version's archive is `archive`) and record every request head.
struct FakeApi {
    api_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A 64-hex version id.
fn vid(n: u32) -> String {
    format!("{n:064x}")
}

impl FakeApi {
    fn start(archive: Vec<u8>, storages: Vec<FakeStorage>) -> FakeApi {
        let api = TcpListener::bind("127.0.0.1:0").unwrap();
        let store = TcpListener::bind("127.0.0.1:0").unwrap();
        let addrs = (api.local_addr().unwrap(), store.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new((archive, storages));
        for (name, listener) in [("api", api), ("store", store)] {
            let (seen, shared) = (seen.clone(), shared.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming().flatten() {
                    let (seen, shared) = (seen.clone(), shared.clone());
                    std::thread::spawn(move || {
                        let _ = serve(conn, name, &seen, &shared.0, &shared.1, addrs);
                    });
                }
            });
        }
        FakeApi {
            api_url: format!("http://{}/v1", addrs.0),
            seen,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(
    conn: TcpStream,
    listener: &'static str,
    seen: &Mutex<Vec<Seen>>,
    archive: &[u8],
    storages: &[FakeStorage],
    (api_addr, store_addr): (std::net::SocketAddr, std::net::SocketAddr),
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    seen.lock().unwrap().push(Seen {
        listener,
        head: head.clone(),
    });
    let target = head.split(' ').nth(1).unwrap_or("").to_string();
    let path = target.split('?').next().unwrap_or("");
    let time = "2026-01-20T10:00:00.000Z";
    let page = |rows: Vec<serde_json::Value>| {
        json!({"data": rows, "pagination": {"has_more": false}})
            .to_string()
            .into_bytes()
    };
    let ok = |body: Vec<u8>| ("200 OK", vec![], body);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let by_sid = |sid: &str| storages.iter().find(|s| s.sid == sid);
    let (status, headers, body): (&str, Vec<String>, Vec<u8>) = match (
        listener,
        segments.as_slice(),
    ) {
        ("api", ["v1", "volumes"]) => ok(page(vec![])),
        ("api", ["v1", "artifacts"]) => ok(page(
            storages
                .iter()
                .map(|s| {
                    json!({"id": s.sid, "name": s.name, "current_version_id": s.current, "size": 9,
                           "file_count": 1, "created_at": time, "updated_at": time})
                })
                .collect(),
        )),
        ("api", ["v1", "artifacts", sid, "versions"]) if by_sid(sid).is_some() => ok(page(
            by_sid(sid)
                .unwrap()
                .versions
                .iter()
                .map(|v| {
                    json!({"id": v, "artifact_id": sid, "size": 9, "file_count": 1,
                           "created_by": "user", "created_at": time})
                })
                .collect(),
        )),
        ("api", ["v1", "artifacts", sid, "download"]) if by_sid(sid).is_some() => {
            let location = if by_sid(sid).unwrap().same_origin {
                format!("http://{api_addr}/store/{sid}/archive.tar.gz?X-Amz-Signature=def")
            } else {
                format!("http://{store_addr}/bucket/{sid}/archive.tar.gz?X-Amz-Signature=abc")
            };
            ("302 Found", vec![format!("Location: {location}")], vec![])
        }
        ("api", ["store", _, "archive.tar.gz"]) | ("store", ["bucket", _, "archive.tar.gz"]) => (
            "200 OK",
            vec!["Content-Type: application/gzip".into()],
            archive.to_vec(),
        ),
        _ => (
            "404 Not Found",
            vec!["Content-Type: application/json".into()],
            br#"{"error":{"type":"not_found_error","code":"resource_not_found","message":"no"}}"#
                .to_vec(),
        ),
    };
    let mut out = conn;
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("200") && !path.ends_with(".tar.gz") {
        response.push_str(
            "Content-Type: application/json\r\nX-Request-Id: req_00000000000000000000000000000000\r\n",
        );
    }
    for h in headers {
        response.push_str(&h);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    out.write_all(response.as_bytes())?;
    out.write_all(&body)?;
    out.flush()
}

#[test]
fn the_object_store_never_receives_the_token_as_recorded_on_the_wire() {
    let rec_vid = vid(0xa);
    let same_vid = vid(0xb);
    let mut same = FakeStorage::new(2, "same", &same_vid, &[&same_vid]);
    same.same_origin = true;
    let rec = FakeApi::start(
        small_archive("recorded\n"),
        vec![FakeStorage::new(1, "rec", &rec_vid, &[&rec_vid]), same],
    );
    let token = "vm0_test_5555555555555555555555555555555555555555555555555555555555555555";
    let args: Vec<String> = vec!["--api-url".into(), rec.api_url.clone()];
    let m = RawMount::start(&args, &[("VM0_TOKEN", token)]).unwrap();
    for name in ["rec", "same"] {
        let got = read_within(DEADLINE, &m.join(&format!("artifacts/{name}/latest/a.txt")));
        assert_eq!(
            got.unwrap_or_else(|e| panic!("{name}: {e}\n{}", m.log_text())),
            b"recorded\n"
        );
    }
    let seen = rec.seen();
    let is_store = |s: &Seen| s.listener == "store" || s.head.starts_with("GET /store/");
    let (store, api): (Vec<&Seen>, Vec<&Seen>) = seen.iter().partition(|s| is_store(s));
    assert_eq!(store.len(), 2, "one store request per artifact: {seen:#?}");
    // The API requests do carry it (else this test could not tell a leak from nothing).
    assert!(!api.is_empty());
    for s in &api {
        assert!(
            s.head.contains(&format!("Bearer {token}")),
            "an API request without the token: {}",
            s.head
        );
    }
    for s in &store {
        assert!(
            !s.head.contains(token),
            "the token went to the object store:\n{}",
            s.head
        );
        assert!(
            !s.head.to_ascii_lowercase().contains("authorization:"),
            "an Authorization header went to the store:\n{}",
            s.head
        );
    }
}

/// A mount of a [`FakeApi`] serving `storages` (every version's archive holds
/// `a.txt` = `good\n`).
fn hostile_api_mount(storages: Vec<FakeStorage>) -> (FakeApi, Mount) {
    let api = FakeApi::start(small_archive("good\n"), storages);
    let token = "vm0_test_6666666666666666666666666666666666666666666666666666666666666666";
    let args: Vec<String> = vec!["--api-url".into(), api.api_url.clone()];
    let m = RawMount::start(&args, &[("VM0_TOKEN", token)]).unwrap();
    (api, m)
}

/// The names in a directory of the mount, or the error of listing it.
fn names_in(dir: &Path) -> std::io::Result<Vec<String>> {
    let entries = std::fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    Ok(entries
        .iter()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

/// Storage names come from the server. One that cannot be a file name (`/` in it, empty)
/// must not break the whole listing: the kernel fails a `readdir` with EIO when one entry
/// has such a name (fs/fuse/readdir.c, `fuse_parse_dirfile`).
#[test]
fn a_storage_name_that_cannot_be_a_file_name_does_not_break_the_listing() {
    let long = "n".repeat(300);
    let mut storages = vec![FakeStorage::new(1, "good-name", &vid(1), &[&vid(1)])];
    for (i, name) in ["a/b", "", "..", ".", long.as_str(), "nul\0byte"]
        .iter()
        .enumerate()
    {
        storages.push(FakeStorage::new(
            10 + i as u32,
            name,
            &vid(10 + i as u32),
            &[&vid(10 + i as u32)],
        ));
    }
    let (_api, m) = hostile_api_mount(storages);
    let names = names_in(&m.join("artifacts"))
        .unwrap_or_else(|e| panic!("ls artifacts: {e}\n{}", m.log_text()));
    assert!(names.iter().any(|n| n == "good-name"), "{names:?}");
    let got = read_within(DEADLINE, &m.join("artifacts/good-name/latest/a.txt")).unwrap();
    assert_eq!(got, b"good\n");
}

/// Version ids come from the server too; the contract makes them 64 hex characters. One
/// that is not (empty: a prefix of every id; with `/`: not a file name) must not break
/// the listing of its storage.
#[test]
fn a_bogus_version_id_does_not_break_the_listing_of_its_storage() {
    let good = vid(1);
    let long = "f".repeat(300);
    let storages = vec![FakeStorage::new(
        1,
        "good-name",
        &good,
        &[&good, "", "a/b", "../../../../etc", long.as_str()],
    )];
    let (_api, m) = hostile_api_mount(storages);
    let names = names_in(&m.join("artifacts/good-name"))
        .unwrap_or_else(|e| panic!("ls artifacts/good-name: {e}\n{}", m.log_text()));
    assert!(
        names.contains(&good) && names.iter().any(|n| n == "latest"),
        "{names:?}"
    );
    let got = read_within(
        DEADLINE,
        &m.join(&format!("artifacts/good-name/{good}/a.txt")),
    )
    .unwrap();
    assert_eq!(got, b"good\n");
}

/// `latest` is a link that vm0fs makes from the server's `current_version_id`: it must be
/// a version id or absent, never a path out of the mount (`cp -r latest/ backup/` would
/// then copy from anywhere on the host).
#[test]
fn latest_never_points_outside_the_mount() {
    let storages = vec![
        FakeStorage::new(1, "evil-latest", "../../../../../../../../etc", &[&vid(1)]),
        FakeStorage::new(2, "abs-latest", "/etc", &[&vid(2)]),
    ];
    let (_api, m) = hostile_api_mount(storages);
    for name in ["evil-latest", "abs-latest"] {
        match std::fs::read_link(m.join(&format!("artifacts/{name}/latest"))) {
            Ok(target) => {
                let t = target.to_string_lossy();
                assert!(
                    t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{name}/latest points to {t:?}"
                );
            }
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{name}/latest: {e}"),
        }
    }
}

#[test]
fn a_token_file_works_without_vm0_token() {
    let data = tempfile::tempdir().unwrap();
    put_archive(
        data.path(),
        "artifacts",
        "art",
        "v1",
        &small_archive("from a token file\n"),
    );
    let emu = Emulator::with_data(data.path());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&file)
        .unwrap()
        .write_all(format!("{}\n", emu.token).as_bytes())
        .unwrap();
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let args: Vec<String> = vec![
        "--api-url".into(),
        emu.api_url.clone(),
        "--token-file".into(),
        file.to_str().unwrap().into(),
    ];
    let m = RawMount::start(&args, &[]).unwrap();
    assert_eq!(
        read_within(DEADLINE, &m.join("artifacts/art/latest/a.txt")).unwrap(),
        b"from a token file\n"
    );
    assert!(!cmdline(m.pid()).contains(&emu.token));
    drop(m);

    // Without either: refused, saying how to give one.
    let err = RawMount::start(&args[..2], &[]).err().expect("no token");
    assert!(
        err.contains("VM0_TOKEN") && err.contains("--token-file"),
        "{err}"
    );
    // A wrong token in the file: refused, the token not shown.
    std::fs::write(
        &file,
        "vm0_live_9999999999999999999999999999999999999999999999999999999999999999\n",
    )
    .unwrap();
    let wrong = RawMount::start(&args, &[]).err().expect("wrong token");
    assert!(!wrong.contains("vm0_live_9999"), "{wrong}");
    // A missing file: named.
    let missing: Vec<String> = vec![
        "--api-url".into(),
        emu.api_url.clone(),
        "--token-file".into(),
        "/nonexistent/token".into(),
    ];
    let err = RawMount::start(&missing, &[])
        .err()
        .expect("missing token file");
    assert!(err.contains("/nonexistent/token"), "{err}");
    // The fix to suggest for a wrong token is the file it came from, not VM0_TOKEN (which
    // is not even set).
    assert!(
        wrong.contains(file.to_str().unwrap()),
        "the error does not name the token file: {wrong}"
    );
}

// ---------------------------------------------------------------------------------------
// Other users

fn as_nobody(args: &[&str]) -> std::process::Output {
    run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(args))
}

#[test]
fn other_users_are_refused_unless_allow_other_and_then_the_modes_hold() {
    let data = tempfile::tempdir().unwrap();
    put_archive(data.path(), "artifacts", "report", "v1", &feature_archive());
    let emu = Emulator::with_data(data.path());

    let m = Mount::new(&emu);
    let root = m.path().to_str().unwrap().to_string();
    let readme = m.join("artifacts/report/latest/README.md");
    assert!(read_within(DEADLINE, &readme).is_ok(), "the owner reads");
    for args in [
        vec!["ls", root.as_str()],
        vec!["cat", readme.to_str().unwrap()],
    ] {
        let out = as_nobody(&args);
        assert!(!out.status.success(), "{args:?} worked for nobody");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Permission denied"), "{args:?}: {err}");
    }
    drop(m);

    let m = Mount::with(
        &emu,
        MountOpts {
            extra: vec!["--allow-other".into()],
            ..Default::default()
        },
    );
    let root = m.path().to_str().unwrap().to_string();
    let v = m.join("artifacts/report/latest");
    let out = as_nobody(&["ls", &root]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["agents", "artifacts", "runs", "volumes"]
    );
    let out = as_nobody(&["cat", v.join("README.md").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"# Agent output\n\nSee docs/.\n");
    // default_permissions: the modes of the archive hold for other users.
    for (what, path) in [("cat", "secret.key"), ("ls", "docs/guide/deep")] {
        let p = v.join(path);
        let out = as_nobody(&[what, p.to_str().unwrap()]);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert!(
            !out.status.success(),
            "nobody could {what} {path} (mode {mode:o})"
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    }
}

// ---------------------------------------------------------------------------------------
// Writes

#[test]
fn every_write_type_operation_is_erofs() {
    let data = tempfile::tempdir().unwrap();
    put_archive(data.path(), "artifacts", "report", "v1", &feature_archive());
    let emu = Emulator::with_data(data.path());
    let m = Mount::new(&emu);
    let id = emu.current_version("artifacts", "report");
    let version = m.join(&format!("artifacts/report/{id}"));
    let file = version.join("README.md");
    assert!(read_within(DEADLINE, &file).is_ok());
    // Directories at every level of the tree, and files and a symlink inside a version.
    let dirs = [
        m.path().to_path_buf(),
        m.join("artifacts"),
        m.join("artifacts/report"),
        version.clone(),
        version.join("docs"),
        m.join(".vm0fs"),
    ];
    let files = [
        file.clone(),
        version.join("run.sh"),
        version.join("sizes/f4096.bin"),
        m.join(".vm0fs/status"),
    ];
    let mut failures = Vec::new();
    let mut expect = |what: String, got: i32| {
        if got != libc::EROFS {
            failures.push(format!(
                "{what}: errno {got} ({})",
                std::io::Error::from_raw_os_error(got)
            ));
        }
    };
    for d in &dirs {
        let n = |s: &str| d.join(s);
        expect(
            format!("create in {}", d.display()),
            errno(std::fs::File::create(n("new.txt"))),
        );
        expect(
            format!("mkdir in {}", d.display()),
            errno(std::fs::create_dir(n("newdir"))),
        );
        expect(
            format!("symlink in {}", d.display()),
            errno(std::os::unix::fs::symlink("x", n("newlink"))),
        );
        expect(
            format!("link into {}", d.display()),
            errno(std::fs::hard_link(&file, n("newhard"))),
        );
        let fifo = c_path(&n("fifo"));
        // SAFETY: a valid NUL-terminated path.
        expect(
            format!("mkfifo in {}", d.display()),
            libc_errno(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }),
        );
        expect(
            format!("chmod {}", d.display()),
            errno(std::fs::set_permissions(
                d,
                std::fs::Permissions::from_mode(0o777),
            )),
        );
        expect(
            format!("chown {}", d.display()),
            errno(std::os::unix::fs::chown(d, Some(65534), Some(65534))),
        );
        let (name, value) = (CString::new("user.x").unwrap(), b"1");
        let p = c_path(d);
        // SAFETY: valid NUL-terminated path and name, and a buffer of the given length.
        let rc = unsafe {
            libc::setxattr(
                p.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        expect(format!("setxattr {}", d.display()), libc_errno(rc));
        let vm0 = CString::new("user.vm0.id").unwrap();
        // SAFETY: valid NUL-terminated path and name.
        expect(
            format!("removexattr {}", d.display()),
            libc_errno(unsafe { libc::removexattr(p.as_ptr(), vm0.as_ptr()) }),
        );
    }
    // Removing and renaming what exists: a version, a storage, a directory in a version.
    for d in [
        version.join("docs"),
        version.clone(),
        m.join("artifacts/report"),
    ] {
        expect(
            format!("rmdir {}", d.display()),
            errno(std::fs::remove_dir(&d)),
        );
        expect(
            format!("rename {}", d.display()),
            errno(std::fs::rename(&d, d.with_extension("moved"))),
        );
    }
    expect(
        "unlink the latest link".into(),
        errno(std::fs::remove_file(m.join("artifacts/report/latest"))),
    );
    expect(
        "unlink a symlink".into(),
        errno(std::fs::remove_file(version.join("link-to-readme"))),
    );
    for f in &files {
        let s = f.display();
        expect(
            format!("open {s} for writing"),
            errno(std::fs::OpenOptions::new().write(true).open(f)),
        );
        expect(
            format!("open {s} read-write"),
            errno(std::fs::OpenOptions::new().read(true).write(true).open(f)),
        );
        expect(
            format!("open {s} to append"),
            errno(std::fs::OpenOptions::new().append(true).open(f)),
        );
        expect(
            format!("open {s} with O_TRUNC"),
            errno(
                std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(f),
            ),
        );
        expect(format!("unlink {s}"), errno(std::fs::remove_file(f)));
        expect(
            format!("rename {s}"),
            errno(std::fs::rename(f, version.join("renamed"))),
        );
        expect(
            format!("chmod {s}"),
            errno(std::fs::set_permissions(
                f,
                std::fs::Permissions::from_mode(0o4777),
            )),
        );
        expect(
            format!("chown {s}"),
            errno(std::os::unix::fs::chown(f, Some(65534), None)),
        );
        let p = c_path(f);
        // SAFETY: a valid NUL-terminated path.
        expect(
            format!("truncate {s}"),
            libc_errno(unsafe { libc::truncate(p.as_ptr(), 0) }),
        );
        let times = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            libc::timespec {
                tv_sec: 1,
                tv_nsec: 0,
            },
        ];
        // SAFETY: a valid path and an array of two timespecs.
        expect(
            format!("utimensat {s}"),
            libc_errno(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) }),
        );
        let (name, value) = (CString::new("user.x").unwrap(), b"1");
        // SAFETY: valid NUL-terminated path and name, and a buffer of the given length.
        let rc = unsafe {
            libc::setxattr(
                p.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        expect(format!("setxattr {s}"), libc_errno(rc));
        // SAFETY: valid NUL-terminated path and name.
        expect(
            format!("removexattr {s}"),
            libc_errno(unsafe { libc::removexattr(p.as_ptr(), name.as_ptr()) }),
        );
    }
    assert!(
        failures.is_empty(),
        "operations not refused with EROFS:\n{}",
        failures.join("\n")
    );

    // The same through the tools a user would reach for.
    let f = file.display();
    for cmd in [
        format!("echo x > {f}"),
        format!("truncate -s 0 {f}"),
        format!("touch -m {f}"),
        format!("chown nobody {f}"),
        format!("chmod 600 {f}"),
        format!("ln {f} {}/hard", version.display()),
        format!("setfattr -n user.x -v 1 {f}"),
        format!(
            "setfattr -x user.vm0.id {}",
            m.join("artifacts/report").display()
        ),
        format!("rm -rf {}/docs", version.display()),
        format!("cp /etc/hostname {}/", version.display()),
    ] {
        let out = run(Command::new("bash").arg("-c").arg(&cmd));
        assert!(!out.status.success(), "{cmd} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Read-only file system"), "{cmd}: {err}");
    }
    // Nothing changed.
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"# Agent output\n\nSee docs/.\n"
    );
    assert!(version.join("docs/guide/intro.md").exists());
}
