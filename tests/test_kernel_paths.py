"""Every kernel's paths against its reference, registry-wide (kernel_cases.CASES: every yaml plus variants).

Path agreement is checked in float64 on tiny tensors with tiny tiles, so the tiled path really runs many tiles,
skips causal ones and crosses chunk boundaries of the causal linear path. Hidden keys — the future, padding —
are made hostile (large norms, keys built to dominate a stabiliser), and every path must return exactly what
it returns for the visible keys alone."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from kernel_cases import (
    CASE_IDS,
    CASES,
    ROLES,
    TOL64,
    YAML_IDS,
    YAMLS,
    D,
    H,
    make_case,
    padding,
    paths_of,
    qkv,
    reference_attention,
)

from kernel_attention.kernels import Kernel, build_kernel
from kernel_attention.kernels.base import keep_mask
from kernel_attention.registry import ConfigError

torch.set_num_threads(1)


def _for_paths(case: str) -> Kernel:
    """Signed kernels with a feature map run the path tests with 'sum' so the linear path is covered too."""
    kern = make_case(case)
    if kern.has_feature_map and kern.can_be_negative and kern.normalization == "abs" and case != "rff_abs":
        kern = make_case(case, normalization="sum")
    return kern


def _run(kern: Kernel, path: str, q, k, v, **kw):
    """Output and the gradients of q, k, v and of the kernel's own parameters under a fixed linear probe."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    params = kern.trainable_parameters()
    out = kern(q, k, v, path=path, **kw)  # (B, H, Tq, Dv)
    probe = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)  # (B, H, Tq, Dv)
    grads = torch.autograd.grad((out * probe).sum(), (q, k, v, *params), allow_unused=True)
    return out.detach(), grads


@pytest.mark.parametrize("role", list(ROLES))
@pytest.mark.parametrize("case", CASE_IDS)
def test_paths_agree_values_and_gradients(case: str, role: str) -> None:
    """exact = fast = tiled = linear in values and in the gradients of q, k, v AND of kernel parameters."""
    Tq, Tk, causal = ROLES[role]
    B = 3
    kern = _for_paths(case)
    kpm = padding(B, Tk)
    q, k, v = qkv(B, Tq, Tk)
    ref_out, ref_grads = _run(kern, "exact", q, k, v, causal=causal, key_padding_mask=kpm)
    assert ref_out.shape == (B, H, Tq, 5) and torch.isfinite(ref_out).all()
    assert ref_grads[2].abs().sum() > 0  # the probe reaches v: gradients are not trivially zero
    for g in ref_grads[3:]:
        assert g is not None and g.abs().sum() > 0, "a kernel parameter gets no gradient on the exact path"
    for p in paths_of(kern)[1:]:
        out, grads = _run(kern, p, q, k, v, causal=causal, key_padding_mask=kpm)
        names = ["out", "dq", "dk", "dv"] + [f"d{n}" for n, _ in kern.named_parameters()]
        for what, a, b in zip(names, (out, *grads), (ref_out, *ref_grads)):
            assert a is not None, f"{p}: no gradient for {what}"
            err = ((a - b).abs().max() / (1.0 + b.abs().max())).item()  # relative to the tensor's size
            assert err < TOL64, f"{p} vs exact: {what} differs by {err:.2e} (relative)"


@pytest.mark.parametrize("role", list(ROLES))
@pytest.mark.parametrize("case", CASE_IDS)
def test_exact_path_matches_the_formula(case: str, role: str) -> None:
    """The reference path itself against Σκv/Σκ written from the formula in kernel_cases (float64)."""
    Tq, Tk, causal = ROLES[role]
    kern = _for_paths(case)
    q, k, v = qkv(3, Tq, Tk, seed=4)
    kpm = padding(3, Tk)
    keep = keep_mask(Tq, Tk, causal=causal, key_padding_mask=kpm, device=q.device)
    q_offset = 2 if not causal else None  # cross-attention positions of cached decoding
    qpos = torch.arange(Tq) + (Tk - Tq if causal else 2)
    with torch.no_grad():
        out = kern(q, k, v, causal=causal, key_padding_mask=kpm, path="exact", q_offset=q_offset)
        ref = reference_attention(kern, q, k, v, keep, qpos, torch.arange(Tk)).nan_to_num()  # empty rows: 0
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)


# ---- hidden keys never reach a visible row ------------------------------------------------------------------
HOSTILE = {
    # (scale of visible keys, scale of hidden keys): huge hidden keys, and visible keys far from the origin
    # with ordinary hidden ones — FAVOR+'s key stabiliser is then set by the hidden keys unless it is per row.
    "huge_hidden": (1.0, 30.0),
    "far_visible": (8.0, 1.0),
}


def _visible_reference(kern, path, q, k, v, kpm, causal):
    """Each query row run alone against only the keys it may see (non-causal call, positions kept); differentiable
    in q, k, v (rows that see nothing are 0)."""
    B, _, Tq, _ = q.shape
    Tk = k.shape[-2]
    zero = q.new_zeros(H, v.shape[-1])  # (H, Dv)
    rows = []
    for b in range(B):
        for i in range(Tq):
            last = i + Tk - Tq if causal else Tk - 1
            idx = [j for j in range(Tk) if j <= last and not kpm[b, j]]
            if not idx:
                rows.append(zero)  # sees nothing: 0
                continue
            lo, hi = idx[0], idx[-1] + 1
            assert idx == list(range(lo, hi)), "visible keys must be contiguous for this reference"
            q_pos = i + (Tk - Tq if causal else 0)
            rows.append(kern(q[b : b + 1, :, i : i + 1], k[b : b + 1, :, lo:hi], v[b : b + 1, :, lo:hi],
                             path=path, q_offset=q_pos, k_offset=lo)[0, :, 0])  # (H, Dv)
    return torch.stack(rows).view(B, Tq, H, -1).transpose(1, 2)  # (B, H, Tq, Dv)


@pytest.mark.parametrize("hostility", list(HOSTILE))
@pytest.mark.parametrize("role", ["causal_self", "causal_decode", "cross_longer_keys", "causal_more_queries"])
@pytest.mark.parametrize("case", CASE_IDS)
def test_hidden_keys_never_reach_a_visible_row(case: str, role: str, hostility: str) -> None:
    _check_hidden_keys(case, role, *HOSTILE[hostility], torch.float64, 1e-9)


@pytest.mark.parametrize("role", ["causal_self", "cross_longer_keys"])
@pytest.mark.parametrize("case", CASE_IDS)
def test_hidden_keys_never_reach_a_visible_row_in_float32(case: str, role: str) -> None:
    """Visible keys far out (FAVOR+ key exponents ≈ −200): a stabiliser taken over hidden keys underflows every
    visible weight to 0 in float32, even without a floor."""
    _check_hidden_keys(case, role, 12.0, 1.0, torch.float32, 1e-3)


def _check_hidden_keys(case: str, role: str, s_vis: float, s_hid: float, dtype: torch.dtype, tol: float) -> None:
    """Values AND gradients of q, k, v equal those of each row run against its visible keys alone."""
    Tq, Tk, causal = ROLES[role]
    B = 3
    kern = _for_paths(case).to(dtype)
    q, k, v = qkv(B, Tq, Tk, seed=7, dtype=dtype)
    kpm = padding(B, Tk)
    hidden = ~keep_mask(Tq, Tk, causal=causal, key_padding_mask=kpm, device=q.device)  # (B|1, 1, Tq, Tk)
    key_hidden = hidden.all(dim=-2)[..., None].expand(B, H, Tk, 1)  # (B, H, Tk, 1): hidden from every query
    future = torch.zeros(B, H, Tk, 1, dtype=torch.bool)
    if causal:
        future[:, :, Tk - 3 :] = True  # the last keys are in the future of the first queries
    k = torch.where(key_hidden | future, s_hid * k, s_vis * k)  # (B, H, Tk, D)
    v = torch.where(key_hidden, 1e3 * v, v)  # hidden values are huge too
    probe = torch.linspace(-1, 1, B * H * Tq * v.shape[-1], dtype=dtype).view(B, H, Tq, -1)  # (B, H, Tq, Dv)
    for p in paths_of(kern):
        results = []
        for run in ("full", "visible"):
            qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
            out = (kern(qq, kk, vv, causal=causal, key_padding_mask=kpm, path=p) if run == "full"
                   else _visible_reference(kern, p, qq, kk, vv, kpm, causal))  # (B, H, Tq, Dv)
            results.append((out.detach(), *torch.autograd.grad((out * probe).sum(), (qq, kk, vv))))
        for what, a, b in zip(("out", "dq", "dk", "dv"), *results):
            err = ((a - b).abs() / (1.0 + b.abs())).max().item()
            assert err < tol, f"{p}: {what} differs from the visible keys alone by {err:.2e}"


def test_favor_row_zero_of_a_long_causal_call_is_v0() -> None:
    """Performer's one key max per (batch, head) and a floor after stabilising made early causal rows ~1e-48
    (issue 10): at T = 2048, d = 64, float64, every early row equals its visible prefix."""
    torch.manual_seed(0)
    kern = build_kernel("random_features", 64, {"m": 256}).double()
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 1, 2048, 64, generator=g, dtype=torch.float64) for _ in range(3))
    with torch.no_grad():
        out = kern(q, k, v, causal=True, path="linear")  # (1, 1, T, 64)
        torch.testing.assert_close(out[0, 0, 0], v[0, 0, 0], rtol=1e-12, atol=1e-12)
        for i in range(1, 8):
            ref = kern(q[:, :, i : i + 1], k[:, :, : i + 1], v[:, :, : i + 1], path="exact")[0, 0, 0]
            torch.testing.assert_close(out[0, 0, i], ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", CASE_IDS)
def test_rows_with_no_visible_key_give_zeros(case: str) -> None:
    kern = _for_paths(case)
    q, k, v = qkv(3, 6, 9)
    allpad = torch.ones(3, 9, dtype=torch.bool)
    for p in paths_of(kern):
        out = kern(q, k, v, key_padding_mask=allpad, path=p)
        assert torch.equal(out, torch.zeros_like(out)), p


# ---- the normaliser: positive kernels are never floored; signed ones only on cancellation -------------------
def _formula_out(kern, q, k, v):
    return reference_attention(kern, q, k, v, None)  # (B, H, Tq, Dv), no masks


def test_linear_attention_with_tiny_features_is_not_floored() -> None:
    """q = −18·1: φ(q) = e^-18 per coordinate, Σκ ≈ 1e-7 — a legitimate normaliser (issue 10: 0.158 vs 0.339)."""
    kern = make_case("linear")
    _, k, v = qkv(1, 4, 6, seed=2)
    q = torch.full((1, H, 4, D), -18.0, dtype=torch.float64)
    ref = _formula_out(kern, q, k, v)
    for p in paths_of(kern):
        torch.testing.assert_close(kern(q, k, v, path=p), ref, rtol=1e-9, atol=1e-12, msg=p)


def test_quadratic_near_its_root_is_not_floored() -> None:
    """(s + 1)² with s ≈ −1: every κ ≈ 1e-8, Σκ < 1e-6 (issue 10: 25× too small)."""
    kern = make_case("quadratic")
    g = torch.Generator().manual_seed(3)
    q = torch.zeros(1, H, 3, D, dtype=torch.float64)
    q[..., 0] = 1.0
    k = torch.randn(1, H, 7, D, generator=g, dtype=torch.float64)
    delta = 1e-4 * (1 + torch.rand(1, H, 7, generator=g, dtype=torch.float64))  # (1, H, 7)
    k[..., 0] = math.sqrt(D) * (-1 + delta)  # s = q·k/√d = −1 + δ
    v = torch.randn(1, H, 7, 5, generator=g, dtype=torch.float64)
    ref = _formula_out(kern, q, k, v)
    for p in paths_of(kern):
        # φ(q)·φ(k) of the feature path cancels O(1) products down to κ ≈ 1e-8: ~1e-8 relative rounding there.
        tol = 1e-6 if p == "linear" else 1e-9
        torch.testing.assert_close(kern(q, k, v, path=p), ref, rtol=tol, atol=1e-10, msg=p)


def test_signed_guard_is_scale_free() -> None:
    """A cubic whose every κ ≈ 1e-12 > 0 (no cancellation): the relative guard must not act on any path."""
    kern = make_case("polynomial", p=3, c=0.0, normalization="sum")
    g = torch.Generator().manual_seed(5)
    q = 1e-2 * torch.rand(1, H, 4, D, generator=g, dtype=torch.float64)  # (1, H, 4, D) positive
    k = 1e-2 * torch.rand(1, H, 6, D, generator=g, dtype=torch.float64)  # s > 0 ⇒ κ = s³ > 0
    v = torch.randn(1, H, 6, 5, generator=g, dtype=torch.float64)
    ref = _formula_out(kern, q, k, v)
    assert reference_kernel_max(kern, q, k) < 1e-9
    for p in paths_of(kern):
        torch.testing.assert_close(kern(q, k, v, path=p), ref, rtol=1e-9, atol=1e-12, msg=p)


def reference_kernel_max(kern, q, k) -> float:
    from kernel_cases import reference_kernel

    return reference_kernel(kern, q, k).abs().max().item()


def test_signed_guard_acts_on_cancellation_and_bounds_the_output() -> None:
    """κ = s (p = 1, c = 0) with keys k and −k: Σκ = 0 exactly, the output would be infinite. Every path puts it at
    ‖out‖_∞ = (largest visible ‖v‖_∞)/eps, in the direction of the numerator."""
    eps = 1e-3
    kern = make_case("polynomial", p=1, c=0.0, normalization="sum", eps=eps)
    g = torch.Generator().manual_seed(6)
    q = torch.randn(1, H, 2, D, generator=g, dtype=torch.float64)
    k1 = torch.randn(1, H, 1, D, generator=g, dtype=torch.float64)
    k = torch.cat([k1, -k1], dim=2)  # (1, H, 2, D)
    v = torch.randn(1, H, 2, 5, generator=g, dtype=torch.float64)
    s = (q @ k.mT) / math.sqrt(D)  # (1, H, 2, 2)
    assert torch.equal(s.sum(-1), torch.zeros_like(s.sum(-1)))
    num = s @ v  # (1, H, 2, 5)
    vmax = v.abs().amax(dim=(-2, -1), keepdim=True)  # (1, H, 1, 1)
    expected = num / num.abs().amax(-1, keepdim=True) * vmax / eps  # (1, H, 2, 5)
    for p in paths_of(kern):
        out = kern(q, k, v, path=p)
        torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9, msg=p)
    # Rescaling κ (here: q) or v never changes where the guard acts: the output scales with v only.
    for p in paths_of(kern):
        torch.testing.assert_close(kern(7.0 * q, k, 3.0 * v, path=p), 3.0 * expected, rtol=1e-9, atol=1e-9)


def test_signed_guard_ignores_hidden_values() -> None:
    """V is the max over VISIBLE values: a huge padded value must not loosen the guard of the visible rows."""
    kern = make_case("polynomial", p=1, c=0.0, normalization="sum", eps=1e-3)
    g = torch.Generator().manual_seed(8)
    q = torch.randn(1, H, 2, D, generator=g, dtype=torch.float64)
    k1 = torch.randn(1, H, 1, D, generator=g, dtype=torch.float64)
    k = torch.cat([k1, -k1, k1], dim=2)  # (1, H, 3, D): the third key is padding
    v = torch.randn(1, H, 3, 5, generator=g, dtype=torch.float64)
    v[:, :, 2] = 1e6
    kpm = torch.tensor([[False, False, True]])
    for p in paths_of(kern):
        torch.testing.assert_close(kern(q, k, v, key_padding_mask=kpm, path=p),
                                   kern(q, k[:, :, :2], v[:, :, :2], path=p), rtol=1e-9, atol=1e-9, msg=p)


# ---- other numerics -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", YAML_IDS)
def test_finite_gradients_at_init_scale(case: str) -> None:
    """q, k, v from a d_model=64 projection of N(0, 1) activations (Xavier-like weights): q, k ≈ N(0, 1)."""
    name, params = CASES[case]
    kern = build_kernel(name, 16, params, heads=4)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 64, 64, generator=g)  # (B, T, d_model)
    w = torch.randn(64, 3 * 64, generator=g) / 8.0  # (d_model, 3 d_model): std 1/√d_model
    w.requires_grad_()
    q, k, v = (t.view(2, 64, 4, 16).transpose(1, 2) for t in (x @ w).chunk(3, dim=-1))  # (B, H, T, 16) each
    out = kern(q, k, v, causal=True)  # (B, H, T, 16)
    out.square().mean().backward()
    assert torch.isfinite(out).all() and torch.isfinite(w.grad).all()
    assert w.grad.abs().max() > 0


@pytest.mark.parametrize("case", CASE_IDS)
def test_bf16_runs_and_stays_close_to_float32(case: str) -> None:
    """bf16 inputs are computed in float32 and rounded once at the end: against float32 on the same (rounded)
    inputs, every path is off by about one bf16 rounding of the output (2^-8 relative), whatever κ's sign."""
    kern = _for_paths(case).float()
    q, k, v = (t.to(torch.bfloat16) for t in qkv(2, 16, 16, dtype=torch.float32))
    kpm = padding(2, 16)
    ref = kern(q.float(), k.float(), v.float(), causal=True, key_padding_mask=kpm, path="exact")  # (B, H, T, Dv)
    for p in paths_of(kern):
        qb, kb, vb = (t.clone().requires_grad_() for t in (q, k, v))
        out = kern(qb, kb, vb, causal=True, key_padding_mask=kpm, path=p)
        assert out.dtype == torch.bfloat16
        out.float().sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in (qb, kb, vb))
        err = ((out.float() - ref).abs() / (ref.abs() + 2**-8)).max().item()
        assert err < 2**-7, f"{p}: bf16 vs float32 relative error {err:.4f}"


@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_auto_runs_exact_on_small_problems_and_default_path_beyond(path: Path) -> None:
    kern = make_case(path.stem)
    assert kern.resolve_path(1, 1) == ("exact" if kern.auto_exact_below >= 1 else kern.default_path)
    assert kern.resolve_path(4096, 4096) == kern.default_path != "exact"
    assert kern.resolve_path(4096, 4096, "exact") == "exact"
    # And auto gives the same numbers as the path it picked.
    q, k, v = qkv(1, 20, 20)
    torch.testing.assert_close(kern(q, k, v, causal=True), kern(q, k, v, causal=True, path=kern.resolve_path(20, 20)))


@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_flex_forward_matches_exact_on_cpu(path: Path) -> None:
    pytest.importorskip("torch.nn.attention.flex_attention")
    kern = make_case(path.stem).float()
    q, k, v = qkv(2, 20, 24, dtype=torch.float32)
    if kern.position_aware or kern.flex_score_mod(q, k) is None:
        with pytest.raises(ConfigError, match="flex"):
            kern(q, k, v, path="flex")
        pytest.skip(f"{kern.name}: κ is not a function of q·k and per-token scalars, no flex path")
    kpm = padding(2, 24)
    for causal in (False, True):
        with torch.no_grad():
            ref = kern(q, k, v, causal=causal, key_padding_mask=kpm, path="exact")
            out = kern(q, k, v, causal=causal, key_padding_mask=kpm, path="flex")
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="CPU"):
        kern(q.requires_grad_(), k, v, path="flex")


def test_hand_written_tile_scores_refuse_trainable_parameters() -> None:
    """A learnable kernel whose tile score has a hand-written backward would train nothing there: refused."""
    kern = build_kernel("polynomial", D, {"p": 2})
    kern.register_parameter("extra", torch.nn.Parameter(torch.ones(1)))
    q, k, v = qkv(1, 4, 4, dtype=torch.float32)
    with pytest.raises(ConfigError, match="trainable parameters"):
        kern(q, k, v, path="tiled")


@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_fast_path_keeps_linear_memory_for_backward(path: Path) -> None:
    """What the fast path keeps for backward grows linearly in T (the exact reference: quadratically)."""
    kern = make_case(path.stem).float()
    if kern.name in ("edp", "rbf"):
        pytest.skip("SDPA: what it saves is PyTorch's backend choice (flash on GPU)")
    kern.block_q = kern.block_k = 64

    def largest_saved(T: int, path_name: str) -> int:
        sizes: list[int] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            sizes.append(t.numel())
            return t

        q, k, v = qkv(1, T, T, dtype=torch.float32, grad=True)
        assert kern.resolve_path(T, T, path_name) == path_name
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = kern(q, k, v, causal=True, path=path_name)  # (1, H, T, Dv)
        out.sum().backward()
        assert sizes, "nothing saved: the measurement would be vacuous"
        return max(sizes)

    # T large enough that T² outgrows T·F for the finite-feature kernels (F = 256 random features).
    fast = largest_saved(512, "fast") / largest_saved(256, "fast")
    exact = largest_saved(512, "exact") / largest_saved(256, "exact")
    assert fast <= 2.05 and exact >= 3.9, (fast, exact)
