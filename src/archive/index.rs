//! The index of an unpacked version: its whole tree as a flat vector of nodes.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Bump when the serialized form of [`Index`] changes; a test pins the current form.
/// Format 2: the version as 4 little-endian bytes, then the index in `postcard`'s encoding.
pub const INDEX_FORMAT_VERSION: u32 = 2;

/// A version's tree. `nodes[0]` is the version's root directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub kind: NodeKind,
    /// Permission bits (`mode & 0o7777`, setuid and setgid dropped).
    pub perm: u16,
    /// Modification time: seconds since the epoch (may be negative) and nanoseconds.
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// Hard link count: names that refer to this node (directories: 2 + subdirectories).
    pub nlink: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeKind {
    /// `entries` sorted by name bytes (lookups binary-search them); `parent` is the index of
    /// the parent directory (the root's parent is itself, 0).
    Dir { parent: u32, entries: Vec<DirEntry> },
    /// Content at [`crate::archive::blob_path`]`(dest, blob)`.
    File { size: u64, blob: u32 },
    /// The target exactly as stored in the archive; never followed by vm0fs.
    Symlink { target: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirEntry {
    /// One path component, raw bytes (never empty, never `.` or `..`, never contains `/`).
    pub name: Vec<u8>,
    pub node: u32,
}

impl Index {
    /// Look up `name` in directory node `dir`. `None` if `dir` is not a directory.
    pub fn lookup(&self, dir: u32, name: &[u8]) -> Option<u32> {
        match &self.nodes.get(dir as usize)?.kind {
            NodeKind::Dir { entries, .. } => entries
                .binary_search_by(|e| e.name.as_slice().cmp(name))
                .ok()
                .map(|i| entries[i].node),
            _ => None,
        }
    }

    /// Write the index to `path` (with [`INDEX_FORMAT_VERSION`] in front), atomically
    /// enough for the caller's own temp-dir-then-rename commit.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let file = std::fs::File::create(path)?;
        let mut w = std::io::BufWriter::new(file);
        w.write_all(&INDEX_FORMAT_VERSION.to_le_bytes())?;
        postcard::to_io(self, &mut w).map_err(std::io::Error::other)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    }

    /// Read an index written by [`Index::save`]. An index of another format version is an
    /// error of kind `InvalidData`, never misread.
    pub fn load(path: &Path) -> std::io::Result<Index> {
        let bytes = std::fs::read(path)?;
        let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidData, msg);
        let (version, body) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| invalid(format!("index of {} bytes has no format", bytes.len())))?;
        let version = u32::from_le_bytes(*version);
        if version != INDEX_FORMAT_VERSION {
            return Err(invalid(format!(
                "index format {version}, expected {INDEX_FORMAT_VERSION}"
            )));
        }
        let index: Index = match postcard::take_from_bytes(body) {
            Ok((index, [])) => index,
            Ok((_, rest)) => return Err(invalid(format!("{} bytes after the index", rest.len()))),
            Err(e) => return Err(invalid(e.to_string())),
        };
        index
            .check()
            .map_err(|e| invalid(format!("damaged index: {e}")))?;
        Ok(index)
    }

    /// Check that the index is a tree the filesystem can serve without a bounds check
    /// failing. Every node: entries naming nodes in range other than the root, with valid
    /// names in strictly increasing order (lookups binary-search them), a parent in range,
    /// a blob below the number of files (blob numbers are dense). The tree: node 0 is a
    /// directory that is its own parent; each directory reached from it is listed once, by
    /// its parent; what no name reaches is an empty directory (the holes `Tree::finish`
    /// leaves). An index written by [`Index::save`] always passes; one damaged on disk must
    /// fail here rather than make a reader index out of bounds later.
    pub fn check(&self) -> Result<(), String> {
        let n = self.nodes.len();
        let files = self
            .nodes
            .iter()
            .filter(|node| matches!(node.kind, NodeKind::File { .. }))
            .count();
        for (id, node) in self.nodes.iter().enumerate() {
            match &node.kind {
                NodeKind::Dir { parent, entries } => {
                    if *parent as usize >= n {
                        return Err(format!("directory {id} has parent {parent} of {n}"));
                    }
                    for (i, e) in entries.iter().enumerate() {
                        let name = e.name.as_slice();
                        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/')
                        {
                            return Err(format!("directory {id} has an invalid name {name:?}"));
                        }
                        if i > 0 && entries[i - 1].name.as_slice() >= name {
                            return Err(format!("directory {id} is not sorted by name"));
                        }
                        if e.node == 0 || e.node as usize >= n {
                            return Err(format!("directory {id} names node {} of {n}", e.node));
                        }
                    }
                }
                NodeKind::File { blob, .. } if *blob as usize >= files => {
                    return Err(format!("file {id} has blob {blob} of {files}"));
                }
                NodeKind::File { .. } | NodeKind::Symlink { .. } => {}
            }
        }
        match self.nodes.first().map(|r| &r.kind) {
            Some(NodeKind::Dir { parent: 0, .. }) => {}
            Some(_) => return Err("node 0 is not a directory that is its own parent".into()),
            None => return Err("no root node".into()),
        }
        let mut seen = vec![false; n];
        seen[0] = true;
        let mut dirs = vec![0usize];
        while let Some(dir) = dirs.pop() {
            let NodeKind::Dir { entries, .. } = &self.nodes[dir].kind else {
                unreachable!("only directories are pushed");
            };
            for e in entries {
                let child = e.node as usize;
                if let NodeKind::Dir { parent, .. } = &self.nodes[child].kind {
                    if *parent as usize != dir {
                        return Err(format!(
                            "directory {child} has parent {parent}, but {dir} lists it"
                        ));
                    }
                    if seen[child] {
                        return Err(format!("directory {child} is listed twice"));
                    }
                    dirs.push(child);
                }
                seen[child] = true;
            }
        }
        for (id, node) in self.nodes.iter().enumerate() {
            let hole = matches!(&node.kind, NodeKind::Dir { entries, .. } if entries.is_empty());
            if !seen[id] && !hole {
                return Err(format!("node {id} is not reachable from the root"));
            }
        }
        Ok(())
    }
}
