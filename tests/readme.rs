//! The README's "30-second tour", run as written against a real mount of the emulator's
//! demo data, so that the README cannot drift from what vm0fs does.
//!
//! The tour's code block is read from README.md at test time. Its placeholders become real
//! values: `MOUNT` the mount point, `<first 8 hex of an id>` a prefix of a real version id
//! of the storage the line names, and `out/` a temporary directory. Each line runs with
//! bash and must exit 0; a few lines also have their promise checked (the comment next to
//! them says what they do).

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::{Emulator, Mount};

const README: &str = include_str!("../README.md");
const TOUR_HEADING: &str = "## A 30-second tour";
const PREFIX_PLACEHOLDER: &str = "<first 8 hex of an id>";

/// The lines of the first code block after the tour's heading, without comments.
fn tour_commands(readme: &str) -> Vec<String> {
    let after = readme
        .split_once(TOUR_HEADING)
        .unwrap_or_else(|| panic!("README.md has no {TOUR_HEADING:?} section"))
        .1;
    let mut lines = after.lines();
    for line in lines.by_ref() {
        if line.starts_with("```") {
            break;
        }
        assert!(
            !line.starts_with('#'),
            "the tour's code block must come before the next heading ({line:?})"
        );
    }
    let mut commands = Vec::new();
    for line in lines {
        if line.starts_with("```") {
            return commands;
        }
        let command = strip_comment(line).trim();
        if !command.is_empty() {
            commands.push(command.to_string());
        }
    }
    panic!("the tour's code block in README.md is not closed");
}

/// A line without its shell comment: from the first `#` that starts a word, as bash reads it.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

/// A real unique prefix for the placeholder in `command`: the first 8 characters of a
/// version id listed in the storage directory written just before the placeholder.
fn real_prefix(command: &str, mount: &Path) -> String {
    let (before, _) = command
        .split_once(PREFIX_PLACEHOLDER)
        .expect("the placeholder is there");
    let dir_in_tour = before
        .rsplit(' ')
        .next()
        .expect("a path precedes the placeholder");
    let dir = dir_in_tour.replacen("MOUNT", &mount.display().to_string(), 1);
    let ids: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {dir} (from the tour's {dir_in_tour:?}): {e}"))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    let id = ids
        .first()
        .unwrap_or_else(|| panic!("{dir} lists no version ids"));
    let prefix = id[..8].to_string();
    assert_eq!(
        ids.iter().filter(|i| i.starts_with(&prefix)).count(),
        1,
        "the prefix {prefix} is not unique"
    );
    prefix
}

struct Ran {
    stdout: String,
    stderr: String,
}

/// Run one tour line with bash in `cwd`; it must exit 0.
fn run_line(line: &str, cwd: &Path) -> Ran {
    let out = Command::new("bash")
        .arg("-c")
        .arg(line)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash: {e}"));
    let ran = Ran {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        out.status.success(),
        "README tour line failed ({}):\n  {line}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        ran.stdout,
        ran.stderr
    );
    ran
}

/// Inode number and mtime of every file below `dir`: a file that rsync transfers again is
/// written to a new inode.
fn files_and_inodes(dir: &Path) -> BTreeMap<String, (u64, i64, i64)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u64, i64, i64)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            out.insert(rel, (m.ino(), m.mtime(), m.mtime_nsec()));
            if m.is_dir() {
                walk(root, &e.path(), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn the_tour_in_the_readme_runs_as_written() {
    let commands = tour_commands(README);
    assert!(
        commands.len() >= 5,
        "the tour looks truncated: {commands:#?}"
    );

    let emu = Emulator::demo();
    let m = Mount::new(&emu);
    let mount = m.path().to_path_buf();
    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("out");

    let mut rsync_runs = 0;
    for command in &commands {
        let mut line = command.clone();
        if line.contains(PREFIX_PLACEHOLDER) {
            let prefix = real_prefix(&line, &mount);
            line = line.replace(PREFIX_PLACEHOLDER, &prefix);
        }
        line = line.replace("MOUNT", &mount.display().to_string());
        line = line
            .split(' ')
            .map(|w| {
                if w == "out/" {
                    format!("{}/", out_dir.display())
                } else {
                    w.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            !line.contains('<') && !line.contains('>'),
            "a placeholder was left in {command:?}: {line}"
        );

        let ran = run_line(&line, work.path());
        let program = line.split_whitespace().next().unwrap_or_default();
        let context = format!(
            "{command}\nstdout:\n{}\nstderr:\n{}",
            ran.stdout, ran.stderr
        );
        match program {
            "rsync" => {
                rsync_runs += 1;
                assert!(
                    out_dir.is_dir(),
                    "rsync made no {}: {context}",
                    out_dir.display()
                );
                // "a second run transfers nothing": no file rewritten, nothing itemized.
                let before = files_and_inodes(&out_dir);
                assert!(!before.is_empty(), "rsync copied nothing: {context}");
                let again = run_line(
                    &line.replacen("rsync ", "rsync --itemize-changes ", 1),
                    work.path(),
                );
                assert_eq!(
                    again.stdout.trim(),
                    "",
                    "the second rsync changed something:\n{context}"
                );
                assert_eq!(
                    files_and_inodes(&out_dir),
                    before,
                    "the second rsync rewrote files: {context}"
                );
            }
            "getfattr" => {
                let current = emu.current_version("artifacts", "agent-report");
                assert!(
                    ran.stdout
                        .contains(&format!("user.vm0.version_id=\"{current}\"")),
                    "getfattr does not show the version id: {context}"
                );
            }
            "cat" if command.contains("/.vm0fs/status") => {
                let cache = m.cache.display().to_string();
                let cached = emu.current_version("artifacts", "agent-report");
                assert!(
                    ran.stdout.contains(&cache),
                    "the status does not name the cache directory: {context}"
                );
                assert!(
                    ran.stdout.contains(&cached),
                    "the status does not list the version read above: {context}"
                );
            }
            "cat" => {
                assert!(
                    ran.stdout.contains("# Onboarding report"),
                    "cat did not print the report: {context}"
                );
            }
            "ls" if command.contains("ls -l ") => {
                let current = emu.current_version("artifacts", "agent-report");
                assert!(
                    ran.stdout.contains(&format!("latest -> {current}")),
                    "no latest link: {context}"
                );
            }
            _ => {
                assert!(!ran.stdout.trim().is_empty(), "printed nothing: {context}");
            }
        }
    }
    assert_eq!(rsync_runs, 1, "the tour copies out with rsync once");
    // The copy is the version as the mount shows it.
    let report = std::fs::read(out_dir.join("report.md")).expect("out/report.md");
    assert_eq!(
        report,
        std::fs::read(mount.join("artifacts/agent-report/latest/report.md")).unwrap()
    );
}

#[test]
fn comments_are_stripped_as_bash_reads_them() {
    let cases = [
        (
            "ls MOUNT/artifacts      # every artifact",
            "ls MOUNT/artifacts      ",
        ),
        ("cat a#b", "cat a#b"),
        ("# only a comment", ""),
        ("ls x\t# tab", "ls x\t"),
    ];
    for (line, want) in cases {
        assert_eq!(strip_comment(line), want, "{line:?}");
    }
}
