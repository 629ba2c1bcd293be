"""``intersection``: the intersection kernel κ(q, k) = Σ_l min(q_l, k_l), used directly (not exponentiated).

The histogram intersection kernel (Swain & Ballard 1991; shown PD on non-negative inputs by Maji et al. 2008,
"Classification using intersection kernel SVMs is efficient"). Wright & Gonzalez 2021 build their EI kernel
from it; here it is the un-exponentiated control. On q, k ∈ R^d (which can be negative) κ is signed, so the
kernel smoother needs a normaliser that cannot divide by ~0: ``normalization: abs`` (default) divides by
Σ_j |κ_ij| — the output is then a bounded signed average of v — while ``sum`` is the formula as written, with
the output capped at (largest visible ‖v‖)/``eps`` where Σκ cancels (``attention/normaliser.py``). We know of
no published attention result with this raw kernel; the option exists so
the choice is explicit and recorded. A positive scale of κ cancels in either normaliser, so there is none.

Properties on (q, k): symmetric. NOT positive definite on R^d (κ(x, x) = Σ x_l < 0 for x with negative sum, so
a 1×1 Gram matrix is already negative); it is conditionally PD (see ``ei``). Can be negative. Feature
dimension: infinite — on non-negative inputs min(a, b) = ∫ 1[t < a]·1[t < b] dt, a feature map into L²(R₊),
and the Gram matrix of n distinct positive scalars (Brownian-motion covariance) has rank n for every n, so no
finite map exists; on R^d there is no Hilbert-space map at all (indefinite), only a Kreĭn-space one, which is
infinite-dimensional for the same reason.

Paths: exact and fast (tiled) share ``score``: (Σq + Σk − ‖q−k‖₁)/2 via ``torch.cdist(p=1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kernel_attention.attention.distances import min_sums
from kernel_attention.attention.tile_scores import L1Score, TileScore
from kernel_attention.kernels.base import INF, KERNELS, Kernel, SignedKernelConfig


@dataclass
class IntersectionConfig(SignedKernelConfig):
    pass


@KERNELS.register("intersection")
class IntersectionKernel(Kernel):
    """κ(q, k) = Σ_l min(q_l, k_l): infinite feature dimension, symmetric, not PD, signed."""

    Config = IntersectionConfig
    symmetric = True
    positive_definite = False
    can_be_negative = True

    def feature_dim(self) -> float:
        return INF

    def score(self, q: Tensor, k: Tensor) -> Tensor:
        return min_sums(q, k)  # (B, H, Tq, Tk)

    def tile_score(self) -> TileScore:
        return L1Score(0.5, -0.5)  # Σ min = (Σq + Σk − ‖q−k‖₁) / 2
