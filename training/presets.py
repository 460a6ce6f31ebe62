"""Model presets. The grid and vocabularies of tiny/demo are replaced by the token shards' own
(metadata and tokenizer.json) when training; 12b is the paper's shape as published."""

from __future__ import annotations

from dataclasses import replace

from training.model import PriorShape

# The paper's sequence (appendix B.1): 256 text tokens of a 16,384 BPE, a 32×32 grid of 8,192 codes, 11×11 conv.
PAPER_SEQUENCE = dict(text_len=256, grid_h=32, grid_w=32, text_vocab=16384, image_vocab=8192, conv_kernel=11)

PRESETS: dict[str, PriorShape] = {
    # Tests: a few seconds per run on one CPU core. 5 layers so row, column and conv all appear.
    "tiny": PriorShape(
        n_layer=5, n_head=2, head_dim=16, text_len=8, grid_h=4, grid_w=4, text_vocab=256, image_vocab=16, conv_kernel=3
    ),
    # The README demo: learns colour/shape captions on a CPU in minutes.
    "demo": PriorShape(
        n_layer=6,
        n_head=4,
        head_dim=32,
        text_len=16,
        grid_h=8,
        grid_w=8,
        text_vocab=512,
        image_vocab=512,
        conv_kernel=5,
    ),
    # The smallest paper-shaped model the GPU figures are quoted for (bench/bench_prior_mfu.py): 1.3B
    # parameters, the paper's text length, grid, vocabularies and 64-wide heads, at a third of its depth.
    "1b": PriorShape(n_layer=24, n_head=32, head_dim=64, **PAPER_SEQUENCE),
    # DALL-E 12B (appendix B.1): 64 layers, 62 heads × 64, on the paper's sequence.
    "12b": PriorShape(n_layer=64, n_head=62, head_dim=64, **PAPER_SEQUENCE),
}


def preset(name: str, **overrides) -> PriorShape:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
