"""Saved activations of one dVAE training forward per image, with and without checkpointing per resblock group:
the arithmetic behind configs/dvae_openai.toml's batch size.

    python bench/dvae_activations.py [--preset openai] [--measure-px 64]

Measured on CPU under bf16 autocast (what the GPU workers run) at --measure-px and scaled to the preset's image
size by pixel count (every activation is proportional to it). Per image = (batch of 2) - (batch of 1), so the
weights' bf16 copies, which autocast also saves, are not counted per image.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from tokenize_images.dvae import DVAE, map_pixels, preset
from tokenize_images.dvae_training import resblock_groups


def saved_bytes(fn) -> int:
    seen = {}

    def pack(t):
        seen[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        fn()
    return sum(seen.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="openai")
    ap.add_argument("--measure-px", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = preset(args.preset)
    model = DVAE(cfg)
    s = args.measure_px
    x1, x2 = (map_pixels(torch.rand(n, 3, s, s)) for n in (1, 2))
    scale = (cfg.image_size / s) ** 2 / 2**30  # bytes at measure-px -> GiB at the preset's size

    full = (saved_bytes(lambda: model(x2, 1.0)) - saved_bytes(lambda: model(x1, 1.0))) * scale
    inputs = {}
    hooks = [g.register_forward_hook(lambda m, i, o: inputs.__setitem__(m, i[0])) for g in resblock_groups(model)]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x2, 1.0)
    for h in hooks:
        h.remove()
    inside, boundaries, largest = 0.0, 0.0, 0.0
    for g in resblock_groups(model):
        i = inputs[g].detach()
        b = (
            saved_bytes(lambda g=g, i=i: g(i.requires_grad_()))
            - saved_bytes(lambda g=g, i=i: g(i[:1].detach().requires_grad_()))
        ) * scale
        inside, largest = inside + b, max(largest, b)
        boundaries += i[:1].numel() * i.element_size() * scale
    kept = full - inside + boundaries
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.preset}: {cfg.image_size} px, {params / 1e6:.1f}M parameters, measured at {s} px, bf16 autocast")
    print(f"saved activations per image, no checkpointing     : {full:.3f} GiB")
    print(f"saved per image, checkpointing per resblock group  : {kept:.3f} GiB kept + {largest:.3f} GiB "
          f"for the group being recomputed = {kept + largest:.3f} GiB at peak")  # fmt: skip
    print(f"weights + grads + AdamW moments + EMA (fp32)       : {params * 4 * 5 / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
