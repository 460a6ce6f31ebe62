"""Synthetic token shards in the stage-2 format, for tests and benchmarks without a dVAE.

Captions are 'a <colour> <shape>' sentences; the image tokens draw that shape in a code that
depends on the colour, on a background code, with a little noise. A prior can learn the mapping,
so losses fall and samples visibly follow their captions (as token maps). A tiny lowercase BPE
is trained on the captions with `tokenizers` and saved as tokenizer.json beside the shards.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from common import storage
from common.schemas import TOKENS_FORMAT, token_shard_metadata, token_shard_schema

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["square", "circle", "cross", "stripe"]


def shape_mask(shape: str, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    if shape == "square":
        return (abs(yy - cy) <= h / 4) & (abs(xx - cx) <= w / 4)
    if shape == "circle":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= (min(h, w) / 3) ** 2
    if shape == "cross":
        return (abs(yy - cy) <= h / 8 + 0.5) | (abs(xx - cx) <= w / 8 + 0.5)
    return (yy // max(1, h // 4)) % 2 == 0  # stripe


def synthetic_rows(
    n: int, grid_h: int, grid_w: int, image_vocab: int, rng: np.random.Generator, noise: float = 0.05
) -> tuple[list[str], np.ndarray]:
    captions, tokens = [], np.zeros((n, grid_h * grid_w), dtype=np.uint16)
    for i in range(n):
        c, s = rng.integers(len(COLOURS)), rng.integers(len(SHAPES))
        captions.append(f"a {COLOURS[c]} {SHAPES[s]}")
        grid = np.zeros((grid_h, grid_w), dtype=np.int64)
        grid[shape_mask(SHAPES[s], grid_h, grid_w)] = 1 + c % (image_vocab - 1)
        flip = rng.random(grid.shape) < noise
        grid[flip] = rng.integers(0, image_vocab, size=int(flip.sum()))
        tokens[i] = grid.reshape(-1)
    return captions, tokens


def train_tokenizer(captions: list[str], vocab_size: int = 300) -> str:
    """A lowercase byte-level BPE trained on the captions; returns tokenizer.json text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(captions, trainer)
    return tok.to_str()


def write_synthetic_tokens(
    root: str,
    n_shards: int = 4,
    rows_per_shard: int = 64,
    grid: int = 4,
    image_vocab: int = 16,
    seed: int = 0,
    bpe_vocab: int = 300,
) -> str:
    """Write shards/NNNNN.parquet, tokenizer.json and manifest.json under `root`; returns root."""
    rng = np.random.default_rng(seed)
    schema = token_shard_schema(grid, grid)
    meta = token_shard_metadata("synthetic", grid, grid, image_vocab, grid * 8)
    all_captions = []
    for shard in range(n_shards):
        captions, tokens = synthetic_rows(rows_per_shard, grid, grid, image_vocab, rng)
        all_captions += captions
        keys = [f"s{shard:03d}r{i:05d}" for i in range(rows_per_shard)]
        flat = pa.array(tokens.reshape(-1), type=pa.uint16())
        table = pa.table(
            {"key": keys, "caption": captions, "image_tokens": pa.FixedSizeListArray.from_arrays(flat, grid * grid)},
            schema=schema,
        )
        storage.write_parquet_atomic(storage.join(root, "shards", f"{shard:05d}.parquet"), table, metadata=meta)
    storage.write_bytes_atomic(storage.join(root, "tokenizer.json"), train_tokenizer(all_captions, bpe_vocab).encode())
    storage.write_json_atomic(
        storage.join(root, "manifest.json"),
        {
            "format": TOKENS_FORMAT,
            "synthetic": True,
            "shards": n_shards,
            "rows": n_shards * rows_per_shard,
            "grid": f"{grid}x{grid}",
            "image_vocab_size": image_vocab,
        },
    )
    return root
