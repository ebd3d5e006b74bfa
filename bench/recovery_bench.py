#!/usr/bin/env python3
"""Stream recovery after `kill -9` of one worker: a failover region against the whole pipeline
(see bench/README.md, "Regional recovery").

The job is examples/stream-parallel-etl.toml made unbounded: 3 generators throttled to --rate
events/s each → filter → 3 file sinks, checkpoints every 250 ms. Every edge is forward, so each
worker hosts one failover region. Once 3 checkpoints completed, the worker hosting instance 1 is
killed (SIGKILL to every process whose environment names its container). Each run is done with
`failover = "region"` and with `failover = "full"`, alternating, on one cluster:

- recovery: from the kill to the first checkpoint completed after the restart (detection, a
  replacement container, redeploying, replaying from the checkpoint, aligning a new barrier);
- restarted: instances stopped and deployed again (and so the sources that replay from the
  checkpoint: one of three, or all), as the report's `last_restart` says;
- kept: whether the other two regions' instances are the same instances in the same
  containers after the recovery (they ran on) or new ones (they went back too).

The rates the AM reports are averages over ~1 s, too coarse to show a stall of a few hundred
ms, so the other regions' output during the recovery is not measured here; that they run on
is shown by their instances being kept (and tested in tests/stream_regions.rs).

Usage: bench/recovery_bench.py [--runs 3] [--rate 100000]
Needs the release build: `cargo build --release -p spindle-cli`.
"""
import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
import tomllib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_bench import start_local_cluster, stop_cluster  # noqa: E402
from stream_bench import detail, log  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kill_container(container_id):
    """SIGKILL to every process started for `container_id` (found by its environment)."""
    needle = f"SPINDLE_CONTAINER_ID={container_id}".encode()
    killed = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    os.kill(int(pid), signal.SIGKILL)
                    killed += 1
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return killed


def operator(stream, name):
    """Operator `name` of a `[stream]` table or of a stream detail (both list `operators`)."""
    return next(op for op in stream["operators"] if op["name"] == name)


def placement(stream):
    """(operator, index) → container of every instance."""
    return {(op["name"], i["index"]): i.get("container_id") for op in stream["operators"] for i in op["instances"]}


def recovery_run(rm, data_dir, run, failover, rate):
    with open(os.path.join(ROOT, "examples", "stream-parallel-etl.toml"), "rb") as f:
        spec = tomllib.load(f)
    spec["name"] = f"recovery-{failover}-{run}"
    stream = spec["stream"]
    stream.update({"checkpoint_interval_ms": 250, "failover": failover, "max_restarts": 5,
                   "checkpoint_dir": os.path.join(data_dir, "checkpoints")})
    events = operator(stream, "events")
    events.pop("limit")
    events["rate"] = rate
    operator(stream, "out")["path"] = os.path.join(data_dir, f"out-{failover}-{run}")
    app_id = rm.call("POST", "/v1/apps", spec)["app_id"]
    while True:
        time.sleep(0.25)
        current = detail(rm, app_id)
        if current and (current.get("last_checkpoint") or {}).get("id", 0) >= 3:
            break
    before = placement(current)
    victim = next(i["container_id"] for i in operator(current, "events")["instances"] if i["index"] == 1)
    killed_at = time.time()
    if not kill_container(victim):
        raise RuntimeError(f"no process of {victim} to kill")
    restarted = None
    while time.time() - killed_at < 120:
        time.sleep(0.1)
        current = detail(rm, app_id)
        if current.get("last_restart"):
            restarted = restarted or time.time()
        checkpoint = current.get("last_checkpoint") or {}
        if restarted and checkpoint.get("completed_at_ms", 0) / 1000 > restarted:
            recovery_ms = (checkpoint["completed_at_ms"] / 1000 - killed_at) * 1000
            break
    else:
        raise RuntimeError("no checkpoint completed within 120 s of the kill")
    restart = current["last_restart"]
    rm.call("DELETE", f"/v1/apps/{app_id}")
    after = placement(current)
    kept = all(after[key] == before[key] for key in before if key[1] != 1)
    return recovery_ms, kept, restart


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spindle", default=os.path.join(ROOT, "target/release/spindle"))
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=int, default=100_000, help="events/s of each generator")
    args = parser.parse_args()
    data_dir = tempfile.mkdtemp(prefix="spindle-recovery-bench-", dir=args.dir)
    proc, rm = start_local_cluster(args.spindle, data_dir, 4, 12288)
    results = {"region": [], "full": []}
    try:
        for run in range(args.runs):
            for failover in ("region", "full"):
                recovery, kept, restart = recovery_run(rm, data_dir, run, failover, args.rate)
                results[failover].append((recovery, kept, restart["instances"], restart["of_instances"]))
                log(f"run {run + 1} ({failover}): {restart['instances']} of {restart['of_instances']} instances "
                    f"restarted; recovery {recovery:.0f} ms; other regions' instances kept: {kept}")
        for failover, runs in results.items():
            median = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
            print(f"failover = {failover}: {median(2):.0f} of {median(3):.0f} instances restarted, recovery median "
                  f"{median(0):.0f} ms, other regions kept in {sum(r[1] for r in runs)} of {args.runs} runs")
    finally:
        stop_cluster(proc)


if __name__ == "__main__":
    main()
