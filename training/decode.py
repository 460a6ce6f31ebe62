"""Image tokens -> pixels for sample grids. THE HOOK FOR THE dVAE DECODER IS `load_decoder`.

A decoder is any callable `decode_tokens(tokens: LongTensor[B, H·W]) -> uint8 array [B, h, w, 3]`.
  * train.dvae = ''   -> `token_map_decoder`: each code drawn as a colour-coded cell (a fixed
                         pseudo-random colour per code). Not pixels, but it shows whether samples
                         differ by caption and have spatial structure.
  * train.dvae = PATH -> the stage-2 dVAE decoder, loaded through `tokenize_images` (wired at merge).
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
import torch

DecodeFn = Callable[[torch.Tensor], np.ndarray]


def token_map_decoder(grid_h: int, grid_w: int, image_vocab: int, cell: int = 8) -> DecodeFn:
    palette = np.random.default_rng(0).integers(0, 256, size=(image_vocab, 3), dtype=np.uint8)

    def decode(tokens: torch.Tensor) -> np.ndarray:
        codes = tokens.view(-1, grid_h, grid_w).clamp(0, image_vocab - 1).cpu().numpy()
        img = palette[codes]                                        # [B, H, W, 3]
        return img.repeat(cell, axis=1).repeat(cell, axis=2)

    return decode


def load_decoder(dvae: str, grid_h: int, grid_w: int, image_vocab: int) -> DecodeFn:
    """The sample decoder: the dVAE's when a checkpoint is configured, else the token map."""
    if not dvae:
        return token_map_decoder(grid_h, grid_w, image_vocab)
    try:  # stage 2 provides it; the lead wires the exact function name at merge time
        from tokenize_images.decoder import load_decode_fn  # type: ignore[import-not-found]
    except ImportError as exc:
        raise RuntimeError(f"train.dvae={dvae!r} is set but tokenize_images.decoder.load_decode_fn is not "
                           "available; leave train.dvae empty to draw token maps") from exc
    return load_decode_fn(dvae)


def image_grid(images: np.ndarray, ncols: int, pad: int = 2) -> bytes:
    """[N, h, w, 3] uint8 -> PNG bytes of a grid (one caption per row when ncols = samples per caption)."""
    from PIL import Image

    n, h, w, _ = images.shape
    nrows = -(-n // ncols)
    canvas = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()
