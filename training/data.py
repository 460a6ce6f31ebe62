"""Token shards -> training batches, through Ray Data.

Driver:  source = TokenSource.open(root, val_shards)      # shards, grid, vocab, tokenizer, manifest
         datasets, data_config = source.ray_datasets(num_workers)
Worker:  encoder = CaptionEncoder(source.tokenizer_json, text_len, text_vocab, dropout=0.1)
         for batch in epoch_batches(ray.train.get_dataset_shard(f"train_{rank}"), ...): ...

Data position and resume (docs/prior.md): training shards are dealt to ranks by file
(shard i goes to rank i mod W), each rank reads its own `train_<rank>` dataset in a fixed order
(preserve_order) with a seeded local shuffle per epoch. A rank's position is therefore exactly
(epoch, batches consumed in that epoch), and a resume SKIPS AHEAD to it: the rows after the
checkpoint are the ones an uninterrupted run would have seen, none replayed, none lost. The cost
is re-reading (not training on) the skipped part of the current epoch. The validation shards
(held out: the last `val_shards` by name) are one dataset streamed-split across the ranks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from common import storage
from common.schemas import TOKEN_META_DVAE_SHA256, TOKEN_META_GRID, TOKEN_META_VOCAB, parse_grid
from training.model import pad_text_ids

try:  # Ray Data's collate interface (a function collate_fn is deprecated in Ray 2.60)
    from ray.data.collate_fn import NumpyBatchCollateFn
except ImportError:  # the GPU bench image has no Ray; nothing there iterates Ray Data
    NumpyBatchCollateFn = object


@dataclass
class TokenSource:
    root: str
    train_files: list[str]
    val_files: list[str]
    grid_h: int
    grid_w: int
    image_vocab: int
    dvae_sha256: str
    tokenizer_json: str
    manifest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, root: str, val_shards: int = 1) -> "TokenSource":
        files = storage.glob(storage.join(root, "shards", "*.parquet"))
        if len(files) <= val_shards:
            raise ValueError(f"{root}: {len(files)} token shards; need more than val_shards={val_shards}")
        meta = storage.parquet_metadata(files[0])
        grid_h, grid_w = parse_grid(meta[TOKEN_META_GRID])
        manifest_path = storage.join(root, "manifest.json")
        manifest = storage.read_json(manifest_path) if storage.exists(manifest_path) else {}
        return cls(
            root=root,
            train_files=files[: len(files) - val_shards],
            val_files=files[len(files) - val_shards :],
            grid_h=grid_h,
            grid_w=grid_w,
            image_vocab=int(meta[TOKEN_META_VOCAB]),
            dvae_sha256=meta.get(TOKEN_META_DVAE_SHA256, ""),
            tokenizer_json=storage.read_bytes(storage.join(root, "tokenizer.json")).decode(),
            manifest=manifest,
        )

    def layout_fingerprint(self, num_workers: int) -> str:
        """Hash of which shards each rank reads (shards are dealt by file, rank::num_workers): a data
        position saved under one layout means nothing under another (harness.checkpoint)."""
        import hashlib

        dealt = [[f.rsplit("/", 1)[-1] for f in self.train_files[r::num_workers]] for r in range(num_workers)]
        return hashlib.sha256(json.dumps(dealt).encode()).hexdigest()[:16]

    def text_vocab(self) -> int:
        from tokenizers import Tokenizer

        return Tokenizer.from_str(self.tokenizer_json).get_vocab_size()

    def ray_datasets(
        self, num_workers: int, cache: str = "stream", store_bytes: float | None = None
    ) -> tuple[dict[str, Any], Any]:
        """{'train_<r>': rank r's shards, 'val': held-out shards} and the DataConfig that splits only val.

        cache="memory" reads every dataset once, here, into Ray's object store (`materialize`, in file order so the
        data order stays a pure function of the files and the seed), and every epoch iterates those blocks instead
        of reading the shards again. Refused when the shards, uncompressed, would fill over half of `store_bytes`
        (the cluster's object store memory unless given)."""
        import ray.data

        if cache not in ("stream", "memory"):
            raise ValueError(f"data.cache must be 'stream' or 'memory', not {cache!r}")
        if len(self.train_files) < num_workers:
            raise ValueError(
                f"{len(self.train_files)} training shards for {num_workers} workers: "
                "each worker needs at least one shard (shards are dealt to ranks by file)"
            )
        cols = ["key", "caption", "image_tokens"]
        datasets = {
            f"train_{r}": ray.data.read_parquet(self.train_files[r::num_workers]).select_columns(cols)
            for r in range(num_workers)
        }
        datasets["val"] = ray.data.read_parquet(self.val_files).select_columns(cols)
        if cache == "memory":
            self.check_fits_memory(store_bytes)
            context = ray.data.DataContext.get_current()
            preserve, context.execution_options.preserve_order = context.execution_options.preserve_order, True
            try:
                datasets = {name: ds.materialize() for name, ds in datasets.items()}
            finally:
                context.execution_options.preserve_order = preserve
        return datasets, data_config()

    def check_fits_memory(self, store_bytes: float | None = None) -> None:
        """data.cache = "memory" only for token sets that fit: the first shard's uncompressed size times the shard
        count (one footer read, not one per shard) against half the object store."""
        import pyarrow.parquet as pq

        if store_bytes is None:
            import ray

            store_bytes = ray.cluster_resources().get("object_store_memory", 0)
        fs, inner = storage.resolve(self.train_files[0])
        meta = pq.read_metadata(inner, filesystem=fs)
        first = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        estimate = first * (len(self.train_files) + len(self.val_files))
        if estimate > store_bytes / 2:
            raise ValueError(
                f"data.cache = 'memory': the token shards take about {estimate / 2**20:,.0f} MiB uncompressed, over "
                f"half of Ray's object store ({store_bytes / 2**20:,.0f} MiB); use data.cache = 'stream'"
            )


def data_config():
    """Only 'val' is split across ranks (train_<r> are per rank); order preserved for exact resume.
    Only preserve_order is set: ExecutionOptions' other knobs (exclude_resources) are deprecated."""
    import ray.train
    from ray.data import ExecutionOptions

    return ray.train.DataConfig(datasets_to_split=["val"], execution_options=ExecutionOptions(preserve_order=True))


class CaptionEncoder:
    """Lowercased caption -> BPE ids (with optional BPE dropout) -> [B, T] with per-position padding."""

    def __init__(self, tokenizer_json: str, text_len: int, text_vocab: int, dropout: float = 0.0):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_str(tokenizer_json)
        self.tok.no_padding()
        self.tok.no_truncation()
        if dropout > 0:
            self.tok.model.dropout = dropout
        self.text_len, self.text_vocab = text_len, text_vocab
        # Captions longer than text_len lose their tail (the paper's 256 positions rarely do; a short demo preset
        # with BPE dropout did for 61% of its captions): counted, and logged by the loop as text_truncated_share.
        self.captions = self.truncated = 0

    def __call__(self, captions: list[str]) -> torch.Tensor:
        encoded = self.tok.encode_batch([c.lower() for c in captions])
        self.captions += len(encoded)
        self.truncated += sum(len(enc.ids) > self.text_len for enc in encoded)
        ids = [[t for t in enc.ids[: self.text_len] if t < self.text_vocab] for enc in encoded]
        return pad_text_ids(ids, self.text_len, self.text_vocab)


class collate(NumpyBatchCollateFn):  # noqa: N801 - used like the function it replaced
    """Ray Data collate: numpy batch -> {'text', 'image', 'keys'}. Runs in Ray Data's prefetch
    threads, so BPE encoding (and, for GPU workers, pinning) overlaps the training step; pinned host
    tensors let the loop copy them to the GPU with non_blocking=True."""

    def __init__(self, encoder: CaptionEncoder, image_len: int, pin: bool = False):
        self.encoder, self.image_len, self.pin = encoder, image_len, pin

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        tokens = batch["image_tokens"]
        image = np.stack(tokens) if tokens.dtype == object else np.asarray(tokens)
        image = torch.from_numpy(image.reshape(len(image), self.image_len).astype(np.int64))
        text = self.encoder(list(batch["caption"]))
        if self.pin:
            text, image = text.pin_memory(), image.pin_memory()
        return {"text": text, "image": image, "keys": [str(k) for k in batch["key"]]}


def epoch_batches(
    shard: Any,
    collate_fn,
    batch_size: int,
    epoch: int,
    skip: int = 0,
    seed: int = 0,
    shuffle_buffer: int = 0,
    prefetch_batches: int = 2,
) -> Iterator[dict[str, Any]]:
    """One epoch of a rank's batches, skipping the first `skip` (already trained on) batches."""
    it = shard.iter_torch_batches(
        batch_size=batch_size,
        collate_fn=collate_fn,
        drop_last=True,
        prefetch_batches=prefetch_batches,
        local_shuffle_buffer_size=shuffle_buffer or None,
        local_shuffle_seed=(seed + epoch) if shuffle_buffer else None,
    )
    for i, batch in enumerate(it):
        if i >= skip:
            yield batch


class DataPosition:
    """(epoch, batches consumed in it) of one rank, and the infinite batch stream from there."""

    def __init__(
        self,
        shard: Any,
        collate_fn,
        batch_size: int,
        seed: int,
        shuffle_buffer: int,
        prefetch: int,
        state: dict[str, int] | None = None,
    ):
        self.shard, self.collate_fn, self.batch_size = shard, collate_fn, batch_size
        self.seed, self.shuffle_buffer, self.prefetch = seed, shuffle_buffer, prefetch
        self.epoch = int((state or {}).get("epoch", 0))
        self.consumed = int((state or {}).get("consumed", 0))

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def _epoch(self, epoch: int, skip: int) -> Iterator[dict[str, Any]]:
        return epoch_batches(
            self.shard, self.collate_fn, self.batch_size, epoch, skip, self.seed, self.shuffle_buffer, self.prefetch
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        current: Iterator[dict[str, Any]] = self._epoch(self.epoch, self.consumed)
        while True:
            # Start the next epoch's Ray Data execution now, in the background: starting one costs
            # seconds (tasks, first read), which would otherwise stall training at every epoch end.
            upcoming = FirstBatchAhead(self._epoch(self.epoch + 1, 0))
            got = False
            for batch in current:
                got = True
                self.consumed += 1
                yield batch
            if not got and self.consumed == 0:
                raise ValueError("a training shard yields no full batch: lower data.batch_size")
            self.epoch, self.consumed = self.epoch + 1, 0
            current = upcoming


class FirstBatchAhead:
    """Iterate `it`, with its first item fetched by a background thread from construction on.
    The order is unchanged (the thread only takes the first item; the rest is read on demand)."""

    def __init__(self, it: Iterator[Any]):
        import threading

        self._it, self._first, self._error = it, None, None
        self._thread = threading.Thread(target=self._fetch, name="next-epoch", daemon=True)
        self._thread.start()

    def _fetch(self) -> None:
        try:
            self._first = [next(self._it)]
        except StopIteration:
            self._first = []
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            self._error = exc

    def __iter__(self) -> Iterator[Any]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        yield from self._first
        yield from self._it


def trace(path: str, record: dict[str, Any]) -> None:
    """Append one JSON line (debug lineage: which keys each rank trained on at each step)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
