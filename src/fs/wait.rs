//! Waiting for versions and for the API: how long an operation may wait for a download or
//! a listing's fetch (the calling thread's [`Policy`], which both ask as their
//! [`Patience`]), whether the process that asked still wants the answer, and the
//! [`Waiters`]: the threads that run the operations that must wait, so that FUSE worker
//! threads never do.
//!
//! Why: each FUSE worker thread serves one request at a time. If requests waiting for cold
//! versions held them, a few slow downloads would leave nothing to serve the status file,
//! the listings or the cached versions. So [`super::Fs::serve`] runs each operation first
//! on the worker with [`Policy::Never`]: an operation that would have to wait for a flight
//! fails with `FsError::WouldBlock` instead, and is then handed, with its reply, to a
//! waiter thread, where it runs again and may wait.
//!
//! Why interruption is checked here: fuser does not pass `FUSE_INTERRUPT` on (it answers
//! the kernel `ENOSYS`, after which the kernel sends none). A process that gets a signal
//! while its request waits in the daemon would then wait for the answer however long the
//! download takes; after a fatal signal (SIGKILL, or any signal whose default action kills,
//! which the kernel turns into a SIGKILL of the whole process) it waits in the
//! uninterruptible `D` state. So a waiter looks at `/proc/<tid>/status` of the requesting
//! thread every [`WAIT_SLICE`] and answers `EINTR` as soon as the thread has a deliverable
//! signal pending, is exiting, or is gone.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::cache::{Patience, WAIT_SLICE};

/// How many operations may wait for downloads at once, each on a waiter thread; more wait
/// in a queue (still interruptible) until one is free.
pub const WAITERS: usize = 32;

/// How long an operation on this thread may wait for a version being downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Not at all: the operation fails with `FsError::WouldBlock` (on a FUSE worker).
    Never,
    /// Until the answer comes, or until thread `requester` (the FUSE request's pid, which is
    /// the thread id of the caller) no longer wants it. Without a requester, until the
    /// answer comes.
    Wait { requester: Option<u32> },
}

thread_local! {
    static POLICY: Cell<Policy> = const { Cell::new(Policy::Wait { requester: None }) };
}

/// Run `f` with `policy` on this thread (the previous one comes back after, even if `f`
/// panics). Without any, a thread waits for the answer, whatever it takes (tests, and
/// callers outside the FUSE session).
pub fn with_policy<R>(policy: Policy, f: impl FnOnce() -> R) -> R {
    struct Restore(Policy);
    impl Drop for Restore {
        fn drop(&mut self) {
            POLICY.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(POLICY.with(|p| p.replace(policy)));
    f()
}

/// The calling thread's [`Policy`], as the cache's flights ask for it.
pub(super) struct ThreadPolicy;

impl Patience for ThreadPolicy {
    fn may_block(&self) -> bool {
        POLICY.with(Cell::get) != Policy::Never
    }

    fn gave_up(&self) -> bool {
        match POLICY.with(Cell::get) {
            Policy::Wait {
                requester: Some(tid),
            } => !still_wanted(tid),
            Policy::Wait { requester: None } | Policy::Never => false,
        }
    }
}

/// Whether thread `tid` still waits for an answer: it exists, is not exiting, and has no
/// signal pending that it would take (see the module docs).
pub fn still_wanted(tid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{tid}/status")) {
        Ok(status) => !gave_up(&status),
        // Gone (or /proc unreadable for it, which only a vanished thread causes here).
        Err(_) => false,
    }
}

/// Whether a thread whose `/proc/<tid>/status` is `status` has given up: it is a zombie or
/// dead, or a signal is pending for it (`SigPnd`) or its process (`ShdPnd`) that it
/// neither blocks (`SigBlk`) nor ignores (`SigIgn`). A fatal signal shows as a pending
/// SIGKILL, which cannot be blocked.
fn gave_up(status: &str) -> bool {
    let field = |name: &str| -> Option<&str> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    if field("State").is_some_and(|s| s.starts_with('Z') || s.starts_with('X')) {
        return true;
    }
    let mask = |name: &str| {
        field(name)
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .unwrap_or(0)
    };
    let pending = mask("SigPnd") | mask("ShdPnd");
    pending & !mask("SigBlk") & !mask("SigIgn") != 0
}

/// What a queued operation is told when its turn comes.
pub enum Turn {
    /// Run, and wait as long as the requester wants the answer.
    Run,
    /// The requester gave up while the operation was queued: answer `EINTR`.
    Interrupted,
}

/// An operation handed to the [`Waiters`].
pub struct Task {
    /// The requesting thread (0: none known).
    pub requester: u32,
    pub run: Box<dyn FnOnce(Turn) + Send>,
}

/// The waiter threads: at most [`WAITERS`] run operations that wait for downloads; the rest
/// are queued in order. Threads are started when work arrives and end when none is left.
/// While tasks are queued, a watcher thread answers the ones whose requester gives up.
#[derive(Clone)]
pub struct Waiters {
    shared: Arc<Shared>,
}

struct Shared {
    max: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Tasks in order, each with a number of its own (for the watcher to find it again).
    queue: VecDeque<(u64, Task)>,
    next: u64,
    threads: usize,
    watching: bool,
}

impl Default for Waiters {
    fn default() -> Waiters {
        Waiters::new(WAITERS)
    }
}

impl Waiters {
    pub fn new(max: usize) -> Waiters {
        Waiters {
            shared: Arc::new(Shared {
                max: max.max(1),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Run `task` on a waiter thread as soon as one is free. If no thread can be started
    /// and none runs (the system is out of threads), it runs here and now.
    pub fn submit(&self, task: Task) {
        let mut st = self.shared.state.lock();
        st.next += 1;
        let n = st.next;
        st.queue.push_back((n, task));
        // Every thread is busy with a task (one with none left ends), so below the maximum
        // a new one is started; at it, the task waits for a free one, and for a watcher.
        if st.threads >= self.shared.max {
            let watch = !st.watching;
            st.watching = true;
            drop(st);
            if watch {
                self.watch();
            }
            return;
        }
        st.threads += 1;
        drop(st);
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("vm0fs-waiter".into())
            .spawn(move || work(&shared));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a waiter thread");
            let mut st = self.shared.state.lock();
            st.threads -= 1;
            if st.threads == 0 {
                // Nobody would ever take it: run it here rather than never answer.
                let (_, task) = st.queue.pop_back().expect("the task queued above");
                drop(st);
                (task.run)(Turn::Run);
            }
        }
    }

    /// Start the watcher of queued tasks (see [`Waiters`]).
    fn watch(&self) {
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("vm0fs-watcher".into())
            .spawn(move || loop {
                std::thread::sleep(WAIT_SLICE);
                let queued: Vec<(u64, u32)> = {
                    let mut st = shared.state.lock();
                    if st.queue.is_empty() {
                        st.watching = false;
                        return;
                    }
                    st.queue.iter().map(|(n, t)| (*n, t.requester)).collect()
                };
                // /proc is read without the lock.
                let gone: Vec<u64> = queued
                    .into_iter()
                    .filter(|&(_, requester)| requester != 0 && !still_wanted(requester))
                    .map(|(n, _)| n)
                    .collect();
                if gone.is_empty() {
                    continue;
                }
                let answered: Vec<Task> = {
                    let mut st = shared.state.lock();
                    let (gone, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut st.queue)
                        .into_iter()
                        .partition(|(n, _)| gone.contains(n));
                    st.queue = kept;
                    gone.into_iter().map(|(_, t)| t).collect()
                };
                for t in answered {
                    (t.run)(Turn::Interrupted);
                }
            });
        if spawned.is_err() {
            // Queued tasks then wait for a free waiter thread, as before interruption was
            // looked at; the next submit tries again.
            self.shared.state.lock().watching = false;
        }
    }

    /// How many tasks run, and how many wait for a thread.
    #[cfg(test)]
    pub fn busy(&self) -> (usize, usize) {
        let st = self.shared.state.lock();
        (st.threads, st.queue.len())
    }
}

fn work(shared: &Shared) {
    loop {
        let task = {
            let mut st = shared.state.lock();
            match st.queue.pop_front() {
                Some((_, t)) => t,
                None => {
                    st.threads -= 1;
                    return;
                }
            }
        };
        // A requester that gave up while its task was queued is answered at once.
        let turn = if task.requester != 0 && !still_wanted(task.requester) {
            Turn::Interrupted
        } else {
            Turn::Run
        };
        // Tasks contain their own panics (`Fs::serve`); a stray one must not end the thread
        // with the count still counting it.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (task.run)(turn)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// How long the tests below give a change to show in `/proc`.
    const SETTLE: Duration = Duration::from_secs(10);

    #[test]
    fn pending_signals_count_unless_blocked_or_ignored() {
        let status = |state: &str, pnd: &str, shd: &str, blk: &str, ign: &str| {
            format!(
                "Name:\tcat\nState:\t{state}\nTgid:\t1\nSigQ:\t0/1\nSigPnd:\t{pnd}\nShdPnd:\t{shd}\nSigBlk:\t{blk}\nSigIgn:\t{ign}\nSigCgt:\t0000000000000000\n"
            )
        };
        let none = "0000000000000000";
        let sigint = "0000000000000002";
        let sigkill = "0000000000000100";
        let cases = [
            (
                status("S (sleeping)", none, none, none, none),
                false,
                "nothing pending",
            ),
            (
                status("S (sleeping)", none, sigint, none, none),
                true,
                "SIGINT to the process",
            ),
            (
                status("D (disk sleep)", sigkill, none, none, none),
                true,
                "a fatal signal",
            ),
            (
                status("S (sleeping)", none, sigint, sigint, none),
                false,
                "SIGINT blocked",
            ),
            (
                status("S (sleeping)", sigint, none, none, sigint),
                false,
                "SIGINT ignored",
            ),
            (
                status("Z (zombie)", none, none, none, none),
                true,
                "a zombie",
            ),
            (status("X (dead)", none, none, none, none), true, "dead"),
        ];
        for (text, want, what) in cases {
            assert_eq!(gave_up(&text), want, "{what}");
        }
    }

    #[test]
    fn a_live_thread_wants_its_answer_and_a_gone_one_does_not() {
        let me = nix::unistd::gettid().as_raw() as u32;
        assert!(still_wanted(me));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!still_wanted(pid), "a reaped process");
    }

    /// A process killed while its task is queued is answered at once, without waiting for
    /// the waiter thread that is busy.
    #[test]
    fn a_queued_task_whose_requester_is_killed_is_answered_interrupted() {
        let waiters = Waiters::new(1);
        let (release, held) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel();
        waiters.submit(Task {
            requester: 0,
            run: Box::new(move |_| {
                started_tx.send(()).unwrap();
                let _ = held.recv();
            }),
        });
        started.recv().unwrap();
        let mut sleeper = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let (answer_tx, answer) = mpsc::channel();
        waiters.submit(Task {
            requester: sleeper.id(),
            run: Box::new(move |turn| answer_tx.send(matches!(turn, Turn::Interrupted)).unwrap()),
        });
        assert_eq!(waiters.busy(), (1, 1));
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        assert_eq!(answer.recv_timeout(SETTLE), Ok(true));
        drop(release);
    }

    #[test]
    fn the_policy_is_the_threads_and_comes_back_after() {
        assert!(ThreadPolicy.may_block());
        with_policy(Policy::Never, || {
            assert!(!ThreadPolicy.may_block());
            with_policy(Policy::Wait { requester: None }, || {
                assert!(ThreadPolicy.may_block() && !ThreadPolicy.gave_up());
            });
            assert!(!ThreadPolicy.may_block());
            std::thread::spawn(|| assert!(ThreadPolicy.may_block()))
                .join()
                .unwrap();
        });
        assert!(ThreadPolicy.may_block());
    }
}
