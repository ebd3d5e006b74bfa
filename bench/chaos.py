#!/usr/bin/env python3
"""Chaos run: a mixed workload on an HA cluster while the harness breaks things, for
--duration-s seconds (see bench/README.md, "Chaos").

The cluster, all on this machine but each daemon in a network namespace of its own ("host"),
joined by a bridge (default chaosbr0, 10.77.0.254/24 in the root namespace):

  * a private PostgreSQL server (initdb in the run dir, as `postgres`) on 10.77.0.254, so it
    can be restarted without touching the machine's shared server;
  * two `spindle resource-manager` on hosts h1 and h2 (10.77.0.1:8030, 10.77.0.2:8030), one
    active, one standby (leader_lease 2, node_expiry 10, heartbeat_interval 500 by default);
  * --agents node agents on hosts h3, h4, ... (10.77.0.N:8040), given both RMs' URLs.

Workload, for the whole duration: --concurrency jobs at a time, in turn

  * a MapReduce word count (built-in `wordcount` mapper, `sum` combiner and reducer) over one of
    --inputs generated texts (seeded Zipf words, --text-mb MB in two files, read --text-copies
    times through hard links; 1 MB splits, at most --max-containers task containers at once);
  * an exactly-once stream job: 2 seeded generators (bounded by `limit`, throttled by `rate`,
    a new seed per job) → key_by → 1 s tumbling count → file_sink; the job ends by itself;
  * the same word count with a Hadoop Streaming mapper, `sleep --awk-sleep-s; awk ...` (as in
    app-master's tests), over the two original files: slower tasks, more likely to be hit;
  * another stream job; and so on.

Each job is submitted over REST with an Idempotency-Key (resent, with the same key, to whichever
RM is active until one acknowledges it). Every job must end FINISHED/SUCCEEDED and its output
must be exact: the word counts equal to the text's (times its copies), each word once; the stream's committed
`key<TAB>start<TAB>end<TAB>count` lines equal to the counts computed from the generators' seed
(a Python port of `expected_window_counts`), each (key, window) once.

Faults, one every --fault-min-s to --fault-max-s seconds after the previous one ended, kinds
taken from a shuffled bag (so each comes up about as often):

  rm_kill9                kill -9 the active RM; restart it ~2 s later (it comes back standby)
  agent_sigterm_restart   SIGTERM an agent and start it again (same address and work dir)
  agent_kill9_restart     kill -9 an agent and start it again 0-3 s later
  agent_kill_for_good     the agent's host crashes: its link goes down and every process in
                          its namespace (agent and containers) is killed -9; then, in turn,
                          a replacement agent on a new host 3 s later; the same host
                          "rebooted" (same address and work dir) once its node is LOST; or the
                          same host rebooted after 3 s, within the node expiry
  pg_restart              `pg_ctl -m immediate stop`, down 1-4 s, start
  partition_short         the host's veth on the bridge side down for 3-6 s (< node_expiry)
  partition_long          down for node_expiry + 5-10 s: the node goes LOST, its work re-runs
                          elsewhere, and when healed its stale containers must be killed

After each fault the script checks what must hold (a new active RM within 10 s; the agent's node
RUNNING again; its containers kept across a restart; a crashed host's node LOST and its
containers ended; a short partition not LOST, a long one LOST and back, no stale container
process left). At the end (no new jobs after the duration; the running ones are waited for):
one active RM and one standby, every acknowledged app listed once, every live node RUNNING, no
container process left on any host, no daemon died unasked, no panic in any log.

It prints each injection and check with a UTC timestamp (stderr, and events.log in the run dir)
and a JSON summary on stdout (summary.json in the run dir).

Usage: bench/chaos.py --duration-s 600 [--spindle /dev/shm/spindle-chaos] [--seed N]
                      [--concurrency 2] [--agents 3] [--faults rm_kill9,pg_restart,...] [--json]
Needs root (namespaces, the bridge, containers as `nobody`), Debian's PostgreSQL server binaries
(/usr/lib/postgresql/*/bin), `ip`, `nsenter` and `runuser`; Python standard library only.
Everything it starts is stopped and the namespaces and bridge removed at the end, also on error
or Ctrl-C; the run dir (logs, outputs) is kept.
"""
import argparse
import collections
import datetime
import glob
import http.client
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

ADMIN_TOKEN = "chaos-admin-" + secrets.token_hex(8)
CLUSTER_SECRET = "chaos-secret-" + secrets.token_hex(8)
RM_PORT = 8030
AGENT_PORT = 8040
FAULT_KINDS = ("rm_kill9", "agent_sigterm_restart", "agent_kill9_restart", "agent_kill_for_good",
               "pg_restart", "partition_short", "partition_long")
CRASH_VARIANTS = ("new_host", "reboot_after_expiry", "reboot_within_expiry")
TERMINAL = ("FINISHED", "FAILED", "KILLED")

RM_CONFIG = """\
db = {db}
cluster_secret = {secret}
leader_lease = {lease:g}
node_expiry = {node_expiry}
heartbeat_interval = {heartbeat_ms}

[[users]]
name = "admin"
token = {token}
admin = true

[queues]
name = "root"

[[queues.children]]
name = "default"
guaranteed_percent = 100
am_share_percent = 50
"""


# ---------------------------------------------------------------------------------------------
# Reporting

class Recorder:
    """Events (printed and kept in events.log), checks and anomalies of the run."""

    def __init__(self):
        self.lock = threading.Lock()
        self.start = time.time()
        self.file = None
        self.checks = []
        self.anomalies = []

    def open(self, path):
        self.file = open(path, "a", buffering=1)

    def log(self, what, message):
        now = time.time()
        stamp = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
        line = f"{stamp}Z +{now - self.start:7.1f}s {what:7} {message}"
        with self.lock:
            print(line, file=sys.stderr, flush=True)
            if self.file:
                self.file.write(line + "\n")

    def check(self, name, ok, detail=""):
        with self.lock:
            self.checks.append({"name": name, "ok": bool(ok), "detail": detail, "at": round(time.time() - self.start, 1)})
        self.log("CHECK", f"{'pass' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""))
        return ok

    def anomaly(self, message):
        with self.lock:
            self.anomalies.append({"at": round(time.time() - self.start, 1), "what": message})
        self.log("ANOMALY", message)


REC = Recorder()


def log(what, message):
    REC.log(what, message)


# ---------------------------------------------------------------------------------------------
# Processes, namespaces, the bridge

def run(*argv, check=True):
    result = subprocess.run(argv, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()}")
    return result


def netns_inode(ns):
    try:
        return os.stat(f"/run/netns/{ns}").st_ino
    except OSError:
        return None


def pids_in_netns(ns):
    """Every process whose network namespace is `ns`."""
    inode = netns_inode(ns)
    pids = []
    if inode is None:
        return pids
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == inode:
                pids.append(int(pid))
        except OSError:
            continue
    return pids


def process_env(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:
        return {}
    env = {}
    for item in data.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def containers_in_netns(ns):
    """container id → pids of the processes in `ns` that belong to a container (by their
    SPINDLE_CONTAINER_ID)."""
    found = collections.defaultdict(list)
    for pid in pids_in_netns(ns):
        cid = process_env(pid).get("SPINDLE_CONTAINER_ID")
        if cid:
            found[cid].append(pid)
    return dict(found)


def kill_netns(ns, timeout=10):
    """SIGKILL every process in `ns` until none is left; how many were killed."""
    killed = set()
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = pids_in_netns(ns)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return len(killed)


def app_of_container(cid):
    """container_e01_<ts>_<seq>_<attempt>_<n> → application_<ts>_<seq>."""
    parts = cid.split("_")
    return f"application_{parts[2]}_{parts[3]}" if len(parts) >= 6 else None


class Network:
    """The bridge and one namespace ("host") per daemon; host n is <prefix>.n."""

    def __init__(self, prefix, bridge):
        self.prefix, self.bridge = prefix, bridge
        self.hosts = set()
        self.bridge_up = False

    # Named after the bridge, so runs with another --bridge (tests/chaos.rs) never collide.
    def ns(self, n):
        return f"{self.bridge}-h{n}"

    def veth(self, n):
        return f"{self.bridge[:9]}v{n}"

    def ip(self, n):
        return f"{self.prefix}.{n}"

    def gateway(self):
        return f"{self.prefix}.254"

    def leftovers(self):
        found = []
        if run("ip", "link", "show", self.bridge, check=False).returncode == 0:
            found.append(f"bridge {self.bridge}")
        found += [f"namespace {name}" for name in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else [])
                  if name.startswith(f"{self.bridge}-h")]
        return found

    def up(self):
        run("ip", "link", "add", "name", self.bridge, "type", "bridge")
        self.bridge_up = True
        run("ip", "addr", "add", f"{self.gateway()}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")

    def add_host(self, n):
        ns, veth, peer = self.ns(n), self.veth(n), f"chp{n}"
        run("ip", "netns", "add", ns)
        self.hosts.add(n)
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
        run("ip", "link", "set", peer, "netns", ns)
        run("ip", "link", "set", veth, "master", self.bridge)
        run("ip", "link", "set", veth, "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", ns, "addr", "add", f"{self.ip(n)}/24", "dev", peer)
        run("ip", "-n", ns, "link", "set", peer, "up")

    def link(self, n, up):
        run("ip", "link", "set", self.veth(n), "up" if up else "down")

    def remove_host(self, n):
        kill_netns(self.ns(n))
        run("ip", "link", "del", self.veth(n), check=False)
        run("ip", "netns", "del", self.ns(n), check=False)
        self.hosts.discard(n)

    def down(self):
        for n in sorted(self.hosts):
            self.remove_host(n)
        if self.bridge_up:
            run("ip", "link", "del", self.bridge, check=False)
            self.bridge_up = False


class Daemon:
    """A spindle daemon in a host's namespace (`nsenter --net`, which execs: the pid is the
    daemon's). `expected` says whether it should be running (the watchdog's business)."""

    def __init__(self, name, ns, argv, log_path, env):
        self.name, self.ns, self.argv, self.log_path, self.env = name, ns, argv, log_path, env
        self.proc = None
        self.expected = False
        self.starts = 0

    def start(self):
        with open(self.log_path, "a") as out:
            out.write(f"=== chaos: start #{self.starts + 1} of {self.name} at "
                      f"{datetime.datetime.now(datetime.timezone.utc).isoformat()} ===\n")
            out.flush()
            self.proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.ns}", "--", *self.argv],
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        self.expected = True

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig):
        if self.proc is not None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout):
        """Waits for the process to end; True if it did within `timeout`."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self, sig=signal.SIGTERM, timeout=15):
        self.expected = False
        if not self.alive():
            return
        self.send(sig)
        if not self.wait(timeout):
            self.send(signal.SIGKILL)
            self.wait(10)

    def log_tail(self, chars=1500):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-chars:]
        except OSError:
            return ""


class Postgres:
    """A private PostgreSQL server (as the `postgres` account) in `dir`."""

    def __init__(self, dir, host, port):
        self.dir, self.host, self.port = dir, host, port
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not versions:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.bin = os.path.dirname(versions[-1])
        self.data = os.path.join(dir, "data")
        self.log_path = os.path.join(dir, "server.log")
        self.running = False

    def url(self):
        return f"postgres://postgres@{self.host}:{self.port}/postgres"

    def as_postgres(self, program, *args):
        result = subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(self.bin, program), *args],
                                cwd=self.dir, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed: {result.stderr.strip()} {result.stdout.strip()[-500:]}")

    def init(self):
        os.makedirs(self.dir, exist_ok=True)
        shutil.chown(self.dir, "postgres", "postgres")
        self.as_postgres("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        # The RMs connect from their hosts' addresses.
        with open(os.path.join(self.data, "pg_hba.conf"), "a") as f:
            f.write(f"host all all {self.host.rsplit('.', 1)[0]}.0/24 trust\n")

    def start(self):
        options = (f"-p {self.port} -c listen_addresses={self.host} -c unix_socket_directories='' -c fsync=off "
                   f"-c max_connections=200")
        self.as_postgres("pg_ctl", "-D", self.data, "-l", self.log_path, "-o", options, "-w", "start")
        self.running = True

    def stop(self):
        self.as_postgres("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        self.running = False


# ---------------------------------------------------------------------------------------------
# The REST client: follows the active RM, resends reads and keyed submissions

class ApiError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status, self.body = status, body


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


class Client:
    def __init__(self, urls, token):
        self.urls, self.token = list(urls), token
        self.active = None

    def call(self, method, path, body=None, key=None, deadline_s=120, timeout=10):
        """The JSON answer of the active RM. A standby's answer, a 503, a connection that
        fails, and (for reads and keyed submissions) a timeout or reset, move on to the next
        URL; rounds repeat every 0.25 s until `deadline_s`."""
        resend = method == "GET" or key is not None
        data = json.dumps(body).encode() if body is not None else None
        deadline = time.time() + deadline_s
        last = "no answer"
        while True:
            candidates = ([self.active] if self.active else []) + [u for u in self.urls if u != self.active]
            for base in candidates:
                req = urllib.request.Request(base + path, data=data, method=method)
                req.add_header("Authorization", "Bearer " + self.token)
                req.add_header("Content-Type", "application/json")
                if key:
                    req.add_header("Idempotency-Key", key)
                try:
                    with OPENER.open(req, timeout=timeout) as resp:
                        text = resp.read()
                        if resp.headers.get("x-spindle-role") == "standby":
                            last = f"{base}: a standby ({resp.status})"
                            continue
                        self.active = base
                        return json.loads(text) if text else None
                except urllib.error.HTTPError as err:
                    text = err.read().decode(errors="replace")
                    if err.headers.get("x-spindle-role") == "standby" or err.code in (307, 502, 503, 504):
                        last = f"{base}: {err.code} {text[:200]}"
                        if self.active == base:
                            self.active = None
                        continue
                    if err.code >= 500 and resend:
                        last = f"{base}: {err.code} {text[:200]}"
                        continue
                    raise ApiError(err.code, text) from None
                except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as err:
                    reason = getattr(err, "reason", err)
                    refused = isinstance(reason, ConnectionRefusedError) or "refused" in str(reason).lower()
                    if not (resend or refused):
                        raise
                    last = f"{base}: {reason}"
                    if self.active == base:
                        self.active = None
                    continue
            if time.time() > deadline:
                raise TimeoutError(f"{method} {path}: no active RM answered in {deadline_s} s (last: {last})")
            time.sleep(0.25)


def health(url, timeout=1.0):
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=timeout) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Workload data and checks

LETTERS = string.ascii_lowercase


def make_texts(rng, directory, sets, mb, copies):
    """`sets` input dirs, each with two generated files (part-0.txt, part-1.txt) of ~mb/2 MB
    of Zipf-distributed words, plus copies-1 hard links of each (copyN-part-K.txt). Returns
    (dir, counts of the two files: bytes word → count) per set."""
    expected = []
    vocabulary = sorted({"".join(rng.choices(LETTERS, k=rng.randint(1, 12))) for _ in range(30000)})
    rng.shuffle(vocabulary)
    weights, total = [], 0.0
    for rank in range(len(vocabulary)):
        total += 1.0 / (rank + 1) ** 1.05
        weights.append(total)
    for index in range(sets):
        set_dir = os.path.join(directory, f"text{index}")
        os.makedirs(set_dir, 0o755)
        os.chmod(set_dir, 0o755)
        counts = collections.Counter()
        for part in range(2):
            target = mb * 1_000_000 // 2
            lines, size = [], 0
            while size < target:
                words = rng.choices(vocabulary, cum_weights=weights, k=rng.randint(1, 16))
                counts.update(w.encode() for w in words)
                separators = rng.choices((" ", " ", " ", " ", "  ", "\t"), k=len(words) - 1) + [""]
                line = "".join(w + s for w, s in zip(words, separators))
                if rng.random() < 0.05:
                    line = " " + line + " "
                lines.append(line)
                size += len(line) + 1
            path = os.path.join(set_dir, f"part-{part}.txt")
            with open(path, "w") as f:
                f.write("\n".join(lines) + "\n")
            os.chmod(path, 0o644)
            for copy in range(1, copies):
                os.link(path, os.path.join(set_dir, f"copy{copy}-part-{part}.txt"))
        expected.append((set_dir, counts))
    return expected


MASK = (1 << 64) - 1


def splitmix64(x):
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def expected_window_counts(seed, instances, keys, limit, event_rate, size_ms):
    """app-master/src/stream/ops/generator.rs `expected_window_counts`: (key, window start) →
    count of generator → key_by $1 → tumbling count of `size_ms`."""
    counts = collections.Counter()
    for instance in range(instances):
        base = seed ^ (instance << 40)
        for n in range(limit):
            h = splitmix64(base ^ n)
            t = n * 1000 // event_rate
            counts[(f"k{h % keys}", t - t % size_ms)] += 1
    return counts


def compare(expected, got, what):
    """None if equal, else a description with up to 5 examples of each difference."""
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    wrong = [(k, expected[k], got[k]) for k in expected if k in got and got[k] != expected[k]]
    if not (missing or extra or wrong):
        return None
    return (f"{len(expected)} {what} expected, {len(got)} found; missing {len(missing)} {missing[:5]}, "
            f"extra {len(extra)} {extra[:5]}, wrong {len(wrong)} (key, expected, got) {wrong[:5]}")


def check_wordcount(output, reducers, expected):
    """None if the output is exact, else what is wrong; and notes (unexpected entries)."""
    try:
        entries = sorted(os.listdir(output))
    except OSError as err:
        return f"cannot list {output}: {err}", []
    parts = [e for e in entries if e.startswith("part-r-")]
    others = [e for e in entries if not e.startswith("part-r-") and e != "_SUCCESS"]
    problems = []
    if "_SUCCESS" not in entries:
        problems.append("no _SUCCESS")
    if len(parts) != reducers:
        problems.append(f"{len(parts)} part-r files for {reducers} reducers: {parts}")
    got, twice = {}, []
    for name in parts:
        with open(os.path.join(output, name), "rb") as f:
            for line in f:
                word, _, count = line.rstrip(b"\n").partition(b"\t")
                if word in got:
                    twice.append((word, name))
                got[word] = got.get(word, 0) + int(count)
    if twice:
        problems.append(f"{len(twice)} words appear more than once, e.g. {twice[:5]}")
    diff = compare(expected, got, "words")
    if diff:
        problems.append(diff)
    return ("; ".join(problems) or None), others


def check_stream(out_dir, expected):
    """None if the committed windows are exactly `expected`, each once; and notes."""
    got, twice, bad, files = {}, [], [], 0
    try:
        entries = sorted(os.listdir(out_dir))
    except OSError as err:
        return f"cannot list {out_dir}: {err}", []
    for name in entries:
        if not name.startswith("part-"):
            continue
        files += 1
        with open(os.path.join(out_dir, name)) as f:
            for line in f:
                fields = line.rstrip("\n").split("\t")
                if len(fields) != 4:
                    bad.append((name, line[:80]))
                    continue
                key = (fields[0], int(fields[1]))
                if key in got:
                    twice.append((key, name))
                got[key] = got.get(key, 0) + int(fields[3])
    problems = []
    if bad:
        problems.append(f"{len(bad)} malformed lines, e.g. {bad[:3]}")
    if twice:
        problems.append(f"{len(twice)} (key, window) committed more than once, e.g. {twice[:5]}")
    diff = compare(expected, got, "windows")
    if diff:
        problems.append(diff)
    staging = os.path.join(out_dir, ".staging")
    leftovers = len(os.listdir(staging)) if os.path.isdir(staging) else 0
    notes = [f"{files} part files", f"{leftovers} files left in .staging"]
    return ("; ".join(problems) or None), notes


# ---------------------------------------------------------------------------------------------
# The cluster

class Agent:
    def __init__(self, host, daemon):
        self.host, self.daemon = host, daemon
        self.state = "up"  # up | partitioned | crashed | retired


class Chaos:
    def __init__(self, args, base):
        self.args, self.base = args, base
        self.rng = random.Random(args.seed)
        self.net = Network(args.subnet, args.bridge)
        self.lock = threading.RLock()  # daemon starts/kills vs the watchdog
        self.stop_event = threading.Event()
        self.chaos_over = threading.Event()
        self.rms, self.agents = [], []
        self.next_host = 3
        self.home = os.path.join(base, "home")
        os.makedirs(self.home, 0o700)
        self.env = dict(os.environ, HOME=self.home, SPINDLE_HOME=self.home, RUST_LOG="info")
        for key in ("SPINDLE_RM", "SPINDLE_TOKEN", "SPINDLE_CA_FILE", "SPINDLE_JOIN_TOKEN"):
            self.env.pop(key, None)
        self.pg = None
        self.urls = []
        self.client = None
        self.faults = []
        self.jobs = []
        self.jobs_lock = threading.Lock()
        self.crash_turn = 0
        self.dead_nodes = set()  # node ids of crashed hosts not brought back
        self.load_samples = []

    # -- set-up ------------------------------------------------------------------------------

    def setup(self):
        leftovers = self.net.leftovers()
        if leftovers:
            raise RuntimeError(f"left over from an earlier run: {', '.join(leftovers)} "
                               f"(remove with `ip netns del NAME` / `ip link del {self.args.bridge}`)")
        self.net.up()
        with socket.socket() as s:
            s.bind((self.net.gateway(), 0))
            port = s.getsockname()[1]
        self.pg = Postgres(os.path.join(self.base, "pg"), self.net.gateway(), port)
        self.pg.init()
        self.pg.start()
        log("SETUP", f"PostgreSQL {self.pg.bin} on {self.pg.host}:{port} (data {self.pg.data})")
        config = os.path.join(self.base, "rm.toml")
        with open(config, "w") as f:
            f.write(RM_CONFIG.format(db=json.dumps(self.pg.url()), secret=json.dumps(CLUSTER_SECRET),
                                     lease=self.args.lease, node_expiry=self.args.node_expiry,
                                     heartbeat_ms=self.args.heartbeat_ms, token=json.dumps(ADMIN_TOKEN)))
        for number, host in enumerate((1, 2)):
            self.net.add_host(host)
            address = f"{self.net.ip(host)}:{RM_PORT}"
            self.urls.append(f"http://{address}")
            self.rms.append(Daemon(f"rm{number}", self.net.ns(host),
                                   [self.args.spindle, "resource-manager", "--config", config, "--listen", address,
                                    "--advertise", f"http://{address}"],
                                   os.path.join(self.base, f"rm{number}.log"), self.env))
        self.client = Client(self.urls, ADMIN_TOKEN)
        self.start_rm(0)
        self.wait_steady(60, need_all=False)
        self.start_rm(1)
        self.wait_steady(60)
        token = self.client.call("POST", "/v1/cluster/join-tokens", {"ttl_s": 7 * 24 * 3600})["token"]
        self.token_file = os.path.join(self.base, "join-token")
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        for _ in range(self.args.agents):
            self.add_agent()
        for agent in self.agents:
            self.wait_node(agent, ("RUNNING",), 60)
        log("SETUP", f"RMs {', '.join(self.urls)}; agents {', '.join(self.node_id(a) for a in self.agents)}")

    def start_rm(self, number):
        rm = self.rms[number]
        for _attempt in range(20):
            offset = os.path.getsize(rm.log_path) if os.path.exists(rm.log_path) else 0
            rm.start()
            deadline = time.time() + 30
            while time.time() < deadline and rm.alive():
                if health(self.urls[number], timeout=0.5) is not None:
                    return
                time.sleep(0.05)
            if rm.alive():
                rm.stop(signal.SIGKILL)
                raise RuntimeError(f"{rm.name} did not answer /healthz; see {rm.log_path}")
            rm.expected = False
            with open(rm.log_path, errors="replace") as f:
                f.seek(offset)
                text = f.read()
            if "in use" not in text:
                raise RuntimeError(f"{rm.name} exited: {text[-2000:]}")
            time.sleep(0.5)
        raise RuntimeError(f"{rm.name} could not get its port back")

    def add_agent(self, host=None):
        """Starts an agent on a new host (or on `host` again, same address and work dir)."""
        if host is None:
            host = self.next_host
            self.next_host += 1
            self.net.add_host(host)
            os.makedirs(os.path.join(self.base, f"h{host}"), 0o711)
        work = os.path.join(self.base, f"h{host}", "work")
        daemon = Daemon(f"agent-h{host}", self.net.ns(host),
                        [self.args.spindle, "node-agent", "--rm", ",".join(self.urls),
                         "--listen", f"{self.net.ip(host)}:{AGENT_PORT}", "--work-dir", work,
                         "--join-token-file", self.token_file, "--vcores", str(self.args.agent_vcores),
                         "--memory-mb", str(self.args.agent_memory_mb)],
                        os.path.join(self.base, f"h{host}", "agent.log"), self.env)
        agent = Agent(host, daemon)
        with self.lock:
            daemon.start()
            self.agents.append(agent)
        return agent

    def node_id(self, agent):
        return f"{self.net.ip(agent.host)}:{AGENT_PORT}"

    # -- looking at the cluster -----------------------------------------------------------------

    def roles(self):
        return [health(url) for url in self.urls]

    def steady(self):
        """(number, report) of the one active RM if every other one is its standby, else None."""
        reports = self.roles()
        actives = [n for n, r in enumerate(reports) if r and r.get("role") == "active"]
        if len(actives) != 1:
            return None
        number = actives[0]
        for n, report in enumerate(reports):
            if n == number:
                continue
            if self.rms[n].expected and (not report or report.get("role") != "standby"
                                         or report.get("active") != self.urls[number]):
                return None
        return number, reports[number]

    def wait_steady(self, timeout, need_all=True):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if need_all:
                found = self.steady()
            else:
                reports = self.roles()
                actives = [(n, r) for n, r in enumerate(reports) if r and r.get("role") == "active"]
                found = actives[0] if len(actives) == 1 else None
            if found:
                return found
            time.sleep(0.1)
        raise TimeoutError(f"no steady active/standby pair within {timeout} s: {self.roles()}")

    def nodes(self):
        return {n["node_id"]: n for n in self.client.call("GET", "/v1/nodes", deadline_s=60)}

    def node_report(self, agent):
        try:
            return self.nodes().get(self.node_id(agent))
        except Exception:  # noqa: BLE001 - a failed read is "unknown"
            return None

    def node_state(self, agent):
        node = self.node_report(agent)
        return node["state"] if node else None

    def wait_node(self, agent, states, timeout, since=None):
        """Waits until the agent's node is in one of `states` (and, with `since`, has sent a
        heartbeat after that time); (ok, seconds, last state)."""
        t0 = time.time()
        state = None
        while time.time() - t0 < timeout:
            node = self.node_report(agent)
            state = node["state"] if node else None
            fresh = since is None or (node and node.get("last_heartbeat_ms", 0) >= since * 1000)
            if state in states and fresh:
                return True, time.time() - t0, state
            time.sleep(0.25)
        return False, time.time() - t0, state

    def container_states(self, cids):
        """container id → (state, exit_reason, finished_at_ms, the app's finished_at_ms or None)
        as the RM reports them."""
        by_app = collections.defaultdict(list)
        for cid in cids:
            by_app[app_of_container(cid)].append(cid)
        states = {}
        for app_id, ids in by_app.items():
            if app_id is None:
                continue
            try:
                app = self.client.call("GET", f"/v1/apps/{app_id}", deadline_s=60)
                app_end = app.get("finished_at_ms") if app["state"] in TERMINAL else None
                for c in self.client.call("GET", f"/v1/apps/{app_id}/containers", deadline_s=60):
                    if c["container_id"] in ids:
                        states[c["container_id"]] = (c["state"], c.get("exit_reason"), c.get("finished_at_ms"), app_end)
            except Exception as err:  # noqa: BLE001
                log("NOTE", f"cannot read the containers of {app_id}: {err}")
        return states

    def live_agents(self):
        return [a for a in self.agents if a.state == "up"]

    # -- the watchdog --------------------------------------------------------------------------

    def watchdog(self):
        while not self.stop_event.wait(1.0):
            with self.lock:
                for daemon in self.rms + [a.daemon for a in self.agents if a.state in ("up", "partitioned")]:
                    if daemon.expected and daemon.proc is not None and daemon.proc.poll() is not None:
                        code = daemon.proc.returncode
                        REC.anomaly(f"{daemon.name} exited by itself (exit {code}); restarting it. Log tail: "
                                    f"{daemon.log_tail(600)!r}")
                        try:
                            if daemon in self.rms:
                                self.start_rm(self.rms.index(daemon))
                            else:
                                daemon.start()
                        except Exception as err:  # noqa: BLE001
                            REC.anomaly(f"could not restart {daemon.name}: {err}")
                            daemon.expected = False

    def sampler(self):
        """The machine's load every 2 s: 1-min load average and CPU pressure (some, avg10)."""
        while not self.stop_event.wait(2.0):
            sample = {"t": round(time.time(), 1), "load1": round(os.getloadavg()[0], 2)}
            try:
                with open("/proc/pressure/cpu") as f:
                    sample["cpu_some_avg10"] = float(f.readline().split()[1].split("=")[1])
            except (OSError, IndexError, ValueError):
                pass
            self.load_samples.append(sample)

    def load_at(self, when):
        near = [x for x in self.load_samples if abs(x["t"] - when) <= 3]
        return near[-1] if near else None

    def leadership(self):
        """Every change of role the RMs logged, each marked provoked (within a kill of the
        active RM or a database restart, plus 10 s) or not; and takeovers that an old active's
        step-down followed (in log time)."""
        events = []
        for rm in self.rms:
            try:
                with open(rm.log_path, errors="replace") as f:
                    for line in f:
                        plain = ANSI_RE.sub("", line).strip()
                        if "this resource manager is active" in plain:
                            kind = "active"
                        elif "stepping down to standby" in plain:
                            kind = "step_down"
                        else:
                            continue
                        stamp = log_time(plain)
                        if stamp is None:
                            continue
                        epoch = re.search(r"epoch=(\d+)", plain)
                        reason = re.search(r"reason=(.*)$", plain)
                        events.append({"t": stamp, "rm": rm.name, "event": kind,
                                       "epoch": int(epoch.group(1)) if epoch else None,
                                       "reason": reason.group(1) if reason else None})
            except OSError:
                continue
        events.sort(key=lambda e: e["t"])
        windows = [(f["at_unix"], f["at_unix"] + f.get("took_s", 0) + 10, f"#{f['n']} {f['kind']}")
                   for f in self.faults if f["kind"] in ("rm_kill9", "pg_restart")]
        for e in events:
            cause = [name for lo, hi, name in windows if lo - 1 <= e["t"] <= hi]
            e["provoked_by"] = cause[0] if cause else None
            e["load"] = self.load_at(e["t"])
            e["time"] = datetime.datetime.fromtimestamp(e["t"], datetime.timezone.utc).strftime("%H:%M:%S.%f")[:-3] + "Z"
        overlaps = []
        for i, e in enumerate(events):
            if e["event"] != "active" or e["epoch"] == 1:
                continue
            for later in events[i + 1:]:
                if later["event"] == "step_down" and later["rm"] != e["rm"] and later["epoch"] == (e["epoch"] or 0) - 1:
                    overlaps.append({"new_active": e["rm"], "active_at": e["time"], "old_active": later["rm"],
                                     "old_stepped_down_at": later["time"],
                                     "log_overlap_ms": round((later["t"] - e["t"]) * 1000)})
                    break
        return events, overlaps

    # -- faults --------------------------------------------------------------------------------

    def fault_loop(self, end):
        kinds = [k for k in FAULT_KINDS if k in self.args.faults]
        bag = []
        next_at = time.time() + self.rng.uniform(8, 15)
        while not self.stop_event.is_set():
            if self.stop_event.wait(max(0.0, next_at - time.time())):
                break
            if time.time() >= end:
                break
            if not bag:
                bag = kinds[:]
                self.rng.shuffle(bag)
            kind = bag.pop()
            if kind in ("agent_kill_for_good",) and len(self.live_agents()) < 3:
                kind = self.rng.choice([k for k in kinds if k != "agent_kill_for_good"] or [kind])
            record = {"n": len(self.faults) + 1, "kind": kind, "at": round(time.time() - REC.start, 1),
                      "at_unix": round(time.time(), 3)}
            self.faults.append(record)
            try:
                getattr(self, "fault_" + kind)(record)
            except Exception as err:  # noqa: BLE001 - a fault that could not be carried out is an anomaly
                record["error"] = str(err)
                REC.anomaly(f"fault #{record['n']} {kind} raised: {err}\n{traceback.format_exc()}")
            record["took_s"] = round(time.time() - REC.start - record["at"], 1)
            next_at = time.time() + self.rng.uniform(self.args.fault_min_s, self.args.fault_max_s)
        self.chaos_over.set()

    def pick_agent(self):
        """A live agent; mostly (4 in 5) one that runs containers, if any does."""
        live = self.live_agents()
        if not live:
            raise RuntimeError("no live agent to pick")
        busy = [a for a in live if containers_in_netns(self.net.ns(a.host))]
        if busy and self.rng.random() < 0.8:
            return self.rng.choice(busy)
        return self.rng.choice(live)

    def fault_rm_kill9(self, record):
        number, report = self.wait_steady(30)
        rm = self.rms[number]
        with self.lock:
            rm.expected = False
            t0 = time.time()
            rm.send(signal.SIGKILL)
            rm.wait(10)
        log("FAULT", f"#{record['n']} rm_kill9: killed -9 the active {rm.name} ({self.urls[number]}, epoch "
                     f"{report.get('epoch')})")
        record.update(killed=rm.name, epoch_before=report.get("epoch"))
        # The killed RM comes back 2 s after the kill, or once another has taken over (at most
        # 8 s): so it rejoins as a standby (one restarted before any takeover may take its own
        # lease straight back, which also counts as a new active).
        took_over = None
        restarted = False
        while time.time() - t0 < 20:
            for n in range(len(self.rms)):
                if n == number and not restarted:
                    continue
                r = health(self.urls[n], timeout=0.5)
                if r and r.get("role") == "active" and took_over is None:
                    took_over = (n, time.time() - t0, r.get("epoch"))
            waited = time.time() - t0
            if not restarted and waited >= 2.0 and (took_over or waited >= 8.0):
                with self.lock:
                    self.start_rm(number)
                restarted = True
                log("FAULT", f"#{record['n']} rm_kill9: restarted {rm.name} {time.time() - t0:.1f} s after the kill")
            if restarted and took_over:
                break
            time.sleep(0.05)
        if took_over:
            record.update(new_active=self.rms[took_over[0]].name, kill_to_active_s=round(took_over[1], 2),
                          epoch_after=took_over[2])
        self.check_steady_after(record, t0)
        REC.check("rm_kill9: a new active RM within 10 s", took_over is not None and took_over[1] < 10,
                  f"{self.rms[took_over[0]].name} active {took_over[1]:.2f} s after the kill (epoch {took_over[2]})"
                  if took_over else "no RM active within 20 s of the kill")

    def check_steady_after(self, record, t0):
        try:
            number, report = self.wait_steady(30)
            REC.check(f"{record['kind']}: one active RM and a standby naming it within 30 s", True,
                      f"{self.rms[number].name} active, epoch {report.get('epoch')}, {time.time() - t0:.1f} s after the fault")
        except TimeoutError as err:
            REC.check(f"{record['kind']}: one active RM and a standby naming it within 30 s", False, str(err))

    def fault_pg_restart(self, record):
        down = self.rng.uniform(1, 4)
        roles = [(r or {}).get("role") for r in self.roles()]
        t0 = time.time()
        self.pg.stop()
        log("FAULT", f"#{record['n']} pg_restart: PostgreSQL stopped (immediate); RMs were {roles}; down for {down:.1f} s")
        time.sleep(down)
        self.pg.start()
        record.update(down_s=round(time.time() - t0, 2))
        log("FAULT", f"#{record['n']} pg_restart: PostgreSQL started again after {time.time() - t0:.1f} s")
        self.check_steady_after(record, t0)

    def fault_agent_sigterm_restart(self, record):
        self.agent_restart(record, signal.SIGTERM, 0.0)

    def fault_agent_kill9_restart(self, record):
        self.agent_restart(record, signal.SIGKILL, self.rng.uniform(0, 3))

    def agent_restart(self, record, sig, pause):
        agent = self.pick_agent()
        ns = self.net.ns(agent.host)
        before = containers_in_netns(ns)
        name = "SIGTERM" if sig == signal.SIGTERM else "kill -9"
        with self.lock:
            agent.daemon.expected = False
            t0 = time.time()
            agent.daemon.send(sig)
            exited = agent.daemon.wait(30)
            if not exited:
                REC.anomaly(f"{agent.daemon.name} did not exit within 30 s of {name}; killing it -9")
                agent.daemon.send(signal.SIGKILL)
                agent.daemon.wait(10)
        log("FAULT", f"#{record['n']} {record['kind']}: {name} {agent.daemon.name} ({self.node_id(agent)}, "
                     f"{len(before)} containers running there), exited after {time.time() - t0:.1f} s; "
                     f"restarting in {pause:.1f} s")
        record.update(agent=agent.daemon.name, containers=len(before))
        time.sleep(pause)
        with self.lock:
            started = time.time()
            agent.daemon.start()
        ok, seconds, state = self.wait_node(agent, ("RUNNING",), 30, since=started)
        REC.check(f"{record['kind']}: node RUNNING again", ok,
                  f"{self.node_id(agent)} {state}, first heartbeat of the new process {seconds:.1f} s after its start")
        time.sleep(3)
        self.check_kept(record, before)

    def check_kept(self, record, before):
        """The containers that ran when the agent stopped (or its host was cut off briefly)
        must carry on: none ended as lost, expired or killed by the RM (except by the RM's
        clean-up of an app that has ended: killed no earlier than the app's end)."""
        states = self.container_states(before)

        def ended_by_fault(state):
            if state[0] != "COMPLETE":
                return False
            if state[1] in ("NODE_LOST", "EXPIRED"):
                return True
            return state[1] == "KILLED_BY_RM" and not (state[3] and state[2] and state[2] >= state[3])

        bad = {cid: s[:2] for cid, s in states.items() if ended_by_fault(s)}
        cleaned = sum(1 for s in states.values() if s[1] == "KILLED_BY_RM" and not ended_by_fault(s))
        still = [cid for cid, pids in before.items() if any(os.path.exists(f"/proc/{p}") for p in pids)]
        REC.check(f"{record['kind']}: the containers were kept", not bad,
                  f"{len(before)} containers at the fault, {len(still)} still running"
                  + (f", {cleaned} killed by the RM at their app's end" if cleaned else "")
                  + (f"; ended by the fault: {bad}" if bad else ""))

    def fault_agent_kill_for_good(self, record):
        agent = self.pick_agent()
        variant = CRASH_VARIANTS[self.crash_turn % len(CRASH_VARIANTS)]
        self.crash_turn += 1
        ns = self.net.ns(agent.host)
        before = containers_in_netns(ns)
        node = self.node_id(agent)
        with self.lock:
            agent.daemon.expected = False
            agent.state = "crashed"
            self.net.link(agent.host, False)
            t0 = time.time()
            killed = kill_netns(ns)
            agent.daemon.wait(10)
        record.update(agent=agent.daemon.name, node=node, variant=variant, containers=len(before), processes_killed=killed)
        log("FAULT", f"#{record['n']} agent_kill_for_good: host h{agent.host} ({node}) crashed: link down, "
                     f"{killed} processes killed -9 ({len(before)} containers); then {variant.replace('_', ' ')}")
        if variant == "new_host":
            time.sleep(3)
            agent.state = "retired"
            self.dead_nodes.add(node)
            replacement = self.add_agent()
            log("FAULT", f"#{record['n']} agent_kill_for_good: replacement {replacement.daemon.name} "
                         f"({self.node_id(replacement)}) started")
            record["replacement"] = replacement.daemon.name
            ok, seconds, state = self.wait_node(replacement, ("RUNNING",), 30)
            REC.check("agent_kill_for_good: the replacement node RUNNING", ok,
                      f"{self.node_id(replacement)} {state} after {seconds:.1f} s")
            ok, seconds, state = self.wait_node(agent, ("LOST",), self.args.node_expiry + 15)
            REC.check("agent_kill_for_good: the crashed node LOST", ok,
                      f"{node} {state} {time.time() - t0:.1f} s after the crash")
            self.check_crashed_containers(before, t0)
            self.net.remove_host(agent.host)
        elif variant == "reboot_after_expiry":
            ok, seconds, state = self.wait_node(agent, ("LOST",), self.args.node_expiry + 15)
            REC.check("agent_kill_for_good: the crashed node LOST", ok,
                      f"{node} {state} {time.time() - t0:.1f} s after the crash")
            self.check_crashed_containers(before, t0)
            self.reboot(agent, record, t0)
        else:
            time.sleep(3)
            self.reboot(agent, record, t0)
            self.check_crashed_containers(before, t0)

    def reboot(self, agent, record, t0):
        with self.lock:
            self.net.link(agent.host, True)
            agent.state = "up"
            started = time.time()
            agent.daemon.start()
        log("FAULT", f"#{record['n']} agent_kill_for_good: host h{agent.host} rebooted, agent started again "
                     f"{time.time() - t0:.1f} s after the crash (same address and work dir)")
        ok, seconds, state = self.wait_node(agent, ("RUNNING",), 30, since=started)
        REC.check("agent_kill_for_good: the rebooted node RUNNING", ok,
                  f"{self.node_id(agent)} {state} after {seconds:.1f} s")

    def check_crashed_containers(self, before, t0, what="agent_kill_for_good: the crashed host's containers ended"):
        """Every container that ran on a crashed (or long cut-off) host must end (COMPLETE) in
        the RM's books."""
        deadline = t0 + self.args.node_expiry + 20
        while True:
            states = self.container_states(before)
            open_ = {cid: s for cid, s in states.items() if s[0] != "COMPLETE"}
            if not open_ or time.time() > deadline:
                break
            time.sleep(1)
        reasons = collections.Counter(s[1] for s in states.values())
        REC.check(what, not open_,
                  f"{len(before)} containers, exit reasons {dict(reasons)}"
                  + (f"; still not COMPLETE {time.time() - t0:.0f} s after the crash: {open_}" if open_ else ""))

    def fault_partition_short(self, record):
        self.partition(record, self.rng.uniform(3, 6), long=False)

    def fault_partition_long(self, record):
        self.partition(record, self.args.node_expiry + self.rng.uniform(5, 10), long=True)

    def partition(self, record, seconds, long):
        agent = self.pick_agent()
        node = self.node_id(agent)
        before = containers_in_netns(self.net.ns(agent.host))
        with self.lock:
            agent.state = "partitioned"
            self.net.link(agent.host, False)
        t0 = time.time()
        record.update(agent=agent.daemon.name, node=node, seconds=round(seconds, 1), containers=len(before))
        log("FAULT", f"#{record['n']} {record['kind']}: host h{agent.host} ({node}, {len(before)} containers) "
                     f"cut off for {seconds:.1f} s")
        seen = []
        while time.time() - t0 < seconds:
            state = self.node_state(agent)
            if state and (not seen or seen[-1][1] != state):
                seen.append((round(time.time() - t0, 1), state))
            time.sleep(min(1.0, max(0.0, seconds - (time.time() - t0))))
        with self.lock:
            self.net.link(agent.host, True)
            agent.state = "up"
            healed = time.time()
        log("FAULT", f"#{record['n']} {record['kind']}: host h{agent.host} healed after {time.time() - t0:.1f} s; "
                     f"node states seen meanwhile {seen}")
        record["states_seen"] = seen
        lost = any(state == "LOST" for _, state in seen)
        if long:
            REC.check("partition_long: the node LOST during the partition", lost, f"{node}: {seen}")
        else:
            REC.check("partition_short: the node not LOST", not lost, f"{node}: {seen}")
        ok, waited, state = self.wait_node(agent, ("RUNNING",), 30, since=healed)
        REC.check(f"{record['kind']}: node RUNNING after the heal", ok,
                  f"{node} {state}, heartbeating again {waited:.1f} s after the heal")
        if long:
            self.check_crashed_containers(before, t0, "partition_long: the cut-off host's containers ended")
        else:
            time.sleep(2)
            self.check_kept(record, before)
        # No stale container may run on: every container process on the host must be one the
        # RM still counts as running there.
        time.sleep(5)
        stale = {}
        deadline = time.time() + 15
        while True:
            now = containers_in_netns(self.net.ns(agent.host))
            states = self.container_states(now)
            stale = {cid: states.get(cid) for cid in now if states.get(cid, ("?",))[0] == "COMPLETE"}
            if not stale or time.time() > deadline:
                break
            time.sleep(1)
        REC.check(f"{record['kind']}: no stale container runs on after the heal", not stale,
                  f"{len(before)} containers before, {len(now)} running there now"
                  + (f"; COMPLETE in the RM but still running: {stale}" if stale else ""))

    # -- workload ------------------------------------------------------------------------------

    def job_loop(self, end, texts):
        index = 0
        threads = []
        while time.time() < end and not self.stop_event.is_set():
            threads = [t for t in threads if t.is_alive()]
            while len(threads) < self.args.concurrency and time.time() < end:
                kind = "stream" if index % 2 else ("wordcount", "wordcount_awk")[index // 2 % 2]
                job = {"n": index, "kind": kind, "name": f"chaos-{kind}-{index:03}", "state": "preparing"}
                with self.jobs_lock:
                    self.jobs.append(job)
                thread = threading.Thread(target=self.run_job, args=(job, texts), daemon=True)
                thread.start()
                threads.append(thread)
                index += 1
            self.stop_event.wait(1.0)
        return threads

    def job_spec(self, job, texts):
        directory = os.path.join(self.base, "jobs", job["name"])
        os.makedirs(directory)
        os.chmod(directory, 0o1777)
        if job["kind"] in ("wordcount", "wordcount_awk"):
            text_dir, counts = texts[job["n"] // 2 % len(texts)]
            reducers = 2 + job["n"] // 4 % 2
            mr = {"output": os.path.join(directory, "out"), "combiner": "sum", "reducer": "sum",
                  "reducers": reducers, "split_size_mb": 1, "map": {"vcores": 1, "memory_mb": 384},
                  "reduce": {"vcores": 1, "memory_mb": 384}, "max_containers": self.args.max_containers}
            if job["kind"] == "wordcount":
                # The built-in mapper over the set with its hard-linked copies.
                mr.update(input=[text_dir], mapper="wordcount")
                expected = collections.Counter({w: c * self.args.text_copies for w, c in counts.items()})
            else:
                # A Hadoop Streaming mapper (awk, as in app-master's tests) that first sleeps,
                # over the two originals: tasks that last long enough to be hit.
                mr.update(input=[os.path.join(text_dir, "part-*.txt")],
                          mapper=f"sleep {self.args.awk_sleep_s:g}; "
                                 "awk '{ for (i = 1; i <= NF; i++) print $i \"\\t1\" }'")
                expected = counts
            job.update(input=mr["input"], output=mr["output"], reducers=reducers, mapper=mr["mapper"])
            spec = {"name": job["name"], "kind": "mapreduce", "max_attempts": self.args.max_attempts, "mapreduce": mr}
            return spec, expected
        seed = self.args.seed * 1000 + job["n"]
        rate, limit, keys = self.args.stream_rate, self.args.stream_limit, 50
        job.update(output=os.path.join(directory, "out"), seed=seed, events=2 * limit)
        spec = {"name": job["name"], "kind": "stream", "max_attempts": self.args.max_attempts,
                "stream": {"checkpoint_interval_ms": 500, "checkpoint_dir": os.path.join(directory, "checkpoints"),
                           "worker": {"vcores": 1, "memory_mb": 256},
                           "operators": [
                               {"name": "events", "kind": "generator", "parallelism": 2, "rate": rate,
                                "keys": keys, "seed": seed, "limit": limit},
                               {"name": "by_key", "kind": "key_by", "input": ["events"], "expr": "$1"},
                               {"name": "count", "kind": "window", "input": ["by_key"], "parallelism": 2,
                                "size_ms": 1000, "aggregate": "count"},
                               {"name": "out", "kind": "file_sink", "input": ["count"], "parallelism": 2,
                                "path": job["output"]}]}}
        return spec, expected_window_counts(seed, 2, keys, limit, rate, 1000)

    def run_job(self, job, texts):
        try:
            spec, expected = self.job_spec(job, texts)
            key = "chaos-" + secrets.token_hex(16)
            t0 = time.time()
            job["submitted_at"] = round(t0 - REC.start, 1)
            try:
                job["app_id"] = self.client.call("POST", "/v1/apps", spec, key=key, deadline_s=180)["app_id"]
            except Exception as err:  # noqa: BLE001
                job.update(state="submit_failed", error=str(err))
                REC.check(f"{job['name']}: submitted", False, str(err))
                return
            job["state"] = "submitted"
            job["submit_s"] = round(time.time() - t0, 2)
            log("JOB", f"{job['name']} submitted as {job['app_id']} ({job['submit_s']} s)")
            app = None
            deadline = t0 + self.args.job_timeout_s
            while time.time() < deadline:
                try:
                    app = self.client.call("GET", f"/v1/apps/{job['app_id']}", deadline_s=60)
                except Exception as err:  # noqa: BLE001
                    log("NOTE", f"{job['name']}: cannot read the app: {err}")
                    time.sleep(2)
                    continue
                if app["state"] in TERMINAL:
                    break
                time.sleep(1)
            if app is None or app["state"] not in TERMINAL:
                job.update(state="timeout", error=f"not ended after {self.args.job_timeout_s} s: "
                                                  f"{app and app['state']} {app and app['diagnostics']}")
                REC.check(f"{job['name']}: ended SUCCEEDED", False, job["error"])
                try:
                    self.client.call("DELETE", f"/v1/apps/{job['app_id']}", deadline_s=30)
                except Exception:  # noqa: BLE001
                    pass
                return
            job["ended_at"] = round(time.time() - REC.start, 1)
            job.update(state=app["state"], final_status=app["final_status"], attempts=len(app["attempts"]),
                       seconds=round((app.get("finished_at_ms") or time.time() * 1000) / 1000 - t0, 1))
            try:
                containers = self.client.call("GET", f"/v1/apps/{job['app_id']}/containers", deadline_s=60)
                job["containers"] = len(containers)
                job["exit_reasons"] = dict(collections.Counter(str(c.get("exit_reason")) for c in containers))
            except Exception as err:  # noqa: BLE001
                job["containers_error"] = str(err)
            succeeded = (app["state"], app["final_status"]) == ("FINISHED", "SUCCEEDED")
            if not succeeded:
                job["diagnostics"] = app["diagnostics"]
                job["attempt_diagnostics"] = [a.get("diagnostics") for a in app["attempts"]]
                job["am_logs"] = sorted(glob.glob(os.path.join(self.base, "h*", "work", "apps", job["app_id"],
                                                               "container_*_000001", "stderr")))
            REC.check(f"{job['name']}: ended SUCCEEDED", succeeded,
                      f"{job['app_id']} {app['state']}/{app['final_status']} after {job['seconds']} s, "
                      f"{job['attempts']} AM attempt(s), containers {job.get('exit_reasons')}"
                      + ("" if succeeded else f"; diagnostics: {app['diagnostics']!r}"))
            if job["kind"] != "stream":
                problem, notes = check_wordcount(job["output"], job["reducers"], expected)
                what = f"{len(expected)} words, {sum(expected.values())} occurrences"
            else:
                problem, notes = check_stream(job["output"], expected)
                what = f"{len(expected)} (key, window) counts, {job['events']} events"
            job["output_ok"] = problem is None
            if notes:
                job["output_notes"] = notes
            if problem:
                job["output_problem"] = problem
            REC.check(f"{job['name']}: output exact", problem is None,
                      (problem or what) + (f" ({', '.join(map(str, notes))})" if notes else ""))
        except Exception as err:  # noqa: BLE001
            job.update(state="harness_error", error=f"{err}\n{traceback.format_exc()}")
            REC.anomaly(f"{job['name']}: the harness failed: {err}")

    # -- the end -------------------------------------------------------------------------------

    def final_checks(self):
        try:
            number, report = self.wait_steady(60)
            REC.check("final: one active RM and a standby naming it", True,
                      f"{self.rms[number].name} active, epoch {report.get('epoch')}")
        except TimeoutError as err:
            REC.check("final: one active RM and a standby naming it", False, str(err))
        apps = self.client.call("GET", "/v1/apps?limit=10000", deadline_s=60)
        listed = collections.Counter(a["name"] for a in apps)
        ids = {a["app_id"] for a in apps}
        acknowledged = [j for j in self.jobs if j.get("app_id")]
        lost = [j["app_id"] for j in acknowledged if j["app_id"] not in ids]
        doubled = {name: count for name, count in listed.items() if count > 1}
        REC.check("final: every acknowledged app listed", not lost, f"{len(acknowledged)} acknowledged"
                  + (f"; missing {lost}" if lost else ""))
        REC.check("final: no job submitted twice", not doubled, f"{len(apps)} apps listed" + (f"; twice: {doubled}" if doubled else ""))
        unfinished = [a["app_id"] for a in apps if a["state"] not in TERMINAL]
        REC.check("final: no app left running", not unfinished, str(unfinished) if unfinished else "")
        nodes = self.nodes()
        bad = {}
        for agent in self.agents:
            node = self.node_id(agent)
            state = nodes.get(node, {}).get("state")
            want = "RUNNING" if agent.state == "up" else "LOST"
            if agent.state in ("up", "retired") and state != want:
                bad[node] = (state, f"expected {want}")
        REC.check("final: every live node RUNNING and every retired one LOST", not bad,
                  f"{ {n: v['state'] for n, v in nodes.items()} }" + (f"; wrong: {bad}" if bad else ""))
        leftover = {}
        deadline = time.time() + 30
        while time.time() < deadline:
            leftover = {}
            for agent in self.agents:
                if agent.state == "up":
                    found = containers_in_netns(self.net.ns(agent.host))
                    if found:
                        leftover[agent.daemon.name] = sorted(found)
            if not leftover:
                break
            time.sleep(1)
        REC.check("final: no container process left on any host", not leftover, str(leftover) if leftover else "")

    def scan_logs(self):
        """Counts of WARN/ERROR lines and any panic in the daemons' logs."""
        summary = {}
        paths = [rm.log_path for rm in self.rms] + [a.daemon.log_path for a in self.agents]
        for path in paths:
            counts = collections.Counter()
            messages = collections.Counter()
            try:
                with open(path, errors="replace") as f:
                    for line in f:
                        plain = ANSI_RE.sub("", line)
                        for level in (" WARN ", " ERROR "):
                            if level in plain:
                                counts[level.strip()] += 1
                                messages[level.strip() + " " + message_of(plain)] += 1
                        if "panicked" in plain:
                            counts["panic"] += 1
                            REC.anomaly(f"panic in {path}: {plain.strip()[:500]}")
            except OSError:
                continue
            summary[os.path.relpath(path, self.base)] = {"counts": dict(counts),
                                                         "top": messages.most_common(8)}
        return summary

    def teardown(self):
        self.stop_event.set()
        with self.lock:
            for agent in self.agents:
                agent.daemon.expected = False
            for agent in self.agents:
                if agent.daemon.alive():
                    agent.daemon.send(signal.SIGTERM)
            for agent in self.agents:
                if not agent.daemon.wait(15):
                    agent.daemon.send(signal.SIGKILL)
                    agent.daemon.wait(5)
            for rm in self.rms:
                rm.stop(signal.SIGTERM, 15)
        for n in sorted(self.net.hosts):
            kill_netns(self.net.ns(n))
        if self.pg and self.pg.running:
            try:
                self.pg.stop()
            except Exception as err:  # noqa: BLE001
                log("NOTE", f"could not stop PostgreSQL: {err}")
        self.net.down()
        if self.pg:
            shutil.rmtree(self.pg.data, ignore_errors=True)


ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


def log_time(line):
    """Unix time of a daemon log line's leading `2026-12-03T13:10:04.086277Z`, or None."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z", line)
    if not match:
        return None
    moment = datetime.datetime.fromisoformat(match.group(1)).replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp() + float("0" + (match.group(2) or ".0"))


def message_of(line):
    """The message of a log line, without its timestamp, fields and numbers (for grouping)."""
    text = line.strip()
    parts = text.split(None, 2)
    text = parts[2] if len(parts) == 3 else text
    text = re.sub(r"\b[a-z_]+=(\"[^\"]*\"|\S+)", "", text)
    text = re.sub(r"\d+", "N", text)
    return " ".join(text.split())[:160]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, required=True, help="how long faults are injected and jobs submitted")
    parser.add_argument("--spindle", default="/dev/shm/spindle-chaos")
    parser.add_argument("--seed", type=int, default=None, help="seeds the faults' choices, the texts and the generators")
    parser.add_argument("--dir", default="/dev/shm", help="where the run dir (logs, work dirs, outputs) goes")
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--agent-vcores", type=int, default=6)
    parser.add_argument("--agent-memory-mb", type=int, default=6144)
    parser.add_argument("--concurrency", type=int, default=2, help="jobs running at once")
    parser.add_argument("--max-attempts", type=int, default=6, help="AM attempts of each job")
    parser.add_argument("--job-timeout-s", type=float, default=480)
    parser.add_argument("--inputs", type=int, default=3, help="generated word-count texts")
    parser.add_argument("--text-mb", type=int, default=4, help="size of each text (two files)")
    parser.add_argument("--text-copies", type=int, default=16,
                        help="the built-in word count reads each text this many times (hard links)")
    parser.add_argument("--awk-sleep-s", type=float, default=5, help="the awk mapper's sleep before it reads")
    parser.add_argument("--max-containers", type=int, default=2, help="task containers a word count holds at once")
    parser.add_argument("--stream-rate", type=int, default=5000, help="events/s of each generator (and event time)")
    parser.add_argument("--stream-limit", type=int, default=100000, help="events of each generator")
    parser.add_argument("--fault-min-s", type=float, default=15)
    parser.add_argument("--fault-max-s", type=float, default=30)
    parser.add_argument("--faults", default=",".join(FAULT_KINDS), help="comma-separated kinds to inject")
    parser.add_argument("--lease", type=float, default=2, help="leader_lease in seconds")
    parser.add_argument("--node-expiry", type=int, default=10, help="node_expiry in seconds")
    parser.add_argument("--heartbeat-ms", type=int, default=500, help="heartbeat_interval")
    parser.add_argument("--subnet", default="10.77.0", help="the /24 of the hosts (.254 is the bridge)")
    parser.add_argument("--bridge", default="chaosbr0")
    parser.add_argument("--json", action="store_true", help="print the summary on one line")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces, the bridge; containers run as `nobody`)")
    args.faults = [k for k in args.faults.split(",") if k]
    for kind in args.faults:
        if kind not in FAULT_KINDS:
            parser.error(f"{kind!r} is not one of {', '.join(FAULT_KINDS)}")
    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    args.spindle = shutil.which(args.spindle) or os.path.abspath(args.spindle)

    base = tempfile.mkdtemp(prefix="chaos-", dir=args.dir)
    os.chmod(base, 0o711)
    os.makedirs(os.path.join(base, "jobs"))
    os.chmod(os.path.join(base, "jobs"), 0o1777)
    REC.open(os.path.join(base, "events.log"))
    log("SETUP", f"run dir {base}; seed {args.seed}; {args.spindle}; duration {args.duration_s:g} s")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    chaos = Chaos(args, base)
    summary = None
    load_before = os.getloadavg()
    interrupted = None
    try:
        rng = random.Random(args.seed)
        inputs = os.path.join(base, "inputs")
        os.makedirs(inputs, 0o755)
        os.chmod(inputs, 0o755)
        texts = make_texts(rng, inputs, args.inputs, args.text_mb, args.text_copies)
        log("SETUP", f"{len(texts)} texts of ~{args.text_mb} MB ({', '.join(str(len(c)) for _, c in texts)} distinct words)")
        chaos.setup()
        watchdog = threading.Thread(target=chaos.watchdog, daemon=True)
        watchdog.start()
        threading.Thread(target=chaos.sampler, daemon=True).start()
        t_start = time.time()
        end = t_start + args.duration_s
        faults = threading.Thread(target=chaos.fault_loop, args=(end,), daemon=True)
        faults.start()
        threads = chaos.job_loop(end, texts)
        log("PHASE", f"{args.duration_s:g} s are over: no new jobs; waiting for the last fault to end")
        faults.join()
        chaos_s = time.time() - t_start
        log("PHASE", f"faults over after {chaos_s:.0f} s; waiting for {sum(t.is_alive() for t in threads)} jobs")
        for thread in threads:
            thread.join()
        chaos.final_checks()
        summary_logs = chaos.scan_logs()
        summary = make_summary(args, chaos, base, t_start, chaos_s, load_before, summary_logs)
    except KeyboardInterrupt as err:
        interrupted = str(err) or "Ctrl-C"
        log("PHASE", f"interrupted ({interrupted}); cleaning up")
    except Exception as err:  # noqa: BLE001 - the summary says what went wrong
        interrupted = f"error: {err}"
        REC.anomaly(f"the harness failed: {err}\n{traceback.format_exc()}")
    finally:
        chaos.stop_event.set()
        try:
            chaos.teardown()
        except Exception as err:  # noqa: BLE001
            log("NOTE", f"teardown: {err}")
        log("PHASE", f"cleaned up; logs in {base}")
    if summary is None:
        summary = make_summary(args, chaos, base, REC.start, None, load_before, {})
        summary["interrupted"] = interrupted or "error"
    with open(os.path.join(base, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(base, "faults.json"), "w") as f:
        json.dump(chaos.faults, f, indent=2)
    with open(os.path.join(base, "jobs.json"), "w") as f:
        json.dump(chaos.jobs, f, indent=2)
    print(json.dumps(summary, indent=None if args.json else 2))
    return 0 if summary.get("pass") else 1


def make_summary(args, chaos, base, t_start, chaos_s, load_before, log_summary):
    jobs = chaos.jobs
    by_kind = {}
    for kind in ("wordcount", "wordcount_awk", "stream"):
        mine = [j for j in jobs if j["kind"] == kind and j.get("app_id")]
        by_kind[kind] = {"submitted": len(mine),
                         "succeeded": sum(1 for j in mine if j.get("final_status") == "SUCCEEDED"),
                         "output_exact": sum(1 for j in mine if j.get("output_ok"))}
    submitted = [j for j in jobs if j.get("app_id")]
    failed = [j for j in submitted if j.get("state") in TERMINAL and j.get("final_status") != "SUCCEEDED"
              or j.get("state") in ("timeout", "harness_error")]
    checks = REC.checks
    by_name = collections.defaultdict(lambda: [0, 0])
    for c in checks:
        name = c["name"].split(": ", 1)[1] if c["name"].startswith("chaos-") else c["name"]
        by_name[name][0 if c["ok"] else 1] += 1
    failed_checks = [c for c in checks if not c["ok"]]
    hit = collections.Counter()
    for j in submitted:
        start, end = j.get("submitted_at"), j.get("ended_at")
        if start is None or end is None:
            continue
        n = sum(1 for f in chaos.faults if f["at"] < end and f["at"] + f.get("took_s", 0) > start)
        j["faults_during"] = n
        hit[j["kind"]] += n > 0
    summary = {
        "duration_s": args.duration_s,
        "chaos_s": round(chaos_s, 1) if chaos_s is not None else None,
        "total_s": round(time.time() - t_start, 1),
        "seed": args.seed,
        "spindle": args.spindle,
        "faults": {"total": len(chaos.faults),
                   "by_kind": dict(collections.Counter(f["kind"] for f in chaos.faults)),
                   "crash_variants": dict(collections.Counter(f.get("variant") for f in chaos.faults
                                                              if f["kind"] == "agent_kill_for_good")),
                   "errors": [f for f in chaos.faults if "error" in f]},
        "jobs": {"submitted": len(submitted), "succeeded": sum(1 for j in submitted if j.get("final_status") == "SUCCEEDED"),
                 "failed": len(failed), "output_exact": sum(1 for j in submitted if j.get("output_ok")),
                 "not_submitted": [j["name"] for j in jobs if not j.get("app_id") and j.get("state") != "preparing"],
                 "by_kind": by_kind,
                 "hit_by_a_fault": dict(hit),
                 "failed_details": [{k: j.get(k) for k in ("name", "app_id", "state", "final_status", "attempts",
                                                           "diagnostics", "attempt_diagnostics", "error", "exit_reasons",
                                                           "am_logs")}
                                    for j in failed],
                 "wrong_output": [{k: j.get(k) for k in ("name", "app_id", "output_problem")}
                                  for j in submitted if j.get("output_ok") is False],
                 "seconds": {"min": min((j["seconds"] for j in submitted if "seconds" in j), default=None),
                             "max": max((j["seconds"] for j in submitted if "seconds" in j), default=None)},
                 "am_attempts_over_1": [(j["name"], j["attempts"]) for j in submitted if j.get("attempts", 1) > 1]},
        "checks": {"passed": sum(1 for c in checks if c["ok"]), "failed": len(failed_checks),
                   "by_name": {name: {"passed": v[0], "failed": v[1]} for name, v in sorted(by_name.items())},
                   "failed_details": failed_checks},
        "anomalies": REC.anomalies,
        "leadership": leadership_summary(chaos),
        "daemon_logs": log_summary,
        "load_average": {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in os.getloadavg()],
                         "max_1min": max((x["load1"] for x in chaos.load_samples), default=None),
                         "max_cpu_pressure_avg10": max((x.get("cpu_some_avg10", 0) for x in chaos.load_samples),
                                                       default=None)},
        "run_dir": base,
    }
    summary["pass"] = bool(chaos_s is not None and not failed_checks and not REC.anomalies and submitted)
    return summary


def leadership_summary(chaos):
    try:
        events, overlaps = chaos.leadership()
    except Exception as err:  # noqa: BLE001
        return {"error": str(err)}
    unprovoked = [e for e in events if not e["provoked_by"] and not (e["event"] == "active" and e["epoch"] == 1)]
    return {"takeovers": sum(1 for e in events if e["event"] == "active"),
            "step_downs": sum(1 for e in events if e["event"] == "step_down"),
            "unprovoked": [{k: e[k] for k in ("time", "rm", "event", "epoch", "reason", "load")} for e in unprovoked],
            "step_down_logged_after_the_takeover": overlaps}


if __name__ == "__main__":
    sys.exit(main())
