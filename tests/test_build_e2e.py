"""build_dataset end to end: real Ray, real img2dataset downloads from a real local HTTP server,
real fastText, a real MLflow sqlite store. Nothing is mocked.

One private Ray instance (conftest.py's ray_cluster, started with this module's S3 endpoint) serves the
module; the SIGKILL test runs the entry script as a separate driver process attached to that same instance,
and kills it.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import tomllib

import pyarrow.parquet as pq
import pytest
from PIL import Image

from common import schemas
from common.config import from_dict
from pipeline.build import ConfigMismatch, build
from pipeline.config import BuildConfig
from pipeline.demo.server import serve
from pipeline.demo.source import write_demo_source

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ENDPOINT_URL": "",
}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory, mlflow_store_module, ray_cluster):
    from moto.server import ThreadedMotoServer

    tmp = tmp_path_factory.mktemp("e2e")
    # A real S3 API on loopback (moto), started before Ray so that workers inherit its endpoint.
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    host, port = s3.get_host_and_port()
    s3_env = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in s3_env.items():
                mp.setenv(key, value)
            import boto3

            boto3.client("s3").create_bucket(Bucket="datasets")
            # The session's private Ray, but an instance of this module's own: its workers must see this
            # module's S3 endpoint from their start (and the SIGKILL test's driver attaches to it by address).
            address = ray_cluster.start(num_cpus=2, env=s3_env)
            try:
                www = tmp / "src" / "www"
                www.mkdir(parents=True)
                with serve(str(www)) as base_url:
                    src = write_demo_source(str(tmp / "src"), base_url, n_good=24, seed=1)
                    yield {"tmp": tmp, "src": src, "address": address}
            finally:
                ray_cluster.stop()  # its workers point at an S3 endpoint that stops with this module
    finally:
        s3.stop()


def make_config(env, output: str, **run) -> BuildConfig:
    with open(os.path.join(ROOT, "configs", "demo.toml"), "rb") as fh:
        data = tomllib.load(fh)
    data["sources"] = env["src"].sources
    data["output"] = output
    for dotted, value in env["src"].config_overrides.items():
        section, field = dotted.split(".")
        data.setdefault(section, {})[field] = value
    data["run"].update(run)
    return from_dict(BuildConfig, data)


def kept_rows(root: str) -> dict[str, str]:
    """{key: sha256} over every dataset shard; asserts keys are unique."""
    out: dict[str, str] = {}
    for path in sorted(os.listdir(os.path.join(root, "shards"))):
        table = pq.read_table(os.path.join(root, "shards", path), columns=["key", "sha256"])
        for key, sha in zip(table.column("key").to_pylist(), table.column("sha256").to_pylist(), strict=True):
            assert key not in out, f"duplicate key {key}"
            out[key] = sha
    return out


def rejected_rows(root: str) -> dict[str, str]:
    """{key + url: reason} over every rejected file."""
    out: dict[str, str] = {}
    for path in sorted(os.listdir(os.path.join(root, "rejected"))):
        table = pq.read_table(os.path.join(root, "rejected", path), columns=["key", "url", "reason"])
        for key, url, reason in zip(*(table.column(c).to_pylist() for c in ("key", "url", "reason")), strict=True):
            out[f"{key} {url}"] = reason
    return out


@pytest.fixture(scope="module")
def full_build(env):
    output = str(env["tmp"] / "full")
    report = build(make_config(env, output))
    return output, report


def test_exact_counts_per_reason(env, full_build):
    output, report = full_build
    got = dict(report["rejected_by_reason"], kept=report["kept"])
    assert got == env["src"].expected_counts
    assert report["accounted"] and report["input"] == len(env["src"].expected)
    # every row ended where the demo source says it must
    by_url = env["src"].expected_by_url()
    outcomes: dict[str, list[str]] = {}
    for key_url, reason in rejected_rows(output).items():
        outcomes.setdefault(key_url.split(" ", 1)[1], []).append(reason)
    for path in os.listdir(os.path.join(output, "shards")):
        for url in pq.read_table(os.path.join(output, "shards", path), columns=["url"]).column("url").to_pylist():
            outcomes.setdefault(url, []).append("kept")
    # which copy of a duplicate image survives is decided by key (smallest wins), not by URL order
    groups: dict[str, list[str]] = {}
    for row in env["src"].expected:
        if row.get("dup_group") and row["expected"] in ("kept", "duplicate_image"):
            groups.setdefault(row["dup_group"], []).append(row["url"])
    in_group = {u for urls in groups.values() for u in urls}
    assert {u: sorted(v) for u, v in outcomes.items() if u not in in_group} == {
        u: sorted(v) for u, v in by_url.items() if u not in in_group
    }
    for urls in groups.values():
        got = sorted(r for u in urls for r in outcomes[u])
        want = sorted(r for u in urls for r in by_url[u])
        assert got == want, urls


def test_shards_follow_the_contract(full_build):
    output, report = full_build
    paths = sorted(os.listdir(os.path.join(output, "shards")))
    assert paths and all(not p.startswith(".") for p in paths)
    n = 0
    for path in paths:
        table = pq.read_table(os.path.join(output, "shards", path))
        assert table.schema.remove_metadata().equals(schemas.DATASET_SHARD)
        for row in table.to_pylist():
            img = Image.open(io.BytesIO(row["image"]))
            assert img.format == "JPEG" and (img.width, img.height) == (row["width"], row["height"])
            # short side brought to 256, never upscaled, aspect ratio kept
            assert min(img.size) == min(256, row["original_width"], row["original_height"])
            assert abs(img.width / img.height - row["original_width"] / row["original_height"]) < 0.02
            n += 1
    assert n == report["kept"]
    import json

    manifest = json.load(open(os.path.join(output, "manifest.json")))
    assert sum(s["rows"] for s in manifest["shards"]) == n
    assert manifest["counts"]["rejected_by_reason"] == report["rejected_by_reason"]
    assert {"ray", "img2dataset", "pyarrow"} <= set(manifest["versions"])


def test_report_from_task_results_matches_the_files_on_disk(full_build):
    """The report is merged from what tasks returned; an audit pass over every output file agrees."""
    from pipeline.layout import Layout
    from pipeline.report import build_report

    output, report = full_build
    audit = build_report(Layout(output), {s: v["input"] for s, v in report["by_source"].items()}, "shards", 5)
    for field in ("input", "kept", "rejected", "rejected_by_reason", "by_source", "histograms"):
        assert report[field] == audit[field], field
    assert {r: sorted(v) for r, v in report["examples"].items()} == {r: sorted(v) for r, v in audit["examples"].items()}


def test_mlflow_run_shows_counts_per_reason(full_build):
    import mlflow

    output, report = full_build
    runs = mlflow.search_runs(
        experiment_names=["build_dataset"], output_format="list", filter_string=f"tags.output = '{output}'"
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    metrics = runs[0].data.metrics
    for reason, n in report["rejected_by_reason"].items():
        assert metrics[f"rejected.{reason}"] == n
    assert metrics["kept"] == report["kept"] and metrics["images_per_s"] > 0
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id, "report")}
    assert {"report/filter_report.json", "report/examples.md", "report/aspect_ratio.png"} <= artifacts
    assert runs[0].data.params["captions.min_words"] == "3"
    # Lineage: every --source and the dataset written, as MLflow dataset inputs with their roles.
    from common.tracking import dataset_digest

    inputs = mlflow.get_run(runs[0].info.run_id).inputs.dataset_inputs
    roles = [({t.key: t.value for t in i.tags}["mlflow.data.context"], i.dataset.digest) for i in inputs]
    assert sorted(role for role, _ in roles) == ["output"] + ["source"] * 3
    assert ("output", dataset_digest(output)) in roles


def test_rerun_of_finished_build_is_a_noop(env, full_build):
    output, report = full_build
    before = {
        os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, files in os.walk(output) for f in files
    }
    again = build(make_config(env, output))
    after = {
        os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, files in os.walk(output) for f in files
    }
    assert after == before and again["kept"] == report["kept"]


def test_changed_config_is_refused(env, full_build):
    output, _ = full_build
    cfg = make_config(env, output)
    cfg.captions.min_words = 5
    with pytest.raises(ConfigMismatch, match="captions.min_words"):
        build(cfg)


def test_captions_only(env, full_build):
    """--captions-only rejects exactly the rows the full build rejected before downloading."""
    output = str(env["tmp"] / "captions_only")
    cfg = make_config(env, output)
    cfg.captions_only = True
    report = build(cfg)
    assert report["accounted"] and report["input"] == len(env["src"].expected)
    assert os.path.exists(os.path.join(output, "captions_manifest.json"))
    assert not os.path.exists(os.path.join(output, "shards"))
    full_output, _ = full_build
    full_rejected = rejected_rows(full_output)
    only_rejected = rejected_rows(output)
    assert only_rejected and all(full_rejected[k] == reason for k, reason in only_rejected.items())
    import pyarrow as pa

    candidates = pa.concat_tables(
        pq.read_table(os.path.join(output, "candidates", p))
        for p in sorted(os.listdir(os.path.join(output, "candidates")))
    )
    candidate_keys = {
        f"{k} {u}"
        for k, u in zip(candidates.column("key").to_pylist(), candidates.column("url").to_pylist(), strict=True)
    }
    assert len(candidate_keys) == candidates.num_rows == report["kept"]
    downloaded_then_rejected = {k for k, r in full_rejected.items() if k not in only_rejected}
    assert downloaded_then_rejected and downloaded_then_rejected <= candidate_keys
    assert {k.split(" ")[0] for k in candidate_keys - downloaded_then_rejected} == set(kept_rows(full_output))


def test_resume_after_sigkill_matches_uninterrupted(env, full_build):
    """Kill the driver mid-download, rerun the same command: same kept set, no duplicates."""
    output = str(env["tmp"] / "killed")
    cmd = [
        sys.executable,
        os.path.join(ROOT, "orchestration", "build_dataset.py"),
        "--config",
        os.path.join(ROOT, "configs", "demo.toml"),
        "--output",
        output,
        "--run.ray_address",
        env["address"],
        "--run.shard_size",
        "6",
        "--run.max_in_flight",
        "1",
    ]
    for spec in env["src"].sources:
        cmd += ["--source", spec]
    for dotted, value in env["src"].config_overrides.items():
        cmd += [f"--{dotted}", str(value).lower() if isinstance(value, bool) else str(value)]
    staged = os.path.join(output, "_work", "staged")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.isdir(staged) and len(os.listdir(staged)) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the build finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(output, "manifest.json"))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    full_output, _ = full_build
    assert kept_rows(output) == kept_rows(full_output)
    assert rejected_rows(output) == rejected_rows(full_output)


def test_s3_output_root_matches_local(env, full_build):
    """The same build written to s3:// (a real S3 API on loopback) holds exactly the same rows."""
    from common import storage

    output = "s3://datasets/demo"
    report = build(make_config(env, output))
    full_output, full_report = full_build
    assert report["rejected_by_reason"] == full_report["rejected_by_reason"]
    assert storage.exists(f"{output}/manifest.json")
    remote = {}
    for path in storage.listdir(f"{output}/shards", ".parquet"):
        table = storage.read_parquet(path, columns=["key", "sha256"])
        remote.update(zip(table.column("key").to_pylist(), table.column("sha256").to_pylist(), strict=True))
    assert remote == kept_rows(full_output)
    assert build(make_config(env, output))["kept"] == report["kept"]  # rerun: no-op on S3 too
