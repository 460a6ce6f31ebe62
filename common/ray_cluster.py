"""Connecting to Ray: a given cluster when there is one, otherwise a private local instance.

`ray.init()` with no address silently attaches to any cluster already running on the machine
(it reads /tmp/ray/ray_current_cluster). A local run, and every test, must not do that: it would
submit work to, and later shut down, somebody else's cluster. So without an explicit address
(argument or RAY_ADDRESS, which `ray job submit` sets for the driver) we ask for address="local".
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)


def init_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    env: dict[str, str] | None = None,
    temp_dir: str | None = None,
    start_attempts: int = 1,
) -> bool:
    """Initialise Ray if needed. Returns True when this call started (and so owns) a local instance.

    A local instance keeps its sockets and logs under `temp_dir` when given (Ray's default is the
    machine-wide /tmp/ray). Ray waits a fixed 30 s for its raylet to register, which a heavily loaded
    machine can miss: `start_attempts` > 1 cleans up a start that timed out and tries again.
    """
    import ray

    if ray.is_initialized():
        quiet_ray_data()
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Workers of a local instance must import this project even when it is not pip-installed.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env_vars = {"NO_ALBUMENTATIONS_UPDATE": "1", **(env or {})}
    if address:
        # An existing cluster: code and environment come from `ray job submit --working-dir .
        # --runtime-env-json ...` (or an installed package). A driver runtime_env here would
        # conflict with the job's own and Ray refuses to merge the two.
        ray.init(address=address, log_to_driver=True)
        quiet_ray_data()
        return False
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    os.environ["PYTHONPATH"] = pythonpath
    for attempt in range(1, max(1, start_attempts) + 1):
        try:
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                runtime_env={"env_vars": {**env_vars, "PYTHONPATH": pythonpath}},
                **({"_temp_dir": temp_dir} if temp_dir else {}),
            )
            break
        except Exception as exc:  # Ray raises a bare Exception when its raylet misses the start deadline
            ray.shutdown()  # stops whatever this attempt started
            if attempt >= start_attempts:
                raise
            log.warning("Ray start-up failed (%s); retrying (attempt %d of %d)", exc, attempt + 1, start_attempts)
            time.sleep(5 * attempt)
    quiet_ray_data()
    return True


VERBOSE_ENV = "DALLE_RAY_DATA_VERBOSE"


def quiet_ray_data() -> None:
    """Every stage prints its own progress; Ray Data's per-dataset "Starting execution" / "Execution
    plan" lines (dozens per run: one per epoch and per split) and its progress bars would drown it.
    DALLE_RAY_DATA_VERBOSE=1 turns them back on. The DataContext travels with each dataset to the
    tasks and actors that execute it, so setting it in the driver is enough."""
    import ray.data

    verbose = os.environ.get(VERBOSE_ENV, "") == "1"
    ctx = ray.data.DataContext.get_current()
    ctx.print_on_execution_start = verbose
    ctx.enable_progress_bars = verbose
