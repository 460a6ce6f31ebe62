"""Stage 2: encode every kept image of a dataset into dVAE argmax tokens (see docs/tokens.md).

    python orchestration/encode_tokens.py --dataset DATASET_ROOT --dvae dvae.pt --output TOKENS_ROOT \
        [--config configs/encode_openai.toml] [--run.batch_size 128 ...]
"""

import gc
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python orchestration/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.config import Flag, parse_cli
from tokenize_images.config import EncodeConfig
from tokenize_images.encode import encode_tokens

FLAGS = [
    Flag("--dataset", "dataset", "dataset root (build_dataset output)"),
    Flag("--dvae", "dvae", "dVAE checkpoint"),
    Flag("--output", "output", "tokens root"),
]


def main(argv=None) -> None:
    cfg = parse_cli(EncodeConfig, argv, description=__doc__, flags=FLAGS)
    manifest = encode_tokens(cfg)
    run = manifest["run"]
    print(
        f"encoded {run['encoded']} images, rejected {run['rejected']}, {run['images_per_s']:.1f} images/s "
        f"({run['shards_written']} shards written, {run['shards_skipped']} already done) -> {cfg.output}"
    )
    gc.freeze()  # the heap is garbage-collected once more at exit: ~1 s with MLflow and Ray loaded, for nothing


if __name__ == "__main__":
    main()
