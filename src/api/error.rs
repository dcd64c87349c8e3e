//! The client's error type: one variant per case of the API contract.

/// An error from the VM0 API or the object store.
///
/// Messages name the resource and carry the server's request id when it sent one, because
/// that id is what a user quotes to support.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: the token is missing, malformed, unknown, expired or revoked.
    #[error("the VM0 API rejected the token (401{}); check VM0_TOKEN", req(.request_id))]
    Authentication { request_id: Option<String> },
    /// 403 from the API (`authorization_error`, e.g. `scope_not_configured`).
    #[error("the VM0 API refused access to {resource}: {message} (403{}); check the token's scopes", req(.request_id))]
    Authorization { resource: String, message: String, request_id: Option<String> },
    /// 404: the storage or version does not exist (or belongs to someone else).
    #[error("{resource} not found: {message}{}", req_paren(.request_id))]
    NotFound { resource: String, message: String, request_id: Option<String> },
    /// 400 from the API.
    #[error("the VM0 API rejected the request for {resource}: {message}{}", req_paren(.request_id))]
    InvalidRequest { resource: String, message: String, request_id: Option<String> },
    /// 5xx after retries were exhausted.
    #[error("the VM0 API failed while fetching {resource}: HTTP {status}: {message}{}; try again later", req_paren(.request_id))]
    Server { resource: String, status: u16, message: String, request_id: Option<String> },
    /// 429 after retries were exhausted.
    #[error("the VM0 API is rate limiting requests for {resource}{}; try again later", req_paren(.request_id))]
    RateLimited { resource: String, retry_after: Option<std::time::Duration>, request_id: Option<String> },
    /// The connection failed (refused, reset, timed out, TLS) after retries.
    #[error("could not reach {url} while fetching {resource}: {source}; check VM0_API_URL and the network")]
    Transport {
        resource: String,
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The object store refused a presigned URL (expired or invalid) even after asking the
    /// API for a fresh one.
    #[error("the object store refused the download URL for {resource} (HTTP {status}): {message}")]
    DownloadUrl { resource: String, status: u16, message: String },
    /// A body that is not the documented JSON (a proxy's HTML page, an empty body, ...).
    #[error("unexpected answer from the VM0 API for {resource}: HTTP {status}: {snippet}{}", req_paren(.request_id))]
    UnexpectedBody { resource: String, status: u16, snippet: String, request_id: Option<String> },
    /// The server broke the contract in a way the client refuses to paper over (for example
    /// a pagination cursor that repeats, which would otherwise loop forever).
    #[error("the VM0 API broke its contract while listing {resource}: {detail}")]
    Protocol { resource: String, detail: String },
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

impl ApiError {
    /// True for a 404: the thing does not exist, as opposed to a failure to find out.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::NotFound { .. })
    }

    /// True when the token was refused: the user must fix `VM0_TOKEN`.
    pub fn is_auth(&self) -> bool {
        matches!(self, ApiError::Authentication { .. } | ApiError::Authorization { .. })
    }
}
