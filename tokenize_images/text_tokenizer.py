"""The caption tokenizer: a lowercase byte-level BPE trained with Hugging Face `tokenizers`.

Byte-level BPE never needs an unknown token (every string is bytes). Lowercasing and NFKC happen in
the tokenizer's normaliser, so the prior can hand it raw captions. BPE dropout (paper: 0.1) is a
training-time regulariser: tokenizer.json is saved without it and the prior's training data loader
asks for it with load_text_tokenizer(path, dropout=0.1).
"""

from __future__ import annotations

import posixpath
from typing import Iterable, Iterator

from common import storage
from tokenize_images.config import TokenizerConfig

TOKENIZER_FILE = "tokenizer.json"


def build_untrained():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_text_tokenizer(captions: Iterable[str], cfg: TokenizerConfig | None = None):
    from tokenizers import pre_tokenizers, trainers

    cfg = cfg or TokenizerConfig()
    tok = build_untrained()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(cfg.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(captions, trainer=trainer)
    return tok


def iter_captions(dataset_root: str, limit: int = 0, batch_size: int = 8192, seed: int = 0) -> Iterator[str]:
    """Stream captions of the dataset shards, at most `limit` (0 = all; memory bounded by one batch).

    Shards are visited in a fixed shuffled order, so a sample spans the sources and the time range of the
    build instead of the first shards only, and the same sample is drawn on every rerun."""
    import random

    paths = storage.glob(storage.join(dataset_root, "shards", "*.parquet"))
    random.Random(seed).shuffle(paths)
    seen = 0
    for path in paths:
        for batch in storage.iter_parquet_batches(path, columns=["caption"], batch_size=batch_size):
            for c in batch.column(0).to_pylist():
                if c:
                    yield c
                    seen += 1
                    if limit and seen >= limit:
                        return


def tokenizer_path(output: str) -> str:
    """`output` is either a .json file or a tokens root (then tokenizer.json inside it)."""
    return output if output.endswith(".json") else storage.join(output, TOKENIZER_FILE)


def train_tokenizer_from_dataset(dataset_root: str, output: str, cfg: TokenizerConfig | None = None) -> dict:
    """Train on the dataset's captions and write tokenizer.json atomically. Returns a manifest entry."""
    cfg = cfg or TokenizerConfig()
    tok = train_text_tokenizer(iter_captions(dataset_root, cfg.sample_captions), cfg)
    path = tokenizer_path(output)
    storage.write_bytes_atomic(path, tok.to_str().encode())
    return tokenizer_info(path)


def load_text_tokenizer(path: str, dropout: float | None = None):
    """Load tokenizer.json; `dropout` (e.g. 0.1) turns BPE dropout on for training, None = deterministic."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(storage.read_bytes(tokenizer_path(path)).decode())
    tok.model.dropout = dropout
    return tok


def tokenizer_info(path: str) -> dict:
    import hashlib

    data = storage.read_bytes(path)
    tok = load_text_tokenizer(path)
    return {
        "file": posixpath.basename(path.replace("\\", "/")),
        "sha256": hashlib.sha256(data).hexdigest(),
        "vocab_size": tok.get_vocab_size(),
        "lowercase": True,
        "byte_level": True,
        "train_time_dropout": "load_text_tokenizer(path, dropout=0.1)",
    }


def ensure_tokenizer(dataset_root: str, tokens_root: str, cfg: TokenizerConfig) -> dict:
    """The tokens root's tokenizer.json: kept when present; when missing, refused unless cfg.train_if_missing,
    then trained here on a sample of captions (and said so, with the sample's size)."""
    path = tokenizer_path(tokens_root)
    if storage.exists(path):
        return tokenizer_info(path)
    if not cfg.train_if_missing:
        raise FileNotFoundError(
            f"{path} does not exist: train it first (its own step, no GPU needed): "
            f"python orchestration/train_tokenizer.py --dataset {dataset_root} --output {tokens_root} "
            "[--tokenizer.sample_captions N], or pass --tokenizer.train_if_missing true"
        )
    size = f"up to {cfg.sample_captions:,} captions" if cfg.sample_captions else "every caption"
    print(f"encode_tokens: {path} missing: training the BPE on a sample of {size} before encoding")
    return train_tokenizer_from_dataset(dataset_root, tokens_root, cfg)
