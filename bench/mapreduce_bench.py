#!/usr/bin/env python3
"""MapReduce benchmarks on a local 2-agent cluster (see bench/README.md, "MapReduce").

(a) word count (mapper `wordcount`, combiner `sum`, reducer `sum`) over generated Zipf text
    (100,000-word vocabulary), next to the hand-written two-thread Rust word count
    `wc_reference` over the same file in the same run; the job's output is checked against the
    reference's counts. The runs interleave (reference, reference with Fx hash, job) so the
    shared machine's changing load hits each alike.
    With --s3, each run also counts the same text read from and written to an S3-compatible
    server this script starts (`s3s-fs`, its data under --dir like the local files), right
    after the local job: the ratio of the two is the cost of the object store's path (HTTP,
    ranged GETs, multipart uploads, the server-side copy at commit). With --s3-own-core, the
    S3 server runs on CPU 1 and the cluster (and every task it starts) on CPU 0, in the local
    and the S3 runs alike, as when the store is a host of its own: the ratio is then the cost
    of the object-store path to the job itself, without the co-located server's CPU.
(b) total-order sort (mapper and reducer `sort`) of generated 100-byte records; the output is
    checked for global order across the part files, record count and content (an
    order-independent checksum of the lines).

MB/s = input bytes / wall time, in decimal MB. The job's wall time runs from the client's clock
just before `POST /v1/apps` to the RM's `finished_at_ms` (same machine, same clock). The data and
the cluster's data dir live under --dir (tmpfs by default: no disk in the figures, and no ext4
inode trap); the input is read once before the runs so the page cache is warm.

Usage: bench/mapreduce_bench.py [--size-mb 1024] [--runs 3] [--split-mb 64] [--skip-sort] ...
Needs the Python standard library, `rustc` (the generators are std-only Rust files in bench/)
and the release build: `cargo build --release -p spindle-cli` and
`cargo build --release -p spindle-cli --example wc_reference`.
"""
import argparse
import glob
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_bench import start_local_cluster  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


def log(message):
    print(message, file=sys.stderr, flush=True)


def build_generator(name, tools_dir):
    """Compiles bench/NAME.rs with plain rustc (std only) unless the binary is newer."""
    source = os.path.join(BENCH_DIR, name + ".rs")
    binary = os.path.join(tools_dir, name)
    if not os.path.exists(binary) or os.path.getmtime(binary) < os.path.getmtime(source):
        os.makedirs(tools_dir, exist_ok=True)
        subprocess.run(["rustc", "-O", "--edition", "2021", source, "-o", binary], check=True)
    return binary


def generate(generator, path, size_bytes):
    """Generates a data file unless one of the right size exists (the generators are
    deterministic, so an existing file is the same data)."""
    expected = {"gen_zipf_text": size_bytes, "gen_sort_records": size_bytes // 100 * 100}
    name = os.path.basename(generator)
    if os.path.exists(path) and expected[name] - os.path.getsize(path) < 200:
        return
    log(f"generating {path} ({size_bytes} bytes)")
    subprocess.run([generator, path, str(size_bytes)], check=True)


def warm(path):
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def mapreduce_job(name, input_path, output, mapper, combiner, reducer, args, reduce_memory_mb=1024):
    spec = {
        "input": [input_path],
        "output": output,
        "mapper": mapper,
        "reducer": reducer,
        "reducers": args.reducers,
        "split_size_mb": args.split_mb,
        "map": {"vcores": 1, "memory_mb": 1024},
        "reduce": {"vcores": 1, "memory_mb": reduce_memory_mb},
        "sort_buffer_mb": args.sort_buffer_mb,
    }
    if combiner:
        spec["combiner"] = combiner
    if args.max_containers:
        spec["max_containers"] = args.max_containers
    return {"name": name, "kind": "mapreduce", "mapreduce": spec}


def tree_cpu_seconds(pid):
    """CPU time of `spindle local` and its reaped children (the AM and task containers), from
    /proc/PID/stat: utime + stime + cutime + cstime."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def pin_tree(root_pid, cpus):
    """Pins every thread of `root_pid` and its descendants to `cpus` (taskset's list syntax);
    processes they start later inherit it."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    tree, frontier = [], [root_pid]
    while frontier:
        pid = frontier.pop()
        tree.append(pid)
        frontier.extend(child for child, parent in parents.items() if parent == pid)
    for pid in tree:
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], stdout=subprocess.DEVNULL, check=False)


def run_job(rm, spec, cluster_pid):
    """Submits a job and waits for it; returns (seconds submit→FINISHED, final report, map phase
    seconds as seen by polling the stage counts or None if the RM reports none, CPU seconds the
    cluster spent meanwhile)."""
    time.sleep(1)  # let the previous job's containers be reaped, so their CPU time is counted
    cpu_before = tree_cpu_seconds(cluster_pid)
    t0 = time.time()
    try:
        app_id = rm.call("POST", "/v1/apps", spec)["app_id"]
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"the RM refused {spec['name']}: {error.code} {error.read().decode(errors='replace')}") from None
    maps_done_at = None
    deadline = t0 + 3600
    while time.time() < deadline:
        app = rm.call("GET", f"/v1/apps/{app_id}")
        stages = (app.get("detail") or {}).get("stages") or []
        for stage in stages:
            if stage["name"] == "map" and stage["total"] and stage["succeeded"] == stage["total"] and maps_done_at is None:
                maps_done_at = time.time()
        if app["state"] in ("FINISHED", "FAILED", "KILLED"):
            break
        time.sleep(0.05)
    else:
        raise TimeoutError(app_id)
    if app["final_status"] != "SUCCEEDED":
        raise RuntimeError(f"{spec['name']} did not succeed: {app['final_status']}: {app['diagnostics']}")
    seconds = app["finished_at_ms"] / 1000 - t0
    time.sleep(1)
    return seconds, app, (maps_done_at - t0 if maps_done_at else None), tree_cpu_seconds(cluster_pid) - cpu_before


def part_files(output):
    return sorted(glob.glob(os.path.join(output, "part-r-*")))


def read_counts(path_list):
    counts = {}
    for path in path_list:
        with open(path, "rb") as f:
            for line in f:
                word, count = line.rstrip(b"\n").split(b"\t")
                if word in counts:
                    raise AssertionError(f"{word!r} appears twice in the output")
                counts[word] = int(count)
    return counts


def check_sorted_output(output, expected_records, expected_checksum):
    """Global order across part files in name order, record count, and the sum of the lines'
    CRC-32s (order-independent: the same lines, each once as often)."""
    records, checksum, previous = 0, 0, b""
    for path in part_files(output):
        with open(path, "rb") as f:
            for line in f:
                if line < previous:
                    raise AssertionError(f"out of order in {path} at record {records}: {line!r} after {previous!r}")
                previous = line
                records += 1
                checksum = (checksum + zlib.crc32(line)) & 0xFFFFFFFFFFFFFFFF
    if records != expected_records or checksum != expected_checksum:
        raise AssertionError(f"{records} records (expected {expected_records}), checksum {checksum} (expected {expected_checksum})")


def lines_and_checksum(path):
    records, checksum = 0, 0
    with open(path, "rb") as f:
        for line in f:
            records += 1
            checksum = (checksum + zlib.crc32(line)) & 0xFFFFFFFFFFFFFFFF
    return records, checksum


def reference_run(reference, text, counts_path, fx):
    command = [reference] + (["--fx"] if fx else []) + [text, counts_path]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["cpu_seconds"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    log(f"  reference ({result['hasher']} hash): {result['mb_per_s']:.1f} MB/s, "
        f"{result['words_per_s'] / 1e6:.1f} M words/s, {result['seconds']:.2f} s, {result['cpu_seconds']:.2f} CPU s")
    return result


class S3Server:
    """An s3s-fs server on a free port with its data (a bucket is a directory) under `root`."""

    def __init__(self, binary, root):
        import socket
        self.root = root
        os.makedirs(os.path.join(root, "bench"), exist_ok=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", str(port), "--access-key", "bench",
                                      "--secret-key", "bench-secret", root],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("s3s-fs did not start")

    def env(self):
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret"}

    def put_file(self, path, key, uploader):
        """Uploads a file as object `bench/KEY` through the S3 API (a file copied into the
        server's directory would have no stored ETag, and s3s-fs would hash the whole object
        for every ranged GET)."""
        subprocess.run([uploader, path, f"s3://bench/{key}"], env={**os.environ, **self.env()}, check=True)

    def path_of(self, key):
        return os.path.join(self.root, "bench", key)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def word_count(rm, args, data_dir, text):
    """Interleaves the runs (reference with std hash, with Fx hash, then the job, then the job on
    S3 with --s3) so a change in the shared machine's load hits all alike."""
    size = os.path.getsize(text)
    counts_path = os.path.join(data_dir, "reference-counts.txt")
    reference, reference_fx, results, s3_results = [], [], [], []
    s3 = None
    if args.s3:
        s3 = S3Server(args.s3s_fs, os.path.join(data_dir, "s3"))
        s3.put_file(text, "input/text.txt", args.s3_put)
        if args.s3_own_core:
            pin_tree(s3.proc.pid, "1")
            pin_tree(rm.pid, "0")
    for run in range(args.runs):
        warm(text)
        log(f" run {run + 1} (load average {os.getloadavg()[0]:.2f})")
        reference.append(reference_run(args.reference, text, counts_path, fx=False))
        expected = read_counts([counts_path])
        reference_fx.append(reference_run(args.reference, text, counts_path, fx=True))
        if read_counts([counts_path]) != expected:
            raise AssertionError("the reference's counts differ between its two hashes")
        output = os.path.join(data_dir, f"wordcount-out-{run}")
        seconds, app, map_phase, cpu = run_job(rm, mapreduce_job("wordcount", text, output, "wordcount", "sum", "sum", args), rm.pid)
        actual = read_counts(part_files(output))
        if actual != expected:
            missing = len(expected.keys() - actual.keys())
            wrong = sum(1 for word in expected if word in actual and actual[word] != expected[word])
            raise AssertionError(f"word count output differs from the reference: {missing} words missing, {wrong} counts wrong")
        shutil.rmtree(output)
        results.append({"seconds": seconds, "mb_per_s": size / 1e6 / seconds, "map_phase_seconds": map_phase, "cpu_seconds": cpu,
                        "counters": (app.get("detail") or {}).get("counters")})
        phase = f", maps done after {map_phase:.2f} s" if map_phase else ""
        log(f"  spindle word count: {size / 1e6 / seconds:.1f} MB/s, {seconds:.2f} s{phase}, {cpu:.2f} CPU s; output matches the reference")
        if s3:
            spec = mapreduce_job("wordcount-s3", "s3://bench/input", f"s3://bench/out-{run}", "wordcount", "sum", "sum", args)
            spec["mapreduce"]["env"] = s3.env()
            server_cpu_before = tree_cpu_seconds(s3.proc.pid)
            seconds, app, map_phase, cpu = run_job(rm, spec, rm.pid)
            server_cpu = tree_cpu_seconds(s3.proc.pid) - server_cpu_before
            if read_counts(sorted(glob.glob(s3.path_of(f"out-{run}/part-r-*")))) != expected:
                raise AssertionError("the S3 word count's output differs from the reference")
            shutil.rmtree(s3.path_of(f"out-{run}"))
            s3_results.append({"seconds": seconds, "mb_per_s": size / 1e6 / seconds, "map_phase_seconds": map_phase, "cpu_seconds": cpu,
                               "server_cpu_seconds": server_cpu})
            log(f"  spindle word count s3:// → s3://: {size / 1e6 / seconds:.1f} MB/s, {seconds:.2f} s, {cpu:.2f} CPU s "
                f"+ {server_cpu:.2f} CPU s of the S3 server on the same 2 cores; output matches the reference")
    if s3:
        s3.stop()
        if args.s3_own_core:
            pin_tree(rm.pid, "0-1")
    return reference, reference_fx, results, s3_results


def sort(rm, args, data_dir, records_path):
    size = os.path.getsize(records_path)
    warm(records_path)
    expected_records, expected_checksum = lines_and_checksum(records_path)
    results = []
    for run in range(args.sort_runs):
        warm(records_path)
        log(f" run {run + 1} (load average {os.getloadavg()[0]:.2f})")
        output = os.path.join(data_dir, f"sort-out-{run}")
        spec = mapreduce_job("sort", records_path, output, "sort", None, "sort", args, reduce_memory_mb=args.sort_reduce_memory_mb)
        seconds, app, map_phase, cpu = run_job(rm, spec, rm.pid)
        check_sorted_output(output, expected_records, expected_checksum)
        shutil.rmtree(output)
        results.append({"seconds": seconds, "mb_per_s": size / 1e6 / seconds, "map_phase_seconds": map_phase, "cpu_seconds": cpu,
                        "counters": (app.get("detail") or {}).get("counters")})
        phase = f", maps done after {map_phase:.2f} s" if map_phase else ""
        log(f"  spindle sort: {size / 1e6 / seconds:.1f} MB/s, {seconds:.2f} s{phase}, {cpu:.2f} CPU s; "
            f"{expected_records} records globally ordered, checksum matches")
    return results


def median(results, key="mb_per_s"):
    return statistics.median(result[key] for result in results)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spindle", default="target/release/spindle")
    parser.add_argument("--reference", default="target/release/examples/wc_reference")
    parser.add_argument("--dir", default="/dev/shm", help="where data and the cluster's data dir go (default tmpfs)")
    parser.add_argument("--size-mb", type=int, default=1024, help="input size in MiB (default 1 GiB)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sort-runs", type=int, default=None, help="default: --runs")
    parser.add_argument("--split-mb", type=int, default=64)
    parser.add_argument("--reducers", type=int, default=2)
    parser.add_argument("--sort-buffer-mb", type=int, default=256)
    parser.add_argument("--max-containers", type=int, default=None,
                        help="cap on the job's task containers (default: none; the cluster has 4 vcores, the AM takes 1)")
    parser.add_argument("--sort-reduce-memory-mb", type=int, default=2048,
                        help="sort's reduce containers (1024 is OOM-killed on tmpfs: see bench/README.md)")
    parser.add_argument("--skip-wordcount", action="store_true")
    parser.add_argument("--skip-sort", action="store_true")
    parser.add_argument("--s3", action="store_true", help="also count words from and to a local S3-compatible server")
    parser.add_argument("--s3s-fs", default=shutil.which("s3s-fs") or os.path.expanduser("~/.cargo/bin/s3s-fs"),
                        help="the s3s-fs binary (cargo install s3s-fs@0.14.1 --locked --features binary)")
    parser.add_argument("--s3-own-core", action="store_true",
                        help="with --s3: the S3 server on CPU 1, the cluster on CPU 0 (local and S3 runs alike)")
    parser.add_argument("--s3-put", default="target/release/examples/s3_put",
                        help="the uploader (cargo build --release -p spindle-storage --example s3_put)")
    parser.add_argument("--keep-data", action="store_true", help="keep the generated inputs under --dir/spindle-mr-data")
    args = parser.parse_args()
    args.sort_runs = args.runs if args.sort_runs is None else args.sort_runs
    spindle = shutil.which(args.spindle) or os.path.abspath(args.spindle)
    args.reference = os.path.abspath(args.reference)
    size_bytes = args.size_mb << 20

    tools = os.path.join(BENCH_DIR, "..", "target", "bench-tools")
    inputs = os.path.join(args.dir, "spindle-mr-data")
    os.makedirs(inputs, exist_ok=True)
    text = os.path.join(inputs, f"zipf-{args.size_mb}m.txt")
    records = os.path.join(inputs, f"records-{args.size_mb}m.txt")
    if not args.skip_wordcount:
        generate(build_generator("gen_zipf_text", tools), text, size_bytes)
    if not args.skip_sort:
        generate(build_generator("gen_sort_records", tools), records, size_bytes)

    data_dir = tempfile.mkdtemp(prefix="spindle-mr-bench-", dir=args.dir)
    proc, rm = start_local_cluster(spindle, data_dir, vcores=2, memory_mb=8192)
    rm.pid = proc.pid
    summary = {"size_bytes": size_bytes, "runs": args.runs, "split_size_mb": args.split_mb,
               "sort_reduce_memory_mb": args.sort_reduce_memory_mb,
               "reducers": args.reducers, "sort_buffer_mb": args.sort_buffer_mb}
    try:
        if not args.skip_wordcount:
            log(f"word count over {os.path.getsize(text)} bytes of Zipf text")
            reference, reference_fx, spindle_wc, s3_wc = word_count(rm, args, data_dir, text)
            summary["wordcount"] = {
                "reference_std_mb_per_s": median(reference), "reference_fx_mb_per_s": median(reference_fx),
                "spindle_mb_per_s": median(spindle_wc), "spindle_seconds": median(spindle_wc, "seconds"),
                "reference_std_cpu_seconds": median(reference, "cpu_seconds"),
                "reference_fx_cpu_seconds": median(reference_fx, "cpu_seconds"),
                "spindle_cpu_seconds": median(spindle_wc, "cpu_seconds"),
                "ratio_vs_std": median(spindle_wc) / median(reference),
                "ratio_vs_fx": median(spindle_wc) / median(reference_fx),
                "runs": {"reference_std": reference, "reference_fx": reference_fx, "spindle": spindle_wc},
            }
            if s3_wc:
                summary["wordcount"]["s3_mb_per_s"] = median(s3_wc)
                summary["wordcount"]["s3_ratio_vs_local"] = median(s3_wc) / median(spindle_wc)
                summary["wordcount"]["runs"]["spindle_s3"] = s3_wc
        if not args.skip_sort:
            log(f"sort of {os.path.getsize(records)} bytes of 100-byte records")
            spindle_sort = sort(rm, args, data_dir, records)
            summary["sort"] = {"spindle_mb_per_s": median(spindle_sort), "spindle_seconds": median(spindle_sort, "seconds"),
                               "spindle_cpu_seconds": median(spindle_sort, "cpu_seconds"),
                               "runs": spindle_sort}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(data_dir, ignore_errors=True)
        if not args.keep_data:
            shutil.rmtree(inputs, ignore_errors=True)
    print(json.dumps(summary))
    if "wordcount" in summary:
        wc = summary["wordcount"]
        log(f"word count, median of {args.runs}: spindle {wc['spindle_mb_per_s']:.1f} MB/s; hand-written "
            f"{wc['reference_std_mb_per_s']:.1f} MB/s (std HashMap), {wc['reference_fx_mb_per_s']:.1f} MB/s (Fx hash); "
            f"ratio {wc['ratio_vs_std']:.2f} / {wc['ratio_vs_fx']:.2f} (target >= 0.8); CPU seconds: spindle "
            f"{wc['spindle_cpu_seconds']:.1f}, hand-written {wc['reference_std_cpu_seconds']:.1f} / {wc['reference_fx_cpu_seconds']:.1f}")
    if "s3_mb_per_s" in summary.get("wordcount", {}):
        wc = summary["wordcount"]
        log(f"word count from and to S3 (s3s-fs), median of {args.runs}: {wc['s3_mb_per_s']:.1f} MB/s, "
            f"{wc['s3_ratio_vs_local']:.2f} of the local files' (target >= 0.7)")
    if "sort" in summary:
        log(f"sort, median of {args.sort_runs}: {summary['sort']['spindle_mb_per_s']:.1f} MB/s, "
            f"{summary['sort']['spindle_cpu_seconds']:.1f} CPU s")


if __name__ == "__main__":
    main()
