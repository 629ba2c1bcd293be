"""Compiled per-tile bodies of the tiled path: dot-product kernels f(q·k·scale) with the plain normaliser
(polynomial, quadratic, taylor) and squared-distance kernels f(‖q−k‖²) in log space (laplacian).

Why: on CPU the tiled path of these kernels spends as long on tile-sized elementwise passes (f, f', masking,
the normaliser's row sums, the softmax-free "ds" of the backward) as on its matmuls — each pass streams a
2 MB tile through memory, and the eager path makes 8–10 of them per tile. ``torch.compile`` (Inductor) fuses
each chain of pointwise ops into one loop between the matmuls: measured on one core, an 8 × 256 × 256 × 64
quadratic backward tile takes 3.5 ms instead of 6.4 ms (the five matmuls alone are ~2.2 ms).

The functions below are the same maths as the eager branches of ``chunked._TiledAttention``; the kernel's
``f``/``df`` are traced into the graph. Laplacian's eager tile spends ~60 % of its time outside the GEMMs (sqrt,
reciprocal, exp, the online-softmax rescaling, the distance-gradient row sums); fused, those become two loops.
They are used only when

- the score is a ``DotScore`` (plain normaliser) or ``SqDistScore`` (log space) whose functions are module-level
  (so one compiled graph serves every layer and instance of a kernel: Dynamo guards on the functions' identity
  and the parameter values),
- the tensors are float32/float64 on CPU (CUDA users have FlexAttention; an uncompiled GPU path stays eager),
- the tile has at least ``COMPILE_MIN_TILE`` entries (tests and short sequences: compiling is not worth it),
- compiling is allowed (``trainer.compile_tiles``, default from ``KA_COMPILE_TILES``), and compilation has not
  failed before in this process (then: eager;
  ``tile_scores.CompiledTiles``, the same rule as the L1 tiles).

Outputs agree with the eager path to rounding (tests/test_attention_tile_scores.py checks float64 to 1e-9).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from kernel_attention.attention.distances import sq_dists
from kernel_attention.attention.tile_scores import COMPILE_MIN_TILE, CompiledTiles, DotScore, SqDistScore, TileScore


def _fwd_tile(
    qb: Tensor, kb: Tensor, vb: Tensor, keep: Tensor | None, f: Callable[..., Tensor], params: tuple,
    scale: float, abs_norm: bool,
) -> tuple[Tensor, Tensor]:
    """One forward tile: (Σ_j κ_ij v_j, Σ_j κ_ij or Σ_j |κ_ij|) over the tile's keys → (B,H,tq,Dv), (B,H,tq,1)."""
    s = f((qb * scale) @ kb.transpose(-2, -1), *params)  # (B, H, tq, tk)
    if keep is not None:
        s = torch.where(keep, s, 0.0)  # (B, H, tq, tk)
    den = (s.abs() if abs_norm else s).sum(dim=-1, keepdim=True)  # (B, H, tq, 1)
    return s @ vb, den  # (B, H, tq, Dv), (B, H, tq, 1)


def _bwd_tile(
    qb: Tensor, kb: Tensor, vb: Tensor, gn: Tensor, g_den: Tensor, keep: Tensor | None,
    f: Callable[..., Tensor], df: Callable[..., Tensor], params: tuple, scale: float, abs_norm: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """One backward tile from g_num = g/den (B,H,tq,Dv) and g_den = −(g·out)/den (B,H,tq,1) → dq, dk, dv parts."""
    u = (qb * scale) @ kb.transpose(-2, -1)  # (B, H, tq, tk)
    d = df(u, *params)  # (B, H, tq, tk) f'(u), before f may overwrite u
    w = f(u, *params)  # (B, H, tq, tk)
    if keep is not None:
        w = torch.where(keep, w, 0.0)
    dv = w.transpose(-2, -1) @ gn  # (B, H, tk, Dv)
    ds = gn @ vb.transpose(-2, -1)  # (B, H, tq, tk)
    ds = ds + torch.sign(w) * g_den if abs_norm else ds + g_den  # d(den)/dw is sign(w) for Σ|κ|
    if keep is not None:
        ds = torch.where(keep, ds, 0.0)
    du = ds * d  # (B, H, tq, tk)
    return (du @ kb) * scale, (du.transpose(-2, -1) @ qb) * scale, dv  # (B,H,tq,D), (B,H,tk,D), (B,H,tk,Dv)


def _fwd_tile_log(
    qb: Tensor, kb: Tensor, vb: Tensor, keep: Tensor | None, m: Tensor, f: Callable[..., Tensor], params: tuple
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One online-softmax step over a tile of log κ = f(‖q−k‖²): from the running max m (B,H,tq,1) to
    (new max, rescale factor α for what was summed so far, Σ_j p_ij, Σ_j p_ij v_j), p = exp(log κ − new max)."""
    s = f(sq_dists(qb, kb), *params)  # (B, H, tq, tk) log κ
    if keep is not None:
        s = torch.where(keep, s, -math.inf)
    m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))  # (B, H, tq, 1)
    m_use = torch.where(torch.isinf(m_new), 0.0, m_new)  # rows with nothing yet: any shift
    p = (s - m_use).exp()  # (B, H, tq, tk)
    return m_new, (m - m_use).exp(), p.sum(dim=-1, keepdim=True), p @ vb  # (B,H,tq,1) ×3, (B,H,tq,Dv)


def _bwd_tile_log(
    qb: Tensor, kb: Tensor, vb: Tensor, gb: Tensor, g_dot_out: Tensor, lse: Tensor, keep: Tensor | None,
    f_and_df: Callable[..., tuple[Tensor, Tensor]], params: tuple,
) -> tuple[Tensor, Tensor, Tensor]:
    """One backward tile of softmax(f(‖q−k‖²)) attention from g (B,H,tq,Dv), Σ g·out and log Σκ (B,H,tq,1)."""
    s, d = f_and_df(sq_dists(qb, kb), *params)  # (B, H, tq, tk) log κ and its derivative in ‖q−k‖²
    if keep is not None:
        s = torch.where(keep, s, -math.inf)
    p = (s - lse).exp()  # (B, H, tq, tk) normalised weights (0 where masked)
    dv = p.transpose(-2, -1) @ gb  # (B, H, tk, Dv)
    G = (gb @ vb.transpose(-2, -1) - g_dot_out) * p * d  # (B, H, tq, tk) d(loss)/d‖q−k‖²
    dq = 2.0 * (qb * G.sum(dim=-1, keepdim=True) - G @ kb)  # (B, H, tq, D)
    dk = 2.0 * (kb * G.sum(dim=-2)[..., None] - G.transpose(-2, -1) @ qb)  # (B, H, tk, D)
    return dq, dk, dv


DOT_TILES = CompiledTiles(fwd=_fwd_tile, bwd=_bwd_tile)
SQ_TILES = CompiledTiles(fwd=_fwd_tile_log, bwd=_bwd_tile_log)


def _module_level(fn: Callable) -> bool:
    return "<locals>" not in getattr(fn, "__qualname__", "<locals>")


class FusedTiles:
    """Compiled forward/backward tile bodies for one score; each call returns None when this tile must run
    eagerly instead (too small, or the compiler failed — then for the rest of the process)."""

    def __init__(self, score: DotScore | SqDistScore, abs_norm: bool) -> None:
        self.score, self.abs_norm = score, abs_norm
        self.kind = "dot" if isinstance(score, DotScore) else "sq"

    def _run(self, which: str, *args: object) -> tuple[Tensor, ...] | None:
        return (DOT_TILES if self.kind == "dot" else SQ_TILES)(which, *args)  # type: ignore[return-value]

    def forward(
        self, qb: Tensor, kb: Tensor, vb: Tensor, keep: Tensor | None, m: Tensor | None = None
    ) -> tuple[Tensor, ...] | None:
        """dot: (Σκv, Σκ or Σ|κ|); sq (log space, needs the running max m): ``_fwd_tile_log``'s four."""
        if qb.shape[-2] * kb.shape[-2] < COMPILE_MIN_TILE:
            return None
        s = self.score
        if isinstance(s, DotScore):
            return self._run("fwd", qb, kb, vb, keep, s.f, s.params, s.scale, self.abs_norm)
        return self._run("fwd", qb, kb, vb, keep, m, s.f, s.params)

    def backward(
        self, qb: Tensor, kb: Tensor, vb: Tensor, g: Tensor, g_row: Tensor, keep: Tensor | None,
        lse: Tensor | None = None,
    ) -> tuple[Tensor, ...] | None:
        """dot: g = g_num (B,H,tq,Dv), g_row = g_den (B,H,tq,1); sq: g = g_out, g_row = Σ g·out, lse = log Σκ.
        → (dq part, dk part, dv part)."""
        if qb.shape[-2] * kb.shape[-2] < COMPILE_MIN_TILE:
            return None
        s = self.score
        if isinstance(s, DotScore):
            return self._run("bwd", qb, kb, vb, g, g_row, keep, s.f, s.df, s.params, s.scale, self.abs_norm)
        return self._run("bwd", qb, kb, vb, g, g_row, lse, keep, s.f_and_df, s.params)


def fused_tiles(score: TileScore, q: Tensor, log_space: bool, abs_norm: bool) -> FusedTiles | None:
    """The compiled tile bodies for ``score`` on tensors like ``q``, or None where they do not apply."""
    if q.device.type != "cpu" or q.dtype not in (torch.float32, torch.float64):
        return None
    if isinstance(score, DotScore) and not log_space:
        fns: tuple[Callable, ...] = (score.f, score.df)
        tiles = DOT_TILES
    elif isinstance(score, SqDistScore) and log_space:
        fns = (score.f, score.f_and_df)
        tiles = SQ_TILES
    else:
        return None
    if not tiles.available():
        return None
    if not all(_module_level(fn) for fn in fns):
        return None  # closures: Dynamo would recompile per instance; the eager path is as exact
    return FusedTiles(score, abs_norm)
