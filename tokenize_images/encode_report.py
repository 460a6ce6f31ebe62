"""What encode_tokens shows in MLflow: throughput and counts, codebook usage, and originals next to
reconstructions decoded from the token shards on disk (if those look right, the tokens are right)."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from common import storage
from common.config import flatten
from common.images import comparison_rows
from common.tracking import dataset_digest, ensure_experiment, log_dataset, log_params


def usage_figure(code_counts: np.ndarray, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.5))
    a.bar(np.arange(len(code_counts)), code_counts, width=1.0)
    a.set(title="code usage by code id", xlabel="code", ylabel="count")
    ranked = np.sort(code_counts)[::-1]
    b.semilogy(np.arange(1, len(ranked) + 1), np.maximum(ranked, 0.5))
    b.set(title="code usage, ranked", xlabel="rank", ylabel="count (log)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def reconstruction_grid(cfg, plans, count: int) -> np.ndarray | None:
    """Originals (top) and decoder(tokens read back from the first token shard) (bottom)."""
    import torch

    from tokenize_images.dvae import load_checkpoint
    from tokenize_images.preprocess import load_image

    for plan in plans:
        tokens = storage.read_parquet(plan.output_path)
        if tokens.num_rows == 0:
            continue
        tokens = tokens.slice(0, count)
        keys = tokens.column("key").to_pylist()
        wanted = set(keys)
        images = {}
        for batch in storage.iter_parquet_batches(plan.input_path, columns=["key", "image"], batch_size=256):
            for k, data in zip(batch.column("key").to_pylist(), batch.column("image").to_pylist(), strict=True):
                if k in wanted:
                    images[k] = data
            if len(images) == len(wanted):
                break
        model, _ = load_checkpoint(cfg.dvae)
        s, g = model.cfg.image_size, model.cfg.grid
        originals = np.stack([load_image(images[k], s, cfg.run.resample) for k in keys])
        codes = torch.from_numpy(
            np.stack(tokens.column("image_tokens").to_numpy(zero_copy_only=False)).astype(np.int64)
        )
        with torch.no_grad():
            recon = model.decode_tokens(codes.view(-1, g, g))
        recon = (recon.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        return comparison_rows([originals, recon])
    return None


def log_run(cfg, manifest: dict, plans) -> str:
    """One MLflow run per invocation of encode_tokens. Returns its id."""
    import mlflow
    from PIL import Image

    from tokenize_images.objective import usage_from_counts

    exp = ensure_experiment(cfg.run.experiment)
    run = manifest["run"]
    counts = run.pop("code_counts")
    with mlflow.start_run(
        experiment_id=exp,
        run_name="encode_tokens",
        tags={"output": cfg.output, "dvae_sha256": manifest["dvae"]["sha256"]},
    ) as active:
        log_params(flatten(cfg))
        # Lineage: the dataset read (digest = the one build_dataset logged as its output) and the tokens
        # written (the one train_prior logs as its training input).
        log_dataset(active.info.run_id, cfg.dataset, "encode", dataset_digest(cfg.dataset))
        log_dataset(active.info.run_id, cfg.output, "output", dataset_digest(cfg.output))
        metrics = {k: float(v) for k, v in run.items() if isinstance(v, (int, float))}
        metrics.update(
            {
                "total_encoded": manifest["counts"]["encoded"],
                "total_rejected": sum(manifest["counts"]["rejected"].values()),
                "total_input_rows": manifest["counts"]["input_rows"],
            }
        )
        if counts.sum() > 0:
            usage = usage_from_counts(counts)
            metrics.update(
                {"codebook_perplexity": usage["perplexity"], "codebook_used_fraction": usage["used_fraction"]}
            )
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "manifest.json"), "w") as fh:
                json.dump(manifest, fh, indent=2, default=str)
            if counts.sum() > 0:
                np.save(os.path.join(tmp, "code_counts.npy"), counts)
                usage_figure(counts, os.path.join(tmp, "codebook_usage.png"))
            grid = reconstruction_grid(cfg, plans, cfg.run.grid_images)
            if grid is not None:
                Image.fromarray(grid).save(os.path.join(tmp, "originals_vs_reconstructions.png"))
            mlflow.log_artifacts(tmp)
        run["code_counts"] = counts
        return active.info.run_id
