"""encode_tokens: dataset shards -> argmax image-token shards, encoded and written on the cluster.

    plan        the dataset manifest (rows per shard) + one listing of the input shards (size, mtime)
                + one listing each of tokens/shards and tokens/rejected (what is finished)
    finished    check_shard tasks, in parallel: same dVAE, same input, encoded + rejected = input rows
    the rest    one encode_shard call per shard on a pool of ShardWorker actors (tokenize_images/encode_shard.py,
                one per CPU slot the encoders leave): read + decode on the worker's CPU, tokens from an encoder
                actor (a pool: one per GPU, or CPU actors leaving run.reserve_cpus free), then
                tokens/shards/NNNNN.parquet (+ rejected/NNNNN.parquet) written atomically by the worker itself
    manifest    tokens/manifest.json, last, from the shards' summaries

The driver hands out shards (a bounded window of them) and receives per-shard summaries; it never holds a row
and makes no per-shard request itself. A finished shard's file is its completion marker: a rerun skips it, so
a killed job resumes where it stopped and never writes a row twice. Output names equal input names.
"""

from __future__ import annotations

import dataclasses
import posixpath
import time

import numpy as np

from common import schemas, storage
from common.config import to_dict
from tokenize_images.config import EncodeConfig
from tokenize_images.encode_shard import ShardOptions, ShardPlan, ShardWorker, check_shard

__all__ = ["ShardPlan", "busy_share", "encode_tokens", "plan_shards", "steady_rate"]


def manifest_rows(dataset: str) -> dict[str, int]:
    """Rows per shard name as build_dataset's manifest lists them ({} when it lists none)."""
    path = storage.join(dataset, "manifest.json")
    if not storage.exists(path):
        return {}
    shards = storage.read_json(path).get("shards")
    if not isinstance(shards, list):
        return {}
    return {posixpath.basename(s["path"]): int(s["rows"]) for s in shards if "path" in s and "rows" in s}


def plan_shards(cfg: EncodeConfig) -> list[ShardPlan]:
    """One listing of the input shards; rows from the dataset manifest (no footer reads)."""
    rows = manifest_rows(cfg.dataset)
    listing = storage.list_files(storage.join(cfg.dataset, "shards"), ".parquet")
    if rows and set(rows) != set(listing):
        missing, extra = sorted(set(rows) - set(listing)), sorted(set(listing) - set(rows))
        raise ValueError(
            f"{cfg.dataset}: shards differ from its manifest (missing {missing[:5]}, unlisted {extra[:5]})"
        )
    return [
        ShardPlan(
            name,
            storage.join(cfg.dataset, "shards", name),
            storage.join(cfg.output, "shards", name),
            storage.join(cfg.output, "rejected", name),
            rows.get(name),
            size,
            mtime,
        )
        for name, (size, mtime) in sorted(listing.items())
    ]


def _pool(cfg: EncodeConfig) -> tuple[str, int, dict]:
    """(device, actors, ray resources per actor), leaving CPUs for reading and writing.

    device 'cuda' waits up to run.gpu_wait_s for run.min_gpus GPUs (asking an autoscaler for them) rather
    than falling back to CPU; 'auto' takes what the cluster has right now."""
    if cfg.run.device not in ("auto", "cuda", "cpu"):  # else e.g. "mps" would get the CPU pool's resources
        raise ValueError(f"unknown run.device {cfg.run.device!r}; allowed: 'auto', 'cuda', 'cpu'")
    import ray

    if cfg.run.null_encoder:  # bench: no model, no CPU taken from the shard tasks
        return "cpu", cfg.run.num_encoders or 1, {"num_cpus": 0}
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), float(res.get("CPU", 1))
    device = cfg.run.device
    if device == "auto":
        device = "cuda" if gpus > 0 else "cpu"
        print(f"encode_tokens: run.device 'auto' -> {device!r} ({gpus} GPUs in the cluster now)")
    if device == "cuda":
        gpus = wait_for_gpus(cfg.run.min_gpus, cfg.run.gpu_wait_s)
        return device, cfg.run.num_encoders or max(1, gpus), {"num_gpus": 1, "num_cpus": 1}
    per = cfg.run.cpus_per_encoder
    n = cfg.run.num_encoders or max(1, int((cpus - cfg.run.reserve_cpus) // per))
    return device, n, {"num_cpus": per}


def wait_for_gpus(min_gpus: int, timeout_s: float, poll_s: float = 2.0) -> int:
    import ray

    try:  # an autoscaling cluster starts GPU nodes only when something asks for them
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[{"GPU": 1}] * min_gpus)
    except Exception as exc:  # noqa: BLE001 - a fixed cluster has no autoscaler to ask
        print(f"encode_tokens: no autoscaler to request GPUs from ({type(exc).__name__})")
    deadline = time.monotonic() + timeout_s
    while True:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus >= min_gpus:
            return gpus
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"run.device 'cuda' needs run.min_gpus={min_gpus} GPUs; the cluster has {gpus} after "
                f"run.gpu_wait_s={timeout_s:g} s (GPU nodes still starting? raise run.gpu_wait_s)"
            )
        time.sleep(poll_s)


def start_encoders(cfg: EncodeConfig, device: str, actors: int, resources: dict) -> list:
    import ray

    from tokenize_images.encoder_actor import TokenEncoder

    cls = ray.remote(TokenEncoder).options(
        **resources,
        memory=cfg.run.encoder_memory_mb * 2**20,
        max_concurrency=2 if device == "cuda" else 1,  # GPU: one batch copying in while one computes
    )
    kwargs = {
        "checkpoint": cfg.dvae,
        "device": device,
        "amp_dtype": cfg.run.amp_dtype,
        "channels_last": cfg.run.channels_last,
        "threads": cfg.run.threads_per_encoder or max(1, int(resources.get("num_cpus", 1))),
        "batch_size": cfg.run.batch_size,
        "compile": cfg.run.compile,
        "min_agreement": cfg.run.min_token_agreement,
        "check_tokens": cfg.run.token_check_tokens,
        "null": cfg.run.null_encoder,
    }
    return [cls.remote(**kwargs) for _ in range(actors)]


def start_shard_workers(cfg: EncodeConfig, workers: int, per_worker: int) -> list:
    """ShardWorker actors (tokenize_images/encode_shard.py): long-lived, so a shard never waits for a process."""
    import ray

    cls = ray.remote(ShardWorker).options(num_cpus=cfg.run.cpus_per_shard_task, max_concurrency=per_worker)
    return [cls.remote() for _ in range(workers)]


def run_shards(todo: list[ShardPlan], opts: ShardOptions, encoders: list, workers: list, window: int):
    """Keep `window` shards in flight on the shard workers (each to the least loaded one; encoders in turn);
    yield their summaries as they finish."""
    import ray

    queue, running = list(todo), {}  # running: object ref -> (worker index, encoder index)
    load = [0] * len(workers)
    submitted = 0
    while queue or running:
        while queue and len(running) < window:
            w = load.index(min(load))
            e = submitted % len(encoders)
            running[workers[w].encode.remote(queue.pop(0), encoders[e], opts)] = (w, e)
            load[w] += 1
            submitted += 1
        done, _ = ray.wait(list(running), num_returns=1)
        w, e = running.pop(done[0])
        load[w] -= 1
        yield {**ray.get(done[0]), "encoder": e}  # a failed shard raises here: the job stops loudly


def write_manifest(cfg: EncodeConfig, summaries: list[dict], dvae_sha: str, dvae_cfg, tokenizer: dict | None) -> dict:
    """From the shard summaries (this run's tasks and the checks of finished shards): no file is read here
    but the dataset's manifest."""
    shards, rejected_by_reason = [], {}
    for s in sorted(summaries, key=lambda s: s["name"]):
        shards.append({k: s[k] for k in ("name", "rows", "rejected", "input_rows")})
        for reason, n in s["rejected_by_reason"].items():
            rejected_by_reason[reason] = rejected_by_reason.get(reason, 0) + n
    dataset_manifest_path = storage.join(cfg.dataset, "manifest.json")
    dataset_manifest = storage.read_json(dataset_manifest_path) if storage.exists(dataset_manifest_path) else {}
    manifest = {
        "format": schemas.TOKENS_FORMAT,
        "dataset": {"root": cfg.dataset, "config_hash": dataset_manifest.get("config_hash")},
        "dvae": {"sha256": dvae_sha, "path": cfg.dvae, "config": dataclasses.asdict(dvae_cfg)},
        "grid": f"{dvae_cfg.grid}x{dvae_cfg.grid}",
        "image_vocab_size": dvae_cfg.vocab_size,
        "image_size": dvae_cfg.image_size,
        "preprocessing": {
            "resize": f"short side to {dvae_cfg.image_size}, {cfg.run.resample}",
            "crop": f"centre {dvae_cfg.image_size}x{dvae_cfg.image_size}",
        },
        "tokenizer": tokenizer,
        "shards": shards,
        "counts": {
            "input_rows": sum(s["input_rows"] for s in shards),
            "encoded": sum(s["rows"] for s in shards),
            "rejected": rejected_by_reason,
        },
        "config": to_dict(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    storage.write_json_atomic(storage.join(cfg.output, "manifest.json"), manifest)
    return manifest


def steady_rate(timings: list[tuple[float, float, int]]) -> float:
    """Images/s once the pipeline is running: rows encoded after the first batch finished, over the time
    from that first batch to the last one. Excludes start-up (actor creation, model load, first read),
    which a short run is dominated by and a long one amortises. timings: (started, finished, rows) per batch."""
    if len(timings) < 2:
        return 0.0
    ends = sorted((end, n) for _, end, n in timings)
    span = ends[-1][0] - ends[0][0]
    return sum(n for _, n in ends[1:]) / span if span > 0 else 0.0


def busy_share(timings: list[tuple[float, float, int]]) -> float:
    """Of one encoder's span (its first batch's start to its last batch's end), the share it spent encoding
    (the union of its batches' intervals: a GPU actor runs two at once). 1.0: it never waited for a batch,
    so nothing but the encoder limited the job."""
    if not timings:
        return 0.0
    busy, end = 0.0, float("-inf")
    for a, b, _ in sorted(timings):
        busy += max(0.0, b - max(a, end))
        end = max(end, b)
    span = end - min(a for a, _, _ in timings)
    return busy / span if span > 0 else 1.0


def mean_busy_share(summaries: list[dict]) -> float:
    """busy_share of each encoder actor (its batches: those of the shards run_shards gave it), averaged."""
    used = sorted({s["encoder"] for s in summaries})
    if not used:
        return 0.0
    return float(np.mean([busy_share([t for s in summaries if s["encoder"] == e for t in s["timings"]]) for e in used]))


def encode_tokens(cfg: EncodeConfig) -> dict:
    """Run (or resume) the whole job. Returns the manifest, with this run's figures under 'run'."""
    import ray

    from common.ray_cluster import init_ray, stop_ray
    from tokenize_images.dvae import checkpoint_info
    from tokenize_images.text_tokenizer import ensure_tokenizer

    if not (cfg.dataset and cfg.dvae and cfg.output):
        raise ValueError("dataset, dvae and output are required")
    dvae_cfg, dvae_sha = checkpoint_info(cfg.dvae)
    storage.makedirs(cfg.output)
    storage.clean_temp(cfg.output)
    tokenizer = ensure_tokenizer(cfg.dataset, cfg.output, cfg.tokenizer)

    plans = plan_shards(cfg)
    finished = storage.list_files(storage.join(cfg.output, "shards"), ".parquet")
    with_rejects = storage.list_files(storage.join(cfg.output, "rejected"), ".parquet")
    done = [p for p in plans if p.name in finished]
    todo = [p for p in plans if p.name not in finished]
    opts = ShardOptions(
        dvae_sha, dvae_cfg.grid, dvae_cfg.vocab_size, dvae_cfg.image_size, cfg.run.read_batch_rows, cfg.run.resample
    )
    info: dict = {"device": "none", "encoder_actors": 0}
    summaries, new = [], []
    owns_ray = init_ray(cfg.run.ray_address or None, cfg.run.num_cpus or None)
    started = time.perf_counter()
    try:
        check = ray.remote(check_shard).options(num_cpus=0.25)  # a footer read each: I/O, not CPU
        checks = [check.remote(p, dvae_sha, p.name in with_rejects) for p in done]
        if todo:
            device, actors, resources = _pool(cfg)
            encoders = start_encoders(cfg, device, actors, resources)
            cpus = float(ray.cluster_resources().get("CPU", 1))
            # One shard worker per CPU slot the encoders leave (no more than there are shards), and one spare
            # shard per encoder actor on top, so that an actor has the next shard's first batches ready when a
            # shard ends (measured: ~1.5 s idle per shard without).
            free = cpus - actors * float(resources.get("num_cpus", 0))
            window = cfg.run.shards_in_flight or max(1, int(free // cfg.run.cpus_per_shard_task)) + actors
            n = min(len(todo), window, max(1, int(free // cfg.run.cpus_per_shard_task)))
            workers = start_shard_workers(cfg, n, -(-window // n))
            new = list(run_shards(todo, opts, encoders, workers, window))
            info = {
                "device": device,
                "encoder_actors": actors,
                "encoders": ray.get([e.info.remote() for e in encoders]),
            }
        summaries = ray.get(checks) + new
        elapsed = time.perf_counter() - started
    finally:
        if owns_ray:
            stop_ray()

    manifest = write_manifest(cfg, summaries, dvae_sha, dvae_cfg, tokenizer)
    encoded, rejected = sum(s["rows"] for s in new), sum(s["rejected"] for s in new)
    counts = np.zeros(dvae_cfg.vocab_size, dtype=np.int64)
    for s in new:
        counts += s["code_counts"]
    manifest["run"] = {
        **info,
        "seconds": elapsed,
        "rows": encoded + rejected,
        "encoded": encoded,
        "rejected": rejected,
        "images_per_s": (encoded + rejected) / elapsed if elapsed > 0 and encoded + rejected else 0.0,
        "steady_images_per_s": steady_rate([t for s in new for t in s["timings"]]),
        "encoder_busy_share": mean_busy_share(new),
        "shards_written": len(new),
        "shards_skipped": len(done),
        "code_counts": counts,
    }
    if cfg.run.mlflow:
        from tokenize_images.encode_report import log_run

        log_run(cfg, manifest, plans)
    return manifest
