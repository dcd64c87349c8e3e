//! The download pool: at most `max` fetches run at once, each on a worker thread of its
//! own; the others wait in a queue, first come first served. Workers are started when work
//! arrives and end when the queue is empty, so an idle mount has no download thread.
//!
//! A job is plain work (a boxed closure): what a fetch does, and how it ends its flight, is
//! the cache's business. A job that panics is contained here (the panic hook has logged
//! it, see [`crate::panics`]); the cache's jobs end their flight on unwind themselves.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use parking_lot::Mutex;

/// One unit of work.
pub type Job = Box<dyn FnOnce() + Send>;

pub struct Pool {
    max: usize,
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    queue: VecDeque<Job>,
    workers: usize,
}

impl Pool {
    /// A pool of at most `max` workers (at least one).
    pub fn new(max: usize) -> Arc<Pool> {
        Arc::new(Pool {
            max: max.max(1),
            state: Mutex::new(PoolState::default()),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Queue `job`, starting a worker for it if fewer than `max` run. When no worker runs
    /// and none can be started (the system is out of threads), the job is handed back with
    /// the reason, for the caller to fail it.
    pub fn submit(self: &Arc<Pool>, job: Job) -> Result<(), (Job, std::io::Error)> {
        let mut st = self.state.lock();
        st.queue.push_back(job);
        // Every worker is busy with a job (one with none left ends, see `work`), so below
        // the maximum a new one is started; at it, a running one takes the job when free.
        if st.workers >= self.max {
            return Ok(());
        }
        st.workers += 1;
        drop(st);
        let pool = self.clone();
        let spawned = std::thread::Builder::new()
            .name("vm0fs-fetch".into())
            .spawn(move || pool.work());
        match spawned {
            Ok(_) => Ok(()),
            Err(e) => {
                let mut st = self.state.lock();
                st.workers -= 1;
                if st.workers > 0 {
                    // The job stays queued: a running worker takes it.
                    return Ok(());
                }
                let job = st.queue.pop_back().expect("the job queued above");
                Err((job, e))
            }
        }
    }

    /// Drop every queued job (on shutdown; their owners ended them).
    pub fn clear(&self) -> usize {
        let jobs: Vec<Job> = self.state.lock().queue.drain(..).collect();
        jobs.len()
    }

    fn work(self: Arc<Pool>) {
        loop {
            let job = {
                let mut st = self.state.lock();
                match st.queue.pop_front() {
                    Some(job) => job,
                    None => {
                        st.workers -= 1;
                        return;
                    }
                }
            };
            // The panic hook has logged it; the worker goes on with the next job.
            let _ = catch_unwind(AssertUnwindSafe(job));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn at_most_max_jobs_run_at_once_and_the_rest_wait_in_order() {
        let pool = Pool::new(2);
        let (started_tx, started) = mpsc::channel();
        let mut gates = Vec::new();
        for i in 0..4 {
            let (go, gate) = mpsc::channel::<()>();
            gates.push(go);
            let tx = started_tx.clone();
            pool.submit(Box::new(move || {
                tx.send(i).unwrap();
                let _ = gate.recv();
            }))
            .map_err(|(_, e)| e)
            .unwrap();
        }
        let mut first: Vec<i32> = (0..2).map(|_| started.recv().unwrap()).collect();
        first.sort();
        assert_eq!(first, [0, 1]);
        assert!(
            started.try_recv().is_err(),
            "a third job runs beside two held ones"
        );
        drop(gates.remove(0));
        assert_eq!(started.recv().unwrap(), 2, "the queue is served in order");
        drop(gates);
        assert_eq!(started.recv().unwrap(), 3);
    }

    #[test]
    fn a_panicking_job_does_not_take_its_worker_down() {
        let pool = Pool::new(1);
        let (tx, rx) = mpsc::channel();
        pool.submit(Box::new(|| panic!("a job that panics")))
            .map_err(|(_, e)| e)
            .unwrap();
        pool.submit(Box::new(move || tx.send(()).unwrap()))
            .map_err(|(_, e)| e)
            .unwrap();
        rx.recv().unwrap();
    }
}
