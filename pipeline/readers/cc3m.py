"""Conceptual Captions (CC3M) TSV: `caption<TAB>url` per line, no header, no quoting."""

from __future__ import annotations

from typing import Iterator

from pipeline.readers.base import Reader, Row, bad


class CC3MReader(Reader):
    format = "cc3m"

    def iter_rows(self, path: str) -> Iterator[Row]:
        for raw in self.open_lines(path):
            line = self.decode(raw)
            if line is None:
                yield bad("undecodable bytes (not UTF-8)")
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                yield bad(f"expected 2 tab-separated columns (caption, url), got {len(fields)}")
                continue
            caption, url = fields
            url = url.strip()
            if not url:
                yield bad("missing url", caption=caption)
                continue
            yield Row(url, caption)
