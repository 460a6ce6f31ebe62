"""How well does a short dVAE run reconstruct a dataset through its argmax tokens?

    python bench/dvae_recon_quality.py --dataset demo_out/dataset --steps 300 --beta-max 6.6 --beta-warmup 10

Trains the `small` preset in-process with the project's own train_step on the dataset's images
(64 px), then encodes held-out images to argmax tokens, decodes them, and prints the reconstruction
MSE, codebook perplexity and the fraction of codes used. It also writes originals above
reconstructions as a PNG (--png), so colour loss is visible. Used to tune configs/dvae_demo.toml:
on the demo shapes, every schedule tried so far keeps backgrounds and silhouettes but collapses
foreground colours onto one or two codes (perplexity 2-6 of 512); the sweep is in docs/tokens.md.
The knobs (tau, width, codebook size, the decoder's code-embedding init) are the ones that sweep varied.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import storage  # noqa: E402
from tokenize_images.config import DVAEOptimConfig, DVAETrainConfig, ScheduleConfig  # noqa: E402
from tokenize_images.dvae import DVAE, preset  # noqa: E402
from tokenize_images.objective import codebook_usage  # noqa: E402
from tokenize_images.preprocess import load_image  # noqa: E402
from tokenize_images.train_dvae import make_optimizer, train_step  # noqa: E402


def load_images(dataset: str, limit: int, size: int) -> torch.Tensor:
    images = []
    for path in storage.listdir(storage.join(dataset, "shards"), ".parquet"):
        for data in storage.read_parquet(path, columns=["image"]).column("image").to_pylist():
            images.append(load_image(data, size))
            if len(images) >= limit:
                return torch.from_numpy(np.stack(images))
    return torch.from_numpy(np.stack(images))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="a build_dataset root")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--beta-max", type=float, default=6.6)
    ap.add_argument("--beta-warmup", type=int, default=10, help="updates of the beta warm-up")
    ap.add_argument("--tau-anneal", type=int, default=300, help="updates of the tau anneal tau-start -> tau-end")
    ap.add_argument("--tau-start", type=float, default=1.0)
    ap.add_argument("--tau-end", type=float, default=1 / 16)
    ap.add_argument("--n-hid", type=int, default=0, help="override the small preset's width (0: keep)")
    ap.add_argument("--vocab", type=int, default=0, help="override the small preset's codebook size (0: keep)")
    ap.add_argument("--images", type=int, default=600, help="images used (the last 64 are held out)")
    ap.add_argument("--decoder-input-std", type=float, default=0.0, help="re-initialise the decoder's code embedding")
    ap.add_argument("--png", default="", help="write originals over reconstructions here")
    args = ap.parse_args()
    torch.manual_seed(0)
    overrides = {k: v for k, v in (("n_hid", args.n_hid), ("vocab_size", args.vocab)) if v}
    model = DVAE(preset("small", **overrides))
    if args.decoder_input_std:
        torch.nn.init.normal_(model.decoder.blocks.input.weight, std=args.decoder_input_std)
    data = load_images(args.dataset, args.images, model.cfg.image_size)
    train, val = data[:-64], data[-64:]
    scale = 0.002  # lr decays over 2,400 updates, as in configs/dvae_demo.toml
    cfg = DVAETrainConfig(optim=DVAEOptimConfig(batch_size=args.batch), schedule=ScheduleConfig(
        scale=scale, lr_start=args.lr, lr_end=args.lr / 10, beta_max=args.beta_max,
        beta_steps=int(args.beta_warmup / scale), tau_steps=int(args.tau_anneal / scale),
        tau_start=args.tau_start, tau_end=args.tau_end))
    opt = make_optimizer(model, cfg)
    g = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for step in range(args.steps):
        train_step(model, opt, train[torch.randint(0, len(train), (args.batch,), generator=g)], step, cfg)
    model.eval()
    with torch.no_grad():
        x = val.permute(0, 3, 1, 2).float() / 255
        tokens = model.encode_tokens(x)
        recon = model.decode_tokens(tokens)
    usage = codebook_usage(tokens.flatten(), model.cfg.vocab_size)
    print(f"steps {args.steps} beta_max {args.beta_max} warm-up {args.beta_warmup} tau {args.tau_start:g} -> "
          f"{args.tau_end:g} over {args.tau_anneal} lr {args.lr:g} {overrides or ''}: "
          f"argmax reconstruction MSE {((recon - x) ** 2).mean().item():.4f}, perplexity {usage['perplexity']:.1f}, "
          f"codes used {usage['used_fraction']:.1%} ({time.perf_counter() - started:.0f} s)")
    if args.png:
        from PIL import Image

        def row(t: torch.Tensor) -> np.ndarray:
            return np.concatenate(list((t[:8].clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)), 1)

        Image.fromarray(np.concatenate([row(x), row(recon)], 0)).save(args.png)


if __name__ == "__main__":
    main()
