"""Phase 3 and 5: download one candidate list with img2dataset, then publish it as a dataset shard.

download_task (one Ray task per list, with deadline and retries in pipeline.tasks):
  rejected/download-<name>.parquet   every row img2dataset or our checks refused, with reasons
  _work/image_hashes/<name>.parquet  (sha256, key) for the build-wide duplicate_image pass
  _work/staged/<name>.parquet        downloaded rows; written last, so it marks the list done
finalize_task (after duplicate_image):
  rejected/duplicate_image-<name>.parquet, then shards/<name>.parquet; the staged file is removed.
A shard is therefore visible only once complete and deduplicated.
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


def download_task(name: str, cfg: BuildConfig) -> dict[str, Any]:
    from pipeline.download.shard_downloader import download_shard

    layout = Layout(cfg.output)
    if is_finalized(layout, name) or storage.exists(layout.staged(name)):
        return {"name": name, "skipped": True}
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
    storage.write_parquet_atomic(layout.rejected("download", name), rejected)
    write_image_hashes(layout, name, kept, cfg.run.dedup_partitions)
    storage.write_parquet_atomic(layout.staged(name), kept, row_group_size=512)
    return {
        "name": name,
        "input": rows.num_rows,
        "kept": kept.num_rows,
        "bytes": int(pc.sum(pc.binary_length(kept.column("image"))).as_py() or 0),
        "seconds": time.monotonic() - started,
    }


def give_up_on_list(layout: Layout, cfg: BuildConfig, name: str, error: str) -> None:
    """A list whose task failed every retry: all its rows are rejected as shard_failed."""
    rows = storage.read_parquet(layout.candidates(name))
    rejected = schemas.rejected_from(rows, "shard_failed", error[:500])
    storage.write_parquet_atomic(layout.rejected("download", name), rejected)
    empty = schemas.empty(schemas.DATASET_SHARD)
    write_image_hashes(layout, name, empty, cfg.run.dedup_partitions)
    storage.write_parquet_atomic(layout.staged(name), empty)


def finalize_task(name: str, cfg: BuildConfig) -> dict[str, Any]:
    layout = Layout(cfg.output)
    final = layout.shard(name)
    if is_finalized(layout, name):
        return {"name": name, "skipped": True}
    staged = layout.staged(name)
    losers = losers_of_shard(layout, name, cfg.run.dedup_partitions)
    table = storage.read_parquet(staged)
    if losers:
        is_loser = pc.is_in(table.column("key"), pa.array(list(losers), pa.string()))
        dup = table.filter(is_loser)
        rejected = schemas.rejected_from(
            dup, "duplicate_image", [f"same image as {losers[k]}" for k in dup.column("key").to_pylist()]
        )
        storage.write_parquet_atomic(layout.rejected("duplicate_image", name), rejected)
        table = table.filter(pc.invert(is_loser))
    if table.num_rows == 0:
        # nothing survived: publish no empty shard, but remember that the list is finished
        storage.write_json_atomic(layout.empty_shard(name), {"name": name, "rows": 0})
    elif not losers and not storage.is_remote(staged):
        # unchanged and local: a rename publishes it atomically without rewriting the images
        local_final = storage.resolve(final)[1]
        os.makedirs(os.path.dirname(local_final), exist_ok=True)
        os.replace(storage.resolve(staged)[1], local_final)
    else:
        storage.write_parquet_atomic(final, table, row_group_size=512)
    _remove(staged)
    return {"name": name, "rows": table.num_rows}


def _remove(path: str) -> None:
    fs, inner = storage.resolve(path)
    try:
        fs.delete_file(inner)
    except FileNotFoundError:
        pass


def is_finalized(layout: Layout, name: str) -> bool:
    return storage.exists(layout.shard(name)) or storage.exists(layout.empty_shard(name))
