"""Phase 1: stream one input split through the caption filters (one Ray task per split, pipeline.splits;
a compressed stream is one reader task that fans chunks out to filter tasks, pipeline.caption_fanout).

Output per file, all with deterministic names (a rerun overwrites, never duplicates):
  _work/captions/<file_id>-<part>.parquet   kept rows + `partition` (hash of URL) + input order,
                                            sorted by partition in small row groups, so a URL-dedup
                                            task reads only its range's rows (pipeline.dedup)
  rejected/captions-<file_id>-<part>.parquet
  _work/captions/<file_id>.done.json        written last: input count and filter stats
Memory is bounded by `part_rows`, not by the file size.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from common import schemas, storage
from pipeline.config import BuildConfig
from pipeline.dedup import sorted_shuffle_bytes
from pipeline.layout import Layout
from pipeline.readers.base import Split

log = logging.getLogger(__name__)
PART_ROWS = 500_000  # rows buffered before a part is flushed; bounds task memory

_PIPELINES: dict[str, Any] = {}


@dataclass(frozen=True)
class InputFile:
    file_id: str  # "<source index>-<file index>", e.g. "000-000017"
    source: str  # source name written to every row, e.g. "laion" or "cc3m:1"
    fmt: str
    path: str
    split: Split | None = None  # part of the file this task reads (pipeline.splits); None = whole


def _pipeline(cfg: BuildConfig) -> Any:
    """One CaptionPipeline (and so one fastText model) per worker process and config."""
    from pipeline.captions import CaptionPipeline

    key = repr(cfg.captions)
    if key not in _PIPELINES:
        _PIPELINES[key] = CaptionPipeline(cfg.captions)
    return _PIPELINES[key]


def _with_keys(table: pa.Table, src: InputFile, first_row: int) -> pa.Table:
    urls = table.column("url").to_pylist()
    rows = range(first_row, first_row + table.num_rows)
    keys = [schemas.row_key(src.source, u, f"{src.path}:{r}") for u, r in zip(urls, rows, strict=True)]
    return (
        table.append_column("key", pa.array(keys, pa.string()))
        .append_column("source", pa.array([src.source] * table.num_rows, pa.string()))
        .append_column("row", pa.array(rows, pa.int64()))
    )


def _write_part(
    layout: Layout, src: InputFile, part: int, kept: list[pa.Table], rejected: list[pa.Table], cfg: BuildConfig
) -> dict[str, Any]:
    """Write one part; returns the report summary of the rejected rows it wrote."""
    from pipeline.report import summarize

    partitions = cfg.run.dedup_partitions
    rej = pa.concat_tables(rejected) if rejected else schemas.empty(schemas.REJECTED)
    storage.write_parquet_atomic(layout.rejected("captions", f"{src.file_id}-{part:05d}"), rej)
    summary = summarize(rej, None, cfg.run.examples_per_reason, ("width", "height"))
    table = pa.concat_tables(kept) if kept else None
    if table is None or table.num_rows == 0:
        table = schemas.empty(PART_SCHEMA)  # written anyway: the part list stays exact
    else:
        parts = [schemas.stable_partition(u, partitions) for u in table.column("url").to_pylist()]
        table = table.append_column("partition", pa.array(parts, pa.int32()))
        table = table.append_column("file_id", pa.array([src.file_id] * table.num_rows, pa.string()))
        table = table.sort_by([("partition", "ascending"), ("row", "ascending")]).select(PART_SCHEMA.names)
    storage.write_bytes_atomic(layout.caption_part(src.file_id, part), sorted_shuffle_bytes(table))
    return summary


PART_SCHEMA = pa.schema(
    list(schemas.CANDIDATE)
    + [pa.field("row", pa.int64()), pa.field("partition", pa.int32()), pa.field("file_id", pa.string())]
)


def caption_task(src: InputFile, cfg: BuildConfig) -> dict[str, Any]:
    """Filter one input file. Returns its stats (also stored in the .done.json marker).

    A transient read error (I/O, S3, network) re-reads the file from its start after a backoff: its
    parts have deterministic names, so a re-read overwrites, never duplicates. A file that stays
    unreadable, or whose bytes are cut (truncated .gz, corrupt footer), raises InputUnreadable with
    its path and the rows read: the build fails loudly instead of losing the file behind one row.
    """
    from pipeline.readers.errors import InputUnreadable

    layout = Layout(cfg.output)
    done = layout.caption_done(src.file_id)
    if storage.exists(done):
        return {**storage.read_json(done), "skipped": True}
    from pipeline.caption_fanout import fan_out_file
    from pipeline.splits import fans_out

    work = fan_out_file if fans_out(src.fmt, src.path, src.split) else _filter_file
    backoff = list(cfg.run.read_backoff_s)
    for attempt in range(len(backoff) + 1):
        try:
            stats = work(src, cfg, layout)
            break
        except InputUnreadable as exc:
            if not exc.transient or attempt == len(backoff):
                raise
            log.warning("%s; re-reading it in %.1f s (attempt %d)", exc, backoff[attempt], attempt + 2)
            time.sleep(backoff[attempt])
    stats["read_attempts"] = attempt + 1
    storage.write_json_atomic(done, stats)
    return stats


def _filter_file(src: InputFile, cfg: BuildConfig, layout: Layout) -> dict[str, Any]:
    from pipeline.readers import READERS
    from pipeline.report import merge

    started = time.monotonic()
    pipeline = _pipeline(cfg)
    before = pipeline.stats()  # the pipeline is shared by every task of this worker: report the delta
    reader = READERS[src.fmt](cfg.reader)
    n_input = n_kept = 0
    part = 0
    kept: list[pa.Table] = []
    rejected: list[pa.Table] = []
    buffered = 0
    summaries: list[dict[str, Any]] = []
    first_row = src.split.first_row if src.split is not None else 0
    for table in reader.read(src.path, src.split):
        table = _with_keys(table, src, first_row + n_input)
        n_input += table.num_rows
        ok, bad = _filter_batch(pipeline, table, cfg)
        kept.append(ok)
        rejected.append(bad)
        n_kept += ok.num_rows
        buffered += table.num_rows
        if buffered >= PART_ROWS:
            summaries.append(_write_part(layout, src, part, kept, rejected, cfg))
            part, kept, rejected, buffered = part + 1, [], [], 0
    summaries.append(_write_part(layout, src, part, kept, rejected, cfg))
    after = pipeline.stats()
    return {
        "file_id": src.file_id,
        "source": src.source,
        "path": src.path,
        "parts": part + 1,
        "files_read": 1,
        "input": n_input,
        "kept": n_kept,
        "seconds": time.monotonic() - started,
        "filters": _delta(after, before),
        "summary": merge(summaries, cfg.run.examples_per_reason),
    }


def _filter_batch(pipeline: Any, table: pa.Table, cfg: BuildConfig) -> tuple[pa.Table, pa.Table]:
    """(kept, rejected) of one keyed batch: the caption filters, then too_small from source sizes."""
    ok, bad = _process(pipeline, table)
    ok, small = _too_small(ok, cfg.download.min_image_size)
    return ok, bad if small is None else pa.concat_tables([bad, small])


def _process(pipeline: Any, table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Run the caption pipeline and carry each kept row's input position (`row`) onto it.

    Keys are hashes of (source, url), so two rows of one batch with the same URL share a key: the
    pipeline runs on the batch index as a stand-in key, mapped back afterwards, so that each kept
    row gets its own row number (dedup keeps the first in input order)."""
    keys, rows = table.column("key"), table.column("row")
    index = pa.array([str(i) for i in range(table.num_rows)], pa.string())
    ok, bad = pipeline.process(
        table.drop_columns(["row"]).set_column(table.schema.get_field_index("key"), "key", index)
    )

    def restore(out: pa.Table, extra: bool) -> pa.Table:
        at = pa.array([int(i) for i in out.column("key").to_pylist()], pa.int64())
        out = out.set_column(out.schema.get_field_index("key"), "key", pc.take(keys, at))
        return out.append_column("row", pc.take(rows, at)) if extra else out

    return restore(ok, True), restore(bad, False)


def _too_small(ok: pa.Table, min_size: int) -> tuple[pa.Table, pa.Table | None]:
    """too_small before download when the source metadata has both sides (as aspect_ratio is):
    an image the download stage would refuse is not fetched. Unknown sizes are decided after download."""
    width, height = ok.column("width"), ok.column("height")
    short = pc.min_element_wise(width, height)
    mask = pc.fill_null(pc.and_(pc.and_(pc.is_valid(width), pc.is_valid(height)), pc.less(short, min_size)), False)
    if not pc.any(mask).as_py():
        return ok, None
    small = ok.filter(mask)
    details = [
        f"{w}x{h}, short side {min(w, h)} < {min_size} (source metadata)"
        for w, h in zip(small.column("width").to_pylist(), small.column("height").to_pylist(), strict=True)
    ]
    return ok.filter(pc.invert(mask)), schemas.rejected_from(small, "too_small", details)


def _delta(after: Any, before: Any) -> Any:
    if isinstance(after, dict):
        return {k: _delta(v, before.get(k, 0 if not isinstance(v, dict) else {})) for k, v in after.items()}
    return after - before


def caption_parts(layout: Layout, done_stats: list[dict[str, Any]]) -> list[str]:
    return [layout.caption_part(s["file_id"], p) for s in done_stats for p in range(s["parts"])]
