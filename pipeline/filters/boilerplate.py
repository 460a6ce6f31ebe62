"""boilerplate: drop captions that are MAINLY boilerplate; strip it from the ones kept.

The DALL-E paper drops captions "that consist primarily of boilerplate phrases such as
'photographed on <date>', where <date> matches various formats for dates". 'Mainly' is made
measurable: remove every boilerplate span, count the descriptive words left (tokens with a letter
that are not generic words like "image"/"photo"), drop when fewer than
`boilerplate_min_remaining_words` remain. A caption with boilerplate plus a real description is
kept, and with `strip_boilerplate` (default) it is stored WITHOUT the spans: file names, URLs,
dates and "Royalty Free Stock Photo" describe nothing visible, and leaving them in would teach
the model to map such strings to images (docs/filters.md, "boilerplate").

Generic words and numbers are NOT stripped ("A photo of a cake", "iPhone 7" stay intact): they
only do not count as description.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.filters.base import CaptionFilter, CaptionRow

_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_WEEKDAY = r"(?:(?:mon|tues?|wed(?:nes)?|thu(?:rs)?|fri|sat(?:ur)?|sun)(?:day)?\.?,?\s+)?"
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
_YEAR = r"(?:19|20)\d{2}"
_TIME = r"(?:,?\s*(?:at\s+)?\d{1,2}[:.]\d{2}(?:[:.]\d{2})?(?:\s*[ap]\.?m\.?)?)?"
# Full dates only (with a day): "Marvel June 2014" or "Ebony December 1962" name an issue, not a
# timestamp. The lookarounds keep part numbers like "2200/0.8/140" from looking like dates.
_DATE_CORE = (
    _WEEKDAY
    + r"(?:"
    + _YEAR
    + r"[-/.:]\d{1,2}[-/.:]\d{1,2}"  # 2015-06-14, EXIF 2015:06:14
    # 14/06/2015, 6.14.15, 14-06-2015; NOT 8-10-12: hyphenated with a 2-digit "year" is a size range
    + r"|\d{1,2}/\d{1,2}/(?:"
    + _YEAR
    + r"|\d{2})|\d{1,2}\.\d{1,2}\.(?:"
    + _YEAR
    + r"|\d{2})|\d{1,2}-\d{1,2}-"
    + _YEAR
    + r"|"
    + _DAY
    + r"\s+(?:of\s+)?"
    + _MONTH
    + r",?\s+"
    + _YEAR  # 14 June 2015
    + r"|"
    + _MONTH
    + r"\s+"
    + _DAY
    + r",?\s+"
    + _YEAR  # June 14, 2015
    + r")"
    + _TIME
)
_DATE = r"(?<![\w/.-])" + _DATE_CORE + r"(?!\w|[/-]\d|\.\d)"

_VERBS = (
    "photographed",
    "taken",
    "uploaded",
    "posted",
    "shot",
    "captured",
    "added",
    "created",
    "published",
    "submitted",
    "recorded",
    "scanned",
)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_EXTENSIONS = (
    "jpg",
    "jpeg",
    "png",
    "gif",
    "bmp",
    "tif",
    "tiff",
    "webp",
    "heic",
    "raw",
    "cr2",
    "nef",
    "dng",
    "arw",
    "psd",
    "svg",
    "eps",
    "mp4",
    "mov",
    "avi",
)
_TLDS = ("com", "net", "org", "info", "biz", "co.uk", "de", "fr", "jp", "ru", "io", "tv", "us")
# Every full date has a numeric d/m/y form or a month name next to a number: a cheap test before
# the costly date regex (a bare year such as "2011 Ford F-250" does not open it).
_MONTH_GATE = "(?:" + "|".join(_MONTHS) + ")"
_DATE_GATE = re.compile(
    r"\d[-/.:]\d\d?[-/.:]\d|" + _MONTH_GATE + r"[a-z]*\.?,?\s+\d|\d(?:st|nd|rd|th)?\s+(?:of\s+)?" + _MONTH_GATE, re.I
)

# (name, pattern, substrings, gate). The name ends up in the rejection detail. A pattern only runs
# when one of its substrings occurs in the lower-cased caption and its gate regex (if any) matches:
# running every regex on every caption cost ~130 us/caption, more than fastText itself.
_SPANS = [
    ("date_phrase", r"\b(?:" + "|".join(_VERBS) + r")\s+(?:on|in|at)?\s*" + _DATE, _VERBS, _DATE_GATE),
    ("date", r"(?:\b(?:on|in|at|from|dated)\s+)?" + _DATE, (), _DATE_GATE),
    ("url", r"\b(?:https?|ftp)://\S+|\bwww\.\S+", ("://", "www."), None),
    (
        "file_name",
        r"[^\s/\\]+\.(?:jpe?g|png|gif|bmp|tiff?|webp|heic|raw|cr2|nef|dng|arw|psd|svg|eps|mp4|mov|avi)\b",
        tuple("." + e for e in _EXTENSIONS),
        None,
    ),
    (
        "camera_file",
        r"\b(?:img|dsc[nf]?|pict|gopr|dji|sam|cimg|pano|mvc|dcim|imag|vid)[-_]?\d{3,}(?:[-_]\w+)?",
        ("img", "dsc", "pict", "gopr", "dji", "sam", "cimg", "pano", "mvc", "dcim", "imag", "vid"),
        re.compile(r"\d{3}"),
    ),
    ("camera_number", r"(?<!\w)(?:p\d{7}|\d{3}_\d{4})(?!\w)", (), re.compile(r"\d{3}[_\d]\d{3}")),
    (
        "domain",
        r"\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:" + "|".join(t.replace(".", r"\.") for t in _TLDS) + r")\b",
        tuple("." + t for t in _TLDS),
        None,
    ),
    ("hashtag", r"(?<![\w&])#[^\W\d]\w*|(?<![\w.])@\w+", ("#", "@"), None),
    # "#7911579"; "Royalty Free Stock Photo - 13836925": a bare stock number closing the caption
    ("stock_id", r"(?<!\w)#\d{5,}|\s[-–—|]\s*\d{6,}$", ("#", "-", "–", "—", "|"), re.compile(r"#\d{5}|\d{6}$")),
    (
        "photo_credit",
        r"\((?:AP|AFP|EPA|Reuters|Getty Images)\b[^()]{0,80}\)|\bREUTERS/[^\s.,;]+(?:[ /][A-Z][^\s.,;]*)*",
        ("(ap", "(afp", "(epa", "(reuters", "(getty", "reuters/"),
        None,
    ),
    (
        "ui_text",
        r"\bclick (?:here )?(?:to|for) (?:enlarge|zoom|view|see)(?: (?:the )?(?:larger|full)(?:[- ]size)?"
        r"(?: image| version| photo| picture)?)?|\bview (?:larger|full[- ]size)(?: image| version| photo)?"
        r"|\bimage is loading\b|\b(?:image|photo) may contain:?[^.|]*"
        # a placeholder only when it stands alone: "No Description yet for this red barn" is a sentence
        r"|\bno (?:title|description)(?: available| yet)?(?=\s*(?:$|[|:\-–—,;.)\]]))"
        r"|\buntitled\b|%name\b|\b(?:image|photo|picture) (?:not )?available\b",
        (
            "click",
            "view larger",
            "view full",
            "loading",
            "may contain",
            "no title",
            "no description",
            "untitled",
            "%name",
            "available",
        ),
        None,
    ),
    (
        "stock_credit",
        r"\broyalty[- ]free\b|\bstock[- ]?(?:photo(?:graphy|s)?|images?|footage|vectors?|illustrations?|"
        r"fotografie|foto|pictures?|vektorgrafik)\b|\bstockfoto\b|\bvetorial stock\b"
        r"|\bvector (?:image|illustration|graphic|clip ?art)s?\b",
        ("royalty", "stock", "vetorial", "vector"),
        None,
    ),
    # "(photo: Al Jazeera English, CC: BY 2.0)", "(Image source: Wikimedia)": a credit in brackets
    (
        "credit",
        r"\((?:photo|image|picture|foto|credit|source)s?(?: (?:by|credit|source))?\s*[:/][^()]{0,120}\)",
        ("(photo", "(image", "(picture", "(foto", "(credit", "(source"),
        None,
    ),
    ("license", r"\bcc[:\s-]*by(?:[\s-]*(?:sa|nd|nc))*(?:[\s-]*\d\.\d)?\b", ("cc",), re.compile(r"(?i)cc[:\s-]*by")),
    # "Haleakala, photo by Wendy Osher.": a credit names someone (capitalised); "photo by the lake" stays
    (
        "photo_by",
        r"\b(?:photo(?:graph)?|image|picture)s? (?:by|courtesy of)\s+"
        r"(?-i:[A-Z])[\w.'-]*(?:\s+(?-i:[A-Z])[\w.'-]*){0,3}",
        ("photo by", "image by", "picture by", "photograph by", "photos by", "courtesy of"),
        None,
    ),
    # "© Gail Harker - hand woven papers": the owner's name (capitalised words or one token), not what follows
    (
        "copyright",
        r"(?:©|\bcopyright\b)(?:\s*\d{4})?\s*:?\s*(?:(?-i:[A-Z])[\w.'-]*(?:\s+(?-i:[A-Z])[\w.'-]*){0,3}|[\w.-]+)?",
        ("©", "copyright"),
        None,
    ),
    # "Artist: naumoid", "Photographer: Jane Doe": the uploader, up to the next separator
    (
        "artist_credit",
        r"\b(?:artist|photographer|author|credit|uploaded by|photo by|image by)\s*:\s*[^,;|()]{1,60}",
        ("artist", "photographer", "author", "credit", "uploaded by", "photo by", "image by"),
        re.compile(r":"),
    ),
    # "Code: 400-04986850", "MLS# 71895205", "SKU 1234567": catalogue and listing numbers (5+ digits)
    (
        "item_code",
        r"(?:\b(?:mls|sku|code|item|ref|lot|id)|№)\s*(?:#|no\.?|nr\.?)?\s*[:#]?\s*[\w-]*\d{5,}[\w-]*",
        ("mls", "sku", "code", "item", "ref", "lot", "id", "№"),
        re.compile(r"\d{5}"),
    ),
]
_PATTERNS = [(name, re.compile(pattern, re.I), substrings, gate) for name, pattern, substrings, gate in _SPANS]
# All trigger substrings in ONE regex over the lower-cased caption: one C-level scan per caption
# instead of ~90 Python-level `in` tests (which alone cost more than fastText's prediction).
_TRIGGERS: dict[str, list[int]] = {}
for _index, (_, _, _substrings, _) in enumerate(_SPANS):
    for _s in _substrings:
        _TRIGGERS.setdefault(_s, []).append(_index)
_TRIGGER_RE = re.compile("|".join(re.escape(t) for t in sorted(_TRIGGERS, key=len, reverse=True)))
_UNTRIGGERED = [i for i, (_, _, substrings, _) in enumerate(_SPANS) if not substrings]


def find_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, pattern name) of every boilerplate span, possibly overlapping."""
    candidates = set(_UNTRIGGERED)
    for hit in _TRIGGER_RE.findall(text.lower()):
        candidates.update(_TRIGGERS[hit])
    spans = []
    for index in sorted(candidates):
        name, regex, _, gate = _PATTERNS[index]
        if gate is not None and gate.search(text) is None:
            continue
        spans.extend((m.start(), m.end(), name) for m in regex.finditer(text) if m.end() > m.start())
    return spans


_GENERIC_WORDS = frozenset(
    "image images photo photos photograph photographs picture pictures pic pics img foto fotos "
    "thumbnail screenshot screenshots untitled stock file vector vectors illustration illustrations clipart".split()
)
_GENERIC_RE = re.compile(r"\b(?:" + "|".join(sorted(_GENERIC_WORDS)) + r")\b", re.I)
_LETTER = re.compile(r"[^\W\d_]")
_SLUG_SPLIT = re.compile(r"[\s_]+|(?<=\w)-+(?=\w)")
_PUNCT = "\"'()[]{}<>.,;:!?-–—|/*~+&"
# Separators left dangling once a span is gone: "Sky | Stock Foto" -> "Sky |" -> "Sky".
_DANGLING = re.compile(r"(?:\s*[-–—|:,;/~+])+\s*$|^\s*(?:[-–—|:,;/~+]\s*)+|\(\s*\)|\[\s*\]")
_SEPARATOR_RUN = re.compile(r"\s+[-–—|:,;/]\s+(?=[-–—|:,;/]\s)")
_PUNCT_RUN = re.compile(r"\s*([.,;:])(?:\s+[.,;:])+")  # "UK. . Geri" -> "UK. Geri"
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:])(?=\s|$)")  # "Kolkata . REUTERS" -> "Kolkata. REUTERS"
# A preposition orphaned at either end: "... Online at johnlewis.com", "Stock Illustration of ...".
_ORPHAN = re.compile(r"^(?:of|at|by|on|in|from|for)\s+|\s+(?:of|at|by|on|in|from|for)$", re.I)


# One RE2 pattern (Arrow's regex engine, run in C++ over the whole lower-cased column) matching
# every caption a span pattern could match. It is deliberately loose and made of literals, which
# RE2 scans with a small DFA: the exact patterns (lookarounds, \b, big date alternations) made RE2
# fall back to its slow engine. Rows it does not match skip the Python path entirely.
_MONTH_RE2 = _MONTH_GATE
_SPAN_RE2 = "|".join(
    [
        r"\d[-/.:]\d\d?[-/.:]\d",  # numeric dates
        _MONTH_RE2 + r"[a-z]*\.? \d",
        r"\d(?:st|nd|rd|th)? (?:of )?" + _MONTH_RE2,  # worded dates
        "://",
        r"www\.",  # url
        r"\.(?:" + "|".join(_EXTENSIONS) + ")",  # file_name
        r"(?:img|dsc[nf]?|pict|gopr|dji|sam|cimg|pano|mvc|dcim|imag|vid)[-_]?\d{3}",
        r"p\d{7}|\d{3}_\d{4}",  # camera
        r"\.(?:" + "|".join(t.replace(".", r"\.") for t in _TLDS) + ")",  # domain
        "[#@]",  # hashtag, stock_id
        r"\((?:ap|afp|epa|reuters|getty)|reuters/",  # photo_credit
        "click|view larger|view full|loading|may contain|no title|no description|untitled|%name|available",  # ui_text
        "royalty|stock|vetorial|vector (?:image|illus|graph|clip)",  # stock_credit
        r"\((?:photo|image|picture|foto|credit|source)",  # credit
        r"cc[: -]*by",  # license
        r"(?:artist|photographer|author|credit|uploaded by|photo by|image by) ?:",  # artist_credit
        r"(?:mls|sku|code|item|ref|lot|id|№)[^a-z]{0,6}[a-z0-9-]*\d{5}",  # item_code
        r"\d{6}$",  # stock_id: a trailing stock number
        r"(?:photo|photograph|image|picture)s? (?:by|courtesy of) |©|copyright",  # photo_by, copyright
    ]
)
_GENERIC_RE2 = _GENERIC_RE.pattern  # RE2's ASCII \b never misses a boundary Python's Unicode \b sees here
# Generic words only matter in short captions: with more than this many tokens, fewer than
# boilerplate_min_remaining_words descriptive words would need 6+ generic words in a row.
_GENERIC_MAX_TOKENS = 8
_SHORT_RE2 = r"^[^ ]*(?: [^ ]+){0,%d}$" % (_GENERIC_MAX_TOKENS - 1)
_NO_LETTER_RE2 = r"^[^\pL]*$"


def has_generic(text: str) -> bool:
    return _GENERIC_RE.search(text) is not None


def descriptive_words(text: str) -> int:
    """Tokens that carry description: contain a letter and are not a generic word.

    Slugs count word by word, as in too_short: "NWT-Polo-Sport-Ralph-Lauren-Drawstring-Bag" describes.
    """
    count = 0
    for token in _SLUG_SPLIT.split(text):
        if _LETTER.search(token) and token.strip(_PUNCT).lower() not in _GENERIC_WORDS:
            count += 1
    return count


def strip_spans(text: str, spans: list[tuple[int, int, str]] | None = None) -> str:
    """`text` without its boilerplate spans, with separators and prepositions left dangling cleaned up."""
    spans = find_spans(text) if spans is None else spans
    if not spans:
        return text
    pieces, cursor = [], 0
    for start, end, _ in sorted(spans):
        if start > cursor:
            pieces.append(text[cursor:start])
        cursor = max(cursor, end)
    pieces.append(text[cursor:])
    text = " ".join(" ".join(pieces).split())
    text = _PUNCT_RUN.sub(r"\1", _SEPARATOR_RUN.sub(" ", text))
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    previous = None
    while previous != text:
        previous, text = text, _ORPHAN.sub("", _DANGLING.sub("", text)).strip()
    return text


class BoilerplateFilter(CaptionFilter):
    name = "boilerplate"
    rewrites = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.min_words = cfg.boilerplate_min_remaining_words
        self.rewrites = bool(cfg.strip_boilerplate)
        self._stripped: dict[str, str] = {}  # caption -> without its spans, for the current batch
        self._batch_checked = False

    def filter(self, caption: str, row: CaptionRow) -> str | None:
        spans = find_spans(caption)
        generic = caption.count(" ") < _GENERIC_MAX_TOKENS and has_generic(caption)
        if not spans and not generic and _LETTER.search(caption):
            return None  # fast path: the vast majority of captions
        stripped = strip_spans(caption, spans) if spans else caption
        if spans:
            self._stripped[caption] = stripped  # rewrite() reuses it instead of searching again
        remaining = descriptive_words(stripped)
        if remaining >= self.min_words or (remaining and not spans and not generic):
            return None
        found = ",".join(dict.fromkeys(name for _, _, name in spans)) or ("generic words" if generic else "no words")
        return f"{remaining} descriptive words left after removing {found}"

    def filter_batch(self, captions: list[str], rows) -> list[str | None]:
        """Decide the whole batch with a few RE2 scans; run the Python patterns only on candidates."""
        self._stripped = {}
        self._batch_checked = True
        out: list[str | None] = [None] * len(captions)
        if not captions:
            return out
        array = pa.array(captions, pa.string())
        lower = pc.utf8_lower(array)
        candidates = pc.or_(
            pc.or_(pc.match_substring_regex(lower, _SPAN_RE2), pc.match_substring_regex(array, _NO_LETTER_RE2)),
            pc.and_(pc.match_substring_regex(lower, _GENERIC_RE2), pc.match_substring_regex(array, _SHORT_RE2)),
        )
        check = self.filter
        for j in np.flatnonzero(candidates.to_numpy(zero_copy_only=False)).tolist():
            out[j] = check(captions[j], None)
        return out

    def rewrite(self, caption: str) -> str:
        return strip_spans(caption)

    def rewrite_batch(self, captions: list[str]) -> list[str]:
        if not self._batch_checked:
            return [strip_spans(c) for c in captions]
        stripped = self._stripped  # only captions with spans are in it; the others stay as they are
        return [stripped.get(c, c) for c in captions] if stripped else captions
