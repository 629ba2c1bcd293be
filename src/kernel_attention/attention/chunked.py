"""Tiled kernel attention for any pairwise score function, memory-bounded in forward AND backward.

The query × key plane is cut into tiles (block_q × block_k). The forward pass keeps, per query row, an online
normaliser like FlashAttention (Dao et al. 2022): in log space a running max m, running sum l and running
numerator, rescaled whenever m grows; for signed/polynomial kernels plain running sums of κ·v and of κ (or
|κ|). Only the output and one scalar per row are saved; the backward pass recomputes each tile's scores and
pushes the tile's gradient through the score function with ``torch.autograd.grad``. So no tensor larger than
(B, H, block_q, block_k) — or what the score function needs for one tile — ever exists, in either pass, and
any differentiable score function works (dot-product, distance and min-based kernels alike).

Tiles that causality hides entirely are skipped, which halves the work of causal self-attention. Plain (not
log-space) sums are divided by the kernel's ``Normaliser`` rule, the one every path shares; signed kernels with
the plain sum also keep the running max of ‖v‖ over each row's visible keys, which their guard needs.

Score functions may be plain callables (gradients through ``torch.autograd.grad``) or ``TileScore`` objects
with hand-written gradients (``tile_scores.py``), which is what the kernels of this package pass: the
backward pass then costs the recomputed tile, the two matmuls of dv and dp, and two matmuls (or two fused
reductions) for dq and dk — no autograd graph per tile.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from kernel_attention.attention.fused_tiles import fused_tiles
from kernel_attention.attention.normaliser import Normaliser, value_norms
from kernel_attention.attention.tile_scores import AutogradScore, TileScore, Vjp

ScoreFn = Callable[[Tensor, Tensor], Tensor]  # (B, H, tq, D), (B, H, tk, D) -> (B, H, tq, tk)


def _tile_keep(
    i0: int, i1: int, j0: int, j1: int, offset: int, causal: bool, keep_k: Tensor | None, device: torch.device
) -> Tensor | None:
    """(B|1, 1, tq, tk) bool, True where query i may see key j, or None when the whole tile is visible."""
    mask = None
    if causal and j1 - 1 > i0 + offset:  # some key of the tile lies in the future of some query
        qpos = torch.arange(i0, i1, device=device)[:, None] + offset  # (tq, 1)
        kpos = torch.arange(j0, j1, device=device)[None, :]  # (1, tk)
        mask = (kpos <= qpos)[None, None]  # (1, 1, tq, tk)
    if keep_k is not None:
        kp = keep_k[:, None, None, j0:j1]  # (B, 1, 1, tk)
        mask = kp if mask is None else mask & kp  # (B, 1, tq, tk)
    return mask


def _key_blocks(i0: int, i1: int, Tk: int, block_k: int, offset: int, causal: bool) -> range:
    """Start indices of the key tiles that query rows [i0, i1) can see at all."""
    stop = Tk if not causal else max(0, min(Tk, i1 - 1 + offset + 1))
    return range(0, stop, block_k)


class _TiledAttention(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx, q: Tensor, k: Tensor, v: Tensor, score_fn: TileScore, keep_k: Tensor | None, log_space: bool,
        norm: Normaliser, causal: bool, block_q: int, block_k: int, q_pos: Tensor | None, k_pos: Tensor | None,
        *params: Tensor,
    ) -> Tensor:
        B, H, Tq, _ = q.shape
        Tk, Dv = k.shape[-2], v.shape[-1]
        offset = Tk - Tq
        out = q.new_zeros(B, H, Tq, Dv)  # (B, H, Tq, Dv)
        # log space: log Σ_j κ_ij (−inf for empty rows); otherwise the safe denominator actually used.
        stat = q.new_zeros(B, H, Tq, 1)  # (B, H, Tq, 1)
        clamped = None if log_space else torch.zeros(B, H, Tq, 1, dtype=torch.bool, device=q.device)
        fused = fused_tiles(score_fn, q, log_space, norm.abs_terms)  # compiled bodies (CPU), or None
        vnorm = value_norms(v) if norm.guarded else None  # (B, H, Tk, 1)
        for i0 in range(0, Tq, block_q):
            i1 = min(Tq, i0 + block_q)
            qb = q[:, :, i0:i1]  # (B, H, tq, D)
            acc = q.new_zeros(B, H, i1 - i0, Dv)  # (B, H, tq, Dv)
            den = q.new_zeros(B, H, i1 - i0, 1)  # (B, H, tq, 1)
            vmax = q.new_zeros(B, H, i1 - i0, 1) if norm.guarded else None  # (B, H, tq, 1): max visible ‖v_j‖
            m = q.new_full((B, H, i1 - i0, 1), -math.inf)  # (B, H, tq, 1) running max of log κ
            for j0 in _key_blocks(i0, i1, Tk, block_k, offset, causal):
                j1 = min(Tk, j0 + block_k)
                keep = _tile_keep(i0, i1, j0, j1, offset, causal, keep_k, q.device)
                vb = v[:, :, j0:j1]  # (B, H, tk, Dv)
                if vmax is not None:
                    vn = vnorm[:, :, j0:j1].transpose(-2, -1)  # (B, H, 1, tk)
                    vn = vn if keep is None else torch.where(keep, vn, 0.0)  # (B, H, tq|1, tk)
                    vmax = torch.maximum(vmax, vn.amax(dim=-1, keepdim=True))  # (B, H, tq, 1)
                part = None if fused is None else fused.forward(qb, k[:, :, j0:j1], vb, keep, m)
                if part is not None and log_space:
                    m, alpha, psum, pv = part  # (B, H, tq, 1) ×3, (B, H, tq, Dv)
                    den = den * alpha + psum
                    acc = acc.mul_(alpha).add_(pv)
                    continue
                if part is not None:
                    acc.add_(part[0])  # (B, H, tq, Dv)
                    den.add_(part[1])  # (B, H, tq, 1)
                    continue
                s = _score(score_fn, qb, k[:, :, j0:j1], q_pos, k_pos, i0, i1, j0, j1)  # (B, H, tq, tk)
                # Tile-sized work is done in place on s (a fresh tensor the score returns): on CPU a new
                # tile-sized tensor per op costs as much again as the op (allocation and page faults).
                if log_space:
                    if keep is not None:
                        s.masked_fill_(~keep, -math.inf)
                    m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))  # (B, H, tq, 1)
                    m_use = m_new.masked_fill(torch.isinf(m_new), 0.0)  # rows with nothing yet: any shift
                    alpha = (m - m_use).exp()  # (B, H, tq, 1) rescales what was summed under the old max
                    p = s.sub_(m_use).exp_()  # (B, H, tq, tk)
                    den = den * alpha + p.sum(dim=-1, keepdim=True)
                    acc = acc.mul_(alpha).add_(p @ vb)  # (B, H, tq, Dv)
                    m = m_new
                else:
                    if keep is not None:
                        s.masked_fill_(~keep, 0.0)
                    den = den + (s.abs() if norm.abs_terms else s).sum(dim=-1, keepdim=True)  # (B, H, tq, 1)
                    acc = acc.add_(s @ vb)  # (B, H, tq, Dv)
            if log_space:
                out[:, :, i0:i1] = acc / den.clamp_min(torch.finfo(den.dtype).tiny)  # empty rows: 0 / tiny
                stat[:, :, i0:i1] = m.masked_fill(torch.isinf(m), 0.0) + den.log()  # −inf where den = 0
            else:
                floor = None if vmax is None else norm.floor(acc, vmax)  # (B, H, tq, 1)
                safe = norm.safe(den, floor)  # the rule of every path (attention/normaliser.py)
                out[:, :, i0:i1] = acc / safe
                stat[:, :, i0:i1] = safe
                clamped[:, :, i0:i1] = safe != den  # the rule replaced den: a constant, no gradient
        ctx.save_for_backward(q, k, v, out, stat, keep_k, clamped, q_pos, k_pos, *params)
        ctx.cfg = (score_fn, log_space, norm, causal, block_q, block_k, len(params))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out: Tensor):  # type: ignore[override]
        q, k, v, out, stat, keep_k, clamped, q_pos, k_pos, *params = ctx.saved_tensors
        score_fn, log_space, norm, causal, block_q, block_k, n_params = ctx.cfg
        Tq, Tk = q.shape[-2], k.shape[-2]
        offset = Tk - Tq
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dparams = [torch.zeros_like(p) for p in params]
        # d(out_i)/d(den_i) contracted with g_out: −(g·out)/den; zero where the normaliser rule replaced den.
        g_dot_out = (g_out * out).sum(dim=-1, keepdim=True)  # (B, H, Tq, 1)
        if log_space:
            lse = stat.masked_fill(torch.isinf(stat), 0.0)  # (B, H, Tq, 1) empty rows: any value, P = 0 there
        else:
            g_num = g_out / stat  # (B, H, Tq, Dv)
            g_den = torch.where(clamped, 0.0, -g_dot_out / stat)  # (B, H, Tq, 1)
        fused = fused_tiles(score_fn, q, log_space, norm.abs_terms)
        for i0 in range(0, Tq, block_q):
            i1 = min(Tq, i0 + block_q)
            for j0 in _key_blocks(i0, i1, Tk, block_k, offset, causal):
                j1 = min(Tk, j0 + block_k)
                keep = _tile_keep(i0, i1, j0, j1, offset, causal, keep_k, q.device)
                qb, kb = q[:, :, i0:i1], k[:, :, j0:j1]  # (B, H, tq, D), (B, H, tk, D)
                vb, gb = v[:, :, j0:j1], g_out[:, :, i0:i1]  # (B, H, tk, Dv), (B, H, tq, Dv)
                if fused is not None:
                    part = (fused.backward(qb, kb, vb, gb, g_dot_out[:, :, i0:i1], keep, lse[:, :, i0:i1])
                            if log_space else fused.backward(qb, kb, vb, g_num[:, :, i0:i1], g_den[:, :, i0:i1], keep))
                    if part is not None:
                        dq[:, :, i0:i1] += part[0]  # (B, H, tq, D)
                        dk[:, :, j0:j1] += part[1]  # (B, H, tk, D)
                        dv[:, :, j0:j1] += part[2]  # (B, H, tk, Dv)
                        continue
                s, vjp = _score_and_vjp(score_fn, qb, kb, q_pos, k_pos, i0, i1, j0, j1)  # (B, H, tq, tk), vjp
                if log_space:
                    if keep is not None:
                        s.masked_fill_(~keep, -math.inf)
                    p = s.sub_(lse[:, :, i0:i1]).exp_()  # (B, H, tq, tk) = normalised weights
                    dv[:, :, j0:j1] += p.transpose(-2, -1) @ gb  # (B, H, tk, Dv)
                    dp = gb @ vb.transpose(-2, -1)  # (B, H, tq, tk)
                    ds = dp.sub_(g_dot_out[:, :, i0:i1]).mul_(p)  # softmax backward: (B, H, tq, tk)
                else:
                    w = s if keep is None else s.masked_fill_(~keep, 0.0)  # (B, H, tq, tk)
                    gn = g_num[:, :, i0:i1]  # (B, H, tq, Dv)
                    dv[:, :, j0:j1] += w.transpose(-2, -1) @ gn  # (B, H, tk, Dv)
                    # d(den term)/dw is sign(w) for Σ|κ|, else 1 (a broadcast add, no tile of ones).
                    g_den_b = g_den[:, :, i0:i1]  # (B, H, tq, 1)
                    ds = gn @ vb.transpose(-2, -1)  # (B, H, tq, tk)
                    ds = ds.addcmul_(torch.sign(w), g_den_b) if norm.abs_terms else ds.add_(g_den_b)
                    if keep is not None:
                        ds.masked_fill_(~keep, 0.0)
                gq, gk, *gp = vjp(ds)  # (B, H, tq, D), (B, H, tk, D), then one per kernel parameter
                if gq is not None:  # None: the score does not depend on q (autograd's allow_unused)
                    dq[:, :, i0:i1] += gq
                if gk is not None:
                    dk[:, :, j0:j1] += gk
                for acc, g in zip(dparams, gp):
                    if g is not None:
                        acc += g
        return (dq, dk, dv, *([None] * 9), *dparams[:n_params])


def _score(score_fn: TileScore, qb: Tensor, kb: Tensor, q_pos: Tensor | None, k_pos: Tensor | None,
           i0: int, i1: int, j0: int, j1: int) -> Tensor:
    """One tile's scores, with the tile's token positions for position-aware scores."""
    if score_fn.position_aware:
        return score_fn.score(qb, kb, q_pos[i0:i1], k_pos[j0:j1])  # type: ignore[index, call-arg]
    return score_fn.score(qb, kb)  # (B, H, tq, tk)


def _score_and_vjp(score_fn: TileScore, qb: Tensor, kb: Tensor, q_pos: Tensor | None, k_pos: Tensor | None,
                   i0: int, i1: int, j0: int, j1: int) -> tuple[Tensor, Vjp]:
    if score_fn.position_aware:
        return score_fn.score_and_vjp(qb, kb, q_pos[i0:i1], k_pos[j0:j1])  # type: ignore[index, call-arg]
    return score_fn.score_and_vjp(qb, kb)


def chunked_kernel_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    score_fn: ScoreFn | TileScore,
    *,
    log_space: bool,
    normaliser: Normaliser | None = None,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    block_q: int = 256,
    block_k: int = 256,
    q_pos: Tensor | None = None,
    k_pos: Tensor | None = None,
) -> Tensor:
    """Σ_j κ_ij v_j / Σ_j κ_ij over tiles. ``score_fn`` returns log κ (``log_space``) or κ itself.

    q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv) → (B, H, Tq, Dv); masks as in ``kernels.base``;
    ``normaliser`` is the kernel's division rule (default: a positive kernel's). Position-aware scores get the
    tile's slices of ``q_pos`` (Tq,) and ``k_pos`` (Tk,). Gradients reach q, k, v and the tensors listed in an
    ``AutogradScore``'s ``trainable``; a score must not close over any other tensor that needs gradients."""
    if not isinstance(score_fn, TileScore):
        score_fn = AutogradScore(score_fn)
    if score_fn.position_aware and (q_pos is None or k_pos is None):
        raise ValueError("a position-aware score needs q_pos and k_pos")
    keep_k = None if key_padding_mask is None else ~key_padding_mask.to(device=q.device, dtype=torch.bool)
    params = tuple(getattr(score_fn, "trainable", ()))
    return _TiledAttention.apply(
        q, k, v, score_fn, keep_k, log_space, normaliser or Normaliser(), causal, block_q, block_k, q_pos, k_pos,
        *params,
    )  # (B, H, Tq, Dv)
