"""PowerSGD gradient compression on DDP (torch's powerSGD_hook) that survives a resume.

torch's PowerSGDState keeps per-bucket error feedback and warm-start P/Q memories, keyed by bucket
index. Two things go wrong when they are put back naively after a restart:
  * they are loaded on the CPU while the buckets live on the GPU: the hook adds a CPU tensor to a
    CUDA bucket and fails;
  * the restored iteration is past `start_powerSGD_iter`, so the memories would be used in the very
    first iteration, whose buckets DDP has not rebuilt yet (torch's docstring warns against that:
    bucket indices and sizes change at the rebuild after the first iteration).

`ResumablePowerSGD` therefore holds the saved state back. Until DDP has finished its first
iteration in this process it reduces gradients with a plain all-reduce (as the hook itself does before
start_powerSGD_iter); at the first bucket of the next iteration, after the rebuild, it restores the
saved state with every tensor moved to that bucket's device, then hands over to powerSGD_hook.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from harness.checkpoint import load_powersgd_state_dict, powersgd_state_dict


class ResumablePowerSGD:
    """DDP comm hook = powerSGD_hook with a deferred, device-aware restore of saved state."""

    def __init__(self, state: Any, saved: dict[str, Any] | None = None):
        self.state, self.pending = state, saved or None
        self.iterations_seen = 0  # finished DDP iterations in this process (last bucket seen)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint saves: the live state, or the saved one while it is still held back."""
        return self.pending if self.pending is not None else powersgd_state_dict(self.state)

    def restore_now(self, device: torch.device | str) -> None:
        """Put the saved state back with its tensors on `device` (exposed for tests)."""
        load_powersgd_state_dict(self.state, self.pending, device=torch.device(device))
        self.pending = None

    # No annotations: DDP compares them with dist.GradBucket / Future objects, and under
    # `from __future__ import annotations` they would be strings and refused.
    def comm_hook(self, state, bucket):  # -> torch.futures.Future[torch.Tensor]; DDP registers this method
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

        if self.pending is not None:
            if self.iterations_seen == 0:  # buckets not rebuilt yet: plain averaging, memories untouched
                if bucket.is_last():
                    self.iterations_seen += 1
                return _allreduce_mean(state.process_group, bucket.buffer())
            self.restore_now(bucket.buffer().device)
        return psgd.powerSGD_hook(state, bucket)


def _allreduce_mean(group: Any, tensor: torch.Tensor) -> torch.futures.Future[torch.Tensor]:
    world = dist.get_world_size(group)
    tensor.div_(world)
    return dist.all_reduce(tensor, group=group, async_op=True).get_future().then(lambda fut: fut.value()[0])


def register_powersgd(model: torch.nn.Module, rank: int, start_iter: int, saved: dict[str, Any] | None = None):
    """PowerSGD on the DDP gradients (powerSGD_hook, not the batched variant broken in torch 2.13);
    `saved` (powersgd_state_dict of a checkpoint) is restored lazily, see the module docstring.
    Returns the hook: `.state` is the live PowerSGDState, `.state_dict()` what a checkpoint saves."""
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

    state = psgd.PowerSGDState(
        process_group=None,
        matrix_approximation_rank=rank,
        start_powerSGD_iter=max(start_iter, 2),
        use_error_feedback=True,
        warm_start=True,
    )
    hook = ResumablePowerSGD(state, saved)
    model.register_comm_hook(state, hook.comm_hook)
    return hook
