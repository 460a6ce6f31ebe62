"""Convert OpenAI's released dVAE (`dall_e` package modules) into this project's checkpoint format.

OpenAI published encoder.pkl and decoder.pkl (https://cdn.openai.com/dall-e/encoder.pkl, decoder.pkl) as
torch-pickled `dall_e.Encoder` / `dall_e.Decoder` modules. Unpickling them runs code from the pickle, so
it needs the `dall_e` package and `torch.load(weights_only=False)`. That happens in exactly one place,
`import_openai_pickles()`, behind the explicit command orchestration/import_openai_dvae.py, for files the
user chose to trust. The result is a plain tensor checkpoint that every other load reads with
weights_only=True.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from tokenize_images.dvae import DVAE, DVAEConfig, save_checkpoint


def _renamed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """dall_e's Conv2d calls its parameters w and b; torch's calls them weight and bias."""
    out = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        out[f"{prefix}.{ {'w': 'weight', 'b': 'bias'}.get(leaf, leaf) }"] = value.detach().float().clone()
    return out


def convert_official(encoder: nn.Module, decoder: nn.Module | None = None, image_size: int = 256) -> DVAE:
    """Build a DVAE holding the weights of official `dall_e` modules (a decoder is optional for tests)."""
    cfg = DVAEConfig(
        n_hid=encoder.n_hid,
        n_blk_per_group=encoder.n_blk_per_group,
        vocab_size=encoder.vocab_size,
        image_size=image_size,
        n_init=decoder.n_init if decoder is not None else 128,
    )
    if decoder is not None and (decoder.n_hid, decoder.n_blk_per_group, decoder.vocab_size) != (
        cfg.n_hid,
        cfg.n_blk_per_group,
        cfg.vocab_size,
    ):
        raise ValueError("encoder and decoder pickles describe different dVAEs")
    model = DVAE(cfg)
    model.encoder.load_state_dict(_renamed(encoder.state_dict()), strict=True)
    if decoder is not None:
        model.decoder.load_state_dict(_renamed(decoder.state_dict()), strict=True)
    return model.eval()


def fix_upsample(decoder: nn.Module) -> nn.Module:
    """The pickles predate nn.Upsample.recompute_scale_factor; newer torch reads it in forward()."""
    for module in decoder.modules():
        if isinstance(module, nn.Upsample) and not hasattr(module, "recompute_scale_factor"):
            module.recompute_scale_factor = None
    return decoder


def import_openai_pickles(encoder_pkl: str, decoder_pkl: str, output: str, image_size: int = 256) -> str:
    """THE trusted-pickle import. Returns the sha256 (dVAE id) of the written checkpoint."""
    import dall_e  # noqa: F401  - the pickles reference dall_e.encoder/decoder classes

    encoder = torch.load(encoder_pkl, map_location="cpu", weights_only=False)  # trusted, documented: see module doc
    decoder = fix_upsample(torch.load(decoder_pkl, map_location="cpu", weights_only=False))
    model = convert_official(encoder, decoder, image_size=image_size)
    return save_checkpoint(model, output, extra={"source": "openai dall_e encoder.pkl/decoder.pkl"})
