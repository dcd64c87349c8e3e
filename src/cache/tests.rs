//! Library-level tests of the cache: budget, LRU order, pinning, single-flight, restarts.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flate2::write::GzEncoder;
use tempfile::TempDir;

use super::*;
use crate::archive::{self, UnpackOptions};

const KIB: u64 = 1024;

/// A tar.gz of `files` files of `size` bytes each.
fn targz(files: usize, size: usize, seed: u8) -> Vec<u8> {
    let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for i in 0..files {
        let data: Vec<u8> = (0..size)
            .map(|j| (j as u8).wrapping_add(seed).wrapping_add(i as u8))
            .collect();
        let mut h = tar::Header::new_gnu();
        h.set_size(size as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("f{i}.bin"), &data[..])
            .unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn unpack_bytes(
    bytes: &[u8],
    t: FetchTarget<'_>,
) -> Result<Unpacked, Box<dyn std::error::Error + Send + Sync>> {
    let opts = UnpackOptions {
        max_bytes: t.max_bytes,
        implied_dir_mtime: 0,
    };
    Ok(archive::unpack(bytes, t.dir, &opts, &mut |_| {})?)
}

fn key(n: u8) -> VersionKey {
    VersionKey::new(
        Kind::Volume,
        &VersionId::parse(&format!("{n:02x}").repeat(32)).unwrap(),
    )
}

/// 4 files of 25 KiB: 100 KiB of content, about as much on disk.
const A: Announced = Announced {
    size: 100 * KIB,
    file_count: 4,
};

fn load(cache: &Cache, k: &VersionKey, seed: u8) -> Result<Arc<CachedVersion>, SharedError> {
    let bytes = targz(4, 25 * 1024, seed);
    cache.get(k, A, |t| unpack_bytes(&bytes, t))
}

fn resident(cache: &Cache) -> Vec<VersionKey> {
    cache
        .snapshot()
        .resident
        .into_iter()
        .map(|r| r.key)
        .collect()
}

fn assert_within_budget(cache: &Cache) {
    let snap = cache.snapshot();
    assert!(
        snap.used <= snap.budget,
        "accounted {} > budget {}",
        snap.used,
        snap.budget
    );
    let real = disk::disk_usage(&cache.root().join("versions"));
    assert!(
        real <= snap.budget,
        "real usage {real} > budget {}",
        snap.budget
    );
}

#[test]
fn least_recently_used_versions_are_evicted_first() {
    let dir = TempDir::new().unwrap();
    // Room for two versions (each ~100 KiB of content plus per-file slack), not three.
    let cache = Cache::open(dir.path(), 360 * KIB).unwrap();
    drop(load(&cache, &key(1), 1).unwrap());
    drop(load(&cache, &key(2), 2).unwrap());
    drop(load(&cache, &key(1), 1).unwrap()); // 1 is now more recent than 2
    drop(load(&cache, &key(3), 3).unwrap());
    assert_eq!(resident(&cache), vec![key(1), key(3)]);
    assert!(!cache
        .root()
        .join("versions")
        .join(key(2).dir_name())
        .exists());
    assert_within_budget(&cache);
}

#[test]
fn a_pinned_version_survives_pressure_and_a_full_pin_set_fails_fast() {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open(dir.path(), 360 * KIB).unwrap();
    let pinned = load(&cache, &key(1), 1).unwrap();
    drop(load(&cache, &key(2), 2).unwrap());
    drop(load(&cache, &key(3), 3).unwrap()); // must evict 2, not the older but pinned 1
    assert_eq!(resident(&cache), vec![key(1), key(3)]);
    assert_eq!(
        std::fs::read(blob_file(&pinned, 0)).unwrap().len(),
        25 * 1024
    );

    let pinned3 = load(&cache, &key(3), 3).unwrap();
    let err = load(&cache, &key(4), 4).unwrap_err();
    assert!(matches!(*err, CacheError::NoRoom { .. }), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    drop((pinned, pinned3));
    // Unpinned now: the same request succeeds.
    drop(load(&cache, &key(4), 4).unwrap());
    assert_within_budget(&cache);
}

/// Versions the in-use probe names are pinned like held `Arc`s, and the probe is asked
/// only when something must be evicted.
#[test]
fn versions_the_in_use_probe_names_are_not_evicted() {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open(dir.path(), 360 * KIB).unwrap();
    let open = Arc::new(Mutex::new(HashSet::from([key(1)])));
    let asked = Arc::new(AtomicUsize::new(0));
    let (o, a) = (open.clone(), asked.clone());
    cache.set_in_use(Box::new(move || {
        a.fetch_add(1, Ordering::SeqCst);
        o.lock().clone()
    }));
    drop(load(&cache, &key(1), 1).unwrap());
    drop(load(&cache, &key(2), 2).unwrap());
    assert_eq!(asked.load(Ordering::SeqCst), 0, "no eviction, no walk");
    drop(load(&cache, &key(3), 3).unwrap()); // must evict 2, not the older but open 1
    assert!(asked.load(Ordering::SeqCst) >= 1);
    assert_eq!(resident(&cache), vec![key(1), key(3)]);
    assert!(cache
        .snapshot()
        .resident
        .iter()
        .any(|r| r.key == key(1) && r.pinned));
    // Everything in use: refused, not evicted.
    open.lock().insert(key(3));
    let err = load(&cache, &key(4), 4).unwrap_err();
    assert!(matches!(*err, CacheError::NoRoom { .. }), "{err}");
    // Closed: the oldest goes.
    open.lock().clear();
    drop(load(&cache, &key(4), 4).unwrap());
    assert_eq!(resident(&cache), vec![key(3), key(4)]);
    assert_within_budget(&cache);
}

fn blob_file(v: &CachedVersion, n: u32) -> PathBuf {
    archive::blob_path(&v.dir, n)
}

#[test]
fn a_version_larger_than_the_budget_is_refused_without_downloading() {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open(dir.path(), 50 * KIB).unwrap();
    let err = cache
        .get(
            &key(1),
            A,
            |_| -> Result<Unpacked, Box<dyn std::error::Error + Send + Sync>> {
                panic!("must not fetch a version that cannot fit")
            },
        )
        .unwrap_err();
    assert!(matches!(*err, CacheError::TooLarge { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(key(1).id.as_str()) && msg.contains("100.0 KiB") && msg.contains("50.0 KiB"),
        "{msg}"
    );
}

#[test]
fn an_archive_bigger_than_announced_is_stopped_and_nothing_is_kept() {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open(dir.path(), 10 << 20).unwrap();
    let bytes = targz(8, 64 * 1024, 9); // 512 KiB real
    let announced = Announced {
        size: 100 * KIB,
        file_count: 8,
    };
    let err = cache
        .get(&key(1), announced, |t| unpack_bytes(&bytes, t))
        .unwrap_err();
    assert!(
        err.to_string().contains("announced") || format!("{err:?}").contains("TooLarge"),
        "{err:?}"
    );
    assert_eq!(
        std::fs::read_dir(cache.root().join("tmp")).unwrap().count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(cache.root().join("versions"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(cache.snapshot().used, 0);
}

#[test]
fn concurrent_requests_for_a_cold_version_fetch_once() {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open(dir.path(), 10 << 20).unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(targz(4, 25 * 1024, 1));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (cache, fetches, bytes) = (cache.clone(), fetches.clone(), bytes.clone());
            std::thread::spawn(move || {
                cache
                    .get(&key(1), A, |t| {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(200));
                        unpack_bytes(&bytes, t)
                    })
                    .unwrap()
                    .index
                    .nodes
                    .len()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 5);
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
}

#[test]
fn a_failed_fetch_caches_nothing_and_the_next_access_fetches_again() {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open(dir.path(), 10 << 20).unwrap();
    let err = cache
        .get(&key(1), A, |t| {
            std::fs::write(t.dir.join("partial"), b"half").unwrap();
            Err("connection reset".into())
        })
        .unwrap_err();
    assert!(err.to_string().contains("connection reset"), "{err}");
    assert_eq!(
        std::fs::read_dir(cache.root().join("tmp")).unwrap().count(),
        0
    );
    assert_eq!(cache.snapshot().used, 0);
    assert!(load(&cache, &key(1), 1).is_ok());
}

#[test]
fn a_restart_reuses_complete_versions_without_fetching() {
    let dir = TempDir::new().unwrap();
    let index = {
        let cache = Cache::open(dir.path(), 10 << 20).unwrap();
        load(&cache, &key(1), 1).unwrap().index.clone()
    };
    let cache = Cache::open(dir.path(), 10 << 20).unwrap();
    let v = cache
        .get(
            &key(1),
            A,
            |_| -> Result<Unpacked, Box<dyn std::error::Error + Send + Sync>> {
                panic!("a cached version must not be fetched again")
            },
        )
        .unwrap();
    assert_eq!(v.index, index);
    assert!(cache.snapshot().used > 100 * KIB);
}

#[test]
fn a_lowered_budget_trims_at_start_keeping_the_most_recent() {
    let dir = TempDir::new().unwrap();
    {
        let cache = Cache::open(dir.path(), 10 << 20).unwrap();
        for n in 1..=3 {
            drop(load(&cache, &key(n), n).unwrap());
            // Distinct last-use times on disk.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let cache = Cache::open(dir.path(), 200 * KIB).unwrap();
    assert_eq!(resident(&cache), vec![key(3)]);
    assert_within_budget(&cache);
}

#[test]
fn leftovers_and_unrecorded_versions_are_removed_at_start() {
    let dir = TempDir::new().unwrap();
    drop(Cache::open(dir.path(), 10 << 20).unwrap());
    let tmp = dir.path().join("tmp/volumes-aa.123.0");
    std::fs::create_dir_all(tmp.join("data")).unwrap();
    std::fs::write(tmp.join("data/0"), b"partial").unwrap();
    let half = dir.path().join("versions").join(key(7).dir_name());
    std::fs::create_dir_all(&half).unwrap();
    let cache = Cache::open(dir.path(), 10 << 20).unwrap();
    assert!(!tmp.exists());
    assert!(!half.exists());
    assert!(resident(&cache).is_empty());
}

#[test]
fn a_cache_of_another_format_is_cleared() {
    let dir = TempDir::new().unwrap();
    {
        let cache = Cache::open(dir.path(), 10 << 20).unwrap();
        drop(load(&cache, &key(1), 1).unwrap());
    }
    std::fs::File::create(dir.path().join("FORMAT"))
        .unwrap()
        .write_all(b"0\n")
        .unwrap();
    let cache = Cache::open(dir.path(), 10 << 20).unwrap();
    assert!(resident(&cache).is_empty());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("FORMAT"))
            .unwrap()
            .trim(),
        CACHE_FORMAT_VERSION.to_string()
    );
}

#[test]
fn a_second_user_of_the_directory_is_refused() {
    let dir = TempDir::new().unwrap();
    let _first = Cache::open(dir.path(), 10 << 20).unwrap();
    let err = Cache::open(dir.path(), 10 << 20)
        .err()
        .expect("second open must fail");
    assert!(matches!(err, CacheError::Locked { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("in use by another vm0fs") && msg.contains(&std::process::id().to_string()),
        "{msg}"
    );
}

#[test]
fn the_cache_directory_is_private() {
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("cache");
    drop(Cache::open(&root, 10 << 20).unwrap());
    let mode = std::fs::metadata(&root).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}
