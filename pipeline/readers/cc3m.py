"""Conceptual Captions (CC3M) TSV: `caption<TAB>url` per line, no header, no quoting."""

from __future__ import annotations

from typing import Iterator

from pipeline.readers.base import Reader, Row, bad


class CC3MReader(Reader):
    format = "cc3m"

    def iter_rows(self, path: str) -> Iterator[Row]:
        yield from self.split_rows(path, 2, "expected 2 tab-separated columns (caption, url), got {got}", self._row)

    @staticmethod
    def _row(fields: list[str]) -> Row:
        caption, url = fields
        url = url.strip()
        if not url:
            return bad("missing url", caption=caption)
        return Row(url, caption)
