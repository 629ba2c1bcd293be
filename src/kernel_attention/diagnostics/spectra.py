"""Matrix diagnostics of one attention head on one sequence: asymmetry, indefiniteness, rank, sharpness.

Pure functions of float64 matrices (no model code), so the tests can check each one against a hand-built matrix.
Wright & Gonzalez 2021 ("Transformers are Deep Infinite-Dimensional Non-Mercer Binary Kernel Machines") argue
that the token kernel κ(t_i, t_j) = κ(W_Q t_i, W_K t_j) is asymmetric and indefinite; these are the numbers that
measure how much:

- ``asymmetry(K) = ‖K − Kᵀ‖_F / ‖K‖_F`` ∈ [0, 2]: with S = (K+Kᵀ)/2 and N = (K−Kᵀ)/2, ‖K‖² = ‖S‖² + ‖N‖² and
  ‖K − Kᵀ‖ = 2‖N‖, so it is 0 for a symmetric K, √2 when both parts carry equal energy, 2 for an antisymmetric K.
- ``negative_mass(K) = Σ_{λ<0} |λ| / Σ |λ|`` over the eigenvalues λ of S: 0 for a positive semi-definite S,
  the share of the spectrum's absolute mass on the negative side otherwise; ``eig_ratio = λ_min / λ_max``.
- ``effective_rank(σ) = exp(H(p))``, p_i = σ_i / Σσ (Roy & Vetterli 2007, "The effective rank: a measure of
  effective dimensionality"): between 1 (one direction) and the number of non-zero σ (flat spectrum).
- ``numerical_rank(σ, rtol) = #{σ_i > rtol · σ_max}``.
- ``row_entropy(A)``: Shannon entropy (nats) of each row of a row-stochastic matrix.

Every quantity here is invariant to multiplying K by a positive constant, which is what lets the caller rescale
a kernel matrix that would overflow (edp's exp(q·k/√d)) by exp(−max log κ) first.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Relative threshold of the numerical rank: σ_i counts when σ_i > RANK_RTOL · σ_max. Far above float64 round-off
# (~1e-16 relative, so a rank-d product stays rank d) and far below any direction that carries attention mass.
RANK_RTOL = 1e-6


def asymmetry(K: Tensor) -> Tensor:
    """‖K − Kᵀ‖_F / ‖K‖_F per matrix: (..., n, n) → (...); 0 for a zero matrix."""
    num = torch.linalg.matrix_norm(K - K.transpose(-2, -1))  # (...)
    den = torch.linalg.matrix_norm(K)  # (...)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(K.dtype).tiny), 0.0)


def symmetric_spectrum(K: Tensor) -> Tensor:
    """Eigenvalues (ascending) of the symmetric part (K + Kᵀ)/2: (..., n, n) → (..., n)."""
    return torch.linalg.eigvalsh(0.5 * (K + K.transpose(-2, -1)))  # (..., n)


def negative_mass(eigenvalues: Tensor) -> Tensor:
    """Σ_{λ<0} |λ| / Σ |λ| of each spectrum: (..., n) → (...); 0 for an all-zero spectrum."""
    total = eigenvalues.abs().sum(-1)  # (...)
    neg = (-eigenvalues).clamp_min(0).sum(-1)  # (...)
    return torch.where(total > 0, neg / total.clamp_min(torch.finfo(eigenvalues.dtype).tiny), 0.0)


def eig_ratio(eigenvalues: Tensor) -> Tensor:
    """λ_min / λ_max of each ascending spectrum: (..., n) → (...). Negative when the form is indefinite; NaN
    when λ_max ≤ 0 (no positive direction: the ratio would change meaning)."""
    lo, hi = eigenvalues[..., 0], eigenvalues[..., -1]  # (...), (...)
    return torch.where(hi > 0, lo / hi.clamp_min(torch.finfo(eigenvalues.dtype).tiny), math.nan)


def singular_values(M: Tensor) -> Tensor:
    """Singular values, descending: (..., m, n) → (..., min(m, n))."""
    return torch.linalg.svdvals(M)  # (..., min(m, n))


def effective_rank(sv: Tensor) -> Tensor:
    """Roy & Vetterli 2007: exp of the Shannon entropy of σ / Σσ: (..., r) → (...); 0 for a zero matrix."""
    total = sv.sum(-1, keepdim=True)  # (..., 1)
    p = sv / total.clamp_min(torch.finfo(sv.dtype).tiny)  # (..., r)
    h = -(torch.where(p > 0, p * p.clamp_min(torch.finfo(sv.dtype).tiny).log(), 0.0)).sum(-1)  # (...)
    return torch.where(total[..., 0] > 0, h.exp(), 0.0)


def numerical_rank(sv: Tensor, rtol: float = RANK_RTOL) -> Tensor:
    """#{σ_i > rtol · σ_max} of descending singular values: (..., r) → (...) int64."""
    return (sv > rtol * sv[..., :1]).sum(-1)


def row_entropy(A: Tensor) -> Tensor:
    """Shannon entropy (nats) of each row of a row-stochastic A (zeros contribute 0): (..., m, n) → (..., m)."""
    return -(torch.where(A > 0, A * A.clamp_min(torch.finfo(A.dtype).tiny).log(), 0.0)).sum(-1)
