//! Archives of versions: building a deterministic `tar.gz` from a directory tree or from
//! pushed content, and reading a ready `tar.gz` to compute its version id, size and count.
//!
//! Archives can be gigabytes (the benchmarks use 1 GiB), so nothing here holds an archive
//! or a file in memory: content streams from disk through a hasher into the gzip writer,
//! and each file is read exactly once.
//!
//! The module also holds, once for every test of the workspace, the builders of archives
//! that tests write themselves: in memory with the details real archives carry
//! ([`ArchiveBuilder`], [`feature_archive`]), and by hand for what no well-behaved writer
//! produces ([`RawTar`], [`zero_bomb`], [`huge_header_archive`]), with the one
//! [`pax_record`] they all use.

mod build;
mod raw;

pub use build::{feature_archive, pattern, pax_record, ArchiveBuilder};
pub use raw::{gzip, gzip_stream, huge_header_archive, zero_bomb, RawTar};

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::VersionHasher;

/// Where the bytes of a regular file come from.
#[derive(Debug)]
pub enum FileBytes {
    Disk(PathBuf),
    Memory(Vec<u8>),
}

#[derive(Debug)]
pub enum EntryKind {
    File {
        source: FileBytes,
        size: u64,
        mode: u32,
    },
    Symlink {
        target: PathBuf,
    },
}

/// One member of an archive to build: only files and symlinks, like the real CLI writes
/// (directories are implied by the paths).
#[derive(Debug)]
pub struct PackEntry {
    /// Relative, `/`-separated.
    pub path: PathBuf,
    /// Seconds since the Unix epoch.
    pub mtime: u64,
    pub kind: EntryKind,
}

/// What building or scanning an archive found out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Packed {
    pub version_id: String,
    pub size: u64,
    pub file_count: u64,
    /// `None` when there are no entries: a 0-file version has no archive.
    pub archive: Option<PathBuf>,
}

/// Collects the files and symlinks under `root` (not following symlinks). Empty
/// directories vanish, as they do in an archive without directory entries; sockets and
/// FIFOs are skipped because no archive of the CLI can hold them.
pub fn scan_dir(root: &Path) -> io::Result<Vec<PackEntry>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(root.join(&rel))? {
            let entry = entry?;
            let rel_path = rel.join(entry.file_name());
            let meta = entry.metadata()?; // DirEntry::metadata does not follow symlinks.
            let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
            let ft = meta.file_type();
            if ft.is_dir() {
                stack.push(rel_path);
            } else if ft.is_symlink() {
                let target = fs::read_link(entry.path())?;
                out.push(PackEntry {
                    path: rel_path,
                    mtime,
                    kind: EntryKind::Symlink { target },
                });
            } else if ft.is_file() {
                out.push(PackEntry {
                    path: rel_path,
                    mtime,
                    kind: EntryKind::File {
                        source: FileBytes::Disk(entry.path()),
                        size: meta.len(),
                        mode: meta.mode() & 0o7777,
                    },
                });
            } else {
                tracing::warn!(path = %entry.path().display(), "skipping a special file");
            }
        }
    }
    Ok(out)
}

/// A digest of a tree's listing (paths, sizes, modes, mtimes, link targets) that changes
/// whenever `pack` would produce a different archive, without reading any content. Like
/// make, it trusts that content does not change without its mtime or size changing.
pub fn tree_fingerprint(storage_id: &str, entries: &[PackEntry]) -> String {
    let mut order: Vec<&PackEntry> = entries.iter().collect();
    order.sort_by(|a, b| {
        a.path
            .as_os_str()
            .as_bytes()
            .cmp(b.path.as_os_str().as_bytes())
    });
    let mut h = Sha256::new();
    h.update(storage_id.as_bytes());
    for entry in order {
        h.update(b"\0");
        h.update(entry.path.as_os_str().as_bytes());
        match &entry.kind {
            EntryKind::File {
                source, size, mode, ..
            } => {
                let nanos = match source {
                    FileBytes::Disk(path) => fs::metadata(path).map_or(0, |m| m.mtime_nsec()),
                    FileBytes::Memory(_) => 0,
                };
                h.update(format!("\0f\0{size}\0{mode}\0{}\0{nanos}", entry.mtime).as_bytes());
            }
            EntryKind::Symlink { target } => {
                h.update(format!("\0l\0{}\0", entry.mtime).as_bytes());
                h.update(target.as_os_str().as_bytes());
            }
        }
    }
    hex::encode(h.finalize())
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Builds the archive of `entries` in `out_dir` (members sorted by path, real modes and
/// mtimes, owner 0, gzip header without a timestamp, so the same tree gives the same bytes)
/// and computes the version id in the same pass.
pub fn pack(storage_id: &str, mut entries: Vec<PackEntry>, out_dir: &Path) -> io::Result<Packed> {
    let mut hasher = VersionHasher::default();
    if entries.is_empty() {
        return Ok(Packed {
            version_id: hasher.finish(storage_id),
            size: 0,
            file_count: 0,
            archive: None,
        });
    }
    entries.sort_by(|a, b| {
        a.path
            .as_os_str()
            .as_bytes()
            .cmp(b.path.as_os_str().as_bytes())
    });
    fs::create_dir_all(out_dir)?;
    let tmp = out_dir.join(format!(
        "tmp-{}.tar.gz",
        hex::encode(rand::random::<[u8; 8]>())
    ));
    let result = write_archive(&tmp, &entries, &mut hasher);
    let (size, file_count) = match result {
        Ok(counts) => counts,
        Err(err) => {
            let _ = fs::remove_file(&tmp);
            return Err(err);
        }
    };
    let version_id = hasher.finish(storage_id);
    let dest = out_dir.join(format!("{storage_id}-{version_id}.tar.gz"));
    fs::rename(&tmp, &dest)?;
    Ok(Packed {
        version_id,
        size,
        file_count,
        archive: Some(dest),
    })
}

fn write_archive(
    dest: &Path,
    entries: &[PackEntry],
    hasher: &mut VersionHasher,
) -> io::Result<(u64, u64)> {
    let out = BufWriter::with_capacity(1 << 20, File::create(dest)?);
    // Level 1: on incompressible data (the benchmarks' random files) the default level 6
    // of miniz_oxide is about 4x slower (12 vs 50 MB/s measured) for a few % of size.
    let mut builder = tar::Builder::new(GzEncoder::new(out, Compression::fast()));
    let (mut size, mut file_count) = (0u64, 0u64);
    for entry in entries {
        let name = entry.path.to_string_lossy();
        let mut header = tar::Header::new_gnu();
        header.set_mtime(entry.mtime);
        header.set_uid(0);
        header.set_gid(0);
        match &entry.kind {
            EntryKind::File {
                source,
                size: len,
                mode,
            } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(*len);
                let reader: Box<dyn Read> = match source {
                    FileBytes::Disk(path) => Box::new(BufReader::new(File::open(path)?)),
                    FileBytes::Memory(bytes) => Box::new(bytes.as_slice()),
                };
                // `take` because a file that grew since it was listed would otherwise spill
                // past its header's size and corrupt the archive.
                let mut reader = Hashing {
                    inner: reader.take(*len),
                    hasher: Sha256::new(),
                    bytes: 0,
                };
                builder.append_data(&mut header, &entry.path, &mut reader)?;
                if reader.bytes != *len {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{name} shrank while it was archived"),
                    ));
                }
                hasher.file(&name, &hex::encode(reader.hasher.finalize()));
                size += len;
                file_count += 1;
            }
            EntryKind::Symlink { target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, &entry.path, target)?;
                hasher.symlink(&name, &target.to_string_lossy());
            }
        }
    }
    builder.into_inner()?.finish()?.into_inner()?;
    Ok((size, file_count))
}

/// Reads a ready archive to compute what the real service would have recorded for it.
/// `Err` means the archive cannot be read (tests corrupt archives on purpose); the caller
/// then falls back to hashing the raw bytes.
pub fn scan_archive(storage_id: &str, path: &Path) -> io::Result<Packed> {
    let file = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut archive = tar::Archive::new(GzDecoder::new(file));
    let mut hasher = VersionHasher::default();
    let (mut size, mut file_count) = (0u64, 0u64);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let link = entry
            .link_name_bytes()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let pax_sparse = pax_sparse_size(&mut entry)?;
        match entry.header().entry_type() {
            // An old-style GNU sparse member (`S`, what `tar -S` writes by default) reads as
            // its whole content, holes filled with zeros: its real size, the size `tar -xzf`
            // writes and vm0fs counts against the announced one.
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut h = Sha256::new();
                let n = io::copy(&mut entry, &mut h)?;
                hasher.file(&name, &hex::encode(h.finalize()));
                size += pax_sparse.unwrap_or(n);
                file_count += 1;
            }
            tar::EntryType::Symlink => hasher.symlink(&name, &link),
            tar::EntryType::Link => hasher.other(&name, &format!("hardlink:{link}")),
            tar::EntryType::Directory => {}
            other => hasher.other(&name, &format!("type:{}", other.as_byte())),
        }
    }
    Ok(Packed {
        version_id: hasher.finish(storage_id),
        size,
        file_count,
        archive: Some(path.to_path_buf()),
    })
}

/// The real size of a pax-format GNU sparse member (`tar --format=posix -S`, sparse
/// formats 0.0, 0.1 and 1.0): its stored data is only the map and the data blocks, while
/// `tar -xzf` writes a file of `GNU.sparse.realsize` (1.0) or `GNU.sparse.size` (0.x)
/// bytes. `None` for any other member.
fn pax_sparse_size<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Option<u64>> {
    let Some(extensions) = entry.pax_extensions()? else {
        return Ok(None);
    };
    let mut size = None;
    for extension in extensions {
        let extension = extension?;
        if let (Ok("GNU.sparse.realsize" | "GNU.sparse.size"), Ok(value)) =
            (extension.key(), extension.value())
        {
            size = value.trim().parse::<u64>().ok().or(size);
        }
    }
    Ok(size)
}

/// The id of an archive that cannot be read: sha256 of the storage id and the raw bytes.
pub fn raw_archive_id(storage_id: &str, path: &Path) -> io::Result<String> {
    let mut h = Sha256::new();
    h.update(storage_id.as_bytes());
    io::copy(&mut BufReader::new(File::open(path)?), &mut h)?;
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(path: &str, content: &[u8]) -> PackEntry {
        PackEntry {
            path: path.into(),
            mtime: 1_768_903_200,
            kind: EntryKind::File {
                source: FileBytes::Memory(content.to_vec()),
                size: content.len() as u64,
                mode: 0o644,
            },
        }
    }

    #[test]
    fn pack_then_scan_agree_and_are_deterministic() {
        let dir = std::env::temp_dir().join(format!(
            "vm0-emulator-pack-test-{}",
            hex::encode(rand::random::<[u8; 4]>())
        ));
        let entries = || {
            vec![
                mem("b/c.txt", b"hello"),
                mem("a.txt", b"hi"),
                PackEntry {
                    path: "link".into(),
                    mtime: 0,
                    kind: EntryKind::Symlink {
                        target: "a.txt".into(),
                    },
                },
            ]
        };
        let one = pack("sid", entries(), &dir.join("1")).unwrap();
        let two = pack("sid", entries(), &dir.join("2")).unwrap();
        assert_eq!(one.version_id, two.version_id);
        assert_eq!((one.size, one.file_count), (7, 2));
        let (p1, p2) = (one.archive.unwrap(), two.archive.unwrap());
        assert_eq!(fs::read(&p1).unwrap(), fs::read(&p2).unwrap());
        let scanned = scan_archive("sid", &p1).unwrap();
        assert_eq!(scanned.version_id, one.version_id);
        assert_eq!((scanned.size, scanned.file_count), (7, 2));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_version_has_no_archive() {
        let packed = pack("sid", Vec::new(), Path::new("/nonexistent")).unwrap();
        assert!(packed.archive.is_none());
        assert_eq!(packed.file_count, 0);
    }
}
