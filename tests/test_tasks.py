"""The task registry: each task type's own typed config and behaviour, and LM sampling against a reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kernel_attention.data.config import DataConfig
from kernel_attention.evaluation.bleu import is_tokenized_lowercased
from kernel_attention.models import ModelConfig, build_model
from kernel_attention.tasks import TASKS, LMConfig, TranslationConfig, make_task_config


def test_registry_holds_both_task_types_with_their_own_configs() -> None:
    assert TASKS.names() == ["lm", "translation"]
    mt, lm = TASKS.get("translation"), TASKS.get("lm")
    assert mt.Config is TranslationConfig and lm.Config is LMConfig
    mt_only = {f.name for f in dataclasses.fields(TranslationConfig)} - {f.name for f in dataclasses.fields(LMConfig)}
    lm_only = {f.name for f in dataclasses.fields(LMConfig)} - {f.name for f in dataclasses.fields(TranslationConfig)}
    assert mt_only == {"valid_bleu_samples", "max_len_a", "max_len_b"} and lm_only == {"block_size"}
    assert (mt.metric, mt.higher_is_better, mt.architecture) == ("bleu", True, "encoder_decoder")
    assert (lm.higher_is_better, lm.architecture) == (False, "decoder_only")
    assert mt.record({"name": "m"}) == {"type": "translation", "metric": "bleu", "higher_is_better": True}


@pytest.mark.parametrize("spm, metric", [("char", "bpc"), ("unigram", "ppl"), ("bpe", "ppl")])
def test_an_lm_reports_bpc_exactly_when_its_vocabulary_is_characters(spm: str, metric: str) -> None:
    """The typed config (training) and the raw mapping (a failed sweep job's record) give the same answer."""
    lm = TASKS.get("lm")
    raw = {"name": "x", "type": "lm", "block_size": 8, "max_tokens": 64, "data": {"spm_model_type": spm}}
    typed = make_task_config(raw, data=DataConfig(task="x", type="lm", spm_model_type=spm))
    assert lm.record(raw) == lm.record(typed) == {"type": "lm", "metric": metric, "higher_is_better": False}


def test_task_config_is_its_types_dataclass() -> None:
    cfg = make_task_config({"name": "x", "type": "lm", "block_size": 8, "max_tokens": 64}, data=None)
    assert isinstance(cfg, LMConfig) and cfg.block_size == 8
    with pytest.raises(ValueError, match="unknown task type 'seq2seq'; choose one of: lm, translation"):
        make_task_config({"name": "x", "type": "seq2seq"}, data=None)
    with pytest.raises(ValueError, match=r"block_size=128 exceeds task\.max_tokens=64"):
        make_task_config({"name": "x", "type": "lm", "block_size": 128, "max_tokens": 64}, data=None)


@pytest.mark.parametrize(("prep", "expected"), [
    ("moses-tokenized+lowercased", True), ("raw", False), ("lowercased", False), ("moses-tokenized", False),
    ("wikitext-tokens (word-tokenized, cased, <unk> for rare words)", False), ("Tokenized, Lowercased", True),
])
def test_one_bleu_convention(prep: str, expected: bool) -> None:
    assert is_tokenized_lowercased(prep) is expected


class _Vocab:
    size, pad, unk, bos, eos = 23, 0, 1, 2, 3


class _Data:
    """Just what LanguageModelingTask.sample_ids reads."""

    def __init__(self) -> None:
        self.vocab = _Vocab()
        self.meta = {"char_level": False}


def _greedy_reference(model: torch.nn.Module, prompt: list[int], n: int, window: int) -> list[int]:
    """Argmax decoding by re-running the model on the last ``window`` tokens every step (no cache)."""
    ids = list(prompt)
    for _ in range(n):
        logits = model(torch.tensor([ids[-window:]]))[0, -1].clone()  # (V,)
        logits[[_Vocab.pad, _Vocab.bos]] = -float("inf")
        ids.append(int(logits.argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("window", [64, 8])  # 8: the context slides past the training block size
def test_lm_sampling_greedy_and_top1_match_an_uncached_reference(window: int) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(preset="t", encoder_layers=0, decoder_layers=2, d_model=16, ffn_dim=32, heads=2, dropout=0.0)
    model = build_model(cfg, "edp", None, "decoder_only", _Vocab.size, _Vocab.pad).double().eval()
    task = TASKS.get("lm")(LMConfig(name="t", block_size=window, max_tokens=64), _Data())  # type: ignore[arg-type]
    prompt = [5, 9, 4, 7]
    ref = _greedy_reference(model, prompt, 20, window)
    assert list(task.sample_ids(model, prompt, 20, temperature=0.0)) == ref
    g = torch.Generator().manual_seed(0)
    assert list(task.sample_ids(model, prompt, 20, temperature=0.7, top_k=1, generator=g)) == ref
    # Sampling proper draws from the softmax: with a fixed generator it is reproducible and not always greedy.
    draws = [list(task.sample_ids(model, prompt, 20, temperature=2.0, generator=torch.Generator().manual_seed(s)))
             for s in (1, 1, 2)]
    assert draws[0] == draws[1] and draws[0] != ref
    assert all(t not in (_Vocab.pad, _Vocab.bos) for d in draws for t in d)
