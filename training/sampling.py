"""Sample images for a prompt from a train_prior checkpoint and write a PNG grid.

    python training/sample.py --checkpoint ray_results/prior-demo/checkpoint_... \
        --prompt "a red circle" --n 8 --out grid.png [--temperature 1.0] [--top-k 0] [--dvae PATH]

Uses the EMA weights (what the paper samples from) unless --no-ema. Without --dvae the grid shows
colour-coded token maps (see training/decode.py); with it, pixels from the dVAE decoder.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from common import storage  # noqa: E402
from training.decode import image_grid, load_decoder  # noqa: E402
from harness.checkpoint import SHARED_FILE  # noqa: E402
from training.model import Prior, PriorShape  # noqa: E402


def load_prior(checkpoint: str, ema: bool = True) -> Prior:
    """The prior saved in a train_prior checkpoint directory (or its state.pt), in eval mode."""
    path = checkpoint if checkpoint.endswith(".pt") else os.path.join(checkpoint, SHARED_FILE)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = Prior(PriorShape(**state["shape"]))
    model.load_state_dict(state["ema"] if ema else state["model"])
    return model.eval()


def load_tokenizer_json(tokens_root: str) -> str:
    return storage.read_bytes(storage.join(tokens_root, "tokenizer.json")).decode()


def sample(model: Prior, tokenizer_json: str, prompt: str, n: int, temperature: float = 1.0, top_k: int = 0,
           seed: int = 0) -> torch.Tensor:
    """[n, H·W] image tokens for one prompt."""
    from training.data import CaptionEncoder

    encoder = CaptionEncoder(tokenizer_json, model.s.text_len, model.s.text_vocab, dropout=0.0)
    text = encoder([prompt] * n)
    gen = torch.Generator().manual_seed(seed)
    return model.generate(text, temperature=temperature, top_k=top_k, generator=gen)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory of train_prior (or its state.pt)")
    p.add_argument("--tokens", default="", help="token root with tokenizer.json (default: the run's, from the checkpoint)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--out", default="grid.png")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dvae", default="", help="dVAE checkpoint for pixels ('' = colour-coded token maps)")
    p.add_argument("--no-ema", action="store_true", help="sample from the live weights instead of the EMA")
    p.add_argument("--cols", type=int, default=0, help="grid columns (0 = n)")
    args = p.parse_args(argv)

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    model = load_prior(args.checkpoint, ema=not args.no_ema)
    state_path = args.checkpoint if args.checkpoint.endswith(".pt") else os.path.join(args.checkpoint, SHARED_FILE)
    tokens_root = args.tokens or torch.load(state_path, map_location="cpu", weights_only=True).get("tokens_root", "")
    if not tokens_root:
        p.error("--tokens is required: this checkpoint does not record its token root")
    tokens = sample(model, load_tokenizer_json(tokens_root), args.prompt, args.n, args.temperature, args.top_k, args.seed)
    decode = load_decoder(args.dvae, model.s.grid_h, model.s.grid_w, model.s.image_vocab)
    storage.write_bytes_atomic(args.out, image_grid(decode(tokens), ncols=args.cols or args.n))
    print(f"wrote {args.out}: {args.n} samples for {args.prompt!r}")


if __name__ == "__main__":
    main()
