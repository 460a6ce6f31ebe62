"""Optimiser and schedule of paper appendix B.2.

AdamW(β = (0.9, 0.96), ε = 1e-8) with weight decay on the weight matrices only: gains (LayerNorm
weights), biases and embeddings are left undecayed. The learning rate warms up linearly, then is
halved each time the TRAINING loss plateaus (as the paper does), at most `max_halvings` times: the
loop feeds the schedule the mean training loss of each `val_every` window, all-reduced over ranks so
that every rank takes the same decision. fused AdamW where every parameter is on a GPU.
"""

from __future__ import annotations

from typing import Any

import torch

from training.config import OptimConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_matrix = isinstance(module, torch.nn.Linear) and name == "weight"
            (decay if is_matrix else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay)
    on_gpu = all(p.device.type == "cuda" for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=on_gpu or None)


class WarmupPlateauSchedule:
    """lr(update n) = peak · min(1, n / warmup) · 0.5^halvings; `observe(train_loss)` may add a halving."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig):
        self.optimizer = optimizer
        self.peak, self.warmup = cfg.lr, cfg.warmup_steps
        self.patience, self.threshold, self.max_halvings = cfg.plateau_patience, cfg.plateau_threshold, cfg.max_halvings
        self.halvings, self.best, self.bad = 0, float("inf"), 0
        self.step_num = 0

    def lr(self) -> float:
        """lr of the next update (update number step_num + 1)."""
        ramp = min(1.0, (self.step_num + 1) / self.warmup) if self.warmup > 0 else 1.0
        return self.peak * ramp * 0.5**self.halvings

    def apply(self) -> float:
        """Set the lr of the coming update on the optimiser; returns it."""
        lr = self.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def step(self) -> None:
        """Count one finished update."""
        self.step_num += 1

    def observe(self, loss: float) -> bool:
        """Record the mean training loss of the last window; returns True when it triggered a halving."""
        if self.step_num < self.warmup:
            self.best = min(self.best, loss)
            return False
        if loss < self.best * (1 - self.threshold):
            self.best, self.bad = loss, 0
            return False
        self.bad += 1
        if self.bad >= self.patience and self.halvings < self.max_halvings:
            self.halvings, self.bad = self.halvings + 1, 0
            self.best = loss
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"halvings": self.halvings, "best": self.best, "bad": self.bad, "step_num": self.step_num}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.halvings, self.best, self.bad, self.step_num = (
            int(state["halvings"]),
            float(state["best"]),
            int(state["bad"]),
            int(state["step_num"]),
        )
