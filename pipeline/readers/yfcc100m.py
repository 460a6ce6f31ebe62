"""YFCC100M metadata, no header, tab-separated, in either of its two published layouts.

The layout is detected per line from the column count (25 or 23), so both kinds of file, and even
a concatenation of both, read without a flag:

* 25 columns, `yfcc100m_dataset` as on the AWS open-data bucket (0-based):
  0 line number, 1 photo/video id, 2 photo/video hash, 3 user NSID, 4 user nickname, 5 date taken,
  6 date uploaded, 7 capture device, 8 title, 9 description, 10 user tags, 11 machine tags,
  12 longitude, 13 latitude, 14 accuracy, 15 page URL, 16 download URL, 17 license name,
  18 license URL, 19 server id, 20 farm id, 21 secret, 22 secret original, 23 extension of original,
  24 marker (0 = photo, 1 = video).
* 23 columns, the Yahoo Webscope split files (`yfcc100m_dataset-0` ... `-9`): the same columns
  without the line number (0) and the hash (2), so title 6, description 7, download URL 14,
  marker 22.

Title and description are URL-encoded ('+' for spaces), hence unquote_plus. The file carries no
image size, so width/height stay unknown and the aspect ratio is decided after download. Videos
are rejected with their own reason, `video` (common.schemas.READER_SKIP_REASONS): they are not bad
input, and counting them as `malformed` hid real malformed lines among 0.8M videos.
"""

from __future__ import annotations

from typing import Iterator
from urllib.parse import unquote_plus

from pipeline.readers.base import Reader, Row, bad

# column count -> (title, description, download URL, marker)
LAYOUTS = {25: (8, 9, 16, 24), 23: (6, 7, 14, 22)}
VIDEO = "1"


class YFCC100MReader(Reader):
    format = "yfcc100m"

    def iter_rows(self, path: str) -> Iterator[Row]:
        yield from self.split_rows(path, LAYOUTS, "expected 25 or 23 tab-separated columns, got {got}", self._row)

    @staticmethod
    def _row(fields: list[str]) -> Row:
        title, description, download_url, marker = LAYOUTS[len(fields)]
        url = fields[download_url].strip() or None
        caption = " ".join(p for p in (unquote_plus(fields[title]), unquote_plus(fields[description])) if p.strip())
        if fields[marker].strip() == VIDEO:
            # Skipped by design, still emitted so that kept + rejected = input rows.
            return bad("video: marker column = 1", url, caption)
        if url is None:
            return bad("missing url", caption=caption)
        return Row(url, caption)
