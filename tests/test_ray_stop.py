"""stop_ray: every process of a local instance ends, the autoscaler monitor killed first (no 1 s wait)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

SCRIPT = """
import json, sys
from common.ray_cluster import init_ray, stop_ray
import ray
assert init_ray(num_cpus=1, temp_dir=sys.argv[1])
node = ray._private.worker._global_node
pids = {kind: [p.process.pid for p in infos] for kind, infos in node.all_processes.items()}
kills = []
real_kill = type(node)._kill_process_impl
def recording(self, process_type, allow_graceful=False, **kwargs):
    kills.append([process_type, allow_graceful])
    return real_kill(self, process_type, allow_graceful=allow_graceful, **kwargs)
type(node)._kill_process_impl = recording
ray.get(ray.remote(lambda: 1).remote())
stop_ray()
print(json.dumps({"pids": pids, "kills": kills, "initialized": ray.is_initialized()}))
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_stop_ray_ends_every_process_it_started():
    temp_dir = tempfile.mkdtemp(prefix="ray-stop-", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, temp_dir], cwd=root, env=env, capture_output=True, text=True)
    shutil.rmtree(temp_dir, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["initialized"] is False
    assert "monitor" in result["pids"] and "raylet" in result["pids"] and "gcs_server" in result["pids"]
    leftover = {kind: pid for kind, pids in result["pids"].items() for pid in pids if alive(pid)}
    assert not leftover, leftover
    # The monitor goes first, killed outright: Ray's own order stops it after the GCS, with a SIGTERM whose
    # handler then waits on the gone GCS for the full second Ray allows.
    assert result["kills"][0] == ["monitor", False], result["kills"]
