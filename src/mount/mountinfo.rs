//! What `/proc/self/mountinfo` says: which mount is at a path, and whether it is a vm0fs
//! mount. Read without `stat`, which would hang or fail on a dead FUSE mount.

use std::io;
use std::path::{Path, PathBuf};

use super::{FS_TYPE, SOURCE};

/// One line of `/proc/self/mountinfo` (see proc(5)): the fields vm0fs looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    /// The device number of the mounted file system (`st_dev` of its files).
    pub dev: (u32, u32),
    /// `fuse.vm0fs`, `tmpfs`, ...
    pub fs_type: String,
    /// The "device": `vm0fs` for vm0fs mounts.
    pub source: String,
}

impl MountEntry {
    /// Whether this is a vm0fs mount: of type `fuse.vm0fs`, or of source `vm0fs` on a
    /// FUSE type (root mounts of earlier versions had the bare type `fuse`).
    pub fn is_vm0fs(&self) -> bool {
        self.fs_type == FS_TYPE
            || (self.source == SOURCE
                && (self.fs_type == "fuse" || self.fs_type.starts_with("fuse.")))
    }
}

/// The mounts of a mountinfo text, in mount order.
fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FS_TYPE SOURCE SUPER
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let (major, minor) = fields.get(2)?.split_once(':')?;
            let mount_point = fields.get(4)?;
            let mut after = after.split(' ');
            let fs_type = after.next()?;
            let source = after.next()?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape_mountinfo(mount_point)),
                dev: (major.parse().ok()?, minor.parse().ok()?),
                fs_type: unescape_mountinfo(fs_type),
                source: unescape_mountinfo(source),
            })
        })
        .collect()
}

/// The mount at `path`, the topmost one when several are stacked there. Read from
/// `/proc/self/mountinfo`, without `stat`, which would hang or fail on a dead FUSE mount.
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    let abs = absolute(path).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&info)
        .into_iter()
        .rev()
        .find(|e| e.mount_point == abs)
}

/// Whether `path` is a mount point.
pub fn is_mounted(path: &Path) -> bool {
    mount_at(path).is_some()
}

/// An absolute, `..`-free path without following the last component (which may be a
/// dead mount that cannot be stat'ed).
fn absolute(path: &Path) -> io::Result<PathBuf> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no final component"))?;
    Ok(std::fs::canonicalize(parent)?.join(name))
}

/// Mount paths in mountinfo escape space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/tmp/x\134y"), r"/tmp/x\y");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\04"), r"/end\04");
    }

    #[test]
    fn mountinfo_lines_give_mount_point_type_and_source() {
        let text = "\
36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - tmpfs tmpfs rw
37 35 0:53 / /mnt/vm0 ro,nosuid,nodev,noatime - fuse.vm0fs vm0fs ro,user_id=0,group_id=0
38 35 0:54 / /mnt/old ro,nosuid shared:2 master:3 - fuse vm0fs ro,user_id=0
39 35 0:55 / /mnt/sshfs rw - fuse.sshfs host:/ rw
40 35 0:56 / /mnt/other rw - fuse other rw
garbage
";
        let entries = parse_mountinfo(text);
        assert_eq!(entries[1].dev, (0, 53));
        let got: Vec<(&str, &str, &str, bool)> = entries
            .iter()
            .map(|e| {
                (
                    e.mount_point.to_str().unwrap(),
                    e.fs_type.as_str(),
                    e.source.as_str(),
                    e.is_vm0fs(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("/mnt/a b", "tmpfs", "tmpfs", false),
                ("/mnt/vm0", "fuse.vm0fs", "vm0fs", true),
                // A root mount made before the type was fuse.vm0fs.
                ("/mnt/old", "fuse", "vm0fs", true),
                ("/mnt/sshfs", "fuse.sshfs", "host:/", false),
                ("/mnt/other", "fuse", "other", false),
            ]
        );
    }
}
