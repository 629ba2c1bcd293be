"""Beam search and greedy decoding on tiny random models: rules, bookkeeping, cached = uncached."""

from __future__ import annotations

import pytest
import torch

from kernel_attention.evaluation.generate import SearchConfig, SpecialIds, beam_search, greedy_search, max_lengths
from kernel_attention.kernels import KERNELS
from kernel_attention.models import ModelConfig, build_model

V = 23
IDS = SpecialIds(pad=0, unk=1, bos=2, eos=3)
TINY = ModelConfig(preset="t", encoder_layers=1, decoder_layers=2, d_model=16, ffn_dim=32, heads=2, dropout=0.0)


def _model(kernel: str = "edp", seed: int = 0, eos_bias: float = 0.0, unk_bias: float = 0.0):
    """A tiny random model; the biases are added to the EOS / UNK logits (random models rarely pick EOS, so a
    bias makes hypotheses end at varied lengths). Search and teacher forcing both see the biased logits."""
    torch.manual_seed(seed)
    model = build_model(TINY, kernel, None, "translation", V, IDS.pad).double().eval()
    bias = torch.zeros(V, dtype=torch.float64)  # (V,)
    bias[IDS.eos], bias[IDS.unk] = eos_bias, unk_bias
    decode = model.decode
    model.decode = lambda prev, enc, cache=None: decode(prev, enc, cache) + bias  # (B, T, V)
    return model


def _src(B: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (B, 7), generator=g)  # (B, S)
    lens = torch.randint(2, 8, (B,), generator=g)  # (B,)
    src[torch.arange(7)[None, :] >= lens[:, None]] = IDS.pad  # right padding, varied lengths
    return src


def _rescore(model, src: torch.Tensor, tokens: list[int], lenpen: float) -> float:
    """Teacher-forced log-probability of tokens + EOS given src, length-normalised like the search."""
    prev = torch.tensor([[IDS.bos, *tokens]])  # (1, T+1)
    tgt = torch.tensor([[*tokens, IDS.eos]])  # (1, T+1)
    with torch.no_grad():
        lp = torch.log_softmax(model(src[None], prev), dim=-1).gather(2, tgt[..., None]).sum()
    return float(lp) / len(tgt[0]) ** lenpen


def test_beam_one_equals_greedy() -> None:
    model, src = _model(eos_bias=3.0), _src(8)
    beam = beam_search(model, src, IDS, SearchConfig(beam=1))
    greedy = greedy_search(model, src, IDS, SearchConfig(beam=1))
    assert [h[0].tokens for h in beam] == [g.tokens for g in greedy]
    assert [h[0].score for h in beam] == pytest.approx([g.score for g in greedy], rel=1e-9)
    assert len({len(g.tokens) for g in greedy}) > 1, "the test model should end hypotheses at different lengths"


@pytest.mark.parametrize("kernel", KERNELS.names())
def test_cached_equals_uncached(kernel: str) -> None:
    model, src = _model(kernel, eos_bias=3.0), _src(5, seed=2)
    cfg = SearchConfig(beam=3, max_len_a=0.0, max_len_b=6)
    cached = beam_search(model, src, IDS, cfg)
    uncached = beam_search(model, src, IDS, SearchConfig(beam=3, max_len_a=0.0, max_len_b=6, use_cache=False))
    assert [[h.tokens for h in hs] for hs in cached] == [[h.tokens for h in hs] for hs in uncached]
    flat_c = [h.score for hs in cached for h in hs]
    assert flat_c == pytest.approx([h.score for hs in uncached for h in hs], rel=1e-7)
    g_c = greedy_search(model, src, IDS, cfg)
    g_u = greedy_search(model, src, IDS, SearchConfig(max_len_a=0.0, max_len_b=6, use_cache=False))
    assert [g.tokens for g in g_c] == [g.tokens for g in g_u]


@pytest.mark.parametrize("lenpen", [0.0, 1.0])
def test_beam_scores_are_model_scores_and_beat_greedy(lenpen: float) -> None:
    model, src = _model(seed=3, eos_bias=3.0), _src(8, seed=4)
    greedy = greedy_search(model, src, IDS, SearchConfig(lenpen=lenpen))
    beams = beam_search(model, src, IDS, SearchConfig(beam=4, lenpen=lenpen))
    for i, (hs, g) in enumerate(zip(beams, greedy)):
        assert 1 <= len(hs) <= 4
        assert [h.score for h in hs] == sorted((h.score for h in hs), reverse=True)  # best first
        # The reported score is what the model gives the hypothesis under teacher forcing.
        for h in hs:
            assert h.score == pytest.approx(_rescore(model, src[i], h.tokens, lenpen), rel=1e-9, abs=1e-9)
        assert g.score == pytest.approx(_rescore(model, src[i], g.tokens, lenpen), rel=1e-9, abs=1e-9)
        if lenpen == 0.0:
            assert hs[0].score >= g.score - 1e-9
    if lenpen == 0.0:  # not vacuous: beam search found something better than greedy for some sentence
        assert any(hs[0].score > g.score + 1e-6 for hs, g in zip(beams, greedy))
    # With lenpen > 0 there is no such guarantee: fairseq's rule stops a sentence once it has `beam` finished
    # hypotheses, so a long greedy hypothesis can have the better normalised score (seed 3 has one). We keep the
    # rule for comparability with fairseq's published numbers.


def test_max_length_and_eos_rules() -> None:
    model, src = _model(seed=5), _src(6, seed=6)  # no EOS bias: hypotheses run into the length limit
    cfg = SearchConfig(beam=3, max_len_a=0.5, max_len_b=2)
    limits = max_lengths(src.ne(IDS.pad).sum(1), cfg).tolist()
    assert limits == [int(0.5 * n + 2) for n in src.ne(IDS.pad).sum(1).tolist()]
    hits_limit = False
    for hs, limit in zip(beam_search(model, src, IDS, cfg), limits):
        for h in hs:
            assert 1 <= len(h.tokens) <= limit  # min length 1, max length a*src_len+b
            assert not {IDS.pad, IDS.bos, IDS.eos} & set(h.tokens)  # EOS only ends; pad/BOS never generated
            hits_limit |= len(h.tokens) == limit
    assert hits_limit


def test_eos_ends_hypotheses_early_and_unk_can_be_banned() -> None:
    # EOS is by far the likeliest token, but min_len bans it at the first step, where UNK is the favourite.
    model, src = _model(seed=7, eos_bias=40.0, unk_bias=20.0), _src(4, seed=8)
    hyps = beam_search(model, src, IDS, SearchConfig(beam=2, max_len_b=20))
    assert all(hs[0].tokens == [IDS.unk] for hs in hyps)
    banned = beam_search(model, src, IDS, SearchConfig(beam=2, max_len_b=20, no_unk=True))
    assert all(len(hs[0].tokens) == 1 for hs in banned)
    assert not any(IDS.unk in h.tokens for hs in banned for h in hs)


def test_results_do_not_depend_on_the_batch() -> None:
    model, src = _model(seed=9, eos_bias=3.0), _src(6, seed=10)
    together = beam_search(model, src, IDS, SearchConfig(beam=3))
    alone = [beam_search(model, src[i : i + 1, : int(src[i].ne(IDS.pad).sum())], IDS, SearchConfig(beam=3))[0]
             for i in range(6)]
    assert [hs[0].tokens for hs in together] == [hs[0].tokens for hs in alone]


def test_bad_search_config() -> None:
    with pytest.raises(ValueError, match="beam"):
        beam_search(_model(), _src(1), IDS, SearchConfig(beam=0))
    with pytest.raises(ValueError, match="min_len"):
        SearchConfig(min_len=0).validate()
