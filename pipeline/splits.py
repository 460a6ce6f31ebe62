"""Caption work split inside input files, so that parallelism follows the cluster, not the file count.

LAION-400M ships as ~32 parquet files and a YFCC100M dataset file is one 100M-line file: one task per
file would leave all but 32 (or 1) cores idle however large the cluster. `plan_splits` cuts a file:
  * parquet formats (readers with iter_tables): runs of whole row groups of >= reader.split_rows rows,
    read with ParquetFile.iter_batches(row_groups=...), footer only at planning time;
  * line formats, uncompressed (cc3m, yfcc100m, jsonl, and csv, tsv, wit with their header): byte
    ranges of reader.split_bytes, each owning the lines that START inside it (Reader.open_lines); a
    split of a header format reads the file's header line first. This is exact for csv too: a
    reader never merges lines (a quoted field left open at the end of its line makes that line one
    malformed row, readers/base.py), so a line parses the same whatever split holds it;
  * a compressed stream can only be read from its start: it stays one task, which reads it and fans
    batches of reader.split_rows rows out to filter tasks (pipeline.caption_fanout).
Row numbers stay unique and in input order across splits (Split.first_row), so dedup's "first in
input order" and the keys of malformed rows do not depend on how a file was cut.
"""

from __future__ import annotations

import pyarrow.parquet as pq

from common import storage
from pipeline.config import ReaderConfig
from pipeline.readers.base import Reader, Split

BYTE_SPLIT_FORMATS = ("cc3m", "yfcc100m", "jsonl", "csv", "tsv", "wit")  # one record per line, always
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4", ".br", ".xz", ".zstd")


def plan_splits(fmt: str, path: str, cfg: ReaderConfig) -> list[Split | None]:
    """The splits of one input file in order; [None] when it is read whole (or fanned out)."""
    from pipeline.readers import READERS

    fs, inner = storage.resolve(path)
    if READERS[fmt].iter_tables is not Reader.iter_tables:
        with fs.open_input_file(inner) as fh:
            meta = pq.ParquetFile(fh).metadata
        splits: list[Split | None] = []
        start = first_row = rows = 0
        for g in range(meta.num_row_groups):
            rows += meta.row_group(g).num_rows
            if rows >= cfg.split_rows or g == meta.num_row_groups - 1:
                splits.append(Split("rows", start, g + 1, first_row))
                start, first_row, rows = g + 1, first_row + rows, 0
        return splits if len(splits) > 1 else [None]
    if fmt in BYTE_SPLIT_FORMATS and not is_compressed(path):
        size = fs.get_file_info(inner).size or 0
        if size > cfg.split_bytes:
            step = cfg.split_bytes
            return [Split("bytes", s, min(s + step, size), s) for s in range(0, size, step)]
    return [None]


def is_compressed(path: str) -> bool:
    return path.lower().endswith(COMPRESSED_SUFFIXES)


def fans_out(fmt: str, path: str, split: Split | None) -> bool:
    """Whether a caption task reads this input as a stream fanned out to filter tasks
    (pipeline.caption_fanout): a whole compressed line file. Parquet is split by row groups instead."""
    from pipeline.readers import READERS

    return split is None and READERS[fmt].iter_tables is Reader.iter_tables and is_compressed(path)
