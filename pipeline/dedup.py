"""Exact deduplication that scales across a cluster: a hash shuffle through files, then dedup per range.

The shuffle. Every mapper (a caption task, a download task) tags each row with a hash partition in
[0, P) and writes its rows SORTED by partition, in row groups of SHUFFLE_ROW_GROUP rows. A reducer
owns a contiguous range of partitions and reads, from each mapper file, only the row groups whose
partition statistics overlap its range (pyarrow prunes the others from the footer): its own rows
plus at most two boundary row groups per file. A footer's size depends on the file's rows, not on
P, so neither a reducer's memory nor the bytes it reads grow with the partition count.

How many reducers: `plan_ranges` gives min(P, ceil(rows / run.dedup_rows_per_task)) ranges, from the
exact row count the mappers returned. P is the upper bound on reducers; rows per reducer, which is
what bounds its memory (and its Ray `memory=` request), is bounded by dedup_rows_per_task whatever
the input size, the partition count or the number of mapper files. A URL and a sha256 always map to
one partition, so grouping partitions into ranges never changes which rows win:
  * duplicate_url: rows with the same URL (across all sources) keep the first in input order
    (source index, file index, row), the others are rejected with the kept row's key in `detail`.
  * duplicate_image: downloaded images with the same sha256 keep the smallest key.

Why not Ray Data's hash shuffle (groupby/map_groups): measured on 240k rows on 2 CPUs it took
40-65 s of executor overhead against ~1 s for this file shuffle, and its output would still have to
be written by side effect. The mappers already write sorted Parquet, so the shuffle costs one sort.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common import schemas, storage
from pipeline.config import BuildConfig
from pipeline.layout import Layout

SHUFFLE_ROW_GROUP = 8192  # rows per row group of a mapper file: the granularity of range pruning
BYTES_PER_ROW = 1024  # resident bytes per row in a dedup task (Arrow + the Python lists it builds)


def plan_ranges(rows: int, partitions: int, rows_per_task: int) -> list[tuple[int, int]]:
    """Contiguous partition ranges [lo, hi), one per reducer task, from the exact row count."""
    n = min(partitions, max(1, -(-rows // max(1, rows_per_task))))
    return [(i * partitions // n, (i + 1) * partitions // n) for i in range(n)]


def task_memory(rows: int, ranges: int) -> int:
    """Ray `memory=` request of one reducer: its expected rows (with 2x slack for skew) x bytes per row."""
    return int(max(64 << 20, 2 * BYTES_PER_ROW * -(-rows // max(1, ranges))))


def sorted_shuffle_bytes(table: pa.Table) -> bytes:
    """A mapper file: rows sorted by `partition`, fixed-size row groups with statistics."""
    return storage.parquet_bytes(table, row_group_size=SHUFFLE_ROW_GROUP)


def read_range(paths: list[str], schema: pa.Schema, lo: int, hi: int) -> pa.Table:
    """The rows with lo <= partition < hi across mapper files (row groups pruned by statistics)."""
    if not paths:
        return schemas.empty(schema)
    fs, _ = storage.resolve(paths[0])
    wanted = (pc.field("partition") >= lo) & (pc.field("partition") < hi)
    return pq.read_table([storage.resolve(p)[1] for p in paths], filesystem=fs, schema=schema, filters=wanted)


def url_dedup_task(span: tuple[int, int], cfg: BuildConfig, part_paths: list[str]) -> dict[str, Any]:
    """Dedup one range of URL partitions and cut it into download lists `candidates/p<lo>-<k>`."""
    from pipeline.caption_phase import PART_SCHEMA
    from pipeline.report import summarize

    partition, hi = span
    layout = Layout(cfg.output)
    done = layout.url_dedup_done(partition)
    if storage.exists(done):
        return storage.read_json(done)
    table = read_range(part_paths, PART_SCHEMA, partition, hi)
    table = table.sort_by([("url", "ascending"), ("file_id", "ascending"), ("row", "ascending")])
    urls = table.column("url").to_pylist()
    keys = table.column("key").to_pylist()
    first = [i == 0 or urls[i] != urls[i - 1] for i in range(len(urls))]
    winner_key: list[str] = []
    for i, is_first in enumerate(first):
        winner_key.append(keys[i] if is_first else winner_key[-1])
    mask = pa.array(first, pa.bool_())
    losers = table.filter(pc.invert(mask))
    loser_details = [f"same URL as {w}" for w, f in zip(winner_key, first, strict=True) if not f]
    rejected = schemas.rejected_from(losers, "duplicate_url", loser_details)
    storage.write_parquet_atomic(layout.rejected("duplicate_url", f"p{partition:05d}"), rejected)
    kept = table.filter(mask).sort_by([("file_id", "ascending"), ("row", "ascending")]).select(schemas.CANDIDATE.names)
    names = []
    for k, start in enumerate(range(0, kept.num_rows, cfg.run.shard_size)):
        name = f"p{partition:05d}-{k:05d}"
        storage.write_parquet_atomic(layout.candidates(name), kept.slice(start, cfg.run.shard_size))
        names.append({"name": name, "rows": min(cfg.run.shard_size, kept.num_rows - start)})
    stats = {
        "partition": partition,
        "partitions": [partition, hi],
        "files_read": len(part_paths),
        "input": table.num_rows,
        "kept": kept.num_rows,
        "duplicate_url": losers.num_rows,
        "lists": names,
        # for the report: the rows rejected here, and the candidates (the kept rows of --captions-only)
        "summary": summarize(rejected, None, cfg.run.examples_per_reason, ("width", "height")),
        "kept_summary": summarize(None, kept, 0, ("width", "height")),
    }
    storage.write_json_atomic(done, stats)
    return stats


# --- duplicate_image ---------------------------------------------------------------------------
HASH_SCHEMA = pa.schema(
    [("partition", pa.int32()), ("sha256", pa.string()), ("key", pa.string()), ("shard", pa.string())]
)
DUPS_SCHEMA = pa.schema([("shard", pa.string()), ("key", pa.string()), ("winner", pa.string())])


def write_image_hashes(path: str, shard: str, kept: pa.Table, partitions: int) -> None:
    """Side file of a downloaded shard: (sha256, key) sorted by hash partition, one row group each."""
    shas = kept.column("sha256").to_pylist()
    table = pa.table(
        {
            "partition": pa.array([schemas.stable_partition(s, partitions) for s in shas], pa.int32()),
            "sha256": kept.column("sha256"),
            "key": kept.column("key"),
            "shard": pa.array([shard] * kept.num_rows, pa.string()),
        },
        schema=HASH_SCHEMA,
    ).sort_by([("partition", "ascending"), ("sha256", "ascending")])
    storage.write_bytes_atomic(path, sorted_shuffle_bytes(table))


def image_dedup_task(span: tuple[int, int], cfg: BuildConfig, hash_paths: list[str]) -> dict[str, Any]:
    """Find the losers of one range of sha256 partitions; written sorted by shard, in small row groups,
    so that finalizing one shard reads only its own rows of each range file."""
    partition, hi = span
    layout = Layout(cfg.output)
    out = layout.image_dups(partition)
    if storage.exists(out):
        return {"partition": partition, "duplicates": storage.parquet_num_rows(out), "skipped": True}
    table = read_range(hash_paths, HASH_SCHEMA, partition, hi)
    table = table.sort_by([("sha256", "ascending"), ("key", "ascending")])
    shas = table.column("sha256").to_pylist()
    keys = table.column("key").to_pylist()
    shards = table.column("shard").to_pylist()
    rows = {"shard": [], "key": [], "winner": []}
    winner = None
    for i, sha in enumerate(shas):
        if i == 0 or sha != shas[i - 1]:
            winner = keys[i]
            continue
        rows["shard"].append(shards[i])
        rows["key"].append(keys[i])
        rows["winner"].append(winner)
    dups = pa.table(rows, schema=DUPS_SCHEMA).sort_by([("shard", "ascending"), ("key", "ascending")])
    storage.write_parquet_atomic(out, dups, row_group_size=1024)
    return {"partition": partition, "input": table.num_rows, "duplicates": dups.num_rows, "files_read": len(hash_paths)}


def losers_of_shard(layout: Layout, shard: str, ranges: list[int]) -> dict[str, str]:
    """{loser key: winner key} for one shard, from each image-dedup range file (row groups pruned).

    One file per reducer range (at most rows / dedup_rows_per_task of them), not one per partition."""
    paths = [layout.image_dups(lo) for lo in ranges]
    fs, _ = storage.resolve(paths[0])
    table = pq.read_table(
        [storage.resolve(p)[1] for p in paths], filesystem=fs, schema=DUPS_SCHEMA, filters=pc.field("shard") == shard
    )
    return dict(zip(table.column("key").to_pylist(), table.column("winner").to_pylist(), strict=True))
