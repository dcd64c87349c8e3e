//! The event streams of live runs: every live run that is read has its stream recorded in
//! its `events.jsonl`, at most [`super::MAX_STREAMS`] at once. Each connection lasts a turn
//! at most ([`turn`]: [`STREAM_TURN`], shorter as more runs wait); then the run is read on a
//! new one, or waits at the back of the queue while others wait, so that every run read is
//! on a stream at least once per about [`STREAM_TURN`]: a run that waits is polled, and one
//! that ends while it waits has every output event it emitted up to its last turn. A new
//! stream starts after the last event written (the API replays a live run's output events
//! after `last_event_id`), so no event is missed or written twice.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::api::RunEvent;

use super::super::files::{self, RunFile};
use super::{Live, LiveState, RunState, FOLLOW_POLL, MIN_STREAM_TURN, STREAM_TURN};

/// How long a connection of an event stream lasts at most with `max` streams and `runs`
/// live runs that want one (streamed and waiting): [`STREAM_TURN`] while every run has a
/// stream; else shrunk so that a rotation through every run takes about [`STREAM_TURN`],
/// but no shorter than [`MIN_STREAM_TURN`].
pub(super) fn turn(max: usize, runs: usize) -> Duration {
    if runs <= max {
        return STREAM_TURN;
    }
    let share = STREAM_TURN.as_secs_f64() * max as f64 / runs as f64;
    Duration::from_secs_f64(share).max(MIN_STREAM_TURN)
}

pub(super) struct Streams {
    /// [`super::MAX_STREAMS`], smaller in tests.
    pub(super) max: usize,
    pub(super) open: usize,
    pub(super) waiting: VecDeque<Arc<Live>>,
}

impl RunState {
    /// Read the run's event stream on a thread of its own while it is read (until it ends
    /// or nobody has read it for the idle time), or queue it for a stream when
    /// [`super::MAX_STREAMS`] are read already.
    pub(super) fn start_events(self: &Arc<Self>, live: &Arc<Live>) {
        if live.streaming.swap(true, Ordering::SeqCst) {
            return;
        }
        {
            let mut streams = self.streams.lock();
            if streams.open >= streams.max {
                tracing::debug!(run = %live.id, "every event stream is taken; the run waits its turn");
                streams.waiting.push_back(live.clone());
                return;
            }
            streams.open += 1;
        }
        let (state, first) = (self.clone(), live.clone());
        let spawned = std::thread::Builder::new()
            .name("vm0fs-events".into())
            .spawn(move || state.stream_events(first));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a thread to read a run's events");
            self.streams.lock().open -= 1;
            live.streaming.store(false, Ordering::SeqCst);
        }
    }

    /// Whether a live run is still read. Takes no lock of the run's state (which a poll
    /// holds while it asks the API), as it is asked with the streams' lock held.
    pub(super) fn still_read(&self, live: &Live) -> bool {
        !live.done.load(Ordering::SeqCst)
            && live.last_read.lock().elapsed() < *self.follow_idle.lock()
    }

    /// Whether a live run's events are still wanted.
    pub(super) fn wants_events(&self, live: &Live) -> bool {
        self.still_read(live) && !live.state.lock().complete
    }

    /// A stream thread: reads `live`'s events, then those of the runs waiting, in turn.
    fn stream_events(self: Arc<Self>, mut live: Arc<Live>) {
        loop {
            let requeue = self.read_events(&live);
            let mut streams = self.streams.lock();
            if requeue {
                streams.waiting.push_back(live.clone());
            } else {
                live.streaming.store(false, Ordering::SeqCst);
            }
            let next = loop {
                match streams.waiting.pop_front() {
                    Some(l) if self.still_read(&l) => break Some(l),
                    Some(l) => l.streaming.store(false, Ordering::SeqCst),
                    None => break None,
                }
            };
            match next {
                Some(l) => live = l,
                None => {
                    streams.open -= 1;
                    return;
                }
            }
        }
    }

    /// Read `live`'s event stream, a turn per connection, reconnecting after the last event
    /// written, while it is wanted. Whether it gave its place up to a waiting run (and so
    /// must wait again).
    fn read_events(&self, live: &Arc<Live>) -> bool {
        while self.wants_events(live) {
            let last = live.state.lock().last_sequence;
            let within = {
                let s = self.streams.lock();
                turn(s.max, s.open + s.waiting.len())
            };
            match self.api.run_events(&live.id, last, Some(within)) {
                Ok(events) => {
                    for event in events {
                        // The turn's end (the connection's deadline), or a broken stream.
                        let Ok(event) = event else { break };
                        let mut st = live.state.lock();
                        if live.done.load(Ordering::SeqCst) {
                            break;
                        }
                        if let Err(e) = write_event(live, &mut st, &event) {
                            tracing::debug!(run = %live.id, error = %e, "writing an event failed");
                        }
                        drop(st);
                        if !self.wants_events(live) {
                            return false;
                        }
                    }
                    // The turn is over: the place goes to a waiting run, if one waits.
                    if self.wants_events(live) && !self.streams.lock().waiting.is_empty() {
                        return true;
                    }
                }
                Err(e) if e.is_not_found() => return false,
                Err(e) => {
                    tracing::debug!(run = %live.id, error = %e, "the run's event stream failed");
                    // Not at once again (the API fails), and not ahead of the runs waiting.
                    std::thread::sleep(FOLLOW_POLL * 5);
                    if !self.streams.lock().waiting.is_empty() {
                        return true;
                    }
                }
            }
            // A stream that ended early (a proxy's timeout): not at once again.
            std::thread::sleep(FOLLOW_POLL);
        }
        false
    }
}

/// Write one event into `events.jsonl` unless it repeats one written (an output event
/// seen before a reconnection, the same status again).
pub(super) fn write_event(
    live: &Live,
    st: &mut LiveState,
    event: &RunEvent,
) -> std::io::Result<()> {
    match event {
        RunEvent::Output { sequence, .. } => {
            if st.last_sequence.is_some_and(|s| *sequence <= s) {
                return Ok(());
            }
            st.last_sequence = Some(*sequence);
        }
        RunEvent::Status { status, .. } => {
            if st.last_status.as_deref() == Some(status.as_str()) {
                return Ok(());
            }
            st.last_status = Some(status.clone());
        }
        RunEvent::Complete { .. } => {
            if st.complete {
                return Ok(());
            }
            st.complete = true;
        }
    }
    files::append_to(
        &live.dir.join(RunFile::Events.name()),
        &files::event_line(event),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Turns are whole while every run has a stream, then shrink so that a rotation through
    /// every run takes about [`STREAM_TURN`], down to [`MIN_STREAM_TURN`].
    #[test]
    fn turns_shrink_as_more_runs_wait_down_to_the_least() {
        assert_eq!(turn(64, 1), STREAM_TURN);
        assert_eq!(turn(64, 64), STREAM_TURN);
        assert_eq!(turn(64, 128), STREAM_TURN / 2);
        assert_eq!(turn(2, 5), STREAM_TURN * 2 / 5);
        assert_eq!(turn(64, 320), MIN_STREAM_TURN);
        assert_eq!(turn(64, 100_000), MIN_STREAM_TURN);
        // A rotation through every run: turns of one stream one after the other.
        for runs in [65, 100, 200, 320] {
            let rotation = turn(64, runs).as_secs_f64() * runs as f64 / 64.0;
            assert!(
                (rotation - STREAM_TURN.as_secs_f64()).abs() < 1e-6,
                "{runs}: {rotation}"
            );
        }
    }
}
