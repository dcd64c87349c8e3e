//! Hostile and corrupt archives through real mounts: every archive is built here (by hand
//! where `tar::Builder` refuses: `..`, absolute paths, raw link names), served by the
//! emulator, mounted, and checked from three sides:
//!
//! - nothing is written outside the cache directory (sentinel directories around it and
//!   under /tmp stay empty, the cache holds only what the cache itself makes);
//! - the safe members of the same archive are served byte for byte;
//! - the refused members are absent, and the daemon's log names each of them.
//!
//! Corrupt data (truncated gzip, not gzip, gzip without a tar, damaged tar) and
//! decompression bombs give EIO for that version only, a log line that says what is wrong,
//! and nothing in the cache.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tar::EntryType;

use common::hostile::{
    assert_cache_layout, disk_usage, is_cached, log_when, poll_until, put_sidecar, read_within,
    skip_line, tmp_entries, version_with_message, within, Sandbox,
};
use common::{ok, put_archive, tar_extract, tree_listing, Emulator, Mount};
use vm0_emulator::pack::{gzip, huge_header_archive, pattern, zero_bomb, ArchiveBuilder, RawTar};

const MIB: u64 = 1 << 20;
/// Generous bound for any single operation on the mount.
const DEADLINE: Duration = Duration::from_secs(60);

/// Every path below `dir`, relative, without following symlinks, with a type letter
/// (`d`, `f`, `l`).
fn paths_under(dir: &Path) -> BTreeMap<String, char> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, char>) {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display())) {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            let kind = if meta.is_dir() {
                'd'
            } else if meta.file_type().is_symlink() {
                'l'
            } else {
                'f'
            };
            out.insert(
                e.path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                kind,
            );
            if meta.is_dir() {
                walk(root, &e.path(), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

// ---------------------------------------------------------------------------------------
// Members that try to get out

#[test]
fn escaping_members_write_nothing_outside_the_cache_and_the_safe_ones_are_served() {
    let sb = Sandbox::new();
    let sentinel = sb.sentinel.to_str().unwrap().to_string();
    let tmp_sentinel = sb.tmp_sentinel.to_str().unwrap().to_string();
    let outside = sb.outside.to_str().unwrap().to_string();
    let deep_escape = format!("{}sentinel/gnu-long", "../".repeat(40));
    let pax_escape = "../../sentinel/pax".to_string();

    // The safe members, with content that would tell a mix-up apart. Some are named like
    // the cache's own files: a member name must never become a path on disk.
    let safe: Vec<(&str, Vec<u8>)> = vec![
        ("README.md", b"# safe readme\n".to_vec()),
        ("dir/inner.txt", pattern(10_000, 1)),
        ("index.bin", b"not the cache's index\n".to_vec()),
        ("checks.bin", b"not the cache's checksums\n".to_vec()),
        ("meta.json", b"{\"not\":\"the cache's meta\"}\n".to_vec()),
        ("data/0", b"not blob 0\n".to_vec()),
        ("data/1", pattern(5000, 2)),
        ("lock", b"not the cache lock\n".to_vec()),
        ("pack", b"not the cache's pack\n".to_vec()),
    ];
    let mut t = RawTar::new();
    for (name, data) in &safe {
        t.file(name, 0o644, data);
    }
    // (member name, how it is written) for every member that must be refused.
    let mut refused: Vec<String> = Vec::new();
    let mut escapes: Vec<String> = (1..=6)
        .map(|depth| format!("{}sentinel/x{depth}", "../".repeat(depth)))
        .collect();
    escapes.push("dir/../../sentinel/y".into());
    escapes.push("./../outside".into());
    escapes.push(format!("{sentinel}/abs"));
    escapes.push(format!("{tmp_sentinel}/abs"));
    escapes.push(outside.clone());
    for name in escapes {
        t.file(&name, 0o644, b"escaped!\n");
        refused.push(name);
    }
    // Symlinks are kept (as their target bytes), but nothing may go through them.
    t.symlink("evil", &sentinel);
    t.file("evil/x", 0o644, b"through a symlink\n");
    refused.push("evil/x".into());
    t.symlink("up", "../../sentinel");
    t.file("up/y", 0o644, b"through a relative symlink\n");
    refused.push("up/y".into());
    t.symlink("evil-tmp", &tmp_sentinel);
    t.dir("evil-tmp/newdir", 0o755);
    refused.push("evil-tmp/newdir".into());
    t.hard_link("evil-tmp/hl", "README.md");
    refused.push("evil-tmp/hl".into());
    t.symlink("abs-link", "/etc/passwd");
    // Hard links must name an earlier member inside the archive.
    for (name, target) in [
        ("hl-passwd", "/etc/passwd".to_string()),
        ("hl-outside", "../../outside".to_string()),
        ("hl-outside-abs", outside.clone()),
        ("hl-through-symlink", "evil/x".to_string()),
        ("hl-sentinel-dir", sentinel.clone()),
    ] {
        t.hard_link(name, &target);
        refused.push(name.to_string());
    }
    t.hard_link("hl-ok", "README.md");
    // Long names and link names in GNU and pax headers get the same rules.
    t.gnu_long(
        EntryType::Regular,
        deep_escape.as_bytes(),
        b"",
        0o644,
        b"gnu long escape\n",
    );
    refused.push(deep_escape.clone());
    t.pax(
        &[("path", pax_escape.as_bytes())],
        EntryType::Regular,
        "pax-placeholder",
        b"",
        0o644,
        b"pax escape\n",
    );
    refused.push(pax_escape.clone());
    t.pax(
        &[("linkpath", b"/etc/shadow")],
        EntryType::Link,
        "hl-pax-shadow",
        b"README.md",
        0o644,
        b"",
    );
    refused.push("hl-pax-shadow".into());
    let archive = t.gz();

    let data = tempfile::tempdir().unwrap();
    put_archive(data.path(), "artifacts", "hostile", "v1", &archive);
    let emu = Emulator::with_data(data.path());
    let m = Mount::with(&emu, sb.opts());
    let id = emu.current_version("artifacts", "hostile");
    let version = m.join(&format!("artifacts/hostile/{id}"));

    // (b) The safe members, byte for byte.
    for (name, want) in &safe {
        let got =
            read_within(DEADLINE, &version.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&got, want, "content of {name}");
    }
    for (link, target) in [
        ("evil", sentinel.as_str()),
        ("up", "../../sentinel"),
        ("abs-link", "/etc/passwd"),
    ] {
        assert_eq!(
            std::fs::read_link(version.join(link)).unwrap(),
            Path::new(target),
            "{link}"
        );
    }
    let readme = std::fs::metadata(version.join("README.md")).unwrap();
    let hl = std::fs::metadata(version.join("hl-ok")).unwrap();
    assert_eq!(
        (hl.ino(), hl.nlink()),
        (readme.ino(), 2),
        "hl-ok is a second name of README.md"
    );

    // (c) Exactly the safe members are there: the refused ones are absent.
    let got = paths_under(&version);
    let mut want: BTreeMap<String, char> = safe.iter().map(|(n, _)| (n.to_string(), 'f')).collect();
    want.insert("hl-ok".into(), 'f');
    for d in ["dir", "data"] {
        want.insert(d.into(), 'd');
    }
    for l in ["evil", "up", "evil-tmp", "abs-link"] {
        want.insert(l.into(), 'l');
    }
    assert_eq!(got, want, "the version's tree");

    // ... and the log names the first ten of them (members come in this order), then
    // counts them all in one line.
    let total = format!("skipped {} archive members in all", refused.len());
    let log = log_when(&m, "the count of refused members", |log| {
        log.contains(&total)
    });
    for r in &refused[..vm0fs::archive::SKIPPED_KEPT] {
        assert!(skip_line(&log, r).is_some(), "no warning naming {r}");
    }
    for r in &refused[vm0fs::archive::SKIPPED_KEPT..] {
        assert!(
            skip_line(&log, r).is_none(),
            "a warning past the first ten: {r}"
        );
    }

    // (a) Nothing outside the cache.
    sb.assert_untouched();
    assert!(is_cached(&sb.cache, &id));
    assert!(tmp_entries(&sb.cache).is_empty());
}

#[test]
fn device_nodes_fifos_and_unknown_member_types_are_skipped_and_logged() {
    let sb = Sandbox::new();
    let mut t = RawTar::new();
    t.file("keep.txt", 0o644, b"kept\n");
    t.device(EntryType::Char, "dev-null", 1, 3);
    t.device(EntryType::Block, "dev-sda", 8, 0);
    t.raw(EntryType::Fifo, b"fifo", b"", 0o644, b"");
    // tar has no socket type (GNU tar skips sockets when creating); other writers use
    // letters of their own: none of them may become anything but a log line.
    t.raw(EntryType::new(b'V'), b"volume-label", b"", 0o644, b"");
    t.raw(EntryType::new(b's'), b"socket", b"", 0o755, b"");
    t.raw(
        EntryType::new(b'Z'),
        b"unknown-type",
        b"",
        0o644,
        b"some content\n",
    );
    t.file("after.txt", 0o644, b"after the oddities\n");
    let data = tempfile::tempdir().unwrap();
    put_archive(data.path(), "volumes", "devices", "v1", &t.gz());
    let emu = Emulator::with_data(data.path());
    let m = Mount::with(&emu, sb.opts());
    let version = m.join("volumes/devices/latest/");

    assert_eq!(
        read_within(DEADLINE, &version.join("keep.txt")).unwrap(),
        b"kept\n"
    );
    assert_eq!(
        std::fs::read(version.join("after.txt")).unwrap(),
        b"after the oddities\n"
    );
    let got: Vec<String> = paths_under(&version).into_keys().collect();
    assert_eq!(got, ["after.txt", "keep.txt"]);
    let skipped = [
        "dev-null",
        "dev-sda",
        "fifo",
        "volume-label",
        "socket",
        "unknown-type",
    ];
    let log = log_when(&m, "the skipped members", |log| {
        skipped.iter().all(|s| skip_line(log, s).is_some())
    });
    assert!(skip_line(&log, "dev-null").unwrap().contains("device"));
    assert!(skip_line(&log, "fifo").unwrap().contains("FIFO"));
    sb.assert_untouched();
}

#[test]
fn setuid_and_setgid_bits_are_dropped() {
    let sb = Sandbox::new();
    let mut t = RawTar::new();
    // (name, mode in the archive, mode shown)
    let cases = [
        ("suid", 0o4755, 0o755),
        ("sgid", 0o2755, 0o755),
        ("both", 0o6777, 0o777),
        ("suid-readonly", 0o4444, 0o444),
        ("plain", 0o640, 0o640),
    ];
    for (name, mode, _) in cases {
        t.file(name, mode, b"#!/bin/sh\nid\n");
    }
    t.raw(EntryType::Directory, b"sgid-dir", b"", 0o2775, b"");
    t.raw(EntryType::Directory, b"sticky-dir", b"", 0o1777, b"");
    let data = tempfile::tempdir().unwrap();
    put_archive(data.path(), "artifacts", "modes", "v1", &t.gz());
    let emu = Emulator::with_data(data.path());
    let m = Mount::with(&emu, sb.opts());
    let version = m.join("artifacts/modes/latest/");
    for (name, _, shown) in cases {
        let mode = std::fs::metadata(version.join(name)).unwrap().mode();
        assert_eq!(mode & 0o7777, shown, "{name}: {mode:o}");
    }
    let mode = |n: &str| std::fs::metadata(version.join(n)).unwrap().mode() & 0o7777;
    assert_eq!(mode("sgid-dir"), 0o775);
    // The sticky bit is harmless and kept, as tar keeps it.
    assert_eq!(mode("sticky-dir"), 0o1777);
    // `stat` agrees (no s/S in the symbolic mode).
    let out = ok(std::process::Command::new("stat")
        .arg("-c")
        .arg("%A")
        .arg(version.join("both")));
    assert_eq!(out.trim(), "-rwxrwxrwx");
    let opts = common::sh(&format!(
        "findmnt -n -o OPTIONS --target {}",
        m.path().display()
    ));
    assert!(
        opts.split(',').any(|o| o == "nosuid"),
        "mount options: {opts}"
    );
    sb.assert_untouched();
}

#[test]
fn names_linux_cannot_hold_are_skipped_and_logged() {
    let sb = Sandbox::new();
    let long = "n".repeat(256);
    let just_fits = "m".repeat(255);
    let mut t = RawTar::new();
    t.gnu_long(
        EntryType::Regular,
        long.as_bytes(),
        b"",
        0o644,
        b"too long\n",
    );
    t.gnu_long(
        EntryType::Regular,
        just_fits.as_bytes(),
        b"",
        0o644,
        b"fits\n",
    );
    t.pax(
        &[("path", b"nul\0byte")],
        EntryType::Regular,
        "placeholder",
        b"",
        0o644,
        b"nul\n",
    );
    t.raw(
        EntryType::Regular,
        b".",
        b"",
        0o644,
        b"the root as a file\n",
    );
    t.raw(EntryType::Symlink, b"empty-target", b"", 0o777, b"");
    t.pax(
        &[("linkpath", &[b'x'; 5000])],
        EntryType::Symlink,
        "huge-target",
        b"",
        0o777,
        b"",
    );
    t.file("ok.txt", 0o644, b"ok\n");
    let data = tempfile::tempdir().unwrap();
    put_archive(data.path(), "artifacts", "names", "v1", &t.gz());
    let emu = Emulator::with_data(data.path());
    let m = Mount::with(&emu, sb.opts());
    let version = m.join("artifacts/names/latest/");
    assert_eq!(
        read_within(DEADLINE, &version.join("ok.txt")).unwrap(),
        b"ok\n"
    );
    assert_eq!(std::fs::read(version.join(&just_fits)).unwrap(), b"fits\n");
    let got: BTreeSet<String> = paths_under(&version).into_keys().collect();
    assert_eq!(got, [just_fits.clone(), "ok.txt".into()].into());
    // `ls` works on the directory: one bad name must not break a whole readdir.
    ok(std::process::Command::new("ls").arg("-la").arg(&version));
    let skipped = [
        long.as_str(),
        "nul\0byte",
        ".",
        "empty-target",
        "huge-target",
    ];
    log_when(&m, "the skipped members", |log| {
        skipped.iter().all(|s| skip_line(log, s).is_some())
    });
    sb.assert_untouched();
}

// ---------------------------------------------------------------------------------------
// Valid but unusual archives: the same tree as GNU tar

#[test]
fn long_names_pax_times_late_directories_and_repeats_match_tar_xzf() {
    let long_dir = format!("{}/{}", "d".repeat(90), "e".repeat(90));
    let long_file = format!("{long_dir}/{}", "f".repeat(120));
    let long_target = format!("../{}/{}", "t".repeat(80), "u".repeat(80));
    let pax_file = format!("{long_dir}/pax-{}", "p".repeat(110));
    let mut t = RawTar::new();
    // GNU long name, and a GNU long link name on a symlink.
    t.gnu_long(
        EntryType::Regular,
        long_file.as_bytes(),
        b"",
        0o640,
        b"gnu long name\n",
    );
    t.gnu_long(
        EntryType::Symlink,
        b"gnu-long-link",
        long_target.as_bytes(),
        0o777,
        b"",
    );
    // pax path with a fractional mtime, pax linkpath on a symlink and on a hard link.
    t.pax(
        &[
            ("path", pax_file.as_bytes()),
            ("mtime", b"1700000123.123456789"),
        ],
        EntryType::Regular,
        "placeholder-1",
        b"",
        0o644,
        b"pax long name\n",
    );
    t.pax(
        &[
            ("linkpath", long_target.as_bytes()),
            ("mtime", b"1700000124.5"),
        ],
        EntryType::Symlink,
        "pax-long-link",
        b"placeholder",
        0o777,
        b"",
    );
    t.pax(
        &[("linkpath", long_file.as_bytes())],
        EntryType::Link,
        "pax-hard-link",
        b"x",
        0o640,
        b"",
    );
    // Directory entries after their children (modes and mtimes come from the late entry).
    t.file("late/sub/f.txt", 0o644, b"late\n");
    t.raw(EntryType::Directory, b"late/sub/", b"", 0o750, b"");
    t.raw(EntryType::Directory, b"late/", b"", 0o755, b"");
    t.raw(
        EntryType::Directory,
        "d".repeat(90).as_bytes(),
        b"",
        0o755,
        b"",
    );
    t.gnu_long(EntryType::Directory, long_dir.as_bytes(), b"", 0o700, b"");
    // Repeats: the last member of a name wins.
    t.file("rep.txt", 0o644, b"first\n");
    t.file("rep.txt", 0o600, b"second, and longer\n");
    t.symlink("was-link", "rep.txt");
    t.file("was-link", 0o644, b"now a file\n");
    t.file("was-file", 0o644, b"a file first\n");
    t.symlink("was-file", "rep.txt");
    // A hard link keeps the old content when its first name is replaced.
    t.file("orig", 0o644, b"old content\n");
    t.hard_link("keeps-old", "orig");
    t.file("orig", 0o644, b"new content\n");
    let archive = t.gz();

    let data = tempfile::tempdir().unwrap();
    let path = put_archive(data.path(), "artifacts", "tricky", "v1", &archive);
    let emu = Emulator::with_data(data.path());
    let m = Mount::new(&emu);
    let id = emu.current_version("artifacts", "tricky");
    let version = m.join(&format!("artifacts/tricky/{id}"));
    let expected = tar_extract(&path);
    let _ = read_within(DEADLINE, &version.join("rep.txt"));
    assert_eq!(tree_listing(&version), tree_listing(expected.path()));
    ok(std::process::Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(expected.path())
        .arg(&version));
    // Spot checks that the comparison is not vacuous.
    assert_eq!(
        std::fs::read(version.join("rep.txt")).unwrap(),
        b"second, and longer\n"
    );
    assert_eq!(
        std::fs::read(version.join("keeps-old")).unwrap(),
        b"old content\n"
    );
    assert_eq!(
        std::fs::read_link(version.join("pax-long-link")).unwrap(),
        Path::new(&long_target)
    );
    let mtime = std::fs::metadata(version.join(&pax_file)).unwrap();
    assert_eq!(
        (mtime.mtime(), mtime.mtime_nsec()),
        (1_700_000_123, 123_456_789)
    );
    assert_eq!(
        std::fs::metadata(version.join("late/sub")).unwrap().mode() & 0o777,
        0o750
    );
}

/// A version that GNU tar wrote from a real sparse file (`tar -S`: an old-style GNU sparse
/// member, data blocks and a map of the holes) is served whole, holes as zeros, as
/// `tar -xzf` writes it: the emulator announces its real size, so the unpack is not
/// refused as larger than announced (issue 18).
#[test]
fn a_gnu_sparse_version_matches_tar_xzf() {
    use std::os::unix::fs::FileExt;

    let src = tempfile::tempdir().unwrap();
    let sparse = std::fs::File::create(src.path().join("sparse.bin")).unwrap();
    sparse.write_all_at(&[7u8; 10_000], 0).unwrap();
    sparse.write_all_at(&[9u8; 5_000], 3 << 20).unwrap();
    sparse.set_len(6 << 20).unwrap();
    drop(sparse);
    std::fs::write(src.path().join("small.txt"), b"small\n").unwrap();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("volumes/sparse");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("v1.tar.gz");
    ok(std::process::Command::new("tar")
        .args(["--format=gnu", "-S", "-czf"])
        .arg(&path)
        .arg("-C")
        .arg(src.path())
        .arg("."));

    let emu = Emulator::with_data(data.path());
    let m = Mount::new(&emu);
    let id = emu.current_version("volumes", "sparse");
    let version = m.join(&format!("volumes/sparse/{id}"));
    let expected = tar_extract(&path);
    let content = read_within(DEADLINE, &version.join("sparse.bin")).expect("read the sparse file");
    assert_eq!(content.len(), 6 << 20);
    assert_eq!(&content[3 << 20..(3 << 20) + 5_000], &[9u8; 5_000][..]);
    assert_eq!(tree_listing(&version), tree_listing(expected.path()));
    ok(std::process::Command::new("diff")
        .arg("-r")
        .arg(expected.path())
        .arg(&version));
}

// ---------------------------------------------------------------------------------------
// Corrupt data

/// A valid archive of a few files, distinct per `seed`.
fn small_archive(seed: u64) -> Vec<u8> {
    let mut b = ArchiveBuilder::new();
    b.file(
        "a.txt",
        0o644,
        1_700_000_000,
        format!("archive {seed}\n").as_bytes(),
    );
    b.file("b.bin", 0o644, 1_700_000_000, &pattern(300_000, seed));
    b.finish()
}

/// The checks after a version failed: EIO for it, the log says what is wrong, nothing of it
/// is cached, and `good` (a path in another version) still reads `good_content`.
fn assert_failed_cleanly(
    m: &Mount,
    cache: &Path,
    id: &str,
    path: &Path,
    problem: &str,
    good: &Path,
    good_content: &[u8],
) {
    // The other version whole first (a listing waits for its commit), so that `tmp/` below
    // can hold nothing of it: a read alone may be answered while it is still unpacking.
    let good_dir = good.parent().expect("a path in a version").to_path_buf();
    within(DEADLINE, move || {
        std::fs::read_dir(good_dir).map(Iterator::count)
    })
    .expect("listing the other version did not return in time")
    .expect("the other version lists");
    let err = read_within(DEADLINE, path).expect_err("a corrupt version must not read");
    assert_eq!(errno(&err), libc::EIO, "{}: {err}", path.display());
    log_when(m, problem, |log| {
        log.lines().any(|l| l.contains(id) && l.contains(problem))
    });
    assert!(!is_cached(cache, id), "a corrupt version was cached");
    assert!(
        tmp_entries(cache).is_empty(),
        "leftovers in tmp/: {:?}",
        tmp_entries(cache)
    );
    assert_eq!(
        read_within(DEADLINE, good).unwrap(),
        good_content,
        "another version broke"
    );
    assert_cache_layout(cache);
}

#[test]
fn corrupt_archives_in_the_data_give_eio_for_that_version_only() {
    let data = tempfile::tempdir().unwrap();
    let good = small_archive(1);
    let other = small_archive(2);
    let mut garbage = pattern(other.len(), 99);
    garbage[0] = b'G';
    let notar = gzip(&b"this is text, not a tar archive\n".repeat(2000));
    // A gzip stream of a tar whose second header is damaged.
    let mut tar = RawTar::new();
    tar.file("first.txt", 0o644, b"first\n");
    tar.file("second.txt", 0o644, b"second\n");
    let mut tar = tar.tar();
    tar[512 + 512 + 148..512 + 512 + 156].copy_from_slice(b"9999999\0");
    let badtar = gzip(&tar);
    let versions: [(&str, Vec<u8>); 5] = [
        ("v1-good", good),
        ("v2-truncated", other[..other.len() / 2].to_vec()),
        ("v3-garbage", garbage),
        ("v4-notar", notar),
        ("v5-badtar", badtar),
    ];
    for (label, bytes) in &versions {
        put_archive(data.path(), "artifacts", "mixed", label, bytes);
        // The API announces what the archive would hold: files to download.
        put_sidecar(
            data.path(),
            "artifacts",
            "mixed",
            label,
            &json!({"size": 400_000, "file_count": 2, "message": label}),
        );
    }
    let emu = Emulator::with_data(data.path());
    let sb = Sandbox::new();
    let m = Mount::with(&emu, sb.opts());
    let id = |label: &str| version_with_message(&emu, "artifacts", "mixed", label);
    let good_id = id("v1-good");
    let good_path = m.join(&format!("artifacts/mixed/{good_id}/a.txt"));
    assert_eq!(read_within(DEADLINE, &good_path).unwrap(), b"archive 1\n");

    for (label, problem) in [
        ("v2-truncated", "ends early"),
        ("v3-garbage", "not gzip-compressed"),
        ("v4-notar", "does not hold a tar archive"),
        ("v5-badtar", "tar data is damaged"),
    ] {
        let v = id(label);
        // Not `a.txt`: it comes first and is complete in the truncated archive, so it may be
        // served (correctly) before the damage further on is found. `b.bin` is never whole.
        let path = m.join(&format!("artifacts/mixed/{v}/b.bin"));
        assert_failed_cleanly(
            &m,
            &sb.cache,
            &v,
            &path,
            problem,
            &good_path,
            b"archive 1\n",
        );
        // Listing the failed version is EIO too, not an empty directory.
        let err = std::fs::read_dir(m.join(&format!("artifacts/mixed/{v}")))
            .and_then(|mut d| d.next().transpose());
        assert_eq!(
            err.map_err(|e| errno(&e)).err(),
            Some(libc::EIO),
            "{label}: listing"
        );
    }
    // The version list itself is intact.
    let listed = std::fs::read_dir(m.join("artifacts/mixed"))
        .unwrap()
        .count();
    assert_eq!(listed, 6, "5 versions and latest");
    sb.assert_untouched();
}

#[test]
fn a_corrupting_store_gives_eio_nothing_cached_and_the_next_try_works() {
    let data = tempfile::tempdir().unwrap();
    let damages = [
        ("truncate", "ends early"),
        ("garbage", "not gzip-compressed"),
        ("notar", "does not hold a tar archive"),
    ];
    // One victim per damage: a failed download is remembered for a while (the next access
    // gets the same error without downloading again), so each damage needs a fresh version.
    for (corrupt, _) in damages {
        let name = format!("victim-{corrupt}");
        put_archive(data.path(), "artifacts", &name, "v1", &small_archive(3));
    }
    put_archive(
        data.path(),
        "artifacts",
        "bystander",
        "v1",
        &small_archive(4),
    );
    let emu = Emulator::with_data(data.path());
    let sb = Sandbox::new();
    let m = Mount::with(&emu, sb.opts());
    let bystander = m.join("artifacts/bystander/latest/a.txt");
    let mut victims = Vec::new();
    for (corrupt, problem) in damages {
        let name = format!("victim-{corrupt}");
        let victim = emu.current_version("artifacts", &name);
        // `b.bin`, not `a.txt`: a file complete before the damage may be served while the
        // archive is read (progressive availability); `b.bin` is cut by the truncation.
        let broken = m.join(&format!("artifacts/{name}/{victim}/b.bin"));
        emu.fault(json!({"route": "store.get", "version": victim, "corrupt": corrupt, "count": 1}));
        assert_failed_cleanly(
            &m,
            &sb.cache,
            &victim,
            &broken,
            problem,
            &bystander,
            b"archive 4\n",
        );
        victims.push((name, victim));
    }
    // The faults are spent: once its failure is forgotten, a version downloads, unpacks and
    // stays.
    let (name, victim) = &victims[0];
    let path = m.join(&format!("artifacts/{name}/{victim}/a.txt"));
    let mut read = None;
    poll_until(DEADLINE, "the version to read again", || {
        read = read_within(DEADLINE, &path).ok();
        read.is_some()
    });
    assert_eq!(read.unwrap(), b"archive 3\n");
    // The read may be answered before the version is complete and committed.
    poll_until(DEADLINE, "the version to be cached", || {
        is_cached(&sb.cache, victim)
    });
    sb.assert_untouched();
}

// ---------------------------------------------------------------------------------------
// Decompression bombs

/// Read `path` (expecting EIO) while sampling the disk usage of `cache`; the peak.
fn read_failing_while_sampling(path: &Path, cache: &Path) -> (std::io::Error, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak, root) = (stop.clone(), peak.clone(), cache.to_path_buf());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(disk_usage(&root), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let result = read_within(DEADLINE, path);
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let err = result.expect_err("a bomb must not read");
    (err, peak.load(Ordering::Relaxed))
}

#[test]
fn a_decompression_bomb_is_stopped_before_it_fills_the_disk() {
    let data = tempfile::tempdir().unwrap();
    // 200 MiB of zeros in one file: a few hundred KiB of archive.
    let bomb = zero_bomb("zeros", 1, 200 * MIB);
    assert!(
        bomb.len() < 2 * MIB as usize,
        "the bomb is {} bytes",
        bomb.len()
    );
    put_archive(data.path(), "artifacts", "bomb", "v1", &bomb);
    put_sidecar(
        data.path(),
        "artifacts",
        "bomb",
        "v1",
        &json!({"size": 4096, "file_count": 1}),
    );
    // Many files each under the limit, together far over it.
    put_archive(
        data.path(),
        "artifacts",
        "many",
        "v1",
        &zero_bomb("part", 64, MIB),
    );
    put_sidecar(
        data.path(),
        "artifacts",
        "many",
        "v1",
        &json!({"size": 2 * MIB, "file_count": 64}),
    );
    put_archive(data.path(), "artifacts", "fine", "v1", &small_archive(5));
    let emu = Emulator::with_data(data.path());
    let sb = Sandbox::new();
    let m = Mount::with(&emu, sb.opts());

    let id = emu.current_version("artifacts", "bomb");
    let (err, peak) =
        read_failing_while_sampling(&m.join("artifacts/bomb/latest/zeros-0"), &sb.cache);
    assert_eq!(errno(&err), libc::EIO, "{err}");
    assert!(
        peak < MIB,
        "the cache grew to {peak} bytes for a 4 KiB version"
    );
    log_when(&m, "the bomb", |log| {
        log.lines()
            .any(|l| l.contains(&id) && l.contains("announced"))
    });
    assert!(!is_cached(&sb.cache, &id) && tmp_entries(&sb.cache).is_empty());

    let id = emu.current_version("artifacts", "many");
    // The last part, never unpacked: the first ones are complete within the limit and may
    // be served while the archive is read (progressive availability).
    let (err, peak) =
        read_failing_while_sampling(&m.join("artifacts/many/latest/part-63"), &sb.cache);
    assert_eq!(errno(&err), libc::EIO, "{err}");
    // The announced 2 MiB (plus blocks and directories), never the 64 MiB of the archive.
    assert!(
        peak < 3 * MIB,
        "the cache grew to {peak} bytes for a 2 MiB version"
    );
    log_when(&m, "the many-file bomb", |log| {
        log.lines()
            .any(|l| l.contains(&id) && l.contains("announced"))
    });
    assert!(!is_cached(&sb.cache, &id) && tmp_entries(&sb.cache).is_empty());

    assert_eq!(
        read_within(DEADLINE, &m.join("artifacts/fine/latest/a.txt")).unwrap(),
        b"archive 5\n"
    );
    sb.assert_untouched();
}

/// Peak resident memory of a process (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn huge_headers_are_refused_without_holding_them_in_memory() {
    // A pax header and a GNU long name of 64 MiB each: tiny compressed, and a reader that
    // holds headers whole needs that much memory.
    let data = tempfile::tempdir().unwrap();
    for (name, pax) in [("huge-pax", true), ("huge-gnu", false)] {
        put_archive(
            data.path(),
            "artifacts",
            name,
            "v1",
            &huge_header_archive(pax, 64 * MIB),
        );
        put_sidecar(
            data.path(),
            "artifacts",
            name,
            "v1",
            &json!({"size": 100, "file_count": 1}),
        );
    }
    put_archive(data.path(), "artifacts", "fine", "v1", &small_archive(6));
    let emu = Emulator::with_data(data.path());
    let sb = Sandbox::new();
    let m = Mount::with(&emu, sb.opts());
    let fine = m.join("artifacts/fine/latest/a.txt");
    assert_eq!(read_within(DEADLINE, &fine).unwrap(), b"archive 6\n");
    let before = peak_rss(m.pid());
    for name in ["huge-pax", "huge-gnu"] {
        let id = emu.current_version("artifacts", name);
        let path = m.join(&format!("artifacts/{name}/{id}/after-huge-header.txt"));
        assert_failed_cleanly(
            &m,
            &sb.cache,
            &id,
            &path,
            "tar data is damaged",
            &fine,
            b"archive 6\n",
        );
    }
    let after = peak_rss(m.pid());
    eprintln!("daemon peak memory: {before} bytes before, {after} bytes after");
    assert!(
        after < before + 40 * MIB,
        "the daemon's peak memory grew from {before} to {after} bytes on 64 MiB headers"
    );
    sb.assert_untouched();
}
