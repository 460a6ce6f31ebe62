"""The encoder actor's speed-ups give the model's own tokens, and its precision guard measures and refuses.

CPU only: folding post_gain, fixed padded batches and (slow) the compiled trunk give tokens identical to
DVAE.encode_tokens; under bf16 autocast the guard's agreement equals the one computed here by hand, the
guard returns fp32 tokens while it measures, and it fails with the figure below its threshold."""

import numpy as np
import pytest
import torch

from tokenize_images.dvae import DVAE, DVAEConfig, map_pixels, save_checkpoint
from tokenize_images.encoder_actor import TokenEncoder, fold_post_gain
from tokenize_images.preprocess import load_images
from tokenize_images.synthetic import jpeg, shape_image


def images(n, size, seed=0):
    rng = np.random.default_rng(seed)
    blobs = [
        jpeg(shape_image(rng, int(rng.integers(size, 2 * size)), int(rng.integers(size, 2 * size)))[0])
        for _ in range(n)
    ]
    pixels, errors = load_images(blobs, size)
    assert errors == [""] * n
    return pixels


def checkpoint(tmp_path, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = DVAEConfig(**{"n_hid": 16, "n_blk_per_group": 2, "vocab_size": 256, "image_size": 32, "n_init": 16, **kw})
    model = DVAE(cfg)
    with torch.no_grad():  # random biases too, so that folding them is exercised
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.bias.normal_(0, 0.1)
    path = str(tmp_path / f"dvae{seed}.pt")
    save_checkpoint(model, path)
    return model.eval(), path


def reference(model, pixels):
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    return model.encode_tokens(x).flatten(1).numpy().astype(np.uint16)


def test_folded_post_gain_and_fixed_batches_give_identical_tokens(tmp_path):
    model, path = checkpoint(tmp_path)
    pixels = images(13, 32)
    want = reference(model, pixels)
    enc = TokenEncoder(path, device="cpu", batch_size=5)  # 13 images: 5 + 5 + 3 padded to 5
    assert all(m.post_gain == 1 for m in enc.encoder.modules() if hasattr(m, "post_gain"))
    np.testing.assert_array_equal(enc.encode(pixels), want)
    np.testing.assert_array_equal(TokenEncoder(path, device="cpu").encode(pixels), want)

    # A gain that is not a power of two (3 blocks per group: 1/144) is folded up to float rounding.
    model3, _ = checkpoint(tmp_path, seed=1, n_blk_per_group=3)
    x = map_pixels(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255)
    with torch.no_grad():
        before = model3.encoder(x)
        after = fold_post_gain(model3.encoder)(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_precision_guard_measures_agreement_and_refuses_below_threshold(tmp_path):
    model, path = checkpoint(tmp_path, n_hid=32, vocab_size=512)
    pixels = images(32, 32)
    exact = reference(model, pixels)
    x = map_pixels(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255)
    with torch.no_grad():
        fold_post_gain(model.encoder)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = model.encoder.blocks[:-1](x)
        fast = model.encoder.blocks.output(hidden.float()).argmax(1).flatten(1).numpy()
    agreement = float((fast == exact).mean())
    assert 0.5 < agreement < 1, agreement  # bf16 flips some argmax of this random model, not most

    n_tokens = exact.size
    enc = TokenEncoder(
        path, device="cpu", amp_dtype="bfloat16", batch_size=8, check_tokens=n_tokens, min_agreement=agreement
    )
    got = enc.encode(pixels)
    np.testing.assert_array_equal(got, exact)  # fp32 tokens while the check runs
    assert enc.agreement == pytest.approx(agreement) and enc.info()["tokens_compared"] == n_tokens

    strict = TokenEncoder(
        path, device="cpu", amp_dtype="bfloat16", batch_size=8, check_tokens=n_tokens, min_agreement=agreement + 1e-6
    )
    with pytest.raises(RuntimeError, match=f"only {agreement:.4%} of {n_tokens} tokens"):
        strict.encode(pixels)

    # After the verdict the actor runs in autocast: tokens are the bf16 trunk's.
    after = TokenEncoder(path, device="cpu", amp_dtype="bfloat16", batch_size=8, check_tokens=1, min_agreement=0)
    after.encode(pixels[:8])
    np.testing.assert_array_equal(after.encode(pixels), fast)


def test_cpu_default_is_exact_fp32_without_a_check(tmp_path):
    model, path = checkpoint(tmp_path)
    enc = TokenEncoder(path, device="cpu")  # amp_dtype "auto": float32 on CPU
    pixels = images(4, 32)
    np.testing.assert_array_equal(enc.encode(pixels), reference(model, pixels))
    assert enc.amp is None and enc.info() == {"amp_dtype": "float32", "agreement": None, "tokens_compared": 0,
                                        "threads": 1}  # fmt: skip


@pytest.mark.slow
def test_compiled_trunk_gives_identical_tokens(tmp_path):
    model, path = checkpoint(tmp_path, n_blk_per_group=1)  # the fewest layers: inductor's C++ build dominates
    pixels = images(10, 32)
    enc = TokenEncoder(path, device="cpu", batch_size=4, compile=True)
    np.testing.assert_array_equal(enc.encode(pixels), reference(model, pixels))
