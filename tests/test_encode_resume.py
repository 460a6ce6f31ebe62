"""encode_tokens killed with SIGKILL mid-way, then rerun: same tokens, every row exactly once."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from common import storage
from tests.test_encode_tokens import expected_tokens, tiny_dvae
from tokenize_images.synthetic import write_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARDS = 8
# The two drivers below each start (and are killed with) their own local Ray; the session's in-process
# instance is shut down for this module so that it neither competes with them for the 2 cores nor shares
# a machine with them.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_shared_ray")]


def run_cli(dataset, ckpt, out, env):
    script = os.path.join(ROOT, "orchestration", "encode_tokens.py")
    settings = {
        "run.batch_size": 4,
        "run.read_batch_rows": 4,
        "run.num_cpus": 2,
        "run.mlflow": "false",
        "tokenizer.vocab_size": 300,
        "tokenizer.min_frequency": 1,
        "tokenizer.train_if_missing": "true",
    }
    cmd = [sys.executable, script, "--dataset", dataset, "--dvae", ckpt, "--output", out]
    cmd += [arg for key, value in settings.items() for arg in (f"--{key}", str(value))]
    # Own session: SIGKILL goes to the driver and the local Ray processes it started, nothing else.
    return subprocess.Popen(
        cmd, env=env, cwd=str(ROOT), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (the driver's own: the driver and the local Ray it started).
    killpg is not enough: Ray puts each worker process in a process group of its own, and a worker that
    outlives the raylet for a moment can still finish a shard after the kill."""
    os.killpg(sid, signal.SIGKILL)  # the driver, GCS and raylet first: no new worker starts after this
    deadline = time.time() + 30
    while time.time() < deadline:
        left = []
        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:  # exited meanwhile
                continue
            if int(fields[3]) == sid and fields[0] != "Z":  # fields[3]: the session id; Z: a zombie
                left.append(pid)
                os.kill(pid, signal.SIGKILL)
        if not left:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes of session {sid} survive SIGKILL: {left}")


def test_resume_after_sigkill(tmp_path, mlflow_store):
    dataset, out, ckpt = str(tmp_path / "ds"), str(tmp_path / "tokens"), str(tmp_path / "dvae.pt")
    write_dataset(dataset, shards=SHARDS, rows_per_shard=12, size_range=(64, 80), corrupt_rows=2)
    # Wide enough that encoding takes a few seconds, so the kill lands mid-way.
    tiny_dvae(ckpt, n_hid=64, n_blk_per_group=2, vocab_size=128, image_size=64)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # mlflow_store's URI included
    shard_dir = os.path.join(out, "shards")

    proc = run_cli(dataset, ckpt, out, env)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(shard_dir) and [n for n in os.listdir(shard_dir) if not n.startswith(".")]:
            break
        time.sleep(0.05)
    kill_session(proc.pid)
    proc.wait()
    done_before = {
        n: os.path.getmtime(os.path.join(shard_dir, n)) for n in os.listdir(shard_dir) if not n.startswith(".")
    }
    assert 1 <= len(done_before) < SHARDS, f"kill did not land mid-way: {len(done_before)} shards done"
    assert not os.path.exists(os.path.join(out, "manifest.json"))

    proc = run_cli(dataset, ckpt, out, env)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-3000:]
    assert f"{SHARDS - len(done_before)} shards written, {len(done_before)} already done" in log

    names = sorted(n for n in os.listdir(shard_dir))
    assert names == [f"{i:05d}.parquet" for i in range(SHARDS)]  # no temp files, no duplicates
    for n, mtime in done_before.items():  # finished shards were skipped
        assert os.path.getmtime(os.path.join(shard_dir, n)) == mtime
    keys = []
    got = {}
    for n in names:
        t = storage.read_parquet(os.path.join(shard_dir, n))
        keys += t.column("key").to_pylist()
        got.update(zip(t.column("key").to_pylist(), t.column("image_tokens").to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == SHARDS * 12 - 2
    expected = expected_tokens(dataset, ckpt)
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        np.testing.assert_array_equal(np.array(got[k], np.uint16), v)
    manifest = storage.read_json(os.path.join(out, "manifest.json"))
    assert manifest["counts"] == {
        "input_rows": SHARDS * 12,
        "encoded": SHARDS * 12 - 2,
        "rejected": {"decode_error": 2},
    }
