//! What the client reads off the wire, bounded: a body read up to a limit and a deadline
//! ([`read_body`]), whether a failure is a stall ([`is_stall`]), and how a server is named
//! in messages ([`host_port`]: never by its URL, whose query may hold a signature).

use std::io::{self, Read};
use std::time::{Duration, Instant};

use reqwest::Url;

/// A body read up to a limit.
pub(super) struct Body {
    pub(super) bytes: Vec<u8>,
    /// More bytes followed the `limit` read: the body is not whole.
    pub(super) truncated: bool,
}

/// Reads a (small) body, at most `limit` bytes of it; each read is bounded by the client's
/// timeout, the whole by `deadline`, checked between reads (a server that trickles a byte
/// at a time).
pub(super) fn read_body(
    response: reqwest::blocking::Response,
    deadline: Option<Duration>,
    limit: u64,
) -> io::Result<Body> {
    let started = Instant::now();
    // One byte past the limit tells a body of exactly `limit` bytes from a longer one.
    let mut reader = response.take(limit + 1);
    let mut body = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
        if let Some(deadline) = deadline.filter(|d| started.elapsed() > *d) {
            return Err(io::Error::other(format!(
                "the answer was still incomplete after {}",
                super::error::seconds(deadline)
            )));
        }
    }
    let truncated = body.len() as u64 > limit;
    body.truncate(limit as usize);
    Ok(Body {
        bytes: body,
        truncated,
    })
}

/// Whether a failure is a timeout of a request or of a read (not of the connection: a
/// server that cannot be connected to is unreachable, not stalled).
pub(crate) fn is_stall(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(err) = err.downcast_ref::<reqwest::Error>() {
            return err.is_timeout() && !err.is_connect();
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::TimedOut {
                return true;
            }
            // `io::Error::source` skips the error it wraps: look at that one first.
            if let Some(inner) = io.get_ref() {
                next = Some(inner);
                continue;
            }
        }
        next = err.source();
    }
    false
}

/// `host:port` of a URL, for messages (the port is the scheme's when the URL has none).
pub(crate) fn host_port(url: &Url) -> Option<String> {
    let host = url.host()?;
    Some(match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    })
}
