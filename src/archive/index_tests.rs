//! Tests of the index image: round trips, the pinned byte layout, every truncated or
//! changed image refused at open, reads of an image that passes its checksum but lies
//! (never a panic, never a read outside it), and property tests over random trees.

use std::fs;
use std::io;

use proptest::prelude::*;
use tempfile::TempDir;

use super::index::{entry_offset, reseal};
use super::*;

fn dir(parent: u32, entries: Vec<(&[u8], u32)>) -> NodeKind {
    NodeKind::Dir {
        parent,
        entries: entries
            .into_iter()
            .map(|(name, node)| DirEntry {
                name: name.to_vec(),
                node,
            })
            .collect(),
    }
}

fn small_tree() -> IndexTree {
    IndexTree {
        nodes: vec![
            Node {
                kind: dir(0, vec![(b"big", 3), (b"f", 1), (b"l", 2)]),
                perm: 0o755,
                mtime_sec: -1,
                mtime_nsec: 5,
                nlink: 2,
            },
            Node {
                kind: NodeKind::File {
                    size: 3,
                    blob: 0,
                    packed: Some(7),
                },
                perm: 0o644,
                mtime_sec: 1_700_000_000,
                mtime_nsec: 0,
                nlink: 1,
            },
            Node {
                kind: NodeKind::Symlink {
                    target: b"f".to_vec(),
                },
                perm: 0o777,
                mtime_sec: 0,
                mtime_nsec: 0,
                nlink: 1,
            },
            Node {
                kind: NodeKind::File {
                    size: 1 << 20,
                    blob: 1,
                    packed: None,
                },
                perm: 0o600,
                mtime_sec: 2,
                mtime_nsec: 999_999_999,
                nlink: 1,
            },
        ],
    }
}

/// Every read the filesystem makes, over the whole tree: must not panic whatever the
/// image holds. Returns the first error.
fn walk(index: &Index) -> Result<(), IndexError> {
    for n in 0..index.len() {
        let node = index.node(n)?;
        match node.kind {
            NodeRefKind::Dir { .. } => {
                for e in index.entries(n)? {
                    let (name, child) = e?;
                    index.node(child)?;
                    index.lookup(n, name)?;
                }
                index.lookup(n, b"no such name")?;
            }
            NodeRefKind::Symlink { .. } => {
                index.symlink_target(n)?;
            }
            NodeRefKind::File { .. } => {}
        }
    }
    index.get(index.len())?;
    Ok(())
}

#[test]
fn index_round_trips_through_a_file() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("index.bin");
    let tree = small_tree();
    Index::build(&tree).unwrap().save(&path).unwrap();
    let index = Index::open(&path).unwrap();
    assert_eq!(index.tree().unwrap(), tree);
    assert_eq!(index.len(), 4);
    assert_eq!(index.lookup(0, b"f").unwrap(), Some(1));
    assert_eq!(index.lookup(0, b"big").unwrap(), Some(3));
    assert_eq!(index.lookup(0, b"g").unwrap(), None);
    assert_eq!(index.lookup(1, b"f").unwrap(), None, "not a directory");
    assert_eq!(index.lookup(9, b"f").unwrap(), None, "no such node");
    assert_eq!(index.symlink_target(2).unwrap(), b"f");
    assert!(index.symlink_target(1).is_err());
    assert!(index.entries(1).is_err());
    assert_eq!(index.get(4).unwrap(), None);
    let file = index.node(1).unwrap();
    assert_eq!(
        file.kind,
        NodeRefKind::File {
            size: 3,
            stored: Stored::Packed { offset: 7 }
        }
    );
    assert_eq!(
        index.node(3).unwrap().kind,
        NodeRefKind::File {
            size: 1 << 20,
            stored: Stored::Own { blob: 1 }
        }
    );
    assert_eq!(
        (file.perm, file.mtime_sec, file.mtime_nsec, file.nlink),
        (0o644, 1_700_000_000, 0, 1)
    );
    let root = index.node(0).unwrap();
    assert_eq!((root.mtime_sec, root.mtime_nsec), (-1, 5));
    walk(&index).unwrap();
}

/// The byte layout documented in doc/ARCHITECTURE.md. A change here must bump
/// `INDEX_FORMAT_VERSION` (and the cache's format, which discards older caches).
#[test]
fn index_format_is_pinned() {
    let tree = IndexTree {
        nodes: vec![
            Node {
                kind: dir(0, vec![(b"f", 1)]),
                perm: 0o755,
                mtime_sec: -1,
                mtime_nsec: 5,
                nlink: 2,
            },
            Node {
                kind: NodeKind::File {
                    size: 3,
                    blob: 0,
                    packed: Some(7),
                },
                perm: 0o644,
                mtime_sec: 0x0102,
                mtime_nsec: 0,
                nlink: 1,
            },
        ],
    };
    let image = Index::build(&tree).unwrap().as_bytes().to_vec();
    let mut expected: Vec<u8> = Vec::new();
    // Header: magic, format 3, 2 nodes, 1 entry, 1 byte of names, CRC, 28 zero bytes.
    expected.extend(b"VM0FSIDX");
    expected.extend([3, 0, 0, 0]);
    expected.extend([2, 0, 0, 0]);
    expected.extend([1, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend([1, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend(&image[32..36]); // the CRC, checked below
    expected.extend([0; 28]);
    // Node 0: directory, perm 0o755, nlink 2, mtime -1 s 5 ns, parent 0, entries 0..1.
    expected.extend([1, 0, 0xed, 0x01, 2, 0, 0, 0]);
    expected.extend([0xff; 8]);
    expected.extend([5, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend([0; 8]);
    expected.extend([1, 0, 0, 0, 0, 0, 0, 0]);
    // Node 1: file in the pack, perm 0o644, nlink 1, mtime 0x102, blob 0, size 3, offset 7.
    expected.extend([2, 1, 0xa4, 0x01, 1, 0, 0, 0]);
    expected.extend([2, 1, 0, 0, 0, 0, 0, 0]);
    expected.extend([0; 8]);
    expected.extend([3, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend([7, 0, 0, 0, 0, 0, 0, 0]);
    // Entry 0: node 1, name of 1 byte at 0. Names: "f".
    expected.extend([1, 0, 0, 0, 1, 0, 0, 0]);
    expected.extend([0; 8]);
    expected.extend(b"f");
    assert!(
        image == expected,
        "the index image appears to have changed, bump INDEX_FORMAT_VERSION\n\
         actual:   {image:?}\nexpected: {expected:?}"
    );
    let mut crc = crc32fast::Hasher::new();
    crc.update(&image[..32]);
    crc.update(&image[36..]);
    assert_eq!(image[32..36], crc.finalize().to_le_bytes());
    assert_eq!(INDEX_FORMAT_VERSION, 3);
}

#[test]
fn every_truncated_or_changed_image_is_refused_at_open() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("index.bin");
    let good = Index::build(&small_tree()).unwrap().as_bytes().to_vec();
    let refused = |bytes: &[u8], what: &str| {
        fs::write(&path, bytes).unwrap();
        let err = Index::open(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{what}: {err}");
        assert!(err.to_string().contains("damaged index"), "{what}: {err}");
    };
    for len in 0..good.len() {
        refused(&good[..len], &format!("truncated to {len}"));
    }
    let mut longer = good.clone();
    longer.push(0);
    refused(&longer, "a byte after the end");
    for at in 0..good.len() {
        for bit in [0x01, 0x80] {
            let mut bad = good.clone();
            bad[at] ^= bit;
            refused(&bad, &format!("byte {at} ^ {bit:#x}"));
        }
    }
    let mut older = good.clone();
    older[8] = 2;
    reseal(&mut older);
    refused(&older, "format 2");
    refused(b"\x02\0\0\0postcard", "the previous format's file");
}

/// What the checksum cannot catch (an image written wrong, then sealed) fails the read
/// that finds it, one way at a time: never a panic, never a read outside the image.
#[test]
fn reads_of_a_sealed_but_lying_image_fail_cleanly() {
    let good = Index::build(&small_tree()).unwrap().as_bytes().to_vec();
    let node_at = |n: usize| 64 + 40 * n;
    let entry0 = entry_offset(4, 0);
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let damages: Vec<(&str, Damage)> = vec![
        (
            "entry names a node out of range",
            Box::new(move |b| b[entry0..entry0 + 4].copy_from_slice(&9u32.to_le_bytes())),
        ),
        (
            "entry names the root",
            Box::new(move |b| b[entry0..entry0 + 4].copy_from_slice(&0u32.to_le_bytes())),
        ),
        (
            "entry name past the arena",
            Box::new(move |b| b[entry0 + 8..entry0 + 16].copy_from_slice(&u64::MAX.to_le_bytes())),
        ),
        (
            "entry name longer than the arena",
            Box::new(move |b| b[entry0 + 4..entry0 + 8].copy_from_slice(&999u32.to_le_bytes())),
        ),
        (
            "directory entries past the table",
            Box::new(move |b| {
                let at = node_at(0) + 32;
                b[at..at + 8].copy_from_slice(&4u64.to_le_bytes());
            }),
        ),
        (
            "directory entries overflowing",
            Box::new(move |b| {
                let at = node_at(0) + 24;
                b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
            }),
        ),
        (
            "directory parent out of range",
            Box::new(move |b| {
                let at = node_at(0) + 20;
                b[at..at + 4].copy_from_slice(&77u32.to_le_bytes());
            }),
        ),
        ("unknown kind", Box::new(move |b| b[node_at(2)] = 9)),
        (
            "unknown file placement",
            Box::new(move |b| b[node_at(1) + 1] = 2),
        ),
        (
            "symlink target past the arena",
            Box::new(move |b| {
                let at = node_at(2) + 24;
                b[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
            }),
        ),
        (
            "symlink target too long",
            Box::new(move |b| {
                let at = node_at(2) + 20;
                b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            }),
        ),
    ];
    for (what, damage) in damages {
        let mut bad = good.clone();
        damage(&mut bad);
        reseal(&mut bad);
        // Found at open (the root's record is read there) or by the read that meets it.
        let err = match Index::from_bytes(bad) {
            Ok(index) => walk(&index).expect_err(what),
            Err(e) => e,
        };
        assert!(
            err.to_string().starts_with("damaged index"),
            "{what}: {err}"
        );
    }
    // A root that is not a directory is refused at open already.
    let mut bad = good.clone();
    bad[node_at(0)] = 2;
    reseal(&mut bad);
    assert!(Index::from_bytes(bad).is_err());
    // Counts in the header that do not match the length are refused at open.
    let mut bad = good.clone();
    bad[12] = 5;
    reseal(&mut bad);
    assert!(Index::from_bytes(bad).is_err());
}

/// A tree that would fail a read is never written: every way a reference can leave the
/// tree, one at a time. And the same tree written anyway (as a bug or a forger could, with
/// a checksum that matches) is refused when it is opened, in every build: the tree check
/// at open is not a debug assertion.
#[test]
fn a_damaged_tree_is_refused_at_build_and_at_open() {
    type Damage<'a> = Box<dyn Fn(&mut IndexTree) + 'a>;
    let file = |blob| NodeKind::File {
        size: 3,
        blob,
        packed: None,
    };
    let damage: Vec<(&str, Damage<'_>)> = vec![
        (
            "entry out of range",
            Box::new(|t| t.nodes[0].kind = dir(0, vec![(b"big", 3), (b"f", 1), (b"l", 9)])),
        ),
        (
            "entry to the root",
            Box::new(|t| t.nodes[0].kind = dir(0, vec![(b"big", 3), (b"f", 0), (b"l", 2)])),
        ),
        (
            "unsorted",
            Box::new(|t| t.nodes[0].kind = dir(0, vec![(b"big", 3), (b"l", 2), (b"f", 1)])),
        ),
        (
            "repeated name",
            Box::new(|t| t.nodes[0].kind = dir(0, vec![(b"big", 3), (b"f", 1), (b"f", 2)])),
        ),
        (
            "bad name",
            Box::new(|t| t.nodes[0].kind = dir(0, vec![(b"a/b", 1), (b"big", 3), (b"l", 2)])),
        ),
        (
            "dot dot",
            Box::new(|t| t.nodes[0].kind = dir(0, vec![(b"..", 1), (b"big", 3), (b"l", 2)])),
        ),
        ("shared blob", Box::new(move |t| t.nodes[3].kind = file(0))),
        (
            "root not a directory",
            Box::new(move |t| t.nodes[0].kind = file(5)),
        ),
        (
            "root parent",
            Box::new(|t| t.nodes[0].kind = dir(1, vec![(b"big", 3), (b"f", 1), (b"l", 2)])),
        ),
        ("no nodes", Box::new(|t| t.nodes.clear())),
        (
            "unreachable file",
            Box::new(|t| t.nodes[0].kind = dir(0, vec![(b"big", 3), (b"l", 2)])),
        ),
        (
            "wrong parent",
            Box::new(|t| {
                t.nodes[0].kind = dir(0, vec![(b"big", 3), (b"d", 4), (b"f", 1), (b"l", 2)]);
                let d = Node {
                    kind: dir(2, vec![]),
                    ..t.nodes[0].clone()
                };
                t.nodes.push(d);
            }),
        ),
        (
            "a cycle",
            Box::new(|t| {
                t.nodes[0].kind = dir(0, vec![(b"big", 3), (b"d", 4), (b"f", 1), (b"l", 2)]);
                let d = Node {
                    kind: dir(0, vec![(b"e", 5)]),
                    ..t.nodes[0].clone()
                };
                let e = Node {
                    kind: dir(4, vec![(b"up", 4)]),
                    ..t.nodes[0].clone()
                };
                t.nodes.push(d);
                t.nodes.push(e);
            }),
        ),
        (
            "parent out of range",
            Box::new(|t| {
                let d = Node {
                    kind: dir(7, vec![]),
                    ..t.nodes[0].clone()
                };
                t.nodes.push(d);
            }),
        ),
    ];
    for (what, damage) in damage {
        let mut tree = small_tree();
        damage(&mut tree);
        assert!(tree.check().is_err(), "{what}: passed the check");
        let err = Index::build(&tree).unwrap_err();
        assert!(err.to_string().contains("damaged index"), "{what}: {err}");
        let image = encode::encode(&tree, io::Cursor::new(Vec::new()))
            .unwrap()
            .into_inner();
        let err = Index::from_bytes(image).unwrap_err();
        assert!(
            err.to_string().starts_with("damaged index"),
            "{what}: {err}"
        );
    }
    // A hole (an empty directory no name reaches, left by a hard link) is fine.
    let mut holed = small_tree();
    let hole = Node {
        kind: dir(0, vec![]),
        ..holed.nodes[0].clone()
    };
    holed.nodes.push(hole);
    let index = Index::build(&holed).unwrap();
    assert!(Index::from_bytes(index.as_bytes().to_vec()).is_ok());
}

#[test]
fn an_index_of_an_unpacked_version_round_trips() {
    let tree = IndexTree::empty(0o700, 12, 34);
    let index = Index::build(&tree).unwrap();
    let again = Index::from_bytes(index.as_bytes().to_vec()).unwrap();
    assert_eq!(again.tree().unwrap(), tree);
    assert_eq!(again.entries(0).unwrap().len(), 0);
}

// ---------------------------------------------------------------------------------------
// Properties over random trees

/// A random tree: each new node hangs in a random earlier directory under a fresh name.
fn arb_tree() -> impl Strategy<Value = IndexTree> {
    let node = (
        0usize..64,
        0u8..3,
        proptest::collection::vec(1u8..=255, 1..12),
        any::<u64>(),
        any::<i64>(),
        0u32..1_000_000_000,
        any::<u16>(),
        proptest::option::of(any::<u64>()),
    );
    proptest::collection::vec(node, 0..60).prop_map(|specs| {
        let mut tree = IndexTree::empty(0o755, 0, 0);
        let mut dirs = vec![0u32];
        let mut blobs = 0;
        for (parent, kind, mut name, size, mtime, nsec, perm, packed) in specs {
            name.retain(|&b| b != b'/');
            if name.is_empty() || name == b"." || name == b".." {
                continue;
            }
            let parent = dirs[parent % dirs.len()];
            let id = tree.nodes.len() as u32;
            let NodeKind::Dir { entries, .. } = &mut tree.nodes[parent as usize].kind else {
                unreachable!()
            };
            if entries.iter().any(|e| e.name == name) {
                continue;
            }
            entries.push(DirEntry { name, node: id });
            let kind = match kind {
                0 => {
                    dirs.push(id);
                    NodeKind::Dir {
                        parent,
                        entries: Vec::new(),
                    }
                }
                1 => {
                    blobs += 1;
                    NodeKind::File {
                        size,
                        blob: blobs - 1,
                        packed,
                    }
                }
                _ => NodeKind::Symlink {
                    target: format!("target{size}").into_bytes(),
                },
            };
            tree.nodes.push(Node {
                kind,
                perm,
                mtime_sec: mtime,
                mtime_nsec: nsec,
                nlink: 1,
            });
        }
        for node in &mut tree.nodes {
            if let NodeKind::Dir { entries, .. } = &mut node.kind {
                entries.sort_by(|a, b| a.name.cmp(&b.name));
            }
        }
        tree
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Encoded and read back, every random tree is the same tree, and every name is found
    /// by the binary search.
    #[test]
    fn random_trees_round_trip(tree in arb_tree()) {
        let index = Index::build(&tree).unwrap();
        let again = Index::from_bytes(index.as_bytes().to_vec()).unwrap();
        prop_assert_eq!(again.tree().unwrap(), tree.clone());
        for (id, node) in tree.nodes.iter().enumerate() {
            if let NodeKind::Dir { entries, .. } = &node.kind {
                for e in entries {
                    prop_assert_eq!(again.lookup(id as u32, &e.name).unwrap(), Some(e.node));
                }
            }
        }
        walk(&again).unwrap();
    }

    /// Any bytes changed in a random tree's image, with the checksum made to match again
    /// (what a bug could write): opening and reading it all never panics.
    #[test]
    fn sealed_random_damage_never_panics(
        tree in arb_tree(),
        changes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = Index::build(&tree).unwrap().as_bytes().to_vec();
        for (at, value) in changes {
            let at = 36 + at.index(bytes.len() - 36);
            bytes[at] = value;
        }
        reseal(&mut bytes);
        if let Ok(index) = Index::from_bytes(bytes) {
            let _ = walk(&index);
            let _ = index.tree();
        }
    }

    /// Any change a disk could make (a byte changed, the file cut short) is refused at
    /// open.
    #[test]
    fn unsealed_random_damage_is_refused(
        tree in arb_tree(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        cut in any::<prop::sample::Index>(),
    ) {
        let good = Index::build(&tree).unwrap().as_bytes().to_vec();
        let mut bad = good.clone();
        let at = at.index(bad.len());
        bad[at] ^= flip;
        prop_assert!(Index::from_bytes(bad).is_err());
        let cut = cut.index(good.len());
        prop_assert!(Index::from_bytes(good[..cut].to_vec()).is_err());
    }
}
