"""The prior's sample grids decode tokens with the stage-2 dVAE when one is configured."""

import numpy as np
import pytest
import torch

from tokenize_images.dvae import DVAE, preset, save_checkpoint
from tokenize_images.grid_decoder import load_decoder


def test_dvae_decoder_gives_the_dvae_pixels(tmp_path):
    torch.manual_seed(0)
    model = DVAE(preset("small")).eval()
    path = str(tmp_path / "dvae.pt")
    save_checkpoint(model, path)
    g = model.cfg.grid
    decode = load_decoder(path, g, g, model.cfg.vocab_size)
    tokens = torch.randint(0, model.cfg.vocab_size, (3, g * g))
    images = decode(tokens)
    assert images.shape == (3, model.cfg.image_size, model.cfg.image_size, 3) and images.dtype == np.uint8
    with torch.no_grad():
        direct = model.decode_tokens(tokens.view(3, g, g)).permute(0, 2, 3, 1).numpy() * 255
    assert np.abs(images.astype(np.float32) - direct).max() <= 0.5 + 1e-3


def test_dvae_decoder_refuses_a_mismatched_grid(tmp_path):
    model = DVAE(preset("small"))
    path = str(tmp_path / "dvae.pt")
    save_checkpoint(model, path)
    with pytest.raises(ValueError, match="grids"):
        load_decoder(path, 4, 4, model.cfg.vocab_size)


def test_without_dvae_tokens_are_drawn_as_maps():
    images = load_decoder("", 4, 4, 16)(torch.randint(0, 16, (2, 16)))
    assert images.shape == (2, 32, 32, 3)
