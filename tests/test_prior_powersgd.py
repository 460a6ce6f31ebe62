"""PowerSGD on gloo through DDP's powerSGD_hook, and its error-feedback state surviving a
checkpoint round trip (weights_only load). Single process, world size 1, real gloo group."""

import os
import socket

import torch
import torch.distributed as dist

from harness import load_powersgd_state_dict, powersgd_state_dict
from training.loop import register_powersgd


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_powersgd_hook_runs_on_gloo_and_state_round_trips(tmp_path):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(
            torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 4))
        )
        state = register_powersgd(model, rank=1, start_iter=2)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for _ in range(5):
            model(torch.randn(8, 16)).square().mean().backward()
            opt.step()
            opt.zero_grad()
        assert state.iter >= 5 and state.error_dict  # compression ran, with error feedback

        path = tmp_path / "rank-0.pt"
        torch.save({"powersgd": powersgd_state_dict(state)}, path)
        saved = torch.load(path, weights_only=True)["powersgd"]  # no pickled code needed

        other = torch.nn.parallel.DistributedDataParallel(
            torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 4))
        )
        fresh = register_powersgd(other, rank=1, start_iter=2)
        load_powersgd_state_dict(fresh, saved)
        assert fresh.iter == state.iter
        assert fresh.error_dict.keys() == state.error_dict.keys()
        for k in state.error_dict:
            assert torch.equal(fresh.error_dict[k], state.error_dict[k])
        assert fresh.rng.randint(1 << 30) == state.rng.randint(1 << 30)  # same RNG stream continues
    finally:
        dist.destroy_process_group()
