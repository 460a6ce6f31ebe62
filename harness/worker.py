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

    from common.ray_cluster import quiet_ray_data

    quiet_ray_data()  # this worker iterates its dataset shard: its own per-epoch lines and bars
    quiet_train_reports()
    h = config[HARNESS_KEY]
    tc = ray.train.get_context()
    rank = tc.get_world_rank()
    device = ray.train.torch.get_device()
    logger = AsyncRunLogger(h["run_id"], h["tracking_uri"]) if rank == 0 and h.get("run_id") else NullLogger()
    if device.type == "cpu":  # torch's default, every core of the node, would oversubscribe it with several workers
        torch.set_num_threads(h["cpu_threads"])
        logger.log_metrics({"torch_threads": float(torch.get_num_threads())}, 0)  # what run.threads_per_worker gave
    return WorkerContext(
        rank=rank,
        world_size=tc.get_world_size(),
        local_rank=tc.get_local_rank(),
        device=device,
        parallel=h["parallel"],
        log_every=h["log_every"],
        run_id=h.get("run_id", ""),
        logger=logger,
        bf16=bf16,
        attempt_checkpoint=ray.train.get_checkpoint(),
    )


def quiet_train_reports() -> None:
    """Ray Train 2.60 logs "Reporting training result ..." at INFO for every report of every rank, on a
    logger named by its module's file path rather than under `ray.train`, so RunConfig's LoggingConfig
    (harness/launch.py) does not reach it. This worker sets that logger to the same level."""
    import logging

    from common.ray_cluster import train_log_level

    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: nothing to quiet here
        return
    logging.getLogger(context.__file__).setLevel(train_log_level())


def prepare_model(
    model: torch.nn.Module,
    ctx: WorkerContext,
    *,
    fsdp_units: Callable[[torch.nn.Module], Iterable[torch.nn.Module]] | None = None,
    activation_checkpointing: bool = False,
    checkpoint_units: Callable[[torch.nn.Module], Iterable[torch.nn.Module]] | None = None,
    ddp_kwargs: dict[str, Any] | None = None,
    fp32_units: Callable[[torch.nn.Module], Iterable[torch.nn.Module]] | None = None,
    fp32_root: bool = False,
) -> torch.nn.Module:
    """Wrap `model` for data parallel training (see module docstring). Units default to the
    model's `blocks` attribute, the transformer layers, which is where sharding and recompute pay.

    FSDP2 with bf16 casts every parameter of a unit to bf16 for compute. `fp32_units` (modules inside
    the units, e.g. LayerNorms) are sharded on their own with fp32 parameters, and `fp32_root` keeps
    the root's own parameters (embeddings, final norm, heads) in fp32: what the DALL-E paper keeps in
    32 bits (appendix D). Both default off, which is the earlier behaviour (the dVAE relies on it)."""
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
        fp32 = MixedPrecisionPolicy(reduce_dtype=torch.float32)
        for unit in fp32_units(model) if fp32_units is not None else ():
            fully_shard(unit, mp_policy=fp32)
        for unit in units(model):
            fully_shard(unit, mp_policy=mp)
        fully_shard(model, mp_policy=fp32 if fp32_root else mp)
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
    """Exponential moving average of the parameters, kept in fp32: every `every`-th call of `update`
    does ema <- decay·ema + (1 - decay)·live (the DALL-E paper, B.2: 0.99 once every 25 updates; the
    default every=1 averages at every call, as the dVAE trainer does).

    Build it from the plain module BEFORE prepare_model, then `.to(ctx.device)`. `module` holds the
    full averaged model (for sampling and checkpoints). Under FSDP2 the averaging itself works on this
    rank's local shards only (no all-gather per update); `sync()` gathers them into `module` (a
    collective: every rank calls it, as `state_dict` does)."""

    def __init__(self, model: torch.nn.Module, decay: float, every: int = 1):
        if every < 1:
            raise ValueError(f"EMA every must be >= 1, got {every}")
        self.decay, self.every = decay, every
        self.updates = 0  # calls of update() so far (CheckpointManager.restore sets it to the step)
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._shards: list[torch.Tensor] | None = None  # FSDP2: this rank's slices of module's parameters
        self._live_meta: list[Any] = []

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> bool:
        """Count one optimiser update; average when the cadence says so. Returns True if it averaged."""
        self.updates += 1
        if self.updates % self.every:
            return False
        live = [p.detach() for p in unwrap(model).parameters()]
        if live and hasattr(live[0], "to_local"):  # FSDP2 DTensor parameters: average the local shards
            if self._shards is None:
                self._shards = self._slice_module(live)
            ema, live = self._shards, [p.to_local() for p in live]
        else:
            ema = list(self.module.parameters())
        if any(a.dtype != b.dtype or a.device != b.device for a, b in zip(ema, live, strict=True)):
            live = [b.to(device=a.device, dtype=a.dtype) for a, b in zip(ema, live, strict=True)]
        torch._foreach_lerp_(ema, live, 1.0 - self.decay)
        return True

    def _slice_module(self, live: list[torch.Tensor]) -> list[torch.Tensor]:
        """This rank's shard of every full EMA parameter, cut locally (src_data_rank=None: no scatter)."""
        from torch.distributed.tensor import distribute_tensor

        self._live_meta = [(p.device_mesh, p.placements, p.shape, p.stride()) for p in live]
        return [
            distribute_tensor(full.detach().to(p.device), p.device_mesh, p.placements, src_data_rank=None)
            .to_local()
            .clone()
            for full, p in zip(self.module.parameters(), live, strict=True)
        ]

    @torch.no_grad()
    def sync(self) -> torch.nn.Module:
        """`module` with the latest average (gathers the FSDP2 shards: collective). Returns module."""
        if self._shards is not None:
            from torch.distributed.tensor import DTensor

            for full, shard, (mesh, placements, shape, stride) in zip(
                self.module.parameters(), self._shards, self._live_meta, strict=True
            ):
                gathered = DTensor.from_local(shard, mesh, placements, shape=shape, stride=stride).full_tensor()
                full.copy_(gathered.to(full.device))
        return self.module

    def to(self, device: torch.device) -> "ModelEMA":
        self.module.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        """The averaged model's state dict (collective under FSDP2, see sync)."""
        return self.sync().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state)
        self._shards = None  # re-cut from the loaded module at the next update
