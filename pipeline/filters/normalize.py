"""Caption normalisation, before any filter: what every filter and the model see.

Steps: HTML entities and tags, mojibake repair, Unicode NFC, whitespace, truncation.
Mojibake ("CafÃ©" for "Café", UTF-8 read as Windows-1252) is repaired with ftfy, the maintained
library for exactly this (its heuristics are tested against real web text and avoid "fixing"
legitimate accented text); re-implementing them would be worse and longer.

Most web captions are plain ASCII without '&' or '<': they take a fast path (whitespace only),
because ftfy costs tens of microseconds per caption and this runs on every row.
"""

from __future__ import annotations

import html
import re
import unicodedata

import ftfy

# A tag starts with a letter or '/', so "5 < 6 and 7 > 3" is left alone.
_TAG = re.compile(r"</?[A-Za-z][^<>]{0,500}>")
_FTFY = ftfy.TextFixerConfig(unescape_html=False, normalization="NFC", explain=False)


class Normalizer:
    def __init__(self, max_chars: int = 1024):
        self.max_chars = max_chars

    def __call__(self, caption: str | None) -> str:
        if not caption:
            return ""
        text = caption
        if "&" in text or "<" in text:
            # Unescape first: "&lt;i&gt;" in alt texts is an escaped tag, removed below.
            text = _TAG.sub(" ", html.unescape(text))
        if not text.isascii():
            text = unicodedata.normalize("NFC", ftfy.fix_text(text, config=_FTFY))
        text = " ".join(text.split())  # tabs, newlines, NBSP, runs of spaces -> one space
        if len(text) > self.max_chars:
            cut = text.rfind(" ", 0, self.max_chars + 1)
            text = text[: cut if cut > self.max_chars // 2 else self.max_chars].rstrip()
        return text

    def batch(self, captions: list[str | None]) -> list[str]:
        return [self(c) for c in captions]
