"""``polynomial``: κ(q, k) = (q·k/√d + c)^p, and its preset ``quadratic`` (p = 2, conf/kernel/quadratic.yaml).

The inhomogeneous polynomial kernel of kernel methods (Vapnik 1995; Schölkopf & Smola 2002); in attention,
Tsai et al. 2019 ("Transformer Dissection", EMNLP) compare a polynomial kernel with edp, RBF and linear ones.
Its feature space is finite — the point of contrast with Wright & Gonzalez's infinite-dimensional kernels.

Properties on (q, k): symmetric; positive definite for c ≥ 0 (a sum of non-negative multiples of the PD kernels
(q·k)^i); can be negative iff p is odd (for even p, κ ≥ 0). Feature dimension: C(d+p, p) for c > 0 (all
monomials of degree ≤ p in d variables), C(d+p−1, p) for c = 0 (degree exactly p). ``feature_map`` realises
it exactly: the symmetric p-th tensor power of [q/d^¼, √c].

Normalisation: for odd p the row sum Σ_j κ_ij can be ~0, so ``normalization: abs`` (default; divide by
Σ_j |κ_ij|) keeps the output a bounded signed average; ``sum`` divides by Σ_j κ_ij, capping the output at
(largest visible ‖v‖)/``eps`` where Σκ cancels (``attention/normaliser.py``).
For even p both are identical. (The papers above do not state a normaliser for signed cases.)

Paths: ``fast`` (default) tiles the plain score (memory O(tile²)); ``linear`` is O(T·F) through φ, F = C(d+p, p)
(2145 at d = 64, p = 2: only worth it for long sequences), and needs ``sum`` when p is odd; ``flex`` (opt-in,
even p) uses log κ = p·log|s + c|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from kernel_attention.attention.feature_map import symmetric_power_dim, symmetric_power_features
from kernel_attention.attention.tile_scores import DotScore, TileScore
from kernel_attention.kernels.base import KERNELS, Kernel, KernelProperties, ScoreMod, SignedKernelConfig
from kernel_attention.registry import ConfigError


@dataclass
class PolynomialConfig(SignedKernelConfig):
    # Degree p ≥ 1 (odd p makes κ signed).
    p: int = 3
    # Offset c ≥ 0 in (q·k/√d + c)^p; c > 0 keeps all lower degrees.
    c: float = 1.0

    def validate(self) -> None:
        super().validate()
        if self.p < 1:
            raise ConfigError(f"kernel.p={self.p} must be an integer >= 1 (e.g. 2 for quadratic)")
        if not self.c >= 0:
            raise ConfigError(f"kernel.c={self.c} must be >= 0 (c < 0 breaks positive definiteness)")


def _shifted_power(u: Tensor, c: float, p: int) -> Tensor:
    """(u + c)^p, overwriting u (the tiled path's tile; module-level so compiled tiles are shared)."""
    u = u.add_(c)
    return u.mul_(u) if p == 2 else u.pow_(p)  # one multiply for the common quadratic


def _shifted_power_grad(u: Tensor, c: float, p: int) -> Tensor:
    """d/du (u + c)^p = p (u + c)^(p−1); u is not modified."""
    return (u + c).mul_(p) if p == 2 else (u + c).pow_(p - 1).mul_(p)


@KERNELS.register("polynomial")
class PolynomialKernel(Kernel):
    """κ(q, k) = (q·k/√d + c)^p: feature dim C(d+p, p), symmetric, PD (c ≥ 0), signed iff p is odd."""

    Config = PolynomialConfig
    symmetric = True
    positive_definite = True

    def __init__(self, cfg: PolynomialConfig, head_dim: int, heads: int = 1) -> None:
        super().__init__(cfg, head_dim, heads)
        self.p, self.c = cfg.p, float(cfg.c)

    @property
    def can_be_negative(self) -> bool:  # type: ignore[override]
        return self.p % 2 == 1

    def feature_dim(self) -> float:
        n = self.head_dim + (1 if self.c > 0 else 0)
        return symmetric_power_dim(n, self.p)

    def properties(self) -> KernelProperties:
        return KernelProperties(self.feature_dim(), True, True, self.can_be_negative)

    def score(self, q: Tensor, k: Tensor) -> Tensor:
        s = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, Tq, Tk)
        return (s + self.c) ** self.p  # (B, H, Tq, Tk)

    def tile_score(self) -> TileScore:
        return DotScore(_shifted_power, _shifted_power_grad, 1.0 / math.sqrt(self.head_dim), (self.c, self.p))

    def feature_map(self, x: Tensor) -> Tensor:
        psi = x / self.head_dim**0.25  # (B, H, T, D): ψ(q)·ψ(k) = q·k/√d
        if self.c > 0:
            psi = torch.cat([psi, psi.new_full((*psi.shape[:-1], 1), math.sqrt(self.c))], dim=-1)  # (B,H,T,D+1)
        return symmetric_power_features(psi, self.p)  # (B, H, T, F)

    def flex_score_mod(self, q: Tensor, k: Tensor) -> ScoreMod | None:
        if self.can_be_negative:
            return None  # softmax weights are positive; an odd power is not
        p, c = self.p, self.c
        return lambda score, b, h, qi, ki: p * torch.log(torch.abs(score + c))
