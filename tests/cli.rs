//! The command line as a user meets it: help text and the errors of common mistakes, each
//! naming the cause and the fix.

mod common;

use std::process::Command;

use common::{run, Emulator, Mount};

fn vm0fs(args: &[&str]) -> (bool, String) {
    let out = run(Command::new(common::vm0fs_bin())
        .args(args)
        .env_remove("VM0_TOKEN"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn help_lists_every_flag_with_its_default_and_the_environment() {
    let (ok, text) = vm0fs(&["mount", "--help"]);
    assert!(ok, "{text}");
    for needle in [
        "--api-url",
        "[default: https://api.vm0.ai/v1]",
        "--token-file",
        "--cache-dir",
        "~/.cache/vm0fs",
        "--cache-size",
        "[default: 10G]",
        "--metadata-ttl",
        "[default: 60]",
        "--foreground",
        "--allow-other",
        "/etc/fuse.conf",
        "--allow-root",
        "--threads",
        "--track-opens",
        "--no-passthrough",
        "--log-level",
        "VM0_TOKEN",
        "VM0_API_URL",
        "RUST_LOG",
        "XDG_CACHE_HOME",
    ] {
        assert!(
            text.contains(needle),
            "`vm0fs mount --help` lacks {needle:?}:\n{text}"
        );
    }
    let (ok, text) = vm0fs(&["unmount", "--help"]);
    assert!(ok && text.contains("--lazy"), "{text}");
    let (ok, text) = vm0fs(&["--help"]);
    assert!(
        ok && text.contains("mount") && text.contains("unmount") && text.contains("VM0_TOKEN"),
        "{text}"
    );
}

#[test]
fn common_mistakes_name_the_cause_and_the_fix() {
    let empty = tempfile::tempdir().unwrap();
    let full = tempfile::tempdir().unwrap();
    std::fs::write(full.path().join("x"), b"x").unwrap();
    let e = empty.path().to_str().unwrap();

    let (ok, text) = vm0fs(&["mount", e]);
    assert!(
        !ok && text.contains("VM0_TOKEN") && text.contains("--token-file"),
        "no token: {text}"
    );

    let run_with_token = |args: &[&str]| {
        let out = run(Command::new(common::vm0fs_bin())
            .args(args)
            .env("VM0_TOKEN", "vm0_test_x"));
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let text = run_with_token(&["mount", "/nonexistent/vm0fs"]);
    assert!(
        text.contains("does not exist") && text.contains("mkdir -p"),
        "{text}"
    );
    let text = run_with_token(&["mount", full.path().to_str().unwrap()]);
    assert!(
        text.contains("not empty") && text.contains("empty directory"),
        "{text}"
    );
    let text = run_with_token(&["mount", e, "--cache-size", "lots"]);
    assert!(
        text.contains("invalid size") && text.contains("10G"),
        "{text}"
    );
    let text = run_with_token(&[
        "mount",
        e,
        "--api-url",
        "http://127.0.0.1:9/v1",
        "--foreground",
    ]);
    assert!(
        text.contains("127.0.0.1:9") && text.contains("check --api-url"),
        "unreachable API: {text}"
    );

    let (ok, text) = vm0fs(&["unmount", e]);
    assert!(!ok && text.contains("not mounted"), "{text}");
}

/// `vm0fs ARGS` with a token in the environment (and `extra_env`); success and the output.
fn vm0fs_with_token(args: &[&str], extra_env: &[(&str, &str)]) -> (bool, String) {
    let out = run(Command::new(common::vm0fs_bin())
        .args(args)
        .env("VM0_TOKEN", "vm0_test_x")
        .env_remove("VM0_API_URL")
        .envs(extra_env.iter().copied()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_api_url_in_a_message_is_named_by_where_it_came_from() {
    let empty = tempfile::tempdir().unwrap();
    let e = empty.path().to_str().unwrap();
    let closed = "http://127.0.0.1:9/v1";
    // The error that stops the mount (the log lines before it are the API client's).
    let error_line = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("vm0fs: error:"))
            .unwrap_or_else(|| panic!("no error: {text}"))
            .to_string()
    };
    let (ok, text) = vm0fs_with_token(&["mount", e, "--foreground"], &[("VM0_API_URL", closed)]);
    let error = error_line(&text);
    assert!(!ok && error.contains("(from VM0_API_URL)") && error.contains("check VM0_API_URL"));
    assert!(!error.contains("--api-url"), "{error}");

    let (ok, text) = vm0fs_with_token(
        &["mount", e, "--foreground", "--api-url", closed],
        &[("VM0_API_URL", "http://127.0.0.1:7/v1")],
    );
    let error = error_line(&text);
    assert!(!ok && error.contains("(from --api-url)") && error.contains("check --api-url"));
    assert!(!error.contains("VM0_API_URL"), "{error}");

    for (args, env, source) in [
        (
            vec!["--api-url", "ftp://example/v1"],
            vec![],
            "(from --api-url)",
        ),
        (
            vec![],
            vec![("VM0_API_URL", "not a url")],
            "(from VM0_API_URL)",
        ),
    ] {
        let mut argv = vec!["mount", e, "--fake"];
        argv.extend(args);
        let (ok, text) = vm0fs_with_token(&argv, &env);
        assert!(
            !ok && text.contains(source) && text.contains("https://api.vm0.ai/v1"),
            "{text}"
        );
    }
}

#[test]
fn a_cache_budget_below_the_minimum_is_refused_and_a_negative_one_is_not_a_size() {
    let empty = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (e, c) = (
        empty.path().to_str().unwrap(),
        cache.path().to_str().unwrap(),
    );
    for size in ["0", "1", "1K", "1000000"] {
        let (ok, text) = vm0fs_with_token(
            &["mount", e, "--cache-dir", c, "--cache-size", size, "--fake"],
            &[],
        );
        assert!(
            !ok && text.contains("minimum of 1.0 MiB") && text.contains("10G"),
            "--cache-size {size}: {text}"
        );
    }
    let (ok, text) = vm0fs_with_token(
        &["mount", e, "--cache-dir", c, "--cache-size", "-1", "--fake"],
        &[],
    );
    assert!(
        !ok && text.contains("not a size") && !text.contains("unknown unit"),
        "{text}"
    );
    let (ok, text) = vm0fs_with_token(
        &["mount", e, "--cache-dir", c, "--cache-size", "1M", "--fake"],
        &[],
    );
    assert!(ok, "the minimum itself is accepted: {text}");
}

#[test]
fn token_file_mistakes_name_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let empty = tempfile::tempdir().unwrap();
    let e = empty.path().to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    let t = token.to_str().unwrap();

    std::fs::write(&token, "\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, text) = vm0fs(&["mount", e, "--token-file", t, "--fake"]);
    assert!(
        !ok && text.contains(t) && text.contains("is empty"),
        "{text}"
    );
    assert!(!text.contains("set VM0_TOKEN"), "{text}");

    std::fs::write(&token, "vm0_test_x\n").unwrap();
    let (ok, text) = vm0fs(&["mount", e, "--token-file", t, "--fake"]);
    assert!(ok && !text.contains("warning"), "{text}");

    // Readable by others: accepted, with a warning, as ssh does.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, text) = vm0fs(&["mount", e, "--token-file", t, "--fake"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("warning")
            && text.contains("0644")
            && text.contains(&format!("chmod 600 {t}")),
        "{text}"
    );
}

#[test]
fn unmount_of_a_path_that_does_not_exist_says_so() {
    let (ok, text) = vm0fs(&["unmount", "/nonexistent/vm0fs-mnt"]);
    assert!(
        !ok && text.contains("/nonexistent/vm0fs-mnt does not exist"),
        "{text}"
    );
    assert!(!text.contains("not mounted"), "{text}");
}

#[test]
fn a_bad_log_level_is_reported_once_with_the_levels() {
    let empty = tempfile::tempdir().unwrap();
    let (ok, text) = vm0fs_with_token(
        &[
            "mount",
            empty.path().to_str().unwrap(),
            "--log-level",
            "bogus",
            "--foreground",
        ],
        &[],
    );
    assert!(!ok, "{text}");
    assert_eq!(text.matches("bogus").count(), 1, "{text}");
    assert!(text.contains("error, warn, info, debug, trace"), "{text}");
}

#[test]
fn no_passthrough_without_track_opens_is_refused() {
    let empty = tempfile::tempdir().unwrap();
    let e = empty.path().to_str().unwrap();
    let (ok, text) = vm0fs_with_token(&["mount", e, "--no-passthrough", "--fake"], &[]);
    assert!(
        !ok && text.contains("--no-passthrough only applies with --track-opens"),
        "{text}"
    );
    let (ok, text) = vm0fs_with_token(
        &["mount", e, "--no-passthrough", "--track-opens", "--fake"],
        &[],
    );
    assert!(ok, "{text}");
}

#[test]
fn a_cache_dir_inside_the_mountpoint_is_refused_before_it_is_created() {
    let empty = tempfile::tempdir().unwrap();
    let cache = empty.path().join("cache");
    let (ok, text) = vm0fs_with_token(
        &[
            "mount",
            empty.path().to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok && text.contains("inside the mountpoint"), "{text}");
    assert!(
        !cache.exists(),
        "the refused mount created {}",
        cache.display()
    );
}

#[test]
fn an_already_mounted_directory_is_refused() {
    let emu = Emulator::demo();
    let m = Mount::new(&emu);
    let out = run(Command::new(common::vm0fs_bin())
        .arg("mount")
        .arg(m.path())
        .env("VM0_TOKEN", &emu.token));
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("already a mount point") && text.contains("vm0fs unmount"),
        "{text}"
    );
}
