"""EnglishWords: how many words of a caption are English, from word frequencies (wordfreq).

fastText lid.176 reads short alt-texts badly: "Kate middleton grey dress" scores P(en) = 0.07,
"Black Panther Necklace" 0.12, while "Tom is honger." (Afrikaans) scores 0.96. Word frequencies
settle most of these. A word is ENGLISH when it is common in English (zipf >= 2.5, about once in
3 million words) and not much more common in another language (English zipf >= its highest zipf
in wordfreq's 41 other languages - 1.0): "dress", "grey", "under" are English; "die", "honger",
"beste", "est" are not. Every other word counts against English, except:
* a capitalised word that is rare in every language (zipf < 4.5: "Rozalski", "Hogsmeade", "SWE")
  or that English text also uses often (English zipf >= 3.5: "Tom", "Mary", whose Polish, Swedish
  or Vietnamese namesakes made "Tom left." non-English): a name, and names carry no language.
  (Capitalised German nouns rarer than that read as names too: see docs/filters.md.)
* words of one or two letters: "is", "in", "an", "me", "no", "de", "la" are words in many
  languages (they decided 2 of the 3 foreign sentences a held-out set let through);
* words with digits (sizes, model numbers).
Slugs and file names split on '-' and '_'. A run of an unspaced script (CJK, Thai) counts as one
word per two letters, since it is a phrase, not a word.

score(caption) -> (English words, counted words). The lexicon is pipeline/filters/data/
english_lexicon.tsv.gz, built from wordfreq by pipeline/filters/build_lexicon.py; it is read once
per process (~0.5 s, ~40 MB) into two sets.
"""

from __future__ import annotations

import gzip
import os
import re
import threading

ENGLISH_MIN_ZIPF = 2.5  # "common in English": about once in 3M words; rarer words prove little
FOREIGN_MARGIN = 1.0  # English still wins a word up to 10x more frequent elsewhere ("is": en 7.1, nl 7.2)
NAME_MAX_ZIPF = 4.5  # a capitalised word rarer than this in every language reads as a name
NAME_IN_ENGLISH_ZIPF = 3.5  # ... and so does one English text also uses this often ("Tom", "Mary")
MIN_LETTERS = 3  # shorter words are shared by too many languages to tell English apart
DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "english_lexicon.tsv.gz")

# Letters and digits, apostrophes inside words ("don't"); '-' and '_' split (slugs, file names).
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_DIGIT = re.compile(r"\d")
_LEXICONS: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
_LOCK = threading.Lock()


def load_lexicon(path: str = "") -> tuple[frozenset[str], frozenset[str]]:
    """(English words, common words of other languages), read once per process and path."""
    path = path or DEFAULT_PATH
    sets = _LEXICONS.get(path)
    if sets is None:
        with _LOCK:
            sets = _LEXICONS.get(path)
            if sets is None:
                english, common = [], []
                with gzip.open(path, "rt", encoding="utf-8") as fh:
                    for line in fh:
                        word, en, other = line.rstrip("\n").split("\t")
                        en_z, other_z = float(en), float(other)
                        if en_z >= ENGLISH_MIN_ZIPF and en_z >= other_z - FOREIGN_MARGIN:
                            english.append(word)
                        elif other_z >= NAME_MAX_ZIPF and en_z < NAME_IN_ENGLISH_ZIPF:
                            common.append(word)  # capitalised, still a foreign word: counted
                sets = _LEXICONS[path] = (frozenset(english), frozenset(common))
    return sets


class EnglishWords:
    def __init__(self, path: str = ""):
        self.path = path
        self.english, self.common = load_lexicon(path)

    def __getstate__(self) -> dict:
        return {"path": self.path}  # the sets are reloaded (once per process) on arrival

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def score(self, caption: str) -> tuple[int, int]:
        """(English words, counted words) of a caption; names, digits and 1-2 letter words are not counted."""
        english_words, common = self.english, self.common
        english = counted = 0
        for token in _WORD.findall(caption):
            if len(token) < MIN_LETTERS or _DIGIT.search(token):
                continue
            word = token.lower().replace("’", "'")
            if word in english_words:
                english += 1
                counted += 1
            elif not _cased(token):
                counted += max(1, sum(1 for ch in token if ch.isalpha() and ch.lower() == ch.upper()) // 2)
            elif not token[0].isupper() or word in common:
                counted += 1
        return english, counted


def _cased(token: str) -> bool:
    """Every letter has case: "GAMESのアーカイブ画像" is not a capitalised name, whatever its first letter."""
    return all(ch.lower() != ch.upper() for ch in token if ch.isalpha())
