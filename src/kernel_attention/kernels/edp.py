"""``edp``: the exponentiated dot product, κ(q, k) = exp(q·k / √d) — standard softmax attention.

Vaswani et al. 2017, "Attention Is All You Need". As a function of (q, k) it is symmetric and positive
definite (exp of a dot product: a power series with non-negative coefficients, each term a PD kernel) with an
infinite-dimensional feature space. Wright & Gonzalez 2021 (§4) call attention non-Mercer because the kernel
*over tokens*, κ(t, t') = exp(W_Q t · W_K t' / √d), is asymmetric and indefinite when W_Q ≠ W_K — true of
every kernel here; the flags in this package describe κ on (q, k) so that kernels can be told apart.
The fast path is ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels where available).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from kernel_attention.kernels.base import INF, KERNELS, Kernel, KernelConfig, Positions, ScoreMod, keep_mask


@dataclass
class EDPConfig(KernelConfig):
    pass


def sdpa(
    q: Tensor, k: Tensor, v: Tensor, *, causal: bool, key_padding_mask: Tensor | None, scale: float | None = None
) -> Tensor:
    """SDPA with our mask conventions; rows with every key masked return 0 instead of NaN."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    if key_padding_mask is None and (not causal or Tq == Tk):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)  # (B, H, Tq, Dv)
    mask = keep_mask(Tq, Tk, causal=causal, key_padding_mask=key_padding_mask, device=q.device)  # (B|1,1,Tq,Tk)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # (B, H, Tq, Dv)
    empty = ~mask.any(dim=-1, keepdim=True)  # (B|1, 1, Tq, 1): rows with nothing to attend to
    return out.masked_fill(empty, 0.0)


@KERNELS.register("edp")
class EDPKernel(Kernel):
    """κ(q, k) = exp(q·k/√d): infinite feature dimension, symmetric and PD on (q, k)."""

    Config = EDPConfig
    symmetric = True
    positive_definite = True
    can_be_negative = False
    auto_exact_below = 0  # SDPA beats materialising κ at every size
    half_precision_fast = True  # SDPA in bf16 on CUDA (flash); see Kernel.half_precision_fast

    def feature_dim(self) -> float:
        return INF

    def log_score(self, q: Tensor, k: Tensor) -> Tensor:
        return (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, Tq, Tk)

    def flex_score_mod(self, q: Tensor, k: Tensor) -> ScoreMod:
        return lambda score, b, h, qi, ki: score  # softmax is already exp(q·k/√d)

    def fast(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, key_padding_mask: Tensor | None, pos: Positions
    ) -> Tensor:
        return sdpa(q, k, v, causal=causal, key_padding_mask=key_padding_mask)  # (B, H, Tq, Dv)
