//! The JSON bodies exactly as the server sends them, in both shapes, and their conversion
//! into the public types of [`super::types`].
//!
//! Every field that differs between the documented "snake" shape and the final "camel"
//! shape carries a `#[serde(alias)]`, so one struct reads both. Unknown fields are ignored
//! and every field that is not needed to identify an object is optional: a server that adds
//! or drops a field must not make a whole directory unlistable.

use std::fmt;
use std::time::SystemTime;

use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{Storage, StorageDetail, Version};
use crate::ids::{StorageId, StorageName, VersionId};

/// The most rows one page is read for: ten times the contract's largest page (`limit` is
/// 1 to 100), so that a server that ignores `limit` still lists, while a page of a million
/// rows cannot make a million values in memory. Rows past it are left out (and counted).
pub(crate) const MAX_PAGE_ROWS: usize = 1000;

/// `{"data":[…],"pagination":{…}}`, the answer of every list endpoint, with its rows still
/// undecoded: each is decoded on its own, so that one that does not decode costs only
/// itself (see [`super::rows`]).
#[derive(Debug, Deserialize)]
pub(crate) struct Page<'a> {
    #[serde(borrow)]
    pub data: Rows<'a>,
    #[serde(default)]
    pub pagination: Option<Pagination>,
}

/// The rows of a page as the server wrote them (slices of the body), at most
/// [`MAX_PAGE_ROWS`] of them.
#[derive(Debug, Default)]
pub(crate) struct Rows<'a> {
    pub rows: Vec<&'a RawValue>,
    /// Rows past [`MAX_PAGE_ROWS`], skipped unread.
    pub dropped: u64,
}

impl<'de: 'a, 'a> Deserialize<'de> for Rows<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Visit<'a> {
            type Value = Rows<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of rows")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Rows<'a>, A::Error> {
                let mut rows = Rows::default();
                while rows.rows.len() < MAX_PAGE_ROWS {
                    match seq.next_element::<&'a RawValue>()? {
                        Some(row) => rows.rows.push(row),
                        None => return Ok(rows),
                    }
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    rows.dropped += 1;
                }
                Ok(rows)
            }
        }
        deserializer.deserialize_seq(Visit(std::marker::PhantomData))
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Pagination {
    #[serde(default, alias = "hasMore")]
    pub has_more: Option<bool>,
    #[serde(default, alias = "nextCursor")]
    pub next_cursor: Option<String>,
}

/// A storage object; `GET /v1/{kind}/{id}` adds `current_version`.
#[derive(Debug, Deserialize)]
pub(crate) struct WireStorage {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, alias = "currentVersionId")]
    pub current_version_id: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default, alias = "fileCount")]
    pub file_count: Option<u64>,
    #[serde(default, alias = "createdAt")]
    pub created_at: Option<String>,
    #[serde(default, alias = "updatedAt")]
    pub updated_at: Option<String>,
    #[serde(default, alias = "currentVersion")]
    pub current_version: Option<WireVersion>,
}

/// A version object; the storage id is `volume_id` or `artifact_id` depending on the kind.
#[derive(Debug, Deserialize)]
pub(crate) struct WireVersion {
    pub id: String,
    #[serde(
        default,
        alias = "volume_id",
        alias = "volumeId",
        alias = "artifact_id",
        alias = "artifactId",
        alias = "storageId"
    )]
    pub storage_id: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default, alias = "fileCount")]
    pub file_count: Option<u64>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default, alias = "createdBy")]
    pub created_by: Option<String>,
    #[serde(default, alias = "createdAt")]
    pub created_at: Option<String>,
}

/// `{"error":{"type":…,"code":…,"message":…,"param"?:…,"doc_url"?:…}}`.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub param: Option<String>,
}

impl ErrorBody {
    /// The server's message for a user: `message (parameter p)`, falling back on the code.
    pub fn describe(&self) -> String {
        let mut text = match (&self.message, &self.code, &self.kind) {
            (Some(m), _, _) if !m.trim().is_empty() => m.trim().to_string(),
            (_, Some(c), _) => c.clone(),
            (_, _, Some(k)) => k.clone(),
            _ => "no message".to_string(),
        };
        if let Some(p) = &self.param {
            text.push_str(&format!(" (parameter {p})"));
        }
        text
    }
}

/// Parses an ISO-8601 / RFC 3339 timestamp (`2026-01-20T10:00:00.000Z`).
///
/// A missing or malformed timestamp becomes the Unix epoch rather than an error: a bad
/// date on one row must not hide every storage of the user.
pub(crate) fn parse_time(field: &str, value: Option<&str>) -> SystemTime {
    let Some(value) = value else {
        return SystemTime::UNIX_EPOCH;
    };
    match OffsetDateTime::parse(value, &Rfc3339) {
        Ok(t) => t.into(),
        Err(err) => {
            tracing::warn!(field, value, %err, "the VM0 API sent a malformed timestamp; using 1970-01-01");
            SystemTime::UNIX_EPOCH
        }
    }
}

impl WireStorage {
    pub fn into_storage(self) -> Storage {
        self.split().0
    }

    pub fn into_detail(self) -> StorageDetail {
        let (storage, current_version) = self.split();
        let current_version = current_version.and_then(|v| v.into_version(&storage.id));
        StorageDetail {
            storage,
            current_version,
        }
    }

    fn split(self) -> (Storage, Option<WireVersion>) {
        let name = StorageName::new(self.name.unwrap_or_else(|| self.id.clone()));
        // A current version id that is not a version id is dropped, so that `latest` can
        // only ever name a version directory.
        let current_version_id = self
            .current_version_id
            .filter(|v| !v.is_empty())
            .and_then(|v| match VersionId::parse(&v) {
                Ok(id) => Some(id),
                Err(e) => {
                    tracing::warn!(storage = %name, error = %e, "ignoring the storage's current version id");
                    None
                }
            });
        let storage = Storage {
            name,
            current_version_id,
            size: self.size.unwrap_or(0),
            file_count: self.file_count.unwrap_or(0),
            created_at: parse_time("created_at", self.created_at.as_deref()),
            updated_at: parse_time("updated_at", self.updated_at.as_deref()),
            id: StorageId::new(self.id),
        };
        (storage, self.current_version)
    }
}

impl WireVersion {
    /// `storage_id` is the storage the version was asked for, used when the server omits it.
    /// `None` (logged) for a version whose id is not a version id: nothing could name it
    /// safely, neither a directory of the mount nor a cache key.
    pub fn into_version(self, storage_id: &StorageId) -> Option<Version> {
        let id = match VersionId::parse(&self.id) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(storage = %storage_id, error = %e, "ignoring a version");
                return None;
            }
        };
        Some(Version {
            storage_id: self
                .storage_id
                .map_or_else(|| storage_id.clone(), StorageId::new),
            size: self.size,
            file_count: self.file_count,
            message: self.message,
            created_by: self.created_by,
            created_at: parse_time("created_at", self.created_at.as_deref()),
            id,
        })
    }
}

/// The start of a body, for an error message: lossy UTF-8, whitespace collapsed, at most
/// `max` characters.
pub(crate) fn snippet(body: &[u8], max: usize) -> String {
    if body.iter().all(u8::is_ascii_whitespace) {
        return "(empty body)".to_string();
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(max * 4)]);
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out: String = collapsed.chars().take(max).collect();
    if collapsed.chars().count() > max || body.len() > max * 4 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const V9B: &str = "9b2d000000000000000000000000000000000000000000000000000000000000";

    const SNAKE_STORAGE: &str = r#"{"id":"3f1c9a2e-6b1d-4c1e-9a55-0d2f7b8e4a10","name":"input-data",
        "current_version_id":"9b2d000000000000000000000000000000000000000000000000000000000000","size":4096,"file_count":2,
        "created_at":"2026-01-20T10:00:00.000Z","updated_at":"2026-01-21T09:30:00.000Z",
        "some_future_field":{"x":1}}"#;
    const CAMEL_STORAGE: &str = r#"{"id":"3f1c9a2e-6b1d-4c1e-9a55-0d2f7b8e4a10","name":"input-data",
        "currentVersionId":"9b2d000000000000000000000000000000000000000000000000000000000000","size":4096,"fileCount":2,
        "createdAt":"2026-01-20T10:00:00.000Z","updatedAt":"2026-01-21T09:30:00.000Z"}"#;

    fn at(secs: u64, millis: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn both_shapes_of_a_storage_decode_to_the_same_value() {
        let snake: WireStorage = serde_json::from_str(SNAKE_STORAGE).unwrap();
        let camel: WireStorage = serde_json::from_str(CAMEL_STORAGE).unwrap();
        let expected = Storage {
            id: "3f1c9a2e-6b1d-4c1e-9a55-0d2f7b8e4a10".into(),
            name: "input-data".into(),
            current_version_id: Some(VersionId::parse(V9B).unwrap()),
            size: 4096,
            file_count: 2,
            // date -u -d 2026-01-20T10:00:00Z +%s
            created_at: at(1_768_903_200, 0),
            updated_at: at(1_768_987_800, 0),
        };
        assert_eq!(snake.into_storage(), expected);
        assert_eq!(camel.into_storage(), expected);
    }

    #[test]
    fn both_shapes_of_a_version_decode_to_the_same_value() {
        let cases = [
            r#"{"id":"9b2d000000000000000000000000000000000000000000000000000000000000","volume_id":"v1","size":10,"file_count":1,"message":null,"created_by":"user","created_at":"2026-01-21T09:30:00.123Z"}"#,
            r#"{"id":"9b2d000000000000000000000000000000000000000000000000000000000000","volumeId":"v1","size":10,"fileCount":1,"message":null,"createdBy":"user","createdAt":"2026-01-21T09:30:00.123Z"}"#,
            r#"{"id":"9b2d000000000000000000000000000000000000000000000000000000000000","artifact_id":"v1","size":10,"file_count":1,"created_by":"user","created_at":"2026-01-21T09:30:00.123Z"}"#,
            r#"{"id":"9b2d000000000000000000000000000000000000000000000000000000000000","artifactId":"v1","size":10,"fileCount":1,"createdBy":"user","createdAt":"2026-01-21T09:30:00.123Z","extra":[1,2]}"#,
        ];
        for case in cases {
            let v: WireVersion = serde_json::from_str(case).unwrap();
            let v = v.into_version(&"other".into()).unwrap();
            assert_eq!(
                v,
                Version {
                    id: VersionId::parse(V9B).unwrap(),
                    storage_id: "v1".into(),
                    size: Some(10),
                    file_count: Some(1),
                    message: None,
                    created_by: Some("user".into()),
                    created_at: at(1_768_987_800, 123),
                },
                "{case}"
            );
        }
    }

    #[test]
    fn missing_optional_fields_are_tolerated() {
        let s: WireStorage = serde_json::from_str(r#"{"id":"a","name":"n"}"#).unwrap();
        let s = s.into_detail();
        assert_eq!(s.storage.current_version_id, None);
        assert_eq!(s.storage.size, 0);
        assert_eq!(s.storage.created_at, SystemTime::UNIX_EPOCH);
        assert_eq!(s.current_version, None);

        let v: WireVersion = serde_json::from_str(&format!(r#"{{"id":"{V9B}"}}"#)).unwrap();
        let v = v.into_version(&"a".into()).unwrap();
        assert_eq!(v.storage_id, "a");
        assert_eq!(v.created_by, None);
    }

    #[test]
    fn a_storage_detail_carries_its_current_version_in_both_shapes() {
        for (field, null) in [
            ("current_version", "current_version"),
            ("currentVersion", "currentVersion"),
        ] {
            let body = format!(
                r#"{{"id":"a","name":"n","{field}":{{"id":"{V9B}","size":3,"file_count":1,"created_at":"2026-01-20T10:00:00.000Z"}}}}"#
            );
            let d: WireStorage = serde_json::from_str(&body).unwrap();
            let d = d.into_detail();
            let v = d.current_version.expect("current version");
            assert_eq!(
                (v.id.as_str(), v.storage_id.as_str(), v.size),
                (V9B, "a", Some(3))
            );

            let body = format!(r#"{{"id":"a","name":"n","{null}":null}}"#);
            let d: WireStorage = serde_json::from_str(&body).unwrap();
            assert_eq!(d.into_detail().current_version, None);
        }
    }

    #[test]
    fn ids_that_are_not_version_ids_are_dropped() {
        // A version with such an id cannot be named in the mount or the cache: left out.
        for bad in ["9b2d", "../../etc", &V9B.to_uppercase()] {
            let v: WireVersion =
                serde_json::from_str(&format!(r#"{{"id":{bad:?},"size":1}}"#)).unwrap();
            assert_eq!(v.into_version(&"s".into()), None, "{bad}");
            // As a storage's current version, it is dropped: `latest` names no sibling.
            let s: WireStorage = serde_json::from_str(&format!(
                r#"{{"id":"s","name":"n","current_version_id":{bad:?}}}"#
            ))
            .unwrap();
            assert_eq!(s.into_storage().current_version_id, None, "{bad}");
        }
    }

    #[test]
    fn both_shapes_of_pagination_decode() {
        let snake: Page<'_> = serde_json::from_str(
            r#"{"data":[{"id":"a"}],"pagination":{"has_more":true,"next_cursor":"c1"}}"#,
        )
        .unwrap();
        let camel: Page<'_> = serde_json::from_str(
            r#"{"data":[{"id":"a"}],"pagination":{"hasMore":true,"nextCursor":"c1"}}"#,
        )
        .unwrap();
        for page in [snake, camel] {
            let p = page.pagination.unwrap();
            assert_eq!(
                (p.has_more, p.next_cursor.as_deref()),
                (Some(true), Some("c1"))
            );
            assert_eq!(page.data.rows.len(), 1);
            assert_eq!(page.data.rows[0].get(), r#"{"id":"a"}"#);
        }
        let last: Page<'_> = serde_json::from_str(
            r#"{"data":[],"pagination":{"has_more":false,"next_cursor":null}}"#,
        )
        .unwrap();
        assert_eq!(last.pagination.unwrap().has_more, Some(false));
        let bare: Page<'_> = serde_json::from_str(r#"{"data":[]}"#).unwrap();
        assert!(bare.pagination.is_none());
    }

    #[test]
    fn bodies_that_are_not_pages_are_errors() {
        for body in [
            "",
            "<html>",
            r#"{"data":{}}"#,
            r#"{"rows":[]}"#,
            r#"{"data":[1,"#,
        ] {
            assert!(serde_json::from_str::<Page<'_>>(body).is_err(), "{body}");
        }
    }

    #[test]
    fn rows_that_do_not_decode_leave_their_page_readable() {
        // Each is a row of its page as it stands; only its own decoding fails.
        let rows = [
            r#"{"id":5,"name":"n"}"#,
            r#"{"id":"a","name":5}"#,
            r#"{"id":"a","size":-1}"#,
            r#"{"id":"a","name":"\ud800"}"#,
            r#"{"name":"no id"}"#,
            r#"7"#,
        ];
        let body = format!(r#"{{"data":[{},{{"id":"ok"}}]}}"#, rows.join(","));
        let page: Page<'_> = serde_json::from_str(&body).unwrap();
        assert_eq!(page.data.rows.len(), rows.len() + 1);
        for (raw, want) in page.data.rows.iter().zip(rows) {
            assert_eq!(raw.get(), want);
            assert!(
                serde_json::from_str::<WireStorage>(raw.get()).is_err(),
                "{want}"
            );
        }
        let last = page.data.rows[rows.len()].get();
        assert_eq!(serde_json::from_str::<WireStorage>(last).unwrap().id, "ok");
    }

    #[test]
    fn rows_past_the_cap_are_counted_not_kept() {
        let n = MAX_PAGE_ROWS + 2345;
        let body = format!(
            r#"{{"data":[{}],"pagination":{{"has_more":false}}}}"#,
            vec![r#"{"id":"x","deep":[[1],{"a":"\ud800"}]}"#; n].join(",")
        );
        let page: Page<'_> = serde_json::from_str(&body).unwrap();
        assert_eq!(page.data.rows.len(), MAX_PAGE_ROWS);
        assert_eq!(page.data.dropped, 2345);
        assert_eq!(page.pagination.unwrap().has_more, Some(false));
    }

    #[test]
    fn timestamps_parse_with_and_without_millis_and_malformed_ones_fall_back() {
        assert_eq!(
            parse_time("t", Some("2026-01-20T10:00:00.000Z")),
            at(1_768_903_200, 0)
        );
        assert_eq!(
            parse_time("t", Some("2026-01-20T10:00:00Z")),
            at(1_768_903_200, 0)
        );
        assert_eq!(
            parse_time("t", Some("2026-01-20T11:00:00.5+01:00")),
            at(1_768_903_200, 500)
        );
        assert_eq!(parse_time("t", Some("yesterday")), SystemTime::UNIX_EPOCH);
        assert_eq!(parse_time("t", None), SystemTime::UNIX_EPOCH);
    }

    #[test]
    fn error_bodies_describe_themselves() {
        let e: ErrorEnvelope = serde_json::from_str(
            r#"{"error":{"type":"invalid_request_error","code":"invalid_parameter","message":"Bad limit","param":"limit","doc_url":"x"}}"#,
        )
        .unwrap();
        assert_eq!(e.error.describe(), "Bad limit (parameter limit)");
        let e: ErrorEnvelope =
            serde_json::from_str(r#"{"error":{"code":"internal_error"}}"#).unwrap();
        assert_eq!(e.error.describe(), "internal_error");
    }

    #[test]
    fn snippets_are_short_and_single_line() {
        assert_eq!(snippet(b"", 10), "(empty body)");
        assert_eq!(snippet(b"  \n", 10), "(empty body)");
        assert_eq!(
            snippet(b"<html>\n  <b>Bad gateway</b>", 100),
            "<html> <b>Bad gateway</b>"
        );
        assert_eq!(snippet(&[b'x'; 1000], 5), "xxxxx…");
    }
}
