"""The demo's stage 2: train the small dVAE (or reuse a cached one), train the tokenizer, encode the tokens.

    python tokenize_images/demo.py --dataset DATASET_ROOT --work WORK_DIR [--dvae CACHED.pt]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import storage
from common.config import parse_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_stage2(dataset: str, work: str, dvae_path: str = "", dvae_config: str = "configs/dvae_demo.toml",
               encode_config: str = "configs/encode_demo.toml", overrides: list[str] = ()) -> dict:
    """Returns {"dvae": {...}, "tokenizer": {...}, "tokens": TOKENS_ROOT, "manifest": {...}}.

    dvae_path: where the dVAE checkpoint lives; if it exists it is reused (the demo's cache).
    overrides: extra `--field value` overrides of the dVAE training config (e.g. ["--optim.max_steps", "50"])."""
    from tokenize_images.config import DVAETrainConfig, EncodeConfig
    from tokenize_images.encode import encode_tokens
    from tokenize_images.text_tokenizer import ensure_tokenizer
    from tokenize_images.train_dvae import train_dvae

    dvae_path = dvae_path or storage.join(work, "dvae_demo.pt")
    dcfg = parse_cli(DVAETrainConfig, ["--config", os.path.join(ROOT, dvae_config), "--dataset", dataset,
                                       "--output", dvae_path, *overrides])
    dcfg = dataclasses.replace(dcfg, reuse=True, run=dataclasses.replace(dcfg.run, storage_path=storage.join(work, "ray_results")))
    dvae = train_dvae(dcfg)

    tokens = storage.join(work, "tokens")
    ecfg = parse_cli(EncodeConfig, ["--config", os.path.join(ROOT, encode_config), "--dataset", dataset,
                                    "--dvae", dvae_path, "--output", tokens])
    tokenizer = ensure_tokenizer(dataset, tokens, dataclasses.replace(ecfg.tokenizer, train_if_missing=True))
    manifest = encode_tokens(ecfg)
    return {"dvae": dvae, "tokenizer": tokenizer, "tokens": tokens, "manifest": manifest}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--dvae", default="", help="dVAE checkpoint path; reused when it exists (default WORK/dvae_demo.pt)")
    args, rest = ap.parse_known_args(argv)
    out = run_stage2(args.dataset, args.work, args.dvae, overrides=rest)
    run = out["manifest"]["run"]
    print(f"dVAE {'reused' if out['dvae']['reused'] else 'trained'}: {out['dvae']['checkpoint']}")
    print(f"tokenizer: {out['tokenizer']['vocab_size']} tokens; encoded {run['encoded']} images "
          f"({run['rejected']} rejected) at {run['images_per_s']:.1f} images/s -> {out['tokens']}")


if __name__ == "__main__":
    main()
