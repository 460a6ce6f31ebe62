"""Stage-1 readers: one per input format, all streaming common.schemas.SOURCE_ROW tables.

fmt, files, reader = open_source("cc3m:s3://bucket/cc3m/*.tsv.gz", cfg.reader)
for path in files:
    for table in reader.read(path):   # <= cfg.reader.batch_size rows, input order
        ...
"""

from __future__ import annotations

from common import storage
from pipeline.config import ReaderConfig
from pipeline.readers.base import Reader
from pipeline.readers.cc3m import CC3MReader
from pipeline.readers.generic import CSVReader, JSONLReader, ParquetReader, TSVReader
from pipeline.readers.laion import LaionReader
from pipeline.readers.wit import WITReader
from pipeline.readers.yfcc100m import YFCC100MReader

READERS: dict[str, type[Reader]] = {
    cls.format: cls
    for cls in (CC3MReader, WITReader, YFCC100MReader, LaionReader, CSVReader, TSVReader, JSONLReader, ParquetReader)
}


def parse_spec(spec: str) -> tuple[str, str]:
    """'FORMAT:PATH_OR_GLOB' -> (format, path). The path may itself contain '://'."""
    fmt, sep, path = spec.partition(":")
    fmt = fmt.strip().lower()
    if not sep or not path or fmt not in READERS:
        known = ", ".join(sorted(READERS))
        if not sep or not path:
            raise ValueError(f"source {spec!r} is not FORMAT:PATH_OR_GLOB (formats: {known})")
        raise ValueError(f"unknown source format {fmt!r} in {spec!r}; known formats: {known}")
    return fmt, path


def open_source(spec: str, cfg: ReaderConfig) -> tuple[str, list[str], Reader]:
    """Parse a source spec, expand its glob (sorted) and build its reader.

    Raises ValueError for an unknown format or a path/glob that matches no file.
    """
    fmt, path = parse_spec(spec)
    files = storage.glob(path)
    if not files:
        raise ValueError(f"source {spec!r}: {path!r} matches no file")
    return fmt, files, READERS[fmt](cfg)


__all__ = ["READERS", "Reader", "open_source", "parse_spec"]
