"""The kernel zoo, registry-wide: configs, the maths against independent formulas, declared properties.

Paths (exact = fast = tiled = linear, masks, positions, parameter gradients) are in test_kernel_paths.py; the
random-feature estimators' statistics in test_kernel_estimators.py. Every registered kernel and every
conf/kernel/*.yaml is covered with no per-kernel edits — except that a new kernel must bring its formula to
kernel_cases.py, or ``test_every_registered_kernel_has_an_independent_reference`` fails."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from kernel_cases import REFERENCED, REPO, YAML_IDS, YAMLS, D, H, load_yaml, make_case, qkv, reference_kernel

from kernel_attention.kernels import KERNELS, Positions, build_kernel
from kernel_attention.registry import ConfigError

torch.set_num_threads(1)


# ---- configuration ------------------------------------------------------------------------------------------
def test_every_registered_kernel_has_its_yaml() -> None:
    names = {load_yaml(p)[0] for p in YAMLS}
    assert set(KERNELS.names()) <= names, f"kernels without conf/kernel/<name>.yaml: {set(KERNELS.names()) - names}"
    for name in KERNELS.names():
        assert (REPO / "conf" / "kernel" / f"{name}.yaml").is_file()
    assert {"edp", "rbf", "laplacian", "ei", "intersection", "polynomial", "linear", "taylor",
            "random_features", "rff", "hedgehog", "cosformer"} <= set(KERNELS.names())


def test_every_registered_kernel_has_an_independent_reference() -> None:
    """A kernel cannot skip its maths: its κ must be written in kernel_cases.reference_kernel."""
    missing = set(KERNELS.names()) - REFERENCED
    assert not missing, f"registered kernels with no independent reference formula in kernel_cases.py: {missing}"


@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_yaml_builds_and_reports_properties(path: Path) -> None:
    name, params = load_yaml(path)
    kern = build_kernel(name, 64, params, heads=4)
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
        ("intersection", {"eps": 0.0}, "(0, 1)"),
        ("rff", {"eps": float("nan")}, "finite"),
        ("polynomial", {"eps": 2.0}, "(0, 1)"),
        ("edp", {"path": "magic"}, "exact"),
        ("rbf", {"bandwidth": 1.0}, "allowed"),
        ("taylor", {"p": "two"}, "int"),
        ("rff", {"m": 7}, "even"),
        ("rff", {"m": 0}, ">= 1"),
        ("hedgehog", {"m": 0}, ">= 1"),
        ("hedgehog", {"tie_qk": "yes"}, "bool"),
        ("cosformer", {"M": 0}, ">= 1"),
    ],
)
def test_invalid_config_fails_at_construction(name: str, params: dict, must_mention: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_kernel(name, 64, params)
    msg = str(err.value)
    assert "\n" not in msg and must_mention in msg, msg


def test_linear_path_refuses_abs_normalisation_of_signed_kernel() -> None:
    kern = build_kernel("polynomial", D, {"p": 3, "normalization": "abs"})
    q, k, v = qkv(1, 4, 4)
    with pytest.raises(ConfigError, match="normalization=sum"):
        kern(q, k, v, path="linear")
    with pytest.raises(ConfigError, match="feature map"):
        build_kernel("ei", D)(q, k, v, path="linear")


def test_hedgehog_refuses_a_different_number_of_heads() -> None:
    kern = build_kernel("hedgehog", D, heads=3)
    q, k, v = qkv(1, 4, 4)  # H = 2
    with pytest.raises(ConfigError, match="built for 3 head"):
        kern(q, k, v)


def test_cosformer_beyond_its_horizon_stays_positive_and_position_consistent() -> None:
    """Positions past M keep θ = π/2: κ ≥ 0 at any distance, and a decoding step at position 40 (M = 8) equals
    the full pass's row 40."""
    kern = build_kernel("cosformer", D, {"M": 8}).double()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, H, 48, D, generator=g, dtype=torch.float64).abs() for _ in range(3))
    pos = Positions(0, 0)
    assert (kern.pair_scores(q, k, pos, log=False) >= 0).all()
    full = kern(q, k, v, causal=True, path="linear")  # (1, H, 48, D)
    step = kern(q[:, :, 40:41], k[:, :, :41], v[:, :, :41], causal=True, path="exact")  # q_offset = 40
    torch.testing.assert_close(step[:, :, 0], full[:, :, 40], rtol=1e-10, atol=1e-12)


def test_cosformer_default_horizon_follows_the_task() -> None:
    """The paper's M = sequence length: the block size on LM tasks, 64 on translation (longest Multi30k sentence)."""
    from test_train_support import compose

    assert compose(["kernel=cosformer", "task=tinyshakespeare"])["kernel"]["M"] == 256
    assert compose(["kernel=cosformer", "task=tinyshakespeare", "task.block_size=64"])["kernel"]["M"] == 64
    assert compose(["kernel=cosformer", "task=multi30k"])["kernel"]["M"] == 64


# ---- the maths --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_score_matches_independent_formula(path: Path) -> None:
    kern = make_case(path.stem)
    q, k, _ = qkv(2, 5, 6)
    pos = Positions(q_offset=3, k_offset=1)
    ref = reference_kernel(kern, q, k, pos.q(5), pos.k(6))  # (B, H, Tq, Tk)
    torch.testing.assert_close(kern.pair_scores(q, k, pos, log=False), ref, rtol=1e-10, atol=1e-10)
    if kern.has_log_score:
        torch.testing.assert_close(kern.pair_scores(q, k, pos, log=True), ref.log(), rtol=1e-10, atol=1e-10)


def _gram_points(kern) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, H, 40, D, generator=g, dtype=torch.float64)  # (1, H, n, D)
    y = torch.randn(1, H, 30, D, generator=g, dtype=torch.float64)  # (1, H, m, D)
    # Shifted inputs too: ei/intersection behave differently for mostly-negative coordinates.
    pts = torch.cat([x, x - 2.0, 0.5 * x + 1.0], dim=2)  # (1, H, 120, D)
    return x, y, pts


@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_declared_properties_hold_numerically(path: Path) -> None:
    """symmetric ⇒ κ(q,k) = κ(k,q); positive_definite ⇔ Gram matrices are PSD; can_be_negative ⇔ κ < 0 seen."""
    kern = make_case(path.stem)
    _check_properties(kern)


def test_untied_hedgehog_is_asymmetric_and_not_mercer() -> None:
    kern = make_case("hedgehog_untied")
    with torch.no_grad():  # as after training: the query and key maps start equal (identity) and move apart
        kern.key_weight.add_(0.5 * torch.randn(kern.key_weight.shape, generator=torch.Generator().manual_seed(0),
                                               dtype=kern.key_weight.dtype))
    assert kern.properties().to_json() == {"feature_dim": 10, "symmetric": False, "positive_definite": False,
                                           "can_be_negative": False}
    _check_properties(kern)


def _check_properties(kern) -> None:
    x, y, pts = _gram_points(kern)
    pos = Positions()
    kxy, kyx = kern.pair_scores(x, y, pos, log=False), kern.pair_scores(y, x, pos, log=False)  # (1, H, n, m) ...
    props = kern.properties()
    assert props.symmetric == torch.allclose(kxy, kyx.transpose(-2, -1), rtol=1e-10, atol=1e-12)
    for h in range(H):
        gram = kern.pair_scores(pts, pts, pos, log=False)[0, h]  # (120, 120)
        sym = torch.allclose(gram, gram.T, rtol=1e-10, atol=1e-12)
        eig = torch.linalg.eigvalsh(0.5 * (gram + gram.T))  # (120,)
        psd = sym and bool(eig.min() >= -1e-9 * eig.abs().max())  # Mercer: symmetric AND PSD Gram matrices
        assert psd == props.positive_definite, f"head {h}: min eig {eig.min():.3e}, max {eig.max():.3e}"
    gram = kern.pair_scores(pts, pts, pos, log=False)
    saw_negative = bool((gram < 0).any() or (kern.pair_scores(x - 3.0, y, pos, log=False) < 0).any())
    assert saw_negative == props.can_be_negative


@pytest.mark.parametrize("path", YAMLS, ids=YAML_IDS)
def test_feature_map_identity_and_dimension(path: Path) -> None:
    kern = make_case(path.stem)
    if not kern.has_feature_map:
        assert math.isinf(kern.feature_dim())
        pytest.skip(f"{kern.name} has an infinite-dimensional feature space")
    q, k, _ = qkv(2, 5, 6)
    pos = (torch.arange(5) + 2, torch.arange(6)) if kern.position_aware else ((), ())
    fq = kern.feature_map(q, pos[0]) if kern.position_aware else kern.feature_map(q)  # (B, H, Tq, F)
    fk = kern.key_feature_map(k, pos[1]) if kern.position_aware else kern.key_feature_map(k)  # (B, H, Tk, F)
    assert fq.shape[-1] == fk.shape[-1] == kern.feature_dim()
    ref = reference_kernel(kern, q, k, *(pos if kern.position_aware else ()))
    torch.testing.assert_close(fq @ fk.transpose(-2, -1), ref, rtol=1e-10, atol=1e-10)


def test_feature_dims_follow_the_formulas() -> None:
    assert build_kernel("polynomial", 64, {"p": 2, "c": 1.0}).feature_dim() == math.comb(66, 2)
    assert build_kernel("polynomial", 64, {"p": 3, "c": 1.0}).feature_dim() == math.comb(67, 3)
    assert build_kernel("polynomial", 64, {"p": 2, "c": 0.0}).feature_dim() == math.comb(65, 2)
    assert build_kernel("taylor", 64, {"p": 2}).feature_dim() == 1 + 64 + 2080
    assert build_kernel("taylor", 8, {"p": 4}).feature_dim() == sum(math.comb(8 + i - 1, i) for i in range(5))
    assert build_kernel("linear", 64).feature_dim() == 64
    assert build_kernel("random_features", 64, {"m": 77}).feature_dim() == 77
    assert build_kernel("rff", 64, {"m": 78}).feature_dim() == 78
    assert build_kernel("hedgehog", 64, {"m": 16}, heads=4).feature_dim() == 32
    assert build_kernel("cosformer", 64).feature_dim() == 128


def test_trainable_parameters_are_registered_per_head() -> None:
    tied = build_kernel("hedgehog", D, {"m": 6}, heads=3)
    assert [tuple(p.shape) for p in tied.trainable_parameters()] == [(3, 6, D), (3, 6)]
    untied = build_kernel("hedgehog", D, {"m": 6, "tie_qk": False}, heads=3)
    assert len(untied.trainable_parameters()) == 4
    for name in set(KERNELS.names()) - {"hedgehog"}:
        assert build_kernel(name, D).trainable_parameters() == [], name
