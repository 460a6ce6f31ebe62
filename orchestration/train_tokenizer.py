"""Train the caption BPE (lowercase, byte-level, 16,384 by default) and write tokenizer.json.

python orchestration/train_tokenizer.py --dataset DATASET_ROOT --output TOKENS_ROOT [--tokenizer.vocab_size N]
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python orchestration/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.config import Flag, parse_cli
from tokenize_images.config import TrainTokenizerConfig
from tokenize_images.text_tokenizer import train_tokenizer_from_dataset


def main(argv=None) -> None:
    cfg = parse_cli(
        TrainTokenizerConfig,
        argv,
        description=__doc__,
        flags=[Flag("--dataset", "dataset", "dataset root"), Flag("--output", "output", "tokens root or .json")],
    )
    info = train_tokenizer_from_dataset(cfg.dataset, cfg.output, cfg.tokenizer)
    print(f"tokenizer: {info['vocab_size']} tokens, sha256 {info['sha256'][:12]} -> {cfg.output}")


if __name__ == "__main__":
    main()
