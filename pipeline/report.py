"""The filter report: counts per reason per source, examples of each, and histograms.

Built from task results, not by re-reading the dataset in the driver: every task that writes kept
or rejected rows returns `summarize()` of exactly the rows it wrote (counts per source and reason,
its first examples, histogram counts), and stores it in its done marker so that a resumed build
gets the same numbers without re-reading anything. The driver only `merge()`s these small dicts.
At 250M rows the old serial pass over every output file was tens of thousands of object-store
reads; `build_report` (that pass) stays as the audit a test can compare against.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

from common import storage
from pipeline.layout import Layout

WORD_BINS = np.arange(0, 66, 2)
ASPECT_BINS = np.geomspace(0.25, 4.0, 33)


def _examples_needed(examples: dict, reason: str, source: str, k: int) -> bool:
    return len(examples[reason][source]) < k


def build_report(
    layout: Layout, input_by_source: dict[str, int], kept_dir: str, examples_per_reason: int
) -> dict[str, Any]:
    """kept_dir: "shards" for a full build, "candidates" for --captions-only."""
    rejected_counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    examples: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for path in storage.listdir(layout.path("rejected"), ".parquet"):
        for batch in storage.iter_parquet_batches(path, ["key", "url", "caption", "source", "reason", "detail"]):
            cols = batch.to_pydict()
            for i, (source, reason) in enumerate(zip(cols["source"], cols["reason"], strict=True)):
                rejected_counts[source][reason] += 1
                if _examples_needed(examples, reason, source, examples_per_reason):
                    examples[reason][source].append({k: cols[k][i] for k in ("key", "url", "caption", "detail")})

    kept_counts: dict[str, int] = defaultdict(int)
    words_hist = np.zeros(len(WORD_BINS) - 1, np.int64)
    aspect_hist = np.zeros(len(ASPECT_BINS) - 1, np.int64)
    width_col, height_col = ("original_width", "original_height") if kept_dir == "shards" else ("width", "height")
    for path in storage.listdir(layout.path(kept_dir), ".parquet"):
        for batch in storage.iter_parquet_batches(path, ["source", "caption", width_col, height_col]):
            cols = batch.to_pydict()
            for source in cols["source"]:
                kept_counts[source] += 1
            words = np.array([len((c or "").split()) for c in cols["caption"]])
            words_hist += np.histogram(np.clip(words, 0, WORD_BINS[-1] - 1), WORD_BINS)[0]
            sizes = [(w, h) for w, h in zip(cols[width_col], cols[height_col], strict=True) if w and h]
            if sizes:
                ratios = np.array([w / h for w, h in sizes])
                aspect_hist += np.histogram(np.clip(ratios, ASPECT_BINS[0], ASPECT_BINS[-1]), ASPECT_BINS)[0]

    return _assemble(input_by_source, kept_counts, rejected_counts, examples, words_hist, aspect_hist)


def _assemble(
    input_by_source: dict[str, int],
    kept_counts: dict[str, int],
    rejected_counts: dict[str, dict[str, int]],
    examples: dict[str, dict[str, list]],
    words_hist: np.ndarray,
    aspect_hist: np.ndarray,
) -> dict[str, Any]:
    sources = sorted(set(input_by_source) | set(kept_counts) | set(rejected_counts))
    by_source = {}
    for s in sources:
        rej = dict(sorted(rejected_counts.get(s, {}).items()))
        by_source[s] = {
            "input": input_by_source.get(s, 0),
            "kept": kept_counts.get(s, 0),
            "rejected": rej,
            "accounted": input_by_source.get(s, 0) == kept_counts.get(s, 0) + sum(rej.values()),
        }
    by_reason: dict[str, int] = defaultdict(int)
    for s in sources:
        for reason, n in rejected_counts.get(s, {}).items():
            by_reason[reason] += n
    total_in = sum(input_by_source.values())
    total_kept = sum(kept_counts.values())
    total_rej = sum(by_reason.values())
    return {
        "input": total_in,
        "kept": total_kept,
        "rejected": total_rej,
        "kept_fraction": total_kept / total_in if total_in else 0.0,
        "accounted": total_in == total_kept + total_rej and all(v["accounted"] for v in by_source.values()),
        "rejected_by_reason": dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))),
        "by_source": by_source,
        "examples": {r: {s: v[s] for s in sorted(v)} for r, v in sorted(examples.items())},
        "histograms": {
            "caption_words": {"bins": WORD_BINS.tolist(), "counts": np.asarray(words_hist).tolist()},
            "aspect_ratio": {"bins": ASPECT_BINS.tolist(), "counts": np.asarray(aspect_hist).tolist()},
        },
    }


def summarize(
    rejected: pa.Table | None, kept: pa.Table | None, examples_per_reason: int, size_cols: tuple[str, str]
) -> dict[str, Any]:
    """Counts, first examples and histogram counts of the rows one task wrote (JSON-able, small)."""
    out: dict[str, Any] = {"rejected": {}, "kept": {}, "examples": {}, "words": None, "aspect": None}
    if rejected is not None and rejected.num_rows:
        cols = rejected.select(["key", "url", "caption", "source", "reason", "detail"]).to_pydict()
        for i, (source, reason) in enumerate(zip(cols["source"], cols["reason"], strict=True)):
            per = out["rejected"].setdefault(source, {})
            per[reason] = per.get(reason, 0) + 1
            ex = out["examples"].setdefault(reason, {}).setdefault(source, [])
            if len(ex) < examples_per_reason:
                ex.append({k: cols[k][i] for k in ("key", "url", "caption", "detail")})
    if kept is not None and kept.num_rows:
        for source in kept.column("source").to_pylist():
            out["kept"][source] = out["kept"].get(source, 0) + 1
        words = np.array([len((c or "").split()) for c in kept.column("caption").to_pylist()])
        out["words"] = np.histogram(np.clip(words, 0, WORD_BINS[-1] - 1), WORD_BINS)[0].tolist()
        w, h = (kept.column(c).to_pylist() for c in size_cols)
        ratios = np.array([a / b for a, b in zip(w, h, strict=True) if a and b])
        clipped = np.clip(ratios, ASPECT_BINS[0], ASPECT_BINS[-1])
        out["aspect"] = np.histogram(clipped, ASPECT_BINS)[0].tolist()
    return out


def merge(summaries: list[dict[str, Any]], examples_per_reason: int) -> dict[str, Any]:
    """Sum task summaries (in the order given, so the examples kept are deterministic)."""
    out: dict[str, Any] = {"rejected": {}, "kept": {}, "examples": {}}
    words = np.zeros(len(WORD_BINS) - 1, np.int64)
    aspect = np.zeros(len(ASPECT_BINS) - 1, np.int64)
    for s in summaries:
        for source, reasons in s["rejected"].items():
            per = out["rejected"].setdefault(source, {})
            for reason, n in reasons.items():
                per[reason] = per.get(reason, 0) + n
        for source, n in s["kept"].items():
            out["kept"][source] = out["kept"].get(source, 0) + n
        for reason, per_source in s["examples"].items():
            for source, rows in per_source.items():
                ex = out["examples"].setdefault(reason, {}).setdefault(source, [])
                ex.extend(rows[: examples_per_reason - len(ex)])
        if s.get("words"):
            words += np.array(s["words"])
        if s.get("aspect"):
            aspect += np.array(s["aspect"])
    out["words"], out["aspect"] = words.tolist(), aspect.tolist()
    return out


def report_from_summary(merged: dict[str, Any], input_by_source: dict[str, int]) -> dict[str, Any]:
    """The filter report (same format as build_report) from merged task summaries."""
    return _assemble(
        input_by_source, merged["kept"], merged["rejected"], merged["examples"], merged["words"], merged["aspect"]
    )


def summary_text(report: dict[str, Any]) -> str:
    """The filter summary printed at the end of a build."""
    lines = [f"{'reason':<20}{'rows':>12}{'share':>9}", "-" * 41]
    total = report["input"] or 1
    lines.append(f"{'kept':<20}{report['kept']:>12,}{report['kept'] / total:>9.1%}")
    for reason, n in report["rejected_by_reason"].items():
        lines.append(f"{reason:<20}{n:>12,}{n / total:>9.1%}")
    lines.append("-" * 41)
    lines.append(
        f"{'input':<20}{report['input']:>12,}  kept + rejected = input: {'yes' if report['accounted'] else 'NO'}"
    )
    return "\n".join(lines)


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display on a cluster node)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report_files(layout: Layout, report: dict[str, Any]) -> list[str]:
    """filter_report.json, examples.md and two histogram PNGs under report/. Returns their paths."""
    import io

    plt = pyplot()

    paths = []
    storage.write_json_atomic(layout.report("filter_report.json"), report)
    paths.append(layout.report("filter_report.json"))
    md = ["# Filter report", "", "```", summary_text(report), "```", ""]
    for reason, per_source in report["examples"].items():
        md.append(f"## {reason}")
        for source, rows in per_source.items():
            for row in rows:
                md.append(f"- `{source}` {row['caption']!r} <{row['url']}> — {row['detail']}")
        md.append("")
    storage.write_bytes_atomic(layout.report("examples.md"), "\n".join(md).encode())
    paths.append(layout.report("examples.md"))
    for name, xlabel, log_x in (
        ("caption_words", "caption length (words)", False),
        ("aspect_ratio", "width / height (original)", True),
    ):
        hist = report["histograms"][name]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        edges = np.array(hist["bins"])
        ax.stairs(hist["counts"], edges, fill=True)
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("kept rows")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        storage.write_bytes_atomic(layout.report(f"{name}.png"), buf.getvalue())
        paths.append(layout.report(f"{name}.png"))
    return paths
