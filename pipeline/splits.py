"""Caption work split inside input files, so that parallelism follows the cluster, not the file count.

LAION-400M ships as ~32 parquet files and a YFCC100M dataset file is one 100M-line file: one task per
file would leave all but 32 (or 1) cores idle however large the cluster. `plan_splits` cuts a file:
  * parquet formats (readers with iter_tables): runs of whole row groups of >= reader.split_rows rows,
    read with ParquetFile.iter_batches(row_groups=...), footer only at planning time;
  * headerless line formats without quoting (cc3m, yfcc100m, jsonl), uncompressed: byte ranges of
    reader.split_bytes, each owning the lines that START inside it (Reader.open_lines);
  * anything else stays whole: a header format (csv/tsv/wit) whose quoted fields may hold newlines,
    or a compressed stream that can only be read from its start.
Row numbers stay unique and in input order across splits (Split.first_row), so dedup's "first in
input order" and the keys of malformed rows do not depend on how a file was cut.
"""

from __future__ import annotations

import pyarrow.parquet as pq

from common import storage
from pipeline.config import ReaderConfig
from pipeline.readers.base import Reader, Split

BYTE_SPLIT_FORMATS = ("cc3m", "yfcc100m", "jsonl")  # one record per line, no header, no quoting
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4", ".br", ".xz", ".zstd")


def plan_splits(fmt: str, path: str, cfg: ReaderConfig) -> list[Split | None]:
    """The splits of one input file in order; [None] when it is read whole."""
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
    if fmt in BYTE_SPLIT_FORMATS and not path.lower().endswith(COMPRESSED_SUFFIXES):
        size = fs.get_file_info(inner).size or 0
        if size > cfg.split_bytes:
            step = cfg.split_bytes
            return [Split("bytes", s, min(s + step, size), s) for s in range(0, size, step)]
    return [None]
