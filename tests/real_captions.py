"""Real captions from the shared LAION sample (../shared/data/laion_sample_1000.parquet) for the caption-filter
tests: `real(text)` asserts that a caption is verbatim in the sample before a test uses it, so every case is a
caption some website actually published."""

from __future__ import annotations

import functools

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.filters.base import CaptionRow
from pipeline.filters.normalize import Normalizer
from tests.data_paths import require_shared_data

ROW = CaptionRow("https://example.com/x.jpg", None, None)


@functools.lru_cache(maxsize=1)
def sample() -> pa.Table:
    # Read when a test first needs it; skips that test when the shared data is absent.
    return pq.read_table(require_shared_data() / "laion_sample_1000.parquet", columns=["URL", "TEXT"])


@functools.lru_cache(maxsize=1)
def sample_captions() -> frozenset:
    return frozenset(sample().column("TEXT").to_pylist())


def real(text: str) -> str:
    assert text in sample_captions(), f"not a caption of the LAION sample: {text!r}"
    return text


normalize = Normalizer()


def run(flt, texts: list[str]) -> list[str | None]:
    return flt.filter_batch([normalize(t) for t in texts], [ROW] * len(texts))
