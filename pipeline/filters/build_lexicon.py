"""Build pipeline/filters/data/english_lexicon.tsv.gz from wordfreq (run once; the file is committed).

    pip install wordfreq==3.1.1 && python -m pipeline.filters.build_lexicon

Each line: `word<TAB>english zipf<TAB>highest zipf in any other wordfreq language` (0.1 steps).
Zipf = log10(frequency per billion words); 3 is about once per million words, 6 is "the", "und".
Kept: every word with English zipf >= 2.5 (the `large` English list), and every word written in a
cased script with zipf >= 4.0 in one of wordfreq's 41 other languages (their `small` lists): the
only use of a foreign-only word is to tell a capitalised common foreign word ("Hunden") from a
name ("Rozalski"), and uncased scripts (CJK, Thai, Arabic) have no names to tell apart. That is all
pipeline/filters/english_words.py needs, in one small file instead of 42 word lists (13 s and
~1 GB to load) in every worker process. Data: wordfreq by Robyn Speer (Apache-2.0 code; word lists CC BY-SA 4.0,
built from Wikipedia, subtitles, news, books, web and social-media text), so this derived file is
CC BY-SA 4.0 too (docs/filters.md).
"""

from __future__ import annotations

import gzip
import math
import os

ENGLISH_MIN_ZIPF = 2.5
FOREIGN_MIN_ZIPF = 4.0
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "english_lexicon.tsv.gz")


def zipf(frequency: float) -> float:
    return math.log10(frequency) + 9.0 if frequency > 0 else 0.0


def build(path: str = OUT) -> int:
    import wordfreq  # build-time only: the pipeline reads the committed file

    english = {w: zipf(f) for w, f in wordfreq.get_frequency_dict("en", wordlist="large").items()}
    foreign: dict[str, float] = {}
    for lang in sorted(wordfreq.available_languages(wordlist="small")):
        if lang == "en":
            continue
        for word, frequency in wordfreq.get_frequency_dict(lang, wordlist="small").items():
            z = zipf(frequency)
            if z > foreign.get(word, 0.0):
                foreign[word] = z
    words = sorted(
        w
        for w in set(english) | set(foreign)
        if english.get(w, 0.0) >= ENGLISH_MIN_ZIPF or (foreign.get(w, 0.0) >= FOREIGN_MIN_ZIPF and w != w.upper())
    )
    lines = [f"{w}\t{english.get(w, 0.0):.1f}\t{foreign.get(w, 0.0):.1f}\n" for w in words if "\t" not in w]
    with gzip.GzipFile(path, "wb", mtime=0) as fh:  # mtime 0: the same lists give the same bytes
        fh.write("".join(lines).encode("utf-8"))
    return len(lines)


if __name__ == "__main__":
    print(f"{build()} words -> {OUT}")
