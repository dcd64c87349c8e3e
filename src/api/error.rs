//! The client's error type: one variant per case of the API contract.

use crate::size::ByteSize;

/// An error from the VM0 API or the object store.
///
/// Messages name the resource and carry the server's request id when it sent one, because
/// that id is what a user quotes to support.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: the token is missing, malformed, unknown, expired or revoked.
    #[error(
        "the VM0 API rejected the token (HTTP 401{}); check that VM0_TOKEN holds a valid API key",
        req(.request_id)
    )]
    Authentication { request_id: Option<String> },
    /// 403 from the API (`authorization_error`, e.g. `scope_not_configured`).
    #[error(
        "the VM0 API refused access to {resource}: {message} (HTTP 403{}); check the scopes of the token in VM0_TOKEN",
        req(.request_id)
    )]
    Authorization {
        resource: String,
        message: String,
        request_id: Option<String>,
    },
    /// 404: the storage or version does not exist (or belongs to someone else).
    #[error("{resource} not found: {message}{}", req_paren(.request_id))]
    NotFound {
        resource: String,
        message: String,
        request_id: Option<String>,
    },
    /// 400 from the API.
    #[error(
        "the VM0 API rejected the request for {resource} (HTTP 400): {message}{}; this is likely a vm0fs bug, please report it",
        req_paren(.request_id)
    )]
    InvalidRequest {
        resource: String,
        message: String,
        request_id: Option<String>,
    },
    /// 5xx after retries were exhausted.
    #[error(
        "the VM0 API failed while fetching {resource}: HTTP {status}: {message}{}; try again later",
        req_paren(.request_id)
    )]
    Server {
        resource: String,
        status: u16,
        message: String,
        request_id: Option<String>,
    },
    /// 429 after retries were exhausted (or when the server asked to wait longer than the
    /// retry budget allows).
    #[error(
        "the VM0 API is rate limiting requests for {resource} (HTTP 429{}{}); try again later",
        retry_after_text(.retry_after),
        req(.request_id)
    )]
    RateLimited {
        resource: String,
        retry_after: Option<std::time::Duration>,
        request_id: Option<String>,
    },
    /// The connection failed (refused, reset, TLS) or stalled, after retries.
    ///
    /// `host` is the server's `host:port`, never a URL: a presigned URL carries its signature
    /// in the query string.
    #[error("{}", transport_text(.server, .host, .resource, .stalled, .setting, .source.as_ref()))]
    Transport {
        resource: String,
        /// Which server failed: the VM0 API or the object store.
        server: Server,
        /// `host:port` of that server, when known.
        host: Option<String>,
        /// Set when the failure was a stall: no byte arrived for that long.
        stalled: Option<std::time::Duration>,
        /// What the user changes to use another API URL (for the hint).
        setting: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A download resumed at an offset met another object than the one whose first bytes
    /// are held (another `ETag`, another length): those bytes cannot be completed and the
    /// download must start again from the beginning.
    #[error(
        "the archive of {resource} changed on the object store after {offset} bytes of it were received ({detail}); its download must start again from the beginning"
    )]
    Changed {
        resource: String,
        offset: u64,
        detail: String,
    },
    /// The object store refused a presigned URL (expired or invalid) even after asking the
    /// API for a fresh one.
    #[error(
        "the object store refused the download URL for {resource} (HTTP {status}): {message}; try again later"
    )]
    DownloadUrl {
        resource: String,
        status: u16,
        message: String,
    },
    /// A body that is not the documented JSON (a proxy's HTML page, an empty body, ...).
    #[error(
        "unexpected answer from the VM0 API for {resource}: HTTP {status}: {snippet}{}; check that {setting} points at the VM0 API",
        req_paren(.request_id)
    )]
    UnexpectedBody {
        resource: String,
        status: u16,
        snippet: String,
        request_id: Option<String>,
        /// What the user changes to use another API URL (for the hint).
        setting: &'static str,
    },
    /// A JSON answer longer than any answer of the contract: reading it whole could take
    /// the daemon's memory, so it is refused after `limit` bytes (not retried: the server
    /// would send it again).
    #[error(
        "the VM0 API sent more than {} for {resource}{}, far more than any answer of the API holds (a listing page has at most 100 rows); stopped reading it; check that {setting} points at the VM0 API, and if it does, report this server bug",
        ByteSize(*.limit),
        req_paren(.request_id)
    )]
    BodyTooLarge {
        resource: String,
        limit: u64,
        request_id: Option<String>,
        /// What the user changes to use another API URL (for the hint).
        setting: &'static str,
    },
    /// The API answered a download request with a redirect that vm0fs refuses to follow
    /// (another scheme than http(s), https to http, credentials in the URL). Final: the
    /// same request would get the same answer.
    ///
    /// `target` is the Location's scheme, host and port only: its query is a signature.
    #[error(
        "the VM0 API redirected the download of {resource} to {target}, which vm0fs refuses to follow: {reason}; check that {setting} points at the VM0 API, and if it does, report this server bug"
    )]
    Redirect {
        resource: String,
        target: String,
        reason: &'static str,
        /// What the user changes to use another API URL (for the hint).
        setting: &'static str,
    },
    /// The server broke the contract in a way the client refuses to paper over (for example
    /// a pagination cursor that repeats, which would otherwise loop forever, or a resumed
    /// download that answers with another range).
    #[error(
        "the VM0 API broke its contract while fetching {resource}: {detail}; this is a server bug, please report it"
    )]
    Protocol { resource: String, detail: String },
    /// The client cannot be built from its configuration (a malformed URL or token).
    #[error("invalid VM0 API client configuration: {detail}")]
    Config { detail: String },
}

/// The two servers a request can go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// The VM0 API (`VM0_API_URL`), which lists storages and signs download URLs.
    Api,
    /// The object store that a download URL points to.
    ObjectStore,
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Server::Api => "the VM0 API",
            Server::ObjectStore => "the object store",
        })
    }
}

/// `the object store at store:443 timed out after 30 s without a byte while fetching …`, or
/// `could not reach the VM0 API at api:443 while fetching …: <causes>; check …`.
fn transport_text(
    server: &Server,
    host: &Option<String>,
    resource: &str,
    stalled: &Option<std::time::Duration>,
    setting: &str,
    source: &(dyn std::error::Error + Send + Sync + 'static),
) -> String {
    let at = match host {
        Some(host) => format!("{server} at {host}"),
        None => server.to_string(),
    };
    match stalled {
        Some(after) => {
            let hint = match server {
                Server::Api => "check the network and try again later",
                Server::ObjectStore => "try again later",
            };
            format!(
                "{at} timed out after {} without a byte while fetching {resource}; {hint}",
                seconds(*after)
            )
        }
        None => {
            // Only the API's address is the user's to fix; the store's comes from the API.
            let hint = match server {
                Server::Api => format!("check {setting} and the network"),
                Server::ObjectStore => "check the network".into(),
            };
            format!(
                "could not reach {at} while fetching {resource}: {}; {hint}",
                super::client::error_chain(source)
            )
        }
    }
}

/// `30 s`, `0.5 s`.
pub(crate) fn seconds(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn req(id: &Option<String>) -> String {
    match id {
        Some(id) => format!(", request id {id}"),
        None => String::new(),
    }
}

fn req_paren(id: &Option<String>) -> String {
    match id {
        Some(id) => format!(" (request id {id})"),
        None => String::new(),
    }
}

fn retry_after_text(after: &Option<std::time::Duration>) -> String {
    match after {
        Some(after) => format!(", asked to wait {}s", after.as_secs_f64().ceil()),
        None => String::new(),
    }
}

impl ApiError {
    /// The `X-Request-Id` of the answer that caused the error, when the server sent one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            ApiError::Authentication { request_id }
            | ApiError::Authorization { request_id, .. }
            | ApiError::NotFound { request_id, .. }
            | ApiError::InvalidRequest { request_id, .. }
            | ApiError::Server { request_id, .. }
            | ApiError::RateLimited { request_id, .. }
            | ApiError::UnexpectedBody { request_id, .. }
            | ApiError::BodyTooLarge { request_id, .. } => request_id.as_deref(),
            ApiError::Transport { .. }
            | ApiError::Redirect { .. }
            | ApiError::DownloadUrl { .. }
            | ApiError::Changed { .. }
            | ApiError::Protocol { .. }
            | ApiError::Config { .. } => None,
        }
    }

    /// The HTTP status of the answer that caused the error, if there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Authentication { .. } => Some(401),
            ApiError::Authorization { .. } => Some(403),
            ApiError::NotFound { .. } => Some(404),
            ApiError::InvalidRequest { .. } => Some(400),
            ApiError::RateLimited { .. } => Some(429),
            ApiError::Server { status, .. }
            | ApiError::DownloadUrl { status, .. }
            | ApiError::UnexpectedBody { status, .. } => Some(*status),
            ApiError::Transport { .. }
            | ApiError::Changed { .. }
            | ApiError::Protocol { .. }
            | ApiError::BodyTooLarge { .. }
            | ApiError::Redirect { .. }
            | ApiError::Config { .. } => None,
        }
    }

    /// True for a 404: the thing does not exist, as opposed to a failure to find out.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::NotFound { .. })
    }

    /// True when a resumed download found that the object changed: the bytes held are of
    /// no use, and the download must start again from byte 0.
    pub fn is_changed(&self) -> bool {
        matches!(self, ApiError::Changed { .. })
    }

    /// True when the token was refused: the user must fix `VM0_TOKEN`.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            ApiError::Authentication { .. } | ApiError::Authorization { .. }
        )
    }
}
