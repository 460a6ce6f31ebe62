"""aspect_ratio: width/height from the source metadata outside [min, max] (inclusive).

The DALL-E paper discards images whose aspect ratio is not in [1/2, 2]. Sources that carry the
original size (WIT, LAION) let us drop such rows before spending bandwidth on them; rows without
a known size are kept here and decided after download (same reason code, by the download stage).
"""

from __future__ import annotations

from pipeline.filters.base import CaptionFilter, CaptionRow


class AspectRatioFilter(CaptionFilter):
    name = "aspect_ratio"

    def filter(self, caption: str, row: CaptionRow) -> str | None:
        width, height = row.width, row.height
        if not width or not height or width <= 0 or height <= 0:
            return None  # unknown: decided after download
        ratio = width / height
        if self.cfg.min_aspect_ratio <= ratio <= self.cfg.max_aspect_ratio:
            return None
        return (
            f"{width}x{height} ratio {ratio:.3g} outside [{self.cfg.min_aspect_ratio:g}, {self.cfg.max_aspect_ratio:g}]"
        )

    def filter_batch(self, captions: list[str], rows) -> list[str | None]:
        widths = rows.widths if hasattr(rows, "widths") else [r.width for r in rows]
        heights = rows.heights if hasattr(rows, "heights") else [r.height for r in rows]
        out: list[str | None] = [None] * len(widths)
        check = self.filter
        for j, (width, height) in enumerate(zip(widths, heights, strict=True)):
            if width and height:
                out[j] = check("", CaptionRow(None, width, height))
        return out
