"""Caption encoding (lowercase BPE, dropout only for training, per-position padding), synthetic
token shards in the stage-2 contract, and the next-epoch prefetch keeping order."""

import time

import pytest

from common import storage
from common.schemas import TOKEN_META_GRID, TOKEN_META_VOCAB, token_shard_schema
from training.data import CaptionEncoder, FirstBatchAhead, TokenSource
from training.synthetic import write_synthetic_tokens


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = write_synthetic_tokens(str(tmp_path_factory.mktemp("tok")), n_shards=3, rows_per_shard=32)
    return TokenSource.open(root, val_shards=1)


def test_synthetic_shards_follow_the_stage2_contract(source):
    assert len(source.train_files) == 2 and len(source.val_files) == 1  # last shard held out
    table = storage.read_parquet(source.train_files[0])
    assert table.schema.remove_metadata() == token_shard_schema(4, 4)
    meta = storage.parquet_metadata(source.train_files[0])
    assert meta[TOKEN_META_GRID] == "4x4" and meta[TOKEN_META_VOCAB] == "16"
    assert (source.grid_h, source.grid_w, source.image_vocab) == (4, 4, 16)


def test_encoder_lowercases_and_pads_per_position(source):
    vocab = source.text_vocab()
    enc = CaptionEncoder(source.tokenizer_json, 12, vocab, dropout=0.0)
    upper, lower = enc(["A RED Square"]), enc(["a red square"])
    assert upper.tolist() == lower.tolist()
    ids = lower[0].tolist()
    n = sum(1 for t in ids if t < vocab)
    assert 0 < n < 12
    assert ids[n:] == [vocab + p for p in range(n, 12)]


def test_bpe_dropout_only_when_training(source):
    vocab = source.text_vocab()
    captions = ["a purple circle and a yellow stripe"] * 200
    train = CaptionEncoder(source.tokenizer_json, 32, vocab, dropout=0.1)(captions)
    val = CaptionEncoder(source.tokenizer_json, 32, vocab, dropout=0.0)(captions)
    assert len({tuple(r) for r in val.tolist()}) == 1  # validation: deterministic
    assert len({tuple(r) for r in train.tolist()}) > 10  # training: segmentations vary


def test_truncated_captions_are_counted(source):
    vocab = source.text_vocab()
    enc = CaptionEncoder(source.tokenizer_json, 4, vocab, dropout=0.0)
    short, long = "a red square", "a purple circle and a yellow stripe on a gray background"
    lengths = [len(enc.tok.encode(c).ids) for c in (short, long)]
    assert lengths[0] <= 4 < lengths[1]
    enc([short, long, long])
    assert (enc.captions, enc.truncated) == (3, 2)


def test_first_batch_ahead_keeps_order_and_overlaps():
    def slow():
        time.sleep(0.3)
        yield from range(5)

    start = time.perf_counter()
    ahead = FirstBatchAhead(slow())
    time.sleep(0.3)  # the consumer is busy; the fetch happens meanwhile
    assert list(ahead) == [0, 1, 2, 3, 4]
    assert time.perf_counter() - start < 0.55

    def broken():
        raise OSError("shard unreadable")
        yield

    with pytest.raises(OSError):
        list(FirstBatchAhead(broken()))


def test_ray_data_calls_use_no_deprecated_api(source):
    """Ray 2.60 deprecates a function as iter_torch_batches' collate_fn (a NumpyBatchCollateFn class is
    the replacement) and ExecutionOptions.exclude_resources: this project's calls use neither."""
    import warnings

    from ray.data.collate_fn import NumpyBatchCollateFn

    from harness.launch import default_dataset_config
    from training.data import collate, data_config

    fn = collate(CaptionEncoder(source.tokenizer_json, 8, source.text_vocab()), 16)
    assert isinstance(fn, NumpyBatchCollateFn)  # what iter_torch_batches checks before warning
    from ray.data import DataContext

    DataContext.get_current()  # creating Ray's own context warns about its own deprecated fields: not ours
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = data_config()
        default = default_dataset_config()  # what harness.launch gives trainers without a DataConfig (the dVAE)
    assert config._datasets_to_split == ["val"] and default._datasets_to_split == "all"


def test_memory_cache_keeps_every_row_in_order_and_refuses_what_does_not_fit(source, shared_ray):
    """data.cache = "memory" reads each rank's shards once into the object store. Its epochs give the same rows as
    epochs that read the shards again: in the same order unshuffled, and in an order a rebuild (a resume) repeats when
    shuffled. A token set over half the store is refused."""
    from ray.data import DataContext

    # As training iterates them: Ray Train applies data_config()'s preserve_order to each worker's datasets.
    options = DataContext.get_current().execution_options
    preserve, options.preserve_order = options.preserve_order, True
    try:
        check_memory_cache(source)
    finally:
        options.preserve_order = preserve


def check_memory_cache(source):
    from ray.data.dataset import MaterializedDataset

    from training.data import collate, epoch_batches

    streamed, _ = source.ray_datasets(2)
    cached, _ = source.ray_datasets(2, cache="memory")
    rebuilt, _ = source.ray_datasets(2, cache="memory")
    assert all(isinstance(ds, MaterializedDataset) for ds in cached.values())
    assert not any(isinstance(ds, MaterializedDataset) for ds in streamed.values())
    fn = collate(CaptionEncoder(source.tokenizer_json, 8, source.text_vocab()), 16)

    def keys(ds, epoch, shuffle_buffer=16):
        return [k for b in epoch_batches(ds, fn, 4, epoch, seed=3, shuffle_buffer=shuffle_buffer) for k in b["keys"]]

    for name in ("train_0", "train_1", "val"):
        assert keys(cached[name], 0, shuffle_buffer=0) == keys(streamed[name], 0, shuffle_buffer=0)
        assert len(set(keys(cached[name], 0))) == 32  # one shard of 32 rows, each once
        assert sorted(keys(cached[name], 1)) == sorted(keys(streamed[name], 1))
        assert keys(cached[name], 1) == keys(rebuilt[name], 1) != keys(cached[name], 2)  # seeded, epochs apart
    with pytest.raises(ValueError, match="object store"):
        source.ray_datasets(2, cache="memory", store_bytes=1000)
    with pytest.raises(ValueError, match="'stream' or 'memory'"):
        source.ray_datasets(2, cache="disk")
