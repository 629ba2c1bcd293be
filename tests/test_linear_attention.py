"""attention/linear_attention.py tested directly: the chunked custom-autograd path against the plain materialised
formula φ(Q)φ(K)ᵀ (values and gradients, float64) — with stabilised keys, trainable maps, positions and the
signed guard — gradcheck, what it saves for backward and its peak memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernel_attention.attention.feature_map import symmetric_power_features
from kernel_attention.attention.linear_attention import linear_attention
from kernel_attention.attention.normaliser import Normaliser
from kernel_attention.benchmarks import peak_memory_bytes
from kernel_attention.kernels import build_kernel
from kernel_attention.kernels.base import keep_mask

torch.set_num_threads(1)
f64 = torch.float64


def safe(den: torch.Tensor) -> torch.Tensor:
    """A positive kernel's rule: only an all-zero row (no visible weight) is replaced (by 1: its output is 0)."""
    return torch.where(den == 0, 1.0, den)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=f64)


OMEGA = rand(12, 4, seed=9)  # FAVOR+-like map with 12 random features of 4 inputs
FEATURE_MAPS = {
    "elu+1": lambda x: F.elu(x) + 1,  # Katharopoulos et al.: elementwise
    "favor": lambda x: (x @ OMEGA.T - (x * x).sum(-1, keepdim=True) / 2).exp(),  # mixes inputs, F > D
    "power2": lambda x: symmetric_power_features(x, 2),  # (x·y)², F = C(5, 2): signed φ, κ ≥ 0
}


def materialised(q, k, v, phi, *, causal, kpm):
    """The formula as written: w = φ(Q)φ(K)ᵀ (B, H, Tq, Tk), masked, 'sum' normaliser."""
    w = phi(q) @ phi(k).mT  # (B, H, Tq, Tk)
    mask = keep_mask(q.shape[-2], k.shape[-2], causal=causal, key_padding_mask=kpm, device=q.device)
    if mask is not None:
        w = w * mask
    return (w @ v) / safe(w.sum(-1, keepdim=True))  # (B, H, Tq, Dv)


def inputs(B, Tq, Tk, *, D=4, Dv=3, seed=0):
    q, k, v = rand(B, 2, Tq, D, seed=seed), rand(B, 2, Tk, D, seed=seed + 1), rand(B, 2, Tk, Dv, seed=seed + 2)
    kpm = torch.zeros(B, Tk, dtype=torch.bool)  # (B, Tk) True = padding
    kpm[1, :2] = True  # left padding
    kpm[2, -3:] = True  # right padding
    kpm[3] = True  # every key padded: the row must give 0, not NaN
    return q, k, v, kpm


def values_and_grads(fn, q, k, v):
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)  # (B, H, Tq, Dv)
    probe = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view_as(out)  # (B, H, Tq, Dv)
    dq, dk, dv = torch.autograd.grad((out * probe).sum(), (q, k, v))
    return out.detach(), dq, dk, dv


# (Tq, Tk): self, queries longer than keys (causal: the first rows see nothing), keys longer (cached decoding).
SHAPES = [(13, 13), (11, 6), (5, 14)]


@pytest.mark.parametrize("phi_name", list(FEATURE_MAPS))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("Tq, Tk", SHAPES)
@pytest.mark.parametrize("chunk, step", [(1, 1), (3, 2), (5, 64), (4, 3), (None, None)])
def test_matches_the_materialised_formula(phi_name, causal, Tq, Tk, chunk, step) -> None:
    """Chunks and steps that do not divide T, Tq ≠ Tk both ways, padding on either side and all-padded rows."""
    phi = FEATURE_MAPS[phi_name]
    q, k, v, kpm = inputs(4, Tq, Tk)
    fast = values_and_grads(lambda q, k, v: linear_attention(
        q, k, v, phi, causal=causal, key_padding_mask=kpm, chunk=chunk, step=step), q, k, v)
    ref = values_and_grads(lambda q, k, v: materialised(q, k, v, phi, causal=causal, kpm=kpm), q, k, v)
    for what, a, b in zip(("out", "dq", "dk", "dv"), fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m, w=what: f"{w}: {m}")


@pytest.mark.parametrize("causal", [False, True])
def test_separate_query_and_key_maps(causal: bool) -> None:
    """phi_k may differ from phi_q (random_features stabilises keys by a constant, queries per row)."""
    q, k, v, kpm = inputs(4, 9, 9)
    phi_q, phi_k = FEATURE_MAPS["favor"], lambda x: FEATURE_MAPS["favor"](x) * 0.5
    fast = values_and_grads(lambda q, k, v: linear_attention(
        q, k, v, phi_q, phi_k, causal=causal, key_padding_mask=kpm, chunk=4), q, k, v)
    ref = values_and_grads(lambda q, k, v: _two_map_reference(q, k, v, phi_q, phi_k, causal, kpm), q, k, v)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def _two_map_reference(q, k, v, phi_q, phi_k, causal, kpm):
    w = phi_q(q) @ phi_k(k).mT  # (B, H, Tq, Tk)
    w = w * keep_mask(q.shape[-2], k.shape[-2], causal=causal, key_padding_mask=kpm, device=q.device)
    return (w @ v) / safe(w.sum(-1, keepdim=True))  # (B, H, Tq, Dv)


def test_rows_without_visible_keys_give_zero_and_zero_gradients() -> None:
    q, k, v, kpm = inputs(4, 10, 6)  # causal with Tq > Tk: queries 0..3 precede every key
    out, dq, dk, dv = values_and_grads(lambda q, k, v: linear_attention(
        q, k, v, FEATURE_MAPS["elu+1"], causal=True, key_padding_mask=kpm, chunk=4), q, k, v)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in (dq, dk, dv))
    assert torch.equal(out[:, :, :4], torch.zeros_like(out[:, :, :4]))  # no key yet
    assert torch.equal(out[3], torch.zeros_like(out[3]))  # every key of batch row 3 is padding
    assert torch.equal(dq[3], torch.zeros_like(dq[3])) and torch.equal(dq[:, :, :4], torch.zeros_like(dq[:, :, :4]))
    assert torch.equal(dk[3], torch.zeros_like(dk[3])) and torch.equal(dv[3], torch.zeros_like(dv[3]))
    assert torch.equal(dv[1, :, :2], torch.zeros_like(dv[1, :, :2]))  # padded keys get no gradient


@pytest.mark.parametrize("causal", [False, True])
def test_guarded_signed_map_matches_the_rule_and_its_gradient(causal: bool) -> None:
    """A signed map (φ = x: κ = q·k) with a large eps so that many rows hit the guard: where |out| would exceed
    V/eps (V = max visible ‖v‖) the denominator is ±eps‖num‖/V, a constant; values and gradients as the rule."""
    q, k, v, kpm = inputs(4, 9, 9)
    eps = 0.4
    norm = Normaliser(guarded=True, eps=eps)

    def rule(q, k, v):
        mask = keep_mask(9, 9, causal=causal, key_padding_mask=kpm, device=q.device)  # (B, 1, 9, 9)
        w = (q @ k.mT) * mask  # (B, H, Tq, Tk)
        num, den = w @ v, w.sum(-1, keepdim=True)  # (B, H, Tq, Dv), (B, H, Tq, 1)
        vmax = torch.where(mask, v.abs().amax(-1)[:, :, None, :], 0.0).amax(-1, keepdim=True)  # (B, H, Tq, 1)
        floor = (eps * num.abs().amax(-1, keepdim=True) / vmax.clamp_min(1e-300)).detach()
        den = torch.where(den.abs() < floor, torch.where(den < 0, -floor, floor), den)
        return num / torch.where(den == 0, 1.0, den)

    fast = values_and_grads(lambda q, k, v: linear_attention(
        q, k, v, lambda x: x, causal=causal, key_padding_mask=kpm, normaliser=norm, chunk=2, step=3), q, k, v)
    ref = values_and_grads(rule, q, k, v)
    w = (q @ k.mT) * keep_mask(9, 9, causal=causal, key_padding_mask=kpm, device=q.device)
    ratio = (w @ v).abs().amax(-1) / w.sum(-1).abs()  # |out|∞ without the guard
    assert (ratio > 3.0 * v.abs().max()).any() and (ratio < v.abs().max()).any()  # both branches run
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal, Tq, Tk", [(False, 5, 7), (True, 5, 7), (True, 7, 4)])
def test_gradcheck(causal, Tq, Tk) -> None:
    q, k, v = (t.requires_grad_() for t in (rand(2, 1, Tq, 3), rand(2, 1, Tk, 3, seed=1), rand(2, 1, Tk, 2, seed=2)))
    kpm = torch.tensor([[False] * Tk, [True] + [False] * (Tk - 1)])  # (2, Tk)

    def fn(q, k, v):
        return linear_attention(q, k, v, _favor3, causal=causal, key_padding_mask=kpm,
                                chunk=2, step=1)

    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-7)


_OMEGA3 = rand(6, 3, seed=4)


def _favor3(x: torch.Tensor) -> torch.Tensor:
    return (x @ _OMEGA3.T - (x * x).sum(-1, keepdim=True) / 2).exp()  # (..., 6): positive, mixes inputs


def test_phi_sees_chunks_and_no_feature_tensor_is_saved() -> None:
    """The point of the custom Function: φ runs on chunks, and backward keeps only q, k, v, out and small state."""
    B, H, T, D, Fd, C = 1, 2, 96, 4, 64, 16
    omega = rand(Fd, D, seed=3)  # F ≫ D: a saved (B, H, T, F) tensor would stand out
    seen: list[int] = []

    def phi(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[-2])
        return (x @ omega.T).exp()  # (B, H, c, F)

    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    q, k, v = (rand(B, H, T, D, seed=s).requires_grad_() for s in range(3))
    for causal in (False, True):
        seen.clear()
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = linear_attention(q, k, v, phi, causal=causal, chunk=C)  # (B, H, T, D)
        out.sum().backward()
        assert max(seen) <= C and sum(seen) > 3 * T  # chunks only; forward, then recomputed in backward
        assert max(saved) <= B * H * T * D < B * H * T * Fd  # q, k, v, out; the F × (D+1) state is smaller


@pytest.mark.parametrize("role", ["noncausal", "causal", "cross"])
@pytest.mark.parametrize("name", ["linear", "random_features"])
def test_peak_memory_at_most_a_quarter_of_exact(name: str, role: str) -> None:
    """Forward + backward peak of the linear path ≤ 0.25 × the exact path's at the benchmark's T = 1024
    (B = 2, H = 4, d = 64, fp32). Autograd through full features needed 0.3 (linear, causal) to 0.9 (FAVOR+
    causal). Below T ≈ 1024 the outputs and gradients (∝ T·d, needed by any path) dominate both figures."""
    B, H, T, D = 2, 4, 1024, 64
    kern = build_kernel(name, D)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g).requires_grad_() for _ in range(3))
    grad_out = torch.randn(B, H, T, D, generator=g)  # (B, H, T, D)
    kpm = None
    if role == "cross":
        kpm = torch.zeros(B, T, dtype=torch.bool)  # (B, T) the benchmark's cross role: a quarter padded
        kpm[0, -T // 4 :] = True

    def peak(path: str) -> int:
        def fwd_bwd() -> None:
            kern(q, k, v, causal=role == "causal", key_padding_mask=kpm, path=path).backward(grad_out)
            q.grad = k.grad = v.grad = None

        return peak_memory_bytes(fwd_bwd)[0]

    exact, linear = peak("exact"), peak("linear")
    assert linear <= 0.25 * exact, f"{name} {role}: {linear / 2**20:.1f} MB vs exact {exact / 2**20:.1f} MB"
    assert exact >= 2 * 4 * B * H * T * T  # sanity: the exact path holds at least two fp32 (B, H, T, T) tensors


# ---- stabilised keys, trainable maps, positions -------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("Tq, Tk", SHAPES)
@pytest.mark.parametrize("chunk, step", [(1, 1), (3, 2), (4, 3), (None, None)])
def test_stabilised_keys_match_the_formula_across_300_orders_of_magnitude(causal, Tq, Tk, chunk, step) -> None:
    """φ(k_j) = exp(ℓ_j) φ̃(k_j) with ℓ spread over ±350: the unscaled features would overflow float64, yet
    every row — causal prefixes with the largest ℓ arriving late, padding on either side — equals the formula
    computed in log space from the keys that row sees."""
    q, k, v, kpm = inputs(4, Tq, Tk)
    g = torch.Generator().manual_seed(11)
    ell = 350.0 * (2 * torch.rand(4, 2, Tk, 1, generator=g, dtype=f64) - 1)  # (B, H, Tk, 1)
    ell[:, :, -1] = 700.0  # a huge last key: in the future of almost every causal row, padded in batch row 2
    phi = FEATURE_MAPS["favor"]

    def stabilised(x):
        f = phi(x)  # (B, H, c, F)
        return f / f.amax(-1, keepdim=True).detach()  # bounded by 1, like FAVOR+'s φ̃

    def reference(q, k, v):
        fk = stabilised(k)  # (B, H, Tk, F)
        logw = torch.log(stabilised(q) @ fk.mT) + ell.mT  # (B, H, Tq, Tk): log of φ(q)·φ(k) up to a row factor
        mask = keep_mask(Tq, Tk, causal=causal, key_padding_mask=kpm, device=q.device)
        logw = logw.masked_fill(~mask, -torch.inf)
        w = (logw - logw.amax(-1, keepdim=True).clamp_min(-1e300).detach()).exp()  # row-stabilised
        return (w @ v) / safe(w.sum(-1, keepdim=True))

    fast = values_and_grads(lambda q, k, v: linear_attention(
        q, k, v, stabilised, causal=causal, key_padding_mask=kpm, k_log_scale=ell, chunk=chunk, step=step), q, k, v)
    ref = values_and_grads(reference, q, k, v)
    assert ell.max() - ell.min() > 709  # exp() of the spread overflows float64: unscaled features could not work
    for what, a, b in zip(("out", "dq", "dk", "dv"), fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m, w=what: f"{w}: {m}")


@pytest.mark.parametrize("causal", [False, True])
def test_trainable_map_parameters_get_the_materialised_gradient(causal: bool) -> None:
    """φ(x) = softmax(x W) with W trainable (a Hedgehog-like map): ∂L/∂W through the chunked backward equals
    autograd through the materialised formula, as do ∂L/∂(q, k, v)."""
    q, k, v, kpm = inputs(4, 9, 9)
    W = rand(4, 6, seed=5).requires_grad_()

    def phi(x):
        return torch.softmax(x @ W, dim=-1)  # (B, H, c, 6)

    def both(fn):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        out = fn(qq, kk, vv)
        probe = torch.linspace(-1, 2, out.numel(), dtype=f64).view_as(out)
        return out.detach(), torch.autograd.grad((out * probe).sum(), (qq, kk, vv, W))

    fast = both(lambda q, k, v: linear_attention(q, k, v, phi, causal=causal, key_padding_mask=kpm, params=[W],
                                                 chunk=2, step=3))
    ref = both(lambda q, k, v: materialised(q, k, v, phi, causal=causal, kpm=kpm))
    torch.testing.assert_close(fast[0], ref[0], rtol=1e-10, atol=1e-12)
    for a, b in zip(fast[1], ref[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_position_aware_maps_see_each_chunk_s_positions(causal: bool) -> None:
    """φ(x, i) = [x cos θ_i, x sin θ_i] (cosFormer's re-weighting): chunks must get their own positions."""
    Tq, Tk = 7, 10
    q, k, v, kpm = inputs(4, Tq, Tk)
    q, k = q.abs(), k.abs()  # positive features keep κ > 0
    qpos, kpos = torch.arange(Tq) + (Tk - Tq), torch.arange(Tk)

    def phi(x, pos):
        th = (pos.to(f64) * 0.1)[:, None]  # (c, 1)
        return torch.cat([x * th.cos(), x * th.sin()], dim=-1)

    def reference(q, k, v):
        w = (q @ k.mT) * torch.cos(0.1 * (qpos[:, None] - kpos[None, :]).to(f64))  # (B, H, Tq, Tk)
        w = w * keep_mask(Tq, Tk, causal=causal, key_padding_mask=kpm, device=q.device)
        return (w @ v) / safe(w.sum(-1, keepdim=True))

    fast = values_and_grads(lambda q, k, v: linear_attention(
        q, k, v, phi, causal=causal, key_padding_mask=kpm, q_pos=qpos, k_pos=kpos, chunk=3, step=2), q, k, v)
    for a, b in zip(fast, values_and_grads(reference, q, k, v)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
