//! The built-in demo data set (`--demo`): a few small, realistic volumes and artifacts,
//! written as an ordinary data directory and then loaded like any other, so the demo
//! exercises the same code path as the tests' data directories.
//!
//! - volume `input-data`: 3 versions (README, CSVs, nested `docs/guide/intro.md`, a
//!   symlink, an executable script, names with a space and with non-ASCII characters);
//!   the current version is the newest.
//! - volume `prompts`: 2 versions.
//! - artifact `agent-report`: 3 versions written by an agent (report, JSON results, a log).
//! - artifact `empty-run`: a single version with no files.
//!
//! Then, through the same calls the admin endpoints use (`add_agents_and_runs`):
//! - agents `onboarding-analyst` (3 versions) and `report-writer` (2 versions);
//! - six finished runs (completed, failed, timeout, cancelled) whose `artifact_version` and
//!   `volumes` name versions of the storages above, so every link resolves; the oldest
//!   dates from the data set's base time, outside a "last 7 days" listing;
//! - one live run of `report-writer` that logs a line a second for five minutes and then
//!   completes, committing the first version of a new artifact `live-report`.
//!
//! Run ids are fixed (derived from names), so a demo script can name them.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::lifecycle::{self, AgentSpec, AgentVersionSpec, RunSpec};
use crate::model::{uuid_from_seed, Kind, BASE_TIME_MS, DAY_MS, MINUTE_MS};
use crate::runs::Outcome;
use crate::Shared;

/// A file of the demo: path in the version, content, executable or not.
type DemoFile = (&'static str, &'static str, bool);

const README_V1: &str = "# Input data\n\nCustomer records used by the onboarding agent.\n";
const README_V2: &str = "# Input data\n\nCustomer records used by the onboarding agent.\n\
See `docs/guide/intro.md` for how the files are laid out.\n";
const CUSTOMERS_V1: &str = "id,name,country,signup\n1,Ada Lovelace,GB,2025-11-02\n\
2,Grace Hopper,US,2025-11-15\n3,Alan Turing,GB,2025-12-01\n";
const CUSTOMERS_V2: &str = "id,name,country,signup\n1,Ada Lovelace,GB,2025-11-02\n\
2,Grace Hopper,US,2025-11-15\n3,Alan Turing,GB,2025-12-01\n4,Katherine Johnson,US,2026-01-08\n\
5,Margaret Hamilton,US,2026-01-12\n";
const ORDERS: &str = "order_id,customer_id,amount_eur\n1001,1,120.00\n1002,2,75.50\n\
1003,4,310.25\n1004,5,42.00\n";
const INTRO: &str = "# Guide\n\n`data/customers.csv` has one row per customer; \
`data/orders.csv` one row per order.\nAmounts are in euros.\n";
const NOTES: &str = "Notes from the kickoff call:\n- keep the CSVs UTF-8\n- one file per table\n";
const UNICODE: &str = "Données de référence — ne pas modifier à la main.\n";
const PREPARE: &str =
    "#!/bin/sh\n# Recomputes the summary columns.\nset -eu\necho \"preparing $1\"\n";

const SYSTEM_V1: &str = "You are a careful analyst. Answer in English.\n";
const SYSTEM_V2: &str = "You are a careful analyst. Answer in English, cite the file you used.\n";
const EXAMPLE: &str =
    "Q: How many customers signed up in January?\nA: Two (rows 4 and 5 of data/customers.csv).\n";

const REPORT_V1: &str = "# Onboarding report\n\nStatus: in progress.\n";
const REPORT_V2: &str = "# Onboarding report\n\nStatus: analysis done, 5 customers, 4 orders.\n";
const REPORT_V3: &str = "# Onboarding report\n\nStatus: done.\n\n- 5 customers, 4 orders\n\
- revenue: 547.75 EUR\n- see `output/results.json`\n";
const RESULTS_V2: &str = "{\n  \"customers\": 5,\n  \"orders\": 4\n}\n";
const RESULTS_V3: &str = "{\n  \"customers\": 5,\n  \"orders\": 4,\n  \"revenue_eur\": 547.75\n}\n";
const RUN_LOG: &str = "2026-01-20T12:00:01Z INFO run started\n\
2026-01-20T12:00:03Z INFO read data/customers.csv (5 rows)\n\
2026-01-20T12:00:04Z INFO read data/orders.csv (4 rows)\n\
2026-01-20T12:00:09Z INFO wrote output/results.json\n2026-01-20T12:00:09Z INFO run completed\n";

/// A version of the demo: label, files, symlinks (path, target), sidecar JSON.
struct DemoVersion {
    label: &'static str,
    files: &'static [DemoFile],
    symlinks: &'static [(&'static str, &'static str)],
    sidecar: &'static str,
}

const INPUT_DATA: &[DemoVersion] = &[
    DemoVersion {
        label: "v1",
        files: &[
            ("README.md", README_V1, false),
            ("data/customers.csv", CUSTOMERS_V1, false),
        ],
        symlinks: &[],
        sidecar: r#"{"message":"Initial customer list","created_by":"user"}"#,
    },
    DemoVersion {
        label: "v2",
        files: &[
            ("README.md", README_V2, false),
            ("data/customers.csv", CUSTOMERS_V2, false),
            ("docs/guide/intro.md", INTRO, false),
            ("notes from kickoff.txt", NOTES, false),
        ],
        symlinks: &[],
        sidecar: r#"{"message":"Add January sign-ups and a guide","created_by":"user"}"#,
    },
    DemoVersion {
        label: "v3",
        files: &[
            ("README.md", README_V2, false),
            ("data/customers.csv", CUSTOMERS_V2, false),
            ("data/orders.csv", ORDERS, false),
            ("docs/guide/intro.md", INTRO, false),
            ("notes from kickoff.txt", NOTES, false),
            ("données-référence.txt", UNICODE, false),
            ("scripts/prepare.sh", PREPARE, true),
        ],
        symlinks: &[("latest.csv", "data/orders.csv")],
        sidecar: r#"{"message":"Add orders","created_by":"agent"}"#,
    },
];

const PROMPTS: &[DemoVersion] = &[
    DemoVersion {
        label: "v1",
        files: &[("system.md", SYSTEM_V1, false)],
        symlinks: &[],
        sidecar: r#"{"message":null,"created_by":"user"}"#,
    },
    DemoVersion {
        label: "v2",
        files: &[
            ("system.md", SYSTEM_V2, false),
            ("few-shot/example-1.md", EXAMPLE, false),
        ],
        symlinks: &[],
        sidecar: r#"{"message":"Ask for citations","created_by":"user"}"#,
    },
];

const AGENT_REPORT: &[DemoVersion] = &[
    DemoVersion {
        label: "v1",
        files: &[("report.md", REPORT_V1, false)],
        symlinks: &[],
        sidecar: r#"{"message":"Run 1: started","created_by":"agent"}"#,
    },
    DemoVersion {
        label: "v2",
        files: &[
            ("report.md", REPORT_V2, false),
            ("output/results.json", RESULTS_V2, false),
        ],
        symlinks: &[],
        sidecar: r#"{"message":"Run 1: analysis","created_by":"agent"}"#,
    },
    DemoVersion {
        label: "v3",
        files: &[
            ("report.md", REPORT_V3, false),
            ("output/results.json", RESULTS_V3, false),
            ("logs/run.log", RUN_LOG, false),
        ],
        symlinks: &[],
        sidecar: r#"{"message":"Run 1: completed","created_by":"agent"}"#,
    },
];

const EMPTY_RUN: &[DemoVersion] = &[DemoVersion {
    label: "v1",
    files: &[],
    symlinks: &[],
    sidecar: r#"{"message":"Run 2: failed before writing output","created_by":"agent"}"#,
}];

/// Fixed mtimes (the base time of the data set, 2026-01-20T10:00:00Z) so the demo's
/// archives are the same bytes on every run.
const MTIME_SECS: i64 = 1_768_903_200;

/// Sets the mtime of a symlink itself (std can only set it through the link).
fn set_symlink_mtime(link: &Path, secs: i64) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(link.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
    let time = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let times = [time, time];
    // SAFETY: `path` is a NUL-terminated string and `times` two valid timespecs, both
    // alive for the duration of the call.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes the demo data set as a data directory at `dir` (replacing an earlier one).
pub fn write(dir: &Path) -> io::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    let storages: [(&str, &str, &[DemoVersion]); 4] = [
        ("volumes", "input-data", INPUT_DATA),
        ("volumes", "prompts", PROMPTS),
        ("artifacts", "agent-report", AGENT_REPORT),
        ("artifacts", "empty-run", EMPTY_RUN),
    ];
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(MTIME_SECS as u64);
    for (kind, name, versions) in storages {
        let storage_dir = dir.join(kind).join(name);
        for version in versions {
            let root = storage_dir.join(version.label);
            fs::create_dir_all(&root)?;
            for (path, content, executable) in version.files {
                let file = root.join(path);
                fs::create_dir_all(file.parent().expect("a file path has a parent"))?;
                fs::write(&file, content)?;
                let mode = if *executable { 0o755 } else { 0o644 };
                fs::set_permissions(&file, fs::Permissions::from_mode(mode))?;
                fs::File::options()
                    .write(true)
                    .open(&file)?
                    .set_modified(mtime)?;
            }
            for (path, target) in version.symlinks {
                let link = root.join(path);
                std::os::unix::fs::symlink(target, &link)?;
                set_symlink_mtime(&link, MTIME_SECS)?;
            }
            fs::write(
                storage_dir.join(format!("{}.json", version.label)),
                version.sidecar,
            )?;
        }
    }
    Ok(())
}

/// The id of the demo's live run.
pub fn live_run_id() -> String {
    uuid_from_seed("demo/runs/live")
}

const HOUR_MS: i64 = 60 * MINUTE_MS;

/// A finished run of the demo: name (its id's seed), agent, outcome, hours ago (`None`: at
/// the data set's base time), log entries, artifact (name, version index), volumes (name,
/// version index).
type FinishedRun = (
    &'static str,
    &'static str,
    &'static str,
    Outcome,
    Option<i64>,
    u64,
    Option<(&'static str, usize)>,
    &'static [(&'static str, usize)],
);

const FINISHED_RUNS: [FinishedRun; 6] = [
    (
        "first-report",
        "onboarding-analyst",
        "Read the customer list and the orders and write the onboarding report.",
        Outcome::Completed,
        None,
        40,
        Some(("agent-report", 2)),
        &[("input-data", 2), ("prompts", 1)],
    ),
    (
        "analysis",
        "onboarding-analyst",
        "Count the customers who signed up in January.",
        Outcome::Completed,
        Some(48),
        60,
        Some(("agent-report", 1)),
        &[("input-data", 1), ("prompts", 0)],
    ),
    (
        "missing-file",
        "onboarding-analyst",
        "Join the customers with data/missing.csv.",
        Outcome::Failed,
        Some(24),
        25,
        Some(("empty-run", 0)),
        &[("input-data", 2)],
    ),
    (
        "weekly-report",
        "report-writer",
        "Turn output/results.json into a one-page report.",
        Outcome::Completed,
        Some(5),
        120,
        Some(("agent-report", 2)),
        &[("input-data", 2), ("prompts", 1)],
    ),
    (
        "cancelled",
        "report-writer",
        "Rewrite the report in French.",
        Outcome::Cancelled,
        Some(3),
        12,
        None,
        &[("prompts", 1)],
    ),
    (
        "slow-start",
        "onboarding-analyst",
        "Summarize every CSV file, one paragraph each.",
        Outcome::Timeout,
        Some(2),
        30,
        Some(("agent-report", 0)),
        &[("input-data", 0)],
    ),
];

/// Adds the demo's agents and runs (see the module's doc) to a started emulator's data; the
/// storages of [`write`] must be loaded already.
pub(crate) fn add_agents_and_runs(shared: &Shared) -> anyhow::Result<()> {
    let version = |message: &str, days_before: i64| AgentVersionSpec {
        message: Some(message.to_string()),
        created_by: Some("user".to_string()),
        created_at_ms: Some(BASE_TIME_MS - days_before * DAY_MS),
    };
    lifecycle::create_agent(
        shared,
        AgentSpec {
            name: "onboarding-analyst".to_string(),
            description: Some(
                "Reads the customer and order data and writes the onboarding report.".to_string(),
            ),
            versions: vec![
                version("Initial prompt and tools", 10),
                version("Read the orders too", 6),
                version("Cite the file behind every figure", 2),
            ],
        },
    )?;
    lifecycle::create_agent(
        shared,
        AgentSpec {
            name: "report-writer".to_string(),
            description: Some("Turns analysis results into a short report.".to_string()),
            versions: vec![version("First version", 8), version("Shorter reports", 1)],
        },
    )?;

    let version_id = |kind: Kind, name: &str, index: usize| -> anyhow::Result<String> {
        let data = shared.data.read();
        let storage = data
            .get_by_name(kind, name)
            .ok_or_else(|| anyhow::anyhow!("the demo has no {} '{name}'", kind.singular()))?;
        let version = storage
            .versions
            .get(index)
            .ok_or_else(|| anyhow::anyhow!("{name} has no version {index}"))?;
        Ok(version.id.clone())
    };
    let now = crate::model::now_ms();
    for (seed, agent, prompt, outcome, hours_ago, logs, artifact, volumes) in FINISHED_RUNS {
        let mut spec = RunSpec {
            id: Some(uuid_from_seed(&format!("demo/runs/{seed}"))),
            agent: agent.to_string(),
            prompt: Some(prompt.to_string()),
            outcome,
            logs_total: Some(logs),
            // One line every 1.5 s, as an agent that thinks between tool calls.
            log_rate: Some(0.667),
            created_at_ms: Some(match hours_ago {
                Some(hours) => now - hours * HOUR_MS,
                None => BASE_TIME_MS + 2 * DAY_MS,
            }),
            ..RunSpec::default()
        };
        if let Some((name, index)) = artifact {
            spec.artifact_name = Some(name.to_string());
            spec.artifact_version = Some(version_id(Kind::Artifacts, name, index)?);
        }
        for (name, index) in volumes {
            spec.volumes.insert(
                name.to_string(),
                Some(version_id(Kind::Volumes, name, *index)?),
            );
        }
        lifecycle::create_run(shared, spec)?;
    }
    lifecycle::create_run(
        shared,
        RunSpec {
            id: Some(live_run_id()),
            agent: "report-writer".to_string(),
            prompt: Some("Write this week's onboarding report from the latest data.".to_string()),
            log_rate: Some(1.0),
            duration_ms: Some(5 * 60 * 1000),
            pending_ms: Some(2000),
            artifact_name: Some("live-report".to_string()),
            volumes: [("input-data", None), ("prompts", None)]
                .into_iter()
                .map(|(name, version)| (name.to_string(), version))
                .collect(),
            ..RunSpec::default()
        },
    )?;
    Ok(())
}
