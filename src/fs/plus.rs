//! How many entries of a directory the kernel gets with their attributes when it first
//! reads it (`READDIRPLUS`), and when to give it all of them.
//!
//! The kernel asks for the first entries of a directory with `READDIRPLUS` and makes an
//! inode and a dentry of every entry that reply carries: about 4 µs each, whether or not
//! the reader ever looks at the entry. For the rest of the directory it asks with
//! `READDIRPLUS` again only if the reader looked at some entry in between (the kernel's
//! "auto" mode, `FUSE_READDIRPLUS_AUTO`), and with plain `READDIR` otherwise. A walk that
//! needs only names and types (`find`, `ls` without `-l`, `os.walk`) of a version of
//! 50,000 tiny files spent half its time on 50,000 inodes it never used.
//!
//! So the first reply of a directory ends before its [`PROBE`]` + 1`th entry that is not a
//! directory. Directories all come with it up to there: a walk descends into each, and one
//! left out would cost a `LOOKUP` then. One other entry is enough: a reader that looks at
//! entries as it reads them (`ls -l`, `rsync`, `find -size`) looks at it before it reads
//! on, and has the kernel ask for the rest with attributes; it pays one more round trip
//! per directory. A reader that only reads names gets the rest without inodes. (The reply
//! cannot be empty: an empty reply ends the directory.)
//!
//! A reader that reads a whole directory first and then opens or stats its files (`grep
//! -r`, `cp -r`, `tar -c`, `find | xargs cat`) would pay a `LOOKUP` for every file past
//! the first reply, where an inode from `READDIRPLUS` costs a tenth of one. The first
//! lookup of a file in a directory whose first reply was cut shows such a reader: from then
//! on, and until [`WHOLE_FOR`] after the last such lookup, first replies are whole again.
//! What it costs is the lookups of that one directory. A lookup of a directory is no such
//! sign.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::Mutex;

use crate::ids::Ino;

/// Most entries other than directories a directory's first `READDIRPLUS` reply carries
/// while readers read names only. With 16, `find` over 50,000 tiny files in 500
/// directories made 7,500 inodes more and walked about 24 ms slower (of 160 – 190 ms).
pub const PROBE: u64 = 1;
/// How long first replies stay whole after a reader looked up a file it could have had
/// from one.
pub const WHOLE_FOR: Duration = Duration::from_secs(10);
/// Directories whose first reply was cut that are remembered (the most recent ones).
const CUT_KEPT: usize = 4096;

/// What the adapter asks before answering a directory's first `READDIRPLUS`, and what
/// `lookup` tells (see the module docs).
pub struct PlusAdvice {
    state: Mutex<State>,
}

struct State {
    /// Directories whose first reply was cut.
    cut: LruCache<Ino, ()>,
    /// First replies are whole until then.
    whole_until: Option<Instant>,
}

impl Default for PlusAdvice {
    fn default() -> Self {
        PlusAdvice {
            state: Mutex::new(State {
                cut: LruCache::new(NonZeroUsize::new(CUT_KEPT).unwrap_or(NonZeroUsize::MIN)),
                whole_until: None,
            }),
        }
    }
}

impl PlusAdvice {
    /// How many entries other than directories the first `READDIRPLUS` reply of a
    /// directory may carry at `now` (`None`: as many as fit).
    pub fn first_reply(&self, now: Instant) -> Option<u64> {
        let state = self.state.lock();
        match state.whole_until {
            Some(until) if now < until => None,
            _ => Some(PROBE),
        }
    }

    /// The first reply of directory `dir` was cut: entries past it went without inodes.
    pub fn cut(&self, dir: Ino) {
        self.state.lock().cut.put(dir, ());
    }

    /// A lookup in directory `parent` found an entry (a directory if `is_dir`) at `now`.
    pub fn looked_up(&self, parent: Ino, is_dir: bool, now: Instant) {
        if is_dir {
            return;
        }
        let mut state = self.state.lock();
        if state.cut.contains(&parent) {
            state.whole_until = Some(now + WHOLE_FOR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_replies_are_cut_until_a_file_of_a_cut_directory_is_looked_up() {
        let advice = PlusAdvice::default();
        let t0 = Instant::now();
        assert_eq!(advice.first_reply(t0), Some(PROBE));
        // A lookup in a directory never cut, and of a directory in a cut one: no sign.
        advice.looked_up(Ino(7), false, t0);
        advice.cut(Ino(8));
        advice.looked_up(Ino(8), true, t0);
        assert_eq!(advice.first_reply(t0), Some(PROBE));
        // A file of a cut directory: whole replies for WHOLE_FOR after it.
        let t1 = t0 + Duration::from_secs(1);
        advice.looked_up(Ino(8), false, t1);
        assert_eq!(advice.first_reply(t1), None);
        assert_eq!(advice.first_reply(t1 + WHOLE_FOR / 2), None);
        // Each such lookup extends it.
        let t2 = t1 + WHOLE_FOR / 2;
        advice.looked_up(Ino(8), false, t2);
        assert_eq!(advice.first_reply(t1 + WHOLE_FOR), None);
        assert_eq!(advice.first_reply(t2 + WHOLE_FOR), Some(PROBE));
    }

    #[test]
    fn only_the_most_recent_cut_directories_are_remembered() {
        let advice = PlusAdvice::default();
        let t0 = Instant::now();
        for d in 0..=CUT_KEPT as u64 {
            advice.cut(Ino(1000 + d));
        }
        // The first one was pushed out: a lookup in it is no sign any more.
        advice.looked_up(Ino(1000), false, t0);
        assert_eq!(advice.first_reply(t0), Some(PROBE));
        advice.looked_up(Ino(1000 + CUT_KEPT as u64), false, t0);
        assert_eq!(advice.first_reply(t0), None);
    }
}
