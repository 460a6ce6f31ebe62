"""Stage 3 entry point: train the transformer prior on Ray Train from token shards.

    ray job submit --working-dir . -- python training/train_prior.py --config configs/prior_demo.toml [--x.y v]
    python training/train_prior.py --config configs/prior_tiny.toml --data.tokens /path/to/tokens

Rerunning the same command (same run.name and run.storage_path) resumes from the latest checkpoint
and appends to the same MLflow run. Users call it by this path, so it stays here, thin: the driver is
training/driver.py, the worker loop training/loop.py.
"""

import gc
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python training/train_prior.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.config import Flag, parse_cli
from training.config import PriorTrainConfig

FLAGS = [
    Flag("--tokens", "data.tokens", "token root (stage 2 output)"),
    Flag("--name", "run.name", "stable run name (rerun = resume)"),
]


def main(argv: list[str] | None = None) -> None:
    cfg = parse_cli(PriorTrainConfig, argv, description=__doc__, flags=FLAGS)
    from training.driver import train  # after the config is validated: it imports torch and Ray

    result = train(cfg)
    print(
        json.dumps(
            {
                "run_id": result.run_id,
                "checkpoint": result.checkpoint_path,
                "metrics": result.metrics,
                "resumed": result.resumed,
            },
            default=str,
        )
    )
    gc.freeze()  # the heap is garbage-collected once more at exit: ~1 s with MLflow and Ray loaded, for nothing


if __name__ == "__main__":
    main()
