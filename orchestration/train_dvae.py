"""Stage 2: train the dVAE on Ray Train (or resume it), then export its EMA weights.

    python orchestration/train_dvae.py --config configs/dvae_demo.toml --dataset DATASET --output dvae.pt
    ray job submit --working-dir . -- python orchestration/train_dvae.py --config configs/dvae_openai.toml ...

Objective, schedules and the harness: tokenize_images/dvae_training.py; every field: --help.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python orchestration/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.config import Flag, parse_cli
from tokenize_images.config import DVAETrainConfig


def main(argv: list[str] | None = None) -> None:
    cfg = parse_cli(
        DVAETrainConfig,
        argv,
        description=__doc__,
        flags=[Flag("--dataset", "dataset", "dataset root"), Flag("--output", "output", "dVAE checkpoint to write")],
    )
    from tokenize_images.dvae_training import train_dvae  # after the config is validated: it imports torch

    out = train_dvae(cfg)
    print(f"dVAE {'reused' if out['reused'] else 'trained'}: {out['checkpoint']} (sha256 {out['sha256']})")


if __name__ == "__main__":
    main()
