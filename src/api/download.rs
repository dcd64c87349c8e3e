//! Streaming a version's archive from the object store, resuming when the connection breaks.
//!
//! The API answers `GET …/download` with a 302 to a presigned object-store URL. That URL is
//! fetched *without* the token (the store answers 400 to a request carrying two auth
//! mechanisms), it expires (403: ask the API for a fresh one), and the store honours
//! `Range: bytes=N-` (206). [`Download`] hides all of this behind `Read`: when a read fails
//! mid-way it re-requests the rest of the archive from the byte the caller has reached, checks
//! that the store sent exactly that range of the same object (its `ETag`), and carries on. The
//! archive is never buffered: callers unpack it as it arrives.
//!
//! Resumes are budgeted by lack of progress, not by count: a resume that delivers new bytes
//! ends the failure streak, and the download gives up only when the retry policy's time
//! budget passes without a byte. A download can also start where an earlier one stopped
//! ([`ResumePoint`]), so that a caller that kept the bytes it received need not fetch them
//! again.

use std::fmt;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use reqwest::blocking::Response;
use reqwest::header::{self, HeaderMap};
use reqwest::Url;

use super::answer::{request_id, retry_after, Failure, Resource};
use super::client::error_chain;
use super::error::seconds;
use super::retry::delay_for;
use super::{ApiError, ArchiveRef, Client, Server};

/// Fresh URLs asked of the API, per (re)connection, when the store refuses one with 403.
const MAX_URL_REFRESHES: u32 = 3;
/// At most this much of an object-store error body is read, for the message.
const STORE_ERROR_BODY_LIMIT: u64 = 8 * 1024;

/// Where a download stopped: how much of the archive is held, and which object it came
/// from. [`Client::download_archive`] from it yields the bytes after `offset`, or fails with
/// [`ApiError::Changed`] when the store's object is no longer that one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    /// Bytes of the archive already held: the next download starts with the byte at this
    /// offset.
    pub offset: u64,
    /// The object's `ETag` as the store sent it: the validator of the bytes held.
    pub etag: String,
    /// The archive's whole length, when the store announced it.
    pub total: Option<u64>,
}

/// A version's archive being downloaded: the raw `tar.gz` bytes, streamed.
///
/// A failed `read` returns an `io::Error` whose inner error is the [`ApiError`]
/// (`err.get_ref().and_then(|e| e.downcast_ref::<ApiError>())`); later reads fail again.
pub struct Download {
    state: Resumer,
    /// Length of the whole archive (not only of the part this download yields), when the
    /// store announced it.
    pub compressed_size: Option<u64>,
}

impl Download {
    pub(crate) fn open(
        client: Client,
        archive: &ArchiveRef,
        from: Option<&ResumePoint>,
    ) -> Result<Download, ApiError> {
        Download::open_range(client, archive, from, None)
    }

    /// [`Download::open`], asking the store for the bytes before `end` only (a range
    /// request `bytes=offset-(end-1)`): what a read of part of a version needs.
    pub(crate) fn open_range(
        client: Client,
        archive: &ArchiveRef,
        from: Option<&ResumePoint>,
        end: Option<u64>,
    ) -> Result<Download, ApiError> {
        let start = from.map_or(0, |p| p.offset);
        if let Some(end) = end.filter(|end| *end <= start) {
            return Err(ApiError::Protocol {
                resource: Resource::archive(archive).what,
                detail: format!("an empty range of the archive, bytes {start}-{end}"),
            });
        }
        let mut state = Resumer {
            resource: Resource::archive(archive),
            client,
            archive: archive.clone(),
            url: None,
            body: None,
            start,
            delivered: start,
            total: from.and_then(|p| p.total),
            etag: from.map(|p| p.etag.clone()),
            ended: false,
            end,
            resumes: 0,
            last_progress: Instant::now(),
            streak: None,
            failed: None,
        };
        loop {
            match state.open_body() {
                Ok(Stream::Body(body)) => {
                    state.body = Some(body);
                    break;
                }
                // Resumed at the very end: nothing is left to read.
                Ok(Stream::End) => {
                    state.ended = true;
                    break;
                }
                Err(OpenError::Fatal(err)) => return Err(err),
                Err(OpenError::Retry(err)) => state.wait_before_resuming(err)?,
            }
        }
        Ok(Download {
            compressed_size: state.total,
            state,
        })
    }

    /// Bytes this download handed to the caller so far (after its starting offset).
    pub fn bytes_read(&self) -> u64 {
        self.state.delivered - self.state.start
    }

    /// The offset in the archive of the next byte `read` yields.
    pub fn position(&self) -> u64 {
        self.state.delivered
    }

    /// How many times the download was resumed after a broken connection.
    pub fn resumes(&self) -> u32 {
        self.state.resumes
    }

    /// The archive's `ETag`, when the store sent one.
    pub fn etag(&self) -> Option<&str> {
        self.state.etag.as_deref()
    }

    /// Where this download stands, for a later [`Client::download_archive`] to continue
    /// from (after a failed read too: `position` counts only bytes handed to the caller).
    /// `None` when the store sent no `ETag`: without it a continuation cannot be checked,
    /// and must start again from byte 0.
    pub fn resume_point(&self) -> Option<ResumePoint> {
        Some(ResumePoint {
            offset: self.state.delivered,
            etag: self.state.etag.clone()?,
            total: self.state.total,
        })
    }
}

impl Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.state.read(buf)
    }
}

impl fmt::Debug for Download {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the URL: its query string is a (short-lived) credential.
        f.debug_struct("Download")
            .field("resource", &self.state.resource.what)
            .field("compressed_size", &self.compressed_size)
            .field("position", &self.state.delivered)
            .field("resumes", &self.state.resumes)
            .finish()
    }
}

/// The state behind [`Download`].
struct Resumer {
    client: Client,
    archive: ArchiveRef,
    resource: Resource,
    /// The presigned URL in use; `None` when a fresh one must be asked of the API.
    url: Option<Url>,
    /// The response being read; `None` after a failure, until the next (re)connection.
    body: Option<Response>,
    /// The offset this download started at.
    start: u64,
    /// Offset of the next byte for the caller: where a resumed request starts.
    delivered: u64,
    /// Length of the whole archive, when known: checked against every resumed answer.
    total: Option<u64>,
    /// `ETag` of the object: every answer must carry the same one.
    etag: Option<String>,
    /// The store said there is nothing past `delivered`.
    ended: bool,
    /// Where a ranged download stops (exclusive): it asks the store for no byte past it.
    end: Option<u64>,
    resumes: u32,
    /// When the last byte arrived (or the download started).
    last_progress: Instant,
    /// Failures since the last byte was delivered.
    streak: Option<Streak>,
    /// After a final failure, its message: every later read fails with it.
    failed: Option<String>,
}

struct Streak {
    /// The first failure after the last byte: the retry budget runs from here.
    start: Instant,
    failures: u32,
}

/// The final failure of a download that kept breaking off without progress.
#[derive(Debug, thiserror::Error)]
#[error(
    "the download broke off after {bytes} bytes and {resumes} resumes, and no byte arrived for {}",
    seconds(*quiet)
)]
struct BrokeOff {
    bytes: u64,
    resumes: u32,
    quiet: Duration,
    #[source]
    source: io::Error,
}

/// What reopening the archive at the bytes delivered so far gives.
enum Stream {
    Body(Response),
    /// The store says there is nothing after `delivered` (416 at the very end).
    End,
}

enum OpenError {
    Fatal(ApiError),
    /// A broken connection while skipping to the resume point: worth another try.
    Retry(io::Error),
}

enum StoreAnswer {
    Body(Response),
    /// A 4xx other than 429: the URL itself is refused (403 expired, 400, 404, …).
    Refused {
        status: u16,
        message: String,
    },
}

impl Resumer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(message) = &self.failed {
            return Err(io::Error::other(message.clone()));
        }
        match self.read_resuming(buf) {
            Ok(n) => Ok(n),
            Err(err) => {
                self.body = None;
                self.failed = Some(err.to_string());
                Err(io::Error::other(err))
            }
        }
    }

    fn read_resuming(&mut self, buf: &mut [u8]) -> Result<usize, ApiError> {
        // A ranged download yields nothing past its end, even from a store that ignored
        // the range and sends the whole object.
        let buf = match self.end {
            Some(end) => {
                let left = end.saturating_sub(self.delivered);
                let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
                &mut buf[..n]
            }
            None => buf,
        };
        if buf.is_empty() || self.ended {
            return Ok(0);
        }
        loop {
            let failure = match &mut self.body {
                None => match self.open_body() {
                    Ok(Stream::Body(body)) => {
                        self.body = Some(body);
                        continue;
                    }
                    Ok(Stream::End) => {
                        self.ended = true;
                        return Ok(0);
                    }
                    Err(OpenError::Fatal(err)) => return Err(err),
                    Err(OpenError::Retry(err)) => err,
                },
                Some(body) => match body.read(buf) {
                    Ok(0)
                        if self
                            .end
                            .or(self.total)
                            .is_some_and(|end| self.delivered < end) =>
                    {
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the connection closed before the end of the archive",
                        )
                    }
                    Ok(n) => {
                        self.delivered += n as u64;
                        if n > 0 {
                            self.streak = None;
                            self.last_progress = Instant::now();
                        }
                        return Ok(n);
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => err,
                },
            };
            self.body = None;
            self.wait_before_resuming(failure)?;
        }
    }

    /// After a broken connection: sleeps the backoff, or gives up when the retry budget is
    /// spent. A failure streak ends with every byte of progress, so a long download over a
    /// flaky link survives any number of cuts as long as each resume brings new bytes; it
    /// fails once the policy's time budget (and attempts) pass without one.
    fn wait_before_resuming(&mut self, failure: io::Error) -> Result<(), ApiError> {
        let policy = self.client.retry_policy().clone();
        let streak = self.streak.get_or_insert_with(|| Streak {
            start: Instant::now(),
            failures: 0,
        });
        streak.failures += 1;
        let delay = delay_for(
            &policy,
            streak.failures,
            fastrand::f64(),
            None,
            streak.start.elapsed(),
        );
        let Some(delay) = delay else {
            let broke_off = BrokeOff {
                bytes: self.delivered,
                resumes: self.resumes,
                quiet: self.last_progress.elapsed(),
                source: failure,
            };
            return Err(self.transport_error(Box::new(broke_off)));
        };
        self.resumes += 1;
        tracing::warn!(
            resource = %self.resource.what,
            bytes = self.delivered,
            resume = self.resumes,
            delay_ms = delay.as_millis() as u64,
            error = %error_chain(&failure),
            "archive download interrupted; resuming with a Range request"
        );
        std::thread::sleep(delay);
        Ok(())
    }

    fn transport_error(&self, failure: Box<dyn std::error::Error + Send + Sync>) -> ApiError {
        self.client.transport_error(
            &self.resource,
            Server::ObjectStore,
            self.url.as_ref(),
            failure,
        )
    }

    fn protocol_error(&self, detail: String) -> OpenError {
        OpenError::Fatal(ApiError::Protocol {
            resource: self.resource.what.clone(),
            detail,
        })
    }

    fn changed(&self, detail: String) -> ApiError {
        ApiError::Changed {
            resource: self.resource.what.clone(),
            offset: self.delivered,
            detail,
        }
    }

    /// Connects (or reconnects) and positions the body at `delivered`.
    fn open_body(&mut self) -> Result<Stream, OpenError> {
        let offset = self.delivered;
        let Some(mut response) = self.fetch(offset).map_err(OpenError::Fatal)? else {
            return Ok(Stream::End);
        };
        let headers = response.headers();
        match (&self.etag, etag(headers)) {
            (Some(held), Some(now)) if *held != now => {
                return Err(OpenError::Fatal(
                    self.changed(format!("its ETag was {held} and is now {now}")),
                ))
            }
            // Nothing to check the bytes held against: they cannot be trusted to continue.
            (Some(held), None) if offset > 0 => {
                return Err(OpenError::Fatal(self.changed(format!(
                    "its ETag was {held} and the store's answer has none"
                ))))
            }
            (Some(_), _) => {}
            (None, now) => self.etag = now,
        }
        match response.status().as_u16() {
            206 if offset > 0 || self.end.is_some() => {
                let raw = headers
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok());
                let range = raw.and_then(parse_content_range);
                let total_matches = |total: Option<u64>| match (total, self.total) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                };
                match range {
                    Some((start, total)) if start == offset && total_matches(total) => {
                        self.total = self.total.or(total);
                    }
                    _ => {
                        return Err(self.protocol_error(format!(
                        "asked the object store for bytes {offset}- of {} and got Content-Range {}",
                        self.total
                            .map_or("an archive of unknown size".into(), |t| format!(
                                "{t} bytes"
                            )),
                        raw.unwrap_or("(none)")
                    )))
                    }
                }
            }
            200 => {
                let len = content_length(headers);
                if offset > 0 {
                    // The store ignored `Range`: read past what the caller already has.
                    if let (Some(len), Some(total)) = (len, self.total) {
                        if len != total {
                            return Err(OpenError::Fatal(
                                self.changed(format!(
                                    "it was {total} bytes and is now {len} bytes"
                                )),
                            ));
                        }
                    }
                    self.total = self.total.or(len);
                    let skipped = io::copy(&mut (&mut response).take(offset), &mut io::sink())
                        .map_err(OpenError::Retry)?;
                    if skipped < offset {
                        return Err(OpenError::Retry(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "the archive ended after {skipped} bytes while skipping {offset}"
                            ),
                        )));
                    }
                    tracing::debug!(resource = %self.resource.what, bytes = offset, "object store ignored Range; skipped");
                } else {
                    self.total = self.total.or(len);
                }
            }
            status => {
                return Err(self.protocol_error(format!(
                    "the object store answered {status} to {}",
                    if offset > 0 {
                        format!("a request for bytes {offset}-")
                    } else {
                        "a download".into()
                    }
                )))
            }
        }
        Ok(Stream::Body(response))
    }

    /// A response of the store for bytes `offset..`, asking the API for a (fresh) URL when
    /// needed. `None`: the store says the range is past the end, and the caller has it all.
    fn fetch(&mut self, offset: u64) -> Result<Option<Response>, ApiError> {
        let mut refreshes = 0;
        loop {
            let url = match &self.url {
                Some(url) => url.clone(),
                None => {
                    let url = self.client.presign(&self.archive, &self.resource)?;
                    self.url = Some(url.clone());
                    url
                }
            };
            match self.store_get(&url, offset)? {
                StoreAnswer::Body(response) => return Ok(Some(response)),
                StoreAnswer::Refused { status: 416, .. } if offset > 0 => {
                    if self.total == Some(offset) {
                        return Ok(None);
                    }
                    // Not the end of the archive the bytes held came from: a shorter one.
                    return Err(self.changed(format!(
                        "the store has no byte at offset {offset}{}",
                        self.total
                            .map(|t| format!(" of an archive that was {t} bytes"))
                            .unwrap_or_default()
                    )));
                }
                StoreAnswer::Refused {
                    status: 403,
                    message,
                } if refreshes < MAX_URL_REFRESHES => {
                    refreshes += 1;
                    tracing::info!(
                        resource = %self.resource.what,
                        refresh = refreshes,
                        message = %message,
                        "object store refused the download URL (expired?); asking the API for a fresh one"
                    );
                    self.url = None;
                }
                StoreAnswer::Refused { status, message } => {
                    return Err(ApiError::DownloadUrl {
                        resource: self.resource.what.clone(),
                        status,
                        message,
                    })
                }
            }
        }
    }

    /// One GET of the object store, retried on connection errors, stalls, 5xx and 429.
    /// Never carries the token.
    fn store_get(&self, url: &Url, offset: u64) -> Result<StoreAnswer, ApiError> {
        let client = &self.client;
        let resource = &self.resource;
        client.with_retries(resource, || {
            let mut request = client.http().get(url.clone());
            match self.end {
                Some(end) => {
                    let last = end - 1;
                    request = request.header(header::RANGE, format!("bytes={offset}-{last}"));
                }
                None if offset > 0 => {
                    request = request.header(header::RANGE, format!("bytes={offset}-"));
                }
                None => {}
            }
            let response = request.send().map_err(|err| {
                client.transport_failure(resource, Server::ObjectStore, url, err.without_url())
            })?;
            let status = response.status();
            if status.is_success() {
                return Ok(StoreAnswer::Body(response));
            }
            let headers = response.headers().clone();
            let mut body = Vec::new();
            // The message is a courtesy: a body that breaks off still leaves the status.
            let _ = response.take(STORE_ERROR_BODY_LIMIT).read_to_end(&mut body);
            let message = client.scrub(store_message(&body));
            let request_id = request_id(&headers);
            let code = status.as_u16();
            match code {
                429 => {
                    let retry_after = retry_after(&headers);
                    Err(Failure::Retryable {
                        error: ApiError::RateLimited {
                            resource: resource.what.clone(),
                            retry_after,
                            request_id,
                        },
                        status: Some(code),
                        retry_after,
                    })
                }
                500..=599 => Err(Failure::Retryable {
                    error: ApiError::Server {
                        resource: resource.what.clone(),
                        status: code,
                        message: format!("the object store failed: {message}"),
                        request_id,
                    },
                    status: Some(code),
                    retry_after: retry_after(&headers),
                }),
                _ => Ok(StoreAnswer::Refused {
                    status: code,
                    message,
                }),
            }
        })
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn etag(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::ETAG)?.to_str().ok()?.trim();
    // A weak validator (`W/"…"`) may differ in its prefix between a full and a partial answer.
    Some(value.trim_start_matches("W/").to_string()).filter(|v| !v.is_empty())
}

/// `bytes 100-999/1000` (or `…/*`) -> `(100, Some(1000))`.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

/// The message of an object-store error: S3's XML `<Code>`/`<Message>`, the API's JSON error,
/// or the start of the body.
fn store_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = start + text[start..].find(&format!("</{name}>"))?;
        Some(text[start..end].trim().to_string())
    };
    match (tag("Code"), tag("Message")) {
        (Some(code), Some(message)) => return format!("{code}: {message}"),
        (Some(only), None) | (None, Some(only)) => return only,
        (None, None) => {}
    }
    if let Ok(envelope) = serde_json::from_slice::<super::wire::ErrorEnvelope>(body) {
        return envelope.error.describe();
    }
    super::wire::snippet(body, 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        let cases = [
            ("bytes 100-999/1000", Some((100, Some(1000)))),
            ("bytes 0-0/1", Some((0, Some(1)))),
            ("bytes 5-9/*", Some((5, None))),
            ("bytes  5-9/10", Some((5, Some(10)))),
            ("bytes 9-5/10", None),
            ("bytes */1000", None),
            ("items 1-2/3", None),
            ("", None),
        ];
        for (raw, expected) in cases {
            assert_eq!(parse_content_range(raw), expected, "{raw:?}");
        }
    }

    #[test]
    fn store_messages_come_from_xml_json_or_the_body() {
        let xml = b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>";
        assert_eq!(store_message(xml), "AccessDenied: Request has expired");
        let json = br#"{"error":{"type":"authentication_error","message":"expired"}}"#;
        assert_eq!(store_message(json), "expired");
        assert_eq!(store_message(b"nope"), "nope");
        assert_eq!(store_message(b""), "(empty body)");
    }

    #[test]
    fn weak_etags_compare_by_value() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, "W/\"abc\"".parse().unwrap());
        assert_eq!(etag(&headers).as_deref(), Some("\"abc\""));
    }
}
