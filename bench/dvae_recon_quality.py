"""How well does a short dVAE run reconstruct a dataset through its argmax tokens?

    python bench/dvae_recon_quality.py --config configs/dvae_demo.toml --dataset demo_out/dataset --png recon.png
    python bench/dvae_recon_quality.py --config configs/dvae_demo.toml --dataset demo_out/dataset \\
        --codebook.teacher_steps 0 --codebook.code_embedding_lr_mult 1

Trains a dVAE in-process with the project's own make_optimizer, init_codebook_from_data and train_step,
configured exactly as train_dvae.py would be (the same TOML and --field overrides: the patch teacher and
train_crop included), on the dataset's images, then, with the EMA weights train_dvae exports (since 2026-11-29;
the live weights before), encodes 64 held-out images to argmax tokens, decodes them, and prints the reconstruction
MSE, codebook perplexity and the fraction of codes used. --png writes originals above reconstructions,
so colour loss is visible. This is how configs/dvae_demo.toml was tuned (docs/tokens.md has the sweeps):
the second command above, the demo without any codebook aid, maps every foreground colour to grey.

With --dataset demo:N the images are the demo source's first N scenes (pipeline/demo/source.py, seed 0, as
the demo serves them, JPEG and all), no dataset needed; --scene-check also scores 256 held-out scenes with the
demo's pixel classifier (bench/demo_quality.py: fully right, per aspect, PSNR), the issue-13 goal:

    python bench/dvae_recon_quality.py --config configs/dvae_demo.toml --dataset demo:1000 --images 1064 \
        --scene-check --model.downsample 4 --optim.max_steps 400

Bench-only knobs, for the rows of that sweep: --torch-init (torch's default conv init instead of
dall_e's), --decoder-input-std (re-initialise the code embeddings), --restart-every N (VQ-style
dead-code restarts every N updates, after a k-means init).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from common import storage
from common.config import Flag, parse_cli
from harness import ModelEMA
from tokenize_images.codebook_init import encoder_features, init_codebook_from_data
from tokenize_images.config import DVAETrainConfig
from tokenize_images.dvae import DVAE
from tokenize_images.dvae_training import (
    ema_decay,
    make_optimizer,
    model_config,
    model_input,
    random_flip,
    random_subcrop,
    train_step,
)
from tokenize_images.objective import codebook_usage
from tokenize_images.patch_teacher import PatchTeacher
from tokenize_images.preprocess import load_image

HELD_OUT = 64


@torch.no_grad()
def restart_dead_codes(model: DVAE, x: torch.Tensor, scale: float, generator: torch.Generator) -> int:
    """Every code no position of `x` picks is pointed at the features of a random position (the k-means
    form 2s.h, -s|h|^2), and its decoder embedding copied from the code that position uses now."""
    feats = encoder_features(model.encoder, x)
    conv, dec = model.encoder.blocks.output.conv, model.decoder.blocks.input
    assign = conv(feats[:, :, None, None]).flatten(1).argmax(1)
    dead = torch.nonzero(torch.bincount(assign, minlength=model.cfg.vocab_size) == 0).flatten()
    if len(dead):
        pick = torch.randint(0, feats.shape[0], (len(dead),), generator=generator)
        conv.weight[dead] = (2 * scale * feats[pick])[:, :, None, None]
        conv.bias[dead] = -scale * (feats[pick] ** 2).sum(1)
        dec.weight[:, dead] = dec.weight[:, assign[pick]]
    return len(dead)


def load_images(dataset: str, limit: int, size: int) -> torch.Tensor:
    images = []
    if dataset.startswith("demo:"):  # the demo source's scenes, drawn as the demo draws them
        from bench.demo_quality import demo_scenes

        return torch.from_numpy(demo_scenes(0, min(limit, int(dataset.split(":", 1)[1])), size)[1])
    for path in storage.listdir(storage.join(dataset, "shards"), ".parquet"):
        for data in storage.read_parquet(path, columns=["image"]).column("image").to_pylist():
            images.append(load_image(data, size))
            if len(images) >= limit:
                return torch.from_numpy(np.stack(images))
    return torch.from_numpy(np.stack(images))


def main() -> None:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--images", type=int, default=600, help=f"images used (the last {HELD_OUT} are held out)")
    ap.add_argument("--png", default="", help="write originals over reconstructions here")
    ap.add_argument("--torch-init", action="store_true", help="torch's default conv init instead of dall_e's")
    ap.add_argument("--decoder-input-std", type=float, default=0.0, help="re-initialise the code embeddings")
    ap.add_argument(
        "--restart-every", type=int, default=0, help="dead-code restarts every N updates (k-means init only)"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--scene-check", action="store_true", help="also score held-out demo scenes (issue 13's goal)")
    ap.add_argument("--scenes", type=int, default=256, help="held-out scenes the scene check scores")
    args, rest = ap.parse_known_args()
    cfg = parse_cli(DVAETrainConfig, rest, description=__doc__, flags=[Flag("--dataset", "dataset", "dataset root")])
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(cfg.optim.seed)
    model = DVAE(model_config(cfg))
    if args.torch_init:
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.reset_parameters()
    if args.decoder_input_std:
        torch.nn.init.normal_(model.decoder.blocks.input.weight, std=args.decoder_input_std)
    data = load_images(cfg.dataset, args.images, model.cfg.image_size)
    train, val = data[:-HELD_OUT], data[-HELD_OUT:]
    g = torch.Generator().manual_seed(cfg.optim.seed)
    scale = 0.0
    if cfg.codebook.kmeans_margin:
        first = train[torch.randperm(len(train), generator=g)[: cfg.codebook.kmeans_images]]
        figures = init_codebook_from_data(model.encoder, model_input(first), cfg.codebook.kmeans_margin, cfg.optim.seed)
        scale = figures["kmeans_scale"]
        print(figures)
    teacher = None
    if cfg.codebook.teacher_steps:
        first = train[torch.randperm(len(train), generator=g)[: cfg.codebook.kmeans_images]]
        teacher = PatchTeacher.fit(model_input(first), model.cfg.vocab_size, model.cfg.downsample, cfg.optim.seed)
        print({"teacher_codes_used": teacher.used_codes(model_input(first))})
    opt = make_optimizer(model, cfg)
    ema = ModelEMA(model, cfg.optim.ema_decay)
    started = time.perf_counter()
    for step in range(cfg.optim.max_steps):
        batch = train[torch.randint(0, len(train), (cfg.optim.batch_size,), generator=g)]
        if cfg.horizontal_flip:
            batch = random_flip(batch, g)
        batch = random_subcrop(batch, cfg.train_crop, model.cfg.downsample, g)
        train_step(model, opt, batch, step, cfg, teacher=teacher)
        ema.decay = ema_decay(step, cfg.optim.ema_decay)
        ema.update(model)
        if scale and args.restart_every and (step + 1) % args.restart_every == 0 and step < cfg.optim.max_steps * 0.8:
            probe = train[torch.randint(0, len(train), (128,), generator=g)]
            print(f"step {step + 1}: restarted {restart_dead_codes(model, model_input(probe), scale, g)} dead codes")
    model = ema.module.eval()  # what train_dvae exports
    x = val.permute(0, 3, 1, 2).float() / 255
    tokens = model.encode_tokens(x)
    recon = model.decode_tokens(tokens)
    usage = codebook_usage(tokens.flatten(), model.cfg.vocab_size)
    print(
        f"{cfg.optim.max_steps} updates of batch {cfg.optim.batch_size}, codebook {cfg.codebook}: argmax "
        f"reconstruction MSE {((recon - x) ** 2).mean().item():.4f}, perplexity {usage['perplexity']:.1f}, "
        f"codes used {usage['used_fraction']:.1%} ({time.perf_counter() - started:.0f} s)"
    )
    if args.scene_check:
        from bench.demo_quality import dvae_quality

        scores = dvae_quality(model, args.scenes)
        aspects = ", ".join(f"{k[5:]} {v:.1%}" for k, v in scores.items() if k not in ("dvae_all", "dvae_psnr_db"))
        print(
            f"scene check, {args.scenes} held-out scenes: {scores['dvae_all']:.1%} fully right, PSNR "
            f"{scores['dvae_psnr_db']:.1f} dB (goal 95%, 25 dB); {aspects}"
        )
    if args.png:
        from PIL import Image

        from common.images import comparison_rows

        as_hwc = lambda t: (t[:8].clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # noqa: E731
        Image.fromarray(comparison_rows([as_hwc(x), as_hwc(recon)])).save(args.png)


if __name__ == "__main__":
    main()
