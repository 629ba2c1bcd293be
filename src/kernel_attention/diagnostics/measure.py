"""What one attention head computes on one sequence, as the matrices the diagnostics measure.

For a head with queries q (n_q, D) and keys k (n_k, D) of the sequence's real tokens only (padding dropped):

- **K**, the token kernel matrix K_ij = κ(q_i, k_j), on *every* (i, j) pair, causal or not: the kernel is a
  function of the two tokens' vectors, and in the decoder q_i, k_j of a causal model never depend on later tokens,
  so K is the same matrix whether or not the mask hides its upper triangle. Asymmetry and the spectrum of
  (K + Kᵀ)/2 are taken on this K, for self-attention only (cross-attention's K is n_tgt × n_src: no transpose
  compares like with like).
- **A**, the attention matrix the model actually uses: K restricted to the visible pairs (causal mask in the
  decoder) and row-normalised, A_ij = K_ij / Σ_j |K_ij|. For positive kernels this is exactly the model's
  attention; for signed kernels with ``normalization=abs`` too; with ``normalization=sum`` it differs from the
  model's weights by a per-row factor (the sign and size of Σ K_ij), which leaves the rank and |A|'s entropy
  meaningful. Entropy is that of the row |A_i·| (a distribution in every case).
- **log K** (kernels with ``log_score`` only): ``asymmetry_logK`` is the asymmetry of the centred log-kernel
  L − mean(L) (for edp the logits Q Kᵀ/√d themselves). ‖K − Kᵀ‖/‖K‖ of an exponential kernel is dominated by its
  few largest entries; the logits weigh every pair alike, and their asymmetry is what W_Q ≠ W_K causes directly.

Numerics. Kernels with ``log_score`` (edp, rbf, exp_l1, ..., FAVOR+) are evaluated in log space in float64 and
exponentiated after subtracting the largest log κ of the head's matrix: K is then κ times one positive constant
per (sequence, head), which changes none of the measured quantities (asymmetry, eigenvalue shares and ratios,
normalised singular values, ranks and attention are all invariant to a positive scale), and cannot overflow
however large a trained model's q·k/√d is. Kernels defined by a score (signed kernels, and the finite feature-map
kernels whose score is φ(q)·φ(k): linear, hedgehog, cosformer, rff, taylor, polynomial) use that score — the
same function their feature path factorises, so K has rank at most their feature dimension — divided by its
largest |entry|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from kernel_attention.diagnostics import spectra
from kernel_attention.kernels.base import Kernel, Positions


@dataclass
class HeadMatrices:
    """K (H, n_q, n_k) rescaled per head, A (H, n_q, n_k) row-normalised over visible keys, visible (n_q, n_k);
    L = log κ (H, n_q, n_k) for kernels with ``log_score``, else None."""

    K: Tensor
    A: Tensor
    visible: Tensor
    L: Tensor | None = None


def head_matrices(kernel: Kernel, q: Tensor, k: Tensor, *, causal: bool, pos: Positions) -> HeadMatrices:
    """K and A of every head for one sequence: q (H, n_q, D), k (H, n_k, D) of real tokens only. The kernel's
    own parameters and draws must be float64 too (``model.double()``)."""
    q64, k64 = q.double()[None], k.double()[None]  # (1, H, n_q, D), (1, H, n_k, D)
    n_q, n_k = q.shape[-2], k.shape[-2]
    visible = torch.ones(n_q, n_k, dtype=torch.bool)  # (n_q, n_k)
    if causal:  # bottom-right aligned, as the kernels mask
        visible = torch.arange(n_k)[None, :] <= torch.arange(n_q)[:, None] + (n_k - n_q)
    with torch.no_grad():
        if kernel.has_log_score:
            L = kernel.pair_scores(q64, k64, pos, log=True)[0]  # (H, n_q, n_k)
            K = (L - L.amax(dim=(-2, -1), keepdim=True)).exp()  # (H, n_q, n_k): κ / max κ, never overflows
            Lv = L.masked_fill(~visible, -math.inf)  # (H, n_q, n_k)
            A = (Lv - Lv.amax(-1, keepdim=True)).exp()  # (H, n_q, n_k): exact after the row normalisation below
        else:
            W = kernel.pair_scores(q64, k64, pos, log=False)[0]  # (H, n_q, n_k)
            scale = W.abs().amax(dim=(-2, -1), keepdim=True)  # (H, 1, 1)
            K = W / torch.where(scale > 0, scale, 1.0)  # (H, n_q, n_k)
            A = K.masked_fill(~visible, 0.0)  # (H, n_q, n_k)
        den = A.abs().sum(-1, keepdim=True)  # (H, n_q, 1)
        A = A / torch.where(den > 0, den, 1.0)  # (H, n_q, n_k); an all-zero row stays zero
    return HeadMatrices(K=K, A=A, visible=visible, L=L if kernel.has_log_score else None)


def head_metrics(m: HeadMatrices, *, square: bool, feature_dim: float, rtol: float,
                 sv_points: int) -> dict[str, Tensor]:
    """Per-head numbers (each (H,)) of one sequence, plus σ_i/σ_1 of K and A for the first ``sv_points`` i
    ((H, sv_points), NaN past min(n_q, n_k)). ``square``: self-attention, where asymmetry and the spectrum of the
    symmetric part are defined."""
    H, n_q, n_k = m.K.shape
    out: dict[str, Tensor] = {}
    if square:
        eig = spectra.symmetric_spectrum(m.K)  # (H, n)
        out["asymmetry"] = spectra.asymmetry(m.K)  # (H,)
        out["negative_mass"] = spectra.negative_mass(eig)  # (H,)
        out["eig_ratio"] = spectra.eig_ratio(eig)  # (H,)
        if m.L is not None:
            # The logits' own asymmetry (edp: of Q Kᵀ/√d), with the mean removed: a constant is what the rescaling
            # of K adds to log κ, and it is symmetric. exp() lets the largest entries dominate ‖K − Kᵀ‖; not here.
            Lc = m.L - m.L.mean(dim=(-2, -1), keepdim=True)  # (H, n, n)
            out["asymmetry_logK"] = spectra.asymmetry(Lc)  # (H,)
    sv_k = spectra.singular_values(m.K)  # (H, r)
    sv_a = spectra.singular_values(m.A)  # (H, r)
    n = min(n_q, n_k)
    out["erank_K"] = spectra.effective_rank(sv_k)  # (H,)
    out["erank_A"] = spectra.effective_rank(sv_a)  # (H,)
    rank_k = spectra.numerical_rank(sv_k, rtol).double()  # (H,)
    out["nrank_K"] = rank_k
    out["nrank_A"] = spectra.numerical_rank(sv_a, rtol).double()  # (H,)
    out["rank_frac_K"] = rank_k / n  # (H,)
    out["erank_frac_A"] = out["erank_A"] / n  # (H,)
    bound = min(float(n), feature_dim)
    # > 0 would contradict the kernel's feature dimension (a bug or a wrong declaration): the tests demand 0.
    out["rank_excess_K"] = rank_k - bound  # (H,)
    # The finite feature space caps the rank on this sequence: the cap is below the length and K reaches it.
    binds = feature_dim < n
    out["rank_binds_K"] = (rank_k >= bound).double() if binds else torch.zeros(H, dtype=torch.float64)  # (H,)
    absA = m.A.abs()  # (H, n_q, n_k)
    ent = spectra.row_entropy(absA)  # (H, n_q)
    n_vis = m.visible.sum(-1)  # (n_q,)
    out["entropy"] = ent.mean(-1)  # (H,)
    many = n_vis >= 2  # a row with one visible key has entropy 0 and nothing to normalise by
    norm = ent[:, many] / n_vis[many].double().log()  # (H, rows with ≥ 2 keys)
    out["entropy_norm"] = norm.mean(-1) if many.any() else torch.full((H,), math.nan, dtype=torch.float64)
    out["sv_decay_K"] = _decay(sv_k, sv_points)  # (H, sv_points)
    out["sv_decay_A"] = _decay(sv_a, sv_points)  # (H, sv_points)
    return out


def _decay(sv: Tensor, points: int) -> Tensor:
    """σ_i / σ_1 for i < points, NaN where there is no σ_i: (H, r) → (H, points)."""
    H, r = sv.shape
    out = torch.full((H, points), math.nan, dtype=torch.float64)  # (H, points)
    top = sv[:, :1]  # (H, 1)
    rel = sv / torch.where(top > 0, top, 1.0)  # (H, r)
    out[:, : min(r, points)] = rel[:, :points]
    return out


def bilinear_forms(q_weight: Tensor, k_weight: Tensor, heads: int) -> Tensor:
    """Per head the bilinear form M_h = W_Qhᵀ W_Kh (C, C) of q·k = xᵀ M_h x' for nn.Linear weights
    q_weight, k_weight (C_out, C) (biases left out: they add terms linear in x and x', not to the form):
    (C_out, C) × 2 → (H, C, C). This is W_Q W_Kᵀ of the row-vector convention (Wright & Gonzalez 2021 §4)."""
    C_out, C = q_weight.shape
    D = C_out // heads
    wq = q_weight.double().view(heads, D, C)  # (H, D, C)
    wk = k_weight.double().view(heads, D, C)  # (H, D, C)
    return wq.transpose(-2, -1) @ wk  # (H, C, C)


def bilinear_metrics(M: Tensor) -> dict[str, Tensor]:
    """Asymmetry and indefiniteness of each head's q·k form M (H, C, C) → each (H,)."""
    eig = spectra.symmetric_spectrum(M)  # (H, C)
    return {"asymmetry": spectra.asymmetry(M), "negative_mass": spectra.negative_mass(eig),
            "eig_ratio": spectra.eig_ratio(eig)}
