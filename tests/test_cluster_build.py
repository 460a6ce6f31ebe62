"""build_dataset on a 3-node Ray cluster, submitted with `ray job submit`, writing to S3 (issue 10).

Real everything: three Ray nodes on this machine (`ray start --block` three times with distinct
ports, one CPU each, token auth), a real S3 API on loopback (moto's server mode) holding the
sources AND the output root, real downloads from the local demo server. Nothing is written to a
node-local disk that another node reads: inputs, every intermediate file and the dataset live in
S3. The kept and rejected sets must equal those of a single-node build of the same input, and the
download lists must have run on more than one node.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time

import pytest

from common.config import from_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def outcomes(output: str) -> tuple[set[str], dict[str, str]]:
    """(kept keys, {key url: reason}) of a dataset root, local or s3://."""
    from common import storage

    kept: set[str] = set()
    for path in storage.listdir(storage.join(output, "shards"), ".parquet"):
        kept |= set(storage.read_parquet(path, columns=["key"]).column("key").to_pylist())
    rejected = {}
    for path in storage.listdir(storage.join(output, "rejected"), ".parquet"):
        t = storage.read_parquet(path, columns=["key", "url", "reason"])
        for key, url, reason in zip(*(t.column(c).to_pylist() for c in ("key", "url", "reason")), strict=True):
            rejected[f"{key} {url}"] = reason
    return kept, rejected


@pytest.fixture
def s3(tmp_path):
    import boto3
    from moto.server import ThreadedMotoServer

    saved = dict(os.environ)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket="cluster")
    yield env
    server.stop()
    os.environ.clear()
    os.environ.update(saved)


def test_three_node_build_to_s3_matches_a_single_node_build(tmp_path, s3):
    import tomllib

    import ray

    from common import storage
    from pipeline.build import build
    from pipeline.config import BuildConfig
    from pipeline.demo.server import serve
    from pipeline.demo.source import write_demo_source

    mlflow_uri = f"sqlite:///{tmp_path}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_uri
    import mlflow

    mlflow.MlflowClient().search_experiments()  # create the store once, before any writer
    www = tmp_path / "src" / "www"
    www.mkdir(parents=True)
    with serve(str(www)) as base_url:
        src = write_demo_source(str(tmp_path / "src"), base_url, n_good=10, seed=3)
        # the sources live in S3 too: a caption task may run on any node
        sources = []
        for spec in src.sources:
            fmt, path = spec.split(":", 1)
            remote = f"s3://cluster/src/{os.path.basename(path)}"
            storage.write_bytes_atomic(remote, open(path, "rb").read())
            sources.append(f"{fmt}:{remote}")
        overrides = []
        for dotted, value in src.config_overrides.items():
            overrides += [f"--{dotted}", str(value).lower() if isinstance(value, bool) else str(value)]
        run_args = ["--run.shard_size", "4", "--run.dedup_partitions", "8", "--run.dedup_rows_per_task", "20"]

        # three nodes: `ray start --block` per node, every port free-chosen, token auth (as scripts/demo.sh)
        token = tmp_path / "ray_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        # no 30 s drain per node at the end (Ray 2.60's SIGTERM default, for Serve traffic: see scripts/demo.sh)
        ray_env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                   "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # fmt: skip
        ray_cli = [os.path.join(os.path.dirname(sys.executable), "ray")]
        gcs, dash = free_port(), free_port()
        nodes = []
        count = f"import ray; ray.init(address='127.0.0.1:{gcs}'); print(sum(n['Alive'] for n in ray.nodes()))"

        def alive() -> int:
            out = subprocess.run([sys.executable, "-c", count], env=ray_env, capture_output=True, text=True).stdout
            return int(out.split()[-1]) if out.split() else 0

        try:
            for i in range(3):  # one at a time: nodes starting together on one machine stall each other
                ports = [
                    "--dashboard-agent-listen-port",
                    str(free_port()),
                    "--dashboard-agent-grpc-port",
                    str(free_port()),
                    "--metrics-export-port",
                    str(free_port()),
                    "--runtime-env-agent-port",
                    str(free_port()),
                ]
                head = ["--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash)]
                where = head if i == 0 else ["--address", f"127.0.0.1:{gcs}"]
                nodes.append(subprocess.Popen(
                    [*ray_cli, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                     "--disable-usage-stats", *where, *ports],
                    env=ray_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
                deadline = time.monotonic() + 180
                while alive() != i + 1:
                    assert time.monotonic() < deadline, f"Ray node {i} never joined"
                    time.sleep(2)
            # The code comes from PYTHONPATH, not --working-dir: three nodes on one machine share one Ray
            # session directory, so a working_dir package that one node's agent garbage-collects would
            # vanish under the driver of another (a single-machine artefact; one node per machine is fine).
            job_env = {"env_vars": {**s3, "MLFLOW_TRACKING_URI": mlflow_uri, "NO_ALBUMENTATIONS_UPDATE": "1",
                                    "PYTHONPATH": ROOT}}  # fmt: skip
            submit = [*ray_cli, "job", "submit", "--address", f"http://127.0.0.1:{dash}"]
            deadline = time.monotonic() + 180  # the job agent needs a moment after the head is up
            while subprocess.run([*submit, "--no-wait", "--", "true"], env=ray_env, capture_output=True).returncode:
                assert time.monotonic() < deadline, "the Ray job agent never came up"
                time.sleep(2)
            job = subprocess.run(
                [*submit, "--runtime-env-json", json.dumps(job_env), "--",
                 sys.executable, f"{ROOT}/orchestration/build_dataset.py", "--config", f"{ROOT}/configs/demo.toml",
                 "--output", "s3://cluster/out", *sum((["--source", s] for s in sources), []), *overrides, *run_args],
                env=ray_env, capture_output=True, text=True, timeout=600, cwd=ROOT)  # fmt: skip
            assert job.returncode == 0 and "succeeded" in job.stdout, job.stdout[-3000:] + job.stderr[-3000:]
        finally:
            for proc in reversed(nodes):  # stops exactly the nodes this test started
                proc.terminate()
            for proc in nodes:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()

        assert storage.exists("s3://cluster/out/manifest.json")
        nodes = {storage.read_json(p)["node"] for p in storage.listdir("s3://cluster/out/_work/staged", ".json")}
        assert len(nodes) >= 2, nodes  # the download lists really ran on several nodes

        # the same input on one node, local output
        with open(os.path.join(ROOT, "configs", "demo.toml"), "rb") as fh:
            data = tomllib.load(fh)
        data["sources"], data["output"] = src.sources, str(tmp_path / "single")
        for dotted, value in src.config_overrides.items():
            section, field = dotted.split(".")
            data.setdefault(section, {})[field] = value
        data["run"].update(shard_size=4, dedup_partitions=8, dedup_rows_per_task=20)
        build(from_dict(BuildConfig, data))
        ray.shutdown()

    kept, rejected = outcomes("s3://cluster/out")
    single_kept, single_rejected = outcomes(str(tmp_path / "single"))
    assert kept == single_kept and len(kept) > 0
    assert {k.split(" ")[0]: v for k, v in rejected.items()} == {k.split(" ")[0]: v for k, v in single_rejected.items()}
