"""Image grids for MLflow artifacts (reconstructions, samples): one implementation for every stage."""

from __future__ import annotations

import io

import numpy as np


def image_grid(images: np.ndarray, ncols: int, pad: int = 2) -> np.ndarray:
    """[N, h, w, 3] uint8 -> one uint8 image, `ncols` per row, on a white background."""
    n, h, w, _ = images.shape
    nrows = -(-n // ncols)
    canvas = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    return canvas


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
