"""The DALL-E transformer prior, readable in one sitting (paper §2.2 and appendix B.1).

One decoder-only stream: T text tokens (lowercased caption as BPE), then H·W image tokens.
  * Every text position has its own learned padding token (id text_vocab + position), used where
    the caption has ended; the model also learns to predict it, so it learns where captions end.
  * Text tokens get learned positional embeddings; image tokens get broadcast row + column ones.
  * Layer kinds follow the paper (training.masks.layer_kinds): row / column sparse attention and a
    final causal convolutional layer, or plain causal attention everywhere (attention="full").
  * Logits are restricted: text positions score only the text vocabulary (+ padding tokens),
    image positions only the image vocabulary. Two heads over one residual stream.
  * Loss = 1/8 · CE(text) + 7/8 · CE(image), each averaged over its own REAL targets: a text target
    that is padding after padding (pad -> pad) is no target (predicting the first padding token, where
    the caption ends, is). The training loop normalises by the counts of the whole update (every
    micro-batch of every rank), so the weights are the paper's whatever the caption lengths.
  * Logits are computed and kept in fp32 (paper appendix D: 16-bit logits shifted the training curve).
  * Residual projections are initialised with std 0.02/sqrt(2L) (GPT-2; measured on the demo,
    docs/prior.md).

Generation (`generate`) uses a per-layer KV cache: each new token costs one query against the
cached keys, O(n), with the matching row of the layer's cached mask.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.attention.flex_attention as _flex
import torch.nn.functional as F

from training.masks import cached_mask, flex_plan, layer_kinds, mean_keys

ATTENTIONS = ("sparse", "full")  # = training.config.ModelConfig's Literals (tests/test_config_choices.py)
ATTN_IMPLS = ("sdpa", "flex")
TEXT_LOSS_WEIGHT = 1.0 / 8.0
IMAGE_LOSS_WEIGHT = 7.0 / 8.0


@dataclass
class PriorShape:
    n_layer: int
    n_head: int
    head_dim: int
    text_len: int
    grid_h: int
    grid_w: int
    text_vocab: int  # BPE vocabulary (padding tokens are added on top, one per text position)
    image_vocab: int
    attention: str = "sparse"  # "sparse" (paper pattern) | "full" (causal everywhere)
    conv_kernel: int = 11
    attn_impl: str = "sdpa"  # "sdpa" (cached boolean masks) | "flex" (FlexAttention block masks)
    mlp_ratio: int = 4
    dropout: float = 0.0
    scaled_residual_init: bool = True  # residual projections at std 0.02/sqrt(2L) (GPT-2)

    def __post_init__(self):
        # Attention.forward and layer_kinds treat anything but "flex" / "full" as the default: refuse here.
        for name, value, allowed in (
            ("attention", self.attention, ATTENTIONS),
            ("attn_impl", self.attn_impl, ATTN_IMPLS),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}")
        if self.attn_impl == "flex" and self.dropout > 0 and self.attention != "full":
            # FlexAttention has no attention-probability dropout: refuse rather than silently drop it.
            raise ValueError("dropout > 0 needs attn_impl='sdpa' (FlexAttention has no attention dropout)")

    @property
    def d_model(self) -> int:
        return self.n_head * self.head_dim

    @property
    def image_len(self) -> int:
        return self.grid_h * self.grid_w

    @property
    def seq_len(self) -> int:
        return self.text_len + self.image_len


def pad_text_ids(ids: list[list[int]], text_len: int, text_vocab: int) -> torch.Tensor:
    """BPE ids per caption -> [B, text_len], truncated, and padded with the per-position padding token
    (id text_vocab + position) wherever the caption has ended. The one place this rule lives."""
    out = torch.arange(text_len).add(text_vocab).repeat(len(ids), 1)
    for i, row in enumerate(ids):
        row = row[:text_len]
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


class Attention(nn.Module):
    def __init__(self, s: PriorShape, kind: str):
        super().__init__()
        self.s, self.kind = s, kind
        self.qkv = nn.Linear(s.d_model, 3 * s.d_model)
        self.proj = nn.Linear(s.d_model, s.d_model)

    def mask(self, device: torch.device) -> torch.Tensor:
        s = self.s
        return cached_mask(self.kind, s.text_len, s.grid_h, s.grid_w, s.conv_kernel, str(device))

    def forward(self, x: torch.Tensor, cache: dict | None = None, start: int = 0, mask=None) -> torch.Tensor:
        """`mask`: this layer kind's entry of Prior.attention_masks (built outside compiled code)."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.s.n_head, self.s.head_dim).permute(2, 0, 3, 1, 4)
        if cache is not None:  # generation: write this chunk's keys/values, attend to everything so far
            cache["k"][:, :, start : start + n] = k
            cache["v"][:, :, start : start + n] = v
            k, v = cache["k"][:, :, : start + n], cache["v"][:, :, : start + n]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask(x.device)[start : start + n, : start + n])
        elif self.kind == "full":  # FlashAttention-capable on GPU
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self._p())
        elif self.s.attn_impl == "flex":
            s = self.s
            plan = mask or flex_plan(self.kind, s.text_len, s.grid_h, s.grid_w, s.conv_kernel, str(x.device), n)
            y = flex_attend(q, k, v, plan)
        else:
            mask = self.mask(x.device)[:n, :n] if mask is None else mask
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self._p())
        return self.proj(y.transpose(1, 2).reshape(b, n, -1))

    def _p(self) -> float:
        return self.s.dropout if self.training else 0.0


def flex_attend(q, k, v, plan, kernel=None):
    """FlexAttention of one layer with its FlexPlan: column layers run on the transposed image states
    (q, k, v permuted into column-major order, the output permuted back). `kernel` defaults to
    flex_attention; tests pass a dense reference to check the permutations' gradients on CPU."""
    kernel = kernel or _flex.flex_attention  # looked up at call time (module attribute): tests can swap it
    if plan.order is None:
        return kernel(q, k, v, block_mask=plan.block_mask)
    y = kernel(q[:, :, plan.order], k[:, :, plan.order], v[:, :, plan.order], block_mask=plan.block_mask)
    return y[:, :, plan.inverse]


class Block(nn.Module):
    def __init__(self, s: PriorShape, kind: str):
        super().__init__()
        self.ln1 = nn.LayerNorm(s.d_model)
        self.attn = Attention(s, kind)
        self.ln2 = nn.LayerNorm(s.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(s.d_model, s.mlp_ratio * s.d_model),
            nn.GELU(),
            nn.Linear(s.mlp_ratio * s.d_model, s.d_model),
            nn.Dropout(s.dropout),
        )

    def forward(self, x, cache=None, start=0, masks=None):
        x = x + self.attn(self.ln1(x), cache, start, None if masks is None else masks[self.attn.kind])
        return x + self.mlp(self.ln2(x))


class Prior(nn.Module):
    def __init__(self, s: PriorShape):
        super().__init__()
        self.s = s
        d = s.d_model
        self.text_emb = nn.Embedding(s.text_vocab + s.text_len, d)  # + one padding token per position
        self.text_pos = nn.Embedding(s.text_len, d)
        self.image_emb = nn.Embedding(s.image_vocab, d)
        self.row_emb = nn.Embedding(s.grid_h, d)
        self.col_emb = nn.Embedding(s.grid_w, d)
        self.blocks = nn.ModuleList(Block(s, kind) for kind in layer_kinds(s.n_layer, s.attention))
        self.ln_f = nn.LayerNorm(d)
        self.text_head = nn.Linear(d, s.text_vocab + s.text_len, bias=False)  # restricted logits:
        self.image_head = nn.Linear(d, s.image_vocab, bias=False)  # one head per modality
        self.apply(self._init)
        if s.scaled_residual_init:  # each block adds two residual branches: 2L in all (GPT-2 / nanoGPT)
            for block in self.blocks:
                for proj in (block.attn.proj, block.mlp[2]):
                    nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * s.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def pad_text(self, ids: list[list[int]]) -> torch.Tensor:
        """BPE ids (already truncated or not) -> [B, T] with per-position padding tokens."""
        return pad_text_ids(ids, self.s.text_len, self.s.text_vocab)

    def embed(self, text: torch.Tensor | None, image: torch.Tensor | None, image_start: int = 0) -> torch.Tensor:
        """Embeddings of a text chunk and/or an image chunk beginning at raster index image_start."""
        parts = []
        if text is not None:
            parts.append(self.text_emb(text) + self.text_pos(torch.arange(text.shape[1], device=text.device)))
        if image is not None:
            idx = torch.arange(image_start, image_start + image.shape[1], device=image.device)
            parts.append(self.image_emb(image) + self.row_emb(idx // self.s.grid_w) + self.col_emb(idx % self.s.grid_w))
        return torch.cat(parts, dim=1)

    @torch.compiler.disable
    def attention_masks(self, device: torch.device, n: int) -> dict:
        """{layer kind: what its attention needs at length n}: a cached boolean mask (sdpa) or a cached
        FlexPlan (flex), one per kind, shared by every layer of that kind. Run eagerly even inside a
        compiled forward (torch.compiler.disable), so the lru caches hold and nothing is rebuilt per step."""
        s, out = self.s, {}
        for kind in {block.attn.kind for block in self.blocks} - {"full"}:
            if s.attn_impl == "flex":
                out[kind] = flex_plan(kind, s.text_len, s.grid_h, s.grid_w, s.conv_kernel, str(device), n)
            else:
                out[kind] = cached_prefix_mask(kind, s.text_len, s.grid_h, s.grid_w, s.conv_kernel, str(device), n)
        out["full"] = None
        return out

    def hidden(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        masks = self.attention_masks(text.device, text.shape[1] + image.shape[1])
        x = self.embed(text, image)
        for block in self.blocks:
            x = block(x, masks=masks)
        return self.ln_f(x)

    def logits(self, head: nn.Linear, h: torch.Tensor) -> torch.Tensor:
        """A head in fp32 whatever the autocast or FSDP2 parameter dtype (paper appendix D)."""
        with torch.autocast(h.device.type, enabled=False):
            return F.linear(h.float(), head.weight.float())

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Restricted logits: (text [B, T-1, text_vocab+T], image [B, N, image_vocab]).

        Position t predicts token t+1: text positions 0..T-2 predict text, positions T-1..T+N-2
        predict the image tokens. The last image token is input only (nothing follows it)."""
        t = self.s.text_len
        h = self.hidden(text, image[:, :-1])
        return self.logits(self.text_head, h[:, : t - 1]), self.logits(self.image_head, h[:, t - 1 :])

    def loss(self, text: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return prior_loss(*self(text, image), text, image)

    # --- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        text: torch.Tensor,
        temperature: float = 1.0,
        top_k: int = 0,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Sample [B, H·W] image tokens for padded text [B, T]. use_cache=False recomputes the
        whole prefix for every token (the reference the KV cache is tested against)."""
        s, b = self.s, text.shape[0]
        image = torch.zeros(b, 0, dtype=torch.long, device=text.device)
        caches = (
            [
                {
                    "k": text.new_zeros((b, s.n_head, s.seq_len, s.head_dim), dtype=torch.float),
                    "v": text.new_zeros((b, s.n_head, s.seq_len, s.head_dim), dtype=torch.float),
                }
                for _ in self.blocks
            ]
            if use_cache
            else None
        )
        for i in range(s.image_len):
            if caches is None:
                x = self.embed(text, image if i else None)
                for block in self.blocks:
                    x = block(x)
            elif i == 0:  # prefill the text
                x = self.embed(text, None)
                for block, cache in zip(self.blocks, caches, strict=True):
                    x = block(x, cache, 0)
            else:
                x = self.embed(None, image[:, -1:], image_start=i - 1)
                for block, cache in zip(self.blocks, caches, strict=True):
                    x = block(x, cache, s.text_len + i - 1)
            logits = self.logits(self.image_head, self.ln_f(x[:, -1])) / max(temperature, 1e-6)
            if top_k > 0:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            image = torch.cat([image, nxt], dim=1)
        return image


@functools.lru_cache(maxsize=64)
def cached_prefix_mask(
    kind: str, text_len: int, grid_h: int, grid_w: int, kernel: int, device: str, n: int
) -> torch.Tensor:
    """The cached mask's [:n, :n] block, contiguous and cached itself (SDPA reads it as is)."""
    return cached_mask(kind, text_len, grid_h, grid_w, kernel, device)[:n, :n].contiguous()


def real_text_targets(text: torch.Tensor, text_vocab: int) -> torch.Tensor:
    """[B, T-1] True where text target t+1 counts: every target except padding after padding."""
    return (text[:, :-1] < text_vocab) | (text[:, 1:] < text_vocab)


def text_target_count(text: torch.Tensor, text_vocab: int) -> torch.Tensor:
    return real_text_targets(text, text_vocab).sum()


def prior_loss(
    text_logits: torch.Tensor,
    image_logits: torch.Tensor,
    text: torch.Tensor,
    image: torch.Tensor,
    counts: tuple[torch.Tensor | float, torch.Tensor | float] | None = None,
) -> dict[str, torch.Tensor]:
    """1/8 · CE over real text targets + 7/8 · CE over image targets, each summed and divided by its
    count. `counts` = (text, image) targets of the whole update (all micro-batches and ranks, see
    training.loop.accumulate_gradients); default: this batch's own, i.e. per-kind means.

    Also returns the sums and counts, so that means over many batches can be formed exactly.
    A function, not only a method, so that a DDP/FSDP-wrapped model's forward can feed it."""
    text_vocab = text_logits.shape[-1] - text.shape[1]  # the head scores text_vocab + one pad per position
    real = real_text_targets(text, text_vocab).flatten()
    nll_text = F.cross_entropy(text_logits.flatten(0, 1).float(), text[:, 1:].flatten(), reduction="none")
    sum_text = (nll_text * real).sum()
    sum_image = F.cross_entropy(image_logits.flatten(0, 1).float(), image.flatten(), reduction="sum")
    n_text, n_image = real.sum(), torch.tensor(image.numel(), device=image.device)
    norm_text, norm_image = counts if counts is not None else (n_text.clamp(min=1), n_image)
    loss_text, loss_image = sum_text / norm_text, sum_image / norm_image
    return {
        "loss": TEXT_LOSS_WEIGHT * loss_text + IMAGE_LOSS_WEIGHT * loss_image,
        "loss_text": loss_text,
        "loss_image": loss_image,
        "sums": torch.stack(
            [sum_text.detach(), n_text.to(sum_text.dtype), sum_image.detach(), n_image.to(sum_text.dtype)]
        ),
    }


def losses_from_sums(sums) -> dict[str, float]:
    """[sum_text, n_text, sum_image, n_image] (any number of batches, ranks) -> the three mean losses."""
    sum_text, n_text, sum_image, n_image = (float(v) for v in sums)
    loss_text, loss_image = sum_text / max(n_text, 1.0), sum_image / max(n_image, 1.0)
    return {
        "loss": TEXT_LOSS_WEIGHT * loss_text + IMAGE_LOSS_WEIGHT * loss_image,
        "loss_text": loss_text,
        "loss_image": loss_image,
    }


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_terms(s: PriorShape) -> dict[str, float]:
    """Useful training FLOPs of ONE sequence (forward + backward = 3 × forward), term by term.

    The model is fed n = seq_len - 1 positions (the last image token is input only).
      blocks    : 2 · n · L · (4d² + 2·r·d²)           qkv, proj and the MLP's two matrices
      heads     : 2 · d · ((T-1)·(Vt+T) + N·Vi)        each position scores only its own head
      attention : Σ_layers 4 · d · n · keys(kind)      QKᵀ and AV over the keys each query really
                                                       attends to (mask average, training.masks.mean_keys)
    Embeddings (lookups), LayerNorms, biases and softmax are not counted; nor is the work FlexAttention
    spends on the masked part of partially used blocks (it is not useful work)."""
    d, n, r = s.d_model, s.seq_len - 1, s.mlp_ratio
    blocks = 2 * n * s.n_layer * (4 * d * d + 2 * r * d * d)
    heads = 2 * d * ((s.text_len - 1) * (s.text_vocab + s.text_len) + s.image_len * s.image_vocab)
    attention = sum(
        4 * d * n * mean_keys(kind, s.text_len, s.grid_h, s.grid_w, s.conv_kernel, n)
        for kind in layer_kinds(s.n_layer, s.attention)
    )
    fwd = blocks + heads + attention
    return {"blocks": 3 * blocks, "heads": 3 * heads, "attention": 3 * attention, "total": 3 * fwd}


def flops_per_token(s: PriorShape) -> float:
    """flops_terms' total per stream position (the loop counts seq_len tokens per sequence)."""
    return flops_terms(s)["total"] / s.seq_len
