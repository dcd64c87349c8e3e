//! The event stream of a run, `GET /v1/runs/{id}/events`: server-sent events
//! (`text/event-stream`) written as the run changes.
//!
//! - `event: status` `{"status","run_id"}` first and on every change of status;
//! - `event: output` with `id: <sequence>` `{"sequence","type","data","timestamp"}` for each
//!   output event after `last_event_id` (only for a run that was live when the stream
//!   started: a finished run sends `status` then `complete` at once, as the contract says);
//! - `event: heartbeat` every `heartbeat_ms` (15 s by default; the runtime configuration
//!   can shorten it for tests);
//! - `event: complete` `{"status","output","error"}` once the run is final, then the
//!   response ends.
//!
//! The stream writes the HTTP answer on the connection itself (chunked, flushed after every
//! event), on the connection's own thread (`http`), so a long stream holds nothing that
//! another request needs; it ends when the run ends, when a write fails because the client
//! went away (within two heartbeats: the first write after the client closed can still
//! succeed), or when the emulator stops. The checks
//! that answer JSON errors (token, unknown run) are `runs_api`'s, before the stream starts.

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::http::{Flow, Request};
use crate::model::{format_timestamp, now_ms};
use crate::runs::{OutputEvent, RunStatus};
use crate::wire::{request_id, Json};
use crate::Shared;

/// A stream that passed its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventStream {
    pub run_id: String,
    /// Output events up to this sequence number are not sent (`last_event_id`).
    pub after: u64,
}

/// Streams the run's events on the request's connection, on the connection's own thread;
/// returns when the stream ends. The connection stays open after a chunked stream.
pub(crate) fn serve(
    shared: &Shared,
    stream: &mut TcpStream,
    request: &Request,
    events: &EventStream,
) -> io::Result<Flow> {
    // Chunked framing needs HTTP/1.1; a 1.0 client reads until the connection closes.
    let chunked = request.http11;
    shared.runs.open_streams.fetch_add(1, Ordering::SeqCst);
    let mut out = Out {
        writer: stream,
        chunked,
    };
    let result = stream_events(shared, events, &mut out);
    shared.runs.open_streams.fetch_sub(1, Ordering::SeqCst);
    match result {
        Ok(()) if chunked => Ok(Flow::KeepAlive),
        Ok(()) => Ok(Flow::Close),
        Err(err) => {
            tracing::debug!(run = %events.run_id, %err, "event stream ended early");
            Ok(Flow::Close)
        }
    }
}

/// The raw side of the connection.
struct Out<'a> {
    writer: &'a mut TcpStream,
    chunked: bool,
}

impl Out<'_> {
    fn head(&mut self) -> io::Result<()> {
        let framing = if self.chunked {
            "Transfer-Encoding: chunked"
        } else {
            "Connection: close"
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
             X-Request-Id: {}\r\nX-API-Version: v1\r\n{framing}\r\n\r\n",
            request_id()
        );
        self.writer.write_all(head.as_bytes())?;
        self.writer.flush()
    }

    fn event(&mut self, id: Option<u64>, name: &str, data: &Json) -> io::Result<()> {
        let mut text = String::new();
        if let Some(id) = id {
            text.push_str(&format!("id: {id}\n"));
        }
        text.push_str(&format!("event: {name}\ndata: {}\n\n", data.render()));
        // One write per event: with Nagle off, each write is a segment of its own.
        if self.chunked {
            text = format!("{:x}\r\n{text}\r\n", text.len());
        }
        self.writer.write_all(text.as_bytes())?;
        self.writer.flush()
    }

    /// Ends the response (the connection stays open for further requests when chunked).
    fn end(&mut self) -> io::Result<()> {
        if self.chunked {
            self.writer.write_all(b"0\r\n\r\n")?;
        }
        self.writer.flush()
    }
}

/// What one look at the run found.
struct Snapshot {
    status: RunStatus,
    outputs: Vec<OutputEvent>,
    output: Option<String>,
    error: Option<String>,
}

fn stream_events(shared: &Shared, stream: &EventStream, out: &mut Out<'_>) -> io::Result<()> {
    out.head()?;
    let started = Instant::now();
    let mut heartbeats = 0u32;
    let mut sent_status = None;
    let mut sent_sequence = stream.after;
    // Whether the run was live when the stream started: only then are outputs sent.
    let mut live = None;
    loop {
        if shared.runs.stopping() {
            return Err(io::Error::other("the emulator is stopping"));
        }
        let seen = shared.runs.generation();
        let (shape, heartbeat_ms) = {
            let runtime = shared.runtime.read();
            (runtime.shape, runtime.heartbeat_ms.max(1))
        };
        let snapshot = {
            let data = shared.runs.data.read();
            let Some(run) = data.run(&stream.run_id) else {
                // Runs are never removed; answer as for a run that cannot be followed.
                return out.end();
            };
            let was_live = *live.get_or_insert(!run.status.is_final());
            // Sequences are 1, 2, 3...: the events after N start at index N.
            let first = run.events.partition_point(|e| e.sequence <= sent_sequence);
            Snapshot {
                status: run.status,
                outputs: if was_live {
                    run.events[first..].to_vec()
                } else {
                    Vec::new()
                },
                output: run.output.clone(),
                error: run.error.clone(),
            }
        };
        if sent_status != Some(snapshot.status) {
            let data = Json::obj()
                .with("status", snapshot.status.as_str())
                .with(&shape.key("run_id"), stream.run_id.as_str());
            out.event(None, "status", &data)?;
            sent_status = Some(snapshot.status);
        }
        for event in &snapshot.outputs {
            out.event(Some(event.sequence), "output", &output_json(event))?;
            sent_sequence = event.sequence;
        }
        if snapshot.status.is_final() {
            let data = Json::obj()
                .with("status", snapshot.status.as_str())
                .with("output", snapshot.output)
                .with("error", snapshot.error);
            out.event(None, "complete", &data)?;
            return out.end();
        }
        let period = Duration::from_millis(heartbeat_ms);
        let next_heartbeat = period * (heartbeats + 1);
        let elapsed = started.elapsed();
        if elapsed >= next_heartbeat {
            let data = Json::obj().with("timestamp", format_timestamp(now_ms()));
            out.event(None, "heartbeat", &data)?;
            // Skip the beats missed while waiting, so a slow client is not sent a burst.
            heartbeats =
                u32::try_from(elapsed.as_millis() / u128::from(heartbeat_ms)).unwrap_or(u32::MAX);
            continue;
        }
        shared
            .runs
            .wait_for_change(seen, next_heartbeat.saturating_sub(elapsed));
    }
}

fn output_json(event: &OutputEvent) -> Json {
    // Single-word fields: the same in both shapes; `data` is the agent's, served as it is.
    Json::obj()
        .with("sequence", event.sequence)
        .with("type", event.kind.as_str())
        .with("data", Json::from(event.data.clone()))
        .with("timestamp", format_timestamp(event.timestamp_ms))
}
