//! Property tests (proptest, stable toolchain) of the two parsers that read what a server
//! sends: the archive reader and the API client's JSON decoding.
//!
//! - The archive reader gets arbitrary bytes, arbitrary bytes behind a gzip header, and
//!   generated archives (hostile names, every member type, pax and GNU headers) mutated by
//!   flipped, changed, inserted, deleted and truncated bytes, in the tar data or in the gzip
//!   stream. It must never panic; an error must be one that blames the data (never the
//!   source or the disk, which are fine here); a success must satisfy every invariant of
//!   the index that the cache and the filesystem rely on, and write nothing but `data/<n>`.
//! - The API client's decoding is not public (`api::wire` is private), so it is driven
//!   end to end: a loopback server answers every request with the generated status, headers
//!   and body (arbitrary bytes, JSON-shaped values with the contract's field names, and
//!   mutations of valid answers). Every public call must return, never panic, never loop,
//!   and never put the token into an error message.
//!
//! 256 cases per property keep this fast in CI; the `fuzz/` directory has the same targets
//! for cargo-fuzz.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;
use proptest::prelude::*;
use tar::{EntryType, Header};

use vm0_emulator::pack::pax_record;
use vm0fs::api::{ApiError, Client, ClientConfig, Kind, RetryPolicy, Token};
use vm0fs::archive::{
    blob_path, pack_path, unpack, ArchiveError, Index, Node, NodeKind, UnpackOptions, Unpacked,
    PACK_MAX,
};

/// 256 cases per property, or `PROPTEST_CASES` for a longer run.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// =======================================================================================
// The archive reader

/// One member of a generated archive.
#[derive(Debug, Clone)]
enum Member {
    File {
        name: Vec<u8>,
        mode: u32,
        data: Vec<u8>,
    },
    Dir {
        name: Vec<u8>,
        mode: u32,
    },
    Symlink {
        name: Vec<u8>,
        target: Vec<u8>,
    },
    HardLink {
        name: Vec<u8>,
        target: Vec<u8>,
    },
    /// A pax header (`x`, or `g` when global) for the next member.
    Pax {
        global: bool,
        records: Vec<(String, Vec<u8>)>,
    },
    /// Any other type byte (devices, FIFOs, GNU extensions, garbage).
    Other {
        kind: u8,
        name: Vec<u8>,
        data: Vec<u8>,
    },
}

fn component() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "c", "dir", "data", "0", "index.bin", "é"]).prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::sample::select(vec!["..", ".", ""]).prop_map(|s| s.as_bytes().to_vec()),
        1 => (1usize..300).prop_map(|n| vec![b'n'; n]),
        1 => prop::collection::vec(any::<u8>(), 1..6),
    ]
}

fn path() -> impl Strategy<Value = Vec<u8>> {
    (prop::collection::vec(component(), 1..4), 0u8..8).prop_map(|(comps, shape)| {
        let mut p = comps.join(&b'/');
        match shape {
            0 => p.insert(0, b'/'),
            1 => p.push(b'/'),
            2 => p.splice(0..0, b"./".iter().copied()).for_each(drop),
            _ => {}
        }
        p
    })
}

fn member() -> impl Strategy<Value = Member> {
    let data = prop::collection::vec(any::<u8>(), 0..2000);
    let mode = prop::sample::select(vec![0o644u32, 0o755, 0o4755, 0o2777, 0o7777, 0o000, 0o1777]);
    let pax_key = prop::sample::select(vec![
        "path",
        "linkpath",
        "mtime",
        "size",
        "uid",
        "comment",
        "GNU.sparse.map",
        "GNU.sparse.size",
    ]);
    let pax_value = prop_oneof![
        path(),
        prop::sample::select(vec![
            "1700000000.5",
            "-1.25",
            "x",
            "",
            "99999999999999999999",
            "1e9"
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..20),
    ];
    prop_oneof![
        6 => (path(), mode.clone(), data.clone()).prop_map(|(name, mode, data)| Member::File { name, mode, data }),
        2 => (path(), mode).prop_map(|(name, mode)| Member::Dir { name, mode }),
        2 => (path(), path()).prop_map(|(name, target)| Member::Symlink { name, target }),
        2 => (path(), path()).prop_map(|(name, target)| Member::HardLink { name, target }),
        2 => (any::<bool>(), prop::collection::vec((pax_key, pax_value), 1..4))
            .prop_map(|(global, recs)| Member::Pax { global, records: recs.into_iter().map(|(k, v)| (k.to_string(), v)).collect() }),
        1 => (prop::sample::select(b"34567LKSVMDNs\0Z".to_vec()), path(), prop::collection::vec(any::<u8>(), 0..600))
            .prop_map(|(kind, name, data)| Member::Other { kind, name, data }),
    ]
}

/// Append one header (with raw name and link bytes; GNU `L`/`K` headers first when they are
/// longer than the header's fields) and its data.
fn append(tar: &mut Vec<u8>, kind: EntryType, name: &[u8], link: &[u8], mode: u32, data: &[u8]) {
    for (long, value) in [
        (EntryType::GNULongName, name),
        (EntryType::GNULongLink, link),
    ] {
        if value.len() > 100 {
            let mut body = value.to_vec();
            body.push(0);
            append(tar, long, b"././@LongLink", b"", 0o644, &body);
        }
    }
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(data.len() as u64);
    h.set_mtime(1_700_000_000);
    let old = h.as_old_mut();
    old.name[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    old.linkname[..link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
    h.set_cksum();
    tar.extend_from_slice(h.as_bytes());
    tar.extend_from_slice(data);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
}

fn build_tar(members: &[Member]) -> Vec<u8> {
    let mut tar = Vec::new();
    for m in members {
        match m {
            Member::File { name, mode, data } => {
                append(&mut tar, EntryType::Regular, name, b"", *mode, data);
            }
            Member::Dir { name, mode } => {
                append(&mut tar, EntryType::Directory, name, b"", *mode, b"");
            }
            Member::Symlink { name, target } => {
                append(&mut tar, EntryType::Symlink, name, target, 0o777, b"");
            }
            Member::HardLink { name, target } => {
                append(&mut tar, EntryType::Link, name, target, 0o644, b"");
            }
            Member::Pax { global, records } => {
                let body: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
                let kind = if *global {
                    EntryType::XGlobalHeader
                } else {
                    EntryType::XHeader
                };
                append(&mut tar, kind, b"PaxHeaders/x", b"", 0o644, &body);
            }
            Member::Other { kind, name, data } => {
                append(&mut tar, EntryType::new(*kind), name, b"", 0o644, data);
            }
        }
    }
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

/// Whether an archive has none of the extension headers that can break the tar structure
/// itself (local pax headers, GNU long names and sparse members written as "other" types).
fn is_clean(members: &[Member]) -> bool {
    members.iter().all(|m| match m {
        Member::Pax { global, .. } => *global,
        Member::Other { kind, .. } => !b"LKSx".contains(kind),
        _ => true,
    })
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        3 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..64)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (any::<usize>(), 1usize..600).prop_map(|(at, len)| Mutation::Delete { at, len }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations {
        if bytes.is_empty() {
            return;
        }
        let len = bytes.len();
        match m {
            Mutation::Flip { at, bit } => bytes[at % len] ^= 1 << bit,
            Mutation::Set { at, byte } => bytes[at % len] = *byte,
            Mutation::Insert { at, bytes: b } => {
                let at = at % (len + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::Delete { at, len: n } => {
                let at = at % len;
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::Truncate { at } => bytes.truncate(at % len),
        }
    }
}

/// Unpack `input` into a fresh directory next to a sentinel; check what must hold whatever
/// the input: no panic (the caller), nothing outside `dest`, a typed error that blames the
/// data, or a result with every invariant.
fn unpack_checked(input: &[u8], max_bytes: u64) -> Result<Unpacked, String> {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");
    let sentinel = tmp.path().join("sentinel");
    std::fs::create_dir(&dest).unwrap();
    std::fs::create_dir(&sentinel).unwrap();
    let opts = UnpackOptions {
        max_bytes,
        file_count: 0,
        max_index_bytes: u64::MAX,
        implied_dir_mtime: 1_234_567,
        keep_content: true,
    };
    let result = unpack(input, &dest, &opts, &mut |_| {});
    // Nothing but `dest/data/<n>` regular files, whatever happened.
    assert_eq!(
        std::fs::read_dir(&sentinel).unwrap().count(),
        0,
        "the sentinel was written"
    );
    let top: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(top.len(), 2, "new entries next to dest: {top:?}");
    for e in std::fs::read_dir(&dest).unwrap() {
        let name = e.unwrap().file_name();
        assert!(
            name == "data" || name == "pack" || name == "index.bin" || name == "checks.bin",
            "a name other than data/, pack, index.bin and checks.bin in dest: {name:?}"
        );
    }
    let mut on_disk = 0u64;
    on_disk += std::fs::metadata(pack_path(&dest)).map_or(0, |m| m.len());
    for e in std::fs::read_dir(dest.join("data")).unwrap() {
        let e = e.unwrap();
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        assert!(meta.is_file(), "{:?} is not a regular file", e.path());
        let name = e.file_name().into_string().unwrap();
        assert!(name.parse::<u32>().is_ok(), "blob name {name}");
        on_disk += meta.len();
    }
    match result {
        Ok(u) => {
            check_index(&dest, &u);
            assert!(
                u.stats.bytes <= max_bytes,
                "{} bytes written, limit {max_bytes}",
                u.stats.bytes
            );
            Ok(u)
        }
        Err(e) => {
            assert!(
                on_disk <= max_bytes,
                "{on_disk} bytes on disk after an error, limit {max_bytes}"
            );
            match &e {
                // The source is a slice and the disk is fine: these would misplace the blame.
                ArchiveError::Read(_) | ArchiveError::Write { .. } => {
                    panic!("wrong kind of error: {e}")
                }
                ArchiveError::Index(_) => panic!("the unpacker built an inconsistent tree: {e}"),
                ArchiveError::TooLarge { limit, written } => {
                    assert_eq!(*limit, max_bytes);
                    assert!(*written <= *limit);
                }
                ArchiveError::NotGzip
                | ArchiveError::Truncated
                | ArchiveError::Gzip(_)
                | ArchiveError::NotTar
                | ArchiveError::Tar(_)
                | ArchiveError::TooManyMembers { .. }
                | ArchiveError::MetadataTooLarge { .. }
                | ArchiveError::IndexTooLarge { .. } => {}
            }
            assert!(!e.to_string().is_empty());
            Err(e.to_string())
        }
    }
}

/// The content of a file node: in the pack, or in a file of its own.
fn read_node(dest: &Path, node: &Node) -> Vec<u8> {
    match &node.kind {
        NodeKind::File {
            size,
            packed: Some(offset),
            ..
        } => {
            let pack = std::fs::read(pack_path(dest)).unwrap();
            pack[*offset as usize..(offset + size) as usize].to_vec()
        }
        NodeKind::File { blob, .. } => std::fs::read(blob_path(dest, *blob)).unwrap(),
        other => panic!("not a file: {other:?}"),
    }
}

/// The invariants of an index that the cache and the filesystem rely on.
fn check_index(dest: &Path, u: &Unpacked) {
    let tree = u.index.tree().unwrap();
    let nodes = &tree.nodes;
    let pack_len = std::fs::metadata(pack_path(dest)).unwrap().len();
    let mut own = 0;
    assert!(!nodes.is_empty());
    assert!(
        matches!(nodes[0].kind, NodeKind::Dir { parent: 0, .. }),
        "node 0 is not the root"
    );
    let mut names = vec![0u32; nodes.len()];
    let mut blobs = HashSet::new();
    let (mut files, mut bytes) = (0usize, 0u64);
    for (id, node) in nodes.iter().enumerate() {
        assert_eq!(node.perm & 0o6000, 0, "setuid/setgid kept on node {id}");
        assert!(node.mtime_nsec < 1_000_000_000);
        match &node.kind {
            NodeKind::Dir { entries, .. } => {
                let mut subdirs = 0;
                for pair in entries.windows(2) {
                    assert!(
                        pair[0].name < pair[1].name,
                        "entries of {id} not sorted and unique"
                    );
                }
                for e in entries {
                    assert!(
                        !e.name.is_empty() && e.name != b"." && e.name != b"..",
                        "bad name {:?}",
                        e.name
                    );
                    assert!(!e.name.contains(&b'/') && !e.name.contains(&0) && e.name.len() <= 255);
                    assert!(
                        (e.node as usize) < nodes.len() && e.node != 0,
                        "entry to node {}",
                        e.node
                    );
                    names[e.node as usize] += 1;
                    if let NodeKind::Dir { parent, .. } = &nodes[e.node as usize].kind {
                        assert_eq!(*parent as usize, id, "parent of {}", e.node);
                        subdirs += 1;
                    }
                    assert_eq!(
                        u.index.lookup(id as u32, &e.name).unwrap(),
                        Some(e.node),
                        "lookup in {id}"
                    );
                }
                assert_eq!(node.nlink, 2 + subdirs, "nlink of directory {id}");
            }
            NodeKind::File { size, blob, packed } => {
                files += 1;
                assert!(blobs.insert(*blob), "blob {blob} shared by two nodes");
                bytes += size;
                assert_eq!(packed.is_some(), *size < PACK_MAX, "packed iff small: {id}");
                match packed {
                    Some(offset) => assert!(offset + size <= pack_len, "pack range of {id}"),
                    None => {
                        own += 1;
                        let meta = std::fs::metadata(blob_path(dest, *blob)).unwrap();
                        assert_eq!(meta.len(), *size, "size of blob {blob}");
                    }
                }
            }
            NodeKind::Symlink { target } => {
                assert!(!target.is_empty() && !target.contains(&0) && target.len() <= 4095);
            }
        }
    }
    for (id, node) in nodes.iter().enumerate().skip(1) {
        assert!(names[id] >= 1, "node {id} is unreachable");
        match node.kind {
            NodeKind::Dir { .. } => assert_eq!(names[id], 1, "directory {id} has several names"),
            _ => assert_eq!(node.nlink, names[id], "nlink of {id}"),
        }
    }
    assert_eq!(
        blobs,
        (0..files as u32).collect::<HashSet<_>>(),
        "blob numbers are not dense"
    );
    assert_eq!(
        std::fs::read_dir(dest.join("data")).unwrap().count(),
        own,
        "blobs on disk"
    );
    assert_eq!(
        (u.stats.files, u.stats.bytes),
        (files as u64, bytes),
        "stats"
    );
    // The index survives its own serialization (into a file of its own: tests run side by
    // side, and a path shared between them would be one's to delete under another).
    let copy = tempfile::NamedTempFile::new().unwrap();
    u.index.save(copy.path()).unwrap();
    assert_eq!(
        Index::open(copy.path()).unwrap().as_bytes(),
        u.index.as_bytes()
    );
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = unpack_checked(&bytes, u64::MAX);
    }

    #[test]
    fn arbitrary_bytes_behind_a_gzip_header_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let mut input = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        input.extend(bytes);
        let _ = unpack_checked(&input, u64::MAX);
    }

    #[test]
    fn arbitrary_bytes_gzipped_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..8192)) {
        let _ = unpack_checked(&gzip(&bytes), u64::MAX);
    }

    #[test]
    fn generated_archives_keep_every_invariant(members in prop::collection::vec(member(), 0..12)) {
        let tar = build_tar(&members);
        match unpack_checked(&gzip(&tar), u64::MAX) {
            Ok(_) => {}
            // Extension headers can make the tar data itself invalid: a local pax header or
            // a GNU long name with no member after it, two of them for one member, a pax
            // `size` that misplaces the next header, a sparse map that does not fit.
            Err(e) if !is_clean(&members) => prop_assert!(e.starts_with("the archive's tar data is damaged"), "{}", e),
            // Without them the archive is well-formed: hostile members are skipped, not fatal.
            Err(e) => prop_assert!(false, "a well-formed archive failed: {}", e),
        }
    }

    #[test]
    fn mutated_archives_never_panic(
        members in prop::collection::vec(member(), 1..10),
        mutations in prop::collection::vec(mutation(), 1..6),
        in_gzip in any::<bool>(),
    ) {
        let mut tar = build_tar(&members);
        let input = if in_gzip {
            let mut gz = gzip(&tar);
            mutate(&mut gz, &mutations);
            gz
        } else {
            mutate(&mut tar, &mutations);
            gzip(&tar)
        };
        let _ = unpack_checked(&input, u64::MAX);
    }

    #[test]
    fn the_byte_limit_holds(members in prop::collection::vec(member(), 1..10), max_bytes in 0u64..12_000) {
        let _ = unpack_checked(&gzip(&build_tar(&members)), max_bytes);
    }

    /// Benign archives (unique relative file paths, no path both a file and a directory)
    /// unpack to exactly their files, in any member order, with or without directory
    /// entries.
    #[test]
    fn benign_archives_unpack_to_exactly_their_files(
        files in prop::collection::btree_map(
            prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "d"]), 1..4).prop_map(|c| c.join("/")),
            prop::collection::vec(any::<u8>(), 0..3000),
            0..12,
        ),
        with_dirs in any::<bool>(),
        reverse in any::<bool>(),
    ) {
        // Drop paths that are directories of other paths.
        let files: BTreeMap<String, Vec<u8>> = files
            .iter()
            .filter(|(p, _)| !files.keys().any(|q| q.starts_with(&format!("{p}/"))))
            .map(|(p, d)| (p.clone(), d.clone()))
            .collect();
        let mut members: Vec<Member> = files
            .iter()
            .map(|(p, d)| Member::File { name: p.as_bytes().to_vec(), mode: 0o640, data: d.clone() })
            .collect();
        if with_dirs {
            for p in files.keys() {
                if let Some((dir, _)) = p.rsplit_once('/') {
                    members.push(Member::Dir { name: format!("{dir}/").into_bytes(), mode: 0o750 });
                }
            }
        }
        if reverse {
            members.reverse();
        }
        let tmp = tempfile::tempdir().unwrap();
        let opts = UnpackOptions {
            max_bytes: u64::MAX,
            file_count: 0,
            max_index_bytes: u64::MAX,
            implied_dir_mtime: 0,
            keep_content: true,
        };
        let u = unpack(&gzip(&build_tar(&members))[..], tmp.path(), &opts, &mut |_| {}).unwrap();
        check_index(tmp.path(), &u);
        prop_assert!(u.stats.skipped.is_empty(), "{:?}", u.stats.skipped);
        let tree = u.index.tree().unwrap();
        let mut found = BTreeMap::new();
        let mut stack = vec![(0u32, String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let NodeKind::Dir { entries, .. } = &tree.nodes[dir as usize].kind else { unreachable!() };
            for e in entries {
                let path = format!("{prefix}{}", String::from_utf8(e.name.clone()).unwrap());
                let node = &tree.nodes[e.node as usize];
                match &node.kind {
                    NodeKind::Dir { .. } => stack.push((e.node, format!("{path}/"))),
                    NodeKind::File { .. } => {
                        prop_assert_eq!(node.perm, 0o640);
                        found.insert(path, read_node(tmp.path(), node));
                    }
                    NodeKind::Symlink { .. } => prop_assert!(false, "a symlink appeared"),
                }
            }
        }
        prop_assert_eq!(found, files);
    }
}

// =======================================================================================
// The API client's decoding

const TOKEN: &str = "vm0_test_fuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzz";

/// What the loopback server answers to every request.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A loopback HTTP server answering every request under `/store/` with the current store
/// [`Answer`] and every other request with the current API answer (`Connection: close`,
/// one thread per connection).
struct Server {
    url: String,
    answer: Arc<Mutex<Answer>>,
    store: Arc<Mutex<Answer>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let empty = Answer {
            status: 200,
            headers: vec![],
            body: vec![],
        };
        let answer = Arc::new(Mutex::new(empty.clone()));
        let store = Arc::new(Mutex::new(empty));
        let (api_shared, store_shared) = (answer.clone(), store.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (api, store) = (api_shared.clone(), store_shared.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut first = String::new();
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) if first.is_empty() => first = line,
                            Ok(_) => {}
                        }
                    }
                    let to_store = first
                        .split(' ')
                        .nth(1)
                        .is_some_and(|t| t.starts_with("/store/"));
                    let answer = if to_store {
                        store.lock().unwrap().clone()
                    } else {
                        api.lock().unwrap().clone()
                    };
                    let mut out = conn;
                    let mut head = format!(
                        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                        answer.status,
                        answer.body.len()
                    );
                    for (k, v) in &answer.headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str("\r\n");
                    let _ = out.write_all(head.as_bytes());
                    let _ = out.write_all(&answer.body);
                });
            }
        });
        Server { url, answer, store }
    }

    fn answer(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }

    fn store_answer(&self, a: Answer) {
        *self.store.lock().unwrap() = a;
    }

    fn client(&self) -> Client {
        Client::new(ClientConfig {
            base_url: format!("{}/v1", self.url),
            token: Token::new(TOKEN),
            // One attempt: a 5xx or 429 is reported at once instead of slept on.
            retry: RetryPolicy {
                max_attempts: 1,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(1),
                max_elapsed: Duration::from_secs(1),
            },
            io_timeout: Duration::from_secs(10),
            url_setting: "VM0_API_URL",
        })
        .unwrap()
    }
}

/// A JSON value built from the contract's vocabulary, in both shapes, with values of any
/// JSON type: what a server that changed its mind, or a broken proxy, might send.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let key = prop::sample::select(vec![
        "data",
        "pagination",
        "has_more",
        "hasMore",
        "next_cursor",
        "nextCursor",
        "id",
        "name",
        "current_version_id",
        "currentVersionId",
        "current_version",
        "currentVersion",
        "size",
        "file_count",
        "fileCount",
        "created_at",
        "createdAt",
        "updated_at",
        "updatedAt",
        "volume_id",
        "artifact_id",
        "storageId",
        "message",
        "created_by",
        "error",
        "type",
        "code",
        "param",
        "doc_url",
        "x",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![
            "2026-01-20T10:00:00.000Z",
            "2026-13-45T99:99:99Z",
            "",
            "latest",
            "cursor-1",
            "9b2d000000000000000000000000000000000000000000000000000000000000",
            "é\u{0}\u{202e}",
        ])
        .prop_map(|s| Value::String(s.to_string())),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..8).prop_map(|kv| Value::Object(
                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}

/// Valid answers of the contract, to be mutated.
fn valid_bodies() -> Vec<String> {
    let t = "2026-01-20T10:00:00.000Z";
    let v = "9b2d000000000000000000000000000000000000000000000000000000000000";
    vec![
        format!(r#"{{"data":[{{"id":"s1","name":"input-data","current_version_id":"{v}","size":4096,"file_count":2,"created_at":"{t}","updated_at":"{t}"}}],"pagination":{{"has_more":false,"next_cursor":null}}}}"#),
        format!(r#"{{"data":[{{"id":"{v}","volume_id":"s1","size":4096,"file_count":2,"message":null,"created_by":"user","created_at":"{t}"}}],"pagination":{{"hasMore":true,"nextCursor":"c2"}}}}"#),
        format!(r#"{{"id":"s1","name":"n","currentVersionId":"{v}","currentVersion":{{"id":"{v}","artifactId":"s1","createdAt":"{t}"}}}}"#),
        r#"{"error":{"type":"not_found_error","code":"resource_not_found","message":"Volume 'x' not found","param":"id"}}"#.to_string(),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..400),
        4 => json_value().prop_map(|v| v.to_string().into_bytes()),
        3 => (prop::sample::select(valid_bodies()), prop::collection::vec(mutation(), 0..4)).prop_map(|(b, m)| {
            let mut b = b.into_bytes();
            mutate(&mut b, &m);
            b
        }),
        // The token echoed back by the server.
        1 => any::<String>().prop_map(|s| format!("{s} {TOKEN} {s}").into_bytes()),
    ]
}

fn answer() -> impl Strategy<Value = Answer> {
    let status = prop::sample::select(vec![
        200u16, 200, 200, 201, 204, 302, 400, 401, 403, 404, 409, 429, 500, 503,
    ]);
    let header = prop_oneof![
        any::<u32>().prop_map(|n| ("Retry-After".to_string(), n.to_string())),
        prop::sample::select(vec![
            "-1",
            "1e400",
            "NaN",
            "0.5",
            "Wed, 21 Oct 2015 07:28:00 GMT"
        ])
        .prop_map(|v| ("Retry-After".to_string(), v.to_string())),
        prop::sample::select(vec!["req_0123", "", "x y"])
            .prop_map(|v| ("X-Request-Id".to_string(), v.to_string())),
        prop::sample::select(vec![
            "/v1/store/a.tar.gz",
            "http://127.0.0.1:9/x",
            "::::",
            "",
            "//evil"
        ])
        .prop_map(|v| ("Location".to_string(), v.to_string())),
        Just(("Content-Type".to_string(), "application/json".to_string())),
    ];
    (status, prop::collection::vec(header, 0..3), body()).prop_map(|(status, headers, body)| {
        Answer {
            status,
            headers,
            body,
        }
    })
}

/// The checks on every error: a message that names something and never holds the token.
fn check_error(e: &ApiError) {
    let text = e.to_string();
    assert!(!text.is_empty());
    assert!(
        !text.contains(TOKEN),
        "the token is in an error message: {text}"
    );
    assert!(
        !format!("{e:?}").contains(TOKEN),
        "the token is in an error's Debug: {e:?}"
    );
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn api_answers_never_panic_or_loop_and_errors_never_hold_the_token(a in answer()) {
        let server = Server::start();
        server.answer(a);
        let client = server.client();
        match client.list_storages(Kind::Volume) {
            Ok(list) => {
                let ids: HashSet<_> = list.iter().map(|s| &s.id).collect();
                prop_assert_eq!(ids.len(), list.len(), "duplicate ids");
            }
            Err(e) => check_error(&e),
        }
        match client.list_versions(Kind::Artifact, &"s1".into()) {
            Ok(list) => {
                let ids: HashSet<_> = list.iter().map(|v| &v.id).collect();
                prop_assert_eq!(ids.len(), list.len(), "duplicate ids");
                prop_assert!(list.windows(2).all(|w| w[0].created_at >= w[1].created_at), "not newest first");
            }
            Err(e) => check_error(&e),
        }
        if let Err(e) = client.get_storage(Kind::Volume, &"s1".into()) {
            check_error(&e);
        }
        // A download whose API answer is the same (a redirect only by chance).
        download(&client)?;
    }

    #[test]
    fn store_answers_never_panic_and_errors_never_hold_the_token(a in answer(), range in any::<bool>()) {
        let server = Server::start();
        server.answer(Answer {
            status: 302,
            headers: vec![("Location".into(), format!("{}/store/archive.tar.gz?X-Amz-Signature=s", server.url))],
            body: vec![],
        });
        let mut a = a;
        if range {
            a.headers.push(("Content-Range".into(), format!("bytes 0-{}/{}", a.body.len().saturating_sub(1), a.body.len())));
            a.headers.push(("ETag".into(), "\"e\"".into()));
        }
        server.store_answer(a);
        download(&server.client())?;
    }
}

/// Download and read to the end; any error must be typed and free of the token.
fn download(client: &Client) -> Result<(), TestCaseError> {
    match client.download(Kind::Volume, &"s1".into(), Some("9b2d0000")) {
        Ok(mut d) => {
            let mut sink = Vec::new();
            if let Err(e) = d.read_to_end(&mut sink) {
                let text = e.to_string();
                prop_assert!(!text.contains(TOKEN), "{}", text);
                let inner = e.get_ref().and_then(|i| i.downcast_ref::<ApiError>());
                prop_assert!(
                    inner.is_some(),
                    "a download error that is not an ApiError: {:?}",
                    e
                );
                check_error(inner.unwrap());
            }
        }
        Err(e) => check_error(&e),
    }
    Ok(())
}
