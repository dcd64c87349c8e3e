//! Versions larger than the cache, through real mounts: listed from their index, read by
//! range requests from the checkpoints of their seek index, copied whole with `rsync -a`
//! within the budget at every moment, and what goes wrong on the way (an archive changed
//! at the store, an expired URL, a corrupt range) failing one read at most; a daemon
//! killed in the middle of a first pass leaves nothing that the next run serves or keeps.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::hostile::{cached_versions, disk_usage, is_cached, poll_until, tmp_entries, DiskPeak};
use common::{
    assert_same_listing, ok, put_archive, tar_extract, wait_timeout, Emulator, Mount, MountOpts,
};
use serde_json::json;
use vm0_emulator::pack::{pattern, ArchiveBuilder};

const MIB: u64 = 1 << 20;
/// The cache budget of these tests; the version is about three times as large.
const BUDGET: u64 = 12 * MIB;
/// How long a test waits for something it polls for before it fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// A version of about 37 MiB that does not compress (its spans of the archive are about
/// 5 MiB each): a tiny first file, 2,000 small files (packed when cached whole), files of
/// 1 to 3 MiB, a hard link, a symlink, an empty file, and a tiny last file.
fn large_version() -> Vec<u8> {
    // Compressed as `tar -z` compresses: in blocks of tens of KiB, where checkpoints fall.
    let mut b = ArchiveBuilder::with_level(6);
    b.file("aaa-first.txt", 0o644, 1_700_000_000, b"first file\n");
    for i in 0..2000u64 {
        let body = pattern(4096 + (i as usize % 7) * 100, i);
        b.file(
            &format!("small/d{:02}/f{i:04}.bin", i / 100),
            0o644,
            1_700_000_000 + i,
            &body,
        );
    }
    for i in 0..14u64 {
        let len = (1 + i % 3) as usize * MIB as usize + 12_345;
        b.file(
            &format!("big/part-{i}.bin"),
            0o640,
            1_700_000_100,
            &pattern(len, 100 + i),
        );
    }
    b.file("empty", 0o644, 1_700_000_000, b"");
    b.hardlink("big/link-to-part-0", "big/part-0.bin", 1_700_000_000);
    b.symlink("sym", "aaa-first.txt", 1_700_000_000);
    b.file("zzz-last.txt", 0o600, 1_700_000_200, b"last\n");
    // Directories get members of their own, after their files as `tar -c` writes them:
    // `tar -xzf` gives a directory it only implies the time of extraction.
    for d in 0..20 {
        b.dir(&format!("small/d{d:02}"), 0o755, 1_690_000_000);
    }
    b.dir("small", 0o755, 1_690_000_000);
    b.dir("big", 0o750, 1_690_000_000);
    b.finish()
}

struct Setup {
    emu: Emulator,
    archive: PathBuf,
    _data: tempfile::TempDir,
}

fn setup() -> Setup {
    let data = tempfile::tempdir().unwrap();
    let archive = put_archive(data.path(), "volumes", "big", "v1", &large_version());
    let emu = Emulator::with_data(data.path());
    Setup {
        emu,
        archive,
        _data: data,
    }
}

fn mount(emu: &Emulator, cache: &Path) -> Mount {
    Mount::with(
        emu,
        MountOpts {
            cache: Some(cache.to_path_buf()),
            extra: vec!["--cache-size".into(), BUDGET.to_string()],
            ..Default::default()
        },
    )
}

fn archive_len(s: &Setup) -> u64 {
    std::fs::metadata(&s.archive).unwrap().len()
}

/// A mount of the version after its first pass, and what `tar -xzf` makes of its archive.
struct Indexed {
    expected: tempfile::TempDir,
    cache: tempfile::TempDir,
    m: Mount,
    /// `volumes/big/latest/` in the mount.
    version: PathBuf,
}

fn indexed(s: &Setup) -> Indexed {
    let expected = tar_extract(&s.archive);
    let cache = tempfile::tempdir().unwrap();
    let m = mount(&s.emu, cache.path());
    let version = m.join("volumes/big/latest/");
    ok(Command::new("ls").arg("-lR").arg(&version));
    Indexed {
        expected,
        cache,
        m,
        version,
    }
}

/// Assert that each of `files` reads in `version` as in `expected` (an extraction).
fn assert_same_files(version: &Path, expected: &Path, files: &[&str]) {
    for f in files {
        let got = std::fs::read(version.join(f)).unwrap();
        assert!(got == std::fs::read(expected.join(f)).unwrap(), "{f}");
    }
}

/// The version's directory under `versions/` in the cache.
fn version_dir(cache: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(cache.join("versions"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

#[test]
fn a_version_three_times_the_cache_is_listed_read_and_copied_within_the_budget() {
    let s = setup();
    let len = archive_len(&s);
    assert!(len > 3 * BUDGET - 2 * MIB, "the archive is {len} bytes");
    let expected = tar_extract(&s.archive);
    let cache = tempfile::tempdir().unwrap();
    let m = mount(&s.emu, cache.path());
    let sampler = DiskPeak::start(cache.path());
    let version = m.join("volumes/big/latest");

    // Listed as `tar -xzf` makes it: names, types, modes, sizes, times, links.
    assert_same_listing(&version, expected.path());
    // The first pass keeps the index, not the content.
    let dir = version_dir(cache.path());
    assert!(dir.join("seek.bin").is_file() && dir.join("positions.bin").is_file());
    assert_eq!(std::fs::read_dir(dir.join("data")).unwrap().count(), 0);
    let image = std::fs::read(dir.join("seek.bin")).unwrap();
    assert!(
        image.len() as u64 * 100 <= len,
        "seek index {} bytes for {len}",
        image.len()
    );
    // Checkpoints all along the archive: every span fits the budget many times over.
    let seek = vm0fs::archive::seek::SeekIndex::decode(&image).unwrap();
    let outputs: Vec<u64> = seek.points.iter().map(|p| p.output).collect();
    assert_eq!(outputs.first(), Some(&0), "{outputs:?}");
    for w in outputs.windows(2) {
        assert!(w[1] - w[0] <= BUDGET / 2, "{outputs:?}");
        assert!(w[1] - w[0] >= MIB, "{outputs:?}");
    }

    // Start, middle and end, each as the archive has it.
    assert_same_files(
        &version,
        expected.path(),
        &[
            "aaa-first.txt",
            "small/d10/f1000.bin",
            "big/part-3.bin",
            "zzz-last.txt",
        ],
    );

    // Copied whole: what `tar -xzf` makes, byte for byte (`-H`: hard links too).
    let copy = tempfile::tempdir().unwrap();
    ok(Command::new("rsync")
        .arg("-aH")
        .arg(format!("{}/", version.display()))
        .arg(copy.path()));
    assert_same_listing(copy.path(), expected.path());
    ok(Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(expected.path())
        .arg(copy.path()));

    sampler.finish().assert_within(BUDGET);
    common::hostile::assert_cache_layout(cache.path());
    // Ranges, not the whole archive per file: the archive once for the first pass, and
    // its spans for the copy (some twice: `rsync` reads in name order, which is not the
    // archive's, and the budget holds two spans).
    let sent = s.emu.counter("store.bytes");
    assert!(sent < 4 * len, "{sent} bytes sent for an archive of {len}");
}

/// The first pass inflates the whole archive anyway: it keeps the spans of it that fit in
/// the cache's free room, from the start, so that a reader of the first files after the
/// pass asks the store for nothing, while the cache stays within its budget throughout.
#[test]
fn the_first_pass_keeps_the_spans_that_fit_and_the_start_is_read_without_a_request() {
    let s = setup();
    let expected = tar_extract(&s.archive);
    let cache = tempfile::tempdir().unwrap();
    let m = mount(&s.emu, cache.path());
    let sampler = DiskPeak::start(cache.path());
    let version = m.join("volumes/big/latest/");
    ok(Command::new("ls").arg("-lR").arg(&version));
    let kept = std::fs::read_dir(cache.path().join("spans"))
        .unwrap()
        .count();
    assert!(kept > 0, "the first pass kept no span");

    s.emu.reset_counters();
    assert_same_files(
        &version,
        expected.path(),
        &[
            "aaa-first.txt",
            "small/d00/f0000.bin",
            "small/d05/f0517.bin",
        ],
    );
    assert_eq!(
        s.emu.counter("store.get"),
        0,
        "the start of the archive was asked for again: {}",
        s.emu.counters()
    );
    // The budget does not hold the whole version: its end is read by a range request.
    let got = std::fs::read(version.join("zzz-last.txt")).unwrap();
    assert_eq!(got, b"last\n");
    assert!(s.emu.counter("store.get") >= 1, "{}", s.emu.counters());

    sampler.finish().assert_within(BUDGET);
    assert!(!m.log_text().contains(" ERROR "), "{}", m.log_text());
}

#[test]
fn a_late_file_read_after_a_restart_costs_a_span_not_the_archive() {
    let s = setup();
    let len = archive_len(&s);
    let expected = tar_extract(&s.archive);
    let cache = tempfile::tempdir().unwrap();
    let m = mount(&s.emu, cache.path());
    ok(Command::new("ls")
        .arg("-lR")
        .arg(m.join("volumes/big/latest/")));
    std::fs::read(m.join("volumes/big/latest/aaa-first.txt")).unwrap();
    let spans = || {
        std::fs::read_dir(cache.path().join("spans"))
            .unwrap()
            .count()
    };
    assert!(spans() > 0, "no span kept");
    drop(m);

    // A new mount finds the index on disk and no span (each run fetches what it reads):
    // the last file is one range away.
    let m = mount(&s.emu, cache.path());
    assert_eq!(spans(), 0, "spans of the previous run left in the cache");
    s.emu.reset_counters();
    let got = std::fs::read(m.join("volumes/big/latest/zzz-last.txt")).unwrap();
    assert_eq!(got, b"last\n");
    let got = std::fs::read(m.join("volumes/big/latest/big/part-2.bin")).unwrap();
    assert!(got == std::fs::read(expected.path().join("big/part-2.bin")).unwrap());
    let sent = s.emu.counter("store.bytes");
    let gets = s.emu.counter("store.get");
    assert!(gets >= 1, "{}", s.emu.counters());
    // At most a few spans of 4 MiB of the archive, never the whole of it.
    assert!(sent <= len / 2, "{sent} bytes sent for an archive of {len}");
    assert!(!m.log_text().contains(" ERROR "), "{}", m.log_text());
}

#[test]
fn an_archive_changed_at_the_store_is_indexed_again_never_mixed() {
    let s = setup();
    let Indexed {
        expected,
        // Kept to the end: the cache directory of the mount.
        cache: _cache,
        m,
        version,
    } = indexed(&s);

    // The next answer of the store names another object: the read of that span fails, the
    // index goes, and the version is indexed again from the store's object. (The kernel
    // retries a page whose read-ahead failed, so the reader may see the bytes of the new
    // index rather than the error.) Never a byte of one object under the other's index.
    s.emu.reset_counters();
    s.emu
        .fault(json!({"route": "store.get", "etag": "\"replaced\"", "count": 1}));
    let got = std::fs::read(version.join("big/part-4.bin"));
    if let Err(e) = &got {
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    }
    let log = m.log_text();
    assert!(log.contains("changed at the store"), "{log}");
    let got = std::fs::read(version.join("big/part-4.bin")).unwrap();
    assert!(got == std::fs::read(expected.path().join("big/part-4.bin")).unwrap());
    // One range, then the whole archive again for the new index, then ranges.
    assert!(s.emu.counter("store.get") >= 2, "{}", s.emu.counters());
    assert_eq!(
        m.log_text().matches("downloading volume big").count(),
        2,
        "{}",
        m.log_text()
    );
}

#[test]
fn an_expired_url_or_a_corrupt_range_fails_one_read_at_most() {
    let s = setup();
    let Indexed {
        expected,
        cache,
        // Kept to the end: dropping it unmounts.
        m: _m,
        version,
    } = indexed(&s);
    let want = |f: &str| std::fs::read(expected.path().join(f)).unwrap();

    // An expired URL (403) is asked for again: the read does not even fail.
    s.emu.fault(json!({"route": "store.get", "status": 403, "body": "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>", "content_type": "application/xml", "count": 1}));
    assert!(std::fs::read(version.join("big/part-1.bin")).unwrap() == want("big/part-1.bin"));

    // A range of garbage from the store: the read fails (or is served from a retry), and
    // the daemon serves the next one right.
    s.emu
        .fault(json!({"route": "store.get", "corrupt": "garbage", "count": 1}));
    let first = std::fs::read(version.join("small/d05/f0500.bin"));
    if let Err(e) = &first {
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    } else {
        assert!(first.unwrap() == want("small/d05/f0500.bin"));
    }
    assert!(
        std::fs::read(version.join("small/d05/f0500.bin")).unwrap() == want("small/d05/f0500.bin")
    );
    assert!(disk_usage(cache.path()) <= BUDGET + 64 * 1024);
}

/// A second version larger than the cache, of about 16 MiB in five files: the killed run
/// reads its first file, so that the cache holds a span of that run when it is killed.
fn second_large_version() -> Vec<u8> {
    let mut b = ArchiveBuilder::with_level(6);
    b.file("a.txt", 0o644, 1_700_000_000, b"other\n");
    for i in 0..4u64 {
        b.file(
            &format!("part-{i}.bin"),
            0o644,
            1_700_000_000,
            &pattern(4 * MIB as usize, 200 + i),
        );
    }
    b.finish()
}

/// Names in a directory of the cache (none when it was never made).
fn names(dir: &Path) -> Vec<String> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        r => r.unwrap(),
    };
    let mut v: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A daemon killed in the middle of the first pass of a version larger than the cache
/// leaves its temporary directory in `tmp/` and the spans it fetched in `spans/`, none of
/// which the next run may serve or count: the next mount on the same cache directory
/// removes them, indexes the version again from its archive, and serves it as `tar -xzf`
/// makes it.
#[test]
fn kill_9_in_the_first_pass_of_a_version_larger_than_the_cache_leaves_nothing_to_the_restart() {
    let data = tempfile::tempdir().unwrap();
    let archive = put_archive(data.path(), "volumes", "big", "v1", &large_version());
    put_archive(
        data.path(),
        "volumes",
        "other",
        "v1",
        &second_large_version(),
    );
    let emu = Emulator::with_data(data.path());
    let len = std::fs::metadata(&archive).unwrap().len();
    let id = emu.current_version("volumes", "big");
    let expected = tar_extract(&archive);
    let cache = tempfile::tempdir().unwrap();
    let mut m = mount(&emu, cache.path());

    // A span of this run in `spans/`: the first file of the other version.
    let got = std::fs::read(m.join("volumes/other/latest/a.txt")).unwrap();
    assert_eq!(got, b"other\n");
    let old_spans = names(&cache.path().join("spans"));
    assert!(!old_spans.is_empty(), "no span kept before the kill");

    // The store holds the archive of the large version half way through, and a `stat`
    // inside it starts its first pass.
    emu.fault(
        json!({"route": "store.get", "version": id, "hold_after_bytes": len / 2, "count": 1}),
    );
    let mut stat = Command::new("stat")
        .arg(m.join("volumes/big/latest/zzz-last.txt"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let key = format!("volumes-{id}.");
    poll_until(DEADLINE, "the first pass held half way", || {
        emu.counter("store.held") == 1
            && tmp_entries(cache.path())
                .iter()
                .any(|t| t.starts_with(&key))
    });
    let old_tmp = tmp_entries(cache.path());
    let pid = m.pid();
    // The first pass's directory, named after the daemon that made it.
    assert!(
        old_tmp.len() == 1 && old_tmp[0].starts_with(&format!("{key}{pid}.")),
        "{old_tmp:?}"
    );

    // `kill -9` of the daemon itself: the process that holds the cache's lock.
    let lock = std::fs::read_to_string(cache.path().join("lock")).unwrap();
    assert_eq!(
        lock.trim(),
        pid.to_string(),
        "the lock names another process"
    );
    let mut daemon = m.take_child();
    daemon.kill().unwrap();
    let status = daemon.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    // The `stat` waiting on the dead mount returns (with an error), and the dead mount
    // goes (a lazy unmount, as `Mount` does on drop).
    let stat_status =
        wait_timeout(&mut stat, DEADLINE).expect("stat returns once the daemon is dead");
    assert!(
        !stat_status.success(),
        "stat through a killed daemon succeeded"
    );
    let log = m.log_text();
    assert!(!log.contains("panic"), "{log}");
    drop(m);
    // What the killed pass left: its temporary directory, no version of its own.
    assert_eq!(tmp_entries(cache.path()), old_tmp);
    assert!(
        !is_cached(cache.path(), &id),
        "{:?}",
        cached_versions(cache.path())
    );
    emu.clear_faults();
    emu.post("release", &json!({}));

    // A new mount on the same cache, the store no longer holding anything.
    let m = mount(&emu, cache.path());
    let version = m.join("volumes/big/latest");
    assert_same_listing(&version, expected.path());
    for f in [
        "aaa-first.txt",
        "small/d10/f1000.bin",
        "big/part-7.bin",
        "zzz-last.txt",
    ] {
        ok(Command::new("cmp")
            .arg(version.join(f))
            .arg(expected.path().join(f)));
    }
    // Indexed again by the new run: its own temporary directory became the version, and
    // nothing of the killed run's is left beside it.
    assert!(
        is_cached(cache.path(), &id),
        "{:?}",
        cached_versions(cache.path())
    );
    let left: Vec<String> = tmp_entries(cache.path())
        .into_iter()
        .filter(|t| old_tmp.contains(t))
        .collect();
    assert!(left.is_empty(), "tmp/ of the killed run left: {left:?}");
    poll_until(DEADLINE, "an empty tmp/ after the new first pass", || {
        tmp_entries(cache.path()).is_empty()
    });
    // Only spans the new run fetched, all of the version it read.
    let spans = names(&cache.path().join("spans"));
    let kept: Vec<&String> = spans.iter().filter(|s| old_spans.contains(s)).collect();
    assert!(kept.is_empty(), "spans of the killed run left: {kept:?}");
    assert!(spans.iter().all(|s| s.starts_with(&key)), "{spans:?}");
    // No spool of the killed download either.
    assert_eq!(names(&cache.path().join("partial")), Vec::<String>::new());
    common::hostile::assert_cache_layout(cache.path());
    let log = m.log_text();
    assert!(
        log.contains("removing leftover of an interrupted run"),
        "{log}"
    );
    assert!(!log.contains("panic") && !log.contains(" ERROR "), "{log}");
    drop(m);
}

/// Where each regular file's content lies in the archive's tar stream: `(path, start, end)`.
fn tar_positions(archive: &Path) -> Vec<(String, u64, u64)> {
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(archive).unwrap());
    let mut tar = tar::Archive::new(gz);
    let mut out = Vec::new();
    for entry in tar.entries().unwrap() {
        let entry = entry.unwrap();
        if entry.header().entry_type() == tar::EntryType::Regular && entry.size() > 0 {
            let start = entry.raw_file_position();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            out.push((path, start, start + entry.size()));
        }
    }
    out
}

/// How long the tar stream that the first `n` bytes of the archive inflate to is.
fn inflated_from_prefix(archive: &Path, n: u64) -> u64 {
    use std::io::Read;
    let prefix = std::fs::File::open(archive).unwrap().take(n);
    let mut gz = flate2::read::GzDecoder::new(prefix);
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    // Until the prefix ends in the middle of the stream (an error) or the stream does.
    while let Ok(got @ 1..) = gz.read(&mut buf) {
        total += got as u64;
    }
    total
}

/// A first pass the store holds half way through the archive: the version's id, how far
/// the pass can inflate, and the `stat` (of the last file) that started it and waits for
/// its end.
struct HeldPass {
    id: String,
    reach: u64,
    stat: std::process::Child,
}

fn hold_first_pass(s: &Setup, version: &Path) -> HeldPass {
    let len = archive_len(s);
    let id = s.emu.current_version("volumes", "big");
    s.emu.fault(
        json!({"route": "store.get", "version": id, "hold_after_bytes": len / 2, "count": 1}),
    );
    let stat = Command::new("stat")
        .arg(version.join("zzz-last.txt"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    HeldPass {
        id,
        reach: inflated_from_prefix(&s.archive, len / 2),
        stat,
    }
}

impl HeldPass {
    /// Let the store send the rest, and wait for the end of the pass.
    fn release(mut self, s: &Setup) {
        s.emu.clear_faults();
        s.emu.post("release", &json!({}));
        let status = wait_timeout(&mut self.stat, DEADLINE).expect("the first pass ends");
        assert!(status.success());
    }
}

/// Run `tool` in a child with a deadline, and assert that it succeeds: a read that waited
/// for the end of a held first pass would wait for as long as the store holds it.
fn within_deadline(tool: &str, args: &[&Path]) {
    let mut child = Command::new(tool)
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, DEADLINE).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("{tool} {args:?} waited for the end of the first pass")
    });
    assert!(status.success(), "{tool} {args:?}: {status:?}");
}

/// Readers need not wait for the end of a first pass: a file the pass has gone by is read
/// from the spans it kept, and from the one it is still writing, while the store still
/// holds the rest of the archive (and without a request of their own).
#[test]
fn a_file_the_first_pass_has_gone_by_is_read_while_the_pass_runs() {
    let s = setup();
    let expected = tar_extract(&s.archive);
    let cache = tempfile::tempdir().unwrap();
    // Room for about two thirds of the version: the pass keeps every span it passes
    // before the store holds the archive half way.
    let m = Mount::with(
        &s.emu,
        MountOpts {
            cache: Some(cache.path().to_path_buf()),
            extra: vec!["--cache-size".into(), (24 * MIB).to_string()],
            ..Default::default()
        },
    );
    let version = m.join("volumes/big/latest");
    let held = hold_first_pass(&s, &version);
    let (id, reach) = (held.id.clone(), held.reach);
    let prefix = format!("volumes-{id}.");
    // The spans written so far, by number, with their lengths on disk.
    let spans = || -> Vec<(u32, u64)> {
        let mut v: Vec<(u32, u64)> = std::fs::read_dir(cache.path().join("spans"))
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let k = name
                    .strip_prefix(&prefix)?
                    .rsplit('.')
                    .next()?
                    .parse()
                    .ok()?;
                Some((k, e.metadata().ok()?.len()))
            })
            .collect();
        v.sort_unstable();
        v
    };
    // Held, and the pass about as far as what came before the hold takes it: the
    // download hands the unpacker whole chunks of 256 KiB, so the last one received may
    // wait for the rest of it.
    poll_until(DEADLINE, "the first pass held half way", || {
        let total: u64 = spans().iter().map(|(_, l)| l).sum();
        s.emu.counter("store.held") == 1 && total + 320 * 1024 >= reach
    });
    let gets = s.emu.counter("store.get");
    let written = spans();
    assert!(
        written
            .iter()
            .enumerate()
            .all(|(i, (k, _))| *k as usize == i),
        "the pass kept spans from the start, one after another: {written:?}"
    );
    // The last span is the one being written: where it starts in the tar stream, and
    // how far it is written (at least; it may grow meanwhile).
    let (_, last_len) = *written.last().unwrap();
    let last_start: u64 = written[..written.len() - 1].iter().map(|(_, l)| l).sum();
    let written_to = last_start + last_len;
    let positions = tar_positions(&s.archive);
    let in_progress = positions
        .iter()
        .rfind(|(_, start, end)| *end > last_start && *end <= written_to && *start < written_to)
        .unwrap_or_else(|| {
            panic!(
                "no file ends in the span being written ({last_start}..{written_to}): {written:?}"
            )
        });
    let early = &positions[0];
    for (path, _, _) in [early, in_progress] {
        within_deadline("cmp", &[&version.join(path), &expected.path().join(path)]);
    }
    // Still held: read before the pass ended, and from no request of their own.
    assert_eq!(s.emu.counter("store.held"), 1);
    assert!(!is_cached(cache.path(), &id));
    assert_eq!(s.emu.counter("store.get"), gets, "{}", s.emu.counters());

    held.release(&s);
    assert_same_listing(&version, expected.path());
    ok(Command::new("cmp")
        .arg(version.join("zzz-last.txt"))
        .arg(expected.path().join("zzz-last.txt")));
    assert!(!m.log_text().contains(" ERROR "), "{}", m.log_text());
}

/// A file the first pass went by without keeping (the cache had no room for its span) is
/// read by a range request as soon as the checkpoints around it are recorded, before the
/// pass ends: here while the store still holds the rest of the archive.
#[test]
fn a_file_the_first_pass_did_not_keep_is_read_by_a_range_before_the_pass_ends() {
    let s = setup();
    let expected = tar_extract(&s.archive);
    let cache = tempfile::tempdir().unwrap();
    let m = mount(&s.emu, cache.path());
    let version = m.join("volumes/big/latest");
    let held = hold_first_pass(&s, &version);
    poll_until(DEADLINE, "the first pass held half way", || {
        s.emu.counter("store.held") == 1
    });
    let positions = tar_positions(&s.archive);
    // The last file the pass reaches before the hold: once it is published, the pass is
    // past every span before it, kept or not.
    let later = positions
        .iter()
        .rfind(|(_, _, end)| *end + 320 * 1024 <= held.reach)
        .unwrap();
    within_deadline("stat", &[&version.join(&later.0)]);
    // What the pass kept: spans from the start, as many as the budget's free room holds.
    let kept: u64 = std::fs::read_dir(cache.path().join("spans"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    // A file after what was kept, more than a span (5 MiB) before the end of `later`: the
    // checkpoint after its span is recorded.
    let dropped = positions
        .iter()
        .find(|(_, start, end)| *start >= kept && *end + 6 * MIB <= later.2)
        .unwrap_or_else(|| panic!("no file between the {kept} bytes kept and {later:?}"));
    let gets = s.emu.counter("store.get");
    within_deadline(
        "cmp",
        &[&version.join(&dropped.0), &expected.path().join(&dropped.0)],
    );
    // Read by a range of its own while the whole download is still held.
    assert_eq!(s.emu.counter("store.held"), 1);
    assert!(!is_cached(cache.path(), &held.id));
    assert!(
        s.emu.counter("store.get") > gets,
        "no range request: {}",
        s.emu.counters()
    );
    assert!(disk_usage(cache.path()) <= BUDGET + 64 * 1024);

    held.release(&s);
    // The span fetched during the pass serves the complete version too.
    let gets = s.emu.counter("store.get");
    ok(Command::new("cmp")
        .arg(version.join(&dropped.0))
        .arg(expected.path().join(&dropped.0)));
    assert_eq!(s.emu.counter("store.get"), gets, "{}", s.emu.counters());
    assert!(!m.log_text().contains(" ERROR "), "{}", m.log_text());
}

/// The seek index on disk is as untrusted as the rest of the cache directory: one whose
/// bytes changed while no daemon ran is found at start (checked whole, a piece at a time),
/// and the version is indexed again from its archive rather than read through it.
#[test]
fn a_damaged_seek_index_on_disk_is_found_and_the_version_indexed_again() {
    let s = setup();
    let Indexed {
        expected,
        cache,
        m,
        version: _,
    } = indexed(&s);
    drop(m);
    let seek = version_dir(cache.path()).join("seek.bin");
    let mut image = std::fs::read(&seek).unwrap();
    // A byte of a window in the middle of the image.
    let at = image.len() / 2;
    image[at] ^= 0x20;
    std::fs::write(&seek, &image).unwrap();

    let m = mount(&s.emu, cache.path());
    let version = m.join("volumes/big/latest");
    s.emu.reset_counters();
    assert_same_files(
        &version,
        expected.path(),
        &["aaa-first.txt", "big/part-7.bin", "zzz-last.txt"],
    );
    // Indexed again: the whole archive once more.
    assert!(
        s.emu.counter("store.bytes") >= archive_len(&s),
        "{}",
        s.emu.counters()
    );
    let log = m.log_text();
    assert!(log.contains("seek.bin"), "{log}");
    assert!(!log.contains("panic"), "{log}");
    let repaired = std::fs::read(version_dir(cache.path()).join("seek.bin")).unwrap();
    assert!(vm0fs::archive::seek::SeekIndex::decode(&repaired).is_ok());
}
