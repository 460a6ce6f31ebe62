"""CaptionPipeline: every caption-side decision of stage 1, before any byte is downloaded.

    pipeline = CaptionPipeline(cfg.captions)
    kept, rejected = pipeline.process(table)    # table: SOURCE_ROW columns + key + source
    pipeline.stats()                            # {reason: {"dropped": n, "seconds": s}, ..., "langdetect_calls": n}

Order (cheap and certain first, expensive last, so that each filter only sees survivors):
  malformed (from the reader) -> normalise -> invalid_url -> too_short -> boilerplate
  -> non_english (fastText, langdetect in the band) -> aspect_ratio.
Every input row leaves in exactly one of the two outputs: kept (CANDIDATE) or rejected (REJECTED,
with its reason code and a detail). The counting and timing of all filters lives here, once.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from common.schemas import CANDIDATE, CAPTION_REASONS, READER_SKIP_REASONS, REJECTED, reader_reason
from pipeline.config import CaptionFilterConfig
from pipeline.filters.aspect_ratio import AspectRatioFilter
from pipeline.filters.base import CaptionFilter, CaptionRows
from pipeline.filters.boilerplate import BoilerplateFilter
from pipeline.filters.invalid_url import InvalidUrlFilter
from pipeline.filters.non_english import NonEnglishFilter
from pipeline.filters.normalize import Normalizer
from pipeline.filters.too_short import TooShortFilter

MALFORMED = "malformed"
NORMALIZE = "normalize"  # a stage, not a reason: it drops nothing, but its time is reported
FILTER_ORDER: tuple[type[CaptionFilter], ...] = (
    InvalidUrlFilter,
    TooShortFilter,
    BoilerplateFilter,
    NonEnglishFilter,
    AspectRatioFilter,
)
INPUT_COLUMNS = ("key", "source", "url", "caption", "width", "height", "malformed")


class CaptionPipeline:
    def __init__(self, cfg: CaptionFilterConfig | None = None):
        self.cfg = cfg or CaptionFilterConfig()
        self.normalizer = Normalizer(self.cfg.max_chars)
        self.filters: list[CaptionFilter] = [cls(self.cfg) for cls in FILTER_ORDER]
        unknown = {f.name for f in self.filters} - set(CAPTION_REASONS)
        assert not unknown, f"filters with reason codes outside CAPTION_REASONS: {unknown}"
        self._stats: dict[str, dict[str, float]] = {
            name: {"dropped": 0, "seconds": 0.0}
            for name in (MALFORMED, *READER_SKIP_REASONS, NORMALIZE, *[f.name for f in self.filters])
        }

    def process(self, table: pa.Table) -> tuple[pa.Table, pa.Table]:
        missing = [c for c in INPUT_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"CaptionPipeline.process: input lacks columns {missing}")
        col = {name: table.column(name).to_pylist() for name in INPUT_COLUMNS}
        keys, sources, urls, widths, heights = col["key"], col["source"], col["url"], col["width"], col["height"]
        rejected: dict[str, list[Any]] = {name: [] for name in REJECTED.names}

        def reject(i: int, caption: str | None, reason: str, detail: str) -> None:
            rejected["key"].append(keys[i])
            rejected["url"].append(urls[i])
            rejected["caption"].append(caption)
            rejected["source"].append(sources[i])
            rejected["reason"].append(reason)
            rejected["detail"].append(detail)

        # Reader-side failures and skips first: they never reach a filter.
        alive: list[int] = []
        for i, detail in enumerate(col["malformed"]):
            if detail is None:
                alive.append(i)
            else:
                reason = reader_reason(detail)
                reject(i, col["caption"][i], reason, detail)
                self._stats[reason]["dropped"] += 1

        start = time.perf_counter()
        raw = col["caption"]
        captions = self.normalizer.batch([raw[i] for i in alive])
        self._stats[NORMALIZE]["seconds"] += time.perf_counter() - start

        for flt in self.filters:
            if not alive:
                break
            start = time.perf_counter()
            rows = CaptionRows(urls, widths, heights, alive)
            decisions = flt.filter_batch(captions, rows)
            dropped = [j for j, detail in enumerate(decisions) if detail is not None]
            if dropped:
                for j in dropped:
                    reject(alive[j], captions[j], flt.name, decisions[j])
                alive = [i for i, detail in zip(alive, decisions, strict=True) if detail is None]
                captions = [c for c, detail in zip(captions, decisions, strict=True) if detail is None]
            if flt.rewrites:
                captions = flt.rewrite_batch(captions)
            stats = self._stats[flt.name]
            stats["dropped"] += len(dropped)
            stats["seconds"] += time.perf_counter() - start

        kept = pa.Table.from_pydict(
            {
                "key": [keys[i] for i in alive],
                "source": [sources[i] for i in alive],
                "url": [urls[i] for i in alive],
                "caption": captions,
                "width": [widths[i] for i in alive],
                "height": [heights[i] for i in alive],
            },
            schema=CANDIDATE,
        )
        return kept, pa.Table.from_pydict(rejected, schema=REJECTED)

    def stats(self) -> dict[str, Any]:
        """{reason or "normalize": {"dropped": n, "seconds": s}} plus "langdetect_calls": n."""
        out: dict[str, Any] = {name: dict(values) for name, values in self._stats.items()}
        out["langdetect_calls"] = sum(getattr(f, "langdetect_calls", 0) for f in self.filters)
        return out

    @staticmethod
    def merge_stats(many: list[dict[str, Any]]) -> dict[str, Any]:
        """Sum stats() of several pipelines (one per task/worker) into one report."""
        total: dict[str, Any] = {"langdetect_calls": 0}
        for stats in many:
            for name, value in stats.items():
                if name == "langdetect_calls":
                    total[name] += value
                    continue
                entry = total.setdefault(name, {"dropped": 0, "seconds": 0.0})
                entry["dropped"] += value["dropped"]
                entry["seconds"] += value["seconds"]
        return total
