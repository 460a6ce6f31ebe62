"""Caption filters (all but non_english, which tests/test_caption_language.py covers) on REAL captions from the
shared LAION sample (../shared/data/laion_sample_1000.parquet).

`real(text)` asserts that a caption is verbatim in the sample before a test uses it, so every case
below is a caption some website actually published.
"""

from __future__ import annotations

import collections
import os

import pyarrow as pa
import pytest

from common.schemas import CANDIDATE, CAPTION_REASONS, REJECTED, row_key
from pipeline.captions import CaptionPipeline
from pipeline.config import CaptionFilterConfig
from pipeline.filters.aspect_ratio import AspectRatioFilter
from pipeline.filters.base import CaptionRow
from pipeline.filters.boilerplate import BoilerplateFilter, strip_spans
from pipeline.filters.invalid_url import InvalidUrlFilter
from pipeline.filters.normalize import Normalizer
from pipeline.filters.too_short import TooShortFilter
from tests.real_captions import ROW, normalize, real, run, sample, sample_captions


@pytest.fixture(scope="module")
def cfg() -> CaptionFilterConfig:
    return CaptionFilterConfig()


# --- normalisation ---------------------------------------------------------------------------------
def test_normalizer_html_tags_entities_whitespace_on_real_captions():
    assert (
        normalize(
            real(
                "<a href='http://nymetroparents.com/listing/Yale-New-Haven-Children-s-Hospital-'>"
                "Yale-New Haven Children's Hospital </a>Ribbon Cutting Ceremony."
            )
        )
        == "Yale-New Haven Children's Hospital Ribbon Cutting Ceremony."
    )
    # An escaped tag inside the alt text: unescaped, then removed like a tag.
    assert (
        normalize(
            real(
                "Researcher holding two skulls of the never seen Truong Son muntjac "
                "(&lt;i&gt;Truong Son ... / &copy;: WWF-UK"
            )
        )
        == "Researcher holding two skulls of the never seen Truong Son muntjac ( Truong Son ... / ©: WWF-UK"
    )
    assert normalize(real("&quot;Keep Calm&quot; - Blue Canvas")) == '"Keep Calm" - Blue Canvas'
    assert normalize(real("Hartford\xa0Slim-Fit Linen Trousers")) == "Hartford Slim-Fit Linen Trousers"
    assert (
        normalize(real("Orchid Jungle<br>Hawaiian Dresses<br>100% Rayon<br>"))
        == "Orchid Jungle Hawaiian Dresses 100% Rayon"
    )
    assert normalize("5 < 6 and 7 > 3") == "5 < 6 and 7 > 3"  # not a tag


def test_normalizer_repairs_mojibake_and_composes_nfc():
    caption = real("Maverick Viñales, Aleix Espargaro, Team SUZUKI ECSTAR, Motul Grand Prix of Japan")
    garbled = caption.encode("utf-8").decode("cp1252")  # what a UTF-8 page read as Windows-1252 shows
    assert "Ã±" in garbled and normalize(garbled) == caption
    decomposed = "Vin\u0303ales"  # n + combining tilde
    assert normalize(decomposed) == "Viñales"


def test_normalizer_truncates_at_a_word_boundary():
    caption = next(c for c in sample_captions() if c.startswith("Cam Newton wife, age, weight, kids,"))
    assert len(caption) > 1024  # a real SEO keyword dump
    assert len(normalize(caption)) <= 1024
    out = Normalizer(max_chars=40)(caption)
    assert out == "Cam Newton wife, age, weight, kids, high" and len(out) <= 40


# --- too_short -----------------------------------------------------------------------------------
def test_too_short_on_real_captions(cfg):
    flt = TooShortFilter(cfg)
    dropped = [real("Matt Damon"), real("Patent Drawing"), real("Salman Khan"), real("1963 Yearbook")]
    kept = [real("dew and grass"), real("Deer Halo crown"), real("Pressure gauge with bokeh")]
    decisions = run(flt, dropped + kept)
    assert all(d is not None for d in decisions[: len(dropped)]), decisions
    assert decisions[len(dropped) :] == [None] * len(kept)
    assert run(flt, [real("Matt Damon")]) == ["2 words < 3"]
    assert run(TooShortFilter(CaptionFilterConfig(min_words=2)), [real("Matt Damon")]) == [None]


def test_too_short_counts_the_words_of_slugs_and_file_names(cfg):
    flt = TooShortFilter(cfg)
    slugs = [
        real(c)
        for c in (
            "manchester-united-celebrates-goal-in-front-of-city-players",
            "my-sisters-prayer",
            "Crop_oktoberfest_old_couple_in_tracht",
            "inside-blue-mosque-istanbul-turkey",
        )
    ]
    assert run(flt, slugs) == [None] * len(slugs)
    assert run(flt, ["Spider-Man", "red_circle"]) == ["2 words < 3", "2 words < 3"]  # still two words each
    # numbers are not words: a title with its year or a size says two things
    padded = [real("Sunshine (DVD, 2008)"), real("Lawless Range (2016)"), real("bathroom project 5")]
    assert run(flt, padded) == ["2 words < 3"] * 3
    assert run(flt, [real("7 Pumpkin Drink Recipes"), real("322206 Nias Skirt purple")]) == [None, None]
    assert run(TooShortFilter(CaptionFilterConfig(min_words=1, min_chars=12)), [real("dew and grass")]) == [None]
    assert run(TooShortFilter(CaptionFilterConfig(min_words=1, min_chars=14)), [real("dew and grass")]) == [
        "13 chars < 14"
    ]


# --- invalid_url ---------------------------------------------------------------------------------
def test_invalid_url_keeps_every_real_laion_url_and_rejects_unsafe_schemes(cfg):
    flt = InvalidUrlFilter(cfg)
    urls = sample().column("URL").to_pylist()
    assert flt.filter_batch([""] * len(urls), [CaptionRow(u, None, None) for u in urls]) == [None] * len(urls)

    def check(url):
        return flt.filter("", CaptionRow(url, None, None))

    assert check("file:///etc/passwd") == "scheme 'file' not allowed"
    assert check("ftp://ftp.example.com/a.jpg") == "scheme 'ftp' not allowed"
    assert check("data:image/png;base64,iVBORw0KGgo=") == "scheme 'data' not allowed"
    assert check("javascript:alert(1)") == "scheme 'javascript' not allowed"
    assert check("//cdn.example.com/a.jpg") == "scheme 'missing' not allowed"
    assert check("http://") == "url has no valid host"
    assert check("http://example.com:99999/a.jpg").startswith("unparsable url")
    assert check("http://example.com/a\n.jpg") == "control character in url"
    assert check("https://example.com/" + "a" * 2100) == "url has 2120 chars > 2048"
    assert check(None) == "empty url"


# --- boilerplate ---------------------------------------------------------------------------------
def test_boilerplate_drops_real_captions_that_are_mainly_boilerplate(cfg):
    flt = BoilerplateFilter(cfg)
    cases = {
        real("7672-eco-cotton-culottes-87-lfs.jpg"): "file_name",
        real("shaker-heritage-barn-wedding-day007.jpg"): "file_name",
        real("Rooster Royalty Free Stock Photos"): "stock_credit",
        real("School supply — Stockfoto"): "stock_credit",
        real("Getting Ready http://www.maharaniweddings.com/gallery/photo/41206 @houseoftalent1"): "url",
        real("hitachi-solutions.jp"): "domain",
        real("Scarlet Dragonfly — Photo"): "generic words",
    }
    for caption, pattern in cases.items():
        detail = run(flt, [caption])[0]
        assert detail is not None and pattern in detail, (caption, detail)


def test_boilerplate_paper_patterns_dates_camera_files_bare_words(cfg):
    flt = BoilerplateFilter(cfg)
    # The DALL-E paper's example ("photographed on <date>") in several date formats, camera file
    # names, bare generic words: none of these describe an image.
    for caption in [
        "photographed on June 14, 2015",
        "Taken on 2015:06:14 12:31:05",
        "uploaded on 14/06/2015",
        "IMG_1234.JPG",
        "DSC_0001",
        "P1010001",
        "untitled",
        "no title",
        "image",
        "photo 3",
        "12 34 5678",
        "#sunset #beach #love",
        "click to enlarge",
        "Image may contain: 2 people, people smiling, outdoor",
    ]:
        assert flt.filter(normalize(caption), ROW) is not None, caption


def test_boilerplate_with_a_real_description_is_kept_and_stripped(cfg):
    pipeline_cfg = CaptionFilterConfig(english_threshold=0.0, uncertain_band=[0.0, 0.0])
    pipeline = CaptionPipeline(pipeline_cfg)
    cases = {
        real("Wooden heart with blue sky | Stock Foto"): "Wooden heart with blue sky",
        real("Kepler Space Telescope spacecraft model 1.png"): "Kepler Space Telescope spacecraft model",
        real(
            "Michael Arnold - Illustration + Design #woman #pop #illustration #portrait #art #fashion"
        ): "Michael Arnold - Illustration + Design",
        real(
            "Empty Room with Ladder, Paint Tray and Rollers — Stock Photo #4783079"
        ): "Empty Room with Ladder, Paint Tray and Rollers",
        real(
            "Buy Winser London Wool Luxe Aran Jumper, Ivory Online at johnlewis.com"
        ): "Buy Winser London Wool Luxe Aran Jumper, Ivory Online",
        # generic words and numbers are description here: not stripped
        real("A photo of a Strawberry chiffon cake"): "A photo of a Strawberry chiffon cake",
        real("Used 2011 Ford F-250 Super Duty XLT Crew Cab"): "Used 2011 Ford F-250 Super Duty XLT Crew Cab",
    }
    kept, rejected = pipeline.process(table_of(list(cases)))
    assert rejected.num_rows == 0, rejected.to_pylist()
    assert kept.column("caption").to_pylist() == list(cases.values())

    unstripped = CaptionPipeline(
        CaptionFilterConfig(english_threshold=0.0, uncertain_band=[0.0, 0.0], strip_boilerplate=False)
    )
    kept, _ = unstripped.process(table_of(list(cases)))
    assert kept.column("caption").to_pylist() == list(cases)


def test_boilerplate_issue_11_cases(cfg):
    flt = BoilerplateFilter(cfg)
    cases = {
        # size ranges are not dates; real dates still are
        "Girls dress size 8-10-12": (None, "Girls dress size 8-10-12"),
        "Red kite over the hills, taken on 14/06/2015": (None, "Red kite over the hills"),
        # a placeholder is stripped only where it stands alone: never with the words after it
        "No Description yet for this red barn": (None, "No Description yet for this red barn"),
        "Red barn in the snow - No Description": (None, "Red barn in the snow"),
        # stock-site and credit boilerplate
        real("gray and white seamless pattern vector image vector image"): (None, "gray and white seamless pattern"),
        "vector image vector image": ("0 descriptive words left after removing stock_credit", ""),
        "Artist: naumoid, Code: 400-04986850": ("0 descriptive words left after removing artist_credit,item_code", ""),
        "Old mill on the river (photo: Al Jazeera English, CC: BY 2.0)": (None, "Old mill on the river"),
        real("Address not provided New Bedford, MA MLS# 71895205"): (None, "Address not provided New Bedford, MA"),
        real("Haleakala, photo by Wendy Osher."): ("1 descriptive words left after removing photo_by", "Haleakala"),
        real("Free Server Room Royalty Free Stock Photo - 13836925"): (None, "Free Server Room"),
        # a slug counts word by word, as in too_short: the eBay title describes a bag once the UI text is gone
        real("Image is loading NWT-Polo-Sport-Ralph-Lauren-Drawstring-Bag-Backpack- 8de65cd444aa4"): (
            None,
            "NWT-Polo-Sport-Ralph-Lauren-Drawstring-Bag-Backpack- 8de65cd444aa4",
        ),
        real("\u00a9 Gail Harker - hand woven papers for a color study"): (None, "hand woven papers for a color study"),
        real("Website Template \u2116 43384"): (
            "2 descriptive words left after removing item_code",
            "Website Template",
        ),
        normalize(next(c for c in sample_captions() if c.startswith("Closeup of burning camping bonfire Stock"))): (
            None,
            "Closeup of burning camping bonfire",
        ),
    }
    captions = list(cases)
    decisions = flt.filter_batch(captions, [ROW] * len(captions))
    rewritten = flt.rewrite_batch(captions)
    got = {c: (d, r if d is None else strip_spans(c)) for c, d, r in zip(captions, decisions, rewritten, strict=True)}
    assert got == cases
    assert [flt.filter(c, ROW) for c in captions] == decisions  # the batch gate misses none of them


def test_boilerplate_min_remaining_words_is_configurable():
    caption = real("Rooster Royalty Free Stock Photos")
    assert run(BoilerplateFilter(CaptionFilterConfig(boilerplate_min_remaining_words=3)), [caption])[0] is not None
    assert run(BoilerplateFilter(CaptionFilterConfig(boilerplate_min_remaining_words=1)), [caption]) == [None]


# --- aspect_ratio --------------------------------------------------------------------------------
def test_aspect_ratio_bounds_are_inclusive_and_unknown_sizes_pass(cfg, shared_data):
    flt = AspectRatioFilter(cfg)
    photos = sorted(os.listdir(shared_data / "photos"))  # real photos named WIDTH_HEIGHT.jpg
    sizes = [tuple(int(v) for v in name[:-4].split("_")) for name in photos]
    for width, height in sizes:
        inside = 0.5 <= width / height <= 2.0
        assert (flt.filter("", CaptionRow("u", width, height)) is None) == inside, (width, height)
    assert {(123, 456), (456, 123)} <= set(sizes)  # both sides of the range are represented
    assert flt.filter("", CaptionRow("u", 200, 100)) is None  # exactly 2: kept
    assert flt.filter("", CaptionRow("u", 100, 200)) is None  # exactly 1/2: kept
    assert flt.filter("", CaptionRow("u", 201, 100)) == "201x100 ratio 2.01 outside [0.5, 2]"
    assert flt.filter("", CaptionRow("u", 99, 200)) is not None
    assert flt.filter("", CaptionRow("u", None, 200)) is None  # unknown: decided after download
    wide = AspectRatioFilter(CaptionFilterConfig(max_aspect_ratio=3.0))
    assert wide.filter("", CaptionRow("u", 456, 123)) is not None
    assert wide.filter("", CaptionRow("u", 250, 100)) is None


# --- the pipeline ----------------------------------------------------------------------------------
def table_of(captions, urls=None, widths=None, heights=None, malformed=None) -> pa.Table:
    n = len(captions)
    urls = urls or [f"https://example.com/{i}.jpg" for i in range(n)]
    return pa.table(
        {
            "key": [row_key("test", u, i) for i, u in enumerate(urls)],
            "source": ["test"] * n,
            "url": urls,
            "caption": captions,
            "width": pa.array(widths or [None] * n, pa.int64()),
            "height": pa.array(heights or [None] * n, pa.int64()),
            "malformed": pa.array(malformed or [None] * n, pa.string()),
        }
    )


def test_pipeline_on_the_whole_sample_accounts_for_every_row():
    data = sample()
    extra = 3
    captions = data.column("TEXT").to_pylist() + [
        None,
        "A red fox in the snow at dawn",
        "A red fox in the snow at dawn",
    ]
    urls = data.column("URL").to_pylist() + [None, "file:///etc/passwd", "https://example.com/fox.jpg"]
    n = len(captions)
    widths = [None] * (n - 1) + [1000]
    heights = [None] * (n - 1) + [300]
    malformed = [None] * (n - extra) + ["missing URL", None, None]
    pipeline = CaptionPipeline(CaptionFilterConfig())
    kept, rejected = pipeline.process(table_of(captions, urls, widths, heights, malformed))

    assert kept.schema.equals(CANDIDATE) and rejected.schema.equals(REJECTED)
    assert kept.num_rows + rejected.num_rows == n
    assert sorted(kept.column("key").to_pylist() + rejected.column("key").to_pylist()) == sorted(
        table_of(captions, urls).column("key").to_pylist()
    )
    reasons = collections.Counter(rejected.column("reason").to_pylist())
    assert set(reasons) <= set(CAPTION_REASONS)
    by_key = {r["key"]: r for r in rejected.to_pylist()}
    keys = table_of(captions, urls).column("key").to_pylist()
    assert (by_key[keys[-3]]["reason"], by_key[keys[-3]]["detail"]) == ("malformed", "missing URL")
    assert by_key[keys[-2]]["reason"] == "invalid_url"
    assert (by_key[keys[-1]]["reason"], by_key[keys[-1]]["detail"]) == (
        "aspect_ratio",
        "1000x300 ratio 3.33 outside [0.5, 2]",
    )

    # A real caption that is both too short and not English is too_short: cheap filters run first.
    assert reasons["too_short"] > 0 and reasons["boilerplate"] > 0 and reasons["non_english"] > 0
    stats = pipeline.stats()
    for reason in ("malformed", "invalid_url", "too_short", "boilerplate", "non_english", "aspect_ratio"):
        assert stats[reason]["dropped"] == reasons[reason], reason
        assert stats[reason]["seconds"] >= 0.0
    assert stats["langdetect_calls"] == 0  # the default lexicon rule never needs langdetect
    # Kept captions are normalised; the stripped boilerplate is gone.
    kept_captions = set(kept.column("caption").to_pylist())
    assert "Woman holding a clock" in kept_captions
    assert not any(c.endswith("Stock Photo") for c in kept_captions)


def test_pipeline_order_too_short_before_non_english():
    caption = real("Matt Damon")  # 2 words; fastText calls it P(en)=0.12 too
    kept, rejected = CaptionPipeline(CaptionFilterConfig()).process(table_of([caption]))
    assert kept.num_rows == 0 and rejected.column("reason").to_pylist() == ["too_short"]


def test_merge_stats_sums_workers():
    a = CaptionPipeline(CaptionFilterConfig())
    a.process(table_of([real("Matt Damon"), real("dew and grass")]))
    merged = CaptionPipeline.merge_stats([a.stats(), a.stats()])
    assert merged["too_short"]["dropped"] == 2 * a.stats()["too_short"]["dropped"] == 2


def test_vectorised_batches_decide_exactly_like_the_per_row_filters(cfg):
    """The RE2 prefilters of boilerplate and invalid_url only skip rows the exact filter would keep."""
    captions = [normalize(t) for t in sample().column("TEXT").to_pylist()]
    captions += [
        "photographed on June 14, 2015",
        "Taken on 2015:06:14 12:31:05",
        "P1010001 holiday",
        "100_1234 lake view",
        "a boat on 3 Dec. 2019",
        "photo photo photo",
        "12 34 5678",
        "éimage",
        "DSCN1234 at the lake shore",
        "DSCN1234 lake view",
        "DSCF0042.JPG",
        "Jan. 5, 2020 market",
        "²³",
    ]
    boilerplate = BoilerplateFilter(cfg)
    assert boilerplate.filter_batch(captions, [ROW] * len(captions)) == [boilerplate.filter(c, ROW) for c in captions]
    urls = sample().column("URL").to_pylist() + [
        "HTTPS://EXAMPLE.COM/A.JPG",
        "http://user:pw@example.com/a.jpg",
        "http://[::1]:8080/a.jpg",
        "http://example.com:99999/",
        "https://exa mple.com/a.jpg",
        "http://example.com/a\tb",
        "mailto:a@b.c",
        "",
    ]
    rows = [CaptionRow(u, None, None) for u in urls]
    invalid = InvalidUrlFilter(cfg)
    assert invalid.filter_batch([""] * len(rows), rows) == [invalid.filter("", r) for r in rows]


def test_pipeline_pickles_into_workers_and_decides_the_same():
    import pickle

    table = table_of([real("Stir Fry Mango Chicken"), real("Expresiones regulares en Tkinter"), real("dew and grass")])
    for cfg in (CaptionFilterConfig(), CaptionFilterConfig(language_id="langdetect")):
        pipeline = CaptionPipeline(cfg)
        clone = pickle.loads(pickle.dumps(pipeline))
        kept = clone.process(table)[0]
        assert kept.equals(pipeline.process(table)[0])
        assert kept.column("caption").to_pylist() == ["Stir Fry Mango Chicken", "dew and grass"]
        # each copy counts its own work: one in-band caption ("Stir Fry Mango Chicken") each in langdetect mode
        calls = 1 if cfg.language_id == "langdetect" else 0
        assert clone.stats()["langdetect_calls"] == pipeline.stats()["langdetect_calls"] == calls


def test_reader_skips_have_their_own_reason():
    pipeline = CaptionPipeline(CaptionFilterConfig())
    table = table_of(
        [real("dew and grass"), "Surfing at Ocean Beach", None],
        malformed=[None, "video: /data/yfcc100m_dataset-0:2: marker column = 1", "/data/x.tsv:3: blank line"],
    )
    kept, rejected = pipeline.process(table)
    assert kept.column("caption").to_pylist() == ["dew and grass"]
    reasons, details = rejected.column("reason").to_pylist(), rejected.column("detail").to_pylist()
    assert list(zip(reasons, details, strict=True)) == [
        ("video", "video: /data/yfcc100m_dataset-0:2: marker column = 1"),
        ("malformed", "/data/x.tsv:3: blank line"),
    ]
    stats = pipeline.stats()
    assert (stats["video"]["dropped"], stats["malformed"]["dropped"]) == (1, 1)
