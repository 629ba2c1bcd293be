"""Sliding-window perplexity of decoder-only LMs (evaluation/lm.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kernel_attention.evaluation.lm import lm_perplexity, windows
from kernel_attention.models import ModelConfig, build_model

V = 29
TINY = ModelConfig(preset="t", encoder_layers=0, decoder_layers=2, d_model=16, ffn_dim=32, heads=2, dropout=0.0)


def _lm():
    torch.manual_seed(0)
    return build_model(TINY, "edp", None, "lm", V, 0).double().eval()


def _stream(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, V, (n,), generator=torch.Generator().manual_seed(seed))  # (N,)


class Uniform(torch.nn.Module):
    """Every next token equally likely: the perplexity must be the vocabulary size."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*tokens.shape, V, dtype=torch.float64)  # (B, T, V)


def test_uniform_model_has_perplexity_vocab_size() -> None:
    out = lm_perplexity(Uniform(), _stream(101), window=16, stride=5, char_level=True)
    assert out["ppl"] == pytest.approx(V, rel=1e-12)
    assert out["bpc"] == pytest.approx(math.log2(V), rel=1e-12)
    assert out["n_tokens"] == 100


def test_window_covering_the_stream_is_one_full_pass() -> None:
    model, x = _lm(), _stream(40, seed=1)
    full = F.cross_entropy(model(x[None, :-1])[0], x[1:], reduction="mean").item()
    for window, stride in [(39, 39), (64, 7)]:
        out = lm_perplexity(model, x, window=window, stride=stride)
        assert out["loss"] == pytest.approx(full, rel=1e-10)
        assert out["ppl"] == pytest.approx(math.exp(full), rel=1e-10)
        assert out["n_tokens"] == 39
        assert "bpc" not in out


def test_sliding_window_scores_each_token_once_with_its_context() -> None:
    model, x = _lm(), _stream(50, seed=2)
    window, stride = 12, 4
    # Reference: token t+1 scored from inputs max(begin of its window)..t, computed one target at a time.
    nll = []
    for begin, end, first in windows(49, window, stride):
        for t in range(first, end):
            logits = model(x[None, begin : t + 1])[0, -1]  # (V,)
            nll.append(-torch.log_softmax(logits, -1)[x[t + 1]].item())
    assert len(nll) == 49
    out = lm_perplexity(model, x, window=window, stride=stride, batch_size=3)
    assert out["loss"] == pytest.approx(sum(nll) / len(nll), rel=1e-10)
    # Less context must cost something on a real model: disjoint windows give a different (here: other) loss.
    assert lm_perplexity(model, x, window=window, stride=window)["loss"] != pytest.approx(out["loss"], rel=1e-6)


def test_window_layout() -> None:
    spans = windows(10, 4, 2)
    assert spans == [(0, 4, 0), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    scored = [t for _, end, first in spans for t in range(first, end)]
    assert scored == list(range(10))  # each target once
    assert all(end - begin <= 4 for begin, end, _ in spans)
    with pytest.raises(ValueError, match="stride"):
        windows(10, 4, 5)  # stride > window would skip tokens
    with pytest.raises(ValueError, match="at least 2"):
        lm_perplexity(Uniform(), _stream(1), window=4)
