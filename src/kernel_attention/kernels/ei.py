"""``ei``: the exponentiated intersection kernel κ(q, k) = exp(Σ_l min(q_l, k_l) / √d).

Wright & Gonzalez 2021, "Transformers are Deep Infinite-Dimensional Non-Mercer Binary Kernel Machines",
who propose it as an alternative infinite-dimensional kernel to edp, built from the histogram intersection
kernel (Swain & Ballard 1991; Maji et al. 2008). The 1/√d matches edp's scaling.

Properties on (q, k): symmetric. Positive definite on all of R^d, including negative coordinates: since
min(a, b) = (a + b − |a − b|)/2, each min(q_l, k_l) is conditionally positive definite (f(a)+f(b) terms vanish
against Σc = 0 and −|a−b| is CPD), sums of CPD kernels are CPD, and exp(t·CPD) is PD for every t > 0
(Schoenberg 1938; Berg, Christensen & Ressel 1984). Never negative; infinite-dimensional feature space.

Paths: exact and fast (tiled) share ``log_score``, which uses Σ min = (Σq + Σk − ‖q−k‖₁)/2 with
``torch.cdist(p=1)`` — no (B, H, Tq, Tk, D) tensor. Not a function of q·k, so there is no flex or SDPA route.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from kernel_attention.attention.distances import min_sums
from kernel_attention.attention.tile_scores import L1Score, TileScore
from kernel_attention.kernels.base import INF, KERNELS, Kernel, KernelConfig


@dataclass
class EIConfig(KernelConfig):
    pass


@KERNELS.register("ei")
class EIKernel(Kernel):
    """κ(q, k) = exp(Σ_l min(q_l, k_l)/√d): infinite feature dimension, symmetric, PD, positive."""

    Config = EIConfig
    symmetric = True
    positive_definite = True
    can_be_negative = False

    def feature_dim(self) -> float:
        return INF

    def log_score(self, q: Tensor, k: Tensor) -> Tensor:
        return min_sums(q, k) / math.sqrt(self.head_dim)  # (B, H, Tq, Tk)

    def tile_score(self) -> TileScore:
        # Σ min / √d = (Σq + Σk − ‖q−k‖₁) / (2√d)
        h = 0.5 / math.sqrt(self.head_dim)
        return L1Score(h, -h)
