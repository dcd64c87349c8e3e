//! The one line of fuser's own logging that a normal mount must not show: its ERROR when a
//! reply cannot be written because the kernel no longer waits for it.
//!
//! Why: a process that gives up on a request (a signal while its request waits for a
//! download, see `fs::wait`) has the kernel drop the request. The daemon still answers it
//! (`EINTR`, from the waiter that noticed), and the kernel refuses that answer with
//! `ENOENT` ("no such request"), which fuser logs as `ERROR Failed to send FUSE reply: No
//! such file or directory`. Nothing failed: the answer was for nobody. Every other failure
//! to reply (the device gone, a malformed reply) is still logged as fuser says.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// fuser's logging target for replies, and the start of the message it logs when the
/// kernel refuses one with `ENOENT` (the `Display` of that `io::Error`).
const TARGET: &str = "fuser::reply";
const DROPPED: &str = "Failed to send FUSE reply: No such file or directory";

/// A layer that disables exactly fuser's "reply for a request the kernel dropped" event
/// (see the module docs), for every other layer of the subscriber.
pub struct QuietDroppedReplies;

impl<S: Subscriber> Layer<S> for QuietDroppedReplies {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        !is_dropped_reply(event)
    }
}

fn is_dropped_reply(event: &Event<'_>) -> bool {
    if *event.metadata().level() != Level::ERROR {
        return false;
    }
    let mut seen = Seen {
        target: event.metadata().target() == TARGET,
        message: false,
    };
    event.record(&mut seen);
    seen.target && seen.message
}

/// What the event says of itself. fuser logs through `log`: bridged into tracing, such an
/// event has a target of its own (`log`) and the log's target in its `log.target` field.
struct Seen {
    target: bool,
    message: bool,
}

impl Visit for Seen {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}").starts_with(DROPPED),
            "log.target" => self.target = format!("{value:?}").trim_matches('"') == TARGET,
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.starts_with(DROPPED),
            "log.target" => self.target = value == TARGET,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// Counts the events that reach it.
    struct Count(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Count {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            let mut m = Text(String::new());
            event.record(&mut m);
            self.0.lock().unwrap().push(m.0);
        }
    }

    struct Text(String);
    impl Visit for Text {
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    #[test]
    fn only_the_reply_the_kernel_dropped_is_quiet() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry()
            .with(QuietDroppedReplies)
            .with(Count(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let enoent = std::io::Error::from_raw_os_error(libc::ENOENT);
            let enodev = std::io::Error::from_raw_os_error(libc::ENODEV);
            tracing::error!(target: "fuser::reply", "Failed to send FUSE reply: {enoent}");
            tracing::error!(target: "fuser::reply", "Failed to send FUSE reply: {enodev}");
            tracing::warn!(target: "fuser::reply", "Failed to send FUSE reply: {enoent}");
            tracing::error!(target: "vm0fs", "Failed to send FUSE reply: {enoent}");
            // As `log` records reach tracing: target `log`, the log's target in a field.
            let dropped = format!("Failed to send FUSE reply: {enoent}");
            tracing::error!(target: "log", message = %dropped, log.target = "fuser::reply");
            tracing::error!(target: "log", message = %dropped, log.target = "other");
        });
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(seen[0].contains("No such device"), "{seen:?}");
    }
}
