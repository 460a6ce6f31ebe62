"""Issue 11's three language numbers, measured in one run with the default config.

1. English kept: labelled English captions of the shared LAION sample that non_english keeps (goal >= 97%);
2. non-English kept: short non-English sentences (bench/data/short_sentences.tsv, and the held-out
   bench/data/short_sentences_holdout.tsv) that non_english keeps (goal <= 0.5%);
3. speed: the whole caption pipeline's captions/s over bare fastText's, same captions, interleaved
   rounds, best of each (goal >= 0.5; bench/bench_captions.py has the per-stage detail).

  python bench/language_goals.py [--rows 50000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.parquet as pq

from bench.bench_captions import run_pipeline, tables
from bench.language_band import SENTENCES, default_sample, measure, read_sentences
from pipeline.config import CaptionFilterConfig
from pipeline.filters.non_english import load_model
from pipeline.filters.normalize import Normalizer

HOLDOUT = os.path.join(os.path.dirname(SENTENCES), "short_sentences_holdout.tsv")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sample", default=default_sample())
    args = ap.parse_args()
    cfg = CaptionFilterConfig()
    raw = pq.read_table(args.sample, columns=["TEXT"]).column("TEXT").to_pylist()
    normalize = Normalizer()
    texts = [normalize(t) for t in raw]
    tuned = measure(cfg, texts, read_sentences(SENTENCES))
    held = measure(cfg, texts, read_sentences(HOLDOUT))

    batches = tables(raw, args.rows, args.batch)
    lines = [" ".join(c.split()) + "\n" for t in batches for c in t.column("caption").to_pylist()]
    model = load_model(cfg.fasttext_model)
    bare_s = pipeline_s = float("inf")
    for _ in range(args.repeats):  # interleaved: a shared machine slows both alike
        start = time.perf_counter()
        model.f.multilinePredict(lines, 1, 0.0, "replace")
        bare_s = min(bare_s, time.perf_counter() - start)
        pipeline_s = min(pipeline_s, run_pipeline(cfg, batches)[0])

    print(f"default config (language_id = {cfg.language_id}), load average {os.getloadavg()[0]:.1f}")
    print(f"1. English kept, labelled LAION sample:        {tuned['laion_english_kept']:7.1%}   goal >= 97%")
    print(
        f"2. non-English kept, short sentences:          {tuned['short_non_english_kept']:7.2%}   goal <= 0.5%"
        f"   (held-out set {held['short_non_english_kept']:.2%}; English flagged "
        f"{tuned['short_english_flagged']:.1%} / {held['short_english_flagged']:.1%})"
    )
    print(
        f"3. caption pipeline / bare fastText:           {bare_s / pipeline_s:7.2f}   goal >= 0.5"
        f"   ({args.rows / pipeline_s:,.0f} vs {args.rows / bare_s:,.0f} captions/s, {args.rows} captions)"
    )


if __name__ == "__main__":
    main()
