"""The vm0fs benchmark: every path measured against its native baseline, in the
same run, so that the ratio (not the absolute figure) is what counts on a noisy machine.

Run it through `scripts/bench.sh` (which installs the tools and builds the release
binaries first). `bench.sh --help` lists the options; doc/BENCHMARKS.md explains each case.

Shape of a run: generate (or reuse) the data set (bench/gen.py), start `vm0-emulator` on
it, then run the selected cases. Mounts are `vm0fs mount --foreground` started in the
background (so the daemon's pid is known: RSS, clean stop), each with its own cache
directory. Within a case, baseline and vm0fs runs alternate (baseline, vm0fs, baseline,
...) so that a burst of load from the machine's other users hits both sides alike; the
figure reported for each side is the median of its runs. Every temporary thing lives
under one run directory; mounts, the emulator and that directory are removed on exit,
also on failure or Ctrl-C (bench.sh double-checks from a state file).
"""

import argparse
import http.client
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
BENCH_DIR = os.path.join(ROOT, "target", "bench")
# bench.sh passes its pid: the state file is per run, so that it can clean up after a
# run killed with -9 without touching another run that is still going.
STATE = os.path.join(BENCH_DIR, "state.%s.json" % os.environ.get("VM0FS_BENCH_OWNER", os.getpid()))
MiB = 1024 * 1024

# Sizes and repetitions. "reps" is the number of timed runs of each side; "slow_reps" for
# the cases that move a whole large version per run.
MODES = {
    "full": dict(cold_bytes=256 * MiB, big_bytes=1024 * MiB, tree_files=50_000, rss_files=100_000,
                 volumes=1000, cat_files=10_000, tiny_files=50_000, tiny_versions=10,
                 peer_files=20_000, peer_big=64 * MiB, reps=7, slow_reps=3, log_entries=100_000,
                 tail_probes=10, flat_files=200_000, lstats=20_000),
    "quick": dict(cold_bytes=8 * MiB, big_bytes=32 * MiB, tree_files=2_000, rss_files=5_000,
                  volumes=100, cat_files=1_000, tiny_files=10_000, tiny_versions=3,
                  peer_files=1_000, peer_big=4 * MiB, reps=3, slow_reps=2, log_entries=10_000,
                  tail_probes=3, flat_files=20_000, lstats=20_000),
}
DATA_PARAMS = ("cold_bytes", "big_bytes", "tree_files", "rss_files", "volumes", "tiny_files",
               "tiny_versions", "peer_files", "peer_big", "flat_files")

# The cases in run order: name, what it measures.
CASES = [
    ("cold_first_cat", "first `cat` of one file in a cold mixed version (downloads and unpacks it) vs curl | tar -xzf"),
    ("cold_unpack", "unpack throughput of a large version (`ls -f` of it, which answers once it is whole) vs gzip -dc | tar -x;"
     " also the first byte of its first file against that whole unpack (progressive availability)"),
    ("warm_seq", "sequential read of the large file, its pages evicted first, vs cat of its cache blob"),
    ("warm_reread", "re-read of the large file, page cache kept, vs re-read of its blob"),
    ("find_ls", "find -ls over the warm many-file version vs the same tree on local disk"),
    ("ls_lR", "ls -lR of the same"),
    ("ls_lR_cold", "ls -lR of the same as a first listing meets it: the kernel's dentries and inodes dropped"
     " before each run on both sides (needs root)"),
    ("rsync_second", "second rsync -a of the version to a synced copy (nothing to send) vs local"),
    ("cat_small", "cat of many small files, warm, vs local"),
    ("rss_100k", "daemon peak RSS (VmHWM) after find over a cold 100k-file version"),
    ("ls_volumes", "warm ls MOUNT/volumes: time, and API requests it makes (must be 0)"),
    ("runs_log", "first cat of a finished run's 100k-entry logs vs cat of the same file on local disk;"
     " its API requests, the daemon's peak RSS, and the requests of a second cat (must be 0)"),
    ("runs_status", "cold `grep -H . runs/*/status` over 500 finished runs of 1,000 log entries each: time and"
     " API requests (none to logs)"),
    ("live_tail", "latency from the emulator appending a log line to a live run to `tail -f` printing it"),
    ("tiny_cold_find", "cold find of a version of many tiny files (downloads and unpacks it) vs curl | tar -xzf"
     " onto the disk, and (tiny_cold_find_mem) into tmpfs; also its cache disk use against its content + 64 B"
     " per entry"),
    ("tiny_rss", "daemon RSS after find over each of the tiny-file versions"),
    ("tiny_restart", "restart with the tiny-file versions cached, until ls of each answers"),
    ("tiny_evict", "removal of one evicted tiny-file version (a budget lowered at start trims half of them)"),
    ("latest_lstat", "lstat of one file through `latest`, 20,000 times, vs through the version id; and the READLINKs"
     " the daemon answered for them (must be 0)"),
    ("ls_l_latest", "ls -l of a directory of many files through `latest` vs through the version id"),
    ("fuse_floor", "the least a FUSE daemon costs here: examples/fuse_floor.rs answers every request at once"
     " (from memory, and the large file's reads with one pread of its cache blob), replying as vm0fs does."
     " find over the tiny-file version after the kernel's dentries are dropped (needs root), Python open() of"
     " its files, and the large file's sequential read with its pages evicted; on the floor against local"
     " files, and on vm0fs against the floor"),
    ("python_open", "Python open(p, 'rb').read() of many small files, warm, vs local; and the log lines it left"
     " (must be 0: each open() sends an ioctl, TCGETS)"),
    ("fio_dio", "fio randread 4k, O_DIRECT, libaio: IOPS at iodepth 16 vs at iodepth 1 (skipped in --quick)"),
    ("large", "the mixed version under a budget of a third of it (skipped in --quick): find -ls after the first"
     " pass vs the same on a mount it fits; the last member and a ~1 MiB one in the middle, cold after a"
     " restart, vs a full download (and the store bytes for the last); rsync -aH of it all vs curl | tar -xzf"
     " (and the cache's peak disk use against the budget); the same rsync of the same files archived a"
     " directory at a time; the seek index against the archive; rsync -aH of the 1 GiB version under a third"
     " of it"),
]
CASE_NAMES = [c[0] for c in CASES]

# `--peers`: the same archives read from local disk by ratarmount and archivemount, next to
# vm0fs fetching them from the emulator.
PEER_CASES = [
    ("peer_cold_find", "cold: mount + find of the 20k-file archive"),
    ("peer_warm_find_ls", "warm: find -ls of it"),
    ("peer_warm_cat", "warm: cat of all its files"),
    ("peer_cold_after_big", "cold: mount + cat of the member after the 64 MiB file"),
    ("peer_warm_cat_big", "warm: cat of the 64 MiB file"),
]
PEERS = ("vm0fs", "ratarmount", "archivemount")
# A peer run taking longer than this is stopped and reported as such.
PEER_TIMEOUT = 120

# The targets: (direction, threshold). "<=": vm0fs/baseline at most; ">=": at least.
TARGETS = {
    "cold_first_cat": ("<=", 1.0),
    "cold_unpack": (">=", 1.0),
    "cold_first_byte": ("<=", 0.1),  # vs vm0fs's own whole unpack of the same version
    "warm_seq": (">=", 0.9),
    "warm_reread": (">=", 0.95),
    "find_ls": ("<=", 1.5),
    "ls_lR": ("<=", 1.5),
    "ls_lR_cold": ("<=", 1.5),
    "rsync_second": ("<=", 1.5),
    "cat_small": ("<=", 2.0),
    "rss_100k": ("<=", 32.0),  # MiB, absolute
    "tiny_disk": ("<=", 1.5),  # disk use / (content + 64 B per entry), absolute
    "tiny_cold_find": ("<=", 0.25),
    "tiny_cold_find_mem": ("<=", 0.25),
    "tiny_rss": ("<=", 64.0),  # MiB, absolute
    "tiny_restart": ("<=", 300.0),  # ms, absolute
    "tiny_evict": ("<=", 50.0),  # ms, absolute
    "ls_volumes_api_requests": ("<=", 0),  # absolute
    "runs_log_requests": ("<=", 1000),  # absolute
    "runs_log_rss": ("<=", 128.0),  # MiB, absolute
    "runs_log_second_requests": ("<=", 0),  # absolute
    "live_tail": ("<=", 2000.0),  # ms, absolute (median)
    "runs_status_log_requests": ("<=", 0),  # absolute
    "runs_status_requests": ("<=", 520),  # absolute: a detail per run and the listing's pages
    "latest_lstat": ("<=", 1.5),  # vs the same lstats through the version id
    "latest_lstat_readlinks": ("<=", 0),  # absolute
    "ls_l_latest": ("<=", 1.2),  # vs the same ls -l through the version id
    "python_open": ("<=", 2.0),
    "python_open_log_lines": ("<=", 0),  # absolute
    "fio_dio": (">=", 3.0),  # IOPS at iodepth 16 / IOPS at iodepth 1
    # vm0fs against a daemon that does no work at all (the kernel's round trips alone).
    "python_open_vs_floor": ("<=", 1.2),
    "walk_vs_floor": ("<=", 1.2),
    "warm_seq_vs_floor": (">=", 0.9),
    "large_find_ls": ("<=", 1.2),  # vs the same version on a mount it fits
    "large_last_file": ("<=", 0.2),  # vs a full download (curl | tar -xzf)
    "large_last_file_bytes": ("<=", 0.1),  # store bytes / the archive
    "large_mid_1m": ("<=", 0.1),  # vs a full download
    "large_rsync": ("<=", 1.5),  # vs curl | tar -xzf
    "large_rsync_seq": ("<=", 1.5),  # vs curl | tar -xzf
    "large_rsync_grouped": ("<=", 1.5),  # vs curl | tar -xzf
    "large_rsync_peak": ("<=", 1.0),  # the cache's peak disk use / the budget, absolute
    "large_seek_index": ("<=", 0.01),  # seek.bin / the archive, absolute
}


class BenchError(Exception):
    """Something broke (not a missed target): the script exits non-zero."""


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


def sh(cmd, cwd=None, check=True, capture=False, timeout=None):
    """Run a bash command line (with pipefail); raise BenchError if it fails."""
    r = subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], cwd=cwd, timeout=timeout,
                       stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise BenchError("command failed (exit %d): %s\n%s" % (r.returncode, cmd, r.stderr.strip()[-2000:]))
    return r.stdout if capture else r


def timed(cmd, cwd=None):
    """Wall time in seconds of a bash command line, output discarded."""
    t0 = time.perf_counter()
    sh(cmd, cwd=cwd)
    return time.perf_counter() - t0


def q(path):
    """Shell-quote a path for the command lines."""
    return "'" + str(path).replace("'", "'\\''") + "'"


def evict(*paths):
    """Drop these files' pages from the page cache (POSIX_FADV_DONTNEED), for a cold read
    without dropping the whole machine's caches (others work on it too). On a FUSE file it
    drops the mount's own page cache of it; the cache blob behind it is evicted separately."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_bytes(path):
    """Bytes of `path` in the page cache (fincore), or None if unknown."""
    r = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path],
                       capture_output=True, text=True)
    try:
        return int(r.stdout.split()[0])
    except (IndexError, ValueError):
        return None


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" ")
            mp = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
            if mp == path:
                return True
    return False


class State:
    """What bench.sh must clean up if this process dies without doing it (kill -9)."""

    def __init__(self, run_dir):
        self.data = {"run_dir": run_dir, "pids": [], "mounts": []}
        self.save()

    def save(self):
        tmp = STATE + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f)
        os.replace(tmp, STATE)

    def add(self, key, value):
        self.data[key].append(value)
        self.save()

    def remove(self, key, value):
        if value in self.data[key]:
            self.data[key].remove(value)
            self.save()

    def done(self):
        try:
            os.remove(STATE)
        except FileNotFoundError:
            pass


class Emulator:
    def __init__(self, bench, data_dir):
        self.bench = bench
        work = os.path.join(BENCH_DIR, "emulator-work-" + bench.mode)
        os.makedirs(work, exist_ok=True)
        self.log_path = os.path.join(bench.run_dir, "emulator.log")
        self.log_file = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "vm0-emulator"), "--data", data_dir, "--work-dir", work],
            stdout=subprocess.PIPE, stderr=self.log_file, text=True, start_new_session=True)
        bench.state.add("pids", self.proc.pid)
        line = self.proc.stdout.readline()  # the emulator prints it once it listens
        if not line:
            self.proc.wait()
            raise BenchError("the emulator exited at start (%s); its log:\n%s" % (
                self.proc.returncode, tail(self.log_path)))
        ready = json.loads(line)
        self.api_url = ready["api_url"]
        self.admin_url = ready["admin_url"]
        self.token = ready["token"]

    def request(self, method, url, headers=None):
        u = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        path = u.path + ("?" + u.query if u.query else "")
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        body = r.read()
        conn.close()
        return r.status, r.getheader("Location"), body

    def api(self, path):
        status, _, body = self.request("GET", self.api_url + path, {"Authorization": "Bearer " + self.token})
        if status != 200:
            raise BenchError("GET %s: HTTP %d %s" % (path, status, body[:200]))
        return json.loads(body)

    def storage(self, kind, name):
        cursor = None
        while True:
            page = self.api("/%s?limit=100%s" % (kind, "&cursor=" + cursor if cursor else ""))
            for s in page["data"]:
                if s["name"] == name:
                    return s
            p = page.get("pagination", {})
            cursor = p.get("next_cursor") or p.get("nextCursor")
            if not cursor:
                raise BenchError("%s %s not found in the emulator" % (kind, name))

    def presigned_url(self, kind, name):
        """The store URL of the current version's archive: the API's 302 Location."""
        s = self.storage(kind, name)
        vid = s.get("current_version_id") or s.get("currentVersionId")
        url = "%s/%s/%s/download?version_id=%s&versionId=%s" % (self.api_url, kind, s["id"], vid, vid)
        status, location, body = self.request("GET", url, {"Authorization": "Bearer " + self.token})
        if status != 302 or not location:
            raise BenchError("download of %s %s: expected a 302, got HTTP %d %s" % (kind, name, status, body[:200]))
        return vid, location

    def counters(self):
        status, _, body = self.request("GET", self.admin_url + "/counters")
        if status != 200:
            raise BenchError("GET /_emulator/counters: HTTP %d" % status)
        return json.loads(body)

    def reset_counters(self):
        status, _, _ = self.request("POST", self.admin_url + "/counters/reset")
        if status != 200:
            raise BenchError("POST /_emulator/counters/reset: HTTP %d" % status)

    def admin(self, path, body):
        """POST a JSON body to an admin endpoint; the JSON answer."""
        u = urllib.parse.urlsplit(self.admin_url + path)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        conn.request("POST", u.path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        conn.close()
        if r.status != 200:
            raise BenchError("POST %s: HTTP %d %s" % (path, r.status, data[:200]))
        return json.loads(data)

    def agent(self):
        """The agent the runs of the benchmark belong to (made once)."""
        return self.admin("/agents", {"name": "bench-agent"})["name"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.bench.state.remove("pids", self.proc.pid)
        self.log_file.close()


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


class Mount:
    """One `vm0fs mount --foreground` in the background, with its own cache directory."""

    def __init__(self, bench, name, cache_size="8G", cache=None, extra=()):
        self.bench = bench
        base = os.path.join(bench.run_dir, name)
        self.mnt = os.path.join(base, "mnt")
        self.cache = cache or os.path.join(base, "cache")
        self.log_path = os.path.join(base, "vm0fs.log")
        os.makedirs(self.mnt)
        os.makedirs(self.cache, exist_ok=True)
        argv = [vm0fs_bin(bench.args), "mount", self.mnt, "--foreground",
                "--api-url", bench.emu.api_url, "--cache-dir", self.cache, "--cache-size", cache_size]
        argv += bench.args.mount_arg + list(extra)
        env = dict(os.environ, VM0_TOKEN=bench.emu.token)
        self.log_file = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=self.log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        bench.state.add("pids", self.proc.pid)
        bench.state.add("mounts", self.mnt)
        deadline = time.time() + 30
        while True:
            if self.proc.poll() is not None:
                bench.state.remove("pids", self.proc.pid)
                raise BenchError("vm0fs mount exited (%s); its log:\n%s" % (self.proc.returncode, tail(self.log_path)))
            if is_mounted(self.mnt):
                try:
                    if os.stat(self.mnt).st_ino == 1:
                        break
                except OSError:
                    pass
            if time.time() > deadline:
                self.proc.terminate()
                raise BenchError("the mount at %s did not answer within 30 s; log:\n%s" % (self.mnt, tail(self.log_path)))
            time.sleep(0.005)
        self.pid = self.proc.pid
        # The daemon sets its own read-ahead between answering and logging "ready"; an
        # override must come after that.
        while not self.logged(" ready mountpoint="):
            if self.proc.poll() is not None or time.time() > deadline:
                raise BenchError("vm0fs at %s never logged ready; log:\n%s" % (self.mnt, tail(self.log_path)))
            time.sleep(0.02)
        if bench.args.read_ahead_kb is not None:
            self.set_read_ahead(bench.args.read_ahead_kb)

    def logged(self, text):
        with open(self.log_path, errors="replace") as f:
            return text in f.read()

    def bdi(self):
        st = os.stat(self.mnt)
        return "/sys/class/bdi/%d:%d" % (os.major(st.st_dev), os.minor(st.st_dev))

    def set_read_ahead(self, kb):
        """The kernel offers FUSE at most its default read-ahead (128 KiB) at INIT; root
        can raise it afterwards through the mount's backing device (a lever to measure)."""
        try:
            with open(self.bdi() + "/read_ahead_kb", "w") as f:
                f.write("%d\n" % kb)
        except OSError as e:
            raise BenchError("cannot set read_ahead_kb on %s: %s" % (self.mnt, e))

    def path(self, kind, name, *rest):
        return os.path.join(self.mnt, kind, name, *rest)

    def version_dir(self, kind, name, vid):
        """Look up the storage and the version without downloading it (metadata only)."""
        sh("ls %s >/dev/null && stat %s >/dev/null" % (q(self.path(kind, name)), q(self.path(kind, name, vid))))
        return self.path(kind, name, vid)

    def status(self):
        """VmHWM and VmRSS of the daemon, in MiB."""
        out = {}
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    out[k] = int(v.split()[0]) / 1024.0
        return out

    def fuse_settings(self):
        """Read-ahead and background limits the kernel uses for this mount (levers)."""
        st = os.stat(self.mnt)
        out = {}
        for key, path in [("read_ahead_kb", self.bdi() + "/read_ahead_kb"),
                          ("max_background", "/sys/fs/fuse/connections/%d/max_background" % os.minor(st.st_dev)),
                          ("congestion_threshold", "/sys/fs/fuse/connections/%d/congestion_threshold" % os.minor(st.st_dev))]:
            try:
                with open(path) as f:
                    out[key] = int(f.read().strip())
            except (OSError, ValueError):
                pass
        # What the daemon and the kernel agreed on at INIT (its "FUSE session initialized" line).
        try:
            with open(self.log_path, errors="replace") as f:
                for line in f:
                    if "FUSE session initialized" in line:
                        for key in ("open_requests", "passthrough"):
                            m = re.search(r"\b%s=(\w+)" % key, line)
                            if m:
                                out[key] = m.group(1)
        except OSError:
            pass
        return out

    def stop(self):
        if is_mounted(self.mnt):
            r = subprocess.run([vm0fs_bin(self.bench.args), "unmount", self.mnt],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=30)
            if r.returncode != 0:
                log("vm0fs unmount %s failed (%s); detaching" % (self.mnt, r.stderr.strip()))
                subprocess.run(["umount", "-l", self.mnt], stderr=subprocess.DEVNULL)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            log("vm0fs daemon %d did not exit after the unmount; terminating it" % self.proc.pid)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.bench.state.remove("pids", self.proc.pid)
        self.bench.state.remove("mounts", self.mnt)
        self.log_file.close()

    def remove(self):
        """Stop, then delete the cache (a scratch mount's last step)."""
        self.stop()
        shutil.rmtree(os.path.dirname(self.mnt), ignore_errors=True)


def median(xs):
    return statistics.median(xs)


def vm0fs_bin(args):
    """The vm0fs binary measured: the release build, or `--vm0fs-bin` (an earlier build,
    for a before/after table)."""
    return args.vm0fs_bin or os.path.join(BIN, "vm0fs")


def allocated(path):
    """Allocated bytes (blocks * 512) of everything under `path`, directories included."""
    total = os.lstat(path).st_blocks * 512
    for d, dirs, files in os.walk(path):
        for x in dirs + files:
            total += os.lstat(os.path.join(d, x)).st_blocks * 512
    return total


class Bench:
    def __init__(self, args):
        self.args = args
        self.mode = "quick" if args.quick else "full"
        self.p = dict(MODES[self.mode])
        if args.reps:
            self.p["reps"] = args.reps
            self.p["slow_reps"] = args.reps
        os.makedirs(BENCH_DIR, exist_ok=True)
        self.run_dir = tempfile.mkdtemp(prefix="run-", dir=BENCH_DIR)
        self.state = State(self.run_dir)
        self.emu = None
        self.main = None
        self.mounts = []
        self.mount_count = 0
        self.rows = []
        self.failures = []
        self.warm = set()
        self.local = {}
        self.meta = {}
        self.tiny_cache = None

    # ----- setup -------------------------------------------------------------------

    def setup(self):
        data = os.path.join(BENCH_DIR, "data-" + self.mode)
        params = {k: self.p[k] for k in DATA_PARAMS}
        self.archives = gen.ensure(data, params, log)
        log("starting the emulator")
        self.emu = Emulator(self, data)

    def mount(self, name, cache_size="8G", cache=None, extra=()):
        self.mount_count += 1
        m = Mount(self, "%s-%d" % (name, self.mount_count), cache_size, cache, extra)
        self.mounts.append(m)
        return m

    def main_mount(self):
        if self.main is None:
            self.main = self.mount("main")
            self.meta["fuse"] = self.main.fuse_settings()
        return self.main

    def version(self, name):
        """(version id, archive info) of artifact `name`'s only version."""
        info = self.archives["artifacts/" + name]
        if "vid" not in info:
            s = self.emu.storage("artifacts", name)
            info["vid"] = s.get("current_version_id") or s.get("currentVersionId")
        return info["vid"], info

    def warm_version(self, name):
        """The version downloaded and listed once on the main mount: `find` over it."""
        m = self.main_mount()
        vid, info = self.version(name)
        root = m.path("artifacts", name, vid)
        if name not in self.warm:
            log("warming %s on the main mount (download + one listing)" % name)
            sh("find %s >/dev/null" % q(root))
            sh("sync")  # the unpack's writeback must not slow down the first timed runs
            self.warm.add(name)
        return root, info

    def local_tree(self, name):
        """The same version extracted on local disk (the native baseline's tree)."""
        if name not in self.local:
            _, info = self.version(name)
            dest = os.path.join(self.run_dir, "local", name)
            os.makedirs(dest)
            sh("tar -xzf %s -C %s" % (q(info["path"]), q(dest)))
            self.local[name] = dest
        return self.local[name]

    def cleanup(self):
        for m in reversed(self.mounts):
            try:
                m.stop()
            except Exception as e:  # keep cleaning up the rest
                log("cleanup: %s" % e)
        if self.emu is not None:
            try:
                self.emu.stop()
            except Exception as e:
                log("cleanup: %s" % e)
        if self.args.keep:
            log("kept %s" % self.run_dir)
        else:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        self.state.done()

    # ----- measuring ---------------------------------------------------------------

    def pairs(self, reps, baseline, vm0fs, before=None):
        """Alternate baseline and vm0fs runs; `before(side)` runs untimed before each."""
        b, v = [], []
        for _ in range(reps):
            for side, fn, out in (("baseline", baseline, b), ("vm0fs", vm0fs, v)):
                if before:
                    before(side)
                out.append(fn())
        return b, v

    def row(self, name, value, unit, baseline=None, samples=None, baseline_samples=None, note=None, ratio=None):
        if ratio is None and baseline:
            ratio = value / baseline
        target = TARGETS.get(name)
        check = ratio if baseline is not None else value
        met = None
        if target is not None and check is not None:
            op, limit = target
            met = check <= limit if op == "<=" else check >= limit
        r = {"name": name, "value": round(value, 3), "unit": unit,
             "baseline": None if baseline is None else round(baseline, 3),
             "ratio": None if ratio is None else round(ratio, 3),
             "target": None if target is None else "%s %s" % target,
             "met": met}
        if samples:
            r["samples"] = [round(s, 4) for s in samples]
        if baseline_samples:
            r["baseline_samples"] = [round(s, 4) for s in baseline_samples]
        if note:
            r["note"] = note
        self.rows.append(r)
        log("  %s: %s" % (name, fmt_row(r)))

    def time_row(self, name, b, v, note=None):
        self.row(name, median(v) * 1000, "ms", median(b) * 1000, [x * 1000 for x in v], [x * 1000 for x in b], note)

    def rate_row(self, name, nbytes, b, v, note=None):
        rate = lambda t: nbytes / MiB / t  # noqa: E731
        self.row(name, rate(median(v)), "MiB/s", rate(median(b)), [rate(x) for x in v], [rate(x) for x in b], note)

    # ----- the cases ---------------------------------------------------------------

    def case_cold_first_cat(self):
        name = "cold-mixed"
        vid, info = self.version(name)
        _, url = self.emu.presigned_url("artifacts", name)
        dest = os.path.join(self.run_dir, "cold-extract")
        state = {}

        def before(side):
            shutil.rmtree(dest, ignore_errors=True)
            if side == "vm0fs":
                # A fresh daemon and an empty cache; the storage and version are looked
                # up first (no download), so only the first content access is timed.
                m = self.mount("cold", "8G")
                state["m"] = m
                state["file"] = os.path.join(m.version_dir("artifacts", name, vid), "README.md")
            sh("sync")

        def baseline():
            os.makedirs(dest)
            return timed("curl -sf %s | tar -xzf - -C %s" % (q(url), q(dest)))

        def vm0fs():
            t = timed("cat %s >/dev/null" % q(state["file"]))
            state["m"].remove()
            self.mounts.remove(state["m"])
            return t

        b, v = self.pairs(self.p["reps"], baseline, vm0fs, before)
        shutil.rmtree(dest, ignore_errors=True)
        self.time_row("cold_first_cat", b, v, "%.0f MiB unpacked, %d files, %.0f MiB tar.gz" % (
            info["bytes"] / MiB, info["files"], info["compressed"] / MiB))

    def case_cold_unpack(self):
        name = "big"
        vid, info = self.version(name)
        dest = os.path.join(self.run_dir, "big-extract")
        state = {}

        def before(side):
            shutil.rmtree(dest, ignore_errors=True)
            if side == "vm0fs":
                m = self.mount("cold", "8G")
                state["m"] = m
                state["dir"] = m.version_dir("artifacts", name, vid)
            sh("sync")

        def baseline():
            os.makedirs(dest)
            return timed("gzip -dc %s | tar -xf - -C %s" % (q(info["path"]), q(dest)))

        firsts = []

        def vm0fs():
            # The first byte of the archive's first member starts the download and is
            # served as soon as that member is unpacked. Listing the version then waits
            # until all of it is unpacked, so the sum of the two times the whole unpack.
            first = timed("head -c 1 %s >/dev/null" % q(os.path.join(state["dir"], "README.md")))
            rest = timed("ls -f %s >/dev/null" % q(state["dir"]))
            firsts.append(first)
            state["m"].remove()
            self.mounts.remove(state["m"])
            return first + rest

        b, v = self.pairs(self.p["slow_reps"], baseline, vm0fs, before)
        shutil.rmtree(dest, ignore_errors=True)
        self.rate_row("cold_unpack", info["bytes"], b, v, "%.0f MiB unpacked (one %.0f MiB file), %.0f MiB tar.gz" % (
            info["bytes"] / MiB, self.p["big_bytes"] / MiB, info["compressed"] / MiB))
        # Progressive availability: the baseline is vm0fs's own whole unpack, in the same runs.
        self.row("cold_first_byte", median(firsts) * 1000, "ms", median(v) * 1000,
                 [x * 1000 for x in firsts], [x * 1000 for x in v],
                 "first byte of README.md, the archive's first member, vs the whole unpack of the version")

    def big_file_and_blob(self):
        root, info = self.warm_version("big")
        f = os.path.join(root, "huge.bin")
        size = os.path.getsize(f)
        blob = None
        versions = os.path.join(self.main.cache, "versions")
        for d in os.listdir(versions):
            data = os.path.join(versions, d, "data")
            if os.path.isdir(data):
                for b in os.listdir(data):
                    if os.path.getsize(os.path.join(data, b)) == size:
                        blob = os.path.join(data, b)
        if blob is None:
            raise BenchError("no blob of %d bytes in %s" % (size, versions))
        return f, blob, size

    def case_warm_seq(self):
        f, blob, size = self.big_file_and_blob()
        left = []

        def before(side):
            evict(f, blob)
            left.append(resident_bytes(blob) or 0)

        b, v = self.pairs(self.p["reps"], lambda: timed("cat %s >/dev/null" % q(blob)),
                          lambda: timed("cat %s >/dev/null" % q(f)), before)
        self.rate_row("warm_seq", size, b, v, "%.0f MiB file; its pages (FUSE file and cache blob) evicted with "
                      "fadvise(DONTNEED) before each run (at most %.1f MiB stayed resident)" % (
                          size / MiB, max(left) / MiB))

    def case_warm_reread(self):
        f, blob, size = self.big_file_and_blob()
        sh("cat %s >/dev/null; cat %s >/dev/null" % (q(blob), q(f)))  # both in the page cache
        b, v = self.pairs(self.p["reps"], lambda: timed("cat %s >/dev/null" % q(blob)),
                          lambda: timed("cat %s >/dev/null" % q(f)))
        self.rate_row("warm_reread", size, b, v, "%.0f MiB file, page cache kept" % (size / MiB))

    def tree_pair(self, case, cmd, note):
        """`cmd` (with {dir}) over the warm many-file version vs its local copy, one
        untimed run of each first."""
        root, info = self.warm_version("files-50k")
        local = self.local_tree("files-50k")
        sh(cmd.format(dir=q(local)))
        sh(cmd.format(dir=q(root)))
        b, v = self.pairs(self.p["reps"], lambda: timed(cmd.format(dir=q(local))),
                          lambda: timed(cmd.format(dir=q(root))))
        self.time_row(case, b, v, "%d files; %s" % (info["files"], note))

    def case_find_ls(self):
        self.tree_pair("find_ls", "find {dir} -ls >/dev/null", "find DIR -ls")

    def case_ls_lR(self):
        self.tree_pair("ls_lR", "ls -lR {dir} >/dev/null", "ls -lR DIR")

    def case_ls_lR_cold(self):
        if not self.can_drop_dentries("ls_lR_cold"):
            return
        root, info = self.warm_version("files-50k")
        local = self.local_tree("files-50k")
        cmd = "ls -lR ."
        b, v = self.pairs(self.p["reps"], lambda: self.timed_cold(local, cmd),
                          lambda: self.timed_cold(root, cmd))
        self.time_row("ls_lR_cold", b, v, "%d files; ls -lR . inside the tree, the kernel's dentries and inodes "
                      "dropped before each run" % info["files"])

    def can_drop_dentries(self, rows):
        """Whether the kernel's dentries and inodes can be dropped here (root only); logs the
        skipped `rows` when not."""
        if sh("echo 2 > /proc/sys/vm/drop_caches", check=False).returncode == 0:
            return True
        log("  %s: skipped (the kernel's dentries cannot be dropped here: root only)" % rows)
        return False

    def timed_cold(self, tree, cmd):
        """Seconds of `cmd` run inside `tree` after the kernel's dentries and inodes are dropped.
        Timed from inside the tree: the path to a version on vm0fs (whose listings the API
        refreshes once their TTL is out) is looked up by the `cd`, before the clock starts."""
        sh("sync; echo 2 > /proc/sys/vm/drop_caches")
        out = sh("cd %s && s=$(date +%%s%%N) && %s >/dev/null && e=$(date +%%s%%N) && echo $((e - s))"
                 % (q(tree), cmd), capture=True)
        return int(out.strip()) / 1e9

    def case_rsync_second(self):
        root, info = self.warm_version("files-50k")
        local = self.local_tree("files-50k")
        dst_local = os.path.join(self.run_dir, "rsync-local")
        dst_fuse = os.path.join(self.run_dir, "rsync-vm0fs")
        cmd = "rsync -a {src}/ {dst}/"
        sh(cmd.format(src=q(local), dst=q(dst_local)))  # the first sync, untimed
        sh(cmd.format(src=q(root), dst=q(dst_fuse)))
        check = sh("rsync -a --stats %s/ %s/" % (q(root), q(dst_fuse)), capture=True)
        sent = [l for l in check.splitlines() if l.startswith("Number of regular files transferred")]
        if not sent or not sent[0].rstrip().endswith(": 0"):
            raise BenchError("the second rsync from the mount transferred files: %s" % sent)
        b, v = self.pairs(self.p["reps"], lambda: timed(cmd.format(src=q(local), dst=q(dst_local))),
                          lambda: timed(cmd.format(src=q(root), dst=q(dst_fuse))))
        self.time_row("rsync_second", b, v, "%d files, 0 transferred" % info["files"])

    def case_cat_small(self):
        root, info = self.warm_version("files-50k")
        local = self.local_tree("files-50k")
        n = self.p["cat_files"]
        lst = os.path.join(self.run_dir, "cat-list")
        files = []
        for d, dirs, names in os.walk(local):
            dirs.sort()
            files += [os.path.relpath(os.path.join(d, x), local) for x in sorted(names)]
            if len(files) >= n:
                break
        with open(lst, "w") as f:
            f.write("".join(x + "\n" for x in files[:n]))
        cmd = "cd {dir} && xargs -d '\\n' -a %s cat >/dev/null" % q(lst)
        sh(cmd.format(dir=q(local)))  # warm-up: both sides' content in the page cache
        sh(cmd.format(dir=q(root)))
        b, v = self.pairs(self.p["reps"], lambda: timed(cmd.format(dir=q(local))),
                          lambda: timed(cmd.format(dir=q(root))))
        self.time_row("cat_small", b, v, "%d files (xargs cat), content already in the page cache" % n)

    def case_rss_100k(self):
        name = "files-100k"
        vid, info = self.version(name)
        m = self.mount("rss", "8G")
        try:
            root = m.version_dir("artifacts", name, vid)
            t = timed("find %s >/dev/null" % q(root))
            s = m.status()
        finally:
            m.remove()
            self.mounts.remove(m)
        self.row("rss_100k", s["VmHWM"], "MiB",
                 note="%d files; fresh daemon, cold cache, one find (%.1f s incl. download); VmRSS after: %.1f MiB" % (
                     info["files"], t, s["VmRSS"]))

    def case_ls_volumes(self):
        m = self.main_mount()
        n = self.p["volumes"]
        local = os.path.join(self.run_dir, "local-volumes")
        os.makedirs(local)
        for i in range(n):
            os.mkdir(os.path.join(local, "vol-%04d" % i))
        vols = os.path.join(m.mnt, "volumes")
        listed = sh("ls %s" % q(vols), capture=True).split()
        if len(listed) != n:
            raise BenchError("ls %s listed %d volumes, expected %d" % (vols, len(listed), n))
        sh("ls %s >/dev/null" % q(local))
        # A listing older than the metadata TTL (the main mount may have started more than
        # a minute ago) is refreshed in the background by that first ls: let it finish.
        seen, since = None, time.time()
        while time.time() - since < 0.5:
            now = self.emu.counters()
            if now != seen:
                seen, since = now, time.time()
            time.sleep(0.05)
        self.emu.reset_counters()
        b, v = self.pairs(self.p["reps"], lambda: timed("ls %s >/dev/null" % q(local)),
                          lambda: timed("ls %s >/dev/null" % q(vols)))
        counts = self.emu.counters()
        requests = sum(c for k, c in counts.items() if k.split(".")[0] in ("volumes", "artifacts"))
        self.time_row("ls_volumes", b, v, "%d volumes, listed once before; baseline: ls of %d local directories" % (n, n))
        self.row("ls_volumes_api_requests", requests, "requests",
                 note="API requests made by the %d timed ls runs (emulator counters)" % len(v))

    def case_runs_log(self):
        n = self.p["log_entries"]
        run = self.emu.admin("/runs", {"agent": self.emu.agent(), "logs_total": n})
        m = self.mount("runs", "8G")
        try:
            logs = os.path.join(m.mnt, "runs", run["id"], "logs")
            local = os.path.join(self.run_dir, "runs-log-copy")
            self.emu.reset_counters()
            first = timed("cat %s > %s" % (q(logs), q(local)))
            requests = self.emu.counters().get("runs.logs", 0)
            lines = sum(1 for _ in open(local))
            if lines != n:
                raise BenchError("cat %s printed %d lines, expected %d" % (logs, lines, n))
            s = m.status()
            self.emu.reset_counters()
            sh("cat %s >/dev/null" % q(logs))
            second = self.emu.counters().get("runs.logs", 0)
            sh("cat %s >/dev/null" % q(local))  # the baseline's page cache warm, as the first cat's source was not
            base = timed("cat %s >/dev/null" % q(local))
        finally:
            m.remove()
            self.mounts.remove(m)
        size = os.path.getsize(local)
        self.row("runs_log", first * 1000, "ms", base * 1000,
                 note="%d entries (%.1f MiB); first cat on a fresh mount (fetches every page) vs cat of the same "
                      "file on local disk" % (n, size / MiB))
        self.row("runs_log_requests", requests, "requests", note="log pages asked by that first cat")
        self.row("runs_log_rss", s["VmHWM"], "MiB", note="daemon peak RSS after it (VmRSS %.1f MiB)" % s["VmRSS"])
        self.row("runs_log_second_requests", second, "requests", note="API requests of a second cat")

    def case_runs_status(self):
        n = 500
        made = self.emu.admin("/runs", {"agent": self.emu.agent(), "logs_total": 1000, "count": n})
        ids = made["ids"]
        local = os.path.join(self.run_dir, "runs-status-copy")
        v = []
        for rep_ in range(self.p["reps"]):
            m = self.mount("status-%d" % rep_, "8G")
            try:
                runs = os.path.join(m.mnt, "runs")
                self.emu.reset_counters()
                t0 = time.time()
                out = sh("grep -H . %s/*/status" % q(runs), capture=True)
                v.append(time.time() - t0)
                counts = self.emu.counters()
            finally:
                m.remove()
                self.mounts.remove(m)
            seen = sum(1 for line in out.splitlines() if any(i in line for i in ids))
            if seen != n:
                raise BenchError("grep -H . runs/*/status printed %d of the %d runs" % (seen, n))
        # The baseline: the same grep over the same text on local disk.
        for line in out.splitlines():
            path, _, status = line.partition(":")
            d = os.path.join(local, os.path.basename(os.path.dirname(path)))
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "status"), "w") as f:
                f.write(status + "\n")
        b = []
        for _ in range(self.p["reps"]):
            t0 = time.time()
            sh("grep -H . %s/*/status >/dev/null" % q(local))
            b.append(time.time() - t0)
        runs_requests = sum(c for k, c in counts.items() if k.startswith("runs.") and ":" not in k)
        self.time_row("runs_status", b, v,
                      "%d finished runs of 1,000 log entries each, each on a fresh mount; baseline: the same "
                      "grep over the same files on local disk" % n)
        self.row("runs_status_requests", runs_requests, "requests",
                 note="run API requests of the last of those greps (%s)" %
                      ", ".join("%s %d" % (k, c) for k, c in sorted(counts.items())
                                if k.startswith("runs.") and ":" not in k))
        self.row("runs_status_log_requests", counts.get("runs.logs", 0) + counts.get("runs.events", 0),
                 "requests", note="log and event requests of that grep")

    def case_live_tail(self):
        probes = self.p["tail_probes"]
        run = self.emu.admin("/runs", {"agent": self.emu.agent(), "log_rate": 0, "duration_ms": 3_600_000,
                                       "pending_ms": 0})
        rid = run["id"]
        m = self.mount("live", "8G")
        tail = None
        try:
            logs = os.path.join(m.mnt, "runs", rid, "logs")
            deadline = time.time() + 30
            while not os.path.exists(logs):
                if time.time() > deadline:
                    raise BenchError("%s did not appear" % logs)
                time.sleep(0.05)
            tail = subprocess.Popen(["tail", "-n", "0", "-f", logs], stdout=subprocess.PIPE)
            fd = tail.stdout.fileno()
            time.sleep(1.5)  # tail's first look at the file; not a measured interval
            latencies = []
            seen = b""
            for i in range(probes):
                probe = ("bench-probe-%d-%d" % (os.getpid(), i)).encode()
                t0 = time.time()
                self.emu.admin("/runs/%s/logs" % rid, {"entries": [{"message": probe.decode()}]})
                while probe not in seen:
                    left = t0 + 30 - time.time()
                    if left <= 0:
                        raise BenchError("probe %d not printed by tail -f within 30 s" % i)
                    ready, _, _ = select.select([fd], [], [], left)
                    if ready:
                        chunk = os.read(fd, 65536)
                        if not chunk:
                            raise BenchError("tail -f of %s ended" % logs)
                        seen += chunk
                latencies.append(time.time() - t0)
                seen = seen[seen.index(probe) + len(probe):]
            self.emu.admin("/runs/%s/finish" % rid, {})
        finally:
            if tail is not None:
                tail.kill()
                tail.wait()
            m.remove()
            self.mounts.remove(m)
        self.row("live_tail", median(latencies) * 1000, "ms", samples=[x * 1000 for x in latencies],
                 note="median of %d lines appended one at a time; tail -f looks once a second, vm0fs asks the "
                      "API about every 0.4 s while the run is read" % probes)

    # ----- many tiny files ----------------------------------------------------------

    def tiny_names(self):
        return ["tiny-%02d" % i for i in range(self.p["tiny_versions"])]

    @staticmethod
    def version_cache_dir(m, vid):
        versions = os.path.join(m.cache, "versions")
        for d in os.listdir(versions):
            if d.endswith(vid):
                return os.path.join(versions, d)
        raise BenchError("version %s is not in the cache %s" % (vid, versions))

    def case_tiny_cold_find(self):
        name = "tiny-00"
        vid, info = self.version(name)
        _, url = self.emu.presigned_url("artifacts", name)
        dest = os.path.join(self.run_dir, "tiny-extract")
        state = {}

        def before(side):
            shutil.rmtree(dest, ignore_errors=True)
            if side == "vm0fs":
                m = self.mount("tiny-cold", "8G")
                state["m"] = m
                state["root"] = m.version_dir("artifacts", name, vid)
            sh("sync")

        # The same extraction into memory (tmpfs), where creating the files costs least:
        # the harder baseline, timed in the same turn as the one onto the disk.
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        mem_dest = os.path.join(shm, "vm0fs-bench-tiny-%d" % os.getpid()) if shm else None
        mem = []

        def baseline():
            # Into memory first: the extraction onto the disk leaves writeback behind it.
            if mem_dest:
                shutil.rmtree(mem_dest, ignore_errors=True)
                os.makedirs(mem_dest)
                try:
                    mem.append(timed("curl -sf %s | tar -xzf - -C %s" % (q(url), q(mem_dest))))
                finally:
                    shutil.rmtree(mem_dest, ignore_errors=True)
            os.makedirs(dest)
            return timed("curl -sf %s | tar -xzf - -C %s" % (q(url), q(dest)))

        def vm0fs():
            t = timed("find %s >/dev/null" % q(state["root"]))
            m = state["m"]
            if "disk" not in state:
                state["disk"] = allocated(self.version_cache_dir(m, vid))
            m.remove()
            self.mounts.remove(m)
            return t

        b, v = self.pairs(self.p["slow_reps"], baseline, vm0fs, before)
        shutil.rmtree(dest, ignore_errors=True)
        files = info["files"]
        entries = files + (files + 99) // 100  # the files and their directories
        self.time_row("tiny_cold_find", b, v, "%d files of about 15 bytes, %.1f MiB tar.gz" % (
            files, info["compressed"] / MiB))
        if mem:
            self.time_row("tiny_cold_find_mem", mem, v, "the same vm0fs runs against curl | tar -xzf into "
                          "tmpfs (/dev/shm), where creating the files costs least")
        floor = info["bytes"] + 64 * entries
        self.row("tiny_disk", state["disk"] / floor, "x",
                 note="cache directory of the version: %.0f KiB allocated, for %.0f KiB of content and %d entries "
                 "(content + 64 B per entry: %.0f KiB)" % (state["disk"] / 1024, info["bytes"] / 1024, entries,
                                                            floor / 1024))

    def tiny_cached(self):
        """A cache directory holding every tiny-file version (found by one daemon)."""
        if self.tiny_cache is None:
            self.case_tiny_rss()
        return self.tiny_cache

    def case_tiny_rss(self):
        m = self.mount("tiny-rss", "8G")
        try:
            t0 = time.time()
            for name in self.tiny_names():
                vid, _ = self.version(name)
                sh("find %s >/dev/null" % q(m.version_dir("artifacts", name, vid)))
            t = time.time() - t0
            s = m.status()
        finally:
            m.stop()
        self.tiny_cache = m.cache
        n = len(self.tiny_names())
        self.row("tiny_rss", s["VmRSS"], "MiB",
                 note="fresh daemon, find over %d versions of %d tiny files each, one after the other (%.1f s incl. "
                 "downloads); VmHWM %.1f MiB; RssAnon %.1f MiB, RssFile %.1f MiB (mapped indexes and the binary)" % (
                     n, self.p["tiny_files"], t, s["VmHWM"], s.get("RssAnon", 0), s.get("RssFile", 0)))

    def case_tiny_restart(self):
        cache = self.tiny_cached()
        roots = []
        for name in self.tiny_names():
            vid, _ = self.version(name)
            roots.append(("artifacts", name, vid))
        runs = []
        for _ in range(self.p["reps"]):
            t0 = time.perf_counter()
            m = self.mount("tiny-restart", "8G", cache)
            try:
                for kind, name, vid in roots:
                    sh("ls %s >/dev/null" % q(m.path(kind, name, vid)))
                runs.append(time.perf_counter() - t0)
            finally:
                m.stop()
                self.mounts.remove(m)
        self.row("tiny_restart", median(runs) * 1000, "ms", samples=[x * 1000 for x in runs],
                 note="from `vm0fs mount` until ls of each of the %d cached versions (%d files each) answered"
                 % (len(roots), self.p["tiny_files"]))

    def case_tiny_evict(self):
        cache = self.tiny_cached()
        total = allocated(os.path.join(cache, "versions"))
        n = len(self.tiny_names())
        times, how = [], "the daemon's log (`removed an evicted version`)"
        for _ in range(self.p["slow_reps"]):
            copy = os.path.join(self.run_dir, "tiny-evict-cache")
            shutil.rmtree(copy, ignore_errors=True)
            sh("cp -a %s %s" % (q(cache), q(copy)))
            sh("sync")
            # A budget for about half of them: the start trims the rest, least recent first.
            m = self.mount("tiny-evict", str(max(total // 2, MiB)), copy)
            try:
                with open(m.log_path, errors="replace") as f:
                    logged = [float(x) for x in re.findall(r"removed an evicted version.*?ms=\"?([0-9.]+)", f.read())]
            finally:
                m.remove()
                self.mounts.remove(m)
            if logged:
                times += logged
            else:
                # A binary that logs no eviction time: time the same removal by hand.
                how = "rm -rf of one version directory (this binary logs no eviction time)"
                victim = os.path.join(cache, "versions", sorted(os.listdir(os.path.join(cache, "versions")))[0])
                scratch = os.path.join(self.run_dir, "tiny-evict-victim")
                shutil.rmtree(scratch, ignore_errors=True)
                sh("cp -a %s %s && sync" % (q(victim), q(scratch)))
                times.append(timed("rm -rf %s" % q(scratch)) * 1000)
            shutil.rmtree(copy, ignore_errors=True)
        self.row("tiny_evict", median(times), "ms", samples=times,
                 note="%d evictions of versions of %d files; %s; %d versions cached" % (
                     len(times), self.p["tiny_files"], how, n))

    # ----- a version larger than the cache ---------------------------------------------

    def case_large(self):
        if self.mode == "quick":
            log("  large: skipped in --quick")
            return
        name = "cold-mixed"
        vid, info = self.version(name)
        budget = info["bytes"] // 3
        _, url = self.emu.presigned_url("artifacts", name)
        # The members in archive order (regular files), for the last one and one in the middle.
        members = []
        with tarfile.open(info["path"], "r|gz") as tf:
            for ti in tf:
                if ti.isfile():
                    members.append((ti.name, ti.size))
        last = members[-1][0]
        mid = min(members[len(members) // 3:], key=lambda m: abs(m[1] - MiB) if m[1] >= 512 * 1024 else 1 << 40)
        dest = os.path.join(self.run_dir, "large-extract")

        def download():
            shutil.rmtree(dest, ignore_errors=True)
            os.makedirs(dest)
            sh("sync")
            return timed("curl -sf %s | tar -xzf - -C %s" % (q(url), q(dest)))

        full = [download() for _ in range(self.p["slow_reps"])]
        # find -ls after the first pass, against the same version on a mount it fits.
        fits, _ = self.warm_version(name)
        cache = os.path.join(self.run_dir, "large-cache")
        m = self.mount("large", str(budget), cache)
        root = m.version_dir("artifacts", name, vid)
        sh("ls -lR %s >/dev/null" % q(root))
        b, v = self.pairs(self.p["reps"], lambda: timed("find %s -ls >/dev/null" % q(fits)),
                          lambda: timed("find %s -ls >/dev/null" % q(root)))
        self.time_row("large_find_ls", b, v, "%.0f MiB version, budget %.0f MiB, vs the version on a mount it fits" % (
            info["bytes"] / MiB, budget / MiB))
        seek = [os.path.join(cache, "versions", d, "seek.bin") for d in os.listdir(os.path.join(cache, "versions"))]
        seek = [p for p in seek if os.path.exists(p)]
        if not seek:
            raise BenchError("no seek.bin: the version was not read as one larger than the cache")
        self.row("large_seek_index", os.path.getsize(seek[0]) / info["compressed"], "x",
                 note="%d B of seek index for a %.0f MiB archive" % (os.path.getsize(seek[0]), info["compressed"] / MiB))
        m.stop()
        self.mounts.remove(m)

        # Cold after a restart (spans are emptied at start): one member, a few spans.
        def cold_read(member):
            times, sent = [], []
            for _ in range(self.p["slow_reps"]):
                mm = self.mount("large", str(budget), cache)
                path = os.path.join(mm.version_dir("artifacts", name, vid), member)
                self.emu.reset_counters()
                times.append(timed("cat %s >/dev/null" % q(path)))
                sent.append(self.emu.counters().get("store.bytes", 0))
                mm.stop()
                self.mounts.remove(mm)
            return times, sent

        times, sent = cold_read(last)
        self.time_row("large_last_file", full, times, "`%s` (the archive's last member), vs a full download" % last)
        self.row("large_last_file_bytes", median(sent) / info["compressed"], "x",
                 note="%.1f MiB of the store for it, of a %.0f MiB archive" % (median(sent) / MiB, info["compressed"] / MiB))
        times, _ = cold_read(mid[0])
        self.time_row("large_mid_1m", full, times, "`%s` (%d B, a third of the way in), vs a full download" % mid)

        # rsync of it all, the cache's disk use sampled all along.
        runs, top = self.large_rsync(name, vid, budget, cache, dest)
        self.time_row("large_rsync", full, runs, "rsync -aH to local disk, identical to tar -xzf (diff -r);"
                      " `rsync` reads in name order, which here visits the archive 64 times over (16 x 4"
                      " directories written round-robin)")
        self.row("large_rsync_peak", top / budget, "x",
                 note="peak %.1f MiB of cache disk use (its listings and top-level entries aside) for a budget"
                      " of %.1f MiB (sampled every 50 ms)" % (top / MiB, budget / MiB))
        shutil.rmtree(dest, ignore_errors=True)

        def rsync_after_first_pass(name, budget, cache_name):
            """Full downloads of `name`, then `rsync -aH` of it on mounts of `budget` after its
            first pass: the downloads' times, rsync's times and the cache's peak disk use."""
            nonlocal url
            vid, _ = self.version(name)
            _, url = self.emu.presigned_url("artifacts", name)
            full = [download() for _ in range(self.p["slow_reps"])]
            cache = os.path.join(self.run_dir, cache_name)
            m = self.mount("large", str(budget), cache)
            sh("ls -lR %s >/dev/null" % q(m.version_dir("artifacts", name, vid)))
            m.stop()
            self.mounts.remove(m)
            runs, top = self.large_rsync(name, vid, budget, cache, dest)
            shutil.rmtree(dest, ignore_errors=True)
            return full, runs, top

        # The same files in the order `tar -c` of their tree writes them: each directory's
        # files together, as most archives are.
        full, runs, top = rsync_after_first_pass("mixed-grouped", budget, "large-cache-grouped")
        self.time_row("large_rsync_grouped", full, runs, "the same files archived a directory at a time (as"
                      " `tar -c` of their tree writes them), rsync -aH, identical to tar -xzf; peak cache disk"
                      " use %.2f of the budget" % (top / budget))

        # The same for a version whose name order is its archive order: one 1 GiB file.
        _, info = self.version("big")
        budget = info["bytes"] // 3
        full, runs, top = rsync_after_first_pass("big", budget, "large-cache-seq")
        self.time_row("large_rsync_seq", full, runs, "%.0f MiB version under a budget of %.0f MiB, rsync -aH of it"
                      " (in archive order), identical to tar -xzf; peak cache disk use %.2f of the budget" % (
                          info["bytes"] / MiB, budget / MiB, top / budget))

    def large_rsync(self, name, vid, budget, cache, dest):
        """`rsync -aH` of a version larger than the cache to local disk, each run on a fresh
        mount (no span on disk): the times, and the cache's peak disk use over all runs.
        The copy must be what `tar -xzf` made in `dest`."""
        copy = os.path.join(self.run_dir, "large-copy")
        peaks = []

        def sample(stop, out):
            top = 0
            while not stop.is_set():
                now, by = 0, {}
                for d, dirs, files in os.walk(cache):
                    for x in dirs + files:
                        p = os.path.join(d, x)
                        try:
                            b = os.lstat(p).st_blocks * 512
                        except OSError:
                            continue
                        now += b
                        key = os.path.relpath(p, cache).split(os.sep)[0]
                        by[key] = by.get(key, 0) + b
                # What the budget governs: the saved API listings, the lock and format files
                # and the top-level directories themselves live beside it (doc/SEMANTICS.md).
                for key in ("listings", "lock", "FORMAT"):
                    now -= by.get(key, 0)
                for key in by:
                    if key != "listings" and os.path.isdir(os.path.join(cache, key)):
                        now -= os.lstat(os.path.join(cache, key)).st_blocks * 512
                top = max(top, now)
                time.sleep(0.05)
            out.append(top)

        runs = []
        for _ in range(self.p["slow_reps"]):
            shutil.rmtree(copy, ignore_errors=True)
            mm = self.mount("large", str(budget), cache)
            src = mm.version_dir("artifacts", name, vid)
            sh("ls %s >/dev/null" % q(src))
            stop, out = threading.Event(), []
            t = threading.Thread(target=sample, args=(stop, out))
            t.start()
            sh("sync")
            runs.append(timed("rsync -aH %s/ %s/" % (q(src), q(copy))))
            stop.set()
            t.join()
            peaks.append(out[0])
            mm.stop()
            self.mounts.remove(mm)
        if sh("diff -r %s %s" % (q(dest), q(copy)), check=False).returncode != 0:
            raise BenchError("rsync -aH of %s differs from tar -xzf of its archive" % name)
        shutil.rmtree(copy, ignore_errors=True)
        return runs, max(peaks)

    # ----- peers ---------------------------------------------------------------------

    def debug_mount(self):
        """A mount logging at DEBUG (its READLINKs of `latest` are counted in the log)."""
        if getattr(self, "debug", None) is None:
            self.debug = self.mount("debug", extra=["--log-level", "debug"])
        return self.debug

    def case_latest_lstat(self):
        m = self.debug_mount()
        vid, _ = self.version("files-50k")
        rel = ("pkg000", "mod0", "file000000.txt")
        by_id = os.path.join(m.mnt, "artifacts", "files-50k", vid, *rel)
        by_latest = os.path.join(m.mnt, "artifacts", "files-50k", "latest", *rel)
        sh("cat %s %s >/dev/null" % (q(by_id), q(by_latest)))  # downloaded, both walked once
        n = self.p["lstats"]
        script = self.script("lstat.py", "import os, sys\nfor _ in range(%d):\n    os.lstat(sys.argv[1])\n" % n)
        cmd = "python3 %s {path}" % q(script)
        readlinks = lambda: self.log_count(m, "readlink of latest")  # noqa: E731
        before = readlinks()
        b, v = self.pairs(self.p["reps"], lambda: timed(cmd.format(path=q(by_id))),
                          lambda: timed(cmd.format(path=q(by_latest))))
        sent = readlinks() - before
        self.time_row("latest_lstat", b, v, "%d lstats of one file (one python3 each side)" % n)
        self.row("latest_lstat_readlinks", sent, "requests",
                 note="READLINKs of latest answered during the %d x %d lstats through it" % (self.p["reps"], n))

    def open_read_script(self):
        """The Python script of `python_open` and `fuse_floor`: `open(p, 'rb').read()` of
        each path listed in its argument, relative to its working directory."""
        return self.script("open_read.py", "import sys\nfor p in open(sys.argv[1]).read().splitlines():\n"
                           "    open(p, 'rb').read()\n")

    def script(self, name, text):
        """A Python script in the run directory; its path."""
        path = os.path.join(self.run_dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def log_count(self, m, text):
        with open(m.log_path, errors="replace") as f:
            return sum(1 for line in f if text in line)

    def case_ls_l_latest(self):
        m = self.debug_mount()
        vid, info = self.version("flat")
        by_id = os.path.join(m.mnt, "artifacts", "flat", vid, "flat")
        by_latest = os.path.join(m.mnt, "artifacts", "flat", "latest", "flat")
        cmd = "ls -l {dir} >/dev/null"
        sh(cmd.format(dir=q(by_id)))  # the download, and one listing of each
        sh(cmd.format(dir=q(by_latest)))
        b, v = self.pairs(self.p["reps"], lambda: timed(cmd.format(dir=q(by_id))),
                          lambda: timed(cmd.format(dir=q(by_latest))))
        self.time_row("ls_l_latest", b, v, "%d files in one directory; baseline: ls -l through the id" % info["files"])

    def case_python_open(self):
        root, info = self.warm_version("files-50k")
        local = self.local_tree("files-50k")
        m = self.main_mount()
        n = self.p["cat_files"]
        files = []
        for d, dirs, names in os.walk(local):
            dirs.sort()
            files += [os.path.relpath(os.path.join(d, x), local) for x in sorted(names)]
            if len(files) >= n:
                break
        lst = os.path.join(self.run_dir, "python-list")
        with open(lst, "w") as f:
            f.write("".join(x + "\n" for x in files[:n]))
        script = self.open_read_script()
        cmd = "cd {dir} && python3 %s %s" % (q(script), q(lst))
        sh(cmd.format(dir=q(local)))  # both sides' content in the page cache
        sh(cmd.format(dir=q(root)))
        lines = lambda: self.log_count(m, "ioctl")  # noqa: E731
        before = lines()
        b, v = self.pairs(self.p["reps"], lambda: timed(cmd.format(dir=q(local))),
                          lambda: timed(cmd.format(dir=q(root))))
        self.time_row("python_open", b, v, "%d files, open(p, 'rb').read() in one python3; content in the page cache" % n)
        self.row("python_open_log_lines", lines() - before, "lines",
                 note="log lines about ioctls left by the timed runs (one TCGETS per open())")

    def case_fio_dio(self):
        if self.mode == "quick":
            log("  fio_dio: skipped in --quick")
            return
        if shutil.which("fio") is None:
            raise BenchError("fio is not installed (scripts/bench.sh installs it)")
        f, _, size = self.big_file_and_blob()
        iops = {}
        for depth in (1, 16):
            out = sh("fio --name=dio --filename=%s --readonly --rw=randread --bs=4k --direct=1 --ioengine=libaio"
                     " --iodepth=%d --runtime=5 --time_based --output-format=json" % (q(f), depth), capture=True)
            iops[depth] = json.loads(out[out.index("{"):])["jobs"][0]["read"]["iops"]
        self.row("fio_dio", iops[16], "IOPS", iops[1],
                 note="%.0f MiB file, 5 s each; baseline: the same at iodepth 1" % (size / MiB))

    def case_fuse_floor(self):
        name = "tiny-00"
        root, info = self.warm_version(name)
        local = self.local_tree(name)
        big, blob, size = self.big_file_and_blob()
        files = self.p["tiny_files"]
        floor = os.path.join(self.run_dir, "fuse-floor")
        os.makedirs(floor)
        log_path = os.path.join(self.run_dir, "fuse-floor.log")
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen([os.path.join(BIN, "examples", "fuse_floor"), floor, "--dirs",
                                     str((files + 99) // 100), "--files", "100", "--file", blob],
                                    stdout=log_file, stderr=log_file, start_new_session=True)
        self.state.add("pids", proc.pid)
        self.state.add("mounts", floor)
        try:
            first = os.path.join(floor, "d0000", "f000000.txt")
            deadline = time.monotonic() + 30
            while not os.path.exists(first):
                if proc.poll() is not None or time.monotonic() > deadline:
                    with open(log_path) as f:
                        raise BenchError("fuse_floor did not mount at %s: %s" % (floor, f.read().strip()[-2000:]))
                time.sleep(0.02)
            self.floor_rows(root, local, floor)
            self.floor_seq(big, blob, size, os.path.join(floor, "file"))
        finally:
            sh("umount -l %s" % q(floor), check=False)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.state.remove("mounts", floor)
            self.state.remove("pids", proc.pid)

    def floor_rows(self, vm0fs, local, floor):
        """The same runs on local files, the floor and vm0fs, in turns (see `case_fuse_floor`).
        The walks come first: the opens look files up in directories whose first listing
        reply was cut, which makes vm0fs' first replies whole for a while (`fs/plus.rs`),
        and a walk in that while makes an inode of every file (the floor never does)."""
        trees = (("local", local), ("floor", floor), ("vm0fs", vm0fs))
        if self.can_drop_dentries("floor_walk, walk_vs_floor"):
            walks = {side: [] for side, _ in trees}
            for _ in range(self.p["reps"]):
                for side, tree in trees:
                    walks[side].append(self.timed_cold(tree, "find ."))
            note = "find . in a tree of %d files in %d directories, the kernel's dentries and inodes dropped before each" % (
                self.p["tiny_files"], (self.p["tiny_files"] + 99) // 100)
            self.time_row("floor_walk", walks["local"], walks["floor"], note + "; the floor vs local files")
            self.time_row("walk_vs_floor", walks["floor"], walks["vm0fs"], note + "; vm0fs vs the floor")
        n = min(self.p["cat_files"], self.p["tiny_files"])
        lst = os.path.join(self.run_dir, "floor-list")
        with open(lst, "w") as f:
            f.write("".join("d%04d/f%06d.txt\n" % (i // 100, i) for i in range(n)))
        script = self.open_read_script()
        cmd = "cd %s && python3 %s %s"
        for _, tree in trees:
            sh(cmd % (q(tree), q(script), q(lst)))  # every side's files in the page cache
        opens = {side: [] for side, _ in trees}
        for _ in range(self.p["reps"]):
            for side, tree in trees:
                opens[side].append(timed(cmd % (q(tree), q(script), q(lst))))
        note = "%d files in %s's shape, open(p, 'rb').read() in one python3, warm" % (n, "tiny-00")
        self.time_row("floor_python_open", opens["local"], opens["floor"], note + "; the floor vs local files")
        self.time_row("python_open_vs_floor", opens["floor"], opens["vm0fs"], note + "; vm0fs vs the floor")

    def floor_seq(self, big, blob, size, floor_file):
        """The large file read in order, its pages evicted first, as `warm_seq` reads it: on
        vm0fs, on the floor (one `pread` of the same cache blob per request) and the blob."""
        reads = {"blob": [], "floor": [], "vm0fs": []}
        for _ in range(self.p["reps"]):
            for side, path in (("blob", blob), ("floor", floor_file), ("vm0fs", big)):
                evict(big, floor_file, blob)
                reads[side].append(timed("cat %s >/dev/null" % q(path)))
        note = "%.0f MiB file, its pages (on the mount and of the cache blob) evicted before each read" % (size / MiB)
        self.rate_row("floor_seq", size, reads["blob"], reads["floor"], note + "; the floor vs cat of the blob")
        self.rate_row("warm_seq_vs_floor", size, reads["floor"], reads["vm0fs"], note + "; vm0fs vs the floor")

    def peer_mount(self, tool, archive_name):
        """Mount `archive_name` with `tool`; the directory that holds its files."""
        self.mount_count += 1
        if tool == "vm0fs":
            m = self.mount("peer-vm0fs", "8G")
            vid, _ = self.version(archive_name)
            return m, m.path("artifacts", archive_name, vid)
        _, info = self.version(archive_name)
        mnt = os.path.join(self.run_dir, "peer-%s-%d" % (tool, self.mount_count))
        os.makedirs(mnt)
        if tool == "ratarmount":
            index = os.path.join(self.run_dir, "ratarmount-%d.index.sqlite" % self.mount_count)
            sh("ratarmount --index-file %s %s %s" % (q(index), q(info["path"]), q(mnt)), timeout=PEER_TIMEOUT)
        else:
            sh("archivemount -o ro %s %s" % (q(info["path"]), q(mnt)), timeout=PEER_TIMEOUT)
        self.state.add("mounts", mnt)
        return mnt, mnt

    def peer_unmount(self, handle):
        if isinstance(handle, Mount):
            handle.remove()
            self.mounts.remove(handle)
            return
        subprocess.run(["fusermount", "-u", handle], stderr=subprocess.DEVNULL)
        if is_mounted(handle):
            subprocess.run(["umount", "-l", handle], stderr=subprocess.DEVNULL)
        self.state.remove("mounts", handle)

    def run_peers(self):
        """Each tool in turn on the same two archives: a fresh mount for the cold rows,
        then the warm rows on it (one untimed pass first)."""
        self.setup()
        results = {}

        def t(cmd):
            t0 = time.perf_counter()
            try:
                sh(cmd, timeout=PEER_TIMEOUT)
            except subprocess.TimeoutExpired:
                return None
            return time.perf_counter() - t0

        def best(cmd, reps):
            runs = [t(cmd) for _ in range(reps)]
            runs = [x for x in runs if x is not None]
            return median(runs) if runs else None

        for tool in PEERS:
            log("peers: %s" % tool)
            r = results[tool] = {}
            sh("sync")
            t0 = time.perf_counter()
            handle, root = self.peer_mount(tool, "files-20k")
            found = t("find %s >/dev/null" % q(root))
            r["peer_cold_find"] = None if found is None else time.perf_counter() - t0
            r["peer_warm_find_ls"] = best("find %s -ls >/dev/null" % q(root), 3)
            cat = "find %s -type f -print0 | xargs -0 cat >/dev/null" % q(root)
            if t(cat) is None:
                r["peer_warm_cat"] = None
            else:
                r["peer_warm_cat"] = best(cat, 2)
            self.peer_unmount(handle)
            sh("sync")
            t0 = time.perf_counter()
            handle, root = self.peer_mount(tool, "after-64m")
            done = t("cat %s >/dev/null" % q(os.path.join(root, "last.txt")))
            r["peer_cold_after_big"] = None if done is None else time.perf_counter() - t0
            big = "cat %s >/dev/null" % q(os.path.join(root, "big.bin"))
            r["peer_warm_cat_big"] = None if t(big) is None else best(big, 3)
            self.peer_unmount(handle)
        for case, what in PEER_CASES:
            v = results["vm0fs"][case]
            others = [results[p][case] for p in PEERS[1:] if results[p][case] is not None]
            best_peer = min(others) if others else None
            note = "%s; " % what + ", ".join(
                "%s %s" % (p, "timeout" if results[p][case] is None else "%.3f s" % results[p][case]) for p in PEERS)
            if v is None:
                raise BenchError("vm0fs did not finish %s within %d s" % (case, PEER_TIMEOUT))
            self.row(case, v * 1000, "ms", None if best_peer is None else best_peer * 1000, note=note)
            self.rows[-1]["peers"] = {p: results[p][case] for p in PEERS}
            if best_peer is not None:
                self.rows[-1]["met"] = v <= best_peer
                self.rows[-1]["target"] = "<= best peer"

    # ----- driving -----------------------------------------------------------------

    def run(self, cases):
        self.setup()
        for name in cases:
            log("case %s" % name)
            t0 = time.time()
            try:
                getattr(self, "case_" + name)()
            except BenchError as e:
                log("case %s FAILED: %s" % (name, e))
                self.failures.append(name)
                self.rows.append({"name": name, "value": None, "unit": None, "baseline": None,
                                  "ratio": None, "error": str(e)[:500]})
            log("case %s took %.1f s" % (name, time.time() - t0))


def fmt_num(x):
    if x is None:
        return "-"
    if isinstance(x, int) or abs(x) >= 100:
        return "%.0f" % x
    if abs(x) >= 10:
        return "%.1f" % x
    return "%.2f" % x


def fmt_row(r):
    if r.get("error"):
        return "ERROR"
    s = "%s %s" % (fmt_num(r["value"]), r["unit"])
    if r["baseline"] is not None:
        s += " vs %s %s, ratio %.2f" % (fmt_num(r["baseline"]), r["unit"], r["ratio"])
    return s


def table(rows):
    head = ["case", "vm0fs", "baseline", "unit", "ratio", "target", "met"]
    lines = []
    for r in rows:
        if r.get("error"):
            lines.append([r["name"], "ERROR", "", "", "", TARGET_STR(r["name"]), ""])
            continue
        met = {True: "yes", False: "NO", None: ""}[r.get("met")]
        lines.append([r["name"], fmt_num(r["value"]), fmt_num(r["baseline"]), r["unit"],
                      "" if r["ratio"] is None else "%.2f" % r["ratio"], r.get("target") or "", met])
    widths = [max(len(str(x[i])) for x in [head] + lines) for i in range(len(head))]
    out = []
    for i, l in enumerate([head] + lines):
        out.append("  ".join(str(c).ljust(w) if j == 0 else str(c).rjust(w) for j, (c, w) in enumerate(zip(l, widths))))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def TARGET_STR(name):
    t = TARGETS.get(name)
    return "" if t is None else "%s %s" % t


def sha256(path):
    import hashlib
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()[:16]


def machine():
    def read(path):
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            return ""
    mem = [l for l in read("/proc/meminfo").splitlines() if l.startswith("MemTotal")]
    cpu = [l.split(":", 1)[1].strip() for l in read("/proc/cpuinfo").splitlines() if l.startswith("model name")]
    root_dev = subprocess.run(["findmnt", "-no", "SOURCE,FSTYPE", "-T", BENCH_DIR], capture_output=True, text=True).stdout.strip()
    disk = subprocess.run(["lsblk", "-dno", "NAME,ROTA,SIZE,MODEL"], capture_output=True, text=True).stdout.strip()
    git = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                           capture_output=True, text=True).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(),
        "cpu": cpu[0] if cpu else "",
        "mem": mem[0].split(":", 1)[1].strip() if mem else "",
        "kernel": platform.release(),
        "filesystem": root_dev,
        "disks": disk.replace("\n", "; "),
        "git": git + (" (src modified)" if dirty else ""),
        "loadavg_start": read("/proc/loadavg").split()[:3],
    }


def main():
    ap = argparse.ArgumentParser(prog="scripts/bench.sh", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="cases, in run order:\n" + "\n".join("  %-15s %s" % c for c in CASES)
                                 + "\n\nwith --peers (vm0fs, ratarmount, archivemount):\n"
                                 + "\n".join("  %-20s %s" % c for c in PEER_CASES))
    ap.add_argument("--quick", action="store_true", help="small sizes, few runs (about a minute; CI)")
    ap.add_argument("--only", metavar="CASE[,CASE]", help="run only these cases (comma-separated)")
    ap.add_argument("--reps", type=int, metavar="N", help="timed runs per side (default: 7, 3 for the slow cases; quick: 3/2)")
    ap.add_argument("--out", metavar="FILE", default=os.path.join(BENCH_DIR, "results.json"),
                    help="JSON results (default: target/bench/results.json)")
    ap.add_argument("--mount-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for every `vm0fs mount` (repeatable), e.g. --mount-arg=--threads=4")
    ap.add_argument("--read-ahead-kb", type=int, metavar="KB",
                    help="set the FUSE mounts' read_ahead_kb (sysfs, root) after mounting: a lever to measure")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (logs, caches) for inspection")
    ap.add_argument("--vm0fs-bin", metavar="PATH",
                    help="measure this vm0fs binary instead of the release build (a before/after table)")
    ap.add_argument("--peers", action="store_true",
                    help="ratarmount and archivemount side by side with vm0fs on the same archives (not with --quick)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args()
    if args.list:
        for c in CASES:
            print("%-15s %s" % c)
        return 0
    cases = CASE_NAMES
    if args.only:
        cases = [c.strip() for c in args.only.split(",") if c.strip()]
        unknown = [c for c in cases if c not in CASE_NAMES]
        if unknown:
            ap.error("unknown case(s) %s; cases: %s" % (", ".join(unknown), ", ".join(CASE_NAMES)))

    if args.peers and (args.quick or args.only):
        ap.error("--peers runs its own cases, at full size: not with --quick or --only")
    bench = Bench(args)
    stopped = []

    def on_signal(sig, _frame):
        stopped.append(sig)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    info = machine()
    t0 = time.time()
    broken = None
    try:
        if args.peers:
            bench.run_peers()
        else:
            bench.run(cases)
    except KeyboardInterrupt:
        broken = "interrupted"
    except BenchError as e:
        broken = str(e)
    finally:
        # A second Ctrl-C or TERM must not cut the cleanup short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        bench.cleanup()
    info["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    info["elapsed_s"] = round(time.time() - t0, 1)
    info["mode"] = bench.mode
    info["mount_args"] = args.mount_arg
    info["read_ahead_kb_option"] = args.read_ahead_kb
    info["vm0fs_sha256"] = sha256(vm0fs_bin(args))
    info.update(bench.meta)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(bench.rows, f, indent=1)
        f.write("\n")
    meta_path = os.path.splitext(args.out)[0] + ".meta.json"
    with open(meta_path, "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")

    print()
    print("vm0fs benchmark (%s mode), %s, %d CPUs, %s, load %s -> %s, %.0f s" % (
        bench.mode, info["date"], info["nproc"], info["mem"], " ".join(info["loadavg_start"]),
        " ".join(info["loadavg_end"]), info["elapsed_s"]))
    print("vm0fs: %s, binary sha256 %s%s" % (info["git"], info["vm0fs_sha256"],
          "".join(" " + a for a in args.mount_arg) and ", mount args:" + "".join(" " + a for a in args.mount_arg)))
    if bench.meta.get("fuse"):
        print("FUSE mount: %s" % ", ".join("%s=%s" % kv for kv in bench.meta["fuse"].items()))
    print()
    print(table(bench.rows))
    print()
    judged = [r for r in bench.rows if r.get("met") is not None]
    print("targets met: %d of %d" % (sum(1 for r in judged if r["met"]), len(judged)))
    print("ratio = vm0fs / baseline (medians of runs alternating with the baseline's); met = the target")
    print("results: %s (machine: %s)" % (os.path.relpath(args.out, os.getcwd()), os.path.relpath(meta_path, os.getcwd())))
    if broken:
        log("the benchmark did not complete: %s" % broken)
        return 1
    if bench.failures:
        log("failed cases: %s" % ", ".join(bench.failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
