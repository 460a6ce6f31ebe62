"""build_dataset on Ray when things fail: a list that fails every retry is retried by the next run of
the same command, and an input file that cannot be read fails the build loudly (issue 10).

Real Ray (private local instance), real img2dataset downloads from a real local HTTP server, real
fastText, a real MLflow sqlite store. The "unhealthy server" is a real socket that accepts
connections and never answers, on the port the healthy demo server later serves from.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import socket

import pytest
from PIL import Image

from pipeline.build import FailedLists, build
from pipeline.config import BuildConfig
from pipeline.demo.server import serve

pytestmark = pytest.mark.slow
N_IMAGES = 6


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import ray

    from common.ray_cluster import init_ray

    tmp = tmp_path_factory.mktemp("recovery")
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    import mlflow

    mlflow.MlflowClient().search_experiments()  # create the store once, before any writer
    owns = init_ray(num_cpus=2)
    www = tmp / "www"
    www.mkdir()
    for i in range(N_IMAGES):
        buf = io.BytesIO()
        Image.new("RGB", (300 + i, 300), (40 * i, 90, 200)).save(buf, "JPEG")
        (www / f"{i}.jpg").write_bytes(buf.getvalue())
    yield tmp
    if owns:
        ray.shutdown()
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved


@contextlib.contextmanager
def silent_server():
    """A port that accepts TCP connections (kernel backlog) and never sends a byte."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def make_config(tmp, port: int, output: str) -> BuildConfig:
    tsv = tmp / f"src-{port}.tsv"
    tsv.write_text(
        "".join(f"a photo of a small blue house number {i}\thttp://127.0.0.1:{port}/{i}.jpg\n" for i in range(N_IMAGES))
    )
    cfg = BuildConfig(sources=[f"cc3m:{tsv}"], output=str(tmp / output))
    cfg.download.allow_private_networks = True
    cfg.download.timeout = 60.0  # the list's deadline, not the socket timeout, must end the hang
    cfg.download.total_timeout = 60.0
    cfg.captions.uncertain_band = [0.0, 0.0]
    cfg.run.dedup_partitions = 1  # one download list
    cfg.run.shard_timeout_s = 4.0
    cfg.run.shard_retries = 1
    return cfg


def test_list_that_failed_every_retry_is_recovered_by_a_rerun(env):
    with silent_server() as port:
        cfg = make_config(env, port, "recover")
        with pytest.raises(FailedLists, match="1 of 1 download lists failed after 2 attempts"):
            build(cfg)
    assert not os.path.exists(os.path.join(cfg.output, "manifest.json"))
    assert not os.path.exists(os.path.join(cfg.output, "shards"))  # nothing published
    with serve(str(env / "www"), port=port):  # the host is healthy again, same URLs
        report = build(cfg)  # the same command
    assert report["kept"] == N_IMAGES and report["accounted"]
    assert report["download_lists"] == {"total": 1, "failed_in_an_earlier_run": 1, "recovered": 1, "given_up": 0}


def test_accept_failed_lists_publishes_their_rows_as_shard_failed(env):
    with silent_server() as port:
        cfg = make_config(env, port, "accept")
        cfg.run.shard_retries = 0
        cfg.run.accept_failed_lists = True
        report = build(cfg)
    assert report["rejected_by_reason"] == {"shard_failed": N_IMAGES} and report["accounted"]
    assert report["download_lists"]["given_up"] == 1


def test_cut_input_file_fails_the_build_with_its_path(env):
    lines = b"".join(b"caption number %d is long enough\thttp://e.com/%d.jpg\n" % (i, i) for i in range(150_000))
    data = gzip.compress(lines, compresslevel=1)
    (env / "cut.tsv.gz").write_bytes(data[: len(data) // 2])
    cfg = BuildConfig(sources=[f"cc3m:{env / 'cut.tsv.gz'}"], output=str(env / "cut"), captions_only=True)
    with pytest.raises(RuntimeError, match=r"unreadable file in .*cut\.tsv\.gz after \d+ rows"):
        build(cfg)
    assert not os.path.exists(os.path.join(cfg.output, "captions_manifest.json"))
