//! The event streams of live runs: every live run that is read has its stream recorded in
//! its `events.jsonl`, at most [`super::MAX_STREAMS`] at once; the others wait their turn, and a
//! stream gives its place up after [`STREAM_TURN`] while runs wait. A new stream starts
//! after the last event written, so no event is missed or written twice.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::api::RunEvent;

use super::super::files::{self, RunFile};
use super::{Live, LiveState, RunState, FOLLOW_POLL, STREAM_TURN};

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

    /// Read `live`'s event stream, reconnecting after the last event written, while it is
    /// wanted. Whether it gave its place up to a waiting run (and so must wait again).
    fn read_events(&self, live: &Arc<Live>) -> bool {
        let turn = Instant::now();
        while self.wants_events(live) {
            let last = live.state.lock().last_sequence;
            match self.api.run_events(&live.id, last) {
                Ok(events) => {
                    for event in events {
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
                        if turn.elapsed() >= STREAM_TURN && !self.streams.lock().waiting.is_empty()
                        {
                            return true;
                        }
                    }
                    // A stream that ended is a turn's natural end when others wait.
                    if self.wants_events(live) && !self.streams.lock().waiting.is_empty() {
                        return true;
                    }
                }
                Err(e) if e.is_not_found() => return false,
                Err(e) => {
                    tracing::debug!(run = %live.id, error = %e, "the run's event stream failed");
                    std::thread::sleep(FOLLOW_POLL * 5);
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
