"""``linear``: κ(q, k) = φ(q)·φ(k) with φ(x) = elu(x) + 1 — "linear attention".

Katharopoulos et al. 2020, "Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention".
φ is applied elementwise and is > 0, so κ > 0 and the plain sum normaliser is safe. No 1/√d: the map is
used as published (a positive scale of κ would cancel in the normaliser anyway).

Properties on (q, k): symmetric (the same φ on both sides); positive definite (an explicit feature map makes
every Gram matrix ΦΦᵀ ⪰ 0); never negative; feature dimension d.

Paths: ``linear`` = ``fast`` (default for Tq·Tk > 128²) is O(T·d·Dv) through φ (causal: an RNN over chunks);
``exact`` is the reference (and what ``auto`` runs on shorter inputs, where it is quicker).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from kernel_attention.kernels.base import KERNELS, Kernel, KernelConfig, Positions


@dataclass
class LinearConfig(KernelConfig):
    pass


@KERNELS.register("linear")
class LinearKernel(Kernel):
    """κ(q, k) = (elu(q)+1)·(elu(k)+1): feature dim d, symmetric, PD, positive."""

    Config = LinearConfig
    symmetric = True
    positive_definite = True
    can_be_negative = False
    default_path = "linear"
    auto_exact_below = 128 * 128  # measured crossover on CPU: exact wins at T = 32, linear 2× faster at T = 256

    def feature_dim(self) -> float:
        return self.head_dim

    def feature_map(self, x: Tensor) -> Tensor:
        return F.elu(x).add_(1.0)  # (B, H, T, D); in place: elu's backward needs its input, not its output

    def score(self, q: Tensor, k: Tensor) -> Tensor:
        return self.feature_map(q) @ self.feature_map(k).transpose(-2, -1)  # (B, H, Tq, Tk)

    def fast(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, key_padding_mask: Tensor | None, pos: Positions
    ) -> Tensor:
        return self.linear(q, k, v, causal=causal, key_padding_mask=key_padding_mask, pos=pos)  # (B, H, Tq, Dv)
