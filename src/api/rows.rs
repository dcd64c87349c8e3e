//! Reading the rows of list pages one by one: a row that does not decode (`"name": 5`, an
//! id that is a number, `"size": -1`, a lone surrogate in a string) is left out and
//! reported, and the rest of the listing is served. One such row used to make its whole
//! listing "not the documented JSON", and with it every storage of the user.
//!
//! What was left out is logged once per listing (one WARN naming the rows by position and
//! id, and why), not once per row: a listing is fetched again at every TTL.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::answer::{Answer, Resource};
use super::client::Client;
use super::wire::{self, Page, Pagination, MAX_PAGE_ROWS};
use super::ApiError;

/// Rows named one by one in the WARN of a listing; the others are counted.
const NAMED_ROWS: usize = 5;

/// What a listing left out, reported once by [`Skipped::report`].
#[derive(Debug)]
pub(crate) struct Skipped<'r> {
    resource: &'r Resource,
    /// `row 3 of page 1 (id 5): why`, the first [`NAMED_ROWS`] of them.
    named: Vec<String>,
    rows: u64,
    /// Rows past [`MAX_PAGE_ROWS`] of a page, and on how many pages.
    over_cap: u64,
    pages_over_cap: u64,
}

impl<'r> Skipped<'r> {
    pub fn new(resource: &'r Resource) -> Skipped<'r> {
        Skipped {
            resource,
            named: Vec::new(),
            rows: 0,
            over_cap: 0,
            pages_over_cap: 0,
        }
    }

    /// Row `index` (from 0) of page `page` (from 1) did not decode, for `why`.
    pub fn row(&mut self, page: usize, index: usize, raw: &RawValue, why: &str) {
        self.rows += 1;
        if self.named.len() < NAMED_ROWS {
            let id = match row_id(raw) {
                Some(id) => format!(" (id {id})"),
                None => String::new(),
            };
            self.named
                .push(format!("row {} of page {page}{id}: {why}", index + 1));
        }
    }

    /// Logs what was left out, once; nothing when nothing was.
    pub fn report(self) {
        if self.rows > 0 {
            let more = self.rows - self.named.len() as u64;
            let rows = if more > 0 {
                format!("{}; and {more} more", self.named.join("; "))
            } else {
                self.named.join("; ")
            };
            tracing::warn!(
                resource = %self.resource.what,
                skipped = self.rows,
                rows = %rows,
                "left out {} of {} that the VM0 API sent in a form vm0fs cannot read; the other rows are listed",
                plural(self.rows, "row"),
                self.resource.what,
            );
        }
        if self.over_cap > 0 {
            tracing::warn!(
                resource = %self.resource.what,
                dropped = self.over_cap,
                pages = self.pages_over_cap,
                "left out {} of {}: past the first {MAX_PAGE_ROWS} rows of a page (the API sends at most 100 a page)",
                plural(self.over_cap, "row"),
                self.resource.what,
            );
        }
    }
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The `id` of a row as the server wrote it (`5`, `"abc"`), shortened, if the row is an
/// object that has one.
fn row_id(raw: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
    }
    let id = serde_json::from_str::<Id<'_>>(raw.get()).ok()?.id?;
    Some(wire::snippet(id.get().as_bytes(), 80))
}

impl Client {
    /// The rows of a 2xx list page that `convert` accepts, and its pagination. Rows that
    /// `convert` refuses (with why) and rows past the cap are noted in `skipped`.
    pub(super) fn decode_page_with<W>(
        &self,
        answer: &Answer,
        resource: &Resource,
        page: usize,
        skipped: &mut Skipped<'_>,
        mut convert: impl FnMut(&str) -> Result<W, String>,
    ) -> Result<(Vec<W>, Pagination), ApiError> {
        // Bytes that are not UTF-8 spoil only the strings that hold them (as U+FFFD), not
        // the page.
        let text: Cow<'_, str> = String::from_utf8_lossy(&answer.body);
        let raw: Page<'_> = self.decode_text(answer, resource, &text)?;
        if raw.data.dropped > 0 {
            skipped.over_cap += raw.data.dropped;
            skipped.pages_over_cap += 1;
        }
        let mut rows = Vec::with_capacity(raw.data.rows.len());
        for (index, row) in raw.data.rows.iter().enumerate() {
            match convert(row.get()) {
                Ok(w) => rows.push(w),
                Err(why) => skipped.row(page, index, row, &why),
            }
        }
        Ok((rows, raw.pagination.unwrap_or_default()))
    }
}
