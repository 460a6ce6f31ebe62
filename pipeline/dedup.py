"""Exact deduplication that scales across a cluster: hash-partition, then dedup each partition.

Both dedups are deterministic, so a resumed build keeps exactly the rows an uninterrupted one keeps:
  * duplicate_url: rows with the same URL (across all sources) keep the first in input order
    (source index, file index, row), the others are rejected with the kept row's key in `detail`.
  * duplicate_image: downloaded images with the same sha256 keep the smallest key.
One task handles one partition, so memory is about (rows / partitions) whatever the build size.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common import schemas, storage
from pipeline.caption_phase import read_partition
from pipeline.config import BuildConfig
from pipeline.layout import Layout


def url_dedup_task(partition: int, cfg: BuildConfig, part_paths: list[str]) -> dict[str, Any]:
    """Dedup one URL partition and cut it into download lists `candidates/p<partition>-<k>`."""
    layout = Layout(cfg.output)
    done = layout.url_dedup_done(partition)
    if storage.exists(done):
        return storage.read_json(done)
    table = read_partition(part_paths, partition)
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
    storage.write_parquet_atomic(
        layout.rejected("duplicate_url", f"p{partition:05d}"),
        schemas.rejected_from(losers, "duplicate_url", loser_details),
    )
    kept = table.filter(mask).sort_by([("file_id", "ascending"), ("row", "ascending")]).select(schemas.CANDIDATE.names)
    names = []
    for k, start in enumerate(range(0, kept.num_rows, cfg.run.shard_size)):
        name = f"p{partition:05d}-{k:05d}"
        storage.write_parquet_atomic(layout.candidates(name), kept.slice(start, cfg.run.shard_size))
        names.append({"name": name, "rows": min(cfg.run.shard_size, kept.num_rows - start)})
    stats = {
        "partition": partition,
        "input": table.num_rows,
        "kept": kept.num_rows,
        "duplicate_url": losers.num_rows,
        "lists": names,
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
    storage.write_bytes_atomic(path, storage.grouped_parquet_bytes(table, "partition"))


def image_dedup_task(partition: int, cfg: BuildConfig, hash_paths: list[str]) -> dict[str, Any]:
    """Find the losers of one sha256 partition; written sorted by shard for cheap per-shard reads."""
    layout = Layout(cfg.output)
    out = layout.image_dups(partition)
    if storage.exists(out):
        return {"partition": partition, "duplicates": storage.parquet_num_rows(out), "skipped": True}
    if hash_paths:
        fs, _ = storage.resolve(hash_paths[0])
        table = pq.read_table(
            [storage.resolve(p)[1] for p in hash_paths],
            filesystem=fs,
            schema=HASH_SCHEMA,
            filters=pc.field("partition") == partition,
        )
    else:
        table = schemas.empty(HASH_SCHEMA)
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
    storage.write_parquet_atomic(out, dups, row_group_size=4096)
    return {"partition": partition, "duplicates": dups.num_rows}


def losers_of_shard(layout: Layout, shard: str, partitions: int) -> dict[str, str]:
    """{loser key: winner key} for one shard, read from every image-dup partition (row groups pruned)."""
    paths = [layout.image_dups(p) for p in range(partitions)]
    fs, _ = storage.resolve(paths[0])
    table = pq.read_table(
        [storage.resolve(p)[1] for p in paths], filesystem=fs, schema=DUPS_SCHEMA, filters=pc.field("shard") == shard
    )
    return dict(zip(table.column("key").to_pylist(), table.column("winner").to_pylist(), strict=True))
