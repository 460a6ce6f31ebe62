"""Where the suite finds the shared data: `shared/data` beside the clone (`../shared/data` from the repository
root). CI places a copy of shared/ there, so the path is resolved from this file, never hard-coded.

Tests take the `shared_data` fixture (conftest.py). Module helpers that read the data at call time use
`require_shared_data()`; both skip the test cleanly when the data is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def require_shared_data() -> Path:
    """SHARED_DATA, or skip the calling test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (a copy of shared/ goes beside the clone)")
    return SHARED_DATA
