"""Sampling from a train_prior checkpoint: load the prior (EMA weights by default), draw image tokens for
a prompt, decode them into a PNG grid. The command is orchestration/sample_prior.py.
"""

from __future__ import annotations

import os

import torch

from common import storage
from common.images import grid_png
from harness.checkpoint import SHARED_FILE
from tokenize_images.grid_decoder import load_decoder
from training.model import Prior, PriorShape


def load_state(checkpoint: str) -> dict:
    """The rank-0 state of a train_prior checkpoint directory (or its state.pt), read with weights_only."""
    path = checkpoint if checkpoint.endswith(".pt") else os.path.join(checkpoint, SHARED_FILE)
    return torch.load(path, map_location="cpu", weights_only=True)


def load_prior(checkpoint: str | dict, ema: bool = True) -> Prior:
    """The prior saved in a train_prior checkpoint (a path, or its loaded state), in eval mode."""
    state = load_state(checkpoint) if isinstance(checkpoint, str) else checkpoint
    model = Prior(PriorShape(**state["shape"]))
    model.load_state_dict(state["ema"] if ema else state["model"])
    return model.eval()


def load_tokenizer_json(tokens_root: str) -> str:
    return storage.read_bytes(storage.join(tokens_root, "tokenizer.json")).decode()


def sample(
    model: Prior, tokenizer_json: str, prompt: str, n: int, temperature: float = 1.0, top_k: int = 0, seed: int = 0
) -> torch.Tensor:
    """[n, H·W] image tokens for one prompt."""
    from training.data import CaptionEncoder

    encoder = CaptionEncoder(tokenizer_json, model.s.text_len, model.s.text_vocab, dropout=0.0)
    text = encoder([prompt] * n)
    gen = torch.Generator().manual_seed(seed)
    return model.generate(text, temperature=temperature, top_k=top_k, generator=gen)


def write_sample_grid(
    checkpoint: str,
    prompt: str,
    out: str,
    n: int = 8,
    tokens_root: str = "",
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    dvae: str = "",
    ema: bool = True,
    cols: int = 0,
) -> None:
    """`n` samples for `prompt` -> a PNG grid at `out` (local or s3://). The tokenizer comes from
    `tokens_root`, or from the token root the checkpoint records."""
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    state = load_state(checkpoint)
    model = load_prior(state, ema=ema)
    tokens_root = tokens_root or state.get("tokens_root", "")
    if not tokens_root:
        raise ValueError("--tokens is required: this checkpoint does not record its token root")
    tokens = sample(model, load_tokenizer_json(tokens_root), prompt, n, temperature, top_k, seed)
    decode = load_decoder(dvae, model.s.grid_h, model.s.grid_w, model.s.image_vocab)
    storage.write_bytes_atomic(out, grid_png(decode(tokens), ncols=cols or n))
