"""encode_tokens' per-shard work, run on the cluster by ShardWorker actors (the driver only hands them shards and
collects small summaries: no encoded row ever passes through it).

encode_shard: one dataset shard -> its token shard (+ rejected rows), in one call: read and decode
read_batch_rows rows at a time, send the decodable pixels to an encoder actor (up to `depth` batches in flight,
so decoding the next batch overlaps encoding this one), keep keys, captions and tokens (2 bytes per code),
and write atomically at the end. Memory is one shard's tokens and captions plus `depth` pixel batches.

check_shard: a shard finished by an earlier run; verifies it against the dVAE and the input file as it is
now (size and modification time, rows = encoded + rejected, the rejected file matches) and returns the same
summary, so the manifest never needs the driver to read a footer.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from common import schemas, storage

READ_COLUMNS = ["key", "url", "caption", "source", "image"]
REASON = "decode_error"


@dataclass
class ShardPlan:
    name: str  # e.g. 00012.parquet, the same for input and output
    input_path: str
    output_path: str
    rejected_path: str
    rows: int | None  # from the dataset manifest (None: it does not list rows; the task counts them)
    size: int  # of the input file, from the planning listing
    mtime_ns: int


@dataclass
class ShardOptions:
    dvae_sha256: str
    grid: int
    vocab_size: int
    image_size: int
    read_batch_rows: int
    resample: str
    depth: int = 2  # pixel batches in flight to the encoder per shard task


def _summary(plan: ShardPlan, encoded: int, rejected: int, code_counts=None, timings=()) -> dict:
    return {
        "name": plan.name,
        "rows": encoded,
        "rejected": rejected,
        "input_rows": encoded + rejected,
        "rejected_by_reason": {REASON: rejected} if rejected else {},
        "code_counts": code_counts,
        "timings": list(timings),  # (when an encoder batch started, when it finished, its rows)
    }


def encode_shard(plan: ShardPlan, encoder, opts: ShardOptions) -> dict:
    """`encoder`: a TokenEncoder actor handle (its encode_timed is called remotely)."""
    import ray

    from tokenize_images.preprocess import load_images

    keys, captions, tokens, timings = [], [], [], []
    bad: dict[str, list] = {c: [] for c in ("key", "url", "caption", "source", "detail")}
    pending: deque = deque()

    def drain(keep: int) -> None:
        while len(pending) > keep:
            t, started, finished = ray.get(pending.popleft())
            tokens.append(t)
            timings.append((started, finished, len(t)))

    rows = 0
    for rb in storage.iter_parquet_batches(plan.input_path, columns=READ_COLUMNS, batch_size=opts.read_batch_rows):
        pixels, errors = load_images(rb.column("image").to_pylist(), opts.image_size, opts.resample)
        ok = np.array([e == "" for e in errors], dtype=bool)
        k, c = rb.column("key").to_pylist(), rb.column("caption").to_pylist()
        keys += [x for x, good in zip(k, ok, strict=True) if good]
        captions += [x for x, good in zip(c, ok, strict=True) if good]
        if not ok.all():  # only rejected rows carry url and source
            idx = np.flatnonzero(~ok)
            for col in ("key", "url", "caption", "source"):
                values = rb.column(col).to_pylist()
                bad[col] += [values[i] for i in idx]
            bad["detail"] += [errors[i] for i in idx]
        if ok.any():
            pending.append(encoder.encode_timed.remote(pixels[ok]))
            drain(opts.depth - 1)
        rows += rb.num_rows
    drain(0)
    if plan.rows is not None and rows != plan.rows:
        raise ValueError(f"{plan.input_path} has {rows} rows, the dataset manifest says {plan.rows}: the input changed")

    n_bad = len(bad["key"])
    if n_bad:  # before the shard: the shard's presence marks the whole shard done
        table = pa.table(
            {
                **{c: pa.array(v, pa.string()) for c, v in bad.items() if c != "detail"},
                "reason": pa.array([REASON] * n_bad, pa.string()),
                "detail": pa.array(bad["detail"], pa.string()),
            },
            schema=schemas.REJECTED,
        )
        storage.write_parquet_atomic(plan.rejected_path, table)
    else:
        storage.remove(plan.rejected_path)  # a leftover of an earlier attempt on a different input
    g2 = opts.grid * opts.grid
    codes = np.concatenate(tokens) if tokens else np.zeros((0, g2), np.uint16)
    assert len(codes) == len(keys), "every decodable row gets exactly one token row"
    table = pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "caption": pa.array(captions, pa.string()),
            "image_tokens": pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1), pa.uint16()), g2),
        },
        schema=schemas.token_shard_schema(opts.grid, opts.grid),
    )
    meta = schemas.token_shard_metadata(
        opts.dvae_sha256, opts.grid, opts.grid, opts.vocab_size, opts.image_size,
        input_rows=rows, rejected_rows=n_bad, input_size=plan.size, input_mtime_ns=plan.mtime_ns,
    )  # fmt: skip
    storage.write_parquet_atomic(plan.output_path, table, metadata=meta)
    counts = np.bincount(codes.reshape(-1).astype(np.int64), minlength=opts.vocab_size)
    return _summary(plan, len(keys), n_bad, counts, timings)


class ShardWorker:
    """A long-lived process that runs encode_shard calls: encode_tokens starts one Ray actor per CPU slot the
    encoders leave, and feeds them shards.

    Why not one Ray task per shard, as before: a task that waits in ray.get on its encoder releases its CPU, so
    Ray leases queued shards to new worker processes (interpreter, imports, a first Parquet write: 1-5 s each on
    a busy node), on the cores that are meant to decode. Measured on 2 CPUs, 16 shards (docs/results.md): the
    tasks ran in 10 worker processes, the first 10 shards each in a new one, 2-5 s apart, and the encoder was
    busy 47% of the time. An actor keeps its CPU while it waits, starts once, before the first shard, and runs
    `max_concurrency` shards at once (a spare: the next shard decodes while one drains its last batches and
    writes). Same run with actors: one process, the encoder busy 100% of the time."""

    def __init__(self):
        import tokenize_images.preprocess  # noqa: F401 - PIL, before the first shard

        storage.parquet_bytes(pa.table({"key": ["warm-up"]}))  # the Parquet writer's first-call cost, here

    def encode(self, plan: ShardPlan, encoder, opts: ShardOptions) -> dict:
        return encode_shard(plan, encoder, opts)


def check_shard(plan: ShardPlan, dvae_sha256: str, has_rejected_file: bool) -> dict:
    """A finished shard, checked against what it claims to have been encoded from. Raises when it does not match."""
    meta = storage.parquet_metadata(plan.output_path)
    if meta.get(schemas.TOKEN_META_DVAE_SHA256) != dvae_sha256:
        raise ValueError(
            f"{plan.output_path} was encoded by dVAE {meta.get(schemas.TOKEN_META_DVAE_SHA256)}, "
            f"not {dvae_sha256}: use a new output root per dVAE"
        )
    facts = [schemas.TOKEN_META_INPUT_ROWS, schemas.TOKEN_META_REJECTED, schemas.TOKEN_META_INPUT_SIZE,
             schemas.TOKEN_META_INPUT_MTIME]  # fmt: skip
    if any(f not in meta for f in facts):
        raise ValueError(f"{plan.output_path} records no input facts (an older encode_tokens): use a new output root")
    input_rows, n_bad, size, mtime = (int(meta[f]) for f in facts)
    if (size, mtime) != (plan.size, plan.mtime_ns):
        raise ValueError(
            f"{plan.input_path} changed since {plan.output_path} was encoded from it (size/mtime {size}/{mtime} "
            f"then, {plan.size}/{plan.mtime_ns} now): encode into a new output root"
        )
    encoded = storage.parquet_num_rows(plan.output_path)
    if plan.rows is not None and plan.rows != input_rows:
        raise ValueError(
            f"{plan.name}: the dataset manifest lists {plan.rows} rows, the shard was encoded from {input_rows}"
        )
    if encoded + n_bad != input_rows:
        raise ValueError(f"{plan.output_path}: {encoded} encoded + {n_bad} rejected != {input_rows} input rows")
    if has_rejected_file != (n_bad > 0) or (n_bad and storage.parquet_num_rows(plan.rejected_path) != n_bad):
        raise ValueError(
            f"{plan.rejected_path} does not match {plan.output_path} ({n_bad} rejected rows recorded, "
            f"file {'present' if has_rejected_file else 'absent'}): a leftover of another run?"
        )
    return _summary(plan, encoded, n_bad)
