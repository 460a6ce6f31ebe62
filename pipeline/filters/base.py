"""CaptionFilter base class.

A filter answers one question per caption: keep (None) or drop (a short detail string). Its
`name` is the rejection reason code (common.schemas.CAPTION_REASONS). The default `filter_batch`
loops over `filter`; filters with a cheaper batched path (fastText) override `filter_batch`.
Counting and timing are not the filter's business: CaptionPipeline owns them, once for all.

A filter may also rewrite the captions it keeps (boilerplate stripping): it sets `rewrites = True`
and implements `rewrite`, which the pipeline calls on kept captions right after the filter ran,
so every later filter sees the rewritten text.
"""

from __future__ import annotations

from typing import NamedTuple

from pipeline.config import CaptionFilterConfig


class CaptionRow(NamedTuple):
    """What a filter may know about a row besides its caption."""

    url: str | None
    width: int | None
    height: int | None


class CaptionFilter:
    name = ""          # reason code
    rewrites = False   # True: the pipeline calls rewrite() on the captions this filter keeps

    def __init__(self, cfg: CaptionFilterConfig):
        self.cfg = cfg

    def filter(self, caption: str, row: CaptionRow) -> str | None:
        raise NotImplementedError

    def filter_batch(self, captions: list[str], rows: list[CaptionRow]) -> list[str | None]:
        check = self.filter
        return [check(caption, row) for caption, row in zip(captions, rows)]

    def rewrite(self, caption: str) -> str:
        return caption
