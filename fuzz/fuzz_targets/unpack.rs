//! Fuzz the archive reader: `vm0fs::archive::unpack` must never panic on any input, must
//! write nothing but its pack and `data/<n>` files under its destination, and a successful unpack must
//! give an index that keeps every invariant the cache and the filesystem rely on.
//!
//! The first byte chooses the layer: odd, the rest is taken as tar data and gzipped here
//! (so the fuzzer works on the tar parser, not on getting deflate right); even, the rest is
//! the raw input (the gzip layer). `seeds/unpack/` holds small tar archives for the first.

#![no_main]

use std::collections::HashSet;
use std::io::Write;

use libfuzzer_sys::fuzz_target;
use vm0fs::archive::{
    blob_path, pack_path, unpack, ArchiveError, NodeKind, UnpackOptions, PACK_MAX,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let input = if mode % 2 == 1 {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(rest).unwrap();
        enc.finish().unwrap()
    } else {
        rest.to_vec()
    };
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let max_bytes = 1 << 20;
    let opts = UnpackOptions {
        max_bytes,
        implied_dir_mtime: 0,
        keep_content: true,
    };
    let result = unpack(&input[..], &dest, &opts, &mut |_| {});

    // Contained: only `dest/pack`, `dest/index.bin` and `dest/data/<n>` regular files,
    // nothing next to `dest`.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    for e in std::fs::read_dir(&dest).unwrap() {
        let name = e.unwrap().file_name();
        assert!(name == "data" || name == "pack" || name == "index.bin", "{name:?}");
    }
    for e in std::fs::read_dir(dest.join("data")).unwrap() {
        let e = e.unwrap();
        assert!(std::fs::symlink_metadata(e.path()).unwrap().is_file());
        assert!(e.file_name().to_str().unwrap().parse::<u32>().is_ok());
    }

    let u = match result {
        Ok(u) => u,
        Err(ArchiveError::Read(e)) => panic!("a slice cannot fail to read: {e}"),
        Err(ArchiveError::Write { path, source }) => {
            panic!("write error on {}: {source}", path.display())
        }
        Err(_) => return,
    };
    let tree = u.index.tree().unwrap();
    let nodes = &tree.nodes;
    let pack_len = std::fs::metadata(pack_path(&dest)).unwrap().len();
    assert!(matches!(nodes[0].kind, NodeKind::Dir { parent: 0, .. }));
    let mut names = vec![0u32; nodes.len()];
    let mut blobs = HashSet::new();
    let mut bytes = 0u64;
    for (id, node) in nodes.iter().enumerate() {
        assert_eq!(node.perm & 0o6000, 0);
        match &node.kind {
            NodeKind::Dir { entries, .. } => {
                let mut subdirs = 0;
                for pair in entries.windows(2) {
                    assert!(pair[0].name < pair[1].name);
                }
                for e in entries {
                    assert!(!e.name.is_empty() && e.name != b"." && e.name != b"..");
                    assert!(!e.name.contains(&b'/') && !e.name.contains(&0) && e.name.len() <= 255);
                    assert!(e.node != 0 && (e.node as usize) < nodes.len());
                    names[e.node as usize] += 1;
                    if let NodeKind::Dir { parent, .. } = &nodes[e.node as usize].kind {
                        assert_eq!(*parent as usize, id);
                        subdirs += 1;
                    }
                }
                assert_eq!(node.nlink, 2 + subdirs);
            }
            NodeKind::File { size, blob, packed } => {
                assert!(blobs.insert(*blob));
                bytes += size;
                assert_eq!(packed.is_some(), *size < PACK_MAX);
                match packed {
                    Some(offset) => assert!(offset + size <= pack_len),
                    None => assert_eq!(
                        std::fs::metadata(blob_path(&dest, *blob)).unwrap().len(),
                        *size
                    ),
                }
            }
            NodeKind::Symlink { target } => assert!(!target.is_empty() && !target.contains(&0)),
        }
    }
    for (id, node) in nodes.iter().enumerate().skip(1) {
        assert!(names[id] >= 1, "unreachable node {id}");
        match node.kind {
            NodeKind::Dir { .. } => assert_eq!(names[id], 1),
            _ => assert_eq!(node.nlink, names[id]),
        }
    }
    assert_eq!(blobs, (0..blobs.len() as u32).collect::<HashSet<_>>());
    assert_eq!(u.stats.bytes, bytes);
    assert!(bytes <= max_bytes);
});
