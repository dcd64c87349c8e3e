//! What the archive module trusts, through real mounts: an index file changed under a
//! running mount cannot take the daemon down, GNU base-256 times come out as GNU tar reads
//! them, and an archive of millions of empty members is refused within a small memory.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use common::hostile::{is_cached, put_sidecar, read_within, within, Sandbox};
use common::{ok, put_archive, tar_extract, tree_listing, Emulator, Mount};
use vm0_emulator::pack::{gzip, gzip_stream, ArchiveBuilder};

/// Generous bound for any single operation on the mount.
const DEADLINE: Duration = Duration::from_secs(60);

/// The version directory of version `id` in the cache.
fn version_dir(cache: &Path, id: &str) -> PathBuf {
    std::fs::read_dir(cache.join("versions"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(id))
        .unwrap_or_else(|| panic!("version {id} is not in the cache"))
}

/// The listing of `version` equals that of `tar -xzf` of `archive`, and so does every byte.
fn assert_same_tree(version: &Path, archive: &Path) {
    let expected = tar_extract(archive);
    assert_eq!(tree_listing(version), tree_listing(expected.path()));
    ok(Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(expected.path())
        .arg(version));
}

/// The daemon of `m` is still running (not dead of a signal: a zombie until reaped).
fn assert_alive(m: &Mount) {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", m.pid())).unwrap();
    let state = stat.rsplit(") ").next().unwrap().chars().next().unwrap();
    assert_ne!(state, 'Z', "the daemon died:\n{}", m.log_text());
}

/// A version of nested directories, so that a walk of it reads the index long after its
/// root directory was listed.
fn nested(seed: u64) -> Vec<u8> {
    let mut b = ArchiveBuilder::new();
    for d in 0..20 {
        for f in 0..20 {
            let body = format!("nested {seed}.{d}.{f}\n");
            b.file(
                &format!("d{d:02}/e{d:02}/f{f:02}.txt"),
                0o644,
                1_700_000_000 + f,
                body.as_bytes(),
            );
        }
    }
    b.symlink("link", "d00/e00/f00.txt", 1_700_000_000);
    // Directories get members of their own (`tar -xzf` dates an implied one to now).
    for d in 0..20 {
        b.dir(&format!("d{d:02}/e{d:02}"), 0o755, 1_690_000_000);
        b.dir(&format!("d{d:02}"), 0o750, 1_690_000_000);
    }
    b.finish()
}

/// The index of a version in use is cut to nothing under the running mount (what a temp
/// cleaner or a full disk's repair could do). The daemon serves from what it read at
/// load, so the version keeps matching `tar -xzf`, another version reads, the daemon lives
/// (a mapped index killed it with SIGBUS here); after a restart the damaged file is found
/// at load and the version downloaded again.
#[test]
fn an_index_truncated_under_the_mount_never_kills_the_daemon() {
    let data = tempfile::tempdir().unwrap();
    let a = put_archive(data.path(), "artifacts", "a", "v1", &nested(1));
    let b = put_archive(data.path(), "artifacts", "b", "v1", &nested(2));
    let emu = Emulator::with_data(data.path());
    let sb = Sandbox::new();
    let m = Mount::with(&emu, sb.opts());
    let a_id = emu.current_version("artifacts", "a");
    let a_dir = m.join(&format!("artifacts/a/{a_id}"));
    // Only the root directory of `a` is listed: every deeper lookup reads the index later.
    assert_eq!(std::fs::read_dir(&a_dir).unwrap().count(), 21);
    let index = version_dir(&sb.cache, &a_id).join("index.bin");
    std::fs::File::options()
        .write(true)
        .open(&index)
        .unwrap()
        .set_len(0)
        .unwrap();

    assert_same_tree(&a_dir, &a);
    let b_id = emu.current_version("artifacts", "b");
    assert_same_tree(&m.join(&format!("artifacts/b/{b_id}")), &b);
    assert_alive(&m);
    assert_eq!(emu.counter(&format!("download:{a_id}")), 1);

    // A restart opens the damaged file, refuses it and downloads the version again.
    drop(m);
    let m = Mount::with(&emu, sb.opts());
    assert_same_tree(&m.join(&format!("artifacts/a/{a_id}")), &a);
    assert_eq!(emu.counter(&format!("download:{a_id}")), 2);
    let log = m.log_text();
    assert!(
        log.contains("is damaged") && log.contains("index.bin"),
        "{log}"
    );
    assert_alive(&m);
    sb.assert_untouched();
}

/// `tar --format=gnu` (GNU tar's default) writes a time before 1970 in base-256: a file
/// dated 1950-01-01 shows mtime -631152000 through the mount, as `tar -xzf` gives it, and
/// `rsync -a` copies it as 1950 (not the year 2446).
#[test]
fn gnu_format_times_before_1970_match_tar_xzf_and_rsync() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("old-dir")).unwrap();
    std::fs::write(tree.join("old-dir/1950.txt"), b"nineteen fifty\n").unwrap();
    std::fs::write(tree.join("second-before.txt"), b"one second before 1970\n").unwrap();
    std::fs::write(tree.join("new.txt"), b"2023\n").unwrap();
    for (path, date) in [
        ("old-dir/1950.txt", "1950-01-01 00:00:00 UTC"),
        ("second-before.txt", "1969-12-31 23:59:59 UTC"),
        ("new.txt", "2023-11-14 22:13:20 UTC"),
        ("old-dir", "1950-01-01 00:00:00 UTC"),
        (".", "1960-06-01 12:00:00 UTC"),
    ] {
        ok(Command::new("touch")
            .arg("-d")
            .arg(date)
            .arg(tree.join(path)));
    }
    let archive = work.path().join("gnu.tar.gz");
    ok(Command::new("tar")
        .arg("--format=gnu")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&tree)
        .arg("."));
    let data = tempfile::tempdir().unwrap();
    let served = put_archive(
        data.path(),
        "volumes",
        "old",
        "v1",
        &std::fs::read(&archive).unwrap(),
    );
    let emu = Emulator::with_data(data.path());
    let m = Mount::new(&emu);
    let id = emu.current_version("volumes", "old");
    let version = m.join(&format!("volumes/old/{id}"));

    let mtime = |p: &Path| ok(Command::new("stat").arg("-c").arg("%Y").arg(p));
    assert_eq!(
        mtime(&version.join("old-dir/1950.txt")).trim(),
        "-631152000"
    );
    assert_eq!(mtime(&version.join("old-dir")).trim(), "-631152000");
    assert_eq!(mtime(&version.join("second-before.txt")).trim(), "-1");
    assert_same_tree(&version, &served);

    let copy = work.path().join("copy");
    ok(Command::new("rsync")
        .arg("-a")
        .arg(format!("{}/", version.display()))
        .arg(&copy));
    assert_eq!(mtime(&copy.join("old-dir/1950.txt")).trim(), "-631152000");
    assert_eq!(tree_listing(&copy), tree_listing(&version));
}

/// Peak resident memory of a process (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// A tar.gz of `count` empty files `empty-<i>`, streamed through `gzip -1` (never in
/// memory whole). The first member is a gzip member of its own: the emulator, which reads
/// the first gzip member only to compute what the service would record, is then done at
/// once instead of reading 10 million members in a debug build; vm0fs reads every gzip
/// member, as `gzip -d` and `tar -xzf` do.
fn empty_members(count: usize) -> Vec<u8> {
    let header = |i: usize| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        h.set_path(format!("empty-{i}")).unwrap();
        h.set_cksum();
        h
    };
    let mut out = gzip(header(0).as_bytes());
    out.extend(gzip_stream(|w| {
        for i in 1..count {
            w.write_all(header(i).as_bytes()).unwrap();
        }
        w.write_all(&[0u8; 1024]).unwrap();
    }));
    out
}

/// An archive of 10 million empty members (about 60 MB compressed, some 180 bytes of
/// memory each while a tree is built) announced as 1,000 files is refused once it passes
/// the member cap (2 * 1000 + 1024), with a message that says so; the daemon's peak memory
/// stays under 200 MiB, nothing of it is cached, and another version still reads.
#[test]
fn ten_million_empty_members_are_refused_in_little_memory() {
    let data = tempfile::tempdir().unwrap();
    put_archive(
        data.path(),
        "artifacts",
        "bomb",
        "v1",
        &empty_members(10_000_000),
    );
    put_sidecar(
        data.path(),
        "artifacts",
        "bomb",
        "v1",
        &json!({"size": 0, "file_count": 1000}),
    );
    put_archive(data.path(), "artifacts", "fine", "v1", &nested(3));
    let emu = Emulator::with_data(data.path());
    let sb = Sandbox::new();
    let m = Mount::with(&emu, sb.opts());
    let id = emu.current_version("artifacts", "bomb");
    // A listing waits for the whole version (a file may be served as soon as it is whole).
    let version = m.join(&format!("artifacts/bomb/{id}"));
    let listed = within(DEADLINE, move || {
        std::fs::read_dir(version)?.collect::<std::io::Result<Vec<_>>>()
    })
    .expect("the listing did not return in time");
    let err = listed
        .map(|d| d.len())
        .expect_err("a listing of the refused version");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let log = m.log_text();
    assert!(
        log.contains("more than 3024 members") && log.contains("1000 files"),
        "{log}"
    );
    let peak = peak_rss(m.pid());
    eprintln!("daemon peak memory: {peak} bytes");
    assert!(
        peak < 200 << 20,
        "the daemon's peak memory was {peak} bytes"
    );
    assert!(!is_cached(&sb.cache, &id));
    let fine = emu.current_version("artifacts", "fine");
    assert_eq!(
        read_within(
            DEADLINE,
            &m.join(&format!("artifacts/fine/{fine}/d00/e00/f00.txt"))
        )
        .unwrap(),
        b"nested 3.0.0\n"
    );
    sb.assert_untouched();
}
