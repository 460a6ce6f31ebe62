"""The training loop that runs on every Ray Train worker, top to bottom (see docs/prior.md).

build model -> wrap (DDP/FSDP2) -> restore checkpoint -> optional PowerSGD -> loop:
    accumulate grad_accum micro-batches (loss normalised by the update's real target counts over
        every micro-batch and rank) -> clip -> AdamW -> EMA (every ema_every updates) -> schedule
    every log_every: metrics to MLflow (rank 0, async; the only host sync of the step)
    every val_every: validation loss (all ranks, all-reduced); plateau check on the training loss
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
    mfu,
    peak_flops,
    prepare_model,
    worker_context,
)
from harness.powersgd import register_powersgd
from tokenize_images.grid_decoder import load_decoder
from training.config import PriorTrainConfig
from training.data import CaptionEncoder, DataPosition, collate, trace
from training.model import Prior, PriorShape, flops_per_token, losses_from_sums, prior_loss, text_target_count
from training.optim import WarmupPlateauSchedule, make_optimizer

__all__ = ["accumulate_gradients", "optimizer_update", "register_powersgd", "train_fn", "validate"]


def all_reduce_sum(t: torch.Tensor, world_size: int) -> torch.Tensor:
    """Sum over ranks, in place (a tensor on the worker's device: nccl needs CUDA tensors)."""
    if world_size > 1:
        torch.distributed.all_reduce(t)
    return t


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """Pinned host tensors (collate pins them for GPU workers) are copied without blocking the host."""
    return t.to(device, non_blocking=t.is_pinned())


@torch.no_grad()
def validate(model, val_shard, collate_fn, batch_size: int, max_batches: int, ctx) -> dict[str, float]:
    """Validation losses over every rank's split: token-weighted means over real targets. The whole
    split is read so that the streaming split stays in step across ranks, but only the first
    max_batches are BPE-encoded and evaluated (iter_batches: raw numpy, encoding on demand)."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # sum_text, n_text, sum_image, n_image
    for i, raw in enumerate(val_shard.iter_batches(batch_size=batch_size, batch_format="numpy")):
        if max_batches and i >= max_batches:
            continue
        batch = collate_fn(raw)
        text, image = to_device(batch["text"], ctx.device), to_device(batch["image"], ctx.device)
        with ctx.autocast():
            out = prior_loss(*model(text, image), text, image)
        sums += out["sums"].double()
    model.train()
    losses = losses_from_sums(all_reduce_sum(sums, ctx.world_size).tolist())
    return {f"val_{k}": v for k, v in losses.items()}


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
    temperature: float = 1.0,
) -> bytes:
    text = encoder([c for c in captions for _ in range(per_caption)]).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    tokens = ema.module.to(device).generate(text, temperature=temperature, top_k=top_k, generator=gen)
    return grid_png(decode(tokens), ncols=per_caption)


def accumulate_gradients(
    forward,
    batches,
    n_micro: int,
    no_sync,
    autocast,
    timer: StepTimer,
    device,
    seq_len: int,
    on_batch=None,
    *,
    text_vocab: int,
    world_size: int = 1,
) -> torch.Tensor:
    """Forward and backward over `n_micro` micro-batches for one update.

    Each kind's loss is divided by its real target count over the WHOLE update: every micro-batch of
    every rank (counted on the host from the token ids, then one small all-reduce). With the
    1/8 and 7/8 weights this gives exactly the gradient of one batch of all those sequences, whatever
    the caption lengths; the loss is multiplied by world_size because DDP and FSDP2 average gradients
    over ranks. DDP all-reduces on the last micro-batch only (`no_sync` on the others).

    Returns the update's [sum_text, n_text, sum_image, n_image] on `device` (no host sync)."""
    with timer.wait():
        micro = [next(batches) for _ in range(n_micro)]
    with timer.compute():
        counts = torch.tensor(
            [sum(int(text_target_count(b["text"], text_vocab)) for b in micro), sum(b["image"].numel() for b in micro)],
            dtype=torch.float32,
        )
        counts = all_reduce_sum(counts.to(device), world_size)
        norm = (counts[0].clamp(min=1), counts[1])
        sums = torch.zeros(4, device=device)
    for i, batch in enumerate(micro):
        with timer.compute():
            text, image = to_device(batch["text"], device), to_device(batch["image"], device)
            skip_sync = no_sync is not None and i < n_micro - 1
            with no_sync() if skip_sync else contextlib.nullcontext(), autocast():
                out = prior_loss(*forward(text, image), text, image, counts=norm)
            (out["loss"] * world_size).backward()
            sums += out["sums"]
        timer.step(text.shape[0] * seq_len)
        if on_batch is not None:
            on_batch(batch)
    return sums


def optimizer_update(model, optimizer, ema: ModelEMA, grad_clip: float, schedule=None) -> torch.Tensor:
    """After the backward passes: clip, AdamW step, clear grads, EMA, schedule. Returns the grad norm
    (a device tensor: read it only when logging). The benches time this same update."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ema.update(model)
    if schedule is not None:
        schedule.step()
    return grad_norm


def fp32_layer_norms(model: Prior) -> list[torch.nn.Module]:
    """FSDP2 units kept in fp32 inside the bf16 blocks: the gains and biases of the LayerNorms."""
    return [norm for block in model.blocks for norm in (block.ln1, block.ln2)]


def train_fn(config: dict[str, Any]) -> None:
    import ray.train

    cfg = from_dict(PriorTrainConfig, config["cfg"])
    shape = PriorShape(**config["shape"])
    ctx = worker_context(config, bf16=cfg.optim.bf16)
    o, t = cfg.optim, cfg.train

    torch.manual_seed(cfg.data.seed)  # identical initialisation on every rank
    model = Prior(shape)
    ema = ModelEMA(model, o.ema_decay, every=o.ema_every)
    model = prepare_model(
        model,
        ctx,
        activation_checkpointing=o.activation_checkpointing,
        fp32_units=fp32_layer_norms,  # FSDP2 + bf16: gains, biases, embeddings, heads stay fp32 (paper D)
        fp32_root=True,
    )
    ema.to(ctx.device)
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    compile_on = cfg.model.compile == "true" or (cfg.model.compile == "auto" and ctx.device.type == "cuda")
    forward = torch.compile(model) if compile_on else model  # checkpoints read `model`'s own weights
    optimizer = make_optimizer(model, o)
    schedule = WarmupPlateauSchedule(optimizer, o)

    ckpt = CheckpointManager(
        ctx,
        model,
        optimizer,
        ema=ema,
        schedule=schedule,
        meta={"shape": config["shape"], "tokens_root": cfg.data.tokens},
        fingerprint=config.get("data_fingerprint", ""),
    )
    step, mine = ckpt.restore()
    if ckpt.reset_reason:
        print(f"[train_prior] rank {ctx.rank}: {ckpt.reset_reason}", flush=True)
        if ctx.is_rank0:
            ctx.logger.log_metrics({"data_position_reset": 1.0}, step)
    # Registered after the restore: the saved PowerSGD state goes back lazily, on the buckets' device,
    # once DDP has rebuilt its buckets (harness/powersgd.py).
    psgd = (
        register_powersgd(model, o.powersgd_rank, o.powersgd_start_iter, mine.get("powersgd"))
        if o.powersgd and ddp
        else None
    )

    text_vocab = shape.text_vocab
    train_encoder = CaptionEncoder(config["tokenizer_json"], shape.text_len, text_vocab, cfg.data.bpe_dropout)
    plain_encoder = CaptionEncoder(config["tokenizer_json"], shape.text_len, text_vocab, 0.0)
    data = DataPosition(
        ray.train.get_dataset_shard(f"train_{ctx.rank}"),
        collate(train_encoder, shape.image_len, pin=ctx.device.type == "cuda"),
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
    log_sums = torch.zeros(4, device=ctx.device)  # this rank's loss sums since the last log
    window = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # ... since the last plateau check

    while step < t.max_steps:
        lr = schedule.apply()
        traced = None
        if t.trace_batches:  # the step is bound now: the lambda runs inside accumulate_gradients

            def traced(b, step=step):
                trace(t.trace_batches, {"step": step + 1, "rank": ctx.rank, "pid": os.getpid(), "keys": b["keys"]})

        sums = accumulate_gradients(
            forward,
            batches,
            o.grad_accum,
            model.no_sync if ddp else None,
            ctx.autocast,
            timer,
            ctx.device,
            shape.seq_len,
            traced,
            text_vocab=text_vocab,
            world_size=ctx.world_size,
        )
        with timer.compute():
            grad_norm = optimizer_update(model, optimizer, ema, o.grad_clip, schedule)
        step += 1
        log_sums += sums
        window += sums.double()

        if ctx.should_log(step):  # the one host sync of a logged step; unlogged steps have none
            stats = timer.take()
            ctx.logger.log_metrics(
                {
                    **losses_from_sums(log_sums.tolist()),  # rank 0's updates since the last log
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "epoch": data.epoch,
                    "text_truncated_share": train_encoder.truncated / max(1, train_encoder.captions),  # so far
                    **stats,
                    "mfu": mfu(fpt, stats["tokens_per_s"], peak),
                },
                step,
            )
        if ctx.log_every > 0 and step % ctx.log_every == 0:
            log_sums.zero_()
        if step % t.val_every == 0 or step == t.max_steps:
            val = validate(
                model, val_shard, collate(plain_encoder, shape.image_len), cfg.data.batch_size, t.val_batches, ctx
            )
            # The paper halves the lr when the TRAINING loss plateaus: the window's mean over all ranks.
            train_window = losses_from_sums(all_reduce_sum(window, ctx.world_size).tolist())["loss"]
            window.zero_()
            halved = schedule.observe(train_window)
            ctx.logger.log_metrics(
                {
                    **val,
                    "train_window_loss": train_window,
                    "lr_halvings": schedule.halvings,
                    "lr_halved": float(halved),
                },
                step,
            )
        sampling = (t.sample_every and step % t.sample_every == 0) or step == t.max_steps
        if sampling:
            ema.sync()  # FSDP2: gathers the EMA shards (collective); otherwise a no-op
        if ctx.is_rank0 and sampling:
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
                t.sample_temperature,
            )
            ctx.logger.log_image(png, "samples", step)  # MLflow's image slider pages through the steps
        if step % t.checkpoint_every == 0 or step == t.max_steps:
            ckpt.save(
                step,
                {"loss": losses_from_sums(sums.tolist())["loss"]},  # this update, this rank
                rank_state={"data": data.state(), "powersgd": psgd.state_dict() if psgd is not None else None},
            )
        inject_failure(ctx, step, t.fail_at_step, marker)
    ctx.close()
