"""BLEU utilities: agreement with sacreBLEU, and the behaviour of the paired bootstrap (Koehn 2004)."""

from __future__ import annotations

import random

import pytest
import sacrebleu
from sacrebleu.metrics import BLEU
from sacrebleu.significance import PairedTest

from kernel_attention.evaluation.bleu import (
    DEFAULT_SEED,
    bleu_from_stats,
    bleu_stats,
    corpus_scores,
    paired_bootstrap,
)

REFS = [
    "The cat sat on the mat.",
    "A man is riding a bicycle down the street.",
    "Two dogs are playing in the snow, aren't they?",
    "She reads a book in the garden.",
    "The children are laughing at the clown.",
    "It rained all day in Paris.",
]
HYPS = [
    "The cat sat on a mat.",
    "A man rides a bike down the road.",
    "Two dogs play in the snow.",
    "She is reading a book in the garden.",
    "Children laugh at a clown.",
    "It was raining the whole day in Paris.",
]


def _vocab_corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(60)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) for _ in range(n)]


def _corrupt(sents: list[str], p: float, seed: int) -> list[str]:
    """Replace each word with a foreign one with probability p (p=0: identical)."""
    rng = random.Random(seed)
    return [" ".join(w if rng.random() >= p else "zz" for w in s.split()) for s in sents]


def test_reference_against_itself_is_100() -> None:
    stats = bleu_stats(REFS, REFS)
    assert bleu_from_stats(stats) == pytest.approx(100.0)
    assert corpus_scores(REFS, REFS, tokenized_lowercased=False)["bleu"] == pytest.approx(100.0)


def test_stats_layout_on_a_hand_counted_sentence() -> None:
    # hyp "a b c d" vs ref "a b c e": 4 hyp tokens, 4 ref tokens; matches 3/4, 2/3, 1/2, 0/1.
    assert bleu_stats(["a b c d"], ["a b c e"]) == [[4, 4, 3, 2, 1, 0, 4, 3, 2, 1]]


@pytest.mark.parametrize(("tokenize", "lowercase"), [("13a", False), ("13a", True), ("none", False), ("intl", True)])
def test_stats_match_sacrebleu_corpus_bleu_exactly(tokenize: str, lowercase: bool) -> None:
    ref_score = sacrebleu.corpus_bleu(HYPS, [REFS], tokenize=tokenize, lowercase=lowercase).score
    stats = bleu_stats(HYPS, REFS, tokenize=tokenize, lowercase=lowercase)
    assert bleu_from_stats(stats) == ref_score  # exact: same counts, same formula
    assert 0.0 < ref_score < 100.0
    # ... and the same per-sentence statistics as sacreBLEU's own (private) corpus extraction.
    metric = BLEU(tokenize=tokenize, lowercase=lowercase)
    assert stats == metric._extract_corpus_statistics(HYPS, [REFS])


def test_lowercase_matters_for_mixed_case() -> None:
    hyps = [h.upper() for h in HYPS]
    assert bleu_from_stats(bleu_stats(hyps, REFS)) < bleu_from_stats(bleu_stats(hyps, REFS, lowercase=True))


def test_misaligned_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="aligned"):
        bleu_stats(HYPS, REFS[:-1])
    with pytest.raises(ValueError, match="stats"):
        bleu_from_stats([[1, 2, 3]])


def test_corpus_scores_fields() -> None:
    out = corpus_scores(HYPS, REFS, tokenized_lowercased=False)
    assert out["bleu"] == sacrebleu.corpus_bleu(HYPS, [REFS]).score
    assert out["chrf"] == sacrebleu.corpus_chrf(HYPS, [REFS]).score
    assert "tok:13a" in out["bleu_signature"] and "case:mixed" in out["bleu_signature"]
    assert "tok_bleu" not in out


def test_corpus_scores_tokenized_lowercased_adds_tok_bleu() -> None:
    refs = ["a well @-@ known cat , which was black , sat on the mat .", "it &apos;s raining in paris ."]
    hyps = ["a well @-@ known cat , which was grey , sat on a mat .", "it &apos;s raining in london ."]
    out = corpus_scores(hyps, refs, tokenized_lowercased=True)
    assert out["tok_bleu"] == sacrebleu.corpus_bleu(hyps, [refs], tokenize="none").score
    assert "case:lc" in out["bleu_signature"]
    # 13a re-splits Moses' escapes ("@-@", "&apos;"): the two numbers are not the same quantity.
    assert out["tok_bleu"] != out["bleu"]


def test_paired_bootstrap_identical_systems_not_significant() -> None:
    refs = _vocab_corpus(200, 0)
    stats = bleu_stats(_corrupt(refs, 0.3, 1), refs)
    res = paired_bootstrap(stats, stats, n_samples=300, seed=1)
    assert res["diff"] == 0.0
    assert res["p_value"] == 1.0
    assert res["mean_a"] == res["mean_b"]


def test_paired_bootstrap_much_better_system_is_significant() -> None:
    refs = _vocab_corpus(200, 0)
    good = bleu_stats(_corrupt(refs, 0.1, 1), refs)
    bad = bleu_stats(_corrupt(refs, 0.5, 2), refs)
    res = paired_bootstrap(bad, good, n_samples=300, seed=1)
    assert res["diff"] > 20
    assert res["p_value"] < 0.05
    lo_a, hi_a = res["ci95_a"]
    lo_b, hi_b = res["ci95_b"]
    assert lo_a < res["bleu_a"] < hi_a and lo_b < res["bleu_b"] < hi_b
    assert hi_a < lo_b  # the 95% intervals do not even overlap


def test_paired_bootstrap_is_deterministic_given_seed() -> None:
    refs = _vocab_corpus(60, 3)
    a = bleu_stats(_corrupt(refs, 0.3, 4), refs)
    b = bleu_stats(_corrupt(refs, 0.32, 5), refs)
    r1 = paired_bootstrap(a, b, n_samples=200, seed=7)
    assert r1 == paired_bootstrap(a, b, n_samples=200, seed=7)
    assert r1["mean_b"] != paired_bootstrap(a, b, n_samples=200, seed=8)["mean_b"]


def test_paired_bootstrap_matches_sacrebleu_paired_bs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same seed, same resamples: the p-value and the system's mean/CI equal `sacrebleu --paired-bs`."""
    monkeypatch.setenv("SACREBLEU_SEED", str(DEFAULT_SEED))
    refs = _vocab_corpus(80, 6)
    hyp_a, hyp_b = _corrupt(refs, 0.3, 7), _corrupt(refs, 0.35, 8)
    test = PairedTest(
        [("baseline", hyp_a), ("b", hyp_b)],
        {"BLEU": BLEU(references=[refs])},
        references=None,
        test_type="bs",
        n_samples=200,
    )
    _, results = test()
    expected = results["BLEU"][1]
    ours = paired_bootstrap(bleu_stats(hyp_a, refs), bleu_stats(hyp_b, refs), n_samples=200, seed=DEFAULT_SEED)
    assert ours["bleu_b"] == pytest.approx(expected.score)
    assert ours["p_value"] == pytest.approx(expected.p_value)
    assert ours["mean_b"] == pytest.approx(expected.mean, abs=1e-4)
    assert ours["ci_b"] == pytest.approx(expected.ci, abs=1e-4)


def test_paired_bootstrap_rejects_different_test_sets() -> None:
    a = bleu_stats(HYPS, REFS)
    with pytest.raises(ValueError, match="same test sentences"):
        paired_bootstrap(a, a[:-1])


def test_paired_bootstrap_equally_good_systems_not_significant() -> None:
    """Different hypotheses, same noise level: a tie, not a win."""
    refs = _vocab_corpus(200, 0)
    a = bleu_stats(_corrupt(refs, 0.3, 11), refs)
    b = bleu_stats(_corrupt(refs, 0.3, 12), refs)
    res = paired_bootstrap(a, b, n_samples=300, seed=1)
    assert a != b and abs(res["diff"]) < 2
    assert res["p_value"] > 0.05
