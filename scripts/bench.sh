#!/usr/bin/env bash
# The vm0fs benchmark (issue 6): every path measured against its native baseline in the
# same run; the ratio is what counts. See doc/BENCHMARKS.md for the cases and how each is
# measured, and `scripts/bench.sh --help` for the options.
#
#   scripts/bench.sh                  full run (a few minutes), table + target/bench/results.json
#   scripts/bench.sh --quick          every case at small sizes (about a minute; CI)
#   scripts/bench.sh --only warm_seq  one case (or a comma-separated list)
#
# Exits 0 when every case ran, whatever the ratios; non-zero when something broke (a
# build, the emulator, a mount, a command). Mounts, the emulator and temporary files are
# removed on exit, also on failure or Ctrl-C. Generated data is kept in target/bench/data-*
# (deterministic; regenerated only when the sizes change).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
state="$root/target/bench/state.json"

# Leftovers of a run that could not clean up after itself (killed with -9): its state
# file names its mounts, processes and run directory.
cleanup_leftovers() {
    [ -f "$state" ] || return 0
    python3 - "$state" "$root/target/release/vm0fs" <<'EOF' || true
import json, os, shutil, signal, subprocess, sys
st = json.load(open(sys.argv[1]))
for m in st.get("mounts", []):
    if subprocess.run(["grep", "-qs", " %s " % m, "/proc/self/mountinfo"]).returncode == 0:
        if subprocess.run([sys.argv[2], "unmount", m], stderr=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["umount", "-l", m], stderr=subprocess.DEVNULL)
for pid in st.get("pids", []):
    try:
        # Only our own processes: the pid must still run vm0fs or the emulator.
        exe = os.readlink("/proc/%d/exe" % pid)
        if os.path.basename(exe) in ("vm0fs", "vm0-emulator"):
            os.kill(pid, signal.SIGTERM)
    except OSError:
        pass
run_dir = st.get("run_dir")
if run_dir and os.path.basename(run_dir).startswith("run-"):
    shutil.rmtree(run_dir, ignore_errors=True)
os.remove(sys.argv[1])
EOF
}

case "${1:-}" in
    -h|--help|--list)
        exec python3 bench/bench.py "$@"
        ;;
esac

cleanup_leftovers
trap cleanup_leftovers EXIT

bash scripts/deps.sh
for tool in gzip:gzip tar:tar lsblk:util-linux; do
    if ! command -v "${tool%%:*}" >/dev/null 2>&1; then
        echo "installing ${tool#*:}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool#*:}" >/dev/null
    fi
done

echo "bench: building vm0fs (release)..." >&2
cargo build --release --bins --quiet

python3 bench/bench.py "$@"
