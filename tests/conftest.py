"""Session plumbing shared by the test modules.

- `ray_cluster` / `shared_ray`: the one private local Ray instance of the session (never an outside
  cluster: RAY_ADDRESS is removed for the whole session), shut down at session end.
- `mlflow_store` / `mlflow_store_module`: an isolated sqlite MLflow store per test or per module.
- `shared_data`: ../shared/data beside the clone; skips the test when it is absent.

Nothing here imports Ray or MLflow until a test asks for them, so the fast suite does not pay for them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.data_paths import require_shared_data


# --- Ray -------------------------------------------------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def _no_outside_ray():
    """Without RAY_ADDRESS, common.ray_cluster.init_ray starts a private instance (address="local") instead of
    submitting test work to (and later shutting down) a cluster the suite did not start; subprocess drivers
    inherit the same environment."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        yield


class PrivateRay:
    """The session's private local Ray instance, started on first use with common.ray_cluster.init_ray.

    Modules that ask for the same settings share one instance. A module that needs other settings (more
    logical CPUs, or environment variables its workers must see from their start) gets a fresh instance:
    the running one is shut down first, so two in-process instances never coexist. `stop()` frees the
    machine for a module whose subprocess drivers start their own Ray.
    """

    def __init__(self) -> None:
        self.settings: tuple | None = None  # (num_cpus, env) of the instance this session started

    def start(self, num_cpus: int = 2, env: dict[str, str] | None = None) -> str:
        """Ensure the instance runs with these settings; returns its GCS address (for subprocess drivers)."""
        import ray

        from common.ray_cluster import init_ray

        wanted = (num_cpus, tuple(sorted((env or {}).items())))
        if ray.is_initialized():
            if self.settings is None:
                raise RuntimeError(
                    "Ray was initialised outside the ray_cluster fixture (a test or the code under "
                    "test left it running); the suite neither reuses nor stops an instance it did "
                    "not start"
                )
            if self.settings == wanted:
                return ray.get_runtime_context().gcs_address
            self.stop()
        assert "RAY_ADDRESS" not in os.environ, "RAY_ADDRESS would attach to an outside cluster"
        if not init_ray(num_cpus=num_cpus, env=env):
            raise RuntimeError("init_ray did not start a private local Ray instance")
        self.settings = wanted
        return ray.get_runtime_context().gcs_address

    def stop(self) -> None:
        """Shut down the instance this session started, if it runs."""
        if self.settings is None:
            return
        import ray

        self.settings = None
        if ray.is_initialized():
            ray.shutdown()


@pytest.fixture(scope="session")
def ray_cluster(_no_outside_ray):
    """The session's PrivateRay; whatever instance it started is shut down at session end."""
    instance = PrivateRay()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def shared_ray(ray_cluster) -> str:
    """The shared private Ray instance (2 CPUs, like the e2e configs ask for); its GCS address."""
    return ray_cluster.start(num_cpus=2)


@pytest.fixture(scope="module")
def no_shared_ray(ray_cluster) -> None:
    """No in-process Ray while the module runs: its subprocess drivers start (and kill) their own."""
    ray_cluster.stop()


# --- MLflow ----------------------------------------------------------------------------------------
def _use_store(mp: pytest.MonkeyPatch, directory: Path) -> str:
    """Point MLflow at a sqlite store in `directory`: the environment (for drivers, Ray workers, subprocesses)
    and, when MLflow is already imported, its process-wide URI (which tracking.ensure_experiment sets and which
    would otherwise keep pointing at a previous test's store). The store itself is created by the code under
    test (tracking.ensure_experiment, in the driver, before any worker writes)."""
    uri = f"sqlite:///{directory}/mlflow.db"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(uri)
    return uri


def _forget_store() -> None:
    """Drop MLflow's process-wide URI (and any run a failed test left open) before the environment is restored."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    if mlflow.active_run() is not None:
        mlflow.end_run("KILLED")
    mlflow.set_tracking_uri(None)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """An isolated MLflow store for one test: MLFLOW_TRACKING_URI = sqlite in tmp_path; returns the URI."""
    yield _use_store(monkeypatch, tmp_path)
    _forget_store()


@pytest.fixture(scope="module")
def mlflow_store_module(tmp_path_factory) -> str:
    """An isolated MLflow store shared by the tests of one module (for module-scoped fixtures); returns the URI."""
    with pytest.MonkeyPatch.context() as mp:
        yield _use_store(mp, tmp_path_factory.mktemp("mlflow"))
        _forget_store()


# --- shared data -----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the clone (tests/data_paths.py); skips the test when it is absent."""
    return require_shared_data()


# --- torch.distributed ------------------------------------------------------------------------------
@pytest.fixture
def gloo_group(monkeypatch):
    """A one-process gloo group on a free port (what DDP and FSDP2 need on a CPU), destroyed after the
    test; torch runs on one thread, as a Ray Train worker of the demo does."""
    import socket

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
