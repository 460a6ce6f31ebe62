"""Token agreement with fp32 per autocast precision: what run.amp_dtype's default is chosen by.

    python bench/token_agreement.py --dvae dvae_demo.pt --dataset DATASET [--images 256] [--device cpu]
    python bench/token_agreement.py --preset openai --images 16          # random weights, synthetic images

The trunk runs under autocast (bfloat16, float16), the output conv in fp32 in every case
(tokenize_images/encoder_actor.py). Prints, per precision, the share of tokens equal to the fp32 argmax,
and how many images have every token equal. On CPU, float16 autocast needs a recent torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.bench_encode import dvae_checkpoint
from common import storage
from tokenize_images.dvae import checkpoint_info
from tokenize_images.encoder_actor import TokenEncoder
from tokenize_images.preprocess import load_images
from tokenize_images.synthetic import write_dataset

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dvae", default="", help="checkpoint (default: random weights of --preset)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--dataset", default="", help="dataset root (default: synthetic shapes and photos)")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = dvae_checkpoint(args.dvae, args.preset, tmp)
        cfg, sha = checkpoint_info(ckpt)
        dataset = args.dataset or os.path.join(tmp, "ds")
        if not args.dataset:
            photos = str(PHOTOS) if PHOTOS.is_dir() else None
            write_dataset(dataset, shards=1, rows_per_shard=args.images, size_range=(256, 320), photos=photos)
        blobs = []
        for path in storage.glob(storage.join(dataset, "shards", "*.parquet")):
            blobs += storage.read_parquet(path, columns=["image"]).column("image").to_pylist()
            if len(blobs) >= args.images:
                break
        pixels, errors = load_images(blobs[: args.images], cfg.image_size)
        pixels = pixels[[e == "" for e in errors]]

        def tokens(amp: str) -> np.ndarray:
            enc = TokenEncoder(ckpt, device=args.device, amp_dtype=amp, threads=torch.get_num_threads(),
                               min_agreement=0.0)  # fmt: skip
            return np.concatenate([enc.encode(pixels[i : i + args.batch]) for i in range(0, len(pixels), args.batch)])

        ref = tokens("float32")
        print(f"dVAE {sha[:12]} ({args.dvae or 'random ' + args.preset}), {len(pixels)} images, "
              f"{ref.shape[1]} tokens each, device {args.device}, torch {torch.__version__}")  # fmt: skip
        for amp in ("bfloat16", "float16"):
            try:
                got = tokens(amp)
            except Exception as exc:  # noqa: BLE001 - e.g. fp16 autocast unsupported on this device
                print(f"  {amp:9s}: not measurable here ({type(exc).__name__}: {exc})")
                continue
            same = got == ref
            print(f"  {amp:9s}: {same.mean():.4%} of tokens equal fp32; {same.all(axis=1).mean():.1%} of images exact")


if __name__ == "__main__":
    main()
