"""evaluate_run and evaluate.py on tiny hand-built run folders (random weights = a model trained for 0 steps)."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sacrebleu
import torch
import yaml

from kernel_attention.config import TrainConfig
from kernel_attention.data import DataError, PreparedData
from kernel_attention.evaluation.bleu import bleu_from_stats
from kernel_attention.evaluation.evaluate import EvaluationError, evaluate_run, make_batches, translate
from kernel_attention.evaluation.generate import SearchConfig, SpecialIds, beam_search
from kernel_attention.evaluation.lm import lm_perplexity
from kernel_attention.models import build_model
from kernel_attention.registry import ConfigError

REPO = Path(__file__).resolve().parents[1]
@pytest.mark.parametrize("mt_run", ["raw", "moses-tokenized+lowercased"], indirect=True)
def test_evaluate_translation_writes_test_section_and_hypotheses(mt_run: Path) -> None:
    res = evaluate_run(mt_run, beam=3, device="cpu")
    metrics = json.loads((mt_run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["valid"] == {"best_loss": 9.9}  # training's part kept
    test = metrics["test"]
    assert "stale_key" not in test  # an earlier evaluation's leftovers are replaced, not merged
    assert test == json.loads(json.dumps(res))
    assert (test["checkpoint"], test["split"], test["n"], test["beam"]) == ("best", "test", 9, 3)
    assert test["hypotheses"] == "test.hyp.txt"

    hyps = (mt_run / "test.hyp.txt").read_text(encoding="utf-8").split("\n")[:-1]
    data = PreparedData(next((mt_run.parent / "data" / "toy").iterdir()))
    refs = data.references("test")
    assert len(hyps) == len(refs) == 9
    tokenized = "tokenized" in data.meta["text_preprocessing"]
    assert test["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], lowercase=tokenized).score)
    assert test["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert test["bleu_signature"].startswith("nrefs:1|case:" + ("lc" if tokenized else "mixed"))
    assert ("tok_bleu" in test) == tokenized
    assert len(test["bleu_stats"]) == 9 and all(len(s) == 10 for s in test["bleu_stats"])
    assert bleu_from_stats(test["bleu_stats"]) == pytest.approx(test["bleu"], abs=1e-9)

    # The file holds the decoded beam-search output of the checkpoint, sentence by sentence in corpus order.
    cfg = TrainConfig.from_dict(yaml.safe_load((mt_run / ".hydra" / "config.yaml").read_text()))
    model = build_model(cfg.model, "edp", cfg.kernel, "translation", data.vocab.size, data.vocab.pad).eval()
    model.load_state_dict(torch.load(mt_run / "checkpoints" / "best.pt", weights_only=True)["model"])
    v = data.vocab
    ids = SpecialIds(v.pad, v.unk, v.bos, v.eos)
    search = SearchConfig(beam=3, max_len_a=0.0, max_len_b=8)
    for i in (0, 4, 8):
        src = torch.tensor([[*data.tokens("test", "de")[i].tolist(), v.eos]])  # (1, S)
        assert hyps[i] == data.tokenizer.decode(beam_search(model, src, ids, search)[0][0].tokens)


def test_translate_batches_keep_corpus_order(mt_run: Path) -> None:
    data = PreparedData(next((mt_run.parent / "data" / "toy").iterdir()))
    torch.manual_seed(1)
    model = build_model(TrainConfig.from_dict(yaml.safe_load((mt_run / ".hydra" / "config.yaml").read_text())).model,
                        "edp", None, "translation", data.vocab.size, data.vocab.pad).eval()
    v = data.vocab
    ids, search = SpecialIds(v.pad, v.unk, v.bos, v.eos), SearchConfig(beam=2, max_len_b=6)
    sources = [data.tokens("test", "de")[i] for i in range(9)]
    one_by_one = translate(model, sources, ids, search, max_tokens=1, max_sentences=1)
    assert translate(model, sources, ids, search, max_tokens=40, max_sentences=4) == one_by_one
    batches = make_batches([5, 9, 2, 9, 4], max_tokens=20, max_sentences=3)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    assert batches[0] == [1, 3]  # longest first; a third sentence would pad to 3 × 9 > 20 tokens


@pytest.mark.parametrize("fractions", [[0.8, 0.1, 0.1], [0.9, 0.1]])
def test_evaluate_char_lm(tmp_path: Path, fractions: list[float], make_run: Any) -> None:
    text = "".join(random.Random(1).choice("abcde fgh\n") for _ in range(3000))
    (tmp_path / "lm.txt").write_text(text, encoding="utf-8")
    run = make_run(tmp_path, "chars", {"type": "lm", "source": "file", "path": "lm.txt", "split_fractions": fractions,
                                        "spm_model_type": "char", "vocab_size": 64}, block_size=32)
    res = evaluate_run(run, device="cpu", lm_stride=16)
    data = PreparedData(next((tmp_path / "data" / "chars").iterdir()))
    split = "test" if len(fractions) == 3 else "valid"  # no test split: fall back to valid, and say so
    stream = torch.from_numpy(data.stream(split).astype("int64"))
    assert res["split"] == split and res["n"] == len(stream) - 1
    assert res["ppl"] == pytest.approx(math.exp(res["loss"]))
    assert res["bpc"] == pytest.approx(res["loss"] / math.log(2))
    model = build_model(TrainConfig.from_dict(yaml.safe_load((run / ".hydra" / "config.yaml").read_text())).model,
                        "edp", None, "lm", data.vocab.size, data.vocab.pad).eval()
    model.load_state_dict(torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model"])
    assert res["loss"] == pytest.approx(lm_perplexity(model, stream, 32, 16)["loss"], rel=1e-9)
    assert 1.0 < res["ppl"] < 1.5 * data.vocab.size  # a random model is about uniform
    assert json.loads((run / "metrics.json").read_text())["test"]["bpc"] == pytest.approx(res["bpc"])
    assert not (run / "test.hyp.txt").exists()


def test_bad_input_changes_nothing(mt_run: Path, tmp_path: Path) -> None:
    before = (mt_run / "metrics.json").read_bytes()
    with pytest.raises(EvaluationError, match="not a run folder"):
        evaluate_run(tmp_path)
    with pytest.raises(EvaluationError, match="does not exist"):
        evaluate_run(tmp_path / "nope")
    with pytest.raises(EvaluationError, match="pick checkpoint=best"):
        evaluate_run(mt_run, checkpoint="avg")
    with pytest.raises(ConfigError, match="choose one of: best, avg, last"):  # a setting, not the run
        evaluate_run(mt_run, checkpoint="final")
    with pytest.raises(EvaluationError, match="split='dev'"):
        evaluate_run(mt_run, split="dev")
    with pytest.raises(ConfigError, match="beam"):
        evaluate_run(mt_run, beam=0)
    (mt_run / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EvaluationError, match="cannot be loaded"):
        evaluate_run(mt_run, checkpoint="last")
    assert (mt_run / "metrics.json").read_bytes() == before
    assert not (mt_run / "test.hyp.txt").exists()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "evaluate.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli(mt_run: Path, tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    ok = _cli(f"run_dir={mt_run}", "beam=2", "device=cpu", cwd=cwd)
    assert ok.returncode == 0, ok.stderr
    assert "BLEU" in ok.stdout and json.loads((mt_run / "metrics.json").read_text())["test"]["beam"] == 2
    assert list(cwd.iterdir()) == []  # no Hydra outputs/ folder, no log file
    cases = [((), "run_dir is missing", 2), ((f"run_dir={mt_run}", "checkpoint=avg"), "pick checkpoint=", 4),
             ((f"run_dir={mt_run}", "beam=five"), "beam", 2), ((f"run_dir={mt_run}", "lenpen=nan"), "finite", 2),
             ((f"run_dir={cwd / 'nope'}",), "not a folder", 2)]
    for args, hint, code in cases:
        bad = _cli(*args, cwd=cwd)
        assert bad.returncode == code, (args, bad.returncode, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1 and hint in bad.stderr, bad.stderr
        assert bad.stderr.startswith("evaluate: "), bad.stderr
    assert list(cwd.iterdir()) == []


# ---- other test sets (evaluate.py test_sets.<name>), translate.py and sample.py ------------------------------

@pytest.mark.parametrize("mt_run", ["raw", "moses-tokenized+lowercased"], indirect=True)
def test_raw_test_set_scores_like_the_prepared_split(mt_run: Path, tmp_path: Path) -> None:
    """The prepared test split, given again as raw files: encoded with the run's tokenizer it must give the same
    hypotheses and scores (BLEU, tok BLEU, stats), in its own section and hypothesis file."""
    raw = tmp_path / "raw"
    res = evaluate_run(mt_run, beam=2, device="cpu",
                       test_sets={"again": {"src": str(raw / "test.de"), "ref": str(raw / "test.en")}})
    again = res["test_sets"]["again"]
    for key in ("n", "bleu", "chrf", "bleu_stats", "bleu_signature"):
        assert again[key] == res[key], key
    assert ("tok_bleu" in again) == ("tok_bleu" in res) and again.get("tok_bleu") == res.get("tok_bleu")
    assert (mt_run / "test_set.again.hyp.txt").read_text() == (mt_run / "test.hyp.txt").read_text()
    m = json.loads((mt_run / "metrics.json").read_text())
    assert m["test_sets"]["again"]["bleu"] == res["bleu"] and m["test_sets"]["again"]["src"] == str(raw / "test.de")
    refs = (raw / "test.en").read_text().splitlines()
    hyps = (mt_run / "test_set.again.hyp.txt").read_text().splitlines()
    lowercase = "case:lc" in again["bleu_signature"]
    assert again["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], lowercase=lowercase).score)
    # Only the test set: the split's section stays as it was.
    before = m["test"]
    evaluate_run(mt_run, split=None, beam=1, device="cpu", test_sets={"again": {"src": str(raw / "test.de"),
                                                                                 "ref": str(raw / "test.en")}})
    m = json.loads((mt_run / "metrics.json").read_text())
    assert m["test"] == before and m["test_sets"]["again"]["beam"] == 1


def test_bad_test_sets_change_nothing(mt_run: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (tmp_path / "short.en").write_text("a\n", encoding="utf-8")
    before = (mt_run / "metrics.json").read_bytes()
    cases = [
        ({"x": {"src": str(raw / "test.de")}}, ConfigError, "needs src=<source file> and ref="),
        ({"x": {"src": str(raw / "test.de"), "ref": str(tmp_path / "short.en")}}, DataError, "aligned line by line"),
        ({"x": {"src": str(tmp_path / "nope.de"), "ref": str(raw / "test.en")}}, DataError, "not found"),
        ({"x": {"sacrebleu": "wmt99"}}, ConfigError, "not a sacreBLEU test set"),
        ({"x": {"srcc": "a"}}, ConfigError, "unknown option"),
        ({"x/y": {"src": "a", "ref": "b"}}, ConfigError, "letters, digits"),
    ]
    for sets, exc, hint in cases:
        with pytest.raises(exc, match=hint):
            evaluate_run(mt_run, device="cpu", test_sets=sets)  # the valid split would be written first
    assert (mt_run / "metrics.json").read_bytes() == before and not (mt_run / "test.hyp.txt").exists()


@pytest.mark.parametrize("mt_run", ["raw", "lowercased", "moses-tokenized+lowercased"], indirect=True)
def test_validation_bleu_follows_the_test_convention(mt_run: Path) -> None:
    """Validation BLEU (greedy, every valid sentence here) is the number evaluation computes on the valid split
    with beam 1: tokenized BLEU exactly when the corpus is tokenized *and* lowercased. (Before the task owned
    both, validation treated a corpus as tokenized when it was merely "lowercased".)"""
    from kernel_attention.evaluation.evaluate import load_run

    _, task, model, device = load_run(mt_run, device="cpu")
    valid = task.valid_metrics(model, device)
    res = evaluate_run(mt_run, split="valid", beam=1, device="cpu")
    tokenized = "tokenized" in json.loads((task.data.path / "meta.json").read_text())["text_preprocessing"]
    assert ("tok_bleu" in res) == tokenized
    assert valid["bleu"] == pytest.approx(res["tok_bleu"] if tokenized else res["bleu"], abs=1e-9)
