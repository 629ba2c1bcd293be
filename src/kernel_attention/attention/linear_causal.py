"""The causal recurrence of ``linear_attention.py`` over one chunk of aligned (query, key) pairs, in steps of S
tokens: inside a step the S × S weights are masked by tril, across steps a running state carries the past.

Stabilised keys. A feature map whose values span many orders of magnitude (FAVOR+'s exp features) hands in
features divided by a per-key factor, φ(k_j) = exp(ℓ_j) φ̃(k_j) with max φ̃ = 1, and the log-scales ℓ_j
(B, H, c, 1; −inf for padded keys). Query i then divides its weights by exp(M_i), M_i = max_{j ≤ i visible} ℓ_j,
a per-row factor the normaliser cancels exactly — so what a query computes depends on the keys it sees and on
nothing else. No future or padded key can push a visible weight to 0, and every factor that is used is ≤ 1
(above the diagonal exp(ℓ_j − M_i) may overflow; ``tril_`` discards it):

    w_ij = φ(q_i)·φ̃(k_j) · exp(ℓ_j − M_i)             (j ≤ i, in the step)
    past_i = φ(q_i) · state · exp(M_state − M_i)      state = Σ_{j<step} φ̃(k_j)ᵀ[v_j, 1] exp(ℓ_j − M_state)

The state is kept relative to the shift of the last query it served (M_state) and rescaled when the shift
grows — the online softmax of FlashAttention (Dao et al. 2022) applied to a linear-attention state. Backward
keeps the gradient state of the later queries relative to the smallest shift among them, for the same reason.
Without log-scales (ℓ = None) these factors are 1 and the step is the plain recurrence.

(B, H) merge into one batch dimension here (free views of contiguous chunks), so every product is one bmm or
one in-place baddbmm_ — a step is a handful of small matmuls, and per-call overhead is what costs.
"""

from __future__ import annotations

import torch
from torch import Tensor


def exp_diff(a: Tensor, b: Tensor) -> Tensor:
    """exp(a − b), and 0 where a = −inf (a padded key, or a query that sees no key yet): never NaN."""
    return torch.where(a == -torch.inf, 0.0, (a - b).exp())


def bh(x: Tensor) -> Tensor:
    """(B, H, ·, ·) → (B·H, ·, ·): a view for the contiguous chunks here (a copy only for an odd φ output)."""
    return x.flatten(0, 1)


def state_view(x: Tensor) -> Tensor:
    """(B, H, ·, ·) → (B·H, ·, ·) as a view, never a copy, so in-place updates reach the state."""
    return x.view(-1, *x.shape[-2:])


def _step_factors(lk: Tensor, mq: Tensor, mst: Tensor) -> tuple[Tensor, Tensor]:
    """For one step: E (BH, s, s) = exp(ℓ_j − M_i) on and below the diagonal, 0 above (the future), and the
    past's factor exp(M_state − M_i) (BH, s, 1). lk, mq (BH, s, 1); mst (BH, 1, 1)."""
    E = exp_diff(lk.mT, mq).tril_()  # (BH, s, s): overflow above the diagonal is masked out here
    return E, exp_diff(mst, mq)  # (BH, s, s), (BH, s, 1)


def _advance(st: Tensor, mst: Tensor, k_: Tensor, v_: Tensor, lk: Tensor | None, mq: Tensor | None) -> None:
    """state += this step's keys (in place), rescaled to the shift of the step's last query."""
    if lk is None:
        st.baddbmm_(k_.mT, v_)  # (BH, F, E)
        return
    m_end = mq[:, -1:]  # (BH, 1, 1)
    st.mul_(exp_diff(mst, m_end)).baddbmm_((k_ * exp_diff(lk, m_end)).mT, v_)  # (BH, F, E)
    mst.copy_(m_end)


def causal_forward(fq: Tensor, fk: Tensor, v1: Tensor, state: Tensor, S: int,
                   lk: Tensor | None = None, mq: Tensor | None = None, mst: Tensor | None = None) -> Tensor:
    """[num, den] (B, H, c, E) of a chunk's queries against the past (``state``, updated in place) and the
    chunk's own keys, aligned row for row. With log-scales: lk, mq (B, H, c, 1), the state's shift mst
    (B, H, 1, 1), updated in place."""
    fq3, fk3, v13, st3 = bh(fq), bh(fk), bh(v1), state_view(state)  # (BH, c, F) ×2, (BH, c, E), (BH, F, E)
    lk3, mq3, ms3 = (None, None, None) if lk is None else (bh(lk), bh(mq), state_view(mst))  # (BH, c, 1) ×2
    nd = torch.empty_like(v13)  # (BH, c, E)
    for i in range(0, fq3.shape[1], S):
        q_, k_, v_ = fq3[:, i : i + S], fk3[:, i : i + S], v13[:, i : i + S]  # (BH, s, F), (BH, s, F), (BH, s, E)
        w = torch.bmm(q_, k_.mT)  # (BH, s, s)
        if lk3 is None:
            nd[:, i : i + S] = torch.bmm(w.tril_(), v_).baddbmm_(q_, st3)  # (BH, s, E): this step + the past
            _advance(st3, None, k_, v_, None, None)
            continue
        l_, m_ = lk3[:, i : i + S], mq3[:, i : i + S]  # (BH, s, 1) each
        E, past = _step_factors(l_, m_, ms3)  # (BH, s, s), (BH, s, 1)
        nd[:, i : i + S] = torch.bmm(w.mul_(E), v_).add_(torch.bmm(q_, st3).mul_(past))  # (BH, s, E)
        _advance(st3, ms3, k_, v_, l_, m_)
    return nd.view(v1.shape)  # (B, H, c, E)


def causal_dphi_q(fk: Tensor, v1: Tensor, gnd: Tensor, state: Tensor, S: int,
                  lk: Tensor | None = None, mq: Tensor | None = None, mst: Tensor | None = None) -> Tensor:
    """∂L/∂φ(q) (B, H, c, F) of a chunk from ∂L/∂[num, den] ``gnd``; forward order, ``state`` (and its shift)
    updated as in ``causal_forward``."""
    fk3, v13, g3, st3 = bh(fk), bh(v1), bh(gnd), state_view(state)  # (BH, c, F), (BH, c, E) ×2, (BH, F, E)
    lk3, mq3, ms3 = (None, None, None) if lk is None else (bh(lk), bh(mq), state_view(mst))
    dfq = torch.empty_like(fk3)  # (BH, c, F)
    for i in range(0, fk3.shape[1], S):
        k_, v_, g_ = fk3[:, i : i + S], v13[:, i : i + S], g3[:, i : i + S]  # (BH, s, F), (BH, s, E), (BH, s, E)
        a = torch.bmm(g_, v_.mT)  # (BH, s, s): ∂L/∂w_ij
        if lk3 is None:
            dfq[:, i : i + S] = torch.bmm(a.tril_(), k_).baddbmm_(g_, st3.mT)  # (BH, s, F): this step + the past
            _advance(st3, None, k_, v_, None, None)
            continue
        l_, m_ = lk3[:, i : i + S], mq3[:, i : i + S]
        E, past = _step_factors(l_, m_, ms3)
        dfq[:, i : i + S] = torch.bmm(a.mul_(E), k_).add_(torch.bmm(g_, st3.mT).mul_(past))  # (BH, s, F)
        _advance(st3, ms3, k_, v_, l_, m_)
    return dfq.view(fk.shape)  # (B, H, c, F)


def causal_dphi_k_dv(fq: Tensor, fk: Tensor, v1: Tensor, gnd: Tensor, dstate: Tensor, S: int,
                     lk: Tensor | None = None, mq: Tensor | None = None,
                     ref: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """∂L/∂φ(k) (B, H, c, F) and ∂L/∂v (B, H, c, Dv) of a chunk; reverse order, ``dstate`` updated in place.

    dstate = Σ over the LATER queries of φ(q_i)ᵀ ∂L/∂[num_i, den_i] · exp(R − M_i), kept relative to R (``ref``,
    (B, H, 1, 1), updated in place) = the shift of the earliest of them: then exp(ℓ_j − R) ≤ 1 for every
    earlier key and exp(R − M_i) ≤ 1 for every later query (M is non-decreasing along the sequence)."""
    B, H, c, E_ = v1.shape
    fq3, fk3, v13, g3, ds3 = bh(fq), bh(fk), bh(v1), bh(gnd), state_view(dstate)  # (BH, c, ·), (BH, F, E)
    lk3, mq3, r3 = (None, None, None) if lk is None else (bh(lk), bh(mq), state_view(ref))
    dfk = torch.empty_like(fk3)  # (BH, c, F)
    dv = v13.new_empty(B * H, c, E_ - 1)  # (BH, c, Dv)
    for i in reversed(range(0, c, S)):
        q_, k_, v_, g_ = fq3[:, i : i + S], fk3[:, i : i + S], v13[:, i : i + S], g3[:, i : i + S]  # (BH, s, ·)
        a = torch.bmm(g_, v_.mT)  # (BH, s, s)
        w = torch.bmm(q_, k_.mT)  # (BH, s, s)
        if lk3 is None:
            a.tril_()
            w.tril_()
            dfk[:, i : i + S] = torch.bmm(a.mT, q_).baddbmm_(v_, ds3.mT)  # (BH, s, F): this step + later ones
            dv[:, i : i + S] = torch.bmm(w.mT, g_[..., :-1]).baddbmm_(k_, ds3[..., :-1])  # (BH, s, Dv)
            ds3.baddbmm_(q_.mT, g_)  # (BH, F, E)
            continue
        l_, m_ = lk3[:, i : i + S], mq3[:, i : i + S]  # (BH, s, 1)
        E = exp_diff(l_.mT, m_).tril_()  # (BH, s, s)
        later = exp_diff(l_, r3)  # (BH, s, 1): what the later queries' state is worth to these keys
        a.mul_(E)
        w.mul_(E)
        dfk[:, i : i + S] = torch.bmm(a.mT, q_).add_(torch.bmm(v_, ds3.mT).mul_(later))  # (BH, s, F)
        dv[:, i : i + S] = torch.bmm(w.mT, g_[..., :-1]).add_(torch.bmm(k_, ds3[..., :-1]).mul_(later))
        r_new = m_[:, :1]  # (BH, 1, 1): the earliest query's shift is the new reference
        ds3.mul_(exp_diff(r_new, r3)).baddbmm_((q_ * exp_diff(r_new, m_)).mT, g_)  # (BH, F, E)
        r3.copy_(r_new)
    return dfk.view(fk.shape), dv.view(B, H, c, E_ - 1)  # (B, H, c, F), (B, H, c, Dv)
