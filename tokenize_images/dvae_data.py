"""The dVAE's training data: each rank's stream of image batches, with an exact data position.

Order (all of it a pure function of the dataset's file list, `optim.seed`, the epoch and the rank):
  epoch_files    the shard files in a seeded permutation per epoch (shuffle_files; else sorted by name)
  rank r         takes files r, r + W, r + 2W, ... of that order (W ranks), read in that order
  rows           decoded in Ray Data tasks (order preserved), random crops seeded per (seed, epoch, key)
  batches        a seeded shuffle buffer per (seed, epoch, rank) over those rows; a last partial batch is dropped

A rank's position is therefore (epoch, batches taken in it), and a resume rebuilds the same order and skips
exactly the batches taken: the rows after a checkpoint are the ones an uninterrupted run would have trained on.
The cost is re-reading (not training on) the skipped part of the current epoch. Ray Data's own file shuffle
could not do this: it reseeds per execution, and a resumed run's first execution reuses epoch 0's seed; and a
streaming split deals blocks to ranks in the order they finish.

cache_decoded: every rank decodes all files once (Ray Data, in parallel) and keeps the pixels in its own
memory, per file; each epoch then takes its files from there in the same order. For small datasets (the
demo's): W ranks hold W copies. Crops are then the centre ones.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from typing import Iterator

import numpy as np

Block = tuple[np.ndarray, np.ndarray]  # keys (N,), pixels (N,S,S,3) uint8


def _rng(seed: int, *parts: int) -> np.random.Generator:
    return np.random.default_rng([seed, *parts])


def epoch_files(files: list[str], seed: int, epoch: int, shuffle: bool = True) -> list[str]:
    """The shard files in the order `epoch` reads them: sorted by name, then permuted by (seed, epoch)."""
    files = sorted(files)
    if not shuffle:
        return files
    return [files[i] for i in _rng(seed, 0, epoch).permutation(len(files))]


def rank_files(files: list[str], seed: int, epoch: int, rank: int, world: int, shuffle: bool = True) -> list[str]:
    return epoch_files(files, seed, epoch, shuffle)[rank::world]


def layout_fingerprint(files: list[str], shuffle: bool) -> str:
    """Which files, and whether they are shuffled: a data position saved under one layout means nothing under
    another (the world size is checked separately by harness.checkpoint)."""
    names = "\n".join(sorted(files)) + f"\nshuffle={shuffle}"
    return hashlib.sha256(names.encode()).hexdigest()[:16]


def decode_for_training(batch: dict, size: int, random_crop: bool, seed: int, epoch: int) -> dict:
    """Ray Data map_batches: image bytes -> pixels; rows that do not decode are skipped (encode_tokens counts them).
    A random crop's offset comes from (seed, epoch, key): the same in a resumed run as in an uninterrupted one."""
    from tokenize_images.preprocess import load_image

    keep, pixels = [], []
    for i, (key, data) in enumerate(zip(batch["key"], batch["image"], strict=True)):
        rng = _rng(seed, 1, epoch, zlib.crc32(str(key).encode())) if random_crop else None
        try:
            pixels.append(load_image(data, size, rng=rng))
        except Exception:  # noqa: BLE001 - any undecodable row is skipped
            continue
        keep.append(i)
    out = {k: np.asarray(v)[keep] for k, v in batch.items() if k != "image"}
    out["pixels"] = np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)
    return out


def decoded_blocks(files: list[str], size: int, random_crop: bool, seed: int, epoch: int, paths: bool = False):
    """Ray Data: the decoded rows of `files`, as numpy blocks in file order (with each row's file if `paths`)."""
    import ray.data

    if not files:
        return
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the rows in file order, whatever task finishes first
    ds = ray.data.read_parquet(files, include_paths=paths).select_columns(
        ["key", "image"] + (["path"] if paths else [])
    )
    ds = ds.map_batches(
        decode_for_training,
        batch_format="numpy",
        batch_size=64,
        fn_kwargs={"size": size, "random_crop": random_crop, "seed": seed, "epoch": epoch},
    )
    yield from ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)


def shuffled_batches(blocks, batch_size: int, buffer_rows: int, rng: np.random.Generator) -> Iterator[Block]:
    """Rows of `blocks` ((keys, pixels) in order) in batches of batch_size. With buffer_rows > 0 each batch is
    drawn at random from a buffer of at least buffer_rows rows (a local shuffle); 0 keeps stream order. The
    rest at the end is drawn too; a last partial batch is dropped."""
    pool: list = []  # (key, pixel row) pairs; a row is a view into its block

    def draw() -> Block:
        if buffer_rows <= 0:
            taken, pool[:batch_size] = pool[:batch_size], []
        else:
            taken = []
            for _ in range(batch_size):
                i = int(rng.integers(len(pool)))
                pool[i], pool[-1] = pool[-1], pool[i]
                taken.append(pool.pop())
        return np.array([k for k, _ in taken]), np.stack([p for _, p in taken])

    for keys, pixels in blocks:
        pool.extend(zip(keys, pixels, strict=True))
        while len(pool) >= max(buffer_rows, batch_size):
            yield draw()
    while len(pool) >= batch_size:
        yield draw()


class DataStream:
    """One rank's endless stream of (keys, pixels) batches and its position: (epoch, batches taken in it).
    `position` is a checkpoint's: the stream starts there, skipping the batches that epoch already gave."""

    def __init__(self, files: list[str], cfg, image_size: int, rank: int, world: int, position=None):
        if len(files) < world:
            raise ValueError(f"{len(files)} dataset shards for {world} workers: each rank reads whole files")
        self.files, self.cfg, self.size, self.rank, self.world = sorted(files), cfg, image_size, rank, world
        position = position if isinstance(position, dict) else {}  # an older checkpoint's: the harness reset it
        self.epoch, self.consumed = int(position.get("epoch", 0)), int(position.get("consumed", 0))
        self._cache: dict[str, list[Block]] | None = None

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def files_of(self, epoch: int) -> list[str]:
        return rank_files(self.files, self.cfg.optim.seed, epoch, self.rank, self.world, self.cfg.shuffle_files)

    def _blocks(self, epoch: int):
        cfg, files = self.cfg, self.files_of(epoch)
        if not cfg.cache_decoded:
            for b in decoded_blocks(files, self.size, cfg.random_crop, cfg.optim.seed, epoch):
                yield b["key"], b["pixels"]
            return
        if self._cache is None:  # all files once, centre crops; then every epoch from memory
            self._cache = {f: [] for f in self.files}
            # Ray Data's path column drops a URI scheme (s3://b/k -> b/k): map it back to the file list's name.
            name = {**{f.split("://", 1)[-1]: f for f in self.files}, **{f: f for f in self.files}}
            for b in decoded_blocks(self.files, self.size, False, cfg.optim.seed, 0, paths=True):
                for path in dict.fromkeys(b["path"]):
                    rows = b["path"] == path
                    self._cache[name[path]].append((b["key"][rows], b["pixels"][rows]))
        for f in files:
            yield from self._cache[f]

    def epoch_batches(self, epoch: int) -> Iterator[Block]:
        rng = _rng(self.cfg.optim.seed, 2, epoch, self.rank)
        return shuffled_batches(self._blocks(epoch), self.cfg.optim.batch_size, self.cfg.shuffle_buffer, rng)

    def __iter__(self) -> Iterator[Block]:
        while True:
            taken = 0
            for batch in self.epoch_batches(self.epoch):
                taken += 1
                if taken <= self.consumed:  # a resume: this epoch gave these batches before the checkpoint
                    continue
                self.consumed = taken
                yield batch
            if taken == 0:
                raise ValueError(
                    f"rank {self.rank}'s files of epoch {self.epoch} give no batch of "
                    f"{self.cfg.optim.batch_size} decodable images: lower optim.batch_size"
                )
            self.epoch, self.consumed = self.epoch + 1, 0


def trace(path: str, record: dict) -> None:
    """Append one JSON line (debug lineage: which keys each rank trained on at each step)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
