"""Generic formats with configurable column names (ReaderConfig.url_column, caption_column,
width_column, height_column): CSV and TSV with a header row, JSON Lines, and parquet."""

from __future__ import annotations

import csv
import json
from typing import Iterator

from pipeline.readers.base import Reader, Row, bad, csv_records, has_surrogates, to_int
from pipeline.readers.laion import LaionReader


class CSVReader(Reader):
    """Comma-separated with a header row; standard CSV quoting (captions may contain commas)."""

    format = "csv"
    delimiter = ","

    def iter_rows(self, path: str) -> Iterator[Row]:
        cfg = self.cfg
        csv.field_size_limit(1 << 26)
        with self.open_text(path) as text:
            records = csv_records(csv.reader(text, delimiter=self.delimiter))
            header = next(records, None)
            if header is None or isinstance(header, str):
                return
            index = {name.strip(): i for i, name in enumerate(header)}
            missing = [c for c in (cfg.url_column, cfg.caption_column) if c not in index]
            for fields in records:
                if isinstance(fields, str):
                    yield bad(fields)
                    continue
                if missing:
                    yield bad(f"header lacks column(s) {missing}")
                    continue
                if len(fields) != len(header):
                    yield bad(f"expected {len(header)} columns, got {len(fields)}")
                    continue
                if any(has_surrogates(f) for f in fields):
                    yield bad("undecodable bytes (not UTF-8)")
                    continue
                yield _row(cfg, lambda name: fields[index[name]] if name in index else None)


class TSVReader(CSVReader):
    format = "tsv"
    delimiter = "\t"


class JSONLReader(Reader):
    """One JSON object per line."""

    format = "jsonl"

    def iter_rows(self, path: str) -> Iterator[Row]:
        for raw in self.open_lines(path):
            line = self.decode(raw)
            if line is None:
                yield bad("undecodable bytes (not UTF-8)")
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                yield bad(f"bad JSON: {exc.msg}"[:120])
                continue
            if not isinstance(obj, dict):
                yield bad(f"JSON line is a {type(obj).__name__}, not an object")
                continue
            yield _row(self.cfg, obj.get)


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
