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
also the `mask_mod` of FlexAttention block masks (`flex_plan`, one per layer kind and length).

Column layers on transposed image states (paper §2.2: "we transpose the image states for column
attention"). In raster order a column's earlier tokens are W apart, so every 128×128 block of the
mask holds some allowed pair and FlexAttention can skip none beyond the causal half. `flex_plan`
therefore orders the image positions column-major for column layers: a column becomes H contiguous
positions and the mask becomes block-diagonal, as sparse as a row layer's. The predicate itself is
unchanged (it is evaluated on the raster positions the transposed ones stand for), so the flex path
is exactly the Fig. 11 mask, only computed in another order; the model permutes q, k, v before and
the output after (training.model.Attention).

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


def column_order(text_len: int, grid_h: int, grid_w: int, length: int | None = None) -> torch.Tensor:
    """Stream positions in the order column layers attend over: the text as is, then the image
    column-major (column 0 top to bottom, then column 1, ...). order[t] = raster position of slot t.

    Only positions < length take part (training feeds seq_len - 1: the last image token, which is also
    the last one column-major, is input only), so a prefix of the stream maps onto a prefix."""
    n = length or text_len + grid_h * grid_w
    pos = torch.arange(n)
    img = (pos - text_len).clamp(min=0)
    key = torch.where(pos < text_len, pos, text_len + (img % grid_w) * grid_h + img // grid_w)
    return torch.argsort(key)


class FlexPlan:
    """What one layer kind needs for FlexAttention at one length: the BlockMask (in the layout the
    kernel sees) and, for column layers, the permutation into that layout and back."""

    def __init__(self, block_mask, order: torch.Tensor | None, inverse: torch.Tensor | None):
        self.block_mask, self.order, self.inverse = block_mask, order, inverse


@functools.lru_cache(maxsize=64)
def flex_plan(
    kind: str, text_len: int, grid_h: int, grid_w: int, kernel: int, device: str, length: int | None = None
) -> FlexPlan:
    """FlexAttention plan for the same pattern over the first `length` positions (default: all),
    built once per (kind, shape, device, length) and shared by every layer of that kind; fully
    masked blocks are skipped. Column layers get the transposed layout (module docstring)."""
    from torch.nn.attention.flex_attention import create_block_mask

    n = length or text_len + grid_h * grid_w
    order = inverse = None
    if kind == "column":
        order = column_order(text_len, grid_h, grid_w, n).to(device)
        inverse = torch.argsort(order)

        def mask_mod(b, h, q_idx, kv_idx):
            return allowed(kind, order[q_idx], order[kv_idx], text_len, grid_w, kernel)

    else:

        def mask_mod(b, h, q_idx, kv_idx):
            return allowed(kind, q_idx, kv_idx, text_len, grid_w, kernel)

    return FlexPlan(create_block_mask(mask_mod, None, None, n, n, device=device), order, inverse)


def flex_block_mask(
    kind: str, text_len: int, grid_h: int, grid_w: int, kernel: int, device: str, length: int | None = None
):
    """The BlockMask of flex_plan (for column layers: in the transposed layout)."""
    return flex_plan(kind, text_len, grid_h, grid_w, kernel, device, length).block_mask


@functools.lru_cache(maxsize=64)
def mean_keys(kind: str, text_len: int, grid_h: int, grid_w: int, kernel: int, length: int) -> float:
    """Average number of keys a query attends to over the first `length` positions (for MFU)."""
    n = length
    if kind == "full":
        return (n + 1) / 2
    return float(dense_mask(kind, text_len, grid_h, grid_w, kernel)[:n, :n].sum()) / n


def format_mask(mask: torch.Tensor) -> str:
    return "\n".join("".join("1" if v else "0" for v in row) for row in mask.tolist())
