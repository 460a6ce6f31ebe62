"""too_short: fewer than `min_words` words or `min_chars` characters.

A word has a letter: numbers, sizes and years are not words ("Sunshine (DVD, 2008)", "Lawless
Range (2016)", "bathroom project 5" say two things). Words are separated by spaces, '-' and '_':
a slug or file name ("manchester-united-celebrates-goal-in-front-of-city-players",
"old_couple_in_tracht") is one "word" to a space count but says as much as the sentence it
spells (2.4% of the LAION sample was dropped for it); "Spider-Man" is two words.

Defaults 3 words / 10 characters: the DALL-E paper drops captions that are "too short" without a
number; one or two words ("Matt Damon", "Patent Drawing") condition an image on almost nothing,
while three keep short but visual captions ("red sports car", "dew and grass").
"""

from __future__ import annotations

import re

from pipeline.filters.base import CaptionFilter, CaptionRow

_WORD = re.compile(r"[^\s_-]*[^\W\d_][^\s_-]*")  # a run between spaces, '-' and '_' with a letter in it


class TooShortFilter(CaptionFilter):
    name = "too_short"

    def filter(self, caption: str, row: CaptionRow) -> str | None:
        if len(caption) < self.cfg.min_chars:
            return f"{len(caption)} chars < {self.cfg.min_chars}"
        words = caption.count(" ") + 1  # normalised: single spaces, no leading/trailing space
        if words < 3 * self.cfg.min_words:  # only a short caption can fall below min_words on a closer count
            words = len(_WORD.findall(caption))
        if words < self.cfg.min_words:
            return f"{words} words < {self.cfg.min_words}"
        return None
