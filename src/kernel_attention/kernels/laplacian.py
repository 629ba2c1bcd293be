"""``laplacian``: the (Euclidean) Laplacian kernel κ(q, k) = exp(−‖q − k‖₂ / σ), σ = d^¼ by default.

The Laplacian / exponential kernel of kernel methods (e.g. Schölkopf & Smola 2002, "Learning with Kernels");
in attention it is one of the stationary kernels Wright & Gonzalez 2021 contrast with edp. σ = d^¼ keeps the
exponent's scale comparable to edp's q·k/√d for q, k with unit-variance coordinates (‖q−k‖ ~ √(2d), so
‖q−k‖/d^¼ ~ √2·d^¼, as the RBF exponent ‖q−k‖²/(2√d) ~ √d). Set ``scale`` to override σ.

Properties on (q, k): symmetric; positive definite (exp(−t^½) is completely monotone in t = ‖q−k‖², so by
Schoenberg's theorem exp(−‖q−k‖/σ) is PD on every R^d); never negative; infinite-dimensional feature space.

Paths: exact and fast (tiled) share ``log_score``, which gets ‖q−k‖ from one matmul (‖q‖²+‖k‖²−2q·k). The
square root is clamped at 1e-12 inside so coincident q = k has a finite (zero) gradient instead of NaN.
Flex (opt-in) expresses the same with captured ‖q‖², ‖k‖² and scale 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kernel_attention.attention.distances import sq_dists
from kernel_attention.attention.tile_scores import SqDistScore, TileScore
from kernel_attention.kernels.base import INF, KERNELS, Kernel, KernelConfig, ScoreMod
from kernel_attention.registry import ConfigError

_TINY = 1e-12


def _neg_dist(d2: Tensor, sigma: float) -> Tensor:
    """log κ = −√d2/σ from squared distances (overwritten), as ``log_score`` computes it."""
    return d2.clamp_min_(_TINY).sqrt_().mul_(-1.0 / sigma)  # (B, H, tq, tk)


def _neg_dist_and_grad(d2: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """(−√d2/σ, d/dd2 = −1/(2σ√d2)); the derivative is 0 where the clamp at _TINY holds, as autograd through
    clamp_min gives. Module-level so the tiled path's compiled tiles are shared by all instances."""
    clamped = d2 <= _TINY  # (B, H, tq, tk) bool
    r = d2.clamp_min_(_TINY).sqrt_()  # (B, H, tq, tk) = √d2, in place
    df = r.reciprocal().mul_(-0.5 / sigma).masked_fill_(clamped, 0.0)
    return r.mul_(-1.0 / sigma), df


@dataclass
class LaplacianConfig(KernelConfig):
    # σ in exp(−‖q−k‖/σ); null = d^¼ (d = head dim). Must be > 0.
    scale: float | None = None

    def validate(self) -> None:
        super().validate()
        if self.scale is not None and not self.scale > 0:
            raise ConfigError(f"kernel.scale={self.scale} must be > 0, or null for d^(1/4)")


@KERNELS.register("laplacian")
class LaplacianKernel(Kernel):
    """κ(q, k) = exp(−‖q−k‖₂/σ): infinite feature dimension, symmetric, PD, positive."""

    Config = LaplacianConfig
    symmetric = True
    positive_definite = True
    can_be_negative = False

    @property
    def sigma(self) -> float:
        s = self.cfg.scale  # type: ignore[attr-defined]
        return float(s) if s is not None else self.head_dim**0.25

    def feature_dim(self) -> float:
        return INF

    def log_score(self, q: Tensor, k: Tensor) -> Tensor:
        return -sq_dists(q, k).clamp_min(_TINY).sqrt() / self.sigma  # (B, H, Tq, Tk)

    def tile_score(self) -> TileScore:
        return SqDistScore(_neg_dist, _neg_dist_and_grad, (self.sigma,))

    def flex_scale(self) -> float:
        return 1.0  # the score_mod needs the raw q·k

    def flex_score_mod(self, q: Tensor, k: Tensor) -> ScoreMod:
        qq = (q * q).sum(dim=-1)  # (B, H, Tq)
        kk = (k * k).sum(dim=-1)  # (B, H, Tk)
        sigma = self.sigma

        def score_mod(score: Tensor, b: Tensor, h: Tensor, qi: Tensor, ki: Tensor) -> Tensor:
            d2 = qq[b, h, qi] + kk[b, h, ki] - 2.0 * score
            return -torch.sqrt(torch.clamp(d2, min=_TINY)) / sigma

        return score_mod
