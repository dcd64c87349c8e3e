//! The HTTP/1.1 server that both listeners (the API and the object store) run on: one
//! thread per accepted connection, up to a bound, and a clear `503` beyond it. It owns
//! accepting, reading request heads and bodies, keep-alive, and closing every connection
//! on shutdown; what a request gets is the [`Handler`]'s business (`api`, `store`).
//! Rooms: `server` accepts and runs the connections, `parse` reads requests; this file
//! holds the types they share and the writing of answers.
//!
//! Why a thread per connection, and not a pool of workers (issue 18): the API listener
//! used to be `tiny_http`, which hands every accepted connection to a task pool as one task
//! that lasts as long as the connection, so a client's idle kept-alive connection holds a
//! pool thread. The pool starts a new thread only when it counts no idle one, and a thread
//! stops counting as idle only once it has woken up and taken its task. Connections that
//! arrive together (eight cold storages first touched at once) are all queued for the same
//! idle threads before these wake; each thread takes one, and the others stay queued, their
//! requests unread in their sockets, until some connection closes, which a client's pool
//! does only after it has been idle for 90 s. The busier the machine, the later the woken
//! threads run and the wider that window: clients saw 30 s without a byte. Here the accept
//! loop starts the connection's own thread before it accepts the next connection, so no
//! accepted request ever waits behind another one.
//!
//! The bound ([`EmulatorConfig::max_connections`](crate::EmulatorConfig)) keeps a runaway
//! client from exhausting threads: a connection beyond it gets the handler's `503` with
//! `Retry-After` and is closed, so the client sees at once why, instead of a hang.

mod parse;
mod server;

pub(crate) use server::Server;

use std::fmt;
use std::io;
use std::net::TcpStream;
use std::time::Duration;

/// A request method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Other(String),
}

impl Method {
    pub(super) fn parse(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            other => Method::Other(other.to_string()),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Other(other) => other,
        })
    }
}

/// A request, its body read.
#[derive(Debug)]
pub(crate) struct Request {
    pub method: Method,
    /// The request target as sent: path and query, not decoded.
    pub target: String,
    /// `HTTP/1.1` (else 1.0).
    pub http11: bool,
    /// Names lowercased, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the client keeps the connection for another request.
    pub keep_alive: bool,
}

impl Request {
    /// The first value of a header, by its lowercase name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The target's path and query (without the `?`).
    pub fn path_and_query(&self) -> (&str, &str) {
        self.target
            .split_once('?')
            .unwrap_or((self.target.as_str(), ""))
    }
}

/// What happens to the connection after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// The answer is complete: the next request may follow (if the client keeps the
    /// connection).
    KeepAlive,
    /// Close the connection (the answer's framing needs it, or a fault cut it).
    Close,
}

/// What a listener answers.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Answers one request on the connection.
    fn handle(&self, stream: &mut TcpStream, request: Request) -> io::Result<Flow>;

    /// A whole answer (head and body, with `Connection: close`) for a request refused before
    /// it reached [`Handler::handle`]: `status` 400, 413, 431, 505, or 503 when the
    /// connection is over the bound.
    fn refusal(&self, status: u16, message: &str) -> Vec<u8>;
}

/// How a listener serves its connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections served at once; more get `503`.
    pub max_connections: usize,
    /// Largest request body read; a larger one gets `413`.
    pub max_body: u64,
    /// An idle kept-alive connection is closed after this long, so its thread ends.
    pub idle_timeout: Duration,
}

/// `HTTP/1.1 <status> <reason>\r\n`.
pub(crate) fn status_line(status: u16) -> String {
    let reason = match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    };
    format!("HTTP/1.1 {status} {reason}\r\n")
}

/// `Date:` header value (RFC 9110 IMF-fixdate).
pub(crate) fn http_date(secs: i64) -> String {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[t.weekday().number_days_from_monday() as usize],
        t.day(),
        MONTHS[u8::from(t.month()) as usize - 1],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A whole answer with a body: status line, `Date`, the given headers, `Content-Length`,
/// `Connection: close` unless `keep_alive`, then the body (not for a HEAD request).
pub(crate) fn answer(
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
    head_only: bool,
) -> Vec<u8> {
    let mut head = status_line(status);
    head.push_str(&format!(
        "Date: {}\r\n",
        http_date(crate::model::now_ms() / 1000)
    ));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(http_date(1_768_903_200), "Tue, 20 Jan 2026 10:00:00 GMT");
    }
}
