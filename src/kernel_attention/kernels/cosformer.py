"""``cosformer``: ReLU features with cos re-weighting by token distance (Qin et al. 2022, "cosFormer: Rethinking
Softmax in Attention", ICLR):

    κ(q_i, k_j) = relu(q_i)·relu(k_j) · cos(π/2 · (i − j)/M)

with i, j the tokens' positions. Ptolemy's identity cos(a − b) = cos a cos b + sin a sin b makes it linear:
φ(x, i) = [relu(x) cos(π i/(2M)), relu(x) sin(π i/(2M))], feature dimension 2d. The re-weighting concentrates
attention on nearby tokens (a locality prior softmax learns by itself).

M: the paper sets M to the sequence length; here it is a setting, fixed per run, so that κ between two tokens
never depends on how long the batch's padding or the decoded prefix happens to be — a cached decoding step
then computes exactly what the full pass computes. κ ≥ 0 needs |i − j| < M for every pair that attends: a call
whose positions span M or more tokens stops with one line (raise ``kernel.M``). The default 1024 covers every
sequence the models' default ``max_positions`` allows; set M to the block size to get the paper's rule on a
language model (``kernel.M=256`` for 256-token blocks).

Positions: queries and keys are numbered within their own sequence (cross-attention pairs target position i
with source position j, as the published code does); during cached decoding the model passes the offset of the
new tokens.

Properties on (q, k) (at given positions): symmetric (cos is even); positive definite (explicit features
Φ = [relu(x) cos θ, relu(x) sin θ]); never negative (|i − j| < M); feature dimension 2d. A query with relu(q) = 0
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
    # Re-weighting horizon M: cos(π/2·(i−j)/M); every pair of attending positions must lie < M apart.
    M: int = 1024

    def validate(self) -> None:
        super().validate()
        if self.M < 1:
            raise ConfigError(f"kernel.M={self.M} must be an integer >= 1 (longer than any sequence)")


@KERNELS.register("cosformer")
class CosformerKernel(Kernel):
    """κ(q_i, k_j) = relu(q_i)·relu(k_j) cos(π(i−j)/(2M)): feature dim 2d, symmetric, PD, positive."""

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

    def _angles(self, pos: Tensor, dtype: torch.dtype) -> Tensor:
        return (pos.to(dtype) * (math.pi / (2 * self.M)))[:, None]  # (T, 1)

    def feature_map(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        """φ(x, i) = [relu(x) cos θ_i, relu(x) sin θ_i], θ_i = π i/(2M); pos (T,) defaults to 0..T−1."""
        if pos is None:
            pos = torch.arange(x.shape[-2], device=x.device)
        theta = self._angles(pos, x.dtype)  # (T, 1)
        r = F.relu(x)  # (B, H, T, D)
        return torch.cat([r * theta.cos(), r * theta.sin()], dim=-1)  # (B, H, T, 2D)

    def score(self, q: Tensor, k: Tensor, pos: Positions | None = None) -> Tensor:
        pos = pos or Positions()
        qp, kp = pos.q(q.shape[-2], q.device), pos.k(k.shape[-2], k.device)  # (Tq,), (Tk,)
        return self._pair_score(q, k, qp, kp)  # (B, H, Tq, Tk)

    def _pair_score(self, q: Tensor, k: Tensor, qp: Tensor, kp: Tensor) -> Tensor:
        """relu(q)relu(k)ᵀ ⊙ cos(π(i−j)/(2M)) for positions qp (tq,), kp (tk,) — also the tiled path's score."""
        dist = (qp[:, None] - kp[None, :]).to(q.dtype)  # (tq, tk)
        return (F.relu(q) @ F.relu(k).transpose(-2, -1)) * torch.cos(dist * (math.pi / (2 * self.M)))

    def _check_span(self, Tq: int, Tk: int, causal: bool, q_offset: int, k_offset: int) -> None:
        """Every attending pair must lie < M apart (else cos(π/2·(i−j)/M) ≤ 0): one line naming the fix."""
        q_last, k_last = q_offset + Tq - 1, k_offset + Tk - 1
        span = q_last - k_offset if causal else max(q_last - k_offset, k_last - q_offset)  # largest |i − j|
        if span >= self.M:
            raise ConfigError(f"kernel 'cosformer': tokens {span} positions apart attend to each other, but "
                              f"kernel.M={self.M}; set kernel.M above the longest sequence")

    def forward(self, q: Tensor, k: Tensor, v: Tensor, **kw) -> Tensor:  # type: ignore[override]
        Tq, Tk, causal, k_offset = q.shape[-2], k.shape[-2], kw.get("causal", False), kw.get("k_offset", 0)
        q_offset = kw.get("q_offset")
        q_offset = k_offset + (Tk - Tq if causal else 0) if q_offset is None else q_offset
        self._check_span(Tq, Tk, causal, q_offset, k_offset)
        return super().forward(q, k, v, **kw)  # (B, H, Tq, Dv)

    def tile_score(self):  # type: ignore[override]
        from kernel_attention.attention.tile_scores import AutogradScore

        return AutogradScore(self._pair_score, position_aware=True)

    def fast(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, key_padding_mask: Tensor | None, pos: Positions
    ) -> Tensor:
        return self.linear(q, k, v, causal=causal, key_padding_mask=key_padding_mask, pos=pos)  # (B, H, Tq, Dv)
