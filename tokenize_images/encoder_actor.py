"""One dVAE encoder: decoded pixels in, argmax tokens (uint16) out. encode_tokens runs it as a Ray actor
(one per GPU, or CPU actors); the shard tasks (tokenize_images/encode_shard.py) send it pixel batches.

Exact tokens: the trunk may run under autocast, but the vocabulary projection (the output 1x1 conv) runs in
true fp32, TF32 off, as in OpenAI's dall_e (use_float16=False for that conv): rounded logits flip argmax
between close codes. An actor's first batches (check_tokens tokens) are also encoded in fp32, and the fp32
tokens are the ones returned until the agreement is known; below `min_agreement` (measured figures per
precision: docs/tokens.md) the actor raises with the figure, which fails the job before an inexact token
is written.

GPU throughput: post_gain is folded into each resblock's last conv at load (one pass less over the largest
activations per block; exact for the presets, whose gains are powers of two), the trunk can be compiled,
and batches are padded to a fixed `batch_size` so the compiled graph never sees a new shape. Pixels go
host -> device as uint8 through a pinned staging buffer on a side stream, so a copy overlaps the previous
batch's compute; the Ray actor runs two calls at once (max_concurrency=2) to keep one batch queued.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time

import numpy as np
import torch

from tokenize_images.dvae import ResBlock, load_checkpoint, map_pixels

# "auto" = float16 on GPU (measured exact enough, docs/tokens.md; dall_e's own choice), fp32 on CPU.
AMP_DTYPES = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": None}


def fold_post_gain(module: torch.nn.Module) -> torch.nn.Module:
    """id_path(x) + g * res_path(x) == id_path(x) + res_path'(x), res_path' with the last conv scaled by g."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, ResBlock) and m.post_gain != 1:
                last = [c for c in m.res_path if isinstance(c, torch.nn.Conv2d)][-1]
                last.weight.mul_(m.post_gain)
                last.bias.mul_(m.post_gain)
                m.post_gain = 1
    return module


def fp32_exact():
    """No TF32 for the vocabulary projection: on Ampere+ 'fp32' convolutions default to TF32 (10-bit mantissa)."""
    if not torch.cuda.is_available():
        return contextlib.nullcontext()
    return torch.backends.cudnn.flags(enabled=True, allow_tf32=False)


class TokenEncoder:
    def __init__(
        self,
        checkpoint: str,
        device: str = "cpu",
        amp_dtype: str = "auto",
        channels_last: bool = True,
        threads: int = 1,
        batch_size: int = 0,
        compile: bool = False,
        min_agreement: float = 0.999,
        check_tokens: int = 65536,
        null: bool = False,
    ):
        """batch_size > 0: forward passes of exactly that many images (the last one padded).
        null=True: no model, zero tokens (bench: the pipeline's ceiling without the encoder)."""
        if amp_dtype not in AMP_DTYPES:  # checked on CPU too: a typo fails everywhere
            raise ValueError(f"unknown amp_dtype {amp_dtype!r}; allowed: {', '.join(map(repr, AMP_DTYPES))}")
        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.device = torch.device(device)
        self.batch_size, self.min_agreement, self.check_tokens, self.null = (
            batch_size,
            min_agreement,
            check_tokens,
            null,
        )
        self.agreement: float | None = None  # token agreement of the autocast trunk with fp32 (first batches)
        self._compared = self._equal = 0
        self._check_lock = threading.Lock()
        if null:
            from tokenize_images.dvae import checkpoint_info

            cfg, self.sha256 = checkpoint_info(checkpoint)
            self.vocab_size, self.amp, self.downsample = cfg.vocab_size, None, cfg.downsample
            return
        model, self.sha256 = load_checkpoint(checkpoint, with_decoder=False)
        self.encoder = fold_post_gain(model.encoder).to(self.device).eval()
        amp = AMP_DTYPES[amp_dtype]
        if amp == "auto":
            amp = torch.float16 if self.device.type == "cuda" else None
        self.amp = amp
        self.channels_last = channels_last and self.device.type == "cuda"
        if self.channels_last:
            self.encoder = self.encoder.to(memory_format=torch.channels_last)
        self.trunk = self.encoder.blocks[:-1]
        if compile:
            self.trunk = torch.compile(self.trunk, dynamic=False)
        self.vocab_size, self.downsample = model.cfg.vocab_size, model.cfg.downsample
        assert self.vocab_size <= 65536, "tokens are stored as uint16"
        self._staging: queue.Queue | None = None  # pinned host buffers, one per concurrent call (GPU)
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def _to_device(self, pixels: np.ndarray) -> torch.Tensor:
        """(N,S,S,3) uint8 host -> device. GPU: through a pinned buffer on the side stream (truly async)."""
        if self._copy_stream is None:  # arrays from Ray's object store are read-only: torch needs a writable one
            return torch.from_numpy(np.require(pixels, requirements=["C", "W"]))
        if self._staging is None:
            self._staging = queue.Queue()
            for _ in range(2):  # two calls in flight (max_concurrency=2)
                self._staging.put(
                    torch.empty((max(self.batch_size, len(pixels)), *pixels.shape[1:]), dtype=torch.uint8).pin_memory()
                )
        buf = self._staging.get()
        try:
            if buf.shape[0] < len(pixels):
                buf = torch.empty((len(pixels), *pixels.shape[1:]), dtype=torch.uint8).pin_memory()
            host = buf[: len(pixels)]
            host.numpy()[...] = pixels
            with torch.cuda.stream(self._copy_stream):
                x = host.to(self.device, non_blocking=True)
                done = torch.cuda.Event()
                done.record(self._copy_stream)
            torch.cuda.current_stream(self.device).wait_event(done)
            x.record_stream(torch.cuda.current_stream(self.device))
            done.synchronize()  # the pinned buffer may be reused only once the copy has read it
            return x
        finally:
            self._staging.put(buf)

    def _logits(self, x: torch.Tensor, amp) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
            hidden = self.trunk(x)
        with fp32_exact():
            return self.encoder.blocks.output(hidden.float())

    @torch.inference_mode()
    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """(N,S,S,3) uint8 -> (N, g*g) uint16 argmax codes, row-major."""
        n, grid = len(pixels), (pixels.shape[1] // self.downsample) * (pixels.shape[2] // self.downsample)
        if self.null or n == 0:
            return np.zeros((n, grid), np.uint16)
        step = self.batch_size or n
        out = []
        for i in range(0, n, step):
            chunk = pixels[i : i + step]
            if self.batch_size and len(chunk) < step:  # fixed shapes: pad, drop the padding's tokens
                chunk = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            x = self._to_device(chunk)
            x = map_pixels(x.permute(0, 3, 1, 2).float() / 255.0)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            real = min(step, n - i)
            if self.amp is not None and self.agreement is None:
                tokens = self._checked_tokens(x, real)
            else:
                tokens = self._logits(x, self.amp).argmax(dim=1)
            out.append(tokens.flatten(1)[:real].to(torch.int32).cpu().numpy().astype(np.uint16))
        return np.concatenate(out)

    def _checked_tokens(self, x: torch.Tensor, real: int) -> torch.Tensor:
        """While the check runs: encode in both precisions, count agreement, and return the fp32 tokens, so
        nothing inexact is written before the verdict. The verdict comes once check_tokens tokens are compared
        (a sample large enough that a 0.1% rate is not noise); a job smaller than that stays fp32 throughout."""
        fast = self._logits(x, self.amp).argmax(dim=1)
        with torch.autocast(self.device.type, enabled=False), fp32_exact():
            exact = self.encoder.blocks.output(self.encoder.blocks[:-1](x)).argmax(dim=1)  # eager fp32 reference
        with self._check_lock:
            self._compared += exact[:real].numel()
            self._equal += int((exact[:real] == fast[:real]).sum())
            if self.agreement is not None or self._compared < self.check_tokens:
                return exact
            self.agreement = self._equal / self._compared
        print(f"TokenEncoder: {self.amp} trunk agrees with fp32 on {self.agreement:.4%} of {self._compared} tokens")
        if self.agreement < self.min_agreement:
            raise RuntimeError(
                f"autocast {self.amp} gives the fp32 argmax on only {self.agreement:.4%} of {self._compared} tokens "
                f"(run.min_token_agreement = {self.min_agreement:.4%}): use run.amp_dtype 'float32' or 'float16'"
            )
        return exact

    def encode_timed(self, pixels: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Tokens, and when the actor started and finished them (the driver measures the steady-state rate
        and how busy each encoder was from these)."""
        started = time.time()
        tokens = self.encode(pixels)
        return tokens, started, time.time()

    def info(self) -> dict:
        return {
            "amp_dtype": str(self.amp).replace("torch.", "") if self.amp else "float32",
            "agreement": self.agreement,
            "tokens_compared": self._compared,
            "threads": torch.get_num_threads(),
        }
