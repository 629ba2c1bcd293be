"""GPU checks for the paths that only matter on CUDA: compiled FlexAttention (fwd + bwd) and the kernels under
torch.compile, in float32 and bfloat16, against the float32 exact path. Skipped without CUDA.

Tolerances: float32 with TF32 disabled → 2e-4 (different summation order over up to 256 keys);
bfloat16 → 3e-2 absolute on outputs of magnitude ≲ 4 (an ulp is 2^-6 there) and 5e-2 relative (to the
gradient's max) on gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from kernel_attention.kernels import build_kernel

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

REPO = Path(__file__).resolve().parents[1]
YAMLS = sorted((REPO / "conf" / "kernel").glob("*.yaml"))
TOL = {torch.float32: (2e-4, 2e-4), torch.bfloat16: (3e-2, 5e-2)}  # (output atol, gradient rel. atol)


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def kernel(path: Path, head_dim: int = 64):
    params = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    name = params.pop("name")
    return build_kernel(name, head_dim, params, heads=4).cuda()  # H = 4 below (hedgehog maps are per head)


def run(kern, dtype, path, causal, kpm, compile_=False):
    g = torch.Generator(device="cuda").manual_seed(0)
    B, H, Tq, Tk, D = 2, 4, 200, 256, 64  # not multiples of the 128-blocks: exercises ragged tiles
    q = torch.randn(B, H, Tq, D, device="cuda", generator=g)  # (B, H, Tq, D)
    k = torch.randn(B, H, Tk, D, device="cuda", generator=g)  # (B, H, Tk, D)
    v = torch.randn(B, H, Tk, D, device="cuda", generator=g)  # (B, H, Tk, D)
    q, k, v = (t.to(dtype).requires_grad_() for t in (q, k, v))
    fn = torch.compile(kern) if compile_ else kern
    out = fn(q, k, v, causal=causal, key_padding_mask=kpm, path=path)  # (B, H, Tq, D)
    out.float().square().mean().backward()
    return out.float(), [t.grad.float() for t in (q, k, v)]


def check(kern, dtype, path, causal, compile_=False):
    kpm = torch.zeros(2, 256, dtype=torch.bool, device="cuda")
    kpm[1, -37:] = True
    ref, ref_g = run(kern, torch.float32, "exact", causal, kpm)
    out, g = run(kern, dtype, path, causal, kpm, compile_)
    atol, grel = TOL[dtype]
    assert (out - ref).abs().max() < atol
    for a, b in zip(g, ref_g):
        assert (a - b).abs().max() <= grel * b.abs().max() + 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("path", YAMLS, ids=[p.stem for p in YAMLS])
def test_flex_matches_exact(path: Path, causal: bool, dtype: torch.dtype) -> None:
    kern = kernel(path)
    if kern.flex_score_mod(torch.zeros(1, 1, 1, 64, device="cuda"), torch.zeros(1, 1, 1, 64, device="cuda")) is None:
        pytest.skip(f"{kern.name} has no flex score_mod")
    check(kern, dtype, "flex", causal)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("path", YAMLS, ids=[p.stem for p in YAMLS])
def test_fast_and_compiled_paths_match_exact(path: Path, dtype: torch.dtype) -> None:
    kern = kernel(path)
    check(kern, dtype, "fast", causal=True)
    check(kern, dtype, "exact", causal=True, compile_=True)
