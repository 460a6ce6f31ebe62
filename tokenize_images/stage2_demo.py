"""The demo's stage 2: train the small dVAE (or reuse a cached one), train the tokenizer, encode the tokens.

The command is orchestration/demo_stage2.py (one `ray job submit` in scripts/demo.sh).
"""

from __future__ import annotations

import dataclasses
import os

from common import storage
from common.config import parse_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_stage2(
    dataset: str,
    work: str,
    dvae_path: str = "",
    dvae_config: str = "configs/dvae_demo.toml",
    encode_config: str = "configs/encode_demo.toml",
    overrides: list[str] = (),
) -> dict:
    """Returns {"dvae": {...}, "tokenizer": {...}, "tokens": TOKENS_ROOT, "manifest": {...}}.

    dvae_path: where the dVAE checkpoint lives; if it exists it is reused (the demo's cache).
    overrides: extra `--field value` overrides of the dVAE training config (e.g. ["--optim.max_steps", "50"])."""
    from tokenize_images.config import DVAETrainConfig, EncodeConfig
    from tokenize_images.dvae_training import train_dvae
    from tokenize_images.encode import encode_tokens
    from tokenize_images.text_tokenizer import ensure_tokenizer

    dvae_path = dvae_path or storage.join(work, "dvae_demo.pt")
    dcfg = parse_cli(
        DVAETrainConfig,
        ["--config", os.path.join(ROOT, dvae_config), "--dataset", dataset, "--output", dvae_path, *overrides],
    )
    dcfg = dataclasses.replace(
        dcfg, reuse=True, run=dataclasses.replace(dcfg.run, storage_path=storage.join(work, "ray_results"))
    )
    dvae = train_dvae(dcfg)

    tokens = storage.join(work, "tokens")
    ecfg = parse_cli(
        EncodeConfig,
        ["--config", os.path.join(ROOT, encode_config), "--dataset", dataset, "--dvae", dvae_path, "--output", tokens],
    )
    tokenizer = ensure_tokenizer(dataset, tokens, dataclasses.replace(ecfg.tokenizer, train_if_missing=True))
    manifest = encode_tokens(ecfg)
    return {"dvae": dvae, "tokenizer": tokenizer, "tokens": tokens, "manifest": manifest}
