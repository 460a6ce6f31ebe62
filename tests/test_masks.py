"""Attention masks against the paper's Fig. 11 (text length 6, 4x4 grid, conv kernel 3), written out
by hand below, and the cached SDPA masks against a dense loop-built reference."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from orchestration.print_mask import main
from training.masks import cached_mask, dense_mask, layer_kinds

TEXT = [  # text rows: causal over the 6 text tokens, no image keys
    "1000000000000000000000",
    "1100000000000000000000",
    "1110000000000000000000",
    "1111000000000000000000",
    "1111100000000000000000",
    "1111110000000000000000",
]
# Image rows: all 6 text keys, then the 16 image keys (raster order).
ROW = [
    "111111" + "1000000000000000",
    "111111" + "1100000000000000",
    "111111" + "1110000000000000",
    "111111" + "1111000000000000",
    "111111" + "1111100000000000",
    "111111" + "0111110000000000",
    "111111" + "0011111000000000",
    "111111" + "0001111100000000",
    "111111" + "0000111110000000",
    "111111" + "0000011111000000",
    "111111" + "0000001111100000",
    "111111" + "0000000111110000",
    "111111" + "0000000011111000",
    "111111" + "0000000001111100",
    "111111" + "0000000000111110",
    "111111" + "0000000000011111",
]
COLUMN = [
    "111111" + "1000000000000000",
    "111111" + "0100000000000000",
    "111111" + "0010000000000000",
    "111111" + "0001000000000000",
    "111111" + "1000100000000000",
    "111111" + "0100010000000000",
    "111111" + "0010001000000000",
    "111111" + "0001000100000000",
    "111111" + "1000100010000000",
    "111111" + "0100010001000000",
    "111111" + "0010001000100000",
    "111111" + "0001000100010000",
    "111111" + "1000100010001000",
    "111111" + "0100010001000100",
    "111111" + "0010001000100010",
    "111111" + "0001000100010001",
]
CONV = [
    "111111" + "1000000000000000",
    "111111" + "1100000000000000",
    "111111" + "0110000000000000",
    "111111" + "1011000000000000",
    "111111" + "1101100000000000",
    "111111" + "1110110000000000",
    "111111" + "0111011000000000",
    "111111" + "0011101100000000",
    "111111" + "0001110110000000",
    "111111" + "0000111011000000",
    "111111" + "0000011101100000",
    "111111" + "0000001110110000",
    "111111" + "0000000111011000",
    "111111" + "0000000011101100",
    "111111" + "0000000001110110",
    "111111" + "0000000000111011",
]


@pytest.mark.parametrize("kind,image_rows", [("row", ROW), ("column", COLUMN), ("conv", CONV)])
def test_cli_prints_fig11(kind, image_rows, capsys):
    main(["--kind", kind, "--text-len", "6", "--grid", "4", "--kernel", "3"])
    assert capsys.readouterr().out.split() == TEXT + image_rows


@pytest.mark.slow  # a subprocess that imports torch: ~2-3 s
def test_cli_runs_as_a_module():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestration.print_mask",
            "--kind",
            "conv",
            "--text-len",
            "6",
            "--grid",
            "4",
            "--kernel",
            "3",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == TEXT + CONV


def test_full_is_plain_causal():
    m = dense_mask("full", 6, 4, 4)
    assert torch.equal(m, torch.ones(22, 22, dtype=torch.bool).tril())


def test_layer_pattern_follows_the_paper():
    kinds = layer_kinds(10)
    # layer i (1-based) in [1, L-1]: column iff (i - 2) % 4 == 0; layer L: conv
    assert kinds == ["row", "column", "row", "row", "row", "column", "row", "row", "row", "conv"]
    assert layer_kinds(64).count("column") == 16 and layer_kinds(64)[-1] == "conv"
    assert layer_kinds(5, "full") == ["full"] * 5


def reference_mask(kind, text_len, gh, gw, kernel):
    """Loop-built from the definitions in 2-D terms, independent of training.masks.allowed."""
    n = text_len + gh * gw
    m = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(q + 1):
            if k < text_len:
                m[q, k] = True
                continue
            if q < text_len:
                continue
            qi, ki = q - text_len, k - text_len
            if kind == "full":
                ok = True
            elif kind == "row":
                ok = qi - ki <= gw
            elif kind == "column":
                ok = ki % gw == qi % gw
            else:  # conv: offsets (dr rows up, dc columns) on raster indices, which wraps at row ends
                half = kernel // 2
                ok = any(qi - dr * gw + dc == ki for dr in range(half + 1) for dc in range(-half, half + 1))
            m[q, k] = ok
    return m


@pytest.mark.parametrize("kind", ["row", "column", "conv", "full"])
@pytest.mark.parametrize("text_len,gh,gw,kernel", [(6, 4, 4, 3), (3, 5, 7, 5), (8, 6, 6, 11)])
def test_vectorised_masks_match_loop_reference(kind, text_len, gh, gw, kernel):
    assert torch.equal(dense_mask(kind, text_len, gh, gw, kernel), reference_mask(kind, text_len, gh, gw, kernel))


@pytest.mark.parametrize("kind", ["row", "column", "conv"])
def test_sdpa_with_cached_mask_equals_dense_attention(kind):
    torch.manual_seed(0)
    text_len, gh, gw, kernel = 5, 6, 6, 5
    n = text_len + gh * gw
    q, k, v = (torch.randn(2, 3, n, 8) for _ in range(3))
    mask = cached_mask(kind, text_len, gh, gw, kernel, "cpu")
    assert mask is cached_mask(kind, text_len, gh, gw, kernel, "cpu")  # built once, then reused
    fast = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    ref_mask = reference_mask(kind, text_len, gh, gw, kernel)
    scores = (q @ k.transpose(-1, -2)) / 8**0.5
    dense = scores.masked_fill(~ref_mask, float("-inf")).softmax(-1) @ v
    torch.testing.assert_close(fast, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["row", "column", "conv"])
def test_flex_plan_equals_dense_attention(kind):
    """FlexAttention (attn_impl="flex") against the loop reference, over a prefix shorter than the
    whole sequence, as in training (the last image token is input only); column layers run on the
    transposed image states. CPU torch runs flex's forward only (no backward), unfused; the GPU path
    compiles the same mask_mod."""
    from training.masks import flex_plan
    from training.model import flex_attend

    torch.manual_seed(0)
    text_len, gh, gw, kernel = 5, 6, 6, 5
    n = text_len + gh * gw - 1
    q, k, v = (torch.randn(2, 3, n, 8) for _ in range(3))
    plan = flex_plan(kind, text_len, gh, gw, kernel, "cpu", length=n)
    assert plan is flex_plan(kind, text_len, gh, gw, kernel, "cpu", length=n)  # one per kind and length
    assert plan.block_mask.seq_lengths == (n, n)
    out = flex_attend(q, k, v, plan)
    ref_mask = reference_mask(kind, text_len, gh, gw, kernel)[:n, :n]
    dense = ((q @ k.transpose(-1, -2)) / 8**0.5).masked_fill(~ref_mask, float("-inf")).softmax(-1) @ v
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)


def test_column_order_is_column_major_and_a_prefix_maps_onto_a_prefix():
    from training.masks import column_order

    # text 2, grid 2x3: raster image positions 2..7 = (r, c) row-major; column-major = c0: 2, 5; c1: 3, 6; ...
    assert column_order(2, 2, 3).tolist() == [0, 1, 2, 5, 3, 6, 4, 7]
    assert column_order(2, 2, 3, length=7).tolist() == [0, 1, 2, 5, 3, 6, 4]  # training: last token dropped


def test_transposed_column_layers_skip_blocks_like_row_layers():
    """In raster order a column layer's mask touches every block under the diagonal; on transposed
    image states it is block-diagonal. At the paper's shape (text 256, 32x32, 128-wide blocks) the
    column plan must compute no more blocks than the row plan does."""
    from training.masks import flex_plan

    n = 256 + 32 * 32 - 1

    def computed_blocks(plan):
        bm = plan.block_mask
        return int(bm.kv_num_blocks.sum() + (bm.full_kv_num_blocks.sum() if bm.full_kv_num_blocks is not None else 0))

    column = computed_blocks(flex_plan("column", 256, 32, 32, 11, "cpu", n))
    row = computed_blocks(flex_plan("row", 256, 32, 32, 11, "cpu", n))
    causal_blocks = sum(range(1, (n + 127) // 128 + 1))
    assert column <= row < causal_blocks, (column, row, causal_blocks)
