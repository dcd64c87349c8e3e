//! Read paths at the kernel's speed, on real mounts: what the kernel keeps (symlink targets,
//! a version root's final attributes) and what it is told when that changes, directory
//! listings served by position from the index, how many inodes a walk makes the kernel
//! create, and the requests that must leave no trace in the log (an ioctl, an interrupted
//! reader).
//!
//! Requests are counted in the daemon's own log: fuser logs each request it receives at
//! DEBUG (`fuser::request`), and the mounts here keep that target and every WARN and ERROR
//! (the default mount of the other tests shows `vm0fs` lines only). Nothing asserts a
//! duration; every tool that might hang runs as a child with a deadline.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use common::hostile::{poll_until, within};
use common::{c_path, ok, put_archive, run_within, sh, tar_extract, Emulator, Mount, MountOpts};
use vm0_emulator::pack::ArchiveBuilder;

/// Generous bound for anything that should happen at once.
const DEADLINE: Duration = Duration::from_secs(60);

/// Mount with `extra` flags, logging every request fuser receives and every WARN and
/// ERROR of any target (fuser's own included).
fn mount(emu: &Emulator, extra: &[&str]) -> Mount {
    Mount::with(
        emu,
        MountOpts {
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: vec![("RUST_LOG", "vm0fs=debug,fuser::request=debug,warn".into())],
            ..Default::default()
        },
    )
}

/// How many requests of operation `op` (`READLINK`, `IOCTL`, ...) the daemon received.
fn requests(m: &Mount, op: &str) -> usize {
    let needle = format!(" {op}");
    m.log_text()
        .lines()
        .filter(|l| l.contains("FUSE(") && l.contains(&needle))
        .count()
}

/// The log lines at WARN or ERROR.
fn loud_lines(m: &Mount) -> Vec<String> {
    m.log_text()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_string)
        .collect()
}

/// An emulator serving artifact `report` (`a.txt`, `sub/b.txt`).
fn report() -> (tempfile::TempDir, Emulator) {
    let data = tempfile::tempdir().unwrap();
    let mut b = ArchiveBuilder::new();
    b.file("a.txt", 0o644, 1_600_000_000, b"a\n");
    b.file("sub/b.txt", 0o644, 1_600_000_001, b"b\n");
    put_archive(data.path(), "artifacts", "report", "v1", &b.finish());
    let emu = Emulator::with_data(data.path());
    (data, emu)
}

/// 1,000 `lstat`s through `latest` send no READLINK: the kernel keeps the link's target.
/// When `latest` moves, the kernel is told, and the new target is followed.
#[test]
fn latest_is_followed_without_readlink_until_it_moves() {
    let (_data, emu) = report();
    let m = mount(&emu, &["--metadata-ttl", "1"]);
    let a = m.join("artifacts/report/latest/a.txt");
    assert_eq!(std::fs::read(&a).unwrap(), b"a\n");
    let before = requests(&m, "READLINK");
    assert!(before >= 1, "the first walk through latest reads the link");
    for _ in 0..1000 {
        std::fs::symlink_metadata(&a).unwrap();
    }
    let after = requests(&m, "READLINK");
    assert_eq!(
        after - before,
        0,
        "READLINKs for 1,000 lstats through latest"
    );

    let pushed = emu.post(
        "push",
        &json!({"kind": "artifacts", "name": "report", "files": {"new.txt": "fresh\n"}}),
    );
    let new_id = pushed["id"].as_str().unwrap().to_string();
    // The walk the kernel makes itself (no `readlink(2)`, which could hide a stale cache).
    let new = m.join("artifacts/report/latest/new.txt");
    poll_until(DEADLINE, "latest to lead to the new version", || {
        std::fs::read(&new).is_ok_and(|d| d == b"fresh\n")
    });
    assert_eq!(
        std::fs::read_link(m.join("artifacts/report/latest")).unwrap(),
        Path::new(&new_id)
    );
    assert!(
        std::fs::symlink_metadata(&a).is_err(),
        "a.txt is not in the new version"
    );
    assert!(loud_lines(&m).is_empty(), "{:#?}", loud_lines(&m));
}

/// A version's root right after its download has the attributes of the archive's `./`
/// entry and a link count that counts its subdirectories, as `tar -xzf` makes them, although
/// the kernel was shown it before the download (when they were not known yet).
#[test]
fn a_version_root_is_exact_as_soon_as_it_is_complete() {
    let data = tempfile::tempdir().unwrap();
    let mut b = ArchiveBuilder::new();
    b.dir("./", 0o750, 1_500_000_000);
    for d in ["one", "two", "three"] {
        b.file(&format!("{d}/f.txt"), 0o644, 1_600_000_000, d.as_bytes());
    }
    let archive = put_archive(data.path(), "volumes", "rooted", "v1", &b.finish());
    let emu = Emulator::with_data(data.path());
    let m = mount(&emu, &[]);
    let id = emu.current_version("volumes", "rooted");
    let root = m.join(&format!("volumes/rooted/{id}"));
    // Shown before its download (listing a storage never downloads its versions).
    let cold = std::fs::metadata(&root).unwrap();
    assert!(cold.is_dir());
    // The download, to its end (a listing waits for the whole version).
    ok(Command::new("ls").arg(&root));
    let expected = tar_extract(&archive);
    let want = std::fs::metadata(expected.path()).unwrap();
    let got = std::fs::metadata(&root).unwrap();
    assert_eq!(
        (
            got.mode() & 0o7777,
            got.mtime(),
            got.mtime_nsec(),
            got.nlink()
        ),
        (
            want.mode() & 0o7777,
            want.mtime(),
            want.mtime_nsec(),
            want.nlink()
        ),
        "mode, mtime and link count of the root"
    );
    assert_eq!(got.nlink(), 5);
}

/// `ls -l` of a directory of 100,000 files, through `latest` and through the id, equals
/// `ls -l` of the tree `tar -xzf` extracts; and a directory handle does not hold the
/// listing: reading its first entries leaves the daemon's anonymous memory where it was.
#[test]
fn a_large_directory_is_listed_by_position_from_the_index() {
    const FILES: usize = 100_000;
    let data = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    // Built with the real tar (fast), names of varied length.
    sh(&format!(
        "set -e; cd {src}; mkdir big small; touch small/x; cd big; \
         seq -f 'file-%06g-with-a-name-of-some-length' 0 {last} | xargs touch -d @1600000000; \
         cd ..; touch -d @1600000001 big; \
         tar -czf {src}/a.tar.gz --owner=0 --group=0 big small",
        src = src.path().display(),
        last = FILES - 1
    ));
    let bytes = std::fs::read(src.path().join("a.tar.gz")).unwrap();
    let archive = put_archive(data.path(), "volumes", "many", "v1", &bytes);
    let emu = Emulator::with_data(data.path());
    let m = mount(&emu, &[]);
    let id = emu.current_version("volumes", "many");
    // The whole version first (a listing waits for it), then the daemon's memory.
    ok(Command::new("ls").arg(m.join(&format!("volumes/many/{id}/small"))));
    let daemon = m.pid();
    let anon_before = rss_anon(daemon);
    let big_by_id = m.join(&format!("volumes/many/{id}/big"));
    let dir = c_path(&big_by_id);
    // SAFETY: a valid C string; the stream is closed below.
    let stream = unsafe { libc::opendir(dir.as_ptr()) };
    assert!(!stream.is_null());
    for _ in 0..3 {
        // SAFETY: `stream` is open.
        assert!(!unsafe { libc::readdir(stream) }.is_null());
    }
    let anon_open = rss_anon(daemon);
    // SAFETY: `stream` is open, and closed once.
    unsafe { libc::closedir(stream) };
    assert!(
        anon_open.saturating_sub(anon_before) < 4 << 20,
        "an open handle of {FILES} entries grew the daemon by {} KiB",
        (anon_open - anon_before) >> 10
    );

    let expected = tar_extract(&archive);
    let ls = |dir: &Path| {
        ok(Command::new("ls")
            .args(["-lgo", "--time-style=+%s"])
            .arg(dir))
    };
    let want = ls(&expected.path().join("big"));
    assert_eq!(want.lines().count(), FILES + 1);
    assert!(ls(&big_by_id) == want, "ls -l through the id differs");
    let big_by_latest = m.join("volumes/many/latest/big");
    assert!(ls(&big_by_latest) == want, "ls -l through latest differs");
    // And every name by `find` (plain readdir, no attributes), in a fresh handle.
    let names = |dir: &Path| {
        let mut n: Vec<String> = ok(Command::new("find")
            .arg(".")
            .arg("-mindepth")
            .arg("1")
            .current_dir(dir))
        .lines()
        .map(str::to_string)
        .collect();
        n.sort();
        n
    };
    assert!(names(&big_by_latest) == names(&expected.path().join("big")));
}

/// LOOKUPs of a name starting with `prefix` the daemon received.
fn lookups_of(m: &Mount, prefix: &str) -> usize {
    let needle = format!("LOOKUP name \"{prefix}");
    m.log_text().lines().filter(|l| l.contains(&needle)).count()
}

/// A version of three directories of 100 files each (`d0/f-000` .. `d2/f-099`), each file
/// holding its own name; and its archive.
fn three_dirs(data: &Path) -> PathBuf {
    let mut b = ArchiveBuilder::new();
    for d in 0..3 {
        for f in 0..100 {
            let name = format!("d{d}/f-{f:03}");
            b.file(&name, 0o644, 1_600_000_000, name.as_bytes());
        }
    }
    put_archive(data, "artifacts", "walk", "v1", &b.finish())
}

/// [`three_dirs`] mounted: the mount, the version's root in it, and the archive extracted
/// by `tar -xzf`. Fields drop in order: the mount before the emulator it reads.
struct Walk {
    m: Mount,
    root: PathBuf,
    expected: tempfile::TempDir,
    _emu: Emulator,
    _data: tempfile::TempDir,
}

impl Walk {
    fn new() -> Walk {
        let data = tempfile::tempdir().unwrap();
        let archive = three_dirs(data.path());
        let emu = Emulator::with_data(data.path());
        let m = mount(&emu, &[]);
        let id = emu.current_version("artifacts", "walk");
        let root = m.join(&format!("artifacts/walk/{id}"));
        let expected = tar_extract(&archive);
        Walk {
            m,
            root,
            expected,
            _emu: emu,
            _data: data,
        }
    }
}

/// Sorted relative paths of everything under `dir`, by `find`.
fn found(dir: &Path) -> Vec<String> {
    let out = ok(Command::new("find")
        .args([".", "-mindepth", "1"])
        .current_dir(dir));
    let mut names: Vec<String> = out.lines().map(str::to_string).collect();
    names.sort();
    names
}

/// A walk that reads names only (`find`) has the kernel make inodes of a directory's first
/// entries only: a file past them is looked up when it is first looked at. That lookup
/// shows a reader that wants the attributes, and every first reply is whole again.
#[test]
fn a_walk_for_names_gets_no_inode_for_every_file() {
    let w = Walk::new();
    let (m, root, expected) = (&w.m, &w.root, &w.expected);
    assert_eq!(found(root), found(expected.path()));
    assert_eq!(lookups_of(m, "f-"), 0, "find looked no file up");

    // The last file of a directory came without an inode: looking at it asks the daemon.
    let last = root.join("d0/f-099");
    let meta = std::fs::symlink_metadata(&last).unwrap();
    let want = std::fs::symlink_metadata(expected.path().join("d0/f-099")).unwrap();
    assert_eq!(
        (meta.len(), meta.mode(), meta.mtime()),
        (want.len(), want.mode(), want.mtime())
    );
    assert_eq!(
        lookups_of(m, "f-099"),
        1,
        "the file past the first reply is looked up"
    );
    // Its first entries came with theirs: no lookup.
    std::fs::symlink_metadata(root.join("d0/f-000")).unwrap();
    assert_eq!(
        lookups_of(m, "f-000"),
        0,
        "a file of the first reply has its inode"
    );
    assert!(loud_lines(m).is_empty(), "{:#?}", loud_lines(m));
}

/// A reader that reads a whole directory and then opens its files (`grep -r`) pays lookups
/// for one directory's files past its first reply, not for every directory's: its lookups
/// make the first replies whole again. What it reads is the archive's.
#[test]
fn a_reader_that_opens_what_it_listed_gets_whole_replies_again() {
    let w = Walk::new();
    let (m, root, expected) = (&w.m, &w.root, &w.expected);
    let grep = |dir: &Path| {
        let out = ok(Command::new("grep")
            .args(["-r", "f-"])
            .arg(".")
            .current_dir(dir));
        let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    let got = grep(root);
    assert_eq!(got.len(), 300);
    assert!(
        got == grep(expected.path()),
        "grep -r over the mount differs"
    );
    // 100 files a directory: without the whole replies, each directory's files past its
    // first reply would be looked up (all but `PROBE` of each).
    let files = lookups_of(m, "f-");
    assert!(
        files <= 100,
        "{files} lookups of files: more than one directory's worth"
    );
    assert!(loud_lines(m).is_empty(), "{:#?}", loud_lines(m));
}

/// `ls -l` asks every entry it lists for its SELinux label and its ACL, and the kernel
/// caches neither answer of a FUSE file system that does not handle ACLs itself. "Not
/// supported", the truth for this mount, has `ls` stop asking for the whole device: a
/// listing of 300 files on fresh inodes costs two such round trips, not one per entry.
/// What it shows is what `tar -xzf` gives (no `+` of an ACL either).
#[test]
fn ls_l_asks_no_attribute_of_every_entry() {
    let w = Walk::new();
    let ls = |dir: &Path| {
        ok(Command::new("ls")
            .args(["-lgoR", "--time-style=+%s", "."])
            .current_dir(dir))
    };
    // The files' lines: mode, links, size, mtime, name. (Directories the archive only
    // implies get the version's time on the mount, the time of extraction from tar.)
    let files = |out: String| -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with('-'))
            .map(str::to_string)
            .collect()
    };
    let got = files(ls(&w.root));
    assert_eq!(got.len(), 300);
    assert!(
        got == files(ls(w.expected.path())),
        "ls -lR over the mount differs: {got:#?}"
    );
    let asked = requests(&w.m, "GETXATTR");
    assert!(
        asked <= 2,
        "{asked} GETXATTR requests for one ls -lR of 300 files on fresh inodes"
    );
    assert!(loud_lines(&w.m).is_empty(), "{:#?}", loud_lines(&w.m));
}

/// The daemon's anonymous memory (`RssAnon` of `/proc/PID/status`), in bytes.
fn rss_anon(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib << 10
}

/// `isatty` on a file of the mount (Python's `open()` calls it) is `ENOTTY`, and no ioctl
/// leaves a line in the log.
#[test]
fn an_ioctl_is_enotty_without_a_log_line() {
    let (_data, emu) = report();
    let m = mount(&emu, &[]);
    let a = m.join("artifacts/report/latest/a.txt");
    let file = std::fs::File::open(&a).unwrap();
    let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
    use std::os::unix::io::AsRawFd;
    // SAFETY: TCGETS writes one `termios` to the pointer given, which has room for it.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TCGETS, termios.as_mut_ptr()) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOTTY)
    );
    let py = format!(
        "import sys\nfor _ in range(20):\n    data = open({:?}, 'rb').read()\nsys.stdout.write(data.decode())",
        a.display()
    );
    assert_eq!(ok(Command::new("python3").arg("-c").arg(py)), "a\n");
    assert!(requests(&m, "IOCTL") >= 1, "the kernel sends the ioctls");
    let loud = loud_lines(&m);
    assert!(loud.is_empty(), "{loud:#?}");
}

/// Readers interrupted (SIGINT) while they wait for a held download: each returns, and
/// the daemon logs nothing above DEBUG for them (fuser's "Failed to send FUSE reply" for the
/// answer to an interrupt the kernel no longer waits for included).
#[test]
fn an_interrupted_reader_leaves_no_error_line() {
    let (_data, emu) = report();
    let m = mount(&emu, &[]);
    ok(Command::new("ls").arg(m.join("artifacts/report")));
    emu.fault(json!({"route": "store.get", "hold_after_bytes": 0, "count": 0}));
    let path: PathBuf = m.join("artifacts/report/latest/a.txt");
    // Each its own name (one not published yet, whose lookup waits for the whole version):
    // the kernel sends concurrent lookups of one name as one request.
    let readers: Vec<_> = (0..8)
        .map(|i| {
            Command::new("timeout")
                .args(["-s", "INT", "2", "cat"])
                .arg(m.join(&format!("artifacts/report/latest/waiting-{i}")))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    poll_until(DEADLINE, "the download to be held", || {
        emu.counter("store.held") >= 1
    });
    for r in readers {
        let status = within(DEADLINE, move || r.wait_with_output())
            .expect("an interrupted reader did not return")
            .unwrap()
            .status;
        assert_eq!(status.code(), Some(124), "{status:?}");
    }
    emu.clear_faults();
    emu.post("release", &json!({}));
    assert_eq!(std::fs::read(&path).unwrap(), b"a\n");
    let loud = loud_lines(&m);
    assert!(loud.is_empty(), "{loud:#?}");
    let interrupted = m
        .log_text()
        .lines()
        .filter(|l| l.contains(" DEBUG ") && l.contains("interrupted while waiting"))
        .count();
    assert_eq!(interrupted, 8, "each interrupted wait is logged at DEBUG");
}

/// Pages of `path` in the page cache, in bytes (`fincore`).
fn resident_bytes(path: &Path) -> u64 {
    let out = ok(Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path));
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("fincore said {out:?}"))
}

/// Every read path gives the archive's bytes, compared with `tar -xzf` of the same
/// archive: buffered `cat` of a file of its own (not a multiple of any unit) and of a
/// packed one, 4 KiB `O_DIRECT` reads on both sides of check-unit boundaries, and reads
/// of odd sizes at odd offsets. A buffered read leaves the file cached once: the pages of
/// the content file it read are dropped (the kernel holds the mount's copy), behind the
/// reader as it goes through a file of three chunks (`cache::ReadStream`) and all at its end.
#[test]
fn every_read_path_gives_the_archives_bytes_and_caches_once() {
    let data = tempfile::tempdir().unwrap();
    let big = vm0_emulator::pack::pattern((24 << 20) + 4321, 7);
    let mut b = ArchiveBuilder::new();
    b.file("big.bin", 0o644, 1_600_000_000, &big);
    b.file("small.txt", 0o644, 1_600_000_000, &big[..70_000]);
    let archive = put_archive(data.path(), "artifacts", "data", "v1", &b.finish());
    let local = tar_extract(&archive);
    let emu = Emulator::with_data(data.path());
    let m = mount(&emu, &[]);
    let version = m.join("artifacts/data/latest");

    // What `run_within` returns is read once the child has exited: outputs read back
    // through it stay under a pipe's 64 KiB, and whole files are compared with `cmp`.
    let done = |what: &str, out: std::process::Output| -> Vec<u8> {
        assert!(out.status.success(), "{what}: {out:?}");
        out.stdout
    };
    for name in ["big.bin", "small.txt"] {
        done(
            &format!("cmp {name}"),
            run_within(
                DEADLINE,
                Command::new("cmp")
                    .arg(version.join(name))
                    .arg(local.path().join(name)),
            ),
        );
    }
    // The content file of big.bin, once its version is complete.
    let find_blob = || {
        let found = ok(Command::new("find")
            .arg(m.cache.join("versions"))
            .args(["-path", "*/data/*", "-type", "f", "-size"])
            .arg(format!("{}c", big.len())));
        PathBuf::from(found.trim())
    };
    poll_until(DEADLINE, "big.bin's content file in versions/", || {
        find_blob().is_file()
    });
    let blob = find_blob();
    // Neither copy in the page cache (the unpack wrote the content file through it), then
    // one `cat` through the mount.
    let evict = |p: &Path| {
        ok(Command::new("dd").arg(format!("if={}", p.display())).args([
            "iflag=nocache",
            "count=0",
            "status=none",
        ]));
    };
    // Written back first: dirty pages (the unpack wrote them) cannot be dropped.
    ok(Command::new("sync").arg(&blob));
    evict(&blob);
    evict(&version.join("big.bin"));
    assert!(
        resident_bytes(&blob) <= 64 << 10,
        "the content file was not evicted"
    );
    done(
        "cmp big.bin, its pages evicted",
        run_within(
            DEADLINE,
            Command::new("cmp")
                .arg(version.join("big.bin"))
                .arg(local.path().join("big.bin")),
        ),
    );
    let left = resident_bytes(&blob);
    assert!(
        left <= 1 << 20,
        "{left} bytes of big.bin's content file stayed in the page cache after a cat of it"
    );

    let unit = 64 << 10;
    let direct = |name: &str, at: usize, blocks: usize| -> Vec<u8> {
        done(
            &format!("dd iflag=direct of {name} at {at}"),
            run_within(
                DEADLINE,
                Command::new("dd")
                    .arg(format!("if={}", version.join(name).display()))
                    .args(["iflag=direct", "bs=4096", "status=none"])
                    .arg(format!("skip={}", at / 4096))
                    .arg(format!("count={blocks}")),
            ),
        )
    };
    for at in [
        0,
        unit - 4096,
        unit,
        3 * unit + 8192,
        (1 << 20) - 4096,
        8 << 20,
    ] {
        let want = &big[at.min(big.len())..(at + 3 * 4096).min(big.len())];
        assert_eq!(direct("big.bin", at, 3), want, "O_DIRECT at {at}");
    }
    assert_eq!(direct("small.txt", 65536, 2), &big[65536..70_000]);
    for (at, len) in [
        (1, 10),
        (unit - 1, 2),
        (unit * 5 - 3, 10_000),
        (big.len() - 5, 99),
    ] {
        let out = done(
            &format!("dd at {at} len {len}"),
            run_within(
                DEADLINE,
                Command::new("dd")
                    .arg(format!("if={}", version.join("big.bin").display()))
                    .args(["iflag=skip_bytes,count_bytes", "bs=65536", "status=none"])
                    .arg(format!("skip={at}"))
                    .arg(format!("count={len}")),
            ),
        );
        assert_eq!(
            out,
            &big[at..(at + len).min(big.len())],
            "at {at} len {len}"
        );
    }
}
