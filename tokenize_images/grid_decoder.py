"""Image tokens -> pixels for the prior's sample grids. THE HOOK FOR THE dVAE DECODER IS `load_decoder`.

It lives in stage 2 (the dVAE's package) and stage 3 imports it: training -> tokenize_images, never the
reverse.

A decoder is any callable `decode_tokens(tokens: LongTensor[B, H·W]) -> uint8 array [B, h, w, 3]`.
  * train.dvae = ''   -> `token_map_decoder`: each code drawn as a colour-coded cell (a fixed
                         pseudo-random colour per code). Not pixels, but it shows whether samples
                         differ by caption and have spatial structure.
  * train.dvae = PATH -> the stage-2 dVAE decoder (tokenize_images/dvae.py): real pixels.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from tokenize_images.dvae import load_checkpoint

DecodeFn = Callable[[torch.Tensor], np.ndarray]


def token_map_decoder(grid_h: int, grid_w: int, image_vocab: int, cell: int = 8) -> DecodeFn:
    palette = np.random.default_rng(0).integers(0, 256, size=(image_vocab, 3), dtype=np.uint8)

    def decode(tokens: torch.Tensor) -> np.ndarray:
        codes = tokens.view(-1, grid_h, grid_w).clamp(0, image_vocab - 1).cpu().numpy()
        img = palette[codes]  # [B, H, W, 3]
        return img.repeat(cell, axis=1).repeat(cell, axis=2)

    return decode


def dvae_decoder(path: str, grid_h: int, grid_w: int, image_vocab: int) -> DecodeFn:
    """Pixels from the stage-2 dVAE checkpoint (loaded with weights_only=True)."""
    model, _ = load_checkpoint(path, with_decoder=True)
    if (model.cfg.vocab_size, model.cfg.grid, model.cfg.grid) != (image_vocab, grid_h, grid_w):
        raise ValueError(
            f"dVAE {path} makes {model.cfg.grid}x{model.cfg.grid} grids of {model.cfg.vocab_size} codes; "
            f"the prior samples {grid_h}x{grid_w} grids of {image_vocab}"
        )

    @torch.no_grad()
    def decode(tokens: torch.Tensor) -> np.ndarray:
        images = model.decode_tokens(tokens.view(-1, grid_h, grid_w).cpu().long())  # [B, 3, S, S] in [0, 1]
        return (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)

    return decode


def load_decoder(dvae: str, grid_h: int, grid_w: int, image_vocab: int) -> DecodeFn:
    """The sample decoder: the dVAE's when a checkpoint is configured, else the token map."""
    if not dvae:
        return token_map_decoder(grid_h, grid_w, image_vocab)
    return dvae_decoder(dvae, grid_h, grid_w, image_vocab)
