"""encode_tokens with dataset and tokens on s3:// (a real S3 API: moto's server on loopback), and the remote
atomic write: a failed upload never becomes visible."""

import os

import boto3
import numpy as np
import pytest

from common import storage
from tests.test_encode_tokens import expected_tokens, tiny_dvae
from tokenize_images.config import EncodeConfig, EncodeRunConfig, TokenizerConfig
from tokenize_images.encode import encode_tokens
from tokenize_images.synthetic import write_dataset

S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
# encode_tokens must start its own Ray here, after the fixture set the endpoint: workers of an instance an
# earlier module left running would not see it (they inherit the raylet's environment).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_shared_ray")]


@pytest.fixture()
def s3(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
        monkeypatch.setenv(k, v)  # set before Ray starts: its workers inherit the endpoint
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    boto3.client("s3").create_bucket(Bucket="tokbucket")
    yield boto3.client("s3")
    server.stop()


def keys(client, prefix=""):
    objects = client.list_objects_v2(Bucket="tokbucket", Prefix=prefix).get("Contents", [])
    return sorted(o["Key"] for o in objects if not o["Key"].endswith("/"))  # not pyarrow's directory markers


def test_failed_upload_is_never_published(s3):
    storage.write_bytes_atomic("s3://tokbucket/x/ok.bin", b"whole")
    assert storage.read_bytes("s3://tokbucket/x/ok.bin") == b"whole"
    with pytest.raises(TypeError):
        storage.write_bytes_atomic("s3://tokbucket/x/bad.bin", object())  # raises inside the upload's `with`
    # pyarrow's close() completed the (empty) upload of the temp key; it was deleted, never copied over.
    assert keys(s3) == ["x/ok.bin"]


def test_encode_on_s3_writes_checks_and_resumes(tmp_path, s3):
    dataset, out = "s3://tokbucket/ds", "s3://tokbucket/tokens"
    write_dataset(dataset, shards=2, rows_per_shard=6, size_range=(40, 60), corrupt_rows=1)
    ckpt = str(tmp_path / "dvae.pt")
    tiny_dvae(ckpt)
    s3.put_object(Bucket="tokbucket", Key="tokens/shards/.tmp-00000.parquet.dead", Body=b"a crashed writer's upload")
    cfg = EncodeConfig(dataset=dataset, dvae=ckpt, output=out,
                       run=EncodeRunConfig(batch_size=4, read_batch_rows=4, num_cpus=2, mlflow=False),
                       tokenizer=TokenizerConfig(vocab_size=300, min_frequency=1, train_if_missing=True))  # fmt: skip
    manifest = encode_tokens(cfg)
    assert manifest["counts"] == {"input_rows": 12, "encoded": 11, "rejected": {"decode_error": 1}}
    assert keys(s3, "tokens/") == [
        "tokens/manifest.json",
        "tokens/rejected/00000.parquet",
        "tokens/shards/00000.parquet",
        "tokens/shards/00001.parquet",
        "tokens/tokenizer.json",
    ]  # fmt: skip  (the stale temp key was swept)
    got = {}
    for name in ("00000.parquet", "00001.parquet"):
        t = storage.read_parquet(f"{out}/shards/{name}")
        got.update(zip(t.column("key").to_pylist(), t.column("image_tokens").to_pylist(), strict=True))
    local = str(tmp_path / "ds")  # the same dataset locally, for the reference tokens
    write_dataset(local, shards=2, rows_per_shard=6, size_range=(40, 60), corrupt_rows=1)
    want = expected_tokens(local, ckpt)
    assert got.keys() == want.keys()
    for k, v in want.items():
        np.testing.assert_array_equal(np.array(got[k], np.uint16), v)

    again = encode_tokens(cfg)  # finished shards checked by tasks on S3, nothing rewritten
    assert again["run"]["shards_skipped"] == 2 and again["run"]["shards_written"] == 0
    s3.copy_object(Bucket="tokbucket", Key="tokens/rejected/00001.parquet",
                   CopySource={"Bucket": "tokbucket", "Key": "tokens/rejected/00000.parquet"})  # fmt: skip
    with pytest.raises(ValueError, match="does not match"):  # a leftover rejected file next to a clean shard
        encode_tokens(cfg)
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1")
