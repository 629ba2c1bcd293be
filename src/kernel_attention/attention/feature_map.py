"""Explicit feature maps and the linear-time attention they allow.

``linear_attention`` computes Σ_j φ(q_i)·φ(k_j) v_j / Σ_j φ(q_i)·φ(k_j) in O(T·F·Dv) (Katharopoulos et al. 2020,
"Transformers are RNNs"). Non-causal: one pass of φ(K)ᵀ[V, 1]. Causal: chunks of C tokens — inside a chunk the
C × C weights are masked explicitly, across chunks a prefix sum of φ(k)ᵀ[v, 1] states carries the past. The
denominator rides along as an extra all-ones column of v, so numerator and normaliser share every matmul.

``symmetric_power_features`` is the exact finite feature map of (x·y)^p: one coordinate per multiset α of p
indices, √(multinomial(p; α)) · Π x_α, so its length is C(n+p−1, p) instead of n^p.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable

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


def linear_attention(
    phi_q: Tensor,
    phi_k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    key_padding_mask: Tensor | None,
    safe_denominator: Callable[[Tensor], Tensor],
    chunk: int = 64,
) -> Tensor:
    """φ(q) (B, H, Tq, F), φ(k) (B, H, Tk, F), v (B, H, Tk, Dv) → (B, H, Tq, Dv), 'sum' normaliser.

    Masks as in ``kernels.base`` (causal is bottom-right aligned). ``safe_denominator`` is the kernel's, so
    this path divides exactly like the exact path does."""
    Dv = v.shape[-1]
    if key_padding_mask is not None:
        keep = ~key_padding_mask.to(device=phi_k.device, dtype=torch.bool)[:, None, :, None]  # (B, 1, Tk, 1)
        phi_k = phi_k * keep  # (B, H, Tk, F): padded keys contribute nothing
    v1 = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)  # (B, H, Tk, Dv+1): last column sums the weights
    if not causal:
        kv = phi_k.transpose(-2, -1) @ v1  # (B, H, F, Dv+1)
        nd = phi_q @ kv  # (B, H, Tq, Dv+1)
    else:
        nd = _causal(phi_q, phi_k, v1, chunk)  # (B, H, Tq, Dv+1)
    num, den = nd[..., :Dv], nd[..., Dv:]  # (B, H, Tq, Dv), (B, H, Tq, 1)
    return num / safe_denominator(den)  # (B, H, Tq, Dv)


def _causal(phi_q: Tensor, phi_k: Tensor, v1: Tensor, chunk: int) -> Tensor:
    """Bottom-right aligned causal Σ_{j ≤ i+Tk−Tq} φ(q_i)·φ(k_j) v1_j. → (B, H, Tq, Dv+1)."""
    B, H, Tq, F = phi_q.shape
    Tk, E = phi_k.shape[-2], v1.shape[-1]
    offset = Tk - Tq
    if offset < 0:
        # The first −offset queries precede every key: they see nothing (0 output, like the exact path).
        tail = _causal(phi_q[:, :, -offset:], phi_k, v1, chunk)  # (B, H, Tk, E)
        return torch.cat([tail.new_zeros(B, H, -offset, E), tail], dim=2)  # (B, H, Tq, E)
    # Keys [0, offset) are visible to every query: fold them into the initial state.
    state0 = phi_k[:, :, :offset].transpose(-2, -1) @ v1[:, :, :offset]  # (B, H, F, E)
    phi_k, v1 = phi_k[:, :, offset:], v1[:, :, offset:]  # (B, H, Tq, F), (B, H, Tq, E): aligned with queries
    C = min(chunk, Tq)
    n = -(-Tq // C)
    pad = n * C - Tq  # zero-padding the tail: padded keys add nothing, padded queries are dropped
    if pad:
        phi_q, phi_k, v1 = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (phi_q, phi_k, v1))
    qc = phi_q.reshape(B, H, n, C, F)  # (B, H, n, C, F)
    kc = phi_k.reshape(B, H, n, C, F)  # (B, H, n, C, F)
    vc = v1.reshape(B, H, n, C, E)  # (B, H, n, C, E)
    states = kc.transpose(-2, -1) @ vc  # (B, H, n, F, E): what each chunk adds
    prefix = states.cumsum(dim=2) - states + state0[:, :, None]  # (B, H, n, F, E): state before each chunk
    inter = qc @ prefix  # (B, H, n, C, E)
    tri = torch.ones(C, C, dtype=torch.bool, device=phi_q.device).tril()  # (C, C) j <= i inside a chunk
    intra = ((qc @ kc.transpose(-2, -1)) * tri) @ vc  # (B, H, n, C, E)
    return (inter + intra).reshape(B, H, n * C, E)[:, :, :Tq]  # (B, H, Tq, E)
