//! The blocking HTTP client of the VM0 API: requests with the token, retries, pagination and
//! the mapping of every answer of the contract to a typed [`ApiError`].
//!
//! Streaming an archive (the object store, presigned URLs, resuming) lives in
//! [`super::download`]; this file only asks the API where an archive is.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::blocking::RequestBuilder;
use reqwest::header::{self, HeaderValue};
use reqwest::Url;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::answer::{request_id, Answer, Failure, Resource};
use super::download::{Download, ResumePoint};
use super::redirect;
use super::retry::{Retrier, RetryPolicy};
use super::rows::Skipped;
use super::wire::{self, WireStorage, WireVersion};
use super::{ApiError, ArchiveRef, Kind, Server, Storage, StorageDetail, Version};
use crate::ids::StorageId;

/// Rows asked per page: the maximum the API allows.
use super::transport::{host_port, is_stall, read_body};

const PAGE_LIMIT: &str = "100";
/// A listing that needs more pages than this is a server bug (a million rows at 100 a page),
/// not a reason to loop on.
const MAX_PAGES: usize = 10_000;
/// Rows one listing may hold: as many as `MAX_PAGES` full pages of the contract. Pages that
/// each hold up to `wire::MAX_PAGE_ROWS` rows cannot take a listing past it.
const MAX_LISTING_ROWS: usize = MAX_PAGES * 100;
/// JSON bodies are small: besides no read stalling for `io_timeout`, the whole body must
/// arrive within this many `io_timeout`s.
const JSON_TIMEOUT_FACTOR: u32 = 4;
/// The most a JSON answer of the API may hold. The largest answers of the contract are a
/// listing page (at most 100 rows of a few hundred bytes), a page of 100 log entries and
/// a run's metrics: a few hundred KiB at most. A longer body is refused after this many
/// bytes rather than read whole into memory (a 2 GiB answer once took the daemon to
/// 2 GiB of memory).
pub(crate) const MAX_JSON_BODY: u64 = 16 << 20;
/// Of an error answer (or a redirect), only this much is read: enough for the contract's
/// error JSON and a proxy's error page; the rest is not needed for the message.
const MAX_ERROR_BODY: u64 = 64 << 10;
/// At most this many characters of an unexpected body go into an error message.
pub(super) const SNIPPET_CHARS: usize = 200;

/// An API token. Its `Debug` and `Display` never show the secret.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn new(secret: impl Into<String>) -> Token {
        Token(secret.into())
    }

    /// The secret, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// For example `https://api.vm0.ai/v1` (no trailing slash needed).
    pub base_url: String,
    pub token: Token,
    pub retry: RetryPolicy,
    /// Connect timeout, and the longest a response may stall without sending a byte (before
    /// its head, or between two reads of its body). A stall is retried like a connection
    /// error. Zero means no timeout.
    pub io_timeout: Duration,
    /// What the user changes to use another API URL (`VM0_API_URL`, `--api-url`, ...), for
    /// the hints of messages about a wrong URL.
    pub url_setting: &'static str,
}

/// The VM0 API client. Cheap to clone; safe to share between threads.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// Redirects disabled: the download endpoint's 302 is followed by hand, without the token.
    http: reqwest::blocking::Client,
    base: Url,
    token: Token,
    /// `Bearer <token>`, marked sensitive so that no reqwest or hyper log shows it.
    authorization: HeaderValue,
    retry: RetryPolicy,
    io_timeout: Option<Duration>,
    url_setting: &'static str,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.base.as_str())
            .field("token", &self.inner.token)
            .field("retry", &self.inner.retry)
            .field("io_timeout", &self.inner.io_timeout)
            .finish()
    }
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Client, ApiError> {
        let base = Url::parse(config.base_url.trim()).map_err(|err| ApiError::Config {
            detail: format!(
                "the API URL {:?} is not a URL ({err}); check {}",
                config.base_url, config.url_setting
            ),
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ApiError::Config {
                detail: format!(
                    "the API URL {:?} is not an http(s) URL; check {}",
                    config.base_url, config.url_setting
                ),
            });
        }
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", config.token.expose()))
            .map_err(|_| ApiError::Config {
                detail: "the token holds characters that cannot be sent in an HTTP header; check VM0_TOKEN".into(),
            })?;
        authorization.set_sensitive(true);
        let io_timeout = Some(config.io_timeout).filter(|t| !t.is_zero());
        // On a *blocking* reqwest client, `timeout` is not a deadline for the whole exchange:
        // it bounds the wait for the response head and then each `Response::read` call
        // separately (reqwest 0.12 `blocking::Response::read` wraps every read in
        // `wait::timeout`). That makes it the stall timeout that an archive of many GiB needs.
        // Reading a body in one go (`bytes()`, `json()`) gets a single deadline, which is why
        // JSON requests set a longer per-request timeout below.
        let http = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("vm0fs/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(io_timeout)
            .timeout(io_timeout)
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .build()
            .map_err(|err| ApiError::Config {
                detail: format!("cannot build the HTTP client: {}", error_chain(&err)),
            })?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                token: config.token,
                authorization,
                retry: config.retry,
                io_timeout,
                url_setting: config.url_setting,
            }),
        })
    }

    /// The API URL this client talks to.
    /// Where the API URL came from, for hints (`--api-url`, `VM0_API_URL`, ...).
    pub(super) fn url_setting(&self) -> &'static str {
        self.inner.url_setting
    }

    pub fn base_url(&self) -> &str {
        self.inner.base.as_str()
    }

    /// Every storage of a kind (all pages, de-duplicated by id).
    pub fn list_storages(&self, kind: Kind) -> Result<Vec<Storage>, ApiError> {
        let resource = Resource::same(format!("the list of {}", kind.plural()));
        let rows: Vec<WireStorage> =
            self.list_all(&[kind.plural()], &resource, |s: &WireStorage| &s.id)?;
        Ok(rows.into_iter().map(WireStorage::into_storage).collect())
    }

    /// One storage with its current version.
    pub fn get_storage(
        &self,
        kind: Kind,
        storage_id: &StorageId,
    ) -> Result<StorageDetail, ApiError> {
        let resource = Resource::same(format!("{kind} {storage_id}"));
        let url = self.api_url(&[kind.plural(), storage_id.as_str()]);
        let answer = self.api_get(&url, &resource)?;
        let detail: WireStorage = self.decode_ok(&answer, &resource)?;
        Ok(detail.into_detail())
    }

    /// Every version of a storage, newest first (all pages, de-duplicated by id).
    pub fn list_versions(
        &self,
        kind: Kind,
        storage_id: &StorageId,
    ) -> Result<Vec<Version>, ApiError> {
        let resource = Resource {
            what: format!("the versions of {kind} {storage_id}"),
            missing: format!("{kind} {storage_id}"),
        };
        let rows: Vec<WireVersion> = self.list_all(
            &[kind.plural(), storage_id.as_str(), "versions"],
            &resource,
            |v: &WireVersion| &v.id,
        )?;
        let mut versions: Vec<Version> = rows
            .into_iter()
            .filter_map(|v| v.into_version(storage_id))
            .collect();
        // Pages can repeat or skip rows, so the order across pages is not guaranteed; the
        // contract's order is newest first (stable, so equal times keep the server's order).
        versions.sort_by_key(|v| std::cmp::Reverse(v.created_at));
        Ok(versions)
    }

    /// Stream the archive of a version: `version` is a full id or a unique prefix of at
    /// least 8 hex characters, as the API takes it (`None`: the current version).
    ///
    /// The same as [`Client::download_archive`] from byte 0, with messages that name the
    /// storage by its id.
    pub fn download(
        &self,
        kind: Kind,
        storage_id: &StorageId,
        version: Option<&str>,
    ) -> Result<Download, ApiError> {
        let archive = ArchiveRef {
            kind,
            storage_id: storage_id.clone(),
            storage_name: None,
            version: version.map(str::to_string),
        };
        Download::open(self.clone(), &archive, None)
    }

    /// Stream the archive of a version, from its start or, with `from`, from the byte where
    /// an earlier download of it stopped.
    ///
    /// The API answers with a redirect to a presigned object-store URL, which is fetched
    /// without the token. The returned reader resumes by itself (`Range`) when the connection
    /// breaks, and asks the API for a fresh URL when the old one has expired. Started `from`
    /// a [`ResumePoint`] (see [`Download::resume_point`]), it yields only the bytes after
    /// `from.offset`, and fails with [`ApiError::Changed`] when the store's object is not
    /// the one those first bytes came from (another `ETag` or length).
    pub fn download_archive(
        &self,
        archive: &ArchiveRef,
        from: Option<&ResumePoint>,
    ) -> Result<Download, ApiError> {
        Download::open(self.clone(), archive, from)
    }

    /// The bytes `from.offset..end` of a version's archive (which must still be the
    /// object `from.etag` names): one range request, resumed like a whole download.
    pub fn download_archive_range(
        &self,
        archive: &ArchiveRef,
        from: &ResumePoint,
        end: u64,
    ) -> Result<Download, ApiError> {
        Download::open_range(self.clone(), archive, Some(from), Some(end))
    }

    /// Asks the API for a presigned URL of a version's archive (`GET …/download`, 302).
    pub(crate) fn presign(
        &self,
        archive: &ArchiveRef,
        resource: &Resource,
    ) -> Result<Url, ApiError> {
        let mut url = self.api_url(&[
            archive.kind.plural(),
            archive.storage_id.as_str(),
            "download",
        ]);
        if let Some(v) = &archive.version {
            // Both names: the documented shape reads `version_id`, the final one `versionId`.
            url.query_pairs_mut()
                .append_pair("version_id", v)
                .append_pair("versionId", v);
        }
        let answer = self.api_get(&url, resource)?;
        let location = answer
            .headers
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok());
        match location {
            Some(location) if answer.status.is_redirection() => {
                let to = url.join(location).map_err(|err| ApiError::Protocol {
                    resource: resource.what.clone(),
                    detail: format!("the download redirect has an invalid Location ({err})"),
                })?;
                match redirect::check(&url, &to) {
                    Ok(()) => Ok(to),
                    Err(refusal) => Err(ApiError::Redirect {
                        resource: resource.what.clone(),
                        target: redirect::target(&to),
                        reason: refusal.reason(),
                        setting: self.inner.url_setting,
                    }),
                }
            }
            _ => Err(ApiError::UnexpectedBody {
                resource: resource.what.clone(),
                status: answer.status.as_u16(),
                snippet: format!(
                    "expected a redirect to the archive, got: {}",
                    self.scrub(wire::snippet(&answer.body, SNIPPET_CHARS))
                ),
                request_id: answer.request_id,
                setting: self.inner.url_setting,
            }),
        }
    }

    pub(crate) fn http(&self) -> &reqwest::blocking::Client {
        &self.inner.http
    }

    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    /// `base/segment/segment…`, each segment percent-encoded; a trailing slash of the base
    /// URL is ignored.
    pub(super) fn api_url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .expect("checked in Client::new: the base URL can be a base")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// Follows the cursor until `has_more` is false, de-duplicating rows by id. Rows that do
    /// not decode are left out (one WARN for the listing), the others listed.
    pub(super) fn list_all<W: DeserializeOwned>(
        &self,
        segments: &[&str],
        resource: &Resource,
        id_of: fn(&W) -> &String,
    ) -> Result<Vec<W>, ApiError> {
        self.list_all_with(segments, resource, id_of, |row| {
            serde_json::from_str(row).map_err(|e| e.to_string())
        })
    }

    /// [`Client::list_all`] with rows made by `convert` (`Err`: why the row is left out).
    pub(super) fn list_all_with<W>(
        &self,
        segments: &[&str],
        resource: &Resource,
        id_of: fn(&W) -> &String,
        mut convert: impl FnMut(&str) -> Result<W, String>,
    ) -> Result<Vec<W>, ApiError> {
        let mut skipped = Skipped::new(resource);
        let listed = (|| {
            let mut rows = Vec::new();
            let mut ids = HashSet::new();
            let mut cursors = HashSet::new();
            let mut cursor: Option<String> = None;
            for page in 1..=MAX_PAGES {
                let mut url = self.api_url(segments);
                {
                    let mut query = url.query_pairs_mut();
                    query.append_pair("limit", PAGE_LIMIT);
                    if let Some(cursor) = &cursor {
                        query.append_pair("cursor", cursor);
                    }
                }
                let answer = self.api_get(&url, resource)?;
                let (data, pagination) =
                    self.decode_page_with(&answer, resource, page, &mut skipped, &mut convert)?;
                for row in data {
                    if ids.insert(id_of(&row).clone()) {
                        rows.push(row);
                    }
                }
                if rows.len() > MAX_LISTING_ROWS {
                    return Err(ApiError::Protocol {
                        resource: resource.what.clone(),
                        detail: format!("the listing did not end after {MAX_LISTING_ROWS} rows"),
                    });
                }
                let next = pagination.next_cursor.filter(|c| !c.is_empty());
                if !pagination.has_more.unwrap_or(next.is_some()) {
                    return Ok(rows);
                }
                let Some(next) = next else {
                    return Err(ApiError::Protocol {
                        resource: resource.what.clone(),
                        detail: "a page says there are more rows but gives no cursor".into(),
                    });
                };
                if !cursors.insert(next.clone()) {
                    return Err(ApiError::Protocol {
                        resource: resource.what.clone(),
                        detail: format!(
                            "the pagination cursor {:?} came back a second time; stopped instead of \
                             looping forever",
                            wire::snippet(next.as_bytes(), 40)
                        ),
                    });
                }
                cursor = Some(next);
            }
            Err(ApiError::Protocol {
                resource: resource.what.clone(),
                detail: format!("the listing did not end after {MAX_PAGES} pages"),
            })
        })();
        // Only a listing that is served has rows left out; a failed one says why it failed.
        if listed.is_ok() {
            skipped.report();
        }
        listed
    }

    /// Decodes a 2xx JSON answer; anything else is an `UnexpectedBody`.
    pub(super) fn decode_ok<T: DeserializeOwned>(
        &self,
        answer: &Answer,
        resource: &Resource,
    ) -> Result<T, ApiError> {
        // Bytes that are not UTF-8 spoil only the strings that hold them (as U+FFFD).
        let text = String::from_utf8_lossy(&answer.body);
        self.decode_text(answer, resource, &text)
    }

    /// Decodes `text`, the body of `answer`, when the answer is a 2xx; anything else is an
    /// `UnexpectedBody`.
    pub(super) fn decode_text<'a, T: Deserialize<'a>>(
        &self,
        answer: &Answer,
        resource: &Resource,
        text: &'a str,
    ) -> Result<T, ApiError> {
        let unexpected = |detail: String| ApiError::UnexpectedBody {
            resource: resource.what.clone(),
            status: answer.status.as_u16(),
            snippet: self.scrub(format!(
                "{} ({detail})",
                wire::snippet(&answer.body, SNIPPET_CHARS)
            )),
            request_id: answer.request_id.clone(),
            setting: self.inner.url_setting,
        };
        if !answer.status.is_success() {
            // Redirects are not followed for the API (the token must not travel to another
            // host); a redirect here usually means an http:// URL that should be https://.
            let detail = match answer
                .headers
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
            {
                // Scheme and host only: a Location's query can be a signature.
                Some(location) => match self.inner.base.join(location).ok() {
                    Some(to) => format!(
                        "expected a JSON answer, got a redirect to {}",
                        redirect::target(&to)
                    ),
                    None => "expected a JSON answer, got a redirect".into(),
                },
                None => "expected a JSON answer".into(),
            };
            return Err(unexpected(detail));
        }
        serde_json::from_str(text)
            .map_err(|err| unexpected(format!("not the documented JSON: {err}")))
    }

    /// A GET to the API with the token, retried; `Ok` for 2xx and 3xx answers.
    pub(super) fn api_get(&self, url: &Url, resource: &Resource) -> Result<Answer, ApiError> {
        self.with_retries(resource, || self.api_attempt(url, resource))
    }

    fn api_attempt(&self, url: &Url, resource: &Resource) -> Result<Answer, Failure> {
        // The client's timeout bounds the wait for the head and then each read of the body
        // (see `Client::new`); a per-request timeout would stretch the head's wait too.
        let request: RequestBuilder = self
            .inner
            .http
            .get(url.clone())
            .header(header::AUTHORIZATION, self.inner.authorization.clone())
            .header(header::ACCEPT, "application/json");
        let response = request
            .send()
            .map_err(|err| self.transport_failure(resource, Server::Api, url, err.without_url()))?;
        let status = response.status();
        let headers = response.headers().clone();
        let request_id = request_id(&headers);
        let deadline = self.inner.io_timeout.map(|t| t * JSON_TIMEOUT_FACTOR);
        let limit = if status.is_success() {
            MAX_JSON_BODY
        } else {
            MAX_ERROR_BODY
        };
        let too_large = || {
            Failure::Fatal(ApiError::BodyTooLarge {
                resource: resource.what.clone(),
                limit,
                request_id: request_id.clone(),
                setting: self.inner.url_setting,
            })
        };
        // A length announced past the cap is refused before a byte of the body is read.
        if status.is_success() && response.content_length().is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let body = read_body(response, deadline, limit)
            .map_err(|err| self.transport_failure(resource, Server::Api, url, err))?;
        // An error answer is judged by its start; a JSON answer must be whole.
        if body.truncated && status.is_success() {
            return Err(too_large());
        }
        let body = body.bytes;
        let answer = Answer {
            status,
            headers,
            body,
            request_id,
        };
        if status.is_success() || status.is_redirection() {
            Ok(answer)
        } else {
            Err(self.classify(answer, resource))
        }
    }

    /// A GET to the API with the token whose body the caller reads as it comes (a stream of
    /// server-sent events): one attempt, answered as soon as the head is in. An error answer
    /// (JSON, before the stream starts) is mapped like any other. With `within`, the whole
    /// exchange ends by then (a read after it fails as a timeout): a connection of a bounded
    /// length.
    pub(super) fn api_stream(
        &self,
        url: &Url,
        resource: &Resource,
        within: Option<Duration>,
    ) -> Result<reqwest::blocking::Response, ApiError> {
        let mut request = self
            .inner
            .http
            .get(url.clone())
            .header(header::AUTHORIZATION, self.inner.authorization.clone())
            .header(header::ACCEPT, "text/event-stream");
        if let Some(within) = within {
            // A per-request timeout is a deadline for the head and the whole body (and
            // bounds each read by the same), unlike the client's stall timeout.
            request = request.timeout(within);
        }
        let response = request.send().map_err(|err| {
            self.transport_error(
                resource,
                Server::Api,
                Some(url),
                Box::new(err.without_url()),
            )
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let headers = response.headers().clone();
        let request_id = request_id(&headers);
        let body = read_body(response, self.inner.io_timeout, MAX_ERROR_BODY)
            .map(|b| b.bytes)
            .unwrap_or_default();
        let answer = Answer {
            status,
            headers,
            body,
            request_id,
        };
        Err(match self.classify(answer, resource) {
            Failure::Fatal(e) | Failure::Retryable { error: e, .. } => e,
        })
    }

    /// A connection error or a stall of a request to `url`: worth another try.
    pub(crate) fn transport_failure(
        &self,
        resource: &Resource,
        server: Server,
        url: &Url,
        err: impl std::error::Error + Send + Sync + 'static,
    ) -> Failure {
        Failure::Retryable {
            error: self.transport_error(resource, server, Some(url), Box::new(err)),
            status: None,
            retry_after: None,
        }
    }

    /// The error of a request that got no (complete) answer; a timeout is told as a stall of
    /// `io_timeout`.
    pub(crate) fn transport_error(
        &self,
        resource: &Resource,
        server: Server,
        url: Option<&Url>,
        source: Box<dyn std::error::Error + Send + Sync>,
    ) -> ApiError {
        let stalled = self.inner.io_timeout.filter(|_| is_stall(&*source));
        ApiError::Transport {
            resource: resource.what.clone(),
            server,
            host: url.and_then(host_port),
            stalled,
            setting: self.inner.url_setting,
            source,
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retry policy is spent.
    pub(crate) fn with_retries<T>(
        &self,
        resource: &Resource,
        mut attempt: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, ApiError> {
        let mut retrier = Retrier::new(&self.inner.retry);
        loop {
            let number = retrier.start_attempt();
            let (error, status, retry_after) = match attempt() {
                Ok(value) => return Ok(value),
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Retryable {
                    error,
                    status,
                    retry_after,
                }) => (error, status, retry_after),
            };
            let Some(delay) = retrier.next_delay(retry_after) else {
                return Err(error);
            };
            tracing::warn!(
                resource = %resource.what,
                status,
                attempt = number,
                request_id = error.request_id(),
                delay_ms = delay.as_millis() as u64,
                error = %error_chain(&error),
                "VM0 API request failed; retrying"
            );
            std::thread::sleep(delay);
        }
    }

    /// Removes the token from text that came from a server (an error message could echo it).
    pub(crate) fn scrub(&self, text: String) -> String {
        let token = self.inner.token.expose();
        // A very short "token" would mangle ordinary words; real tokens are 73 characters.
        if token.len() >= 8 && text.contains(token) {
            text.replace(token, "<redacted>")
        } else {
            text
        }
    }
}

/// `error: cause: cause` on one line, for logs and the status file, leaving out causes the
/// text already holds ("error sending request" alone does not say that the connection was
/// refused).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::answer::retry_after;
    use reqwest::header::HeaderMap;
    use reqwest::StatusCode;

    const SECRET: &str =
        "vm0_test_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn client(base: &str) -> Client {
        Client::new(ClientConfig {
            base_url: base.into(),
            token: Token::new(SECRET),
            retry: RetryPolicy::default(),
            io_timeout: Duration::from_secs(5),
            url_setting: "VM0_API_URL",
        })
        .unwrap()
    }

    fn answer(status: u16, headers: &[(&'static str, &str)], body: &str) -> Answer {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, value.parse().unwrap());
        }
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            request_id: request_id(&map),
            headers: map,
            body: body.as_bytes().to_vec(),
        }
    }

    fn json_error(kind: &str, message: &str) -> String {
        format!(r#"{{"error":{{"type":"{kind}","code":"c","message":"{message}"}}}}"#)
    }

    #[test]
    fn client_is_cheap_to_share() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Client>();
        fn send<T: Send>() {}
        send::<Download>();
    }

    #[test]
    fn urls_are_built_under_the_base_with_or_without_a_trailing_slash() {
        for base in ["http://127.0.0.1:1234/v1", "http://127.0.0.1:1234/v1/"] {
            let c = client(base);
            assert_eq!(
                c.api_url(&["volumes", "a b/c", "versions"]).as_str(),
                "http://127.0.0.1:1234/v1/volumes/a%20b%2Fc/versions"
            );
        }
        assert_eq!(
            client("http://h").api_url(&["volumes"]).as_str(),
            "http://h/volumes"
        );
    }

    #[test]
    fn bad_configurations_are_config_errors_without_the_token() {
        for (url, token) in [
            ("not a url", SECRET),
            ("ftp://h/v1", SECRET),
            ("http://h/v1", "bad\ntoken_0123456789"),
        ] {
            let err = Client::new(ClientConfig {
                base_url: url.into(),
                token: Token::new(token),
                retry: RetryPolicy::default(),
                io_timeout: Duration::from_secs(1),
                url_setting: "VM0_API_URL",
            })
            .unwrap_err();
            assert!(matches!(err, ApiError::Config { .. }), "{err:?}");
            assert!(!format!("{err} {err:?}").contains("0123456789"), "{err}");
        }
    }

    /// Every row of the contract's error table, and what the client makes of it.
    #[test]
    fn error_answers_map_to_typed_errors() {
        let c = client("http://127.0.0.1:1/v1");
        let resource = Resource {
            what: "the versions of volume v1".into(),
            missing: "volume v1".into(),
        };
        let rid = ("x-request-id", "req_0123");
        type Check = fn(&ApiError) -> bool;
        /// (status, headers, body, expected variant, retryable, words in the message)
        type Case<'a> = (
            u16,
            Vec<(&'static str, &'a str)>,
            String,
            Check,
            bool,
            &'a [&'a str],
        );
        let cases: Vec<Case<'_>> = vec![
            (
                401,
                vec![rid],
                json_error("authentication_error", "Invalid API key provided"),
                |e| matches!(e, ApiError::Authentication { .. }),
                false,
                &["401", "VM0_TOKEN", "req_0123"],
            ),
            (
                401,
                vec![],
                "<html>".into(),
                |e| matches!(e, ApiError::Authentication { request_id: None }),
                false,
                &["VM0_TOKEN"],
            ),
            (
                403,
                vec![rid],
                json_error("authorization_error", "scope not configured"),
                |e| matches!(e, ApiError::Authorization { .. }),
                false,
                &[
                    "403",
                    "scope not configured",
                    "req_0123",
                    "the versions of volume v1",
                ],
            ),
            (
                404,
                vec![rid],
                json_error("not_found_error", "Volume not found"),
                |e| matches!(e, ApiError::NotFound { resource, .. } if resource == "volume v1"),
                false,
                &["volume v1 not found", "Volume not found", "req_0123"],
            ),
            (
                400,
                vec![rid],
                json_error("invalid_request_error", "bad limit"),
                |e| matches!(e, ApiError::InvalidRequest { .. }),
                false,
                &["400", "bad limit", "req_0123"],
            ),
            (
                422,
                vec![],
                json_error("invalid_request_error", "odd"),
                |e| matches!(e, ApiError::InvalidRequest { .. }),
                false,
                &["odd"],
            ),
            (
                500,
                vec![rid],
                json_error("api_error", "boom"),
                |e| matches!(e, ApiError::Server { status: 500, .. }),
                true,
                &["HTTP 500", "boom", "req_0123", "try again later"],
            ),
            (
                503,
                vec![],
                "".into(),
                |e| matches!(e, ApiError::UnexpectedBody { status: 503, .. }),
                true,
                &["HTTP 503", "(empty body)"],
            ),
            (
                429,
                vec![rid, ("retry-after", "7")],
                json_error("rate_limit_error", "slow down"),
                |e| matches!(e, ApiError::RateLimited { retry_after: Some(d), .. } if d.as_secs() == 7),
                true,
                &["429", "7s", "req_0123"],
            ),
            (
                404,
                vec![],
                "<html><body>Not Found</body></html>".into(),
                |e| matches!(e, ApiError::UnexpectedBody { status: 404, .. }),
                false,
                &["HTTP 404", "Not Found", "VM0_API_URL"],
            ),
            (
                502,
                vec![("content-type", "text/html")],
                "<html>Bad gateway</html>".into(),
                |e| matches!(e, ApiError::UnexpectedBody { status: 502, .. }),
                true,
                &["HTTP 502", "Bad gateway"],
            ),
            (
                418,
                vec![],
                "{}".into(),
                |e| matches!(e, ApiError::UnexpectedBody { status: 418, .. }),
                false,
                &["418"],
            ),
        ];
        for (status, headers, body, check, retryable, words) in cases {
            let (err, was_retryable) = match c.classify(answer(status, &headers, &body), &resource)
            {
                Failure::Fatal(e) => (e, false),
                Failure::Retryable { error, .. } => (error, true),
            };
            assert!(check(&err), "{status} {body}: {err:?}");
            assert_eq!(was_retryable, retryable, "{status} {body}");
            let text = err.to_string();
            for word in words {
                assert!(text.contains(word), "{status}: {text:?} lacks {word:?}");
            }
            assert!(!format!("{text} {err:?}").contains(SECRET));
        }
    }

    #[test]
    fn a_token_echoed_by_the_server_is_scrubbed() {
        let c = client("http://127.0.0.1:1/v1");
        let resource = Resource::same("volume v".into());
        let body = json_error("invalid_request_error", &format!("bad key {SECRET}"));
        let Failure::Fatal(err) = c.classify(answer(400, &[], &body), &resource) else {
            panic!("400 is not retried")
        };
        let text = format!("{err} {err:?}");
        assert!(!text.contains(SECRET), "{text}");
        assert!(text.contains("bad key <redacted>"), "{text}");
    }

    #[test]
    fn debug_of_the_client_and_config_hides_the_token() {
        let c = client("http://127.0.0.1:1/v1");
        let config = ClientConfig {
            base_url: "http://h".into(),
            token: Token::new(SECRET),
            retry: RetryPolicy::default(),
            io_timeout: Duration::from_secs(1),
            url_setting: "VM0_API_URL",
        };
        for text in [format!("{c:?}"), format!("{c:#?}"), format!("{config:?}")] {
            assert!(!text.contains(SECRET), "{text}");
            assert!(text.contains("redacted"), "{text}");
        }
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let cases = [
            ("3", Some(3_000)),
            (" 0 ", Some(0)),
            ("1.5", Some(1_500)),
            ("-1", None),
            ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ];
        for (value, expected) in cases {
            let mut map = HeaderMap::new();
            map.insert(header::RETRY_AFTER, value.parse().unwrap());
            assert_eq!(
                retry_after(&map).map(|d| d.as_millis() as u64),
                expected,
                "{value}"
            );
        }
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn messages_name_hosts_without_the_signature() {
        let cases = [
            (
                "http://user:pw@store:9/b/k/archive.tar.gz?X-Amz-Signature=abc#f",
                "store:9",
            ),
            ("https://api.vm0.ai/v1", "api.vm0.ai:443"),
            ("http://[::1]:8080/x", "[::1]:8080"),
            ("http://127.0.0.1/x", "127.0.0.1:80"),
        ];
        for (url, expected) in cases {
            let url = Url::parse(url).unwrap();
            assert_eq!(host_port(&url).as_deref(), Some(expected), "{url}");
        }
    }
}
