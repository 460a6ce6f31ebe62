"""The discrete VAE of DALL-E (Ramesh et al. 2021, appendix A), shaped exactly like OpenAI's `dall_e`.

    image (B,3,S,S) in [0,1] --map_pixels--> Encoder --> logits (B,V,S/8,S/8) --argmax--> tokens
    tokens or relaxed one-hots (B,V,S/8,S/8) --> Decoder --> (B,6,S,S): logit-Laplace mu and ln b

Module and parameter names mirror `dall_e` (blocks.group_1.block_1.res_path.conv_1 ...), with torch's
`weight`/`bias` where `dall_e` says `w`/`b`, so importing the published weights is a rename
(tokenize_images/import_openai.py). A checkpoint is a plain dict of tensors and numbers, written with
torch.save and read with weights_only=True (no pickled code).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn

CHECKPOINT_FORMAT = "dalle-dvae/1"
LOGIT_LAPLACE_EPS = 0.1  # pixels live in [eps, 1-eps] so that logit(x) stays finite


@dataclass
class DVAEConfig:
    n_hid: int = 256  # width of the first group; groups are 1, 2, 4, 8 x n_hid
    n_blk_per_group: int = 2
    vocab_size: int = 8192
    image_size: int = 256  # the encoder downsamples by 8: 256 px -> 32x32 tokens
    n_init: int = 128  # decoder: width after the 1x1 input conv on one-hots
    group_count: int = 4  # fixed by the architecture; kept for post_gain = 1 / n_layers^2
    # Pixels per token side: 8 in dall_e (3 max-pools). 4 drops the encoder's last pool and the decoder's first
    # upsample, so a 64 px image becomes 16x16 tokens (measured on the demo's scenes: docs/tokens.md, "A 16x16 grid").
    downsample: int = 8

    def __post_init__(self):
        if self.downsample not in (4, 8):
            raise ValueError(f"dVAE downsample must be one of 4, 8; got {self.downsample!r}")
        if self.image_size % self.downsample:
            raise ValueError(f"dVAE image_size {self.image_size} is not a multiple of downsample {self.downsample}")

    @property
    def pools(self) -> int:
        return {4: 2, 8: 3}[self.downsample]

    @property
    def grid(self) -> int:
        return self.image_size // self.downsample


PRESETS = {
    # OpenAI's released model.
    "openai": DVAEConfig(n_hid=256, n_blk_per_group=2, vocab_size=8192, image_size=256, n_init=128),
    # Trains and encodes on a CPU in minutes (demo, tests): 64 px -> 8x8 tokens.
    "small": DVAEConfig(n_hid=32, n_blk_per_group=1, vocab_size=512, image_size=64, n_init=64),
}


def preset(name: str, **overrides) -> DVAEConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown dVAE preset {name!r}; allowed: {', '.join(map(repr, PRESETS))}")
    return dataclasses.replace(PRESETS[name], **overrides)


def map_pixels(x: torch.Tensor) -> torch.Tensor:
    return (1 - 2 * LOGIT_LAPLACE_EPS) * x + LOGIT_LAPLACE_EPS


def unmap_pixels(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp((x - LOGIT_LAPLACE_EPS) / (1 - 2 * LOGIT_LAPLACE_EPS), 0, 1)


class ResBlock(nn.Module):
    """id_path(x) + post_gain * res_path(x); the residual branch has a bottleneck of n_out / 4."""

    def __init__(self, n_in: int, n_out: int, n_layers: int, kernels: tuple[int, int, int, int]):
        super().__init__()
        n_hid = n_out // 4
        self.post_gain = 1 / n_layers**2  # keeps the deep residual stack near identity at init
        self.id_path = nn.Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = [n_in, n_hid, n_hid, n_hid, n_out]
        layers = []
        for i, k in enumerate(kernels):
            layers += [
                (f"relu_{i + 1}", nn.ReLU()),
                (f"conv_{i + 1}", nn.Conv2d(widths[i], widths[i + 1], k, padding=k // 2)),
            ]
        self.res_path = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.res_path(x)
        # post_gain == 1 once folded into the last conv (encoder_actor.fold_post_gain): skip a pass over r
        return self.id_path(x) + (r if self.post_gain == 1 else self.post_gain * r)


class FP32Conv2d(nn.Conv2d):
    """A conv that dall_e keeps in fp32 (use_float16=False): the encoder's vocabulary projection, whose logits
    feed the argmax, the Gumbel-softmax at tau down to 1/16 (which amplifies rounding 16x) and the KL term, and
    the decoder's code-embedding conv. Runs outside autocast on fp32 input, weights and bias; TF32 is the caller's
    choice (encoder_actor.fp32_exact). Same parameter names as nn.Conv2d, so checkpoints are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            bias = None if self.bias is None else self.bias.float()
            return self._conv_forward(x.float(), self.weight.float(), bias)


ENCODER_KERNELS = (3, 3, 3, 1)
DECODER_KERNELS = (1, 3, 3, 3)


def init_like_dall_e(module: nn.Module) -> nn.Module:
    """dall_e's own Conv2d init: weights N(0, 1/fan_in), zero biases. torch's default (Kaiming-uniform with
    a=sqrt(5)) has a third of that variance, which leaves the encoder's features nearly identical across
    patches at init, so a data-dependent codebook init (tokenize_images/codebook_init.py) cannot separate them."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=m.weight[0].numel() ** -0.5)
            nn.init.zeros_(m.bias)
    return module


def _group(widths_in_out: list[tuple[int, int]], n_layers: int, kernels, resample: nn.Module | None) -> nn.Sequential:
    layers = [(f"block_{i + 1}", ResBlock(a, b, n_layers, kernels)) for i, (a, b) in enumerate(widths_in_out)]
    if resample is not None:
        layers.append(("pool" if isinstance(resample, nn.MaxPool2d) else "upsample", resample))
    return nn.Sequential(OrderedDict(layers))


class Encoder(nn.Module):
    def __init__(self, cfg: DVAEConfig):
        super().__init__()
        h, n, L = cfg.n_hid, cfg.n_blk_per_group, cfg.group_count * cfg.n_blk_per_group
        mults = [1, 1, 2, 4, 8]  # input width, then the width of groups 1..4

        def widths(g: int) -> list[tuple[int, int]]:
            return [((mults[g - 1] if i == 0 else mults[g]) * h, mults[g] * h) for i in range(n)]

        self.blocks = nn.Sequential(
            OrderedDict(
                [
                    ("input", nn.Conv2d(3, h, 7, padding=3)),
                    *[
                        (
                            f"group_{g}",
                            _group(widths(g), L, ENCODER_KERNELS, nn.MaxPool2d(2) if g <= cfg.pools else None),
                        )
                        for g in range(1, 5)
                    ],
                    (
                        "output",
                        nn.Sequential(
                            OrderedDict([("relu", nn.ReLU()), ("conv", FP32Conv2d(8 * h, cfg.vocab_size, 1))])
                        ),
                    ),
                ]
            )
        )
        init_like_dall_e(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) mapped pixels -> (B,V,S/d,S/d) logits (d = cfg.downsample)."""
        return self.blocks(x)


class Decoder(nn.Module):
    def __init__(self, cfg: DVAEConfig):
        super().__init__()
        h, n, L = cfg.n_hid, cfg.n_blk_per_group, cfg.group_count * cfg.n_blk_per_group
        ins = [cfg.n_init, 8 * h, 4 * h, 2 * h]
        outs = [8 * h, 4 * h, 2 * h, 1 * h]

        def widths(g: int) -> list[tuple[int, int]]:
            return [(ins[g - 1] if i == 0 else outs[g - 1], outs[g - 1]) for i in range(n)]

        up = lambda: nn.Upsample(scale_factor=2, mode="nearest")  # noqa: E731
        self.blocks = nn.Sequential(
            OrderedDict(
                [
                    ("input", FP32Conv2d(cfg.vocab_size, cfg.n_init, 1)),
                    *[
                        (f"group_{g}", _group(widths(g), L, DECODER_KERNELS, up() if 4 - cfg.pools <= g < 4 else None))
                        for g in range(1, 5)
                    ],
                    ("output", nn.Sequential(OrderedDict([("relu", nn.ReLU()), ("conv", nn.Conv2d(h, 6, 1))]))),
                ]
            )
        )
        init_like_dall_e(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B,V,g,g) one-hots or relaxed one-hots -> (B,6,d*g,d*g) logit-Laplace statistics."""
        return self.blocks(z)

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B,g,g) integer codes -> (B,6,d*g,d*g). A 1x1 conv on a one-hot is a column lookup, so skip the one-hot."""
        conv = self.blocks.input
        x = conv.weight[:, :, 0, 0].t()[tokens.long()] + conv.bias  # (B,g,g,n_init)
        x = x.permute(0, 3, 1, 2).contiguous()
        for name, module in self.blocks.named_children():
            if name != "input":
                x = module(x)
        return x


def reconstruct(stats: torch.Tensor) -> torch.Tensor:
    """Decoder statistics -> image in [0,1]: the mean of the logit-Laplace, mapped back."""
    return unmap_pixels(torch.sigmoid(stats[:, :3].float()))


class DVAE(nn.Module):
    def __init__(self, cfg: DVAEConfig, with_decoder: bool = True):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg) if with_decoder else None  # encode-only actors skip its memory

    def forward(
        self, x: torch.Tensor, tau: float, codes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: mapped pixels -> (encoder logits, decoder statistics of a Gumbel-softmax sample).
        With `codes` (B,g,g) the decoder sees those codes as hard one-hots instead (the patch teacher's
        updates, tokenize_images/patch_teacher.py); one forward either way, so DDP and FSDP2 see every parameter."""
        from tokenize_images.objective import gumbel_softmax

        logits = self.encoder(x)  # fp32: the output conv runs outside autocast
        if codes is None:
            z = gumbel_softmax(logits.float(), tau)
        else:
            z = nn.functional.one_hot(codes, self.cfg.vocab_size).permute(0, 3, 1, 2).float()
        return logits, self.decoder(z)  # the decoder's input conv is fp32 too

    @torch.no_grad()
    def encode_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) images in [0,1] -> (B,g,g) argmax codes (int64)."""
        return self.encoder(map_pixels(images)).argmax(dim=1)

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B,g,g) codes -> (B,3,S,S) images in [0,1]."""
        return reconstruct(self.decoder.decode_tokens(tokens))


def conv_flops(module: nn.Module, x: torch.Tensor) -> float:
    """FLOPs (2 x multiply-adds) of every Conv2d in one forward of `module` on `x`, counted from shapes."""
    total, hooks = [0.0], []

    def hook(mod, inp, out):
        total[0] += 2.0 * out.numel() * mod.weight.shape[1] * mod.weight.shape[2] * mod.weight.shape[3]

    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def flops_per_image(cfg: DVAEConfig, training: bool = False) -> float:
    """Encoder FLOPs per image (272 GFLOP for `openai`); with training=True, encoder + decoder x 3 (fwd + bwd)."""
    enc = conv_flops(Encoder(cfg), torch.zeros(1, 3, cfg.image_size, cfg.image_size))
    if not training:
        return enc
    dec = conv_flops(Decoder(cfg), torch.zeros(1, cfg.vocab_size, cfg.grid, cfg.grid))
    return 3 * (enc + dec)


# --- checkpoints --------------------------------------------------------------------------------


def checkpoint_dict(model: DVAE, extra: dict | None = None) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "config": dataclasses.asdict(model.cfg),
        "encoder": model.encoder.state_dict(),
        "decoder": model.decoder.state_dict(),
        **(extra or {}),
    }


def save_checkpoint(model: DVAE, path: str, extra: dict | None = None) -> str:
    """Write atomically (common.storage); returns the file's sha256, which is the dVAE's id."""
    import io

    from common import storage

    buf = io.BytesIO()
    torch.save(checkpoint_dict(model, extra), buf)
    data = buf.getvalue()
    storage.write_bytes_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def _read(path: str, map_location="cpu") -> tuple[dict, str]:
    import io

    from common import storage

    data = storage.read_bytes(path)
    ckpt = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    return ckpt, hashlib.sha256(data).hexdigest()


def load_checkpoint(path: str, map_location: str | torch.device = "cpu", with_decoder: bool = True) -> tuple[DVAE, str]:
    """(model in eval mode, sha256 of the file = the dVAE's id). weights_only=True: a checkpoint holds no code."""
    ckpt, sha = _read(path, map_location)
    model = DVAE(DVAEConfig(**ckpt["config"]), with_decoder=with_decoder)
    model.encoder.load_state_dict(ckpt["encoder"])
    if with_decoder:
        model.decoder.load_state_dict(ckpt["decoder"])
    return model.eval(), sha


def checkpoint_info(path: str) -> tuple[DVAEConfig, str]:
    ckpt, sha = _read(path)
    return DVAEConfig(**ckpt["config"]), sha
