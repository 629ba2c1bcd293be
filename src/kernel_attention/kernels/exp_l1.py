"""``exp_l1``: the L1 Laplacian kernel κ(q, k) = exp(−‖q − k‖₁ / σ), σ = √d by default.

A classic stationary kernel (the product over coordinates of 1-D Laplace kernels; e.g. Schölkopf & Smola 2002,
"Learning with Kernels"), included as a cheap extra next to ``laplacian`` (Euclidean) and ``ei`` (which uses
the same ‖q−k‖₁ plus Σq + Σk): it isolates the effect of the L1 geometry. σ = √d makes the exponent O(√d) for
unit-variance coordinates, like edp's q·k/√d. Set ``scale`` to override σ.

Properties on (q, k): symmetric; positive definite (a product of PD 1-D kernels exp(−|a−b|/σ)); never
negative; infinite-dimensional feature space.

Paths: exact and fast (tiled) share ``log_score`` with ``torch.cdist(p=1)`` — no (B, H, Tq, Tk, D) tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kernel_attention.attention.distances import l1_dists
from kernel_attention.attention.tile_scores import L1Score, TileScore
from kernel_attention.kernels.base import INF, KERNELS, Kernel, KernelConfig
from kernel_attention.registry import ConfigError


@dataclass
class ExpL1Config(KernelConfig):
    # σ in exp(−‖q−k‖₁/σ); null = √d (d = head dim). Must be > 0.
    scale: float | None = None

    def validate(self) -> None:
        super().validate()
        if self.scale is not None and not self.scale > 0:
            raise ConfigError(f"kernel.scale={self.scale} must be > 0, or null for sqrt(d)")


@KERNELS.register("exp_l1")
class ExpL1Kernel(Kernel):
    """κ(q, k) = exp(−‖q−k‖₁/σ): infinite feature dimension, symmetric, PD, positive."""

    Config = ExpL1Config
    symmetric = True
    positive_definite = True
    can_be_negative = False

    @property
    def sigma(self) -> float:
        s = self.cfg.scale  # type: ignore[attr-defined]
        return float(s) if s is not None else self.head_dim**0.5

    def feature_dim(self) -> float:
        return INF

    def log_score(self, q: Tensor, k: Tensor) -> Tensor:
        return -l1_dists(q, k) / self.sigma  # (B, H, Tq, Tk)

    def tile_score(self) -> TileScore:
        return L1Score(0.0, -1.0 / self.sigma)
