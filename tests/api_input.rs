//! What the API sends, taken at its worst, through a real mount: listings with rows that do
//! not decode, versions whose rows lack their size or file count, and a listing body that
//! never ends (issue 19: 19.6, 19.7, 19.8). The archives served are compared with `tar -xzf`
//! of the same archives.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::hostile::{poll_until, RawMount};
use common::{a_txt, ok, put_archive, tar_extract, tree_listing, wait_timeout, Emulator, Mount};
use serde_json::{json, Value};
use vm0_emulator::pack::{pattern, ArchiveBuilder};

/// `{"data":rows,"pagination":{"has_more":false}}` with the rows given as raw JSON text
/// (a lone surrogate cannot be written through serde_json).
fn page_of(rows: &[String]) -> String {
    format!(
        r#"{{"data":[{}],"pagination":{{"has_more":false}}}}"#,
        rows.join(",")
    )
}

/// Every request of `route` answers `body` as JSON, for the rest of the test.
fn serve_body(emu: &Emulator, route: &str, body: &str) {
    emu.fault(
        json!({"route": route, "count": 0, "status": 200, "body": body,
                     "content_type": "application/json"}),
    );
}

/// The 64-hex names of a storage directory: its versions.
fn version_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == 64)
        .collect()
}

/// The rows that used to hide every storage of a listing (issue 19.7).
fn bad_storage_rows() -> Vec<String> {
    vec![
        r#"{"id":5,"name":"numeric-id"}"#.into(),
        r#"{"id":"3f1c9a2e-0000-4c1e-9a55-000000000002","name":5}"#.into(),
        r#"{"id":"3f1c9a2e-0000-4c1e-9a55-000000000003","name":"negative","size":-1}"#.into(),
        r#"{"id":"3f1c9a2e-0000-4c1e-9a55-000000000004","name":"lone-\ud800"}"#.into(),
    ]
}

#[test]
fn rows_that_do_not_decode_are_left_out_with_one_warn_and_the_rest_is_listed() {
    let emu = Emulator::demo();
    // The real listing, with the bad rows spliced in among the good ones.
    let real = emu.api_get("/volumes?limit=100");
    let good: Vec<String> = real["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(Value::to_string)
        .collect();
    assert!(good.len() >= 2, "{real}");
    let names: BTreeSet<String> = real["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    let first = real["data"][0]["name"].as_str().unwrap().to_string();
    let current = emu.current_version("volumes", &first);
    let mut rows = vec![good[0].clone()];
    rows.extend(bad_storage_rows());
    rows.extend(good[1..].iter().cloned());
    serve_body(&emu, "volumes.list", &page_of(&rows));

    // The versions of one volume, with bad rows among them (every volume's versions are
    // answered with this page; only this volume's are looked at).
    let sid = real["data"][0]["id"].as_str().unwrap().to_string();
    let versions = emu.api_get(&format!("/volumes/{sid}/versions?limit=100"));
    let mut rows: Vec<String> = vec![
        r#"{"id":12345,"size":3,"file_count":1}"#.into(),
        format!(r#"{{"id":"{}","size":-1}}"#, "e".repeat(64)),
        format!(r#"{{"id":"{}","message":"\udc00"}}"#, "f".repeat(64)),
    ];
    let real_ids: BTreeSet<String> = versions["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            rows.push(v.to_string());
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    serve_body(&emu, "volumes.versions", &page_of(&rows));

    emu.reset_counters();
    let m = Mount::new(&emu);
    let listed: BTreeSet<String> = ok(Command::new("ls").arg(m.join("volumes")))
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(listed, names);
    assert_eq!(
        version_names(&m.join(&format!("volumes/{first}"))),
        real_ids
    );
    // A good version of that listing is served.
    let files = ok(Command::new("find")
        .arg(m.join(&format!("volumes/{first}/{current}")))
        .arg("-type")
        .arg("f"));
    assert!(!files.trim().is_empty(), "no files in {first}/{current}");
    for file in files.lines() {
        std::fs::read(file).unwrap();
    }

    // One WARN per listing fetched, naming the rows and why; never one per row.
    let log = m.log_text();
    let warns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("left out 4 rows of the list of volumes"))
        .collect();
    assert!(!warns.is_empty(), "{log}");
    assert_eq!(warns.len() as u64, emu.counter("volumes.list"), "{log}");
    for why in [
        "row 2 of page 1 (id 5): invalid type: integer `5`, expected a string",
        "row 3 of page 1 (id \"3f1c9a2e-0000-4c1e-9a55-000000000002\"): invalid type",
        "row 4 of page 1",
        "invalid value: integer `-1`, expected u64",
        "row 5 of page 1",
        "unexpected end of hex escape",
    ] {
        assert!(warns[0].contains(why), "{why:?} not in {}", warns[0]);
    }
    let version_warns = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("left out 3 rows of the versions of volume"))
        .count();
    assert!(version_warns >= 1, "{log}");
    assert!(
        !log.contains("not the documented JSON"),
        "a listing failed whole:\n{log}"
    );
}

/// A data directory with one volume, `facts`, of three versions (each with an `a.txt` that
/// tells it apart, and more files in subdirectories); the archives' paths by seed.
fn three_versions(data: &Path) -> Vec<(u64, std::path::PathBuf)> {
    (1..=3)
        .map(|seed| {
            let mut b = ArchiveBuilder::new();
            b.file("a.txt", 0o644, 1_700_000_000, &a_txt(seed));
            b.dir("docs", 0o755, 1_700_000_050);
            b.file("docs/guide.md", 0o600, 1_700_000_100, b"# guide\n");
            b.dir("data", 0o750, 1_700_000_150);
            b.file(
                "data/blob.bin",
                0o644,
                1_700_000_200,
                &pattern(300_000 * seed as usize, seed),
            );
            b.file("data/empty", 0o644, 1_700_000_300, b"");
            let path = put_archive(data, "volumes", "facts", &format!("v{seed}"), &b.finish());
            (seed, path)
        })
        .collect()
}

/// Versions whose rows lack `file_count`, have 0 of it with a size, or lack `size` (issue
/// 19.6) are downloaded and served equal to `tar -xzf` of their archives.
#[test]
fn versions_without_a_file_count_or_size_are_served_equal_to_tar_xzf() {
    let data = tempfile::tempdir().unwrap();
    let archives = three_versions(data.path());
    let emu = Emulator::with_data(data.path());
    let sid = emu.storage("volumes", "facts")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let real = emu.api_get(&format!("/volumes/{sid}/versions?limit=100"));
    let rows: Vec<Value> = real["data"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 3);
    let cases = ["no file_count", "file_count 0 with a size", "no size"];
    let mut changed = Vec::new();
    for (row, case) in rows.into_iter().zip(cases) {
        let mut row = row.as_object().unwrap().clone();
        match case {
            "no file_count" => {
                row.remove("file_count");
                row.remove("fileCount");
            }
            "file_count 0 with a size" => {
                assert!(row["size"].as_u64().unwrap() > 0);
                row.insert("file_count".into(), json!(0));
            }
            _ => {
                row.remove("size");
            }
        }
        changed.push(Value::Object(row).to_string());
    }
    serve_body(&emu, "volumes.versions", &page_of(&changed));

    let m = Mount::new(&emu);
    let dir = m.join("volumes/facts");
    let ids = version_names(&dir);
    assert_eq!(ids.len(), 3);
    for (id, case) in real["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .zip(cases)
    {
        assert!(ids.contains(id));
        let version = dir.join(id);
        // Which archive this version is: its `a.txt` says.
        let a = std::fs::read(version.join("a.txt"))
            .unwrap_or_else(|e| panic!("{case}: a.txt of {id}: {e}\n{}", m.log_text()));
        let (_, archive) = archives
            .iter()
            .find(|(seed, _)| a_txt(*seed) == a)
            .unwrap_or_else(|| panic!("{case}: a.txt is {a:?}"));
        let expected = tar_extract(archive);
        assert_eq!(
            tree_listing(&version),
            tree_listing(expected.path()),
            "{case}"
        );
        ok(Command::new("diff")
            .arg("-r")
            .arg(expected.path())
            .arg(&version));
    }
    // What the API did not say is not made up: no size attribute on the sizeless version.
    let sizeless = real["data"][2]["id"].as_str().unwrap();
    let text = ok(Command::new("getfattr").arg("-d").arg(dir.join(sizeless)));
    assert!(text.contains("user.vm0.version_id"), "{text}");
    assert!(text.contains("user.vm0.file_count"), "{text}");
    assert!(!text.contains("user.vm0.size"), "{text}");
}

/// A hostile API on loopback: the volumes, runs and agents are empty lists, and the list
/// of artifacts is a `total`-byte JSON body written as it is read (never held in the test's
/// memory). The bytes it got out are counted.
fn endless_artifacts_api(total: u64) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 2 {
                    line.clear();
                }
                let mut conn = conn;
                let path = request.split(' ').nth(1).unwrap_or("");
                if !path.starts_with("/v1/artifacts") {
                    let body = r#"{"data":[],"pagination":{"has_more":false}}"#;
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    return;
                }
                let head = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/json\r\n\r\n{\"data\":[";
                if conn.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let row = br#"{"id":"3f1c9a2e-6b1d-4c1e-9a55-0d2f7b8e4a10","name":"input-data"},"#;
                let chunk: Vec<u8> = row.iter().copied().cycle().take(row.len() * 1024).collect();
                let mut written = 0u64;
                while written < total && conn.write_all(&chunk).is_ok() {
                    written += chunk.len() as u64;
                    counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                }
            });
        }
    });
    (url, sent)
}

/// The daemon's peak resident memory (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"));
    kib * 1024
}

/// A 1 GiB listing body (issue 19.8: a 2 GiB one took the daemon to 2.17 GB) is refused at
/// the cap with a clear error, and the daemon stays alive and small.
#[test]
fn a_listing_body_of_a_gibibyte_is_refused_and_the_daemon_stays_small() {
    let (url, sent) = endless_artifacts_api(1 << 30);
    let token = format!("vm0_test_{}", "d".repeat(64));
    let args: Vec<String> = vec!["--api-url".into(), url];
    let m = RawMount::start(&args, &[("VM0_TOKEN", &token), ("RUST_LOG", "vm0fs=debug")]).unwrap();

    // `ls` in a child process with a deadline: it must end (with an error), not hang.
    let mut ls = Command::new("ls")
        .arg(m.join("artifacts"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut ls, Duration::from_secs(90)).unwrap_or_else(|| {
        let _ = ls.kill();
        panic!("ls of artifacts did not return:\n{}", m.log_text())
    });
    assert!(!status.success(), "ls of a refused listing succeeded");
    poll_until(Duration::from_secs(60), "the refusal in the log", || {
        m.log_text()
            .contains("the VM0 API sent more than 16.0 MiB for the list of artifacts")
    });
    let log = m.log_text();
    assert!(
        log.contains("check that --api-url points at the VM0 API"),
        "{log}"
    );

    // Alive and answering, with a peak far below the body's size.
    assert!(std::fs::metadata(m.join("volumes")).unwrap().is_dir());
    let peak = peak_rss(m.pid());
    assert!(peak < 200 << 20, "peak RSS {} MiB", peak >> 20);
    let sent = sent.load(Ordering::SeqCst);
    eprintln!(
        "peak RSS {:.1} MiB; {:.1} MiB of the body sent",
        peak as f64 / 1048576.0,
        sent as f64 / 1048576.0
    );
    assert!(
        sent < 256 << 20,
        "the daemon read {} MiB of the body",
        sent >> 20
    );
}

/// A hostile API on loopback with one volume per `(name, Location)`: each has one version
/// (of one file, 10 bytes), whose download answers `302` to that `Location`. Every other
/// list is empty.
fn redirecting_api(cases: Vec<(String, String)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let cases = Arc::new(cases);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let cases = cases.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 2 {
                    line.clear();
                }
                let path = request.split(' ').nth(1).unwrap_or("");
                let path = path.split('?').next().unwrap_or("");
                let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
                let time = "2026-01-20T10:00:00.000Z";
                let page = |rows: Vec<Value>| {
                    json!({"data": rows, "pagination": {"has_more": false}}).to_string()
                };
                let sid = |i: usize| format!("3f1c9a2e-6b1d-4c1e-9a55-{i:012x}");
                let vid = |i: usize| format!("{:064x}", i + 1);
                let index = |s: &str| (0..cases.len()).find(|i| sid(*i) == s);
                let (status, extra, body) = match segments.as_slice() {
                    ["v1", "volumes"] => (
                        "200 OK",
                        String::new(),
                        page(
                            cases
                                .iter()
                                .enumerate()
                                .map(|(i, (name, _))| {
                                    json!({"id": sid(i), "name": name, "current_version_id": vid(i),
                                           "size": 10, "file_count": 1,
                                           "created_at": time, "updated_at": time})
                                })
                                .collect(),
                        ),
                    ),
                    ["v1", "volumes", s, "versions"] if index(s).is_some() => (
                        "200 OK",
                        String::new(),
                        page(vec![json!({"id": vid(index(s).unwrap()), "volume_id": s,
                                          "size": 10, "file_count": 1, "created_at": time})]),
                    ),
                    ["v1", "volumes", s, "download"] if index(s).is_some() => (
                        "302 Found",
                        format!("Location: {}\r\n", cases[index(s).unwrap()].1),
                        String::new(),
                    ),
                    _ => ("200 OK", String::new(), page(vec![])),
                };
                let mut conn = conn;
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    url
}

/// A download redirected to a `file:` or `ftp:` URL, or to one with credentials, fails at
/// once with a message naming the scheme and host (issue 19.11): not retried as a network
/// failure, nothing sent to the target, and the rest of the mount unharmed.
#[test]
fn a_download_redirected_elsewhere_than_http_s_fails_at_once_without_retries() {
    // Where the credentials would go: nothing may connect to it.
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    target.set_nonblocking(true).unwrap();
    let port = target.local_addr().unwrap().port();
    let cases = [
        ("to-file", "file:///etc/passwd".to_string(), "a file: URL"),
        (
            "to-ftp",
            "ftp://127.0.0.1:2121/k/archive.tar.gz?X-Amz-Signature=secret".into(),
            "ftp://127.0.0.1:2121",
        ),
        (
            "with-userinfo",
            format!("http://user:pass@127.0.0.1:{port}/k/archive.tar.gz?X-Amz-Signature=secret"),
            &*format!("http://127.0.0.1:{port}"),
        ),
    ];
    let url = redirecting_api(
        cases
            .iter()
            .map(|(name, location, _)| (name.to_string(), location.clone()))
            .collect(),
    );
    let token = format!("vm0_test_{}", "e".repeat(64));
    let args: Vec<String> = vec!["--api-url".into(), url];
    let m = RawMount::start(&args, &[("VM0_TOKEN", &token), ("RUST_LOG", "vm0fs=debug")]).unwrap();
    for (i, (name, _, shown)) in cases.iter().enumerate() {
        let file = m.join(&format!("volumes/{name}/{:064x}/a.txt", i + 1));
        let mut cat = Command::new("cat")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_timeout(&mut cat, Duration::from_secs(120)).unwrap_or_else(|| {
            let _ = cat.kill();
            panic!("cat of {name} did not return:\n{}", m.log_text())
        });
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut cat.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{name}");
        assert!(stderr.contains("Input/output error"), "{name}: {stderr}");
        let expected = format!("to {shown}, which vm0fs refuses to follow");
        poll_until(Duration::from_secs(60), "the refusal in the log", || {
            m.log_text().contains(&expected)
        });
    }
    let log = m.log_text();
    assert!(
        !log.contains("retrying"),
        "a refused redirect was retried:\n{log}"
    );
    for secret in ["secret", "user:pass", "/etc/passwd", "archive.tar.gz"] {
        assert!(!log.contains(secret), "{secret:?} in the log:\n{log}");
    }
    assert!(target.accept().is_err(), "a connection reached the target");
    // The rest of the mount answers.
    assert_eq!(std::fs::read_dir(m.join("volumes")).unwrap().count(), 3);
}
