//! Cached bytes are checked before they leave the daemon, through real mounts: content
//! damaged in the cache directory (a byte flipped, a file cut short, the pack deleted)
//! under a running mount and across a restart is never served. The read that finds it
//! fails with `EIO` once, the version is dropped (a warning, a count in the status file),
//! and the next read downloads it again and serves what `tar -xzf` of the archive gives.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use std::time::Duration;

use common::hostile::poll_until;
use common::{ok, put_archive, run, tar_extract, Emulator, Mount, MountOpts};
use vm0_emulator::pack::{pattern, ArchiveBuilder};

const MIB: usize = 1 << 20;

/// Small files first (`a.txt` lies at offset 0 of the pack), then a file of its own of
/// three blocks and a half.
fn archive() -> Vec<u8> {
    let mut b = ArchiveBuilder::new();
    b.file("a.txt", 0o644, 1_700_000_000, b"first small file\n");
    b.file("b.txt", 0o644, 1_700_000_000, b"second small file\n");
    b.file("dir/c.txt", 0o600, 1_700_000_000, &pattern(5000, 3));
    b.file("big.bin", 0o644, 1_700_000_000, &pattern(7 * MIB / 2, 4));
    b.finish()
}

struct Setup {
    _data: tempfile::TempDir,
    expected: tempfile::TempDir,
    emu: Emulator,
    cache: tempfile::TempDir,
}

fn setup() -> Setup {
    let data = tempfile::tempdir().unwrap();
    let archive = put_archive(data.path(), "artifacts", "checked", "v1", &archive());
    let expected = tar_extract(&archive);
    let emu = Emulator::with_data(data.path());
    Setup {
        _data: data,
        expected,
        emu,
        cache: tempfile::tempdir().unwrap(),
    }
}

impl Setup {
    fn mount(&self) -> Mount {
        Mount::with(
            &self.emu,
            MountOpts {
                cache: Some(self.cache.path().to_path_buf()),
                ..Default::default()
            },
        )
    }

    /// The directory of the one version in the cache.
    fn version_dir(&self) -> PathBuf {
        let found: Vec<PathBuf> = std::fs::read_dir(self.cache.path().join("versions"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        found[0].clone()
    }

    fn expected(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.expected.path().join(name)).unwrap()
    }

    /// The version is the tree `tar -xzf` makes of the archive, every byte.
    fn assert_whole(&self, m: &Mount) {
        ok(Command::new("diff")
            .arg("-r")
            .arg(self.expected.path())
            .arg(m.join("artifacts/checked/latest/")));
    }
}

/// Wait until the version is complete in the cache: `find` lists every name (which waits
/// for the end of a first unpack, and reads no content), and the version directory is
/// there (the kernel keeps the listing, so a download started by a read is waited for
/// in the cache directory).
fn complete(m: &Mount, s: &Setup) {
    ok(Command::new("find").arg(m.join("artifacts/checked/latest/")));
    let versions = s.cache.path().join("versions");
    poll_until(
        Duration::from_secs(30),
        "the version is in the cache",
        || std::fs::read_dir(&versions).is_ok_and(|d| d.count() == 1),
    );
}

fn cat(m: &Mount, name: &str) -> Output {
    run(Command::new("cat").arg(m.join("artifacts/checked/latest/").join(name)))
}

/// Read `name` with `O_DIRECT` (`dd iflag=direct`), so that every read reaches the daemon
/// whatever the kernel's page cache holds, and no failed read is retried by the kernel
/// (a buffered read whose readahead failed is read again, and that second read is then
/// served from the version downloaded again). It fails with `EIO`, and what it copied
/// before is a prefix of the right bytes.
fn assert_eio_and_no_wrong_byte(m: &Mount, s: &Setup, name: &str) {
    let path = m.join("artifacts/checked/latest/").join(name);
    let out = run(Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["iflag=direct", "bs=1M", "status=none"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Input/output error"),
        "dd {name}: {} {stderr}\n{}",
        out.status,
        m.log_text()
    );
    let want = s.expected(name);
    assert!(
        want.starts_with(&out.stdout),
        "cat {name} printed {} bytes that are not the file's",
        out.stdout.len()
    );
}

fn assert_right(m: &Mount, s: &Setup, name: &str) {
    let out = cat(m, name);
    assert!(
        out.status.success(),
        "cat {name}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.log_text()
    );
    assert!(out.stdout == s.expected(name), "cat {name}: wrong bytes");
}

fn status(m: &Mount) -> String {
    std::fs::read_to_string(m.join(".vm0fs/status")).unwrap()
}

fn damaged_warnings(m: &Mount) -> usize {
    m.log_text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("a cached version is damaged"))
        .count()
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// The one file of its own (`big.bin`) of the version in the cache.
fn own_file(s: &Setup) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(s.version_dir().join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(found.len(), 1);
    found.pop().unwrap()
}

#[test]
fn damaged_content_under_a_running_mount_is_eio_once_then_the_right_bytes() {
    let s = setup();
    let m = s.mount();
    complete(&m, &s);

    // A byte of a.txt flipped in the pack.
    flip_byte(&s.version_dir().join("pack"), 3);
    assert_eio_and_no_wrong_byte(&m, &s, "a.txt");
    assert_right(&m, &s, "a.txt");

    // big.bin cut short in its third block.
    complete(&m, &s);
    truncate(&own_file(&s), (5 * MIB / 2) as u64);
    assert_eio_and_no_wrong_byte(&m, &s, "big.bin");
    assert_right(&m, &s, "big.bin");

    // The pack deleted, as a temp cleaner does.
    complete(&m, &s);
    std::fs::remove_file(s.version_dir().join("pack")).unwrap();
    assert_eio_and_no_wrong_byte(&m, &s, "b.txt");
    assert_right(&m, &s, "b.txt");

    let text = status(&m);
    assert!(text.contains("damaged versions: 3 "), "{text}");
    assert_eq!(damaged_warnings(&m), 3, "{}", m.log_text());
    s.assert_whole(&m);
}

#[test]
fn damaged_content_across_a_restart_is_eio_once_then_the_right_bytes() {
    let s = setup();
    let m = s.mount();
    s.assert_whole(&m);
    m.unmount();

    // A flipped byte keeps every length: the scan at start cannot see it, the read does.
    flip_byte(&own_file(&s), 3 * MIB + 10);
    let m = s.mount();
    assert_eio_and_no_wrong_byte(&m, &s, "big.bin");
    assert_right(&m, &s, "big.bin");
    assert!(status(&m).contains("damaged versions: 1 "));
    complete(&m, &s);
    m.unmount();

    // A file cut short: the scan at start finds it, and nothing is ever read of it.
    truncate(&s.version_dir().join("pack"), 10);
    let m = s.mount();
    assert!(status(&m).contains("damaged versions: 1 "));
    assert_right(&m, &s, "dir/c.txt");
    s.assert_whole(&m);
    complete(&m, &s);
    m.unmount();

    // The checksum file damaged: found when the version is opened.
    flip_byte(&s.version_dir().join("checks.bin"), 70);
    let m = s.mount();
    assert_right(&m, &s, "a.txt");
    assert!(status(&m).contains("damaged versions: 1 "));
    s.assert_whole(&m);
}

/// With `--track-opens`, a large file may be handed to the kernel (passthrough), which
/// then reads it without the daemon: it is checked whole at `open`, so damage found there
/// fails the open, and the next open gets the version downloaded again. Files read
/// through handles are checked like any other.
#[test]
fn damaged_content_with_track_opens_is_eio_once_then_the_right_bytes() {
    let s = setup();
    let opts = || MountOpts {
        cache: Some(s.cache.path().to_path_buf()),
        extra: vec!["--track-opens".into()],
        ..Default::default()
    };
    let m = Mount::with(&s.emu, opts());
    s.assert_whole(&m);
    m.unmount();

    flip_byte(&own_file(&s), 10);
    flip_byte(&s.version_dir().join("pack"), 3);
    let m = Mount::with(&s.emu, opts());
    assert_eio_and_no_wrong_byte(&m, &s, "big.bin");
    assert_right(&m, &s, "big.bin");
    complete(&m, &s);
    m.unmount();

    flip_byte(&s.version_dir().join("pack"), 3);
    let m = Mount::with(&s.emu, opts());
    assert_eio_and_no_wrong_byte(&m, &s, "a.txt");
    assert_right(&m, &s, "a.txt");
    assert!(status(&m).contains("damaged versions: 1 "));
    s.assert_whole(&m);
}
