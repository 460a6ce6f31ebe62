"""Worker side: who am I, which device, how the model is wrapped, bf16 autocast, parameter EMA.

    ctx = worker_context(config)          # rank, world size, device, rank-0 MLflow logger
    model = prepare_model(model, ctx, fsdp_units=lambda m: m.blocks, activation_checkpointing=False)
    with ctx.autocast(): loss = model(batch)
    ...
    ctx.close()                           # flush the async logger

prepare_model wraps according to the harness's `parallel` setting:
  ddp   -> ray.train.torch.prepare_model (DistributedDataParallel; gloo on CPU, nccl on GPU)
  fsdp2 -> torch.distributed.fsdp.fully_shard on each unit then on the root (FSDP2, DTensor params)
  none  -> moved to the device only
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, get_args

import torch

from harness.config import Parallel
from harness.launch import HARNESS_KEY
from harness.logger import AsyncRunLogger, NullLogger


@dataclass
class WorkerContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    parallel: str
    log_every: int
    run_id: str
    logger: NullLogger = field(default_factory=NullLogger)
    bf16: bool = True
    attempt_checkpoint: Any = None  # ray.train.Checkpoint to restore from (None on a fresh start)

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    def autocast(self):
        """bf16 autocast on GPU; a no-op on CPU (CPU bf16 matmuls are slower than fp32 there)."""
        if self.device.type == "cuda" and self.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def should_log(self, step: int) -> bool:
        return self.is_rank0 and self.log_every > 0 and step % self.log_every == 0

    def close(self) -> None:
        self.logger.close()


def worker_context(config: dict[str, Any], bf16: bool = True) -> WorkerContext:
    """Build the context inside train_fn; rank 0 gets the asynchronous MLflow logger."""
    import ray.train
    import ray.train.torch

    h = config[HARNESS_KEY]
    tc = ray.train.get_context()
    rank = tc.get_world_rank()
    logger = AsyncRunLogger(h["run_id"], h["tracking_uri"]) if rank == 0 and h.get("run_id") else NullLogger()
    return WorkerContext(
        rank=rank,
        world_size=tc.get_world_size(),
        local_rank=tc.get_local_rank(),
        device=ray.train.torch.get_device(),
        parallel=h["parallel"],
        log_every=h["log_every"],
        run_id=h.get("run_id", ""),
        logger=logger,
        bf16=bf16,
        attempt_checkpoint=ray.train.get_checkpoint(),
    )


def prepare_model(
    model: torch.nn.Module,
    ctx: WorkerContext,
    *,
    fsdp_units: Callable[[torch.nn.Module], Iterable[torch.nn.Module]] | None = None,
    activation_checkpointing: bool = False,
    checkpoint_units: Callable[[torch.nn.Module], Iterable[torch.nn.Module]] | None = None,
    ddp_kwargs: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """Wrap `model` for data parallel training (see module docstring). Units default to the
    model's `blocks` attribute, the transformer layers, which is where sharding and recompute pay."""
    if ctx.parallel not in get_args(Parallel):  # else it would fall through to "none" and silently not shard
        raise ValueError(f"unknown parallel {ctx.parallel!r}; allowed: {', '.join(map(repr, get_args(Parallel)))}")
    units = fsdp_units or (lambda m: getattr(m, "blocks", []))
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

        wanted = {id(u) for u in (checkpoint_units or units)(model)}
        apply_activation_checkpointing(model, check_fn=lambda m: id(m) in wanted)
    if ctx.parallel == "ddp" and ctx.world_size > 1:
        import ray.train.torch

        return ray.train.torch.prepare_model(model, parallel_strategy="ddp", parallel_strategy_kwargs=ddp_kwargs or {})
    if ctx.parallel == "fsdp2":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        model.to(ctx.device)
        mp = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if ctx.device.type == "cuda" and ctx.bf16
            else MixedPrecisionPolicy()
        )
        for unit in units(model):
            fully_shard(unit, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    return model.to(ctx.device)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module under a DDP wrapper (FSDP2 shards in place, nothing to unwrap)."""
    return (
        model.module
        if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel)
        else model
    )


class ModelEMA:
    """Exponential moving average of the parameters (paper B.2: decay 0.99), kept in fp32.

    Build it from the plain module BEFORE prepare_model, then `.to(ctx.device)`. It holds full
    (unsharded) parameters on every rank, also under FSDP2 (simple, but memory-heavy at 12B)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Collective under FSDP2 (sharded parameters are gathered): every rank must call it."""
        for ema, live in zip(self.module.parameters(), unwrap(model).parameters(), strict=True):
            data = live.detach()
            if hasattr(data, "full_tensor"):  # FSDP2 DTensor shard -> full parameter
                data = data.full_tensor()
            ema.lerp_(data.to(device=ema.device, dtype=ema.dtype), 1.0 - self.decay)

    def to(self, device: torch.device) -> "ModelEMA":
        self.module.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state)
