"""Measurement behind the prior's residual init (issue 12, item 5): the demo preset trained with and
without the GPT-2 scaling of residual projections (std 0.02/sqrt(2L)), same data, seeds and steps.

    python bench/residual_init_demo.py [--steps 300] [--seeds 0 1] [--threads 1]

Single process, plain loop (no Ray), synthetic 8x8 token shards in the stage-2 format. Prints the
training loss (mean of the last 50 updates) and the held-out loss of the last shard for each setting
and seed side by side. Figures are in docs/prior.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from common import storage
from harness import ModelEMA
from training.config import OptimConfig
from training.data import CaptionEncoder, TokenSource
from training.loop import optimizer_update
from training.model import Prior, prior_loss
from training.optim import WarmupPlateauSchedule, make_optimizer
from training.presets import preset
from training.synthetic import write_synthetic_tokens


def load(path: str, encoder: CaptionEncoder) -> tuple[torch.Tensor, torch.Tensor]:
    table = storage.read_parquet(path)
    images = np.stack(table.column("image_tokens").to_numpy(zero_copy_only=False)).astype(np.int64)
    return encoder(table.column("caption").to_pylist()), torch.from_numpy(images)


def run(src: TokenSource, scaled: bool, seed: int, steps: int, batch: int) -> tuple[float, float]:
    shape = preset(
        "demo",
        grid_h=src.grid_h,
        grid_w=src.grid_w,
        image_vocab=src.image_vocab,
        text_vocab=src.text_vocab(),
        scaled_residual_init=scaled,
    )
    encoder = CaptionEncoder(src.tokenizer_json, shape.text_len, shape.text_vocab, 0.0)
    text, image = (torch.cat(t) for t in zip(*(load(f, encoder) for f in src.train_files), strict=True))
    val_text, val_image = load(src.val_files[0], encoder)
    torch.manual_seed(seed)
    model = Prior(shape)
    cfg = OptimConfig(lr=1e-3, warmup_steps=50)  # configs/prior_demo.toml's optimiser
    opt = make_optimizer(model, cfg)
    sched, ema = WarmupPlateauSchedule(opt, cfg), ModelEMA(model, 0.99)
    order = torch.randperm(len(text), generator=torch.Generator().manual_seed(seed))
    losses = []
    for step in range(steps):
        idx = order[torch.arange(step * batch, (step + 1) * batch) % len(order)]
        sched.apply()
        out = prior_loss(*model(text[idx], image[idx]), text[idx], image[idx])
        out["loss"].backward()
        optimizer_update(model, opt, ema, 4.0, sched)
        losses.append(out["loss"].item())
    with torch.no_grad():
        val = prior_loss(*model.eval()(val_text, val_image), val_text, val_image)["loss"].item()
    return statistics.mean(losses[-50:]), val


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_tokens(tmp, n_shards=5, rows_per_shard=256, grid=8, image_vocab=64)
        src = TokenSource.open(root, 1)
        print(f"demo preset, 8x8 synthetic tokens, {args.steps} updates of {args.batch}, lr 1e-3 (warmup 50)")
        for seed in args.seeds:
            for scaled in (False, True):
                train, val = run(src, scaled, seed, args.steps, args.batch)
                label = "0.02/sqrt(2L)" if scaled else "0.02 (plain)"
                print(f"seed {seed} residual init {label:14s}: train loss (last 50) {train:.4f}  held-out {val:.4f}")


if __name__ == "__main__":
    main()
