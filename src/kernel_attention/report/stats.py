"""Summary statistics and significance tests over seeds and test sentences.

- Spread over seeds is the *sample* standard deviation (ddof=1): the seeds are a sample of training runs.
- Across seeds: Welch's unequal-variances t-test (Welch 1947, "The generalization of 'Student's' problem when
  several different population variances are involved", Biometrika 34) via ``scipy.stats.ttest_ind``.
- On the test set (translation): paired bootstrap resampling of sentences (Koehn 2004) on ``test.bleu_stats``.
  Runs are paired by seed where both kernels have that seed, the leftover runs in seed order (any pairing is
  valid, because the test pairs *sentences*, and every run decodes the same test set); the paired runs' sentence
  statistics are then pooled (concatenated) into one corpus per kernel, so one p-value covers every seed pair
  instead of one test per seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from kernel_attention.evaluation.bleu import DEFAULT_SEED, paired_bootstrap
from kernel_attention.report.collect import KernelGroup, Run

ALPHA = 0.05


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof=1; NaN for n < 2) of per-seed values."""

    mean: float
    std: float
    n: int


def summarize(values: Sequence[float]) -> Summary:
    """Mean ± sample std (ddof=1) over seeds; ``Summary(nan, nan, 0)`` for no values."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return Summary(math.nan, math.nan, 0)
    std = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    return Summary(float(arr.mean()), std, int(arr.size))


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided Welch t-test p-value (Welch 1947) of the means of ``a`` and ``b``; None when it is undefined
    (fewer than 2 values on a side, or no variance on either side)."""
    if len(a) < 2 or len(b) < 2:
        return None
    if np.var(a) == 0 and np.var(b) == 0:
        # Both constant: the t statistic is 0/0. Equal constants are no evidence either way; scipy says NaN.
        return None
    p = float(sps.ttest_ind(np.asarray(a, float), np.asarray(b, float), equal_var=False).pvalue)
    return None if math.isnan(p) else p


@dataclass(frozen=True)
class Bootstrap:
    """Paired bootstrap of a kernel against the baseline on the pooled test sentences of ``pairs`` seed pairs."""

    p_value: float
    diff: float  # pooled BLEU(kernel) - pooled BLEU(baseline)
    pairs: int
    ci95: tuple[float, float]  # of the kernel's pooled BLEU


def pair_runs(a: Sequence[Run], b: Sequence[Run]) -> list[tuple[Run, Run]]:
    """Pair two kernels' runs: same seed first, then the leftovers in seed order. Only runs with BLEU stats of
    the same length (the same test set) are paired."""
    a = [r for r in a if r.bleu_stats]
    b = [r for r in b if r.bleu_stats]
    b_by_seed = {r.seed: r for r in b if r.seed is not None}
    pairs: list[tuple[Run, Run]] = []
    used_b: set[int] = set()
    rest_a: list[Run] = []
    for r in a:
        other = b_by_seed.get(r.seed) if r.seed is not None else None
        if other is not None:
            pairs.append((r, other))
            used_b.add(id(other))
        else:
            rest_a.append(r)
    rest_b = [r for r in b if id(r) not in used_b]
    pairs.extend(zip(rest_a, rest_b))
    return [(x, y) for x, y in pairs if len(x.bleu_stats or []) == len(y.bleu_stats or [])]


def bootstrap_vs(
    baseline: KernelGroup, other: KernelGroup, n_samples: int = 1000, seed: int = DEFAULT_SEED
) -> Bootstrap | None:
    """Pooled paired bootstrap (Koehn 2004) of ``other`` against ``baseline``; None without BLEU stats."""
    pairs = pair_runs(baseline.completed, other.completed)
    if not pairs:
        return None
    stats_a = [row for x, _ in pairs for row in (x.bleu_stats or [])]
    stats_b = [row for _, y in pairs for row in (y.bleu_stats or [])]
    res = paired_bootstrap(stats_a, stats_b, n_samples=n_samples, seed=seed)
    return Bootstrap(p_value=res["p_value"], diff=res["diff"], pairs=len(pairs), ci95=res["ci95_b"])


def better(a: float, b: float, higher_is_better: bool) -> bool:
    """Whether value ``a`` is strictly better than ``b`` for this metric's direction."""
    return a > b if higher_is_better else a < b
