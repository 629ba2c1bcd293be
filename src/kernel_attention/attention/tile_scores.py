"""Score functions for the tiled path with hand-written vector-Jacobian products.

The tiled path (``chunked.py``) recomputes every tile's scores in the backward pass and needs d(loss)/dq and
d(loss)/dk from d(loss)/d(scores). Generic score functions get that from ``torch.autograd.grad`` on a
recomputed graph (``AutogradScore``); profiling on CPU showed that graph — saved intermediates, a backward
node per elementwise op, the 1/√d division applied to whole tiles — cost as much as the matmuls. The kernels
of this package are all one of three shapes, whose gradients are two matmuls (or two fused reductions) each:

- ``DotScore``: s = f(q·k · scale), f elementwise (edp-like, polynomial, taylor);
- ``SqDistScore``: s = f(‖q − k‖²) (laplacian), ‖q−k‖² = ‖q‖² + ‖k‖² − 2 q·k by one matmul;
- ``L1Score``: s = a (Σq_i + Σk_j) + b ‖q_i − k_j‖₁ (ei, intersection, exp_l1).

Tile-sized intermediates are updated in place where possible: on CPU every fresh tile-sized tensor costs
about as much again as the operation that fills it (allocation and first-touch page faults). Hence the
contract below: ``f`` may overwrite its argument, ``df`` must not, and every score returned is a fresh tensor
the tiled path may overwrite.

For L1 the distance and its gradient Σ_j g_ij sign(q_il − k_jl) are not matmuls; ``torch.cdist(p=1)`` computes
them at ~1.7 G element/s on one CPU core. On CPU float tiles of at least ``COMPILE_MIN_TILE`` entries we use
two small functions compiled with ``torch.compile`` (Inductor fuses the broadcast and the reduction, so the
(…, tq, tk, D) difference tensor is never materialised) which run 4–5× faster (measured: 8 × 256 × 256 × 64
tile, 2.0 vs 9.8 ms forward, 3.3 vs ~21 ms backward). If compilation is unavailable or fails, or
compiling is switched off (``trainer.compile_tiles=false``; ``KA_COMPILE_TILES=0`` sets that default and the
default of any process that never calls ``set_compile_tiles``), the cdist route is used. Both give the same
values (cdist's sign(0) = 0 convention
is kept).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

ScoreFn = Callable[[Tensor, Tensor], Tensor]  # (B, H, tq, D), (B, H, tk, D) -> (B, H, tq, tk)
Vjp = Callable[[Tensor], tuple[Tensor, ...]]  # d(loss)/d(scores) (B, H, tq, tk) -> (dq, dk, *dparams)
COMPILE_MIN_TILE = 64 * 64  # smaller tiles (tests, short sequences): compile time is not worth it


class TileScore:
    """A pairwise score with its gradient. ``score`` for the forward pass (no graph); ``score_and_vjp`` for
    the backward pass: the recomputed tile and a function mapping d(loss)/d(score) to (d q, d k), followed by
    one gradient per tensor in ``trainable`` (the kernel's own parameters; none for the hand-written scores).
    ``position_aware`` scores take the tile's query and key positions (tq,), (tk,) as two more arguments."""

    position_aware: bool = False
    trainable: tuple[Tensor, ...] = ()

    def __call__(self, q: Tensor, k: Tensor, *pos: Tensor) -> Tensor:
        return self.score(q, k, *pos)

    def score(self, q: Tensor, k: Tensor, *pos: Tensor) -> Tensor:
        raise NotImplementedError

    def score_and_vjp(self, q: Tensor, k: Tensor, *pos: Tensor) -> tuple[Tensor, Vjp]:
        raise NotImplementedError


class AutogradScore(TileScore):
    """Any differentiable score function; gradients by autograd through a recomputed tile, for q, k and the
    tensors in ``params`` (which ``fn`` may read: the kernel's trainable parameters)."""

    def __init__(self, fn: ScoreFn, params: Sequence[Tensor] = (), position_aware: bool = False) -> None:
        self.fn = fn
        self.trainable = tuple(params)
        self.position_aware = position_aware

    def score(self, q: Tensor, k: Tensor, *pos: Tensor) -> Tensor:
        return self.fn(q, k, *pos)  # (B, H, tq, tk)

    def score_and_vjp(self, q: Tensor, k: Tensor, *pos: Tensor) -> tuple[Tensor, Vjp]:
        qb, kb = q.detach().requires_grad_(), k.detach().requires_grad_()
        with torch.enable_grad():
            s = self.fn(qb, kb, *pos)  # (B, H, tq, tk)
        inputs = (qb, kb, *self.trainable)

        def vjp(g: Tensor) -> tuple[Tensor | None, ...]:
            return torch.autograd.grad(s, inputs, g, allow_unused=True)  # (dq, dk, *dparams)

        # A copy: the caller overwrites the returned tile, and s may be saved by the graph (e.g. exp's output).
        return s.detach().clone(), vjp  # type: ignore[return-value]


class DotScore(TileScore):
    """s = f(u), u = (q·k)·scale; ``df`` = f'. Backward: dU = g·f'(u), dq = dU k·scale, dk = dUᵀ q·scale.
    ``f(u, *params)`` may overwrite u; ``df(u, *params)`` must not. Module-level ``f``/``df`` (not closures)
    also let the CPU tiled path use compiled, fused tile bodies (``fused_tiles.py``) shared by all instances."""

    def __init__(
        self, f: Callable[..., Tensor], df: Callable[..., Tensor], scale: float, params: tuple = ()
    ) -> None:
        self.f, self.df, self.scale, self.params = f, df, scale, tuple(params)

    def _u(self, q: Tensor, k: Tensor) -> Tensor:
        return (q * self.scale) @ k.transpose(-2, -1)  # (B, H, tq, tk): scaling q is tq·D work, not tq·tk

    def score(self, q: Tensor, k: Tensor) -> Tensor:
        return self.f(self._u(q, k), *self.params)  # (B, H, tq, tk)

    def score_and_vjp(self, q: Tensor, k: Tensor) -> tuple[Tensor, Vjp]:
        u = self._u(q, k)  # (B, H, tq, tk)
        d = self.df(u, *self.params)  # (B, H, tq, tk) before f consumes u

        def vjp(g: Tensor) -> tuple[Tensor, Tensor]:
            du = g.mul_(d)  # (B, H, tq, tk); g is the caller's fresh tile
            return (du @ k) * self.scale, (du.transpose(-2, -1) @ q) * self.scale  # (B,H,tq,D), (B,H,tk,D)

        return self.f(u, *self.params), vjp


class SqDistScore(TileScore):
    """s = f(d2), d2 = max(‖q‖² + ‖k‖² − 2 q·k, 0). Backward: G = g·f'(d2), dq = 2(q ΣG_row − G k),
    dk = 2(k ΣG_col − Gᵀ q). ``f_and_df(d2)`` returns (f(d2), f'(d2)) and may overwrite d2; f' must be 0 where
    the clamp at 0 is active. Both take ``*params``; module-level functions (not closures) let the CPU tiled
    path use compiled, fused tile bodies (``fused_tiles.py``)."""

    def __init__(
        self, f: Callable[..., Tensor], f_and_df: Callable[..., tuple[Tensor, Tensor]], params: tuple = ()
    ) -> None:
        self.f, self.f_and_df, self.params = f, f_and_df, tuple(params)

    @staticmethod
    def _d2(q: Tensor, k: Tensor) -> Tensor:
        """sq_dists with one tile-sized allocation: the norms are the GEMM's accumulator (baddbmm)."""
        qq = (q * q).sum(dim=-1, keepdim=True)  # (B, H, tq, 1)
        kk = (k * k).sum(dim=-1)[..., None, :]  # (B, H, 1, tk)
        d2 = qq + kk  # (B, H, tq, tk)
        lead, tq, tk = d2.shape[:-2], d2.shape[-2], d2.shape[-1]
        d2.view(-1, tq, tk).baddbmm_(q.reshape(-1, tq, q.shape[-1]), k.reshape(-1, tk, k.shape[-1]).transpose(1, 2),
                                     alpha=-2.0)
        return d2.view(*lead, tq, tk).clamp_min_(0.0)  # cancellation can dip a hair below 0

    def score(self, q: Tensor, k: Tensor) -> Tensor:
        return self.f(self._d2(q, k), *self.params)  # (B, H, tq, tk)

    def score_and_vjp(self, q: Tensor, k: Tensor) -> tuple[Tensor, Vjp]:
        s, d = self.f_and_df(self._d2(q, k), *self.params)  # (B, H, tq, tk) each

        def vjp(g: Tensor) -> tuple[Tensor, Tensor]:
            G = g.mul_(d)  # (B, H, tq, tk)
            dq = 2.0 * (q * G.sum(dim=-1, keepdim=True) - G @ k)  # (B, H, tq, D)
            dk = 2.0 * (k * G.sum(dim=-2)[..., None] - G.transpose(-2, -1) @ q)  # (B, H, tk, D)
            return dq, dk

        return s, vjp


def _l1_eager(q: Tensor, k: Tensor) -> Tensor:
    return (q[..., :, None, :] - k[..., None, :, :]).abs().sum(-1)  # (…, tq, tk); compiled: never materialised


def _sign_sum_eager(g: Tensor, x: Tensor, yT: Tensor) -> Tensor:
    """out[…, i, l] = Σ_j g[…, i, j] · sign(x[…, i, l] − yT[…, l, j]); the reduction runs over contiguous j."""
    xx, yy, gg = x[..., :, :, None], yT[..., None, :, :], g[..., :, None, :]  # (…,tq,D,1), (…,1,D,tk), (…,tq,1,tk)
    return torch.where(xx > yy, gg, torch.where(xx < yy, -gg, 0.0)).sum(-1)  # (…, tq, D)


# Whether the tile bodies may be compiled: ``trainer.compile_tiles`` (recorded in metrics.json), which the training
# loop applies with ``set_compile_tiles``; the environment variable only sets the default.
_SWITCH = {"enabled": os.environ.get("KA_COMPILE_TILES", "1").strip().lower() not in ("0", "false", "no", "off")}


def set_compile_tiles(enabled: bool) -> None:
    """Allow (or forbid) the compiled tile bodies in this process (L1 tiles and ``fused_tiles``)."""
    _SWITCH["enabled"] = bool(enabled)


def compile_tiles_enabled() -> bool:
    return _SWITCH["enabled"]


class CompiledTiles:
    """Tile functions compiled with ``torch.compile`` on first use, with one fallback rule for all of them:
    ``__call__`` returns None — run the eager code instead — when switched off (``set_compile_tiles``), when
    compiling is unavailable, or after any call has failed once in this process (a compiler error; the eager code gives
    the same numbers)."""

    def __init__(self, **fns: Callable[..., object]) -> None:
        self.fns = fns
        self.compiled: dict[str, Callable[..., object]] | None = None
        self.broken = False

    def available(self) -> bool:
        if self.broken or not _SWITCH["enabled"]:
            return False
        if self.compiled is None:
            try:
                self.compiled = {name: torch.compile(fn) for name, fn in self.fns.items()}
            except Exception:  # no compiler backend
                self.broken = True
                return False
        return True

    def __call__(self, name: str, *args: object) -> object | None:
        if not self.available():
            return None
        try:
            return self.compiled[name](*args)  # type: ignore[index]
        except Exception:  # a compiler error at first call: eager from now on
            self.broken = True
            return None


L1_TILES = CompiledTiles(l1=_l1_eager, sign_sum=_sign_sum_eager)


def _use_compiled(q: Tensor, k: Tensor) -> bool:
    return (
        q.device.type == "cpu"
        and q.dtype in (torch.float32, torch.float64)
        and q.shape[-2] * k.shape[-2] >= COMPILE_MIN_TILE
        and L1_TILES.available()
    )


class L1Score(TileScore):
    """s = a·(Σ_l q_il + Σ_l k_jl) + b·‖q_i − k_j‖₁. Backward: dq_il = a Σ_j G_ij + b Σ_j G_ij sign(q_il − k_jl),
    dk_jl = a Σ_i G_ij + b Σ_i G_ij sign(k_jl − q_il)."""

    def __init__(self, a: float, b: float) -> None:
        self.a, self.b = a, b

    def score(self, q: Tensor, k: Tensor) -> Tensor:
        d = None
        if _use_compiled(q, k):
            d = L1_TILES("l1", q, k)  # (B, H, tq, tk)
        if d is None:
            d = torch.cdist(q, k, p=1.0)  # (B, H, tq, tk)
        s = d.mul_(self.b)  # (B, H, tq, tk)
        if self.a:
            s.add_(self.a * q.sum(dim=-1, keepdim=True)).add_(self.a * k.sum(dim=-1)[..., None, :])
        return s

    def score_and_vjp(self, q: Tensor, k: Tensor) -> tuple[Tensor, Vjp]:
        s = self.score(q, k)  # (B, H, tq, tk)

        def vjp(g: Tensor) -> tuple[Tensor, Tensor]:
            dq = dk = None
            if _use_compiled(q, k):
                gT = g.transpose(-2, -1).contiguous()  # (B, H, tk, tq)
                dq = L1_TILES("sign_sum", g.contiguous(), q, k.transpose(-2, -1).contiguous())  # (B, H, tq, D)
                dk = L1_TILES("sign_sum", gT, k, q.transpose(-2, -1).contiguous())  # (B, H, tk, D)
            if dq is None or dk is None:
                qb, kb = q.detach().requires_grad_(), k.detach().requires_grad_()
                with torch.enable_grad():
                    d = torch.cdist(qb, kb, p=1.0)  # (B, H, tq, tk)
                dq, dk = torch.autograd.grad(d, (qb, kb), g)
            dq, dk = self.b * dq, self.b * dk
            if self.a:
                dq = dq + self.a * g.sum(dim=-1, keepdim=True)  # (B, H, tq, D): ∂(Σ_l q_il)/∂q_il = 1
                dk = dk + self.a * g.sum(dim=-2)[..., None]  # (B, H, tk, D)
            return dq, dk

        return s, vjp
