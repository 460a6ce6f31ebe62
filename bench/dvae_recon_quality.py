"""How well does a short dVAE run reconstruct a dataset through its argmax tokens?

    python bench/dvae_recon_quality.py --dataset demo_out/dataset --steps 300 --beta-max 6.6 --beta-warmup 10

Trains the `small` preset in-process with the project's own train_step on the dataset's images
(64 px), then encodes held-out images to argmax tokens, decodes them, and prints the reconstruction
MSE, codebook perplexity and the fraction of codes used. It also writes originals above
reconstructions as a PNG (--png), so colour loss is visible. Used to tune configs/dvae_demo.toml:
on the demo shapes, every schedule tried so far keeps backgrounds and silhouettes but collapses
foreground colours onto one or two codes (perplexity 2-6 of 512); the sweep is in docs/tokens.md.
The knobs (tau, width, codebook size, inits) are the ones that sweep varied. --kmeans-init sets the
encoder's output conv so that its argmax is the nearest k-means centre of the first batch's features
(argmin |h - c|^2 = argmax 2c.h - |c|^2, a 1x1 conv), the usual data-dependent codebook init of VQ
models: perplexity starts at ~65 but training collapses it again (docs/tokens.md). --restart-every
adds VQ-style dead-code restarts on top of it.
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


@torch.no_grad()
def encoder_features(model, x: torch.Tensor) -> torch.Tensor:
    """(B,3,S,S) mapped pixels -> (B*g*g, C): what the encoder's output conv sees (after its ReLU)."""
    blocks = model.encoder.blocks
    h = blocks.output.relu(blocks[:-1](x))
    return h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])


@torch.no_grad()
def kmeans(points: torch.Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means++ seeding then Lloyd iterations; (N, C) -> (k, C). Empty clusters keep their centre."""
    n = points.shape[0]
    centres = points[torch.randint(0, n, (1,), generator=generator)]
    dist = torch.cdist(points, centres).squeeze(1) ** 2
    for _ in range(1, k):
        probs = dist / dist.sum() if dist.sum() > 0 else torch.full_like(dist, 1.0 / n)
        nxt = points[torch.multinomial(probs, 1, generator=generator)]
        centres = torch.cat([centres, nxt])
        dist = torch.minimum(dist, (torch.cdist(points, nxt).squeeze(1)) ** 2)
    for _ in range(iters):
        assign = torch.cdist(points, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return centres


@torch.no_grad()
def init_codebook_from_data(model, x: torch.Tensor, margin: float = 5.0, seed: int = 0) -> dict[str, float]:
    """Set the encoder's output conv so that its argmax is the nearest k-means centre of `x`'s features.

    `x`: (B,3,S,S) mapped pixels, e.g. the first training batch. Returns figures worth logging."""
    feats = encoder_features(model, x)
    vocab = model.cfg.vocab_size
    centres = kmeans(feats, vocab, generator=torch.Generator().manual_seed(seed))
    d = torch.cdist(feats, centres) ** 2
    two = d.topk(2, dim=1, largest=False).values
    gap = (two[:, 1] - two[:, 0]).median().clamp_min(1e-6)  # median nearest-vs-second margin, in |.|^2 units
    scale = margin / gap
    conv = model.encoder.blocks.output.conv
    conv.weight.copy_((2 * scale * centres)[:, :, None, None].to(conv.weight.dtype))
    conv.bias.copy_((-scale * (centres ** 2).sum(1)).to(conv.bias.dtype))
    used = torch.unique(d.argmin(1)).numel()
    return {"kmeans_codes_used": float(used), "kmeans_scale": float(scale)}


@torch.no_grad()
def restart_dead_codes(model, x: torch.Tensor, scale: float, generator: torch.Generator) -> int:
    """VQ-style dead-code restart: every code no position of `x` picks is pointed at the features of a
    random position (encoder row 2s.h, bias -s|h|^2, the k-means form), and its decoder embedding is
    copied from the code that position uses now, so the decode starts unchanged and can then diverge."""
    feats = encoder_features(model, x)
    blocks = model.encoder.blocks
    assign = blocks.output.conv(feats[:, :, None, None]).flatten(1).argmax(1)
    dead = torch.nonzero(torch.bincount(assign, minlength=model.cfg.vocab_size) == 0).flatten()
    if len(dead) == 0:
        return 0
    pick = torch.randint(0, feats.shape[0], (len(dead),), generator=generator)
    conv, dec = blocks.output.conv, model.decoder.blocks.input
    conv.weight[dead] = (2 * scale * feats[pick])[:, :, None, None]
    conv.bias[dead] = -scale * (feats[pick] ** 2).sum(1)
    dec.weight[:, dead] = dec.weight[:, assign[pick]]
    return len(dead)


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
    ap.add_argument("--kmeans-init", type=float, default=0.0,
                    help="k-means codebook init from the first batch with this logit margin (0: off)")
    ap.add_argument("--openai-init", action="store_true", help="dall_e's conv init instead of torch's default")
    ap.add_argument("--restart-every", type=int, default=0,
                    help="with --kmeans-init: restart dead codes every N updates (0: never)")
    ap.add_argument("--png", default="", help="write originals over reconstructions here")
    args = ap.parse_args()
    torch.manual_seed(0)
    overrides = {k: v for k, v in (("n_hid", args.n_hid), ("vocab_size", args.vocab)) if v}
    model = DVAE(preset("small", **overrides))
    if args.openai_init:  # dall_e's Conv2d init: N(0, 1/fan_in) weights, zero biases
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.normal_(m.weight, std=m.weight[0].numel() ** -0.5)
                torch.nn.init.zeros_(m.bias)
    if args.decoder_input_std:
        torch.nn.init.normal_(model.decoder.blocks.input.weight, std=args.decoder_input_std)
    data = load_images(args.dataset, args.images, model.cfg.image_size)
    train, val = data[:-64], data[-64:]
    scale = 0.002  # lr decays over 2,400 updates, as in configs/dvae_demo.toml
    cfg = DVAETrainConfig(optim=DVAEOptimConfig(batch_size=args.batch), schedule=ScheduleConfig(
        scale=scale, lr_start=args.lr, lr_end=args.lr / 10, beta_max=args.beta_max,
        beta_steps=int(args.beta_warmup / scale), tau_steps=int(args.tau_anneal / scale),
        tau_start=args.tau_start, tau_end=args.tau_end))
    if args.kmeans_init:
        from tokenize_images.dvae import map_pixels

        first = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[:256]]
        km = init_codebook_from_data(model, map_pixels(first.permute(0, 3, 1, 2).float() / 255), args.kmeans_init)
        print(km)
    opt = make_optimizer(model, cfg)
    g = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for step in range(args.steps):
        train_step(model, opt, train[torch.randint(0, len(train), (args.batch,), generator=g)], step, cfg)
        if args.kmeans_init and args.restart_every and (step + 1) % args.restart_every == 0 and step < args.steps * 0.8:
            from tokenize_images.dvae import map_pixels

            probe = train[torch.randint(0, len(train), (128,), generator=g)]
            n = restart_dead_codes(model, map_pixels(probe.permute(0, 3, 1, 2).float() / 255), km["kmeans_scale"], g)
            print(f"step {step + 1}: restarted {n} dead codes")
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
