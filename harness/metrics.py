"""Step metrics every trainer logs: tokens/s, the share of time spent waiting for data, MFU.

    timer = StepTimer()
    with timer.wait():            # time blocked on the data iterator
        batch = next(batches)
    with timer.compute():         # forward, backward, optimiser step
        ...
    stats = timer.take(tokens=...)  # {"tokens_per_s", "data_wait_share", "step_time_s"} since last take

MFU = achieved FLOP/s / peak FLOP/s. The caller supplies the useful FLOPs per token of its model
(training.model.flops_terms: matmuls of the blocks, each position's own head, attention over the keys
the masks allow; embeddings excluded).
"""

from __future__ import annotations

import contextlib
import time

# Dense bf16 tensor-core peaks (no sparsity), from the vendors' data sheets. Matched in this order
# against torch.cuda.get_device_name: the form factor matters (H100 PCIe is 756, not the SXM's 989;
# its name says "PCIe"; the SXM part reports e.g. "NVIDIA H100 80GB HBM3").
GPU_PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),  # SXM and NVL share the H100 SXM's tensor cores
    ("GH200", 989e12),
    ("A100", 312e12),  # SXM and PCIe alike
    ("L40S", 362e12),
    ("A10G", 125e12),
    ("L4", 121e12),
)


def gpu_peak_bf16(name: str) -> float:
    """Data-sheet dense bf16 peak for a CUDA device name; 0.0 when the model is not in the table."""
    for key, value in GPU_PEAK_BF16:
        if key.lower() in name.lower():
            return value
    return 0.0


class StepTimer:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.waiting_s = 0.0
        self.computing_s = 0.0
        self.steps = 0
        self.tokens = 0
        self._start = time.perf_counter()

    def wait(self):
        """Time blocked on the data iterator."""
        return self._timed("waiting_s")

    def compute(self):
        """Time spent in forward, backward and the optimiser."""
        return self._timed("computing_s")

    @contextlib.contextmanager
    def _timed(self, attribute: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, attribute, getattr(self, attribute) + time.perf_counter() - t)

    def step(self, tokens: int) -> None:
        self.steps += 1
        self.tokens += tokens

    def take(self) -> dict[str, float]:
        """Figures since the last take (wall time, so logging and checkpoints count against them)."""
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        out = {
            "tokens_per_s": self.tokens / elapsed,
            "data_wait_share": self.waiting_s / elapsed,
            "step_time_s": elapsed / max(self.steps, 1),
        }
        self.reset()
        return out


def peak_flops(device: "torch.device | str", cpu_peak: float = 0.0) -> float:  # noqa: F821
    """Peak FLOP/s of one device: a data-sheet table for GPUs, `cpu_peak` (or a quick fp32 matmul
    measurement when 0) for CPUs. 0.0 when unknown: MFU is then not reported."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return gpu_peak_bf16(torch.cuda.get_device_name(device))
    return cpu_peak or measure_matmul_flops()


def measure_matmul_flops(n: int = 512, repeats: int = 5) -> float:
    """Best-of fp32 matmul FLOP/s on this CPU: an honest 'peak' for CPU MFU estimates."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def mfu(flops_per_token: float, tokens_per_s: float, peak: float) -> float:
    """Model FLOPs utilisation of one device (tokens_per_s of that device)."""
    return flops_per_token * tokens_per_s / peak if peak > 0 else 0.0
