"""How much of the demo's scenes can a token grid hold at all? A k-means of raw pixel patches, read back as
each code's centre patch, scored by the demo's scene classifier on held-out scenes.

    python bench/patch_vq_ceiling.py --size 80 --patch 8 --codes 256 512              # the demo's lattice scenes
    python bench/patch_vq_ceiling.py --layout free --size 64 --patch 4 --codes 512 1024 2048
    python bench/patch_vq_ceiling.py --layout free --size 64 --patch 8 --codes 512 8192

The k-means is tokenize_images/patch_teacher.py's (the codes a dVAE with codebook.teacher_steps learns
first), fitted on --train scenes of the demo source (seed 0, as the demo serves them); the held-out scenes are
bench/demo_quality.py's (seed 10,000). A dVAE decoder, which sees its neighbours' codes, can do better than
this lookup; an encoder that picks codes worse than the nearest centre does worse. Also prints the classifier
on the held-out originals at --size (its own ceiling: at 32 px it misreads small shapes).
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

from bench.demo_quality import HELD_OUT_SEED, demo_scenes
from pipeline.demo.scene_check import score
from tokenize_images.patch_teacher import PatchTeacher


def as_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--patch", type=int, default=4, help="pixels per token side")
    ap.add_argument("--codes", type=int, nargs="+", default=[512, 1024], help="codebook sizes")
    ap.add_argument("--train", type=int, default=400, help="scenes the k-means is fitted on")
    ap.add_argument("--held-out", type=int, default=256)
    ap.add_argument("--layout", choices=["lattice", "free"], default="lattice", help="the demo source's scene layout")
    args = ap.parse_args()
    torch.set_num_threads(1)
    _, train = demo_scenes(0, args.train, args.size, args.layout)
    captions, val = demo_scenes(HELD_OUT_SEED, args.held_out, args.size, args.layout)
    print(f"classifier on the originals at {args.size} px: {score(val, captions)['all']:.1%} fully right")
    g = args.size // args.patch
    for codes in args.codes:
        started = time.perf_counter()
        teacher = PatchTeacher.fit(as_input(train), codes, args.patch)
        tokens = teacher.codes(as_input(val))  # (B, g, g)
        centres = teacher.centres[tokens]  # (B, g, g, 3*p*p) in pixel_unshuffle's channel order
        recon = torch.nn.functional.pixel_shuffle(centres.permute(0, 3, 1, 2), args.patch)
        recon = (recon.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        mse = ((recon.astype(np.float64) - val) ** 2).mean(axis=(1, 2, 3))
        psnr = float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))
        s = score(recon, captions)
        aspects = ", ".join(f"{k} {v:.1%}" for k, v in s.items() if k != "all")
        print(
            f"{args.size} px, {g}x{g} grid of {args.patch}x{args.patch} patches, {codes} codes: "
            f"{s['all']:.1%} fully right, PSNR {psnr:.1f} dB ({aspects}; {time.perf_counter() - started:.0f} s)"
        )


if __name__ == "__main__":
    main()
