//! Small files written to the pack a batch at a time, and published once written.
//!
//! An archive of many small files spent a fifth of its unpack in one `write` per file. The
//! packed content of consecutive files is gathered here and written with one `pwrite`;
//! each file is published (see [`Publish`]) only once its bytes are in the pack, so a reader
//! never finds a name whose content is not there yet. Publishing keeps the archive's order:
//! a file that needs no batch (its own blob, or one read from the tar stream) waits behind
//! the files gathered before it, and a name is withdrawn at once, after them (the file it
//! named may be deleted right after).
//!
//! A batch is written when it would pass [`BATCH_BYTES`] or holds [`BATCH_FILES`], at the
//! end of the archive, and before every read of the source ([`Pending::before_wait`]): a download
//! that stalls never holds back what was unpacked before it.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::publish::{Publish, PublishedFile, Step};

/// Most content bytes gathered before they are written; content of that size or more is
/// written at once (it gains nothing from company, and the buffer stays this small).
pub(super) const BATCH_BYTES: usize = 64 * 1024;
/// Most files gathered before they are written and published (each waits with its path's
/// steps: a few hundred bytes).
pub(super) const BATCH_FILES: usize = 256;

/// What is gathered but not yet written or published.
pub(super) struct Pending<'p> {
    publish: &'p dyn Publish,
    state: RefCell<State>,
}

struct State {
    /// The pack (a descriptor of its own: every write says where it goes).
    pack: File,
    /// Content not written yet, to go at `start` in the pack.
    bytes: Vec<u8>,
    start: u64,
    /// Files that wait for `bytes` to be written, in archive order.
    files: Vec<(Vec<Step>, PublishedFile)>,
    /// The first write that failed: nothing is published after it.
    failed: Option<io::Error>,
}

impl<'p> Pending<'p> {
    pub(super) fn new(pack: File, publish: &'p dyn Publish) -> Self {
        Pending {
            publish,
            state: RefCell::new(State {
                pack,
                bytes: Vec::new(),
                start: 0,
                files: Vec::new(),
                failed: None,
            }),
        }
    }

    /// Gather `content`, which goes at `offset` in the pack. Content is written in the
    /// order it comes; a gap (a file not kept) first writes what was gathered.
    pub(super) fn content(&self, offset: u64, content: &[u8]) {
        let mut state = self.state.borrow_mut();
        let next = state.start + state.bytes.len() as u64;
        if !state.bytes.is_empty()
            && (next != offset || state.bytes.len() + content.len() > BATCH_BYTES)
        {
            self.write(&mut state);
        }
        if content.len() >= BATCH_BYTES {
            // Written now; the files gathered before it were just published.
            if state.failed.is_none() {
                if let Err(e) = state.pack.write_all_at(content, offset) {
                    state.failed = Some(e);
                }
            }
            return;
        }
        if state.bytes.is_empty() {
            state.start = offset;
        }
        state.bytes.extend_from_slice(content);
    }

    /// Publish file `steps` once the content gathered so far is written.
    pub(super) fn file(&self, steps: Vec<Step>, file: PublishedFile) {
        let mut state = self.state.borrow_mut();
        if state.bytes.is_empty() && state.files.is_empty() {
            drop(state);
            return self.publish.file(&steps, &file);
        }
        state.files.push((steps, file));
        if state.files.len() >= BATCH_FILES {
            self.write(&mut state);
        }
    }

    /// Withdraw `name` of directory `dir` now, after what is gathered: the caller may
    /// delete the withdrawn file's blob next.
    pub(super) fn withdraw(&self, dir: u32, name: &[u8], gone: Option<u32>) {
        self.write(&mut self.state.borrow_mut());
        self.publish.withdraw(dir, name, gone);
    }

    /// The source is about to be read, which may wait: write and publish what is gathered.
    pub(super) fn before_wait(&self) {
        self.write(&mut self.state.borrow_mut());
    }

    /// Write and publish what is gathered; the error of the first write that failed, if
    /// one did (`pack` names the file).
    pub(super) fn finish(&self, pack: &Path) -> Result<(), super::ArchiveError> {
        let mut state = self.state.borrow_mut();
        self.write(&mut state);
        match state.failed.take() {
            None => Ok(()),
            Some(source) => Err(super::ArchiveError::Write {
                path: pack.to_path_buf(),
                source,
            }),
        }
    }

    /// Whether a write failed (the unpack stops at the next member).
    pub(super) fn failed(&self) -> bool {
        self.state.borrow().failed.is_some()
    }

    fn write(&self, state: &mut State) {
        if state.failed.is_none() && !state.bytes.is_empty() {
            if let Err(e) = state.pack.write_all_at(&state.bytes, state.start) {
                state.failed = Some(e);
            }
        }
        state.start += state.bytes.len() as u64;
        state.bytes.clear();
        let files = std::mem::take(&mut state.files);
        if state.failed.is_some() {
            return;
        }
        for (steps, file) in files {
            self.publish.file(&steps, &file);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::archive::BlobId;

    /// What was published, in order: `(offset of a file | name withdrawn, pack bytes
    /// on disk when it was told)`.
    #[derive(Default)]
    struct Told {
        pack: std::path::PathBuf,
        seen: std::sync::Mutex<Vec<(String, Vec<u8>)>>,
    }

    impl Publish for Told {
        fn file(&self, _: &[Step], file: &PublishedFile) {
            let on_disk = std::fs::read(&self.pack).unwrap();
            self.seen
                .lock()
                .unwrap()
                .push((format!("file@{}", file.offset), on_disk));
        }
        fn withdraw(&self, _: u32, name: &[u8], _: Option<u32>) {
            let on_disk = std::fs::read(&self.pack).unwrap();
            let name = String::from_utf8_lossy(name);
            self.seen
                .lock()
                .unwrap()
                .push((format!("gone:{name}"), on_disk));
        }
    }

    fn file_at(offset: u64, size: u64) -> PublishedFile {
        PublishedFile {
            size,
            blob: Arc::from(Path::new("pack")),
            offset,
            id: BlobId { dev: 0, ino: 0 },
            packed: true,
            sums: Arc::from(vec![0u32]),
        }
    }

    fn set_up() -> (tempfile::TempDir, Told) {
        let dir = tempfile::tempdir().unwrap();
        let pack = dir.path().join("pack");
        std::fs::write(&pack, b"").unwrap();
        (
            dir,
            Told {
                pack,
                ..Told::default()
            },
        )
    }

    fn open(told: &Told) -> File {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&told.pack)
            .unwrap()
    }

    fn seen(told: &Told) -> Vec<String> {
        told.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(s, _)| s.clone())
            .collect()
    }

    #[test]
    fn a_file_is_published_once_its_content_is_in_the_pack_and_in_order() {
        let (_dir, told) = set_up();
        let pending = Pending::new(open(&told), &told);
        // Nothing gathered: a file that needs no batch is told at once.
        pending.file(Vec::new(), file_at(100, 0));
        assert_eq!(seen(&told), ["file@100"]);
        pending.content(0, b"abc");
        pending.file(Vec::new(), file_at(0, 3));
        pending.content(3, b"de");
        pending.file(Vec::new(), file_at(3, 2));
        // Behind them: a file of its own.
        pending.file(Vec::new(), file_at(200, 0));
        assert_eq!(
            seen(&told),
            ["file@100"],
            "told before its bytes were written"
        );
        pending.before_wait();
        // A name withdrawn is withdrawn at once, after what was gathered.
        pending.content(5, b"f");
        pending.file(Vec::new(), file_at(5, 1));
        pending.withdraw(1, b"old", None);
        let seen_now = told.seen.lock().unwrap().clone();
        let names: Vec<&str> = seen_now.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(
            names,
            ["file@100", "file@0", "file@3", "file@200", "file@5", "gone:old"]
        );
        for (what, on_disk) in &seen_now[1..4] {
            assert_eq!(
                on_disk, b"abcde",
                "{what} was told before the pack held its bytes"
            );
        }
        for (what, on_disk) in &seen_now[4..] {
            assert_eq!(
                on_disk, b"abcdef",
                "{what} was told before the pack held its bytes"
            );
        }
        pending.finish(&told.pack).unwrap();
    }

    #[test]
    fn a_gap_in_the_pack_writes_what_came_before_it() {
        let (_dir, told) = set_up();
        let pending = Pending::new(open(&told), &told);
        pending.content(0, b"ab");
        pending.file(Vec::new(), file_at(0, 2));
        // A file not kept lies between: the next kept one goes further on.
        pending.content(10, b"xy");
        pending.file(Vec::new(), file_at(10, 2));
        pending.finish(&told.pack).unwrap();
        let mut want = b"ab".to_vec();
        want.resize(10, 0);
        want.extend_from_slice(b"xy");
        assert_eq!(std::fs::read(&told.pack).unwrap(), want);
        assert_eq!(seen(&told), ["file@0", "file@10"]);
    }

    #[test]
    fn a_full_batch_is_written_without_waiting_for_the_source() {
        let (_dir, told) = set_up();
        let pending = Pending::new(open(&told), &told);
        for i in 0..BATCH_FILES as u64 {
            pending.content(i, b"z");
            pending.file(Vec::new(), file_at(i, 1));
        }
        assert_eq!(
            seen(&told).len(),
            BATCH_FILES,
            "as many files as a batch holds"
        );
        // Content that would pass BATCH_BYTES writes what was gathered first.
        let mut at = BATCH_FILES as u64;
        let most = vec![1u8; BATCH_BYTES - 10];
        pending.content(at, &most);
        pending.file(Vec::new(), file_at(at, most.len() as u64));
        at += most.len() as u64;
        pending.content(at, b"0123456789ab");
        assert_eq!(
            seen(&told).len(),
            BATCH_FILES + 1,
            "written before the batch grew past"
        );
        pending.file(Vec::new(), file_at(at, 12));
        at += 12;
        // Content of BATCH_BYTES or more is written at once, after what is gathered.
        let big = vec![7u8; BATCH_BYTES];
        pending.content(at, &big);
        assert_eq!(seen(&told).len(), BATCH_FILES + 2);
        pending.file(Vec::new(), file_at(at, big.len() as u64));
        assert_eq!(
            seen(&told).len(),
            BATCH_FILES + 3,
            "nothing gathered: told at once"
        );
        let mut want = vec![b'z'; BATCH_FILES];
        want.extend_from_slice(&most);
        want.extend_from_slice(b"0123456789ab");
        want.extend_from_slice(&big);
        assert!(
            std::fs::read(&told.pack).unwrap() == want,
            "the pack's bytes"
        );
        pending.finish(&told.pack).unwrap();
    }

    #[test]
    fn a_failed_write_publishes_nothing_and_is_the_unpacks_error() {
        let (_dir, told) = set_up();
        // Read-only: every write fails.
        let pending = Pending::new(File::open(&told.pack).unwrap(), &told);
        pending.content(0, b"abc");
        pending.file(Vec::new(), file_at(0, 3));
        pending.before_wait();
        assert!(pending.failed());
        pending.content(3, b"d");
        pending.file(Vec::new(), file_at(3, 1));
        let err = pending.finish(&told.pack).unwrap_err();
        assert!(
            matches!(&err, crate::archive::ArchiveError::Write { path, .. } if path == &told.pack),
            "{err:?}"
        );
        assert!(seen(&told).is_empty(), "{:?}", seen(&told));
    }
}
