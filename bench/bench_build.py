"""images/s of the whole build_dataset against the plain img2dataset CLI: same URL list, same local
server, same machine, one run.

    python bench/bench_build.py --n 10000 --repeats 3

Both sides get the same CPUs (2 Ray CPUs vs `--processes_count 2`), threads per process, resize
(short side 256, keep ratio, never upscale) and JPEG output. The demo server runs in its own process.
build_dataset does more than img2dataset: caption filters (fastText), URL dedup, image dedup, atomic
publish and the audit report; its private Ray start-up is included in its end-to-end time and
also shown separately (the download phase rate is the build's own `images_per_s`).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):  # `python bench/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from bench.bench_download import img2dataset_cmd, server_process
from pipeline.demo.source import write_demo_source


def run_build(sources: list[str], out: str, threads: int, env: dict[str, str]) -> tuple[float, dict]:
    settings = {"run.num_cpus": 2, "run.shard_size": 1000, "run.dedup_partitions": 4, "download.thread_count": threads}
    cmd = [sys.executable, os.path.join(ROOT, "orchestration", "build_dataset.py"), "--output", out]
    cmd += ["--allow-private-networks"] + [arg for key, value in settings.items() for arg in (f"--{key}", str(value))]
    for spec in sources:
        cmd += ["--source", spec]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    with open(os.path.join(out, "report", "filter_report.json")) as fh:
        return seconds, json.load(fh)


def run_img2dataset(url_list: str, out: str, threads: int) -> tuple[float, int]:
    cmd = img2dataset_cmd(url_list, out, 2, threads, 1000, encode_format="jpg", compute_hash="sha256")
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    ok = 0
    for path in glob.glob(os.path.join(out, "*_stats.json")):
        with open(path) as fh:
            ok += json.load(fh)["successes"]
    return seconds, ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4000, help="good images in the URL list")
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs of both sides; best and median shown")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-build-")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "PYTHONPATH": ROOT}
    env.pop("RAY_ADDRESS", None)
    with server_process(os.path.join(tmp, "src", "www")) as base_url:
        src = write_demo_source(os.path.join(tmp, "src"), base_url, n_good=args.n, seed=0, hostile=False)
        url_list = next(s.split(":", 1)[1] for s in src.sources if s.startswith("tsv:"))
        tsv_sources = [s for s in src.sources if s.startswith("tsv:")]
        runs = []
        for r in range(args.repeats):  # interleaved, so that load from other tenants hits both sides
            i2d_s, i2d_ok = run_img2dataset(url_list, os.path.join(tmp, f"img2dataset{r}"), args.threads)
            ours_s, report = run_build(tsv_sources, os.path.join(tmp, f"ours{r}"), args.threads, env)
            assert report["kept"] == i2d_ok, "both sides must deliver every image"
            runs.append((i2d_s, ours_s, report))
            print(
                f"repeat {r}: img2dataset CLI {i2d_s:5.1f} s, build_dataset {ours_s:5.1f} s = {i2d_s / ours_s:.2f}; "
                f"build phases (s): {json.dumps({k: round(v, 1) for k, v in report['timings_s'].items()})}"
            )
    rows = runs[0][2]["input"]
    i2d_s, ours_s = min(r[0] for r in runs), min(r[1] for r in runs)
    phase = max(r[2]["rates"]["images_per_s"] for r in runs)
    print(f"\nURL list: {rows} rows ({url_list}); threads {args.threads}; 2 CPUs each; best of {args.repeats}")
    print(f"  img2dataset CLI            {i2d_s:6.1f} s = {rows / i2d_s:7.1f} images/s")
    print(
        f"  build_dataset end to end   {ours_s:6.1f} s = {rows / ours_s:7.1f} images/s"
        f"   ratio {i2d_s / ours_s:.2f} (goal >= 0.9); median of the per-repeat ratios "
        f"{statistics.median(r[0] / r[1] for r in runs):.2f}"
    )
    print(f"  build_dataset download phase only      = {phase:7.1f} images/s   ratio {phase / (rows / i2d_s):.2f}")


if __name__ == "__main__":
    main()
