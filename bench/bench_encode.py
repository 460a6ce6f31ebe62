"""encode_tokens throughput: the pipeline against a bare in-process encoder loop, and the pipeline's own
ceiling (a null encoder: read -> decode -> write, no model) against a bare decode on the same cores.

    python bench/bench_encode.py [--images 1024] [--preset small] [--batch 64] [--dvae CKPT] [--repeats 2]
    python bench/bench_encode.py --null-only --images 2048 --shards 8 --num_cpus 2     # the ceiling alone

The null-encoder ceiling: encode_tokens with run.null_encoder (an actor that returns zero tokens, taking no
CPU), so the shard tasks read, decode, call the actor and write on every core; against the same shards read
and decoded by a bare multiprocessing pool of as many processes as the pipeline has CPUs. Goal >= 0.8: then
nothing but the encoder (the GPU) limits the job.

Both sides encode the same images with the same batch size and the same encoder class
(tokenize_images.encoder_actor.TokenEncoder) on the same device: on CPU with the threads one encoder
actor gets (run.cpus_per_encoder), on GPU with bf16 autocast + channels_last. The bare loop gets
already-decoded pixels (decode excluded: it is the ceiling), the pipeline reads Parquet, decodes and
writes shards. Figures: end-to-end images/s (includes Ray start-up and actor creation) and
steady-state images/s (from the first encoded batch on), and their ratio to the bare loop; the ratio of each
repeat (its pipeline run against the bare run just before it: the pair saw the same load on a shared box);
and the pipeline's encoder busy share (the time its encoder actor spent encoding, of its span: 1.0 means it
never waited for a batch, so only the encoder's own speed, not the pipeline, sets the rate).
On GPU the openai preset also reports the fraction of bf16 peak (encoder ~272 GFLOP per 256 px image).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/x.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from common import storage
from tokenize_images.config import EncodeConfig, EncodeRunConfig, TokenizerConfig
from tokenize_images.dvae import DVAE, flops_per_image, preset, save_checkpoint
from tokenize_images.encode import encode_tokens
from tokenize_images.encoder_actor import TokenEncoder
from tokenize_images.preprocess import load_images
from tokenize_images.synthetic import write_dataset

GPU_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def bare_loop(ckpt: str, dataset: str, size: int, batch: int, device: str, threads: int, compile: bool) -> float:
    blobs = []
    for path in storage.glob(os.path.join(dataset, "shards", "*.parquet")):
        blobs += storage.read_parquet(path, columns=["image"]).column("image").to_pylist()
    pixels, _ = load_images(blobs, size)
    # The actor's own settings: fixed batch shapes, and the trunk compiled when the pipeline compiles it.
    enc = TokenEncoder(ckpt, device=device, threads=threads, batch_size=batch, compile=compile)
    enc.encode(pixels[:batch])  # warm-up (cuDNN autotune, allocator)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(0, len(pixels), batch):
        enc.encode(pixels[i : i + batch])  # returns host uint16: includes the device->host copy
    return len(pixels) / (time.perf_counter() - t)


def _decode_shard(args: tuple[str, int]) -> int:
    path, size = args
    n = 0
    for rb in storage.iter_parquet_batches(path, columns=["image"], batch_size=128):
        load_images(rb.column("image").to_pylist(), size)
        n += rb.num_rows
    return n


def bare_decode(dataset: str, size: int, processes: int) -> float:
    """Read + decode every shard with a plain process pool of `processes`: the decode ceiling of those cores."""
    import multiprocessing as mp

    paths = storage.glob(os.path.join(dataset, "shards", "*.parquet"))
    with mp.get_context("spawn").Pool(processes) as pool:
        pool.map(_decode_shard, [(paths[0], size)])  # warm the workers (imports) outside the timing
        t = time.perf_counter()
        n = sum(pool.map(_decode_shard, [(p, size) for p in paths], chunksize=1))
    return n / (time.perf_counter() - t)


def null_pipeline(ckpt: str, dataset: str, out: str, run: EncodeRunConfig) -> dict:
    cfg = EncodeConfig(
        dataset=dataset,
        dvae=ckpt,
        output=out,
        run=dataclasses.replace(run, null_encoder=True, device="cpu"),
        tokenizer=TokenizerConfig(train_if_missing=True, vocab_size=300, sample_captions=1000),
    )
    return encode_tokens(cfg)["run"]


def dvae_checkpoint(dvae: str, preset_name: str, tmp: str) -> str:
    """The given dVAE checkpoint, or one of random weights of `preset_name` written under `tmp` (seeded)."""
    if dvae:
        return dvae
    path = os.path.join(tmp, "dvae.pt")
    torch.manual_seed(0)
    save_checkpoint(DVAE(preset(preset_name)), path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--dvae", default="", help="checkpoint to use (default: random weights of --preset)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--compile", action="store_true", help="torch.compile the trunk (both sides; GPU)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--num_cpus", type=int, default=0)
    ap.add_argument("--null-only", action="store_true", help="only the null-encoder ceiling vs bare decode")
    ap.add_argument(
        "--bare-only",
        action="store_true",
        help="time the bare encoder loop alone (a GPU box without Ray: the encode figure of README)",
    )
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    run = EncodeRunConfig(batch_size=args.batch, num_cpus=args.num_cpus, mlflow=False, compile=args.compile)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = dvae_checkpoint(args.dvae, args.preset, tmp)
        from tokenize_images.dvae import checkpoint_info

        cfg_dvae, _ = checkpoint_info(ckpt)
        dataset = os.path.join(tmp, "ds")
        write_dataset(dataset, shards=args.shards, rows_per_shard=args.images // args.shards, size_range=(256, 320))
        threads = int(run.cpus_per_encoder) if device == "cpu" else 0
        if not args.bare_only:
            import ray

            cpus = args.num_cpus or os.cpu_count()
            dec, null_e2e, null_steady = [], [], []
            for r in range(args.repeats):
                dec.append(bare_decode(dataset, cfg_dvae.image_size, cpus))
                m = null_pipeline(ckpt, dataset, os.path.join(tmp, f"null{r}"), run)
                null_e2e.append(m["images_per_s"])
                null_steady.append(m["steady_images_per_s"])
            assert not ray.is_initialized()
            d, ns, ne = max(dec), max(null_steady), max(null_e2e)
            print(
                f"null encoder, {cpus} CPUs, {args.images} images of {cfg_dvae.image_size} px, best of {args.repeats}"
            )
            print(f"bare decode ({cpus} processes) : {d:9.1f} images/s   (all: {', '.join(f'{x:.1f}' for x in dec)})")
            print(f"null pipeline, steady state  : {ns:9.1f} images/s   ratio {ns / d:.2f}   "
                  f"(all: {', '.join(f'{x:.1f}' for x in null_steady)})")  # fmt: skip
            print(f"null pipeline, end to end    : {ne:9.1f} images/s   ratio {ne / d:.2f}   "
                  f"(all: {', '.join(f'{x:.1f}' for x in null_e2e)})")  # fmt: skip
            pairs = zip(null_steady, dec, strict=True)
            print(f"steady ratio per repeat      : {', '.join(f'{p / q:.2f}' for p, q in pairs)}")
            if args.null_only:
                return
        bare, e2e, steady, busy = [], [], [], []
        for r in range(args.repeats):
            bare.append(bare_loop(ckpt, dataset, cfg_dvae.image_size, args.batch, device, threads, args.compile))
            if args.bare_only:
                continue
            cfg = EncodeConfig(
                dataset=dataset,
                dvae=ckpt,
                output=os.path.join(tmp, f"tokens{r}"),
                run=run,
                tokenizer=TokenizerConfig(train_if_missing=True, vocab_size=300, sample_captions=1000),
            )
            m = encode_tokens(cfg)["run"]
            e2e.append(m["images_per_s"])
            steady.append(m["steady_images_per_s"])
            busy.append(m["encoder_busy_share"])
        b, e, s = max(bare), max(e2e, default=0.0), max(steady, default=0.0)
        print(
            f"device={device} preset={args.preset} image_size={cfg_dvae.image_size} images={args.images} "
            f"batch={args.batch} encoder_threads={threads or 'gpu'} repeats={args.repeats} (best of) "
            f"torch={torch.__version__}"
        )
        print(f"bare encoder loop      : {b:9.1f} images/s   (all: {', '.join(f'{x:.1f}' for x in bare)})")
        if not args.bare_only:
            print(
                f"pipeline, steady state : {s:9.1f} images/s   ratio {s / b:.2f}   "
                f"(all: {', '.join(f'{x:.1f}' for x in steady)})"
            )
            print(
                f"pipeline, end to end   : {e:9.1f} images/s   ratio {e / b:.2f}   "
                f"(all: {', '.join(f'{x:.1f}' for x in e2e)})"
            )
            print(f"steady ratio per repeat: {', '.join(f'{p / q:.2f}' for p, q in zip(steady, bare, strict=True))}")
            print(f"encoder busy share     : {', '.join(f'{x:.2f}' for x in busy)}")
        if device == "cuda":
            flops = flops_per_image(cfg_dvae)
            name = torch.cuda.get_device_name()
            peak = next((v for k, v in GPU_PEAK_BF16.items() if k in name), 0.0)
            print(
                f"encoder GFLOP/image: {flops / 1e9:.1f}; GPU {name}; fraction of bf16 peak: "
                f"bare {b * flops / peak:.3f}" + (f", pipeline {s * flops / peak:.3f}" if s else "")
                if peak
                else "unknown peak"
            )
        else:
            print(f"encoder GFLOP/image: {flops_per_image(cfg_dvae) / 1e9:.2f}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
