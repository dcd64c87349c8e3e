//! The blocking HTTP client of the VM0 API.

use std::fmt;
use std::io::Read;
use std::time::Duration;

use super::{ApiError, Kind, Storage, StorageDetail, Version};

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

/// How transient failures (connection errors, 5xx, 429) are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// First backoff; doubles each time (with jitter), capped at `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// No retry starts after this much time has passed since the first attempt.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// For example `https://api.vm0.ai/v1` (no trailing slash needed).
    pub base_url: String,
    pub token: Token,
    pub retry: RetryPolicy,
    /// Connect timeout, and the longest a response may stall without sending a byte.
    pub io_timeout: Duration,
}

/// The VM0 API client. Cheap to clone; safe to share between threads.
#[derive(Clone, Debug)]
pub struct Client {
    _config: ClientConfig,
}

/// A version's archive being downloaded: the raw `tar.gz` bytes, streamed.
pub struct Download {
    _reader: Box<dyn Read + Send>,
    /// `Content-Length` of the archive, when the store sent one.
    pub compressed_size: Option<u64>,
}

impl Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self._reader.read(buf)
    }
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Client, ApiError> {
        Ok(Client { _config: config })
    }

    /// Every storage of a kind (all pages, de-duplicated by id).
    pub fn list_storages(&self, _kind: Kind) -> Result<Vec<Storage>, ApiError> {
        todo!()
    }

    /// One storage with its current version.
    pub fn get_storage(&self, _kind: Kind, _storage_id: &str) -> Result<StorageDetail, ApiError> {
        todo!()
    }

    /// Every version of a storage, newest first (all pages, de-duplicated by id).
    pub fn list_versions(&self, _kind: Kind, _storage_id: &str) -> Result<Vec<Version>, ApiError> {
        todo!()
    }

    /// Stream the archive of a version (`None`: the current one).
    pub fn download(
        &self,
        _kind: Kind,
        _storage_id: &str,
        _version_id: Option<&str>,
    ) -> Result<Download, ApiError> {
        todo!()
    }
}
