"""The kernel zoo: every registered kernel and every conf/kernel/*.yaml, with no per-kernel edits needed.

Path agreement is checked in float64 on tiny tensors with tiny tiles, so the tiled path really runs many tiles,
skips causal ones and crosses chunk boundaries of the causal linear path."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from kernel_attention.kernels import KERNELS, Kernel, build_kernel
from kernel_attention.registry import ConfigError

REPO = Path(__file__).resolve().parents[1]
YAMLS = sorted((REPO / "conf" / "kernel").glob("*.yaml"))
YAML_IDS = [p.stem for p in YAMLS]
D = 8  # head dim of the small tests
TOL64 = 1e-9

torch.set_num_threads(1)


def load_yaml(path: Path) -> tuple[str, dict]:
    params = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(params, dict)
    return params.pop("name"), params


def make(path: Path, head_dim: int = D, **override) -> Kernel:
    name, params = load_yaml(path)
    kern = build_kernel(name, head_dim, {**params, **override})
    kern.block_q, kern.block_k = 3, 4  # many small tiles, uneven against every T below
    return kern


def paths_of(kern: Kernel) -> list[str]:
    """Every path this kernel can run with its config, reference first."""
    paths = ["exact", "fast"]
    if kern.has_feature_map and not (kern.can_be_negative and kern.normalization == "abs"):
        paths.append("linear")
    return paths


def qkv(B: int, H: int, Tq: int, Tk: int, *, dtype=torch.float64, Dv: int = 5, seed: int = 0, grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, D, generator=g, dtype=dtype)  # (B, H, Tq, D)
    k = torch.randn(B, H, Tk, D, generator=g, dtype=dtype)  # (B, H, Tk, D)
    v = torch.randn(B, H, Tk, Dv, generator=g, dtype=dtype)  # (B, H, Tk, Dv)
    return tuple(t.requires_grad_(grad) for t in (q, k, v))


# Roles: (Tq, Tk, causal). Cross-attention Tq != Tk both ways; causal Tq < Tk is cached decoding; causal
# Tq > Tk leaves the first queries with no key (must give 0).
ROLES = {
    "self": (9, 9, False),
    "causal_self": (9, 9, True),
    "cross_longer_keys": (6, 11, False),
    "cross_shorter_keys": (10, 7, False),
    "causal_decode": (3, 10, True),
    "causal_more_queries": (10, 7, True),
}


def padding(B: int, Tk: int) -> torch.Tensor:
    kpm = torch.zeros(B, Tk, dtype=torch.bool)  # (B, Tk) True = pad
    kpm[1, -3:] = True  # right padding in one row
    if B > 2:
        kpm[2, :2] = True  # left padding in another
    return kpm


# ---- configuration ------------------------------------------------------------------------------------------
def test_every_registered_kernel_has_its_yaml() -> None:
    names = {load_yaml(p)[0] for p in YAMLS}
    assert set(KERNELS.names()) <= names, f"kernels without conf/kernel/<name>.yaml: {set(KERNELS.names()) - names}"
    for name in KERNELS.names():
        assert (REPO / "conf" / "kernel" / f"{name}.yaml").is_file()
    assert {"edp", "rbf", "laplacian", "ei", "intersection", "polynomial", "linear", "taylor",
            "random_features"} <= set(KERNELS.names())


@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_yaml_builds_and_reports_properties(path: Path) -> None:
    name, params = load_yaml(path)
    kern = build_kernel(name, 64, params)
    props = kern.properties().to_json()
    assert set(props) == {"feature_dim", "symmetric", "positive_definite", "can_be_negative"}
    fd = props["feature_dim"]
    assert fd == "inf" or (isinstance(fd, int) and fd >= 1)
    assert kern.default_path in ("exact", "fast", "linear")
    if path.stem != name:  # a preset names itself through label
        assert kern.cfg.label == path.stem


def test_quadratic_preset() -> None:
    name, params = load_yaml(REPO / "conf" / "kernel" / "quadratic.yaml")
    assert (name, params["p"], params["label"]) == ("polynomial", 2, "quadratic")
    assert build_kernel(name, 64, params).feature_dim() == math.comb(66, 2) == 2145


@pytest.mark.parametrize(
    "name, params, must_mention",
    [
        ("nope", {}, "edp"),
        ("polynomial", {"p": 0}, ">= 1"),
        ("polynomial", {"c": -1.0}, ">= 0"),
        ("taylor", {"p": 3}, "even"),
        ("taylor", {"p": 0}, "even"),
        ("random_features", {"m": 0}, ">= 1"),
        ("random_features", {"redraw_every": -1}, "0"),
        ("laplacian", {"scale": 0.0}, "> 0"),
        ("laplacian", {"scale": -2.0}, "> 0"),
        ("exp_l1", {"scale": -1.0}, "> 0"),
        ("intersection", {"normalization": "l2"}, "sum, abs"),
        ("polynomial", {"normalization": "max"}, "sum, abs"),
        ("intersection", {"eps": 0.0}, "> 0"),
        ("edp", {"path": "magic"}, "exact"),
        ("rbf", {"bandwidth": 1.0}, "allowed"),
        ("taylor", {"p": "two"}, "int"),
    ],
)
def test_invalid_config_fails_at_construction(name: str, params: dict, must_mention: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_kernel(name, 64, params)
    msg = str(err.value)
    assert "\n" not in msg and must_mention in msg, msg


def test_linear_path_refuses_abs_normalisation_of_signed_kernel() -> None:
    kern = build_kernel("polynomial", D, {"p": 3, "normalization": "abs"})
    q, k, v = qkv(1, 1, 4, 4)
    with pytest.raises(ConfigError, match="normalization=sum"):
        kern(q, k, v, path="linear")
    with pytest.raises(ConfigError, match="feature map"):
        build_kernel("ei", D)(q, k, v, path="linear")


# ---- the maths --------------------------------------------------------------------------------------------
def brute_force(name: str, kern: Kernel, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """κ by its textbook formula on broadcast (Tq, Tk, D) tensors; None for kernels not listed here."""
    d = q.shape[-1]
    a, b = q[..., :, None, :], k[..., None, :, :]  # (B, H, Tq, 1, D), (B, H, 1, Tk, D)
    s = (a * b).sum(-1) / math.sqrt(d)  # (B, H, Tq, Tk)
    cfg = kern.cfg
    formulas = {
        "edp": lambda: s.exp(),
        "rbf": lambda: (-((a - b) ** 2).sum(-1) / (2 * math.sqrt(d))).exp(),
        "laplacian": lambda: (-((a - b) ** 2).sum(-1).sqrt() / (cfg.scale or d**0.25)).exp(),
        "exp_l1": lambda: (-(a - b).abs().sum(-1) / (cfg.scale or d**0.5)).exp(),
        "ei": lambda: (torch.minimum(a, b).sum(-1) / math.sqrt(d)).exp(),
        "intersection": lambda: torch.minimum(a, b).sum(-1),
        "polynomial": lambda: (s + cfg.c) ** cfg.p,
        "taylor": lambda: sum(s**i / math.factorial(i) for i in range(cfg.p + 1)),
        "linear": lambda: ((torch.nn.functional.elu(a) + 1) * (torch.nn.functional.elu(b) + 1)).sum(-1),
    }
    return formulas[name]() if name in formulas else None


@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_score_matches_textbook_formula(path: Path) -> None:
    kern = make(path)
    q, k, _ = qkv(2, 2, 5, 6)
    ref = brute_force(kern.name, kern, q, k)
    if ref is None:
        pytest.skip(f"no textbook formula for {kern.name} (random_features is checked against edp below)")
    torch.testing.assert_close(kern.score(q, k), ref, rtol=1e-10, atol=1e-10)
    if kern.has_log_score:
        torch.testing.assert_close(kern.log_score(q, k), ref.log(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_declared_properties_hold_numerically(path: Path) -> None:
    """symmetric ⇒ κ(q,k) = κ(k,q); positive_definite ⇔ Gram matrices are PSD; can_be_negative ⇔ κ < 0 seen."""
    kern = make(path)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, 40, D, generator=g, dtype=torch.float64)  # (1, 1, n, D)
    y = torch.randn(1, 1, 30, D, generator=g, dtype=torch.float64)  # (1, 1, m, D)
    kxy, kyx = kern.score(x, y), kern.score(y, x)  # (1, 1, n, m), (1, 1, m, n)
    assert kern.symmetric == torch.allclose(kxy, kyx.transpose(-2, -1), rtol=1e-10, atol=1e-12)
    # Shifted inputs too: ei/intersection behave differently for mostly-negative coordinates.
    pts = torch.cat([x, x - 2.0, 0.5 * x + 1.0], dim=2)  # (1, 1, 120, D)
    gram = kern.score(pts, pts)[0, 0]  # (120, 120)
    eig = torch.linalg.eigvalsh(0.5 * (gram + gram.T))  # (120,)
    psd = bool(eig.min() >= -1e-9 * eig.abs().max())
    assert psd == kern.properties().positive_definite, f"min eig {eig.min():.3e}, max {eig.max():.3e}"
    saw_negative = bool((gram < 0).any() or (kern.score(x - 3.0, y) < 0).any())
    assert saw_negative == kern.properties().can_be_negative


@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_feature_map_identity_and_dimension(path: Path) -> None:
    kern = make(path)
    if not kern.has_feature_map:
        assert math.isinf(kern.feature_dim())
        pytest.skip(f"{kern.name} has an infinite-dimensional feature space")
    q, k, _ = qkv(2, 2, 5, 6)
    fq, fk = kern.feature_map(q), kern.feature_map(k)  # (B, H, Tq, F), (B, H, Tk, F)
    assert fq.shape[-1] == fk.shape[-1] == kern.feature_dim()
    torch.testing.assert_close(fq @ fk.transpose(-2, -1), kern.score(q, k), rtol=1e-10, atol=1e-10)


def test_feature_dims_follow_the_formulas() -> None:
    assert build_kernel("polynomial", 64, {"p": 2, "c": 1.0}).feature_dim() == math.comb(66, 2)
    assert build_kernel("polynomial", 64, {"p": 3, "c": 1.0}).feature_dim() == math.comb(67, 3)
    assert build_kernel("polynomial", 64, {"p": 2, "c": 0.0}).feature_dim() == math.comb(65, 2)
    assert build_kernel("taylor", 64, {"p": 2}).feature_dim() == 1 + 64 + 2080
    assert build_kernel("taylor", 8, {"p": 4}).feature_dim() == sum(math.comb(8 + i - 1, i) for i in range(5))
    assert build_kernel("linear", 64).feature_dim() == 64
    assert build_kernel("random_features", 64, {"m": 77}).feature_dim() == 77


# ---- paths ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", list(ROLES))
@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_paths_agree_values_and_gradients(path: Path, role: str) -> None:
    Tq, Tk, causal = ROLES[role]
    B = 3
    kern = make(path, **({"normalization": "sum"} if kern_needs_sum(path) else {}))
    kpm = padding(B, Tk)
    results = {}
    for p in paths_of(kern):
        q, k, v = qkv(B, 2, Tq, Tk, grad=True)
        out = kern(q, k, v, causal=causal, key_padding_mask=kpm, path=p)  # (B, H, Tq, Dv)
        assert out.shape == (B, 2, Tq, 5) and torch.isfinite(out).all()
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)  # (B, H, Tq, Dv) probe
        (out * weights).sum().backward()
        results[p] = (out.detach(), q.grad, k.grad, v.grad)
    ref = results.pop("exact")
    assert ref[3].abs().sum() > 0  # the probe reaches v: gradients are not trivially zero
    for p, res in results.items():
        for what, a, b in zip(("out", "dq", "dk", "dv"), res, ref):
            err = (a - b).abs().max().item()
            assert err < TOL64, f"{p} vs exact: {what} differs by {err:.2e}"


def kern_needs_sum(path: Path) -> bool:
    """Signed kernels with a feature map run the path test with 'sum' so the linear path is covered too."""
    name, params = load_yaml(path)
    kern = build_kernel(name, D, params)
    return kern.has_feature_map and kern.can_be_negative


@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_signed_kernels_abs_normalisation_agrees(path: Path) -> None:
    kern = make(path)
    if not kern.can_be_negative:
        pytest.skip("never negative: abs and sum coincide")
    q, k, v = qkv(2, 2, 8, 8)
    kpm = padding(2, 8)
    ref = kern(q, k, v, causal=True, key_padding_mask=kpm, path="exact")  # (B, H, Tq, Dv)
    torch.testing.assert_close(kern(q, k, v, causal=True, key_padding_mask=kpm, path="fast"), ref,
                               rtol=1e-10, atol=1e-10)
    # With 'abs', each output is a convex-like signed average: |out| <= max |v| over visible keys.
    assert ref.abs().max() <= v.abs().max() + 1e-12


@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_flex_forward_matches_exact_on_cpu(path: Path) -> None:
    pytest.importorskip("torch.nn.attention.flex_attention")
    kern = make(path)
    q, k, v = qkv(2, 2, 20, 24, dtype=torch.float32)
    if kern.flex_score_mod(q, k) is None:
        pytest.skip(f"{kern.name}: κ is not a function of q·k and per-token scalars, no flex path")
    kpm = padding(2, 24)
    for causal in (False, True):
        with torch.no_grad():
            ref = kern(q, k, v, causal=causal, key_padding_mask=kpm, path="exact")
            out = kern(q, k, v, causal=causal, key_padding_mask=kpm, path="flex")
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="CPU"):
        kern(q.requires_grad_(), k, v, path="flex")


# ---- masks ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_padded_keys_get_zero_weight(path: Path) -> None:
    kern = make(path)
    B, Tq, Tk = 3, 6, 9
    q, k, v = qkv(B, 2, Tq, Tk)
    kpm = padding(B, Tk)
    k2, v2 = k.clone(), v.clone()
    k2[kpm[:, None, :, None].expand_as(k)] = 7.0  # garbage keys at padded positions
    v2[kpm[:, None, :, None].expand_as(v)] = -50.0
    for p in paths_of(kern):
        a = kern(q, k, v, key_padding_mask=kpm, path=p)  # (B, H, Tq, Dv)
        b = kern(q, k2, v2, key_padding_mask=kpm, path=p)
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"path {p}")
    # A row whose keys are all padding returns zeros, not NaN.
    allpad = torch.ones(B, Tk, dtype=torch.bool)
    for p in paths_of(kern):
        out = kern(q, k, v, key_padding_mask=allpad, path=p)
        assert torch.equal(out, torch.zeros_like(out)), p


@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_causal_outputs_ignore_the_future(path: Path) -> None:
    kern = make(path)
    for Tq, Tk in ((9, 9), (4, 9)):
        q, k, v = qkv(2, 2, Tq, Tk)
        t = Tq - 3  # change query t's key/value (aligned at key t + Tk - Tq) and everything after
        j = t + Tk - Tq
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        q2[:, :, t:] += 3.0
        k2[:, :, j:] -= 2.0
        v2[:, :, j:] += 5.0
        for p in paths_of(kern):
            a = kern(q, k, v, causal=True, path=p)  # (B, H, Tq, Dv)
            b = kern(q2, k2, v2, causal=True, path=p)
            torch.testing.assert_close(a[:, :, :t], b[:, :, :t], rtol=1e-9, atol=1e-9, msg=f"path {p}")
            assert (a[:, :, t:] - b[:, :, t:]).abs().max() > 1e-3  # the changed rows did change


# ---- numerics ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_finite_gradients_at_init_scale(path: Path) -> None:
    """q, k, v from a d_model=64 projection of N(0, 1) activations (Xavier-like weights): q, k ≈ N(0, 1)."""
    name, params = load_yaml(path)
    kern = build_kernel(name, 16, params)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 64, 64, generator=g)  # (B, T, d_model)
    w = torch.randn(64, 3 * 64, generator=g) / 8.0  # (d_model, 3 d_model): std 1/√d_model
    w.requires_grad_()
    q, k, v = (t.view(2, 64, 4, 16).transpose(1, 2) for t in (x @ w).chunk(3, dim=-1))  # (B, H, T, 16) each
    out = kern(q, k, v, causal=True)  # (B, H, T, 16)
    out.square().mean().backward()
    assert torch.isfinite(out).all() and torch.isfinite(w.grad).all()
    assert w.grad.abs().max() > 0


@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_bf16_runs_and_stays_close_to_float32(path: Path) -> None:
    kern = make(path)
    q, k, v = qkv(2, 2, 16, 16, dtype=torch.float32)
    kpm = padding(2, 16)
    ref = kern(q, k, v, causal=True, key_padding_mask=kpm, path="exact")  # (B, H, T, Dv)
    for p in paths_of(kern):
        qb, kb, vb = (t.to(torch.bfloat16).requires_grad_() for t in (q, k, v))
        out = kern(qb, kb, vb, causal=True, key_padding_mask=kpm, path=p)
        assert out.dtype == torch.bfloat16
        out.float().sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in (qb, kb, vb))
        # Computed in float32, rounded once to bf16 at the end: |out| ≲ 4 has an ulp of 2^-6 ≈ 0.016.
        err = (out.float() - ref).abs().max().item()
        assert err < 0.03, f"{p}: bf16 vs float32 max error {err:.3f}"


@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_auto_runs_exact_on_small_problems_and_default_path_beyond(path: Path) -> None:
    kern = make(path)
    assert kern.resolve_path(1, 1) == ("exact" if kern.auto_exact_below >= 1 else kern.default_path)
    assert kern.resolve_path(4096, 4096) == kern.default_path != "exact"
    assert kern.resolve_path(4096, 4096, "exact") == "exact"
    # And auto gives the same numbers as the path it picked.
    q, k, v = qkv(1, 2, 20, 20)
    torch.testing.assert_close(kern(q, k, v, causal=True), kern(q, k, v, causal=True, path=kern.resolve_path(20, 20)))


def test_random_features_error_vs_edp_falls_with_m() -> None:
    q, k, v = qkv(2, 2, 16, 16, dtype=torch.float64)
    q, k = 0.5 * q, 0.5 * k  # the regime Performers are used in: moderate logits
    edp = build_kernel("edp", D)(q, k, v, path="exact")  # (B, H, T, Dv)
    errors = []
    for m in (4, 16, 64, 256, 1024):
        errs = []
        for seed in range(4):
            torch.manual_seed(seed)
            rf = build_kernel("random_features", D, {"m": m})
            errs.append((rf(q.float(), k.float(), v.float()).double() - edp).pow(2).mean().sqrt().item())
        errors.append(sum(errs) / len(errs))
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert errors[0] / errors[-1] > 5.0 and errors[-1] < 0.05, errors


def test_random_features_redraw_policy() -> None:
    q, k, v = qkv(1, 1, 4, 4, dtype=torch.float32)
    torch.manual_seed(0)
    rf = build_kernel("random_features", D, {"m": 16, "redraw_every": 2})
    seen = []
    for _ in range(5):
        rf(q, k, v)
        seen.append(rf.omega.clone())
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2]) and torch.equal(seen[2], seen[3])
    rf.eval()
    before = rf.omega.clone()
    for _ in range(4):
        rf(q, k, v)
    assert torch.equal(before, rf.omega)  # fixed at eval
    never = build_kernel("random_features", D, {"m": 16, "redraw_every": 0})
    w0 = never.omega.clone()
    for _ in range(4):
        never(q, k, v)
    assert torch.equal(w0, never.omega)
    # The draw is a buffer: a checkpoint restores it.
    clone = build_kernel("random_features", D, {"m": 16})
    clone.load_state_dict(rf.state_dict())
    assert torch.equal(clone.omega, rf.omega)


def test_taylor_approaches_edp_as_p_grows() -> None:
    q, k, v = qkv(2, 2, 12, 12)
    edp = build_kernel("edp", D)(q, k, v, path="exact")  # (B, H, T, Dv)
    errors = [(build_kernel("taylor", D, {"p": p})(q, k, v) - edp).abs().max().item() for p in (2, 4, 8, 12, 16)]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 1e-3, errors


@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_fast_path_keeps_linear_memory_for_backward(path: Path) -> None:
    """What the fast path keeps for backward grows linearly in T (the exact reference: quadratically)."""
    kern = make(path)
    if kern.name in ("edp", "rbf"):
        pytest.skip("SDPA: what it saves is PyTorch's backend choice (flash on GPU)")
    kern.block_q = kern.block_k = 64

    def largest_saved(T: int, path_name: str) -> int:
        sizes: list[int] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            sizes.append(t.numel())
            return t

        q, k, v = qkv(1, 2, T, T, dtype=torch.float32, grad=True)
        assert kern.resolve_path(T, T, path_name) == path_name
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = kern(q, k, v, causal=True, path=path_name)  # (1, 2, T, Dv)
        out.sum().backward()
        assert sizes, "nothing saved: the measurement would be vacuous"
        return max(sizes)

    # T large enough that T² outgrows T·F for the finite-feature kernels (F = 256 random features).
    fast = largest_saved(512, "fast") / largest_saved(256, "fast")
    exact = largest_saved(512, "exact") / largest_saved(256, "exact")
    assert fast <= 2.05 and exact >= 3.9, (fast, exact)
