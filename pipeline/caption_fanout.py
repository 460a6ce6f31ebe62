"""One compressed input stream, many filter tasks: caption parallelism follows the cluster, not the file.

A .gz/.bz2/.zst... file can only be decompressed from its start, so it cannot be cut into byte
ranges like a plain one (pipeline.splits). Instead its caption task becomes a READER: it streams the
file once (decompress + parse, cheap next to the caption filters) and fans CHUNKS of exactly
`reader.split_rows` rows out to filter tasks, at most `2 x cluster CPUs` in flight (it waits, and
so gives its CPU back to Ray, when the window is full). It filters the last chunk itself, so a file
of one chunk costs no extra task.

Chunk c holds the file's rows [c x split_rows, (c + 1) x split_rows): the boundaries depend on the
rows only, not on batch sizes or timing, so a chunk is the same on every run. Its filter task writes
what a whole-file task writes for one part (pipeline.caption_phase: `_work/captions/<file_id>-<c>.parquet`
and `rejected/captions-<file_id>-<c>.parquet`) and then its marker `<file_id>-chunk<c>.done.json`.
Row numbers are the file's own line numbers, as in a whole read, so the kept and rejected rows, their
keys and their details are those of an unsplit read, row for row.

Resume: the reader skips every chunk whose marker exists (it still decompresses the stream up to the
last chunk, but filters nothing twice), and writes the file's own marker, with the merged stats, only
when every chunk is done. A transient read error re-reads the stream the same way; chunk tasks still
in flight are waited for first, so no chunk is ever filtered by two tasks at once.

Outside Ray (a caption task called in-process, as some tests do) the chunks are filtered in this
process, one after another, through the same function: same files, same stats.
"""

from __future__ import annotations

import os
import resource
from typing import Any, Iterator

import pyarrow as pa

from common import storage
from pipeline.config import BuildConfig
from pipeline.layout import Layout


def chunk_marker(layout: Layout, file_id: str, chunk: int) -> str:
    return layout.caption_done(f"{file_id}-chunk{chunk:05d}")


def rechunk(tables: Iterator[pa.Table], rows: int) -> Iterator[pa.Table]:
    """The same rows in tables of exactly `rows` rows (the last may be shorter), whatever the batches."""
    held: list[pa.Table] = []
    count = 0
    for table in tables:
        held.append(table)
        count += table.num_rows
        while count >= rows:
            whole = pa.concat_tables(held)
            yield whole.slice(0, rows)
            rest = whole.slice(rows)
            held, count = [rest], rest.num_rows
    if count:
        yield pa.concat_tables(held)


def filter_chunk(src: Any, chunk: int, table: pa.Table, cfg: BuildConfig) -> dict[str, Any]:
    """Filter one chunk of a fanned-out file: its part files, then its marker. Returns its stats."""
    from pipeline.caption_phase import _delta, _filter_batch, _pipeline, _with_keys, _write_part
    from pipeline.tasks import _reset_peak_rss

    layout = Layout(cfg.output)
    _reset_peak_rss()  # this task's own peak when measured (pipeline.tasks)
    pipeline = _pipeline(cfg)
    before = pipeline.stats()
    table = _with_keys(table, src, chunk * cfg.reader.split_rows)
    ok, bad = _filter_batch(pipeline, table, cfg)
    summary = _write_part(layout, src, chunk, [ok], [bad], cfg)
    stats = {
        "chunk": chunk,
        "input": table.num_rows,
        "kept": ok.num_rows,
        "filters": _delta(pipeline.stats(), before),
        "summary": summary,
        "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "pid": os.getpid(),  # which process filtered it: the reader's own, or a Ray worker's
    }
    storage.write_json_atomic(chunk_marker(layout, src.file_id, chunk), stats)
    return stats


def fan_out_file(src: Any, cfg: BuildConfig, layout: Layout) -> dict[str, Any]:
    """Read one stream and filter it in chunks on the cluster. Returns the file's stats, shaped as
    caption_phase._filter_file's (parts = chunks)."""
    import time

    import ray

    from pipeline.captions import CaptionPipeline
    from pipeline.readers import READERS
    from pipeline.report import merge

    started = time.monotonic()
    on_ray = ray.is_initialized()
    remote = ray.remote(num_cpus=1, max_retries=2)(filter_chunk) if on_ray else None
    window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1))) if on_ray else 0
    in_flight: dict[Any, int] = {}
    done: dict[int, dict[str, Any]] = {}
    skipped = 0

    def collect(block_until: int) -> None:
        """Wait until at most `block_until` chunk tasks are in flight; a failed chunk task raises."""
        while len(in_flight) > block_until:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                in_flight.pop(ref)
                stats = ray.get(ref)
                done[stats["chunk"]] = stats

    def dispatch(chunk: int, table: pa.Table, last: bool) -> None:
        nonlocal skipped
        marker = chunk_marker(layout, src.file_id, chunk)
        if storage.exists(marker):
            done[chunk] = storage.read_json(marker)
            skipped += 1
        elif remote is None or last:  # the last chunk here: the reader has nothing else left to do
            done[chunk] = filter_chunk(src, chunk, table, cfg)
        else:
            collect(window - 1)
            in_flight[remote.remote(src, chunk, table, cfg)] = chunk

    reader = READERS[src.fmt](cfg.reader)
    chunks = 0
    held: tuple[int, pa.Table] | None = None  # one chunk of look-ahead: is it the last?
    try:
        for chunk, table in enumerate(rechunk(reader.read(src.path), cfg.reader.split_rows)):
            chunks = chunk + 1
            if held is not None:
                dispatch(*held, last=False)
            held = (chunk, table)
        if held is not None:
            dispatch(*held, last=True)
        collect(0)
    except BaseException:
        if in_flight:  # let running chunks finish (or fail) before a re-read submits them again
            ray.wait(list(in_flight), num_returns=len(in_flight))
        raise
    stats = [done[c] for c in range(chunks)]
    if not stats:  # an empty stream still writes its (empty) part, so the part list stays exact
        from pipeline.caption_phase import _write_part

        stats = [{"input": 0, "kept": 0, "filters": {}, "summary": _write_part(layout, src, 0, [], [], cfg)}]
    return {
        "file_id": src.file_id,
        "source": src.source,
        "path": src.path,
        "parts": len(stats),
        "chunks_filtered": chunks - skipped,
        "files_read": 1,
        "input": sum(s["input"] for s in stats),
        "kept": sum(s["kept"] for s in stats),
        "seconds": time.monotonic() - started,
        "filters": CaptionPipeline.merge_stats([s["filters"] for s in stats]),
        "summary": merge([s["summary"] for s in stats], cfg.run.examples_per_reason),
        "chunk_rss_mb": max((s.get("rss_mb", 0.0) for s in stats), default=0.0),
    }
