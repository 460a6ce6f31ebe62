"""Precision and recall of each caption filter against hand labels on the shared LAION sample.

Each filter runs ALONE on every normalised caption of ../shared/data/laion_sample_1000.parquet
(so a caption too_short drops is still judged by boilerplate), and its drops are compared with
bench/data/laion_filter_labels.tsv (too_short, boilerplate; rules in that file) and the language
labels of bench/language_band.py (non_english; mixed-language rows are not scored).
precision = right drops / drops; recall = right drops / captions labelled "drop".

    python bench/caption_filter_labels.py [--sample PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.parquet as pq

from bench.language_band import MIXED, NON_ENGLISH, default_sample
from pipeline.config import CaptionFilterConfig
from pipeline.filters.base import CaptionRow
from pipeline.filters.boilerplate import BoilerplateFilter
from pipeline.filters.invalid_url import InvalidUrlFilter
from pipeline.filters.non_english import NonEnglishFilter
from pipeline.filters.normalize import Normalizer
from pipeline.filters.too_short import TooShortFilter

LABELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "laion_filter_labels.tsv")


def read_labels(path: str = LABELS) -> dict[str, set[int]]:
    labels: dict[str, set[int]] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip() and not line.startswith("#"):
                name, row, _ = line.split("\t", 2)
                labels.setdefault(name, set()).add(int(row))
    return labels


def score(dropped: set[int], positive: set[int], scored: set[int]) -> tuple[int, int, float, float]:
    dropped, positive = dropped & scored, positive & scored
    right = len(dropped & positive)
    precision = right / len(dropped) if dropped else float("nan")
    recall = right / len(positive) if positive else float("nan")
    return len(dropped), len(positive), precision, recall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", default=default_sample())
    args = ap.parse_args()
    table = pq.read_table(args.sample, columns=["URL", "TEXT"])
    normalize = Normalizer()
    captions = [normalize(t) for t in table.column("TEXT").to_pylist()]
    rows = [CaptionRow(u, None, None) for u in table.column("URL").to_pylist()]
    everyone = set(range(len(captions)))
    labels = read_labels()
    cfg = CaptionFilterConfig()
    cases = [
        ("invalid_url", InvalidUrlFilter(cfg), set(), everyone),
        ("too_short", TooShortFilter(cfg), labels["too_short"], everyone),
        ("boilerplate", BoilerplateFilter(cfg), labels["boilerplate"], everyone),
        ("non_english", NonEnglishFilter(cfg), set(NON_ENGLISH), everyone - set(MIXED)),
    ]
    print(f"{len(captions)} captions, each filter alone, default config\n")
    print(f"{'filter':14s}{'drops':>7s}{'labelled drop':>15s}{'precision':>11s}{'recall':>9s}   wrong drops / missed")
    for name, flt, positive, scored in cases:
        decisions = flt.filter_batch(captions, rows)
        dropped = {i for i, d in enumerate(decisions) if d is not None}
        n_drop, n_pos, precision, recall = score(dropped, positive, scored)
        wrong = sorted((dropped - positive) & scored)
        missed = sorted((positive - dropped) & scored)
        print(f"{name:14s}{n_drop:7d}{n_pos:15d}{precision:11.1%}{recall:9.1%}   {wrong} / {missed}")
    print("\naspect_ratio: the sample has no WIDTH/HEIGHT columns, so it drops nothing here (tests use real photos).")


if __name__ == "__main__":
    main()
