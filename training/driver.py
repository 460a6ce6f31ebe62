"""The driver side of stage 3: connect to Ray, open the token set, build the model shape, and hand the
worker loop (training/loop.py) to the harness. The command is training/train_prior.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from common import storage
from common.config import flatten, to_dict
from common.ray_cluster import init_ray
from common.tracking import dataset_digest, register_pytorch_model
from harness.launch import LaunchResult, launch, resolve_storage, use_gpu
from training.config import PriorTrainConfig
from training.data import TokenSource
from training.loop import train_fn
from training.model import PriorShape
from training.presets import preset
from training.sampling import load_prior


def attention_impl(setting: str, gpus: bool, dropout: float) -> str:
    """model.attn_impl with 'auto' resolved: FlexAttention on GPU workers (it needs no dropout),
    SDPA otherwise. 'flex' on a cluster without GPUs is refused: CPU torch has no flex backward."""
    if setting == "flex" and not gpus:
        raise ValueError(
            "model.attn_impl = 'flex' needs GPU workers (torch has no FlexAttention backward on "
            "CPU); use 'sdpa' or 'auto' on this cluster"
        )
    if setting == "auto":
        return "flex" if gpus and dropout == 0 else "sdpa"
    return setting


REGISTERED_NAME = "dalle-prior"  # MLflow model registry: each finished run adds a version (EMA weights)


def model_shape(cfg: PriorTrainConfig, source: TokenSource, attn_impl: str = "sdpa") -> PriorShape:
    """The preset, with the CLI/TOML overrides, and the grid and vocabularies the data dictates."""
    m = cfg.model
    return preset(
        m.preset,
        n_layer=m.n_layer or None,
        n_head=m.n_head or None,
        head_dim=m.head_dim or None,
        text_len=m.text_len or None,
        conv_kernel=m.conv_kernel or None,
        attention=m.attention,
        attn_impl=attn_impl,
        dropout=m.dropout,
        grid_h=source.grid_h,
        grid_w=source.grid_w,
        image_vocab=source.image_vocab,
        text_vocab=source.text_vocab(),
    )


def train(cfg: PriorTrainConfig) -> LaunchResult:
    """Train (or resume) the prior described by `cfg`; returns the MLflow run id and final checkpoint.
    The README demo calls this with configs/prior_demo.toml and its own token root."""
    if not cfg.data.tokens:
        raise ValueError("data.tokens (the token root of stage 2) must be set")
    # Before Ray Data touches Ray. Per-epoch progress bars of every worker would flood the job log.
    init_ray(cfg.run.ray_address or None, num_cpus=cfg.run.num_cpus or None)  # quiets Ray Data, as the workers do
    gpus = use_gpu(cfg.run.use_gpu)
    impl = attention_impl(cfg.model.attn_impl, gpus, cfg.model.dropout)
    source = TokenSource.open(cfg.data.tokens, cfg.data.val_shards)
    shape = model_shape(cfg, source, impl)
    datasets, data_config = source.ray_datasets(cfg.run.num_workers, cfg.data.cache)
    manifest = json.dumps(source.manifest, sort_keys=True).encode()
    tags = {
        "tokens_root": cfg.data.tokens,
        "tokens_manifest_sha256": hashlib.sha256(manifest).hexdigest(),
        "dvae_sha256": source.dvae_sha256,
        "dvae_checkpoint": cfg.train.dvae,
        "stage": "train_prior",
    }
    params = {
        **flatten(cfg),
        **{f"shape.{k}": v for k, v in asdict(shape).items()},
        "train_shards": len(source.train_files),
        "val_shards": len(source.val_files),
    }
    loop_config = {
        "cfg": to_dict(cfg),
        "shape": asdict(shape),
        "tokenizer_json": source.tokenizer_json,
        "data_fingerprint": source.layout_fingerprint(cfg.run.num_workers),
        "storage_path": resolve_storage(cfg.run.storage_path),
    }
    result = launch(
        train_fn,
        loop_config,
        cfg.run,
        params=params,
        tags=tags,
        datasets=datasets,
        dataset_config=data_config,
        inputs=[(cfg.data.tokens, "training", dataset_digest(cfg.data.tokens))],
    )
    # Registered like the final-checkpoint artifact: not for multi-GB models, and from a local checkpoint.
    if result.checkpoint_path and cfg.run.log_final_checkpoint and not storage.is_remote(result.checkpoint_path):
        register_pytorch_model(load_prior(result.checkpoint_path), "prior", REGISTERED_NAME, result.run_id)
    return result
