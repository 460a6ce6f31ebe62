"""LAION metadata parquet: URL, TEXT and optionally WIDTH, HEIGHT (absent or null = unknown size)."""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from common import storage
from pipeline.readers.base import Reader, columnar_source_rows

URL, TEXT, WIDTH, HEIGHT = "URL", "TEXT", "WIDTH", "HEIGHT"


class LaionReader(Reader):
    format = "laion"
    url_column, caption_column, width_column, height_column = URL, TEXT, WIDTH, HEIGHT

    def columns(self) -> tuple[str, str, str | None, str | None]:
        return self.url_column, self.caption_column, self.width_column, self.height_column

    def iter_tables(self, path: str) -> Iterator[pa.Table]:
        url, caption, width, height = self.columns()
        fs, inner = storage.resolve(path)
        with fs.open_input_file(inner) as fh:  # reads only the footer
            present = set(pq.ParquetFile(fh).schema_arrow.names)
        wanted = [c for c in (url, caption, width, height) if c and c in present]
        for batch in self.parquet_batches(path, wanted):  # the whole file, or this reader's split
            yield columnar_source_rows(batch, url, caption, width, height)
