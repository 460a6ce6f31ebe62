"""The Ray Data stage that turns decoded pixels into argmax tokens: one actor holds one dVAE encoder.

GPU: the batch moves to the device as uint8 (4x less PCIe traffic than float), is converted there,
runs under bf16 autocast in channels_last, and only the argmax (uint16) comes back. CPU: float32,
with torch threads = the CPUs the actor was given, so the pool never oversubscribes the machine.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from tokenize_images.dvae import load_checkpoint, map_pixels

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": None}


class TokenEncoder:
    """Callable: a batch with `pixels` (N,S,S,3) uint8 and `error` -> the batch with `tokens` (N, g*g) uint16."""

    def __init__(
        self,
        checkpoint: str,
        device: str = "cpu",
        amp_dtype: str = "bfloat16",
        channels_last: bool = True,
        threads: int = 1,
    ):
        if amp_dtype not in AMP_DTYPES:  # checked on CPU too, where the dtype is unused: a typo fails everywhere
            raise ValueError(f"unknown amp_dtype {amp_dtype!r}; allowed: {', '.join(map(repr, AMP_DTYPES))}")
        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.device = torch.device(device)
        model, self.sha256 = load_checkpoint(checkpoint, with_decoder=False)
        self.encoder = model.encoder.to(self.device).eval()
        self.amp = AMP_DTYPES[amp_dtype] if self.device.type == "cuda" else None
        self.channels_last = channels_last and self.device.type == "cuda"
        if self.channels_last:
            self.encoder = self.encoder.to(memory_format=torch.channels_last)
        self.vocab_size = model.cfg.vocab_size
        assert self.vocab_size <= 65536, "tokens are stored as uint16"

    @torch.inference_mode()
    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """(N,S,S,3) uint8 -> (N, g*g) uint16 argmax codes, row-major."""
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, non_blocking=True)
        x = map_pixels(x.permute(0, 3, 1, 2).float() / 255.0)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        blocks = self.encoder.blocks
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            hidden = blocks[:-1](x)
        # The vocabulary projection runs in fp32, as in OpenAI's dall_e (use_float16=False for that conv):
        # bf16 logits would round close scores together and flip argmax ties.
        logits = blocks.output(hidden.float())
        return logits.argmax(dim=1).flatten(1).to(torch.int32).cpu().numpy().astype(np.uint16)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = batch.pop("pixels")
        ok = np.array([e == "" for e in batch["error"]], dtype=bool)
        # Bad rows (zeros) are not encoded; they keep code 0 and the writer drops them.
        tokens = np.zeros((len(ok), (pixels.shape[1] // 8) * (pixels.shape[2] // 8)), dtype=np.uint16)
        if ok.any():
            tokens[ok] = self.encode(pixels[ok])
        batch["tokens"] = tokens
        batch["encoded_at"] = np.full(len(ok), time.time())  # lets the driver measure steady-state throughput
        return batch
