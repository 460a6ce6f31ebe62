"""Benchmark: Ray Train harness step time against a plain single-process loop, same model, same
batch size, same threads, measured in the same run; plus data-wait share and tokens/s.

    python bench/bench_train_prior.py [--preset demo] [--grid 8] [--batch 16] [--steps 60] [--threads 1]

Both loops train the same Prior on the same synthetic token shards. The plain loop reads the
shards with pyarrow and BPE-encodes every batch up front (no data work inside the timed step) and
times forward+backward+clip+AdamW+EMA; it runs before and after the Ray run and the faster is kept; the Ray
run is one Ray Train worker (DDP off, world size 1) fed by Ray Data, and its step time is the
wall time per step that rank 0 logs to MLflow (everything included: data wait, logging). The
first logging interval (start-up, first Ray Data batch) is excluded from both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from common import storage


def plain_loop(tokens_root: str, preset_name: str, batch: int, steps: int, threads: int) -> dict[str, float]:
    from harness import ModelEMA
    from training.config import OptimConfig
    from training.data import CaptionEncoder, TokenSource
    from training.loop import optimizer_update
    from training.model import Prior, prior_loss
    from training.optim import WarmupPlateauSchedule, make_optimizer
    from training.presets import preset

    torch.set_num_threads(threads)
    src = TokenSource.open(tokens_root, 1)
    shape = preset(
        preset_name, grid_h=src.grid_h, grid_w=src.grid_w, image_vocab=src.image_vocab, text_vocab=src.text_vocab()
    )
    table = storage.read_parquet(src.train_files[0])
    captions = table.column("caption").to_pylist()
    images = torch.from_numpy(np.stack(table.column("image_tokens").to_numpy(zero_copy_only=False)).astype(np.int64))
    encoder = CaptionEncoder(src.tokenizer_json, shape.text_len, shape.text_vocab, 0.1)
    torch.manual_seed(0)
    model = Prior(shape)
    ema = ModelEMA(model, 0.99)
    cfg = OptimConfig(lr=1e-3, warmup_steps=10)
    opt = make_optimizer(model, cfg)
    sched = WarmupPlateauSchedule(opt, cfg)
    # Batches are built before timing: the plain loop is the ideal, data already in memory.
    starts = [(step * batch) % (len(captions) - batch) for step in range(steps)]
    batches = [(encoder(captions[i : i + batch]), images[i : i + batch]) for i in starts]
    times = []
    for text, image in batches:
        t = time.perf_counter()
        sched.apply()
        out = prior_loss(*model(text, image), text, image)
        out["loss"].backward()
        optimizer_update(model, opt, ema, 4.0, sched)
        times.append(time.perf_counter() - t)
    warm = times[steps // 6 :]
    step_time = statistics.median(warm)
    return {"step_time_s": step_time, "tokens_per_s": batch * shape.seq_len / step_time}


def ray_loop(
    tokens_root: str, preset_name: str, batch: int, steps: int, threads: int, workers: int, work: str
) -> dict[str, float]:
    from mlflow import MlflowClient

    from common.config import parse_cli
    from training.config import PriorTrainConfig
    from training.driver import train

    log_every = max(steps // 6, 1)
    cfg = parse_cli(
        PriorTrainConfig,
        [
            "--model.preset",
            preset_name,
            "--data.tokens",
            tokens_root,
            "--data.batch_size",
            str(batch),
            "--optim.lr",
            "1e-3",
            "--optim.warmup_steps",
            "10",
            "--train.max_steps",
            str(steps),
            "--train.val_every",
            str(steps),
            "--train.checkpoint_every",
            str(steps),
            "--train.sample_every",
            "0",
            "--train.samples_per_caption",
            "1",
            "--run.threads_per_worker",
            str(threads),
            "--run.name",
            f"bench-{workers}w",
            "--run.experiment",
            "bench_train_prior",
            "--run.num_workers",
            str(workers),
            "--run.cpus_per_worker",
            "0.5",
            "--run.storage_path",
            os.path.join(work, "ray"),
            "--run.log_every",
            str(log_every),
            "--run.log_final_checkpoint",
            "false",
            "--run.num_cpus",
            "4",
        ],
    )
    result = train(cfg)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])

    def after_warmup(key):
        return [m.value for m in client.get_metric_history(result.run_id, key) if m.step > log_every]

    return {
        "step_time_s": statistics.median(after_warmup("step_time_s")),
        "tokens_per_s": statistics.median(after_warmup("tokens_per_s")),
        "data_wait_share": statistics.median(after_warmup("data_wait_share")),
        "mfu_cpu": statistics.median(after_warmup("mfu")),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="demo")
    p.add_argument("--grid", type=int, default=8)
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (1 = same work as the plain loop)")
    args = p.parse_args()

    from training.synthetic import write_synthetic_tokens

    with tempfile.TemporaryDirectory() as work:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
        rows = max(args.batch * args.steps // 2, 256)
        tokens = write_synthetic_tokens(
            os.path.join(work, "tokens"),
            n_shards=args.workers + 1,
            rows_per_shard=rows,
            grid=args.grid,
            image_vocab=args.vocab,
        )
        # plain loop before AND after the Ray run: on a shared machine load drifts; the faster
        # of the two is the baseline (conservative for the ratio).
        before = plain_loop(tokens, args.preset, args.batch, args.steps, args.threads)
        harness = ray_loop(tokens, args.preset, args.batch, args.steps, args.threads, args.workers, work)
        after = plain_loop(tokens, args.preset, args.batch, args.steps, args.threads)
        plain = min(before, after, key=lambda r: r["step_time_s"])
    print(f"plain loop step time before/after the Ray run: {before['step_time_s']:.4f} / {after['step_time_s']:.4f} s")
    print(
        f"\npreset={args.preset} grid={args.grid}x{args.grid} batch={args.batch} steps={args.steps} "
        f"threads={args.threads} workers={args.workers}"
    )
    print(f"{'measure':<28}{'plain loop':>14}{'Ray Train':>14}{'ratio':>10}")
    print(
        f"{'step time (s)':<28}{plain['step_time_s']:>14.4f}{harness['step_time_s']:>14.4f}"
        f"{harness['step_time_s'] / plain['step_time_s']:>10.3f}   goal <= 1.05 (workers=1)"
    )
    mean = (before["step_time_s"] + after["step_time_s"]) / 2
    print(
        f"{'  vs plain before/after/mean':<28}{'':>28}  {harness['step_time_s'] / before['step_time_s']:.3f} / "
        f"{harness['step_time_s'] / after['step_time_s']:.3f} / {harness['step_time_s'] / mean:.3f}"
        "   (the Ray run sits between the two plain runs; their spread is this machine's drift)"
    )
    print(f"{'tokens/s (per worker)':<28}{plain['tokens_per_s']:>14.1f}{harness['tokens_per_s']:>14.1f}")
    print(f"{'data-wait share':<28}{0.0:>14.4f}{harness['data_wait_share']:>14.4f}   goal <= 0.02")
    print(
        f"{'MFU vs measured CPU matmul':<28}{'':>14}{harness['mfu_cpu']:>14.4f}   (GPU MFU: bench/bench_prior_mfu.py)"
    )


if __name__ == "__main__":
    main()
