"""The patch teacher: a k-means of raw pixel patches whose codes the dVAE learns first (codebook.teacher_steps)."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from common.config import parse_cli
from tokenize_images.config import CodebookConfig, DVAETrainConfig, ScheduleConfig
from tokenize_images.dvae import DVAE, preset
from tokenize_images.dvae_training import make_optimizer, model_input, train_step
from tokenize_images.patch_teacher import PatchTeacher, patches

COLOURS = torch.tensor([(220, 30, 30), (30, 180, 40), (40, 60, 220), (240, 220, 30), (250, 250, 250), (15, 15, 15)])


def block_images(
    rng: np.random.Generator, count: int, grid: int = 8, patch: int = 4
) -> tuple[torch.Tensor, np.ndarray]:
    """Images of grid x grid flat patch x patch blocks, each block one of COLOURS; returns (uint8 NHWC, labels)."""
    labels = rng.integers(0, len(COLOURS), size=(count, grid, grid))
    pixels = COLOURS[torch.from_numpy(labels)].repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    return pixels.to(torch.uint8), labels


def test_patches_follow_the_grid_in_raster_order():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    rows = patches(x, 4)
    assert rows.shape == (2 * 2 * 2, 3 * 16)
    # position (image 1, grid row 0, grid column 1): channel 0's pixels rows 0-3, columns 4-7
    expected = x[1, 0, 0:4, 4:8].flatten()
    assert torch.equal(rows[1 * 4 + 0 * 2 + 1].reshape(3, 16)[0], expected)


def test_codes_separate_every_block_colour_and_survive_a_state_round_trip():
    pixels, labels = block_images(np.random.default_rng(0), 8)
    x = model_input(pixels)
    teacher = PatchTeacher.fit(x, vocab_size=len(COLOURS), patch=4)
    codes = teacher.codes(x).numpy()
    # one code per colour, and the same colour always gets the same code
    pairs = set(zip(labels.flatten().tolist(), codes.flatten().tolist(), strict=True))
    assert len(pairs) == len(COLOURS) and len({c for _, c in pairs}) == len(COLOURS)
    copy = PatchTeacher()
    with pytest.raises(RuntimeError, match="no centres"):
        copy.codes(x)
    copy.load_state_dict(teacher.state_dict())
    assert torch.equal(copy.codes(x), teacher.codes(x))


def test_fit_refuses_fewer_patches_than_codes():
    pixels, _ = block_images(np.random.default_rng(0), 1, grid=4)
    with pytest.raises(ValueError, match="at least 32 patches for 32 codes"):
        PatchTeacher.fit(model_input(pixels), vocab_size=32, patch=4)


def test_config_refuses_two_codebook_inits_and_negative_steps(capsys):
    with pytest.raises(ValueError, match="alternative codebook inits"):
        CodebookConfig(teacher_steps=10, kmeans_margin=5.0)
    with pytest.raises(ValueError, match="teacher_steps must be >= 0"):
        CodebookConfig(teacher_steps=-1)
    with pytest.raises(SystemExit):  # the CLI refuses it at once, naming both fields
        parse_cli(DVAETrainConfig, ["--codebook.teacher_steps", "5", "--codebook.kmeans_margin", "1"])
    assert "teacher_steps and codebook.kmeans_margin are alternative" in capsys.readouterr().err


def test_taught_updates_learn_the_codes_then_the_elbo_takes_over():
    """While step < teacher_steps the encoder's argmax moves towards the teacher's codes (cross-entropy) and
    no KL or Gumbel temperature enters; from teacher_steps on the update is the paper's ELBO again."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    pixels, _ = block_images(np.random.default_rng(1), 4)
    cfg = DVAETrainConfig(
        schedule=ScheduleConfig(lr_start=5e-3, lr_end=5e-3, scale=0.0001), codebook=CodebookConfig(teacher_steps=20)
    )
    model = DVAE(preset("small", downsample=4, vocab_size=16, image_size=32, n_hid=16))
    teacher = PatchTeacher.fit(model_input(pixels), vocab_size=16, patch=4)
    opt = make_optimizer(model, cfg)
    with pytest.raises(ValueError, match="needs a PatchTeacher"):
        train_step(model, opt, pixels, 0, cfg)
    taught = [train_step(model, opt, pixels, step, cfg, teacher=teacher) for step in range(20)]
    assert {"teacher_ce", "teacher_accuracy", "mse", "loss", "lr"} <= set(taught[0])  # teacher_reconstruction
    assert "kl" not in taught[0] and "tau" not in taught[0] and "nll" not in taught[0]
    assert taught[-1]["teacher_ce"] < 0.5 * taught[0]["teacher_ce"], [t["teacher_ce"] for t in taught]
    assert taught[-1]["teacher_accuracy"] > 0.9
    model.eval()
    agreement = model.encode_tokens(pixels.permute(0, 3, 1, 2).float() / 255) == teacher.codes(model_input(pixels))
    assert agreement.float().mean() > 0.9  # the encoder's argmax now is the teacher's code
    model.train()
    after = train_step(model, opt, pixels, 20, cfg, teacher=teacher)
    assert {"kl", "tau", "beta", "nll"} <= set(after) and "teacher_ce" not in after
    laplace = replace(cfg, codebook=CodebookConfig(teacher_steps=20, teacher_reconstruction="logit_laplace"))
    nll = train_step(model, opt, pixels, 0, laplace, teacher=teacher)
    assert "nll" in nll and "mse" not in nll and nll["loss"] == pytest.approx(nll["teacher_ce"] + nll["nll"])
