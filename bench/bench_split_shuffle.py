"""The two captions-only ratios of issue 10, measured side by side in one run.

    python bench/bench_split_shuffle.py                            # 160k and 240k real captions, default rule
    python bench/bench_split_shuffle.py --language-id langdetect   # the langdetect rule (~20x slower)

1. Caption work split inside files: 160k captions as ONE parquet file of 10k-row groups against the
   same rows as 16 files. Goal: wall-time ratio <= 1.25 (one task per file would give 1 core).
2. The dedup shuffle does not grow with the partition count: 240 files of 1,000 captions at
   run.dedup_partitions 1024 against 64. Goal: peak RSS of the whole process tree <= 1.3x and wall
   time <= 1.5x.

Input: the 1,000 real LAION captions of ../shared/data repeated with unique URLs (bench_memory's
writer). Each build is its own process with a private Ray of --cpus CPUs; bench_memory's sampler
polls the RSS of the process tree every 0.2 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.parquet as pq

from bench.bench_memory import make_input, peak_rss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_cmd(pattern: str, out: str, cpus: int, partitions: int, language_id: str) -> list[str]:
    cmd = [sys.executable, os.path.join(ROOT, "orchestration", "build_dataset.py"), "--captions-only",
           "--source", f"laion:{pattern}", "--output", out, "--run.num_cpus", str(cpus),
           "--run.dedup_partitions", str(partitions)]  # fmt: skip
    return [*cmd, "--captions.language_id", language_id]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--language-id", default="lexicon", choices=["lexicon", "fasttext", "langdetect"],
                    help="captions.language_id (default: the build's default)")  # fmt: skip
    args = ap.parse_args()
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": ROOT}
    with tempfile.TemporaryDirectory(prefix="bench_split_shuffle-") as tmp:
        env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
        one = make_input(os.path.join(tmp, "one"), 160_000, 160_000)
        for path in Path(tmp, "one").glob("*.parquet"):  # rewrite with 10k-row groups, as LAION ships
            pq.write_table(pq.read_table(path), path, row_group_size=10_000)
        sixteen = make_input(os.path.join(tmp, "sixteen"), 160_000, 10_000)
        many = make_input(os.path.join(tmp, "many"), 240_000, 1_000)
        runs = {}
        for name, pattern, partitions in (("1 file", one, 64), ("16 files", sixteen, 64),
                                          ("240 files P=64", many, 64), ("240 files P=1024", many, 1024)):  # fmt: skip
            out = os.path.join(tmp, name.replace(" ", "_").replace("=", ""))
            runs[name] = peak_rss(build_cmd(pattern, out, args.cpus, partitions, args.language_id), env)
            print(f"{name:<18} {runs[name][0]:7.1f} s   peak process {runs[name][1]:6.0f} MiB   "
                  f"peak tree {runs[name][2]:6.0f} MiB", flush=True)  # fmt: skip
    split = runs["1 file"][0] / runs["16 files"][0]
    wall = runs["240 files P=1024"][0] / runs["240 files P=64"][0]
    rss = runs["240 files P=1024"][2] / runs["240 files P=64"][2]
    print(f"\nlanguage rule {args.language_id}, {args.cpus} CPUs")
    print(f"1 file / 16 files, wall:         {split:.2f}  (goal <= 1.25)")
    print(f"P=1024 / P=64, wall:             {wall:.2f}  (goal <= 1.5)")
    print(f"P=1024 / P=64, peak tree RSS:    {rss:.2f}  (goal <= 1.3)")


if __name__ == "__main__":
    main()
