"""Explicit feature maps shared by kernels; the linear-time attention they allow is in ``linear_attention.py``.

``symmetric_power_features`` is the exact finite feature map of (x·y)^p: one coordinate per multiset α of p
indices, √(multinomial(p; α)) · Π x_α, so its length is C(n+p−1, p) instead of n^p.
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
from torch import Tensor


@functools.lru_cache(maxsize=32)
def _multisets(n: int, p: int) -> tuple[Tensor, Tensor]:
    """All multisets of p indices from range(n) as an (F, p) index tensor, and √multinomial coefficients (F,)."""
    combos = list(itertools.combinations_with_replacement(range(n), p))
    idx = torch.tensor(combos, dtype=torch.long).reshape(len(combos), p)  # (F, p)
    coef = []
    for c in combos:
        counts = [sum(1 for _ in g) for _, g in itertools.groupby(c)]
        coef.append(math.factorial(p) / math.prod(math.factorial(m) for m in counts))
    return idx, torch.tensor(coef, dtype=torch.float64).sqrt()  # (F, p), (F,)


def symmetric_power_features(x: Tensor, p: int) -> Tensor:
    """φ with φ(x)·φ(y) = (x·y)^p exactly: (..., n) → (..., C(n+p−1, p)); p = 0 gives the constant 1."""
    if p == 0:
        return x.new_ones(*x.shape[:-1], 1)  # (..., 1)
    idx, coef = _multisets(x.shape[-1], p)
    idx = idx.to(x.device)  # (F, p)
    phi = x[..., idx[:, 0]]  # (..., F)
    for t in range(1, p):
        phi = phi * x[..., idx[:, t]]  # (..., F)
    return phi * coef.to(device=x.device, dtype=x.dtype)  # (..., F)


def symmetric_power_dim(n: int, p: int) -> int:
    """Length of ``symmetric_power_features`` for n inputs and degree p: C(n+p−1, p)."""
    return math.comb(n + p - 1, p)
