"""``rbf``: the Gaussian kernel κ(q, k) = exp(−‖q − k‖² / (2√d)).

Tsai et al. 2019, "Transformer Dissection: A Unified Understanding of Transformer's Attention via the Lens of
Kernel" (EMNLP), which compares RBF with the exponential (edp) kernel; Wright & Gonzalez 2021 discuss it as
the stationary counterpart of edp. The bandwidth 2√d makes the exponent equal q·k/√d − (‖q‖²+‖k‖²)/(2√d), i.e.
edp with a per-key penalty on the norm (the per-query term cancels in the normaliser).

Properties on (q, k): symmetric (depends on ‖q−k‖ only); positive definite (Gaussian kernels are PD on R^d for
every bandwidth, Schoenberg 1938); never negative; infinite-dimensional feature space (its Gram matrices on
distinct points are strictly PD for any number of points).

Fast path: an exact reduction to SDPA. With q' = [q, 1] and k' = [k, −‖k‖²/2], q'·k'/√d = q·k/√d − ‖k‖²/(2√d),
which differs from log κ only by −‖q‖²/(2√d), a per-row constant the normaliser cancels. The extra coordinate is
zero-padded to a multiple of 8 (and v to the same width) so fused kernels accept the head size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kernel_attention.attention.distances import sq_dists
from kernel_attention.kernels.base import INF, KERNELS, Kernel, KernelConfig, Positions, ScoreMod
from kernel_attention.kernels.edp import sdpa


@dataclass
class RBFConfig(KernelConfig):
    pass


@KERNELS.register("rbf")
class RBFKernel(Kernel):
    """κ(q, k) = exp(−‖q−k‖²/(2√d)): infinite feature dimension, symmetric, PD, positive."""

    Config = RBFConfig
    symmetric = True
    positive_definite = True
    can_be_negative = False
    auto_exact_below = 0  # SDPA beats materialising κ at every size

    def feature_dim(self) -> float:
        return INF

    def log_score(self, q: Tensor, k: Tensor) -> Tensor:
        return -sq_dists(q, k) / (2.0 * math.sqrt(self.head_dim))  # (B, H, Tq, Tk)

    def fast(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, key_padding_mask: Tensor | None, pos: Positions
    ) -> Tensor:
        D = q.shape[-1]
        extra = 8 - D % 8  # ≥ 1 slot for the norm coordinate, rest zeros to keep the head size a multiple of 8
        half_kk = 0.5 * (k * k).sum(dim=-1, keepdim=True)  # (B, H, Tk, 1)
        q_aug = torch.cat([q, torch.ones_like(q[..., :1]), q.new_zeros(*q.shape[:-1], extra - 1)], dim=-1)
        k_aug = torch.cat([k, -half_kk, k.new_zeros(*k.shape[:-1], extra - 1)], dim=-1)  # (B, H, Tk, D+extra)
        # q_aug (B, H, Tq, D+extra). The scale stays 1/√d of the ORIGINAL head size. v is zero-padded to the
        # same width when Dv == D, because fused kernels (flash on CPU and GPU) want one head size for q, k, v;
        # otherwise SDPA falls back to the math path, which materialises the (Tq, Tk) weights.
        Dv = v.shape[-1]
        v_in = F.pad(v, (0, D + extra - Dv)) if Dv <= D + extra else v  # (B, H, Tk, D+extra)
        out = sdpa(q_aug, k_aug, v_in, causal=causal, key_padding_mask=key_padding_mask, scale=1.0 / math.sqrt(D))
        return out[..., :Dv]  # (B, H, Tq, Dv)

    def flex_score_mod(self, q: Tensor, k: Tensor) -> ScoreMod:
        penalty = (k * k).sum(dim=-1) / (2.0 * math.sqrt(self.head_dim))  # (B, H, Tk)
        return lambda score, b, h, qi, ki: score - penalty[b, h, ki]



