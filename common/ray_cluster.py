"""Connecting to Ray: a given cluster when there is one, otherwise a private local instance.

`ray.init()` with no address silently attaches to any cluster already running on the machine
(it reads /tmp/ray/ray_current_cluster). A local run, and every test, must not do that: it would
submit work to, and later shut down, somebody else's cluster. So without an explicit address
(argument or RAY_ADDRESS, which `ray job submit` sets for the driver) we ask for address="local".
"""

from __future__ import annotations

import contextlib
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
    if address:
        # An existing cluster: code and environment come from `ray job submit --working-dir .
        # --runtime-env-json ...` (or an installed package). A driver runtime_env here would
        # conflict with the job's own and Ray refuses to merge the two. The job's env_vars should
        # carry console_env() (scripts/demo.sh does): Ray Data's SplitCoordinator actors run no code of ours.
        ray.init(address=address, log_to_driver=True)
        quiet_ray_data()
        return False
    # Ray Train's preemption watcher (one actor per worker group) polls for node drains. A private local
    # instance is one machine that nothing drains, so the watcher has nothing to watch; it also prints an
    # ERROR line at every start (ray-project/ray#53727: it is a restartable actor whose constructor takes
    # the workers' handles). Ray Train passes this variable from the driver's environment to its
    # controller. A cluster keeps Ray's default; an explicit setting of the variable wins.
    os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")
    # The console settings travel with the instance: every worker (Ray Data's own actors included) starts
    # with them, so no process prints the per-epoch Ray Data lines that quiet mode is for.
    env_vars = {"NO_ALBUMENTATIONS_UPDATE": "1", **console_env(), **(env or {})}
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


def stop_ray() -> None:
    """ray.shutdown(), a second sooner for a local instance this process started.

    Ray stops its processes one by one, each with up to 1 s to exit, and the autoscaler monitor after the
    GCS: the monitor's SIGTERM handler then reports to the GCS that is gone and is killed when its second
    is up (measured: raylet 0.03 s, gcs 0.02 s, monitor 1.01 s). A local instance never autoscales, so its
    monitor is killed first. Connected to a cluster, this process started no monitor: plain shutdown.
    """
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    if node is not None and getattr(node, "head", False):
        with contextlib.suppress(Exception):  # a Ray without this internal: the plain shutdown below
            node.kill_monitor(check_alive=False)
    ray.shutdown()


VERBOSE_ENV = "DALLE_RAY_DATA_VERBOSE"  # "1": Ray Data's and Ray Train's own console lines, as Ray prints them
RAY_DATA_LEVEL_ENV = "RAY_DATA_LOG_LEVEL"  # read by Ray Data whenever a process (re)configures its logger
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
QUIET_LEVEL = "WARNING"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") == "1"


def console_env() -> dict[str, str]:
    """The environment that carries this process's console setting to every Ray process of a run: a job's
    runtime_env env_vars, or a local instance's. Quiet: Ray Data's `ray.data` logger at WARNING (its INFO
    lines, such as "Dataset ... execution finished" once per epoch and per worker, come from Ray Train
    workers and Ray Data's SplitCoordinator actors, so the driver's own logging settings do not reach
    them); an explicit RAY_DATA_LOG_LEVEL wins. Verbose: the flag itself, so Train workers see it too."""
    if verbose():
        return {VERBOSE_ENV: "1"}
    return {RAY_DATA_LEVEL_ENV: os.environ.get(RAY_DATA_LEVEL_ENV, QUIET_LEVEL)}


def train_log_level() -> str:
    """Ray Train's console level (RunConfig's LoggingConfig): quiet drops its INFO lines, among them two
    per checkpoint and worker ("Checkpoint successfully created", "Reporting training result"); the
    trainers print their own line per checkpoint. Its log files under the session dir keep every level."""
    return "INFO" if verbose() else QUIET_LEVEL


def quiet_ray_data() -> None:
    """Every stage prints its own progress; Ray Data's per-dataset "Starting execution" / "Execution
    plan" / "execution finished" lines (dozens per run: one per epoch and per split) and its progress bars
    would drown it. DALLE_RAY_DATA_VERBOSE=1 turns them back on. The DataContext travels with each dataset
    to the tasks and actors that execute it; the log level does not, so this process sets its own (Ray
    Data configured its logger when it was imported) and leaves RAY_DATA_LOG_LEVEL in its environment for
    the next time Ray Data reconfigures it (at every new dataset a worker executes)."""
    import ray.data

    loud = verbose()
    ctx = ray.data.DataContext.get_current()
    ctx.print_on_execution_start = loud
    ctx.enable_progress_bars = loud
    if not loud:
        level = os.environ.setdefault(RAY_DATA_LEVEL_ENV, QUIET_LEVEL)
        logging.getLogger("ray.data").setLevel(level)
        # The bars are off on purpose: Ray Data's one-time WARNING of how to turn them on ("Progress bars
        # disabled. To enable, set ...", once per process that runs a dataset) is spent here. Ray Data keys it
        # with log_once; under another key in a later Ray the line simply comes back.
        from ray.util.debug import log_once

        log_once("ray_data_progress_manager_disabled")
