//! The API client against the emulator (in-process, over real HTTP on loopback): pagination
//! in both shapes, every error of the contract, retries, the redirect to the object store,
//! expired URLs and resumed downloads.
//!
//! Each test starts its own emulator (stopped on drop) so that fault rules and counters
//! never leak between tests that run in parallel.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;
use vm0_emulator::{EmulatorConfig, RunningEmulator};
use vm0fs::api::{
    ApiError, ArchiveRef, Client, ClientConfig, Download, Kind, ResumePoint, RetryPolicy, Server,
    Token,
};
use vm0fs::ids::{StorageId, StorageName, VersionId};

/// Small and fast: 4 attempts, 10 ms first backoff, nothing past 5 s.
fn quick_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        max_elapsed: Duration::from_secs(5),
    }
}

/// A `vm0-emulator` running in the test's process, with the demo data set; stopped on drop.
struct Emulator {
    /// Stopped when dropped.
    _running: RunningEmulator,
    api_url: String,
    store_url: String,
    admin_url: String,
    token: String,
    admin: reqwest::blocking::Client,
    /// Kept alive as long as the emulator reads from it.
    _data: Option<TempDir>,
}

impl Emulator {
    fn start() -> Emulator {
        Emulator::start_with_data(None)
    }

    /// Starts the emulator with `data` as a data directory as well (when given).
    fn start_with_data(data: Option<TempDir>) -> Emulator {
        let running = vm0_emulator::start(EmulatorConfig {
            demo: true,
            data_dirs: data.iter().map(|dir| dir.path().to_path_buf()).collect(),
            ..EmulatorConfig::default()
        })
        .expect("start the emulator");
        Emulator {
            api_url: running.api_url(),
            store_url: running.store_url(),
            admin_url: running.admin_url(),
            token: running.token(),
            _running: running,
            admin: reqwest::blocking::Client::new(),
            _data: data,
        }
    }

    fn client(&self) -> Client {
        self.client_with(&self.token, quick_policy(), Duration::from_secs(5))
    }

    fn client_with(&self, token: &str, retry: RetryPolicy, io_timeout: Duration) -> Client {
        Client::new(ClientConfig {
            base_url: self.api_url.clone(),
            token: Token::new(token),
            retry,
            io_timeout,
            url_setting: "VM0_API_URL",
        })
        .expect("client")
    }

    fn admin_post(&self, path: &str, body: Value) {
        let response = self
            .admin
            .post(format!("{}/{path}", self.admin_url))
            .json(&body)
            .send()
            .expect("admin request");
        assert!(
            response.status().is_success(),
            "POST {path} {body}: {}",
            response.status()
        );
    }

    fn fault(&self, rule: Value) {
        self.admin_post("faults", rule);
    }

    fn clear_faults(&self) {
        let response = self
            .admin
            .delete(format!("{}/faults", self.admin_url))
            .send()
            .unwrap();
        assert!(response.status().is_success());
    }

    fn config(&self, config: Value) {
        self.admin_post("config", config);
    }

    fn reset_counters(&self) {
        self.admin_post("counters/reset", json!({}));
    }

    fn counters(&self) -> BTreeMap<String, u64> {
        self.admin
            .get(format!("{}/counters", self.admin_url))
            .send()
            .expect("counters")
            .json()
            .expect("counters JSON")
    }

    fn count(&self, key: &str) -> u64 {
        self.counters().get(key).copied().unwrap_or(0)
    }

    fn push(&self, kind: &str, name: &str, files: Value) {
        self.admin_post("push", json!({"kind": kind, "name": name, "files": files}));
    }

    /// The id of a storage by name.
    fn storage_id(&self, kind: Kind, name: &str) -> StorageId {
        self.client()
            .list_storages(kind)
            .unwrap()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {kind} named {name}"))
            .id
    }

    /// The current version of a storage, by name.
    fn current_version(&self, kind: Kind, name: &str) -> VersionId {
        self.client()
            .list_storages(kind)
            .unwrap()
            .into_iter()
            .find(|s| s.name == name)
            .and_then(|s| s.current_version_id)
            .unwrap_or_else(|| panic!("no current version of {kind} {name}"))
    }

    /// `host:port` of a URL of this emulator.
    fn host_of(url: &str) -> String {
        let rest = url.split_once("://").unwrap().1;
        rest.split('/').next().unwrap().to_string()
    }

    /// Fails the test if the token shows in any rendering of `err`.
    fn assert_secret_safe(&self, err: &ApiError) {
        for text in [
            format!("{err}"),
            format!("{err:?}"),
            format!("{err:#?}"),
            error_chain(err),
        ] {
            assert!(!text.contains(&self.token), "the token leaked: {text}");
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn sha256(data: &[u8]) -> String {
    vm0_emulator::sha256_hex(data)
}

fn write(path: &Path, content: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// Random bytes (incompressible), deterministic per seed.
fn noise(len: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = vm0_emulator::sha256(&[seed]);
    while out.len() < len {
        block = vm0_emulator::sha256(&block);
        out.extend_from_slice(&block);
    }
    out.truncate(len);
    out
}

/// A data dir with one volume `big` whose only version is `archive` served byte for byte
/// (the emulator serves a `<label>.tar.gz` as is, even when it is not a valid archive).
fn big_archive_data(archive: &[u8]) -> TempDir {
    let dir = TempDir::new().unwrap();
    write(&dir.path().join("volumes/big/v1.tar.gz"), archive);
    dir
}

fn read_all(mut download: Download) -> Result<Vec<u8>, std::io::Error> {
    let mut data = Vec::new();
    download.read_to_end(&mut data)?;
    Ok(data)
}

fn api_error(err: &std::io::Error) -> &ApiError {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<ApiError>())
        .unwrap_or_else(|| panic!("the io::Error does not carry an ApiError: {err:?}"))
}

// ---------------------------------------------------------------------------------------
// Pagination

#[test]
fn lists_every_storage_and_version_across_pages_in_both_shapes_and_with_the_quirk() {
    // 230 volumes (3 pages of 100) and one volume with 150 versions (2 pages).
    let data = TempDir::new().unwrap();
    let mut names = BTreeSet::new();
    for i in 0..230 {
        let name = format!("bulk-{i:03}");
        write(
            &data.path().join(format!("volumes/{name}/v1/file.txt")),
            name.as_bytes(),
        );
        names.insert(name);
    }
    for i in 0..150 {
        write(
            &data.path().join(format!("volumes/many/v{i:03}/n.txt")),
            format!("{i}").as_bytes(),
        );
    }
    names.insert("many".into());
    let emulator = Emulator::start_with_data(Some(data));
    let client = emulator.client();
    let demo: BTreeSet<String> = {
        // Whatever the demo adds besides our data: our names must all be there, no duplicates.
        let all = client.list_storages(Kind::Volume).unwrap();
        all.iter()
            .map(|s| s.name.to_string())
            .filter(|n| !names.contains(n))
            .collect()
    };
    let mut expected = names.clone();
    expected.extend(demo);

    for shape in ["snake", "camel"] {
        for quirk in [false, true] {
            emulator.config(json!({"shape": shape, "pagination_quirk": quirk}));
            emulator.reset_counters();
            let storages = client.list_storages(Kind::Volume).unwrap();
            let listed: Vec<&str> = storages.iter().map(|s| s.name.as_str()).collect();
            let unique: BTreeSet<String> = listed.iter().map(|s| s.to_string()).collect();
            assert_eq!(
                listed.len(),
                unique.len(),
                "{shape} quirk={quirk}: duplicates"
            );
            assert_eq!(unique, expected, "{shape} quirk={quirk}");
            assert!(
                emulator.count("volumes.list") >= 3,
                "{shape}: fewer pages than rows/100"
            );
            for s in &storages {
                assert!(s.current_version_id.is_some(), "{shape}: {s:?}");
                assert!(s.created_at > std::time::UNIX_EPOCH, "{shape}: {s:?}");
            }

            let many = storages.iter().find(|s| s.name == "many").unwrap();
            let versions = client.list_versions(Kind::Volume, &many.id).unwrap();
            let ids: BTreeSet<&str> = versions.iter().map(|v| v.id.as_str()).collect();
            assert_eq!(versions.len(), 150, "{shape} quirk={quirk}");
            assert_eq!(ids.len(), 150, "{shape} quirk={quirk}: duplicates");
            assert!(
                versions
                    .windows(2)
                    .all(|w| w[0].created_at >= w[1].created_at),
                "newest first"
            );
            assert!(versions
                .iter()
                .all(|v| v.storage_id == many.id && v.file_count == Some(1)));

            let detail = client.get_storage(Kind::Volume, &many.id).unwrap();
            assert_eq!(detail.storage.id, many.id);
            let current = detail.current_version.expect("a current version");
            assert_eq!(Some(&current.id), many.current_version_id.as_ref());
            assert_eq!(current.storage_id, many.id);
        }
    }
}

#[test]
fn a_stuck_cursor_is_a_protocol_error_not_a_hang() {
    let emulator = Emulator::start();
    emulator.config(json!({"stuck_cursor": true}));
    // Enough storages for more than one page, whatever the demo holds.
    for i in 0..120 {
        emulator.push("artifacts", &format!("stuck-{i:03}"), json!({"a.txt": "a"}));
    }
    emulator.reset_counters();
    let err = emulator.client().list_storages(Kind::Artifact).unwrap_err();
    assert!(matches!(err, ApiError::Protocol { .. }), "{err:?}");
    assert!(err.to_string().contains("cursor"), "{err}");
    // Stopped at the first repeat of the cursor: the first page, then the repeated one.
    let pages = emulator.count("artifacts.list");
    assert!(pages <= 3, "{pages} pages asked");
    emulator.assert_secret_safe(&err);
}

// ---------------------------------------------------------------------------------------
// Errors

#[test]
fn a_bad_token_is_an_authentication_error_that_names_vm0_token() {
    let emulator = Emulator::start();
    let wrong = format!("vm0_live_{}", "0".repeat(64));
    let client = emulator.client_with(&wrong, quick_policy(), Duration::from_secs(5));
    emulator.reset_counters();
    let err = client.list_storages(Kind::Volume).unwrap_err();
    assert!(
        matches!(
            err,
            ApiError::Authentication {
                request_id: Some(_)
            }
        ),
        "{err:?}"
    );
    assert!(err.is_auth());
    let text = err.to_string();
    assert!(
        text.contains("VM0_TOKEN") && text.contains("401") && text.contains("req_"),
        "{text}"
    );
    assert!(!text.contains(&wrong) && !format!("{err:?} {client:?}").contains(&wrong));
    assert_eq!(emulator.count("volumes.list"), 1, "a 401 is not retried");
    emulator.assert_secret_safe(&err);
}

#[test]
fn unknown_storages_and_versions_are_not_found_and_name_the_resource() {
    let emulator = Emulator::start();
    emulator.push("volumes", "known", json!({"a.txt": "a"}));
    let client = emulator.client();
    let unknown = "00000000-0000-4000-8000-000000000000";

    let err = client
        .get_storage(Kind::Volume, &unknown.into())
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(
        err.to_string().contains(&format!("volume {unknown}")),
        "{err}"
    );
    assert!(
        err.request_id().is_some_and(|id| id.starts_with("req_")),
        "{err:?}"
    );
    emulator.assert_secret_safe(&err);

    let err = client
        .list_versions(Kind::Artifact, &unknown.into())
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(
        err.to_string().contains(&format!("artifact {unknown}")),
        "{err}"
    );

    let known = emulator.storage_id(Kind::Volume, "known");
    let missing = "ab".repeat(32);
    let err = client
        .download(Kind::Volume, &known, Some(&missing))
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("version {} of volume {known}", &missing[..8])),
        "{err}"
    );
    // Named by the caller, the storage is named by its name; a prefix is named as given.
    let named = ArchiveRef::version(Kind::Volume, known.clone(), "abcdef01").named("known".into());
    let err = client.download_archive(&named, None).unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(
        err.to_string().contains("version abcdef01 of volume known")
            && !err.to_string().contains(known.as_str()),
        "{err}"
    );
    emulator.assert_secret_safe(&err);

    let err = client
        .download(Kind::Volume, &unknown.into(), None)
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

#[test]
fn injected_400_and_403_are_typed_and_not_retried() {
    let emulator = Emulator::start();
    let client = emulator.client();
    for (status, route) in [(400, "volumes.list"), (403, "artifacts.list")] {
        emulator.reset_counters();
        emulator.fault(json!({"route": route, "status": status, "count": 1}));
        let kind = if route.starts_with("volumes") {
            Kind::Volume
        } else {
            Kind::Artifact
        };
        let err = client.list_storages(kind).unwrap_err();
        match status {
            400 => assert!(matches!(err, ApiError::InvalidRequest { .. }), "{err:?}"),
            _ => assert!(
                matches!(err, ApiError::Authorization { .. }) && err.is_auth(),
                "{err:?}"
            ),
        }
        assert!(err.to_string().contains(&status.to_string()), "{err}");
        assert!(err.request_id().is_some(), "{err:?}");
        assert_eq!(emulator.count(route), 1, "{status} is not retried");
        emulator.assert_secret_safe(&err);
    }
}

#[test]
fn a_500_that_clears_after_two_faults_is_retried_to_success() {
    let emulator = Emulator::start();
    emulator.reset_counters();
    emulator.fault(json!({"route": "volumes.list", "status": 500, "count": 2}));
    emulator.client().list_storages(Kind::Volume).unwrap();
    assert_eq!(emulator.count("volumes.list"), 3);
}

#[test]
fn a_500_that_never_clears_is_a_server_error_within_the_retry_budget() {
    let emulator = Emulator::start();
    emulator.reset_counters();
    emulator.fault(json!({"route": "volumes.list", "status": 500, "count": 0}));
    let err = emulator.client().list_storages(Kind::Volume).unwrap_err();
    let asked = emulator.count("volumes.list");
    assert!(asked > 1, "retried: {asked} requests");
    assert!(
        matches!(err, ApiError::Server { status: 500, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("HTTP 500") && text.contains("try again later"),
        "{text}"
    );
    assert!(text.contains("req_"), "{text}");
    assert_eq!(
        emulator.count("volumes.list"),
        u64::from(quick_policy().max_attempts)
    );
    emulator.assert_secret_safe(&err);
}

#[test]
fn a_429_waits_at_least_its_retry_after() {
    let emulator = Emulator::start();
    emulator.reset_counters();
    emulator.fault(json!({"route": "volumes.list", "status": 429, "retry_after": 1, "count": 1}));
    let started = Instant::now();
    emulator.client().list_storages(Kind::Volume).unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(emulator.count("volumes.list"), 2);

    // A Retry-After beyond the retry budget gives up at once instead of sleeping in vain.
    emulator.fault(json!({"route": "volumes.list", "status": 429, "retry_after": 60, "count": 1}));
    emulator.reset_counters();
    let err = emulator.client().list_storages(Kind::Volume).unwrap_err();
    assert_eq!(
        emulator.count("volumes.list"),
        1,
        "no retry that could not succeed"
    );
    assert!(
        matches!(err, ApiError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(60)),
        "{err:?}"
    );
    emulator.assert_secret_safe(&err);
}

#[test]
fn an_html_error_page_is_an_unexpected_body_naming_the_status() {
    let emulator = Emulator::start();
    let page = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>";
    emulator.fault(json!({
        "route": "volumes.list", "status": 502, "count": 0,
        "body": page, "content_type": "text/html",
    }));
    let err = emulator.client().list_storages(Kind::Volume).unwrap_err();
    assert!(
        matches!(err, ApiError::UnexpectedBody { status: 502, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("HTTP 502") && text.contains("Bad Gateway"),
        "{text}"
    );
    emulator.assert_secret_safe(&err);

    // The same page with a 404 must not read as "not found".
    emulator.clear_faults();
    emulator.fault(
        json!({"route": "volumes.get", "status": 404, "body": page, "content_type": "text/html"}),
    );
    let err = emulator
        .client()
        .get_storage(Kind::Volume, &"00000000-0000-4000-8000-000000000000".into())
        .unwrap_err();
    assert!(
        matches!(err, ApiError::UnexpectedBody { status: 404, .. }) && !err.is_not_found(),
        "{err:?}"
    );
}

#[test]
fn a_refused_connection_is_a_transport_error() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token = format!("vm0_test_{}", "f".repeat(64));
    let client = Client::new(ClientConfig {
        base_url: format!("http://127.0.0.1:{port}/v1/"),
        token: Token::new(token.clone()),
        retry: quick_policy(),
        io_timeout: Duration::from_secs(2),
        url_setting: "VM0_API_URL",
    })
    .unwrap();
    let err = client.list_storages(Kind::Volume).unwrap_err();
    assert!(
        matches!(
            err,
            ApiError::Transport {
                server: Server::Api,
                stalled: None,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("could not reach the VM0 API at 127.0.0.1:{port}"))
            && text.contains("VM0_API_URL")
            && text.to_lowercase().contains("connection refused"),
        "{text}"
    );
    for text in [
        text,
        format!("{err:?}"),
        error_chain(&err),
        format!("{client:?}"),
    ] {
        assert!(!text.contains(&token), "{text}");
    }
}

#[test]
fn a_stalled_answer_times_out_and_is_retried() {
    let emulator = Emulator::start();
    emulator.reset_counters();
    emulator.fault(json!({"route": "volumes.list", "delay_ms": 3000, "count": 1}));
    let client = emulator.client_with(&emulator.token, quick_policy(), Duration::from_millis(300));
    // The stalled request gave up on its own (the fault holds it for 3 s, ten io timeouts):
    // the listing came from the second request.
    client.list_storages(Kind::Volume).unwrap();
    assert_eq!(emulator.count("volumes.list"), 2);
}

// ---------------------------------------------------------------------------------------
// Downloads

#[test]
fn the_redirect_is_followed_without_the_token() {
    let archive = noise(300_000, 1);
    let emulator = Emulator::start_with_data(Some(big_archive_data(&archive)));
    let id = emulator.storage_id(Kind::Volume, "big");
    emulator.reset_counters();
    let download = emulator.client().download(Kind::Volume, &id, None).unwrap();
    assert_eq!(download.compressed_size, Some(archive.len() as u64));
    let data = read_all(download).unwrap();
    assert_eq!(sha256(&data), sha256(&archive));
    assert_eq!(emulator.count("volumes.download"), 1);
    assert_eq!(emulator.count("store.get"), 1);

    // Proof that it matters: the store answers 400 to the same URL with the token.
    let raw = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect = raw
        .get(format!("{}/volumes/{id}/download", emulator.api_url))
        .bearer_auth(&emulator.token)
        .send()
        .unwrap();
    assert_eq!(redirect.status(), 302);
    let location = redirect.headers()["location"].to_str().unwrap().to_string();
    let with_token = raw
        .get(&location)
        .bearer_auth(&emulator.token)
        .send()
        .unwrap();
    assert_eq!(with_token.status(), 400);
    assert_eq!(raw.get(&location).send().unwrap().status(), 200);
}

#[test]
fn both_version_parameter_names_select_the_version_in_both_shapes() {
    let emulator = Emulator::start();
    emulator.push("volumes", "two", json!({"a.txt": "first"}));
    emulator.push("volumes", "two", json!({"a.txt": "second, longer"}));
    let client = emulator.client();
    let id = emulator.storage_id(Kind::Volume, "two");
    let versions = client.list_versions(Kind::Volume, &id).unwrap();
    assert_eq!(versions.len(), 2);
    let older = &versions[1];
    for shape in ["snake", "camel"] {
        emulator.config(json!({"shape": shape}));
        emulator.reset_counters();
        let data = read_all(
            client
                .download(Kind::Volume, &id, Some(older.id.as_str()))
                .unwrap(),
        )
        .unwrap();
        assert!(!data.is_empty());
        assert_eq!(
            emulator.count(&format!("download:{}", older.id)),
            1,
            "{shape}"
        );
        // A unique prefix of 8 hex characters works too.
        let prefix = &older.id.as_str()[..8];
        let same = read_all(client.download(Kind::Volume, &id, Some(prefix)).unwrap()).unwrap();
        assert_eq!(sha256(&same), sha256(&data), "{shape}");
    }
}

#[test]
fn a_refused_url_is_replaced_by_a_fresh_one() {
    let archive = noise(50_000, 2);
    let emulator = Emulator::start_with_data(Some(big_archive_data(&archive)));
    let id = emulator.storage_id(Kind::Volume, "big");
    let client = emulator.client();

    // One 403 from the store: one more URL is asked of the API.
    emulator.reset_counters();
    emulator.fault(json!({"route": "store.get", "status": 403, "count": 1}));
    let data = read_all(client.download(Kind::Volume, &id, None).unwrap()).unwrap();
    assert_eq!(sha256(&data), sha256(&archive));
    assert_eq!(
        (
            emulator.count("volumes.download"),
            emulator.count("store.get")
        ),
        (2, 2)
    );

    // URLs that are expired when used: a bounded number of fresh ones, then DownloadUrl.
    emulator.config(json!({"url_ttl_secs": 0}));
    emulator.reset_counters();
    let err = client.download(Kind::Volume, &id, None).unwrap_err();
    assert!(
        matches!(err, ApiError::DownloadUrl { status: 403, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("volume"), "{err}");
    emulator.assert_secret_safe(&err);
    let asked = emulator.count("volumes.download");
    assert!((2..=5).contains(&asked), "{asked} URLs asked");
    assert_eq!(emulator.count("store.get"), asked);

    // Back to normal: the next download works at once.
    emulator.config(json!({"url_ttl_secs": 3600}));
    emulator.reset_counters();
    let data = read_all(client.download(Kind::Volume, &id, None).unwrap()).unwrap();
    assert_eq!(sha256(&data), sha256(&archive));
    assert_eq!(emulator.count("volumes.download"), 1);
}

#[test]
fn a_cut_connection_is_resumed_with_range_and_the_bytes_are_identical() {
    let archive = noise(2_000_000, 3);
    let emulator = Emulator::start_with_data(Some(big_archive_data(&archive)));
    let id = emulator.storage_id(Kind::Volume, "big");
    let client = emulator.client();

    let uncut = read_all(client.download(Kind::Volume, &id, None).unwrap()).unwrap();
    assert_eq!(sha256(&uncut), sha256(&archive));

    emulator.reset_counters();
    emulator.fault(json!({"route": "store.get", "cut_after_bytes": 700_000, "count": 2}));
    let mut download = client.download(Kind::Volume, &id, None).unwrap();
    let mut cut = Vec::new();
    download.read_to_end(&mut cut).unwrap();
    assert_eq!(download.resumes(), 2);
    assert_eq!(download.bytes_read(), archive.len() as u64);
    assert_eq!(sha256(&cut), sha256(&uncut));
    assert_eq!(emulator.count("store.get"), 3);
    assert_eq!(
        emulator.count("volumes.download"),
        1,
        "the URL was still valid"
    );
}

#[test]
fn a_resume_after_the_url_expired_asks_for_a_fresh_url() {
    let archive = noise(1_000_000, 4);
    let emulator = Emulator::start_with_data(Some(big_archive_data(&archive)));
    let id = emulator.storage_id(Kind::Volume, "big");
    emulator.reset_counters();
    // The first answer is cut; the resume then finds its URL refused, as the store answers
    // an expired one (403), instead of waiting for a real expiry.
    emulator.fault(json!({"route": "store.get", "cut_after_bytes": 100_000, "count": 1}));
    emulator.fault(json!({"route": "store.get", "status": 403, "count": 1}));
    let mut download = emulator.client().download(Kind::Volume, &id, None).unwrap();
    let mut data = Vec::new();
    download.read_to_end(&mut data).unwrap();
    assert_eq!(sha256(&data), sha256(&archive));
    assert_eq!(download.resumes(), 1);
    // 2 URLs and 3 GETs: the first GET, the refused resume, the resume with a fresh URL.
    assert_eq!(emulator.count("volumes.download"), 2);
    assert_eq!(emulator.count("store.get"), 3);
}

/// A link that breaks every 32 KiB: 62 cuts in a 2 MB archive, far more than the 16 or 24
/// resumes a download used to be allowed in all. Each resume brings new bytes, so none of
/// them counts against the retry budget.
#[test]
fn a_link_cut_every_32_kib_completes_however_many_resumes_it_takes() {
    let archive = noise(2_000_000, 5);
    let emulator = Emulator::start_with_data(Some(big_archive_data(&archive)));
    let id = emulator.storage_id(Kind::Volume, "big");
    emulator.reset_counters();
    emulator.fault(json!({"route": "store.get", "cut_after_bytes": 32_768, "count": 0}));
    let mut download = emulator.client().download(Kind::Volume, &id, None).unwrap();
    let mut data = Vec::new();
    download.read_to_end(&mut data).unwrap();
    assert_eq!(sha256(&data), sha256(&archive));
    let cuts = archive.len().div_ceil(32_768) as u32 - 1;
    assert_eq!(download.resumes(), cuts);
    assert!(cuts > 24);
    assert_eq!(emulator.count("store.get"), u64::from(cuts) + 1);
    assert_eq!(
        emulator.count("volumes.download"),
        1,
        "the URL stayed valid"
    );
}

/// Resumes that bring nothing are a failure streak: it ends the download once the policy's
/// attempts (here 4 requests without a byte) are spent, after the progress made before.
#[test]
fn resumes_that_bring_no_byte_fail_the_read_once_the_budget_is_spent() {
    let archive = noise(1_000_000, 5);
    let emulator = Emulator::start_with_data(Some(big_archive_data(&archive)));
    let id = emulator.storage_id(Kind::Volume, "big");
    emulator.reset_counters();
    // Three requests bring 100 000 bytes each, then every request brings none.
    emulator.fault(json!({"route": "store.get", "cut_after_bytes": 100_000, "count": 3}));
    emulator.fault(json!({"route": "store.get", "cut_after_bytes": 0, "count": 0}));
    let mut download = emulator.client().download(Kind::Volume, &id, None).unwrap();
    let mut data = Vec::new();
    let err = download.read_to_end(&mut data).unwrap_err();
    assert_eq!(data, archive[..300_000]);
    assert_eq!(download.position(), 300_000);
    // Each progressing resume reset the streak: 3 cuts after progress, then 3 resumes and a
    // fourth request without a byte.
    assert_eq!(download.resumes(), 5);
    assert_eq!(emulator.count("store.get"), 6);
    let api = api_error(&err);
    assert!(
        matches!(
            api,
            ApiError::Transport {
                server: Server::ObjectStore,
                ..
            }
        ),
        "{api:?}"
    );
    let text = api.to_string();
    assert!(
        text.contains("broke off after 300000 bytes and 5 resumes")
            && text.contains("no byte arrived for")
            && text.contains(&format!(
                "the object store at {}",
                Emulator::host_of(&emulator.store_url)
            ))
            && text.contains("volume"),
        "{text}"
    );
    assert!(
        !text.contains("X-Amz-Signature") && !text.contains("VM0_API_URL"),
        "{text}"
    );
    emulator.assert_secret_safe(api);
    // Later reads fail with the same error.
    let again = download.read(&mut [0; 10]).unwrap_err();
    assert!(again.to_string().contains("broke off"), "{again}");
}

#[test]
fn a_slow_reader_is_not_cut_by_the_io_timeout() {
    // The io timeout bounds each read, not the whole download, and time the caller spends
    // between reads does not count: a download that outlasts it many times still completes.
    let archive = noise(1_000_000, 6);
    let emulator = Emulator::start_with_data(Some(big_archive_data(&archive)));
    let id = emulator.storage_id(Kind::Volume, "big");
    let io_timeout = Duration::from_millis(500);
    let client = emulator.client_with(&emulator.token, quick_policy(), io_timeout);
    let mut download = client.download(Kind::Volume, &id, None).unwrap();
    let mut data = vec![0; 100_000];
    download.read_exact(&mut data).unwrap();
    std::thread::sleep(io_timeout * 3);
    download.read_to_end(&mut data).unwrap();
    assert_eq!(sha256(&data), sha256(&archive));
    assert_eq!(download.resumes(), 0);
}

/// The default policy's proportions in small: the time budget is no longer than the io
/// timeout, so a request that stalls for the whole timeout has used up the budget if it is
/// counted from the first request (the API and the store holding a request 45 s, once, gave
/// EIO at 30 s with a single GET).
fn budget_of_one_timeout(io_timeout: Duration) -> RetryPolicy {
    RetryPolicy {
        max_attempts: 20,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        max_elapsed: io_timeout,
    }
}

#[test]
fn a_stall_before_the_headers_is_retried_like_a_connection_error() {
    let archive = noise(200_000, 9);
    let emulator = Emulator::start_with_data(Some(big_archive_data(&archive)));
    let id = emulator.storage_id(Kind::Volume, "big");
    let io_timeout = Duration::from_millis(500);
    let client = emulator.client_with(
        &emulator.token,
        budget_of_one_timeout(io_timeout),
        io_timeout,
    );
    emulator.reset_counters();
    // Both the API's redirect and the store's answer are held for six io timeouts, once.
    emulator.fault(json!({"route": "volumes.download", "delay_ms": 3000, "count": 1}));
    emulator.fault(json!({"route": "store.get", "delay_ms": 3000, "count": 1}));
    let data = read_all(client.download(Kind::Volume, &id, None).unwrap()).unwrap();
    assert_eq!(sha256(&data), sha256(&archive));
    assert_eq!(
        emulator.count("volumes.download"),
        2,
        "{:?}",
        emulator.counters()
    );
    assert_eq!(emulator.count("store.get"), 2, "{:?}", emulator.counters());
}

/// The archive `big` of `big_archive_data`, named by its storage's name.
fn big_archive(emulator: &Emulator) -> ArchiveRef {
    let id = emulator.storage_id(Kind::Volume, "big");
    let version = emulator.current_version(Kind::Volume, "big");
    ArchiveRef::version(Kind::Volume, id, version.as_str()).named(StorageName::new("big"))
}

#[test]
fn a_download_resumed_from_a_resume_point_yields_the_rest_of_the_same_archive() {
    let archive = noise(1_500_000, 10);
    let emulator = Emulator::start_with_data(Some(big_archive_data(&archive)));
    let big = big_archive(&emulator);
    let client = emulator.client();

    // A first download stops after 600 000 bytes (the caller keeps them).
    let mut first = client.download_archive(&big, None).unwrap();
    let mut held = vec![0; 600_000];
    first.read_exact(&mut held).unwrap();
    let point = first.resume_point().expect("the store sends an ETag");
    assert_eq!(point.offset, 600_000);
    assert_eq!(point.total, Some(archive.len() as u64));
    assert_eq!(Some(point.etag.as_str()), first.etag());
    drop(first);

    // A second one, from that point, brings exactly the rest.
    emulator.reset_counters();
    let mut rest = client.download_archive(&big, Some(&point)).unwrap();
    assert_eq!(rest.compressed_size, Some(archive.len() as u64));
    assert_eq!(rest.position(), 600_000);
    let mut tail = Vec::new();
    rest.read_to_end(&mut tail).unwrap();
    assert_eq!(tail.len(), archive.len() - 600_000);
    assert_eq!(rest.bytes_read(), tail.len() as u64);
    assert_eq!(rest.position(), archive.len() as u64);
    held.extend_from_slice(&tail);
    assert_eq!(sha256(&held), sha256(&archive));
    assert_eq!(emulator.count("store.get"), 1);

    // From the very end: nothing more, and no error.
    let end = ResumePoint {
        offset: archive.len() as u64,
        ..point.clone()
    };
    let mut nothing = client.download_archive(&big, Some(&end)).unwrap();
    assert_eq!(read_to_vec(&mut nothing), Vec::<u8>::new());

    // Cut on the way, the continuation resumes by itself like any download.
    emulator.fault(json!({"route": "store.get", "cut_after_bytes": 100_000, "count": 2}));
    let mut cut = client.download_archive(&big, Some(&point)).unwrap();
    assert_eq!(read_to_vec(&mut cut), archive[600_000..]);
    assert_eq!(cut.resumes(), 2);
}

fn read_to_vec(download: &mut Download) -> Vec<u8> {
    let mut data = Vec::new();
    download.read_to_end(&mut data).unwrap();
    data
}

#[test]
fn a_resume_against_an_object_that_changed_is_a_distinct_error() {
    let archive = noise(500_000, 11);
    let emulator = Emulator::start_with_data(Some(big_archive_data(&archive)));
    let big = big_archive(&emulator);
    let client = emulator.client();
    let mut first = client.download_archive(&big, None).unwrap();
    first.read_exact(&mut [0; 1000]).unwrap();
    let point = first.resume_point().unwrap();
    drop(first);

    // The store now serves another object under the same URL.
    emulator.fault(json!({"route": "store.get", "etag": "\"replaced\"", "count": 1}));
    let err = client.download_archive(&big, Some(&point)).unwrap_err();
    assert!(err.is_changed(), "{err:?}");
    assert!(
        matches!(err, ApiError::Changed { offset: 1000, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("version")
            && text.contains("of volume big")
            && text.contains("\"replaced\"")
            && text.contains("start again from the beginning"),
        "{text}"
    );
    emulator.assert_secret_safe(&err);

    // A held length that is not the object's: changed too (the store has no such byte).
    let longer = ResumePoint {
        offset: archive.len() as u64 + 10,
        total: None,
        ..point.clone()
    };
    let err = client.download_archive(&big, Some(&longer)).unwrap_err();
    assert!(err.is_changed(), "{err:?}");

    // The same inside one download: a resume that meets another object fails the read with
    // the same error, instead of splicing two objects.
    emulator.fault(json!({"route": "store.get", "cut_after_bytes": 50_000, "count": 1}));
    emulator.fault(json!({"route": "store.get", "etag": "\"replaced\"", "count": 1}));
    let download = client.download_archive(&big, None).unwrap();
    let err = read_all(download).unwrap_err();
    let api = api_error(&err);
    assert!(
        matches!(api, ApiError::Changed { offset: 50_000, .. }),
        "{api:?}"
    );
}

/// The errors say which server failed, by `host:port`, that it stalled and for how long,
/// and name the storage by its name: never "error sending request; check VM0_API_URL" for
/// the object store, never its presigned URL.
#[test]
fn a_stalled_server_is_named_by_host_with_the_time_it_stayed_silent() {
    let archive = noise(100_000, 12);
    let emulator = Emulator::start_with_data(Some(big_archive_data(&archive)));
    let big = big_archive(&emulator);
    let short = &big.version.as_deref().unwrap()[..8];
    let io_timeout = Duration::from_millis(300);
    let policy = RetryPolicy {
        max_attempts: 3,
        ..quick_policy()
    };
    let client = emulator.client_with(&emulator.token, policy, io_timeout);

    // The object store holds every request.
    emulator.fault(json!({"route": "store.get", "delay_ms": 2000, "count": 0}));
    let err = client.download_archive(&big, None).unwrap_err();
    let store = Emulator::host_of(&emulator.store_url);
    assert!(
        matches!(
            &err,
            ApiError::Transport { server: Server::ObjectStore, host: Some(h), stalled: Some(t), .. }
                if *h == store && *t == io_timeout
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert_eq!(
        text,
        format!(
            "the object store at {store} timed out after 0.3 s without a byte while fetching \
             version {short} of volume big; try again later"
        )
    );
    assert!(!text.contains(big.storage_id.as_str()), "{text}");
    emulator.assert_secret_safe(&err);
    assert!(!format!("{err:?}").contains("X-Amz"), "{err:?}");

    // The API holds every request.
    emulator.clear_faults();
    emulator.fault(json!({"route": "volumes.download", "delay_ms": 2000, "count": 0}));
    let err = client.download_archive(&big, None).unwrap_err();
    let api = Emulator::host_of(&emulator.api_url);
    assert!(
        matches!(
            &err,
            ApiError::Transport {
                server: Server::Api,
                stalled: Some(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "the VM0 API at {api} timed out after 0.3 s without a byte while fetching \
             version {short} of volume big; check the network and try again later"
        )
    );
    emulator.assert_secret_safe(&err);
}

// ---------------------------------------------------------------------------------------
// Object stores that behave in ways the emulator does not

/// A hand-written HTTP server for what the emulator does not do (a store that ignores
/// `Range`, or answers with the wrong range). For the `n`th connection, `respond(n, head)`
/// gives the raw bytes to write; the connection is then closed, so a response whose body is
/// shorter than its `Content-Length` is a cut connection. Returns the base URL and the
/// request heads received.
fn fake_server(
    respond: impl Fn(usize, &str) -> Vec<u8> + Send + 'static,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            seen.lock().unwrap().push(head.clone());
            let _ = stream.write_all(&respond(n, &head));
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    });
    (base, heads)
}

fn http_response(status: &str, headers: &[String], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Serves `GET /v1/volumes/x/download` with a 302 to `/store/obj`; store requests go to
/// `store(n, head)` where `n` counts store requests from 0.
fn fake_api_and_store(
    store: impl Fn(usize, &str) -> Vec<u8> + Send + 'static,
) -> (Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let store_requests = std::sync::atomic::AtomicUsize::new(0);
    let (base, heads) = fake_server(move |_, head| {
        if head.starts_with("GET /v1/volumes/x/download") {
            let location = "Location: /store/obj?X-Amz-Signature=sig".to_string();
            http_response("302 Found", &[location, "Content-Length: 0".into()], b"")
        } else {
            store(
                store_requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                head,
            )
        }
    });
    let client = Client::new(ClientConfig {
        base_url: format!("{base}/v1"),
        token: Token::new(format!("vm0_test_{}", "c".repeat(64))),
        retry: quick_policy(),
        io_timeout: Duration::from_secs(5),
        url_setting: "VM0_API_URL",
    })
    .unwrap();
    (client, heads)
}

/// The first store answer: the whole length announced, only `sent` bytes sent.
fn cut_answer(body: &[u8], sent: usize) -> Vec<u8> {
    http_response(
        "200 OK",
        &[format!("Content-Length: {}", body.len())],
        &body[..sent],
    )
}

#[test]
fn a_store_that_ignores_range_is_read_past_the_resume_point() {
    let body = noise(200_000, 7);
    let served = body.clone();
    let (client, heads) = fake_api_and_store(move |n, _| match n {
        0 => cut_answer(&served, 50_000),
        _ => http_response(
            "200 OK",
            &[format!("Content-Length: {}", served.len())],
            &served,
        ),
    });
    let mut download = client.download(Kind::Volume, &"x".into(), None).unwrap();
    let mut data = Vec::new();
    download.read_to_end(&mut data).unwrap();
    assert_eq!(sha256(&data), sha256(&body));
    assert_eq!(download.resumes(), 1);
    let heads = heads.lock().unwrap();
    let store: Vec<&String> = heads
        .iter()
        .filter(|h| h.starts_with("GET /store/"))
        .collect();
    assert_eq!(store.len(), 2, "{heads:?}");
    assert!(
        store[1].to_ascii_lowercase().contains("range: bytes="),
        "{}",
        store[1]
    );
    for head in &store {
        assert!(
            !head.to_ascii_lowercase().contains("authorization"),
            "{head}"
        );
    }
    let api = heads.iter().find(|h| h.starts_with("GET /v1/")).unwrap();
    assert!(
        api.to_ascii_lowercase()
            .contains("authorization: bearer vm0_test_"),
        "{api}"
    );
    assert!(
        api.contains(concat!("vm0fs/", env!("CARGO_PKG_VERSION"))),
        "{api}"
    );
}

#[test]
fn a_resumed_answer_with_another_range_is_a_protocol_error() {
    let body = noise(100_000, 8);
    let served = body.clone();
    let (client, _) = fake_api_and_store(move |n, _| match n {
        0 => cut_answer(&served, 30_000),
        // Claims to start at 0 whatever was asked.
        _ => http_response(
            "206 Partial Content",
            &[
                format!("Content-Length: {}", served.len()),
                format!(
                    "Content-Range: bytes 0-{}/{}",
                    served.len() - 1,
                    served.len()
                ),
            ],
            &served,
        ),
    });
    let download = client.download(Kind::Volume, &"x".into(), None).unwrap();
    let err = read_all(download).unwrap_err();
    let api = api_error(&err);
    assert!(matches!(api, ApiError::Protocol { .. }), "{api:?}");
    assert!(api.to_string().contains("Content-Range"), "{api}");
}

// ---------------------------------------------------------------------------------------
// Hostile API servers: rows that do not decode, bodies without end, redirects elsewhere

/// A client of the fake server at `base` (its API under `/v1`).
fn fake_client(base: &str) -> Client {
    Client::new(ClientConfig {
        base_url: format!("{base}/v1"),
        token: Token::new(format!("vm0_test_{}", "c".repeat(64))),
        retry: quick_policy(),
        io_timeout: Duration::from_secs(5),
        url_setting: "VM0_API_URL",
    })
    .unwrap()
}

fn json_answer(body: &str) -> Vec<u8> {
    http_response(
        "200 OK",
        &[
            "Content-Type: application/json".into(),
            format!("Content-Length: {}", body.len()),
        ],
        body.as_bytes(),
    )
}

/// A server whose every answer is the JSON page `body`.
fn page_server(body: String) -> Client {
    let (base, _) = fake_server(move |_, _| json_answer(&body));
    fake_client(&base)
}

const VA: &str = "aaaa000000000000000000000000000000000000000000000000000000000000";
const VB: &str = "bbbb000000000000000000000000000000000000000000000000000000000000";

/// The rows that broke whole listings (issue 19.7), in the form of each list endpoint,
/// between two good rows of both shapes. `{good}` is replaced by a good row's id.
#[test]
fn rows_that_do_not_decode_are_left_out_and_the_rest_is_listed() {
    // Storages, both shapes.
    for (size, count) in [("size", "file_count"), ("size", "fileCount")] {
        let body = json!({"data": [
            {"id": "s-good-1", "name": "good-one", size: 1, count: 1},
            {"id": 5, "name": "numeric-id"},
            {"id": "s-bad-2", "name": 5},
            {"id": "s-bad-3", "name": "negative", size: -1},
            {"id": "s-bad-4", "name": "lone", count: "many"},
            "not an object",
            {"id": "s-good-2", "name": "good-two"},
        ], "pagination": {"has_more": false}})
        .to_string();
        // A lone surrogate cannot be written by serde_json: spliced in as raw text.
        let body = body.replace(
            r#"{"id":"s-good-2""#,
            r#"{"id":"s-bad-5","name":"\ud800x"},{"id":"s-good-2""#,
        );
        let listed = page_server(body).list_storages(Kind::Volume).unwrap();
        let names: Vec<&str> = listed.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["good-one", "good-two"], "{count}");
    }

    // Versions, both shapes.
    for (count, created) in [("file_count", "created_at"), ("fileCount", "createdAt")] {
        let body = json!({"data": [
            {"id": VA, "size": 3, count: 1, created: "2026-01-20T10:00:00.000Z"},
            {"id": 12345, "size": 3},
            {"id": VB, "size": -1},
            {"id": VB, count: 1.5},
            {"id": VB, "message": ["not", "a", "string"]},
            {"id": VB, "size": 3, count: 1, created: "2026-01-19T10:00:00.000Z"},
        ], "pagination": {"has_more": false}})
        .to_string();
        let listed = page_server(body)
            .list_versions(Kind::Artifact, &"s".into())
            .unwrap();
        let ids: Vec<&str> = listed.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids, [VA, VB], "{count}");
    }

    // Agents, runs and a page of logs.
    let body = json!({"data": [
        {"id": "a1", "name": "writer"},
        {"id": 7, "name": "numeric"},
        {"id": "a2", "name": 7},
        {"id": "a3", "name": "reader"},
    ]})
    .to_string();
    let agents = page_server(body).list_agents().unwrap();
    let names: Vec<&str> = agents.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["writer", "reader"]);

    let body = json!({"data": [
        {"id": "r1", "agentId": "a1", "status": "completed", "createdAt": "2026-01-20T10:00:00.000Z"},
        {"id": 99, "status": "running"},
        {"id": "../../etc", "status": "running"},
        {"id": "r2", "agent_id": "a1", "status": "failed", "created_at": "2026-01-19T10:00:00.000Z"},
    ], "pagination": {"hasMore": false}})
    .to_string();
    let runs = page_server(body)
        .list_runs(&vm0fs::api::RunQuery::default())
        .unwrap();
    let ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["r1", "r2"]);

    let body = json!({"data": [
        {"timestamp": "2026-01-20T10:00:00.000Z", "type": "agent", "message": "one"},
        {"timestamp": 5, "type": "agent", "message": "numeric time"},
        {"type": "agent", "message": "no time"},
        {"timestamp": "2026-01-20T10:00:01.000Z", "type": "agent", "message": "two"},
    ], "pagination": {"has_more": false}})
    .to_string();
    let run = vm0fs::api::RunId::parse("r1").unwrap();
    let page = page_server(body)
        .run_logs(&run, &vm0fs::api::LogQuery::default())
        .unwrap();
    let messages: Vec<&str> = page.entries.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages, ["one", "two"]);
}

/// A page that ignores `limit` and sends far more rows than the contract's 100 is read for
/// its first 1000 rows; the others are left out rather than held in memory.
#[test]
fn a_page_with_far_more_rows_than_asked_is_cut_at_the_row_cap() {
    let rows: Vec<String> = (0..50_000)
        .map(|n| format!(r#"{{"id":"s-{n}","name":"storage-{n}"}}"#))
        .collect();
    let body = format!(
        r#"{{"data":[{}],"pagination":{{"has_more":false}}}}"#,
        rows.join(",")
    );
    let listed = page_server(body).list_storages(Kind::Volume).unwrap();
    assert_eq!(listed.len(), 1000);
    assert_eq!(listed[0].name.as_str(), "storage-0");
    assert_eq!(listed[999].name.as_str(), "storage-999");
}

/// A server that answers every request with `200 OK` and a JSON listing that never ends
/// (up to `total` bytes, written as the client reads them, never held in memory); with
/// `announce`, its length is announced in `Content-Length`. The bytes it managed to send
/// are counted in the returned counter.
fn endless_listing_server(
    total: u64,
    announce: bool,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let sent = std::sync::Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                line.clear();
            }
            let mut head =
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/json\r\n"
                    .to_string();
            if announce {
                head.push_str(&format!("Content-Length: {total}\r\n"));
            }
            head.push_str("\r\n{\"data\":[");
            if stream.write_all(head.as_bytes()).is_err() {
                continue;
            }
            let row = br#"{"id":"3f1c9a2e-6b1d-4c1e-9a55-0d2f7b8e4a10","name":"input-data"},"#;
            let chunk: Vec<u8> = row.iter().copied().cycle().take(row.len() * 1024).collect();
            let mut written = 0u64;
            while written < total {
                if stream.write_all(&chunk).is_err() {
                    break;
                }
                written += chunk.len() as u64;
                counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
        }
    });
    (base, sent)
}

#[test]
fn a_listing_body_without_end_is_refused_at_the_cap_not_read_whole() {
    for announce in [false, true] {
        let (base, sent) = endless_listing_server(1 << 30, announce);
        let err = fake_client(&base).list_storages(Kind::Volume).unwrap_err();
        assert!(
            matches!(err, ApiError::BodyTooLarge { limit, .. } if limit == 16 << 20),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "the VM0 API sent more than 16.0 MiB for the list of volumes, far more than any \
             answer of the API holds (a listing page has at most 100 rows); stopped reading it; \
             check that VM0_API_URL points at the VM0 API, and if it does, report this server bug"
        );
        // No more of the body read than the cap and what the sockets buffer. The counter
        // adds up every request: a retry of the answer would take it past 32 MiB.
        let sent = sent.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            sent < 32 << 20,
            "the server got {sent} bytes out (announce: {announce})"
        );
    }
}

/// The API's download redirect to something else than an http(s) URL without credentials
/// is refused at once, with a message naming the scheme and host (never the query), and
/// nothing is requested from the target.
#[test]
fn download_redirects_elsewhere_than_http_s_are_refused_at_once() {
    // Where the credentials would go: nothing may connect to it.
    let store = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    store.set_nonblocking(true).unwrap();
    let store_port = store.local_addr().unwrap().port();
    let cases = [
        ("file:///etc/passwd", "a file: URL", "only http and https"),
        (
            "ftp://127.0.0.1:2121/archive.tar.gz?X-Amz-Signature=secret",
            "ftp://127.0.0.1:2121",
            "only http and https",
        ),
        (
            &*format!("http://user:pass@127.0.0.1:{store_port}/store/obj?X-Amz-Signature=secret"),
            &*format!("http://127.0.0.1:{store_port}"),
            "user name or password",
        ),
    ];
    for (location, target, reason) in cases {
        let location = location.to_string();
        let (base, heads) = fake_server(move |_, _| {
            http_response(
                "302 Found",
                &[format!("Location: {location}"), "Content-Length: 0".into()],
                b"",
            )
        });
        let err = fake_client(&base)
            .download(Kind::Volume, &"x".into(), None)
            .unwrap_err();
        assert!(matches!(err, ApiError::Redirect { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "the VM0 API redirected the download of the current version of volume x to \
                 {target}, which vm0fs refuses to follow: "
            )),
            "{text}"
        );
        assert!(
            text.contains(reason) && text.contains("VM0_API_URL"),
            "{text}"
        );
        for secret in ["secret", "user:", ":pass", "passwd", "archive.tar.gz"] {
            assert!(!format!("{text} {err:?}").contains(secret), "{text}");
        }
        // One request, to the API: no retry, nothing sent to the target.
        assert_eq!(
            heads.lock().unwrap().len(),
            1,
            "{:?}",
            heads.lock().unwrap()
        );
        assert!(store.accept().is_err(), "a connection reached {target}");
    }
}

/// Pages of 1000 rows each (ten times the contract's largest) that never end: the listing
/// stops at a million rows, as many as 10,000 pages of the contract hold, instead of
/// holding ten times that.
#[test]
fn a_listing_of_oversized_pages_stops_at_a_million_rows() {
    let (base, heads) = fake_server(move |n, _| {
        let rows: Vec<String> = (0..1000)
            .map(|i| format!(r#"{{"id":"s-{n}-{i}","name":"v"}}"#))
            .collect();
        json_answer(&format!(
            r#"{{"data":[{}],"pagination":{{"has_more":true,"next_cursor":"c{n}"}}}}"#,
            rows.join(",")
        ))
    });
    let err = fake_client(&base).list_storages(Kind::Volume).unwrap_err();
    assert!(matches!(err, ApiError::Protocol { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("the listing did not end after 1000000 rows"),
        "{err}"
    );
    assert_eq!(heads.lock().unwrap().len(), 1001);
}
