"""encode_tokens: dataset shards -> argmax image-token shards, streamed through Ray Data.

    dataset/shards/NNNNN.parquet
      -> read + decode + resize + centre crop (a CPU task per input shard, streaming blocks of
         run.read_batch_rows rows with their row numbers; tokenize_images/preprocess.py)
      -> dVAE encoder, argmax as uint16 (actor pool: GPU actors, or CPU actors leaving run.reserve_cpus free)
      -> driver: rows are regrouped by input shard; a shard complete -> tokens/shards/NNNNN.parquet
         (+ tokens/rejected/NNNNN.parquet for undecodable images), each written atomically.

Only tokens (2 bytes per code) and reject rows reach the driver, so its memory is bounded by the
token rows of the shards in flight. A finished shard's file is its completion marker: a rerun skips
it, so a killed job resumes where it stopped and never writes a row twice. Output names equal input
names, so the mapping is deterministic. manifest.json is written last, from the files on disk.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from common import schemas, storage
from common.config import to_dict
from tokenize_images.config import EncodeConfig

READ_COLUMNS = ["key", "url", "caption", "source", "image"]


@dataclass
class ShardPlan:
    name: str  # e.g. 00012.parquet, the same for input and output
    input_path: str
    output_path: str
    rejected_path: str
    rows: int


def plan_shards(cfg: EncodeConfig) -> list[ShardPlan]:
    plans = []
    for path in storage.glob(storage.join(cfg.dataset, "shards", "*.parquet")):
        name = posixpath.basename(path.replace(os.sep, "/"))
        plans.append(
            ShardPlan(
                name,
                path,
                storage.join(cfg.output, "shards", name),
                storage.join(cfg.output, "rejected", name),
                storage.parquet_num_rows(path),
            )
        )
    return plans


# --- Ray Data stages (module-level functions: they are shipped to workers) ------------------------


def read_and_decode(batch: dict[str, np.ndarray], read_batch_rows: int, size: int, resample: str):
    """One input row = one dataset shard. Streams it read_batch_rows at a time: decoded pixels (zeros and an
    error message for undecodable bytes), with the row numbers that restore input order later.

    Reading and decoding share a task on purpose: a separate decode stage with a larger batch size would
    make Ray Data bundle many shards into one task. Decode parallelism is across shards."""
    from tokenize_images.preprocess import load_images

    for path, name in zip(batch["input_path"], batch["shard"], strict=True):
        start = 0
        for rb in storage.iter_parquet_batches(path, columns=READ_COLUMNS, batch_size=read_batch_rows):
            cols = {c: rb.column(c).to_numpy(zero_copy_only=False) for c in READ_COLUMNS if c != "image"}
            pixels, errors = load_images(rb.column("image").to_pylist(), size, resample)
            n = rb.num_rows
            yield {
                **cols,
                "shard": np.full(n, name, dtype=object),
                "row": np.arange(start, start + n, dtype=np.int64),
                "pixels": pixels,
                "error": np.array(errors, dtype=object),
            }
            start += n


# --- driver side: regroup rows by shard and write ---------------------------------------------------


class ShardWriter:
    """Collects encoded rows per input shard and writes a shard the moment its last row arrives."""

    def __init__(self, plans: list[ShardPlan], dvae_sha256: str, grid: int, vocab_size: int, image_size: int):
        self.plans = {p.name: p for p in plans}
        self.schema = schemas.token_shard_schema(grid, grid)
        self.metadata = schemas.token_shard_metadata(dvae_sha256, grid, grid, vocab_size, image_size)
        self.parts: dict[str, list[dict[str, np.ndarray]]] = {p.name: [] for p in plans}
        self.got = {p.name: 0 for p in plans}
        self.code_counts = np.zeros(vocab_size, dtype=np.int64)
        self.encoded = self.rejected = 0
        self.written: list[str] = []
        for p in plans:
            if p.rows == 0:
                self._write(p.name)

    def add(self, batch: dict[str, np.ndarray]) -> None:
        shards = batch["shard"]
        for name in np.unique(shards):
            mask = shards == name
            self.parts[name].append({k: v[mask] for k, v in batch.items() if k != "shard"})
            self.got[name] += int(mask.sum())
            if self.got[name] == self.plans[name].rows:
                self._write(name)
            elif self.got[name] > self.plans[name].rows:
                raise RuntimeError(f"{name}: more rows than the shard holds (duplicate delivery?)")

    def _write(self, name: str) -> None:
        plan, parts = self.plans[name], self.parts.pop(name, [])
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else None
        ok = np.zeros(0, dtype=bool)
        if cols is not None:
            order = np.argsort(cols["row"], kind="stable")  # input order, whatever order blocks came in
            cols = {k: v[order] for k, v in cols.items()}
            ok = np.array([e == "" for e in cols["error"]], dtype=bool)
            bad = ~ok
            if bad.any():
                rejected = pa.table(
                    {
                        "key": pa.array(cols["key"][bad].tolist(), pa.string()),
                        "url": pa.array(cols["url"][bad].tolist(), pa.string()),
                        "caption": pa.array(cols["caption"][bad].tolist(), pa.string()),
                        "source": pa.array(cols["source"][bad].tolist(), pa.string()),
                        "reason": pa.array(["decode_error"] * int(bad.sum()), pa.string()),
                        "detail": pa.array(cols["error"][bad].tolist(), pa.string()),
                    },
                    schema=schemas.REJECTED,
                )
                storage.write_parquet_atomic(plan.rejected_path, rejected)  # before the shard: the shard marks done
        n_ok = int(ok.sum())
        tokens = (
            cols["tokens"][ok] if n_ok else np.zeros((0, self.schema.field("image_tokens").type.list_size), np.uint16)
        )
        table = pa.table(
            {
                "key": pa.array(cols["key"][ok].tolist() if n_ok else [], pa.string()),
                "caption": pa.array(cols["caption"][ok].tolist() if n_ok else [], pa.string()),
                "image_tokens": pa.FixedSizeListArray.from_arrays(
                    pa.array(tokens.reshape(-1), pa.uint16()), tokens.shape[1]
                ),
            },
            schema=self.schema,
        )
        storage.write_parquet_atomic(plan.output_path, table, metadata=self.metadata)
        self.code_counts += np.bincount(tokens.reshape(-1).astype(np.int64), minlength=len(self.code_counts))
        self.encoded += n_ok
        self.rejected += plan.rows - n_ok
        self.written.append(name)

    def unfinished(self) -> list[str]:
        return sorted(self.parts)


# --- the job ------------------------------------------------------------------------------------


def _check_existing(plan: ShardPlan, sha: str) -> None:
    meta = storage.parquet_metadata(plan.output_path)
    if meta.get(schemas.TOKEN_META_DVAE_SHA256) != sha:
        raise ValueError(
            f"{plan.output_path} was encoded by dVAE {meta.get(schemas.TOKEN_META_DVAE_SHA256)}, "
            f"not {sha}: use a new output root per dVAE"
        )


def _pool(cfg: EncodeConfig) -> tuple[str, int, dict]:
    """(device, actors, ray resources per actor), leaving CPUs for reading and writing."""
    if cfg.run.device not in ("auto", "cuda", "cpu"):  # else e.g. "mps" would get the CPU pool's resources
        raise ValueError(f"unknown run.device {cfg.run.device!r}; allowed: 'auto', 'cuda', 'cpu'")
    import ray

    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), float(res.get("CPU", 1))
    device = cfg.run.device
    if device == "auto":
        device = "cuda" if gpus > 0 else "cpu"
    if device == "cuda":
        return device, cfg.run.num_encoders or max(1, gpus), {"num_gpus": 1, "num_cpus": 1}
    per = cfg.run.cpus_per_encoder
    n = cfg.run.num_encoders or max(1, int((cpus - cfg.run.reserve_cpus) // per))
    return device, n, {"num_cpus": per}


def build_dataset(cfg: EncodeConfig, todo: list[ShardPlan], image_size: int):
    import ray

    device, actors, resources = _pool(cfg)
    # One block per read batch: decoded pixels stream to the encoders read_batch_rows at a time instead
    # of Ray Data merging a whole shard into one (default 128 MB) block, and memory stays bounded.
    ray.data.DataContext.get_current().target_max_block_size = int(cfg.run.read_batch_rows * image_size**2 * 3 * 1.25)
    from tokenize_images.encoder_actor import TokenEncoder

    ds = ray.data.from_items(
        [{"input_path": p.input_path, "shard": p.name} for p in todo], override_num_blocks=max(1, len(todo))
    )
    ds = ds.map_batches(
        read_and_decode,
        batch_size=1,
        batch_format="numpy",
        fn_kwargs={"read_batch_rows": cfg.run.read_batch_rows, "size": image_size, "resample": cfg.run.resample},
    )
    # The memory reservation differs from the decode tasks' resources, which also keeps Ray Data from
    # fusing decoding into the actors: that would serialise decode and encode on the actor's CPU
    # instead of overlapping them on separate cores.
    ds = ds.map_batches(
        TokenEncoder,
        batch_size=cfg.run.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        memory=cfg.run.encoder_memory_mb * 2**20,
        fn_constructor_kwargs={
            "checkpoint": cfg.dvae,
            "device": device,
            "amp_dtype": cfg.run.amp_dtype,
            "channels_last": cfg.run.channels_last,
            "threads": int(resources.get("num_cpus", 1)),
        },
        **resources,
    )
    return ds, {"device": device, "encoder_actors": actors}


def write_manifest(cfg: EncodeConfig, plans: list[ShardPlan], dvae_sha: str, dvae_cfg, tokenizer: dict | None) -> dict:
    shards, rejected_by_reason, encoded = [], {}, 0
    for p in plans:
        rows = storage.parquet_num_rows(p.output_path)
        bad = 0
        if storage.exists(p.rejected_path):
            reasons = storage.read_parquet(p.rejected_path, columns=["reason"]).column("reason").to_pylist()
            bad = len(reasons)
            for r in reasons:
                rejected_by_reason[r] = rejected_by_reason.get(r, 0) + 1
        shards.append({"name": p.name, "rows": rows, "rejected": bad, "input_rows": p.rows})
        encoded += rows
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
        "counts": {"input_rows": sum(p.rows for p in plans), "encoded": encoded, "rejected": rejected_by_reason},
        "config": to_dict(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    storage.write_json_atomic(storage.join(cfg.output, "manifest.json"), manifest)
    return manifest


def steady_rate(encoded_at: dict[float, int]) -> float:
    """Images/s once the pipeline is running: rows encoded after the first batch finished, over the time
    from that first batch to the last one. Excludes start-up (actor creation, model load, first read),
    which a short run is dominated by and a long one amortises."""
    times = sorted(encoded_at)
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return (sum(encoded_at.values()) - encoded_at[times[0]]) / (times[-1] - times[0])


def encode_tokens(cfg: EncodeConfig) -> dict:
    """Run (or resume) the whole job. Returns the manifest, with this run's figures under 'run'."""
    import ray

    from common.ray_cluster import init_ray
    from tokenize_images.dvae import checkpoint_info
    from tokenize_images.text_tokenizer import ensure_tokenizer

    if not (cfg.dataset and cfg.dvae and cfg.output):
        raise ValueError("dataset, dvae and output are required")
    dvae_cfg, dvae_sha = checkpoint_info(cfg.dvae)
    storage.makedirs(cfg.output)
    storage.clean_temp(cfg.output)
    tokenizer = ensure_tokenizer(cfg.dataset, cfg.output, cfg.tokenizer)

    plans = plan_shards(cfg)
    todo = []
    for p in plans:
        if storage.exists(p.output_path):
            _check_existing(p, dvae_sha)
        else:
            todo.append(p)

    writer = ShardWriter(todo, dvae_sha, dvae_cfg.grid, dvae_cfg.vocab_size, dvae_cfg.image_size)
    pending = [p for p in todo if p.rows > 0]
    info = {"device": "none", "encoder_actors": 0}
    owns_ray = init_ray(cfg.run.ray_address or None, cfg.run.num_cpus or None) if pending else False
    started = time.perf_counter()
    encoded_at: dict[float, int] = {}  # when an encoder finished a batch -> its rows
    try:
        if pending:
            ds, info = build_dataset(cfg, pending, dvae_cfg.image_size)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for t, n in zip(*np.unique(batch.pop("encoded_at"), return_counts=True), strict=True):
                    encoded_at[float(t)] = encoded_at.get(float(t), 0) + int(n)
                writer.add(batch)
        elapsed = time.perf_counter() - started
        if writer.unfinished():
            raise RuntimeError(f"shards left incomplete: {writer.unfinished()}")
    finally:
        if owns_ray:
            ray.shutdown()

    manifest = write_manifest(cfg, plans, dvae_sha, dvae_cfg, tokenizer)
    rows_this_run = writer.encoded + writer.rejected
    manifest["run"] = {
        **info,
        "seconds": elapsed,
        "rows": rows_this_run,
        "encoded": writer.encoded,
        "rejected": writer.rejected,
        "images_per_s": rows_this_run / elapsed if elapsed > 0 and rows_this_run else 0.0,
        "steady_images_per_s": steady_rate(encoded_at),
        "shards_written": len(writer.written),
        "shards_skipped": len(plans) - len(todo),
        "code_counts": writer.code_counts,
    }
    if cfg.run.mlflow:
        from tokenize_images.encode_report import log_run

        log_run(cfg, manifest, plans)
    return manifest
