#!/usr/bin/env python
"""Is the report's "higher effective rank goes with a better score" carried by a few kernels that fail, and does it
hold within a kernel across seeds? Reads the runs as the report's diagnostics section does (``diagnostics.collect``
over ``group_runs``: one group per kernel setting, so a parameter sweep's settings stay apart), each run's effective
rank of A (means over roles, layers and heads) and its test score, and prints Spearman's ρ with its p value:

    python experiments/kernel_diagnostics/erank_robustness.py <runs folder> [--drop rff,intersection]

Scores are oriented so that higher is better (bpc and ppl are negated), so ρ > 0 always means "higher rank, better".
Lines:
- over all runs, and over the kernel means (one point per kernel setting: the seeds of a kernel are not independent
  evidence about kernels, so this is the test of a between-kernel association);
- the same two without the kernels named in --drop (kernels that do not train can decide the sign on their own);
- within kernels, on the kept kernels: each run's erank and score minus its kernel's mean over seeds, pooled (does a
  seed whose attention is higher-rank also score higher than its siblings?). The deviations of one kernel sum to
  zero, so n runs of k kernels carry n − k degrees of freedom, not n: read its p value as optimistic.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from kernel_attention.report import collect_runs, group_runs
from kernel_attention.report import diagnostics as diag


def load(folder: Path) -> tuple[str, list[tuple[str, float, float]]]:
    """(task, [(kernel setting label, erank of A, oriented test score)]): the report's own diagnostics collection
    (one run per kernel setting and seed, labelled as in the table), runs with both numbers only."""
    found = diag.collect(group_runs(collect_runs(folder).runs))
    if len(found) != 1:
        raise SystemExit(f"erank_robustness: {folder} holds diagnostics of {len(found)} tasks "
                         f"({', '.join(found) or 'none'}); pass the runs of one task")  # fmt: skip
    (task, druns), = found.items()
    out = [(d.label, float(d.summary["erank_A"]), d.run.value if d.run.higher_is_better else -d.run.value)
           for d in druns if d.run.value is not None and d.summary.get("erank_A") is not None]  # fmt: skip
    return task, out


def line(name: str, x: np.ndarray, y: np.ndarray) -> str:
    rho, p = stats.spearmanr(x, y)
    return f"{name}: n = {len(x)}, Spearman ρ = {rho:+.2f} (p = {p:.3g})"


def means(kernels: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ks = sorted(set(kernels))
    return (np.array([x[kernels == k].mean() for k in ks]),  # (K,) mean erank per kernel setting
            np.array([y[kernels == k].mean() for k in ks]))  # (K,) mean score per kernel setting  # fmt: skip


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--drop", default="", help="comma-separated kernel labels to leave out (as the report names them)")
    args = ap.parse_args(argv)
    task, runs = load(args.folder)
    if len(runs) < 4:
        print(f"erank_robustness: only {len(runs)} run(s) with diagnostics and a test score under {args.folder}; "
              "need ≥ 4", file=sys.stderr)  # fmt: skip
        return 2
    kernels = np.array([k for k, _, _ in runs])  # (R,) kernel setting per run
    x = np.array([e for _, e, _ in runs])  # (R,) erank of A per run
    y = np.array([s for _, _, s in runs])  # (R,) oriented test score per run
    drop = [k for k in args.drop.split(",") if k]
    unknown = sorted(set(drop) - set(kernels))
    if unknown:
        print(f"erank_robustness: --drop names no kernel of {task}: {', '.join(unknown)}; choose from "
              f"{', '.join(sorted(set(kernels)))}", file=sys.stderr)  # fmt: skip
        return 2
    print(f"task {task}")
    print(line("all runs", x, y))
    print(line("kernel means", *means(kernels, x, y)))
    if drop:
        keep = ~np.isin(kernels, drop)
        kernels, x, y = kernels[keep], x[keep], y[keep]
        print(line(f"runs without {', '.join(drop)}", x, y))
        print(line(f"kernel means without {', '.join(drop)}", *means(kernels, x, y)))
    dx, dy = [], []  # deviations from the kernel's own seed mean, pooled over kernels with ≥ 2 seeds
    for k in sorted(set(kernels)):
        sel = kernels == k
        if sel.sum() >= 2:
            dx += list(x[sel] - x[sel].mean())
            dy += list(y[sel] - y[sel].mean())
    if len(dx) >= 4:
        print(line("within kernels (deviation from the kernel's seed mean)", np.array(dx), np.array(dy)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
