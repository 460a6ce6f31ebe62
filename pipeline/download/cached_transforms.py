"""One albumentations transform per argument set for img2dataset's Resizer, instead of one per image.

img2dataset's `Resizer.__call__` builds a fresh `A.SmallestMaxSize(...)` (or LongestMaxSize,
CenterCrop, PadIfNeeded) for every image. Building one runs albumentations' pydantic validation and
`inspect.signature`: in a py-spy profile of a download task (GIL samples, 2,000 demo images) that was
47% of the samples, and the Resizer runs on img2dataset's single consumer thread, so it bounds a
shard's rate. These four transforms have no random parameters at p=1.0 and keep no state between
calls, so reusing one instance gives byte-identical output (tests/test_cached_transforms.py compares
against the stock Resizer).

`install()` swaps the `A` that img2dataset's resizer module sees for a proxy that caches those four
classes by their arguments; every other attribute is albumentations' own. img2dataset is pinned
(pyproject.toml), and the test fails if its Resizer stops building transforms through `A`.
"""

from __future__ import annotations

import threading
from typing import Any

# The transforms img2dataset's Resizer builds; all deterministic at p=1.0.
CACHED = ("SmallestMaxSize", "LongestMaxSize", "CenterCrop", "PadIfNeeded")


class _CachingAlbumentations:
    """Looks like the albumentations module; the CACHED classes return one shared instance per arguments."""

    def __init__(self, module: Any) -> None:
        self._module = module
        self._instances: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._module, name)
        if name not in CACHED:
            return attr

        def build(*args: Any, **kwargs: Any) -> Any:
            key = (name, args, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
            instance = self._instances.get(key)
            if instance is None:
                with self._lock:
                    instance = self._instances.setdefault(key, attr(*args, **kwargs))
            return instance

        return build


def install() -> None:
    """Make img2dataset's resizer module build its transforms through the cache (idempotent)."""
    import albumentations
    from img2dataset import resizer

    if not isinstance(resizer.A, _CachingAlbumentations):
        resizer.A = _CachingAlbumentations(albumentations)
