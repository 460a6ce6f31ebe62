"""Our encoder, after import, matches OpenAI's official `dall_e` Encoder (random weights, no download)."""

import pytest
import torch

dall_e = pytest.importorskip("dall_e")

from tokenize_images.dvae import load_checkpoint, map_pixels, save_checkpoint  # noqa: E402
from tokenize_images.import_openai import convert_official, fix_upsample  # noqa: E402


def _official(n_hid=64, n_blk=1, vocab=512, seed=0):
    torch.manual_seed(seed)
    enc = dall_e.Encoder(n_hid=n_hid, n_blk_per_group=n_blk, vocab_size=vocab)
    dec = dall_e.Decoder(n_init=32, n_hid=n_hid, n_blk_per_group=n_blk, vocab_size=vocab)
    # dall_e initialises biases to zero; randomise them too so a dropped bias cannot go unnoticed.
    with torch.no_grad():
        for name, p in list(enc.named_parameters()) + list(dec.named_parameters()):
            if name.endswith(".b"):
                p.normal_(std=0.1)
    return enc, dec


@pytest.mark.parametrize("n_blk", [1, 2])
def test_encoder_parity_after_import(tmp_path, n_blk):
    torch.set_num_threads(2)
    enc, dec = _official(n_blk=n_blk)
    path = str(tmp_path / "dvae.pt")
    save_checkpoint(convert_official(enc, dec, image_size=32), path)
    ours, sha = load_checkpoint(path)  # through the checkpoint file, weights_only=True
    assert len(sha) == 64

    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = enc(map_pixels(x))
        got = ours.encoder(map_pixels(x))
    assert got.shape == ref.shape == (4, 512, 4, 4)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(1), ref.argmax(1))
    assert torch.equal(ours.encode_tokens(x), ref.argmax(1))

    # The decoder too, including the one-hot shortcut used when decoding stored tokens.
    tokens = ref.argmax(1)
    one_hot = torch.nn.functional.one_hot(tokens, 512).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        ref_dec = fix_upsample(dec)(one_hot)
        torch.testing.assert_close(ours.decoder(one_hot), ref_dec, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours.decoder.decode_tokens(tokens), ref_dec, rtol=1e-4, atol=1e-4)


def test_upsample_fix_restores_missing_attribute():
    _, dec = _official()
    for m in dec.modules():
        if isinstance(m, torch.nn.Upsample):
            del m.recompute_scale_factor  # what unpickling an old decoder.pkl yields on new torch
    fix_upsample(dec)
    with torch.no_grad():
        out = dec(torch.nn.functional.one_hot(torch.zeros(1, 2, 2, dtype=torch.long), 512).permute(0, 3, 1, 2).float())
    assert out.shape == (1, 6, 16, 16)


@pytest.mark.slow  # a forward pass of the full-size encoder (272 GFLOP): 3 s idle, 15+ s on busy cores
def test_flop_count_matches_the_published_encoder_cost():
    from tokenize_images.dvae import flops_per_image, preset

    assert flops_per_image(preset("openai")) / 1e9 == pytest.approx(272.3, abs=0.1)  # issue: ~272 GFLOP / 256 px image


def test_downsample_4_keeps_dall_e_blocks_and_makes_a_finer_grid():
    """downsample=4 (the demo's 16x16 grid at 64 px) drops one pool and one upsample and nothing else: the same
    parameter names and shapes as downsample=8, so checkpoints differ only in the grid they make."""
    from tokenize_images.dvae import DVAE, DVAEConfig

    kw = dict(n_hid=8, n_blk_per_group=1, vocab_size=32, image_size=32, n_init=8)
    fine, coarse = DVAE(DVAEConfig(**kw, downsample=4)), DVAE(DVAEConfig(**kw, downsample=8))
    assert {k: v.shape for k, v in fine.state_dict().items()} == {k: v.shape for k, v in coarse.state_dict().items()}
    x = torch.rand(2, 3, 32, 32)
    assert fine.encode_tokens(x).shape == (2, 8, 8) and coarse.encode_tokens(x).shape == (2, 4, 4)
    assert fine.decode_tokens(fine.encode_tokens(x)).shape == (2, 3, 32, 32)
    assert fine.cfg.grid == 8 and coarse.cfg.grid == 4
    with pytest.raises(ValueError, match="one of 4, 8"):
        DVAEConfig(**kw, downsample=2)
