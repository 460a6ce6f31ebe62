"""The prior model: padding, embeddings, restricted logits, loss weighting, presets, KV cache."""

import math

import pytest
import torch
import torch.nn.functional as F

from training.config import OptimConfig
from training.model import IMAGE_LOSS_WEIGHT, TEXT_LOSS_WEIGHT, Prior, count_params, pad_text_ids, prior_loss
from training.optim import WarmupPlateauSchedule, make_optimizer, param_groups
from training.presets import preset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Prior(preset("tiny")).eval()


def test_per_position_padding_tokens(tiny):
    s = tiny.s
    text = tiny.pad_text([[5, 6, 7], list(range(20))])
    assert text.shape == (2, s.text_len)
    assert text[0, :3].tolist() == [5, 6, 7]
    # every empty position gets its OWN padding id: text_vocab + position
    assert text[0, 3:].tolist() == [s.text_vocab + p for p in range(3, s.text_len)]
    assert text[1].tolist() == list(range(s.text_len))  # truncated, no padding


def test_restricted_logits_shapes(tiny):
    s = tiny.s
    text = tiny.pad_text([[1, 2]] * 3)
    image = torch.randint(0, s.image_vocab, (3, s.image_len))
    text_logits, image_logits = tiny(text, image)
    # text positions 0..T-2 score only the text vocabulary (+ its T padding tokens);
    # positions T-1..T+N-2 score only the image vocabulary.
    assert text_logits.shape == (3, s.text_len - 1, s.text_vocab + s.text_len)
    assert image_logits.shape == (3, s.image_len, s.image_vocab)


def test_loss_is_weighted_and_normalised_per_modality():
    torch.manual_seed(1)
    b, t, n, vt, vi = 3, 5, 7, 11, 4
    text = torch.randint(0, vt, (b, t))  # no padding: every text target counts
    image = torch.randint(0, vi, (b, n))
    text_logits, image_logits = torch.randn(b, t - 1, vt + t), torch.randn(b, n, vi)
    out = prior_loss(text_logits, image_logits, text, image)
    # by hand: sum of per-position NLL divided by that modality's own count
    lt = -sum(F.log_softmax(text_logits[i, j], -1)[text[i, j + 1]] for i in range(b) for j in range(t - 1)) / (
        b * (t - 1)
    )
    li = -sum(F.log_softmax(image_logits[i, j], -1)[image[i, j]] for i in range(b) for j in range(n)) / (b * n)
    torch.testing.assert_close(out["loss_text"], lt)
    torch.testing.assert_close(out["loss_image"], li)
    torch.testing.assert_close(out["loss"], lt / 8 + 7 * li / 8)
    assert (TEXT_LOSS_WEIGHT, IMAGE_LOSS_WEIGHT) == (1 / 8, 7 / 8)


def test_pad_after_pad_targets_are_ignored_and_the_first_pad_is_kept():
    torch.manual_seed(2)
    t, vt, vi, n = 6, 10, 4, 5
    text = pad_text_ids([[3, 4], [1, 2, 3, 4, 5, 6]], t, vt)  # caption 1 ends after 2 tokens; caption 2 fills all
    image = torch.randint(0, vi, (2, n))
    text_logits, image_logits = torch.randn(2, t - 1, vt + t), torch.randn(2, n, vi)
    out = prior_loss(text_logits, image_logits, text, image)
    # targets of caption 1: token 4, then the FIRST pad (where the caption ends); pad->pad after that
    # are no targets. Caption 2: all 5 targets.
    kept = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3), (1, 4)]
    nll = [-F.log_softmax(text_logits[i, j], -1)[text[i, j + 1]] for i, j in kept]
    torch.testing.assert_close(out["loss_text"], sum(nll) / len(kept))
    assert out["sums"][1].item() == len(kept) and out["sums"][3].item() == 2 * n
    # changing the logits of a pad->pad position changes nothing
    other = text_logits.clone()
    other[0, 3] += 5.0
    torch.testing.assert_close(prior_loss(other, image_logits, text, image)["loss"], out["loss"])


def test_logits_are_fp32_under_bf16_autocast(tiny):
    """Appendix D: the heads compute and keep logits in fp32 even inside a 16-bit autocast region."""
    text = tiny.pad_text([[1, 2]])
    image = torch.randint(0, tiny.s.image_vocab, (1, tiny.s.image_len))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        text_logits, image_logits = tiny(text, image)
        h = tiny.hidden(text, image[:, :-1])
    assert text_logits.dtype == image_logits.dtype == torch.float32
    assert h.dtype == torch.bfloat16 or h.dtype == torch.float32  # the blocks may run in bf16
    torch.testing.assert_close(image_logits, h[:, tiny.s.text_len - 1 :].float() @ tiny.image_head.weight.T)


def test_residual_projections_are_scaled_by_depth():
    torch.manual_seed(0)
    s = preset("demo")
    scaled, plain = Prior(s), Prior(preset("demo", scaled_residual_init=False))
    expected = 0.02 / math.sqrt(2 * s.n_layer)
    for block in scaled.blocks:
        for proj in (block.attn.proj, block.mlp[2]):
            assert abs(proj.weight.std().item() - expected) < 0.1 * expected
    assert abs(plain.blocks[0].attn.proj.weight.std().item() - 0.02) < 0.002
    assert abs(scaled.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.002  # other matrices unchanged


def test_untrained_loss_is_near_uniform(tiny):
    s = tiny.s
    text = tiny.pad_text([[1, 2, 3]] * 4)
    out = tiny.loss(text, torch.randint(0, s.image_vocab, (4, s.image_len)))
    assert abs(out["loss_image"].item() - math.log(s.image_vocab)) < 0.3
    assert abs(out["loss_text"].item() - math.log(s.text_vocab + s.text_len)) < 0.3


def test_image_tokens_are_causal(tiny):
    """Changing image token j must not change any logit that predicts tokens <= j."""
    s = tiny.s
    text = tiny.pad_text([[3, 4]])
    image = torch.randint(0, s.image_vocab, (1, s.image_len))
    j = 9
    changed = image.clone()
    changed[0, j] = (image[0, j] + 1) % s.image_vocab
    _, a = tiny(text, image)
    _, b = tiny(text, changed)
    torch.testing.assert_close(a[:, : j + 1], b[:, : j + 1])  # logits predicting image tokens 0..j
    assert not torch.allclose(a[:, j + 1 :], b[:, j + 1 :])


@pytest.mark.parametrize("attention", ["sparse", "full"])
def test_flex_model_equals_sdpa_model_forward(attention):
    """attn_impl="flex" (FlexAttention's own CPU forward; column layers on transposed image states)
    gives the SDPA model's logits for every layer kind: row, column, conv (sparse) and full."""
    torch.manual_seed(0)
    sdpa = Prior(preset("tiny", attention=attention)).eval()
    flex = Prior(preset("tiny", attention=attention, attn_impl="flex")).eval()
    flex.load_state_dict(sdpa.state_dict())
    kinds = {b.attn.kind for b in sdpa.blocks}
    assert kinds == ({"row", "column", "conv"} if attention == "sparse" else {"full"})
    text = sdpa.pad_text([[3, 4, 5], [6]])
    image = torch.randint(0, sdpa.s.image_vocab, (2, sdpa.s.image_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for a, b in zip(sdpa(text, image), flex(text, image), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _dense_flex(q, k, v, block_mask, **_):
    """FlexAttention's semantics evaluated densely: its BlockMask's own mask_mod on every (q, k) pair."""
    idx = torch.arange(q.shape[-2])
    mask = block_mask.mask_mod(None, None, idx[:, None], idx[None, :])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("attention", ["sparse", "full"])
def test_flex_model_equals_sdpa_model_gradients(attention, monkeypatch):
    """Gradients of the flex path for every layer kind. CPU torch 2.13 has no FlexAttention backward
    (eager or compiled), so the fused kernel is replaced by a dense evaluation of the same BlockMask's
    mask_mod: this checks everything of the flex path but the GPU kernel itself (the block masks, the
    transposition of column layers and its inverse, the model wiring) in forward AND backward."""
    import torch.nn.attention.flex_attention as fa

    monkeypatch.setattr(fa, "flex_attention", _dense_flex)
    torch.manual_seed(0)
    sdpa = Prior(preset("tiny", attention=attention))
    flex = Prior(preset("tiny", attention=attention, attn_impl="flex"))
    flex.load_state_dict(sdpa.state_dict())
    text = sdpa.pad_text([[3, 4, 5], [6]])
    image = torch.randint(0, sdpa.s.image_vocab, (2, sdpa.s.image_len), generator=torch.Generator().manual_seed(0))
    for model in (sdpa, flex):
        model.loss(text, image)["loss"].backward()
    for (name, a), b in zip(sdpa.named_parameters(), flex.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_flex_refuses_attention_dropout():
    with pytest.raises(ValueError, match="FlexAttention has no attention dropout"):
        preset("tiny", attn_impl="flex", dropout=0.1)


def test_flops_terms_against_a_hand_count():
    """2 layers (row, then conv), d = 4, text 2, grid 2x2, kernel 3, vocab 5 + 3: n = 5 positions fed.
    Keys per query (text 1, 2; image 3, 4, 5 for both kinds, worked out from Fig. 11's rules) = 15 / 5 = 3."""
    from training.model import flops_per_token, flops_terms

    shape = dict(n_layer=2, n_head=1, head_dim=4, text_len=2, grid_h=2, grid_w=2, image_vocab=3, conv_kernel=3)
    s = preset("tiny", text_vocab=5, **shape)
    d, n = 4, 5
    blocks = 2 * n * 2 * (4 * d * d + 2 * 4 * d * d)  # 2 layers of qkv+proj (4d²) and MLP (8d²)
    heads = 2 * d * (1 * (5 + 2) + 4 * 3)  # 1 text position -> 7 logits, 4 image -> 3
    attention = 2 * 4 * d * n * 3  # 2 layers, QKᵀ + AV, 3 keys per query
    terms = flops_terms(s)
    assert terms == {
        "blocks": 3 * blocks,
        "heads": 3 * heads,
        "attention": 3 * attention,
        "total": 3 * (blocks + heads + attention),
    }
    assert flops_per_token(s) == terms["total"] / s.seq_len
    # embeddings are not in it: a bigger text vocabulary changes only the text head's term
    bigger = flops_terms(preset("tiny", text_vocab=50, **shape))
    assert bigger["total"] - terms["total"] == 3 * 2 * d * 1 * 45


def test_paper_12b_preset_on_meta_device():
    s = preset("12b")
    assert (s.n_layer, s.n_head, s.head_dim, s.d_model) == (64, 62, 64, 3968)
    assert (s.text_len, s.grid_h, s.grid_w, s.text_vocab, s.image_vocab) == (256, 32, 32, 16384, 8192)
    with torch.device("meta"):
        model = Prior(s)
    assert 11.5e9 < count_params(model) < 12.5e9


def test_1b_preset_is_at_least_1b_with_the_papers_sequence():
    """The preset bench/bench_prior_mfu.py quotes GPU MFU for must be a >=1B model of the paper's stream."""
    s = preset("1b")
    assert (s.text_len, s.grid_h, s.grid_w, s.text_vocab, s.image_vocab, s.head_dim) == (256, 32, 32, 16384, 8192, 64)
    with torch.device("meta"):
        assert 1.0e9 <= count_params(Prior(s)) < 1.5e9


def test_kv_cache_generation_equals_full_recomputation(tiny):
    text = tiny.pad_text([[1, 2, 3], [9]])
    with_cache = tiny.generate(text, top_k=5, generator=torch.Generator().manual_seed(3))
    without = tiny.generate(text, top_k=5, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert with_cache.shape == (2, tiny.s.image_len)
    assert torch.equal(with_cache, without)


def test_kv_cache_logits_match_forward(tiny):
    """Feeding a fixed image through the cache gives the same logits as one forward pass."""
    s = tiny.s
    text = tiny.pad_text([[7, 8]])
    image = torch.randint(0, s.image_vocab, (1, s.image_len))
    _, full = tiny(text, image)
    caches = [
        {"k": torch.zeros(1, s.n_head, s.seq_len, s.head_dim), "v": torch.zeros(1, s.n_head, s.seq_len, s.head_dim)}
        for _ in tiny.blocks
    ]
    x = tiny.embed(text, None)
    for block, cache in zip(tiny.blocks, caches, strict=True):
        x = block(x, cache, 0)
    steps = [tiny.image_head(tiny.ln_f(x[:, -1]))]
    for i in range(1, s.image_len):
        x = tiny.embed(None, image[:, i - 1 : i], image_start=i - 1)
        for block, cache in zip(tiny.blocks, caches, strict=True):
            x = block(x, cache, s.text_len + i - 1)
        steps.append(tiny.image_head(tiny.ln_f(x[:, -1])))
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-4, atol=1e-5)


def test_weight_decay_skips_gains_biases_embeddings(tiny):
    decay, no_decay = param_groups(tiny, 0.045)
    decayed = {id(p) for p in decay["params"]}
    assert decay["weight_decay"] == 0.045 and no_decay["weight_decay"] == 0.0
    assert id(tiny.blocks[0].attn.qkv.weight) in decayed and id(tiny.image_head.weight) in decayed
    for p in (tiny.blocks[0].ln1.weight, tiny.blocks[0].attn.qkv.bias, tiny.text_emb.weight, tiny.row_emb.weight):
        assert id(p) not in decayed
    opt = make_optimizer(tiny, OptimConfig())
    assert opt.defaults["betas"] == (0.9, 0.96) and opt.defaults["eps"] == 1e-8


def test_warmup_then_halving_on_plateau_at_most_max_times():
    model = torch.nn.Linear(2, 2)
    cfg = OptimConfig(lr=1.0, warmup_steps=4, plateau_patience=1, max_halvings=2)
    sched = WarmupPlateauSchedule(make_optimizer(model, cfg), cfg)
    lrs = []
    for _ in range(5):
        lrs.append(sched.apply())
        sched.step()
    assert lrs == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert not sched.observe(2.0)  # improvement from inf
    assert sched.observe(2.0)  # plateau -> halve
    assert sched.apply() == 0.5
    assert not sched.observe(1.0)  # real improvement: no halving
    assert sched.observe(1.0) and sched.apply() == 0.25
    assert not sched.observe(1.0) and not sched.observe(1.0)  # at most max_halvings
    assert sched.apply() == 0.25
    restored = WarmupPlateauSchedule(make_optimizer(model, cfg), cfg)
    restored.load_state_dict(sched.state_dict())
    assert restored.apply() == 0.25 and restored.state_dict() == sched.state_dict()


@pytest.mark.parametrize("name", ["prior_tiny", "prior_demo"])
def test_configs_load_and_every_field_is_documented(name):
    from common.config import _field_docs, parse_cli
    from training.config import PriorTrainConfig

    cfg = parse_cli(PriorTrainConfig, ["--config", f"configs/{name}.toml"])
    assert cfg.run.name and cfg.model.preset in ("tiny", "demo")
    for field, _, help_text, _ in _field_docs(PriorTrainConfig):
        assert help_text.strip(), f"{field} has no documentation"


def test_gradient_accumulation_over_unequal_micro_batches_equals_one_large_batch():
    """grad_accum = 2 micro-batches whose captions (real text targets) differ a lot in length: the
    update normalises by the real target count of BOTH micro-batches, so gradients and losses are
    those of one batch of 6 (with per-micro-batch means, the short-caption batch would weigh more)."""
    import contextlib

    from harness.metrics import StepTimer
    from training.loop import accumulate_gradients
    from training.model import losses_from_sums

    torch.manual_seed(0)
    model = Prior(preset("tiny"))
    s = model.s
    g = torch.Generator().manual_seed(1)
    lengths = [1, 1, 2, 7, 8, 8]  # micro-batch 1: short captions, micro-batch 2: long ones
    text = model.pad_text([torch.randint(0, s.text_vocab, (n,), generator=g).tolist() for n in lengths])
    image = torch.randint(0, s.image_vocab, (6, s.image_len), generator=g)
    assert model.pad_text([[1]]).shape[1] == 8 and lengths[0] < lengths[-1]

    whole = prior_loss(*model(text, image), text, image)
    whole["loss"].backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)

    micro = iter([{"text": text[:3], "image": image[:3]}, {"text": text[3:], "image": image[3:]}])
    seen = []
    sums = accumulate_gradients(
        model,
        micro,
        2,
        None,
        contextlib.nullcontext,
        StepTimer(),
        "cpu",
        s.seq_len,
        on_batch=seen.append,
        text_vocab=s.text_vocab,
    )
    assert len(seen) == 2
    got = losses_from_sums(sums.tolist())
    torch.testing.assert_close(
        torch.tensor([got["loss"], got["loss_text"], got["loss_image"]]),
        torch.stack([whole["loss"], whole["loss_text"], whole["loss_image"]]).detach(),
        rtol=1e-5,
        atol=1e-6,
    )
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-6)


def test_ema_applies_its_decay_once_every_n_updates():
    """Paper B.2: decay 0.99 once every 25 updates; here 0.5 every 3 so that each step is visible."""
    from harness.worker import ModelEMA

    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = ModelEMA(model, 0.5, every=3)
    seen = []
    for value in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
        seen.append(ema.module.weight[0, 0].item())
    assert seen == [0.0, 0.0, 1.5, 1.5, 1.5, 3.75]  # 0.5·0 + 0.5·3, then 0.5·1.5 + 0.5·6
    assert ModelEMA(model, 0.99).every == 1  # the default (the dVAE's) averages at every update
    with pytest.raises(ValueError):
        ModelEMA(model, 0.99, every=0)
    assert OptimConfig().ema_every == 25 and OptimConfig().ema_decay == 0.99


def test_attention_impl_auto_is_flex_on_gpus_and_sdpa_elsewhere():
    from training.driver import attention_impl

    assert attention_impl("auto", gpus=True, dropout=0.0) == "flex"
    assert attention_impl("auto", gpus=False, dropout=0.0) == "sdpa"
    assert attention_impl("auto", gpus=True, dropout=0.1) == "sdpa"  # flex has no attention dropout
    assert attention_impl("sdpa", gpus=True, dropout=0.0) == "sdpa"
    with pytest.raises(ValueError, match="needs GPU workers"):
        attention_impl("flex", gpus=False, dropout=0.0)


def _mask_ops_in_compiled_graphs(model, text, image) -> int:
    """Comparison ops (what mask building is made of; the model's own forward has none) in the graphs
    torch.compile captures for model's forward."""
    import operator

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend)
    for _ in range(2):
        torch.testing.assert_close(compiled(text, image)[1], model(text, image)[1])
    torch._dynamo.reset()
    comparisons = (operator.le, operator.ge, operator.eq, torch.le, torch.ge)
    return sum(n.target in comparisons for g in graphs for n in g.graph.nodes)


def test_masks_are_built_outside_compiled_code(monkeypatch):
    """Under torch.compile the forward fetches its masks eagerly (torch.compiler.disable), so the lru
    caches hold and no mask is rebuilt inside the graph at every step; without it, dynamo traces
    through the cached function and the mask-building ops land in the graph."""
    torch.manual_seed(0)
    model = Prior(preset("tiny"))
    text = model.pad_text([[1, 2]])
    image = torch.randint(0, model.s.image_vocab, (1, model.s.image_len))
    assert _mask_ops_in_compiled_graphs(model, text, image) == 0
    monkeypatch.setattr(Prior, "attention_masks", Prior.attention_masks.__wrapped__)  # the undecorated method
    assert _mask_ops_in_compiled_graphs(model, text, image) > 0
