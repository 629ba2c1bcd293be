"""``rff``: random Fourier features for the Gaussian kernel ``rbf`` (Rahimi & Recht 2007, "Random Features for
Large-Scale Kernel Machines", NeurIPS) — the finite dial for rbf, as ``random_features`` is for edp.

rbf is κ(q, k) = exp(−‖q − k‖²/(2√d)) = exp(−‖q' − k'‖²/2) with x' = x/d^¼. By Bochner's theorem it is the
characteristic function of ω ~ N(0, I_d), so with m/2 frequencies ω_r

    φ(x) = √(2/m) [cos(ω_r·x'), sin(ω_r·x')]_{r=1..m/2},   φ(q)·φ(k) = (2/m) Σ_r cos(ω_r·(q' − k')),

an unbiased estimate of rbf (E_ω = exp(−‖q'−k'‖²/2)) with feature dimension m. The [cos, sin] pairs have lower
variance than the phase-shifted cos(ω·x + b) form (Sutherland & Schneider 2015, "On the Error of Random Fourier
Features"), and the frequencies are orthogonal Gaussian blocks (Yu et al. 2016), drawn and redrawn like FAVOR+'s
(``_random_draws.py``). The kernel this module computes is κ_ω for the CURRENT draw.

Properties on (q, k): symmetric; positive definite (explicit feature map); CAN BE NEGATIVE — κ_ω is a sum of
cosines, negative wherever the estimate undershoots a small rbf value. So it uses the signed normalisation:
``normalization: sum`` (default — the only one that factorises through φ, hence the linear path) divides by
Σ_j κ_ij with the relative guard of ``attention/normaliser.py``; ``abs`` divides by Σ_j |κ_ij| on the exact and
tiled paths. Features are bounded (|φ| ≤ √(2/m)), so nothing needs stabilising.

Paths: ``linear`` (default beyond Tq·Tk = 128², and what ``fast`` runs with ``sum``) O(T·m·Dv); ``exact``;
``tiled`` (what ``fast`` runs with ``abs``) over the same score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kernel_attention.kernels._random_draws import RandomDrawKernel, validate_draws
from kernel_attention.kernels.base import KERNELS, Positions, SignedKernelConfig
from kernel_attention.registry import ConfigError


@dataclass
class RFFConfig(SignedKernelConfig):
    # Feature dimension m: an even integer >= 2 (m/2 frequencies, a cos and a sin feature each).
    m: int = 256
    # 0 = never redraw; N > 0 = redraw ω every N forward calls in training mode (never in eval).
    redraw_every: int = 0
    # sum: Σκ (unbiased for rbf attention, linear path); abs: Σ|κ| (exact/tiled paths only).
    normalization: str = "sum"

    def validate(self) -> None:
        super().validate()
        validate_draws(self.m, self.redraw_every)
        if self.m % 2:
            raise ConfigError(f"kernel.m={self.m} must be even (m/2 frequencies, each a cos and a sin feature)")


@KERNELS.register("rff")
class RFFKernel(RandomDrawKernel):
    """κ_ω(q, k) = (2/m) Σ_r cos(ω_r·(q−k)/d^¼), unbiased for rbf: feature dim m, symmetric, PD, signed."""

    Config = RFFConfig
    symmetric = True
    positive_definite = True
    can_be_negative = True
    default_path = "linear"
    auto_exact_below = 128 * 128  # as random_features: the feature path wins from T ≈ 128 on CPU

    def __init__(self, cfg: RFFConfig, head_dim: int, heads: int = 1) -> None:
        super().__init__(cfg, head_dim, heads, cfg.m // 2, cfg.redraw_every)
        self.m = cfg.m

    def feature_dim(self) -> float:
        return self.m

    def feature_map(self, x: Tensor) -> Tensor:
        proj = x @ (self.omega.to(x.dtype) * self.head_dim**-0.25).T  # (B, H, T, m/2) = ω·x'
        return torch.cat([proj.cos(), proj.sin()], dim=-1).mul_((2.0 / self.m) ** 0.5)  # (B, H, T, m)

    def score(self, q: Tensor, k: Tensor) -> Tensor:
        return self.feature_map(q) @ self.feature_map(k).transpose(-2, -1)  # (B, H, Tq, Tk)

    def fast(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, key_padding_mask: Tensor | None, pos: Positions
    ) -> Tensor:
        if self.normalization == "sum":
            return self.linear(q, k, v, causal=causal, key_padding_mask=key_padding_mask, pos=pos)  # (B,H,Tq,Dv)
        return self.tiled(q, k, v, causal=causal, key_padding_mask=key_padding_mask, pos=pos)  # Σ|κ|
