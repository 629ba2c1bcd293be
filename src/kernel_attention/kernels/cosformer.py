"""``cosformer``: ReLU features with cos re-weighting by token distance (Qin et al. 2022, "cosFormer: Rethinking
Softmax in Attention", ICLR):

    κ(q_i, k_j) = relu(q_i)·relu(k_j) · cos(π/2 · (i − j)/M)

with i, j the tokens' positions. Ptolemy's identity cos(a − b) = cos a cos b + sin a sin b makes it linear:
φ(x, i) = [relu(x) cos θ_i, relu(x) sin θ_i], θ_i = π i/(2M), feature dimension 2d. The re-weighting concentrates
attention on nearby tokens (a locality prior softmax learns by itself).

M: the paper sets M to the sequence length (its code: the batch's longest). Here it is a setting, fixed per run,
so that κ between two tokens never depends on how long the batch's padding or the decoded prefix happens to be
— a cached decoding step then computes exactly what the full pass computes. The yaml's default follows the
paper's rule on each task: the block size on language modelling, 64 on translation (Multi30k, BPE 4k: the longest
of source and target is 17 tokens on average, 36 at the 99th percentile, 61 at most). Positions beyond M keep
θ = π/2 (θ_i = π/2 · min(i, M)/M), an extension of the paper's range [0, π/2] that keeps every angle difference
within ±π/2 — so κ ≥ 0 at any length (decoding may run past M) — while tokens beyond M are no longer told apart
by distance.

Positions: queries and keys are numbered within their own sequence (cross-attention pairs target position i
with source position j, as the published code does); during cached decoding the model passes the offset of the
new tokens.

Properties on (q, k) (at given positions): symmetric (cos is even); positive definite (explicit features
Φ = [relu(x) cos θ, relu(x) sin θ]); never negative (|θ_i − θ_j| ≤ π/2); feature dimension 2d. A query with relu(q) = 0
sees only zero weights and returns 0.

Paths: ``linear`` (default beyond Tq·Tk = 128², and ``fast``) O(T·2d·Dv); ``exact``; ``tiled`` over the same
score with each tile's positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kernel_attention.kernels.base import KERNELS, Kernel, KernelConfig, Positions
from kernel_attention.registry import ConfigError


@dataclass
class CosformerConfig(KernelConfig):
    # Re-weighting horizon M: cos(π/2·(i−j)/M) for positions i, j ≤ M (beyond M the angle stays at π/2).
    M: int = 64

    def validate(self) -> None:
        super().validate()
        if self.M < 1:
            raise ConfigError(f"kernel.M={self.M} must be an integer >= 1 (about the longest sequence)")


@KERNELS.register("cosformer")
class CosformerKernel(Kernel):
    """κ(q_i, k_j) = relu(q_i)·relu(k_j) cos(θ_i − θ_j), θ_i = π/2·min(i, M)/M: feature dim 2d, symmetric, PD."""

    Config = CosformerConfig
    symmetric = True
    positive_definite = True
    can_be_negative = False
    position_aware = True
    default_path = "linear"
    auto_exact_below = 128 * 128  # as the other feature-map kernels

    def __init__(self, cfg: CosformerConfig, head_dim: int, heads: int = 1) -> None:
        super().__init__(cfg, head_dim, heads)
        self.M = cfg.M

    def feature_dim(self) -> float:
        return 2 * self.head_dim

    def angles(self, pos: Tensor, dtype: torch.dtype) -> Tensor:
        """θ_i = π/2 · min(max(i, 0), M)/M: (T,) positions → (T,) angles in [0, π/2]."""
        return pos.clamp(0, self.M).to(dtype) * (math.pi / (2 * self.M))

    def feature_map(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        """φ(x, i) = [relu(x) cos θ_i, relu(x) sin θ_i]; pos (T,) defaults to 0..T−1."""
        if pos is None:
            pos = torch.arange(x.shape[-2], device=x.device)
        theta = self.angles(pos, x.dtype)[:, None]  # (T, 1)
        r = F.relu(x)  # (B, H, T, D)
        return torch.cat([r * theta.cos(), r * theta.sin()], dim=-1)  # (B, H, T, 2D)

    def score(self, q: Tensor, k: Tensor, qp: Tensor, kp: Tensor) -> Tensor:  # type: ignore[override]
        """relu(q)relu(k)ᵀ ⊙ cos(θ_i − θ_j) for positions qp (Tq,), kp (Tk,): (B, H, Tq, Tk)."""
        dtheta = self.angles(qp, q.dtype)[:, None] - self.angles(kp, q.dtype)[None, :]  # (Tq, Tk)
        return (F.relu(q) @ F.relu(k).transpose(-2, -1)) * torch.cos(dtheta)

    def fast(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, key_padding_mask: Tensor | None, pos: Positions
    ) -> Tensor:
        return self.linear(q, k, v, causal=causal, key_padding_mask=key_padding_mask, pos=pos)  # (B, H, Tq, Dv)
