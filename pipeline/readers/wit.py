"""WIT (Wikipedia-based Image Text) TSV(.gz) with its header row.

Columns (by name, from the header): language, page_url, image_url, page_title, section_title,
hierarchical_section_title, caption_reference_description, caption_attribution_description,
caption_alt_text_description, mime_type, original_height, original_width, is_main_image,
attribution_passes_lang_id, page_changed_recently, context_page_description,
context_section_description. The files are written with pandas' to_csv, so a field that contains
a quote or tab is quoted: each line is parsed with the csv module (quoting never spans lines, see
readers/base.py), not split().

Caption rule (docs/filters.md, "WIT caption rule"). The reference and alt texts are written in the
page's `language`; the attribution is the Commons file description, often English whatever the
page (`attribution_passes_lang_id` = false says it is NOT in the page's language). ~85% of WIT rows
come from non-English pages, so the rule prefers English text where the row has some:
 * page language `en` (or no `language` column):
   1. caption_reference_description - the caption printed under the image in the article, written
      by an editor for this image in this context: the closest to DALL-E's "caption" notion;
   2. else caption_alt_text_description - accessibility text describing what the image shows;
   3. else the attribution (below).
 * any other page language:
   1. the attribution's `English:` part when it has one;
   2. else the attribution when attribution_passes_lang_id is false (it is in another language than
      the page's: on Commons that is nearly always English); the non_english filter still checks it;
   3. else reference, alt text, attribution as above: page-language text that non_english drops.
Attribution text: multilingual descriptions ("English: A bridge ... Deutsch: Eine Brücke ...") keep
only the English part when marked, and license boilerplate ("Public domain", "CC BY-SA 4.0", "Own
work", ...) is removed.
"""

from __future__ import annotations

import re
from typing import Iterator

from pipeline.readers.base import Reader, Row, bad, to_int

URL = "image_url"
REFERENCE, ALT_TEXT, ATTRIBUTION = (
    "caption_reference_description",
    "caption_alt_text_description",
    "caption_attribution_description",
)
WIDTH, HEIGHT = "original_width", "original_height"
LANGUAGE, PASSES_LANG_ID = "language", "attribution_passes_lang_id"
REQUIRED = (URL, REFERENCE, ATTRIBUTION, ALT_TEXT)

# Language labels of multilingual Wikimedia Commons descriptions ({{en|...}} renders "English: ").
_LANGUAGES = (
    "Deutsch",
    "Français",
    "Español",
    "Italiano",
    "Nederlands",
    "Polski",
    "Português",
    "Русский",
    "Українська",
    "日本語",
    "中文",
    "한국어",
    "Català",
    "Čeština",
    "Dansk",
    "Suomi",
    "Svenska",
    "Norsk bokmål",
    "Norsk",
    "Magyar",
    "Türkçe",
    "Ελληνικά",
    "العربية",
    "עברית",
    "فارسی",
    "Română",
    "Slovenčina",
    "Slovenščina",
    "Hrvatski",
    "Srpski",
    "Српски",
    "Български",
    "Eesti",
    "Latviešu",
    "Lietuvių",
    "Bahasa Indonesia",
    "Bahasa Melayu",
    "Tiếng Việt",
    "ไทย",
    "हिन्दी",
    "Esperanto",
    "Galego",
    "Euskara",
    "Cymraeg",
    "Gaeilge",
    "Latina",
    "Afrikaans",
)
# "English: ..." up to the next "<Language>:" label (French typography puts a space before ':').
_ENGLISH = re.compile(r"(?:^|\s)English\s?:\s*(.*?)(?=\s(?:" + "|".join(map(re.escape, _LANGUAGES)) + r")\s?:|$)", re.S)
_LICENSE = re.compile(
    r"\b(?:public domain|own work|cc[- ]by(?:[- ]sa)?(?:[- ]\d\.\d)?|cc0|gfdl|"
    r"creative commons[^.;]*|attribution[- ]share ?alike[^.;]*|all rights reserved|"
    r"licensed under[^.;]*)\b[.;,]?",
    re.I,
)


def english_part(text: str) -> str | None:
    """The `English:` part of a multilingual Commons description, or None when it has none."""
    match = _ENGLISH.search(text)
    return match.group(1) if match else None


def attribution_caption(text: str) -> str:
    english = english_part(text)
    if english is not None:
        text = english
    return " ".join(_LICENSE.sub(" ", text).split()).strip(" ,;:-")


def choose_caption(
    reference: str, alt_text: str, attribution: str, language: str = "en", passes_lang_id: str = ""
) -> str:
    """The caption of a WIT row by the rule in the module docstring."""
    attribution = attribution or ""
    if language.strip().lower() not in ("en", ""):
        english = english_part(attribution)
        if english is not None and attribution_caption(english):
            return attribution_caption(english)
        if passes_lang_id.strip().lower() == "false" and attribution_caption(attribution):
            return attribution_caption(attribution)
    for candidate in (reference, alt_text):
        if candidate and candidate.strip():
            return candidate.strip()
    return attribution_caption(attribution)


class WITReader(Reader):
    format = "wit"
    header_lines = 1

    def iter_rows(self, path: str) -> Iterator[Row]:
        yield from self.header_rows(path, "\t", REQUIRED, "WIT header lacks {missing}", self._row)

    @staticmethod
    def _row(index: dict[str, int], fields: list[str]) -> Row:
        url = fields[index[URL]].strip()
        caption = choose_caption(
            fields[index[REFERENCE]],
            fields[index[ALT_TEXT]],
            fields[index[ATTRIBUTION]],
            fields[index[LANGUAGE]] if LANGUAGE in index else "en",
            fields[index[PASSES_LANG_ID]] if PASSES_LANG_ID in index else "",
        )
        if not url:
            return bad("missing url", caption=caption)
        width = to_int(fields[index[WIDTH]]) if WIDTH in index else None
        height = to_int(fields[index[HEIGHT]]) if HEIGHT in index else None
        return Row(url, caption, width, height)
