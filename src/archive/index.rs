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
        match postcard::take_from_bytes(body) {
            Ok((index, [])) => Ok(index),
            Ok((_, rest)) => Err(invalid(format!("{} bytes after the index", rest.len()))),
            Err(e) => Err(invalid(e.to_string())),
        }
    }
}
