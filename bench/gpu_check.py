"""One GPU check for train_prior and the dVAE encoder, under 8 minutes on one H100/H200; every figure
goes to one JSON file.

    python bench/gpu_check.py --out $OUT/gpu_check.json          # on the GPU machine
    python bench/gpu_check.py --cpu-smoke --out /tmp/check.json  # tiny shapes on a CPU: checks the script

Sections (each in its own subprocess with its own time limit, so one hang or crash cannot take the
others down; a section that cannot run here is recorded as skipped, with the reason):
  prior_mfu       bench/bench_prior_mfu.py on the >=1B preset: SDPA vs compiled FlexAttention, tokens/s,
                  MFU counted from useful FLOPs, the formula's terms.
  encode          bench/bench_encode.py --preset openai: the bare encoder loop vs the Ray Data pipeline
                  (the pipeline needs Ray: without it only the bare loop is timed, and the JSON says so).
  token_agreement the dVAE encoder's argmax tokens under bf16 and fp16 autocast vs fp32, same images.
                  Random weights of the preset unless --dvae gives a checkpoint (agreement on trained
                  weights is the figure that matters; random weights only show the mechanism works).
  fsdp_resume     2 processes, FSDP2 (fully_shard per block, LayerNorms/embeddings/heads fp32) + bf16
                  autocast: 6 steps with a checkpoint after step 3, then a fresh pair of processes
                  restores it (rank-0 mmap + broadcast) and redoes steps 4-6; the losses must agree.
                  nccl on 2 GPUs; with one GPU, 2 ranks cannot share it under nccl, so it runs gloo on
                  that GPU (and records the backend, or the error if gloo lacks a collective).
No Ray and no MLflow are needed except by the encode pipeline.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

ROOT = Path(__file__).resolve().parents[1]


def run_section(name: str, argv: list[str], timeout: float) -> dict:
    """Run `python argv...` from the repository root; its stdout tail and exit status are recorded."""
    t = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    try:
        proc = subprocess.run(
            [sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        out = {"rc": proc.returncode, "stdout": proc.stdout[-4000:], "stderr": proc.stderr[-3000:]}
    except subprocess.TimeoutExpired as exc:
        out = {"rc": "timeout", "stdout": (exc.stdout or b"")[-4000:].decode(errors="replace") if exc.stdout else ""}
    out["seconds"] = round(time.perf_counter() - t, 1)
    print(f"[gpu_check] {name}: rc={out['rc']} in {out['seconds']} s", flush=True)
    return out


# --- token agreement of the dVAE encoder under each autocast dtype -----------------------------------
def token_agreement(preset_name: str, dvae: str, images: int, device: str) -> dict:
    import numpy as np

    from common import storage
    from tokenize_images.dvae import DVAE, preset, save_checkpoint
    from tokenize_images.encoder_actor import TokenEncoder
    from tokenize_images.preprocess import load_images
    from tokenize_images.synthetic import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = dvae
        if not ckpt:
            torch.manual_seed(0)
            ckpt = os.path.join(tmp, "dvae.pt")
            save_checkpoint(DVAE(preset(preset_name)), ckpt)
        from tokenize_images.dvae import checkpoint_info

        cfg, _ = checkpoint_info(ckpt)
        write_dataset(os.path.join(tmp, "ds"), shards=1, rows_per_shard=images, size_range=(256, 320))
        blobs = storage.read_parquet(storage.glob(os.path.join(tmp, "ds", "shards", "*.parquet"))[0]).column("image")
        pixels, _ = load_images(blobs.to_pylist(), cfg.image_size)
        tokens = {
            dt: TokenEncoder(ckpt, device=device, amp_dtype=dt).encode(pixels)
            for dt in ("float32", "bfloat16", "float16")
        }
    ref = tokens["float32"]
    return {
        "weights": dvae or f"random {preset_name}",
        "device": device,
        "images": int(len(ref)),
        "agreement_vs_fp32": {dt: float(np.mean(t == ref)) for dt, t in tokens.items() if dt != "float32"},
        "note": "on CPU autocast is off, so every dtype runs fp32 (agreement 1.0 by construction)"
        if device == "cpu"
        else "",
    }


# --- 2-process FSDP2 + bf16 with a resume --------------------------------------------------------------
class LocalCheckpoint:
    """What CheckpointManager needs of a ray.train.Checkpoint: as_directory() (no Ray on the GPU image)."""

    def __init__(self, path: str):
        self.path = path

    @contextlib.contextmanager
    def as_directory(self):
        yield self.path


def fsdp_worker(rank: int, world: int, backend: str, device_kind: str, directory: str, phase: str, out: str) -> None:
    import torch.distributed as dist

    from harness.checkpoint import CheckpointManager, write_checkpoint_files
    from harness.metrics import StepTimer
    from harness.worker import ModelEMA, WorkerContext, prepare_model
    from training.config import OptimConfig
    from training.loop import accumulate_gradients, fp32_layer_norms, optimizer_update
    from training.model import Prior, losses_from_sums
    from training.optim import WarmupPlateauSchedule, make_optimizer
    from training.presets import preset

    torch.set_num_threads(1)
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        device = (
            torch.device("cuda", rank % torch.cuda.device_count()) if device_kind == "cuda" else torch.device("cpu")
        )
        if device.type == "cuda":
            torch.cuda.set_device(device)
        shape = preset("demo") if device.type == "cuda" else preset("tiny")
        torch.manual_seed(0)
        model = Prior(shape)
        ema = ModelEMA(model, 0.99, every=2)
        checkpoint = LocalCheckpoint(directory) if phase == "resume" else None
        ctx = WorkerContext(rank, world, rank, device, "fsdp2", 0, "", bf16=True, attempt_checkpoint=checkpoint)
        model = prepare_model(model, ctx, fp32_units=fp32_layer_norms, fp32_root=True)
        ema.to(device)
        cfg = OptimConfig(lr=1e-3, warmup_steps=2)
        opt = make_optimizer(model, cfg)
        sched = WarmupPlateauSchedule(opt, cfg)
        mgr = CheckpointManager(ctx, model, opt, ema=ema, schedule=sched, fingerprint=f"smoke-{world}")
        step, _ = mgr.restore()
        losses = {}
        while step < 6:
            g = torch.Generator().manual_seed(1000 * step + rank)  # the same rows for a step on every attempt
            lengths = torch.randint(1, shape.text_len + 1, (4,), generator=g).tolist()
            ids = [torch.randint(0, shape.text_vocab, (n,), generator=g).tolist() for n in lengths]
            batch = {
                "text": _pad(ids, shape),
                "image": torch.randint(0, shape.image_vocab, (4, shape.image_len), generator=g),
            }
            sched.apply()
            sums = accumulate_gradients(
                model, iter([batch]), 1, None, ctx.autocast, StepTimer(), device, shape.seq_len,
                text_vocab=shape.text_vocab, world_size=world,
            )  # fmt: skip
            optimizer_update(model, opt, ema, 4.0, sched)
            step += 1
            dist.all_reduce(sums)
            losses[step] = losses_from_sums(sums.tolist())["loss"]
            if step == 3 and phase == "first":
                shared, mine = mgr.collect({})
                write_checkpoint_files(directory, ctx, step, shared, mine)
                dist.barrier()
        ema_state = ema.state_dict()  # collective: gathers the EMA shards
        if rank == 0:
            Path(out).write_text(
                json.dumps(
                    {
                        "losses": losses,
                        "ema_finite": bool(all(torch.isfinite(v).all() for v in ema_state.values())),
                        "resumed_from": 3 if phase == "resume" else None,
                    }
                )
            )
    finally:
        dist.destroy_process_group()


def _pad(ids, shape):
    from training.model import pad_text_ids

    return pad_text_ids(ids, shape.text_len, shape.text_vocab)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fsdp_resume(device_kind: str) -> dict:
    import torch.multiprocessing as mp

    gpus = torch.cuda.device_count() if device_kind == "cuda" else 0
    backend = "nccl" if gpus >= 2 else "gloo"
    result = {"backend": backend, "world_size": 2, "device": device_kind, "gpus": gpus}
    with tempfile.TemporaryDirectory() as tmp:
        for phase in ("first", "resume"):
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
            out = os.path.join(tmp, f"{phase}.json")
            mp.spawn(fsdp_worker, args=(2, backend, device_kind, tmp, phase, out), nprocs=2, join=True)
            result[phase] = json.loads(Path(out).read_text())
    first, resumed = result["first"]["losses"], result["resume"]["losses"]
    result["max_rel_diff_steps_4_6"] = max(abs(first[s] - resumed[s]) / abs(first[s]) for s in ("4", "5", "6"))
    result["ok"] = result["max_rel_diff_steps_4_6"] < (2e-2 if device_kind == "cuda" else 1e-5)
    return result


def encode_figures(stdout: str) -> dict:
    """images/s of bench_encode.py's printed lines (bare loop, pipeline steady state and end to end)."""
    import re

    labels = {
        "bare encoder loop": "bare",
        "pipeline, steady state": "pipeline_steady",
        "pipeline, end to end": "pipeline_e2e",
    }
    out = {}
    for line in stdout.splitlines():
        for label, key in labels.items():
            m = re.match(rf"{re.escape(label)}\s*:\s*([0-9.]+) images/s", line)
            if m:
                out[f"{key}_images_per_s"] = float(m.group(1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_check.json"))
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU: checks the script, not the GPU")
    ap.add_argument("--dvae", default="", help="dVAE checkpoint for the encoder sections (default: random weights)")
    ap.add_argument("--budget-s", type=float, default=450, help="skip sections that would start after this")
    ap.add_argument("--section", default="", help=argparse.SUPPRESS)  # internal: run one section in-process
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if args.section:  # a child process: one in-process section, its JSON on stdout's last line
        if args.section == "token_agreement":
            res = token_agreement(
                "openai" if cuda else "small", args.dvae, 64 if cuda else 4, "cuda" if cuda else "cpu"
            )
        else:
            res = fsdp_resume("cuda" if cuda else "cpu")
        print("JSON " + json.dumps(res))
        return
    if not cuda and not args.cpu_smoke:
        sys.exit("no CUDA device: run with --cpu-smoke to check the script on tiny shapes")
    start = time.perf_counter()
    report: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": torch.cuda.get_device_name() if cuda else "cpu (smoke: tiny shapes, figures meaningless)",
        "torch": torch.__version__,
        "has_ray": importlib.util.find_spec("ray") is not None,
        "has_mlflow": importlib.util.find_spec("mlflow") is not None,
        "sections": {},
    }
    smoke = ["--cpu-smoke"] if args.cpu_smoke else []
    mfu_json = os.path.join(tempfile.gettempdir(), f"gpu_check_mfu_{os.getpid()}.json")
    mfu_argv = (
        ["--preset", "1b", "--batch", "8", "--steps", "10", "--warmup", "3"]
        if cuda
        else ["--preset", "tiny", "--batch", "2", "--steps", "2", "--warmup", "1", "--attn", "sdpa"]
    )
    encode_argv = ["--preset", "openai", "--images", "512", "--batch", "64", "--repeats", "1"] if cuda else [
        "--preset", "small", "--images", "16", "--batch", "8", "--repeats", "1"
    ]  # fmt: skip
    if args.dvae:
        encode_argv += ["--dvae", args.dvae]
    if not report["has_ray"]:
        encode_argv.append("--bare-only")
    plan = [
        ("prior_mfu", ["bench/bench_prior_mfu.py", *mfu_argv, "--json", mfu_json], 270 if cuda else 300),
        ("encode", ["bench/bench_encode.py", *encode_argv], 120 if cuda else 300),
        ("token_agreement", ["bench/gpu_check.py", *smoke, "--section", "token_agreement", "--dvae", args.dvae], 60),
        ("fsdp_resume", ["bench/gpu_check.py", *smoke, "--section", "fsdp_resume"], 120 if cuda else 300),
    ]
    for name, argv, timeout in plan:
        if time.perf_counter() - start > args.budget_s:
            report["sections"][name] = {"skipped": f"time budget of {args.budget_s:.0f} s used up"}
            continue
        res = run_section(name, argv, timeout)
        if name == "prior_mfu" and os.path.exists(mfu_json):
            res["figures"] = json.loads(Path(mfu_json).read_text())
            os.unlink(mfu_json)
        if name == "encode":
            res["figures"] = encode_figures(res.get("stdout", ""))
            if not report["has_ray"]:
                res["note"] = "Ray is not installed here: bare encoder loop only, no pipeline figure"
        json_lines = [line[5:] for line in res.get("stdout", "").splitlines() if line.startswith("JSON ")]
        if json_lines:
            res["figures"] = json.loads(json_lines[-1])
        report["sections"][name] = res
        Path(args.out).write_text(json.dumps(report, indent=2))  # after every section: partial results survive
    report["total_s"] = round(time.perf_counter() - start, 1)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"[gpu_check] wrote {args.out} in {report['total_s']} s")


if __name__ == "__main__":
    main()
