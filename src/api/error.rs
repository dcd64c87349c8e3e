//! The client's error type: one variant per case of the API contract.

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
    /// The connection failed (refused, reset, timed out, TLS) after retries. `url` never
    /// carries a query string (presigned URLs hold a signature there).
    #[error(
        "could not reach {url} while fetching {resource}: {source}; check VM0_API_URL and the network"
    )]
    Transport {
        resource: String,
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
        "unexpected answer from the VM0 API for {resource}: HTTP {status}: {snippet}{}; check that VM0_API_URL points at the VM0 API",
        req_paren(.request_id)
    )]
    UnexpectedBody {
        resource: String,
        status: u16,
        snippet: String,
        request_id: Option<String>,
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
            | ApiError::UnexpectedBody { request_id, .. } => request_id.as_deref(),
            ApiError::Transport { .. }
            | ApiError::DownloadUrl { .. }
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
            ApiError::Transport { .. } | ApiError::Protocol { .. } | ApiError::Config { .. } => {
                None
            }
        }
    }

    /// True for a 404: the thing does not exist, as opposed to a failure to find out.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::NotFound { .. })
    }

    /// True when the token was refused: the user must fix `VM0_TOKEN`.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            ApiError::Authentication { .. } | ApiError::Authorization { .. }
        )
    }
}
