"""The quiet console: which settings quiet mode hands to Ray's processes, and that a Ray worker running no code of
this project (as Ray Data's SplitCoordinator actors do) leaves out Ray Data's per-dataset "execution finished"
line when quiet and prints it under DALLE_RAY_DATA_VERBOSE=1."""

from __future__ import annotations

import os

import pytest

from common.ray_cluster import PREEMPTION_WATCHER_ENV, RAY_DATA_LEVEL_ENV, VERBOSE_ENV, console_env, train_log_level

FINISHED = "execution finished"  # streaming_executor.py logs "Dataset <id> execution finished in <s> seconds" at INFO
HINT = "Progress bars disabled"  # ray.data._internal.progress logs it at WARNING, once per process


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    monkeypatch.delenv(RAY_DATA_LEVEL_ENV, raising=False)


def test_quiet_mode_hands_ray_data_a_warning_level_and_ray_train_too(quiet):
    assert console_env() == {RAY_DATA_LEVEL_ENV: "WARNING"}
    assert train_log_level() == "WARNING"


def test_an_explicit_ray_data_level_wins(quiet, monkeypatch):
    monkeypatch.setenv(RAY_DATA_LEVEL_ENV, "DEBUG")
    assert console_env() == {RAY_DATA_LEVEL_ENV: "DEBUG"}


def test_the_verbose_flag_travels_instead_of_a_level(quiet, monkeypatch):
    monkeypatch.setenv(VERBOSE_ENV, "1")
    assert console_env() == {VERBOSE_ENV: "1"}  # Train workers read the flag in their own quiet_ray_data()
    assert train_log_level() == "INFO"


def ray_data_console_of_a_plain_worker(setup: str = "") -> str:
    """What Ray Data writes to the console of a Ray actor that runs one small dataset: the actor is started by
    Ray with the instance's environment and runs none of this project's console code, unless `setup` names some:
    "quiet" calls quiet_ray_data() first, "bars_off" turns the progress bars off by hand."""
    import ray

    @ray.remote(num_cpus=0)
    class Plain:
        def run(self) -> str:
            import contextlib
            import io

            import ray.data

            if setup == "quiet":
                from common.ray_cluster import quiet_ray_data

                quiet_ray_data()
            elif setup == "bars_off":
                ray.data.DataContext.get_current().enable_progress_bars = False
            err = io.StringIO()
            # Ray's console handler writes to sys.stderr at emit time. Iterated as a Train worker iterates its
            # shard: the iterator's end shuts the executor down, and logs the line, in this thread (count()
            # does not log it here).
            with contextlib.redirect_stderr(err):
                batches = ray.data.range(8, override_num_blocks=2).iter_batches(batch_size=4)
                assert sum(len(b["id"]) for b in batches) == 8
            return err.getvalue()

    actor = Plain.remote()
    try:
        return ray.get(actor.run.remote(), timeout=300)
    finally:
        ray.kill(actor)


@pytest.mark.slow
def test_ray_data_workers_are_quiet_by_default_and_verbose_on_the_flag(ray_cluster, monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    monkeypatch.delenv(RAY_DATA_LEVEL_ENV, raising=False)  # only init_ray's runtime env may carry it
    monkeypatch.delenv(PREEMPTION_WATCHER_ENV, raising=False)
    try:
        # A marker in the env: a fresh instance, never one another module started with other settings.
        ray_cluster.start(num_cpus=2, env={"DALLE_TEST_CONSOLE": "quiet"})
        quiet_console = ray_data_console_of_a_plain_worker()
        ours, by_hand = ray_data_console_of_a_plain_worker("quiet"), ray_data_console_of_a_plain_worker("bars_off")
        assert os.environ.get(PREEMPTION_WATCHER_ENV) == "0"  # set for the local instance (Ray Train reads it)

        monkeypatch.setenv(VERBOSE_ENV, "1")
        monkeypatch.delenv(RAY_DATA_LEVEL_ENV, raising=False)  # the quiet driver left it for its own Ray Data
        ray_cluster.start(num_cpus=2, env={"DALLE_TEST_CONSOLE": "verbose"})
        verbose_console = ray_data_console_of_a_plain_worker()
    finally:
        ray_cluster.stop()  # its settings are this test's: no other module may reuse the instance
    assert FINISHED not in quiet_console, quiet_console
    # A process that turns the bars off itself gets Ray Data's hint of how to turn them on; quiet_ray_data() spends it.
    assert HINT in by_hand, by_hand
    assert HINT not in ours and FINISHED not in ours, ours
    assert FINISHED in verbose_console, verbose_console  # the same worker code does print it: the check can fail
