"""Phase 3 and 5: download one candidate list with img2dataset, then publish it as a dataset shard.

download_task (one Ray task per list, with a deadline from its start and retries in pipeline.tasks)
writes only attempt-scoped files, `_work/attempts/<name>/<attempt>/`:
  rejected.parquet   every row img2dataset or our checks refused, with reasons
  hashes.parquet     (sha256, key) for the build-wide duplicate_image pass
  staged.parquet     the downloaded rows
A force-cancelled attempt may still be writing when its retry starts, so the driver commits exactly
one attempt per list (`commit_list`: `_work/staged/<name>.json` names the attempt and holds its
stats). Later phases read only committed attempts.
finalize_task (after duplicate_image):
  rejected/download-<name>.parquet, rejected/duplicate_image-<name>.parquet, then shards/<name>.parquet.
A shard is therefore visible only once complete and deduplicated.

A list that fails every retry is recorded in `_work/failed/<name>.json`. Unless
run.accept_failed_lists is set, the build then stops before publishing anything, and the next run
of the same command retries exactly those lists (`lists_status` counts them for the report).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from common import schemas, storage
from pipeline.config import BuildConfig
from pipeline.dedup import losers_of_shard, write_image_hashes
from pipeline.layout import Layout
from pipeline.report import merge, summarize

GAVE_UP = "gave-up"  # the attempt token of a list whose rows were rejected as shard_failed


def download_task(name: str, cfg: BuildConfig) -> dict[str, Any]:
    from pipeline.download.shard_downloader import download_shard
    from pipeline.tasks import current_attempt

    layout = Layout(cfg.output)
    token = current_attempt() or "direct"
    started = time.monotonic()
    rows = storage.read_parquet(layout.candidates(name))
    work_dir = tempfile.mkdtemp(prefix=f"dl-{name}-")
    try:
        kept, rejected = download_shard(
            rows, cfg.download, cfg.captions.min_aspect_ratio, cfg.captions.max_aspect_ratio, work_dir
        )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    if kept.num_rows + rejected.num_rows != rows.num_rows:
        raise RuntimeError(f"{name}: downloader accounted {kept.num_rows}+{rejected.num_rows} of {rows.num_rows} rows")
    _write_attempt(layout, cfg, name, token, kept, rejected)
    return {
        "name": name,
        "attempt": token,
        "files_read": 1,
        "input": rows.num_rows,
        "kept": kept.num_rows,
        "bytes": int(pc.sum(pc.binary_length(kept.column("image"))).as_py() or 0),
        "rejected_by_reason": _count(rejected.column("reason")),
        "summary": summarize(rejected, None, cfg.run.examples_per_reason, ("width", "height")),
        "seconds": time.monotonic() - started,
    }


def _count(column: pa.ChunkedArray) -> dict[str, int]:
    counts = pc.value_counts(column).to_pylist() if len(column) else []
    return {c["values"]: c["counts"] for c in counts}


def _write_attempt(layout: Layout, cfg: BuildConfig, name: str, token: str, kept: pa.Table, rej: pa.Table) -> None:
    storage.write_parquet_atomic(layout.attempt(name, token, "rejected"), rej)
    write_image_hashes(layout.attempt(name, token, "hashes"), name, kept, cfg.run.dedup_partitions)
    storage.write_parquet_atomic(layout.attempt(name, token, "staged"), kept, row_group_size=512)


def commit_list(layout: Layout, stats: dict[str, Any]) -> None:
    """Driver side: accept one attempt of a list. Written after the attempt's files are complete."""
    storage.write_json_atomic(layout.staged(stats["name"]), stats)


def committed_lists(layout: Layout) -> dict[str, dict[str, Any]]:
    """{list name: committed stats}, from one listing plus one small read per committed list."""
    out = {}
    for path in storage.listdir(layout.path("_work", "staged"), ".json"):
        stats = storage.read_json(path)
        out[stats["name"]] = stats
    return out


def record_failed_list(layout: Layout, name: str, attempts: int, error: str) -> None:
    previous = storage.read_json(layout.failed_list(name)) if storage.exists(layout.failed_list(name)) else {}
    runs = int(previous.get("failed_runs", 0)) + 1
    storage.write_json_atomic(
        layout.failed_list(name), {"name": name, "attempts": attempts, "failed_runs": runs, "error": error[:2000]}
    )


def give_up_on_list(layout: Layout, cfg: BuildConfig, name: str, error: str) -> dict[str, Any]:
    """run.accept_failed_lists: a list that failed every retry has all its rows rejected as shard_failed."""
    rows = storage.read_parquet(layout.candidates(name))
    rejected = schemas.rejected_from(rows, "shard_failed", error[:500])
    _write_attempt(layout, cfg, name, GAVE_UP, schemas.empty(schemas.DATASET_SHARD), rejected)
    stats = {
        "name": name,
        "attempt": GAVE_UP,
        "input": rows.num_rows,
        "kept": 0,
        "bytes": 0,
        "rejected_by_reason": {"shard_failed": rows.num_rows},
        "summary": summarize(rejected, None, cfg.run.examples_per_reason, ("width", "height")),
    }
    commit_list(layout, stats)
    return stats


def lists_status(layout: Layout, committed: dict[str, dict[str, Any]]) -> dict[str, int]:
    """How many lists failed in some run, were retried by a later one, and were recovered."""
    failed = [p.rsplit("/", 1)[-1][: -len(".json")] for p in storage.listdir(layout.path("_work", "failed"), ".json")]
    recovered = [n for n in failed if committed.get(n, {}).get("attempt", GAVE_UP) != GAVE_UP]
    return {
        "failed_in_an_earlier_run": len(failed),
        "recovered": len(recovered),
        "given_up": sum(1 for s in committed.values() if s.get("attempt") == GAVE_UP),
    }


def finalize_task(name: str, cfg: BuildConfig, dup_ranges: list[int]) -> dict[str, Any]:
    """Publish one list: its download rejects, its duplicate_image rejects, then its shard. Returns
    (and stores in `_work/finalized/<name>.json`) the report summary of every row it published."""
    layout = Layout(cfg.output)
    final = layout.shard(name)
    if storage.exists(layout.finalized(name)):
        return {**storage.read_json(layout.finalized(name)), "skipped": True}
    token = storage.read_json(layout.staged(name))["attempt"]
    downloaded_rejects = storage.read_parquet(layout.attempt(name, token, "rejected"))
    storage.write_parquet_atomic(layout.rejected("download", name), downloaded_rejects)
    losers = losers_of_shard(layout, name, dup_ranges)
    table = storage.read_parquet(layout.attempt(name, token, "staged"))
    rejected = schemas.empty(schemas.REJECTED)
    if losers:
        is_loser = pc.is_in(table.column("key"), pa.array(list(losers), pa.string()))
        dup = table.filter(is_loser)
        rejected = schemas.rejected_from(
            dup, "duplicate_image", [f"same image as {losers[k]}" for k in dup.column("key").to_pylist()]
        )
        storage.write_parquet_atomic(layout.rejected("duplicate_image", name), rejected)
        table = table.filter(pc.invert(is_loser))
    if table.num_rows == 0:
        pass  # nothing survived: publish no empty shard; the marker below says the list is finished
    elif not losers and not storage.is_remote(final):
        # unchanged and local: a copy-free link publishes it atomically without rewriting the images
        local_final = storage.resolve(final)[1]
        os.makedirs(os.path.dirname(local_final), exist_ok=True)
        tmp = os.path.join(os.path.dirname(local_final), f"{storage.TMP_PREFIX}{name}.{token}")
        os.link(storage.resolve(layout.attempt(name, token, "staged"))[1], tmp)
        os.replace(tmp, local_final)
    else:
        storage.write_parquet_atomic(final, table, row_group_size=512)
    k = cfg.run.examples_per_reason
    stats = {
        "name": name,
        "rows": table.num_rows,
        "duplicate_image": rejected.num_rows,
        "files_read": 3 + len(dup_ranges),
        "summary": merge(
            [
                summarize(rejected, None, k, ("original_width", "original_height")),
                summarize(None, table.drop_columns(["image"]), 0, ("original_width", "original_height")),
            ],
            k,
        ),
    }
    storage.write_json_atomic(layout.finalized(name), stats)
    return stats


def is_finalized(layout: Layout, name: str) -> bool:
    return storage.exists(layout.finalized(name))
