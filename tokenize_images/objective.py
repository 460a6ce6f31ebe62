"""The dVAE training objective and schedules (DALL-E paper, section 2.1 and appendix A.2), as pure functions.

loss = ( logit-Laplace NLL of the pixels  +  beta * KL(q(z|x) || uniform) ) / (3 * H * W)

Both terms are summed per image, as in the ELBO, and then divided by the number of pixel values so the
loss reads in nats per sub-pixel whatever the image size; the ratio between the terms (what beta weighs)
is the ELBO's. The decoder sees a Gumbel-softmax relaxation of the encoder's categorical at temperature
tau; at test time it sees hard one-hots (argmax tokens).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tokenize_images.config import ScheduleConfig


def cosine(step: float, start: float, end: float, steps: float) -> float:
    """Half-cosine from `start` (step 0) to `end` (step >= steps); works increasing or decreasing."""
    if steps <= 0 or step >= steps:
        return end
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * max(step, 0) / steps))


def schedules(step: int, s: ScheduleConfig | None = None) -> dict[str, float]:
    """beta, tau and lr at `step` (defaults: the paper's). `s.scale` shrinks every schedule's length."""
    s = s or ScheduleConfig()
    return {
        "beta": cosine(step, 0.0, s.beta_max, s.beta_steps * s.scale),
        "tau": cosine(step, s.tau_start, s.tau_end, s.tau_steps * s.scale),
        "lr": cosine(step, s.lr_start, s.lr_end, s.lr_steps * s.scale),
    }


def gumbel_softmax(
    logits: torch.Tensor, tau: float, generator: torch.Generator | None = None, dim: int = 1
) -> torch.Tensor:
    """Relaxed one-hot samples along `dim` (the codebook axis)."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    gumbel = -torch.log((-torch.log(u.clamp_min(1e-10))).clamp_min(1e-10))
    return F.softmax((logits + gumbel) / tau, dim=dim)


def logit_laplace_nll(x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """Per-image NLL (summed over pixels) of mapped pixels x in (0,1) under the logit-Laplace.

    stats[:, :3] = mu, stats[:, 3:] = ln b. Density: 1 / (2 b x (1-x)) * exp(-|logit(x) - mu| / b).
    """
    mu, log_b = stats[:, :3].float(), stats[:, 3:].float()
    x = x.float()
    nll = math.log(2.0) + log_b + torch.log(x) + torch.log1p(-x) + (torch.logit(x) - mu).abs() * torch.exp(-log_b)
    return nll.flatten(1).sum(1)


def kl_to_uniform(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Per-image KL(q || uniform over the codebook), summed over latent positions. q = softmax(logits)."""
    log_q = F.log_softmax(logits.float(), dim=dim)
    kl = (log_q.exp() * log_q).sum(dim) + math.log(logits.shape[dim])
    return kl.flatten(1).sum(1)


def elbo_loss(x: torch.Tensor, stats: torch.Tensor, logits: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """Mean over the batch of the normalised negative ELBO; also returns its parts for logging."""
    dims = x[0].numel()
    nll = logit_laplace_nll(x, stats).mean() / dims
    kl = kl_to_uniform(logits).mean() / dims
    return {"loss": nll + beta * kl, "nll": nll, "kl": kl}


def codebook_usage(tokens: torch.Tensor, vocab_size: int) -> dict[str, float]:
    """Perplexity of the code histogram and the fraction of the codebook in use."""
    return usage_from_counts(torch.bincount(tokens.flatten().long(), minlength=vocab_size))


def usage_from_counts(counts) -> dict[str, float]:
    counts = torch.as_tensor(counts).double()
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {"perplexity": math.exp(entropy), "used_fraction": (counts > 0).float().mean().item()}
