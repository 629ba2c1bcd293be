"""Linear-time attention through an explicit feature map φ, lean in memory for backward too.

    out_i = Σ_j φ(q_i)·φ(k_j) v_j / Σ_j φ(q_i)·φ(k_j)        (Katharopoulos et al. 2020, "Transformers are RNNs")

Associativity turns the Tq × Tk weights into an F × (Dv+1) state. Non-causal: kv = Σ_j φ(k_j)ᵀ [v_j, 1] once,
then out_i = φ(q_i) kv. Causal: the same state accumulated left to right, like an RNN over steps of S tokens:
inside a step the S × S weights are masked by tril, across steps the running state carries the past. The
denominator rides along as the extra all-ones column of v ([v, 1], E = Dv + 1 columns), so numerator and
normaliser share every matmul.

Why a custom autograd Function: autograd through φ(Q), φ(K) keeps the (B, H, T, F) features and φ's own
intermediates alive from forward to backward — for FAVOR+ (Choromanski et al. 2021, "Rethinking Attention with
Performers") with F = 256 at T = 1024 that is half the memory of materialising the T × T weights. So
``linear_attention`` takes the feature MAPS, applies them to one chunk of tokens at a time, and saves only q, k,
v, the output, the raw denominators (B, H, Tq, 1) and, non-causal, the state kv (B, H, F, Dv+1). Backward
recomputes φ per chunk and differentiates φ's own maths with ``torch.autograd.grad`` on that chunk's small graph,
so any feature map works (elu + 1, FAVOR+ exp, symmetric powers) and only a few chunks of φ exist at a time.
The causal backward is two sweeps: forward order with the running state again (for dq), reverse order with the
running Σ φ(q_i)ᵀ ∂L/∂[num_i, den_i] of the later steps (for dk, dv) — no per-step states are ever stored.

A chunk (what φ sees at once: few, large matmuls and autograd calls) holds several causal steps (short, because
the masked S × S part costs S·(F + Dv) per token while the state costs F·Dv whatever S is).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

FeatureMap = Callable[[Tensor], Tensor]  # (B, H, c, D) → (B, H, c, F), differentiable; constants only, no params

CHUNK = 256  # most tokens φ sees at once: few Python steps, memory still bounded
MIN_CHUNK = 16  # fewest, even when F is large (symmetric powers: F = 2145 at d = 64)
STEP = 64  # causal recurrence step: the S × S masked weights cost S·(F + Dv) per token


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    phi_q: FeatureMap,
    phi_k: FeatureMap | None = None,
    *,
    causal: bool,
    key_padding_mask: Tensor | None = None,
    safe_denominator: Callable[[Tensor], Tensor],
    chunk: int | None = None,
    step: int | None = None,
) -> Tensor:
    """q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv) → (B, H, Tq, Dv), 'sum' normaliser.

    ``phi_q``/``phi_k`` map a chunk of tokens to features (``phi_k`` defaults to ``phi_q``); they may close over
    constants (buffers, a detached stabiliser) but not over tensors that need gradients — those would get none.
    Masks as in ``kernels.base``: ``key_padding_mask`` (B, Tk) True = padding; causal is bottom-right aligned
    (query i sees keys j ≤ i + Tk − Tq). ``safe_denominator`` is the kernel's, so this path divides exactly like
    the exact path (rows with no visible key give 0). ``chunk`` = tokens per φ call (None: ``chunk_size``);
    ``step`` = tokens per causal recurrence step (None: STEP)."""
    return _LinearAttention.apply(
        q, k, v, phi_q, phi_q if phi_k is None else phi_k, causal, key_padding_mask, safe_denominator, chunk,
        max(1, step or STEP),
    )


def chunk_size(T: int, D: int, F: int, chunk: int | None = None) -> int:
    """Tokens per φ call: ``chunk`` if given, else as many as keep a φ chunk (C·F) at half the size of q (T·D),
    so the chunks' memory stays a fraction of what the inputs and gradients need anyway, whatever B·H is."""
    if chunk is not None:
        return max(1, chunk)
    return max(MIN_CHUNK, min(CHUNK, T * D // (2 * F)))


class _LinearAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, phi_q, phi_k, causal, key_padding_mask, safe, chunk, step):  # type: ignore[override]
        B, H, Tq, _ = q.shape
        Tk, Dv = k.shape[-2], v.shape[-1]
        Fd = phi_k(k[:, :, :1]).shape[-1]  # one token tells the feature dimension
        C = chunk_size(max(Tq, Tk), q.shape[-1], Fd, chunk)
        keep = None
        if key_padding_mask is not None:
            keep = ~key_padding_mask.to(device=k.device, dtype=torch.bool)[:, None, :, None]  # (B, 1, Tk, 1)
        out = v.new_zeros(B, H, Tq, Dv)  # (B, H, Tq, Dv): numerators, chunk by chunk, divided at the end
        den = v.new_zeros(B, H, Tq, 1)  # (B, H, Tq, 1): raw Σ_j κ_ij (backward needs safe'(den))
        kv = None
        if not causal:
            kv = _key_state(phi_k, k, v, keep, 0, Tk, C, Fd)  # (B, H, F, E)
            for s in range(0, Tq, C):
                nd = phi_q(q[:, :, s : s + C]) @ kv  # (B, H, c, E)
                out[:, :, s : s + C], den[:, :, s : s + C] = nd[..., :Dv], nd[..., Dv:]
        else:
            P, q0, L = _alignment(Tq, Tk)
            state = _key_state(phi_k, k, v, keep, 0, P, C, Fd)  # (B, H, F, E): keys before the diagonal
            for t in range(0, L, C):
                qs, ks = slice(q0 + t, q0 + t + C), slice(P + t, P + t + C)
                fk, v1 = _keys(phi_k, k[:, :, ks], v[:, :, ks], _rows(keep, ks))  # (B, H, c, F), (B, H, c, E)
                nd = _causal_forward(phi_q(q[:, :, qs]), fk, v1, state, step)  # (B, H, c, E)
                out[:, :, qs], den[:, :, qs] = nd[..., :Dv], nd[..., Dv:]
        out.div_(safe(den))  # (B, H, Tq, Dv); rows that see no key have num = 0: they stay 0
        ctx.save_for_backward(q, k, v, out, den, keep, kv)
        ctx.phi_q, ctx.phi_k, ctx.safe, ctx.causal, ctx.C, ctx.S, ctx.Fd = phi_q, phi_k, safe, causal, C, step, Fd
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):  # type: ignore[override]
        q, k, v, out, den, keep, kv = ctx.saved_tensors
        phi_q, phi_k, C, S, Fd = ctx.phi_q, ctx.phi_k, ctx.C, ctx.S, ctx.Fd
        Tq, Tk = q.shape[-2], k.shape[-2]
        inv_sden, g_den = _normaliser_grads(g, out, den, ctx.safe)  # (B, H, Tq, 1) each, before the big buffers

        def g_nd(rows: slice) -> Tensor:
            """∂L/∂[num, den] of the query rows: [g / safe(den), ∂L/∂den] (B, H, c, E)."""
            return torch.cat([g[:, :, rows] * inv_sden[:, :, rows], g_den[:, :, rows]], dim=-1)

        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)  # every row written below
        if not ctx.causal:
            dkv = torch.zeros_like(kv)  # (B, H, F, E): ∂L/∂kv = Σ_i φ(q_i)ᵀ ∂L/∂nd_i
            for s in range(0, Tq, C):
                rows = slice(s, s + C)
                gnd = g_nd(rows)  # (B, H, c, E)
                qc, fq = _with_graph(phi_q, q[:, :, rows])  # (B, H, c, D), (B, H, c, F)
                dq[:, :, rows] = _vjp(fq, qc, gnd @ kv.mT)  # ∂L/∂φ(q) = ∂L/∂nd kvᵀ
                _addmm_(dkv, fq.detach().mT, gnd)  # (B, H, F, E)
            _key_grads(phi_k, k, v, keep, 0, Tk, C, dkv, dk, dv)
            return dq, dk, dv, None, None, None, None, None, None, None

        P, q0, L = _alignment(Tq, Tk)
        dq[:, :, :q0] = 0  # these queries precede every key
        starts = range(0, L, C)
        # Sweep 1, forward order: the running state again, for dq.
        state = _key_state(phi_k, k, v, keep, 0, P, C, Fd)  # (B, H, F, E)
        for t in starts:
            qs, ks = slice(q0 + t, q0 + t + C), slice(P + t, P + t + C)
            fk, v1 = _keys(phi_k, k[:, :, ks], v[:, :, ks], _rows(keep, ks))  # (B, H, c, F), (B, H, c, E)
            qc, fq = _with_graph(phi_q, q[:, :, qs])  # (B, H, c, D), (B, H, c, F)
            dq[:, :, qs] = _vjp(fq, qc, _causal_dphi_q(fk, v1, g_nd(qs), state, S))
        # Sweep 2, reverse order: dstate = Σ over LATER steps of φ(q)ᵀ ∂L/∂nd is what each key's [v, 1] is
        # worth to the queries after its step.
        dstate = torch.zeros_like(state)  # (B, H, F, E)
        for t in reversed(starts):
            qs, ks = slice(q0 + t, q0 + t + C), slice(P + t, P + t + C)
            kc, fk = _with_graph(phi_k, k[:, :, ks], _rows(keep, ks))  # (B, H, c, D), (B, H, c, F)
            dfk, dv[:, :, ks] = _causal_dphi_k_dv(phi_q(q[:, :, qs]), fk.detach(), _ones_column(v[:, :, ks]),
                                                  g_nd(qs), dstate, S)
            dk[:, :, ks] = _vjp(fk, kc, dfk)
        _key_grads(phi_k, k, v, keep, 0, P, C, dstate, dk, dv)  # keys before the diagonal feed every step
        return dq, dk, dv, None, None, None, None, None, None, None


# ---- the causal recurrence over one chunk, in steps of S tokens ------------------------------------------
# (B, H) merge into one batch dimension here (free views of contiguous chunks), so every product is one bmm or
# one in-place baddbmm_ — a step is a handful of small matmuls, and per-call overhead is what costs.
def _causal_forward(fq: Tensor, fk: Tensor, v1: Tensor, state: Tensor, S: int) -> Tensor:
    """[num, den] (B, H, c, E) of a chunk's queries against the past (``state``, updated in place) and the
    chunk's own keys, aligned row for row."""
    fq3, fk3, v13, st3 = _bh(fq), _bh(fk), _bh(v1), _state_view(state)  # (BH, c, F), (BH, c, F), (BH, c, E), (BH, F, E)
    nd = torch.empty_like(v13)  # (BH, c, E)
    for i in range(0, fq3.shape[1], S):
        q_, k_, v_ = fq3[:, i : i + S], fk3[:, i : i + S], v13[:, i : i + S]  # (BH, s, F), (BH, s, F), (BH, s, E)
        w = torch.bmm(q_, k_.mT).tril_()  # (BH, s, s): query i of the step sees its keys j ≤ i
        nd[:, i : i + S] = torch.bmm(w, v_).baddbmm_(q_, st3)  # (BH, s, E): this step + the past
        st3.baddbmm_(k_.mT, v_)  # (BH, F, E): now includes this step
    return nd.view(v1.shape)  # (B, H, c, E)


def _causal_dphi_q(fk: Tensor, v1: Tensor, gnd: Tensor, state: Tensor, S: int) -> Tensor:
    """∂L/∂φ(q) (B, H, c, F) of a chunk from ∂L/∂[num, den] ``gnd``; forward order, ``state`` updated."""
    fk3, v13, g3, st3 = _bh(fk), _bh(v1), _bh(gnd), _state_view(state)  # (BH, c, F), (BH, c, E), (BH, c, E), (BH, F, E)
    dfq = torch.empty_like(fk3)  # (BH, c, F)
    for i in range(0, fk3.shape[1], S):
        k_, v_, g_ = fk3[:, i : i + S], v13[:, i : i + S], g3[:, i : i + S]  # (BH, s, F), (BH, s, E), (BH, s, E)
        a = torch.bmm(g_, v_.mT).tril_()  # (BH, s, s): ∂L/∂w_ij of the visible weights
        dfq[:, i : i + S] = torch.bmm(a, k_).baddbmm_(g_, st3.mT)  # (BH, s, F): this step + the past
        st3.baddbmm_(k_.mT, v_)  # (BH, F, E)
    return dfq.view(fk.shape)  # (B, H, c, F)


def _causal_dphi_k_dv(fq: Tensor, fk: Tensor, v1: Tensor, gnd: Tensor, dstate: Tensor, S: int) -> tuple[Tensor, Tensor]:
    """∂L/∂φ(k) (B, H, c, F) and ∂L/∂v (B, H, c, Dv) of a chunk; reverse order, ``dstate`` updated."""
    B, H, c, E = v1.shape
    fq3, fk3, v13, g3, ds3 = _bh(fq), _bh(fk), _bh(v1), _bh(gnd), _state_view(dstate)  # (BH, c, ·), (BH, F, E)
    dfk = torch.empty_like(fk3)  # (BH, c, F)
    dv = v13.new_empty(B * H, c, E - 1)  # (BH, c, Dv)
    for i in reversed(range(0, c, S)):
        q_, k_, v_, g_ = fq3[:, i : i + S], fk3[:, i : i + S], v13[:, i : i + S], g3[:, i : i + S]  # (BH, s, ·)
        a = torch.bmm(g_, v_.mT).tril_()  # (BH, s, s)
        w = torch.bmm(q_, k_.mT).tril_()  # (BH, s, s)
        dfk[:, i : i + S] = torch.bmm(a.mT, q_).baddbmm_(v_, ds3.mT)  # (BH, s, F): this step + later ones
        dv[:, i : i + S] = torch.bmm(w.mT, g_[..., :-1]).baddbmm_(k_, ds3[..., :-1])  # (BH, s, Dv)
        ds3.baddbmm_(q_.mT, g_)  # (BH, F, E)
    return dfk.view(fk.shape), dv.view(B, H, c, E - 1)  # (B, H, c, F), (B, H, c, Dv)


# ---- helpers ------------------------------------------------------------------------------------------------
def _bh(x: Tensor) -> Tensor:
    """(B, H, ·, ·) → (B·H, ·, ·): a view for the contiguous chunks here (a copy only for an odd φ output)."""
    return x.flatten(0, 1)


def _state_view(x: Tensor) -> Tensor:
    """(B, H, F, E) → (B·H, F, E) as a view, never a copy, so in-place updates reach the state."""
    return x.view(-1, *x.shape[-2:])


def _addmm_(acc: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """acc += a @ b in place, batched over (B, H): no temporary product and no second pass over acc."""
    _state_view(acc).baddbmm_(_bh(a), _bh(b))
    return acc


def _alignment(Tq: int, Tk: int) -> tuple[int, int, int]:
    """Causal, bottom-right aligned: P keys precede the diagonal (seen by every query), q0 queries precede every
    key (they see nothing, output 0), and the L = Tq − q0 = Tk − P aligned pairs (q0 + t, P + t) follow."""
    P, q0 = max(Tk - Tq, 0), max(Tq - Tk, 0)
    return P, q0, Tq - q0


def _rows(keep: Tensor | None, rows: slice) -> Tensor | None:
    return None if keep is None else keep[:, :, rows]  # (B, 1, c, 1)


def _masked(fk: Tensor, keep: Tensor | None) -> Tensor:
    return fk if keep is None else fk * keep  # (B, H, c, F): padded keys contribute nothing


def _ones_column(v: Tensor) -> Tensor:
    return F.pad(v, (0, 1), value=1.0)  # (B, H, c, Dv+1): the last column sums the weights


def _keys(phi_k: FeatureMap, k: Tensor, v: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor]:
    """Masked φ(k) (B, H, c, F) and [v, 1] (B, H, c, E) of one chunk of keys."""
    return _masked(phi_k(k), keep), _ones_column(v)


def _key_state(phi_k, k, v, keep, start: int, stop: int, C: int, Fd: int) -> Tensor:
    """Σ_j φ(k_j)ᵀ [v_j, 1] over keys start..stop, a chunk at a time: (B, H, F, Dv+1)."""
    B, H, _, Dv = v.shape
    state = v.new_zeros(B, H, Fd, Dv + 1)  # (B, H, F, E)
    for s in range(start, stop, C):
        ks = slice(s, min(s + C, stop))
        fk, v1 = _keys(phi_k, k[:, :, ks], v[:, :, ks], _rows(keep, ks))  # (B, H, c, F), (B, H, c, E)
        _addmm_(state, fk.mT, v1)  # (B, H, F, E)
    return state


def _key_grads(phi_k, k, v, keep, start: int, stop: int, C: int, dstate: Tensor, dk: Tensor, dv: Tensor) -> None:
    """dk, dv (in place) of keys start..stop whose φ(k_j)ᵀ [v_j, 1] entered a state with gradient dstate."""
    Dv = v.shape[-1]
    for s in range(start, stop, C):
        ks = slice(s, min(s + C, stop))
        kc, fk = _with_graph(phi_k, k[:, :, ks], _rows(keep, ks))  # (B, H, c, D), (B, H, c, F)
        dv[:, :, ks] = fk.detach() @ dstate[..., :Dv]  # (B, H, c, Dv)
        dk[:, :, ks] = _vjp(fk, kc, _ones_column(v[:, :, ks]) @ dstate.mT)  # ∂L/∂φ(k) = [v, 1] dstateᵀ


def _normaliser_grads(g: Tensor, out: Tensor, den: Tensor, safe: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """For out = num / safe(den): 1 / safe(den) and ∂L/∂den = −safe'(den) Σ_d g·out / safe(den), both
    (B, H, Tq, 1), from ∂L/∂out g (B, H, Tq, Dv). The kernel's ``safe`` is differentiated by autograd on this
    column: its derivative is 0 where it clamped |den| to eps (as in the exact path)."""
    with torch.enable_grad():
        d = den.detach().requires_grad_()  # (B, H, Tq, 1)
        sden = safe(d)  # (B, H, Tq, 1)
        inv = 1.0 / sden.detach()  # (B, H, Tq, 1)
        g_sden = (g * out).sum(dim=-1, keepdim=True).mul_(inv).neg_()  # (B, H, Tq, 1): −Σ g·num / safe²
        g_den = torch.autograd.grad(sden, d, g_sden)[0] if sden.requires_grad else torch.zeros_like(den)
    return inv, g_den


def _with_graph(phi: FeatureMap, x: Tensor, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """A leaf copy of the chunk x and (masked) φ(x) with φ's graph recorded (backward runs in no-grad mode)."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_()  # (B, H, c, D)
        return leaf, _masked(phi(leaf), keep)  # (B, H, c, F)


def _vjp(f: Tensor, x: Tensor, df: Tensor) -> Tensor:
    """∂L/∂x from ∂L/∂f through this chunk's graph of f = φ(x), which is freed afterwards."""
    return torch.autograd.grad(f, x, df)[0]  # (B, H, c, D)
