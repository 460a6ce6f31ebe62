"""MFU of the prior's training step on one GPU, bf16: the figure the train_prior issue asks for.

    python bench/bench_prior_mfu.py [--preset 1b] [--batch 8] [--steps 20] [--attn sdpa flex] [--compile]

One process, one device, no Ray and no MLflow (they are not needed to time the step): the Prior of
training/model.py in bf16 autocast, AdamW (training/optim.py, torch's default implementation) and the fp32 EMA, on
random tokens of the preset's shape. Each attention implementation is timed in the same run, one
after the other, after --warmup steps (compilation and autotuning excluded). MFU is reported two ways:
  * 6N     : 6 x parameters per token, the conservative convention (no attention FLOPs);
  * 6N+attn: plus 12 * layers * d_model * seq_len (dense-equivalent attention, PaLM appendix B),
             which is what train_prior logs; the sparse layers do less attention work than that.
Peak: the data-sheet dense bf16 figure of the GPU (harness/metrics.py). On a CPU it runs too
(tiny preset, fp32, SDPA only, peak = a measured matmul rate), to check the script without a GPU; the
CPU figures mean little.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from harness.metrics import peak_flops
from harness.worker import ModelEMA
from training.config import OptimConfig
from training.loop import optimizer_update
from training.model import Prior, count_params, flops_per_token, prior_loss
from training.optim import make_optimizer
from training.presets import preset


def time_steps(shape, batch: int, steps: int, warmup: int, device: torch.device, compile_model: bool) -> dict:
    torch.manual_seed(0)
    model = Prior(shape).to(device)
    ema = ModelEMA(model, 0.99).to(device)
    optimizer = make_optimizer(model, OptimConfig(lr=1e-4))
    forward = torch.compile(model) if compile_model else model
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    gen = torch.Generator(device="cpu").manual_seed(0)
    text = torch.randint(0, shape.text_vocab, (batch, shape.text_len), generator=gen).to(device)
    image = torch.randint(0, shape.image_vocab, (batch, shape.image_len), generator=gen).to(device)

    def step() -> None:
        with amp:
            out = prior_loss(*forward(text, image), text, image)
        out["loss"].backward()
        optimizer_update(model, optimizer, ema, 4.0)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    t = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    step_s = (time.perf_counter() - t) / steps
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return {
        "step_s": step_s,
        "tokens_per_s": batch * shape.seq_len / step_s,
        "warmup_s": warmup_s,
        "max_mem_gib": memory,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="", help="training/presets.py name (default: 1b on GPU, tiny on CPU)")
    ap.add_argument("--batch", type=int, default=0, help="sequences per step (default: 8 on GPU, 4 on CPU)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument(
        "--attn",
        nargs="+",
        default=None,
        choices=["sdpa", "flex"],
        help="implementations to time (default: both on GPU; sdpa on CPU, which has no flex backward)",
    )
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (flex is compiled anyway)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = args.preset or ("1b" if device.type == "cuda" else "tiny")
    batch = args.batch or (8 if device.type == "cuda" else 4)
    impls = args.attn or (["sdpa", "flex"] if device.type == "cuda" else ["sdpa"])
    peak = peak_flops(device)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (fp32, measured matmul peak)"
    base = preset(name)
    with torch.device("meta"):
        params = count_params(Prior(base))
    print(
        f"device={label} torch={torch.__version__} preset={name} params={params / 1e9:.2f}B layers={base.n_layer} "
        f"d_model={base.d_model} seq_len={base.seq_len} batch={batch} steps={args.steps} (after {args.warmup} warm-up) "
        f"peak={peak / 1e12:.3g} TFLOP/s"
    )
    six_n = 6 * params
    with_attn = flops_per_token(base)
    for impl in impls:
        shape = preset(name, attn_impl=impl)
        # FlexAttention is only fast compiled; the model is compiled whole for it (the mask_mod is traced in).
        r = time_steps(shape, batch, args.steps, args.warmup, device, args.compile or impl == "flex")
        if device.type == "cuda":  # the model of this run is gone with time_steps' frame: free it for the next
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        print(
            f"attn={impl:4s} compiled={args.compile or impl == 'flex'!s:5s}: step {r['step_s'] * 1e3:8.1f} ms  "
            f"tokens/s {r['tokens_per_s']:10.0f}  MFU(6N) {six_n * r['tokens_per_s'] / peak:.3f}  "
            f"MFU(6N+attn) {with_attn * r['tokens_per_s'] / peak:.3f}  warm-up {r['warmup_s']:.0f} s  "
            f"max mem {r['max_mem_gib']:.1f} GiB"
        )


if __name__ == "__main__":
    main()
