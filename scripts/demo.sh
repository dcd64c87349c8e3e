#!/usr/bin/env bash
# The built-in default: start the VM0 API emulator with its demo data on loopback, mount
# it with vm0fs, and show the tree and a file. `scripts/demo.sh stop` unmounts and stops.
#
# Everything lives under ./demo (or $VM0FS_DEMO_DIR): mnt/ the mount, cache/ the cache
# (with the daemon's log, vm0fs.log), state/ the emulator's pid, address and log.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
base="${VM0FS_DEMO_DIR:-$root/demo}"
mnt="$base/mnt"
cache="$base/cache"
state="$base/state"
bin="$root/target/release"

stop() {
    if [ -d "$mnt" ] && grep -qs " $mnt " /proc/self/mountinfo; then
        "$bin/vm0fs" unmount "$mnt" || umount -l "$mnt" || true
    fi
    if [ -f "$state/emulator.pid" ]; then
        kill "$(cat "$state/emulator.pid")" 2>/dev/null || true
        rm -f "$state/emulator.pid"
    fi
}

if [ "${1:-}" = "stop" ]; then
    stop
    echo "demo stopped"
    exit 0
fi

bash scripts/deps.sh
# Cargo shows its progress: the first build compiles every dependency and takes about
# 5 minutes on 2 cores (later runs take seconds). Two builds, not one: built together, the
# emulator's dependency features would be unified into the product's, and the vm0fs binary
# could differ from the one `cargo build` makes.
echo "building vm0fs and the emulator (release; the first build takes about 5 minutes on 2 cores)..." >&2
cargo build --release -p vm0fs
cargo build --release -p vm0-emulator
stop
mkdir -p "$mnt" "$cache" "$state"

# The emulator prints one JSON line (its URLs and token) once it listens.
: > "$state/emulator.json"
nohup "$bin/vm0-emulator" --demo > "$state/emulator.json" 2> "$state/emulator.log" &
echo $! > "$state/emulator.pid"
for _ in $(seq 1 200); do
    [ -s "$state/emulator.json" ] && break
    sleep 0.05
done
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$state/emulator.json" "$1"; }
api_url=$(field api_url)
token=$(field token)

VM0_TOKEN="$token" "$bin/vm0fs" mount "$mnt" --api-url "$api_url" --cache-dir "$cache" --cache-size 1G

show() { echo; echo "\$ $*"; "$@"; }
echo
echo "vm0fs has mounted the emulator's demo data (API $api_url) at $mnt"
show ls "$mnt" "$mnt/volumes" "$mnt/artifacts"
show ls -l "$mnt/artifacts/agent-report"
show find "$mnt/volumes/input-data/latest/"
show cat "$mnt/artifacts/agent-report/latest/report.md"
show ls -t "$mnt/runs" "$mnt/agents"
# The demo's live run is the newest run of report-writer (shown by its id, not through
# the agent's `latest` link to it).
live=$(ls -t "$mnt/agents/report-writer/runs" | grep -vx latest | head -n 1)
show ls -l "$mnt/runs/$live"
show cat "$mnt/runs/$live/status"
cat <<EOT

The run $live is live: it logs a line a second for five minutes. Follow it with
    tail -f $mnt/runs/$live/logs
and once it has completed, see what it wrote in $mnt/runs/$live/artifact/.
EOT
cat <<EOT

Browse it: ls, cat, find, rsync -a $mnt/artifacts/agent-report/latest/ ./out/
Attributes of a version: getfattr -d $mnt/artifacts/agent-report/latest/
Unmount and stop the emulator: scripts/demo.sh stop
Use the real VM0 service instead:
    export VM0_TOKEN=vm0_live_...        # your API key
    mkdir -p ~/vm0 && $bin/vm0fs mount ~/vm0
EOT
