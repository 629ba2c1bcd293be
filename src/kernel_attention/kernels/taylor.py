"""``taylor``: κ(q, k) = Σ_{i=0}^{p} s^i / i!, s = q·k/√d, p even — the truncated Taylor series of edp.

p = 2 is the 'Based' feature map (Arora et al. 2024, "Simple linear attention language models balance the
recall-throughput tradeoff"); larger even p approach edp = exp(s) on any bounded range of s. p must be even:
the even-degree Taylor polynomial of exp has no real root (it is > 0 everywhere), so κ is strictly positive and
needs no signed normaliser; odd p would make κ negative for s below about −1.

Properties on (q, k): symmetric; positive definite (non-negative coefficients on the PD kernels (q·k)^i);
never negative (even p). Feature dimension Σ_{i=0}^{p} C(d+i−1, i) — the monomials of each degree, realised
exactly by ``feature_map`` as [1, ψ, ψ^⊗2/√2!, ...] with ψ = q/d^¼ and symmetric tensor powers (1 + 64 + 2080
= 2145 at d = 64, p = 2).

Paths: ``fast`` (default) tiles the plain score; ``linear`` is O(T·F) through φ; ``flex`` (opt-in) uses
log κ = log Σ s^i/i!.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from kernel_attention.attention.feature_map import symmetric_power_dim, symmetric_power_features
from kernel_attention.attention.tile_scores import DotScore, TileScore
from kernel_attention.kernels.base import KERNELS, Kernel, KernelConfig, ScoreMod
from kernel_attention.registry import ConfigError


@dataclass
class TaylorConfig(KernelConfig):
    # Truncation order: an even integer >= 2 (2 = the 'Based' map).
    p: int = 2

    def validate(self) -> None:
        super().validate()
        if self.p < 2 or self.p % 2:
            raise ConfigError(f"kernel.p={self.p} must be an even integer >= 2 (2, 4, 6, ...)")


def taylor_exp(s: Tensor, p: int) -> Tensor:
    """Σ_{i=0}^{p} s^i/i! by Horner's rule: 1 + s(1 + s/2(1 + s/3(...)))."""
    acc = torch.ones_like(s)
    for i in range(p, 0, -1):
        acc = 1.0 + acc * s / i
    return acc


def _taylor_exp_1alloc(s: Tensor, p: int) -> Tensor:
    """``taylor_exp`` with one tile-sized allocation (Horner's rule in place); s is not modified."""
    acc = s / p + 1.0  # (…): the innermost Horner step 1 + s/p
    for i in range(p - 1, 0, -1):
        acc.mul_(s)
        if i > 1:
            acc.div_(i)
        acc.add_(1.0)
    return acc


def _taylor_exp_grad(s: Tensor, p: int) -> Tensor:
    """d/ds Σ_{i≤p} s^i/i! = Σ_{i≤p−1} s^i/i!: the series one order shorter; s is not modified."""
    return _taylor_exp_1alloc(s, p - 1)


@KERNELS.register("taylor")
class TaylorKernel(Kernel):
    """κ(q, k) = Σ_{i≤p} (q·k/√d)^i/i!: finite feature dim, symmetric, PD, positive."""

    Config = TaylorConfig
    symmetric = True
    positive_definite = True
    can_be_negative = False

    def __init__(self, cfg: TaylorConfig, head_dim: int, heads: int = 1) -> None:
        super().__init__(cfg, head_dim, heads)
        self.p = cfg.p

    def feature_dim(self) -> float:
        return sum(symmetric_power_dim(self.head_dim, i) for i in range(self.p + 1))

    def score(self, q: Tensor, k: Tensor) -> Tensor:
        s = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, Tq, Tk)
        return taylor_exp(s, self.p)  # (B, H, Tq, Tk)

    def tile_score(self) -> TileScore:
        # d/ds Σ_{i≤p} s^i/i! = Σ_{i≤p−1} s^i/i!: the derivative is the series one order shorter.
        return DotScore(_taylor_exp_1alloc, _taylor_exp_grad, 1.0 / math.sqrt(self.head_dim), (self.p,))

    def feature_map(self, x: Tensor) -> Tensor:
        psi = x / self.head_dim**0.25  # (B, H, T, D): ψ(q)·ψ(k) = s
        parts = [symmetric_power_features(psi, i) / math.sqrt(math.factorial(i)) for i in range(self.p + 1)]
        return torch.cat(parts, dim=-1)  # (B, H, T, F)

    def flex_score_mod(self, q: Tensor, k: Tensor) -> ScoreMod:
        p = self.p
        return lambda score, b, h, qi, ki: torch.log(taylor_exp(score, p))
