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

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

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
