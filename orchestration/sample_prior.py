"""Sample images for a prompt from a train_prior checkpoint and write a PNG grid.

    python orchestration/sample_prior.py --checkpoint ray_results/prior-demo/checkpoint_... \
        --prompt "a red circle" --n 8 --out grid.png [--temperature 1.0] [--top-k 0] [--dvae PATH]

Uses the EMA weights (what the paper samples from) unless --no-ema. Without --dvae the grid shows
colour-coded token maps (tokenize_images/grid_decoder.py); with it, pixels from the dVAE decoder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python orchestration/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.sampling import write_sample_grid


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory of train_prior (or its state.pt)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", default="grid.png")
    p.add_argument("--n", type=int, default=8)
    p.add_argument(
        "--tokens",
        dest="tokens_root",
        default="",
        help="token root with tokenizer.json (default: the run's, from the checkpoint)",
    )
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dvae", default="", help="dVAE checkpoint for pixels ('' = colour-coded token maps)")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="sample from the live weights, not the EMA")
    p.add_argument("--cols", type=int, default=0, help="grid columns (0 = n)")
    args = p.parse_args(argv)
    try:
        write_sample_grid(**vars(args))  # the flags are write_sample_grid's parameters
    except ValueError as exc:
        p.error(str(exc))
    print(f"wrote {args.out}: {args.n} samples for {args.prompt!r}")


if __name__ == "__main__":
    main()
