"""WIT (Wikipedia-based Image Text) TSV(.gz) with its header row.

Columns (by name, from the header): language, page_url, image_url, page_title, section_title,
hierarchical_section_title, caption_reference_description, caption_attribution_description,
caption_alt_text_description, mime_type, original_height, original_width, is_main_image,
attribution_passes_lang_id, page_changed_recently, context_page_description,
context_section_description. The files are written with pandas' to_csv, so a field that contains
a quote or tab is quoted: parse with the csv module, not split().

Caption rule (docs/filters.md, "WIT caption"):
 1. caption_reference_description - the caption printed under the image in the article, written
    by an editor for this image in this context: the most descriptive and the closest to DALL-E's
    "caption" notion.
 2. else caption_alt_text_description - accessibility text describing what the image shows.
 3. else caption_attribution_description - the Commons file description. It is often multilingual
    ("English: A bridge ... Deutsch: Eine Brücke ..."): keep only the English part when marked,
    and drop license boilerplate ("Public domain", "CC BY-SA 4.0", "Own work", ...).
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


def attribution_caption(text: str) -> str:
    match = _ENGLISH.search(text)
    if match:
        text = match.group(1)
    return " ".join(_LICENSE.sub(" ", text).split()).strip(" ,;:-")


def choose_caption(reference: str, alt_text: str, attribution: str) -> str:
    for candidate in (reference, alt_text):
        if candidate and candidate.strip():
            return candidate.strip()
    return attribution_caption(attribution or "")


class WITReader(Reader):
    format = "wit"

    def iter_rows(self, path: str) -> Iterator[Row]:
        yield from self.header_rows(path, "\t", REQUIRED, "WIT header lacks {missing}", self._row)

    @staticmethod
    def _row(index: dict[str, int], fields: list[str]) -> Row:
        url = fields[index[URL]].strip()
        caption = choose_caption(fields[index[REFERENCE]], fields[index[ALT_TEXT]], fields[index[ATTRIBUTION]])
        if not url:
            return bad("missing url", caption=caption)
        width = to_int(fields[index[WIDTH]]) if WIDTH in index else None
        height = to_int(fields[index[HEIGHT]]) if HEIGHT in index else None
        return Row(url, caption, width, height)
