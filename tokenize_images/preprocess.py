"""Image bytes -> (S, S, 3) uint8, deterministically: short side to S, then the central S x S square.

Done in one resampling step: the source box that the centre crop keeps (a min(w,h) square, in float
coordinates) is resampled straight to S x S. That is exactly "resize the short side to S, crop the
centre" without rounding an intermediate size, and it only filters the pixels that are kept.
The filter is Pillow's Lanczos (a=3) by default: Pillow widens the kernel by the downscale factor, so it
antialiases properly, unlike an unfiltered strided or bilinear tensor resize which aliases fine texture
into the tokens. Pillow's 8-bit resampling is integer arithmetic: the same bytes give the same pixels
on every machine.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

FILTERS = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
}


def resample_filter(name: str) -> Image.Resampling:
    if name not in FILTERS:
        raise ValueError(f"unknown resample {name!r}; allowed: {', '.join(map(repr, FILTERS))}")
    return FILTERS[name]


def load_image(data: bytes, size: int, resample: str = "lanczos", rng: np.random.Generator | None = None) -> np.ndarray:
    """Decode and crop. Raises (any exception) on undecodable bytes; callers count that as decode_error.

    With `rng` (dVAE training only) the square is taken at a random offset instead of the centre."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")  # also forces the full decode: truncated files fail here, not later
    w, h = img.size
    m = min(w, h)
    fx, fy = (rng.uniform(), rng.uniform()) if rng is not None else (0.5, 0.5)
    left, top = (w - m) * fx, (h - m) * fy
    box = (left, top, left + m, top + m)
    out = img.resize((size, size), resample_filter(resample), box=box)
    return np.asarray(out, dtype=np.uint8)


def load_images(
    blobs: list[bytes | None], size: int, resample: str = "lanczos", rng: np.random.Generator | None = None
) -> tuple[np.ndarray, list[str]]:
    """A batch: (N,S,S,3) uint8 (zeros where decoding failed) and, per row, '' or the failure reason."""
    resample_filter(resample)  # before the per-row try: a bad filter is a config error, not every row's reject
    pixels = np.zeros((len(blobs), size, size, 3), dtype=np.uint8)
    errors = []
    for i, data in enumerate(blobs):
        if data is None:
            errors.append("no image bytes")
            continue
        try:
            pixels[i] = load_image(data, size, resample, rng)
            errors.append("")
        except Exception as exc:  # noqa: BLE001 - any failure of a row is that row's reject reason
            errors.append(f"{type(exc).__name__}: {exc}"[:300] or "undecodable")
    return pixels, errors
