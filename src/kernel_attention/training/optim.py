"""Adam(W) and learning-rate schedules (fairseq's inverse-sqrt, cosine, constant).

A schedule is a pure function of the update number, so resuming only needs the update counter.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kernel_attention.config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (nanoGPT): decaying biases and LayerNorm gains only hurts."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # Fused kernels: one launch for all parameters on CUDA; on CPU one pass per tensor instead of the foreach
    # implementation's ~10 (measured, transformer_small-shaped parameters, 1 core: 10.4 vs 46.2 ms per step).
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps, fused=fused)


class LRSchedule:
    """lr at update ``n`` (1-based: the update about to be taken)."""

    def __init__(self, cfg: OptimConfig, max_updates: int = 0) -> None:
        self.cfg = cfg
        self.max_updates = max_updates

    def __call__(self, n: int) -> float:
        c = self.cfg
        warm = c.warmup_updates
        if warm and n <= warm:
            # Linear warm-up from warmup_init_lr to lr (fairseq).
            return c.warmup_init_lr + (c.lr - c.warmup_init_lr) * n / warm
        if c.schedule == "inverse_sqrt":
            # fairseq: lr * sqrt(warmup) / sqrt(n) after warm-up, continuous at n = warmup.
            return c.lr * math.sqrt(max(warm, 1)) / math.sqrt(n)
        if c.schedule == "cosine":
            span = max(self.max_updates - warm, 1)
            frac = min(max(n - warm, 0) / span, 1.0)
            return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1.0 + math.cos(math.pi * frac))
        return c.lr

    def apply(self, optimizer: torch.optim.Optimizer, n: int) -> float:
        lr = self(n)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
