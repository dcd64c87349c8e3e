#!/usr/bin/env bash
# Runs every test of the workspace (vm0fs and its emulator): unit tests, library-level
# filesystem tests, the API client and the emulator's contract over real HTTP, and real
# FUSE mounts checked with real tools.
# Mount tests need /dev/fuse and root (or fusermount3); they fail, never skip, without.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh

cargo build --workspace --all-targets
# Most tests wait on mounts, HTTP and timers, not on the CPU: run many at once. With
# cargo-nextest (when installed), tests of every binary run side by side, each in its own
# process; `cargo test` runs the binaries one after another.
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast --test-threads "${VM0FS_TEST_THREADS:-8}"
    cargo test --workspace --doc
else
    cargo test --workspace -- --test-threads "${VM0FS_TEST_THREADS:-4}"
fi

# The benchmark must keep running (its figures are not judged here: timings never decide
# whether tests pass).
bash scripts/bench.sh --quick
