#!/usr/bin/env python3
"""Foundation benchmarks on a local 2-agent cluster (see bench/README.md).

(a) submit-to-first-container-running latency over N one-container shell jobs, p50 and p99:
    from the client's clock just before POST /v1/apps to the `started_at_ms` the agent reported
    for the job's first task container (same machine, same clock).
(b) throughput of one shell job of M containers each running `true`: M divided by the time from
    the first task container's start to the last one's end, and M divided by submit-to-FINISHED.

Usage: bench/cluster_bench.py [--spindle target/release/spindle] [--jobs 100] [--containers 2000]
                              [--runs 3] [--json]
Needs only the Python standard library. Starts `spindle local` itself and stops it at the end.
"""
import argparse
import json
import os
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


def start_cluster(spindle, data_dir, vcores, memory_mb):
    port = free_port()
    env = dict(os.environ, SPINDLE_HOME=os.path.join(data_dir, "home"), RUST_LOG="warn")
    log = open(os.path.join(data_dir, "local.log"), "w")
    proc = subprocess.Popen(
        [spindle, "local", "--agents", "2", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir,
         "--agent-vcores", str(vcores), "--agent-memory-mb", str(memory_mb)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 60
    creds = os.path.join(data_dir, "local.toml")
    while time.time() < deadline:
        if os.path.exists(creds):
            try:
                token = tomllib.load(open(creds, "rb"))["token"]
                rm = Rm(f"http://127.0.0.1:{port}", token)
                nodes = rm.call("GET", "/v1/nodes")
                if sum(1 for n in nodes if n["state"] == "RUNNING") == 2:
                    return proc, rm
            except Exception:
                pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("local cluster did not come up; see " + os.path.join(data_dir, "local.log"))


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


def throughput_run(rm, containers):
    t0 = time.time() * 1000
    app_id = rm.call("POST", "/v1/apps", shell_job("throughput", containers, ["true"]))["app_id"]
    app = rm.wait_app(app_id)
    assert app["final_status"] == "SUCCEEDED", app
    tasks = [c for c in rm.call("GET", f"/v1/apps/{app_id}/containers") if not c["is_am"]]
    assert len(tasks) >= containers, len(tasks)
    first = min(c["started_at_ms"] for c in tasks)
    last = max(c["finished_at_ms"] for c in tasks)
    return containers / ((last - first) / 1000), containers / ((app["finished_at_ms"] - t0) / 1000)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spindle", default="target/release/spindle")
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--containers", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--dir", default=None,
                        help="where the cluster's data dir goes (default: the system temp dir); e.g. /dev/shm for tmpfs")
    args = parser.parse_args()
    spindle = shutil.which(args.spindle) or os.path.abspath(args.spindle)
    results = {"latency_p50_ms": [], "latency_p99_ms": [], "containers_per_sec": [], "containers_per_sec_submit_to_finish": []}
    # Data dirs are deleted only at the end: on ext4, thousands of just-deleted inodes slow
    # down the creation of new ones for minutes (see bench/README.md), which would make each
    # run pay for the previous run's clean-up.
    data_dirs = []
    for run in range(args.runs):
        data_dir = tempfile.mkdtemp(prefix="spindle-bench-", dir=args.dir)
        data_dirs.append(data_dir)
        proc, rm = start_cluster(spindle, data_dir, vcores=64, memory_mb=65536)
        try:
            latencies = latency_run(rm, args.jobs)
            results["latency_p50_ms"].append(statistics.median(latencies))
            results["latency_p99_ms"].append(percentile(latencies, 99))
            rate, end_to_end = throughput_run(rm, args.containers)
            results["containers_per_sec"].append(rate)
            results["containers_per_sec_submit_to_finish"].append(end_to_end)
            if not args.json:
                print(f"run {run + 1}: p50 {results['latency_p50_ms'][-1]:.1f} ms, p99 {results['latency_p99_ms'][-1]:.1f} ms, "
                      f"{rate:.0f} containers/s ({end_to_end:.0f}/s submit to finish)", file=sys.stderr)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    for data_dir in data_dirs:
        shutil.rmtree(data_dir, ignore_errors=True)
    summary = {key: statistics.median(values) for key, values in results.items()}
    summary["runs"] = args.runs
    summary["jobs"] = args.jobs
    summary["containers"] = args.containers
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"median of {args.runs} runs: submit-to-first-container p50 {summary['latency_p50_ms']:.1f} ms, "
              f"p99 {summary['latency_p99_ms']:.1f} ms; {summary['containers_per_sec']:.0f} containers/s "
              f"({summary['containers_per_sec_submit_to_finish']:.0f}/s submit to finish)")


if __name__ == "__main__":
    main()
