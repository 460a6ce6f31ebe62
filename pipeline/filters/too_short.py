"""too_short: fewer than `min_words` words or `min_chars` characters.

Words are separated by spaces, or, in a caption with fewer spaced words than that, by '-' and '_'
too: a slug or file name ("manchester-united-celebrates-goal-in-front-of-city-players",
"old_couple_in_tracht") is one "word" to the space count but says as much as the sentence it
spells (2.4% of the LAION sample was dropped for it). Hyphenated pairs ("Spider-Man") still count
as the two words they are, which keeps "Spider-Man" alone too short.

Defaults 3 words / 10 characters: the DALL-E paper drops captions that are "too short" without a
number; one or two words ("Matt Damon", "Patent Drawing") condition an image on almost nothing,
while three keep short but visual captions ("red sports car", "dew and grass").
"""

from __future__ import annotations

import re

from pipeline.filters.base import CaptionFilter, CaptionRow

_SLUG_SEPARATORS = re.compile(r"[\s_-]+")


class TooShortFilter(CaptionFilter):
    name = "too_short"

    def filter(self, caption: str, row: CaptionRow) -> str | None:
        if len(caption) < self.cfg.min_chars:
            return f"{len(caption)} chars < {self.cfg.min_chars}"
        words = caption.count(" ") + 1  # normalised: single spaces, no leading/trailing space
        if words < self.cfg.min_words and ("-" in caption or "_" in caption):
            words = sum(1 for part in _SLUG_SEPARATORS.split(caption) if part)  # a slug or file name
        if words < self.cfg.min_words:
            return f"{words} words < {self.cfg.min_words}"
        return None
