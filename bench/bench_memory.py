"""Peak memory of build_dataset at 10x the input against 1x, measured side by side in one run.

    python bench/bench_memory.py                 # captions-only builds, 1x = 100k LAION captions
    python bench/bench_memory.py --rows 20000    # smaller
    python bench/bench_memory.py --language-id langdetect    # the old langdetect rule: ~20x slower

Input: the 1,000 real LAION captions of ../shared/data repeated with unique URLs, written as LAION
parquet files of `--rows-per-file` rows (web-scale inputs come as many files). Each build runs as
its own process with a private Ray; a sampler polls the RSS of that process tree (driver, raylet,
workers) every 0.2 s. Reported: the peak of the largest single process and the peak of the sum.
Goal: 10x / 1x within 1.2x, i.e. memory does not grow with the input.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "..", "shared", "data", "laion_sample_1000.parquet")


def make_input(out_dir: str, rows: int, rows_per_file: int) -> str:
    captions = pq.read_table(SAMPLE, columns=["TEXT"]).column("TEXT").to_pylist()
    os.makedirs(out_dir, exist_ok=True)
    for f, start in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - start)
        idx = range(start, start + n)
        pq.write_table(
            pa.table(
                {
                    "URL": [f"http://127.0.0.1:9/img/{i}.jpg" for i in idx],
                    "TEXT": [captions[i % len(captions)] for i in idx],
                    "WIDTH": [320] * n,
                    "HEIGHT": [240] * n,
                }
            ),
            os.path.join(out_dir, f"part-{f:05d}.parquet"),
        )
    return os.path.join(out_dir, "*.parquet")


def _tree_rss_mib(root: int) -> list[float]:
    """RSS (MiB) of `root` and all its descendants, read from /proc (Linux)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parent[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, ppid in parent.items():
            if ppid == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    rss = []
    for pid in tree:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        rss.append(int(line.split()[1]) / 1024)
        except OSError:
            pass
    return rss


def peak_rss(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(seconds, peak single-process RSS MiB, peak tree-sum RSS MiB) of a command's process tree."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peaks = [0.0, 0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss = _tree_rss_mib(proc.pid)
            peaks[0] = max(peaks[0], max(rss, default=0.0))
            peaks[1] = max(peaks[1], sum(rss))
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    rc = proc.wait()
    stop.set()
    t.join()
    if rc != 0:
        raise SystemExit(f"build failed ({rc}): {' '.join(cmd)}")
    return time.monotonic() - started, peaks[0], peaks[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="rows at 1x")
    ap.add_argument("--rows-per-file", type=int, default=50_000)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--language-id", default="lexicon", choices=["lexicon", "fasttext", "langdetect"],
                    help="captions.language_id (default: the build's default)")  # fmt: skip
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-mem-")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "PYTHONPATH": ROOT}
    env.pop("RAY_ADDRESS", None)
    results = {}
    for label, rows in (("1x", args.rows), (f"{args.scale}x", args.rows * args.scale)):
        src = make_input(os.path.join(tmp, f"in-{label}"), rows, args.rows_per_file)
        cmd = [sys.executable, os.path.join(ROOT, "orchestration", "build_dataset.py"), "--captions-only"]
        cmd += ["--source", f"laion:{src}", "--output", os.path.join(tmp, f"out-{label}"), "--run.num_cpus", "2"]
        cmd += ["--captions.language_id", args.language_id]
        results[label] = (rows, *peak_rss(cmd, env))
        print(
            f"{label:>4}: {rows:>9,} rows  {results[label][1]:7.1f} s  peak process {results[label][2]:7.0f} MiB"
            f"  peak tree {results[label][3]:7.0f} MiB",
            flush=True,
        )
    one, big = results["1x"], results[f"{args.scale}x"]
    print(
        f"ratio {args.scale}x/1x: peak process {big[2] / one[2]:.2f}x, peak tree {big[3] / one[3]:.2f}x "
        f"(goal <= 1.2x); throughput {big[0] / big[1]:,.0f} vs {one[0] / one[1]:,.0f} rows/s end to end"
    )


if __name__ == "__main__":
    main()
