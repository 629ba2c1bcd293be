"""The hand-written tile gradients (attention/tile_scores.py) at tile sizes where the CPU fast path really
runs them — including the torch.compile'd L1 distance and sign-sum, which only kick in on tiles of at least
COMPILE_MIN_TILE entries (the path tests elsewhere use tiny tiles) — against autograd on the exact path."""

from __future__ import annotations

import pytest
import torch

from kernel_attention.attention import fused_tiles, tile_scores
from kernel_attention.kernels import build_kernel


@pytest.mark.parametrize(("name", "params"), [("ei", {}), ("exp_l1", {}), ("intersection", {}), ("laplacian", {}),
                                              ("taylor", {}), ("polynomial", {"p": 3})])
def test_tiled_fast_path_matches_exact_at_real_tile_sizes(name: str, params: dict) -> None:
    torch.manual_seed(0)
    B, H, T, D = 1, 2, 160, 16  # 128-wide tiles: two per side, one partial, all ≥ COMPILE_MIN_TILE but the edge
    kern = build_kernel(name, D, params)
    kern.block_q = kern.block_k = 128
    q, k, v = (torch.randn(B, H, T, D, dtype=torch.float64, requires_grad=True) for _ in range(3))
    kpm = torch.zeros(B, T, dtype=torch.bool)
    kpm[:, -7:] = True  # (B, T) padded keys
    for causal in (False, True):
        outs = []
        for path in ("exact", "fast"):
            out = kern(q, k, v, causal=causal, key_padding_mask=kpm, path=path)  # (B, H, T, D)
            grads = torch.autograd.grad((out * torch.linspace(-1, 1, D, dtype=out.dtype)).sum(), (q, k, v))
            outs.append((out, *grads))
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_compiled_l1_helpers_match_cdist() -> None:
    if not tile_scores.L1_TILES.available():
        pytest.skip("torch.compile unavailable")
    torch.manual_seed(0)
    q, k = torch.randn(2, 96, 8, dtype=torch.float64), torch.randn(2, 80, 8, dtype=torch.float64)
    k[0, 3] = q[0, 5]  # exact ties: sign(0) = 0 as in cdist's backward
    g = torch.randn(2, 96, 80, dtype=torch.float64)
    def l1(*args):
        return tile_scores.L1_TILES("l1", *args)

    def sign_sum(*args):
        return tile_scores.L1_TILES("sign_sum", *args)

    qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
    d = torch.cdist(qq, kk, p=1.0)  # (2, 96, 80)
    gq, gk = torch.autograd.grad(d, (qq, kk), g)
    torch.testing.assert_close(l1(q, k), d.detach())
    torch.testing.assert_close(sign_sum(g, q, k.transpose(-2, -1).contiguous()), gq)
    torch.testing.assert_close(sign_sum(g.transpose(-2, -1).contiguous(), k, q.transpose(-2, -1).contiguous()), gk)


@pytest.mark.parametrize(("name", "params"), [("quadratic", {"p": 2}), ("polynomial", {"p": 3}), ("taylor", {}),
                                              ("laplacian", {})])
def test_fused_tiles_run_and_match_the_eager_tile_loop(name: str, params: dict, monkeypatch) -> None:
    """The compiled tile bodies (fused_tiles.py) really run for f(q·k) kernels and f(‖q−k‖²) kernels on CPU tiles
    ≥ COMPILE_MIN_TILE — causal, padded and partial tiles — and give the eager loop's outputs and gradients."""
    if not (fused_tiles.DOT_TILES.available() and fused_tiles.SQ_TILES.available()):
        pytest.skip("torch.compile unavailable")
    calls = []
    real_run = fused_tiles.FusedTiles._run

    def spy(self, which, *args):
        out = real_run(self, which, *args)
        calls.append((which, out is not None))
        return out

    monkeypatch.setattr(fused_tiles.FusedTiles, "_run", spy)
    torch.manual_seed(1)
    B, H, T, D = 2, 2, 200, 16  # 128-wide tiles: one full and one partial (72 rows) per side
    kern = build_kernel("polynomial" if name == "quadratic" else name, D, params)
    kern.block_q = kern.block_k = 128
    q, k, v = (torch.randn(B, H, T, D, dtype=torch.float64, requires_grad=True) for _ in range(3))
    kpm = torch.zeros(B, T, dtype=torch.bool)
    kpm[1, -50:] = True  # (B, T): padding reaching into the full tile of batch 1
    w = torch.linspace(-1, 1, D, dtype=torch.float64)
    for causal in (False, True):
        results = []
        for broken in (False, True):  # fused, then the eager loop (what a compiler failure falls back to)
            for tiles in (fused_tiles.DOT_TILES, fused_tiles.SQ_TILES):
                monkeypatch.setattr(tiles, "broken", broken)
            out = kern(q, k, v, causal=causal, key_padding_mask=kpm, path="fast")  # (B, H, T, D)
            results.append((out, *torch.autograd.grad((out * w).sum(), (q, k, v))))
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert {"fwd", "bwd"} <= {which for which, ran in calls if ran}, "compiled forward and backward tiles never ran"
    assert all(ran for _, ran in calls), "a compiled tile fell back to eager"
