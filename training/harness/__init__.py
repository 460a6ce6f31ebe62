"""Reusable Ray Train V2 harness shared by every trainer of this project (the dVAE, the prior).

Driver (entry script):

    from training.harness import HarnessConfig, launch
    result = launch(train_fn, {"my": "settings"}, run_cfg,          # run_cfg: HarnessConfig
                    params=flatten(cfg), tags={"tokens_manifest": ...},
                    datasets={"train": ds}, dataset_config=None)
    # -> LaunchResult(run_id, checkpoint_path, metrics, resumed)

  * TorchTrainer + ScalingConfig(num_workers, use_gpu='auto' -> GPUs iff the cluster has some)
  * RunConfig(name=run.name (stable), storage_path, CheckpointConfig(num_to_keep),
    FailureConfig(max_failures)). Rerunning with the same name resumes from the latest checkpoint.
  * MLflow: the driver creates the run, or reopens the one with the same name, passes its id to
    the workers in train_loop_config["_harness"], and ends it FINISHED or FAILED (never left RUNNING).
    The final checkpoint path is logged as tag `final_checkpoint` (and as artifacts when enabled).

Worker (train_fn(config)):

    from training.harness import (worker_context, prepare_model, ModelEMA, StepTimer, mfu, peak_flops,
                                  save_checkpoint, load_checkpoint, model_state_dict, ...)
    ctx = worker_context(config)                 # rank, world_size, device, logger (async MLflow on rank 0)
    model = prepare_model(model, ctx)            # DDP (gloo/nccl) | FSDP2 fully_shard | none
    shared, mine = load_checkpoint(ctx)          # (None, None) on a fresh start
    ... loop: with timer.wait(): batch = next(it); with timer.compute(): step; timer.step(tokens)
    if ctx.should_log(step): ctx.logger.log_metrics({**timer.take(), "loss": ...}, step)
    save_checkpoint(ctx, step, {"loss": ...}, shared={...} (rank 0 writes), rank_state={...} (every rank))
    ctx.close()

See each module's docstring: config, launch, worker, checkpoint, logger, metrics.
"""

from training.harness.checkpoint import (load_checkpoint, load_model_state_dict, load_optimizer_state_dict,
                                         load_powersgd_state_dict, model_state_dict, optimizer_state_dict,
                                         powersgd_state_dict, rng_state, save_checkpoint, set_rng_state,
                                         wait_for_checkpoints, inject_failure)
from training.harness.config import HarnessConfig
from training.harness.launch import HARNESS_KEY, LaunchResult, launch, open_run
from training.harness.logger import AsyncRunLogger, NullLogger
from training.harness.metrics import StepTimer, measure_matmul_flops, mfu, peak_flops
from training.harness.worker import ModelEMA, WorkerContext, prepare_model, unwrap, worker_context

__all__ = [
    "HarnessConfig", "launch", "open_run", "LaunchResult", "HARNESS_KEY",
    "worker_context", "WorkerContext", "prepare_model", "unwrap", "ModelEMA",
    "save_checkpoint", "load_checkpoint", "model_state_dict", "load_model_state_dict",
    "optimizer_state_dict", "load_optimizer_state_dict", "powersgd_state_dict", "load_powersgd_state_dict",
    "rng_state", "set_rng_state", "wait_for_checkpoints", "inject_failure",
    "AsyncRunLogger", "NullLogger", "StepTimer", "mfu", "peak_flops", "measure_matmul_flops",
]
