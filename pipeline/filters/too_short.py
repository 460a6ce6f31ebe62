"""too_short: fewer than `min_words` whitespace-separated words or `min_chars` characters.

Defaults 3 words / 10 characters: the DALL-E paper drops captions that are "too short" without a
number; one or two words ("Matt Damon", "Patent Drawing") condition an image on almost nothing,
while three keep short but visual captions ("red sports car", "dew and grass").
"""

from __future__ import annotations

from pipeline.filters.base import CaptionFilter, CaptionRow


class TooShortFilter(CaptionFilter):
    name = "too_short"

    def filter(self, caption: str, row: CaptionRow) -> str | None:
        if len(caption) < self.cfg.min_chars:
            return f"{len(caption)} chars < {self.cfg.min_chars}"
        words = caption.count(" ") + 1  # normalised: single spaces, no leading/trailing space
        if words < self.cfg.min_words:
            return f"{words} words < {self.cfg.min_words}"
        return None
