"""The shared path machinery in kernel_attention.attention, tested directly against dense references."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from kernel_attention.attention.chunked import chunked_kernel_attention
from kernel_attention.attention.distances import l1_dists, min_sums, sq_dists
from kernel_attention.attention.feature_map import symmetric_power_dim, symmetric_power_features
from kernel_attention.attention.normaliser import Normaliser
from kernel_attention.attention.tile_scores import AutogradScore
from kernel_attention.kernels.base import keep_mask

torch.set_num_threads(1)
f64 = torch.float64


def dense(q, k, v, score_fn, *, log_space, abs_norm=False, guarded=False, eps=1e-6, causal=False, kpm=None):
    """The textbook smoother on the full (Tq, Tk) matrix, with the rule of attention/normaliser.py written out:
    a signed 'sum' is kept so that no |out| exceeds (max visible ‖v‖)/eps; only all-zero rows are replaced."""
    mask = keep_mask(q.shape[-2], k.shape[-2], causal=causal, key_padding_mask=kpm, device=q.device)
    s = score_fn(q, k)  # (B, H, Tq, Tk)
    w = s.exp() if log_space else s  # (B, H, Tq, Tk)
    if mask is not None:
        w = w * mask
    num, den = w @ v, (w.abs() if abs_norm else w).sum(-1, keepdim=True)  # (B, H, Tq, Dv), (B, H, Tq, 1)
    if guarded:
        vis = torch.ones_like(w, dtype=torch.bool) if mask is None else mask.expand_as(w)
        vmax = torch.where(vis, v.abs().amax(-1)[..., None, :], 0.0).amax(-1, keepdim=True)  # (B, H, Tq, 1)
        floor = (eps * num.abs().amax(-1, keepdim=True) / vmax).detach()
        den = torch.where(den.abs() < floor, torch.where(den < 0, -floor, floor), den)
    return num / torch.where(den == 0, 1.0, den)  # (B, H, Tq, Dv)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=f64)


@pytest.mark.parametrize("bq, bk", [(1, 1), (2, 3), (5, 4), (64, 64)])
@pytest.mark.parametrize("Tq, Tk, causal", [(7, 7, True), (4, 9, True), (9, 4, True), (6, 11, False)])
@pytest.mark.parametrize("log_space, abs_norm, guarded", [(True, False, False), (False, False, False),
                                                         (False, True, False), (False, False, True)])
def test_tiled_equals_dense(bq, bk, Tq, Tk, causal, log_space, abs_norm, guarded) -> None:
    q, k, v = rand(2, 2, Tq, 4, seed=1), rand(2, 2, Tk, 4, seed=2), rand(2, 2, Tk, 3, seed=3)
    kpm = torch.zeros(2, Tk, dtype=torch.bool)
    kpm[0, -2:] = True

    def score_fn(a, b):  # signed when not in log space: a cubic of the dot product
        s = a @ b.transpose(-2, -1) / 2.0  # (B, H, tq, tk)
        return s if log_space else (s + 0.3) ** 3

    grads = []
    for run in ("tiled", "dense"):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        if run == "tiled":
            norm = Normaliser(abs_terms=abs_norm, guarded=guarded, eps=0.05)
            out = chunked_kernel_attention(qq, kk, vv, score_fn, log_space=log_space, normaliser=norm,
                                           causal=causal, key_padding_mask=kpm, block_q=bq, block_k=bk)
        else:
            out = dense(qq, kk, vv, score_fn, log_space=log_space, abs_norm=abs_norm, guarded=guarded, eps=0.05,
                        causal=causal, kpm=kpm)
        out.mul(torch.linspace(-1, 2, out.numel(), dtype=f64).view_as(out)).sum().backward()
        grads.append((out.detach(), qq.grad, kk.grad, vv.grad))
    # 'sum' with a signed cubic can bring Σκ near 0, which amplifies rounding: hence 1e-8, not 1e-12.
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_tiled_trains_score_parameters_and_reads_tile_positions() -> None:
    """An AutogradScore with a trainable tensor and positions: κ_ij = exp(a·(q_i·k_j) − b|i − j|), a and b
    learnable. Tiles must see their own positions and give a, b the dense formula's gradients."""
    q, k, v = rand(2, 2, 7, 4, seed=1), rand(2, 2, 9, 4, seed=2), rand(2, 2, 9, 3, seed=3)
    a = torch.tensor(0.7, dtype=f64, requires_grad=True)
    b = torch.tensor(0.3, dtype=f64, requires_grad=True)
    qpos, kpos = torch.arange(7) + 2, torch.arange(9)

    def score(x, y, qp, kp):  # log κ of a tile
        return a * (x @ y.transpose(-2, -1)) - b * (qp[:, None] - kp[None, :]).abs().to(f64)

    kpm = torch.zeros(2, 9, dtype=torch.bool)
    kpm[1, -2:] = True
    results = []
    for run in ("tiled", "dense"):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        if run == "tiled":
            out = chunked_kernel_attention(qq, kk, vv, AutogradScore(score, params=[a, b], position_aware=True),
                                           log_space=True, causal=True, key_padding_mask=kpm, block_q=2, block_k=3,
                                           q_pos=qpos, k_pos=kpos)
        else:
            out = dense(qq, kk, vv, lambda x, y: score(x, y, qpos, kpos), log_space=True, causal=True, kpm=kpm)
        grads = torch.autograd.grad(out.mul(torch.linspace(-1, 2, out.numel(), dtype=f64).view_as(out)).sum(),
                                    (qq, kk, vv, a, b))
        results.append((out.detach(), *grads))
    for x, y in zip(*results):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    assert results[0][4].abs() > 0 and results[0][5].abs() > 0


def test_tiled_log_space_survives_huge_logits_and_empty_rows() -> None:
    """Running max: logits of ±1000 would overflow exp() without it; fully masked rows give 0, no NaN."""
    q, k, v = rand(1, 1, 6, 4), rand(1, 1, 6, 4, seed=5), rand(1, 1, 6, 3, seed=6)
    q.requires_grad_()
    score = lambda a, b: 400.0 * (a @ b.transpose(-2, -1))  # noqa: E731  (B, H, tq, tk)
    kpm = torch.tensor([[True, True, False, False, False, False]])  # first two keys padded
    out = chunked_kernel_attention(q, k, v, score, log_space=True, causal=True, key_padding_mask=kpm,
                                   block_q=2, block_k=2)  # (1, 1, 6, 3)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0, 0, :2], torch.zeros(2, 3, dtype=f64))  # queries 0, 1 only see padded keys
    mask = keep_mask(6, 6, causal=True, key_padding_mask=kpm, device=q.device)  # (1, 1, 6, 6)
    ref = torch.softmax(score(q, k).masked_fill(~mask, -math.inf), dim=-1).nan_to_num() @ v  # (1, 1, 6, 3)
    assert score(q, k).max() > 710  # exp() of these overflows float64 without the running max
    torch.testing.assert_close(out, ref, rtol=1e-8, atol=1e-8)
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("n, p", [(3, 1), (3, 2), (4, 3), (5, 4)])
def test_symmetric_power_features(n: int, p: int) -> None:
    x, y = rand(6, n), rand(7, n, seed=1)
    fx, fy = symmetric_power_features(x, p), symmetric_power_features(y, p)  # (6, F), (7, F)
    assert fx.shape[-1] == symmetric_power_dim(n, p) == math.comb(n + p - 1, p) < n**p or p == 1
    torch.testing.assert_close(fx @ fy.T, (x @ y.T) ** p, rtol=1e-10, atol=1e-10)


def test_distances_match_broadcast() -> None:
    q, k = rand(2, 3, 5, 6), rand(2, 3, 4, 6, seed=1)
    a, b = q[..., :, None, :], k[..., None, :, :]  # (B, H, Tq, 1, D), (B, H, 1, Tk, D)
    torch.testing.assert_close(sq_dists(q, k), ((a - b) ** 2).sum(-1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(l1_dists(q, k), (a - b).abs().sum(-1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(min_sums(q, k), torch.minimum(a, b).sum(-1), rtol=1e-10, atol=1e-10)
    for x, y in itertools.product((q,), (q,)):
        assert (sq_dists(x, y) >= 0).all()  # clamped: never a negative squared distance
