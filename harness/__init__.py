"""Reusable Ray Train V2 harness shared by every trainer of this project (the dVAE, the prior).

Driver (entry script):

    from harness.launch import launch      # (a submodule of the same name: import it from there)
    from harness import HarnessConfig
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

    from harness import (worker_context, prepare_model, ModelEMA, StepTimer, mfu, peak_flops,
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

# Names are resolved lazily (PEP 562), so that `harness.config` (a pure dataclass, embedded in every
# trainer's config) imports without torch or Ray: the entry scripts parse and validate config first.
_EXPORTS = {
    "harness.checkpoint": [
        "SHARED_FILE",
        "CheckpointManager",
        "save_checkpoint",
        "load_checkpoint",
        "load_model_state_dict",
        "load_optimizer_state_dict",
        "load_powersgd_state_dict",
        "model_state_dict",
        "optimizer_state_dict",
        "powersgd_state_dict",
        "rng_state",
        "set_rng_state",
        "wait_for_checkpoints",
        "inject_failure",
    ],
    "harness.config": ["HarnessConfig"],
    "harness.launch": ["HARNESS_KEY", "LaunchResult", "resolve_storage"],  # launch: see above
    "harness.logger": ["AsyncRunLogger", "NullLogger"],
    "harness.metrics": ["StepTimer", "gpu_peak_bf16", "measure_matmul_flops", "mfu", "peak_flops"],
    "harness.powersgd": ["ResumablePowerSGD", "register_powersgd"],
    "harness.worker": ["ModelEMA", "WorkerContext", "prepare_model", "unwrap", "worker_context"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    # Called only for names the package does not have yet. A name that equals a submodule's (launch)
    # would be shadowed by that submodule once it is imported, so it is not exported here.
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_MODULE_OF[name]), name)
