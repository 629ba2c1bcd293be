"""What the kernel tests share: the cases (every conf/kernel/*.yaml plus variants that reach other code),
inputs, roles, paths, and the INDEPENDENT reference formulas — κ written here from each kernel's paper, reading
only the kernel's own draw or weights, never calling the library's maths. A registered kernel without a formula
here fails ``test_every_registered_kernel_has_an_independent_reference``."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from kernel_attention.kernels import Kernel, build_kernel

REPO = Path(__file__).resolve().parents[1]
YAMLS = sorted((REPO / "conf" / "kernel").glob("*.yaml"))
YAML_IDS = [p.stem for p in YAMLS]
D = 8  # head dim of the small tests
H = 2  # heads (Hedgehog's maps are per head)
TOL64 = 1e-9


def load_yaml(path: Path) -> tuple[str, dict]:
    params = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(params, dict)
    return params.pop("name"), params


# Variants beyond the yamls: code the presets do not reach (untied maps, Σ|κ| for rff, strong re-weighting).
VARIANTS = {
    "hedgehog_untied": ("hedgehog", {"m": 5, "tie_qk": False}),
    "rff_abs": ("rff", {"m": 24, "normalization": "abs"}),
    "cosformer_M16": ("cosformer", {"M": 16}),
}
CASES = {**{p.stem: load_yaml(p) for p in YAMLS}, **VARIANTS}
CASE_IDS = list(CASES)


def make_case(case: str, head_dim: int = D, heads: int = H, seed: int = 0, **override) -> Kernel:
    """The case's kernel in float64; its random draw or initial weights are fixed by ``seed``."""
    name, params = CASES[case]
    torch.manual_seed(seed)
    kern = build_kernel(name, head_dim, {**params, **override}, heads=heads).double()
    kern.block_q, kern.block_k = 3, 4  # many small tiles, uneven against every T below
    return kern


def paths_of(kern: Kernel) -> list[str]:
    """Every path this kernel can run with its config, reference first."""
    paths = ["exact", "fast", "tiled"]
    if kern.has_feature_map and not (kern.can_be_negative and kern.normalization == "abs"):
        paths.append("linear")
    return paths


def qkv(B: int, Tq: int, Tk: int, *, dtype=torch.float64, Dv: int = 5, seed: int = 0, grad: bool = False):
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


# ---- independent references: κ(q_i, k_j) for all pairs, from the papers' formulas ---------------------------
def _pairs(q, k):
    return q[..., :, None, :], k[..., None, :, :]  # (B, H, Tq, 1, D), (B, H, 1, Tk, D)


def _favor(kern, q, k):
    """Choromanski et al. 2021: (1/m) Σ_r exp(ω_r·q' − ‖q'‖²/2) exp(ω_r·k' − ‖k'‖²/2), x' = x/d^¼."""
    d, w = q.shape[-1], kern.omega.to(q.dtype)  # (m, D)

    def phi(x):
        xs = x / d**0.25
        return torch.exp((xs[..., None, :] * w).sum(-1) - 0.5 * (xs * xs).sum(-1, keepdim=True))  # (B, H, T, m)

    return torch.einsum("bhir,bhjr->bhij", phi(q), phi(k)) / w.shape[0]


def _rff(kern, q, k):
    """Rahimi & Recht 2007: (2/m) Σ_r cos(ω_r·(q − k)/d^¼) with m/2 frequencies."""
    a, b = _pairs(q, k)
    diff = (a - b) / q.shape[-1] ** 0.25  # (B, H, Tq, Tk, D)
    w = kern.omega.to(q.dtype)  # (m/2, D)
    return torch.cos((diff[..., None, :] * w).sum(-1)).sum(-1) * (2.0 / (2 * w.shape[0]))


def _hedgehog(kern, q, k):
    """Zhang et al. 2024: φ(x) = [softmax(W_h x + b_h), softmax(−W_h x − b_h)] per head h."""
    def phi(x, w, b):
        z = (x[..., None, :] * w[None, :, None]).sum(-1) + b[None, :, None]  # (B, H, T, m)
        return torch.cat([torch.softmax(z, -1), torch.softmax(-z, -1)], -1)

    wk, bk = (kern.weight, kern.bias) if kern.tie_qk else (kern.key_weight, kern.key_bias)
    return (phi(q, kern.weight, kern.bias)[..., :, None, :] * phi(k, wk, bk)[..., None, :, :]).sum(-1)


def _cosformer(kern, q, k, qpos, kpos):
    """Qin et al. 2022: relu(q_i)·relu(k_j) cos(π/2 · (i − j)/M) for positions in [0, M]; beyond M the angle
    π/2 · i/M is held at π/2 (this package's documented extension)."""
    a, b = _pairs(q, k)
    dot = (F.relu(a) * F.relu(b)).sum(-1)  # (B, H, Tq, Tk)
    i, j = (p.clamp(0, kern.M).to(q.dtype)[:, None] for p in (qpos, kpos))  # (Tq, 1), (Tk, 1)
    return dot * torch.cos(math.pi / 2 * (i - j.T) / kern.M)


def reference_kernel(kern: Kernel, q, k, qpos=None, kpos=None) -> torch.Tensor:
    """κ by its formula: (B, H, Tq, D), (B, H, Tk, D) → (B, H, Tq, Tk); positions (Tq,), (Tk,) default 0.."""
    d = q.shape[-1]
    a, b = _pairs(q, k)
    s = (a * b).sum(-1) / math.sqrt(d)  # (B, H, Tq, Tk)
    qpos = torch.arange(q.shape[-2]) if qpos is None else qpos
    kpos = torch.arange(k.shape[-2]) if kpos is None else kpos
    formulas = reference_formulas(kern, q, k, qpos, kpos, a, b, s, d)
    return formulas[kern.name]()


def reference_formulas(kern, q, k, qpos, kpos, a, b, s, d) -> dict[str, Callable[[], torch.Tensor]]:
    """Kernel name → κ by its formula (lazily: only the kernel's own entry is evaluated)."""
    cfg = getattr(kern, "cfg", None)
    return {
        "edp": lambda: s.exp(),
        "rbf": lambda: (-((a - b) ** 2).sum(-1) / (2 * math.sqrt(d))).exp(),
        "laplacian": lambda: (-((a - b) ** 2).sum(-1).sqrt() / (cfg.scale or d**0.25)).exp(),
        "exp_l1": lambda: (-(a - b).abs().sum(-1) / (cfg.scale or d**0.5)).exp(),
        "ei": lambda: (torch.minimum(a, b).sum(-1) / math.sqrt(d)).exp(),
        "intersection": lambda: torch.minimum(a, b).sum(-1),
        "polynomial": lambda: (s + cfg.c) ** cfg.p,
        "taylor": lambda: sum(s**i / math.factorial(i) for i in range(cfg.p + 1)),
        "linear": lambda: ((F.elu(a) + 1) * (F.elu(b) + 1)).sum(-1),
        "random_features": lambda: _favor(kern, q, k),
        "rff": lambda: _rff(kern, q, k),
        "hedgehog": lambda: _hedgehog(kern, q, k),
        "cosformer": lambda: _cosformer(kern, q, k, qpos, kpos),
    }


# The kernels with a formula above (read off the table itself, so the check cannot drift from it).
REFERENCED = set(reference_formulas(None, *([None] * 8)))


def reference_attention(kern: Kernel, q, k, v, keep: torch.Tensor | None, qpos=None, kpos=None) -> torch.Tensor:
    """The smoother by the formula: Σ_j κ_ij v_j / Σ_j κ_ij (or Σ|κ_ij| for 'abs') over visible keys."""
    w = reference_kernel(kern, q, k, qpos, kpos)  # (B, H, Tq, Tk)
    if keep is not None:
        w = torch.where(keep, w, 0.0)
    den = (w.abs() if kern.can_be_negative and kern.normalization == "abs" else w).sum(-1, keepdim=True)
    return (w @ v) / den  # (B, H, Tq, Dv)
