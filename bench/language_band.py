"""The language numbers: English kept on real alt-texts, non-English kept on short sentences.

Default run: every `captions.language_id` rule (lexicon = the default, fasttext, langdetect), through
the real NonEnglishFilter, on
  * the shared LAION sample (1,000 real alt-texts, normalised as the pipeline does) against the hand
    labels below: English kept, non-English dropped;
  * bench/data/short_sentences.tsv (short sentences in 61 languages + 100 English ones): non-English
    kept, English flagged.
--sweep adds the lexicon rule at other lexicon_min_score / lexicon_fasttext_weight values, and
--buckets the older study of where fastText needs a second opinion (P(en) buckets, langdetect
agreement, threshold and band combinations: the numbers behind `uncertain_band`).
Run:  python bench/language_band.py [--sample PATH] [--sentences PATH] [--sweep] [--buckets]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.parquet as pq

from pipeline.config import CaptionFilterConfig
from pipeline.filters.non_english import EN, LangDetect, NonEnglishFilter, load_model
from pipeline.filters.normalize import Normalizer

SENTENCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "short_sentences.tsv")

# Hand labels for the shared sample (row index -> language), made by reading every caption with
# fastText P(en) < 0.5 and every caption where langdetect disagreed with fastText. Every other
# row was read as English. Mixed-language rows (an English product name in a foreign sentence,
# or a caption with its own translation) are left out of the scoring.
NON_ENGLISH = {
    44: "es",
    48: "nl",
    63: "fr",
    105: "fr",
    146: "de",
    163: "de",
    203: "fi",
    251: "pt",
    264: "es",
    326: "fr",
    395: "fr",
    442: "de",
    446: "de",
    551: "fr",
    570: "de",
    577: "pl",
    593: "ru",
    614: "es",
    624: "de",
    634: "fr",
    768: "ja",
    820: "nl",
    825: "fr",
    863: "fr",
    872: "fr",
    919: "it",
    964: "fr",
    977: "sv",
}
MIXED = {213, 282, 311, 423, 467, 604, 654, 673, 683, 765, 837, 895, 923, 957, 975, 996}


def default_sample() -> str:
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    for base in (os.path.join(root, "..", "shared", "data"), "/work/shared/data"):
        path = os.path.join(base, "laion_sample_1000.parquet")
        if os.path.exists(path):
            return path
    raise SystemExit("laion_sample_1000.parquet not found")


def p_en_all(model, texts: list[str], lower: str) -> list[float]:
    out = []
    for text in texts:
        t = text
        if lower == "all" or (lower == "isupper" and t.isupper()):
            t = t.lower()
        preds = model.f.predict(t + "\n", -1, 0.0, "replace")
        out.append(next((min(p, 1.0) for p, lab in preds if lab == EN), 0.0))
    return out


def read_sentences(path: str = SENTENCES) -> list[tuple[str, str]]:
    """(language, sentence) rows of a `lang<TAB>sentence` file; '#' lines are comments."""
    with open(path, encoding="utf-8") as fh:
        return [tuple(line.rstrip("\n").split("\t", 1)) for line in fh if line.strip() and not line.startswith("#")]


def measure(cfg: CaptionFilterConfig, texts: list[str], sentences: list[tuple[str, str]]) -> dict[str, float]:
    """English kept / non-English dropped on the labelled LAION sample, non-English kept / English
    flagged on the sentences, for one config, through the real filter."""
    flt = NonEnglishFilter(cfg)
    kept = [d is None for d in flt.filter_batch(texts, [None] * len(texts))]
    said = [d is None for d in flt.filter_batch([s for _, s in sentences], [None] * len(sentences))]
    english = [i for i in range(len(texts)) if i not in MIXED and i not in NON_ENGLISH]
    foreign = [i for i in NON_ENGLISH if i not in MIXED]
    short_en = [i for i, (lang, _) in enumerate(sentences) if lang == "en"]
    short_other = [i for i, (lang, _) in enumerate(sentences) if lang != "en"]
    return {
        "laion_english_kept": sum(kept[i] for i in english) / len(english),
        "laion_non_english_dropped": sum(not kept[i] for i in foreign) / len(foreign),
        "short_non_english_kept": sum(said[i] for i in short_other) / len(short_other),
        "short_english_flagged": sum(not said[i] for i in short_en) / len(short_en),
        "short_kept_examples": [sentences[i] for i in short_other if said[i]],
    }


def print_rules(texts: list[str], sentences: list[tuple[str, str]], sweep: bool) -> None:
    n_lang = len({lang for lang, _ in sentences if lang != "en"})
    n_other = sum(lang != "en" for lang, _ in sentences)
    print(
        f"LAION sample: {len(texts)} captions ({len(NON_ENGLISH)} non-English, {len(MIXED)} mixed not scored); "
        f"sentences: {n_other} non-English in {n_lang} languages + {len(sentences) - n_other} English\n"
    )
    rules = [("lexicon (default)", CaptionFilterConfig())]
    if sweep:
        for score, weight in ((0.6, 0.25), (0.65, 0.25), (0.75, 0.25), (0.8, 0.25), (0.7, 0.0), (0.7, 0.5)):
            rules.append(
                (
                    f"lexicon min_score {score} weight {weight}",
                    CaptionFilterConfig(lexicon_min_score=score, lexicon_fasttext_weight=weight),
                )
            )
    rules += [
        ("fasttext >= 0.4", CaptionFilterConfig(language_id="fasttext")),
        ("langdetect band [0.2, 0.4)", CaptionFilterConfig(language_id="langdetect")),
    ]
    print(
        f"{'rule':38s}{'LAION English kept':>20s}{'LAION non-En dropped':>22s}{'short non-En kept':>19s}"
        f"{'short En flagged':>18s}"
    )
    for name, cfg in rules:
        m = measure(cfg, texts, sentences)
        print(
            f"{name:38s}{m['laion_english_kept']:20.1%}{m['laion_non_english_dropped']:22.1%}"
            f"{m['short_non_english_kept']:19.2%}{m['short_english_flagged']:18.1%}"
        )
        if name.startswith("lexicon (default)") and m["short_kept_examples"]:
            print(f"{'':38s}non-English kept: {m['short_kept_examples']}")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", default=default_sample())
    ap.add_argument("--sentences", default=SENTENCES)
    ap.add_argument("--sweep", action="store_true", help="also other lexicon_min_score / weight values")
    ap.add_argument("--buckets", action="store_true", help="also the P(en) bucket and langdetect band study")
    args = ap.parse_args()
    normalize = Normalizer()
    texts = [normalize(t) for t in pq.read_table(args.sample, columns=["TEXT"]).column("TEXT").to_pylist()]
    print_rules(texts, read_sentences(args.sentences), args.sweep)
    if args.buckets:
        buckets(texts)


def buckets(texts: list[str]) -> None:
    n = len(texts)
    model = load_model("")  # prepare() in non_english.py lower-cases: the "all" rows below are the pipeline's
    detector = LangDetect()
    detector.top_language("warm up: langdetect loads its 55 profiles on first use")
    detector.calls = 0
    t0 = time.perf_counter()
    second = [detector.top_language(t) for t in texts]
    ld_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    for t in texts:
        model.f.predict(t + "\n", 1, 0.0, "replace")
    ft_seconds = time.perf_counter() - t0
    print(
        f"{n} captions; langdetect {ld_seconds / n * 1e6:.0f} us/caption, fastText top-1 "
        f"{ft_seconds / n * 1e6:.1f} us/caption: langdetect is {ld_seconds / ft_seconds:.0f}x slower\n"
    )

    scored = [i for i in range(n) if i not in MIXED]
    english = [i for i in scored if i not in NON_ENGLISH]
    foreign = [i for i in scored if i in NON_ENGLISH]
    print(f"hand labels: {len(english)} English, {len(foreign)} non-English, {len(MIXED)} mixed (not scored)\n")

    for lower in ("none", "isupper", "all"):  # fastText input: as is / only ALL-CAPS lowered / all lowered
        p = p_en_all(model, texts, lower)
        print(f"== fastText input lower-casing: {lower}")
        print("   P(en) bucket   share  langdetect=en  non-English(labels)  langdetect right  fastText@0.4 right")
        edges = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0001]
        for a, b in itertools.pairwise(edges):
            rows = [i for i in range(n) if a <= p[i] < b]
            if rows:
                agree = sum(second[i] == "en" for i in rows) / len(rows)
                nonen = sum(i in NON_ENGLISH for i in rows)
                labelled = [i for i in rows if i not in MIXED]
                ld_right = sum((second[i] == "en") == (i not in NON_ENGLISH) for i in labelled) / max(1, len(labelled))
                ft_right = sum((p[i] >= 0.4) == (i not in NON_ENGLISH) for i in labelled) / max(1, len(labelled))
                print(
                    f"   [{a:.2f}, {min(b, 1):.2f})  {len(rows) / n:6.1%}  {agree:12.0%}  {nonen:5d}"
                    f"  {ld_right:20.0%}  {ft_right:16.0%}"
                )

        def score(keep) -> tuple[float, float, float]:
            kept_en = sum(keep(i) for i in english) / len(english)
            dropped_foreign = sum(not keep(i) for i in foreign) / len(foreign)
            return kept_en, dropped_foreign

        print("   rule                              English kept  non-English dropped  to langdetect")
        for thr in (0.1, 0.2, 0.3, 0.4, 0.5):
            ke, df = score(lambda i, p=p, thr=thr: p[i] >= thr)
            print(f"   fastText >= {thr:<4}                   {ke:7.1%}          {df:7.1%}            0.0%")
        for low, high in (
            (0.1, 0.5),
            (0.2, 0.5),
            (0.3, 0.5),
            (0.1, 0.3),
            (0.2, 0.3),
            (0.2, 0.4),
            (0.1, 0.4),
            (0.15, 0.4),
            (0.25, 0.4),
            (0.3, 0.4),
            (0.2, 0.45),
        ):

            def keep(i, low=low, high=high, p=p):
                return second[i] == "en" if low <= p[i] < high else p[i] >= high

            ke, df = score(keep)
            share = sum(low <= p[i] < high for i in range(n)) / n
            print(
                f"   >= {high} , band [{low}, {high}) langdetect   {ke:7.1%}          {df:7.1%}          {share:6.1%}"
            )
        print()


if __name__ == "__main__":
    main()
