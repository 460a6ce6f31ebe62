"""The training loop that runs on every Ray Train worker, top to bottom (see docs/prior.md).

build model -> wrap (DDP/FSDP2, optional PowerSGD) -> restore checkpoint -> loop:
    accumulate grad_accum micro-batches -> clip -> AdamW -> EMA -> schedule
    every log_every: metrics to MLflow (rank 0, async)
    every val_every: validation loss (all ranks, all-reduced) -> plateau schedule
    every sample_every: PNG grid of samples from the EMA model (rank 0)
    every checkpoint_every and at the end: checkpoint (model, optimiser, schedule, EMA, step,
                                           data position and PowerSGD state per rank)
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from common.config import from_dict
from common.images import grid_png
from harness import (
    CheckpointManager,
    ModelEMA,
    StepTimer,
    inject_failure,
    load_powersgd_state_dict,
    mfu,
    peak_flops,
    powersgd_state_dict,
    prepare_model,
    worker_context,
)
from tokenize_images.grid_decoder import load_decoder
from training.config import PriorTrainConfig
from training.data import CaptionEncoder, DataPosition, collate, trace
from training.model import Prior, PriorShape, flops_per_token, prior_loss
from training.optim import WarmupPlateauSchedule, make_optimizer


def register_powersgd(model: torch.nn.Module, rank: int, start_iter: int) -> Any:
    """PowerSGD on the DDP gradients (powerSGD_hook, not the batched variant broken in torch 2.13)."""
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

    state = psgd.PowerSGDState(
        process_group=None,
        matrix_approximation_rank=rank,
        start_powerSGD_iter=max(start_iter, 2),
        use_error_feedback=True,
        warm_start=True,
    )
    model.register_comm_hook(state, psgd.powerSGD_hook)
    return state


def all_reduce_sum(values: list[float], world_size: int) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if world_size > 1:
        torch.distributed.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def validate(model, val_shard, collate_fn, batch_size: int, max_batches: int, ctx) -> dict[str, float]:
    """Mean validation losses over every rank's split (the whole split is read so that the streaming
    split stays in step across ranks; only the first max_batches are evaluated)."""
    model.eval()
    sums = [0.0, 0.0, 0.0, 0.0]  # loss, loss_text, loss_image (each × sequences), sequences
    for i, batch in enumerate(val_shard.iter_torch_batches(batch_size=batch_size, collate_fn=collate_fn)):
        if max_batches and i >= max_batches:
            continue
        text, image = batch["text"].to(ctx.device), batch["image"].to(ctx.device)
        with ctx.autocast():
            out = prior_loss(*model(text, image), text, image)
        n = text.shape[0]
        sums = [
            sums[0] + out["loss"].item() * n,
            sums[1] + out["loss_text"].item() * n,
            sums[2] + out["loss_image"].item() * n,
            sums[3] + n,
        ]
    model.train()
    total = all_reduce_sum(sums, ctx.world_size)
    n = max(total[3], 1.0)
    return {"val_loss": total[0] / n, "val_loss_text": total[1] / n, "val_loss_image": total[2] / n}


def sample_grid(
    ema: ModelEMA,
    shape: PriorShape,
    encoder: CaptionEncoder,
    captions: list[str],
    per_caption: int,
    top_k: int,
    decode,
    device,
    seed: int,
) -> bytes:
    text = encoder([c for c in captions for _ in range(per_caption)]).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    tokens = ema.module.to(device).generate(text, top_k=top_k, generator=gen)
    return grid_png(decode(tokens), ncols=per_caption)


def accumulate_gradients(
    forward, batches, n_micro: int, no_sync, autocast, timer: StepTimer, device, seq_len: int, on_batch=None
) -> list[float]:
    """Forward and backward over `n_micro` micro-batches, each loss scaled by 1/n_micro, so the
    gradients are those of their mean (of one batch n_micro times larger: micro-batches are equal in
    size). DDP all-reduces on the last micro-batch only (`no_sync` on the others). Returns the mean
    [loss, loss_text, loss_image]."""
    sums = torch.zeros(3)
    for micro in range(n_micro):
        with timer.wait():
            batch = next(batches)
        with timer.compute():
            text, image = batch["text"].to(device), batch["image"].to(device)
            skip_sync = no_sync is not None and micro < n_micro - 1
            with no_sync() if skip_sync else contextlib.nullcontext(), autocast():
                out = prior_loss(*forward(text, image), text, image)
            (out["loss"] / n_micro).backward()
            sums += torch.stack([out["loss"].detach(), out["loss_text"].detach(), out["loss_image"].detach()]).cpu()
        timer.step(text.shape[0] * seq_len)
        if on_batch is not None:
            on_batch(batch)
    return (sums / n_micro).tolist()


def optimizer_update(model, optimizer, ema: ModelEMA, grad_clip: float, schedule=None) -> torch.Tensor:
    """After the backward passes: clip, AdamW step, clear grads, EMA, schedule. Returns the grad norm.
    The benches (bench/bench_train_prior.py, bench/bench_prior_mfu.py) time this same update."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ema.update(model)
    if schedule is not None:
        schedule.step()
    return grad_norm


def train_fn(config: dict[str, Any]) -> None:
    import ray.train

    cfg = from_dict(PriorTrainConfig, config["cfg"])
    shape = PriorShape(**config["shape"])
    torch.set_num_threads(cfg.train.threads_per_worker or max(1, int(cfg.run.cpus_per_worker)))
    ctx = worker_context(config, bf16=cfg.optim.bf16)
    o, t = cfg.optim, cfg.train

    torch.manual_seed(cfg.data.seed)  # identical initialisation on every rank
    model = Prior(shape)
    ema = ModelEMA(model, o.ema_decay)
    model = prepare_model(model, ctx, activation_checkpointing=o.activation_checkpointing)
    ema.to(ctx.device)
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    psgd = register_powersgd(model, o.powersgd_rank, o.powersgd_start_iter) if o.powersgd and ddp else None
    forward = torch.compile(model) if cfg.model.compile else model  # checkpoints read `model`'s own weights
    optimizer = make_optimizer(model, o)
    schedule = WarmupPlateauSchedule(optimizer, o)

    ckpt = CheckpointManager(
        ctx,
        model,
        optimizer,
        ema=ema,
        schedule=schedule,
        meta={"shape": config["shape"], "tokens_root": cfg.data.tokens},
    )
    step, mine = ckpt.restore()
    if psgd is not None:
        load_powersgd_state_dict(psgd, mine.get("powersgd"))

    text_vocab = shape.text_vocab
    train_encoder = CaptionEncoder(config["tokenizer_json"], shape.text_len, text_vocab, cfg.data.bpe_dropout)
    plain_encoder = CaptionEncoder(config["tokenizer_json"], shape.text_len, text_vocab, 0.0)
    data = DataPosition(
        ray.train.get_dataset_shard(f"train_{ctx.rank}"),
        collate(train_encoder, shape.image_len),
        cfg.data.batch_size,
        cfg.data.seed,
        cfg.data.shuffle_buffer,
        cfg.data.prefetch_batches,
        state=mine.get("data"),
    )
    val_shard = ray.train.get_dataset_shard("val")
    batches = iter(data)
    decode = load_decoder(t.dvae, shape.grid_h, shape.grid_w, shape.image_vocab) if ctx.is_rank0 else None
    peak = peak_flops(ctx.device, t.cpu_peak_flops) if ctx.is_rank0 else 0.0
    fpt = flops_per_token(shape)
    marker = os.path.join(config["storage_path"], cfg.run.name, "injected_failure")
    timer = StepTimer()
    model.train()

    while step < t.max_steps:
        lr = schedule.apply()
        traced = None
        if t.trace_batches:  # the step is bound now: the lambda runs inside accumulate_gradients

            def traced(b, step=step):
                trace(t.trace_batches, {"step": step + 1, "rank": ctx.rank, "pid": os.getpid(), "keys": b["keys"]})

        loss, loss_text, loss_image = accumulate_gradients(
            forward,
            batches,
            o.grad_accum,
            model.no_sync if ddp else None,
            ctx.autocast,
            timer,
            ctx.device,
            shape.seq_len,
            traced,
        )
        with timer.compute():
            grad_norm = optimizer_update(model, optimizer, ema, o.grad_clip, schedule)
        step += 1

        if ctx.should_log(step):
            stats = timer.take()
            ctx.logger.log_metrics(
                {
                    "loss": loss,
                    "loss_text": loss_text,
                    "loss_image": loss_image,
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "epoch": data.epoch,
                    **stats,
                    "mfu": mfu(fpt, stats["tokens_per_s"], peak),
                },
                step,
            )
        if step % t.val_every == 0 or step == t.max_steps:
            val = validate(
                model, val_shard, collate(plain_encoder, shape.image_len), cfg.data.batch_size, t.val_batches, ctx
            )
            halved = schedule.validated(val["val_loss"])
            ctx.logger.log_metrics({**val, "lr_halvings": schedule.halvings, "lr_halved": float(halved)}, step)
        if ctx.is_rank0 and ((t.sample_every and step % t.sample_every == 0) or step == t.max_steps):
            png = sample_grid(
                ema,
                shape,
                plain_encoder,
                t.sample_captions,
                t.samples_per_caption,
                t.sample_top_k,
                decode,
                ctx.device,
                cfg.data.seed,
            )
            ctx.logger.log_artifact_bytes(png, f"samples_step{step:07d}.png", "samples")
        if step % t.checkpoint_every == 0 or step == t.max_steps:
            ckpt.save(
                step,
                {"loss": loss},
                rank_state={"data": data.state(), "powersgd": powersgd_state_dict(psgd) if psgd is not None else None},
            )
        inject_failure(ctx, step, t.fail_at_step, marker)
    ctx.close()
