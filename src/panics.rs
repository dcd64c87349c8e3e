//! The panic policy of the daemon: a panic is a bug, and it must neither wedge the mount
//! nor go unseen.
//!
//! - **Logged**: [`install_hook`] replaces the default hook (which prints to stderr, lost
//!   once the daemon is in the background) with one that logs the panic, its location and
//!   its thread through `tracing` at ERROR.
//! - **Contained**: a panic is caught at two boundaries and turned into an error there. A
//!   download that panics ends its flight with an error (every waiter gets `EIO`, its
//!   budget reservation is returned, see `Cache::run`); a filesystem operation that panics
//!   answers its request `EIO` (see `Fs::serve`). Nothing is left waiting and every worker
//!   thread lives on. Locks are `parking_lot`'s, which a panic does not poison.
//!
//! Containing rather than aborting keeps every other reader of the mount served; the state
//! a panicking fetch leaves behind (a temporary directory) is removed at the next start.

use std::any::Any;

/// Log every panic through `tracing` (see the module docs). The default hook's output is
/// replaced, not added to: a daemon's stderr goes nowhere.
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_else(|| "an unknown location".into());
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        tracing::error!(
            thread,
            location = %location,
            "panic (a bug in vm0fs): {}; the operation fails with EIO and the mount goes on",
            message(info.payload())
        );
    }));
}

/// The message a panic was raised with.
pub fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_of_a_panic_is_found_in_either_form() {
        let caught = |f: fn()| std::panic::catch_unwind(f).unwrap_err();
        assert_eq!(message(&*caught(|| panic!("plain"))), "plain");
        assert_eq!(
            message(&*caught(|| panic!("formatted {}", 42))),
            "formatted 42"
        );
        assert_eq!(
            message(&*caught(|| std::panic::panic_any(7u8))),
            "a panic without a message"
        );
    }
}
