//! The filesystem without FUSE: every operation called directly against a fake remote that
//! serves archives built in memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use flate2::write::GzEncoder;

use super::*;
use crate::api::{ApiError, ArchiveRef, ResumePoint, Storage, Version};
use crate::cache::{CacheError, VersionKey};
use crate::fetch::FetchError;
use crate::ids::{StorageId, VersionId};
use crate::remote::{ArchiveStream, RemoteArchive};
use std::time::UNIX_EPOCH;

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn targz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o640);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

#[derive(Default)]
struct Fake {
    storages: Mutex<HashMap<Kind, Vec<Storage>>>,
    versions: Mutex<HashMap<String, Vec<Version>>>,
    archives: Mutex<HashMap<String, Vec<u8>>>,
    fail_downloads: AtomicUsize,
    /// Downloads that panic (a bug in the download code), by version id: in the request
    /// itself, or in the reader of its archive.
    panics: Mutex<HashMap<String, PanicIn>>,
    /// Downloads to hold after a number of bytes until told to go on (`true`) or fail.
    gates: Mutex<HashMap<String, (usize, std::sync::mpsc::Receiver<bool>)>>,
    lists: AtomicUsize,
    version_lists: AtomicUsize,
    downloads: AtomicUsize,
    /// The offsets of the downloads that continued an earlier one.
    resumed_from: Mutex<Vec<u64>>,
    /// Set: the archives changed since their downloads began (a continuation is refused).
    replaced: std::sync::atomic::AtomicBool,
}

/// The `ETag` the fake store gives its archives.
const FAKE_ETAG: &str = "\"fake\"";

impl Remote for Fake {
    fn list_storages(&self, kind: Kind) -> Result<Vec<Storage>, ApiError> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        Ok(self.storages.lock().get(&kind).cloned().unwrap_or_default())
    }

    fn list_versions(&self, _kind: Kind, storage_id: &StorageId) -> Result<Vec<Version>, ApiError> {
        self.version_lists.fetch_add(1, Ordering::SeqCst);
        Ok(self
            .versions
            .lock()
            .get(storage_id.as_str())
            .cloned()
            .unwrap_or_default())
    }

    fn download(
        &self,
        archive: &ArchiveRef,
        from: Option<&ResumePoint>,
    ) -> Result<RemoteArchive, ApiError> {
        let version_id = archive.version.as_deref().expect("vm0fs names the version");
        self.downloads.fetch_add(1, Ordering::SeqCst);
        let start = from.map_or(0, |p| p.offset as usize);
        if let Some(p) = from {
            self.resumed_from.lock().push(p.offset);
            if p.etag != FAKE_ETAG || self.replaced.load(Ordering::SeqCst) {
                return Err(ApiError::Changed {
                    resource: format!("version {version_id}"),
                    offset: p.offset,
                    detail: "another ETag".into(),
                });
            }
        }
        if self.fail_downloads.load(Ordering::SeqCst) > 0 {
            self.fail_downloads.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::Server {
                resource: format!("version {version_id}"),
                status: 500,
                message: "internal_error".into(),
                request_id: None,
            });
        }
        let bytes = self
            .archives
            .lock()
            .get(version_id)
            .cloned()
            .expect("archive of a known version");
        match self.panics.lock().get(version_id) {
            Some(PanicIn::Request) => panic!("a download request that panics"),
            Some(PanicIn::Reader) => return Ok(RemoteArchive::plain(Panics, None)),
            None => {}
        }
        if let Some((at, go)) = self.gates.lock().remove(version_id) {
            return Ok(RemoteArchive {
                reader: Box::new(Gated {
                    bytes,
                    pos: start,
                    at,
                    go: Some(go),
                    failed: false,
                }),
                compressed_size: None,
            });
        }
        Ok(RemoteArchive {
            reader: Box::new(Gated {
                at: bytes.len(),
                bytes,
                pos: start,
                go: None,
                failed: false,
            }),
            compressed_size: None,
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum PanicIn {
    Request,
    Reader,
}

/// A download reader with a bug.
struct Panics;

impl std::io::Read for Panics {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        panic!("a download reader that panics")
    }
}

/// An archive download that stops after `at` bytes until the test lets it go on or fail
/// (without a gate: the whole archive).
struct Gated {
    bytes: Vec<u8>,
    pos: usize,
    at: usize,
    go: Option<std::sync::mpsc::Receiver<bool>>,
    failed: bool,
}

impl std::io::Read for Gated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.at {
            if let Some(go) = self.go.take() {
                self.failed = !go.recv().unwrap_or(false);
            }
        }
        if self.failed {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection reset",
            ));
        }
        let end = if self.pos < self.at {
            self.at
        } else {
            self.bytes.len()
        };
        let n = buf.len().min(end - self.pos);
        buf[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl ArchiveStream for Gated {
    fn resume_point(&self) -> Option<ResumePoint> {
        Some(ResumePoint {
            offset: self.pos as u64,
            etag: FAKE_ETAG.into(),
            total: Some(self.bytes.len() as u64),
        })
    }
}

/// Bytes gzip cannot shrink, so that an archive's compressed offsets track its content.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

impl Fake {
    /// Add a storage whose versions are `archives` (oldest first; the last is current).
    fn add(&self, kind: Kind, name: &str, archives: Vec<Option<Vec<u8>>>) -> Vec<String> {
        let storage_id = format!("id-{name}");
        let mut ids = Vec::new();
        let mut versions = Vec::new();
        for (i, a) in archives.into_iter().enumerate() {
            // Content-addressed like the real ids: 64 hex characters.
            let id = vm0_emulator::sha256_hex(format!("{name}/{i}").as_bytes());
            // A version without an archive is one of 0 files and 0 bytes.
            let (size, file_count) = if a.is_some() {
                (Some(1 << 20), Some(1))
            } else {
                (Some(0), Some(0))
            };
            if let Some(a) = a {
                self.archives.lock().insert(id.clone(), a);
            }
            versions.insert(
                0,
                Version {
                    id: VersionId::parse(&id).unwrap(),
                    storage_id: storage_id.as_str().into(),
                    size,
                    file_count,
                    message: None,
                    created_by: Some("agent".into()),
                    created_at: t(1_700_000_000 + i as u64),
                },
            );
            ids.push(id);
        }
        self.versions.lock().insert(storage_id.clone(), versions);
        self.storages.lock().entry(kind).or_default().push(Storage {
            id: storage_id.as_str().into(),
            name: name.into(),
            current_version_id: ids.last().map(|id| VersionId::parse(id).unwrap()),
            size: 0,
            file_count: 0,
            created_at: t(1_600_000_000),
            updated_at: t(1_700_000_100),
        });
        ids
    }
}

fn fs_with(fake: Arc<Fake>, ttl: Duration) -> (Fs, CacheDir) {
    fs_remembering(fake, ttl, crate::cache::FAILURE_MEMORY)
}

/// A filesystem whose cache remembers a failed download for `memory`.
fn fs_remembering(fake: Arc<Fake>, ttl: Duration, memory: Duration) -> (Fs, CacheDir) {
    let dir = tempfile::tempdir().unwrap();
    let fs = fs_in(fake, ttl, memory, dir.path());
    let cache = fs.cache().clone();
    (fs, CacheDir { dir, cache })
}

/// The cache directory of a test's filesystem. Downloads run on threads of their own and
/// may outlive the test's last step (and its `Fs`, which is dropped after this): the
/// directory is removed once none runs any more, so that no download commits into a
/// directory being removed and leaves part of it behind. A download held by a gate whose
/// sender outlives this is waited for 5 s at most.
struct CacheDir {
    dir: tempfile::TempDir,
    cache: Cache,
}

impl CacheDir {
    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for CacheDir {
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !self.cache.snapshot().in_flight.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn fs_in(fake: Arc<Fake>, ttl: Duration, memory: Duration, dir: &std::path::Path) -> Fs {
    let options = crate::cache::CacheOptions {
        failure_memory: memory,
        ..crate::cache::CacheOptions::with_budget(100 << 20)
    };
    let cache = Cache::open_with(dir, options).unwrap();
    Fs::new(
        fake,
        cache,
        FsConfig {
            metadata_ttl: ttl,
            uid: 1000,
            gid: 1000,
            label: "test".into(),
            progress_every: Duration::from_secs(2),
        },
    )
}

fn lookup_path(fs: &Fs, path: &str) -> Result<TimedAttr> {
    let mut ino = Ino::ROOT;
    let mut entry = fs.getattr(Ino::ROOT, None)?;
    for c in path.split('/').filter(|c| !c.is_empty()) {
        entry = fs.lookup(ino, OsStr::new(c), None)?;
        ino = entry.attr.ino;
    }
    Ok(entry)
}

/// Every entry of open directory `fh`, as `readdir` serves them one position at a time.
fn all_items(fs: &Fs, fh: Fh) -> Vec<DirItem> {
    let listing = fs.readdir(fh).unwrap();
    (0..)
        .map_while(|at| fs.dir_item(&listing, at).unwrap())
        .collect()
}

fn names(fs: &Fs, ino: Ino) -> Vec<String> {
    let fh = fs.opendir(ino).unwrap().fh;
    let items = all_items(fs, fh);
    fs.release(fh);
    items
        .iter()
        .map(|i| i.name.to_string_lossy().into_owned())
        .collect()
}

/// The whole file through a handle, checked against the same read without one (as when
/// the kernel sends no `OPEN`).
fn read_all(fs: &Fs, ino: Ino) -> Vec<u8> {
    let o = fs.open(ino, libc::O_RDONLY).unwrap();
    let data = fs.read(o.fh, 0, 1 << 20).unwrap();
    fs.release(o.fh);
    assert_eq!(
        fs.read_ino(ino, 0, 1 << 20, 1).unwrap(),
        data,
        "read_ino({ino})"
    );
    data.to_vec()
}

/// A directory inside a version is listed at its first `readdir`, not at `opendir`: the
/// kernel answers most `readdir`s of such directories from its own cache, and opening a
/// cold version's directory downloads nothing.
#[test]
fn a_version_directory_is_listed_at_its_first_readdir() {
    let fake = Arc::new(Fake::default());
    let ids = fake.add(Kind::Volume, "v", vec![Some(targz(&[("d/f", b"x")]))]);
    let (fs, _dir) = fs_with(fake.clone(), Duration::from_secs(60));
    let version = lookup_path(&fs, &format!("volumes/v/{}", ids[0])).unwrap();
    let fh = fs.opendir(version.attr.ino).unwrap().fh;
    assert_eq!(
        fake.downloads.load(Ordering::SeqCst),
        0,
        "opendir downloads"
    );
    let listed = |fh| -> Vec<String> {
        all_items(&fs, fh)
            .iter()
            .map(|i| i.name.to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(listed(fh), [".", "..", "d"]);
    assert_eq!(fake.downloads.load(Ordering::SeqCst), 1);
    // The same listing on every later readdir of the handle.
    assert_eq!(listed(fh), [".", "..", "d"]);
    fs.release(fh);
    let file = lookup_path(&fs, &format!("volumes/v/{}/d/f", ids[0])).unwrap();
    assert_eq!(
        fs.opendir(file.attr.ino).unwrap_err().errno(),
        libc::ENOTDIR
    );
}

#[test]
fn the_tree_from_root_to_file_contents() {
    let fake = Arc::new(Fake::default());
    let ids = fake.add(
        Kind::Artifact,
        "report",
        vec![
            Some(targz(&[("a.txt", b"one")])),
            Some(targz(&[("dir/b.txt", b"two"), ("c.txt", b"three")])),
        ],
    );
    let (fs, _dir) = fs_with(fake.clone(), Duration::from_secs(60));

    assert_eq!(
        names(&fs, Ino::ROOT),
        [".", "..", "volumes", "artifacts", ".vm0fs"]
    );
    let report = lookup_path(&fs, "artifacts/report").unwrap();
    let mut want = vec![".".to_string(), "..".into(), "latest".into()];
    want.extend(ids.iter().rev().cloned());
    assert_eq!(names(&fs, report.attr.ino), want);
    assert_eq!(
        report.attr.mtime,
        t(1_700_000_100),
        "a storage's mtime is its updated_at"
    );

    let latest = lookup_path(&fs, "artifacts/report/latest").unwrap();
    assert_eq!(latest.attr.kind, FileKind::Symlink);
    assert_eq!(fs.readlink(latest.attr.ino).unwrap(), ids[1].as_bytes());
    assert_eq!(
        fake.downloads.load(Ordering::SeqCst),
        0,
        "nothing downloaded by listing"
    );

    let file = lookup_path(&fs, &format!("artifacts/report/{}/dir/b.txt", ids[1])).unwrap();
    assert_eq!(
        (file.attr.kind, file.attr.size, file.attr.perm),
        (FileKind::RegularFile, 3, 0o640)
    );
    assert_eq!(file.attr.uid, 1000);
    assert_eq!(read_all(&fs, file.attr.ino), b"two");
    // Answered while the version may still be unpacking (zero TTL) or after (immutable).
    assert!(file.ttl == IMMUTABLE_TTL || file.ttl.is_zero());
    // Listing waits for the end of the archive; then the same path has the same inode,
    // for good.
    let dir = lookup_path(&fs, &format!("artifacts/report/{}/dir", ids[1])).unwrap();
    let fh = fs.opendir(dir.attr.ino).unwrap().fh;
    fs.readdir(fh).unwrap();
    fs.release(fh);
    let again = lookup_path(&fs, &format!("artifacts/report/{}/dir/b.txt", ids[1])).unwrap();
    assert_eq!(again.attr.ino, file.attr.ino);
    assert_eq!(again.ttl, IMMUTABLE_TTL);

    let prefix = lookup_path(&fs, &format!("artifacts/report/{}", &ids[0][..8])).unwrap();
    assert_eq!(fs.readlink(prefix.attr.ino).unwrap(), ids[0].as_bytes());
    assert!(matches!(
        lookup_path(&fs, &format!("artifacts/report/{}", &ids[0][..7])),
        Err(FsError::NotFound)
    ));
    assert!(matches!(
        lookup_path(&fs, "artifacts/nope"),
        Err(FsError::NotFound)
    ));
    assert!(matches!(
        lookup_path(&fs, "elsewhere"),
        Err(FsError::NotFound)
    ));
}

#[test]
fn inode_numbers_are_stable_and_agree_between_lookup_and_readdir() {
    let fake = Arc::new(Fake::default());
    let ids = fake.add(
        Kind::Volume,
        "v",
        vec![Some(targz(&[("x/y.txt", b"1"), ("z.txt", b"2")]))],
    );
    let (fs, _dir) = fs_with(fake, Duration::from_secs(60));
    let root = lookup_path(&fs, &format!("volumes/v/{}", ids[0]))
        .unwrap()
        .attr
        .ino;
    let fh = fs.opendir(root).unwrap().fh;
    for item in all_items(&fs, fh).iter().skip(2) {
        let looked = fs.lookup(root, &item.name, None).unwrap();
        assert_eq!(looked.attr.ino, item.entry.attr.ino, "{:?}", item.name);
        assert_eq!(fs.getattr(looked.attr.ino, None).unwrap().attr, looked.attr);
    }
    let again = lookup_path(&fs, &format!("volumes/v/{}/x/y.txt", ids[0]))
        .unwrap()
        .attr
        .ino;
    assert_eq!(
        lookup_path(&fs, &format!("volumes/v/{}/x/y.txt", ids[0]))
            .unwrap()
            .attr
            .ino,
        again
    );
    assert_eq!(
        lookup_path(&fs, &format!("volumes/v/{}", ids[0]))
            .unwrap()
            .attr
            .ino,
        root
    );
}

#[test]
fn a_version_without_files_is_empty_and_never_downloaded() {
    let fake = Arc::new(Fake::default());
    let ids = fake.add(Kind::Artifact, "empty", vec![None]);
    let (fs, _dir) = fs_with(fake.clone(), Duration::from_secs(60));
    let v = lookup_path(&fs, &format!("artifacts/empty/{}", ids[0])).unwrap();
    assert_eq!(names(&fs, v.attr.ino), [".", ".."]);
    assert_eq!(fake.downloads.load(Ordering::SeqCst), 0);
}

#[test]
fn writes_are_read_only_and_handles_are_checked() {
    let fake = Arc::new(Fake::default());
    let ids = fake.add(Kind::Volume, "v", vec![Some(targz(&[("f", b"x")]))]);
    let (fs, _dir) = fs_with(fake, Duration::from_secs(60));
    let f = lookup_path(&fs, &format!("volumes/v/{}/f", ids[0])).unwrap();
    for flags in [
        libc::O_WRONLY,
        libc::O_RDWR,
        libc::O_RDONLY | libc::O_TRUNC,
        libc::O_APPEND,
    ] {
        assert_eq!(fs.open(f.attr.ino, flags).unwrap_err().errno(), libc::EROFS);
    }
    assert_eq!(
        fs.access(f.attr.ino, true).unwrap_err().errno(),
        libc::EROFS
    );
    assert!(fs.access(f.attr.ino, false).is_ok());
    assert_eq!(fs.read(Fh(9999), 0, 10).unwrap_err().errno(), libc::EBADF);
    let dir = lookup_path(&fs, &format!("volumes/v/{}", ids[0])).unwrap();
    assert_eq!(
        fs.open(dir.attr.ino, libc::O_RDONLY).unwrap_err().errno(),
        libc::EISDIR
    );
}

/// A failed download is `EIO` for every access for a while (remembered: no new download),
/// and fetched again after.
#[test]
fn a_failed_download_is_eio_remembered_briefly_then_retried() {
    let fake = Arc::new(Fake::default());
    let ids = fake.add(Kind::Volume, "v", vec![Some(targz(&[("f", b"x")]))]);
    fake.fail_downloads.store(1, Ordering::SeqCst);
    let (fs, _dir) = fs_remembering(
        fake.clone(),
        Duration::from_secs(60),
        Duration::from_millis(300),
    );
    let path = format!("volumes/v/{}/f", ids[0]);
    let err = lookup_path(&fs, &path).unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    assert!(
        fs.status_text().contains("errors since start: 1"),
        "{}",
        fs.status_text()
    );
    for _ in 0..5 {
        assert_eq!(lookup_path(&fs, &path).unwrap_err().errno(), libc::EIO);
    }
    assert_eq!(fake.downloads.load(Ordering::SeqCst), 1, "remembered");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let f = loop {
        if let Ok(f) = lookup_path(&fs, &path) {
            break f;
        }
        assert!(std::time::Instant::now() < deadline, "never fetched again");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(read_all(&fs, f.attr.ino), b"x");
    assert_eq!(fake.downloads.load(Ordering::SeqCst), 2);
}

/// Without `OPEN`, each reader keeps the status text its first look made for a moment, so
/// that the size the kernel learnt and the bytes it then reads belong to one text; another
/// reader, or the same one later, gets the current text.
#[test]
fn each_reader_of_the_status_file_keeps_one_text_for_a_moment() {
    let fake = Arc::new(Fake::default());
    let (fs, _dir) = fs_with(fake, Duration::from_secs(60));
    let status = lookup_path(&fs, ".vm0fs/status").unwrap().attr.ino;
    let first = fs.getattr(status, Some(7)).unwrap().attr;
    fs.activity.error("something failed".into());
    // The same reader: the same size, mtime and bytes, though the text has changed since.
    assert_eq!(fs.getattr(status, Some(7)).unwrap().attr, first);
    let seen = fs.read_ino(status, 0, 1 << 20, 7).unwrap();
    assert_eq!(seen.len() as u64, first.size);
    assert!(String::from_utf8(seen.to_vec())
        .unwrap()
        .contains("errors since start: 0"));
    // Any other reader sees the new text, and so does no reader in particular.
    let other = fs.getattr(status, Some(8)).unwrap().attr;
    assert!(
        other.size > first.size && other.mtime > first.mtime,
        "{other:?}"
    );
    let now = fs.read_ino(status, 0, 1 << 20, 8).unwrap();
    assert_eq!(now.len() as u64, other.size);
    assert!(String::from_utf8(now.to_vec())
        .unwrap()
        .contains("something failed"));
    assert!(fs.getattr(status, None).unwrap().attr.size > first.size);
    // A read past the end of the text gets nothing.
    assert!(fs.read_ino(status, other.size, 4096, 8).unwrap().is_empty());
}

#[test]
fn listings_are_fetched_once_per_ttl() {
    let fake = Arc::new(Fake::default());
    fake.add(Kind::Volume, "v", vec![Some(targz(&[("f", b"x")]))]);
    let (fs, _dir) = fs_with(fake.clone(), Duration::from_secs(3600));
    for _ in 0..5 {
        names(&fs, lookup_path(&fs, "volumes").unwrap().attr.ino);
        lookup_path(&fs, "volumes/v").unwrap();
    }
    assert_eq!(fake.lists.load(Ordering::SeqCst), 1);

    // Past the TTL, each access is answered from the listing held at once and starts a
    // refresh in the background (one at a time).
    let (fs, _dir) = fs_with(fake.clone(), Duration::ZERO);
    let before = fake.lists.load(Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while fake.lists.load(Ordering::SeqCst) < before + 3 {
        lookup_path(&fs, "volumes/v").unwrap();
        assert!(
            std::time::Instant::now() < deadline,
            "a zero TTL refreshes at every access"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Listing a storage describes each version from one fetched listing, indexed by id: the
/// versions are listed once however many there are, shown in the API's order (newest
/// first), and prefixes resolve from the same index.
#[test]
fn a_storage_with_many_versions_is_listed_from_one_fetch() {
    let fake = Arc::new(Fake::default());
    let ids = fake.add(Kind::Volume, "many", vec![None; 500]);
    let (fs, _dir) = fs_with(fake.clone(), Duration::from_secs(60));
    let dir = lookup_path(&fs, "volumes/many").unwrap();
    let mut want = vec![".".to_string(), "..".into(), "latest".into()];
    want.extend(ids.iter().rev().cloned());
    assert_eq!(names(&fs, dir.attr.ino), want);
    assert_eq!(fake.version_lists.load(Ordering::SeqCst), 1);
    let prefix = lookup_path(&fs, &format!("volumes/many/{}", &ids[123][..12])).unwrap();
    assert_eq!(fs.readlink(prefix.attr.ino).unwrap(), ids[123].as_bytes());
    assert_eq!(fake.version_lists.load(Ordering::SeqCst), 1);
}

#[test]
fn errno_mapping() {
    let cases: Vec<(FsError, libc::c_int)> = vec![
        (FsError::NotFound, libc::ENOENT),
        (FsError::NotDir, libc::ENOTDIR),
        (FsError::IsDir, libc::EISDIR),
        (FsError::ReadOnly, libc::EROFS),
        (FsError::NoAttr, libc::ENODATA),
        (FsError::NotSupported, libc::EOPNOTSUPP),
        (FsError::BadHandle, libc::EBADF),
        (
            FsError::NoAnswer {
                waited: Duration::from_secs(10),
            },
            libc::ETIMEDOUT,
        ),
        (
            ApiError::Authentication { request_id: None }.into(),
            libc::EACCES,
        ),
        (
            ApiError::NotFound {
                resource: "v".into(),
                message: "m".into(),
                request_id: None,
            }
            .into(),
            libc::ENOENT,
        ),
        (
            FsError::Io(std::io::Error::from_raw_os_error(libc::ENOSPC)),
            libc::ENOSPC,
        ),
        (
            FsError::Cache(Arc::new(CacheError::TooLarge {
                key: VersionKey::new(Kind::Volume, &VersionId::parse(&"a".repeat(64)).unwrap()),
                size: 2,
                budget: 1,
            })),
            libc::EFBIG,
        ),
        (
            FsError::Cache(Arc::new(CacheError::NoRoom {
                key: VersionKey::new(Kind::Volume, &VersionId::parse(&"a".repeat(64)).unwrap()),
                needed: 2,
                budget: 1,
            })),
            libc::ENOSPC,
        ),
    ];
    let key = || VersionKey::new(Kind::Volume, &VersionId::parse(&"a".repeat(64)).unwrap());
    let fetch = |e: FetchError| {
        FsError::Cache(Arc::new(CacheError::Fetch {
            key: key(),
            source: Box::new(e),
        }))
    };
    let write = |errno: i32| {
        fetch(FetchError::Archive(crate::archive::ArchiveError::Write {
            path: "data/0".into(),
            source: std::io::Error::from_raw_os_error(errno),
        }))
    };
    let disk = |errno: i32| {
        FsError::Cache(Arc::new(CacheError::Io {
            path: "index.bin".into(),
            source: std::io::Error::from_raw_os_error(errno),
        }))
    };
    let more: Vec<(FsError, libc::c_int)> = vec![
        // A full cache disk is what the user can act on: ENOSPC, not EIO.
        (write(libc::ENOSPC), libc::ENOSPC),
        (write(libc::EDQUOT), libc::EDQUOT),
        (write(libc::EIO), libc::EIO),
        (disk(libc::ENOSPC), libc::ENOSPC),
        (disk(libc::EACCES), libc::EIO),
        // A read from the network is not the disk, whatever its errno.
        (
            fetch(FetchError::Archive(crate::archive::ArchiveError::Read(
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ))),
            libc::EIO,
        ),
        (FsError::Interrupted, libc::EINTR),
        (FsError::Internal("a bug".into()), libc::EIO),
        (
            FsError::Cache(Arc::new(CacheError::ShuttingDown)),
            libc::EIO,
        ),
        (
            FsError::Cache(Arc::new(CacheError::Panicked {
                key: key(),
                message: "a bug".into(),
            })),
            libc::EIO,
        ),
    ];
    for (e, want) in cases.into_iter().chain(more) {
        assert_eq!(e.errno(), want, "{e}");
    }
}

/// A version whose download is held after its first MiB (the fetch hands the unpacker
/// whole chunks of 256 KiB): `first.txt` is unpacked, `last.txt` is not. Returns the fake, the
/// version id and the gate.
fn held_version() -> (Arc<Fake>, String, std::sync::mpsc::Sender<bool>) {
    let fake = Arc::new(Fake::default());
    let big = noise(3 << 20, 7);
    let archive = targz(&[
        ("first.txt", b"early"),
        ("big.bin", &big),
        ("last.txt", b"late"),
    ]);
    assert!(archive.len() > 2 << 20, "the archive is incompressible");
    let ids = fake.add(Kind::Artifact, "big", vec![Some(archive)]);
    for v in fake.versions.lock().get_mut("id-big").unwrap() {
        v.size = Some(4 << 20);
    }
    let (go, gate) = std::sync::mpsc::channel();
    fake.gates.lock().insert(ids[0].clone(), (1 << 20, gate));
    (fake, ids[0].clone(), go)
}

#[test]
fn a_published_file_is_served_before_the_version_is_complete() {
    let (fake, id, go) = held_version();
    let (fs, _dir) = fs_with(fake.clone(), Duration::from_secs(60));
    let key = VersionKey::new(Kind::Artifact, &VersionId::parse(&id).unwrap());
    let first = lookup_path(&fs, &format!("artifacts/big/{id}/first.txt")).unwrap();
    assert_eq!(
        first.ttl,
        Duration::ZERO,
        "answered from the published state"
    );
    assert_eq!(
        (first.attr.kind, first.attr.size),
        (FileKind::RegularFile, 5)
    );
    assert_eq!(fs.getattr(first.attr.ino, None).unwrap().attr, first.attr);
    assert_eq!(read_all(&fs, first.attr.ino), b"early");
    assert_eq!(
        fs.cache().snapshot().in_flight,
        vec![key.clone()],
        "still downloading"
    );
    assert!(fs.cache().snapshot().resident.is_empty());

    // The rest arrives: a listing (which waited for it) has everything, same inode.
    go.send(true).unwrap();
    let version = lookup_path(&fs, &format!("artifacts/big/{id}")).unwrap();
    let fh = fs.opendir(version.attr.ino).unwrap().fh;
    let items = all_items(&fs, fh);
    fs.release(fh);
    let ino_of = |name: &str| {
        items
            .iter()
            .find(|i| i.name == name)
            .map(|i| i.entry.attr.ino)
    };
    assert_eq!(ino_of("first.txt"), Some(first.attr.ino));
    assert!(ino_of("last.txt").is_some() && ino_of("big.bin").is_some());
    let again = lookup_path(&fs, &format!("artifacts/big/{id}/first.txt")).unwrap();
    assert_eq!((again.attr.ino, again.ttl), (first.attr.ino, IMMUTABLE_TTL));
    assert_eq!(fake.downloads.load(Ordering::SeqCst), 1);
}

#[test]
fn a_failed_download_keeps_open_early_files_and_fails_new_accesses() {
    let (fake, id, go) = held_version();
    let (fs, dir) = fs_with(fake.clone(), Duration::from_secs(60));
    let first = lookup_path(&fs, &format!("artifacts/big/{id}/first.txt")).unwrap();
    let open = fs.open(first.attr.ino, libc::O_RDONLY).unwrap();

    go.send(false).unwrap();
    // A name not published waits for the end, which is the failure.
    let err = lookup_path(&fs, &format!("artifacts/big/{id}/last.txt")).unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    // The handle opened early still reads; new accesses of the same file fail, with the
    // failure remembered: no new download.
    assert_eq!(fs.read(open.fh, 0, 100).unwrap(), b"early");
    fs.release(open.fh);
    assert_eq!(
        fs.open(first.attr.ino, libc::O_RDONLY).unwrap_err().errno(),
        libc::EIO
    );
    assert_eq!(fake.downloads.load(Ordering::SeqCst), 1);
    // Nothing of it is cached or left behind.
    let snap = fs.cache().snapshot();
    assert!(snap.resident.is_empty() && snap.in_flight.is_empty());
    let tmp: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "no leftovers in tmp/: {tmp:?}");
}

/// A download that panics (a bug), in its request or in the reader of its archive, fails
/// the version with EIO for every access, and leaves the mount as it was: nothing in
/// flight, no reservation, nothing in tmp/, and the version downloads fine once the bug is
/// gone.
#[test]
fn a_download_that_panics_is_eio_and_leaves_nothing_behind() {
    for at in [PanicIn::Request, PanicIn::Reader] {
        let fake = Arc::new(Fake::default());
        let ids = fake.add(Kind::Volume, "v", vec![Some(targz(&[("f", b"x")]))]);
        fake.panics.lock().insert(ids[0].clone(), at);
        let (fs, dir) = fs_remembering(fake.clone(), Duration::from_secs(60), Duration::ZERO);
        let path = format!("volumes/v/{}/f", ids[0]);
        // Several waiters of the same flight: none may be left waiting.
        let fs = Arc::new(fs);
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let (fs, path) = (fs.clone(), path.clone());
                std::thread::spawn(move || lookup_path(&fs, &path).unwrap_err())
            })
            .collect();
        for w in waiters {
            let err = w.join().unwrap();
            assert_eq!(err.errno(), libc::EIO, "{at:?}: {err}");
            assert!(err.to_string().contains("internal error"), "{at:?}: {err}");
        }
        let snap = fs.cache().snapshot();
        assert!(
            snap.in_flight.is_empty() && snap.used == 0,
            "{at:?}: {snap:?}"
        );
        let tmp: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
        assert!(tmp.is_empty(), "{at:?}: {tmp:?}");
        assert!(
            fs.status_text().contains("internal error"),
            "{}",
            fs.status_text()
        );
        fake.panics.lock().clear();
        let f = lookup_path(&fs, &path).unwrap();
        assert_eq!(read_all(&fs, f.attr.ino), b"x");
    }
}

/// `serve` never blocks its thread on a download: an operation that must wait is answered
/// later, from a waiter thread; meanwhile the status file and a cached version are served.
#[test]
fn an_operation_that_must_wait_is_answered_later_off_the_calling_thread() {
    let (fake, id, go) = held_version();
    let small = fake.add(Kind::Volume, "small", vec![Some(targz(&[("s", b"small")]))]);
    let (fs, _dir) = fs_with(fake.clone(), Duration::from_secs(60));
    let fs = Arc::new(fs);
    let cached = lookup_path(&fs, &format!("volumes/small/{}/s", small[0])).unwrap();
    // The lookup may be answered from the unpack in progress: wait for the commit.
    let small_key = VersionKey::new(Kind::Volume, &VersionId::parse(&small[0]).unwrap());
    poll("the small version to be cached", || {
        fs.cache.is_resident(&small_key).then_some(())
    });
    lookup_path(&fs, &format!("artifacts/big/{id}/first.txt")).unwrap();
    let last = format!("artifacts/big/{id}/last.txt");
    let (tx, answers) = std::sync::mpsc::channel();
    for _ in 0..3 {
        let (tx, last) = (tx.clone(), last.clone());
        fs.serve(
            0,
            move |fs| lookup_path(fs, &last),
            move |r| tx.send(r).unwrap(),
        );
    }
    // Here, on the thread that called `serve` (as on a FUSE worker), the rest is served.
    assert!(
        answers.try_recv().is_err(),
        "answered before the archive came"
    );
    let (tx2, status) = std::sync::mpsc::channel();
    fs.serve(0, |fs| Ok(fs.status_text()), move |r| tx2.send(r).unwrap());
    let status = status
        .try_recv()
        .expect("answered on the calling thread")
        .unwrap();
    assert!(status.contains(&id), "{status}");
    let (tx3, read) = std::sync::mpsc::channel();
    let ino = cached.attr.ino;
    fs.serve(
        0,
        move |fs| fs.read_ino(ino, 0, 100, 1),
        move |r| tx3.send(r).unwrap(),
    );
    assert_eq!(
        read.try_recv().expect("answered at once").unwrap(),
        b"small"
    );
    go.send(true).unwrap();
    for _ in 0..3 {
        let r = answers.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(r.unwrap().attr.size, 4);
    }
    assert_eq!(fake.downloads.load(Ordering::SeqCst), 2);
}

/// An operation whose process gives up (here: is killed) while it waits for a download is
/// answered EINTR within a moment. Nobody else wanted the version: its download stops,
/// and a later access starts a new one.
#[test]
fn a_waiter_whose_process_is_gone_is_answered_eintr_and_the_download_stops() {
    let (fake, id, go) = held_version();
    let (fs, _dir) = fs_with(fake.clone(), Duration::from_secs(60));
    let fs = Arc::new(fs);
    let mut requester = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    let pid = requester.id();
    let last = format!("artifacts/big/{id}/last.txt");
    let (tx, answer) = std::sync::mpsc::channel();
    let path = last.clone();
    fs.serve(
        pid,
        move |fs| lookup_path(fs, &path),
        move |r| tx.send(r).unwrap(),
    );
    let key = VersionKey::new(Kind::Artifact, &VersionId::parse(&id).unwrap());
    // The listings are fetched first (on the waiter thread: the worker does not wait for
    // them), then the download starts.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fs.cache().snapshot().in_flight.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the download never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(fs.cache().snapshot().in_flight, vec![key.clone()]);
    // The operation waits on a waiter thread (an interest besides the one looked at here).
    while fs.cache().in_flight(&key).unwrap().flight().interest() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the operation never waited"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        answer.try_recv().is_err(),
        "answered before the archive came"
    );
    requester.kill().unwrap();
    requester.wait().unwrap();
    let err = answer
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap_err();
    assert_eq!(err.errno(), libc::EINTR, "{err}");
    // The download stops (at its next look, within a slice).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !fs.cache().snapshot().in_flight.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the download goes on");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(go); // the held connection breaks
              // What it received is kept, and the next access continues from there.
    poll("the received bytes to be kept", || {
        (fs.spools.len() == 1).then_some(())
    });
    let f = lookup_path(&fs, &last).unwrap();
    assert_eq!(read_all(&fs, f.attr.ino), b"late");
    assert_eq!(fake.downloads.load(Ordering::SeqCst), 2);
    assert_eq!(*fake.resumed_from.lock(), vec![1 << 20]);
}

/// A panic in an operation is answered EIO (and logged by the hook), never unanswered.
#[test]
fn an_operation_that_panics_is_answered_eio() {
    let (fs, _dir) = fs_with(Arc::new(Fake::default()), Duration::from_secs(60));
    let fs = Arc::new(fs);
    let (tx, answer) = std::sync::mpsc::channel();
    fs.serve(
        0,
        |_| -> Result<()> { panic!("an operation that panics") },
        move |r| tx.send(r).unwrap(),
    );
    let err = answer.recv().unwrap().unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
}

/// One failure reaches every waiter of the flight at once, and the accesses that come
/// after it get it too, without a download of their own.
#[test]
fn a_failure_is_shared_by_every_waiter_and_the_next_accesses() {
    let (fake, id, go) = held_version();
    let (fs, _dir) = fs_with(fake.clone(), Duration::from_secs(60));
    let fs = Arc::new(fs);
    let last = format!("artifacts/big/{id}/last.txt");
    let waiters: Vec<_> = (0..16)
        .map(|_| {
            let (fs, last) = (fs.clone(), last.clone());
            std::thread::spawn(move || lookup_path(&fs, &last).unwrap_err().errno())
        })
        .collect();
    // Every waiter joins the one download, held until then.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fake.downloads.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    go.send(false).unwrap();
    for w in waiters {
        assert_eq!(w.join().unwrap(), libc::EIO);
    }
    for _ in 0..16 {
        assert_eq!(lookup_path(&fs, &last).unwrap_err().errno(), libc::EIO);
    }
    assert_eq!(fake.downloads.load(Ordering::SeqCst), 1);
}

/// An archive whose early members are served before its gzip CRC fails: reading one of
/// them again and again downloads the archive once (the failure is remembered), not once
/// per read.
#[test]
fn reading_an_early_member_of_a_corrupt_archive_again_and_again_downloads_it_once() {
    let fake = Arc::new(Fake::default());
    let mut archive = targz(&[("early.txt", b"early"), ("late.txt", b"late")]);
    let n = archive.len();
    // The gzip trailer: CRC32, then the size. A wrong CRC is only found at the very end.
    archive[n - 8] ^= 0xff;
    let ids = fake.add(Kind::Volume, "bad", vec![Some(archive)]);
    let (fs, _dir) = fs_with(fake.clone(), Duration::from_secs(60));
    let path = format!("volumes/bad/{}/early.txt", ids[0]);
    // Served early, or failed: either is right, as long as the archive is not downloaded
    // again for each.
    for _ in 0..10 {
        let _ = lookup_path(&fs, &path).and_then(|f| {
            let o = fs.open(f.attr.ino, libc::O_RDONLY)?;
            let data = fs.read(o.fh, 0, 100);
            fs.release(o.fh);
            data
        });
    }
    // The listing waits for the end: the CRC failure.
    let version = lookup_path(&fs, &format!("volumes/bad/{}", ids[0])).unwrap();
    let fh = fs.opendir(version.attr.ino).unwrap().fh;
    assert_eq!(fs.readdir(fh).unwrap_err().errno(), libc::EIO);
    assert_eq!(lookup_path(&fs, &path).unwrap_err().errno(), libc::EIO);
    assert_eq!(fake.downloads.load(Ordering::SeqCst), 1);
}

/// An index damaged on disk is never served and never panics: a changed byte fails its
/// checksum, and an index that passes its checksum but names nodes out of range fails the
/// tree check, when a restarted mount opens it; either way it is downloaded again at once.
#[test]
fn a_damaged_index_on_disk_is_downloaded_again_after_a_restart() {
    let fake = Arc::new(Fake::default());
    let ids = fake.add(
        Kind::Volume,
        "v",
        vec![Some(targz(&[("d/f", b"x"), ("g", b"y")]))],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = format!("volumes/v/{}/d/f", ids[0]);
    {
        let fs = fs_in(
            fake.clone(),
            Duration::from_secs(60),
            Duration::ZERO,
            dir.path(),
        );
        let f = lookup_path(&fs, &path).unwrap();
        assert_eq!(read_all(&fs, f.attr.ino), b"x");
        let version = lookup_path(&fs, &format!("volumes/v/{}", ids[0])).unwrap();
        names(&fs, version.attr.ino);
    }
    let index_path = std::fs::read_dir(dir.path().join("versions"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("index.bin");
    let good = std::fs::read(&index_path).unwrap();
    let index = crate::archive::Index::from_bytes(good.clone()).unwrap();
    let entries: u64 = (0..index.len())
        .map(|n| index.entries(n).map_or(0, |e| e.len() as u64))
        .sum();
    // Every entry names a node 100 past its own, and the checksum is made to match.
    let mut bad = good.clone();
    for i in 0..entries {
        let at = crate::archive::index::entry_offset(index.len(), i);
        let node = u32::from_le_bytes(bad[at..at + 4].try_into().unwrap());
        bad[at..at + 4].copy_from_slice(&(node + 100).to_le_bytes());
    }
    crate::archive::index::reseal(&mut bad);
    std::fs::write(&index_path, &bad).unwrap();
    let fs = fs_in(
        fake.clone(),
        Duration::from_secs(60),
        Duration::ZERO,
        dir.path(),
    );
    let f = lookup_path(&fs, &path).unwrap();
    assert_eq!(read_all(&fs, f.attr.ino), b"x");
    let version = lookup_path(&fs, &format!("volumes/v/{}", ids[0])).unwrap();
    assert_eq!(names(&fs, version.attr.ino), [".", "..", "d", "g"]);
    assert_eq!(fake.downloads.load(Ordering::SeqCst), 2);
    drop(fs);

    // One byte changed: found when the index is opened, downloaded again at once.
    let mut flipped = std::fs::read(&index_path).unwrap();
    let at = flipped.len() - 1;
    flipped[at] ^= 1;
    std::fs::write(&index_path, &flipped).unwrap();
    let fs = fs_in(
        fake.clone(),
        Duration::from_secs(60),
        Duration::ZERO,
        dir.path(),
    );
    let f = lookup_path(&fs, &path).unwrap();
    assert_eq!(read_all(&fs, f.attr.ino), b"x");
    assert_eq!(fake.downloads.load(Ordering::SeqCst), 3);
}

/// A remote in front of a [`Fake`] that can be switched: up, down (every request fails as
/// a refused connection does after its retries) or refusing the token.
struct Switch {
    inner: Arc<Fake>,
    /// 0: up, 1: down, 2: refusing the token.
    mode: std::sync::atomic::AtomicU8,
}

const UP: u8 = 0;
const DOWN: u8 = 1;
const REFUSING: u8 = 2;

impl Switch {
    fn new(inner: Arc<Fake>, mode: u8) -> Arc<Switch> {
        Arc::new(Switch {
            inner,
            mode: mode.into(),
        })
    }

    fn check(&self, what: &str) -> Result<(), ApiError> {
        match self.mode.load(Ordering::SeqCst) {
            UP => Ok(()),
            DOWN => Err(ApiError::Transport {
                resource: what.into(),
                server: crate::api::Server::Api,
                host: Some("127.0.0.1:9".into()),
                stalled: None,
                setting: "VM0_API_URL",
                source: "connection refused".into(),
            }),
            _ => Err(ApiError::Authentication { request_id: None }),
        }
    }
}

impl Remote for Switch {
    fn list_storages(&self, kind: Kind) -> Result<Vec<Storage>, ApiError> {
        self.check("the list")?;
        self.inner.list_storages(kind)
    }

    fn list_versions(&self, kind: Kind, storage_id: &StorageId) -> Result<Vec<Version>, ApiError> {
        self.check("the versions")?;
        self.inner.list_versions(kind, storage_id)
    }

    fn download(
        &self,
        archive: &ArchiveRef,
        from: Option<&ResumePoint>,
    ) -> Result<RemoteArchive, ApiError> {
        self.check("the archive")?;
        self.inner.download(archive, from)
    }
}

/// A filesystem on the cache directory `dir` (which an earlier one may have filled: the
/// end of its download thread may still hold the directory's lock for a moment).
fn fs_on(remote: Arc<dyn Remote>, dir: &std::path::Path) -> Fs {
    let cache = poll("the cache directory's lock", || {
        match Cache::open(dir, 100 << 20) {
            Ok(c) => Some(c),
            Err(CacheError::Locked { .. }) => None,
            Err(e) => panic!("{e}"),
        }
    });
    Fs::new(
        remote,
        cache,
        FsConfig {
            metadata_ttl: Duration::from_secs(3600),
            uid: 1000,
            gid: 1000,
            label: "test".into(),
            progress_every: Duration::from_secs(2),
        },
    )
}

/// Poll `f` until it gives `Some` (background refreshes have no caller to wait for them).
fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Fill a cache directory: storage `v` with versions `[old, new]` (`new` current, and
/// complete in the cache), and storage `w`, listed but never entered.
fn filled_cache(fake: &Arc<Fake>) -> (tempfile::TempDir, Vec<String>) {
    let ids = fake.add(
        Kind::Volume,
        "v",
        vec![Some(targz(&[("f", b"old")])), Some(targz(&[("g", b"new")]))],
    );
    fake.add(Kind::Volume, "w", vec![Some(targz(&[("h", b"w")]))]);
    let dir = tempfile::tempdir().unwrap();
    let fs = fs_on(Switch::new(fake.clone(), UP), dir.path());
    let version = lookup_path(&fs, &format!("volumes/v/{}", ids[1])).unwrap();
    names(&fs, version.attr.ino); // waits for the end of the download
    (dir, ids)
}

/// Restarted with the API down, a mount serves the listings an earlier mount saved and
/// every cached version, by id and through `latest`; what is not cached fails cleanly;
/// once the API is back, the listings are refreshed by themselves.
#[test]
fn a_restart_with_the_api_down_serves_saved_listings_and_cached_versions() {
    let fake = Arc::new(Fake::default());
    let (dir, ids) = filled_cache(&fake);
    let switch = Switch::new(fake.clone(), DOWN);
    let fs = fs_on(switch.clone(), dir.path());

    let latest = lookup_path(&fs, "volumes/v/latest").unwrap();
    assert_eq!(fs.readlink(latest.attr.ino).unwrap(), ids[1].as_bytes());
    let storage = lookup_path(&fs, "volumes/v").unwrap();
    let listed = names(&fs, storage.attr.ino);
    assert!(
        listed.contains(&ids[0]) && listed.contains(&ids[1]),
        "{listed:?}"
    );
    let g = lookup_path(&fs, &format!("volumes/v/{}/g", ids[1])).unwrap();
    assert_eq!(read_all(&fs, g.attr.ino), b"new");
    let prefix = lookup_path(&fs, &format!("volumes/v/{}", &ids[1][..8])).unwrap();
    assert_eq!(fs.readlink(prefix.attr.ino).unwrap(), ids[1].as_bytes());

    // Not cached: a clean error, not a hang.
    let err = lookup_path(&fs, &format!("volumes/v/{}/f", ids[0])).unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    let w = lookup_path(&fs, "volumes/w").unwrap();
    let err = fs.opendir(w.attr.ino).unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    poll("the status to say the API is unreachable", || {
        fs.status_text()
            .contains("api: unreachable since")
            .then_some(())
    });

    // The API is back with a new storage: found by its name (a miss looks again).
    switch.mode.store(UP, Ordering::SeqCst);
    fake.add(Kind::Volume, "brand-new", vec![None]);
    poll("the new storage", || {
        lookup_path(&fs, "volumes/brand-new").ok()
    });
    poll("the status to say the API is reachable", || {
        fs.status_text().contains("api: reachable").then_some(())
    });
}

/// A version complete in the cache is served by its full id even when the versions of its
/// storage cannot be listed at all (never saved, the API down); but never after the API
/// refused the token.
#[test]
fn a_cached_version_is_served_by_its_full_id_with_no_listing_of_versions() {
    let fake = Arc::new(Fake::default());
    let (dir, ids) = filled_cache(&fake);
    std::fs::remove_dir_all(dir.path().join("listings/volumes")).unwrap();
    let switch = Switch::new(fake.clone(), DOWN);
    let fs = fs_on(switch.clone(), dir.path());

    let version = lookup_path(&fs, &format!("volumes/v/{}", ids[1])).unwrap();
    assert_eq!(version.attr.kind, FileKind::Directory);
    assert_eq!(names(&fs, version.attr.ino), [".", "..", "g"]);
    let g = lookup_path(&fs, &format!("volumes/v/{}/g", ids[1])).unwrap();
    assert_eq!(read_all(&fs, g.attr.ino), b"new");
    // Only a full id: a prefix needs the listing.
    let err = lookup_path(&fs, &format!("volumes/v/{}", &ids[1][..8])).unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");

    // A refused token is definite: nothing is served by name any more.
    drop(fs);
    switch.mode.store(REFUSING, Ordering::SeqCst);
    let fs = fs_on(switch.clone(), dir.path());
    let err = lookup_path(&fs, &format!("volumes/v/{}", ids[1])).unwrap_err();
    assert_eq!(err.errno(), libc::EACCES, "{err}");
}

/// A download that fails part way keeps what it received: the next attempt asks the
/// store only for the rest, and the version it unpacks is whole.
#[test]
fn a_retried_download_continues_where_the_failed_one_stopped() {
    let (fake, id, go) = held_version();
    let (fs, _dir) = fs_remembering(fake.clone(), Duration::from_secs(60), Duration::ZERO);
    let last = format!("artifacts/big/{id}/last.txt");
    go.send(false).unwrap(); // the connection breaks after 1 MiB
    assert!(lookup_path(&fs, &last).is_err());
    let f = lookup_path(&fs, &last).unwrap();
    assert_eq!(read_all(&fs, f.attr.ino), b"late");
    assert_eq!(*fake.resumed_from.lock(), vec![1 << 20]);
    assert_eq!(fake.downloads.load(Ordering::SeqCst), 2);
    let big = lookup_path(&fs, &format!("artifacts/big/{id}/big.bin")).unwrap();
    let noise = noise(3 << 20, 7);
    for at in [0, 1 << 20, 2 << 20] {
        let got = fs.read_ino(big.attr.ino, at as u64, 1 << 20, 1).unwrap();
        assert!(got == noise[at..at + (1 << 20)], "big.bin differs at {at}");
    }
    // Nothing is kept once the version is whole.
    assert!(fs
        .spools
        .take(&VersionKey::new(
            Kind::Artifact,
            &VersionId::parse(&id).unwrap()
        ))
        .is_none());
}

/// When the archive changed on the store since the failed attempt, the bytes kept are
/// dropped and the next attempt downloads it from the start.
#[test]
fn a_changed_archive_is_downloaded_again_from_the_start() {
    let (fake, id, go) = held_version();
    let (fs, _dir) = fs_remembering(fake.clone(), Duration::from_secs(60), Duration::ZERO);
    let last = format!("artifacts/big/{id}/last.txt");
    go.send(false).unwrap();
    assert!(lookup_path(&fs, &last).is_err());
    fake.replaced.store(true, Ordering::SeqCst);
    let f = lookup_path(&fs, &last).unwrap();
    assert_eq!(read_all(&fs, f.attr.ino), b"late");
    // Asked to continue (refused), then from the start.
    assert_eq!(*fake.resumed_from.lock(), vec![1 << 20]);
    assert_eq!(fake.downloads.load(Ordering::SeqCst), 3);
}

/// Bytes the unpacker found wrong (a corrupt archive) are not kept: the next attempt
/// downloads the archive from its start.
#[test]
fn a_corrupt_archive_is_downloaded_again_from_the_start() {
    let fake = Arc::new(Fake::default());
    let good = targz(&[("a.txt", &noise(3 << 20, 5)), ("z.txt", b"z")]);
    let mut bad = good.clone();
    for b in &mut bad[2 << 20..(2 << 20) + 64] {
        *b ^= 0x5a;
    }
    let ids = fake.add(Kind::Artifact, "c", vec![Some(bad)]);
    for v in fake.versions.lock().get_mut("id-c").unwrap() {
        v.size = Some(4 << 20);
    }
    let (fs, _dir) = fs_remembering(fake.clone(), Duration::from_secs(60), Duration::ZERO);
    let z = format!("artifacts/c/{}/z.txt", ids[0]);
    assert!(lookup_path(&fs, &z).is_err());
    fake.archives.lock().insert(ids[0].clone(), good);
    let f = lookup_path(&fs, &z).unwrap();
    assert_eq!(read_all(&fs, f.attr.ino), b"z");
    assert!(fake.resumed_from.lock().is_empty());
    assert_eq!(fake.downloads.load(Ordering::SeqCst), 2);
}

/// The directory of the one version in the cache at `dir`.
fn only_version_dir(dir: &std::path::Path) -> std::path::PathBuf {
    let mut found: Vec<_> = std::fs::read_dir(dir.join("versions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.pop().unwrap()
}

/// Up to 8 MiB of `ino` without a handle, in 1 MiB reads as the kernel sends them.
fn read_ino_all(fs: &Fs, ino: Ino) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let got = fs.read_ino(ino, out.len() as u64, 1 << 20, 1)?;
        if got.is_empty() || out.len() > 8 << 20 {
            return Ok(out);
        }
        out.extend_from_slice(&got);
    }
}

/// Content damaged under a running filesystem (a byte flipped in the pack, a file of its
/// own cut short, the pack deleted) and across a restart (the checksum file damaged, the
/// pack cut short): the read that finds it fails with `EIO` once, never with wrong bytes;
/// the version is dropped and counted, and the next read downloads it again.
#[test]
fn damaged_content_is_eio_once_then_downloaded_again() {
    let big: Vec<u8> = (0..(5u32 << 19)).map(|i| (i % 253) as u8).collect();
    let fake = Arc::new(Fake::default());
    let ids = fake.add(
        Kind::Volume,
        "v",
        vec![Some(targz(&[
            ("small", b"small content"),
            ("big", &big),
            ("other", b"other content"),
        ]))],
    );
    for v in fake.versions.lock().get_mut("id-v").unwrap() {
        v.size = Some(4 << 20);
    }
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| format!("volumes/v/{}/{name}", ids[0]);
    let fs = fs_in(
        fake.clone(),
        Duration::from_secs(60),
        Duration::ZERO,
        dir.path(),
    );
    let ino = |fs: &Fs, name: &str| lookup_path(fs, &at(name)).unwrap().attr.ino;
    // Listing the version waits until it is complete (committed).
    let complete = |fs: &Fs| {
        let version = lookup_path(fs, &format!("volumes/v/{}", ids[0])).unwrap();
        assert_eq!(names(fs, version.attr.ino).len(), 5);
    };
    complete(&fs);
    let downloads = || fake.downloads.load(Ordering::SeqCst);
    assert_eq!(downloads(), 1);
    let eio = |r: Result<Bytes>| match r {
        Err(e) => assert_eq!(e.errno(), libc::EIO, "{e}"),
        Ok(data) => panic!("read {} bytes of damaged content", data.len()),
    };

    // A byte of `small` flipped in the pack (it lies first).
    let vdir = only_version_dir(dir.path());
    let mut pack = std::fs::read(vdir.join("pack")).unwrap();
    pack[3] ^= 0x20;
    std::fs::write(vdir.join("pack"), &pack).unwrap();
    eio(fs.read_ino(ino(&fs, "small"), 0, 4096, 1));
    assert!(fs.status_text().contains("damaged versions: 1 "));
    assert_eq!(read_all(&fs, ino(&fs, "small")), b"small content");
    assert_eq!(downloads(), 2);

    // `big` cut short: its last block is missing. Through a handle opened before.
    complete(&fs);
    let vdir = only_version_dir(dir.path());
    let big_ino = ino(&fs, "big");
    let o = fs.open(big_ino, libc::O_RDONLY).unwrap();
    let data = std::fs::read_dir(vdir.join("data"))
        .unwrap()
        .next()
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(data.unwrap().path())
        .unwrap();
    f.set_len(3 << 19).unwrap();
    assert_eq!(
        fs.read(o.fh, 0, 4096).unwrap(),
        &big[..4096],
        "block 0 is whole"
    );
    eio(fs.read(o.fh, 2 << 20, 4096));
    // The same handle then reads the version downloaded again.
    assert_eq!(
        fs.read(o.fh, 2 << 20, 4096).unwrap(),
        &big[2 << 20..(2 << 20) + 4096]
    );
    fs.release(o.fh);
    assert_eq!(read_ino_all(&fs, big_ino).unwrap(), big);
    assert_eq!(downloads(), 3);

    // The pack deleted (what a temp cleaner does).
    complete(&fs);
    std::fs::remove_file(only_version_dir(dir.path()).join("pack")).unwrap();
    eio(fs.read_ino(ino(&fs, "other"), 0, 4096, 1));
    assert_eq!(read_all(&fs, ino(&fs, "other")), b"other content");
    assert_eq!(downloads(), 4);
    assert!(fs.status_text().contains("damaged versions: 3 "));
    complete(&fs);
    drop(fs);

    // Across a restart: the checksum file damaged (found when the version is opened), then
    // the pack cut short (found by the scan at start). Each is downloaded again at once.
    let vdir = only_version_dir(dir.path());
    let mut checks = std::fs::read(vdir.join("checks.bin")).unwrap();
    let last = checks.len() - 1;
    checks[last] ^= 1;
    std::fs::write(vdir.join("checks.bin"), &checks).unwrap();
    let fs = fs_in(
        fake.clone(),
        Duration::from_secs(60),
        Duration::ZERO,
        dir.path(),
    );
    assert_eq!(read_all(&fs, ino(&fs, "small")), b"small content");
    assert_eq!(downloads(), 5);
    assert!(fs.status_text().contains("damaged versions: 1 "));
    complete(&fs);
    drop(fs);
    let pack = only_version_dir(dir.path()).join("pack");
    let len = std::fs::metadata(&pack).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&pack).unwrap();
    f.set_len(len - 1).unwrap();
    let fs = fs_in(
        fake.clone(),
        Duration::from_secs(60),
        Duration::ZERO,
        dir.path(),
    );
    assert!(fs.status_text().contains("damaged versions: 1 "));
    assert_eq!(read_all(&fs, ino(&fs, "other")), b"other content");
    assert_eq!(downloads(), 6);
}
