//! Reading one request from a connection: the head (bounded), the body by
//! `Content-Length` or chunked (bounded), and the `100 Continue` a client may wait for.

use std::io::{self, BufRead, Read, Write};

use super::{Method, Request};

/// Longest request head accepted; a client's request is far smaller.
const MAX_HEAD: usize = 64 * 1024;

/// Why a request was not read.
#[derive(Debug)]
pub(super) enum Refusal {
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
pub(super) fn read_request(
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
        if (body.len() as u64).saturating_add(size) > max_body {
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
            status(
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
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
}
