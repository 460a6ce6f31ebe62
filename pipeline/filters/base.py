"""CaptionFilter base class.

A filter answers one question per caption: keep (None) or drop (a short detail string). Its
`name` is the rejection reason code (common.schemas.CAPTION_REASONS). The default `filter_batch`
loops over `filter`; filters with a cheaper batched path (fastText) override `filter_batch`.
Counting and timing are not the filter's business: CaptionPipeline owns them, once for all.

A filter may also rewrite the captions it keeps (boilerplate stripping): it sets `rewrites = True`
and implements `rewrite` (and may override `rewrite_batch`), which the pipeline calls on kept
captions right after the filter ran, so every later filter sees the rewritten text.

Speed: per-row Python costs about as much as fastText's whole prediction, so filters that can
decide most rows with one Arrow compute kernel (RE2 regex, lengths) do so in `filter_batch` and
fall back to the per-row `filter` only for the rows the kernel cannot settle.
"""

from __future__ import annotations

from typing import NamedTuple

from pipeline.config import CaptionFilterConfig


class CaptionRow(NamedTuple):
    """What a filter may know about a row besides its caption."""

    url: str | None
    width: int | None
    height: int | None


class CaptionRows:
    """Columnar, lazy view of the rows of a batch: filters that read only captions never pay for it.

    Iterating or indexing yields CaptionRow; vectorised filters read `urls`, `widths`, `heights`,
    each built on first use from the batch columns and the positions of the rows still alive.
    """

    def __init__(self, urls: list, widths: list, heights: list, positions: list[int] | None = None):
        self._columns = (urls, widths, heights)
        self._positions = positions
        self._cache: dict[int, list] = {}

    def _column(self, index: int) -> list:
        column = self._cache.get(index)
        if column is None:
            full = self._columns[index]
            column = full if self._positions is None else [full[i] for i in self._positions]
            self._cache[index] = column
        return column

    urls = property(lambda self: self._column(0))
    widths = property(lambda self: self._column(1))
    heights = property(lambda self: self._column(2))

    def __len__(self) -> int:
        return len(self._columns[0]) if self._positions is None else len(self._positions)

    def __getitem__(self, index: int) -> CaptionRow:
        return CaptionRow(self.urls[index], self.widths[index], self.heights[index])

    def __iter__(self):
        return map(CaptionRow, self.urls, self.widths, self.heights)


class CaptionFilter:
    name = ""  # reason code
    rewrites = False  # True: the pipeline calls rewrite() on the captions this filter keeps

    def __init__(self, cfg: CaptionFilterConfig):
        self.cfg = cfg

    def filter(self, caption: str, row: CaptionRow) -> str | None:
        raise NotImplementedError

    def filter_batch(self, captions: list[str], rows: "CaptionRows | list[CaptionRow]") -> list[str | None]:
        check = self.filter
        return [check(caption, row) for caption, row in zip(captions, rows, strict=True)]

    def rewrite(self, caption: str) -> str:
        return caption

    def rewrite_batch(self, captions: list[str]) -> list[str]:
        """Rewrite the captions this filter just kept (called right after filter_batch on the same batch)."""
        return [self.rewrite(c) for c in captions]
