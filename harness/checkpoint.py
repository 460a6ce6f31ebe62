"""Checkpoints through ray.train.report / ray.train.get_checkpoint.

Layout of one checkpoint directory (Ray merges every worker's directory into one):
    state.pt        written by rank 0: model, optimiser, scheduler, EMA, step, data position, extras
    rank-<r>.pt     written by every rank: state that differs per rank (PowerSGD error feedback,
                    this rank's data position, RNG)

A trainer hands its state objects to one CheckpointManager (in the spirit of torchtitan's
CheckpointManager(states)), which saves and restores them the same way for every trainer:

    ckpt = CheckpointManager(ctx, model, optimizer, ema=ema, schedule=schedule, meta={"shape": ...})
    step, mine = ckpt.restore()          # (0, {}) on a fresh start; RNG restored; mine = this rank's extras
    ckpt.save(step, {"loss": ...}, rank_state={"data": data.state()})      # EVERY rank calls it

The lower-level save_checkpoint / load_checkpoint below are what it is built on.

Files are plain torch.save of tensors and Python primitives, read back with weights_only=True:
no pickled code is ever executed when resuming. Model/optimiser state dicts are full (unsharded)
for DDP and FSDP2 alike, so a checkpoint restores on any world size.

Resume memory: files are opened with mmap (pages are read on demand and shared by the ranks of a
node through the page cache, not copied into each process). Under FSDP2 only rank 0 reads the model
and optimiser state; `set_*_state_dict(broadcast_from_rank0=True)` sends every other rank its own
shard, one parameter at a time. (Saving still gathers the full state on rank 0; a sharded DCP save
is the next step, docs/prior.md.)

Per-rank state is only valid for the layout it was saved under: every checkpoint records the world
size and a fingerprint of how the data is dealt (the caller's, e.g. a hash of each rank's shard
list). If either differs on resume, the per-rank extras other than the RNG are dropped (the data
position starts fresh) and `CheckpointManager.reset_reason` says why, for the trainer to log.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

import numpy as np
import torch

from harness.worker import WorkerContext, unwrap

SHARED_FILE = "state.pt"
log = logging.getLogger(__name__)


class CheckpointManager:
    """Model, optimiser, EMA and schedule (rank 0's file), RNG and any per-rank extras (data position,
    PowerSGD memories: every rank's file), saved and restored in one place for every trainer.
    `meta` is static information saved with each checkpoint (model shape, token root, ...)."""

    def __init__(
        self,
        ctx: WorkerContext,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        ema: Any = None,
        schedule: Any = None,
        meta: dict[str, Any] | None = None,
        fingerprint: str = "",
        extra_state: dict[str, Any] | None = None,
    ):
        """extra_state: more objects with state_dict / load_state_dict saved in rank 0's file under their names
        (the dVAE's patch teacher), restored like the EMA."""
        self.ctx, self.model, self.optimizer, self.ema, self.schedule = ctx, model, optimizer, ema, schedule
        self.stateful = {"ema": ema, "schedule": schedule, **(extra_state or {})}
        self.meta = dict(meta or {})
        self.fingerprint = fingerprint  # how data is dealt to ranks (e.g. a hash of the shard lists)
        self.resumed = False
        self.reset_reason = ""  # why the per-rank state was dropped on restore ("" = it was not)

    def restore(self) -> tuple[int, dict[str, Any]]:
        """(step, this rank's extras) of the latest checkpoint, its state loaded into the live objects;
        (0, {}) on a fresh start. Collective under FSDP2."""
        shared, mine = load_checkpoint(self.ctx)
        mine = mine or {}
        if shared is None:
            return 0, mine
        load_model_state_dict(self.model, shared["model"])
        load_optimizer_state_dict(self.model, self.optimizer, shared["optimizer"])
        step = int(shared["step"])
        for name, obj in self.stateful.items():
            if obj is not None:
                if name not in shared:
                    raise ValueError(
                        f"the checkpoint of step {step} holds no {name!r} state: a run configured "
                        "without it wrote it; start a new run.name"
                    )
                obj.load_state_dict(shared[name])
        if self.ema is not None and hasattr(self.ema, "updates"):
            self.ema.updates = step  # the EMA cadence continues in phase with the update count
        set_rng_state(mine.get("rng"))
        saved_world, saved_print = shared.get("world_size"), shared.get("fingerprint", "")
        # A checkpoint from before these were recorded cannot be checked: its rank files are used as
        # they always were (a missing rank file still reads as a fresh start).
        if saved_world is not None and (saved_world != self.ctx.world_size or saved_print != self.fingerprint):
            self.reset_reason = (
                f"checkpoint of step {step} was written by {saved_world} ranks with data layout "
                f"{saved_print or '?'}; now {self.ctx.world_size} ranks with {self.fingerprint or '?'}: "
                "per-rank state (data position, PowerSGD) starts fresh"
            )
            mine = {"rng": mine["rng"]} if "rng" in mine else {}
        self.resumed = True
        return step, mine

    def save(self, step: int, metrics: dict[str, Any], rank_state: dict[str, Any] | None = None) -> None:
        """Report `metrics` with a checkpoint. Collective: every rank calls it at the same step (the
        full state dicts gather under FSDP2)."""
        shared, mine = self.collect(rank_state)
        save_checkpoint(self.ctx, step, metrics, shared, mine)

    def collect(self, rank_state: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(shared state, this rank's state) as a checkpoint stores them. Collective under FSDP2."""
        shared = {
            "model": model_state_dict(self.model),
            "optimizer": optimizer_state_dict(self.model, self.optimizer),
            **self.meta,
            "world_size": self.ctx.world_size,
            "fingerprint": self.fingerprint,
        }
        for name, obj in self.stateful.items():
            if obj is not None:
                shared[name] = obj.state_dict()
        return shared, {"rng": rng_state(), **(rank_state or {})}


def rank_file(rank: int) -> str:
    return f"rank-{rank}.pt"


def save_checkpoint(
    ctx: WorkerContext,
    step: int,
    metrics: dict[str, Any],
    shared: dict[str, Any] | None,
    rank_state: dict[str, Any] | None = None,
) -> None:
    """Report `metrics` with a checkpoint. Collective: every rank must call it at the same step."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint_files(tmp, ctx, step, shared, rank_state)
        ray.train.report({"step": step, **metrics}, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    if ctx.is_rank0:  # the run's progress on the console, once per checkpoint (Ray Train's own lines are off)
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        # A logger, not print: Ray Train patches print in its workers and, where the stream is wrapped, as in a
        # Ray worker, prints each line twice (once itself, once through the root logger's console handler).
        log.info("[%s] step %d: %s; checkpoint saved", ray.train.get_context().get_experiment_name(), step, shown)


def write_checkpoint_files(
    directory: str, ctx: WorkerContext, step: int, shared: dict[str, Any] | None, rank_state: dict[str, Any] | None
) -> None:
    """This rank's files of one checkpoint: state.pt (rank 0) and rank-<r>.pt."""
    if ctx.is_rank0 and shared is not None:
        torch.save({"step": step, **shared}, os.path.join(directory, SHARED_FILE))
    if rank_state is not None:
        torch.save(rank_state, os.path.join(directory, rank_file(ctx.rank)))


def load_checkpoint(ctx: WorkerContext) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(shared state, this rank's state) of the latest checkpoint; (None, None) on a fresh start."""
    ckpt = ctx.attempt_checkpoint
    if ckpt is None:
        return None, None
    with ckpt.as_directory() as path:
        shared = _load(os.path.join(path, SHARED_FILE))
        mine = _load(os.path.join(path, rank_file(ctx.rank)))
    return shared, mine


def _load(path: str) -> dict[str, Any] | None:
    """mmap: tensors are paged in when used (and shared through the page cache), not read whole."""
    if not os.path.exists(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


# --- state dicts that work for plain, DDP and FSDP2 models alike ---------------------------------
def _is_fsdp2(model: torch.nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(model, FSDPModule)


def _reshard(model: torch.nn.Module) -> None:
    """After a forward without backward (validation) the FSDP2 root keeps its parameters unsharded;
    state-dict helpers map optimiser state by the sharded parameters, so reshard first."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def model_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU state dict. Collective under FSDP2 (every rank must call it)."""
    if _is_fsdp2(model):
        _reshard(model)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def _from_rank0(model: torch.nn.Module) -> bool:
    """Under FSDP2 on a real group, only rank 0 reads the full state; the others get their shards."""
    import torch.distributed as dist

    return dist.is_initialized() and dist.get_world_size() > 1


def load_model_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    if _is_fsdp2(model):
        import torch.distributed as dist
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        bcast = _from_rank0(model)
        state = state if not bcast or dist.get_rank() == 0 else {}
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=bcast))
        return
    unwrap(model).load_state_dict(state)


def optimizer_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    if _is_fsdp2(model):
        _reshard(model)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return optimizer.state_dict()


def load_optimizer_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    if _is_fsdp2(model):
        import torch.distributed as dist
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        bcast = _from_rank0(model)
        state = state if not bcast or dist.get_rank() == 0 else {}
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=bcast)
        set_optimizer_state_dict(model, optimizer, state, options=options)
        return
    optimizer.load_state_dict(state)


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any] | None) -> None:
    if state and "torch" in state:
        torch.set_rng_state(state["torch"])


# --- PowerSGD (torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook) ------------------------
def powersgd_state_dict(state: Any) -> dict[str, Any]:
    """PowerSGDState as tensors and primitives (its numpy RNG would need a trusted pickle)."""
    out = {slot: getattr(state, slot) for slot in state.__slots__ if slot not in ("process_group", "rng")}
    name, keys, pos, has_gauss, cached = state.rng.get_state()
    out["rng"] = {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }
    return out


def load_powersgd_state_dict(state: Any, saved: dict[str, Any] | None, device: Any = None) -> None:
    """Restore error feedback, warm-start memories, iteration and RNG into a live PowerSGDState.
    Tensors go to `device` (that of the buckets they will be added to); None keeps them where they
    were loaded. Call it only once DDP has rebuilt its buckets: see harness.powersgd.ResumablePowerSGD."""
    if not saved:
        return
    for slot, value in saved.items():
        if device is not None and slot != "rng" and isinstance(value, dict):
            value = {k: v.to(device) if torch.is_tensor(v) else v for k, v in value.items()}
        if slot == "rng":
            state.rng.set_state(
                (
                    value["name"],
                    value["keys"].numpy().astype(np.uint32),
                    value["pos"],
                    value["has_gauss"],
                    value["cached"],
                )
            )
        elif slot in state.__slots__ and slot != "process_group":
            setattr(state, slot, value)


def wait_for_checkpoints() -> int:
    """Block until Ray Train has registered every checkpoint reported so far; returns their count.

    A worker that dies right after ray.train.report may otherwise lose a checkpoint the controller
    had not processed yet (the restart would then begin from the one before)."""
    import ray.train

    return len(ray.train.get_all_reported_checkpoints())


def inject_failure(ctx: WorkerContext, step: int, at_step: int, marker: str, rank: int = -1) -> None:
    """Fault injection for tests and drills: the first time any attempt reaches `at_step`, the worker
    of `rank` (-1 = the last rank) exits hard, as a killed process would. `marker` (a file path
    visible to every worker) records that the failure happened, so the restarted group runs on."""
    target = ctx.world_size - 1 if rank < 0 else rank
    if at_step <= 0 or step != at_step or ctx.rank != target or os.path.exists(marker):
        return
    wait_for_checkpoints()
    os.makedirs(os.path.dirname(os.path.abspath(marker)), exist_ok=True)
    with open(marker, "w") as fh:
        fh.write(f"killed rank {ctx.rank} at step {step}\n")
    print(f"[inject_failure] killing rank {ctx.rank} at step {step}", flush=True)
    os._exit(1)
