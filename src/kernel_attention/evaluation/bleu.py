"""BLEU scoring shared by evaluation (which writes ``test.bleu_stats``) and the report (which tests on them).

Everything goes through sacreBLEU (Post 2018) so the numbers match ``sacrebleu.corpus_bleu`` exactly:

- ``bleu_stats``: per-sentence sufficient statistics ``[hyp_len, ref_len, m1..m4, t1..t4]`` (matched and total
  n-grams of orders 1-4), the order of ``test.bleu_stats`` in docs/contracts.md §3. Summing them over any subset of
  sentences and calling ``bleu_from_stats`` gives the corpus BLEU of that subset, which is all that paired
  bootstrap needs: the report never has to re-read hypotheses.
- ``paired_bootstrap``: paired bootstrap resampling (Koehn 2004, "Statistical Significance Tests for Machine
  Translation Evaluation", EMNLP) exactly as sacreBLEU's ``--paired-bs`` implements it.
- ``corpus_scores``: the scores evaluation writes into metrics.json (BLEU + signature, chrF, and tokenized BLEU for
  corpora that arrive tokenized and lowercased, such as the fairseq IWSLT'14 split).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import estimate_ci

MAX_ORDER = 4
N_STATS = 2 + 2 * MAX_ORDER
# sacreBLEU's default seed for its significance tests (SACREBLEU_SEED): same seed, same resamples, same p.
DEFAULT_SEED = 12345


def _check_pair(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references; they must be aligned line by line")


def bleu_stats(
    hyps: Sequence[str], refs: Sequence[str], tokenize: str = "13a", lowercase: bool = False
) -> list[list[int]]:
    """Per-sentence BLEU sufficient statistics ``[hyp_len, ref_len, m1, m2, m3, m4, t1, t2, t3, t4]``.

    Uses sacreBLEU's own preprocessing (lowercasing, ``tokenize``) and n-gram extraction through its public
    ``BLEU.sentence_score``; the counts do not depend on smoothing, so they sum to the corpus statistics of
    ``sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize, lowercase=lowercase)``. One reference per line.
    """
    _check_pair(hyps, refs)
    # effective_order only silences sacreBLEU's sentence-level warning; it does not change the counts.
    metric = BLEU(tokenize=tokenize, lowercase=lowercase, effective_order=True)
    out: list[list[int]] = []
    for hyp, ref in zip(hyps, refs):
        s = metric.sentence_score(hyp, [ref])
        out.append([int(s.sys_len), int(s.ref_len), *map(int, s.counts), *map(int, s.totals)])
    return out


def _score(summed: Sequence[float]) -> float:
    """Corpus BLEU (sacreBLEU defaults: exp smoothing, order 4) from already summed statistics."""
    correct = [float(x) for x in summed[2 : 2 + MAX_ORDER]]  # copies: compute_bleu mutates them for add-k
    total = [float(x) for x in summed[2 + MAX_ORDER : N_STATS]]
    return float(
        BLEU.compute_bleu(
            correct=correct, total=total, sys_len=int(summed[0]), ref_len=int(summed[1]), smooth_method="exp"
        ).score
    )


def _as_array(stats: Sequence[Sequence[float]] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(stats, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != N_STATS or arr.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty (n, {N_STATS}) list of BLEU stats, got shape {arr.shape}")
    return arr


def bleu_from_stats(stats: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Corpus BLEU from per-sentence statistics (sum them, then sacreBLEU's formula): equals
    ``sacrebleu.corpus_bleu`` on the sentences the statistics came from."""
    return _score(_as_array(stats, "stats").sum(axis=0))


def _resampled_scores(stats: np.ndarray, counts: np.ndarray) -> np.ndarray:
    # counts[b, i] = how often sentence i was drawn in resample b, so counts @ stats are the summed statistics
    # of every resample at once; the values are integers, so float64 sums are exact and match sacreBLEU's.
    summed = counts @ stats  # (n_samples, N_STATS)
    return np.array([_score(row) for row in summed])


def paired_bootstrap(
    stats_a: Sequence[Sequence[float]] | np.ndarray,
    stats_b: Sequence[Sequence[float]] | np.ndarray,
    n_samples: int = 1000,
    seed: int | None = DEFAULT_SEED,
) -> dict[str, Any]:
    """Paired bootstrap resampling test of system B against baseline A on the same test sentences.

    Koehn (2004) as implemented by sacreBLEU (``_paired_bs_test``, after Moses'
    ``bootstrap-hypothesis-difference-significance.pl``): draw ``n_samples`` resamples of the sentence indices
    (the same indices for both systems, hence *paired*), score both systems on each, and take as p-value the
    share of resamples whose centred absolute difference ``|B - A| - mean|B - A|`` reaches the observed
    ``|B - A|`` (with the +1 correction), i.e. a two-sided test of "no difference". Same ``seed`` (numpy
    ``default_rng``), same p-value as ``sacrebleu --paired-bs`` with ``SACREBLEU_SEED=seed``, except for
    identical systems (p = 1 here, see the comment in the code).

    Returns ``{"bleu_a", "bleu_b", "diff" (B - A), "p_value", "mean_a", "ci_a", "mean_b", "ci_b",
    "ci95_a": (lo, hi), "ci95_b": (lo, hi), "n_samples", "n", "seed"}``; ``ci_*`` is sacreBLEU's half-width.
    """
    a = _as_array(stats_a, "stats_a")
    b = _as_array(stats_b, "stats_b")
    if a.shape != b.shape:
        raise ValueError(f"paired test needs the same test sentences: {a.shape[0]} vs {b.shape[0]} rows")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    n = a.shape[0]
    rng = np.random.default_rng(seed)
    # Same draw as sacreBLEU: one (n_samples, n) matrix of indices, shared by both systems.
    idxs = rng.choice(n, size=(n_samples, n), replace=True)
    counts = np.zeros((n_samples, n), dtype=np.float64)
    np.add.at(counts, (np.arange(n_samples)[:, None], idxs), 1.0)
    scores_a = _resampled_scores(a, counts)
    scores_b = _resampled_scores(b, counts)

    bleu_a, bleu_b = _score(a.sum(axis=0)), _score(b.sum(axis=0))
    observed = abs(bleu_b - bleu_a)
    sample_diffs = np.abs(scores_b - scores_a)
    centred = sample_diffs - sample_diffs.mean()
    # sacreBLEU counts `centred > observed`; we count `>=`. The two agree whenever the systems differ (ties of
    # float differences do not happen), but for identical systems every difference is 0 and `>` would give
    # p = 1/(n_samples + 1), calling a system significantly different from itself; `>=` gives p = 1.
    p_value = min(1.0, (int(np.sum(centred >= observed)) + 1) / (n_samples + 1))

    mean_a, ci_a = estimate_ci(scores_a)
    mean_b, ci_b = estimate_ci(scores_b)
    return {
        "bleu_a": bleu_a,
        "bleu_b": bleu_b,
        "diff": bleu_b - bleu_a,
        "p_value": float(p_value),
        "mean_a": float(mean_a),
        "ci_a": float(ci_a),
        "mean_b": float(mean_b),
        "ci_b": float(ci_b),
        "ci95_a": (float(mean_a - ci_a), float(mean_a + ci_a)),
        "ci95_b": (float(mean_b - ci_b), float(mean_b + ci_b)),
        "n_samples": n_samples,
        "n": n,
        "seed": seed,
    }


def is_tokenized_lowercased(text_preprocessing: str) -> bool:
    """Whether a corpus's ``text_preprocessing`` note (meta.json, from ``task.data.text_preprocessing``) says it
    came Moses-tokenized *and* lowercased (fairseq's IWSLT'14: ``moses-tokenized+lowercased``): then hypotheses
    and references are that text and tokenized BLEU is meaningful. Validation and test both ask this one rule."""
    prep = text_preprocessing.lower()
    return "tokenized" in prep and "lowercased" in prep


def corpus_scores(hyps: Sequence[str], refs: Sequence[str], tokenized_lowercased: bool) -> dict[str, Any]:
    """Corpus scores for metrics.json: ``bleu`` + ``bleu_signature`` (sacreBLEU, 13a tokenizer), ``chrf``, and,
    when ``tokenized_lowercased`` (the corpus came Moses-tokenized and lowercased, e.g. fairseq's IWSLT'14 split),
    ``tok_bleu``: BLEU with ``tokenize="none"`` on that tokenized text, the number fairseq papers report.

    ``hyps`` must be in the same form as ``refs`` (the ``{split}.{tgt}.ref.txt`` file). For a lowercased corpus
    BLEU is computed with ``lowercase=True`` so the signature says ``case:lc`` honestly (the text is lowercase
    anyway, so the number is unchanged)."""
    _check_pair(hyps, refs)
    hyps, refs = list(hyps), list(refs)
    bleu = BLEU(tokenize="13a", lowercase=tokenized_lowercased)
    out: dict[str, Any] = {
        "bleu": float(bleu.corpus_score(hyps, [refs]).score),
        "bleu_signature": str(bleu.get_signature()),
        "chrf": float(CHRF().corpus_score(hyps, [refs]).score),
    }
    if tokenized_lowercased:
        # force=True: the text is tokenized on purpose, so sacreBLEU's "forgot to detokenize?" warning is noise.
        tok = BLEU(tokenize="none", lowercase=True, force=True)
        out["tok_bleu"] = float(tok.corpus_score(hyps, [refs]).score)
        out["tok_bleu_signature"] = str(tok.get_signature())
    return out
