//! The driver of live runs: one thread that moves every live run along its plan (start,
//! generated log lines, metrics samples, output events, the end at its `duration_ms`),
//! and the [`Board`] that holds the agents and runs and tells waiting event streams that
//! something changed. Ending a run (its artifact, its final state) is the parent module's.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};

use super::{finish, start, RunError};
use crate::model::now_ms;
use crate::runs::{Outcome, Run, RunStatus, RunsData};
use crate::script;
use crate::Shared;

/// How often the driver looks at live runs.
const TICK: Duration = Duration::from_millis(10);
/// How long an idle driver sleeps when nothing wakes it.
const IDLE: Duration = Duration::from_secs(1);
/// Bounds the time the driver holds the lock for one run in one tick.
const MAX_LINES_PER_TICK: u64 = 20_000;

/// The agents and runs, and the signal of their changes.
pub(crate) struct Board {
    pub data: RwLock<RunsData>,
    /// Bumped on every change; event streams wait for it to move.
    generation: Mutex<u64>,
    changed: Condvar,
    stopping: AtomicBool,
    /// Event streams being served, for tests that check a stream ends with its client.
    pub open_streams: AtomicUsize,
}

impl Board {
    pub fn new(data: RunsData) -> Board {
        Board {
            data: RwLock::new(data),
            generation: Mutex::new(0),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            open_streams: AtomicUsize::new(0),
        }
    }

    /// Tells every waiter that the data changed.
    pub fn notify(&self) {
        let mut generation = self.generation.lock();
        *generation += 1;
        self.changed.notify_all();
    }

    pub fn generation(&self) -> u64 {
        *self.generation.lock()
    }

    /// Waits until the generation is no longer `seen`, the emulator stops, or `timeout`.
    pub fn wait_for_change(&self, seen: u64, timeout: Duration) {
        let mut generation = self.generation.lock();
        if *generation == seen && !self.stopping() {
            self.changed.wait_for(&mut generation, timeout);
        }
    }

    /// Ends the driver and every event stream.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.notify();
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// Moves one live run along its plan up to `now`; returns whether it changed and whether
/// its time is up.
fn step(run: &mut Run, now: i64) -> (bool, bool) {
    let Some(mut plan) = run.plan.take() else {
        return (false, false);
    };
    let mut changed = false;
    if run.status == RunStatus::Pending && now >= plan.start_at_ms {
        run.plan = Some(plan);
        start(run, now);
        plan = run.plan.take().expect("start keeps the plan");
        changed = true;
    }
    let mut due = false;
    if let (RunStatus::Running, Some(started)) = (run.status, run.started_at_ms) {
        let elapsed = now - started;
        // Line 0, the start line, came with the start.
        let mut lines_done = plan.log_rate <= 0.0;
        let mut budget = MAX_LINES_PER_TICK;
        while !lines_done && budget > 0 {
            let offset = script::line_offset_ms(plan.lines, plan.log_rate);
            if offset >= plan.duration_ms {
                lines_done = true;
            } else if offset > elapsed {
                break;
            } else {
                let at = started + offset;
                let entry = script::log_line(run, plan.lines, at);
                run.push_log(entry);
                if let Some((kind, data)) = script::output_for_line(plan.lines) {
                    run.push_event(kind, data, at);
                }
                plan.lines += 1;
                budget -= 1;
                changed = true;
            }
        }
        loop {
            let offset = plan.samples as i64 * script::SAMPLE_INTERVAL_MS;
            if offset > elapsed || offset >= plan.duration_ms.max(1) {
                break;
            }
            let sample = script::sample(run, plan.samples, started + offset);
            run.metrics.push(sample);
            plan.samples += 1;
            changed = true;
        }
        due = elapsed >= plan.duration_ms && lines_done;
    }
    run.plan = Some(plan);
    (changed, due)
}

/// One pass of the driver over every live run; returns whether any is left.
fn tick(shared: &Shared) -> bool {
    let now = now_ms();
    let mut changed = false;
    let mut due = Vec::new();
    let live = {
        let mut data = shared.runs.data.write();
        let ids = data.live_run_ids();
        for id in &ids {
            let run = data.run_mut(id).expect("a live id names a run");
            let (run_changed, run_due) = step(run, now);
            changed |= run_changed;
            if run_due {
                due.push(id.clone());
            }
        }
        !ids.is_empty()
    };
    if changed {
        shared.runs.notify();
    }
    for id in due {
        match finish(shared, &id, None, None) {
            Ok(()) | Err(RunError::Final(_)) => {}
            Err(err) => {
                // The run must still end: without its artifact rather than never.
                tracing::warn!(run = %id, %err, "cannot end the run as planned; it fails");
                let _ = finish(shared, &id, Some(Outcome::Failed), Some(err.to_string()));
            }
        }
    }
    live
}

/// Starts the thread that moves live runs; it ends when the board stops.
pub(crate) fn spawn_driver(shared: Arc<Shared>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("runs-driver".into())
        .spawn(move || {
            while !shared.runs.stopping() {
                // Read before the tick: a run created during it must not wait for `IDLE`.
                let seen = shared.runs.generation();
                let live = tick(&shared);
                shared
                    .runs
                    .wait_for_change(seen, if live { TICK } else { IDLE });
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::Plan;

    #[test]
    fn a_live_run_follows_its_plan() {
        let mut run = super::super::bare_run();
        run.plan = Some(Plan {
            start_at_ms: 100,
            log_rate: 10.0,
            duration_ms: 1000,
            outcome: Outcome::Completed,
            error: None,
            artifact_version: None,
            lines: 0,
            samples: 0,
        });
        assert_eq!(step(&mut run, 50), (false, false));
        assert_eq!(run.status, RunStatus::Pending);
        assert_eq!(step(&mut run, 100), (true, false));
        assert_eq!(run.status, RunStatus::Running);
        assert_eq!(run.logs.len(), 1);
        step(&mut run, 650);
        // Lines at 0, 100, 200, 300, 300 (shared), 500 ms.
        assert_eq!(run.logs.len(), 6);
        assert_eq!(run.logs[4].timestamp_ms, run.logs[3].timestamp_ms);
        assert!(!step(&mut run, 1099).1);
        let (_, due) = step(&mut run, 1100);
        assert!(due);
        // Every line due within the duration, no more: offsets 0..=900 at 10 per second.
        assert_eq!(run.logs.len(), 10);
        assert_eq!(run.metrics.len(), 1);
        // Line 5's output event.
        assert_eq!(run.events.len(), 1);
    }
}
