"""invalid_url: only http(s) URLs with a host and at most `max_url_chars` characters pass.

This is also a security boundary: file://, ftp://, data:, javascript: and friends are rejected
here, before anything could try to fetch them. (Private/loopback addresses are the download
stage's job: they need DNS resolution, see blocked_address.)
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.filters.base import CaptionFilter, CaptionRow

_ALLOWED_SCHEMES = ("http", "https")
# Control characters (tab, newline, NUL...) are never part of a URL. Plain spaces are: scraped URLs
# often carry unescaped spaces in their path (LAION has them) and HTTP clients quote them.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# URLs this RE2 pattern matches are certainly valid (plain host, no port or userinfo, no control
# characters); only the others go through urlsplit one by one.
_PLAIN_HTTP_RE2 = r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.-]+(?:[/?#][^\x00-\x1f\x7f]*)?$"


class InvalidUrlFilter(CaptionFilter):
    name = "invalid_url"

    def filter(self, caption: str, row: CaptionRow) -> str | None:
        url = row.url
        if not url:
            return "empty url"
        if len(url) > self.cfg.max_url_chars:
            return f"url has {len(url)} chars > {self.cfg.max_url_chars}"
        if _CONTROL.search(url):
            return "control character in url"
        try:
            parts = urlsplit(url)
            host = parts.hostname
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError as exc:
            return f"unparsable url: {exc}"[:120]
        scheme = parts.scheme.lower()
        if scheme not in _ALLOWED_SCHEMES:
            return f"scheme {scheme or 'missing'!r} not allowed"
        if not host or " " in host:
            return "url has no valid host"
        return None

    def filter_batch(self, captions: list[str], rows) -> list[str | None]:
        urls = rows.urls if hasattr(rows, "urls") else [r.url for r in rows]
        out: list[str | None] = [None] * len(urls)
        if not urls:
            return out
        array = pa.array(urls, pa.string())
        plain = pc.and_(
            pc.match_substring_regex(array, _PLAIN_HTTP_RE2),
            pc.less_equal(pc.utf8_length(array), self.cfg.max_url_chars),
        )
        check = self.filter
        for j in np.flatnonzero(~pc.fill_null(plain, False).to_numpy(zero_copy_only=False)).tolist():
            out[j] = check("", CaptionRow(urls[j], None, None))
        return out
