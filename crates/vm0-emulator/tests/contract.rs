//! Tests of the `vm0-emulator` binary against the API contract (`vm0-api.md`): each test
//! starts the real binary, reads its JSON line, and talks HTTP to it, so what is checked
//! is exactly what vm0fs's client will see.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};
use vm0_emulator::{content_version_id, default_token, storage_id, Kind};

/// A running emulator process, killed on drop.
struct Emu {
    child: Child,
    api: String,
    store: String,
    admin: String,
    token: String,
    http: Client,
}

impl Emu {
    fn start(args: &[&str]) -> Emu {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vm0-emulator"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn vm0-emulator");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read the ready line");
        if line.is_empty() {
            let status = child.wait().expect("wait for the emulator");
            panic!("vm0-emulator exited before it was ready: {status}");
        }
        let ready: Value = serde_json::from_str(&line).expect("the ready line is JSON");
        let field = |k: &str| ready[k].as_str().expect("a string field").to_string();
        let http = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .expect("build an HTTP client");
        Emu {
            api: field("api_url"),
            store: field("store_url"),
            admin: field("admin_url"),
            token: field("token"),
            child,
            http,
        }
    }

    fn demo() -> Emu {
        Emu::start(&["--demo"])
    }

    /// GET an API path (after `/v1`) with the token.
    fn get(&self, path: &str) -> Response {
        self.http
            .get(format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .send()
            .expect("API request")
    }

    /// GET an API path that must answer 200 with JSON.
    fn json(&self, path: &str) -> Value {
        let resp = self.get(path);
        assert_eq!(resp.status(), 200, "GET {path}");
        resp.json().expect("a JSON body")
    }

    fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.admin));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().expect("admin request");
        assert_eq!(resp.status(), 200, "admin {path}");
        resp.json().expect("a JSON body")
    }

    fn post(&self, path: &str, body: Value) -> Value {
        self.admin(reqwest::Method::POST, path, Some(body))
    }

    fn fault(&self, rule: Value) {
        self.post("/faults", rule);
    }

    fn config(&self, change: Value) {
        self.post("/config", change);
    }

    fn counters(&self) -> Value {
        self.admin(reqwest::Method::GET, "/counters", None)
    }

    /// The Location of a download that must redirect.
    fn download_url(&self, kind: &str, id: &str, query: &str) -> String {
        let resp = self.get(&format!("/{kind}/{id}/download{query}"));
        assert_eq!(resp.status(), 302, "download {kind}/{id}{query}");
        location(&resp)
    }

    fn fetch(&self, url: &str) -> Response {
        self.http.get(url).send().expect("store request")
    }
}

impl Drop for Emu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn location(resp: &Response) -> String {
    resp.headers()["location"]
        .to_str()
        .expect("ASCII location")
        .to_string()
}

fn vid(kind: Kind, name: &str) -> String {
    storage_id(kind, name)
}

fn assert_error(resp: Response, status: u16, kind: &str, code: &str) -> Value {
    assert_eq!(resp.status(), status);
    let body: Value = resp.json().expect("a JSON error body");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    body
}

fn assert_not_found(resp: Response) -> String {
    let body = assert_error(resp, 404, "not_found_error", "resource_not_found");
    body["error"]["message"].as_str().unwrap().to_string()
}

fn is_request_id(value: &str) -> bool {
    value.len() == 36
        && value.starts_with("req_")
        && value[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn gunzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

/// (path, entry type byte, mode, link target) of every member.
fn tar_members(tar_bytes: &[u8]) -> std::io::Result<Vec<(String, u8, u32, String)>> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let entry = entry?;
        let header = entry.header();
        out.push((
            entry.path()?.to_string_lossy().into_owned(),
            header.entry_type().as_byte(),
            header.mode()?,
            entry
                .link_name()?
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ));
    }
    Ok(out)
}

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

#[test]
fn ready_line_and_default_token() {
    let emu = Emu::demo();
    assert_eq!(emu.token, default_token());
    assert!(emu.token.starts_with("vm0_test_") && emu.token.len() == 9 + 64);
    assert!(emu.api.starts_with("http://127.0.0.1:") && emu.api.ends_with("/v1"));
    assert!(emu.admin.ends_with("/_emulator"));
    assert!(emu.store.starts_with("http://127.0.0.1:"));
}

#[test]
fn sigterm_exits_cleanly() {
    let mut emu = Emu::demo();
    let pid = libc::pid_t::try_from(emu.child.id()).unwrap();
    // SAFETY: sending SIGTERM to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = emu.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn snake_shape_fields_and_headers() {
    let emu = Emu::demo();
    let resp = emu.get("/volumes");
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    assert!(is_request_id(headers["x-request-id"].to_str().unwrap()));
    assert_eq!(headers["x-api-version"], "v1");
    assert_eq!(headers["content-type"], "application/json");
    let list: Value = resp.json().unwrap();
    assert_eq!(
        list["pagination"],
        json!({"has_more": false, "next_cursor": null})
    );
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"input-data") && names.contains(&"prompts"));

    let id = vid(Kind::Volumes, "input-data");
    let storage = emu.json(&format!("/volumes/{id}"));
    for key in [
        "id",
        "name",
        "current_version_id",
        "size",
        "file_count",
        "created_at",
        "updated_at",
    ] {
        assert!(storage.get(key).is_some(), "missing {key} in {storage}");
    }
    assert_eq!(storage["id"], id.as_str());
    assert_eq!(storage["created_at"], "2026-01-20T10:00:00.000Z");
    let current = &storage["current_version"];
    assert_eq!(current["id"], storage["current_version_id"]);
    assert_eq!(current["volume_id"], id.as_str());
    assert_eq!(current["file_count"], 7);
    assert_eq!(current["created_by"], "agent");
    assert_eq!(current["message"], "Add orders");
    assert_eq!(current["created_at"], "2026-01-20T10:02:00.000Z");

    let versions = emu.json(&format!("/volumes/{id}/versions"));
    let rows = versions["data"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let times: Vec<&str> = rows
        .iter()
        .map(|v| v["created_at"].as_str().unwrap())
        .collect();
    assert_eq!(
        times,
        [
            "2026-01-20T10:02:00.000Z",
            "2026-01-20T10:01:00.000Z",
            "2026-01-20T10:00:00.000Z"
        ]
    );
    assert!(rows
        .iter()
        .all(|v| v["id"].as_str().unwrap().len() == 64 && v["volume_id"] == id.as_str()));

    let report = emu.json(&format!(
        "/artifacts/{}",
        vid(Kind::Artifacts, "agent-report")
    ));
    assert_eq!(report["current_version"]["artifact_id"], report["id"]);
    assert!(report["current_version"].get("volume_id").is_none());
    let empty = emu.json(&format!("/artifacts/{}", vid(Kind::Artifacts, "empty-run")));
    assert_eq!(empty["current_version"]["file_count"], 0);
    assert_eq!(emu.json("/artifacts")["data"].as_array().unwrap().len(), 2);
}

#[test]
fn camel_shape_fields_and_download_parameter() {
    let emu = Emu::start(&["--demo", "--shape", "camel"]);
    let list = emu.json("/volumes?limit=1");
    assert_eq!(list["pagination"]["hasMore"], true);
    assert!(list["pagination"]["nextCursor"].is_string());
    assert!(list["pagination"].get("has_more").is_none());
    let id = vid(Kind::Volumes, "input-data");
    let storage = emu.json(&format!("/volumes/{id}"));
    for key in ["currentVersionId", "fileCount", "createdAt", "updatedAt"] {
        assert!(storage.get(key).is_some(), "missing {key} in {storage}");
    }
    assert!(storage.get("file_count").is_none());
    let current = &storage["currentVersion"];
    assert_eq!(current["volumeId"], id.as_str());
    assert_eq!(current["createdBy"], "agent");
    assert!(current["fileCount"].is_number());

    let versions = emu.json(&format!("/volumes/{id}/versions"));
    let oldest = versions["data"][2]["id"].as_str().unwrap().to_string();
    // Camel reads `versionId` only: `version_id` is ignored, so the current one is served.
    let url = emu.download_url("volumes", &id, &format!("?versionId={oldest}"));
    assert!(url.contains(&oldest));
    let url = emu.download_url("volumes", &id, "?version_id=latest");
    assert!(url.contains(storage["currentVersionId"].as_str().unwrap()));
    assert_not_found(emu.get(&format!("/volumes/{id}/download?versionId=latest")));
}

#[test]
fn snake_download_reads_only_version_id() {
    let emu = Emu::demo();
    let id = vid(Kind::Volumes, "input-data");
    let versions = emu.json(&format!("/volumes/{id}/versions"));
    let oldest = versions["data"][2]["id"].as_str().unwrap().to_string();
    let current = versions["data"][0]["id"].as_str().unwrap().to_string();
    assert!(emu
        .download_url("volumes", &id, &format!("?version_id={oldest}"))
        .contains(&oldest));
    assert!(emu
        .download_url("volumes", &id, "?versionId=latest")
        .contains(&current));
    // A client sending both names works with either server.
    assert!(emu
        .download_url(
            "volumes",
            &id,
            &format!("?version_id={oldest}&versionId={oldest}")
        )
        .contains(&oldest));
}

/// A data directory with one volume of `n` versions (`v00`, `v01`, ...).
fn many_versions(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..n {
        write(
            &dir.path().join(format!("volumes/many/v{i:02}/file.txt")),
            &format!("version {i}\n"),
        );
    }
    dir
}

/// Pages through `path` with `limit`; returns the pages' ids.
fn pages(emu: &Emu, path: &str, limit: usize) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{path}?limit={limit}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page = emu.json(&url);
        out.push(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["id"].as_str().unwrap().to_string())
                .collect(),
        );
        assert!(out.len() < 100, "pagination does not end");
        if page["pagination"]["has_more"] != true {
            assert!(page["pagination"]["next_cursor"].is_null());
            return out;
        }
        cursor = Some(
            page["pagination"]["next_cursor"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
}

#[test]
fn pagination_pages_quirk_and_errors() {
    let data = many_versions(45);
    let emu = Emu::start(&["--data", data.path().to_str().unwrap()]);
    let path = format!("/volumes/{}/versions", vid(Kind::Volumes, "many"));

    assert_eq!(
        emu.json(&path)["data"].as_array().unwrap().len(),
        20,
        "default limit"
    );
    let plain = pages(&emu, &path, 7);
    assert_eq!(plain.len(), 7);
    let all: Vec<String> = plain.concat();
    assert_eq!(all.len(), 45);
    let unique: std::collections::HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), 45);
    // Newest first: the last label's version leads.
    let newest = emu.json(&format!("/volumes/{}", vid(Kind::Volumes, "many")))
        ["current_version_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(all[0], newest);
    assert_eq!(pages(&emu, &path, 100), vec![all.clone()]);

    emu.config(json!({"pagination_quirk": true}));
    let quirky = pages(&emu, &path, 7);
    for pair in quirky.windows(2) {
        assert_eq!(
            pair[1][0],
            *pair[0].last().unwrap(),
            "a page repeats the previous last row"
        );
    }
    let mut deduped: Vec<String> = Vec::new();
    for id in quirky.concat() {
        if !deduped.contains(&id) {
            deduped.push(id);
        }
    }
    assert_eq!(deduped, all);

    for bad in ["0", "101", "abc", "", "-1", "2.5"] {
        let body = assert_error(
            emu.get(&format!("{path}?limit={bad}")),
            400,
            "invalid_request_error",
            "invalid_parameter",
        );
        assert_eq!(body["error"]["param"], "limit", "limit={bad}");
    }
    let body = assert_error(
        emu.get("/volumes?cursor=not-a-cursor"),
        400,
        "invalid_request_error",
        "invalid_parameter",
    );
    assert_eq!(body["error"]["param"], "cursor");
}

#[test]
fn stuck_cursor_repeats_the_same_cursor() {
    let emu = Emu::demo();
    emu.config(json!({"stuck_cursor": true}));
    let first = emu.json("/volumes?limit=1");
    assert_eq!(first["pagination"]["has_more"], true);
    let cursor = first["pagination"]["next_cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let second = emu.json(&format!("/volumes?limit=1&cursor={cursor}"));
    assert_eq!(second["pagination"]["has_more"], true);
    assert_eq!(second["pagination"]["next_cursor"], cursor.as_str());
}

#[test]
fn auth_failures_are_401_with_the_exact_body() {
    let emu = Emu::demo();
    let expected = r#"{"error":{"type":"authentication_error","code":"invalid_api_key","message":"Invalid API key provided"}}"#;
    let url = format!("{}/volumes", emu.api);
    let wrong = format!("Bearer {}0", emu.token);
    let no_scheme = emu.token.clone();
    let cases: Vec<Option<&str>> = vec![
        None,
        Some("Bearer"),
        Some("Bearer "),
        Some("Basic dXNlcjpwYXNz"),
        Some(&wrong),
        Some(&no_scheme),
        Some("Bearer vm0_live_0000000000000000000000000000000000000000000000000000000000000000"),
    ];
    for auth in cases {
        let mut req = emu.http.get(&url);
        if let Some(auth) = auth {
            req = req.header("Authorization", auth);
        }
        let resp = req.send().unwrap();
        assert_eq!(resp.status(), 401, "{auth:?}");
        assert!(is_request_id(
            resp.headers()["x-request-id"].to_str().unwrap()
        ));
        assert_eq!(resp.text().unwrap(), expected, "{auth:?}");
    }
    // The scheme is case-insensitive.
    let resp = emu
        .http
        .get(&url)
        .header("Authorization", format!("bearer {}", emu.token))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A revoked token: the old one fails, the new one works.
    emu.config(json!({"token": "vm0_live_new"}));
    assert_eq!(emu.get("/volumes").status(), 401);
    let resp = emu
        .http
        .get(&url)
        .bearer_auth("vm0_live_new")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Finds two contents of a file `f.txt` whose version ids in `storage` share their first 8
/// hex characters (a birthday search over 32 bits: about 80,000 tries).
fn colliding_contents(storage: &str) -> (String, String, String) {
    let mut seen: HashMap<String, String> = HashMap::new();
    for i in 0u64.. {
        let content = format!("content {i}\n");
        let id = content_version_id(storage, [("f.txt", content.as_bytes())]);
        let prefix = id[..8].to_string();
        if let Some(other) = seen.insert(prefix.clone(), content.clone()) {
            return (other, content, prefix);
        }
    }
    unreachable!()
}

#[test]
fn every_version_error_is_404() {
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("volumes/no-versions")).unwrap();
    let emu = Emu::start(&["--demo", "--data", data.path().to_str().unwrap()]);
    let id = vid(Kind::Volumes, "input-data");
    let current = emu.json(&format!("/volumes/{id}"))["current_version_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Unknown storages and routes.
    assert_not_found(emu.get("/volumes/3f1c9a2e-6b1d-4c1e-9a55-0d2f7b8e4a10"));
    assert_not_found(emu.get("/volumes/3f1c9a2e-6b1d-4c1e-9a55-0d2f7b8e4a10/versions"));
    assert_not_found(emu.get(&format!("/artifacts/{id}")));
    for route in ["/nope", "/volumes/x/y/z", "/volumes//versions", ""] {
        assert_not_found(emu.get(route));
    }
    let resp = emu
        .http
        .get(emu.api.replace("/v1", "/other"))
        .send()
        .unwrap();
    assert_not_found(resp);

    // Version parameters.
    for query in [
        "latest".to_string(),
        "0".repeat(64),
        current[..7].to_string(),
        String::new(),
        current.to_uppercase(),
        format!("{current}0"),
    ] {
        let msg = assert_not_found(emu.get(&format!("/volumes/{id}/download?version_id={query}")));
        assert!(!msg.is_empty(), "{query}");
    }
    assert!(emu
        .download_url("volumes", &id, &format!("?version_id={}", &current[..8]))
        .contains(&current));

    // A 0-file version has no archive, with or without naming it.
    let empty = vid(Kind::Artifacts, "empty-run");
    let empty_version = emu.json(&format!("/artifacts/{empty}"))["current_version_id"]
        .as_str()
        .unwrap()
        .to_string();
    let msg = assert_not_found(emu.get(&format!("/artifacts/{empty}/download")));
    assert!(msg.contains("no files"), "{msg}");
    assert_not_found(emu.get(&format!(
        "/artifacts/{empty}/download?version_id={empty_version}"
    )));

    // A storage with no versions.
    let none = vid(Kind::Volumes, "no-versions");
    let storage = emu.json(&format!("/volumes/{none}"));
    assert!(storage["current_version"].is_null() && storage["current_version_id"].is_null());
    assert_eq!(
        emu.json(&format!("/volumes/{none}/versions"))["data"],
        json!([])
    );
    let msg = assert_not_found(emu.get(&format!("/volumes/{none}/download")));
    assert!(msg.contains("no versions"), "{msg}");

    // An ambiguous prefix of 8 characters.
    let sid = vid(Kind::Volumes, "ambiguous");
    let (a, b, prefix) = colliding_contents(&sid);
    let va = emu.post(
        "/push",
        json!({"kind":"volumes","name":"ambiguous","files":{"f.txt":a}}),
    );
    let vb = emu.post(
        "/push",
        json!({"kind":"volumes","name":"ambiguous","files":{"f.txt":b}}),
    );
    assert!(va["id"].as_str().unwrap().starts_with(&prefix));
    assert!(vb["id"].as_str().unwrap().starts_with(&prefix));
    let msg = assert_not_found(emu.get(&format!("/volumes/{sid}/download?version_id={prefix}")));
    assert!(msg.contains("ambiguous"), "{msg}");
    let full_a = va["id"].as_str().unwrap();
    assert!(emu
        .download_url("volumes", &sid, &format!("?version_id={full_a}"))
        .contains(full_a));
}

#[test]
fn download_redirect_and_store_rules() {
    let emu = Emu::demo();
    let id = vid(Kind::Volumes, "input-data");
    let resp = emu.get(&format!("/volumes/{id}/download"));
    assert_eq!(resp.status(), 302);
    assert!(resp.headers().get("x-request-id").is_none());
    assert!(resp.headers().get("x-api-version").is_none());
    let url = location(&resp);
    assert!(
        url.starts_with(&format!("{}/vm0-storage/volumes/{id}/", emu.store)),
        "{url}"
    );
    for param in [
        "X-Amz-Algorithm=AWS4-HMAC-SHA256",
        "X-Amz-Credential=",
        "X-Amz-Date=",
        "X-Amz-Expires=3600",
        "X-Amz-SignedHeaders=host",
        "X-Amz-Signature=",
    ] {
        assert!(url.contains(param), "{param} in {url}");
    }

    let resp = emu.fetch(&url);
    assert_eq!(resp.status(), 200);
    let len: usize = resp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let archive = resp.bytes().unwrap().to_vec();
    assert_eq!(archive.len(), len);
    let members = tar_members(&gunzip(&archive).unwrap()).unwrap();
    let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "members sorted by path");
    assert!(names.contains(&"docs/guide/intro.md"));
    assert!(names.contains(&"notes from kickoff.txt"));
    assert!(names.contains(&"données-référence.txt"));
    let link = members.iter().find(|m| m.0 == "latest.csv").unwrap();
    assert_eq!((link.1, link.3.as_str()), (b'2', "data/orders.csv"));
    let script = members
        .iter()
        .find(|m| m.0 == "scripts/prepare.sh")
        .unwrap();
    assert_eq!(script.2 & 0o777, 0o755);
    assert!(members.iter().all(|m| m.1 != b'5'), "no directory entries");

    // Range.
    let resp = emu
        .http
        .get(&url)
        .header("Range", "bytes=10-")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes 10-{}/{}", len - 1, len).as_str()
    );
    assert_eq!(
        resp.headers()["content-length"],
        (len - 10).to_string().as_str()
    );
    assert_eq!(resp.bytes().unwrap().as_ref(), &archive[10..]);
    let resp = emu
        .http
        .get(&url)
        .header("Range", format!("bytes={len}-"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 416);

    // Two auth mechanisms.
    let resp = emu.http.get(&url).bearer_auth(&emu.token).send().unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp
        .text()
        .unwrap()
        .contains("<Code>InvalidArgument</Code>"));

    // Tampered signature, tampered path, missing signature.
    let (base, sig) = url.rsplit_once("X-Amz-Signature=").unwrap();
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    for bad in [
        format!("{base}X-Amz-Signature={flipped}{}", &sig[1..]),
        url.replace("input-data", "x")
            .replace(&id, &vid(Kind::Volumes, "prompts")),
        base.trim_end_matches('&').to_string(),
    ] {
        let resp = emu.fetch(&bad);
        assert_eq!(resp.status(), 403, "{bad}");
        assert!(resp
            .text()
            .unwrap()
            .contains("<Code>SignatureDoesNotMatch</Code>"));
    }

    // Expiry: a TTL of 0 makes every new URL expired at once.
    emu.config(json!({"url_ttl_secs": 0}));
    let expired = emu.download_url("volumes", &id, "");
    assert!(expired.contains("X-Amz-Expires=0"));
    let resp = emu.fetch(&expired);
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["content-type"], "application/xml");
    let body = resp.text().unwrap();
    assert!(
        body.contains("<Code>AccessDenied</Code><Message>Request has expired</Message>"),
        "{body}"
    );
    // The URL signed before the change is still valid.
    assert_eq!(emu.fetch(&url).status(), 200);
}

#[test]
fn url_ttl_flag_expires_urls() {
    let emu = Emu::start(&["--demo", "--url-ttl", "0"]);
    let url = emu.download_url("volumes", &vid(Kind::Volumes, "prompts"), "");
    assert_eq!(emu.fetch(&url).status(), 403);
}

/// A `tar.gz` in memory with a directory entry, a hard link and a long name.
fn odd_archive() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    builder
        .append_data(&mut dir, "d/", std::io::empty())
        .unwrap();
    let mut file = tar::Header::new_gnu();
    file.set_mode(0o644);
    file.set_size(5);
    builder
        .append_data(&mut file, "d/a.txt", &b"hello"[..])
        .unwrap();
    let long = format!("d/{}.txt", "x".repeat(150));
    let mut file = tar::Header::new_gnu();
    file.set_mode(0o600);
    file.set_size(3);
    builder.append_data(&mut file, &long, &b"abc"[..]).unwrap();
    let mut hard = tar::Header::new_gnu();
    hard.set_entry_type(tar::EntryType::Link);
    hard.set_size(0);
    builder.append_link(&mut hard, "d/hard", "d/a.txt").unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

#[test]
fn data_directory_versions() {
    let data = tempfile::tempdir().unwrap();
    let root = data.path();
    let vol = root.join("volumes/things");
    write(&vol.join("a/one.txt"), "one\n");
    std::fs::write(vol.join("b.tar.gz"), odd_archive()).unwrap();
    // Corrupt on purpose, with the service's numbers in a sidecar.
    std::fs::write(vol.join("c.tar.gz"), b"this is not gzip at all").unwrap();
    write(
        &vol.join("c.json"),
        r#"{"size":1234,"file_count":3,"message":"broken upload"}"#,
    );
    // Same content as `a`: collapses into a's version.
    write(&vol.join("d/one.txt"), "one\n");
    // An empty directory: a 0-file version.
    std::fs::create_dir_all(vol.join("e")).unwrap();
    write(
        &vol.join("e.json"),
        r#"{"created_at":"2026-03-01T08:00:00.000Z","created_by":"agent"}"#,
    );
    write(&vol.join("current"), "b\n");
    write(&root.join("artifacts/out/v1/result.txt"), "42\n");

    let start = || Emu::start(&["--data", root.to_str().unwrap()]);
    let emu = start();
    let id = vid(Kind::Volumes, "things");
    let storage = emu.json(&format!("/volumes/{id}"));
    let versions = emu.json(&format!("/volumes/{id}/versions"))["data"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(versions.len(), 4, "a and d collapse: {versions:#?}");
    let by_msg = |m: &str| versions.iter().find(|v| v["message"] == m).unwrap().clone();
    // Newest first: e (overridden to March), then c, b, a.
    assert_eq!(versions[0]["created_at"], "2026-03-01T08:00:00.000Z");
    assert_eq!(versions[0]["file_count"], 0);
    assert_eq!(versions[0]["created_by"], "agent");
    assert_eq!(versions[3]["created_at"], "2026-01-20T10:00:00.000Z");
    assert_eq!(versions[3]["size"], 4);
    let broken = by_msg("broken upload");
    assert_eq!(
        (broken["size"].as_u64(), broken["file_count"].as_u64()),
        (Some(1234), Some(3))
    );

    // `current` names b, an older version than the newest.
    let b = &versions[2];
    assert_eq!(storage["current_version_id"], b["id"]);
    assert_eq!(b["file_count"], 2, "regular files only");
    assert_eq!(b["size"], 8);

    // Ready archives are served byte for byte, even corrupt ones.
    let url = emu.download_url("volumes", &id, "");
    assert_eq!(
        emu.fetch(&url).bytes().unwrap().as_ref(),
        odd_archive().as_slice()
    );
    let url = emu.download_url(
        "volumes",
        &id,
        &format!("?version_id={}", broken["id"].as_str().unwrap()),
    );
    assert_eq!(
        emu.fetch(&url).bytes().unwrap().as_ref(),
        b"this is not gzip at all"
    );
    let artifact = emu.json(&format!("/artifacts/{}", vid(Kind::Artifacts, "out")));
    assert_eq!(artifact["current_version"]["size"], 3);

    // Ids are stable across restarts.
    drop(emu);
    let again = start();
    let versions_again = again.json(&format!("/volumes/{id}/versions"))["data"].clone();
    assert_eq!(Value::Array(versions), versions_again);
}

#[test]
fn counters_count_every_route() {
    let emu = Emu::demo();
    let id = vid(Kind::Volumes, "input-data");
    let current = emu.json(&format!("/volumes/{id}"))["current_version_id"]
        .as_str()
        .unwrap()
        .to_string();
    emu.json("/volumes");
    emu.json(&format!("/volumes/{id}/versions"));
    let url = emu.download_url("volumes", &id, "");
    emu.fetch(&url);
    emu.fetch(&url);
    assert_eq!(
        emu.get(&format!("/volumes/{id}/download?version_id=latest"))
            .status(),
        404
    );
    emu.json("/artifacts");
    let c = emu.counters();
    assert_eq!(c["volumes.list"], 1);
    assert_eq!(c["volumes.get"], 1);
    assert_eq!(c["volumes.versions"], 1);
    assert_eq!(c["volumes.download"], 2, "failed downloads count too");
    assert_eq!(c[format!("download:{current}")], 1);
    assert_eq!(c["store.get"], 2);
    assert_eq!(c[format!("store.get:{current}")], 2);
    assert_eq!(c["artifacts.list"], 1);
    assert_eq!(c["artifacts.get"], 0);
    emu.post("/counters/reset", json!({}));
    let c = emu.counters();
    assert_eq!(c["volumes.list"], 0);
    assert!(c.get(format!("store.get:{current}")).is_none());
}

#[test]
fn fault_statuses_and_bodies() {
    let emu = Emu::demo();
    emu.fault(json!({"route":"volumes.list","status":500,"count":2}));
    for _ in 0..2 {
        let resp = emu.get("/volumes");
        assert!(is_request_id(
            resp.headers()["x-request-id"].to_str().unwrap()
        ));
        assert_error(resp, 500, "api_error", "internal_error");
    }
    assert_eq!(emu.get("/volumes").status(), 200);

    emu.fault(json!({"route":"volumes.list","status":429,"retry_after":7}));
    let resp = emu.get("/volumes");
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_error(resp, 429, "rate_limit_error", "rate_limit_exceeded");

    emu.fault(json!({"route":"volumes.get","status":403}));
    let id = vid(Kind::Volumes, "input-data");
    assert_error(
        emu.get(&format!("/volumes/{id}")),
        403,
        "authorization_error",
        "scope_not_configured",
    );

    emu.fault(json!({"route":"*","status":502,"body":"<html>Bad Gateway</html>"}));
    let resp = emu.get("/artifacts");
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "text/html");
    assert_eq!(resp.text().unwrap(), "<html>Bad Gateway</html>");

    // A rule for one version only leaves other versions alone.
    let versions = emu.json(&format!("/volumes/{id}/versions"));
    let (newest, oldest) = (
        versions["data"][0]["id"].as_str().unwrap().to_string(),
        versions["data"][2]["id"].as_str().unwrap().to_string(),
    );
    emu.fault(json!({"route":"volumes.download","version":&oldest[..12],"status":500,"count":0}));
    assert_eq!(emu.get(&format!("/volumes/{id}/download")).status(), 302);
    for _ in 0..2 {
        let resp = emu.get(&format!("/volumes/{id}/download?version_id={oldest}"));
        assert_eq!(resp.status(), 500);
    }
    assert_eq!(
        emu.get(&format!("/volumes/{id}/download?version_id={newest}"))
            .status(),
        302
    );

    // Store faults answer S3-style XML.
    let url = emu.download_url("volumes", &id, "");
    emu.fault(json!({"route":"store.get","status":503}));
    let resp = emu.fetch(&url);
    assert_eq!(resp.status(), 503);
    assert!(resp.text().unwrap().contains("<Code>SlowDown</Code>"));
    assert_eq!(emu.fetch(&url).status(), 200);

    let rules = emu.admin(reqwest::Method::GET, "/faults", None);
    assert!(!rules["rules"].as_array().unwrap().is_empty());
    emu.admin(reqwest::Method::DELETE, "/faults", None);
    assert_eq!(
        emu.get(&format!("/volumes/{id}/download?version_id={oldest}"))
            .status(),
        302
    );

    let resp = emu
        .http
        .post(format!("{}/faults", emu.admin))
        .json(&json!({"route":"volumes.lst"}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[test]
fn delayed_answers_do_not_block_others() {
    let emu = Emu::demo();
    emu.fault(json!({"route":"volumes.list","delay_ms":1500}));
    let url = format!("{}/volumes", emu.api);
    let (http, token) = (emu.http.clone(), emu.token.clone());
    let slow = std::thread::spawn(move || {
        let started = Instant::now();
        let status = http.get(url).bearer_auth(token).send().unwrap().status();
        (status, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    emu.json(&format!("/volumes/{}", vid(Kind::Volumes, "prompts")));
    let url = emu.download_url("volumes", &vid(Kind::Volumes, "prompts"), "");
    assert_eq!(emu.fetch(&url).status(), 200);
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "blocked behind the delay"
    );
    let (status, took) = slow.join().unwrap();
    assert_eq!(status, 200);
    assert!(took >= Duration::from_millis(1500), "{took:?}");
}

#[test]
fn store_faults_cut_and_corrupt() {
    let emu = Emu::demo();
    let id = vid(Kind::Volumes, "input-data");
    let url = emu.download_url("volumes", &id, "");
    let good = emu.fetch(&url).bytes().unwrap().to_vec();
    let len = good.len();

    emu.fault(json!({"route":"store.get","cut_after_bytes":100}));
    let resp = emu.fetch(&url);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], len.to_string().as_str());
    assert!(resp.bytes().is_err(), "the body must end early");
    assert_eq!(
        emu.fetch(&url).bytes().unwrap().to_vec(),
        good,
        "the rule is used up"
    );

    // Another ETag, the same bytes: an object replaced behind its URL.
    let etag = emu.fetch(&url).headers()["etag"]
        .to_str()
        .unwrap()
        .to_string();
    emu.fault(json!({"route":"store.get","etag":"\"replaced\""}));
    let resp = emu.fetch(&url);
    assert_eq!(resp.headers()["etag"], "\"replaced\"");
    assert_eq!(resp.bytes().unwrap().to_vec(), good);
    assert_eq!(emu.fetch(&url).headers()["etag"], etag.as_str(), "used up");

    emu.fault(json!({"route":"store.get","corrupt":"truncate"}));
    let resp = emu.fetch(&url);
    assert_eq!(
        resp.headers()["content-length"],
        (len / 2).to_string().as_str()
    );
    let body = resp.bytes().unwrap().to_vec();
    assert_eq!(body, good[..len / 2]);
    assert!(gunzip(&body).is_err());

    emu.fault(json!({"route":"store.get","corrupt":"garbage"}));
    let body = emu.fetch(&url).bytes().unwrap().to_vec();
    assert_eq!(body.len(), len);
    assert_ne!(&body[..2], &[0x1f, 0x8b]);
    assert!(gunzip(&body).is_err());

    emu.fault(json!({"route":"store.get","corrupt":"notar"}));
    let body = emu.fetch(&url).bytes().unwrap().to_vec();
    let inner = gunzip(&body).expect("a valid gzip stream");
    assert!(tar_members(&inner).is_err(), "not a tar");

    // Corruption with a range still cuts the same virtual body.
    emu.fault(json!({"route":"store.get","corrupt":"truncate"}));
    let resp = emu
        .http
        .get(&url)
        .header("Range", "bytes=5-")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().unwrap().as_ref(), &good[5..len / 2]);
}

/// A held download sends its headers and the bytes asked for, then nothing until the test
/// releases it; a client that gives up on a held download is counted.
#[test]
fn store_holds_a_download_until_released() {
    let emu = Emu::demo();
    let id = vid(Kind::Volumes, "input-data");
    let url = emu.download_url("volumes", &id, "");
    let good = emu.fetch(&url).bytes().unwrap().to_vec();
    let counter = |key: &str| emu.counters()[key].as_u64().unwrap_or(0);
    let poll = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };

    emu.fault(json!({"route":"store.get","hold_after_bytes":10}));
    let mut resp = emu.fetch(&url);
    assert_eq!(resp.status(), 200);
    let mut first = [0u8; 10];
    resp.read_exact(&mut first).unwrap();
    assert_eq!(&first, &good[..10]);
    poll("the hold", &|| counter("store.held") == 1);
    let per_version = |prefix: &str| {
        let counters = emu.counters();
        let keys: Vec<String> = counters
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, v)| k.starts_with(prefix) && v.as_u64() == Some(1))
            .map(|(k, _)| k.clone())
            .collect();
        keys
    };
    assert_eq!(per_version("store.held:").len(), 1, "{}", emu.counters());
    emu.post("/release", json!({}));
    let mut rest = Vec::new();
    resp.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, good[10..]);

    emu.fault(json!({"route":"store.get","hold_after_bytes":0}));
    let resp = emu.fetch(&url);
    poll("the second hold", &|| counter("store.held") == 2);
    drop(resp);
    poll("the client to be seen gone", &|| {
        counter("store.hung_up") == 1
    });
    assert_eq!(per_version("store.hung_up:").len(), 1, "{}", emu.counters());
}

#[test]
fn push_and_current() {
    let emu = Emu::demo();
    let first = emu.post(
        "/push",
        json!({"kind":"volumes","name":"fresh","files":{"a.txt":"alpha\n","dir/b.txt":"beta\n"},
               "message":"first push","created_by":"user"}),
    );
    let id = vid(Kind::Volumes, "fresh");
    assert_eq!(first["volume_id"], id.as_str());
    assert_eq!(first["file_count"], 2);
    assert_eq!(first["size"], 11);
    assert_eq!(first["message"], "first push");
    assert_eq!(first["created_by"], "user");
    let first_id = first["id"].as_str().unwrap().to_string();
    assert_eq!(
        first_id,
        content_version_id(
            &id,
            [("a.txt", &b"alpha\n"[..]), ("dir/b.txt", &b"beta\n"[..])]
        )
    );
    let names: Vec<Value> = emu.json("/volumes")["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names[0], "fresh", "the newest storage comes first");

    let second = emu.post(
        "/push",
        json!({"kind":"volumes","name":"fresh","files":{"a.txt":"alpha 2\n"},"created_by":"agent"}),
    );
    let second_id = second["id"].as_str().unwrap().to_string();
    assert!(second["message"].is_null());
    let storage = emu.json(&format!("/volumes/{id}"));
    assert_eq!(storage["current_version_id"], second_id.as_str());
    assert_eq!(storage["file_count"], 1);

    // Move current back to the older version; the list still has the newest first.
    let moved = emu.post(
        "/current",
        json!({"kind":"volumes","name":"fresh","version":&first_id[..10]}),
    );
    assert_eq!(moved["current_version_id"], first_id.as_str());
    let storage = emu.json(&format!("/volumes/{id}"));
    assert_eq!(storage["current_version_id"], first_id.as_str());
    let versions = emu.json(&format!("/volumes/{id}/versions"));
    assert_eq!(versions["data"][0]["id"], second_id.as_str());
    assert_eq!(versions["data"][1]["id"], first_id.as_str());

    // Re-pushing the second version's content creates nothing and makes it current.
    let again = emu.post(
        "/push",
        json!({"kind":"volumes","name":"fresh","files":{"a.txt":"alpha 2\n"}}),
    );
    assert_eq!(again["id"], second_id.as_str());
    assert_eq!(
        emu.json(&format!("/volumes/{id}/versions"))["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // The download of a pushed version is its files.
    let url = emu.download_url("volumes", &id, &format!("?version_id={first_id}"));
    let archive = emu.fetch(&url).bytes().unwrap().to_vec();
    let members = tar_members(&gunzip(&archive).unwrap()).unwrap();
    let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(names, ["a.txt", "dir/b.txt"]);

    // An empty push is a 0-file version; artifacts work the same.
    let empty = emu.post(
        "/push",
        json!({"kind":"artifacts","name":"run-7","files":{}}),
    );
    assert_eq!(empty["file_count"], 0);
    assert_eq!(empty["artifact_id"], vid(Kind::Artifacts, "run-7").as_str());
    assert_not_found(emu.get(&format!(
        "/artifacts/{}/download",
        vid(Kind::Artifacts, "run-7")
    )));

    // Errors.
    for bad in [
        json!({"kind":"volumes","name":"fresh","files":{"../x":"no"}}),
        json!({"kind":"disks","name":"fresh","files":{}}),
        json!({"kind":"volumes","name":"fresh","files":{},"created_by":"robot"}),
    ] {
        let resp = emu
            .http
            .post(format!("{}/push", emu.admin))
            .json(&bad)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
    }
    let resp = emu
        .http
        .post(format!("{}/current", emu.admin))
        .json(&json!({"kind":"volumes","name":"fresh","version":"0".repeat(64)}))
        .send()
        .unwrap();
    assert_not_found(resp);
}

/// Sum of the sizes of the regular files under `dir`, as they are on disk.
fn extracted_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            total += extracted_bytes(&entry.path());
        } else if kind.is_file() {
            total += entry.metadata().unwrap().len();
        }
    }
    total
}

/// Whether a member of the archive is sparse in the format asked for: a GNU `S` header, or
/// pax `GNU.sparse.*` records.
fn has_sparse_member(tar_gz: &[u8]) -> bool {
    let tar_bytes = gunzip(tar_gz).expect("gzip");
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let mut sparse = false;
    for entry in archive.entries().expect("tar") {
        let mut entry = entry.expect("a member");
        sparse |= entry.header().entry_type() == tar::EntryType::GNUSparse;
        if let Some(extensions) = entry.pax_extensions().expect("pax records") {
            sparse |= extensions
                .flatten()
                .any(|e| e.key().is_ok_and(|k| k.starts_with("GNU.sparse.")));
        }
    }
    sparse
}

/// A version archived by GNU tar from a real sparse file (`tar -S`, in the old GNU format
/// and in the pax formats) is announced with the size `tar -xzf` unpacks it to: the
/// sparse file's real size, holes included. (vm0fs counts an old-style sparse member at
/// that size and refuses a version that unpacks to more than announced; it skips pax-format
/// sparse members, so their real size is an upper bound of what it writes.)
#[test]
fn sparse_members_are_announced_at_their_real_size() {
    use std::os::unix::fs::{FileExt, MetadataExt};

    let src = tempfile::tempdir().unwrap();
    let sparse = std::fs::File::create(src.path().join("sparse.bin")).unwrap();
    sparse.write_all_at(&[7u8; 10_000], 0).unwrap();
    sparse.write_all_at(&[9u8; 5_000], 1 << 20).unwrap();
    sparse.set_len(4 << 20).unwrap();
    let meta = sparse.metadata().unwrap();
    assert!(
        meta.blocks() * 512 < meta.len(),
        "this file system keeps no holes: the test needs a sparse file"
    );
    drop(sparse);
    write(&src.path().join("dir/small.txt"), "small\n");

    let data = tempfile::tempdir().unwrap();
    let formats: &[(&str, &[&str])] = &[
        ("gnu", &["--format=gnu"]),
        ("pax00", &["--format=posix", "--sparse-version=0.0"]),
        ("pax01", &["--format=posix", "--sparse-version=0.1"]),
        ("pax10", &["--format=posix", "--sparse-version=1.0"]),
    ];
    for (name, flags) in formats {
        let dir = data.path().join(format!("volumes/sparse-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let archive = dir.join("v1.tar.gz");
        let status = Command::new("tar")
            .args(*flags)
            .arg("-S")
            .arg("-czf")
            .arg(&archive)
            .arg("-C")
            .arg(src.path())
            .arg(".")
            .status()
            .expect("run GNU tar");
        assert!(status.success(), "tar {flags:?} -S failed");
        assert!(
            has_sparse_member(&std::fs::read(&archive).unwrap()),
            "tar {flags:?} -S wrote no sparse member"
        );
    }

    let emu = Emu::start(&["--data", data.path().to_str().unwrap()]);
    for (name, flags) in formats {
        let archive = data.path().join(format!("volumes/sparse-{name}/v1.tar.gz"));
        let out = tempfile::tempdir().unwrap();
        let status = Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(out.path())
            .status()
            .expect("run GNU tar");
        assert!(status.success(), "tar -xzf of the {name} archive failed");
        let unpacked = extracted_bytes(out.path());
        assert_eq!(unpacked, (4 << 20) + 6, "tar -xzf of {name} ({flags:?})");

        let id = vid(Kind::Volumes, &format!("sparse-{name}"));
        let version = &emu.json(&format!("/volumes/{id}/versions"))["data"][0];
        assert_eq!(
            version["size"].as_u64(),
            Some(unpacked),
            "announced size of the {name} archive ({flags:?}): {version}"
        );
        assert_eq!(version["file_count"], 2, "{name}: {version}");
    }
}
