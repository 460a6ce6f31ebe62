"""FSDP2 (fully_shard per block) + activation checkpointing through the harness's prepare_model,
on a real single-process gloo group: trains, and its full state dict loads into a plain Prior."""

import pytest
import torch

from harness import ModelEMA, WorkerContext, model_state_dict, optimizer_state_dict, prepare_model
from training.model import Prior, prior_loss
from training.presets import preset


def test_fsdp2_with_activation_checkpointing_trains_and_exports_full_state(gloo_group):
    torch.manual_seed(0)
    model = Prior(preset("tiny"))
    ema = ModelEMA(model, 0.99)
    ctx = WorkerContext(
        rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), parallel="fsdp2", log_every=0, run_id=""
    )
    from training.loop import fp32_layer_norms

    # as training/loop.py wraps it: LayerNorms their own fp32 units inside the checkpointed blocks
    model = prepare_model(model, ctx, activation_checkpointing=True, fp32_units=fp32_layer_norms, fp32_root=True)
    assert type(model).__name__.startswith("FSDP")  # fully_shard swapped the class
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    text, image = torch.randint(0, 256, (4, 8)), torch.randint(0, 16, (4, 16))
    losses = []
    for _ in range(6):
        out = prior_loss(*model(text, image), text, image)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 4.0)
        opt.step()
        opt.zero_grad()
        ema.update(model)
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0]
    state = model_state_dict(model)
    assert all(type(v) is torch.Tensor for v in state.values())  # full tensors, not DTensor shards
    plain = Prior(preset("tiny"))
    plain.load_state_dict(state)  # no wrapper prefixes in the keys
    torch.testing.assert_close(
        prior_loss(*plain(text, image), text, image)["loss"], prior_loss(*model(text, image), text, image)["loss"]
    )
    # after a forward without backward (as in validation) the optimiser state still exports
    assert len(optimizer_state_dict(model, opt)["state"]) == len(list(model.parameters()))
    ema_copy = Prior(preset("tiny"))
    ema_copy.load_state_dict(ema.state_dict())


def test_fsdp2_ema_updates_local_shards_without_gathering(monkeypatch, gloo_group):
    """Under FSDP2 the EMA averages this rank's shards (no full_tensor per update), on its cadence,
    and state_dict() gathers the right average; logits/embeddings/norms stay fp32 under fp32_root."""
    from torch.distributed.tensor import DTensor

    from training.loop import fp32_layer_norms

    torch.manual_seed(0)
    model = Prior(preset("tiny"))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema = ModelEMA(model, 0.5, every=2)
    ctx = WorkerContext(
        rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), parallel="fsdp2", log_every=0, run_id=""
    )
    model = prepare_model(model, ctx, fp32_units=fp32_layer_norms, fp32_root=True)
    assert type(model.blocks[0].ln1).__name__.startswith("FSDP")  # norms are their own fp32 units
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    text, image = torch.randint(0, 256, (4, 8)), torch.randint(0, 16, (4, 16))
    expected = {k: v.clone() for k, v in start.items()}

    def gather_forbidden(self, *a, **k):
        raise AssertionError("EMA update all-gathered a parameter")

    for step in range(1, 5):
        prior_loss(*model(text, image), text, image)["loss"].backward()
        opt.step()
        opt.zero_grad()
        with monkeypatch.context() as m:
            m.setattr(DTensor, "full_tensor", gather_forbidden)
            averaged = ema.update(model)
        assert averaged == (step % 2 == 0)
        if averaged:
            live = model_state_dict(model)
            expected = {k: 0.5 * expected[k] + 0.5 * live[k] for k in expected}
    got = ema.state_dict()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], msg=k)


@pytest.mark.slow
def test_two_process_fsdp2_resume_matches_the_uninterrupted_run():
    """2 gloo processes, FSDP2 with fp32 norms/root: 6 steps with a checkpoint after step 3; a fresh
    pair restores it (rank 0 reads, broadcast_from_rank0 sends each rank its shard) and redoes steps
    4-6 with the same losses. The same routine is the fsdp_resume section of bench/gpu_check.py."""
    from bench.gpu_check import fsdp_resume

    result = fsdp_resume("cpu")
    assert result["resume"]["resumed_from"] == 3 and set(result["resume"]["losses"]) == {"4", "5", "6"}
    assert result["ok"] and result["max_rel_diff_steps_4_6"] < 1e-5, result
    assert result["first"]["ema_finite"] and result["resume"]["ema_finite"]
