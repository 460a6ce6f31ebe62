"""Stage 2 of this pipeline (the first stage of DALL-E's training): train the dVAE on Ray Train, with
the harness the prior uses (harness/). The command is orchestration/train_dvae.py:

    python orchestration/train_dvae.py --config configs/dvae_demo.toml --dataset DATASET --output dvae.pt

Objective (tokenize_images/objective.py): Gumbel-softmax relaxation, logit-Laplace reconstruction NLL,
beta * KL to the uniform prior. Schedules (cosine, paper): beta 0 -> 6.6 over 5k updates, tau 1 -> 1/16
over 150k, lr 1e-4 -> 1.25e-6 over 1.2M; `schedule.scale` shrinks them for short runs. AdamW
(0.9, 0.999), eps 1e-8, wd 1e-4, parameter EMA 0.999 (with a warm-up, see ema_decay). Data
(tokenize_images/dvae_data.py): each rank reads its own files of a seeded per-epoch file order, Ray Data decodes
and random-crops the images in CPU tasks, and a checkpoint records the rank's exact position in that order, which
a resume rebuilds and skips to. MLflow (rank 0, asynchronous): losses,
beta, tau, lr, codebook perplexity and fraction used, images/s, MFU, data-wait share, reconstruction grids.
Short runs can add a k-means codebook init, a frozen-encoder warm-up and a larger lr on the code embeddings
(CodebookConfig; off by default, on in configs/dvae_demo.toml, why in docs/tokens.md).
Rerunning with the same run.name resumes from the latest checkpoint; the EMA weights are exported to
`output` in this project's dVAE checkpoint format (what encode_tokens reads).
"""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
import torch

from common import storage
from common.config import flatten, from_dict, to_dict
from common.tracking import dataset_digest, register_pytorch_model
from tokenize_images.config import DVAETrainConfig
from tokenize_images.dvae import DVAE, DVAEConfig, flops_per_image, load_checkpoint, map_pixels, preset, save_checkpoint
from tokenize_images.dvae_data import DataStream, layout_fingerprint, trace
from tokenize_images.objective import codebook_usage, elbo_loss, logit_laplace_nll, schedules
from tokenize_images.patch_teacher import PatchTeacher, teacher_loss


def model_config(cfg: DVAETrainConfig) -> DVAEConfig:
    overrides = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k != "preset" and v}
    return preset(cfg.model.preset, **overrides)


def random_flip(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B,S,S,3): each image mirrored left-right with probability 1/2 (paper, Listing 1)."""
    flip = torch.rand(pixels.shape[0], generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1).to(pixels.device), pixels.flip(2), pixels)


def random_subcrop(pixels: torch.Tensor, side: int, grid: int, generator: torch.Generator) -> torch.Tensor:
    """(B,S,S,3) -> (B,side,side,3): one random side x side window for the whole batch, its corner on the token
    grid (a multiple of `grid` pixels), so the crop's tokens are the image's tokens there (`train_crop`)."""
    size = pixels.shape[1]
    if side <= 0 or side >= size:
        return pixels
    i, j = (torch.randint(0, (size - side) // grid + 1, (2,), generator=generator) * grid).tolist()
    return pixels[:, i : i + side, j : j + side]


def rank_seed(seed: int, rank: int, step: int) -> int:
    """The seed of a rank's random streams (Gumbel noise, flips) from `step` on: distinct per rank and per
    resume point, reproducible from the config alone, for the CPU and every CUDA generator (manual_seed)."""
    return int(np.random.SeedSequence([seed, 1 + rank, step]).generate_state(1, dtype=np.uint64)[0] >> 1)


def resblock_groups(dvae: DVAE) -> list[torch.nn.Module]:
    """The units of activation checkpointing and FSDP2 sharding: the four groups of the encoder and decoder."""
    return [
        m for part in (dvae.encoder, dvae.decoder) for n, m in part.blocks.named_children() if n.startswith("group")
    ]


# --- one update ---------------------------------------------------------------------------------


def train_step(
    model,
    optimizer,
    pixels: torch.Tensor,
    step: int,
    cfg: DVAETrainConfig,
    autocast=None,
    channels_last=False,
    teacher: PatchTeacher | None = None,
) -> dict:
    """One AdamW update at `step`; returns the figures to log. `pixels` is (B,S,S,3) uint8.

    While step < codebook.teacher_steps (a `teacher` is then required) the update learns the patch teacher's
    codes (tokenize_images/patch_teacher.py): the encoder's cross-entropy towards them plus the decoder's error
    in drawing them as hard one-hots (codebook.teacher_reconstruction); the paper's ELBO (Gumbel-softmax,
    logit-Laplace NLL, beta * KL) after."""
    import contextlib

    s = schedules(step, cfg.schedule)
    for group in optimizer.param_groups:
        group["lr"] = s["lr"] * group["lr_mult"]
    x = model_input(pixels)
    codes = None
    if step < cfg.codebook.teacher_steps:
        if teacher is None:
            raise ValueError(f"step {step} < codebook.teacher_steps {cfg.codebook.teacher_steps} needs a PatchTeacher")
        codes = teacher.codes(x)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast or contextlib.nullcontext():
        logits, stats = model(x, s["tau"], codes)
    if codes is None:
        losses = elbo_loss(x, stats, logits, s["beta"])
    else:
        taught = teacher_loss(logits, codes)
        if cfg.codebook.teacher_reconstruction == "mse":
            recon = {"mse": ((torch.sigmoid(stats[:, :3].float()) - x.float()) ** 2).mean()}
        else:
            recon = {"nll": logit_laplace_nll(x, stats).mean() / x[0].numel()}
        losses = {"loss": taught["teacher_ce"] + next(iter(recon.values())), **recon, **taught}
        s = {"lr": s["lr"]}  # beta and tau do not enter these updates
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    if step < cfg.codebook.encoder_frozen_steps:
        # Drop the encoder's gradients rather than run it under no_grad, which DDP would reject (it expects a
        # gradient for every parameter): AdamW then skips it, and its moments start when it is released.
        for group in optimizer.param_groups:
            if group["name"] == "encoder":
                for p in group["params"]:
                    p.grad = None
    if cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    optimizer.step()
    usage = codebook_usage(logits.detach().argmax(1), logits.shape[1])
    return {
        **{k: v.item() for k, v in losses.items()},
        **s,
        "codebook_perplexity": usage["perplexity"],
        "codebook_used_fraction": usage["used_fraction"],
    }


def ema_decay(step: int, decay: float) -> float:
    """EMA decay with warm-up: min(decay, (1 + t) / (10 + t)). A flat 0.999 would leave a short run's EMA
    (what gets exported) mostly at the random initialisation; at paper length the cap applies after ~9k updates."""
    return min(decay, (1 + step) / (10 + step))


def make_optimizer(model, cfg: DVAETrainConfig) -> torch.optim.AdamW:
    """AdamW over three groups, so train_step can scale each one's lr (CodebookConfig): the encoder, the
    decoder's code embeddings (its input 1x1 conv), and the rest of the decoder."""
    from harness import unwrap

    o, dvae = cfg.optim, unwrap(model)
    codes = list(dvae.decoder.blocks.input.parameters())
    rest = [p for name, m in dvae.decoder.blocks.named_children() if name != "input" for p in m.parameters()]
    groups = [
        {"name": "encoder", "params": list(dvae.encoder.parameters()), "lr_mult": 1.0},
        {"name": "code_embeddings", "params": codes, "lr_mult": cfg.codebook.code_embedding_lr_mult},
        {"name": "decoder", "params": rest, "lr_mult": 1.0},
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.schedule.lr_start, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
    )


def model_input(pixels: torch.Tensor) -> torch.Tensor:
    """(B,S,S,3) uint8 -> (B,3,S,S) pixels mapped into the logit-Laplace's range."""
    return map_pixels(pixels.permute(0, 3, 1, 2).float() / 255.0)


def first_images(stream, count: int, device) -> torch.Tensor:
    """The stream's next batches until `count` images, as model input. They count as taken: a resume skips them."""
    images, seen = [], 0
    while seen < count:
        _, pixels = next(stream)
        images.append(torch.from_numpy(pixels))
        seen += pixels.shape[0]
    return model_input(torch.cat(images).to(device))


def init_codebook(dvae: DVAE, stream, cfg: DVAETrainConfig, ctx) -> dict[str, float]:
    """k-means codebook init (tokenize_images/codebook_init.py) from the stream's first images, then rank 0's
    result on every rank (DDP would broadcast it too, FSDP2 would not). Training goes on from the next batch.
    Clustering costs O(images x g^2 x codes): meant for small presets, where short runs need it."""
    from tokenize_images.codebook_init import init_codebook_from_data

    dvae.to(ctx.device)
    x = first_images(stream, cfg.codebook.kmeans_images, ctx.device)
    figures = init_codebook_from_data(dvae.encoder, x, cfg.codebook.kmeans_margin, seed=cfg.optim.seed)
    conv = dvae.encoder.blocks.output.conv
    broadcast_from_rank0(ctx, conv.weight.data, conv.bias.data)
    return figures


def fit_teacher(stream, cfg: DVAETrainConfig, dvae_cfg: DVAEConfig, ctx) -> tuple[PatchTeacher, dict[str, float]]:
    """The patch teacher (tokenize_images/patch_teacher.py) from the stream's first `kmeans_images` images.
    Only rank 0 clusters; the other ranks take its centres (their own k-means would be overwritten), but every
    rank takes the images from its stream, so that data positions stay as a resume rebuilds them."""
    x = first_images(stream, cfg.codebook.kmeans_images, ctx.device)
    p = dvae_cfg.downsample
    if ctx.is_rank0:
        teacher = PatchTeacher.fit(x, dvae_cfg.vocab_size, p, seed=cfg.optim.seed)
    else:
        teacher = PatchTeacher(torch.empty(dvae_cfg.vocab_size, 3 * p * p, device=ctx.device), p)
    broadcast_from_rank0(ctx, teacher.centres)
    return teacher, ({"teacher_codes_used": float(teacher.used_codes(x))} if ctx.is_rank0 else {})


def broadcast_from_rank0(ctx, *tensors: torch.Tensor) -> None:
    if ctx.world_size > 1:
        import torch.distributed as dist

        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def reconstruction_png(dvae: DVAE, pixels: torch.Tensor, count: int = 8) -> bytes:
    """Originals (top) and decoder(argmax tokens) (bottom), as PNG bytes."""
    from PIL import Image

    from common.images import comparison_rows

    originals = pixels[:count].cpu()
    device = next(dvae.parameters()).device
    recon = dvae.decode_tokens(dvae.encode_tokens(originals.permute(0, 3, 1, 2).float().to(device) / 255.0))
    recon = (recon.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(comparison_rows([originals.numpy(), recon])).save(buf, format="PNG")
    return buf.getvalue()


# --- the Ray Train worker -----------------------------------------------------------------------


def train_loop_per_worker(config: dict) -> None:
    from harness import CheckpointManager, ModelEMA, StepTimer, mfu, peak_flops, prepare_model, worker_context

    cfg = from_dict(DVAETrainConfig, config["cfg"])
    dvae_cfg = DVAEConfig(**config["dvae"])
    ctx = worker_context(config)
    torch.manual_seed(cfg.optim.seed)  # same initial weights on every rank
    dvae = DVAE(dvae_cfg)
    fresh = ctx.attempt_checkpoint is None
    channels_last = cfg.channels_last and ctx.device.type == "cuda"
    files = config["files"]
    data = DataStream(files, cfg, dvae_cfg.image_size, ctx.rank, ctx.world_size)
    stream = None
    if fresh and cfg.codebook.kmeans_margin > 0:
        stream = iter(data)  # the batches it takes count as taken: a resume skips them too
        ctx.logger.log_metrics(init_codebook(dvae, stream, cfg, ctx), 0)
    teacher = None
    if cfg.codebook.teacher_steps > 0:
        teacher = PatchTeacher()  # a resume loads the centres from the checkpoint
        if fresh:
            stream = iter(data)
            teacher, figures = fit_teacher(stream, cfg, dvae_cfg, ctx)
            ctx.logger.log_metrics(figures, 0)
    # The EMA copies the plain module: FSDP2 shards in place and refuses deepcopy afterwards.
    ema = ModelEMA(dvae, cfg.optim.ema_decay)
    if channels_last:
        dvae = dvae.to(memory_format=torch.channels_last)
    groups = resblock_groups
    model = prepare_model(
        dvae, ctx, fsdp_units=groups, activation_checkpointing=cfg.activation_checkpointing, checkpoint_units=groups
    )
    ema.to(ctx.device)
    optimizer = make_optimizer(model, cfg)
    fingerprint = layout_fingerprint(files, cfg.shuffle_files)
    ckpt = CheckpointManager(
        ctx,
        model,
        optimizer,
        ema=ema,
        meta={"dvae": config["dvae"]},
        fingerprint=fingerprint,
        extra_state={"patch_teacher": teacher} if teacher is not None else None,
    )
    step, mine = ckpt.restore()
    if ckpt.reset_reason:
        print(f"[train_dvae] rank {ctx.rank}: {ckpt.reset_reason}", flush=True)
        if ctx.is_rank0:
            ctx.logger.log_metrics({"data_position_reset": 1.0}, step)
    # Every rank's CPU and CUDA generators from (seed, rank, step): distinct Gumbel noise and flips per rank,
    # also after a resume (the checkpoint restores only the CPU generator's state).
    torch.manual_seed(rank_seed(cfg.optim.seed, ctx.rank, step))
    flip_gen = torch.Generator().manual_seed(rank_seed(cfg.optim.seed, ctx.rank, step) + 1)
    if stream is None:  # from the checkpoint's data position (a fresh run: the start), in the same order
        data = DataStream(files, cfg, dvae_cfg.image_size, ctx.rank, ctx.world_size, mine.get("data_position"))
        stream = iter(data)

    train_flops = flops_per_image(dvae_cfg, training=True)
    peak = peak_flops(ctx.device) if ctx.is_rank0 else 0.0  # CPU: a measured fp32 matmul rate
    timer = StepTimer()
    metrics: dict = {}
    while step < cfg.optim.max_steps:
        with timer.wait():
            keys, pixels = next(stream)
            epoch = data.epoch
            if cfg.trace_batches:
                trace(cfg.trace_batches, {"step": step + 1, "rank": ctx.rank, "epoch": epoch, "keys": keys.tolist()})
            pixels = torch.from_numpy(pixels)
            if cfg.horizontal_flip:
                pixels = random_flip(pixels, flip_gen)
            whole, pixels = pixels, random_subcrop(pixels, cfg.train_crop, dvae_cfg.downsample, flip_gen)
            pixels = pixels.to(ctx.device, non_blocking=True)
        with timer.compute():
            metrics = train_step(model, optimizer, pixels, step, cfg, ctx.autocast(), channels_last, teacher)
            ema.decay = ema_decay(step, cfg.optim.ema_decay)
            ema.update(model)
        step += 1
        timer.step(tokens=pixels.shape[0] * ctx.world_size)
        if ctx.should_log(step):
            t = timer.take()
            ctx.logger.log_metrics(
                {
                    **metrics,
                    "epoch": epoch,
                    "images_per_s": t["tokens_per_s"],
                    "mfu": mfu(train_flops, t["tokens_per_s"] / ctx.world_size, peak),
                    "data_wait_share": t["data_wait_share"],
                    "step_time_s": t["step_time_s"],
                },
                step,
            )
        if ctx.is_rank0 and (step % cfg.image_every == 0 or step == cfg.optim.max_steps):
            ctx.logger.log_image(reconstruction_png(ema.module, whole), "reconstructions", step)  # image slider
        if step % cfg.checkpoint_every == 0 or step == cfg.optim.max_steps:
            ckpt.save(step, {"loss": metrics["loss"]}, {"data_position": data.state()})
    ctx.close()


# --- driver -------------------------------------------------------------------------------------


REGISTERED_NAME = "dalle-dvae"  # MLflow model registry: each trained dVAE is a version, linked to its run


def export_ema(checkpoint_dir: str, output: str, run_id: str) -> str:
    """The EMA weights of a Ray Train checkpoint -> `output` in the dVAE checkpoint format. Returns sha256."""
    state = torch.load(os.path.join(checkpoint_dir, "state.pt"), map_location="cpu", weights_only=True)
    model = DVAE(DVAEConfig(**state["dvae"]))
    model.load_state_dict(state["ema"])
    return save_checkpoint(
        model, output, extra={"steps": int(state["step"]), "mlflow_run_id": run_id, "weights": "ema"}
    )


def train_dvae(cfg: DVAETrainConfig) -> dict:
    """Train (or resume, or with reuse=True skip when `output` exists). Returns {checkpoint, sha256, ...}."""

    from common.ray_cluster import init_ray, stop_ray
    from harness.launch import launch
    from tokenize_images.dvae import checkpoint_info

    if not (cfg.dataset and cfg.output):
        raise ValueError("dataset and output are required")
    if cfg.reuse and storage.exists(cfg.output):
        _, sha = checkpoint_info(cfg.output)
        return {"checkpoint": cfg.output, "sha256": sha, "reused": True}
    if not cfg.run.name:
        cfg = dataclasses.replace(
            cfg, run=dataclasses.replace(cfg.run, name="dvae-" + os.path.basename(cfg.output).split(".")[0])
        )
    dvae_cfg = model_config(cfg)
    if cfg.train_crop and (cfg.train_crop % dvae_cfg.downsample or cfg.train_crop > dvae_cfg.image_size):
        raise ValueError(
            f"train_crop {cfg.train_crop} must be a multiple of the dVAE's downsample ({dvae_cfg.downsample}) "
            f"and at most its image_size ({dvae_cfg.image_size}); 0 trains on whole images"
        )
    files = storage.glob(storage.join(cfg.dataset, "shards", "*.parquet"))
    if len(files) < cfg.run.num_workers:
        raise ValueError(
            f"{len(files)} dataset shards under {cfg.dataset}/shards for {cfg.run.num_workers} workers: "
            "each worker reads whole shards (tokenize_images/dvae_data.py)"
        )
    owns_ray = init_ray(cfg.run.ray_address or None, num_cpus=cfg.run.num_cpus or None)
    try:
        result = launch(
            train_loop_per_worker,
            {"cfg": to_dict(cfg), "dvae": dataclasses.asdict(dvae_cfg), "files": sorted(files)},
            cfg.run,
            params={**flatten(cfg), **{f"dvae.{k}": v for k, v in dataclasses.asdict(dvae_cfg).items()}},
            tags={"stage": "train_dvae", "dataset": cfg.dataset},
            inputs=[(cfg.dataset, "training", dataset_digest(cfg.dataset))],
        )
    finally:
        if owns_ray:
            stop_ray()
    if result.checkpoint_path is None:
        raise RuntimeError("training reported no checkpoint")
    sha = export_ema(result.checkpoint_path, cfg.output, result.run_id)
    model, _ = load_checkpoint(cfg.output)  # the exported EMA weights, as encode_tokens will read them
    register_pytorch_model(model, "dvae", REGISTERED_NAME, result.run_id)
    return {
        "checkpoint": cfg.output,
        "sha256": sha,
        "reused": False,
        "run_id": result.run_id,
        "resumed": result.resumed,
        "metrics": result.metrics,
    }
