import math

import pytest
import torch

from tokenize_images import objective as obj
from tokenize_images.config import ScheduleConfig


def test_schedules_follow_the_paper_endpoints():
    s0, s_end = obj.schedules(0), obj.schedules(2_000_000)
    assert s0 == {"beta": 0.0, "tau": 1.0, "lr": 1e-4}
    assert s_end["beta"] == 6.6 and s_end["tau"] == 1 / 16 and s_end["lr"] == 1.25e-6
    assert obj.schedules(2_500)["beta"] == pytest.approx(3.3)  # half way along a cosine
    assert obj.schedules(5_000)["beta"] == 6.6
    assert obj.schedules(75_000)["tau"] == pytest.approx((1 + 1 / 16) / 2)
    assert obj.schedules(600_000)["lr"] == pytest.approx((1e-4 + 1.25e-6) / 2)
    betas = [obj.schedules(s)["beta"] for s in range(0, 6000, 250)]
    assert betas == sorted(betas)  # monotone up
    taus = [obj.schedules(s)["tau"] for s in range(0, 200_000, 5000)]
    assert taus == sorted(taus, reverse=True)  # monotone down


def test_schedule_scale_shrinks_every_schedule():
    short = ScheduleConfig(scale=0.1)
    assert obj.schedules(250, short)["beta"] == pytest.approx(obj.schedules(2_500)["beta"])
    assert obj.schedules(60_000, short)["lr"] == pytest.approx(obj.schedules(600_000)["lr"])
    assert obj.schedules(15_000, short)["tau"] == 1 / 16


def test_logit_laplace_nll_matches_the_density():
    x = torch.tensor([0.3, 0.5, 0.8]).view(1, 3, 1, 1)
    mu, log_b = torch.tensor([0.1, -0.2, 0.5]), torch.tensor([0.0, -1.0, 0.3])
    stats = torch.cat([mu, log_b]).view(1, 6, 1, 1)
    expected = 0.0
    for xi, m, lb in zip(x.flatten().tolist(), mu.tolist(), log_b.tolist(), strict=True):
        b = math.exp(lb)
        density = 1 / (2 * b * xi * (1 - xi)) * math.exp(-abs(math.log(xi / (1 - xi)) - m) / b)
        expected += -math.log(density)
    assert obj.logit_laplace_nll(x, stats).item() == pytest.approx(expected, rel=1e-5)


def test_kl_to_uniform_is_zero_for_uniform_and_log_k_for_one_hot():
    uniform = torch.zeros(2, 16, 3, 3)
    assert obj.kl_to_uniform(uniform).abs().max().item() < 1e-5
    peaked = torch.full((1, 16, 1, 1), -1e4)
    peaked[0, 3] = 0
    assert obj.kl_to_uniform(peaked).item() == pytest.approx(math.log(16), rel=1e-5)


def test_gumbel_softmax_is_a_distribution_that_hardens_as_tau_falls():
    logits = torch.randn(4, 32, 2, 2, generator=torch.Generator().manual_seed(0))
    soft = obj.gumbel_softmax(logits, 1.0, torch.Generator().manual_seed(1))
    hard = obj.gumbel_softmax(logits, 1 / 16, torch.Generator().manual_seed(1))
    torch.testing.assert_close(soft.sum(1), torch.ones(4, 2, 2))
    assert hard.max(1).values.mean() > soft.max(1).values.mean()
    assert torch.equal(hard.argmax(1), soft.argmax(1))  # same noise: the temperature does not move argmax


def test_elbo_beta_weighs_the_kl():
    x = torch.full((2, 3, 4, 4), 0.5)
    stats, logits = torch.zeros(2, 6, 4, 4), torch.randn(2, 8, 1, 1)
    a, b = obj.elbo_loss(x, stats, logits, 0.0), obj.elbo_loss(x, stats, logits, 2.0)
    assert a["loss"].item() == pytest.approx(a["nll"].item())
    assert b["loss"].item() == pytest.approx(a["nll"].item() + 2.0 * a["kl"].item())


def test_codebook_usage():
    assert obj.codebook_usage(torch.tensor([1, 1, 1]), 4) == {"perplexity": pytest.approx(1.0), "used_fraction": 0.25}
    u = obj.codebook_usage(torch.arange(8), 8)
    assert u["perplexity"] == pytest.approx(8.0) and u["used_fraction"] == 1.0


def test_ema_decay_warms_up_to_the_paper_value():
    from tokenize_images.dvae_training import ema_decay

    assert ema_decay(0, 0.999) == 0.1
    assert ema_decay(290, 0.999) == pytest.approx(291 / 300)
    assert ema_decay(100_000, 0.999) == 0.999
