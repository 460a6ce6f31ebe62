"""Stage 3 entry point: train the transformer prior on Ray Train from token shards.

    ray job submit --working-dir . -- python training/train_prior.py --config configs/prior_demo.toml [--x.y v]
    python training/train_prior.py --config configs/prior_tiny.toml --data.tokens /path/to/tokens

Rerunning the same command (same run.name and run.storage_path) resumes from the latest checkpoint
and appends to the same MLflow run. All logic lives in training/; this file only wires it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataclasses import asdict  # noqa: E402

from common.config import Flag, flatten, parse_cli, to_dict  # noqa: E402
from common.ray_cluster import init_ray  # noqa: E402
from training.config import PriorTrainConfig  # noqa: E402
from training.data import TokenSource  # noqa: E402
from harness import LaunchResult, launch  # noqa: E402
from harness.launch import resolve_storage  # noqa: E402
from training.loop import train_fn  # noqa: E402
from training.model import PriorShape  # noqa: E402
from training.presets import preset  # noqa: E402

FLAGS = [Flag("--tokens", "data.tokens", "token root (stage 2 output)"),
         Flag("--name", "run.name", "stable run name (rerun = resume)")]


def model_shape(cfg: PriorTrainConfig, source: TokenSource) -> PriorShape:
    """The preset, with the CLI/TOML overrides, and the grid and vocabularies the data dictates."""
    m = cfg.model
    return preset(m.preset, n_layer=m.n_layer or None, n_head=m.n_head or None, head_dim=m.head_dim or None,
                  text_len=m.text_len or None, conv_kernel=m.conv_kernel or None, attention=m.attention,
                  attn_impl=m.attn_impl, dropout=m.dropout, grid_h=source.grid_h, grid_w=source.grid_w,
                  image_vocab=source.image_vocab, text_vocab=source.text_vocab())


def train(cfg: PriorTrainConfig) -> LaunchResult:
    """Train (or resume) the prior described by `cfg`; returns the MLflow run id and final checkpoint.
    The README demo calls this with configs/prior_demo.toml and its own token root."""
    if not cfg.data.tokens:
        raise ValueError("data.tokens (the token root of stage 2) must be set")
    # Before Ray Data touches Ray. Per-epoch progress bars of every worker would flood the job log.
    init_ray(cfg.run.ray_address or None, num_cpus=cfg.run.num_cpus or None,
             env={"RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    if cfg.model.attn_impl == "flex" and not ray.cluster_resources().get("GPU"):
        raise ValueError("model.attn_impl = 'flex' needs GPU workers (torch has no FlexAttention backward on "
                         "CPU); use 'sdpa' on this cluster")
    source = TokenSource.open(cfg.data.tokens, cfg.data.val_shards)
    shape = model_shape(cfg, source)
    datasets, data_config = source.ray_datasets(cfg.run.num_workers)
    manifest = json.dumps(source.manifest, sort_keys=True).encode()
    tags = {"tokens_root": cfg.data.tokens, "tokens_manifest_sha256": hashlib.sha256(manifest).hexdigest(),
            "dvae_sha256": source.dvae_sha256, "dvae_checkpoint": cfg.train.dvae, "stage": "train_prior"}
    params = {**flatten(cfg), **{f"shape.{k}": v for k, v in asdict(shape).items()},
              "train_shards": len(source.train_files), "val_shards": len(source.val_files)}
    loop_config = {"cfg": to_dict(cfg), "shape": asdict(shape), "tokenizer_json": source.tokenizer_json,
                   "storage_path": resolve_storage(cfg.run.storage_path)}
    return launch(train_fn, loop_config, cfg.run, params=params, tags=tags, datasets=datasets,
                  dataset_config=data_config)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_cli(PriorTrainConfig, argv, description=__doc__, flags=FLAGS)
    result = train(cfg)
    print(json.dumps({"run_id": result.run_id, "checkpoint": result.checkpoint_path, "metrics": result.metrics,
                      "resumed": result.resumed}, default=str))


if __name__ == "__main__":
    main()
