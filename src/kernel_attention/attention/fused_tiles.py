"""Compiled per-tile bodies of the tiled path for dot-product kernels f(q·k·scale) (polynomial, quadratic, taylor).

Why: on CPU the tiled path of these kernels spends as long on tile-sized elementwise passes (f, f', masking,
the normaliser's row sums, the softmax-free "ds" of the backward) as on its matmuls — each pass streams a
2 MB tile through memory, and the eager path makes 8–10 of them per tile. ``torch.compile`` (Inductor) fuses
each chain of pointwise ops into one loop between the matmuls: measured on one core, an 8 × 256 × 256 × 64
quadratic backward tile takes 3.5 ms instead of 6.4 ms (the five matmuls alone are ~2.2 ms).

The functions below are the same maths as the eager branch of ``chunked._TiledAttention`` for the plain
(non-log) normaliser; the kernel's ``f``/``df`` are traced into the graph. They are used only when

- the score is a ``DotScore`` whose ``f`` and ``df`` are module-level functions (so one compiled graph serves
  every layer and instance of a kernel: Dynamo guards on the functions' identity and the parameter values),
- the tensors are float32/float64 on CPU (CUDA users have FlexAttention; an uncompiled GPU path stays eager),
- the tile has at least ``COMPILE_MIN_TILE`` entries (tests and short sequences: compiling is not worth it),
- ``KA_COMPILE_TILES`` is not ``0``, and compilation has not failed before in this process (then: eager).

Outputs agree with the eager path to rounding (tests/test_attention_tile_scores.py checks float64 to 1e-9).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch
from torch import Tensor

from kernel_attention.attention.tile_scores import COMPILE_MIN_TILE, DotScore, TileScore


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


@functools.lru_cache(maxsize=1)
def _compiled() -> tuple[Callable[..., tuple[Tensor, ...]], Callable[..., tuple[Tensor, ...]]] | None:
    if os.environ.get("KA_COMPILE_TILES", "1") == "0":
        return None
    try:
        return torch.compile(_fwd_tile), torch.compile(_bwd_tile)
    except Exception:  # no compiler backend: the eager tile loop runs
        return None


_BROKEN = False


def _module_level(fn: Callable) -> bool:
    return "<locals>" not in getattr(fn, "__qualname__", "<locals>")


class FusedDotTiles:
    """Compiled forward/backward tile bodies for one ``DotScore``; each call returns None when this tile
    must run eagerly instead (too small, or the compiler failed — then for the rest of the process)."""

    def __init__(self, score: DotScore, abs_norm: bool) -> None:
        self.score, self.abs_norm = score, abs_norm

    def _run(self, which: int, *args: object) -> tuple[Tensor, ...] | None:
        global _BROKEN
        fns = _compiled()
        if _BROKEN or fns is None:
            return None
        try:
            return fns[which](*args)
        except Exception:  # a compiler error at first call: eager from now on, same numbers
            _BROKEN = True
            return None

    def forward(self, qb: Tensor, kb: Tensor, vb: Tensor, keep: Tensor | None) -> tuple[Tensor, ...] | None:
        if qb.shape[-2] * kb.shape[-2] < COMPILE_MIN_TILE:
            return None
        s = self.score
        return self._run(0, qb, kb, vb, keep, s.f, s.params, s.scale, self.abs_norm)

    def backward(
        self, qb: Tensor, kb: Tensor, vb: Tensor, gn: Tensor, g_den: Tensor, keep: Tensor | None
    ) -> tuple[Tensor, ...] | None:
        if qb.shape[-2] * kb.shape[-2] < COMPILE_MIN_TILE:
            return None
        s = self.score
        return self._run(1, qb, kb, vb, gn, g_den, keep, s.f, s.df, s.params, s.scale, self.abs_norm)


def fused_dot_tiles(score: TileScore, q: Tensor, abs_norm: bool) -> FusedDotTiles | None:
    """The compiled tile bodies for ``score`` on tensors like ``q``, or None where they do not apply."""
    if not isinstance(score, DotScore) or _BROKEN or _compiled() is None:
        return None
    if q.device.type != "cpu" or q.dtype not in (torch.float32, torch.float64):
        return None
    if not (_module_level(score.f) and _module_level(score.df)):
        return None  # closures: Dynamo would recompile per instance; the eager path is as exact
    return FusedDotTiles(score, abs_norm)
