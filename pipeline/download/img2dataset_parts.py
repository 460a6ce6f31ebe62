"""img2dataset's Downloader, Resizer and X-Robots-Tag parser, imported without its package __init__.

`import img2dataset.downloader` first runs img2dataset/__init__.py, which imports its CLI:
img2dataset.main -> writer -> webdataset -> torch, and pandas. Measured with `python -X importtime`,
that was 1.5 s of the 2.5 s a fresh download worker spent importing before its first fetch (and
torch's memory in every download worker), for modules a download task never calls: we use img2dataset
in-process (shard_downloader), not through its CLI or distributors.

So when nothing in the process has imported img2dataset yet, its package is registered from its own
spec without executing __init__. Submodules are then found through the package's real __path__: the
classes below are img2dataset's own, from its own files (tests/test_consumer_thread.py checks both
this and that torch stays unloaded). Only the package-level `img2dataset.download`/`main` attributes
are missing in such a process; `import img2dataset.main` still works.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home on import otherwise


def _register_package_without_init() -> None:
    if "img2dataset" in sys.modules:
        return
    spec = importlib.util.find_spec("img2dataset")
    if spec is None or not spec.submodule_search_locations:
        return  # not installed: the imports below fail with the usual error
    package = importlib.util.module_from_spec(importlib.machinery.ModuleSpec("img2dataset", None, is_package=True))
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    sys.modules["img2dataset"] = package


_register_package_without_init()

from img2dataset.downloader import Downloader, is_disallowed  # noqa: E402
from img2dataset.resizer import Resizer  # noqa: E402

__all__ = ["Downloader", "Resizer", "is_disallowed"]
