"""Does the finished demo draw what its captions say? Two scores from the scene classifier
(pipeline/demo/scene_check.py), which reads background, colour, shape, size and relation from pixels:

  * dVAE: held-out scenes (drawn fresh, never in the demo's dataset) -> encode -> argmax -> decode.
    The tokens are the ceiling: no prior can draw what they cannot hold. Also the PSNR of the decodes.
  * prior: samples of the trained prior (EMA weights) for 48 captions x --samples, decoded by the dVAE:
    36 single-object captions covering every colour, shape and size (backgrounds in turn) and 12
    two-object captions drawn from the demo's grammar.

    python bench/demo_quality.py demo_out [--json demo_out/quality.json] [--samples 4] [--temperature T --top-k K]

The prior samples with the demo's own settings, [train] sample_temperature and sample_top_k of
configs/prior_demo.toml (T 0.5, top-k 8; the figures behind that choice are in its comments), unless --temperature /
--top-k say otherwise.

Goals (issue 13): dVAE >= 95% fully right with PSNR >= 25 dB, prior >= 90% fully right.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from pipeline.demo.scene_check import parse_caption, score
from pipeline.demo.source import BACKGROUNDS, COLOURS, SHAPES, SIZES, Layout, describe_and_draw, jpeg_bytes
from tokenize_images.dvae import load_checkpoint
from tokenize_images.preprocess import load_image
from training.sampling import load_prior, load_state, load_tokenizer_json

HELD_OUT_SEED = 10_000  # the demo source draws with seed 0: these scenes are new to the dVAE


def to_pixels(images: torch.Tensor) -> np.ndarray:
    return (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


@torch.no_grad()
def demo_scenes(seed: int, count: int, size: int, layout: Layout = "lattice") -> tuple[list[str], np.ndarray]:
    """The demo source's scenes drawn from `seed` as the demo serves them (JPEG and all), loaded at `size` px:
    (captions, (count, size, size, 3) uint8). Seed 0 gives the demo's own images, HELD_OUT_SEED new ones."""
    rng = random.Random(seed)
    captions, images = [], []
    for _ in range(count):
        caption, image = describe_and_draw(rng, layout)
        captions.append(caption)
        images.append(load_image(jpeg_bytes(image), size))
    return captions, np.stack(images)


def dvae_quality(dvae, n: int) -> dict[str, float]:
    captions, originals = demo_scenes(HELD_OUT_SEED, n, dvae.cfg.image_size)
    x = torch.from_numpy(originals).permute(0, 3, 1, 2).float() / 255
    recon = to_pixels(torch.cat([dvae.decode_tokens(dvae.encode_tokens(b)) for b in x.split(64)]))
    mse = ((recon.astype(np.float64) - originals) ** 2).mean(axis=(1, 2, 3))
    psnr = float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))
    return {**{f"dvae_{k}": v for k, v in score(recon, captions).items()}, "dvae_psnr_db": psnr}


def prior_captions() -> list[str]:
    backgrounds = sorted(BACKGROUNDS)
    singles = [
        f"a {size} {colour} {shape} on a {backgrounds[i % 3]} background"
        for i, (size, colour, shape) in enumerate((s, c, h) for s in SIZES for c in COLOURS for h in SHAPES)
    ]
    rng, pairs = random.Random(HELD_OUT_SEED + 1), []
    while len(pairs) < 12:
        caption, _ = describe_and_draw(rng)
        if parse_caption(caption).relation is not None and caption not in pairs:
            pairs.append(caption)
    return singles + pairs


@torch.no_grad()
def prior_quality(checkpoint: str, dvae, samples: int, temperature: float, top_k: int) -> dict[str, float]:
    """Every caption x `samples`, drawn in batches of 64 sequences (one KV-cached generate call each)."""
    from training.data import CaptionEncoder

    state = load_state(checkpoint)
    model = load_prior(state)
    encoder = CaptionEncoder(load_tokenizer_json(state["tokens_root"]), model.s.text_len, model.s.text_vocab, 0.0)
    captions = [c for c in prior_captions() for _ in range(samples)]
    generator = torch.Generator().manual_seed(0)
    g, images = dvae.cfg.grid, []
    for start in range(0, len(captions), 64):
        text = encoder(captions[start : start + 64])
        tokens = model.generate(text, temperature=temperature, top_k=top_k, generator=generator)
        images.append(to_pixels(dvae.decode_tokens(tokens.view(-1, g, g))))
    return {f"prior_{k}": v for k, v in score(np.concatenate(images), captions).items()}


def latest_checkpoint(demo_dir: str) -> str:
    states = glob.glob(os.path.join(demo_dir, "ray_results", "prior-demo", "*", "state.pt"))
    if not states:
        raise SystemExit(f"no prior checkpoint under {demo_dir}/ray_results/prior-demo: run the demo first")
    return os.path.dirname(max(states, key=os.path.getmtime))


def demo_sampling() -> tuple[float, int]:
    """The demo's sampling settings (temperature, top-k), declared once: [train] of configs/prior_demo.toml."""
    from common.config import parse_cli
    from training.config import PriorTrainConfig

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = parse_cli(PriorTrainConfig, ["--config", os.path.join(root, "configs", "prior_demo.toml")])
    return cfg.train.sample_temperature, cfg.train.sample_top_k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo_dir", nargs="?", default="demo_out")
    ap.add_argument("--samples", type=int, default=4, help="prior samples per caption")
    ap.add_argument("--held-out", type=int, default=256, help="held-out scenes for the dVAE score")
    temperature, top_k = demo_sampling()
    ap.add_argument("--temperature", type=float, default=temperature, help="default: configs/prior_demo.toml's")
    ap.add_argument("--top-k", type=int, default=top_k, help="default: configs/prior_demo.toml's")
    ap.add_argument("--json", default="", help="also write the scores here")
    args = ap.parse_args()
    torch.manual_seed(0)
    dvae, _ = load_checkpoint(os.path.join(args.demo_dir, "stage2", "dvae_demo.pt"))
    out = dvae_quality(dvae, args.held_out)
    out.update(prior_quality(latest_checkpoint(args.demo_dir), dvae, args.samples, args.temperature, args.top_k))
    for part, goal in (("dvae", "goal >= 95%, >= 25 dB"), ("prior", "goal >= 90%")):
        what = (
            "dVAE  (256 held-out scenes, encode -> decode)"
            if part == "dvae"
            else f"prior (48 captions x {args.samples}, T {args.temperature:g}, top-k {args.top_k})"
        )
        psnr = f", PSNR {out['dvae_psnr_db']:.1f} dB" if part == "dvae" else ""
        aspects = ", ".join(f"{k.split('_', 1)[1]} {v:.0%}" for k, v in out.items()
                            if k.startswith(part + "_") and k not in (f"{part}_all", "dvae_psnr_db"))  # fmt: skip
        print(f"{what}: {out[part + '_all']:.1%} fully right{psnr}   ({goal})\n   per aspect: {aspects}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
