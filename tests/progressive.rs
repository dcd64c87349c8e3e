//! Progressive availability on a real mount: a file at the start of an archive is served
//! while the rest of the archive is still being downloaded, under the inode number the
//! complete version gives it, and listings wait for the end.
//!
//! The order is made certain by the emulator, not by timing: the store cuts the first
//! download after a few MiB (past the small first member) and delays the resumed request,
//! so the version cannot be complete while the test reads the first file.

mod common;

use std::os::unix::fs::{DirEntryExt, MetadataExt};

use common::{put_archive, Emulator, Mount};
use serde_json::json;
use vm0_emulator::pack::{pattern, ArchiveBuilder};

const BIG: usize = 16 << 20;
const BIG_FILES: usize = 4;
/// Where the store cuts the first download: a whole number of the fetch's 1 MiB chunks,
/// far past the first member and far short of the whole archive.
const CUT: u64 = 4 << 20;

/// A small first member, then incompressible data (so compressed size tracks it).
fn archive() -> Vec<u8> {
    let mut b = ArchiveBuilder::new();
    b.file("first.txt", 0o644, 1_700_000_000, b"here first\n");
    for i in 0..BIG_FILES {
        b.file(
            &format!("big/part{i}"),
            0o644,
            1_700_000_000,
            &pattern(BIG, i as u64),
        );
    }
    b.file("last.txt", 0o600, 1_700_000_001, b"here last\n");
    b.finish()
}

fn in_flight(status: &str, id: &str) -> bool {
    let Some((_, downloads)) = status.split_once("downloads in flight:") else {
        return false;
    };
    // The section ends at the next blank line.
    downloads.split("\n\n").next().unwrap_or("").contains(id)
}

#[test]
fn first_file_is_served_before_the_archive_ends() {
    let data = tempfile::tempdir().unwrap();
    let bytes = archive();
    assert!(
        bytes.len() as u64 > 10 * CUT,
        "the cut is early in the archive"
    );
    put_archive(data.path(), "artifacts", "big", "v1", &bytes);
    let emu = Emulator::with_data(data.path());
    let id = emu.current_version("artifacts", "big");
    // The first store request ends after CUT bytes; the resumed one waits before it
    // answers, which holds the rest of the archive back while the test looks.
    emu.fault(json!({"route": "store.get", "cut_after_bytes": CUT, "count": 1}));
    emu.fault(json!({"route": "store.get", "delay_ms": 4000, "count": 1}));
    let m = Mount::new(&emu);
    let version = m.join(&format!("artifacts/big/{id}"));

    // The first access starts the download and returns as soon as the file is unpacked.
    let first = version.join("first.txt");
    let content = std::fs::read(&first).unwrap();
    let early = std::fs::metadata(&first).unwrap();
    let status = std::fs::read_to_string(m.join(".vm0fs/status")).unwrap();
    assert_eq!(content, b"here first\n");
    assert!(
        in_flight(&status, &id),
        "the version is still downloading after the first file was read:\n{status}"
    );
    assert_eq!(early.len(), 11);
    assert_eq!(early.mode() & 0o7777, 0o644);

    // A listing waits for the end, then shows everything; the inode handed out early is
    // the one the complete version has.
    let mut listed: Vec<(String, u64)> = std::fs::read_dir(&version)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), e.ino())
        })
        .collect();
    listed.sort();
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["big", "first.txt", "last.txt"]);
    let first_ino = listed.iter().find(|(n, _)| n == "first.txt").unwrap().1;
    assert_eq!(first_ino, early.ino(), "d_ino equals the early st_ino");
    assert_eq!(std::fs::metadata(&first).unwrap().ino(), early.ino());
    let status = std::fs::read_to_string(m.join(".vm0fs/status")).unwrap();
    assert!(
        !in_flight(&status, &id),
        "complete after the listing:\n{status}"
    );

    // Everything else is complete and right.
    for i in 0..BIG_FILES {
        let got = std::fs::read(version.join(format!("big/part{i}"))).unwrap();
        assert!(got == pattern(BIG, i as u64), "content of big/part{i}");
    }
    assert_eq!(
        std::fs::read(version.join("last.txt")).unwrap(),
        b"here last\n"
    );
    assert_eq!(emu.counter("store.get"), 2, "one download, resumed once");
}
