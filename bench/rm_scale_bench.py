#!/usr/bin/env python3
"""RM scale benchmark: one real RM process against `spindle loadgen` (see bench/README.md).

For each size in --agents and each of --runs, the script starts a fresh RM
(`spindle resource-manager --config rm.toml --listen 127.0.0.1:PORT`) on a new SQLite file,
or with --postgres on a new schema of that server, and runs `spindle loadgen` against it:
N fake node agents (1 s heartbeats with usage and container statuses) and --ams application
masters (long-polling allocate with asks of mixed sizes, launches, releases, finish) over real
HTTP, for --warmup seconds and then a measured window of --duration seconds. The loadgen's JSON
line has the figures (heartbeats/s, the RM's CPU cores and RSS, allocate and heartbeat
latencies, containers/s, store commits/s, invariant violations); the script prints each line
and, at the end, a table of the medians per size.

The RM's config: the default timings (1 s heartbeats, 10 s node expiry), one leaf queue whose AMs
may hold up to half of it (the default tenth would make most of 200 AMs wait on small
clusters), a user mapped to `nobody` (nothing runs: the fake agents only pretend), and
`[http] max_connections` above the agents plus the AMs: each fake agent keeps a connection of
its own, as a real one does. With --agent-idle, a real `spindle node-agent` joins after the
loadgen and idles: its RSS, and the RM's then, are reported. With --restart-idle, the RM is
restarted on the same store and measured again with the agents heartbeating and no AMs. On SQLite the table also counts
what the run left in the store (ended apps, containers): the memory bounds are read with those.

Usage: bench/rm_scale_bench.py [--spindle /dev/shm/spindle] [--agents 1000,5000,10000] [--ams 200]
                               [--duration 30] [--warmup 10] [--drain 60] [--runs 1]
                               [--postgres postgres://postgres@127.0.0.1:5432/test]
                               [--sqlite-synchronous full|normal] [--task-ms 3000]
                               [--containers-per-am 20] [--perf SECONDS] [--dir DIR] [--keep]
                               [--finished-apps-in-memory 1000] [--agent-idle SECONDS]
                               [--restart-idle SECONDS]
Needs only the Python standard library (and `psql` for --postgres, `perf` for --perf). The RM
and the loadgen share the machine: on a 2-core box, `loadgen_cpu_cores` says how much of it
the load generator took. Everything it starts is stopped at the end, and a PostgreSQL schema
dropped, even on error.
"""
import argparse
import json
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_bench import free_port  # noqa: E402

SECRET = "rm-scale-bench-secret-" + secrets.token_hex(8)
USER_TOKEN = "rm-scale-bench-user-" + secrets.token_hex(8)

RM_CONFIG = """\
db = {db}
cluster_secret = {secret}
sqlite_synchronous = {synchronous}

finished_apps_in_memory = {finished_apps_in_memory}

[[users]]
name = "bench"
token = {token}
unix_user = "nobody"
# Makes the join token of the real agent whose idle RSS --agent-idle measures.
admin = true

[http]
max_connections = {max_connections}

[queues]
name = "root"

[[queues.children]]
name = "default"
guaranteed_percent = 100
am_share_percent = 50
"""

# Columns of the table: (heading, JSON field, format).
COLUMNS = [
    ("agents", "agents", "{:.0f}"),
    ("hb/s", "heartbeats_per_sec", "{:.0f}"),
    ("periodic hb/s", "periodic_heartbeats_per_sec", "{:.0f}"),
    ("hb p50 ms", "heartbeat_p50_ms", "{:.1f}"),
    ("hb p99 ms", "heartbeat_p99_ms", "{:.1f}"),
    ("RM hb mean ms", "rm_heartbeat_mean_ms", "{:.1f}"),
    ("alloc p50 ms", "allocate_p50_ms", "{:.1f}"),
    ("alloc p99 ms", "allocate_p99_ms", "{:.1f}"),
    ("grant p99 ms", "ask_to_grant_p99_ms", "{:.0f}"),
    ("containers/s", "containers_per_sec", "{:.0f}"),
    ("commits/s", "store_commits_per_sec", "{:.0f}"),
    ("commit ms", "store_commit_mean_ms", "{:.2f}"),
    ("rounds/s", "rm_rounds_per_sec", "{:.0f}"),
    ("round ms", "rm_round_mean_ms", "{:.2f}"),
    ("RM cores", "rm_cpu_cores", "{:.2f}"),
    ("RM RSS MB", "rm_rss_mb", "{:.0f}"),
    ("loadgen cores", "loadgen_cpu_cores", "{:.2f}"),
    ("register s", "register_all_s", "{:.1f}"),
    ("apps ended", "store_apps_ended", "{:.0f}"),
    ("containers", "store_containers", "{:.0f}"),
    ("RM RSS after", "rm_rss_after_mb", "{:.0f}"),
    ("agent idle RSS", "agent_idle_rss_mb", "{:.1f}"),
    ("RM RSS restarted", "rm_rss_restarted_mb", "{:.0f}"),
    ("RM cores restarted", "rm_cpu_cores_restarted", "{:.2f}"),
]


def log(message):
    print(message, file=sys.stderr, flush=True)


def psql(server_url, sql):
    env = dict(os.environ, PGOPTIONS="-c client_min_messages=warning")
    parts = urllib.parse.urlparse(server_url)
    command = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", parts.hostname or "127.0.0.1",
               "-p", str(parts.port or 5432), "-U", parts.username or "postgres",
               "-d", parts.path.lstrip("/") or "postgres", "-c", sql]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)


def raise_open_file_limit():
    """The RM holds a connection per long-polling AM and per idle client of its AM launcher;
    the children inherit the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def healthy(url):
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def stop(proc, timeout=15):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Run:
    """One RM and one loadgen, under `base`."""

    def __init__(self, args, base, agents, db_url):
        self.args, self.base, self.agents = args, base, agents
        self.home = os.path.join(base, "home")
        os.makedirs(self.home, 0o700)
        self.env = dict(os.environ, HOME=self.home, SPINDLE_HOME=self.home, RUST_LOG="info")
        for key in ("SPINDLE_RM", "SPINDLE_TOKEN", "SPINDLE_CA_FILE", "SPINDLE_CLUSTER_SECRET"):
            self.env.pop(key, None)
        self.config = os.path.join(base, "rm.toml")
        with open(self.config, "w") as f:
            f.write(RM_CONFIG.format(db=json.dumps(db_url), secret=json.dumps(SECRET), token=json.dumps(USER_TOKEN),
                                     synchronous=json.dumps(args.sqlite_synchronous),
                                     max_connections=agents + args.ams + 1000,
                                     finished_apps_in_memory=args.finished_apps_in_memory))
        self.secret_file = os.path.join(base, "secret")
        self.token_file = os.path.join(base, "token")
        for path, text in ((self.secret_file, SECRET), (self.token_file, USER_TOKEN)):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(text)
        self.rm = None
        self.profiler = None

    def start_rm(self):
        for _attempt in range(5):
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            with open(os.path.join(self.base, "rm.log"), "a") as out:
                self.rm = subprocess.Popen([self.args.spindle, "resource-manager", "--config", self.config,
                                            "--listen", f"127.0.0.1:{port}"],
                                           env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.time() + 30
            while time.time() < deadline and self.rm.poll() is None:
                if healthy(self.url):
                    return
                time.sleep(0.05)
            stop(self.rm)
        raise RuntimeError(f"the RM did not start: see {self.base}/rm.log")

    def loadgen(self, ams=None, duration=None, warmup=None):
        """Runs the loadgen; its JSON summary. With --perf, profiles the RM for that many seconds
        from the start of the measured window (perf.data and perf.txt under the run's dir)."""
        a = self.args
        ams = a.ams if ams is None else ams
        duration = a.duration if duration is None else duration
        warmup = a.warmup if warmup is None else warmup
        command = [a.spindle, "loadgen", "--rm", self.url, "--secret-file", self.secret_file,
                   "--token-file", self.token_file, "--agents", str(self.agents), "--ams", str(ams),
                   "--duration-s", str(duration), "--warmup-s", str(warmup), "--drain-s", str(a.drain),
                   "--task-ms", str(a.task_ms), "--containers-per-am", str(a.containers_per_am),
                   "--node-vcores", str(a.node_vcores), "--node-memory-mb", str(a.node_memory_mb),
                   "--rm-pid", str(self.rm.pid), "--seed", str(a.seed)]
        stderr_path = os.path.join(self.base, "loadgen.log")
        with open(stderr_path, "w") as err:
            proc = subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            watcher = threading.Thread(target=self.watch_loadgen, args=(proc.stderr, err), daemon=True)
            watcher.start()
            stdout = proc.stdout.read()
            proc.wait()
            watcher.join(timeout=5)
        if self.profiler:
            self.profiler.join(timeout=a.perf + 60)
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"the loadgen printed no summary (exit {proc.returncode}): see {stderr_path}")
        summary = json.loads(lines[-1])
        summary["loadgen_exit"] = proc.returncode
        return summary

    def watch_loadgen(self, stream, copy):
        """Copies the loadgen's log; starts perf on the RM when the measured window begins."""
        for line in stream:
            copy.write(line)
            copy.flush()
            if self.args.perf and "measured window begins" in line:
                self.profiler = threading.Thread(target=self.profile_rm, daemon=True)
                self.profiler.start()

    def profile_rm(self):
        data = os.path.join(self.base, "perf.data")
        # DWARF call graphs: the release build has no frame pointers. At 199 Hz the stack copies
        # cost the RM little; perf-children.txt attributes time to callers (inclusive).
        subprocess.run(["perf", "record", "-F", "199", "--call-graph", "dwarf,32768", "-o", data, "-p", str(self.rm.pid),
                        "--", "sleep", str(self.args.perf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(os.path.join(self.base, "perf.txt"), "w") as out:
            subprocess.run(["perf", "report", "-i", data, "--no-children", "--percent-limit", "0.5", "--stdio",
                            "-g", "none"], stdout=out, stderr=subprocess.DEVNULL)
        with open(os.path.join(self.base, "perf-children.txt"), "w") as out:
            subprocess.run(["perf", "report", "-i", data, "--children", "--percent-limit", "1", "--stdio",
                            "-g", "none"], stdout=out, stderr=subprocess.DEVNULL)
        log(f"  perf profile of the RM: {self.base}/perf.txt, perf-children.txt")

    def idle_agent(self):
        """Starts one real agent against the RM (after the loadgen: its fake agents have gone
        quiet, the apps' history is in the store), lets it heartbeat idle for --agent-idle
        seconds, and returns (the agent's RSS, the RM's RSS) in MB."""
        join = subprocess.run([self.args.spindle, "--rm", self.url, "--token", USER_TOKEN, "join-token"],
                              env=self.env, capture_output=True, text=True, check=True).stdout.strip().split()[-1]
        token_file = os.path.join(self.base, "join-token")
        with open(os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(join)
        port = free_port()
        with open(os.path.join(self.base, "agent.log"), "w") as out:
            agent = subprocess.Popen([self.args.spindle, "--rm", self.url, "node-agent", "--listen", f"127.0.0.1:{port}",
                                      "--join-token-file", token_file, "--work-dir", os.path.join(self.base, "agent"),
                                      "--vcores", "4", "--memory-mb", "4096"],
                                     env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            time.sleep(self.args.agent_idle)
            if agent.poll() is not None:
                raise RuntimeError(f"the agent exited: see {self.base}/agent.log")
            return rss_mb(agent.pid), rss_mb(self.rm.pid)
        finally:
            stop(agent)

    def stop(self):
        stop(self.rm)


def one_run(args, root, agents, index):
    base = tempfile.mkdtemp(prefix=f"agents{agents}-run{index}-", dir=root)
    os.chmod(base, 0o755)
    schema = None
    if args.postgres:
        schema = f"spindle_scale_{secrets.token_hex(6)}"
        psql(args.postgres, f"CREATE SCHEMA {schema}")
        separator = "&" if "?" in args.postgres else "?"
        db_url = f"{args.postgres}{separator}options=-c%20search_path%3D{schema}"
    else:
        db_url = f"sqlite://{os.path.join(base, 'rm.db')}"
    run = Run(args, base, agents, db_url)
    try:
        run.start_rm()
        # The machine is shared: a busy neighbour shows here, and in latencies far above the rest.
        load_before = os.getloadavg()[0]
        summary = run.loadgen()
        summary["loadavg_1m_before"] = round(load_before, 2)
        if args.agent_idle:
            summary["agent_idle_rss_mb"], summary["rm_rss_after_mb"] = run.idle_agent()
        run.stop()
        if not args.postgres:
            summary.update(stored_counts(os.path.join(base, "rm.db")))
        if args.restart_idle:
            # The same store, a fresh RM: its memory with the agents heartbeating and the
            # history in the store, without what the load's peak left in the allocator.
            run.start_rm()
            again = run.loadgen(ams=0, duration=args.restart_idle, warmup=5)
            summary["rm_rss_restarted_mb"] = again["rm_rss_mb"]
            summary["rm_cpu_cores_restarted"] = again["rm_cpu_cores"]
        return summary
    finally:
        run.stop()
        if schema:
            try:
                psql(args.postgres, f"DROP SCHEMA {schema} CASCADE")
            except subprocess.CalledProcessError as err:
                log(f"could not drop schema {schema}: {err}")


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def stored_counts(db_path):
    """What the run left in the SQLite store: ended apps and all containers."""
    import sqlite3
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        ended = db.execute("SELECT count(*) FROM apps WHERE state IN ('FINISHED', 'FAILED', 'KILLED')").fetchone()[0]
        containers = db.execute("SELECT count(*) FROM containers").fetchone()[0]
    finally:
        db.close()
    return {"store_apps_ended": ended, "store_containers": containers}


def table(summaries):
    """One row per size: the median of each column over its runs."""
    headings = [heading for heading, _, _ in COLUMNS]
    rows = []
    for agents in sorted({summary["agents"] for summary in summaries}):
        runs = [summary for summary in summaries if summary["agents"] == agents]
        row = []
        for _, field, fmt in COLUMNS:
            values = [summary[field] for summary in runs if summary.get(field) is not None]
            row.append(fmt.format(statistics.median(values)) if values else "-")
        violations = sum(len(summary["invariant_violations"]) for summary in runs)
        rows.append(row + [str(len(runs)), str(violations)])
    headings += ["runs", "violations"]
    widths = [max(len(heading), *(len(row[i]) for row in rows)) for i, heading in enumerate(headings)]
    lines = ["  ".join(heading.rjust(width) for heading, width in zip(headings, widths))]
    lines += ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spindle", default="target/release/spindle")
    parser.add_argument("--agents", default="1000,5000,10000", help="comma-separated sizes")
    parser.add_argument("--ams", type=int, default=200)
    parser.add_argument("--duration", type=int, default=30, help="seconds of the measured window")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--drain", type=int, default=60, help="seconds the live apps get to finish after the window")
    parser.add_argument("--runs", type=int, default=1, help="runs per size; the table shows medians")
    parser.add_argument("--postgres", help="server URL, e.g. postgres://postgres@127.0.0.1:5432/test (a fresh schema per run)")
    parser.add_argument("--sqlite-synchronous", choices=("full", "normal"), default="full")
    parser.add_argument("--task-ms", type=int, default=3000)
    parser.add_argument("--containers-per-am", type=int, default=20)
    parser.add_argument("--node-vcores", type=int, default=8)
    parser.add_argument("--node-memory-mb", type=int, default=16384)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--finished-apps-in-memory", type=int, default=1000,
                        help="the RM's bound on ended apps kept in memory (its default: 1000)")
    parser.add_argument("--agent-idle", type=int, default=0,
                        help="after each run, measure a real idle agent's RSS after this many seconds")
    parser.add_argument("--restart-idle", type=int, default=0,
                        help="after each run, restart the RM on its store and measure it for this many seconds "
                             "with the agents heartbeating and no AMs")
    parser.add_argument("--perf", type=int, default=0, help="profile the RM for this many seconds of each window")
    parser.add_argument("--dir", help="where runs keep their files (default: a temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the run dirs (logs, databases, profiles)")
    args = parser.parse_args()
    args.spindle = os.path.abspath(args.spindle)
    sizes = [int(size) for size in args.agents.split(",") if size.strip()]
    raise_open_file_limit()
    root = args.dir or tempfile.mkdtemp(prefix="spindle-rm-scale-")
    os.makedirs(root, exist_ok=True)
    summaries = []
    try:
        for agents in sizes:
            for index in range(args.runs):
                log(f"== {agents} agents, {args.ams} AMs, run {index + 1}/{args.runs} "
                    f"({'PostgreSQL' if args.postgres else 'SQLite'})")
                summary = one_run(args, root, agents, index)
                print(json.dumps(summary), flush=True)
                summaries.append(summary)
    finally:
        if summaries:
            log("")
            log(f"medians, {args.ams} AMs, {args.duration} s windows, {'PostgreSQL' if args.postgres else 'SQLite'}:")
            log(table(summaries))
        if not args.keep and not args.dir:
            shutil.rmtree(root, ignore_errors=True)
        else:
            log(f"run files kept under {root}")
    violated = [summary for summary in summaries if summary["invariant_violations"] or summary["loadgen_exit"]]
    sys.exit(1 if violated else 0)


if __name__ == "__main__":
    main()
