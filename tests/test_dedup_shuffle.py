"""The dedup shuffle (pipeline.dedup): reducers read only their own range, and how many run depends on
the rows, not on the partition count. Real Parquet files, real pyarrow pruning; no Ray."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq

from common import schemas
from pipeline.caption_phase import PART_SCHEMA
from pipeline.config import BuildConfig
from pipeline.dedup import SHUFFLE_ROW_GROUP, plan_ranges, read_range, sorted_shuffle_bytes, url_dedup_task
from pipeline.layout import Layout


def test_ranges_follow_the_rows_not_the_partition_count():
    assert len(plan_ranges(240_000, 64, 2_000_000)) == len(plan_ranges(240_000, 1024, 2_000_000)) == 1
    ranges = plan_ranges(250_000_000, 1024, 2_000_000)
    assert len(ranges) == 125 and ranges[0][0] == 0 and ranges[-1][1] == 1024
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # contiguous, no partition twice
    assert len(plan_ranges(10**12, 1024, 2_000_000)) == 1024  # P stays the upper bound
    assert plan_ranges(0, 64, 2_000_000) == [(0, 64)]


def mapper_file(tmp_path, m: int, rows: int, partitions: int) -> str:
    rng = random.Random(m)
    urls = [f"http://img.example/{rng.randrange(rows * 4)}.jpg" for _ in range(rows)]
    table = pa.table(
        {
            "key": [f"k{m}-{i}" for i in range(rows)],
            "source": ["s"] * rows,
            "url": urls,
            "caption": ["a caption"] * rows,
            "width": pa.nulls(rows, pa.int64()),
            "height": pa.nulls(rows, pa.int64()),
            "row": pa.array(range(rows), pa.int64()),
            "partition": pa.array([schemas.stable_partition(u, partitions) for u in urls], pa.int32()),
            "file_id": [f"000-{m:06d}"] * rows,
        },
        schema=PART_SCHEMA,
    ).sort_by([("partition", "ascending"), ("row", "ascending")])
    path = tmp_path / f"m{m}.parquet"
    path.write_bytes(sorted_shuffle_bytes(table))
    return str(path)


def test_a_reducer_touches_only_the_row_groups_of_its_range(tmp_path):
    partitions, rows = 1024, 50_000
    paths = [mapper_file(tmp_path, m, rows, partitions) for m in range(3)]
    lo, hi = 256, 512  # a quarter of the partitions
    for path in paths:
        meta = pq.ParquetFile(path).metadata
        assert meta.num_row_groups == -(-rows // SHUFFLE_ROW_GROUP)  # the footer follows the rows, not P
        col = meta.schema.names.index("partition")
        touched = [
            g
            for g in range(meta.num_row_groups)
            if meta.row_group(g).column(col).statistics.max >= lo and meta.row_group(g).column(col).statistics.min < hi
        ]
        own = rows * (hi - lo) / partitions
        assert len(touched) <= own / SHUFFLE_ROW_GROUP + 2  # its own rows plus two boundary groups
    table = read_range(paths, PART_SCHEMA, lo, hi)
    everything = pa.concat_tables(pq.read_table(p, schema=PART_SCHEMA) for p in paths)
    want = sorted(
        k
        for k, p in zip(everything["key"].to_pylist(), everything["partition"].to_pylist(), strict=True)
        if lo <= p < hi
    )
    assert sorted(table["key"].to_pylist()) == want


def test_first_url_in_input_order_wins_whatever_the_ranges(tmp_path):
    paths = [mapper_file(tmp_path, m, 3_000, 64) for m in range(4)]
    winners = []
    for rows_per_task in (100_000, 2_000):  # one range, then several
        cfg = BuildConfig(output=str(tmp_path / f"out-{rows_per_task}"))
        cfg.run.dedup_partitions, cfg.run.dedup_rows_per_task = 64, rows_per_task
        kept, rejected = set(), 0
        for span in plan_ranges(12_000, 64, rows_per_task):
            stats = url_dedup_task(span, cfg, paths)
            rejected += stats["duplicate_url"]
            for lst in stats["lists"]:
                kept |= set(pq.read_table(Layout(cfg.output).candidates(lst["name"]))["key"].to_pylist())
        assert len(kept) + rejected == 12_000
        winners.append(kept)
    assert winners[0] == winners[1]
    everything = pa.concat_tables(pq.read_table(p, schema=PART_SCHEMA) for p in paths)
    first: dict[str, str] = {}
    for key, url in sorted(
        zip(everything["key"].to_pylist(), everything["url"].to_pylist(), strict=True),
        key=lambda kv: (kv[0].split("-")[0], int(kv[0].split("-")[1])),
    ):
        first.setdefault(url, key)
    assert winners[0] == set(first.values())
