"""Stage 2 configuration: encode_tokens, the text tokenizer, and (train_dvae.py) dVAE training.

Loaded from configs/*.toml and overridden on the command line (common/config.py):
    python orchestration/encode_tokens.py --dataset D --dvae ckpt.pt --output T --run.batch_size 128
"""

from __future__ import annotations

from dataclasses import dataclass

from common.config import doc


@dataclass
class TokenizerConfig:
    vocab_size: int = doc(16384, "BPE vocabulary size (paper: 16,384).")
    min_frequency: int = doc(2, "A merge must occur at least this often in the captions.")
    dropout: float = doc(0.1, "BPE dropout the prior applies at training time (load_text_tokenizer(dropout=...)). "
                              "tokenizer.json is saved WITHOUT dropout, so evaluation is deterministic.")
    special_tokens: list[str] = doc([], "Extra special tokens to reserve (the prior pads per position itself).")
    train_if_missing: bool = doc(True, "encode_tokens: train tokenizer.json from the captions when the output "
                                       "root has none yet (train_tokenizer.py does it on its own).")


@dataclass
class EncodeRunConfig:
    batch_size: int = doc(64, "Images per encoder forward pass (per actor).")
    read_batch_rows: int = doc(256, "Rows per block read from a dataset shard and decoded in one CPU task.")
    device: str = doc("auto", "'auto' (GPU actors when the cluster has GPUs), 'cuda' or 'cpu'.")
    num_encoders: int = doc(0, "Encoder actors (0 = one per GPU, or on CPU: cluster CPUs minus reserve_cpus).")
    cpus_per_encoder: float = doc(1.0, "CPUs per CPU encoder actor (also its torch threads).")
    reserve_cpus: float = doc(1.0, "CPUs kept free of encoder actors for reading, decoding and writing: an "
                                   "actor pool that takes every CPU starves the read tasks and hangs.")
    amp_dtype: str = doc("bfloat16", "GPU autocast dtype: bfloat16, float16, or float32 (no autocast).")
    channels_last: bool = doc(True, "GPU: channels_last memory format (faster convolutions on tensor cores).")
    resample: str = doc("lanczos", "Pillow filter for the short-side resize: lanczos, bicubic, bilinear, box.")
    grid_images: int = doc(8, "Originals and reconstructions in the MLflow grid.")
    ray_address: str = doc("", "Ray cluster to connect to ('' = RAY_ADDRESS, else a private local instance).")
    num_cpus: int = doc(0, "CPUs for a private local Ray instance (0 = all).")
    experiment: str = doc("encode_tokens", "MLflow experiment name.")
    mlflow: bool = doc(True, "Log the run to MLflow.")


@dataclass
class EncodeConfig:
    dataset: str = doc("", "Dataset root written by build_dataset (shards/*.parquet, manifest.json).")
    dvae: str = doc("", "dVAE checkpoint (this project's format: train_dvae.py or import_openai_dvae.py).")
    output: str = doc("", "Tokens root: shards/*.parquet, rejected/*.parquet, tokenizer.json, manifest.json.")
    run: EncodeRunConfig = doc(EncodeRunConfig, "Execution options.")
    tokenizer: TokenizerConfig = doc(TokenizerConfig, "Text tokenizer options.")


@dataclass
class TrainTokenizerConfig:
    dataset: str = doc("", "Dataset root whose shard captions train the BPE.")
    output: str = doc("", "Where to write tokenizer.json (a file path, or a tokens root directory).")
    tokenizer: TokenizerConfig = doc(TokenizerConfig, "Tokenizer options.")
