//! The cache directory as this daemon holds it: checked to be ours at every start, opened
//! once without following a symbolic link and kept open, with the files vm0fs keeps at its
//! top (the lock, the log) opened relative to it, never through a link; and the lock that
//! says which daemon owns it.
//!
//! A cache directory that another user owns, or that its group or others may write, is
//! refused (as sshd's `StrictModes` refuses such a home): whoever can write it can plant
//! links that make the daemon overwrite files of its user, or forge the versions it
//! serves. [`HeldDir::still_held`] tells whether the directory and the lock are still the
//! ones taken at start (the same device and inode through the held descriptor and through
//! a fresh `lstat` of the path): a cache removed or replaced under a running daemon is
//! noticed, not served around.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::stat::{FileStat, Mode};

use super::CacheError;

/// The lock file at the top of the cache directory: `flock(2)`ed by the running daemon,
/// with its pid in it.
pub const LOCK_FILE: &str = "lock";

/// The cache directory, open and checked, and its lock.
pub struct HeldDir {
    path: PathBuf,
    dir: OwnedFd,
    /// (device, inode) of the directory when it was opened.
    dir_id: (u64, u64),
    lock: Flock<File>,
    /// (device, inode) of the lock file when it was taken.
    lock_id: (u64, u64),
    /// Set once the directory or its lock is found gone or replaced (see
    /// [`super::Cache::check_held`]): why. From then on nothing is served from the
    /// directory, and nothing is written, moved or deleted in what is now at its path.
    pub(super) lost: OnceLock<String>,
}

fn id_of(st: &FileStat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

/// Open `path` as a directory, never through a symbolic link, and check that it is ours
/// and that nobody else may write into it. The error names the directory, what is wrong
/// and the fix.
pub fn open_checked(path: &Path) -> Result<OwnedFd, CacheError> {
    let refuse = |why: String, fix: String| CacheError::NotOurs {
        dir: path.to_path_buf(),
        why,
        fix,
    };
    let other_dir = "pass a directory of your own with --cache-dir (or cache_dir=)";
    let dir = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        // O_NOFOLLOW on a link answers ELOOP; O_DIRECTORY on a link, ENOTDIR.
        Errno::ELOOP | Errno::ENOTDIR
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) =>
        {
            refuse(
                "is a symbolic link, and vm0fs does not follow one to its cache".into(),
                format!("pass the directory it points to with --cache-dir, or {other_dir}"),
            )
        }
        Errno::ENOTDIR => refuse("is not a directory".into(), other_dir.into()),
        e => CacheError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        },
    })?;
    let st = nix::sys::stat::fstat(&dir).map_err(|e| CacheError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    let me = nix::unistd::geteuid().as_raw();
    if st.st_uid != me {
        return Err(refuse(
            format!(
                "belongs to {}, not to {} who runs this mount: its owner could forge what the mount serves",
                user_name(st.st_uid),
                user_name(me)
            ),
            format!(
                "{other_dir}, or hand this one over with `chown -R {me} {}`",
                path.display()
            ),
        ));
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o022 != 0 {
        return Err(refuse(
            format!(
                "may be written by {} (mode {mode:04o}): they could forge what the mount serves",
                if mode & 0o002 != 0 {
                    "every user"
                } else {
                    "its group"
                }
            ),
            format!("make it private with `chmod 700 {}`", path.display()),
        ));
    }
    Ok(dir)
}

/// "uid 65534 (nobody)".
fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("uid {uid} ({})", u.name),
        _ => format!("uid {uid}"),
    }
}

impl HeldDir {
    /// Open and check `path` (see [`open_checked`]), and take its lock: an exclusive,
    /// non-blocking `flock` on `lock`, which the kernel drops when the process dies, so
    /// that a crashed daemon never leaves the cache locked.
    pub fn open(path: &Path) -> Result<HeldDir, CacheError> {
        let dir = open_checked(path)?;
        let dir_id = id_of(&nix::sys::stat::fstat(&dir).map_err(|e| io_at(path, e))?);
        let lock_path = path.join(LOCK_FILE);
        let file = open_at(&dir, LOCK_FILE, OFlag::O_RDWR | OFlag::O_CREAT)
            .map_err(|e| lock_error(path, &lock_path, e))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, _)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(CacheError::Locked {
                    dir: path.to_path_buf(),
                    holder: holder.trim().to_string(),
                });
            }
        };
        let lock_id = id_of(&nix::sys::stat::fstat(lock.as_fd()).map_err(|e| io_at(path, e))?);
        let mut held = HeldDir {
            path: path.to_path_buf(),
            dir,
            dir_id,
            lock,
            lock_id,
            lost: OnceLock::new(),
        };
        held.lock.set_len(0).map_err(|source| CacheError::Io {
            path: lock_path.clone(),
            source,
        })?;
        let _ = writeln!(*held.lock, "{}", std::process::id());
        Ok(held)
    }

    /// Whether the directory was found no longer held (see `lost`).
    pub fn is_lost(&self) -> bool {
        self.lost.get().is_some()
    }

    /// Open (creating it, mode 0600) the file `name` at the top of the directory for
    /// appending, never through a symbolic link.
    pub fn open_append(&self, name: &str) -> io::Result<File> {
        open_at(
            &self.dir,
            name,
            OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT,
        )
    }

    /// Whether the directory at the path, and the lock file in it, are still the ones this
    /// daemon opened; if not, what happened (for the log, the status file and the errors).
    pub fn still_held(&self) -> Result<(), String> {
        let now = |p: &Path| nix::sys::stat::lstat(p).map(|st| id_of(&st));
        match now(&self.path) {
            Ok(id) if id == self.dir_id => {}
            Ok(_) => return Err("the directory was replaced by another one".into()),
            Err(Errno::ENOENT) => return Err("the directory was removed".into()),
            Err(e) => return Err(format!("the directory cannot be examined ({e})")),
        }
        match now(&self.path.join(LOCK_FILE)) {
            Ok(id) if id == self.lock_id => Ok(()),
            Ok(_) => Err(format!("its {LOCK_FILE} file was replaced")),
            Err(Errno::ENOENT) => Err(format!("its {LOCK_FILE} file was removed")),
            Err(e) => Err(format!("its {LOCK_FILE} file cannot be examined ({e})")),
        }
    }
}

/// Open `name` in `dir` with `flags`, never through a symbolic link; created mode 0600.
fn open_at(dir: &OwnedFd, name: &str, flags: OFlag) -> io::Result<File> {
    let fd = nix::fcntl::openat(
        dir,
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    let file = File::from(fd);
    // A file of the right name that is not a plain file of ours (a fifo someone made, a
    // file of another user left from before) is not used.
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(io::Error::other(
            "it is not a regular file of this user; remove it",
        ));
    }
    if meta.mode() & 0o077 != 0 {
        // Written by an older vm0fs (or another umask): made private again.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    }
    Ok(file)
}

fn io_at(path: &Path, e: Errno) -> CacheError {
    CacheError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// The error for a lock file that cannot be opened: a link there is named as such.
fn lock_error(dir: &Path, lock_path: &Path, e: io::Error) -> CacheError {
    if e.raw_os_error() == Some(libc::ELOOP) {
        return CacheError::NotOurs {
            dir: dir.to_path_buf(),
            why: format!("holds a symbolic link as its {LOCK_FILE} file (left untouched)"),
            fix: format!(
                "remove it (`rm {}`) if you did not put it there, and check who else writes into the directory",
                lock_path.display()
            ),
        };
    }
    CacheError::Io {
        path: lock_path.to_path_buf(),
        source: e,
    }
}

/// Check that `path` is a directory of ours that nobody else may write (see
/// [`open_checked`]), before anything is created in it.
pub fn check_dir(path: &Path) -> Result<(), CacheError> {
    open_checked(path).map(drop)
}

impl super::Cache {
    /// Whether the cache directory and its lock are still the ones this daemon took at
    /// start. The first time they are not, the loss is logged (ERROR) and remembered: from
    /// then on every access to a version and every download fails with
    /// [`CacheError::Lost`], which names the directory and the fix (mount again). Called
    /// every few seconds by the mount, and before every download.
    pub fn check_held(&self) -> Result<(), CacheError> {
        if let Some(why) = self.inner.layout.held().lost.get() {
            return Err(CacheError::Lost {
                dir: self.root().to_path_buf(),
                why: why.clone(),
            });
        }
        let Err(why) = self.inner.layout.held().still_held() else {
            return Ok(());
        };
        if self.inner.layout.held().lost.set(why.clone()).is_ok() {
            tracing::error!(
                cache = %self.root().display(),
                why = %why,
                "the cache directory is no longer this mount's: nothing is served from it or written into it any more; unmount and mount again"
            );
        }
        Err(CacheError::Lost {
            dir: self.root().to_path_buf(),
            why,
        })
    }

    /// Why the cache directory is no longer this mount's, once that was found.
    pub fn lost(&self) -> Option<&str> {
        self.inner.layout.held().lost.get().map(String::as_str)
    }

    pub(super) fn lost_error(&self) -> Option<super::SharedError> {
        let why = self.inner.layout.held().lost.get()?;
        Some(Arc::new(CacheError::Lost {
            dir: self.root().to_path_buf(),
            why: why.clone(),
        }))
    }

    /// Open the daemon's log file (`vm0fs.log`) for appending: relative to the held
    /// directory, never through a link, mode 0600.
    pub fn open_log(&self) -> io::Result<File> {
        self.inner.layout.held().open_append(LOG_FILE)
    }
}

/// The log of a daemonized mount, at the top of the cache directory.
pub const LOG_FILE: &str = "vm0fs.log";

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_writable_linked_or_foreign_directory_is_refused_with_the_fix() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("c");
        std::fs::create_dir(&dir).unwrap();
        for (mode, needle) in [(0o777, "every user"), (0o770, "its group")] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = HeldDir::open(&dir).err().unwrap().to_string();
            assert!(err.contains(needle) && err.contains("chmod 700"), "{err}");
            assert!(err.contains(&dir.display().to_string()), "{err}");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = HeldDir::open(&link).err().unwrap().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        let held = HeldDir::open(&dir).unwrap();
        held.still_held().unwrap();
        std::fs::remove_file(dir.join(LOCK_FILE)).unwrap();
        assert!(held.still_held().unwrap_err().contains("removed"));
    }

    #[test]
    fn a_linked_lock_is_refused_and_its_target_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("c");
        std::fs::create_dir(&dir).unwrap();
        let target = root.path().join("precious");
        std::fs::write(&target, b"keep me").unwrap();
        std::os::unix::fs::symlink(&target, dir.join(LOCK_FILE)).unwrap();
        let err = HeldDir::open(&dir).err().unwrap().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    }
}
