//! A version on disk through real mounts: many small files packed into a few cache files
//! (trees identical to `tar -xzf`, the byte budget held at every moment), a cache of the
//! previous format discarded at start, and `kill -9` in the middle of packing.

mod common;

use std::path::Path;
use std::process::Command;

use common::hostile::{disk_usage, kill_9_during_an_unpack, DiskPeak};
use common::{assert_same_listing, ok, put_archive, tar_extract, Emulator, Mount, MountOpts};
use vm0_emulator::pack::{pattern, ArchiveBuilder};

const MIB: u64 = 1 << 20;

/// Regular files under `path` (directories not counted).
fn file_count(path: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(path).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            n += file_count(&e.path());
        } else {
            n += 1;
        }
    }
    n
}

fn cache_opts(cache: &Path, size: &str) -> MountOpts<'static> {
    MountOpts {
        cache: Some(cache.to_path_buf()),
        extra: vec!["--cache-size".into(), size.into()],
        ..Default::default()
    }
}

/// A version of `files` tiny files in directories of 100, plus what packing must keep
/// apart: empty files, a file exactly at the packing threshold and one just under it, a
/// hard link to a packed file and one to a file of its own, a symlink.
fn many_small_files(files: usize, seed: u64) -> Vec<u8> {
    let mut b = ArchiveBuilder::new();
    for i in 0..files {
        let body = format!("tiny {seed}.{i}\n");
        b.file(
            &format!("d{:03}/f{i:05}.txt", i / 100),
            0o644,
            1_700_000_000 + i as u64,
            body.as_bytes(),
        );
    }
    b.file("edge/empty-1", 0o644, 1_700_000_000, b"");
    b.file(
        "edge/at-threshold.bin",
        0o600,
        1_700_000_000,
        &pattern(MIB as usize, seed),
    );
    b.file(
        "edge/under.bin",
        0o640,
        1_700_000_000,
        &pattern(MIB as usize - 1, seed + 1),
    );
    b.file("edge/empty-2", 0o644, 1_700_000_000, b"");
    b.hardlink("edge/link-small", "d000/f00001.txt", 1_700_000_000);
    b.hardlink("edge/link-large", "edge/at-threshold.bin", 1_700_000_000);
    b.symlink("edge/sym", "../d000/f00000.txt", 1_700_000_000);
    // Directories get members of their own, after their files as `tar -c` writes them:
    // `tar -xzf` gives a directory it only implies the time of extraction.
    for d in 0..files.div_ceil(100) {
        b.dir(&format!("d{d:03}"), 0o755, 1_690_000_000);
    }
    b.dir("edge", 0o750, 1_690_000_000);
    b.finish()
}

/// The version at `version` is the tree `tar -xzf` makes of `archive`: types, modes, sizes,
/// mtimes, link counts and targets, and every byte.
fn assert_same_tree(version: &Path, archive: &Path) {
    let expected = tar_extract(archive);
    assert_same_listing(version, expected.path());
    ok(Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(expected.path())
        .arg(version));
}

#[test]
fn many_small_file_versions_match_tar_and_hold_the_budget() {
    let data = tempfile::tempdir().unwrap();
    let mut archives = Vec::new();
    for i in 0..5 {
        let bytes = many_small_files(3000, i);
        archives.push(put_archive(
            data.path(),
            "artifacts",
            &format!("tiny-{i}"),
            "v1",
            &bytes,
        ));
    }
    let emu = Emulator::with_data(data.path());
    let cache = tempfile::tempdir().unwrap();
    let budget = 6 * MIB;
    let m = Mount::with(&emu, cache_opts(cache.path(), "6M"));

    let sampler = DiskPeak::start(cache.path());
    for round in 0..2 {
        for (i, archive) in archives.iter().enumerate() {
            let version = m.join(&format!("artifacts/tiny-{i}/latest/"));
            if round == 0 {
                assert_same_tree(&version, archive);
            } else {
                let got = std::fs::read(version.join("d029/f02999.txt")).unwrap();
                assert_eq!(got, format!("tiny {i}.2999\n").as_bytes());
            }
        }
    }
    // The reservation covers the version being unpacked; the log and the saved listings
    // live in the cache directory too.
    sampler.finish().assert_within(budget);

    // Each version is a handful of files whatever its member count, and a few hundred KiB.
    let versions: Vec<_> = std::fs::read_dir(cache.path().join("versions"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(!versions.is_empty() && versions.len() < 5, "{versions:?}");
    for v in &versions {
        // pack, index.bin, checks.bin, meta.json, and the one file at the threshold (its
        // hard link is the same node).
        assert_eq!(file_count(v), 5, "{}", v.display());
        let bytes = disk_usage(v);
        assert!(
            bytes < 2 * MIB + MIB / 2,
            "{}: {bytes} bytes on disk",
            v.display()
        );
    }
}

/// A cache written by the previous format (one file per member, a `postcard` index) is
/// cleared at start with one log line, and its versions are downloaded again.
#[test]
fn a_cache_of_the_previous_format_is_discarded_at_start() {
    let data = tempfile::tempdir().unwrap();
    let archive = put_archive(
        data.path(),
        "artifacts",
        "old",
        "v1",
        &many_small_files(200, 7),
    );
    let emu = Emulator::with_data(data.path());
    let vid = emu.current_version("artifacts", "old");
    let cache = tempfile::tempdir().unwrap();
    let old = cache.path().join(format!("versions/artifacts-{vid}"));
    std::fs::create_dir_all(old.join("data")).unwrap();
    std::fs::write(old.join("data/0"), b"a blob of the old format").unwrap();
    std::fs::write(old.join("index.bin"), b"\x02\0\0\0postcard").unwrap();
    std::fs::write(
        old.join("meta.json"),
        format!(
            r#"{{"format":2,"kind":"Artifact","id":"{vid}","disk_bytes":8192,"files":1,"bytes":24}}"#
        ),
    )
    .unwrap();
    std::fs::write(cache.path().join("FORMAT"), "2\n").unwrap();

    let m = Mount::with(&emu, cache_opts(cache.path(), "100M"));
    assert_eq!(
        std::fs::read_to_string(cache.path().join("FORMAT"))
            .unwrap()
            .trim(),
        vm0fs::cache::CACHE_FORMAT_VERSION.to_string()
    );
    assert!(!old.join("data/0").exists(), "the old version was kept");
    assert_same_tree(&m.join(&format!("artifacts/old/{vid}")), &archive);
    assert_eq!(emu.counter("store.get"), 1, "{}", emu.counters());
    let log = m.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("incompatible vm0fs"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    let expected = format!("expected={}", vm0fs::cache::CACHE_FORMAT_VERSION);
    assert!(lines[0].contains(&expected), "{}", lines[0]);
    drop(m);

    // The next start finds a cache of its own format: nothing cleared, nothing fetched.
    emu.reset_counters();
    let m = Mount::with(&emu, cache_opts(cache.path(), "100M"));
    assert_same_tree(&m.join(&format!("artifacts/old/{vid}")), &archive);
    assert_eq!(emu.counter("store.get"), 0, "{}", emu.counters());
    assert!(!m.log_text().contains("incompatible vm0fs"));
}

/// `kill -9` while small files are being packed leaves nothing complete, and a restart
/// removes the leftovers and serves the whole version, byte for byte as `tar -xzf`.
#[test]
fn kill_9_while_packing_then_a_restart_serves_the_same_tree() {
    let data = tempfile::tempdir().unwrap();
    let mut b = ArchiveBuilder::new();
    // Incompressible, so that unpacking takes a while: 48 MiB in 16 KiB files.
    for i in 0..3072u64 {
        b.file(
            &format!("d{:02}/part-{i:04}.bin", i / 128),
            0o644,
            1_700_000_000,
            &pattern(16 * 1024, i),
        );
    }
    for d in 0..24 {
        b.dir(&format!("d{d:02}"), 0o755, 1_690_000_000);
    }
    let archive = put_archive(data.path(), "artifacts", "packed", "v1", &b.finish());
    let emu = Emulator::with_data(data.path());
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::with(&emu, cache_opts(cache.path(), "1G"));
    let m = kill_9_during_an_unpack(
        m,
        &emu,
        cache.path(),
        cache_opts(cache.path(), "1G"),
        "artifacts/packed/latest/d23/part-3071.bin",
    );
    assert_same_tree(&m.join("artifacts/packed/latest/"), &archive);
    assert_eq!(
        emu.counter("store.get"),
        1,
        "downloaded again after the crash"
    );
}
