"""The fused output-projection + label-smoothed cross-entropy (tasks/losses.py) against the plain one on logits:
values, the NLL, and gradients w.r.t. hidden states and the output embedding, with pad rows, chunk sizes that do
not divide the rows, ε = 0, no-grad use, and through a whole model's training loss."""

from __future__ import annotations

import pytest
import torch

from kernel_attention.models import ModelConfig, build_model
from kernel_attention.tasks import label_smoothed_nll, linear_label_smoothed_nll


def _case(dtype=torch.float64, B=3, T=7, C=5, V=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, C, generator=g, dtype=dtype, requires_grad=True)  # (B, T, C)
    w = torch.randn(V, C, generator=g, dtype=dtype, requires_grad=True)  # (V, C)
    target = torch.randint(1, V, (B, T), generator=g)  # (B, T)
    target[0, -3:] = 0  # pad = 0
    target[2, 1] = 0
    return h, w, target


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("chunk", [1, 4, 21, 64])
def test_fused_loss_matches_logits_reference_values_and_gradients(eps: float, chunk: int) -> None:
    h, w, target = _case()
    logits = (h @ w.t()).flatten(0, 1)  # (B·T, V) float64: the reference without label_smoothed_nll's fp32 cast
    ce = torch.nn.functional.cross_entropy
    ref_loss = ce(logits, target.flatten(), ignore_index=0, reduction="sum", label_smoothing=eps)
    ref_nll = ce(logits, target.flatten(), ignore_index=0, reduction="sum")
    ref_grads = torch.autograd.grad(ref_loss * 1.7, (h, w))
    loss, nll, n = linear_label_smoothed_nll(h, w, target, eps, pad=0, chunk=chunk)
    grads = torch.autograd.grad(loss * 1.7, (h, w))  # a non-unit upstream gradient is scaled through
    assert n == int(target.ne(0).sum()) == label_smoothed_nll(h @ w.t(), target, eps, pad=0)[2]
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)  # float64 in, float64 maths
    torch.testing.assert_close(nll, ref_nll, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, ref_grads):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_fused_loss_agrees_with_torch_cross_entropy_in_float32() -> None:
    h, w, target = _case(torch.float32, B=4, T=33, C=16, V=300, seed=1)
    ref = torch.nn.functional.cross_entropy((h @ w.t()).view(-1, 300), target.view(-1), ignore_index=0,
                                            reduction="sum", label_smoothing=0.1)
    loss, _, _ = linear_label_smoothed_nll(h, w, target, 0.1, pad=0, chunk=50)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)


def test_fused_loss_without_grad_and_all_pad_rows() -> None:
    h, w, target = _case()
    with torch.no_grad():
        loss, nll, n = linear_label_smoothed_nll(h, w, target, 0.1, pad=0, chunk=5)
        ref_loss, ref_nll, _ = label_smoothed_nll(h @ w.t(), target, 0.1, pad=0)
    assert not loss.requires_grad and n == int(target.ne(0).sum())
    torch.testing.assert_close(loss, ref_loss.double(), rtol=1e-6, atol=1e-6)  # the reference is fp32
    torch.testing.assert_close(nll, ref_nll.double(), rtol=1e-6, atol=1e-6)
    loss, nll, n = linear_label_smoothed_nll(h, w, torch.zeros_like(target), 0.1, pad=0)
    g = torch.autograd.grad(loss, (h, w))
    assert n == 0 and float(loss) == float(nll) == 0.0 and all(float(x.abs().max()) == 0.0 for x in g)


def test_model_features_only_plus_output_weight_give_the_logits() -> None:
    cfg = ModelConfig(encoder_layers=1, decoder_layers=1, d_model=16, ffn_dim=32, heads=2, dropout=0.0)
    model = build_model(cfg, "edp", {}, "translation", 50, 1).eval()
    src, prev = torch.randint(2, 50, (2, 6)), torch.randint(2, 50, (2, 5))
    hidden = model(src, prev, features_only=True)  # (B, T, C)
    assert hidden.shape == (2, 5, 16)
    torch.testing.assert_close(hidden @ model.output_weight.t(), model(src, prev))
