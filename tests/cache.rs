//! The cache through real mounts: the byte budget holds at every moment, LRU order and
//! pinning, refusals, restarts, crashes and the lock.

mod common;

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use common::hostile::{disk_usage, kill_9_during_an_unpack, DiskPeak};
use common::{put_archive, Emulator, Mount, MountOpts};
use vm0_emulator::pack::{pattern, ArchiveBuilder};

const MIB: u64 = 1 << 20;

/// `n` artifacts `art-0..n`, each one version of 4 files of `size/4` incompressible bytes.
fn data_with_versions(n: usize, size: usize) -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    for i in 0..n {
        let mut b = ArchiveBuilder::new();
        for j in 0..4 {
            b.file(
                &format!("part-{j}.bin"),
                0o644,
                1_700_000_000,
                &pattern(size / 4, (i * 10 + j) as u64),
            );
        }
        put_archive(
            data.path(),
            "artifacts",
            &format!("art-{i}"),
            "v1",
            &b.finish(),
        );
    }
    data
}

fn read_all(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn cache_opts(cache: &Path, size: &str) -> MountOpts<'static> {
    MountOpts {
        cache: Some(cache.to_path_buf()),
        extra: vec!["--cache-size".into(), size.into()],
        ..Default::default()
    }
}

fn resident_versions(cache: &Path) -> usize {
    std::fs::read_dir(cache.join("versions"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn the_budget_holds_at_every_moment_while_reading_many_versions() {
    let data = data_with_versions(6, MIB as usize);
    let emu = Emulator::with_data(data.path());
    let cache = tempfile::tempdir().unwrap();
    let budget = 3 * MIB;
    let m = Mount::with(&emu, cache_opts(cache.path(), "3M"));

    // Sample the cache directory's real usage all along.
    let sampler = DiskPeak::start(cache.path());
    for round in 0..2 {
        for i in 0..6 {
            for j in 0..4 {
                let got = read_all(&m.join(&format!("artifacts/art-{i}/latest/part-{j}.bin")));
                assert_eq!(
                    got,
                    pattern(MIB as usize / 4, (i * 10 + j) as u64),
                    "round {round} art-{i}"
                );
            }
        }
    }
    let peak = sampler.finish();
    // At most the budget plus the one version being unpacked (1 MiB and its metadata).
    assert!(
        peak.bytes <= budget + MIB + 64 * 1024,
        "peak usage {} over budget {budget} + one version: {}",
        peak.bytes,
        peak.detail
    );
    assert!(
        disk_usage(cache.path()) <= budget,
        "final usage over budget"
    );
    // Least recently used went first: the last versions read are the ones left.
    for i in 0..6 {
        let present = cache
            .path()
            .join("versions")
            .read_dir()
            .unwrap()
            .flatten()
            .any(|e| {
                let v = emu.current_version("artifacts", &format!("art-{i}"));
                e.file_name().to_string_lossy().ends_with(&v)
            });
        assert_eq!(present, i >= 4, "art-{i} resident: {present}");
    }
}

/// The two ways a mount knows which files are open: by default the kernel sends no `OPEN`
/// and the cache looks in /proc; with `--track-opens` every open is a handle.
const OPEN_MODES: [&[&str]; 2] = [&[], &["--track-opens"]];

fn cache_opts_in(cache: &Path, size: &str, mode: &[&str]) -> MountOpts<'static> {
    let mut opts = cache_opts(cache, size);
    opts.extra.extend(mode.iter().map(|a| a.to_string()));
    opts
}

fn is_resident(emu: &Emulator, cache: &Path, name: &str) -> bool {
    let v = emu.current_version("artifacts", name);
    cache.join(format!("versions/artifacts-{v}")).exists()
}

/// `n` one-version artifacts (`data_with_versions`, 1 MiB each) mounted over a fresh cache
/// of `budget`, in one of the `OPEN_MODES`. Fields drop in order: the mount goes first.
struct Pressed {
    m: Mount,
    emu: Emulator,
    cache: tempfile::TempDir,
    _data: tempfile::TempDir,
}

impl Pressed {
    fn new(n: usize, budget: &str, mode: &[&str]) -> Pressed {
        let data = data_with_versions(n, MIB as usize);
        let emu = Emulator::with_data(data.path());
        let cache = tempfile::tempdir().unwrap();
        let m = Mount::with(&emu, cache_opts_in(cache.path(), budget, mode));
        Pressed {
            m,
            emu,
            cache,
            _data: data,
        }
    }

    fn resident(&self, name: &str) -> bool {
        is_resident(&self.emu, self.cache.path(), name)
    }

    /// Read a file of each of `art-{others}`, which makes the cache evict, then check that
    /// art-0 (which the caller holds) stayed and that something did go (art-1).
    fn press_and_check_art0_stays(&self, others: std::ops::Range<usize>, what: &str) {
        for i in others {
            read_all(&self.m.join(&format!("artifacts/art-{i}/latest/part-1.bin")));
        }
        assert!(
            self.resident("art-0"),
            "{what}: the held version was evicted"
        );
        assert!(
            !self.resident("art-1"),
            "{what}: nothing was evicted, the test proves nothing"
        );
    }
}

#[test]
fn an_open_file_pins_its_version_under_pressure() {
    for mode in OPEN_MODES {
        // Room for two versions: reading three others must evict.
        let p = Pressed::new(4, "2600K", mode);
        let mut pinned = File::open(p.m.join("artifacts/art-0/latest/part-0.bin")).unwrap();
        p.press_and_check_art0_stays(1..4, &format!("{mode:?}"));
        let mut got = Vec::new();
        pinned.read_to_end(&mut got).unwrap();
        assert_eq!(got, pattern(MIB as usize / 4, 0), "{mode:?}");
        assert_eq!(
            p.emu.counter("store.get"),
            4,
            "{mode:?}: a version was downloaded twice"
        );
        drop(pinned);
        // Closed, it can go: two more versions (art-3 is older, then art-0) evict it.
        for i in 1..3 {
            read_all(&p.m.join(&format!("artifacts/art-{i}/latest/part-1.bin")));
        }
        assert!(
            !p.resident("art-0"),
            "{mode:?}: the closed file still pins its version"
        );
        assert!(disk_usage(p.cache.path()) <= 2600 * 1024, "{mode:?}");
    }
}

/// A mapping pins its version too, after its descriptor is closed (seen in /proc/PID/maps).
#[test]
fn a_mapped_file_pins_its_version() {
    let p = Pressed::new(3, "2600K", OPEN_MODES[0]);
    let len = MIB as usize / 4;
    let file = File::open(p.m.join("artifacts/art-0/latest/part-2.bin")).unwrap();
    // SAFETY: a fresh read-only shared mapping of an open file, unmapped below; nothing
    // else refers to it.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    assert_ne!(
        addr,
        libc::MAP_FAILED,
        "{}",
        std::io::Error::last_os_error()
    );
    drop(file);
    p.press_and_check_art0_stays(1..3, "mapped");
    // SAFETY: `addr` maps `len` readable bytes until the munmap below.
    let mapped = unsafe { std::slice::from_raw_parts(addr as *const u8, len) }.to_vec();
    // SAFETY: unmaps exactly the mapping made above, no longer referred to.
    unsafe { libc::munmap(addr, len) };
    assert_eq!(mapped, pattern(len, 2));
    assert_eq!(
        p.emu.counter("store.get"),
        3,
        "a version was downloaded twice"
    );
}

/// With every resident version in use, a new version is refused at once with ENOSPC and a
/// log line that says what to do; once the file is closed, the same read works.
#[test]
fn when_every_version_is_in_use_a_new_one_is_refused_with_enospc() {
    for mode in OPEN_MODES {
        let p = Pressed::new(2, "1600K", mode);
        let (m, emu) = (&p.m, &p.emu);
        let held = File::open(m.join("artifacts/art-0/latest/part-0.bin")).unwrap();
        let err = match std::fs::read(m.join("artifacts/art-1/latest/part-0.bin")) {
            Ok(data) => panic!("{mode:?}: read {} bytes, not ENOSPC", data.len()),
            Err(e) => e,
        };
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{mode:?}: {err}");
        let v1 = emu.current_version("artifacts", "art-1");
        let log = m.log_text();
        assert!(
            log.lines()
                .any(|l| l.contains(&v1) && l.contains("in use") && l.contains("close files")),
            "{mode:?}: no clear log line:\n{log}"
        );
        drop(held);
        let got = read_all(&m.join("artifacts/art-1/latest/part-0.bin"));
        assert_eq!(got, pattern(MIB as usize / 4, 10), "{mode:?}");
        assert!(!p.resident("art-0"), "{mode:?}");
    }
}

/// The log's ERROR lines that name `version`.
fn error_lines(m: &Mount, version: &str) -> Vec<String> {
    m.log_text()
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains(version))
        .map(String::from)
        .collect()
}

/// A version so much larger than the budget that even its index and seek index cannot fit:
/// refused with `EFBIG` before anything is downloaded, one clear ERROR line however many
/// accesses.
#[test]
fn a_version_whose_index_cannot_fit_is_efbig_with_a_clear_log_line() {
    let data = data_with_versions(1, 64 * 1024);
    // The API announces 200 GiB: its seek index alone would take about 1.6 GiB.
    common::hostile::put_sidecar(
        data.path(),
        "artifacts",
        "art-0",
        "v1",
        &serde_json::json!({"size": 200u64 << 30, "file_count": 4}),
    );
    let emu = Emulator::with_data(data.path());
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::with(&emu, cache_opts(cache.path(), "1G"));
    let err = std::fs::read(m.join("artifacts/art-0/latest/part-0.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err}");
    let log = m.log_text();
    let v = emu.current_version("artifacts", "art-0");
    let line = log
        .lines()
        .find(|l| l.contains(&v) && l.contains("budget"))
        .unwrap_or_else(|| panic!("no log line:\n{log}"));
    assert!(
        line.contains("200.0 GiB") && line.contains("1.0 GiB") && line.contains("--cache-size"),
        "{line}"
    );
    // Every access is refused again, but logged at ERROR once: a loop of 100 `stat`s does
    // not write 100 lines.
    for i in 0..100 {
        let path = m.join(&format!("artifacts/art-0/latest/part-{i}.bin"));
        let err = std::fs::metadata(&path).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err}");
    }
    let errors = error_lines(&m, &v);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(emu.counter("store.get"), 0, "nothing downloaded");
}

/// A version larger than the budget is listed from its index; a stretch of its archive
/// that unpacks to more than the whole budget (one deflate block of 2 MiB, written at
/// level 1, against a budget of 1 MiB) cannot be read: `EFBIG`, one clear ERROR line.
#[test]
fn a_span_larger_than_the_whole_budget_is_efbig_with_a_clear_log_line() {
    let data = data_with_versions(1, 2 * MIB as usize);
    let emu = Emulator::with_data(data.path());
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::with(&emu, cache_opts(cache.path(), "1M"));
    let file = m.join("artifacts/art-0/latest/part-0.bin");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), MIB / 2);
    let err = std::fs::read(&file).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err}");
    let v = emu.current_version("artifacts", "art-0");
    for i in 0..20 {
        let path = m.join(&format!("artifacts/art-0/latest/part-{}.bin", i % 4));
        let err = std::fs::read(&path).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err}");
    }
    let errors = error_lines(&m, &v);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("budget of 1.0 MiB") && errors[0].contains("--cache-size"),
        "{}",
        errors[0]
    );
}

#[test]
fn an_archive_bigger_than_its_announced_size_is_stopped() {
    let data = data_with_versions(1, 2 * MIB as usize);
    // The API announces far less than the archive holds.
    std::fs::write(
        data.path().join("artifacts/art-0/v1.json"),
        r#"{"size": 65536, "file_count": 4}"#,
    )
    .unwrap();
    let emu = Emulator::with_data(data.path());
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::with(&emu, cache_opts(cache.path(), "100M"));
    let err = std::fs::read(m.join("artifacts/art-0/latest/part-0.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(m.log_text().contains("announced"), "{}", m.log_text());
    assert_eq!(resident_versions(cache.path()), 0);
    assert!(
        disk_usage(&cache.path().join("tmp")) < 256 * 1024,
        "stopped early"
    );
}

#[test]
fn a_restart_reuses_the_cache_and_a_lowered_budget_trims_it() {
    let data = data_with_versions(3, MIB as usize);
    let emu = Emulator::with_data(data.path());
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::with(&emu, cache_opts(cache.path(), "100M"));
    for i in 0..3 {
        read_all(&m.join(&format!("artifacts/art-{i}/latest/part-0.bin")));
        std::thread::sleep(Duration::from_millis(20));
    }
    // A file is served before its version is complete: wait for the last commit.
    let deadline = Instant::now() + Duration::from_secs(60);
    while resident_versions(cache.path()) < 3 {
        assert!(Instant::now() < deadline, "the versions were never cached");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(m.unmount().success());
    assert_eq!(resident_versions(cache.path()), 3);

    emu.reset_counters();
    let m = Mount::with(&emu, cache_opts(cache.path(), "100M"));
    for i in 0..3 {
        assert_eq!(
            read_all(&m.join(&format!("artifacts/art-{i}/latest/part-3.bin"))),
            pattern(MIB as usize / 4, (i * 10 + 3) as u64)
        );
    }
    assert_eq!(
        emu.counter("store.get"),
        0,
        "restart downloaded again: {}",
        emu.counters()
    );
    assert!(m.unmount().success());

    // A budget for one version: trimmed at start, the most recently used kept.
    let m = Mount::with(&emu, cache_opts(cache.path(), "1200K"));
    assert!(disk_usage(cache.path()) <= 1200 * 1024);
    assert_eq!(resident_versions(cache.path()), 1);
    read_all(&m.join("artifacts/art-2/latest/part-0.bin"));
    assert_eq!(
        emu.counter("store.get"),
        0,
        "the most recent version was kept"
    );
}

#[test]
fn kill_9_during_an_unpack_leaves_nothing_partial() {
    let data = tempfile::tempdir().unwrap();
    let mut b = ArchiveBuilder::new();
    for j in 0..24 {
        b.file(
            &format!("big-{j:02}.bin"),
            0o644,
            1_700_000_000,
            &pattern(MIB as usize, j),
        );
    }
    put_archive(data.path(), "artifacts", "big", "v1", &b.finish());
    let emu = Emulator::with_data(data.path());
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::with(&emu, cache_opts(cache.path(), "1G"));
    let m = kill_9_during_an_unpack(
        m,
        &emu,
        cache.path(),
        cache_opts(cache.path(), "1G"),
        "artifacts/big/latest/big-23.bin",
    );
    assert_eq!(
        read_all(&m.join("artifacts/big/latest/big-23.bin")),
        pattern(MIB as usize, 23)
    );
    assert_eq!(
        emu.counter("store.get"),
        1,
        "downloaded again after the crash"
    );
}

#[test]
fn a_second_daemon_on_the_same_cache_is_refused() {
    let data = data_with_versions(1, 4096);
    let emu = Emulator::with_data(data.path());
    let cache = tempfile::tempdir().unwrap();
    let _first = Mount::with(&emu, cache_opts(cache.path(), "10M"));
    let err = Mount::try_with(&emu, cache_opts(cache.path(), "10M"))
        .err()
        .expect("second daemon must fail");
    assert!(
        err.contains("in use by another vm0fs") && err.contains("--cache-dir"),
        "{err}"
    );
}
