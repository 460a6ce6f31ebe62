"""Caption filters of stage 1 (one class per file) and the normaliser; see pipeline/captions.py."""

from pipeline.filters.aspect_ratio import AspectRatioFilter
from pipeline.filters.base import CaptionFilter, CaptionRow
from pipeline.filters.boilerplate import BoilerplateFilter
from pipeline.filters.invalid_url import InvalidUrlFilter
from pipeline.filters.non_english import NonEnglishFilter
from pipeline.filters.normalize import Normalizer
from pipeline.filters.too_short import TooShortFilter

__all__ = [
    "AspectRatioFilter",
    "BoilerplateFilter",
    "CaptionFilter",
    "CaptionRow",
    "InvalidUrlFilter",
    "NonEnglishFilter",
    "Normalizer",
    "TooShortFilter",
]
