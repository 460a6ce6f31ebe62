"""The dVAE's data order: a pure function of (files, seed, epoch, rank), and a resume that continues it exactly."""

import itertools
import os
from dataclasses import replace

import numpy as np
import pytest

from common import storage
from tokenize_images.config import DVAEOptimConfig, DVAETrainConfig
from tokenize_images.dvae_data import DataStream, epoch_files, layout_fingerprint, rank_files, shuffled_batches
from tokenize_images.synthetic import write_dataset

FILES = [f"ds/shards/{i:05d}.parquet" for i in range(10)]


def test_epoch_order_is_a_seeded_permutation_per_epoch_and_ranks_split_it():
    orders = [epoch_files(FILES, seed=0, epoch=e) for e in range(4)]
    assert all(sorted(o) == FILES for o in orders)
    assert len({tuple(o) for o in orders}) == 4  # a new order every epoch
    assert epoch_files(list(reversed(FILES)), seed=0, epoch=2) == orders[2]  # of the set, not the listing order
    assert epoch_files(FILES, seed=1, epoch=2) != orders[2]
    assert epoch_files(FILES, seed=0, epoch=2, shuffle=False) == FILES
    # Ranks take turns through the epoch's order: every file once per epoch, over all ranks.
    parts = [rank_files(FILES, 0, 3, r, 3) for r in range(3)]
    assert sorted(itertools.chain(*parts)) == FILES and parts[0] == epoch_files(FILES, 0, 3)[0::3]
    assert layout_fingerprint(FILES, True) != layout_fingerprint(FILES[:-1], True)
    assert layout_fingerprint(FILES, True) != layout_fingerprint(FILES, False)


def _blocks(n_rows, block=7):
    keys = np.array([f"k{i:03d}" for i in range(n_rows)])
    pixels = np.arange(n_rows, dtype=np.uint8).reshape(n_rows, 1, 1, 1).repeat(2, 1).repeat(2, 2).repeat(3, 3)
    return [(keys[i : i + block], pixels[i : i + block]) for i in range(0, n_rows, block)]


def test_shuffle_buffer_draws_every_row_once_and_is_seeded():
    def run(seed, buffer):
        return list(shuffled_batches(_blocks(50), 8, buffer, np.random.default_rng(seed)))

    batches = run(0, 16)
    assert len(batches) == 6  # 50 rows: 6 batches of 8, the last 2 rows dropped
    keys = [k for b, _ in batches for k in b]
    assert len(set(keys)) == 48 and keys != sorted(keys)
    for b, pixels in batches:  # each row's pixels travel with its key
        assert pixels.shape == (8, 2, 2, 3) and [int(k[1:]) for k in b] == pixels[:, 0, 0, 0].tolist()
    assert [b.tolist() for b, _ in run(0, 16)] == [b.tolist() for b, _ in batches]
    assert [b.tolist() for b, _ in run(1, 16)] != [b.tolist() for b, _ in batches]
    assert [k for b, _ in run(0, 0) for k in b] == [f"k{i:03d}" for i in range(48)]  # buffer 0: stream order


@pytest.mark.slow
@pytest.mark.parametrize(("cache_decoded", "rank"), [(False, 1), (True, 0)])
def test_a_resumed_stream_sees_the_same_remaining_rows(tmp_path, shared_ray, cache_decoded, rank):
    """Take batches on one of 2 ranks across epochs; a stream rebuilt from a mid-epoch position (a checkpoint's)
    continues with exactly the rows, and the pixels, that the uninterrupted stream gave next."""
    dataset = str(tmp_path / "ds")
    write_dataset(dataset, shards=5, rows_per_shard=6, size_range=(40, 56), corrupt_rows=1)
    files = storage.glob(os.path.join(dataset, "shards", "*.parquet"))
    cfg = replace(DVAETrainConfig(), cache_decoded=cache_decoded, shuffle_buffer=8, optim=DVAEOptimConfig(batch_size=4))
    whole = DataStream(files, cfg, 16, rank, 2)
    it = iter(whole)
    taken = [next(it) for _ in range(5)]
    position = whole.state()
    rest = [next(it) for _ in range(6)]
    assert position["epoch"] >= 1 and position["consumed"] > 0 and whole.epoch >= 2, (position, whole.epoch)
    assert len({k for k, _ in taken[:2] for k in k.tolist()}) == 8  # within an epoch, no row twice
    resumed = DataStream(files, cfg, 16, rank, 2, position)
    again = list(itertools.islice(iter(resumed), 6))
    assert [k.tolist() for k, _ in again] == [k.tolist() for k, _ in rest]
    for (_, a), (_, b) in zip(again, rest, strict=True):
        np.testing.assert_array_equal(a, b)  # random crops are seeded by (seed, epoch, key) too
