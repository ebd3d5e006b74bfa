#!/usr/bin/env python3
"""Foundation benchmarks on a local 2-agent cluster (see bench/README.md).

(a) submit-to-first-container-running latency over N one-container shell jobs, p50 and p99:
    from the client's clock just before POST /v1/apps to the `started_at_ms` the agent reported
    for the job's first task container (same machine, same clock).
(b) throughput of one shell job of M containers each running `true`: M divided by the time from
    the first task container's start to the last one's end, and M divided by submit-to-FINISHED.

Each measurement runs in one or more *variants*, alternated run by run (A B, B A, A B, ...) so
that a change in the machine's load hits all of them alike:

  --modes  run-as-user            `spindle local` started as root: every container runs as the
                                  mapped account (`nobody`), dropped to in a pre_exec hook
           single-user            `spindle local` started as an unprivileged account
                                  (--as-user, via `setpriv`): containers run as that account
           run-as-user-no-cgroups diagnostic: as root, in a mount namespace with an empty
                                  tmpfs over /sys/fs/cgroup, so the agents find no cgroups
  --sync   default                no --rm-config: `spindle local`'s own RM config
           full | normal          an --rm-config file with that `sqlite_synchronous` and the
                                  same queue as the default (one leaf, AMs up to 50%)

Usage: bench/cluster_bench.py [--spindle target/release/spindle] [--jobs 100] [--containers 2000]
                              [--runs 3] [--dir DIR] [--work-dir DIR] [--modes run-as-user,single-user]
                              [--sync default] [--perf-dir DIR] [--json]
Needs only the Python standard library (and root for the run-as-user modes). Starts each
`spindle local` itself and stops it at the end.
"""
import argparse
import json
import os
import pwd
import grp
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request

MODES = ("run-as-user", "single-user", "run-as-user-no-cgroups")
SYNCS = ("default", "full", "normal")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rm:
    def __init__(self, url, token):
        self.url, self.token = url, token

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", "Bearer " + self.token)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())

    def wait_app(self, app_id, timeout=600):
        deadline = time.time() + timeout
        while time.time() < deadline:
            app = self.call("GET", f"/v1/apps/{app_id}")
            if app["state"] in ("FINISHED", "FAILED", "KILLED"):
                return app
            time.sleep(0.01)
        raise TimeoutError(app_id)


def shell_job(name, containers, command):
    return {
        "name": name,
        "kind": "shell",
        "am": {"vcores": 1, "memory_mb": 64},
        "shell": {"command": command, "containers": containers, "vcores": 1, "memory_mb": 32},
    }


# The default queue as `spindle local` sets it up without --rm-config (cli/src/local.rs,
# `local_rm_config`): a file replaces the whole RM config, so it must say this itself.
RM_CONFIG = """\
sqlite_synchronous = "{sync}"

[queues]
name = "root"

[[queues.children]]
name = "default"
guaranteed_percent = 100
am_share_percent = 50
"""


class Variant:
    def __init__(self, mode, sync):
        self.mode, self.sync = mode, sync

    @property
    def name(self):
        return self.mode if self.sync == "default" else f"{self.mode}/sync={self.sync}"


def prepare_run_dir(parent, work_parent, variant, account):
    """Fresh dirs for one run: `data` (the data dir, with the store), `home` (SPINDLE_HOME) and
    `tmp` (TMPDIR: `spindle local` keeps containers in `<TMPDIR>/spindle-local-*`, outside its
    data dir), all owned by whoever runs `spindle local`; `tmp` goes under `work_parent` if
    given. 0711, so containers of other accounts pass through. Returns the dirs to delete too."""
    base = tempfile.mkdtemp(prefix="spindle-bench-", dir=parent)
    owned = [base]
    dirs = {name: os.path.join(base, name) for name in ("data", "home", "tmp")}
    if work_parent:
        work_base = tempfile.mkdtemp(prefix="spindle-bench-work-", dir=work_parent)
        owned.append(work_base)
        dirs["tmp"] = os.path.join(work_base, "tmp")
    for path in owned:
        os.chmod(path, 0o711)
    for path in dirs.values():
        os.mkdir(path, 0o711)
    rm_config = None
    if variant.sync != "default":
        rm_config = os.path.join(base, "rm.toml")
        with open(rm_config, "w") as f:
            f.write(RM_CONFIG.format(sync=variant.sync))
        os.chmod(rm_config, 0o644)
    if variant.mode == "single-user":
        for path in [*owned, *dirs.values()]:
            os.chown(path, account.pw_uid, account.pw_gid)
    return owned, dirs, rm_config


def start_cluster(spindle, variant, dirs, rm_config, account, group, vcores, memory_mb):
    port = free_port()
    env = dict(os.environ, SPINDLE_HOME=dirs["home"], TMPDIR=dirs["tmp"], RUST_LOG="warn")
    command = [spindle, "local", "--agents", "2", "--listen", f"127.0.0.1:{port}", "--data-dir", dirs["data"],
               "--agent-vcores", str(vcores), "--agent-memory-mb", str(memory_mb)]
    if rm_config:
        command += ["--rm-config", rm_config]
    if variant.mode == "single-user":
        # setpriv execs: the pid stays the one of `spindle local` (CPU time is read from it).
        env.update(HOME=dirs["home"], USER=account.pw_name, LOGNAME=account.pw_name)
        command = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={group.gr_gid}", "--clear-groups", "--", *command]
    elif variant.mode == "run-as-user-no-cgroups":
        # unshare and sh exec too. An empty tmpfs over /sys/fs/cgroup hides every hierarchy
        # (their mount points no longer exist), so the agents fall back to sampling memory.
        command = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                   'mount -t tmpfs none /sys/fs/cgroup && exec "$@"', "sh", *command]
    log = open(os.path.join(os.path.dirname(dirs["data"]), "local.log"), "w")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 60
    creds = os.path.join(dirs["data"], "local.toml")
    while time.time() < deadline:
        if proc.poll() is not None:
            break
        if os.path.exists(creds):
            try:
                token = tomllib.load(open(creds, "rb"))["token"]
                rm = Rm(f"http://127.0.0.1:{port}", token)
                nodes = rm.call("GET", "/v1/nodes")
                if sum(1 for n in nodes if n["state"] == "RUNNING") == 2:
                    return proc, rm, nodes
            except Exception:
                pass
        time.sleep(0.1)
    stop_cluster(proc)
    raise RuntimeError("local cluster did not come up; see " + log.name)


def start_local_cluster(spindle, base, vcores, memory_mb):
    """`spindle local` as this process's user (as root: jobs run as `nobody`) with its dirs in
    `base`, for the MapReduce and streaming benchmarks. `base` becomes 1777 (as /tmp): jobs of
    another account write their output and checkpoints there. Returns (proc, rm)."""
    os.chmod(base, 0o1777)
    dirs = {name: os.path.join(base, name) for name in ("data", "home", "tmp")}
    for path in dirs.values():
        os.makedirs(path, 0o711, exist_ok=True)
        os.chmod(path, 0o711)
    proc, rm, _nodes = start_cluster(spindle, Variant("run-as-user", "default"), dirs, None, None, None, vcores, memory_mb)
    return proc, rm


def stop_cluster(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def process_cpu_s(pid):
    """CPU time of `pid` and its reaped children (the agents reap every container, the AM too)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / CLOCK_TICKS


def machine_cpu_s():
    """Busy CPU seconds of the whole machine (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def process_memory_mb(pid):
    """VmRSS and VmPTE (page tables) of `spindle local`: what each fork() copies or shares."""
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.split()
    return int(status["VmRSS"][0]) / 1024, int(status["VmPTE"][0]) / 1024, int(status["Threads"][0])


def percentile(values, p):
    values = sorted(values)
    k = max(0, min(len(values) - 1, int(round(p / 100 * len(values) + 0.5)) - 1))
    return values[k]


def latency_run(rm, jobs):
    latencies = []
    for i in range(jobs):
        t0 = time.time() * 1000
        app_id = rm.call("POST", "/v1/apps", shell_job(f"latency-{i}", 1, ["true"]))["app_id"]
        app = rm.wait_app(app_id)
        assert app["final_status"] == "SUCCEEDED", app
        tasks = [c for c in rm.call("GET", f"/v1/apps/{app_id}/containers") if not c["is_am"]]
        first = min(c["started_at_ms"] for c in tasks)
        latencies.append(first - t0)
    return latencies


def throughput_run(rm, containers, pid, perf_file=None):
    perf = None
    if perf_file:
        perf = subprocess.Popen(["perf", "record", "-a", "-g", "-F", "999", "-o", perf_file],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    cpu0, machine0 = process_cpu_s(pid), machine_cpu_s()
    t0 = time.time() * 1000
    app_id = rm.call("POST", "/v1/apps", shell_job("throughput", containers, ["true"]))["app_id"]
    app = rm.wait_app(app_id)
    assert app["final_status"] == "SUCCEEDED", app
    t1 = time.time() * 1000
    if perf:
        perf.send_signal(signal.SIGINT)
        perf.wait()
    # The AM process ends just after its app: give the agent a moment to reap it.
    time.sleep(0.5)
    cpu = process_cpu_s(pid) - cpu0
    rss_mb, pte_mb, threads = process_memory_mb(pid)
    machine = machine_cpu_s() - machine0
    tasks = [c for c in rm.call("GET", f"/v1/apps/{app_id}/containers") if not c["is_am"]]
    assert len(tasks) >= containers, len(tasks)
    first = min(c["started_at_ms"] for c in tasks)
    last = max(c["finished_at_ms"] for c in tasks)
    return {
        "containers_per_sec": containers / ((last - first) / 1000),
        "containers_per_sec_submit_to_finish": containers / ((app["finished_at_ms"] - t0) / 1000),
        # CPU of the whole `spindle local` tree (RM, agents, AM, containers) per container.
        "cpu_ms_per_container": cpu * 1000 / containers,
        # The machine's busy share (of all cores) from submit to FINISHED (+0.5 s).
        "machine_busy_percent": 100 * machine / (os.cpu_count() * (t1 - t0 + 500) / 1000),
        # The `spindle local` process right after the job.
        "rss_mb": rss_mb,
        "page_tables_mb": pte_mb,
        "threads": threads,
    }


def ratio(a, b):
    return a / b if b else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spindle", default="target/release/spindle")
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--containers", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3, help="runs of each variant")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--dir", default=None,
                        help="where each run's data dir and containers go (default: the system temp dir); "
                             "e.g. /dev/shm for tmpfs")
    parser.add_argument("--work-dir", default=None,
                        help="where the containers' dirs go (TMPDIR of `spindle local`; default: next to the "
                             "data dir), e.g. /dev/shm to keep ext4's inode allocator out of a --dir on disk")
    parser.add_argument("--modes", default="run-as-user",
                        help=f"comma-separated, alternated run by run: {', '.join(MODES)}")
    parser.add_argument("--sync", default="default",
                        help=f"comma-separated sqlite_synchronous settings: {', '.join(SYNCS)}")
    parser.add_argument("--as-user", default="nobody", help="the account single-user mode runs as")
    parser.add_argument("--as-group", default="nogroup", help="its group")
    parser.add_argument("--perf-dir", default=None,
                        help="record `perf record -a -g` of each variant's first throughput job here")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    syncs = [s for s in args.sync.split(",") if s]
    for value, allowed in [(m, MODES) for m in modes] + [(s, SYNCS) for s in syncs]:
        if value not in allowed:
            parser.error(f"{value!r} is not one of {', '.join(allowed)}")
    if os.geteuid() != 0 and any(m != "single-user" for m in modes):
        parser.error("the run-as-user modes need root (spindle local started as root)")
    spindle = shutil.which(args.spindle) or os.path.abspath(args.spindle)
    account = pwd.getpwnam(args.as_user)
    group = grp.getgrnam(args.as_group)
    if args.perf_dir:
        os.makedirs(args.perf_dir, exist_ok=True)
    variants = [Variant(m, s) for s in syncs for m in modes]
    results = {v.name: {} for v in variants}
    # Run dirs are deleted only at the end: on ext4, thousands of just-deleted inodes slow
    # down the creation of new ones for minutes (see bench/README.md), which would make each
    # run pay for the previous run's clean-up.
    run_dirs = []
    try:
        for run in range(args.runs):
            order = variants if run % 2 == 0 else variants[::-1]
            for variant in order:
                owned, dirs, rm_config = prepare_run_dir(args.dir, args.work_dir, variant, account)
                run_dirs.extend(owned)
                proc, rm, nodes = start_cluster(spindle, variant, dirs, rm_config, account, group,
                                                vcores=64, memory_mb=65536)
                try:
                    latencies = latency_run(rm, args.jobs)
                    perf_file = None
                    if args.perf_dir and run == 0:
                        perf_file = os.path.join(args.perf_dir, variant.name.replace("/", "-") + ".perf.data")
                    figures = {"latency_p50_ms": statistics.median(latencies),
                               "latency_p99_ms": percentile(latencies, 99)}
                    figures.update(throughput_run(rm, args.containers, proc.pid, perf_file))
                finally:
                    stop_cluster(proc)
                for key, value in figures.items():
                    results[variant.name].setdefault(key, []).append(value)
                if not args.json:
                    print(f"run {run + 1} {variant.name:34} p50 {figures['latency_p50_ms']:5.1f} ms, "
                          f"p99 {figures['latency_p99_ms']:5.1f} ms, {figures['containers_per_sec']:5.0f} containers/s "
                          f"({figures['containers_per_sec_submit_to_finish']:4.0f}/s submit to finish), "
                          f"{figures['cpu_ms_per_container']:.2f} CPU ms/container, "
                          f"machine {figures['machine_busy_percent']:.0f}% busy, RSS {figures['rss_mb']:.0f} MB "
                          f"(page tables {figures['page_tables_mb']:.1f} MB, {figures['threads']} threads)", file=sys.stderr)
    finally:
        for base in run_dirs:
            shutil.rmtree(base, ignore_errors=True)
    summary = {"runs": args.runs, "jobs": args.jobs, "containers": args.containers, "variants": {}}
    for name, figures in results.items():
        summary["variants"][name] = {key: statistics.median(values) for key, values in figures.items()}
        summary["variants"][name]["all_runs"] = figures
    ratios = {}
    for sync in syncs:
        a, b = Variant("run-as-user", sync).name, Variant("single-user", sync).name
        if a in results and b in results and results[a] and results[b]:
            sa, sb = summary["variants"][a], summary["variants"][b]
            ratios[f"{a} / {b}"] = {
                "containers_per_sec": ratio(sa["containers_per_sec"], sb["containers_per_sec"]),
                "latency_p50_ms": ratio(sa["latency_p50_ms"], sb["latency_p50_ms"]),
                "latency_p99_ms": ratio(sa["latency_p99_ms"], sb["latency_p99_ms"]),
                "cpu_ms_per_container": ratio(sa["cpu_ms_per_container"], sb["cpu_ms_per_container"]),
            }
    for mode in modes:
        a, b = Variant(mode, "full").name, Variant(mode, "normal").name
        if a in results and b in results and results[a] and results[b]:
            sa, sb = summary["variants"][a], summary["variants"][b]
            ratios[f"{a} / {b}"] = {
                "containers_per_sec": ratio(sa["containers_per_sec"], sb["containers_per_sec"]),
                "latency_p50_ms": ratio(sa["latency_p50_ms"], sb["latency_p50_ms"]),
                "latency_p99_ms": ratio(sa["latency_p99_ms"], sb["latency_p99_ms"]),
                "cpu_ms_per_container": ratio(sa["cpu_ms_per_container"], sb["cpu_ms_per_container"]),
            }
    summary["ratios"] = ratios
    if args.json:
        print(json.dumps(summary))
        return
    print(f"medians of {args.runs} runs ({args.jobs} latency jobs, {args.containers} containers):")
    for name, s in summary["variants"].items():
        runs = ", ".join(f"{v:.0f}" for v in results[name]["containers_per_sec"])
        print(f"  {name:34} p50 {s['latency_p50_ms']:5.1f} ms, p99 {s['latency_p99_ms']:5.1f} ms, "
              f"{s['containers_per_sec']:5.0f} containers/s (runs: {runs}; "
              f"{s['containers_per_sec_submit_to_finish']:.0f}/s submit to finish), "
              f"{s['cpu_ms_per_container']:.2f} CPU ms/container")
    for name, r in ratios.items():
        print(f"  {name}: containers/s {r['containers_per_sec']:.3f}, p50 {r['latency_p50_ms']:.2f}, "
              f"p99 {r['latency_p99_ms']:.2f}, CPU per container {r['cpu_ms_per_container']:.2f}")


if __name__ == "__main__":
    main()
