#!/usr/bin/env bash
# The vm0fs benchmark: every path measured against its native baseline in the
# same run; the ratio is what counts. See doc/BENCHMARKS.md for the cases and how each is
# measured, and `scripts/bench.sh --help` for the options.
#
#   scripts/bench.sh                  full run (a few minutes), table + target/bench/results.json
#   scripts/bench.sh --quick          every case at small sizes (about a minute; CI)
#   scripts/bench.sh --only warm_seq  one case (or a comma-separated list)
#   scripts/bench.sh --peers          vm0fs next to ratarmount and archivemount (installs them)
#
# Exits 0 when every case ran, whatever the ratios; non-zero when something broke (a
# build, the emulator, a mount, a command). Mounts, the emulator and temporary files are
# removed on exit, also on failure or Ctrl-C. Generated data is kept in target/bench/data-*
# (deterministic; regenerated only when the sizes change).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
bench_dir="$root/target/bench"

# Each run records its mounts, processes and run directory in target/bench/state.<pid>.json
# (pid of this script) and removes the file once it has cleaned up. A file left behind
# means a run was killed (-9) before it could: clean up after it, but only if that run's
# script is no longer alive (two runs may share the checkout).
cleanup_state() {
    python3 - "$1" "$root/target/release/vm0fs" <<'PY' || true
import json, os, shutil, signal, subprocess, sys
path, vm0fs = sys.argv[1], sys.argv[2]
try:
    st = json.load(open(path))
except (OSError, ValueError):
    st = {}
for m in st.get("mounts", []):
    if subprocess.run(["grep", "-qs", " %s " % m, "/proc/self/mountinfo"]).returncode == 0:
        if subprocess.run([vm0fs, "unmount", m], stderr=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["umount", "-l", m], stderr=subprocess.DEVNULL)
for pid in st.get("pids", []):
    try:
        # Only our own processes: the pid must still be vm0fs, the emulator or the floor.
        if os.path.basename(os.readlink("/proc/%d/exe" % pid)) in ("vm0fs", "vm0-emulator", "fuse_floor"):
            os.kill(pid, signal.SIGTERM)
    except OSError:
        pass
run_dir = st.get("run_dir") or ""
if os.path.basename(run_dir).startswith("run-"):
    shutil.rmtree(run_dir, ignore_errors=True)
try:
    os.remove(path)
except OSError:
    pass
PY
}

cleanup_leftovers() {
    local f owner
    for f in "$bench_dir"/state.*.json; do
        [ -e "$f" ] || continue
        owner="${f##*/state.}"
        owner="${owner%.json}"
        if [ "$owner" = "$$" ] || ! kill -0 "$owner" 2>/dev/null; then
            cleanup_state "$f"
        fi
    done
}

case "${1:-}" in
    -h|--help|--list)
        exec python3 bench/bench.py "$@"
        ;;
esac

mkdir -p "$bench_dir"
cleanup_leftovers
trap cleanup_leftovers EXIT

bash scripts/deps.sh
for tool in gzip:gzip tar:tar lsblk:util-linux; do
    if ! command -v "${tool%%:*}" >/dev/null 2>&1; then
        echo "installing ${tool#*:}" >&2
        sudo=""
        if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${tool#*:}" >/dev/null
    fi
done

# The O_DIRECT case runs fio (not in --quick, which skips it).
quick=0
for arg in "$@"; do
    if [ "$arg" = "--quick" ]; then quick=1; fi
done
if [ "$quick" = 0 ] && ! command -v fio >/dev/null 2>&1; then
    echo "installing fio" >&2
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq fio >/dev/null
fi

# --peers: the other tools that mount a tar.gz (ratarmount from PyPI, archivemount from Debian).
for arg in "$@"; do
    if [ "$arg" = "--peers" ]; then
        sudo=""
        if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
        if ! command -v archivemount >/dev/null 2>&1; then
            echo "installing archivemount" >&2
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq archivemount >/dev/null
        fi
        if ! command -v ratarmount >/dev/null 2>&1; then
            echo "installing ratarmount" >&2
            python3 -m pip install -q ratarmount
        fi
    fi
done

echo "bench: building vm0fs and the emulator (release)..." >&2
# Two builds, not one: built together, the emulator's dependency features would be unified
# into the product's, and the measured vm0fs binary could differ from the one users build.
cargo build --release --quiet -p vm0fs
cargo build --release --quiet -p vm0-emulator
# The fuse_floor case's daemon that does nothing (its own build, for the same reason).
cargo build --release --quiet -p vm0fs --example fuse_floor

# In the background so that a signal to this script reaches the benchmark, which then
# cleans up (the EXIT trap above is the fallback if it cannot).
VM0FS_BENCH_OWNER=$$ python3 bench/bench.py "$@" &
py=$!
trap 'kill -TERM "$py" 2>/dev/null || true' INT TERM HUP
rc=0
while kill -0 "$py" 2>/dev/null; do
    # Returns early (status > 128) when a trapped signal arrives: wait again.
    if wait "$py"; then rc=0; else rc=$?; fi
done
exit "$rc"
