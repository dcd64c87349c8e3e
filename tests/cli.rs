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
        text.contains("127.0.0.1:9") && text.contains("VM0_API_URL"),
        "unreachable API: {text}"
    );

    let (ok, text) = vm0fs(&["unmount", e]);
    assert!(!ok && text.contains("not mounted"), "{text}");
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
