#!/usr/bin/env python3
"""Streaming benchmarks on a local 2-agent cluster (see bench/README.md, "Streaming").

(a) Throughput: bench/stream-window-count.toml (generator → key_by → 1 s tumbling count per
    key over 100,000 keys → discarding sink, parallelism 2, unthrottled generators). Events/s is
    the sum over the window instances of records in per second, as the AM reports them (rates
    over ~1 s intervals); after a warm-up, the median of the samples of each run; runs repeat
    with a fresh job each.
(b) Rescale pause: the same pipeline with a 10 min window over --keys keys (so the window's
    keyed state grows to --state-mb MB, in memory or, with --measure snapshot, as written to a
    checkpoint), generators throttled to 300,000 events/s each; once the state is that big,
    `PUT /v1/apps/{id}/operators/count {"parallelism": 4}`; the pause is the longest time an
    instance that gained key groups could not process (from the barrier that moved them to
    their state loaded), as the AM reports it; the stall seen by the pipeline (seconds with no
    window input) is printed beside it. --rescale-speeds: `throttled` (300,000 events/s per
    generator), `full` (unthrottled: the window instances are the bottleneck), or both.
    With --s3, each rescale run is followed by the same run checkpointing to an S3-compatible
    server this script starts (`s3s-fs`, its data under --dir too): snapshots are uploaded and
    the moved key groups read back with ranged GETs; both pauses are printed side by side.
(c) With --checkpoint-cost: the throughput run again with checkpoints every 10 min instead of
    every second, so the difference is what checkpoints cost the pipeline.

The cluster's data dir (and the checkpoints) live under --dir (tmpfs by default).
Usage: bench/stream_bench.py [--runs 3] [--seconds 20] [--skip-rescale] [--state-mb 100]
Needs the release build: `cargo build --release -p spindle-cli`.
"""
import argparse
import copy
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import tomllib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_bench import start_local_cluster  # noqa: E402
from mapreduce_bench import S3Server  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(message):
    print(message, file=sys.stderr, flush=True)


def load_example():
    # The benchmark's own copy of the tour's pipeline, with unthrottled generators (the tour's
    # examples/stream-window-count.toml is throttled by `rate`).
    with open(os.path.join(ROOT, "bench", "stream-window-count.toml"), "rb") as f:
        return tomllib.load(f)


def operator(spec, name):
    return next(op for op in spec["stream"]["operators"] if op["name"] == name)


def detail(rm, app_id):
    app = rm.call("GET", f"/v1/apps/{app_id}")
    if app["state"] in ("FINISHED", "FAILED", "KILLED"):
        raise RuntimeError(f"the job ended: {app['diagnostics']}")
    return (app.get("detail") or {}).get("stream")


def window_rate(stream):
    count = next(op for op in stream["operators"] if op["name"] == "count")
    return sum(i["records_in_per_s"] for i in count["instances"]), count


def throughput_run(rm, checkpoint_dir, seconds, warmup, checkpoint_interval_ms=None):
    spec = load_example()
    spec["name"] = "stream-throughput"
    spec["stream"]["checkpoint_dir"] = checkpoint_dir
    if checkpoint_interval_ms:
        spec["stream"]["checkpoint_interval_ms"] = checkpoint_interval_ms
    app_id = rm.call("POST", "/v1/apps", spec)["app_id"]
    samples, busy = [], []
    deadline = time.time() + warmup + seconds + 60
    started = None
    while time.time() < deadline:
        time.sleep(1)
        stream = detail(rm, app_id)
        if not stream:
            continue
        rate, count = window_rate(stream)
        if rate <= 0 and started is None:
            continue
        started = started or time.time()
        if time.time() - started < warmup:
            continue
        samples.append(rate)
        busy.append(statistics.mean(i["busy"] for i in count["instances"]))
        if len(samples) >= seconds:
            break
    rm.call("DELETE", f"/v1/apps/{app_id}")
    return statistics.median(samples), statistics.median(busy), stream.get("last_checkpoint")


def rescale_run(rm, checkpoint_dir, state_mb, keys, measure, full_speed, env=None):
    spec = load_example()
    spec["name"] = "stream-rescale"
    spec["stream"]["checkpoint_dir"] = checkpoint_dir
    if env:
        spec["stream"]["env"] = env
    spec["stream"]["checkpoint_interval_ms"] = 5000
    spec["stream"]["worker"] = {"vcores": 1, "memory_mb": 2048}
    events = operator(spec, "events")
    if full_speed:
        # Unthrottled; event time advances ~2 s per second, so the 10 min window stays open.
        events.update({"keys": keys, "event_rate": 1_000_000})
    else:
        events.update({"keys": keys, "rate": 300_000, "event_rate": 300_000})
    operator(spec, "count")["size_ms"] = 600_000
    app_id = rm.call("POST", "/v1/apps", spec)["app_id"]
    while True:
        time.sleep(1)
        stream = detail(rm, app_id)
        if not stream:
            continue
        _, count = window_rate(stream)
        if measure == "snapshot":
            state = (stream.get("last_checkpoint") or {}).get("size_bytes", 0)
        else:
            state = sum(i["state_bytes"] for i in count["instances"])
        if state >= state_mb * 1_000_000:
            break
    log(f"state {state / 1e6:.0f} MB ({measure}): rescaling count 2 → 4")
    t0 = time.time()
    rm.call("PUT", f"/v1/apps/{app_id}/operators/count", {"parallelism": 4})
    rates = []
    while True:
        time.sleep(0.25)
        stream = detail(rm, app_id)
        rate, count = window_rate(stream)
        rates.append((time.time() - t0, rate))
        rescale = stream.get("last_rescale") or {}
        if rescale.get("to") == 4 and rescale.get("finished_at_ms"):
            break
        if time.time() - t0 > 120:
            raise RuntimeError("the rescale did not finish within 120 s")
    took = rescale["finished_at_ms"] - rescale["started_at_ms"]
    checkpoint = stream.get("last_checkpoint") or {}
    rm.call("DELETE", f"/v1/apps/{app_id}")
    return state, rescale["pause_ms"], took, rates, checkpoint


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spindle", default=os.path.join(ROOT, "target/release/spindle"))
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--state-mb", type=int, default=100)
    parser.add_argument("--keys", type=int, default=3_000_000, help="distinct keys of the rescale run")
    parser.add_argument("--measure", choices=["memory", "snapshot"], default="memory",
                        help="--state-mb counts the instances' in-memory state, or the checkpoint's bytes")
    parser.add_argument("--skip-rescale", action="store_true")
    parser.add_argument("--rescale-speeds", default="throttled,full",
                        help="comma-separated: throttled (300,000 events/s per generator), full (unthrottled)")
    parser.add_argument("--checkpoint-cost", action="store_true",
                        help="also run the throughput pipeline with checkpoints every 10 min")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--s3", action="store_true",
                        help="also run each rescale checkpointing to an S3-compatible server (s3s-fs)")
    parser.add_argument("--s3s-fs", default=shutil.which("s3s-fs") or os.path.expanduser("~/.cargo/bin/s3s-fs"),
                        help="the s3s-fs binary (cargo install s3s-fs@0.14.1 --locked --features binary)")
    args = parser.parse_args()
    data_dir = tempfile.mkdtemp(prefix="spindle-stream-bench-", dir=args.dir)
    proc, rm = start_local_cluster(args.spindle, data_dir, 4, 12288)
    s3 = S3Server(args.s3s_fs, os.path.join(data_dir, "s3")) if args.s3 else None
    try:
        checkpoints = os.path.join(data_dir, "checkpoints")
        if not args.skip_throughput:
            rates = []
            for run in range(args.runs):
                rate, busy, checkpoint = throughput_run(rm, checkpoints, args.seconds, args.warmup)
                rates.append(rate)
                log(f"run {run + 1}: {rate / 1e6:.2f} M events/s (window busy {busy:.0%}; last checkpoint {checkpoint})")
            print(f"throughput: median {statistics.median(rates) / 1e6:.2f} M events/s over {args.runs} runs "
                  f"({', '.join(f'{r / 1e6:.2f}' for r in rates)})")
            if args.checkpoint_cost:
                quiet = []
                for run in range(args.runs):
                    rate, busy, _ = throughput_run(rm, checkpoints, args.seconds, args.warmup, 600_000)
                    quiet.append(rate)
                    log(f"run {run + 1}, checkpoints every 10 min: {rate / 1e6:.2f} M events/s (window busy {busy:.0%})")
                print(f"throughput without checkpoints: median {statistics.median(quiet) / 1e6:.2f} M events/s "
                      f"({', '.join(f'{r / 1e6:.2f}' for r in quiet)}); with checkpoints every second: "
                      f"{statistics.median(rates) / statistics.median(quiet):.1%} of it")
        stores = [("local", checkpoints, None)]
        if s3:
            stores.append(("s3", "s3://bench/checkpoints", s3.env()))
        for speed in [] if args.skip_rescale else args.rescale_speeds.split(","):
            pauses = {store: [] for store, _, _ in stores}
            for run in range(args.runs):
                for store, checkpoint_dir, env in stores:
                    state, pause, took, rates, checkpoint = rescale_run(
                        rm, checkpoint_dir, args.state_mb, args.keys, args.measure, speed == "full", env)
                    pauses[store].append(pause)
                    log(f"run {run + 1} ({speed}, checkpoints {store}): rescale 2 → 4 with {state / 1e6:.0f} MB of keyed "
                        f"state: pause {pause} ms, rescale done in {took} ms; its checkpoint (trigger to complete) took "
                        f"{checkpoint.get('duration_ms')} ms for {checkpoint.get('size_bytes', 0) / 1e6:.0f} MB; "
                        f"window input rates after the request: "
                        f"{' '.join(f'{t:.1f}s:{r / 1e6:.2f}M' for t, r in rates)}")
            for store, values in pauses.items():
                print(f"rescale pause ({speed}, checkpoints {store}): median {statistics.median(values)} ms "
                      f"over {args.runs} runs ({', '.join(map(str, values))})")
    finally:
        if s3:
            s3.stop()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
