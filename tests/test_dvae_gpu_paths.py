"""train_dvae's GPU-scale paths, exercised on CPU: FSDP2 on a real gloo group with the EMA built first and
activation checkpointing per resblock group, the two convs dall_e keeps in fp32 under bf16 autocast, per-rank
seeds, and the horizontal flip."""

import pytest
import torch

from harness import ModelEMA, WorkerContext, model_state_dict, prepare_model
from tokenize_images.config import DVAEOptimConfig, DVAETrainConfig, ScheduleConfig
from tokenize_images.dvae import DVAE, FP32Conv2d, map_pixels, preset
from tokenize_images.dvae_training import make_optimizer, random_flip, rank_seed, resblock_groups, train_step


def small():
    return preset("small", n_hid=16, vocab_size=64, image_size=32)


def test_fsdp2_with_ema_built_first_and_group_checkpointing_trains(gloo_group):
    torch.manual_seed(0)
    dvae = DVAE(small())
    ema = ModelEMA(dvae, 0.9)  # before wrapping: FSDP2 refuses deepcopy afterwards
    ctx = WorkerContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), parallel="fsdp2",
                        log_every=0, run_id="")  # fmt: skip
    model = prepare_model(dvae, ctx, fsdp_units=resblock_groups, activation_checkpointing=True,
                          checkpoint_units=resblock_groups)  # fmt: skip
    assert type(model).__name__.startswith("FSDP")
    wrapped = [type(m).__name__ for m in model.encoder.blocks.children()]
    # the four encoder groups recompute, each its own FSDP2 unit (FSDP + CheckpointWrapper)
    assert wrapped.count("FSDPCheckpointWrapper") == 4, wrapped
    with pytest.raises(AssertionError, match="deepcopy"):
        ModelEMA(model, 0.9)  # what train_dvae did before: EMA after prepare_model
    cfg = DVAETrainConfig(schedule=ScheduleConfig(lr_start=3e-3, lr_end=3e-3), optim=DVAEOptimConfig(batch_size=4))
    opt = make_optimizer(model, cfg)
    pixels = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    losses = []
    for step in range(8):
        losses.append(train_step(model, opt, pixels, step, cfg)["loss"])
        ema.update(model)
    assert losses[-1] < losses[0], losses
    state = model_state_dict(model)
    assert all(type(v) is torch.Tensor for v in state.values())
    plain = DVAE(small())
    plain.load_state_dict(state)  # no wrapper prefixes
    plain.load_state_dict(ema.state_dict())


def test_vocabulary_and_code_embedding_convs_stay_fp32_under_autocast():
    torch.manual_seed(0)
    dvae = DVAE(small())
    assert isinstance(dvae.encoder.blocks.output.conv, FP32Conv2d) and isinstance(dvae.decoder.blocks.input, FP32Conv2d)
    x = map_pixels(torch.rand(2, 3, 32, 32))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = dvae.encoder.blocks[:-1](x)
        logits = dvae.encoder(x)
        z = torch.softmax(logits, 1)
        embedded = dvae.decoder.blocks.input(z)
        trunk_conv = dvae.encoder.blocks.input(x)
    assert hidden.dtype == torch.bfloat16 and trunk_conv.dtype == torch.bfloat16  # the trunk is autocast
    assert logits.dtype == torch.float32 and embedded.dtype == torch.float32
    conv = dvae.encoder.blocks.output.conv
    with torch.no_grad():  # the fp32 conv of the (bf16) trunk's output, computed by hand
        want = torch.nn.functional.conv2d(torch.relu(hidden.float()), conv.weight, conv.bias)
    torch.testing.assert_close(logits, want, rtol=0, atol=0)


def test_rank_seeds_differ_per_rank_and_resume_point_and_are_reproducible():
    seeds = {(r, s): rank_seed(0, r, s) for r in range(4) for s in (0, 200, 400)}
    assert len(set(seeds.values())) == len(seeds)
    assert rank_seed(0, 3, 200) == seeds[(3, 200)] and rank_seed(1, 3, 200) != seeds[(3, 200)]
    assert all(0 <= v < 2**63 for v in seeds.values())  # a valid torch.manual_seed


def test_horizontal_flip_mirrors_about_half_and_keeps_the_rest():
    pixels = torch.randint(0, 256, (400, 8, 8, 3), dtype=torch.uint8)
    out = random_flip(pixels, torch.Generator().manual_seed(0))
    same = (out == pixels).flatten(1).all(1)
    mirrored = (out == pixels.flip(2)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 150 < int(mirrored.sum()) < 250
