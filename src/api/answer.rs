//! What an answer of the API means: what a request was about ([`Resource`], for
//! messages), one attempt's outcome ([`Failure`]: final or worth another try), and the
//! mapping of every error answer of the contract to its typed [`ApiError`].

use std::time::Duration;

use reqwest::header::{self, HeaderMap};
use reqwest::StatusCode;

use super::client::{Client, SNIPPET_CHARS};
use super::wire::{self, ErrorEnvelope};
use super::{ApiError, ArchiveRef};
use crate::ids::VersionId;

/// What a request is about, for messages: `volume 3f1c…`, `versions of volume 3f1c…`.
#[derive(Debug, Clone)]
pub(crate) struct Resource {
    /// The thing being fetched.
    pub what: String,
    /// The thing a 404 says is missing (listing the versions of a volume that does not exist
    /// is "volume … not found", not "versions of volume … not found").
    pub missing: String,
}

impl Resource {
    pub(super) fn same(what: String) -> Resource {
        Resource {
            missing: what.clone(),
            what,
        }
    }

    /// `version 9b2d1f0c of volume input-data`: the storage by name when the caller knows
    /// it, a full version id by its first eight characters (a prefix as given).
    pub fn archive(archive: &ArchiveRef) -> Resource {
        let kind = archive.kind;
        let storage = match &archive.storage_name {
            Some(name) => name.as_str(),
            None => archive.storage_id.as_str(),
        };
        match &archive.version {
            Some(v) => {
                let v = VersionId::parse(v).map_or_else(|_| v.clone(), |id| id.short().into());
                Resource::same(format!("version {v} of {kind} {storage}"))
            }
            None => Resource::same(format!("the current version of {kind} {storage}")),
        }
    }
}

/// One failed attempt: either final, or worth another try (after at least `retry_after`).
pub(crate) enum Failure {
    Fatal(ApiError),
    Retryable {
        error: ApiError,
        status: Option<u16>,
        retry_after: Option<Duration>,
    },
}

/// An answer of the API whose (small) body was read in full.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub request_id: Option<String>,
}

impl Client {
    /// Maps an error answer of the API to its `ApiError`, and says whether it is transient.
    pub(super) fn classify(&self, answer: Answer, resource: &Resource) -> Failure {
        let Answer {
            status,
            headers,
            body,
            request_id,
        } = answer;
        let code = status.as_u16();
        // A body that is not the documented error JSON is reported as such: a 404 page from a
        // proxy or a wrong VM0_API_URL must not read as "volume not found".
        let message = serde_json::from_slice::<ErrorEnvelope>(&body)
            .ok()
            .map(|e| self.scrub(e.error.describe()));
        let unexpected = || ApiError::UnexpectedBody {
            resource: resource.what.clone(),
            status: code,
            snippet: self.scrub(wire::snippet(&body, SNIPPET_CHARS)),
            request_id: request_id.clone(),
            setting: self.url_setting(),
        };
        let what = resource.what.clone();
        match code {
            // The status alone says what to do, whatever the body.
            401 => Failure::Fatal(ApiError::Authentication { request_id }),
            429 => {
                let retry_after = retry_after(&headers);
                Failure::Retryable {
                    error: ApiError::RateLimited {
                        resource: what,
                        retry_after,
                        request_id,
                    },
                    status: Some(code),
                    retry_after,
                }
            }
            500..=599 => Failure::Retryable {
                error: match message {
                    Some(message) => ApiError::Server {
                        resource: what,
                        status: code,
                        message,
                        request_id,
                    },
                    None => unexpected(),
                },
                status: Some(code),
                retry_after: retry_after(&headers),
            },
            _ => Failure::Fatal(match (code, message) {
                (403, Some(message)) => ApiError::Authorization {
                    resource: what,
                    message,
                    request_id,
                },
                (404, Some(message)) => ApiError::NotFound {
                    resource: resource.missing.clone(),
                    message,
                    request_id,
                },
                (400..=499, Some(message)) => ApiError::InvalidRequest {
                    resource: what,
                    message,
                    request_id,
                },
                _ => unexpected(),
            }),
        }
    }
}

/// `X-Request-Id` of an API answer (`x-amz-request-id` for the object store).
pub(crate) fn request_id(headers: &HeaderMap) -> Option<String> {
    ["x-request-id", "x-amz-request-id"]
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `Retry-After` in seconds (the HTTP-date form is not used by the API and is ignored).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let secs: f64 = value.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}
