"""Resume rules of harness.checkpoint.CheckpointManager for the prior: a checkpoint written by 2
workers and resumed by 1 restores model, optimiser, EMA (and its cadence phase) and schedule, but
the per-rank data position starts fresh and the manager says so; the same layout keeps it.
Real files in the real format, read through a real ray.train.Checkpoint (no cluster needed)."""

import torch

from harness.checkpoint import CheckpointManager, write_checkpoint_files
from harness.worker import ModelEMA, WorkerContext
from training.config import OptimConfig
from training.data import DataPosition
from training.model import Prior
from training.optim import WarmupPlateauSchedule, make_optimizer
from training.presets import preset


def parts(seed):
    torch.manual_seed(seed)
    model = Prior(preset("tiny"))
    cfg = OptimConfig(lr=1e-3, warmup_steps=2)
    opt = make_optimizer(model, cfg)
    return model, opt, ModelEMA(model, 0.99, every=25), WarmupPlateauSchedule(opt, cfg)


def ctx(rank, world, checkpoint=None):
    return WorkerContext(
        rank=rank,
        world_size=world,
        local_rank=rank,
        device=torch.device("cpu"),
        parallel="ddp",
        log_every=0,
        run_id="",
        attempt_checkpoint=checkpoint,
    )


def write_two_rank_checkpoint(directory, step=30):
    model, opt, ema, sched = parts(0)
    model.loss(model.pad_text([[1, 2]]), torch.randint(0, 16, (1, 16)))["loss"].backward()
    opt.step()
    for _ in range(step):
        sched.step()
    for rank in (0, 1):
        mgr = CheckpointManager(ctx(rank, 2), model, opt, ema=ema, schedule=sched, fingerprint="layout-2")
        shared, mine = mgr.collect({"data": {"epoch": 1, "consumed": 5 + rank}})
        write_checkpoint_files(str(directory), mgr.ctx, step, shared, mine)
    return model


def test_resume_on_another_world_size_starts_the_data_position_fresh(tmp_path):
    import ray.train

    saved_model = write_two_rank_checkpoint(tmp_path)
    checkpoint = ray.train.Checkpoint.from_directory(str(tmp_path))

    model, opt, ema, sched = parts(1)
    mgr = CheckpointManager(ctx(0, 1, checkpoint), model, opt, ema=ema, schedule=sched, fingerprint="layout-1")
    step, mine = mgr.restore()
    assert step == 30 and mgr.resumed
    for a, b in zip(model.state_dict().values(), saved_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # model state restores on any world size
    assert sched.step_num == 30 and ema.updates == 30  # EMA cadence continues in phase
    assert "data" not in mine and "rng" in mine
    assert "2 ranks" in mgr.reset_reason and "now 1 ranks" in mgr.reset_reason and "starts fresh" in mgr.reset_reason
    position = DataPosition(None, None, 8, 0, 0, 2, state=mine.get("data"))
    assert position.state() == {"epoch": 0, "consumed": 0}


def test_resume_on_the_same_layout_keeps_each_ranks_position(tmp_path):
    import ray.train

    write_two_rank_checkpoint(tmp_path)
    checkpoint = ray.train.Checkpoint.from_directory(str(tmp_path))
    for rank in (0, 1):
        model, opt, ema, sched = parts(1)
        mgr = CheckpointManager(ctx(rank, 2, checkpoint), model, opt, ema=ema, schedule=sched, fingerprint="layout-2")
        _, mine = mgr.restore()
        assert mgr.reset_reason == "" and mine["data"] == {"epoch": 1, "consumed": 5 + rank}
    # the same world size but shards dealt differently (e.g. another shard count) is a mismatch too
    mgr = CheckpointManager(ctx(0, 2, checkpoint), *parts(2)[:2], fingerprint="layout-2-other")
    assert "data" not in mgr.restore()[1] and mgr.reset_reason
