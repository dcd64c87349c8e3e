//! What the archive module trusts, through real mounts: an index file changed under a
//! running mount cannot take the daemon down, GNU base-256 times come out as GNU tar reads
//! them, and an archive of millions of empty members is refused within a small memory.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use common::hostile::{poll_until, put_sidecar, read_within, Sandbox};
use common::{ok, put_archive, tar_extract, tree_listing, Emulator, Mount, MountOpts};
use vm0_emulator::pack::ArchiveBuilder;

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
    assert!(m.log_text().contains("damaged index"), "{}", m.log_text());
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
