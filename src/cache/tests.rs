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
        file_count: 0,
        max_index_bytes: u64::MAX,
        implied_dir_mtime: 0,
        keep_content: true,
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
    size: Some(100 * KIB),
    file_count: Some(4),
};

/// The version `k`, as production gets it: started (queued for the download pool, or
/// loaded from disk) and waited for.
fn get<F>(
    cache: &Cache,
    k: &VersionKey,
    a: Announced,
    fetch: F,
) -> Result<Arc<CachedVersion>, SharedError>
where
    F: FnOnce(FetchTarget<'_>) -> FetchResult + Send + 'static,
{
    match cache.start(k, a, fetch) {
        Available::Ready(v) => Ok(v),
        Available::Pending(interest) => interest.wait(&Unbounded).expect("an unbounded wait"),
    }
}

fn load(cache: &Cache, k: &VersionKey, seed: u8) -> Result<Arc<CachedVersion>, SharedError> {
    let bytes = targz(4, 25 * 1024, seed);
    get(cache, k, A, move |t| unpack_bytes(&bytes, t))
}

/// A fetch that must not run.
fn never(_: FetchTarget<'_>) -> FetchResult {
    panic!("this fetch must not run")
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
    let real = disk_usage(&cache.root().join("versions"));
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
        std::fs::read(archive::pack_path(&pinned.dir))
            .unwrap()
            .len(),
        4 * 25 * 1024
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

#[test]
fn a_version_larger_than_the_budget_is_refused_without_downloading() {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open(dir.path(), 50 * KIB).unwrap();
    let err = get(&cache, &key(1), A, never).unwrap_err();
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
        size: Some(100 * KIB),
        file_count: Some(8),
    };
    let err = get(&cache, &key(1), announced, move |t| unpack_bytes(&bytes, t)).unwrap_err();
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

/// Every start while the fetch is held joins it: one fetch, one result for all. The fetch
/// is held until all the starts have returned, so they overlap for certain.
#[test]
fn concurrent_requests_for_a_cold_version_fetch_once() {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open(dir.path(), 10 << 20).unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let bytes = targz(4, 25 * 1024, 1);
    let (go, gate) = std::sync::mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(gate));
    let starts: Vec<Available> = (0..8)
        .map(|_| {
            let (fetches, bytes, gate) = (fetches.clone(), bytes.clone(), gate.clone());
            cache.start(&key(1), A, move |t| {
                fetches.fetch_add(1, Ordering::SeqCst);
                // Held until every start has returned (the sender goes).
                let _ = gate.lock().recv();
                unpack_bytes(&bytes, t)
            })
        })
        .collect();
    drop(go);
    let threads: Vec<_> = starts
        .into_iter()
        .map(|a| {
            std::thread::spawn(move || match a {
                Available::Ready(v) => v.index.len(),
                Available::Pending(i) => i.wait(&Unbounded).unwrap().unwrap().index.len(),
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 5);
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
}

/// A cache whose failures are not remembered.
fn forgetful(dir: &Path, budget: u64) -> Cache {
    Cache::open_with(
        dir,
        CacheOptions {
            failure_memory: Duration::ZERO,
            ..CacheOptions::with_budget(budget)
        },
    )
    .unwrap()
}

#[test]
fn a_failed_fetch_caches_nothing_and_the_next_access_fetches_again() {
    let dir = TempDir::new().unwrap();
    let cache = forgetful(dir.path(), 10 << 20);
    let err = get(&cache, &key(1), A, |t| {
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
        load(&cache, &key(1), 1).unwrap().index.as_bytes().to_vec()
    };
    let cache = Cache::open(dir.path(), 10 << 20).unwrap();
    let v = get(&cache, &key(1), A, never).unwrap();
    assert_eq!(v.index.as_bytes(), index);
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

/// A fetch held until the test says so, then unpacking `bytes`.
fn held(
    bytes: Vec<u8>,
) -> (
    std::sync::mpsc::Sender<()>,
    impl FnOnce(FetchTarget<'_>) -> FetchResult + Send + 'static,
) {
    let (go, gate) = std::sync::mpsc::channel::<()>();
    let fetch = move |t: FetchTarget<'_>| {
        let _ = gate.recv();
        unpack_bytes(&bytes, t)
    };
    (go, fetch)
}

/// Poll `f` until it holds, for at most 10 s.
fn poll(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn pending(a: Available) -> Interest {
    match a {
        Available::Pending(i) => i,
        Available::Ready(_) => panic!("expected a flight"),
    }
}

/// A fetch that panics ends its flight with an error for every waiter (none is left
/// waiting), returns its reservation, leaves nothing behind, and the pool goes on.
#[test]
fn a_fetch_that_panics_fails_its_waiters_and_returns_its_reservation() {
    let dir = TempDir::new().unwrap();
    let cache = forgetful(dir.path(), 10 << 20);
    let (go, gate) = std::sync::mpsc::channel::<()>();
    let flight = pending(cache.start(&key(1), A, move |t| {
        std::fs::write(t.dir.join("partial"), b"half").unwrap();
        let _ = gate.recv();
        panic!("a fetch that panics")
    }));
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let i = cache.in_flight(&key(1)).expect("in flight");
            std::thread::spawn(move || i.wait(&Unbounded).unwrap())
        })
        .collect();
    poll("the reservation", || cache.snapshot().used > 0);
    drop(go);
    for w in waiters {
        let err = w.join().unwrap().unwrap_err();
        assert!(matches!(*err, CacheError::Panicked { .. }), "{err}");
        assert!(err.to_string().contains("a fetch that panics"), "{err}");
    }
    assert!(flight.wait(&Unbounded).unwrap().is_err());
    let snap = cache.snapshot();
    assert_eq!((snap.used, snap.in_flight.len()), (0, 0), "{snap:?}");
    assert_eq!(
        std::fs::read_dir(cache.root().join("tmp")).unwrap().count(),
        0
    );
    // The next access fetches again, on the same pool.
    assert!(load(&cache, &key(1), 1).is_ok());
}

/// Within the failure memory every access gets the failure at once, without fetching;
/// after it, the next access fetches again.
#[test]
fn a_failed_fetch_is_remembered_for_a_while() {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open_with(
        dir.path(),
        CacheOptions {
            failure_memory: Duration::from_millis(300),
            ..CacheOptions::with_budget(10 << 20)
        },
    )
    .unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let failing = |fetches: Arc<AtomicUsize>| {
        move |_: FetchTarget<'_>| -> FetchResult {
            fetches.fetch_add(1, Ordering::SeqCst);
            Err("HTTP 500".into())
        }
    };
    let first = get(&cache, &key(1), A, failing(fetches.clone())).unwrap_err();
    for _ in 0..10 {
        let again = get(&cache, &key(1), A, failing(fetches.clone())).unwrap_err();
        assert!(Arc::ptr_eq(&first, &again), "the same failure");
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    // Forgotten after a while: the next access fetches again.
    poll("the failure to be forgotten", || {
        get(&cache, &key(1), A, failing(fetches.clone())).is_err()
            && fetches.load(Ordering::SeqCst) > 1
    });
    assert!(
        load(&cache, &key(2), 2).is_ok(),
        "other versions are not affected"
    );
}

/// At most `downloads` fetches run; the others are queued, shown as such, and run in turn.
#[test]
fn at_most_the_configured_downloads_run_and_the_rest_are_queued() {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open_with(
        dir.path(),
        CacheOptions {
            downloads: 1,
            ..CacheOptions::with_budget(10 << 20)
        },
    )
    .unwrap();
    let (go1, fetch1) = held(targz(4, 25 * 1024, 1));
    let (go2, fetch2) = held(targz(4, 25 * 1024, 2));
    let one = pending(cache.start(&key(1), A, fetch1));
    let two = pending(cache.start(&key(2), A, fetch2));
    poll("the first to run", || {
        matches!(one.flight().phase(), Phase::Running(_))
    });
    let snap = cache.snapshot();
    assert_eq!(snap.queued.len(), 1, "{snap:?}");
    assert_eq!(snap.queued[0].0, key(2));
    assert_eq!(snap.downloads, 1);
    assert!(matches!(two.flight().phase(), Phase::Queued(_)));
    go2.send(()).unwrap();
    go1.send(()).unwrap();
    assert!(one.wait(&Unbounded).unwrap().is_ok());
    assert!(two.wait(&Unbounded).unwrap().is_ok());
    assert!(cache.snapshot().queued.is_empty());
}

/// A patience that lets its caller wait one slice, then gives up.
struct GivesUp;

impl Patience for GivesUp {
    fn may_block(&self) -> bool {
        true
    }

    fn gave_up(&self) -> bool {
        true
    }
}

/// A waiter that gives up is let go at once; when it was the last one wanting the
/// version, the fetch is told to stop, the flight leaves the cache, and the next access
/// starts afresh. One that simply goes (it was answered from what was published) leaves
/// the fetch running.
#[test]
fn a_flight_whose_last_waiter_gave_up_is_cancelled() {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open(dir.path(), 10 << 20).unwrap();
    let (told_tx, told) = std::sync::mpsc::channel();
    let interest = pending(cache.start(&key(1), A, move |t| {
        // A download that only ends when told to stop.
        while !(t.cancelled)() {
            std::thread::sleep(Duration::from_millis(5));
        }
        told_tx.send(()).unwrap();
        Err("stopped".into())
    }));
    // Another caller comes and goes without giving up: the fetch goes on.
    drop(cache.in_flight(&key(1)).unwrap());
    assert_eq!(interest.wait(&GivesUp).unwrap_err(), Stopped::Interrupted);
    let flight = interest.flight().clone();
    drop(interest);
    told.recv_timeout(Duration::from_secs(10))
        .expect("the fetch was told to stop");
    poll("the flight to end", || flight.is_done());
    assert!(
        cache.in_flight(&key(1)).is_none(),
        "a cancel is not remembered"
    );
    assert!(load(&cache, &key(1), 1).is_ok());
}

#[test]
fn a_flight_nobody_gave_up_on_goes_on_without_waiters() {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open(dir.path(), 10 << 20).unwrap();
    let (go, fetch) = held(targz(4, 25 * 1024, 1));
    let interest = pending(cache.start(&key(1), A, fetch));
    let flight = interest.flight().clone();
    assert_eq!(
        interest.wait(&Never).unwrap_err(),
        Stopped::WouldBlock,
        "a caller that may not block is told so at once"
    );
    drop(interest);
    go.send(()).unwrap();
    poll("the fetch to complete", || flight.is_done());
    assert!(cache.peek(&key(1)).is_some());
}

/// A patience that never blocks (a FUSE worker's).
struct Never;

impl Patience for Never {
    fn may_block(&self) -> bool {
        false
    }

    fn gave_up(&self) -> bool {
        false
    }
}

/// A shutdown answers every waiter at once, stops the running fetch, drops the queued
/// ones, and refuses new ones.
#[test]
fn shutdown_ends_every_flight_at_once() {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open_with(
        dir.path(),
        CacheOptions {
            downloads: 1,
            ..CacheOptions::with_budget(10 << 20)
        },
    )
    .unwrap();
    let (stopped_tx, stopped) = std::sync::mpsc::channel();
    let running = pending(cache.start(&key(1), A, move |t| {
        while !(t.cancelled)() {
            std::thread::sleep(Duration::from_millis(5));
        }
        stopped_tx.send(()).unwrap();
        Err("stopped".into())
    }));
    let queued = pending(cache.start(&key(2), A, never));
    let waiter = std::thread::spawn(move || running.wait(&Unbounded).unwrap());
    poll("the first to run", || cache.snapshot().queued.len() == 1);
    cache.shutdown();
    let err = waiter.join().unwrap().unwrap_err();
    assert!(matches!(*err, CacheError::ShuttingDown), "{err}");
    let err = queued.wait(&Unbounded).unwrap().unwrap_err();
    assert!(matches!(*err, CacheError::ShuttingDown), "{err}");
    stopped
        .recv_timeout(Duration::from_secs(10))
        .expect("the fetch was told to stop");
    let err = get(&cache, &key(3), A, never).unwrap_err();
    assert!(matches!(*err, CacheError::ShuttingDown), "{err}");
}

/// An index damaged on disk (one byte changed) is found at load, by its checksum: the
/// version is fetched again instead of served.
#[test]
fn a_damaged_index_on_disk_is_fetched_again() {
    let dir = TempDir::new().unwrap();
    {
        let cache = Cache::open(dir.path(), 10 << 20).unwrap();
        load(&cache, &key(1), 1).unwrap();
    }
    let path = dir
        .path()
        .join("versions")
        .join(key(1).dir_name())
        .join("index.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let cache = Cache::open(dir.path(), 10 << 20).unwrap();
    let fetched = Arc::new(AtomicUsize::new(0));
    let f = fetched.clone();
    let bytes = targz(4, 25 * 1024, 1);
    let v = get(&cache, &key(1), A, move |t| {
        f.fetch_add(1, Ordering::SeqCst);
        unpack_bytes(&bytes, t)
    })
    .unwrap();
    assert_eq!(fetched.load(Ordering::SeqCst), 1);
    assert_eq!(v.index.tree().unwrap().check(), Ok(()));
    assert_within_budget(&cache);
}

/// What the API announces when its version object lacks `size` and `file_count`.
const UNKNOWN: Announced = Announced {
    size: None,
    file_count: None,
};

#[test]
fn a_version_of_unknown_size_is_unpacked_within_the_room_and_charged_its_real_usage() {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open(dir.path(), 10 << 20).unwrap();
    let seen = Arc::new(Mutex::new(0));
    let limit = seen.clone();
    let bytes = targz(4, 25 * 1024, 2);
    let v = get(&cache, &key(2), UNKNOWN, move |t| {
        *limit.lock() = t.max_bytes;
        unpack_bytes(&bytes, t)
    })
    .unwrap();
    // The limit was the whole budget, less the index's share of it.
    assert_eq!(*seen.lock(), (10 << 20) - (10 << 20) / 16);
    // Charged what it takes, not the reservation.
    let (_, used) = cache.usage();
    assert_eq!(used, v.disk_bytes);
    assert!(used < 1 << 20, "{used}");
    assert_eq!(resident(&cache), vec![key(2)]);
    assert_within_budget(&cache);
}

#[test]
fn a_version_of_unknown_size_larger_than_the_room_is_stopped_at_it() {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open(dir.path(), 50 * KIB).unwrap();
    let bytes = targz(8, 64 * 1024, 9); // 512 KiB real
    let err = get(&cache, &key(1), UNKNOWN, move |t| unpack_bytes(&bytes, t)).unwrap_err();
    assert!(
        format!("{err:?}").contains("TooLarge")
            && err
                .to_string()
                .contains(&ByteSize(50 * KIB - 50 * KIB / 16).to_string()),
        "{err:?}"
    );
    assert_eq!(cache.usage().1, 0, "the reservation was given back");
    assert_eq!(
        std::fs::read_dir(cache.root().join("tmp")).unwrap().count(),
        0
    );
}

#[test]
fn a_version_of_unknown_size_waits_for_room_held_by_an_open_version_not_past_it() {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open(dir.path(), 10 << 20).unwrap();
    // Held open: it cannot be evicted, and the new version gets the rest of the budget.
    let held = load(&cache, &key(1), 1).unwrap();
    let seen = Arc::new(Mutex::new(0));
    let limit = seen.clone();
    let bytes = targz(4, 25 * 1024, 2);
    drop(
        get(&cache, &key(2), UNKNOWN, move |t| {
            *limit.lock() = t.max_bytes;
            unpack_bytes(&bytes, t)
        })
        .unwrap(),
    );
    let room = (10 << 20) - held.disk_bytes;
    assert_eq!(*seen.lock(), room - room / 16);
    assert_within_budget(&cache);
}

/// A content file kept open serves its reads, but not once it has lost its name: the
/// cache is what its directory holds, not what the daemon still has open.
#[test]
fn a_content_file_kept_open_is_given_up_once_deleted_or_replaced() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pack");
    std::fs::write(&path, b"first").unwrap();
    let files = ContentFiles::default();
    let a = files.open(&path).unwrap();
    assert!(Arc::ptr_eq(&a, &files.open(&path).unwrap()), "kept open");
    // Its direct opening is the same file (where the file system has direct I/O).
    if let Some(direct) = a.direct() {
        use std::os::unix::fs::MetadataExt;
        let (d, f) = (direct.metadata().unwrap(), a.file.metadata().unwrap());
        assert_eq!((d.dev(), d.ino()), (f.dev(), f.ino()));
    }
    std::fs::remove_file(&path).unwrap();
    assert!(
        files.open(&path).is_err(),
        "deleted: not served from the open file"
    );
    std::fs::write(&path, b"second").unwrap();
    let mut text = String::new();
    (&*files.open(&path).unwrap().file)
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "second", "replaced: the file the name holds now");
}

/// However many versions keep files open, all of them together keep at most
/// `OPEN_FILES_ALL`; a file beyond is still opened for its read. (Each test runs in a
/// process of its own, so the count is this test's.)
#[test]
fn kept_content_files_are_bounded_across_versions() {
    let dir = tempfile::tempdir().unwrap();
    let versions: Vec<ContentFiles> = (0..OPEN_FILES_ALL / OPEN_FILES + 2)
        .map(|_| ContentFiles::default())
        .collect();
    for (v, files) in versions.iter().enumerate() {
        for n in 0..OPEN_FILES + 1 {
            let path = dir.path().join(format!("{v}-{n}"));
            std::fs::write(&path, b"x").unwrap();
            assert!(files.open(&path).is_ok(), "{path:?} opened");
        }
    }
    let kept = KEPT_OPEN.load(Ordering::Relaxed);
    assert_eq!(kept, OPEN_FILES_ALL, "kept: {kept}");
    drop(versions);
    assert_eq!(KEPT_OPEN.load(Ordering::Relaxed), 0);
}
