"""A k-means codebook of raw pixel patches that teaches a short dVAE run its first codes (not in the paper).

Why: a CPU run of a thousand updates cannot learn a codebook from the ELBO alone. The earlier aid, a
k-means init of the encoder's output conv on its *random* features (codebook_init.py), starts from codes
that lose most of a patch's layout: dall_e's encoder max-pools ReLU features of a 7x7 conv, so at init a
code says which colours are near, not where the edge runs. Measured on the demo's scenes at 64 px with a
16x16 grid (docs/tokens.md, "A codebook taught by pixel patches"): those codes, read back as each code's mean
patch, keep 69% of held-out scenes fully right at 28.5 dB, and after the ELBO's training 41-46%; a k-means
of the raw 4x4 patches themselves keeps 89.5% (512 codes) or 94.9% (1,024 codes).

So for `codebook.teacher_steps` updates the dVAE learns that k-means directly: the encoder by
cross-entropy towards each position's nearest centre, the decoder by the ELBO's reconstruction term on those
codes as hard one-hots (what it sees at test time). Both parts of the model are dall_e's, unchanged; only
the first updates' targets come from here. A code of the trained dVAE is its encoder's argmax, as always.

    teacher = PatchTeacher.fit(x, vocab_size=1024, patch=4)    # x: (B,3,S,S) mapped pixels
    codes = teacher.codes(x)                                    # (B,S/4,S/4) int64, nearest centre per patch
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokenize_images.codebook_init import kmeans


def patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B,C,S,S) -> (B*g*g, C*patch^2): one row per grid position, in the encoder's raster order."""
    flat = F.pixel_unshuffle(x.float(), patch)  # (B, C*p*p, g, g)
    return flat.permute(0, 2, 3, 1).reshape(-1, flat.shape[1])


class PatchTeacher:
    """k-means centres of pixel patches; `codes` assigns each patch its nearest centre."""

    def __init__(self, centres: torch.Tensor | None = None, patch: int = 0):
        self.centres, self.patch = centres, patch

    @classmethod
    @torch.no_grad()
    def fit(cls, x: torch.Tensor, vocab_size: int, patch: int, seed: int = 0, iters: int = 10) -> PatchTeacher:
        points = patches(x, patch)
        if points.shape[0] < vocab_size:
            raise ValueError(
                f"the patch teacher needs at least {vocab_size} patches for {vocab_size} codes, got "
                f"{points.shape[0]}: raise codebook.kmeans_images"
            )
        generator = torch.Generator(device=points.device).manual_seed(seed)
        return cls(kmeans(points, vocab_size, iters=iters, generator=generator), patch)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """(B,C,S,S) -> (B,S/patch,S/patch) int64 nearest-centre codes."""
        if self.centres is None:
            raise RuntimeError("PatchTeacher has no centres: fit it or load a checkpoint's state first")
        b, _, s, _ = x.shape
        g = s // self.patch
        # |p-c|^2 = |p|^2 - 2 p.c + |c|^2; |p|^2 is the same for every centre, so the argmin drops it
        c = self.centres.to(x.device)
        scores = patches(x, self.patch) @ c.t() * 2 - (c * c).sum(1)
        return scores.argmax(1).reshape(b, g, g)

    def used_codes(self, x: torch.Tensor) -> int:
        return int(torch.unique(self.codes(x)).numel())

    def state_dict(self) -> dict:
        return {"centres": self.centres, "patch": self.patch}

    def load_state_dict(self, state: dict) -> None:
        self.centres, self.patch = state["centres"], int(state["patch"])


def teacher_loss(logits: torch.Tensor, codes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cross-entropy of the encoder's logits (B,V,g,g) towards the teacher's codes (B,g,g), averaged over
    positions, and the share of positions whose argmax already is the teacher's code."""
    return {
        "teacher_ce": F.cross_entropy(logits.float(), codes),
        "teacher_accuracy": (logits.detach().argmax(1) == codes).float().mean(),
    }
