//! The HTTP/1.1 server that both listeners (the API and the object store) run on: one
//! thread per accepted connection, up to a bound, and a clear `503` beyond it. It owns
//! accepting, reading request heads and bodies, keep-alive, and closing every connection
//! on shutdown; what a request gets is the [`Handler`]'s business (`api`, `store`).
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

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Longest request head accepted; a client's request is far smaller.
const MAX_HEAD: usize = 64 * 1024;
/// How long a shutdown waits for the threads of the connections it cut (a delayed answer
/// finishes its delay first).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);
/// How long the accept loop reads what a refused connection sent before answering `503`:
/// closing a socket with unread data resets it, and the client would lose the answer.
const REFUSAL_READ: Duration = Duration::from_millis(50);

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
    fn parse(s: &str) -> Method {
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

/// The connections being served, each by a clone of its socket, so that a shutdown can cut
/// them.
struct Connections {
    open: Mutex<HashMap<u64, TcpStream>>,
    next: AtomicU64,
    ended: Condvar,
}

impl Connections {
    /// Registers a connection; `None` when `max` are open already.
    fn register(&self, stream: &TcpStream, max: usize) -> Option<u64> {
        let clone = stream.try_clone().ok()?;
        let mut open = self.open.lock();
        if open.len() >= max {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        open.insert(id, clone);
        Some(id)
    }

    fn unregister(&self, id: u64) {
        let mut open = self.open.lock();
        open.remove(&id);
        if open.is_empty() {
            self.ended.notify_all();
        }
    }

    /// Shuts every open connection down: their threads read end-of-file (or fail to
    /// write) and end, and their clients see the connection closed.
    fn cut_all(&self) {
        for stream in self.open.lock().values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Waits until every connection thread has ended, or `limit`.
    fn wait_all_ended(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut open = self.open.lock();
        while !open.is_empty() {
            if self.ended.wait_until(&mut open, deadline).timed_out() {
                return open.is_empty();
            }
        }
        true
    }
}

/// A running listener.
pub(crate) struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    connections: Arc<Connections>,
}

impl Server {
    /// Starts accepting on `listener`; `name` names the threads (`<name>-accept`,
    /// `<name>-conn`).
    pub fn spawn(
        name: &'static str,
        listener: TcpListener,
        limits: Limits,
        handler: Arc<dyn Handler>,
    ) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Connections {
            open: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            ended: Condvar::new(),
        });
        let accept = {
            let (stop, connections) = (Arc::clone(&stop), Arc::clone(&connections));
            std::thread::Builder::new()
                .name(format!("{name}-accept"))
                .spawn(move || {
                    accept_loop(name, &listener, limits, &handler, &stop, &connections)
                })?
        };
        Ok(Server {
            addr,
            stop,
            accept: Some(accept),
            connections,
        })
    }

    /// Stops as the exit of the process would: the listener closed (new connections
    /// refused) and every open connection cut. Then waits for the connections' threads.
    pub fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // The accept loop only sees the flag when a connection arrives: make one. (It
        // fails only if the loop has ended already.)
        let _ = TcpStream::connect(self.addr);
        // The accept thread owns the listener: once it has ended, the listener is closed.
        let _ = accept.join();
        self.connections.cut_all();
        if !self.connections.wait_all_ended(SHUTDOWN_WAIT) {
            tracing::warn!(addr = %self.addr, "connection threads still running after the shutdown");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(
    name: &'static str,
    listener: &TcpListener,
    limits: Limits,
    handler: &Arc<dyn Handler>,
    stop: &AtomicBool,
    connections: &Arc<Connections>,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match conn {
            Ok(stream) => stream,
            Err(err) => {
                // Out of descriptors, or a connection reset before it was accepted: the
                // listener itself is fine. A short pause keeps a persistent error (EMFILE)
                // from spinning.
                tracing::warn!(listener = name, %err, "cannot accept a connection");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        // Answers are written head then body: without Nagle off, a small body would wait
        // for the head's ACK, which a client on a kept-alive connection delays by 40 ms.
        let _ = stream.set_nodelay(true);
        let Some(id) = connections.register(&stream, limits.max_connections) else {
            refuse(name, stream, handler.as_ref(), limits.max_connections);
            continue;
        };
        let (conn_handler, conn_connections) = (Arc::clone(handler), Arc::clone(connections));
        let refused = stream.try_clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-conn"))
            .spawn(move || {
                serve_connection(stream, conn_handler.as_ref(), limits);
                conn_connections.unregister(id);
            });
        if let Err(err) = spawned {
            tracing::error!(listener = name, %err, "cannot start a connection thread");
            connections.unregister(id);
            if let Ok(stream) = refused {
                refuse(name, stream, handler.as_ref(), limits.max_connections);
            }
        }
    }
}

/// Answers `503` on a connection that cannot be served, and closes it.
fn refuse(name: &str, mut stream: TcpStream, handler: &dyn Handler, max: usize) {
    tracing::warn!(
        listener = name,
        max_connections = max,
        "too many connections: answering 503"
    );
    // Read what the client sent so far (its request, normally), so that closing the
    // socket does not reset it before the client reads the answer.
    let _ = stream.set_read_timeout(Some(REFUSAL_READ));
    let mut buf = [0u8; 4096];
    let _ = stream.read(&mut buf);
    let message =
        format!("the emulator serves at most {max} connections at once; close idle ones or retry");
    let _ = stream.write_all(&handler.refusal(503, &message));
    let _ = stream.shutdown(Shutdown::Write);
}

fn serve_connection(stream: TcpStream, handler: &dyn Handler, limits: Limits) {
    let _ = stream.set_read_timeout(Some(limits.idle_timeout));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut stream = stream;
    loop {
        let request = match read_request(&mut reader, &mut stream, limits.max_body) {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(Refusal::Io(err)) => {
                tracing::debug!(%err, "connection ended while reading a request");
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
            Err(Refusal::Status(status, message)) => {
                tracing::debug!(status, %message, "refused a request");
                let _ = stream.write_all(&handler.refusal(status, &message));
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
        };
        let keep_alive = request.keep_alive;
        match handler.handle(&mut stream, request) {
            Ok(Flow::KeepAlive) if keep_alive => {}
            Ok(_) => {
                let _ = stream.flush();
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
            Err(err) => {
                tracing::debug!(%err, "connection failed");
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// Why a request was not read.
#[derive(Debug)]
enum Refusal {
    /// The connection failed or ended in the middle of a request: nothing to answer.
    Io(io::Error),
    /// Answer this status with this message, then close.
    Status(u16, String),
}

impl From<io::Error> for Refusal {
    fn from(err: io::Error) -> Refusal {
        Refusal::Io(err)
    }
}

fn bad(message: impl Into<String>) -> Refusal {
    Refusal::Status(400, message.into())
}

/// Reads one line of a request head (without its CRLF), counting it against `total`.
fn head_line(reader: &mut impl BufRead, total: &mut usize) -> Result<Option<String>, Refusal> {
    let mut line = Vec::new();
    let n = (&mut *reader)
        .take((MAX_HEAD - *total) as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    *total += n;
    if *total > MAX_HEAD {
        return Err(Refusal::Status(
            431,
            format!("the request head is larger than {MAX_HEAD} bytes"),
        ));
    }
    if line.last() != Some(&b'\n') {
        return Err(Refusal::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the connection ended in the middle of a request head",
        )));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| bad("the request head is not valid UTF-8"))
}

/// Reads one request, its body included; `None` when the client closed an idle connection
/// (or it stayed idle past the idle timeout).
fn read_request(
    reader: &mut impl BufRead,
    stream: &mut impl Write,
    max_body: u64,
) -> Result<Option<Request>, Refusal> {
    let mut total = 0;
    let first = loop {
        let line = match head_line(reader, &mut total) {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(None),
            // Idle past the timeout between requests: close quietly.
            Err(Refusal::Io(err))
                if total == 0
                    && matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
            {
                return Ok(None)
            }
            Err(err) => return Err(err),
        };
        // Stray CRLFs between requests are allowed (RFC 9112, 2.2).
        if !line.is_empty() {
            break line;
        }
    };
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(format!("malformed request line {first:?}")));
    };
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        v if v.starts_with("HTTP/") => {
            return Err(Refusal::Status(
                505,
                format!("{v} is not supported: use HTTP/1.1"),
            ))
        }
        _ => return Err(bad(format!("malformed request line {first:?}"))),
    };
    if method.is_empty() || target.is_empty() {
        return Err(bad(format!("malformed request line {first:?}")));
    }
    let mut headers = Vec::new();
    loop {
        let Some(line) = head_line(reader, &mut total)? else {
            return Err(Refusal::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection ended in the middle of a request head",
            )));
        };
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("malformed header line {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let keep_alive = match header("connection") {
        Some(v) if v.contains("close") => false,
        Some(v) if v.contains("keep-alive") => true,
        _ => http11,
    };
    let chunked = match header("transfer-encoding") {
        None => false,
        Some(v) if v == "chunked" => true,
        Some(v) => {
            return Err(Refusal::Status(
                501,
                format!(
                    "transfer-encoding {v:?} is not supported: send chunked or a Content-Length"
                ),
            ))
        }
    };
    let length = match header("content-length") {
        None => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| bad(format!("invalid Content-Length {v:?}")))?,
        ),
    };
    if length.is_some_and(|len| len > max_body) {
        return Err(too_large(max_body));
    }
    // A client that waits for a go-ahead before its body (curl does for large ones).
    if (chunked || length.unwrap_or(0) > 0)
        && header("expect").is_some_and(|v| v == "100-continue")
        && http11
    {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        stream.flush()?;
    }
    let body = if chunked {
        read_chunked(reader, max_body)?
    } else {
        let len = length.unwrap_or(0);
        let mut body = Vec::with_capacity(usize::try_from(len.min(1 << 20)).unwrap_or(0));
        let n = (&mut *reader).take(len).read_to_end(&mut body)?;
        if (n as u64) < len {
            return Err(Refusal::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection ended in the middle of a request body",
            )));
        }
        body
    };
    Ok(Some(Request {
        method: Method::parse(method),
        target: target.to_string(),
        http11,
        headers,
        body,
        keep_alive,
    }))
}

fn too_large(max_body: u64) -> Refusal {
    Refusal::Status(
        413,
        format!("the request body is larger than the {max_body} bytes accepted"),
    )
}

/// A chunked body (RFC 9112, 7.1), trailers skipped.
fn read_chunked(reader: &mut impl BufRead, max_body: u64) -> Result<Vec<u8>, Refusal> {
    let mut body = Vec::new();
    let mut total = 0;
    loop {
        let line = head_line(reader, &mut total)?
            .ok_or_else(|| bad("the connection ended in a chunked body"))?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16)
            .map_err(|_| bad(format!("invalid chunk size {size:?}")))?;
        if size == 0 {
            while head_line(reader, &mut total)?.is_some_and(|l| !l.is_empty()) {}
            return Ok(body);
        }
        if body.len() as u64 + size > max_body {
            return Err(too_large(max_body));
        }
        let before = body.len();
        (&mut *reader).take(size).read_to_end(&mut body)?;
        if (body.len() - before) as u64 != size {
            return Err(bad("the connection ended in a chunk"));
        }
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(bad("a chunk does not end with CRLF"));
        }
        // Chunk-size lines are not the head: count them only against their own length.
        total = 0;
    }
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

    fn parse(raw: &str, max_body: u64) -> Result<Option<Request>, Refusal> {
        let mut sent = Vec::new();
        read_request(&mut raw.as_bytes(), &mut sent, max_body)
    }

    fn status(raw: &str, max_body: u64) -> u16 {
        match parse(raw, max_body) {
            Err(Refusal::Status(status, _)) => status,
            Err(Refusal::Io(err)) => panic!("{raw:?}: an I/O error: {err}"),
            Ok(_) => panic!("{raw:?} was accepted"),
        }
    }

    #[test]
    fn requests_with_and_without_bodies() {
        let r = parse("GET /v1/volumes?limit=2 HTTP/1.1\r\nHost: x\r\n\r\n", 10)
            .unwrap()
            .unwrap();
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path_and_query(), ("/v1/volumes", "limit=2"));
        assert!(r.keep_alive && r.http11 && r.body.is_empty());
        let r = parse(
            "\r\nPOST /x HTTP/1.0\r\nContent-Length: 3\r\n\r\nabcGET",
            10,
        )
        .unwrap()
        .unwrap();
        assert_eq!((r.body.as_slice(), r.keep_alive), (&b"abc"[..], false));
        let r = parse(
            "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: t\r\n\r\n",
            10,
        )
        .unwrap()
        .unwrap();
        assert_eq!((r.body.as_slice(), r.keep_alive), (&b"abcde"[..], false));
        assert!(parse("", 10).unwrap().is_none());
    }

    #[test]
    fn expect_continue_gets_a_go_ahead() {
        let mut sent = Vec::new();
        let raw = "POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok";
        let r = read_request(&mut raw.as_bytes(), &mut sent, 10)
            .ok()
            .flatten()
            .unwrap();
        assert_eq!(r.body, b"ok");
        assert_eq!(sent, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn refusals() {
        assert_eq!(status("GET /\r\n\r\n", 10), 400);
        assert_eq!(status("GET / HTTP/2.0\r\n\r\n", 10), 505);
        assert_eq!(status("GET / HTTP/1.1\r\nno colon\r\n\r\n", 10), 400);
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", 10),
            413
        );
        assert_eq!(
            status(
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n",
                10
            ),
            413
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 10),
            501
        );
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(status(&huge, 10), 431);
    }

    #[test]
    fn dates() {
        assert_eq!(http_date(1_768_903_200), "Tue, 20 Jan 2026 10:00:00 GMT");
    }
}
