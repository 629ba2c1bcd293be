"""The verdict: does the infinite-feature-dimension group beat the finite one on each task? Computed from the
table's numbers only, never written by hand.

Per task the two groups are compared in two ways:

- best vs best (the decision): the best infinite-dimensional kernel against the best finite one (by mean over
  seeds). This is the study's question, "can some finite kernel match softmax?"; one bad finite kernel must not
  sink its whole group. Confidence: Welch t-test (Welch 1947) over the two kernels' per-seed results, plus, for
  translation, the pooled paired bootstrap on test sentences (Koehn 2004), which covers test-set noise only.
- group means (context): the mean of each group's kernel means, with a Welch test over all per-seed results of
  each group.

A win needs at least 2 completed seeds on both best kernels and Welch p < 0.05; otherwise the text says
"inconclusive" (with the reason) or "no significant difference".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernel_attention.evaluation.bleu import DEFAULT_SEED
from kernel_attention.report.stats import ALPHA, Bootstrap, better, bootstrap_vs, welch_p
from kernel_attention.report.tables import Row, TaskTable, fmt_value, p_eq

GROUPS = ("infinite", "finite")


@dataclass
class TaskVerdict:
    task: str
    outcome: str  # "infinite" | "finite" | "no significant difference" | "inconclusive" | "no comparison"
    text: str
    best: dict[str, Row | None]
    advantage: float | None = None  # best infinite minus best finite, signed so that > 0 = infinite better
    welch_best: float | None = None
    bootstrap_best: Bootstrap | None = None
    group_means: dict[str, float] | None = None
    welch_groups: float | None = None


def _best(rows: list[Row], higher_is_better: bool) -> Row | None:
    best = None
    for r in rows:
        if r.summary.n and (best is None or better(r.summary.mean, best.summary.mean, higher_is_better)):
            best = r
    return best


def _describe(r: Row, digits: int = 2) -> str:
    return f"{r.kernel} {fmt_value(r.summary, digits=digits)} (n={r.summary.n})"


def task_verdict(t: TaskTable, n_samples: int = 1000, seed: int = DEFAULT_SEED) -> TaskVerdict:
    """Compare the infinite and finite feature-dimension groups on one task (see the module docstring)."""
    hib = t.higher_is_better
    by_group = {g: [r for r in t.rows if r.group == g and r.summary.n > 0] for g in GROUPS}
    best = {g: _best(by_group[g], hib) for g in GROUPS}
    head = f"**{t.task}** ({t.metric_header})"
    missing = [g for g in GROUPS if best[g] is None]
    if missing:
        text = f"{head}: no comparison: no completed {' or '.join(missing)}-feature-dimension kernel."
        return TaskVerdict(t.task, "no comparison", text, best)

    bi, bf = best["infinite"], best["finite"]
    assert bi is not None and bf is not None
    sign = 1.0 if hib else -1.0
    adv = sign * (bi.summary.mean - bf.summary.mean)
    leader = "infinite" if adv > 0 else "finite"
    p_best = welch_p(bi.source.values, bf.source.values)
    boot = bootstrap_vs(bf.source, bi.source, n_samples=n_samples, seed=seed)

    means = {g: float(np.mean([r.summary.mean for r in by_group[g]])) for g in GROUPS}
    pooled = {g: [v for r in by_group[g] for v in r.source.values] for g in GROUPS}
    p_groups = welch_p(pooled["infinite"], pooled["finite"])

    n_min = min(bi.summary.n, bf.summary.n)
    boot_txt = f"; paired bootstrap {p_eq(boot.p_value)} over {boot.pairs} seed pair(s)" if boot else ""
    if adv == 0:
        outcome, lead = "no significant difference", "a tie"
    elif n_min < 2:
        smallest = bi if bi.summary.n <= bf.summary.n else bf
        outcome = "inconclusive"
        lead = f"{leader} ahead, but inconclusive: n={n_min} seed ({smallest.kernel})"
    elif p_best is None:
        outcome, lead = "inconclusive", f"{leader} ahead, but inconclusive: no variance across seeds to test"
    elif p_best < ALPHA:
        outcome, lead = leader, f"{leader} feature dimension wins"
    else:
        outcome, lead = "no significant difference", f"no significant difference ({leader} ahead)"
    unit, dg = t.unit, t.digits
    text = (
        f"{head}: {lead}. Best infinite {_describe(bi, dg)} vs best finite {_describe(bf, dg)}: "
        f"{leader} better by {abs(adv):.{dg}f} {unit} (Welch {p_eq(p_best)}{boot_txt}). "
        f"Group means over kernels: infinite {means['infinite']:.{dg}f} ({len(by_group['infinite'])} kernel(s)) vs "
        f"finite {means['finite']:.{dg}f} ({len(by_group['finite'])} kernel(s)), Welch over per-seed results "
        f"({len(pooled['infinite'])} vs {len(pooled['finite'])}) {p_eq(p_groups)}."
    )
    return TaskVerdict(t.task, outcome, text, best, adv, p_best, boot, means, p_groups)


def overall(verdicts: list[TaskVerdict]) -> str:
    """One line counting the per-task outcomes."""
    if not verdicts:
        return "No task has completed runs."
    counts: dict[str, list[str]] = {}
    for v in verdicts:
        counts.setdefault(v.outcome, []).append(v.task)
    order = ["infinite", "finite", "no significant difference", "inconclusive", "no comparison"]
    names = {"infinite": "infinite wins", "finite": "finite wins"}
    parts = [f"{names.get(k, k)}: {len(counts[k])} ({', '.join(counts[k])})" for k in order if k in counts]
    return f"Across {len(verdicts)} task(s): " + "; ".join(parts) + "."
