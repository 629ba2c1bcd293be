"""Linear-time attention through an explicit feature map φ, lean in memory for backward too.

    out_i = Σ_j φ(q_i)·φ(k_j) v_j / Σ_j φ(q_i)·φ(k_j)        (Katharopoulos et al. 2020, "Transformers are RNNs")

Associativity turns the Tq × Tk weights into an F × (Dv+1) state. Non-causal: kv = Σ_j φ(k_j)ᵀ [v_j, 1] once,
then out_i = φ(q_i) kv. Causal: the same state accumulated left to right, like an RNN over steps of S tokens
(``linear_causal.py``). The denominator rides along as the extra all-ones column of v ([v, 1], E = Dv + 1
columns), so numerator and normaliser share every matmul; it is divided by the kernel's ``Normaliser`` rule.

Why a custom autograd Function: autograd through φ(Q), φ(K) keeps the (B, H, T, F) features and φ's own
intermediates alive from forward to backward — for FAVOR+ (Choromanski et al. 2021, "Rethinking Attention with
Performers") with F = 256 at T = 1024 that is half the memory of materialising the T × T weights. So
``linear_attention`` takes the feature MAPS, applies them to one chunk of tokens at a time, and saves only q, k,
v, the output, the raw denominators (B, H, Tq, 1) and, non-causal, the state kv (B, H, F, Dv+1). Backward
recomputes φ per chunk and differentiates φ's own maths with ``torch.autograd.grad`` on that chunk's small graph,
so any feature map works (elu + 1, FAVOR+ exp, symmetric powers, trainable maps: gradients also reach the
tensors in ``params``) and only a few chunks of φ exist at a time. The causal backward is two sweeps: forward
order with the running state again (for dq), reverse order with the running Σ φ(q_i)ᵀ ∂L/∂[num_i, den_i] of the
later steps (for dk, dv) — no per-step states are ever stored.

Stabilised keys (``k_log_scale``): the key map may return φ̃(k_j) = φ(k_j) / exp(ℓ_j) with the log-scales ℓ_j
given separately; each query is then normalised against the largest ℓ among the keys it can see — over the
visible keys when not causal, over its visible prefix when causal — so hidden keys never touch a visible row.

A chunk (what φ sees at once: few, large matmuls and autograd calls) holds several causal steps (short, because
the masked S × S part costs S·(F + Dv) per token while the state costs F·Dv whatever S is).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from kernel_attention.attention.linear_causal import (
    bh,
    causal_dphi_k_dv,
    causal_dphi_q,
    causal_forward,
    exp_diff,
    state_view,
)
from kernel_attention.attention.normaliser import Normaliser, value_norms

# (B, H, c, D) [, positions (c,)] → (B, H, c, F), differentiable; reads constants and ``params`` only
FeatureMap = Callable[..., Tensor]
ChunkMap = Callable[[Tensor, slice], Tensor]  # φ of the tokens at ``rows`` of the call

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
    normaliser: Normaliser | None = None,
    k_log_scale: Tensor | None = None,
    params: Sequence[Tensor] = (),
    q_pos: Tensor | None = None,
    k_pos: Tensor | None = None,
    chunk: int | None = None,
    step: int | None = None,
) -> Tensor:
    """q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv) → (B, H, Tq, Dv), 'sum' normaliser.

    ``phi_q``/``phi_k`` map a chunk of tokens to features (``phi_k`` defaults to ``phi_q``); they may close over
    constants (buffers, a detached stabiliser) and over the tensors in ``params`` (which get gradients), nothing
    else that needs gradients. With ``q_pos`` (Tq,) and ``k_pos`` (Tk,) they are called as φ(x, positions).
    Masks as in ``kernels.base``: ``key_padding_mask`` (B, Tk) True = padding; causal is bottom-right aligned
    (query i sees keys j ≤ i + Tk − Tq). ``normaliser`` is the kernel's division rule (default: a positive
    kernel's), so this path divides exactly like the exact path (rows with no visible key give 0).
    ``k_log_scale`` (B, H, Tk, 1), detached: the key map returns φ(k)/exp(ℓ) (see the module docstring).
    ``chunk`` = tokens per φ call (None: ``chunk_size``); ``step`` = tokens per causal recurrence step."""
    norm = normaliser or Normaliser()
    if norm.abs_terms:
        raise ValueError("Σ|κ| does not factorise through φ: the linear path needs the plain sum")
    phi_k = phi_q if phi_k is None else phi_k
    return _LinearAttention.apply(
        q, k, v, _chunked(phi_q, q_pos), _chunked(phi_k, k_pos), causal, key_padding_mask, norm,
        None if k_log_scale is None else k_log_scale.detach(), chunk, max(1, step or STEP), *params,
    )


def _chunked(phi: FeatureMap, pos: Tensor | None) -> ChunkMap:
    if pos is None:
        return lambda x, rows: phi(x)
    return lambda x, rows: phi(x, pos[rows])


def chunk_size(T: int, D: int, F: int, chunk: int | None = None) -> int:
    """Tokens per φ call: ``chunk`` if given, else as many as keep a φ chunk (C·F) at half the size of q (T·D),
    so the chunks' memory stays a fraction of what the inputs and gradients need anyway, whatever B·H is."""
    if chunk is not None:
        return max(1, chunk)
    return max(MIN_CHUNK, min(CHUNK, T * D // (2 * F)))


class _LinearAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, phi_q, phi_k, causal, key_padding_mask, norm, k_log_scale, chunk, step,  # type: ignore[override]
                *params):
        B, H, Tq, _ = q.shape
        Tk, Dv = k.shape[-2], v.shape[-1]
        Fd = phi_k(k[:, :, :1], slice(0, 1)).shape[-1]  # one token tells the feature dimension
        C = chunk_size(max(Tq, Tk), q.shape[-1], Fd, chunk)
        keep = None
        if key_padding_mask is not None:
            keep = ~key_padding_mask.to(device=k.device, dtype=torch.bool)[:, None, :, None]  # (B, 1, Tk, 1)
        lk = None if k_log_scale is None else _log_scales(k_log_scale, keep)  # (B, H, Tk, 1), −inf = padded
        out = v.new_zeros(B, H, Tq, Dv)  # (B, H, Tq, Dv): numerators, chunk by chunk, divided at the end
        den = v.new_zeros(B, H, Tq, 1)  # (B, H, Tq, 1): raw Σ_j κ_ij (backward needs safe'(den))
        kv = kw = None
        if not causal:
            kw = _key_weights(keep, lk, lk.amax(dim=-2, keepdim=True) if lk is not None else None)  # (B,·,Tk,1)
            kv = _key_state(phi_k, k, v, kw, 0, Tk, C, Fd)  # (B, H, F, E)
            for s in range(0, Tq, C):
                rows = slice(s, s + C)
                nd = phi_q(q[:, :, rows], rows) @ kv  # (B, H, c, E)
                out[:, :, rows], den[:, :, rows] = nd[..., :Dv], nd[..., Dv:]
        else:
            P, q0, L = _alignment(Tq, Tk)
            mst = _prefix_shift(lk, P)  # (B, H, 1, 1) or None: the state's shift
            kw = _key_weights(_rows(keep, slice(0, P)), _rows(lk, slice(0, P)), mst)  # the P prefix keys' weights
            state = _key_state(phi_k, k, v, kw, 0, P, C, Fd)  # (B, H, F, E): keys before the diagonal
            for t in range(0, L, C):
                qs, ks = slice(q0 + t, q0 + t + C), slice(P + t, P + t + C)
                fk, v1 = _keys(phi_k, k, v, ks, _rows(keep, ks))  # (B, H, c, F), (B, H, c, E)
                lk_c, mq = _chunk_shifts(lk, ks, mst)  # (B, H, c, 1) ×2 or None
                nd = causal_forward(phi_q(q[:, :, qs], qs), fk, v1, state, step, lk_c, mq, mst)  # (B, H, c, E)
                out[:, :, qs], den[:, :, qs] = nd[..., :Dv], nd[..., Dv:]
        floor = norm.floor(out, _visible_value_max(v, keep, causal, Tq)) if norm.guarded else None  # (B,H,Tq,1)
        out.div_(norm.safe(den, floor))  # rows that see no key have num = 0: they stay 0
        ctx.save_for_backward(q, k, v, out, den, floor, keep, lk, kv, kw, *params)
        ctx.phi_q, ctx.phi_k, ctx.norm, ctx.causal, ctx.C, ctx.S, ctx.Fd = phi_q, phi_k, norm, causal, C, step, Fd
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):  # type: ignore[override]
        q, k, v, out, den, floor, keep, lk, kv, kw, *params = ctx.saved_tensors
        phi_q, phi_k, C, S, Fd = ctx.phi_q, ctx.phi_k, ctx.C, ctx.S, ctx.Fd
        Tq, Tk = q.shape[-2], k.shape[-2]
        inv_sden, g_den = _normaliser_grads(g, out, den, floor, ctx.norm)  # (B, H, Tq, 1) each
        grads = _ParamGrads(params)
        none = (None,) * 8

        def g_nd(rows: slice) -> Tensor:
            """∂L/∂[num, den] of the query rows: [g / safe(den), ∂L/∂den] (B, H, c, E)."""
            return torch.cat([g[:, :, rows] * inv_sden[:, :, rows], g_den[:, :, rows]], dim=-1)

        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)  # every row written below
        if not ctx.causal:
            dkv = torch.zeros_like(kv)  # (B, H, F, E): ∂L/∂kv = Σ_i φ(q_i)ᵀ ∂L/∂nd_i
            for s in range(0, Tq, C):
                rows = slice(s, s + C)
                gnd = g_nd(rows)  # (B, H, c, E)
                qc, fq = _with_graph(phi_q, q, rows)  # (B, H, c, D), (B, H, c, F)
                dq[:, :, rows] = grads.vjp(fq, qc, gnd @ kv.mT)  # ∂L/∂φ(q) = ∂L/∂nd kvᵀ
                _addmm_(dkv, fq.detach().mT, gnd)  # (B, H, F, E)
            _key_grads(phi_k, k, v, kw, 0, Tk, C, dkv, dk, dv, grads)
            return (dq, dk, dv, *none, *grads.result())

        P, q0, L = _alignment(Tq, Tk)
        dq[:, :, :q0] = 0  # these queries precede every key
        starts = range(0, L, C)
        # Sweep 1, forward order: the running state again, for dq.
        mst = _prefix_shift(lk, P)  # (B, H, 1, 1) or None
        state = _key_state(phi_k, k, v, kw, 0, P, C, Fd)  # (B, H, F, E)
        for t in starts:
            qs, ks = slice(q0 + t, q0 + t + C), slice(P + t, P + t + C)
            fk, v1 = _keys(phi_k, k, v, ks, _rows(keep, ks))  # (B, H, c, F), (B, H, c, E)
            lk_c, mq = _chunk_shifts(lk, ks, mst)
            qc, fq = _with_graph(phi_q, q, qs)  # (B, H, c, D), (B, H, c, F)
            dq[:, :, qs] = grads.vjp(fq, qc, causal_dphi_q(fk, v1, g_nd(qs), state, S, lk_c, mq, mst))
        # Sweep 2, reverse order: dstate = Σ over LATER steps of φ(q)ᵀ ∂L/∂nd is what each key's [v, 1] is
        # worth to the queries after its step. The shifts of each chunk are those sweep 1 used.
        shifts = _all_chunk_shifts(lk, P, L, C)  # [(lk_c, mq)] per chunk, or Nones
        dstate = torch.zeros_like(state)  # (B, H, F, E)
        ref = None if lk is None else torch.full_like(lk[:, :, :1], torch.inf)  # (B, H, 1, 1): no later query yet
        for n, t in reversed(list(enumerate(starts))):
            qs, ks = slice(q0 + t, q0 + t + C), slice(P + t, P + t + C)
            kc, fk = _with_graph(phi_k, k, ks, _rows(keep, ks))  # (B, H, c, D), (B, H, c, F)
            lk_c, mq = shifts[n]
            dfk, dv[:, :, ks] = causal_dphi_k_dv(phi_q(q[:, :, qs], qs), fk.detach(), _ones_column(v[:, :, ks]),
                                                 g_nd(qs), dstate, S, lk_c, mq, ref)
            dk[:, :, ks] = grads.vjp(fk, kc, dfk)
        # Keys before the diagonal feed every step; relative to the earliest aligned query's shift.
        kw = _key_weights(_rows(keep, slice(0, P)), _rows(lk, slice(0, P)), ref)  # (B, ·, P, 1)
        _key_grads(phi_k, k, v, kw, 0, P, C, dstate, dk, dv, grads)
        return (dq, dk, dv, *none, *grads.result())


# ---- stabilised keys ---------------------------------------------------------------------------------------
def _log_scales(k_log_scale: Tensor, keep: Tensor | None) -> Tensor:
    """The keys' log-scales with −inf at padded keys: (B, H, Tk, 1)."""
    return k_log_scale if keep is None else k_log_scale.masked_fill(~keep, -torch.inf)


def _prefix_shift(lk: Tensor | None, P: int) -> Tensor | None:
    """Largest log-scale among the keys before the diagonal (−inf if none): the state's first shift (B, H, 1, 1)."""
    if lk is None:
        return None
    if P == 0:
        return torch.full_like(lk[:, :, :1], -torch.inf)
    return lk[:, :, :P].amax(dim=-2, keepdim=True)


def _chunk_shifts(lk: Tensor | None, ks: slice, mst: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """A chunk's key log-scales and its queries' shifts M_i = max(state shift, prefix max in the chunk)."""
    if lk is None:
        return None, None
    lk_c = lk[:, :, ks]  # (B, H, c, 1)
    return lk_c, torch.maximum(lk_c.cummax(dim=-2).values, mst)  # (B, H, c, 1) ×2


def _all_chunk_shifts(lk: Tensor | None, P: int, L: int, C: int) -> list[tuple[Tensor | None, Tensor | None]]:
    """Every chunk's (log-scales, query shifts), as the forward order computes them."""
    mst = _prefix_shift(lk, P)
    out = []
    for t in range(0, L, C):
        lk_c, mq = _chunk_shifts(lk, slice(P + t, P + t + C), mst)
        out.append((lk_c, mq))
        if mq is not None:
            mst = mq[:, :, -1:]
    return out


def _key_weights(keep: Tensor | None, lk: Tensor | None, shift: Tensor | None) -> Tensor | None:
    """Per-key factor on φ̃(k): exp(ℓ_j − shift) (0 at padded keys) with log-scales, else the padding mask."""
    if lk is None:
        return keep  # (B, 1, Tk, 1) bool, or None
    return exp_diff(lk, shift)  # (B, H, Tk, 1)


# ---- helpers ------------------------------------------------------------------------------------------------
def _addmm_(acc: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """acc += a @ b in place, batched over (B, H): no temporary product and no second pass over acc."""
    state_view(acc).baddbmm_(bh(a), bh(b))
    return acc


def _alignment(Tq: int, Tk: int) -> tuple[int, int, int]:
    """Causal, bottom-right aligned: P keys precede the diagonal (seen by every query), q0 queries precede every
    key (they see nothing, output 0), and the L = Tq − q0 = Tk − P aligned pairs (q0 + t, P + t) follow."""
    P, q0 = max(Tk - Tq, 0), max(Tq - Tk, 0)
    return P, q0, Tq - q0


def _rows(w: Tensor | None, rows: slice) -> Tensor | None:
    return None if w is None else w[:, :, rows]  # (B, ·, c, 1)


def _weighted(fk: Tensor, w: Tensor | None) -> Tensor:
    """φ(k) times per-key weights (B, ·, c, 1), exactly 0 where the weight is 0 (even for an inf feature)."""
    if w is None:
        return fk
    return torch.where(w > 0, fk * w, 0.0) if w.dtype != torch.bool else torch.where(w, fk, 0.0)  # (B, H, c, F)


def _ones_column(v: Tensor) -> Tensor:
    return F.pad(v, (0, 1), value=1.0)  # (B, H, c, Dv+1): the last column sums the weights


def _keys(phi_k: ChunkMap, k: Tensor, v: Tensor, rows: slice, w: Tensor | None) -> tuple[Tensor, Tensor]:
    """Weighted φ(k) (B, H, c, F) and [v, 1] (B, H, c, E) of the keys at ``rows``."""
    return _weighted(phi_k(k[:, :, rows], rows), w), _ones_column(v[:, :, rows])


def _key_state(phi_k: ChunkMap, k: Tensor, v: Tensor, w: Tensor | None, start: int, stop: int, C: int,
               Fd: int) -> Tensor:
    """Σ_j w_j φ(k_j)ᵀ [v_j, 1] over keys start..stop, a chunk at a time: (B, H, F, Dv+1)."""
    B, H, _, Dv = v.shape
    state = v.new_zeros(B, H, Fd, Dv + 1)  # (B, H, F, E)
    for s in range(start, stop, C):
        ks = slice(s, min(s + C, stop))
        fk, v1 = _keys(phi_k, k, v, ks, _rows(w, ks))  # (B, H, c, F), (B, H, c, E)
        _addmm_(state, fk.mT, v1)  # (B, H, F, E)
    return state


def _visible_value_max(v: Tensor, keep: Tensor | None, causal: bool, Tq: int) -> Tensor:
    """V_i = max over the keys query i sees of ‖v_j‖_∞ (B, H, Tq, 1): what a guarded normaliser's floor needs."""
    vn = value_norms(v)  # (B, H, Tk, 1)
    if keep is not None:
        vn = torch.where(keep, vn, 0.0)
    if not causal:
        return vn.amax(dim=-2, keepdim=True).expand(*vn.shape[:2], Tq, 1)  # (B, H, Tq, 1)
    P, q0, _ = _alignment(Tq, v.shape[-2])
    prefix = vn.cummax(dim=-2).values[:, :, P:]  # (B, H, L, 1): query q0 + t sees keys ≤ P + t
    return torch.cat([vn.new_zeros(*vn.shape[:2], q0, 1), prefix], dim=-2)  # (B, H, Tq, 1)


def _key_grads(phi_k: ChunkMap, k: Tensor, v: Tensor, w: Tensor | None, start: int, stop: int, C: int,
               dstate: Tensor, dk: Tensor, dv: Tensor, grads: _ParamGrads) -> None:
    """dk, dv (in place) of keys start..stop whose w_j φ(k_j)ᵀ [v_j, 1] entered a state with gradient dstate."""
    Dv = v.shape[-1]
    for s in range(start, stop, C):
        ks = slice(s, min(s + C, stop))
        kc, fk = _with_graph(phi_k, k, ks, _rows(w, ks))  # (B, H, c, D), (B, H, c, F)
        dv[:, :, ks] = fk.detach() @ dstate[..., :Dv]  # (B, H, c, Dv)
        dk[:, :, ks] = grads.vjp(fk, kc, _ones_column(v[:, :, ks]) @ dstate.mT)  # ∂L/∂φ(k) = [v, 1] dstateᵀ


def _normaliser_grads(g: Tensor, out: Tensor, den: Tensor, floor: Tensor | None,
                      norm: Normaliser) -> tuple[Tensor, Tensor]:
    """For out = num / safe(den): 1 / safe(den) and ∂L/∂den = −safe'(den) Σ_d g·out / safe(den), both
    (B, H, Tq, 1), from ∂L/∂out g (B, H, Tq, Dv). The rule is differentiated by autograd on this column: its
    derivative is 0 where it replaced den (as in the exact path)."""
    with torch.enable_grad():
        d = den.detach().requires_grad_()  # (B, H, Tq, 1)
        sden = norm.safe(d, floor)  # (B, H, Tq, 1)
        inv = 1.0 / sden.detach()  # (B, H, Tq, 1)
        g_sden = (g * out).sum(dim=-1, keepdim=True).mul_(inv).neg_()  # (B, H, Tq, 1): −Σ g·num / safe²
        g_den = torch.autograd.grad(sden, d, g_sden)[0] if sden.requires_grad else torch.zeros_like(den)
    return inv, g_den


def _with_graph(phi: ChunkMap, x: Tensor, rows: slice, w: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """A leaf copy of x's chunk ``rows`` and (weighted) φ of it with φ's graph recorded (backward runs in no-grad
    mode)."""
    with torch.enable_grad():
        leaf = x[:, :, rows].detach().requires_grad_()  # (B, H, c, D)
        return leaf, _weighted(phi(leaf, rows), w)  # (B, H, c, F)


class _ParamGrads:
    """Gradients of the feature maps' parameters, accumulated over every chunk's small graph."""

    def __init__(self, params: Sequence[Tensor]) -> None:
        self.params = [p for p in params]
        self.acc: list[Tensor | None] = [None] * len(self.params)

    def vjp(self, f: Tensor, x: Tensor, df: Tensor) -> Tensor:
        """∂L/∂x from ∂L/∂f through this chunk's graph of f = φ(x) (freed afterwards); ∂L/∂params accumulated."""
        if not self.params:
            return torch.autograd.grad(f, x, df)[0]  # (B, H, c, D)
        dx, *dp = torch.autograd.grad(f, (x, *self.params), df, allow_unused=True)
        for i, g in enumerate(dp):
            if g is not None:
                self.acc[i] = g if self.acc[i] is None else self.acc[i] + g
        return dx if dx is not None else torch.zeros_like(x)

    def result(self) -> tuple[Tensor | None, ...]:
        return tuple(self.acc)
