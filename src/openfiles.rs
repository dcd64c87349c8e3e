//! Which versions processes hold open, read from `/proc`.
//!
//! By default the kernel sends vm0fs no `OPEN` and no `RELEASE` (see `fuse.rs`): a file of
//! a version is opened and closed without a round trip, so the daemon does not count open
//! files. The cache's promise that a version in use is never evicted then rests on this
//! module: before it evicts, the cache asks which versions have a file or directory open
//! (`/proc/PID/fd`), mapped (`/proc/PID/maps`) or as working directory, and skips those.
//! Eviction is rare (only when room must be made), so one walk of `/proc` each time costs
//! little next to the round trip per `open` it replaces.
//!
//! Only processes whose `/proc` entries the daemon may read are seen: all of them when it
//! runs as root, else those of its own user, which without `--allow-other` are the only
//! ones that can enter the mount. The walk never enters the mount itself: `readlink` on
//! `/proc/PID/fd/N` and reading `maps` print the path without asking the filesystem.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::cache::VersionKey;

/// Finds the versions of one mount that processes hold open.
#[derive(Debug, Clone)]
pub struct OpenFiles {
    /// The mount point as the kernel prints paths under it (canonical, no trailing `/`).
    mountpoint: PathBuf,
}

impl OpenFiles {
    /// `mountpoint` must be canonical: the kernel prints the paths of open files that way.
    pub fn new(mountpoint: PathBuf) -> OpenFiles {
        OpenFiles { mountpoint }
    }

    /// The versions with a file or directory open, mapped, or a working directory inside
    /// them, in any process this one can inspect. Processes that exit during the walk, or
    /// whose entries it may not read, are skipped.
    pub fn versions(&self) -> HashSet<VersionKey> {
        let mut found = HashSet::new();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return found;
        };
        for p in procs.flatten() {
            let name = p.file_name();
            if !name.as_bytes().iter().all(u8::is_ascii_digit) {
                continue;
            }
            let dir = p.path();
            for link in ["cwd", "root"] {
                if let Ok(target) = std::fs::read_link(dir.join(link)) {
                    self.note(&target, &mut found);
                }
            }
            if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
                for fd in fds.flatten() {
                    if let Ok(target) = std::fs::read_link(fd.path()) {
                        self.note(&target, &mut found);
                    }
                }
            }
            if let Ok(maps) = std::fs::read(dir.join("maps")) {
                for line in maps.split(|&b| b == b'\n') {
                    if let Some(path) = maps_path(line) {
                        self.note(Path::new(OsStr::from_bytes(path)), &mut found);
                    }
                }
            }
        }
        found
    }

    fn note(&self, path: &Path, found: &mut HashSet<VersionKey>) {
        if let Some(key) = version_of(&self.mountpoint, path) {
            found.insert(key);
        }
    }
}

/// The version a path printed by the kernel lies in (or is), if it is under `mountpoint`
/// (the layout below the mount point is the filesystem's: [`crate::fs::version_at`]).
fn version_of(mountpoint: &Path, path: &Path) -> Option<VersionKey> {
    crate::fs::version_at(path.strip_prefix(mountpoint).ok()?)
}

/// The path column of a `/proc/PID/maps` line (`addr perms offset dev inode path`), if the
/// mapping has a path.
fn maps_path(line: &[u8]) -> Option<&[u8]> {
    let mut rest = line;
    for _ in 0..5 {
        let field_end = rest.iter().position(|&b| b == b' ')?;
        rest = &rest[field_end..];
        let next = rest.iter().position(|&b| b != b' ')?;
        rest = &rest[next..];
    }
    rest.starts_with(b"/").then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Kind;
    use crate::ids::VersionId;

    const ID: &str = "abc1230000000000000000000000000000000000000000000000000000000000";
    const HELD: &str = "4242424242424242424242424242424242424242424242424242424242424242";

    fn key_of(kind: Kind, id: &str) -> VersionKey {
        VersionKey::new(kind, &VersionId::parse(id).unwrap())
    }

    #[test]
    fn a_path_in_a_version_names_it() {
        let m = Path::new("/mnt/vm0");
        let key = |p: &str| version_of(m, Path::new(p));
        assert_eq!(
            key(&format!("/mnt/vm0/artifacts/out/{ID}/dir/file.txt")),
            Some(key_of(Kind::Artifact, ID))
        );
        assert_eq!(
            key(&format!("/mnt/vm0/volumes/in/{ID}")),
            Some(key_of(Kind::Volume, ID))
        );
        assert_eq!(
            key(&format!("/mnt/vm0/volumes/in/{ID} (deleted)")),
            Some(key_of(Kind::Volume, ID))
        );
        for outside in [
            // A prefix, or anything else that is not a whole version id, is no version.
            "/mnt/vm0/artifacts/out/abc123/dir/file.txt",
            "/mnt/vm0",
            "/mnt/vm0/artifacts",
            "/mnt/vm0/artifacts/out",
            "/mnt/vm0/.vm0fs/status",
            "/mnt/vm0/other/out/abc123/file",
            "/mnt/vm01/artifacts/out/abc123/file",
            "/elsewhere/artifacts/out/abc123/file",
            "anon_inode:[eventfd]",
        ] {
            assert_eq!(key(outside), None, "{outside}");
        }
    }

    #[test]
    fn maps_lines_give_their_path() {
        let line =
            b"7f2c1a000000-7f2c1a021000 r--p 00000000 00:2d 17   /mnt/vm0/artifacts/o/v/a b.bin";
        assert_eq!(
            maps_path(line),
            Some(&b"/mnt/vm0/artifacts/o/v/a b.bin"[..])
        );
        assert_eq!(
            maps_path(b"7ffd5e1e0000-7ffd5e201000 rw-p 00000000 00:00 0    [stack]"),
            None
        );
        assert_eq!(
            maps_path(b"7ffd5e1e0000-7ffd5e201000 rw-p 00000000 00:00 0"),
            None
        );
        assert_eq!(maps_path(b""), None);
    }

    /// This very process, with a file open under a fake mount point (a plain directory:
    /// the walk only reads what `/proc` prints), is found.
    #[test]
    fn the_walk_finds_a_file_this_process_holds_open() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let version = root.join("artifacts/out").join(HELD);
        std::fs::create_dir_all(version.join("sub")).unwrap();
        std::fs::write(version.join("sub/f"), b"x").unwrap();
        let probe = OpenFiles::new(root.clone());
        assert!(!probe.versions().contains(&key_of(Kind::Artifact, HELD)));
        let held = std::fs::File::open(version.join("sub/f")).unwrap();
        assert!(probe.versions().contains(&key_of(Kind::Artifact, HELD)));
        drop(held);
        assert!(!probe.versions().contains(&key_of(Kind::Artifact, HELD)));
    }
}
