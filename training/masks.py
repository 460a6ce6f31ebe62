"""Attention masks of the DALL-E prior (paper §2.2, appendix B.1, Fig. 11).

The stream is T text tokens then the H×W image tokens in raster order. In every layer:
  * text attends to text causally;
  * every image token sees all the text;
  * between image tokens the layer kind decides (q, k = raster indices inside the image, k <= q):
      row     k >= q - W                      itself and the previous W tokens (reaches the same
                                              column of the previous row)
      column  k ≡ q (mod W)                   itself and every earlier token of its column
      conv    q - k = dr·W + dc, dr in [0, K//2], dc in [-K//2, K//2]
                                              a causal K×K window; like row attention it works on
                                              raster indices, so the window wraps around row ends
      full    any earlier token               (plain causal attention, an option)

`allowed()` is one vectorised predicate on index tensors: it builds the cached boolean masks
that SDPA takes (`cached_mask`, built once per (kind, shape, device), never per step) and it is
also the `mask_mod` of FlexAttention block masks (`flex_block_mask`).

Inspect a mask (one row per query, one column per key):
    python orchestration/print_mask.py --kind conv --text-len 6 --grid 4 --kernel 3
"""

from __future__ import annotations

import functools

import torch

KINDS = ("row", "column", "conv", "full")


def layer_kinds(n_layer: int, attention: str = "sparse") -> list[str]:
    """The paper's pattern: layer i in [1, L-1] is column if (i - 2) % 4 == 0 else row; layer L is conv."""
    if attention == "full":
        return ["full"] * n_layer
    kinds = ["column" if (i - 2) % 4 == 0 else "row" for i in range(1, n_layer)]
    return kinds + ["conv"]


def allowed(kind: str, q: torch.Tensor, k: torch.Tensor, text_len: int, grid_w: int, kernel: int = 11) -> torch.Tensor:
    """Boolean 'query q may attend to key k' for stream positions q, k (broadcastable int tensors)."""
    causal = k <= q
    if kind == "full":
        return causal
    q_img, k_img = q - text_len, k - text_len
    key_is_text = k_img < 0
    if kind == "row":
        image_rule = k_img >= q_img - grid_w
    elif kind == "column":
        image_rule = (q_img - k_img) % grid_w == 0
    elif kind == "conv":
        half = kernel // 2
        # q - k = dr·W + dc with dr in [0, half], dc in [-half, half]  <=>  delta = q - k + half =
        # dr·W + c with c in [0, 2·half]: some dr in [ceil((delta - 2·half) / W), floor(delta / W)]
        # must also lie in [0, half] (several may when K > W, so no single division decides it).
        delta = q_img - k_img + half
        lowest = torch.div(delta - 2 * half + grid_w - 1, grid_w, rounding_mode="floor").clamp(min=0)
        highest = torch.div(delta, grid_w, rounding_mode="floor").clamp(max=half)
        image_rule = (delta >= 0) & (lowest <= highest)
    else:
        raise ValueError(f"unknown attention kind {kind!r}; expected one of {KINDS}")
    return causal & (key_is_text | image_rule)


def dense_mask(
    kind: str, text_len: int, grid_h: int, grid_w: int, kernel: int = 11, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """[L, L] boolean mask (True = attend), L = text_len + grid_h·grid_w."""
    n = text_len + grid_h * grid_w
    idx = torch.arange(n, device=device)
    return allowed(kind, idx[:, None], idx[None, :], text_len, grid_w, kernel)


@functools.lru_cache(maxsize=64)
def cached_mask(kind: str, text_len: int, grid_h: int, grid_w: int, kernel: int, device: str) -> torch.Tensor:
    """dense_mask built once per (kind, shape, device) and shared by every layer and step.

    1280² booleans are 1.6 MB: cheap to keep, and SDPA reads it instead of a per-step rebuild."""
    return dense_mask(kind, text_len, grid_h, grid_w, kernel, device)


def flex_block_mask(
    kind: str, text_len: int, grid_h: int, grid_w: int, kernel: int, device: str, length: int | None = None
):
    """FlexAttention BlockMask for the same pattern over the first `length` positions (default: all);
    fully-masked blocks are skipped. Training feeds seq_len - 1 positions (the last token is input only)."""
    from torch.nn.attention.flex_attention import create_block_mask

    n = length or text_len + grid_h * grid_w

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(kind, q_idx, kv_idx, text_len, grid_w, kernel)

    return create_block_mask(mask_mod, None, None, n, n, device=device)


def format_mask(mask: torch.Tensor) -> str:
    return "\n".join("".join("1" if v else "0" for v in row) for row in mask.tolist())
