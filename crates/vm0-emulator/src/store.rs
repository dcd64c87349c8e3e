//! The object store: the second listener, where the API's 302 points. It serves version
//! archives under presigned, expiring URLs (SigV4-style query parameters), honours
//! `Range: bytes=N-`, refuses a second auth mechanism, and answers errors in S3's XML.
//!
//! It runs on `http`'s server, which gives every connection a thread of its own: a slow or
//! held download never holds up another request. Answers are written on the socket as they
//! go, so a fault can send full headers, part of the body, and then drop the connection
//! (`cut_after_bytes`), and bodies stream from the archive file.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::faults::{Corrupt, FaultRule};
use crate::http::{self, Flow, Method, Request};
use crate::model::Kind;
use crate::Shared;

/// Idle keep-alive connections are closed after this long, so their threads end.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body read (a GET has none; one sent anyway is read and ignored).
pub(crate) const MAX_BODY: u64 = 1024 * 1024;

/// The presigned URL of a version's archive, valid for the configured TTL from now.
pub fn presign(shared: &Shared, kind: Kind, storage_id: &str, version_id: &str) -> String {
    let now = now_secs();
    let ttl = shared.runtime.read().url_ttl_secs;
    let path = format!(
        "/vm0-storage/{}/{storage_id}/{version_id}/archive.tar.gz",
        kind.as_str()
    );
    let date = amz_date(now);
    let signature = sign(&shared.secret, &path, &date, ttl);
    format!(
        "{base}{path}?X-Amz-Algorithm=AWS4-HMAC-SHA256\
         &X-Amz-Credential=VM0EMULATOR%2F{day}%2Fus-east-1%2Fs3%2Faws4_request\
         &X-Amz-Date={date}&X-Amz-Expires={ttl}&X-Amz-SignedHeaders=host\
         &X-Amz-Signature={signature}",
        base = shared.store_url,
        day = &date[..8],
    )
}

fn sign(secret: &[u8], path: &str, date: &str, expires: u64) -> String {
    hex::encode(mac(secret, path, date, expires).finalize().into_bytes())
}

fn mac(secret: &[u8], path: &str, date: &str, expires: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(format!("{path}\n{date}\n{expires}").as_bytes());
    mac
}

fn now_secs() -> i64 {
    crate::model::now_ms() / 1000
}

/// `YYYYMMDDTHHMMSSZ`, SigV4's date format.
fn amz_date(secs: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    let month = time::Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(
        i32::try_from(num(0..4)?).ok()?,
        month,
        u8::try_from(num(6..8)?).ok()?,
    )
    .ok()?;
    let time = time::Time::from_hms(
        u8::try_from(num(9..11)?).ok()?,
        u8::try_from(num(11..13)?).ok()?,
        u8::try_from(num(13..15)?).ok()?,
    )
    .ok()?;
    Some(date.with_time(time).assume_utc().unix_timestamp())
}

/// The store's side of [`http::Server`].
pub(crate) struct StoreHandler(pub Arc<Shared>);

impl http::Handler for StoreHandler {
    fn handle(&self, stream: &mut TcpStream, request: Request) -> io::Result<Flow> {
        handle(stream, &request, &self.0)
    }

    fn refusal(&self, status: u16, message: &str) -> Vec<u8> {
        let code = match status {
            503 => "SlowDown",
            413 => "EntityTooLarge",
            501 => "NotImplemented",
            _ => "BadRequest",
        };
        let mut headers = vec![("Server", "VM0EmulatorStore")];
        if status == 503 {
            headers.push(("Retry-After", "1"));
        }
        http::answer(
            status,
            &[headers.as_slice(), &[("Content-Type", "application/xml")]].concat(),
            xml_error_body(code, message, &[]).as_bytes(),
            false,
            false,
        )
    }
}

/// What a request asks for: `/vm0-storage/<kind>/<storage id>/<version id>/archive.tar.gz`.
struct Target {
    kind: Kind,
    storage_id: String,
    version_id: String,
}

fn parse_target(path: &str) -> Option<Target> {
    let rest = path.strip_prefix("/vm0-storage/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [kind, sid, vid, "archive.tar.gz"] => Some(Target {
            kind: Kind::parse(kind)?,
            storage_id: sid.to_string(),
            version_id: vid.to_string(),
        }),
        _ => None,
    }
}

fn handle(stream: &mut TcpStream, request: &Request, shared: &Shared) -> io::Result<Flow> {
    let (path, query) = request.path_and_query();
    let target = parse_target(path);
    shared.counters.hit("store.get");
    if let Some(t) = &target {
        shared.counters.hit(&format!("store.get:{}", t.version_id));
    }
    let head_only = request.method == Method::Head;
    if request.method != Method::Get && !head_only {
        write_xml_error(
            stream,
            405,
            "MethodNotAllowed",
            "The specified method is not allowed against this resource.",
            &[],
            head_only,
        )?;
        return Ok(Flow::KeepAlive);
    }

    let fault = shared
        .faults
        .take("store.get", target.as_ref().map(|t| t.version_id.as_str()));
    if let Some(delay) = fault.as_ref().and_then(|f| f.delay_ms) {
        std::thread::sleep(Duration::from_millis(delay));
    }
    if let Some(rule) = fault.as_ref().filter(|f| f.status.is_some()) {
        write_fault(stream, rule, head_only)?;
        return Ok(Flow::KeepAlive);
    }

    // S3 refuses a presigned URL that also carries an Authorization header; the contract
    // relies on this to catch a client leaking its Bearer token to the store.
    if request.header("authorization").is_some() {
        write_xml_error(
            stream,
            400,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, \
             Signature query string parameter or the Authorization header should be specified",
            &[],
            head_only,
        )?;
        return Ok(Flow::KeepAlive);
    }

    let query: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let param = |name: &str| {
        query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let date = param("X-Amz-Date").unwrap_or("");
    let expires = param("X-Amz-Expires").and_then(|s| s.parse::<u64>().ok());
    let signature = param("X-Amz-Signature").and_then(|s| hex::decode(s).ok());
    let signed = match (expires, signature) {
        (Some(expires), Some(signature)) => mac(&shared.secret, path, date, expires)
            .verify_slice(&signature)
            .is_ok(),
        _ => false,
    };
    if !signed || param("X-Amz-Algorithm") != Some("AWS4-HMAC-SHA256") {
        write_xml_error(
            stream,
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. \
             Check your key and signing method.",
            &[],
            head_only,
        )?;
        return Ok(Flow::KeepAlive);
    }
    let expires = expires.unwrap_or(0);
    let signed_at = parse_amz_date(date).unwrap_or(0);
    let expiry = signed_at.saturating_add(i64::try_from(expires).unwrap_or(i64::MAX));
    let now = now_secs();
    // `>=` rather than `>`: with a TTL of 0 a URL must be expired at once, even within the
    // second it was signed in.
    if now >= expiry {
        let extra = [
            ("Expires", amz_iso(expiry)),
            ("ServerTime", amz_iso(now)),
            ("X-Amz-Expires", expires.to_string()),
        ];
        write_xml_error(
            stream,
            403,
            "AccessDenied",
            "Request has expired",
            &extra,
            head_only,
        )?;
        return Ok(Flow::KeepAlive);
    }

    let archive: Option<PathBuf> = target.as_ref().and_then(|t| {
        shared
            .data
            .read()
            .version(t.kind, &t.storage_id, &t.version_id)
            .and_then(|v| v.archive.clone())
    });
    let Some(archive) = archive else {
        write_xml_error(
            stream,
            404,
            "NoSuchKey",
            "The specified key does not exist.",
            &[],
            head_only,
        )?;
        return Ok(Flow::KeepAlive);
    };
    let version_id = target.as_ref().map_or("", |t| t.version_id.as_str());
    serve_archive(
        stream,
        shared,
        request,
        &archive,
        version_id,
        fault.as_ref(),
        head_only,
    )
}

/// S3 writes times in its XML errors as ISO-8601 without milliseconds.
fn amz_iso(secs: i64) -> String {
    let ms = crate::model::format_timestamp(secs * 1000);
    format!("{}Z", &ms[..19])
}

/// The bytes the store serves for an archive: the file itself or a damaged stand-in.
enum Body {
    File { path: PathBuf, len: u64 },
    Garbage { len: u64, seed: u64 },
    Memory(Vec<u8>),
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::File { len, .. } | Body::Garbage { len, .. } => *len,
            Body::Memory(bytes) => bytes.len() as u64,
        }
    }

    /// Copies `len` bytes from `start` to `out`; returns how many were copied.
    fn copy_to(&self, start: u64, len: u64, out: &mut TcpStream) -> io::Result<u64> {
        match self {
            Body::File { path, .. } => {
                let mut file = std::fs::File::open(path)?;
                file.seek(SeekFrom::Start(start))?;
                // A concrete `Take<File>` to a `TcpStream`: `io::copy` then uses sendfile on
                // Linux, so 1 GiB archives stream without passing through user space.
                io::copy(&mut file.take(len), out)
            }
            Body::Garbage { seed, .. } => {
                let mut garbage = Garbage {
                    state: *seed,
                    pos: 0,
                };
                // Same bytes for the same offset whatever the range: skip to `start`.
                io::copy(&mut (&mut garbage).take(start), &mut io::sink())?;
                io::copy(&mut garbage.take(len), out)
            }
            Body::Memory(bytes) => {
                let start = usize::try_from(start)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                io::copy(&mut (&bytes[start..]).take(len), out)
            }
        }
    }
}

/// Deterministic noise that never starts with gzip's magic byte (0x1f), so it is never
/// mistaken for a gzip stream.
struct Garbage {
    state: u64,
    pos: u64,
}

impl Read for Garbage {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        for b in buf.iter_mut() {
            // xorshift64*: cheap, and good enough to look like noise.
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            *b = (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
            if self.pos == 0 && *b == 0x1f {
                *b = b'G';
            }
            self.pos += 1;
        }
        Ok(buf.len())
    }
}

/// A valid gzip stream of text, which no tar reader accepts (its first "header" block has a
/// wrong checksum).
fn not_a_tar() -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    for i in 0..1024 {
        let _ = writeln!(
            gz,
            "line {i}: this gzip stream holds text, not a tar archive"
        );
    }
    gz.finish().expect("writing to a Vec cannot fail")
}

/// `Range: bytes=N-`, `bytes=N-M` or `bytes=-N`: `Ok(None)` without a usable range (it is
/// then ignored, as RFC 9110 allows), `Err(())` when it starts past the end (416).
fn parse_range(header: Option<&str>, total: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // Multipart ranges: S3 ignores them and sends the whole object.
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        let Ok(suffix) = last.parse::<u64>() else {
            return Ok(None);
        };
        if suffix == 0 || total == 0 {
            return Err(());
        }
        let start = total.saturating_sub(suffix);
        return Ok(Some((start, total - 1)));
    }
    let Ok(start) = first.parse::<u64>() else {
        return Ok(None);
    };
    let end = if last.is_empty() {
        total.saturating_sub(1)
    } else {
        match last.parse::<u64>() {
            Ok(end) if end >= start => end.min(total.saturating_sub(1)),
            _ => return Ok(None),
        }
    };
    if start >= total {
        return Err(());
    }
    Ok(Some((start, end)))
}

fn serve_archive(
    stream: &mut TcpStream,
    shared: &Shared,
    request: &Request,
    archive: &std::path::Path,
    version_id: &str,
    fault: Option<&FaultRule>,
    head_only: bool,
) -> io::Result<Flow> {
    let file_len = std::fs::metadata(archive)?.len();
    let body = match fault.and_then(|f| f.corrupt) {
        None => Body::File {
            path: archive.to_path_buf(),
            len: file_len,
        },
        Some(Corrupt::Truncate) => Body::File {
            path: archive.to_path_buf(),
            len: file_len / 2,
        },
        Some(Corrupt::Garbage) => Body::Garbage {
            len: file_len,
            // Seeded by the version so a resumed (ranged) read sees the same noise.
            seed: u64::from_str_radix(&version_id[..version_id.len().min(16)], 16).unwrap_or(7) | 1,
        },
        Some(Corrupt::Notar) => Body::Memory(not_a_tar()),
    };
    let total = body.len();
    let etag = match fault.and_then(|f| f.etag.as_deref()) {
        Some(etag) => etag.to_string(),
        None => format!("\"{}\"", &version_id[..version_id.len().min(32)]),
    };
    let (status, start, len, range_header) = match parse_range(request.header("range"), total) {
        Ok(None) => (200, 0, total, None),
        Ok(Some((start, end))) => (
            206,
            start,
            end - start + 1,
            Some(format!("bytes {start}-{end}/{total}")),
        ),
        Err(()) => {
            let extra = [(
                "RangeRequested",
                request.header("range").unwrap_or("").to_string(),
            )];
            write_xml_error(
                stream,
                416,
                "InvalidRange",
                "The requested range is not satisfiable",
                &extra,
                head_only,
            )?;
            return Ok(Flow::KeepAlive);
        }
    };
    let mut head = http::status_line(status);
    head.push_str(&common_headers());
    head.push_str("Content-Type: application/gzip\r\n");
    head.push_str("Accept-Ranges: bytes\r\n");
    head.push_str(&format!("ETag: {etag}\r\n"));
    head.push_str(&format!("Content-Length: {len}\r\n"));
    if let Some(range) = range_header {
        head.push_str(&format!("Content-Range: {range}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if head_only {
        return Ok(Flow::KeepAlive);
    }
    let cut = fault.and_then(|f| f.cut_after_bytes);
    let send = cut.map_or(len, |c| c.min(len));
    let sent = match fault.and_then(|f| f.hold_after_bytes) {
        Some(hold) => {
            let first = body.copy_to(start, hold.min(send), stream)?;
            stream.flush()?;
            if !hold_until_released(stream, shared, version_id) {
                return Ok(Flow::Close);
            }
            first + body.copy_to(start + first, send - first, stream)?
        }
        None => body.copy_to(start, send, stream)?,
    };
    shared.counters.add("store.bytes", sent);
    shared
        .counters
        .add(&format!("store.bytes:{version_id}"), sent);
    if cut.is_some() || sent < len {
        // A cut: the client was promised `len` bytes and sees the connection end early.
        stream.flush()?;
        return Ok(Flow::Close);
    }
    Ok(Flow::KeepAlive)
}

/// Send nothing until the test releases the held downloads (`POST /_emulator/release`);
/// false if the client closed the connection meanwhile (counted as `store.hung_up`).
fn hold_until_released(stream: &mut TcpStream, shared: &Shared, version_id: &str) -> bool {
    let seen = shared.holds.current();
    shared.counters.hit("store.held");
    shared.counters.hit(&format!("store.held:{version_id}"));
    loop {
        if shared.holds.wait_past(seen, Duration::from_millis(50)) {
            return true;
        }
        // Has the client gone? A peek that finds the end of the stream (or an error) says
        // so; nothing to read yet is the normal case.
        let mut byte = [0u8; 1];
        let gone = stream.set_nonblocking(true).is_err()
            || match stream.peek(&mut byte) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != io::ErrorKind::WouldBlock,
            };
        let _ = stream.set_nonblocking(false);
        if gone {
            shared.counters.hit("store.hung_up");
            shared.counters.hit(&format!("store.hung_up:{version_id}"));
            return false;
        }
    }
}

fn common_headers() -> String {
    let id = hex::encode(rand::random::<[u8; 8]>()).to_uppercase();
    format!(
        "Date: {}\r\nServer: VM0EmulatorStore\r\nx-amz-request-id: {id}\r\n",
        http::http_date(now_secs())
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// S3's XML error body.
fn xml_error_body(code: &str, message: &str, extra: &[(&str, String)]) -> String {
    let mut body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{}</Message>",
        xml_escape(message)
    );
    for (name, value) in extra {
        body.push_str(&format!("<{name}>{}</{name}>", xml_escape(value)));
    }
    body.push_str(&format!(
        "<RequestId>{}</RequestId></Error>",
        hex::encode(rand::random::<[u8; 8]>()).to_uppercase()
    ));
    body
}

fn write_xml_error(
    stream: &mut impl Write,
    status: u16,
    code: &str,
    message: &str,
    extra: &[(&str, String)],
    head_only: bool,
) -> io::Result<()> {
    let body = xml_error_body(code, message, extra);
    write_simple(stream, status, "application/xml", &body, &[], head_only)
}

fn write_simple(
    stream: &mut impl Write,
    status: u16,
    content_type: &str,
    body: &str,
    headers: &[(String, String)],
    head_only: bool,
) -> io::Result<()> {
    let mut out = http::status_line(status);
    out.push_str(&common_headers());
    out.push_str(&format!("Content-Type: {content_type}\r\n"));
    out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

/// A fault rule's status on the store: S3's XML error for it, or the rule's raw body.
fn write_fault(stream: &mut impl Write, rule: &FaultRule, head_only: bool) -> io::Result<()> {
    let status = rule.status.unwrap_or(500);
    let mut headers = Vec::new();
    if status == 429 || status == 503 || rule.retry_after.is_some() {
        headers.push((
            "Retry-After".to_string(),
            rule.retry_after.unwrap_or(1).to_string(),
        ));
    }
    if let Some(body) = &rule.body {
        let content_type = rule.content_type.as_deref().unwrap_or("text/html");
        return write_simple(stream, status, content_type, body, &headers, head_only);
    }
    let (code, message) = match status {
        400 => ("InvalidRequest", "Invalid request"),
        403 => ("AccessDenied", "Access Denied"),
        404 => ("NoSuchKey", "The specified key does not exist."),
        429 | 503 => ("SlowDown", "Please reduce your request rate."),
        _ => (
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    write_simple(
        stream,
        status,
        "application/xml",
        &body,
        &headers,
        head_only,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    type RangeCase<'a> = (Option<&'a str>, u64, Result<Option<(u64, u64)>, ()>);

    #[test]
    fn ranges() {
        let cases: &[RangeCase<'_>] = &[
            (None, 10, Ok(None)),
            (Some("bytes=0-"), 10, Ok(Some((0, 9)))),
            (Some("bytes=4-"), 10, Ok(Some((4, 9)))),
            (Some("bytes=4-5"), 10, Ok(Some((4, 5)))),
            (Some("bytes=4-50"), 10, Ok(Some((4, 9)))),
            (Some("bytes=-3"), 10, Ok(Some((7, 9)))),
            (Some("bytes=10-"), 10, Err(())),
            (Some("bytes=0-"), 0, Err(())),
            (Some("bytes=5-4"), 10, Ok(None)),
            (Some("items=0-"), 10, Ok(None)),
        ];
        for (header, total, want) in cases {
            assert_eq!(&parse_range(*header, *total), want, "{header:?} of {total}");
        }
    }

    #[test]
    fn amz_dates_round_trip() {
        let secs = 1_768_903_200;
        assert_eq!(amz_date(secs), "20260120T100000Z");
        assert_eq!(parse_amz_date("20260120T100000Z"), Some(secs));
        assert_eq!(parse_amz_date("2026-01-20"), None);
    }

    #[test]
    fn garbage_is_not_gzip() {
        let mut first = [0u8; 2];
        for seed in 1..200 {
            Garbage {
                state: seed,
                pos: 0,
            }
            .read_exact(&mut first)
            .unwrap();
            assert_ne!(first[0], 0x1f);
        }
    }
}
