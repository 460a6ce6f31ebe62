"""Driver side: one MLflow run per stable run name, then TorchTrainer.fit().

The MLflow run lifecycle lives here, in the driver, because only the driver outlives worker
restarts: workers are killed and recreated by Ray Train, the driver sees the whole fit().

    created (or reopened: status set back to RUNNING)  ->  fit()  ->  FINISHED | FAILED

Rerunning the same command finds the run by name (common.tracking.open_run) and reopens it, so a
resumed training appends to the same metric history and never leaves a second RUNNING run behind.
A driver killed with SIGKILL cannot mark its run; the next rerun reopens and then closes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from common import storage
from common.ray_cluster import init_ray, train_log_level
from common.tracking import log_dataset, open_run, tracking_uri
from harness.config import HarnessConfig

HARNESS_KEY = "_harness"  # key of train_loop_config that carries the harness settings to workers


@dataclass
class LaunchResult:
    run_id: str
    checkpoint_path: str | None  # the final (latest) checkpoint, None if none was reported
    metrics: dict[str, Any]  # last metrics reported with a checkpoint
    resumed: bool  # True when an earlier MLflow run with this name was reopened


def resolve_storage(path: str) -> str:
    return path if storage.is_remote(path) else os.path.abspath(path or "ray_results")


def use_gpu(setting: str) -> bool:
    """'auto' asks the Ray cluster (the driver may sit on a CPU-only head node)."""
    import ray

    if setting.lower() in ("true", "1", "yes"):
        return True
    if setting.lower() in ("false", "0", "no"):
        return False
    if setting.lower() != "auto":  # a typo must not quietly mean "auto"
        raise ValueError(f"unknown use_gpu {setting!r}; allowed: 'auto', 'true', 'false'")
    return ray.cluster_resources().get("GPU", 0) > 0


def default_dataset_config() -> Any:
    """Ray Train's default DataConfig without its deprecation warning. Ray 2.60's
    DataConfig.default_ingest_options() (used for every dataset that has no options of its own) passes
    DataContext's exclude_resources to ExecutionOptions(), which warns that exclude_resources is
    deprecated. These are the same options minus that field (zero unless someone set it)."""
    import ray.train
    from ray.data import DataContext, ExecutionOptions

    current = DataContext.get_current().execution_options
    return ray.train.DataConfig(
        execution_options=ExecutionOptions(
            resource_limits=current.resource_limits,
            preserve_order=current.preserve_order,
            verbose_progress=current.verbose_progress,
        )
    )


def launch(
    train_fn: Callable[[dict], None],
    train_loop_config: dict[str, Any],
    run: HarnessConfig,
    *,
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    datasets: dict[str, Any] | None = None,
    dataset_config: Any = None,
    init: Callable[[], None] | None = None,
    inputs: list[tuple[str, str, str]] = (),
) -> LaunchResult:
    """Run `train_fn(config)` on `run.num_workers` Ray Train workers, tracked in one MLflow run.

    train_fn reads its own settings from `config` and the harness settings through
    `harness.worker_context(config)`. `datasets` (Ray Data) are handed to TorchTrainer;
    `init` runs after Ray is up (e.g. to build datasets lazily) and may be None. `inputs` are
    (uri, context, digest) of the data the run reads, logged as MLflow dataset inputs (lineage).
    """
    import ray.train
    from mlflow import MlflowClient
    from ray.train.torch import TorchConfig, TorchTrainer

    if not run.name:
        raise ValueError("run.name must be set: it is the stable name that makes reruns resume")
    init_ray(run.ray_address or None, num_cpus=run.num_cpus or None)
    if init is not None:
        init()
    gpu = use_gpu(run.use_gpu)
    storage_path = resolve_storage(run.storage_path)
    run_tags = {**(tags or {}), "storage_path": storage_path}
    _, run_id, resumed = open_run(run.experiment, run.name, params or {}, run_tags)
    client = MlflowClient(tracking_uri())
    for uri, context, digest in inputs:
        log_dataset(run_id, uri, context, digest)

    config = dict(train_loop_config)
    config[HARNESS_KEY] = {
        "run_id": run_id,
        "tracking_uri": tracking_uri(),
        "log_every": run.log_every,
        "parallel": run.parallel,
        "use_gpu": gpu,
        "cpu_threads": run.cpu_threads(),
    }
    try:  # from here on the run is RUNNING: any failure, even in the constructor, must end it FAILED
        trainer = TorchTrainer(
            train_fn,
            train_loop_config=config,
            torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
            scaling_config=ray.train.ScalingConfig(
                num_workers=run.num_workers,
                use_gpu=gpu,
                resources_per_worker=None if gpu else {"CPU": run.cpus_per_worker},
            ),
            run_config=ray.train.RunConfig(
                name=run.name,
                storage_path=storage_path,
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=run.num_to_keep),
                failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
                # Ray Train's INFO lines (two per checkpoint and worker, its start-up) stay off the console
                # unless DALLE_RAY_DATA_VERBOSE=1; its own log files keep them.
                logging_config=ray.train.LoggingConfig(log_level=train_log_level()),
            ),
            datasets=datasets,
            dataset_config=dataset_config if dataset_config is not None or not datasets else default_dataset_config(),
        )
        result = trainer.fit()
        ckpt = result.checkpoint.path if result.checkpoint else None
        if ckpt:
            client.set_tag(run_id, "final_checkpoint", ckpt)
            if run.log_final_checkpoint and not storage.is_remote(ckpt):
                client.log_artifacts(run_id, ckpt, "final_checkpoint")
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return LaunchResult(run_id=run_id, checkpoint_path=ckpt, metrics=dict(result.metrics or {}), resumed=resumed)
