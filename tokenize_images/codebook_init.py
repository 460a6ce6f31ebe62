"""Data-dependent codebook init for short dVAE runs (not in the DALL-E paper; off by default).

The paper trains for 3M updates at batch 512, long enough for codes to split off one by one. A run of a
few hundred updates on a CPU (the README demo) collapses instead: at init the encoder's logits barely
vary across patches (Gumbel noise dominates them), the decoder learns from codes that say nothing about
the image, and every foreground colour ends on one grey code (docs/tokens.md has the sweep).

The fix borrows the usual VQ-VAE codebook init: run the first images through the encoder, cluster the
features its output conv sees with k-means, and set that 1x1 conv so that its argmax is the nearest
centre. Since argmin_c |h - c|^2 = argmax_c (2c.h - |c|^2), that is exactly a 1x1 conv with weight 2s*c
and bias -s|c|^2; the scale s sets the median logit margin between the nearest and second centres, so
the code choice starts well above the Gumbel noise. train_dvae then holds the encoder still for a few
updates so the decoder learns what each code means before the encoder may move (CodebookConfig).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def encoder_features(encoder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B,3,S,S) mapped pixels -> (B*g*g, C): the features the encoder's output conv sees (after its ReLU)."""
    blocks = encoder.blocks
    h = blocks.output.relu(blocks[:-1](x))
    return h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])


@torch.no_grad()
def kmeans(points: torch.Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means++ seeding, then Lloyd iterations: (N, C) -> (k, C) centres. An empty cluster keeps its centre."""
    n = points.shape[0]
    centres = points[torch.randint(0, n, (1,), generator=generator, device=points.device)]
    dist = torch.cdist(points, centres).squeeze(1) ** 2
    for _ in range(1, k):
        total = dist.sum()
        probs = dist / total if total > 0 else torch.full_like(dist, 1.0 / n)
        nxt = points[torch.multinomial(probs, 1, generator=generator)]
        centres = torch.cat([centres, nxt])
        dist = torch.minimum(dist, torch.cdist(points, nxt).squeeze(1) ** 2)
    for _ in range(iters):
        assign = torch.cdist(points, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return centres


@torch.no_grad()
def init_codebook_from_data(
    encoder: torch.nn.Module, x: torch.Tensor, margin: float, seed: int = 0
) -> dict[str, float]:
    """Point the encoder's output conv at k-means centres of `x`'s features (see the module docstring).

    `x`: (B,3,S,S) mapped pixels, B*g*g >= the codebook size. Returns figures worth logging: the codes the
    init assigns to some position of `x`, and the logit scale it chose."""
    conv = encoder.blocks.output.conv
    vocab = conv.out_channels
    feats = encoder_features(encoder, x).float()
    if feats.shape[0] < vocab:
        raise ValueError(
            f"k-means codebook init needs at least {vocab} positions, got {feats.shape[0]}: give it more images"
        )
    # The generator lives where the features do: torch.multinomial refuses a CPU generator for GPU tensors.
    centres = kmeans(feats, vocab, generator=torch.Generator(device=feats.device).manual_seed(seed))
    d = torch.cdist(feats, centres) ** 2
    nearest_two = d.topk(2, dim=1, largest=False).values
    gap = (nearest_two[:, 1] - nearest_two[:, 0]).median().clamp_min(1e-6)
    scale = margin / gap
    conv.weight.copy_((2 * scale * centres)[:, :, None, None].to(conv.weight.dtype))
    conv.bias.copy_((-scale * (centres**2).sum(1)).to(conv.bias.dtype))
    return {"kmeans_codes_used": float(torch.unique(d.argmin(1)).numel()), "kmeans_scale": float(scale)}
