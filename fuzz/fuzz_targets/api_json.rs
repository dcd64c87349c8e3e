//! Fuzz the API client's decoding of answers: every public call of `vm0fs::api::Client`
//! must return (never panic, never loop on a repeated cursor) whatever the server sends,
//! and no error may carry the token.
//!
//! The wire types and their decoding are private to `vm0fs::api` (`api::wire`), so the
//! input is served over loopback HTTP by a server started once: the first byte chooses the
//! status, the second the headers, the rest is the body. That costs a few HTTP exchanges per
//! input (about 100 inputs/s); a pure `decode(status, headers, body)` exported from
//! `vm0fs::api` would let it run at in-memory speed.

#![no_main]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vm0fs::api::{ApiError, Client, ClientConfig, Kind, RetryPolicy, Token};

const TOKEN: &str = "vm0_test_fuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzz";
const STATUSES: [u16; 12] = [200, 200, 200, 204, 302, 400, 401, 403, 404, 429, 500, 503];

struct Server {
    url: String,
    /// (status, extra headers, body) answered to every request.
    answer: Mutex<(u16, String, Vec<u8>)>,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<&'static Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server: &'static Server = Box::leak(Box::new(Server {
            url: format!("http://{}", listener.local_addr().unwrap()),
            answer: Mutex::new((200, String::new(), Vec::new())),
        }));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let (status, headers, body) = server.answer.lock().unwrap().clone();
                let mut out = conn;
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
                    body.len()
                );
                let _ = out.write_all(head.as_bytes());
                let _ = out.write_all(&body);
            }
        });
        server
    })
}

fn check(e: &ApiError) {
    assert!(!e.to_string().contains(TOKEN), "token in {e}");
    assert!(!format!("{e:?}").contains(TOKEN));
}

fuzz_target!(|data: &[u8]| {
    let [status, h, body @ ..] = data else { return };
    let s = server();
    let status = STATUSES[usize::from(*status) % STATUSES.len()];
    let headers = match h % 6 {
        0 => String::new(),
        1 => "Retry-After: 0\r\n".to_string(),
        2 => format!("Location: {}/store/a.tar.gz?sig=1\r\n", s.url),
        3 => "Location: ::\r\n".to_string(),
        4 => "X-Request-Id: req_1\r\nContent-Type: application/json\r\n".to_string(),
        _ => "Content-Range: bytes 0-0/1\r\nETag: \"e\"\r\n".to_string(),
    };
    *s.answer.lock().unwrap() = (status, headers, body.to_vec());
    let client = Client::new(ClientConfig {
        base_url: format!("{}/v1", s.url),
        token: Token::new(TOKEN),
        retry: RetryPolicy {
            max_attempts: 1,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            max_elapsed: Duration::from_secs(1),
        },
        io_timeout: Duration::from_secs(10),
    })
    .unwrap();
    if let Err(e) = client.list_storages(Kind::Volume) {
        check(&e);
    }
    match client.list_versions(Kind::Artifact, "s1") {
        Ok(list) => assert!(list.windows(2).all(|w| w[0].created_at >= w[1].created_at)),
        Err(e) => check(&e),
    }
    if let Err(e) = client.get_storage(Kind::Volume, "s1") {
        check(&e);
    }
    match client.download(Kind::Volume, "s1", Some("9b2d0000")) {
        Ok(mut d) => {
            let mut sink = Vec::new();
            if let Err(e) = d.read_to_end(&mut sink) {
                assert!(!e.to_string().contains(TOKEN));
            }
        }
        Err(e) => check(&e),
    }
});
