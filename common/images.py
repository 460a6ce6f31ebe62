"""Image grids for MLflow artifacts (reconstructions, samples): one implementation for every stage."""

from __future__ import annotations

import io

import numpy as np


def tile_images(images: np.ndarray, ncols: int, pad: int = 2) -> np.ndarray:
    """[N, h, w, 3] uint8 -> one uint8 image, `ncols` per row, on a white background."""
    n, h, w, _ = images.shape
    nrows = -(-n // ncols)
    canvas = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = img
    return canvas


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def comparison_rows(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Rows of (N,S,S,3) uint8 (e.g. originals over reconstructions) -> one image, a row per list entry."""
    return tile_images(np.concatenate(rows), ncols=rows[0].shape[0], pad=pad)


def grid_png(images: np.ndarray, ncols: int, pad: int = 2) -> bytes:
    """[N, h, w, 3] uint8 -> PNG bytes of their tiling (one caption per row when ncols = samples per caption)."""
    return png_bytes(tile_images(images, ncols, pad))
