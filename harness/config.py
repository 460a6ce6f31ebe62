"""HarnessConfig: how a training stage runs on Ray Train (workers, storage, failures, MLflow).

Every trainer of this project (the dVAE, the prior) embeds one as its `[run]` section, so the
same TOML keys mean the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config import doc

# The choices the harness dispatches on (launch.use_gpu, worker.prepare_model), named once.
Parallel = Literal["ddp", "fsdp2", "none"]
UseGpu = Literal["auto", "true", "false"]


# Formatting is off below: a field and its documentation are aligned by hand, one field per line or two.
# fmt: off
@dataclass
class HarnessConfig:
    name: str = doc("", "Stable run name. Ray Train's run folder and the MLflow run are found by it: rerunning the "
                        "same command with the same name resumes from the latest checkpoint.")
    storage_path: str = doc("ray_results", "Where Ray Train keeps checkpoints (local folder or s3://); a relative "
                                           "path is made absolute.")
    experiment: str = doc("train", "MLflow experiment name.")
    num_workers: int = doc(2, "Ray Train workers (one process per GPU, or per CPU slot).")
    use_gpu: UseGpu = doc("auto", "'auto' = use GPUs when the Ray cluster has any; 'true' / 'false' to force.")
    cpus_per_worker: float = doc(1.0, "CPUs reserved per worker. Leave some CPUs free for Ray Data reads.")
    threads_per_worker: int = doc(0, "torch intra-op threads per CPU worker (0 = its cpus_per_worker, at least 1). "
                                     "More than its CPUs when the CPUs it leaves free idle once the data is read.")
    parallel: Parallel = doc("ddp", "'ddp' (DistributedDataParallel), 'fsdp2' (torch fully_shard per block) or 'none' "
                                    "(no wrapper, single worker).")
    max_failures: int = doc(0, "Worker-group restarts from the last checkpoint before the run fails (-1 = unlimited).")
    num_to_keep: int = doc(2, "Checkpoints kept in storage (the newest N).")
    log_every: int = doc(10, "Rank 0 sends metrics to MLflow every N optimiser steps (asynchronously).")
    log_final_checkpoint: bool = doc(True, "Copy the final checkpoint into the MLflow run's artifacts (turn off for "
                                           "multi-GB models; its path is always logged as a tag).")
    ray_address: str = doc("", "Ray cluster to connect to ('' = RAY_ADDRESS, else a private local instance).")
    num_cpus: int = doc(0, "CPUs for a private local Ray instance (0 = all).")
# fmt: on

    def __post_init__(self):
        if self.threads_per_worker < 0:
            n = self.threads_per_worker
            raise ValueError(f"run.threads_per_worker must be >= 0 (0 = cpus_per_worker), got {n}")

    def cpu_threads(self) -> int:
        """torch intra-op threads of one CPU worker."""
        return self.threads_per_worker or max(1, int(self.cpus_per_worker))
