"""Generic formats with configurable column names (ReaderConfig.url_column, caption_column,
width_column, height_column): CSV and TSV with a header row, JSON Lines, and parquet."""

from __future__ import annotations

import json
from typing import Iterator

from pipeline.readers.base import Reader, Row, bad, to_int
from pipeline.readers.laion import LaionReader


class CSVReader(Reader):
    """Comma-separated with a header row; RFC 4180 quoting within a line (captions may contain commas).

    A quoted field left open at the end of its line (a field spanning lines, or a stray opening
    quote) makes that line one malformed row, and the next line is read as a record of its own:
    one line never swallows the ones after it.
    """

    format = "csv"
    delimiter = ","
    quoting = True
    header_lines = 1

    def iter_rows(self, path: str) -> Iterator[Row]:
        cfg = self.cfg
        yield from self.header_rows(
            path,
            self.delimiter,
            (cfg.url_column, cfg.caption_column),
            "header lacks column(s) {missing}",
            lambda index, fields: _row(cfg, lambda name: fields[index[name]] if name in index else None),
            quoting=self.quoting,
        )


class TSVReader(CSVReader):
    """IANA text/tab-separated-values with a header row: a line is a row, no quoting (quotes are text)."""

    format = "tsv"
    delimiter = "\t"
    quoting = False


class JSONLReader(Reader):
    """One JSON object per line."""

    format = "jsonl"

    def iter_rows(self, path: str) -> Iterator[Row]:
        yield from self.line_rows(path, self._parse)

    def _parse(self, line: str) -> Row:
        try:
            obj = json.loads(line)
        except ValueError as exc:
            return bad(f"bad JSON: {exc.msg}"[:120])
        if not isinstance(obj, dict):
            return bad(f"JSON line is a {type(obj).__name__}, not an object")
        return _row(self.cfg, obj.get)


class ParquetReader(LaionReader):
    """Parquet with the configured column names (columnar, like the LAION reader)."""

    format = "parquet"

    def columns(self) -> tuple[str, str, str | None, str | None]:
        cfg = self.cfg
        return cfg.url_column, cfg.caption_column, cfg.width_column or None, cfg.height_column or None


def _row(cfg, get) -> Row:
    url, caption = get(cfg.url_column), get(cfg.caption_column)
    if url is not None and not isinstance(url, str):
        return bad(f"{cfg.url_column} is not a string")
    if caption is not None and not isinstance(caption, str):
        caption = str(caption)
    url = (url or "").strip()
    if not url:
        return bad(f"missing {cfg.url_column}", caption=caption)
    if caption is None:
        return bad(f"missing {cfg.caption_column}", url=url)
    width = to_int(get(cfg.width_column)) if cfg.width_column else None
    height = to_int(get(cfg.height_column)) if cfg.height_column else None
    return Row(url, caption, width, height)
