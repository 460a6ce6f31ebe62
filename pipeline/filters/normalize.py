"""Caption normalisation, before any filter: what every filter and the model see.

Steps: HTML entities and tags, mojibake repair, Unicode NFC, whitespace, truncation.
Mojibake ("CafÃ©" for "Café", UTF-8 read as Windows-1252) is repaired with ftfy, the maintained
library for exactly this (its heuristics are tested against real web text and avoid "fixing"
legitimate accented text); re-implementing them would be worse and longer.

Most web captions are plain ASCII without '&' or '<': they take a fast path (whitespace only),
because ftfy.fix_text costs ~100 us per caption and this runs on every row. Non-ASCII captions
go through ftfy only when ftfy's own mojibake detector (ftfy.badness.is_bad) fires; ftfy is
configured to repair encodings, not to restyle text (curly quotes, full-width letters and
ligatures are left as written), so the gate changes no result.
"""

from __future__ import annotations

import html
import re
import unicodedata

import ftfy
import ftfy.badness

# A tag starts with a letter or '/', so "5 < 6 and 7 > 3" is left alone.
_TAG = re.compile(r"</?[A-Za-z][^<>]{0,500}>")
_FTFY = ftfy.TextFixerConfig(
    unescape_html=False,
    uncurl_quotes=False,
    fix_character_width=False,
    fix_latin_ligatures=False,
    normalization="NFC",
    explain=False,
)
# C0/C1 control characters other than whitespace (which split() handles): dropped.
_CONTROLS = dict.fromkeys(
    c for c in [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x1C), 0x7F, *range(0x80, 0xA0)] if not chr(c).isspace()
)


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
            if ftfy.badness.is_bad(text):
                text = ftfy.fix_text(text, config=_FTFY)
            text = unicodedata.normalize("NFC", text)
        if not text.isprintable():
            text = text.translate(_CONTROLS)
        text = " ".join(text.split())  # tabs, newlines, NBSP, runs of spaces -> one space
        if len(text) > self.max_chars:
            cut = text.rfind(" ", 0, self.max_chars + 1)
            text = text[: cut if cut > self.max_chars // 2 else self.max_chars].rstrip()
        return text

    def batch(self, captions: list[str | None]) -> list[str]:
        return [self(c) for c in captions]
