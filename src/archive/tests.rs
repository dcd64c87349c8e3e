//! Tests of the archive module: archives are built in memory (with `tar::Builder`, and by
//! hand for what the builder refuses to write), unpacked into a temporary directory, and
//! the index and blobs checked.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{EntryType, Header};
use tempfile::TempDir;
use vm0_emulator::pack::pax_record;

use super::pax::parse_pax_time;
use super::tree::normalize;
use super::*;

const MTIME: u64 = 1_600_000_000;
const IMPLIED_MTIME: i64 = 1_234_567;

// ---------------------------------------------------------------------------------------
// Building archives

/// A tar archive built in memory.
struct Tar {
    builder: tar::Builder<Vec<u8>>,
}

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(1000);
    h.set_gid(1000);
    h
}

impl Tar {
    fn new() -> Tar {
        Tar {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn file(self, path: &str, data: &[u8]) -> Tar {
        self.file_mode(path, data, 0o644)
    }

    fn file_mode(mut self, path: &str, data: &[u8], mode: u32) -> Tar {
        let mut h = header(EntryType::Regular, mode, data.len() as u64);
        self.builder.append_data(&mut h, path, data).unwrap();
        self
    }

    fn dir(mut self, path: &str, mode: u32) -> Tar {
        let mut h = header(EntryType::Directory, mode, 0);
        self.builder.append_data(&mut h, path, io::empty()).unwrap();
        self
    }

    fn symlink(mut self, path: &str, target: &str) -> Tar {
        let mut h = header(EntryType::Symlink, 0o777, 0);
        self.builder.append_link(&mut h, path, target).unwrap();
        self
    }

    fn hard_link(mut self, path: &str, target: &str) -> Tar {
        let mut h = header(EntryType::Link, 0o644, 0);
        self.builder.append_link(&mut h, path, target).unwrap();
        self
    }

    /// A member with raw name and link name bytes (at most 100 each), bypassing every check
    /// of the tar crate's builder: the hostile cases.
    fn raw(mut self, kind: EntryType, name: &[u8], link: &[u8], mode: u32, data: &[u8]) -> Tar {
        let mut h = header(kind, mode, data.len() as u64);
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
        self
    }

    /// A pax extended header (`x`) for the next member.
    fn pax(self, records: &[(&str, &[u8])]) -> Tar {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        self.raw(EntryType::XHeader, b"PaxHeaders/next", b"", 0o644, &data)
    }

    /// A header appended as is (its checksum must be set).
    fn header(mut self, h: &Header, data: &[u8]) -> Tar {
        self.builder.append(h, data).unwrap();
        self
    }

    fn tar(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }

    fn gz(self) -> Vec<u8> {
        gzip(&self.tar())
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// Content that shows where each byte came from (a shifted blob would not match).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

// ---------------------------------------------------------------------------------------
// Unpacking and checking

struct Run {
    _tmp: TempDir,
    dest: PathBuf,
    sentinel: PathBuf,
}

impl Run {
    fn new() -> Run {
        let tmp = TempDir::new().unwrap();
        let dest = tmp.path().join("dest");
        let sentinel = tmp.path().join("sentinel");
        fs::create_dir(&dest).unwrap();
        fs::create_dir(&sentinel).unwrap();
        Run {
            _tmp: tmp,
            dest,
            sentinel,
        }
    }

    fn unpack(&self, input: impl Read, max_bytes: u64) -> Result<Unpacked, ArchiveError> {
        unpack(input, &self.dest, &options(max_bytes), &mut |_| {})
    }

    /// Nothing was created next to `dest`, and inside it only the pack, the index, the
    /// checksums and `data/<n>` files.
    fn assert_contained(&self) {
        assert_eq!(
            fs::read_dir(&self.sentinel).unwrap().count(),
            0,
            "sentinel touched"
        );
        let top: Vec<_> = fs::read_dir(&self.dest)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            top.iter()
                .all(|n| n == "data" || n == "pack" || n == "index.bin" || n == "checks.bin"),
            "unexpected files in dest: {top:?}"
        );
        for e in fs::read_dir(self.dest.join("data")).unwrap() {
            let e = e.unwrap();
            assert!(
                e.file_type().unwrap().is_file(),
                "{:?} is not a file",
                e.path()
            );
            let name = e.file_name().into_string().unwrap();
            assert!(name.parse::<u32>().is_ok(), "unexpected blob name {name}");
        }
    }
}

/// The options of these tests: content of at most `max_bytes`, no other limit.
fn options(max_bytes: u64) -> UnpackOptions {
    UnpackOptions {
        max_bytes,
        file_count: 0,
        max_index_bytes: u64::MAX,
        implied_dir_mtime: IMPLIED_MTIME,
        keep_content: true,
    }
}

/// Unpack `archive`, which must succeed, and check every invariant of the result.
fn unpack_ok(archive: &[u8]) -> (Run, Unpacked) {
    let run = Run::new();
    let u = run
        .unpack(archive, u64::MAX)
        .unwrap_or_else(|e| panic!("unpack failed: {e}"));
    check(&run, &u);
    assert_eq!(u.stats.compressed_bytes, archive.len() as u64);
    (run, u)
}

/// Unpack `archive`, expecting an error, and return it.
fn unpack_err(archive: &[u8]) -> ArchiveError {
    let run = Run::new();
    match run.unpack(archive, u64::MAX) {
        Ok(u) => panic!("unpack succeeded: {:?}", u.index),
        Err(e) => {
            assert_eq!(fs::read_dir(&run.sentinel).unwrap().count(), 0);
            e
        }
    }
}

/// The invariants the cache and filesystem rely on.
fn check(run: &Run, u: &Unpacked) {
    run.assert_contained();
    let tree = u.index.tree().unwrap();
    let nodes = &tree.nodes;
    let pack_len = fs::metadata(pack_path(&run.dest)).unwrap().len();
    let mut own = 0;
    assert!(matches!(nodes[0].kind, NodeKind::Dir { parent: 0, .. }));
    let mut names = vec![0u32; nodes.len()];
    let mut blobs = HashSet::new();
    let (mut files, mut bytes) = (0, 0);
    for (id, node) in nodes.iter().enumerate() {
        match &node.kind {
            NodeKind::Dir { entries, .. } => {
                let mut subdirs = 0;
                for pair in entries.windows(2) {
                    assert!(pair[0].name < pair[1].name, "entries not sorted in {id}");
                }
                for e in entries {
                    assert!(!e.name.is_empty() && e.name != b"." && e.name != b"..");
                    assert!(!e.name.contains(&b'/') && !e.name.contains(&0));
                    names[e.node as usize] += 1;
                    if let NodeKind::Dir { parent, .. } = &nodes[e.node as usize].kind {
                        assert_eq!(*parent as usize, id, "wrong parent of {}", e.node);
                        subdirs += 1;
                    }
                }
                assert_eq!(node.nlink, 2 + subdirs, "nlink of dir {id}");
            }
            NodeKind::File { size, blob, packed } => {
                files += 1;
                if blobs.insert(*blob) {
                    bytes += size;
                }
                assert_eq!(packed.is_some(), *size < PACK_MAX, "packed iff small: {id}");
                match packed {
                    Some(offset) => assert!(offset + size <= pack_len, "pack range of {id}"),
                    None => {
                        own += 1;
                        let meta = fs::metadata(blob_path(&run.dest, *blob)).unwrap();
                        assert_eq!(meta.len(), *size, "size of blob {blob}");
                    }
                }
            }
            NodeKind::Symlink { target } => assert!(!target.is_empty()),
        }
        assert_eq!(node.perm & 0o6000, 0, "setuid/setgid kept on {id}");
    }
    for (id, node) in nodes.iter().enumerate().skip(1) {
        // A node that lost its last name to a hard link keeps its number as a hole: an
        // empty directory that no name reaches (numbers are final once handed out).
        let hole = matches!(&node.kind, NodeKind::Dir { parent: 0, entries } if entries.is_empty());
        if names[id] == 0 && hole {
            continue;
        }
        assert!(names[id] >= 1, "node {id} unreachable");
        if !matches!(node.kind, NodeKind::Dir { .. }) {
            assert_eq!(node.nlink, names[id], "nlink of {id}");
        } else {
            assert_eq!(names[id], 1, "directory {id} has several names");
        }
    }
    // Blob numbers are dense, and the data directory holds exactly the files not packed.
    assert_eq!(blobs.len(), files, "each file node has its own blob");
    assert_eq!(blobs, (0..files as u32).collect::<HashSet<_>>());
    let on_disk = fs::read_dir(run.dest.join("data")).unwrap().count();
    assert_eq!(on_disk, own);
    assert_eq!(u.stats.files, files as u64);
    assert_eq!(u.stats.bytes, bytes);
    assert!(
        u.stats.disk_bytes > 0,
        "the data directory itself takes space"
    );
    check_sums(run, &tree);
}

/// Every unit of every file passes the checksum written for it, and the version passes
/// the cheap check made at start.
fn check_sums(run: &Run, tree: &IndexTree) {
    let checks = Checks::open(&run.dest, tree.nodes.len() as u32, true).unwrap();
    for (id, node) in tree.nodes.iter().enumerate() {
        let NodeKind::File { size, packed, .. } = &node.kind else {
            continue;
        };
        let content = read_node(run, node);
        let count = unit_count(*size, packed.is_some());
        for unit in 0..count {
            let (start, len) = unit_span(*size, packed.is_some(), unit);
            let bytes = &content[start as usize..(start + len) as usize];
            assert_eq!(
                checks.unit(id as u32, count, unit),
                Ok(checksum(bytes)),
                "unit {unit} of node {id}"
            );
        }
    }
    quick_check(&run.dest, true).unwrap();
}

fn resolve(index: &Index, path: &str) -> Option<u32> {
    let mut node = 0;
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        node = index.lookup(node, comp.as_bytes()).unwrap()?;
    }
    Some(node)
}

/// The whole tree of an unpack, decoded.
fn tree(u: &Unpacked) -> IndexTree {
    u.index.tree().unwrap()
}

fn node(u: &Unpacked, path: &str) -> Node {
    let id = resolve(&u.index, path).unwrap_or_else(|| panic!("{path} not in index"));
    tree(u).nodes[id as usize].clone()
}

/// The content of a file node, from the pack or its own file.
fn read_node(run: &Run, node: &Node) -> Vec<u8> {
    match &node.kind {
        NodeKind::File {
            size,
            packed: Some(offset),
            ..
        } => {
            let pack = fs::read(pack_path(&run.dest)).unwrap();
            pack[*offset as usize..(offset + size) as usize].to_vec()
        }
        NodeKind::File { blob, .. } => fs::read(blob_path(&run.dest, *blob)).unwrap(),
        other => panic!("not a file: {other:?}"),
    }
}

fn content(run: &Run, u: &Unpacked, path: &str) -> Vec<u8> {
    read_node(run, &node(u, path))
}

fn skipped_members(u: &Unpacked) -> Vec<&str> {
    u.stats.skipped.iter().map(|s| s.member.as_str()).collect()
}

// ---------------------------------------------------------------------------------------
// Trees and contents

#[test]
fn nested_dirs_sizes_and_names() {
    let sizes = [0, 1, 4095, 4096, 4097, 131071, 131072, 131073];
    let mut tar = Tar::new();
    for size in sizes {
        tar = tar.file(&format!("sizes/deep/er/f{size}"), &pattern(size));
    }
    let tar = tar
        .file("with space/a b.txt", b"space")
        .file("ünïcødé/日本語.txt", "unicode".as_bytes())
        .file("empty", b"")
        .file("./dot/slash", b"dot")
        .file("top", b"top");
    let (run, u) = unpack_ok(&tar.gz());
    for size in sizes {
        let path = format!("sizes/deep/er/f{size}");
        assert_eq!(content(&run, &u, &path), pattern(size), "{path}");
        assert!(matches!(node(&u, &path).kind, NodeKind::File { size: s, .. } if s == size as u64));
    }
    assert_eq!(content(&run, &u, "with space/a b.txt"), b"space");
    assert_eq!(
        content(&run, &u, "ünïcødé/日本語.txt"),
        "unicode".as_bytes()
    );
    assert_eq!(content(&run, &u, "empty"), b"");
    assert_eq!(content(&run, &u, "dot/slash"), b"dot");
    assert_eq!(u.stats.files, sizes.len() as u64 + 5);
    assert!(u.stats.skipped.is_empty());
    // Implied directories: 0755 and the implied mtime.
    let dir = node(&u, "sizes/deep");
    assert_eq!(
        (dir.perm, dir.mtime_sec, dir.mtime_nsec),
        (0o755, IMPLIED_MTIME, 0)
    );
    assert_eq!(node(&u, "").nlink, 2 + 4);
    let file = node(&u, "top");
    assert_eq!(
        (file.perm, file.mtime_sec, file.nlink),
        (0o644, MTIME as i64, 1)
    );
    // The index lists what the root holds, in byte order.
    let NodeKind::Dir { entries, .. } = &tree(&u).nodes[0].kind else {
        panic!("root is not a directory")
    };
    let names: Vec<_> = entries.iter().map(|e| e.name.as_slice()).collect();
    let expected: [&[u8]; 6] = [
        b"dot",
        b"empty",
        b"sizes",
        b"top",
        b"with space",
        "ünïcødé".as_bytes(),
    ];
    assert_eq!(names, expected);
}

#[test]
fn non_utf8_names_are_kept_as_bytes() {
    let tar = Tar::new().raw(EntryType::Regular, b"caf\xe9/n\xff", b"", 0o644, b"latin1");
    let (run, u) = unpack_ok(&tar.gz());
    let dir = u.index.lookup(0, b"caf\xe9").unwrap().unwrap();
    let file = u.index.lookup(dir, b"n\xff").unwrap().unwrap();
    let file = tree(&u).nodes[file as usize].clone();
    let NodeKind::File { .. } = file.kind else {
        panic!("not a file")
    };
    assert_eq!(read_node(&run, &file), b"latin1");
}

#[test]
fn empty_inputs_are_empty_versions() {
    let cases: [(&str, Vec<u8>); 4] = [
        ("zero bytes", Vec::new()),
        ("empty tar", Tar::new().gz()),
        ("gzip of nothing", gzip(b"")),
        ("tar of only zero blocks", gzip(&[0; 10240])),
    ];
    for (what, archive) in cases {
        let (_run, u) = unpack_ok(&archive);
        assert_eq!(tree(&u).nodes.len(), 1, "{what}");
        assert!(
            matches!(&tree(&u).nodes[0].kind, NodeKind::Dir { entries, .. } if entries.is_empty())
        );
        assert_eq!((u.stats.files, u.stats.bytes), (0, 0), "{what}");
    }
}

#[test]
fn modes_are_kept_without_setuid_and_setgid() {
    let cases = [
        (0o600, 0o600),
        (0o755, 0o755),
        (0o444, 0o444),
        (0o4755, 0o755),
        (0o2755, 0o755),
        (0o6777, 0o777),
        (0o1777, 0o1777),
        (0o100644, 0o644),
    ];
    let mut tar = Tar::new();
    for (i, (mode, _)) in cases.iter().enumerate() {
        tar = tar.file_mode(&format!("f{i}"), b"x", *mode);
    }
    tar = tar.dir("sticky", 0o1777).dir("private", 0o4700);
    let (_run, u) = unpack_ok(&tar.gz());
    for (i, (mode, perm)) in cases.iter().enumerate() {
        assert_eq!(node(&u, &format!("f{i}")).perm, *perm, "mode {mode:o}");
    }
    assert_eq!(node(&u, "sticky").perm, 0o1777);
    assert_eq!(node(&u, "private").perm, 0o700);
}

#[test]
fn pax_mtime_with_fractions() {
    let cases: [(&[u8], (i64, u32)); 5] = [
        (b"1700000000.123456789", (1_700_000_000, 123_456_789)),
        (b"1700000000.5", (1_700_000_000, 500_000_000)),
        (b"1700000000", (1_700_000_000, 0)),
        (b"1700000000.1234567891234", (1_700_000_000, 123_456_789)),
        (b"-1.25", (-2, 750_000_000)),
    ];
    let mut tar = Tar::new();
    for (i, (value, _)) in cases.iter().enumerate() {
        tar = tar.pax(&[("mtime", *value)]).file(&format!("f{i}"), b"x");
    }
    let (_run, u) = unpack_ok(&tar.gz());
    for (i, (value, want)) in cases.iter().enumerate() {
        let n = node(&u, &format!("f{i}"));
        assert_eq!(
            (n.mtime_sec, n.mtime_nsec),
            *want,
            "{}",
            String::from_utf8_lossy(value)
        );
    }
}

/// A 12-byte base-256 field holding `value` as GNU tar writes it (0x80 before a positive
/// number, 0xff before a negative one, then big-endian two's complement).
fn base256(value: i64) -> [u8; 12] {
    let mut field = if value < 0 { [0xff; 12] } else { [0; 12] };
    field[0] = if value < 0 { 0xff } else { 0x80 };
    field[4..].copy_from_slice(&value.to_be_bytes());
    field
}

#[test]
fn numeric_fields_are_read_as_gnu_tar_reads_them() {
    use super::pax::numeric_field;
    let cases: [(&[u8], Option<i64>); 12] = [
        (b"00000000000\0", Some(0)),
        (b"17777777777\0", Some(0o17777777777)),
        (b" 1234567 \0\0\0", Some(0o1234567)),
        (b"\0\0\0\0\0\0\0\0\0\0\0\0", Some(0)),
        (b"0000000008\0\0", None),
        (&base256(5), Some(5)),
        (&base256(-1), Some(-1)),
        // 1950-01-01T00:00:00Z.
        (&base256(-631_152_000), Some(-631_152_000)),
        (&base256(i64::MIN), Some(i64::MIN)),
        (&base256(i64::MAX), Some(i64::MAX)),
        // Past i64 either way.
        (&[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0], None),
        (&[0xff, 0xff, 0xff, 0xfe, 0, 0, 0, 0, 0, 0, 0, 0], None),
    ];
    for (field, want) in cases {
        assert_eq!(numeric_field(field), want, "{field:x?}");
    }
}

/// Times before 1970 in GNU format (what `tar --format=gnu` writes for them) come out as
/// GNU tar reads them, not as the largest time there is.
#[test]
fn gnu_base256_times_before_1970() {
    let mut tar = Tar::new();
    for (i, mtime) in [-631_152_000i64, -1, 1_700_000_000].into_iter().enumerate() {
        let mut h = header(EntryType::Regular, 0o644, 1);
        h.as_old_mut().mtime = base256(mtime);
        h.set_path(format!("f{i}")).unwrap();
        h.set_cksum();
        tar = tar.header(&h, b"x");
    }
    let (_run, u) = unpack_ok(&tar.gz());
    for (i, want) in [-631_152_000i64, -1, 1_700_000_000].into_iter().enumerate() {
        let n = node(&u, &format!("f{i}"));
        assert_eq!((n.mtime_sec, n.mtime_nsec), (want, 0), "f{i}");
    }
}

/// A negative base-256 size (which the `tar` crate reads as a huge one, or as an
/// overflow) is damaged tar data, not a member skipped past the end of the archive.
#[test]
fn a_negative_base256_size_is_damaged_tar_data() {
    for (size, says) in [
        (-512, "size overflow"),
        (-631_152_000, "says -631152000 bytes"),
    ] {
        let mut h = header(EntryType::Regular, 0o644, 0);
        h.as_old_mut().size = base256(size);
        h.set_path("negative").unwrap();
        h.set_cksum();
        let archive = Tar::new().file("first", b"1").header(&h, b"").gz();
        let err = unpack_err(&archive);
        assert!(
            matches!(&err, ArchiveError::Tar(e) if e.to_string().contains(says)),
            "{size}: {err}"
        );
    }
}

#[test]
fn pax_time_parsing() {
    type Case = (&'static [u8], Option<(i64, u32)>);
    let cases: [Case; 10] = [
        (b"0", Some((0, 0))),
        (b"12.000000001", Some((12, 1))),
        (b"-3", Some((-3, 0))),
        (b"-0.5", Some((-1, 500_000_000))),
        (b"", None),
        (b".5", None),
        (b"1e9", None),
        (b"12.3x", None),
        (b"99999999999999999999", None),
        (b"\xff", None),
    ];
    for (value, want) in cases {
        assert_eq!(
            parse_pax_time(value),
            want,
            "{}",
            String::from_utf8_lossy(value)
        );
    }
}

#[test]
fn path_normalization() {
    // (path, its components joined by `/`, or `None` if refused)
    let cases: [(&[u8], Option<&str>); 15] = [
        (b"a/b", Some("a/b")),
        (b"./a/b", Some("a/b")),
        (b"a//b/", Some("a/b")),
        (b"a/./b", Some("a/b")),
        (b".", Some("")),
        (b"./", Some("")),
        (b"", Some("")),
        (b"...", Some("...")),
        (b"..a/b..", Some("..a/b..")),
        (b"../a", None),
        (b"a/../b", None),
        (b"a/..", None),
        (b"/etc/passwd", None),
        (b"//x", None),
        (b"a\0b", None),
    ];
    for (path, want) in cases {
        let got = normalize(path).ok().map(|c| c.join(&b'/'));
        assert_eq!(
            got,
            want.map(|w| w.as_bytes().to_vec()),
            "{}",
            String::from_utf8_lossy(path)
        );
    }
    let long = [b'n'; 256];
    assert!(normalize(&long).is_err());
    assert!(normalize(&long[..255]).is_ok());
}

#[test]
fn long_names_via_gnu_and_pax() {
    let long_dir = "d".repeat(120);
    let gnu_path = format!("{long_dir}/{}", "g".repeat(150));
    let pax_path = format!("{long_dir}/{}", "p".repeat(200));
    let link_target = format!("{long_dir}/{}", "t".repeat(180));
    let pax_link_target = format!("/somewhere/{}", "q".repeat(190));
    let tar = Tar::new()
        // The builder writes GNU long name (`L`) and long link name (`K`) members.
        .file(&gnu_path, b"gnu")
        .symlink("gnu-link", &link_target)
        .hard_link("gnu-hard", &gnu_path)
        .pax(&[("path", pax_path.as_bytes())])
        .file("short-placeholder", b"pax")
        .pax(&[("linkpath", pax_link_target.as_bytes())])
        .raw(EntryType::Symlink, b"pax-link", b"ignored", 0o777, b"")
        .pax(&[("path", b"pax-hard"), ("linkpath", pax_path.as_bytes())])
        .raw(EntryType::Link, b"x", b"y", 0o644, b"");
    let (run, u) = unpack_ok(&tar.gz());
    assert!(u.stats.skipped.is_empty(), "{:?}", u.stats.skipped);
    assert_eq!(content(&run, &u, &gnu_path), b"gnu");
    assert_eq!(content(&run, &u, &pax_path), b"pax");
    assert!(resolve(&u.index, "short-placeholder").is_none());
    let target = |path| match &node(&u, path).kind {
        NodeKind::Symlink { target } => target.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(target("gnu-link"), link_target.as_bytes());
    assert_eq!(target("pax-link"), pax_link_target.as_bytes());
    assert_eq!(resolve(&u.index, "gnu-hard"), resolve(&u.index, &gnu_path));
    assert_eq!(resolve(&u.index, "pax-hard"), resolve(&u.index, &pax_path));
}

#[test]
fn symlinks_are_kept_byte_for_byte_and_never_created() {
    let targets: [&[u8]; 5] = [
        b"plain",
        b"../../../../etc/passwd",
        b"/etc/shadow",
        b"a/./b//c/",
        b"non-utf8-\xfe",
    ];
    let mut tar = Tar::new();
    for (i, target) in targets.iter().enumerate() {
        tar = tar.raw(
            EntryType::Symlink,
            format!("l{i}").as_bytes(),
            target,
            0o777,
            b"",
        );
    }
    let (run, u) = unpack_ok(&tar.gz());
    for (i, target) in targets.iter().enumerate() {
        let n = node(&u, &format!("l{i}"));
        assert_eq!(
            n.kind,
            NodeKind::Symlink {
                target: target.to_vec()
            }
        );
        assert_eq!((n.perm, n.nlink), (0o777, 1));
    }
    assert_eq!(u.stats.files, 0);
    run.assert_contained();
}

#[test]
fn hard_links_share_one_node() {
    let tar = Tar::new()
        .file("dir/original", b"shared")
        .hard_link("copy", "dir/original")
        .hard_link("./dir/again", "./dir//original")
        .symlink("sym", "dir")
        .hard_link("sym-hard", "sym");
    let (run, u) = unpack_ok(&tar.gz());
    let id = resolve(&u.index, "dir/original").unwrap();
    assert_eq!(resolve(&u.index, "copy"), Some(id));
    assert_eq!(resolve(&u.index, "dir/again"), Some(id));
    assert_eq!(tree(&u).nodes[id as usize].nlink, 3);
    assert_eq!(content(&run, &u, "copy"), b"shared");
    assert_eq!(u.stats.files, 1, "one blob for three names");
    assert_eq!(resolve(&u.index, "sym-hard"), resolve(&u.index, "sym"));
    assert_eq!(node(&u, "sym").nlink, 2);
}

#[test]
fn directory_entries_after_their_children() {
    let tar = Tar::new()
        .file("a/b/c", b"c")
        .dir("a/b", 0o700)
        .dir("a/", 0o750)
        .dir("./", 0o711);
    let (_run, u) = unpack_ok(&tar.gz());
    let (a, b) = (node(&u, "a"), node(&u, "a/b"));
    assert_eq!((a.perm, a.mtime_sec), (0o750, MTIME as i64));
    assert_eq!((b.perm, b.mtime_sec), (0o700, MTIME as i64));
    assert_eq!(node(&u, "").perm, 0o711);
    assert_eq!(a.nlink, 3);
    assert!(u.stats.skipped.is_empty());
}

#[test]
fn old_style_directory_with_trailing_slash() {
    let tar = Tar::new().raw(EntryType::Regular, b"olddir/", b"", 0o755, b"");
    let (_run, u) = unpack_ok(&tar.gz());
    assert!(matches!(node(&u, "olddir").kind, NodeKind::Dir { .. }));
}

/// Each case: the archive, then what the last name must be (`None`: absent).
#[test]
fn repeated_entries_last_one_wins() {
    enum Want {
        File(&'static [u8]),
        Dir,
        Symlink,
    }
    let cases: Vec<(&str, Tar, &str, Want, usize)> = vec![
        (
            "file replaced by file",
            Tar::new().file("f", b"old").file("f", b"new"),
            "f",
            Want::File(b"new"),
            0,
        ),
        (
            "file replaced by dir",
            Tar::new().file("f", b"old").dir("f", 0o755),
            "f",
            Want::Dir,
            0,
        ),
        (
            "empty dir replaced by file",
            Tar::new().dir("d", 0o755).file("d", b"new"),
            "d",
            Want::File(b"new"),
            0,
        ),
        (
            "non-empty dir not replaced by file",
            Tar::new().file("d/x", b"x").file("d", b"new"),
            "d/x",
            Want::File(b"x"),
            1,
        ),
        (
            "dir entry repeated",
            Tar::new().dir("d", 0o700).dir("d", 0o755),
            "d",
            Want::Dir,
            0,
        ),
        (
            "symlink replaced by file",
            Tar::new().symlink("s", "t").file("s", b"new"),
            "s",
            Want::File(b"new"),
            0,
        ),
        (
            "file replaced by symlink",
            Tar::new().file("s", b"old").symlink("s", "t"),
            "s",
            Want::Symlink,
            0,
        ),
        (
            "hard link to itself",
            Tar::new().file("f", b"same").hard_link("f", "f"),
            "f",
            Want::File(b"same"),
            0,
        ),
        (
            "file replaced by hard link",
            Tar::new()
                .file("a", b"a")
                .file("b", b"b")
                .hard_link("a", "b"),
            "a",
            Want::File(b"b"),
            0,
        ),
    ];
    for (what, tar, path, want, skipped) in cases {
        let (run, u) = unpack_ok(&tar.gz());
        match want {
            Want::File(data) => assert_eq!(content(&run, &u, path), data, "{what}"),
            Want::Dir => assert!(
                matches!(node(&u, path).kind, NodeKind::Dir { .. }),
                "{what}"
            ),
            Want::Symlink => {
                assert!(
                    matches!(node(&u, path).kind, NodeKind::Symlink { .. }),
                    "{what}"
                );
            }
        }
        assert_eq!(
            u.stats.skipped.len(),
            skipped,
            "{what}: {:?}",
            u.stats.skipped
        );
    }
}

#[test]
fn replaced_file_keeps_content_under_its_other_names() {
    let tar = Tar::new()
        .file("a", b"first")
        .file("middle", b"m")
        .hard_link("b", "a")
        .file("a", b"second")
        .file("a", b"third");
    let (run, u) = unpack_ok(&tar.gz());
    assert_eq!(content(&run, &u, "a"), b"third");
    assert_eq!(content(&run, &u, "b"), b"first");
    assert_eq!(content(&run, &u, "middle"), b"m");
    assert_eq!(node(&u, "a").nlink, 1);
    assert_eq!(node(&u, "b").nlink, 1);
    // "second" was written, then deleted: blob numbers are dense again (checked by `check`).
    assert_eq!(u.stats.files, 3);
    assert_eq!(u.stats.bytes, 5 + 1 + 5);
}

#[test]
fn gnu_sparse_member_is_expanded() {
    let octal = |v: u64| {
        let mut field = [0u8; 12];
        field[..11].copy_from_slice(format!("{v:011o}").as_bytes());
        field
    };
    let mut h = header(EntryType::GNUSparse, 0o644, 512);
    h.set_path("sparse").unwrap();
    let gnu = h.as_gnu_mut().unwrap();
    gnu.realsize = octal(8192);
    gnu.sparse[0].offset = octal(4096);
    gnu.sparse[0].numbytes = octal(512);
    gnu.sparse[1].offset = octal(8192);
    gnu.sparse[1].numbytes = octal(0);
    h.set_cksum();
    let tar = Tar::new().header(&h, &[b'x'; 512]).file("after", b"after");
    let (run, u) = unpack_ok(&tar.gz());
    let mut want = vec![0u8; 8192];
    want[4096..4608].fill(b'x');
    assert_eq!(content(&run, &u, "sparse"), want);
    assert_eq!(content(&run, &u, "after"), b"after");
}

#[test]
fn pax_sparse_and_global_headers() {
    let tar = Tar::new()
        .raw(
            EntryType::XGlobalHeader,
            b"pax_global_header",
            b"",
            0o644,
            &pax_record("comment", b"commit 1234"),
        )
        .pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")])
        .file("GNUSparseFile.0/sparse", b"1\n0\n512\nxx")
        .file("next", b"next");
    let (run, u) = unpack_ok(&tar.gz());
    assert_eq!(skipped_members(&u), ["GNUSparseFile.0/sparse"]);
    assert_eq!(content(&run, &u, "next"), b"next");
}

// ---------------------------------------------------------------------------------------
// Hostile archives

#[test]
fn hostile_members_are_skipped_and_nothing_escapes() {
    let long_name = "n".repeat(256);
    // (what, archive, members that must be skipped, path that must not exist)
    let cases: Vec<(&str, Tar, Vec<&str>, &str)> = vec![
        (
            "dot-dot",
            Tar::new().raw(EntryType::Regular, b"../sentinel/x", b"", 0o644, b"evil"),
            vec!["../sentinel/x"],
            "sentinel",
        ),
        (
            "dot-dot inside",
            Tar::new().raw(EntryType::Regular, b"a/../../x", b"", 0o644, b"evil"),
            vec!["a/../../x"],
            "a",
        ),
        (
            "absolute",
            Tar::new().raw(EntryType::Regular, b"/tmp/evil", b"", 0o644, b"evil"),
            vec!["/tmp/evil"],
            "tmp",
        ),
        (
            "through a symlink",
            Tar::new().symlink("evil", "/tmp").raw(
                EntryType::Regular,
                b"evil/x",
                b"",
                0o644,
                b"evil",
            ),
            vec!["evil/x"],
            "evil/x",
        ),
        (
            "through a relative symlink",
            Tar::new()
                .symlink("up", "../sentinel")
                .raw(EntryType::Regular, b"up/x", b"", 0o644, b"evil")
                .dir("up/d", 0o755)
                .symlink("up/l", "/")
                .hard_link("up/h", "up"),
            vec!["up/x", "up/d", "up/l", "up/h"],
            "up/x",
        ),
        (
            "through a regular file",
            Tar::new().file("f", b"f").file("f/x", b"evil"),
            vec!["f/x"],
            "f/x",
        ),
        (
            "hard link outside",
            Tar::new()
                .raw(EntryType::Link, b"h1", b"../sentinel/x", 0o644, b"")
                .raw(EntryType::Link, b"h2", b"/etc/passwd", 0o644, b"")
                .raw(EntryType::Link, b"h3", b"missing", 0o644, b"")
                .raw(EntryType::Link, b"h4", b"later", 0o644, b"")
                .file("later", b"later"),
            vec!["h1", "h2", "h3", "h4"],
            "h1",
        ),
        (
            "hard link to a directory or through a symlink",
            Tar::new()
                .dir("d", 0o755)
                .raw(EntryType::Link, b"h1", b"d", 0o644, b"")
                .raw(EntryType::Link, b"h2", b".", 0o644, b"")
                .symlink("s", "d")
                .file("d/f", b"f")
                .raw(EntryType::Link, b"h3", b"s/f", 0o644, b""),
            vec!["h1", "h2", "h3"],
            "h1",
        ),
        (
            "devices and fifos",
            Tar::new()
                .raw(EntryType::Char, b"null", b"", 0o666, b"")
                .raw(EntryType::Block, b"sda", b"", 0o660, b"")
                .raw(EntryType::Fifo, b"fifo", b"", 0o644, b"")
                .raw(EntryType::new(b'V'), b"volume", b"", 0o644, b""),
            vec!["null", "sda", "fifo", "volume"],
            "null",
        ),
        (
            "root replaced by a file",
            Tar::new()
                .raw(EntryType::Regular, b".", b"", 0o644, b"")
                .raw(EntryType::Symlink, b"./", b"/", 0o777, b""),
            vec![".", "./"],
            "x",
        ),
        (
            "bad symlinks",
            Tar::new()
                .raw(EntryType::Symlink, b"empty", b"", 0o777, b"")
                .pax(&[("linkpath", &[b'x'; 5000])])
                .raw(EntryType::Symlink, b"huge", b"", 0o777, b""),
            vec!["empty", "huge"],
            "empty",
        ),
        (
            "names Linux cannot hold",
            Tar::new()
                .pax(&[("path", b"a\0b")])
                .file("nul", b"x")
                .pax(&[("path", &[b'n'; 256])])
                .file("long", b"x"),
            vec!["a\u{0}b", &long_name],
            "a",
        ),
    ];
    for (what, tar, skipped, absent) in cases {
        let (_run, u) = unpack_ok(&tar.gz());
        assert_eq!(
            skipped_members(&u),
            skipped,
            "{what}: {:?}",
            u.stats.skipped
        );
        assert!(
            resolve(&u.index, absent).is_none(),
            "{what}: {absent} exists"
        );
        assert!(u.stats.skipped.iter().all(|s| !s.reason.is_empty()));
    }
}

#[test]
fn skipped_member_content_is_passed_over() {
    let big = pattern(100_000);
    let tar = Tar::new()
        .raw(EntryType::Regular, b"../x", b"", 0o644, &big)
        .raw(EntryType::Char, b"dev", b"", 0o644, &big)
        .file("after", b"after");
    let (run, u) = unpack_ok(&tar.gz());
    assert_eq!(content(&run, &u, "after"), b"after");
    assert_eq!(u.stats.skipped.len(), 2);
}

// ---------------------------------------------------------------------------------------
// Limits

#[test]
fn too_large_stops_before_the_limit() {
    let mut tar = Tar::new();
    for i in 0..10 {
        tar = tar.file(&format!("f{i}"), &pattern(300 * 1024));
    }
    let run = Run::new();
    let limit = 1024 * 1024;
    let err = run.unpack(&tar.gz()[..], limit).unwrap_err();
    match err {
        ArchiveError::TooLarge { limit: l, written } => {
            assert_eq!(l, limit);
            assert_eq!(written, 3 * 300 * 1024);
        }
        other => panic!("{other}"),
    }
    let on_disk: u64 = fs::read_dir(run.dest.join("data"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk <= limit, "{on_disk} bytes written");
    // Exactly at the limit is fine.
    let run = Run::new();
    let tar = Tar::new().file("a", &pattern(1000)).file("b", &pattern(24));
    assert!(run.unpack(&tar.gz()[..], 1024).is_ok());
}

#[test]
fn decompression_bomb_writes_nothing() {
    // A 64 MiB member of zeros: some 64 KiB compressed.
    let size = 64u64 << 20;
    let mut h = header(EntryType::Regular, 0o644, size);
    h.set_path("bomb").unwrap();
    h.set_cksum();
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(h.as_bytes()).unwrap();
    io::copy(&mut io::repeat(0).take(size + 1024), &mut enc).unwrap();
    let archive = enc.finish().unwrap();
    let run = Run::new();
    let err = run.unpack(&archive[..], 1 << 20).unwrap_err();
    assert!(
        matches!(err, ArchiveError::TooLarge { written: 0, .. }),
        "{err}"
    );
    assert_eq!(fs::read_dir(run.dest.join("data")).unwrap().count(), 0);
}

#[test]
fn oversized_metadata_is_refused() {
    let tar = Tar::new()
        .file("first", b"x")
        .pax(&[("comment", &vec![b'c'; 9 << 20])])
        .file("second", b"x");
    let err = unpack_err(&tar.gz());
    assert!(matches!(err, ArchiveError::Tar(_)), "{err}");
    assert!(err.to_string().contains("larger than 8 MiB"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Broken inputs

#[test]
fn broken_inputs() {
    let good = Tar::new().file("a", &pattern(200_000)).file("b", b"b").gz();
    let mut bad_crc = good.clone();
    let n = bad_crc.len();
    bad_crc[n - 8] ^= 0xff;
    let mut bad_header = good.clone();
    bad_header[3] = 0xff; // reserved flag bits set
    let plain_tar = Tar::new().file("a", b"a").tar();
    let mut truncated_tar = Tar::new().file("a", &pattern(5000)).tar();
    truncated_tar.truncate(2048);
    let dangling_pax = Tar::new().pax(&[("path", b"a")]).gz();
    let dangling_long_name = Tar::new()
        .raw(
            EntryType::GNULongName,
            b"././@LongLink",
            b"",
            0o644,
            b"a-long-name\0",
        )
        .gz();
    let empty_sparse = Tar::new()
        .raw(EntryType::GNUSparse, b"s", b"", 0o644, b"")
        .gz();
    type Case = (&'static str, Vec<u8>, fn(&ArchiveError) -> bool);
    let cases: Vec<Case> = vec![
        ("text", b"hello world".to_vec(), |e| {
            matches!(e, ArchiveError::NotGzip)
        }),
        ("one byte", b"x".to_vec(), |e| {
            matches!(e, ArchiveError::NotGzip)
        }),
        ("plain tar", plain_tar, |e| {
            matches!(e, ArchiveError::NotGzip)
        }),
        ("half", good[..good.len() / 2].to_vec(), |e| {
            matches!(e, ArchiveError::Truncated)
        }),
        ("no trailer", good[..good.len() - 8].to_vec(), |e| {
            matches!(e, ArchiveError::Truncated)
        }),
        ("header only", good[..10].to_vec(), |e| {
            matches!(e, ArchiveError::Truncated)
        }),
        ("magic only", good[..2].to_vec(), |e| {
            matches!(e, ArchiveError::Truncated)
        }),
        ("bad crc", bad_crc, |e| matches!(e, ArchiveError::Gzip(_))),
        ("bad gzip header", bad_header, |e| {
            matches!(e, ArchiveError::Gzip(_))
        }),
        ("gzip of text", gzip(b"hello world\n"), |e| {
            matches!(e, ArchiveError::NotTar)
        }),
        ("gzip of a page", gzip(&[b'a'; 4096]), |e| {
            matches!(e, ArchiveError::NotTar)
        }),
        ("truncated tar", gzip(&truncated_tar), |e| {
            matches!(e, ArchiveError::Tar(_))
        }),
        // A valid first header (an extension header) with nothing after it: damaged tar
        // data, not "not a tar" (found by tests/fuzz_props.rs).
        ("a pax header with no member", dangling_pax, |e| {
            matches!(e, ArchiveError::Tar(_))
        }),
        ("a GNU long name with no member", dangling_long_name, |e| {
            matches!(e, ArchiveError::Tar(_))
        }),
        ("a GNU sparse header with no map", empty_sparse, |e| {
            matches!(e, ArchiveError::Tar(_))
        }),
    ];
    for (what, archive, expected) in cases {
        let err = unpack_err(&archive);
        assert!(expected(&err), "{what}: got {err:?}");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn error_messages_say_what_happened() {
    assert_eq!(
        ArchiveError::Truncated.to_string(),
        "the archive ends early (truncated download?); try again"
    );
    let err = unpack_err(&gzip(&[b'a'; 4096]));
    assert_eq!(
        err.to_string(),
        "the archive is gzip-compressed but does not hold a tar archive"
    );
}

/// A source that gives `data`, then fails like a dropped connection.
struct FailingSource {
    data: io::Cursor<Vec<u8>>,
}

impl Read for FailingSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.data.read(buf)? {
            0 => Err(io::Error::new(io::ErrorKind::ConnectionReset, "peer reset")),
            n => Ok(n),
        }
    }
}

#[test]
fn source_errors_are_read_errors() {
    let good = Tar::new().file("a", &pattern(300_000)).gz();
    for cut in [0, 1, 10, good.len() / 2, good.len() - 1] {
        let run = Run::new();
        let source = FailingSource {
            data: io::Cursor::new(good[..cut].to_vec()),
        };
        match run.unpack(source, u64::MAX) {
            Err(ArchiveError::Read(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "cut at {cut}");
                assert_eq!(e.to_string(), "peer reset");
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

/// A source that gives one byte per read, and is interrupted in between.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    interrupt: bool,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.interrupt = !self.interrupt;
        if self.interrupt {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let Some(&b) = self.data.get(self.pos) else {
            return Ok(0);
        };
        match buf.first_mut() {
            Some(slot) => *slot = b,
            None => return Ok(0),
        }
        self.pos += 1;
        Ok(1)
    }
}

#[test]
fn slow_source_and_multi_member_gzip() {
    let first = Tar::new().file("a", &pattern(10_000)).tar();
    // `tar` ends with two zero blocks: drop them to continue into the second member.
    let second = Tar::new().file("b", &pattern(3000)).tar();
    let mut archive = gzip(&first[..first.len() - 1024]);
    archive.extend(gzip(&second));
    let run = Run::new();
    let source = Trickle {
        data: archive.clone(),
        pos: 0,
        interrupt: false,
    };
    let u = run.unpack(source, u64::MAX).unwrap();
    check(&run, &u);
    assert_eq!(content(&run, &u, "a"), pattern(10_000));
    assert_eq!(content(&run, &u, "b"), pattern(3000));
    assert_eq!(u.stats.compressed_bytes, archive.len() as u64);
}

#[test]
fn trailing_garbage_after_gzip_is_ignored() {
    let mut archive = Tar::new().file("a", b"a").gz();
    archive.extend([0u8; 1000]);
    let run = Run::new();
    let u = run.unpack(&archive[..], u64::MAX).unwrap();
    check(&run, &u);
    assert_eq!(content(&run, &u, "a"), b"a");
}

#[test]
fn missing_destination_is_a_write_error() {
    let run = Run::new();
    let opts = options(u64::MAX);
    let missing = run.dest.join("missing");
    let err = unpack(&Tar::new().gz()[..], &missing, &opts, &mut |_| {}).unwrap_err();
    match err {
        ArchiveError::Write { path, .. } => assert_eq!(path, missing.join("data")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn progress_is_reported_every_few_mib_and_at_the_end() {
    let size = 10 << 20;
    let archive = Tar::new().file("big", &pattern(size)).gz();
    let run = Run::new();
    let opts = options(u64::MAX);
    let mut calls = Vec::new();
    let u = unpack(&archive[..], &run.dest, &opts, &mut |s| {
        calls.push((s.bytes, s.compressed_bytes));
    })
    .unwrap();
    check(&run, &u);
    assert!((3..=4).contains(&calls.len()), "{calls:?}");
    assert!(calls
        .windows(2)
        .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
    assert_eq!(calls.last(), Some(&(size as u64, archive.len() as u64)));
    assert!(u.stats.disk_bytes >= size as u64);
}

// ---------------------------------------------------------------------------------------
// Robustness

/// Damaged archives (random bytes changed in the tar data, or in the gzip stream) give an
/// error or an unpack that keeps every invariant; never a panic.
#[test]
fn damaged_archives_never_panic() {
    let long = "l".repeat(150);
    let tar = Tar::new()
        .file("a/b", &pattern(3000))
        .dir("a", 0o700)
        .symlink("s", "a/b")
        .hard_link("h", "a/b")
        .file(&format!("{long}/x"), b"long")
        .pax(&[("mtime", b"1.5"), ("path", b"p/q")])
        .file("placeholder", b"pax")
        .tar();
    let gz = gzip(&tar);
    // xorshift64: deterministic, and no dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..400 {
        let damaged = if round % 2 == 0 {
            let mut t = tar.clone();
            for _ in 0..1 + random() % 8 {
                let at = (random() % t.len() as u64) as usize;
                t[at] = random() as u8;
            }
            gzip(&t)
        } else {
            let mut g = gz.clone();
            let at = (random() % g.len() as u64) as usize;
            g[at] ^= 1 << (random() % 8);
            g
        };
        let run = Run::new();
        if let Ok(u) = run.unpack(&damaged[..], u64::MAX) {
            check(&run, &u);
        }
        assert_eq!(fs::read_dir(&run.sentinel).unwrap().count(), 0);
    }
}

// ---------------------------------------------------------------------------------------
// Numbering and publishing while unpacking

/// Records what an unpack publishes, applying it to a [`Published`] as a reader would see.
#[derive(Default)]
struct Recorder {
    state: std::sync::Mutex<(Published, Vec<String>)>,
}

impl Publish for Recorder {
    fn file(&self, steps: &[Step], file: &PublishedFile) {
        let mut st = self.state.lock().unwrap();
        // Complete and closed when published: the blob has its whole content.
        assert!(fs::metadata(&file.blob).unwrap().len() >= file.offset + file.size);
        st.0.add(steps);
        let path: Vec<_> = steps
            .iter()
            .map(|s| String::from_utf8_lossy(&s.name).into_owned())
            .collect();
        st.1.push(format!("+{}", path.join("/")));
    }

    fn withdraw(&self, dir: u32, name: &[u8], gone: Option<u32>) {
        let mut st = self.state.lock().unwrap();
        st.0.withdraw(dir, name, gone);
        st.1.push(format!("-{}", String::from_utf8_lossy(name)));
    }
}

#[test]
fn node_numbers_follow_first_appearance() {
    let tar = Tar::new()
        .file("z/first", b"1")
        .file("a", b"2")
        .dir("m", 0o700)
        .file("z/first", b"replaced");
    let (run, u) = unpack_ok(&tar.gz());
    // Creation order: z (implied by z/first), z/first, a, m; the replacement keeps 2.
    assert_eq!(resolve(&u.index, "z"), Some(1));
    assert_eq!(resolve(&u.index, "z/first"), Some(2));
    assert_eq!(resolve(&u.index, "a"), Some(3));
    assert_eq!(resolve(&u.index, "m"), Some(4));
    assert_eq!(tree(&u).nodes.len(), 5);
    assert_eq!(content(&run, &u, "z/first"), b"replaced");
}

#[test]
fn a_file_replaced_by_a_hard_link_leaves_a_hole() {
    let tar = Tar::new()
        .file("a", b"a")
        .file("b", b"b")
        .hard_link("a", "b");
    let (run, u) = unpack_ok(&tar.gz());
    assert_eq!(resolve(&u.index, "a"), Some(2));
    assert_eq!(resolve(&u.index, "b"), Some(2));
    assert_eq!(content(&run, &u, "a"), b"b");
    assert!(
        matches!(&tree(&u).nodes[1].kind, NodeKind::Dir { parent: 0, entries } if entries.is_empty()),
        "node 1 is a hole: {:?}",
        tree(&u).nodes[1]
    );
}

#[test]
fn published_files_match_the_finished_index() {
    let tar = Tar::new()
        .file("d/e/one", b"one")
        .file("two", b"two")
        .symlink("link", "two")
        .file("d/three", b"3")
        .file("two", b"two again")
        .hard_link("d/three", "d/e/one");
    let run = Run::new();
    let rec = Recorder::default();
    let opts = options(u64::MAX);
    let u = unpack_published(&tar.gz()[..], &run.dest, &opts, &mut |_| {}, &rec).unwrap();
    check(&run, &u);
    let (published, events) = rec.state.into_inner().unwrap();
    assert_eq!(
        events,
        ["+d/e/one", "+two", "+d/three", "-two", "+two", "-three"],
        "each file once complete; a taken-over name withdrawn before its new content"
    );
    // Every name still published leads to the node the index has for it.
    for path in ["d", "d/e", "d/e/one", "two"] {
        let (parent, name) = match path.rsplit_once('/') {
            Some((p, n)) => (resolve(&u.index, p).unwrap(), n),
            None => (0, path),
        };
        let (node, _) = published.lookup(parent, name.as_bytes()).unwrap();
        assert_eq!(Some(node), resolve(&u.index, path), "{path}");
    }
    let two = published.lookup(0, b"two").unwrap().1;
    assert!(matches!(&two.kind, PublishedKind::File(f) if f.size == 9));
    // Not published: symlinks and hard links (they wait for the end), withdrawn names.
    assert!(published.lookup(0, b"link").is_none());
    let d = resolve(&u.index, "d").unwrap();
    assert!(published.lookup(d, b"three").is_none());
}

#[test]
fn a_directory_seen_before_its_own_member_is_shown_owner_only() {
    let tar = Tar::new()
        .file("d/f", b"f")
        .dir("d", 0o750)
        .dir("e", 0o755)
        .file("e/g", b"g");
    let run = Run::new();
    let rec = Recorder::default();
    let opts = options(u64::MAX);
    let u = unpack_published(&tar.gz()[..], &run.dest, &opts, &mut |_| {}, &rec).unwrap();
    let (published, _) = rec.state.into_inner().unwrap();
    // `d` was only implied when `d/f` was published: its final mode could be stricter.
    assert_eq!(published.lookup(0, b"d").unwrap().1.perm, 0o700);
    assert_eq!(node(&u, "d").perm, 0o750);
    // `e` had its own member first: its mode is the archive's.
    assert_eq!(published.lookup(0, b"e").unwrap().1.perm, 0o755);
}

// ---------------------------------------------------------------------------------------
// The pack

#[test]
fn small_files_are_packed_and_large_ones_have_a_file_of_their_own() {
    let max = PACK_MAX as usize;
    let sizes = [0, 1, 4095, 4096, 4097, max - 1, max, max + 1];
    let mut tar = Tar::new();
    for size in sizes {
        tar = tar.file(&format!("f{size}"), &pattern(size));
    }
    let tar = tar
        .hard_link("link-small", &format!("f{}", max - 1))
        .hard_link("link-large", &format!("f{max}"))
        .file("empty-again", b"");
    let (run, u) = unpack_ok(&tar.gz());
    for size in sizes {
        let name = format!("f{size}");
        assert_eq!(content(&run, &u, &name), pattern(size), "{name}");
        let NodeKind::File { packed, .. } = node(&u, &name).kind else {
            panic!("{name} is not a file")
        };
        // Exactly at the threshold is a file of its own.
        assert_eq!(packed.is_some(), size < max, "{name}");
    }
    // Hard links are the same node: one copy, in the pack or on its own.
    assert_eq!(
        resolve(&u.index, "link-small"),
        resolve(&u.index, &format!("f{}", max - 1))
    );
    assert_eq!(
        resolve(&u.index, "link-large"),
        resolve(&u.index, &format!("f{max}"))
    );
    let packed: usize = sizes.iter().filter(|&&s| s < max).sum();
    assert_eq!(
        fs::metadata(pack_path(&run.dest)).unwrap().len(),
        packed as u64
    );
    assert_eq!(fs::read_dir(run.dest.join("data")).unwrap().count(), 2);
    assert_eq!(content(&run, &u, "empty-again"), b"");
}

#[test]
fn packed_files_lie_back_to_back_in_archive_order() {
    let tar = Tar::new()
        .file("a", b"first")
        .file("e1", b"")
        .file("d/b", b"second")
        .file("e2", b"")
        .file("c", b"third");
    let (run, u) = unpack_ok(&tar.gz());
    let offset = |path: &str| match node(&u, path).kind {
        NodeKind::File {
            packed: Some(o), ..
        } => o,
        other => panic!("{path}: {other:?}"),
    };
    assert_eq!(
        ["a", "e1", "d/b", "e2", "c"].map(offset),
        [0, 5, 5, 11, 11],
        "each file where the previous one ends; empty files take no room"
    );
    assert_eq!(fs::read(pack_path(&run.dest)).unwrap(), b"firstsecondthird");
}

/// A name repeated many times must not grow the pack past the byte limit: the bytes of a
/// replaced packed file stay in the pack and count.
#[test]
fn replaced_packed_files_count_against_the_limit() {
    let mut tar = Tar::new();
    for i in 0..20u8 {
        tar = tar.file("same", &[i; 100]);
    }
    let gz = tar.gz();
    let run = Run::new();
    let err = run.unpack(&gz[..], 1000).unwrap_err();
    assert!(
        matches!(err, ArchiveError::TooLarge { limit: 1000, written } if written <= 1000),
        "{err}"
    );
    assert!(fs::metadata(pack_path(&run.dest)).unwrap().len() <= 1000);
    let (run, u) = unpack_ok(&gz);
    assert_eq!(content(&run, &u, "same"), [19u8; 100]);
    assert_eq!(u.stats.bytes, 100, "only the last copy is content");
}

#[test]
fn packed_files_are_published_with_their_offset_in_the_pack() {
    let tar = Tar::new()
        .file("a", b"aaa")
        .file("big", &pattern(PACK_MAX as usize))
        .file("b", b"bb");
    let run = Run::new();
    let seen = std::sync::Mutex::new(Vec::new());
    struct Offsets<'a>(&'a std::sync::Mutex<Vec<(PathBuf, u64, Vec<u8>)>>);
    impl Publish for Offsets<'_> {
        fn file(&self, _: &[Step], f: &PublishedFile) {
            // Readable at once, by another descriptor, at its offset.
            let mut data = vec![0; f.size as usize];
            let file = fs::File::open(&f.blob).unwrap();
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut data, f.offset).unwrap();
            self.0
                .lock()
                .unwrap()
                .push((f.blob.to_path_buf(), f.offset, data));
        }
        fn withdraw(&self, _: u32, _: &[u8], _: Option<u32>) {}
    }
    let opts = options(u64::MAX);
    let u = unpack_published(
        &tar.gz()[..],
        &run.dest,
        &opts,
        &mut |_| {},
        &Offsets(&seen),
    )
    .unwrap();
    check(&run, &u);
    let seen = seen.into_inner().unwrap();
    let pack = pack_path(&run.dest);
    assert_eq!(seen[0], (pack.clone(), 0, b"aaa".to_vec()));
    assert_eq!(seen[1].0, blob_path(&run.dest, 1));
    assert_eq!((seen[1].1, seen[1].2.len()), (0, PACK_MAX as usize));
    assert_eq!(seen[2], (pack, 3, b"bb".to_vec()));
}

// ---------------------------------------------------------------------------------------
// Metadata bombs

/// Unpack `archive` as announced with `file_count` files and `max_bytes` of content.
fn unpack_announced(
    archive: &[u8],
    file_count: u64,
    max_bytes: u64,
    max_index_bytes: u64,
) -> Result<Unpacked, ArchiveError> {
    let run = Run::new();
    let opts = UnpackOptions {
        max_bytes,
        file_count,
        max_index_bytes,
        implied_dir_mtime: 0,
        keep_content: true,
    };
    unpack(archive, &run.dest, &opts, &mut |_| {})
}

fn empty_files(count: usize) -> Vec<u8> {
    let mut tar = Tar::new();
    for i in 0..count {
        tar = tar.file(&format!("e{i}"), b"");
    }
    tar.gz()
}

/// Members are capped at `2 * file_count + 1024`: an archive of far more empty members
/// than its announced files is refused, naming both; the same archive as announced passes.
#[test]
fn members_past_the_announced_count_are_refused() {
    let archive = empty_files(3000);
    let err = unpack_announced(&archive, 10, 0, u64::MAX).unwrap_err();
    assert!(
        matches!(
            err,
            ArchiveError::TooManyMembers {
                limit: 1044,
                file_count: 10
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("more than 1044 members") && text.contains("10 files"),
        "{text}"
    );
    let u = unpack_announced(&archive, 3000, 0, u64::MAX).unwrap();
    assert_eq!(u.index.len(), 3001);
    // No count announced: one member per 4 KiB of the byte limit, at least 1024.
    let err = unpack_announced(&archive, 0, 1 << 20, u64::MAX).unwrap_err();
    assert!(
        matches!(err, ArchiveError::TooManyMembers { limit: 1024, .. }),
        "{err:?}"
    );
    assert!(unpack_announced(&archive, 0, 4096 * 3001, u64::MAX).is_ok());
}

/// The directories a path implies are nodes and count as members do.
#[test]
fn implied_directories_count_against_the_member_cap() {
    let deep = vec!["d"; 1100].join("/") + "/f";
    let archive = Tar::new().file(&deep, b"x").gz();
    let err = unpack_announced(&archive, 1, 1, u64::MAX).unwrap_err();
    assert!(
        matches!(err, ArchiveError::TooManyMembers { limit: 1026, .. }),
        "{err:?}"
    );
    assert!(unpack_announced(&archive, 100, 1, u64::MAX).is_ok());
}

/// Headers and names count against the version's limit: members with large pax records
/// stop at content + 2 KiB a member (+ 9 MiB), long before memory or time run out.
#[test]
fn header_bytes_past_the_limit_are_a_metadata_bomb() {
    let comment = vec![b'c'; 100 * 1024];
    let mut tar = Tar::new();
    for i in 0..200 {
        tar = tar
            .pax(&[("comment", &comment)])
            .file(&format!("f{i}"), b"x");
    }
    let archive = tar.gz();
    let err = unpack_announced(&archive, 200, 200, u64::MAX).unwrap_err();
    assert!(
        matches!(err, ArchiveError::MetadataTooLarge { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(
            "200 B of content and 2 KiB of headers and names for each of at most 1424 members"
        ),
        "{err}"
    );
    // The same records under a larger announced content size pass.
    assert!(unpack_announced(&archive, 200, 40 << 20, u64::MAX).is_ok());
}

/// An index larger than the room reserved for it is refused before it is written.
#[test]
fn an_index_past_its_room_is_refused() {
    let archive = empty_files(100);
    let err = unpack_announced(&archive, 100, 0, 4096).unwrap_err();
    match err {
        ArchiveError::IndexTooLarge { bytes, limit: 4096 } => {
            // Names `e0` to `e99`.
            assert_eq!(bytes, 64 + 101 * 40 + 100 * 16 + (10 * 2 + 90 * 3));
        }
        other => panic!("{other:?}"),
    }
    assert!(unpack_announced(&archive, 100, 0, 6000).is_ok());
}

/// Skipped members: the first few listed and logged, all counted.
#[test]
fn skipped_members_are_counted_past_the_first_few() {
    let mut tar = Tar::new();
    for i in 0..50 {
        tar = tar.raw(
            EntryType::Fifo,
            format!("fifo{i}").as_bytes(),
            b"",
            0o644,
            b"",
        );
    }
    let (_run, u) = unpack_ok(&tar.file("kept", b"k").gz());
    assert_eq!(u.stats.skipped_count, 50);
    assert_eq!(u.stats.skipped.len(), SKIPPED_KEPT);
    assert_eq!(u.stats.skipped[0].member, "fifo0");
}

/// An unpack holds no checkpoint window (32 KiB per 4 MiB of archive): each is handed to
/// the publisher and dropped, so a pass over an archive of any size holds none of them.
#[test]
fn an_unpack_holds_no_checkpoint_window() {
    // Content that does not compress: several checkpoints of the default spacing.
    let mut rng = fastrand::Rng::with_seed(3);
    let noise: Vec<u8> = (0..14 << 20).map(|_| rng.u8(..)).collect();
    let archive = Tar::new().file("noise.bin", &noise).gz();
    let (run, u) = unpack_ok(&archive);
    check(&run, &u);
    let seek = u.seek.as_ref().expect("a seek index");
    assert!(seek.points.len() >= 2, "{} checkpoints", seek.points.len());
    assert!(
        seek.points.iter().all(|p| p.window.is_empty()),
        "windows held by the unpack"
    );
}

/// Where the unpack of many tiny files spends its time (not a pass/fail test): inflate
/// alone, the unpack without a published state and with the one a download keeps for
/// readers (`cache::Flight`), the check of the index it wrote, and that published state on
/// its own. Run it in release:
/// `cargo test --release --lib unpack_benchmark -- --ignored --nocapture`.
/// The destination is the temporary directory (`TMPDIR=/dev/shm` for memory).
#[test]
#[ignore = "a benchmark: run by hand in release"]
fn unpack_benchmark() {
    use std::sync::Mutex;
    use std::time::Instant;

    struct Keeps(Mutex<Published>);
    impl Publish for Keeps {
        fn file(&self, steps: &[Step], _: &PublishedFile) {
            self.0.lock().unwrap().add(steps);
        }
        fn withdraw(&self, dir: u32, name: &[u8], gone: Option<u32>) {
            self.0.lock().unwrap().withdraw(dir, name, gone);
        }
    }
    struct Record(Mutex<Vec<Vec<Step>>>);
    impl Publish for Record {
        fn file(&self, steps: &[Step], _: &PublishedFile) {
            self.0.lock().unwrap().push(steps.to_vec());
        }
        fn withdraw(&self, _: u32, _: &[u8], _: Option<u32>) {}
    }
    fn times(label: &str, mut f: impl FnMut()) {
        let mut ms: Vec<f64> = (0..7)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        println!(
            "{label}: median {:.1} ms, {:.1} - {:.1}",
            ms[3], ms[0], ms[6]
        );
    }

    // An archive named by VM0FS_UNPACK_ARCHIVE (`target/bench/data-full/artifacts/tiny-00/
    // v1.tar.gz` is the bench's), else one like the bench's tiny-file versions: 50,000 files
    // of about 15 bytes, 100 per directory, compressed as `tar -czf` does.
    let gz = match std::env::var_os("VM0FS_UNPACK_ARCHIVE").filter(|p| !p.is_empty()) {
        Some(path) => fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}")),
        None => tiny_files_archive(),
    };
    println!("{} KB gzip", gz.len() / 1000);
    times("inflate alone", || {
        let mut out = io::sink();
        io::copy(&mut flate2::read::GzDecoder::new(&gz[..]), &mut out).unwrap();
    });
    let opts = options(u64::MAX);
    times("unpack, nothing published", || {
        let run = Run::new();
        unpack_published(&gz[..], &run.dest, &opts, &mut |_| {}, &()).unwrap();
    });
    let run = Run::new();
    unpack_published(&gz[..], &run.dest, &opts, &mut |_| {}, &()).unwrap();
    let image = fs::read(index_path(&run.dest)).unwrap();
    times("index checked", || {
        Index::from_bytes(image.clone()).unwrap();
    });
    times("unpack, published as a download keeps it", || {
        let run = Run::new();
        let keeps = Keeps(Mutex::new(Published::default()));
        unpack_published(&gz[..], &run.dest, &opts, &mut |_| {}, &keeps).unwrap();
    });
    // The published state on its own: what the unpack published, added again.
    let record = Record(Mutex::new(Vec::new()));
    unpack_published(&gz[..], &Run::new().dest, &opts, &mut |_| {}, &record).unwrap();
    let files = record.0.into_inner().unwrap();
    times("the published state alone", || {
        let mut published = Published::default();
        for steps in &files {
            published.add(steps);
        }
    });
}

/// 50,000 files of about 15 bytes, 100 per directory, at gzip's default level.
fn tiny_files_archive() -> Vec<u8> {
    let mut tar = Tar::new();
    for i in 0..50_000 {
        let line = format!("line {i} of tiny\n");
        tar = tar.file(&format!("d{:04}/f{i:06}.txt", i / 100), line.as_bytes());
    }
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(&tar.tar()).unwrap();
    enc.finish().unwrap()
}
