"""Caption pipeline throughput vs bare fastText predict, on the same captions, in one run.

The 1,000 real LAION captions are repeated to --rows rows (with distinct URLs) and fed in tables of
--batch rows, the way the build feeds reader batches. Printed side by side:
  * bare fastText: the C++ list call `multilinePredict` (labels only) and the public per-caption
    `model.predict(text)`; the faster of the two is the baseline (a conservative ratio);
  * CaptionPipeline with the default config (language_id = lexicon) and with language_id =
    fasttext (fastText alone), interleaved, best round each;
  * CaptionPipeline with language_id = langdetect (the band), timed on --band-rows rows and scaled;
  * the per-stage seconds from CaptionPipeline.stats().
Goal (issue 11): the default pipeline's captions/s >= 0.5 x bare fastText.

    python bench/bench_captions.py [--rows 100000] [--batch 8192] [--band 0.2,0.4] [--threshold 0.4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa
import pyarrow.parquet as pq

from bench.language_band import default_sample
from common.schemas import row_key
from pipeline.captions import CaptionPipeline
from pipeline.config import CaptionFilterConfig
from pipeline.filters.non_english import load_model


def tables(captions: list[str], rows: int, batch: int) -> list[pa.Table]:
    out = []
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        urls = [f"https://img.example.com/{start + i}.jpg" for i in range(n)]
        out.append(
            pa.table(
                {
                    "key": [row_key("laion", u, start + i) for i, u in enumerate(urls)],
                    "source": ["laion"] * n,
                    "url": urls,
                    "caption": [captions[(start + i) % len(captions)] for i in range(n)],
                    "width": pa.nulls(n, pa.int64()),
                    "height": pa.nulls(n, pa.int64()),
                    "malformed": pa.nulls(n, pa.string()),
                }
            )
        )
    return out


def run_pipeline(cfg: CaptionFilterConfig, batches: list[pa.Table]) -> tuple[float, int, dict]:
    pipeline = CaptionPipeline(cfg)
    pipeline.process(batches[0].slice(0, 50))  # load fastText and langdetect profiles outside the clock
    warm = pipeline.stats()
    start = time.perf_counter()
    kept = sum(pipeline.process(t)[0].num_rows for t in batches)
    seconds = time.perf_counter() - start
    stats = pipeline.stats()
    for name, value in stats.items():
        if name == "langdetect_calls":
            stats[name] = value - warm[name]
        else:
            value["dropped"] -= warm[name]["dropped"]
            value["seconds"] -= warm[name]["seconds"]
    return seconds, kept, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--band", default=None, help="uncertain_band low,high (default: the config default)")
    ap.add_argument("--threshold", type=float, default=None, help="english_threshold (default: the config default)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; each contender's best is kept")
    ap.add_argument("--band-rows", type=int, default=10_000, help="rows for the (slow) band-on run")
    ap.add_argument("--sample", default=default_sample())
    args = ap.parse_args()

    captions = pq.read_table(args.sample, columns=["TEXT"]).column("TEXT").to_pylist()
    cfg = CaptionFilterConfig()
    if args.band is not None:
        cfg.uncertain_band = [float(v) for v in args.band.split(",")]
    if args.threshold is not None:
        cfg.english_threshold = args.threshold
    batches = tables(captions, args.rows, args.batch)
    texts = [c for t in batches for c in t.column("caption").to_pylist()]
    lines = [" ".join(t.split()) + "\n" for t in texts]  # what fastText needs: one line each

    model = load_model(cfg.fasttext_model)

    def bare_multiline() -> float:
        start = time.perf_counter()
        model.f.multilinePredict(lines, 1, 0.0, "replace")
        return time.perf_counter() - start

    def bare_predict() -> float:
        start = time.perf_counter()
        for line in lines:
            model.predict(line[:-1])
        return time.perf_counter() - start

    off = CaptionFilterConfig(**{**cfg.__dict__, "language_id": "fasttext"})
    band_cfg = CaptionFilterConfig(**{**cfg.__dict__, "language_id": "langdetect"})
    # The machine may be shared: interleave the contenders and keep each one's best round.
    multiline_s = predict_s = off_seconds = lex_seconds = float("inf")
    for _ in range(args.repeats):
        multiline_s = min(multiline_s, bare_multiline())
        predict_s = min(predict_s, bare_predict())
        seconds_round, lex_kept, lex_stats_round = run_pipeline(cfg, batches)
        if seconds_round < lex_seconds:
            lex_seconds, lex_stats = seconds_round, lex_stats_round
        seconds_round, off_kept, off_stats_round = run_pipeline(off, batches)
        if seconds_round < off_seconds:
            off_seconds, off_stats = seconds_round, off_stats_round
    bare_s = min(multiline_s, predict_s)
    # With the band on, langdetect dominates; time it on the first --band-rows rows (whole copies of
    # the sample, so the caption mix is the same) and compare rates.
    band_batches = tables(captions, min(args.band_rows, args.rows), args.batch)
    band_n = min(args.band_rows, args.rows)
    seconds, kept, stats = run_pipeline(band_cfg, band_batches)
    seconds *= args.rows / band_n
    kept = round(kept * args.rows / band_n)
    stats["langdetect_calls"] = round(stats["langdetect_calls"] * args.rows / band_n)
    for name, value in stats.items():
        if name != "langdetect_calls":
            value["seconds"] *= args.rows / band_n
            value["dropped"] = round(value["dropped"] * args.rows / band_n)

    n = args.rows
    print(
        f"{n} captions ({len(captions)} real LAION captions repeated), tables of {args.batch}; "
        f"threshold {cfg.english_threshold}, band {cfg.uncertain_band}; best of {args.repeats} interleaved rounds "
        f"(langdetect: {band_n} rows, scaled)"
    )
    print(f"{'':44s}{'captions/s':>12s}{'ratio':>8s}{'kept':>8s}")
    print(f"{'bare fastText multilinePredict (C++ list)':44s}{n / multiline_s:12,.0f}{bare_s / multiline_s:8.2f}")
    print(f"{'bare fastText model.predict(str) loop':44s}{n / predict_s:12,.0f}{bare_s / predict_s:8.2f}")
    print(
        f"{'CaptionPipeline, default (lexicon)':44s}{n / lex_seconds:12,.0f}{bare_s / lex_seconds:8.2f}"
        f"{lex_kept / n:8.1%}"
    )
    print(
        f"{'CaptionPipeline, language_id=fasttext':44s}{n / off_seconds:12,.0f}{bare_s / off_seconds:8.2f}"
        f"{off_kept / n:8.1%}"
    )
    print(
        f"{'CaptionPipeline, language_id=langdetect':44s}{n / seconds:12,.0f}{bare_s / seconds:8.2f}"
        f"{kept / n:8.1%}   langdetect calls: {stats['langdetect_calls']} ({stats['langdetect_calls'] / n:.1%})"
    )
    print("\nper stage (lexicon / fasttext / langdetect), microseconds per input caption:")
    for name in stats:
        if name != "langdetect_calls":
            print(
                f"  {name:14s} {lex_stats[name]['seconds'] / n * 1e6:9.1f} {off_stats[name]['seconds'] / n * 1e6:9.1f}"
                f" {stats[name]['seconds'] / n * 1e6:9.1f}   dropped {lex_stats[name]['dropped']:>7}"
                f" {off_stats[name]['dropped']:>7} {stats[name]['dropped']:>7}"
            )
    print(
        f"\ngoal: default pipeline >= 0.5 x bare fastText -> lexicon {bare_s / lex_seconds:.2f} "
        f"(fasttext alone {bare_s / off_seconds:.2f}, langdetect {bare_s / seconds:.2f})"
    )


if __name__ == "__main__":
    main()
