"""YFCC100M `yfcc100m_dataset`: 25 tab-separated columns per line, no header.

Column order (0-based), from the dataset's documentation:
 0 line number, 1 photo/video id, 2 photo/video hash, 3 user NSID, 4 user nickname, 5 date taken,
 6 date uploaded, 7 capture device, 8 title, 9 description, 10 user tags, 11 machine tags,
 12 longitude, 13 latitude, 14 accuracy, 15 page URL, 16 download URL, 17 license name,
 18 license URL, 19 server id, 20 farm id, 21 secret, 22 secret original, 23 extension of original,
 24 marker (0 = photo, 1 = video).
Title and description are URL-encoded ('+' for spaces), hence unquote_plus. The file carries no
image size, so width/height stay unknown and the aspect ratio is decided after download.
"""

from __future__ import annotations

from typing import Iterator
from urllib.parse import unquote_plus

from pipeline.readers.base import Reader, Row, bad

NUM_COLUMNS = 25
TITLE, DESCRIPTION, DOWNLOAD_URL, MARKER = 8, 9, 16, 24
VIDEO = "1"


class YFCC100MReader(Reader):
    format = "yfcc100m"

    def iter_rows(self, path: str) -> Iterator[Row]:
        yield from self.split_rows(
            path, NUM_COLUMNS, f"expected {NUM_COLUMNS} tab-separated columns, got {{got}}", self._row
        )

    @staticmethod
    def _row(fields: list[str]) -> Row:
        url = fields[DOWNLOAD_URL].strip() or None
        caption = " ".join(p for p in (unquote_plus(fields[TITLE]), unquote_plus(fields[DESCRIPTION])) if p.strip())
        if fields[MARKER].strip() == VIDEO:
            # Skipped by design, still emitted so that kept + rejected = input rows.
            return bad("skipped: video", url, caption)
        if url is None:
            return bad("missing url", caption=caption)
        return Row(url, caption)
