"""PowerSGD on gloo through DDP's powerSGD_hook, its state surviving a checkpoint round trip
(weights_only load), and the resume rule: the saved state goes back only after DDP's bucket rebuild,
onto the device of the bucket it is added to. Single process, world size 1, real gloo group."""

import os
import socket

import pytest
import torch
import torch.distributed as dist

from harness import load_powersgd_state_dict, powersgd_state_dict
from harness.powersgd import ResumablePowerSGD
from training.loop import register_powersgd


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gloo():
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def ddp_model():
    torch.manual_seed(0)
    return torch.nn.parallel.DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 4))
    )


def train(model, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        model(torch.randn(8, 16)).square().mean().backward()
        opt.step()
        opt.zero_grad()


def test_powersgd_hook_runs_on_gloo_and_state_round_trips(gloo, tmp_path):
    model = ddp_model()
    hook = register_powersgd(model, rank=1, start_iter=2)
    train(model, 5)
    state = hook.state
    assert state.iter >= 5 and state.error_dict  # compression ran, with error feedback

    path = tmp_path / "rank-0.pt"
    torch.save({"powersgd": hook.state_dict()}, path)
    saved = torch.load(path, weights_only=True)["powersgd"]  # no pickled code needed

    fresh = register_powersgd(ddp_model(), rank=1, start_iter=2).state
    load_powersgd_state_dict(fresh, saved)
    assert fresh.iter == state.iter
    assert fresh.error_dict.keys() == state.error_dict.keys()
    for k in state.error_dict:
        assert torch.equal(fresh.error_dict[k], state.error_dict[k])
    assert fresh.rng.randint(1 << 30) == state.rng.randint(1 << 30)  # same RNG stream continues


def test_saved_state_is_restored_after_the_bucket_rebuild_on_the_buckets_device(gloo):
    first = ddp_model()
    hook = register_powersgd(first, rank=1, start_iter=2)
    train(first, 4)
    saved = powersgd_state_dict(hook.state)
    assert saved["iter"] >= 4 and saved["error_dict"]

    resumed = ddp_model()
    hook = register_powersgd(resumed, rank=1, start_iter=2, saved=saved)
    # held back: a checkpoint taken now still saves the restored state, not the fresh one
    assert hook.pending is saved and hook.state_dict() is saved
    train(resumed, 1)  # first iteration of this process: buckets not rebuilt, memories untouched
    assert hook.pending is not None and hook.state.iter == 0 and not hook.state.error_dict
    train(resumed, 1)  # after the rebuild: restored, then compressed from the saved iteration on
    assert hook.pending is None
    assert hook.state.iter == saved["iter"] + 1
    assert all(e.device.type == "cpu" for e in hook.state.error_dict.values())


def test_restore_moves_every_tensor_to_the_bucket_device():
    """The placement rule, on the meta device (a stand-in for a GPU bucket on this CPU machine)."""
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

    saved = {
        "iter": 7,
        "error_dict": {0: torch.ones(5), 1: torch.ones(3)},
        "p_memory_dict": {0: torch.ones(5, 1)},
        "q_memory_dict": {0: torch.ones(1, 1)},
    }
    state = psgd.PowerSGDState(process_group=None, matrix_approximation_rank=1, start_powerSGD_iter=2)
    hook = ResumablePowerSGD(state, saved)
    hook.restore_now("meta")
    assert state.iter == 7
    for memory in (state.error_dict, state.p_memory_dict, state.q_memory_dict):
        assert memory and all(t.device.type == "meta" for t in memory.values())
    assert saved["error_dict"][0].device.type == "cpu"  # the loaded copy itself is left alone
