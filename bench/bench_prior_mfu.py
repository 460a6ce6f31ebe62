"""MFU of the prior's training step on one GPU, bf16: the figure the train_prior issue asks for.

    python bench/bench_prior_mfu.py [--preset 1b] [--batch 8] [--steps 20] [--attn sdpa flex] [--compile]
                                    [--json out.json]

One process, one device, no Ray and no MLflow (they are not needed to time the step): the Prior of
training/model.py in bf16 autocast (logits in fp32), fused AdamW (training/optim.py) and the fp32 EMA
at the paper's cadence, on random tokens of the preset's shape. Each attention implementation is
timed in the same run, one after the other, after --warmup steps (compilation and autotuning
excluded): SDPA with the cached boolean masks (no FlashAttention possible with a mask) and
FlexAttention compiled (block masks per layer kind, column layers on transposed image states).

MFU counts USEFUL FLOPs (training.model.flops_terms), printed term by term:
  blocks    : the block matmuls, 2 · n · L · 12d² per sequence forward;
  heads     : each position's own head only (text positions the text head, image positions the image head);
  attention : QKᵀ and AV over the keys each query really attends to, the masks' average per layer kind;
  × 3 for forward + backward; embeddings (lookups) excluded. Divided by seq_len per token.
The earlier formula (6 × all parameters + dense attention 12·L·d·seq_len) is printed beside it.
Peak: the data-sheet dense bf16 figure of the detected GPU model (harness/metrics.py: H100 SXM 989,
H100 PCIe 756, H200 989, A100 312 TFLOP/s). On a CPU it runs too (tiny preset, fp32, SDPA only,
peak = a measured matmul rate), to check the script without a GPU; the CPU figures mean little.
"""

from __future__ import annotations

import argparse
import json
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
from training.model import Prior, count_params, flops_per_token, flops_terms, prior_loss
from training.optim import make_optimizer
from training.presets import preset


def time_steps(shape, batch: int, steps: int, warmup: int, device: torch.device, compile_model: bool) -> dict:
    torch.manual_seed(0)
    model = Prior(shape).to(device)
    ema = ModelEMA(model, 0.99, every=25).to(device)  # the paper's cadence
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


def old_flops_per_token(shape, params: int) -> float:
    """The formula train_prior logged before issue 12: 6·N (embeddings and both heads everywhere) +
    dense attention 12·L·d·seq_len."""
    return 6 * params + 12 * shape.n_layer * shape.d_model * shape.seq_len


def main(argv: list[str] | None = None) -> dict:
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
    ap.add_argument("--compile", action="store_true", help="torch.compile the SDPA model too (flex always is)")
    ap.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = args.preset or ("1b" if device.type == "cuda" else "tiny")
    batch = args.batch or (8 if device.type == "cuda" else 4)
    impls = args.attn or (["sdpa", "flex"] if device.type == "cuda" else ["sdpa"])
    peak = peak_flops(device)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (fp32, measured matmul peak)"
    base = preset(name)
    with torch.device("meta"):
        meta = Prior(base)
    params = count_params(meta)
    embedding = sum(m.weight.numel() for m in meta.modules() if isinstance(m, torch.nn.Embedding))
    terms = flops_terms(base)
    useful = flops_per_token(base)
    old = old_flops_per_token(base, params)
    print(
        f"device={label} torch={torch.__version__} preset={name} params={params / 1e9:.3f}B "
        f"(embeddings {embedding / 1e6:.1f}M, not counted) layers={base.n_layer} d_model={base.d_model} "
        f"seq_len={base.seq_len} batch={batch} steps={args.steps} (after {args.warmup} warm-up) "
        f"peak={peak / 1e12:.4g} TFLOP/s"
    )
    per_token = {k: v / base.seq_len for k, v in terms.items()}
    print(
        "useful FLOPs per token (fwd+bwd): "
        + "  ".join(f"{k} {v / 1e6:.5g} M" for k, v in per_token.items())
        + f"   | old formula {old / 1e6:.5g} M ({old / useful:.3f}x the useful count)"
    )
    results = {
        "device": label,
        "preset": name,
        "params": params,
        "embedding_params": embedding,
        "batch": batch,
        "peak_flops": peak,
        "flops_per_token": per_token,
        "old_flops_per_token": old,
        "runs": [],
    }
    for impl in impls:
        shape = preset(name, attn_impl=impl)
        compiled = args.compile or impl == "flex"  # FlexAttention is only fast compiled
        r = time_steps(shape, batch, args.steps, args.warmup, device, compiled)
        if device.type == "cuda":  # the model of this run is gone with time_steps' frame: free it for the next
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        m = useful * r["tokens_per_s"] / peak if peak else 0.0
        print(
            f"attn={impl:4s} compiled={compiled!s:5s}: step {r['step_s'] * 1e3:8.1f} ms  "
            f"tokens/s {r['tokens_per_s']:10.0f}  MFU(useful) {m:.3f}  "
            f"[old formula {old * r['tokens_per_s'] / peak if peak else 0.0:.3f}]  "
            f"warm-up {r['warmup_s']:.0f} s  max mem {r['max_mem_gib']:.1f} GiB"
        )
        results["runs"].append({"attn": impl, "compiled": compiled, **r, "mfu": m})
        if args.json:  # after every run: a later run that times out leaves the earlier figures
            Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
