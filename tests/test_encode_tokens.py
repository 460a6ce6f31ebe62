"""encode_tokens end to end through real Ray Data, a real MLflow sqlite store, and fixture shards."""

import os

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from common import schemas, storage
from tests.data_paths import SHARED_DATA
from tokenize_images.config import EncodeConfig, EncodeRunConfig, TokenizerConfig
from tokenize_images.dvae import DVAE, DVAEConfig, load_checkpoint, save_checkpoint
from tokenize_images.encode import busy_share, encode_tokens, plan_shards, steady_rate
from tokenize_images.encode_shard import check_shard
from tokenize_images.preprocess import load_image
from tokenize_images.synthetic import write_dataset
from tokenize_images.text_tokenizer import iter_captions, load_text_tokenizer

PHOTOS = SHARED_DATA / "photos"  # optional: synthetic images only when the shared data is absent


def tiny_dvae(path, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = DVAEConfig(**{"n_hid": 16, "n_blk_per_group": 1, "vocab_size": 64, "image_size": 32, "n_init": 16, **kw})
    return save_checkpoint(DVAE(cfg), str(path))


def expected_tokens(dataset, ckpt):
    """The encoder's argmax computed directly, without Ray: key -> tokens."""
    model, _ = load_checkpoint(ckpt)
    out = {}
    for path in storage.glob(os.path.join(dataset, "shards", "*.parquet")):
        t = storage.read_parquet(path)
        for key, data in zip(t.column("key").to_pylist(), t.column("image").to_pylist(), strict=True):
            try:
                img = load_image(data, model.cfg.image_size)
            except Exception:
                continue
            x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
            out[key] = model.encode_tokens(x).flatten().numpy().astype(np.uint16)
    return out


def test_busy_share_and_steady_rate_from_batch_intervals():
    # (started, finished, rows): busy 0-2 and 3-4, a 1 s wait between: 3 s busy of a 4 s span.
    assert busy_share([(3.0, 4.0, 8), (0.0, 2.0, 8)]) == pytest.approx(0.75)
    # Two calls at once (a GPU actor's max_concurrency=2) count once: the union 0-3 of a 0-3 span.
    assert busy_share([(0.0, 2.0, 8), (1.0, 3.0, 8)]) == pytest.approx(1.0)
    # Steady rate: the rows finished after the first batch, over the time since it finished.
    assert steady_rate([(0.0, 2.0, 8), (1.0, 3.0, 8), (3.0, 4.0, 16)]) == pytest.approx(24 / 2)
    assert busy_share([]) == 0.0 and steady_rate([(0.0, 1.0, 8)]) == 0.0


@pytest.mark.slow
def test_encode_end_to_end(tmp_path, mlflow_store, shared_ray):
    dataset, out = str(tmp_path / "ds"), str(tmp_path / "tokens")
    keys = write_dataset(
        dataset,
        shards=2,
        rows_per_shard=10,
        size_range=(40, 90),
        corrupt_rows=3,
        photos=str(PHOTOS) if PHOTOS.is_dir() else None,
    )
    ckpt = tmp_path / "dvae.pt"
    sha = tiny_dvae(ckpt)
    cfg = EncodeConfig(
        dataset=dataset,
        dvae=str(ckpt),
        output=out,
        # two threads in the one encoder actor (the demo's setting: the reader leaves CPU idle)
        run=EncodeRunConfig(batch_size=4, read_batch_rows=4, num_cpus=2, grid_images=4, threads_per_encoder=2),
        tokenizer=TokenizerConfig(vocab_size=300, min_frequency=1, train_if_missing=True),
    )
    manifest = encode_tokens(cfg)

    expected = expected_tokens(dataset, str(ckpt))
    assert len(expected) == len(keys) - 3
    got = {}
    for name in ("00000.parquet", "00001.parquet"):
        f = pq.ParquetFile(os.path.join(out, "shards", name))
        assert f.schema_arrow.remove_metadata() == schemas.token_shard_schema(4, 4)
        meta = storage.parquet_metadata(os.path.join(out, "shards", name))
        assert meta[schemas.TOKEN_META_DVAE_SHA256] == sha and meta[schemas.TOKEN_META_GRID] == "4x4"
        assert meta[schemas.TOKEN_META_VOCAB] == "64" and meta[schemas.TOKEN_META_IMAGE_SIZE] == "32"
        assert f.metadata.row_group(0).column(0).compression == "ZSTD"
        t = f.read()
        for k, tok in zip(t.column("key").to_pylist(), t.column("image_tokens").to_pylist(), strict=True):
            got[k] = np.array(tok, dtype=np.uint16)
    assert got.keys() == expected.keys()
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])
    # Rows keep their input order inside a shard.
    order = [k for k in keys if k in got]
    assert [
        k for k in storage.read_parquet(os.path.join(out, "shards", "00000.parquet")).column("key").to_pylist()
    ] == order[:7]

    # The three corrupt rows: counted, listed with a reason, no crash.
    rejected = storage.read_parquet(os.path.join(out, "rejected", "00000.parquet"))
    assert rejected.schema == schemas.REJECTED
    assert rejected.column("key").to_pylist() == keys[:3]
    assert set(rejected.column("reason").to_pylist()) == {"decode_error"}
    assert all(rejected.column("detail").to_pylist())
    assert not os.path.exists(os.path.join(out, "rejected", "00001.parquet"))

    on_disk = storage.read_json(os.path.join(out, "manifest.json"))
    assert on_disk["format"] == schemas.TOKENS_FORMAT and on_disk["dvae"]["sha256"] == sha
    assert on_disk["counts"] == {"input_rows": 20, "encoded": 17, "rejected": {"decode_error": 3}}
    assert on_disk["tokenizer"]["vocab_size"] <= 300
    assert manifest["run"]["encoded"] == 17 and manifest["run"]["images_per_s"] > 0
    assert 0 < manifest["run"]["encoder_busy_share"] <= 1
    assert [e["threads"] for e in manifest["run"]["encoders"]] == [2]

    tok = load_text_tokenizer(out)
    assert tok.decode(tok.encode("A RED Circle").ids).strip() == "a red circle"  # lowercased BPE

    client = mlflow.tracking.MlflowClient()
    exp = client.get_experiment_by_name("encode_tokens")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.metrics["encoded"] == 17 and run.data.metrics["rejected"] == 3
    assert run.data.metrics["images_per_s"] > 0 and 0 < run.data.metrics["codebook_used_fraction"] <= 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"originals_vs_reconstructions.png", "codebook_usage.png", "manifest.json"} <= artifacts
    # Lineage: the dataset it read and the token set it wrote, with the digests the neighbours log.
    from common.tracking import dataset_digest

    roles = {({t.key: t.value for t in i.tags}["mlflow.data.context"], i.dataset.digest)
             for i in client.get_run(run.info.run_id).inputs.dataset_inputs}  # fmt: skip
    assert roles == {("encode", dataset_digest(dataset)), ("output", dataset_digest(out))}

    # A rerun finds every shard done and changes nothing.
    before = {n: os.path.getmtime(os.path.join(out, "shards", n)) for n in os.listdir(os.path.join(out, "shards"))}
    again = encode_tokens(cfg)
    assert again["run"]["shards_written"] == 0 and again["run"]["shards_skipped"] == 2
    assert before == {
        n: os.path.getmtime(os.path.join(out, "shards", n)) for n in os.listdir(os.path.join(out, "shards"))
    }

    # A different dVAE into the same root is refused rather than mixed.
    other = tmp_path / "other.pt"
    tiny_dvae(other, seed=1)
    with pytest.raises(ValueError, match="encoded by dVAE"):
        encode_tokens(EncodeConfig(dataset=dataset, dvae=str(other), output=out, run=cfg.run, tokenizer=cfg.tokenizer))

    # The per-shard resume checks (run as Ray tasks by encode_tokens), on the shards just written.
    plans = {p.name: p for p in plan_shards(cfg)}
    assert [p.rows for p in plans.values()] == [10, 10]  # from the dataset manifest, no footer read
    assert check_shard(plans["00000.parquet"], sha, True)["input_rows"] == 10
    with pytest.raises(ValueError, match="does not match"):  # a leftover rejected file next to a clean shard
        check_shard(plans["00001.parquet"], sha, True)
    with pytest.raises(ValueError, match="does not match"):  # a rejected file gone missing
        check_shard(plans["00000.parquet"], sha, False)
    shard1 = os.path.join(dataset, "shards", "00001.parquet")
    t = storage.read_parquet(shard1)
    storage.write_parquet_atomic(shard1, t.slice(1))  # the input changed since it was encoded
    with pytest.raises(ValueError, match="changed since"):
        check_shard(plan_shards(cfg)[1], sha, False)
    with pytest.raises(ValueError, match="changed since"):  # the whole job refuses it too
        encode_tokens(cfg)
    os.remove(shard1)  # and a dataset whose shards differ from its manifest is refused at planning
    with pytest.raises(ValueError, match=r"shards differ from its manifest \(missing \['00001.parquet'\]"):
        plan_shards(cfg)


def test_encode_refuses_without_tokenizer_and_names_the_step(tmp_path):
    dataset = str(tmp_path / "ds")
    write_dataset(dataset, shards=1, rows_per_shard=2)
    ckpt = tmp_path / "dvae.pt"
    tiny_dvae(ckpt)
    cfg = EncodeConfig(dataset=dataset, dvae=str(ckpt), output=str(tmp_path / "tokens"))
    with pytest.raises(FileNotFoundError, match="orchestration/train_tokenizer.py"):
        encode_tokens(cfg)  # before Ray or any encoding starts


def test_tokenizer_trains_on_a_fixed_sample_of_captions(tmp_path):
    dataset = str(tmp_path / "ds")
    write_dataset(dataset, shards=3, rows_per_shard=4)
    first = list(iter_captions(dataset, limit=5))
    assert len(first) == 5 and first == list(iter_captions(dataset, limit=5))  # same sample on a rerun
    assert len(list(iter_captions(dataset))) == 12


@pytest.mark.slow
def test_cuda_waits_for_gpus_then_fails_instead_of_running_on_cpu(ray_cluster):
    import dataclasses

    from tokenize_images.encode import _pool

    cfg = EncodeConfig(run=EncodeRunConfig(device="cuda", min_gpus=1, gpu_wait_s=1.0))
    ray_cluster.start(num_cpus=1)  # the session's private instance (never a cluster somebody else started)
    with pytest.raises(TimeoutError, match="needs run.min_gpus=1 GPUs; the cluster has 0 after run.gpu_wait_s=1"):
        _pool(cfg)
    auto = _pool(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, device="auto")))
    assert auto[0] == "cpu"  # 'auto' takes what is there now; 'cuda' never does
