//! The status file, `MOUNT/.vm0fs/status`: what the mount is doing (whether the API
//! answers, from [`Activity`]; how old the listings and the followed live runs it serves
//! are, from their rooms ([`Held`]); downloads in flight with their progress, how long they have
//! run and whether they are stalled, from the fetch room's [`Downloads`]; the ones queued
//! for a place in the download pool and the versions cached, from the cache's snapshot; the
//! errors since start), rendered into a text, and the text each reader is shown
//! ([`StatusTexts`]).

use std::collections::HashMap;
use std::fmt::Write;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::activity::Activity;
use crate::api::Kind;
use crate::cache::{Snapshot, VersionKey};
use crate::dates::format_time;
use crate::fetch::{Downloads, STALL_AFTER};
use crate::metadata::Age;
use crate::runs::Followed;
use crate::size::ByteSize;

use super::Fs;

/// The name of the hidden directory that holds the status file.
pub const STATUS_DIR: &str = ".vm0fs";

/// The status file's name in [`STATUS_DIR`].
pub const STATUS_FILE: &str = "status";

/// How old what the mount answers without asking the API is.
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// Each listing, by the name the status file gives it, and its age.
    pub listings: Vec<(&'static str, Age)>,
    /// The live runs followed (when `runs/` is shown).
    pub followed: Option<Followed>,
}

/// A duration as the status file gives ages: in seconds below two minutes, then in
/// minutes, hours, days (rounded down).
pub fn age_text(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s} s"),
        120..7_200 => format!("{} min", s / 60),
        7_200..172_800 => format!("{} h", s / 3_600),
        _ => format!("{} d", s / 86_400),
    }
}

/// `listings: ...` (each listing's age: since the API last confirmed it) and, when runs are
/// shown, `live runs followed: ...` (how many, and the age of the least recently refreshed).
pub fn held_lines(held: &Held) -> String {
    let listings: Vec<String> = held
        .listings
        .iter()
        .map(|(name, age)| match age {
            Age::Confirmed(d) => format!("{name} {} old", age_text(*d)),
            Age::Saved => format!("{name} saved by an earlier mount, not confirmed yet"),
            Age::Failed => format!("{name} none held (its fetch failed)"),
            Age::Never => format!("{name} never fetched"),
        })
        .collect();
    let mut s = format!("listings: {}", listings.join(", "));
    match held.followed {
        None => {}
        Some(Followed { count: 0, .. }) => s.push_str(
            "
live runs followed: none",
        ),
        Some(Followed { count, oldest }) => {
            let _ = write!(
                s,
                "
live runs followed: {count}"
            );
            if let Some(oldest) = oldest {
                let _ = write!(s, ", the least recently refreshed {} ago", age_text(oldest));
            }
        }
    }
    s
}

/// The text of the status file.
pub fn render(
    header: &str,
    activity: &Activity,
    held: &Held,
    downloads: &Downloads,
    cache: &Snapshot,
    root: &str,
    name_of: impl Fn(&VersionKey) -> Option<String>,
) -> String {
    let mut s = String::new();
    let pct = |a: u64, b: u64| {
        if b == 0 {
            0.0
        } else {
            a as f64 * 100.0 / b as f64
        }
    };
    let _ = writeln!(s, "{header}");
    let _ = writeln!(s, "{}", activity.api_lines());
    let _ = writeln!(s, "{}", held_lines(held));
    let _ = writeln!(
        s,
        "cache: {root}: {} used of {} ({:.1}%), {} versions",
        ByteSize(cache.used),
        ByteSize(cache.budget),
        pct(cache.used, cache.budget),
        cache.resident.len()
    );
    let _ = writeln!(
        s,
        "damaged versions: {} (found damaged on disk, dropped, downloaded again at the next access)",
        cache.damaged
    );
    let _ = writeln!(s, "\ncached versions (most recently used first):");
    if cache.resident.is_empty() {
        let _ = writeln!(s, "  (none)");
    }
    for r in cache.resident.iter().rev() {
        let _ = writeln!(
            s,
            "  {:<8} {:<24} {}  {:>10}  last used {}{}",
            r.key.kind.singular(),
            name_of(&r.key).unwrap_or_else(|| "-".into()),
            r.key.id,
            ByteSize(r.disk_bytes).to_string(),
            format_time(r.last_used),
            if r.pinned { "  [in use]" } else { "" }
        );
    }
    let _ = writeln!(s, "\ndownloads in flight:");
    let downloads = downloads.list();
    if downloads.is_empty() && cache.queued.is_empty() {
        let _ = writeln!(s, "  (none)");
    }
    for (key, p) in downloads {
        let elapsed = p.meter.started.elapsed();
        let secs = elapsed.as_secs_f64().max(1e-3);
        let idle = p.meter.idle();
        let _ = writeln!(
            s,
            "  {:<8} {:<24} {}  {:.0}%  {} of {}, {} files, {}/s, running for {} s{}",
            key.kind.singular(),
            p.storage,
            key.id,
            pct(p.bytes, p.size).min(100.0),
            ByteSize(p.bytes),
            ByteSize(p.size),
            p.files,
            ByteSize((p.bytes as f64 / secs) as u64),
            elapsed.as_secs(),
            if idle >= STALL_AFTER {
                format!(", stalled for {} s", idle.as_secs())
            } else {
                String::new()
            }
        );
    }
    for (key, waited) in &cache.queued {
        let _ = writeln!(
            s,
            "  {:<8} {:<24} {}  queued for {} s (at most {} downloads run at once)",
            key.kind.singular(),
            name_of(key).unwrap_or_else(|| "-".into()),
            key.id,
            waited.as_secs(),
            cache.downloads
        );
    }
    let (count, recent) = activity.errors();
    let _ = writeln!(s, "\nerrors since start: {count}");
    for (when, msg) in &recent {
        let _ = writeln!(s, "  {}  {msg}", format_time(*when));
    }
    s
}

/// How long one reader (a pid) is shown the same status text. Without `OPEN`, the file has
/// no handle to hold a copy: the kernel learns the size at a `LOOKUP` or `GETATTR` and then
/// reads pages, asking for the attributes again before each `read(2)`. So that the size it
/// learnt and the bytes it reads come from one text (a `cat` never prints the start of one
/// and the end of another), each reader keeps its text this long.
const STATUS_HOLD: Duration = Duration::from_secs(1);

/// How many readers' status texts are kept (a reader beyond them gets a fresh text).
const STATUS_READERS: NonZeroUsize = NonZeroUsize::new(64).expect("not zero");

/// One status text, as shown to one reader.
#[derive(Clone)]
pub struct StatusText {
    pub text: Arc<Vec<u8>>,
    made: Instant,
    /// Its mtime: the kernel drops cached pages of the file when this changes.
    pub at: SystemTime,
}

/// The status text each recent reader was shown, see [`STATUS_HOLD`].
pub struct StatusTexts {
    by_reader: Mutex<lru::LruCache<u32, StatusText>>,
}

impl Default for StatusTexts {
    fn default() -> Self {
        StatusTexts {
            by_reader: Mutex::new(lru::LruCache::new(STATUS_READERS)),
        }
    }
}

impl StatusTexts {
    /// The text `reader` is shown: the one made for it less than [`STATUS_HOLD`] ago, else
    /// a new one from `render` (which it keeps). Without a reader, always a new one.
    pub fn for_reader(&self, reader: Option<u32>, render: impl FnOnce() -> String) -> StatusText {
        if let Some(pid) = reader {
            if let Some(t) = self.by_reader.lock().get(&pid) {
                if t.made.elapsed() < STATUS_HOLD {
                    return t.clone();
                }
            }
        }
        // Rendered without the lock: it takes the cache's and the inode table's.
        let t = StatusText {
            text: Arc::new(render().into_bytes()),
            made: Instant::now(),
            at: SystemTime::now(),
        };
        if let Some(pid) = reader {
            self.by_reader.lock().put(pid, t.clone());
        }
        t
    }
}

impl Fs {
    /// The text of `MOUNT/.vm0fs/status`.
    pub fn status_text(&self) -> String {
        let snap = self.cache.snapshot();
        let root = match self.cache.lost() {
            Some(why) => format!("{} (NO LONGER THIS MOUNT'S: {why}; nothing is served from it: unmount and mount again)", self.cache.root().display()),
            None => self.cache.root().display().to_string(),
        };
        // The names of the versions shown, looked up first: the inode table is not held
        // while the text is rendered.
        let names: HashMap<&VersionKey, String> = {
            let inodes = self.inodes.lock();
            snap.resident
                .iter()
                .map(|r| &r.key)
                .chain(snap.queued.iter().map(|(k, _)| k))
                .filter_map(|key| {
                    let name = inodes.storage_of(key.kind, &key.id)?;
                    Some((key, name.to_string()))
                })
                .collect()
        };
        render(
            &self.config.label,
            &self.activity,
            &self.held(),
            &self.downloads,
            &snap,
            &root,
            |k| names.get(k).cloned(),
        )
    }

    /// How old the listings held and the followed live runs are.
    fn held(&self) -> Held {
        let mut listings = vec![
            ("volumes", self.storages.age(&Kind::Volume)),
            ("artifacts", self.storages.age(&Kind::Artifact)),
        ];
        let followed = self.runs.as_ref().map(|runs| {
            listings.push(("runs", runs.lists.age(&None)));
            listings.push(("agents", runs.agents.age(&())));
            runs.state.followed_ages()
        });
        Held { listings, followed }
    }

    /// The status text `reader` is shown (see [`STATUS_HOLD`]).
    pub(super) fn status_for(&self, reader: Option<u32>) -> StatusText {
        self.status.for_reader(reader, || self.status_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ResidentInfo;
    use crate::ids::VersionId;

    #[test]
    fn renders_cache_downloads_and_errors() {
        let a = Activity::default();
        let d = Downloads::default();
        let key = VersionKey::new(Kind::Artifact, &VersionId::parse(&"ab".repeat(32)).unwrap());
        d.start(&key, "agent-report", 1000);
        d.update(&key, 500, 3);
        for i in 0..12 {
            a.error(format!("failure {i}"));
        }
        let snap = Snapshot {
            budget: 1 << 30,
            used: 1 << 20,
            resident: vec![ResidentInfo {
                key: VersionKey::new(Kind::Volume, &VersionId::parse(&"cd".repeat(32)).unwrap()),
                disk_bytes: 1 << 20,
                pinned: true,
                last_used: SystemTime::UNIX_EPOCH,
            }],
            in_flight: vec![],
            queued: vec![(
                VersionKey::new(Kind::Volume, &VersionId::parse(&"ef".repeat(32)).unwrap()),
                Duration::from_secs(3),
            )],
            downloads: 4,
            damaged: 2,
        };
        let text = render(
            "vm0fs test",
            &a,
            &Held::default(),
            &d,
            &snap,
            "/cache",
            |k| (k.kind == Kind::Volume).then(|| "input-data".into()),
        );
        assert!(
            text.contains(&format!("{}  queued for 3 s", "ef".repeat(32))),
            "{text}"
        );
        assert!(text.contains("1.0 MiB used of 1.0 GiB"), "{text}");
        assert!(
            text.contains("input-data")
                && text.contains(&"cd".repeat(32))
                && text.contains("[in use]"),
            "{text}"
        );
        assert!(
            text.contains("agent-report") && text.contains("50%"),
            "{text}"
        );
        assert!(text.contains("errors since start: 12"), "{text}");
        assert!(text.contains("damaged versions: 2 "), "{text}");
        assert!(
            !text.contains("failure 1\n") && text.contains("failure 11"),
            "only the last 10: {text}"
        );
        d.finish(&key);
        assert!(!render("", &a, &Held::default(), &d, &snap, "", |_| None).contains("agent-report"));
    }

    #[test]
    fn ages_read_in_seconds_then_minutes_hours_days() {
        let cases = [
            (0, "0 s"),
            (4, "4 s"),
            (119, "119 s"),
            (120, "2 min"),
            (7_199, "119 min"),
            (7_200, "2 h"),
            (172_799, "47 h"),
            (172_800, "2 d"),
        ];
        for (secs, text) in cases {
            assert_eq!(age_text(Duration::from_secs(secs)), text, "{secs}");
        }
    }

    #[test]
    fn the_held_lines_give_each_listing_and_the_followed_runs_their_age() {
        let held = Held {
            listings: vec![
                ("volumes", Age::Confirmed(Duration::from_millis(4_900))),
                ("artifacts", Age::Confirmed(Duration::from_secs(150))),
                ("runs", Age::Saved),
                ("agents", Age::Never),
                ("more", Age::Failed),
            ],
            followed: Some(Followed {
                count: 3,
                oldest: Some(Duration::from_secs(12)),
            }),
        };
        assert_eq!(
            held_lines(&held),
            "listings: volumes 4 s old, artifacts 2 min old, runs saved by an earlier mount, \
             not confirmed yet, agents never fetched, more none held (its fetch failed)\n\
             live runs followed: 3, the least recently refreshed 12 s ago"
        );
        let none = Held {
            listings: vec![("volumes", Age::Never)],
            followed: Some(Followed::default()),
        };
        assert_eq!(
            held_lines(&none),
            "listings: volumes never fetched\nlive runs followed: none"
        );
        let no_runs = Held {
            listings: vec![("volumes", Age::Confirmed(Duration::ZERO))],
            followed: None,
        };
        assert_eq!(held_lines(&no_runs), "listings: volumes 0 s old");
        // In the status file, right after the API's lines.
        let text = render(
            "vm0fs test",
            &Activity::default(),
            &held,
            &Downloads::default(),
            &Snapshot {
                budget: 1 << 30,
                used: 0,
                resident: vec![],
                in_flight: vec![],
                queued: vec![],
                downloads: 4,
                damaged: 0,
            },
            "/cache",
            |_| None,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "api: not asked yet", "{text}");
        assert!(lines[2].starts_with("listings: volumes 4 s old"), "{text}");
        assert!(lines[3].starts_with("live runs followed: 3"), "{text}");
    }

    #[test]
    fn a_reader_keeps_its_text_for_a_moment_and_others_get_a_new_one() {
        let texts = StatusTexts::default();
        let renders = std::cell::Cell::new(0);
        let render = || {
            renders.set(renders.get() + 1);
            format!("text {}", renders.get())
        };
        let text = |t: StatusText| String::from_utf8(t.text.to_vec()).unwrap();
        assert_eq!(text(texts.for_reader(Some(7), render)), "text 1");
        assert_eq!(text(texts.for_reader(Some(7), render)), "text 1", "kept");
        assert_eq!(
            text(texts.for_reader(Some(8), render)),
            "text 2",
            "another reader"
        );
        assert_eq!(text(texts.for_reader(None, render)), "text 3", "no reader");
        assert_eq!(text(texts.for_reader(None, render)), "text 4");
        assert_eq!(text(texts.for_reader(Some(7), render)), "text 1");
    }
}
