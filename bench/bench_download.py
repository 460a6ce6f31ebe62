"""images/s of our per-shard download path vs the plain img2dataset CLI, same URLs, same server, one run.

Ours: pipeline.download.shard_downloader.download_shard (img2dataset's Downloader in-process,
behind the hardened opener and the header gate). Theirs: `img2dataset --url_list ...` with one
process and the same thread count, resize and encode settings. The demo server runs in its own
process for both, so neither side shares its GIL with the server.

    python bench/bench_download.py --n 2000 --threads 32 --repeats 2

Prints both rates (best of --repeats) and ours/img2dataset. Two img2dataset figures are given: the
shard's own duration from its stats file (the download loop only, comparable to ours) and the
whole CLI's wall time (includes interpreter start and its process pool).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
if __package__ in (None, ""):  # `python bench/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa

from common import schemas
from pipeline.config import DownloadConfig
from pipeline.demo.source import write_demo_source
from pipeline.download.shard_downloader import download_shard


@contextlib.contextmanager
def server_process(root: str):
    os.makedirs(root, exist_ok=True)
    port_file = os.path.join(os.path.dirname(root), "port")
    proc = subprocess.Popen(
        [sys.executable, "orchestration/demo_server.py", "--root", root, "--port", "0", "--port-file", port_file],
        stdout=subprocess.DEVNULL,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        for _ in range(300):
            if os.path.exists(port_file):
                break
            time.sleep(0.05)
        with open(port_file) as f:
            yield f"http://127.0.0.1:{f.read().strip()}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def ours(rows: pa.Table, threads: int, work: str) -> tuple[float, int]:
    cfg = DownloadConfig(allow_private_networks=True, thread_count=threads)
    start = time.perf_counter()
    kept, _ = download_shard(rows, cfg, 0.5, 2.0, work)
    return time.perf_counter() - start, kept.num_rows


def img2dataset_cmd(url_list: str, out: str, processes: int, threads: int, per_shard: int, **extra: str) -> list[str]:
    """The plain img2dataset CLI on a TSV URL list, with the resize our downloader does (keep ratio, 256,
    only if bigger, JPEG 95). It is the venv's own script, so the benches run without activating it."""
    flags = {
        "url_list": url_list,
        "input_format": "tsv",
        "url_col": "url",
        "caption_col": "caption",
        "output_format": "parquet",
        "output_folder": out,
        "processes_count": str(processes),
        "thread_count": str(threads),
        "number_sample_per_shard": str(per_shard),
        "resize_mode": "keep_ratio",
        "image_size": "256",
        "resize_only_if_bigger": "True",
        "encode_quality": "95",
        **extra,
    }
    return [os.path.join(os.path.dirname(sys.executable), "img2dataset")] + [
        arg for key, value in flags.items() for arg in (f"--{key}", value)
    ]


def theirs(url_list: str, n: int, threads: int, out: str) -> tuple[float, float, int]:
    cmd = img2dataset_cmd(url_list, out, 1, threads, n, extract_exif="False", timeout="10")
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    stats = [json.load(open(p)) for p in glob.glob(os.path.join(out, "*_stats.json"))]
    return wall, sum(s["duration"] for s in stats), sum(s["successes"] for s in stats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, server_process(os.path.join(tmp, "www")) as base:
        t0 = time.perf_counter()
        src = write_demo_source(tmp, base, n_good=args.n, seed=0, hostile=False)
        print(f"generated {args.n} demo images in {time.perf_counter() - t0:.1f}s; server {base}")
        urls = [(r["url"], r["caption"]) for r in src.expected]
        url_list = os.path.join(tmp, "bench_urls.tsv")
        with open(url_list, "w", newline="") as f:
            out = csv.writer(f, delimiter="\t", lineterminator="\n")
            out.writerow(["url", "caption"])
            out.writerows(urls)
        rows = pa.table(
            {
                "key": [f"{i:08d}" for i in range(len(urls))],
                "source": ["bench"] * len(urls),
                "url": [u for u, _ in urls],
                "caption": [c for _, c in urls],
                "width": pa.nulls(len(urls), pa.int64()),
                "height": pa.nulls(len(urls), pa.int64()),
            },
            schema=schemas.CANDIDATE,
        )
        ours(rows.slice(0, 100), args.threads, os.path.join(tmp, "warm"))  # server cache, imports
        best_ours, best_shard, best_wall = float("inf"), float("inf"), float("inf")
        for r in range(args.repeats):  # interleaved, so that load from other tenants hits both sides
            seconds, kept = ours(rows, args.threads, os.path.join(tmp, f"ours{r}"))
            wall, shard, ok = theirs(url_list, len(urls), args.threads, os.path.join(tmp, f"theirs{r}"))
            print(
                f"repeat {r}: ours {kept} images in {seconds:.2f}s; img2dataset {ok} images, "
                f"shard {shard:.2f}s, CLI wall {wall:.2f}s"
            )
            assert kept == ok == len(urls), "both sides must deliver every image"
            best_ours, best_shard, best_wall = min(best_ours, seconds), min(best_shard, shard), min(best_wall, wall)
        n = len(urls)
        print(f"\nimages: {n}, threads: {args.threads}, best of {args.repeats}")
        print(f"  ours (download_shard)          {n / best_ours:8.1f} images/s")
        print(
            f"  img2dataset shard (stats file) {n / best_shard:8.1f} images/s   "
            f"ratio ours/theirs {best_shard / best_ours:.2f}"
        )
        print(
            f"  img2dataset CLI wall           {n / best_wall:8.1f} images/s   "
            f"ratio ours/theirs {best_wall / best_ours:.2f}"
        )


if __name__ == "__main__":
    main()
