#!/usr/bin/env python
"""Is the report's "higher effective rank goes with a better score" carried by a few kernels that fail, or does it
hold among the kernels that train, and within a kernel across seeds? Reads each run's diagnostics.json (erank of A,
means over roles, layers and heads) and its metrics.json (test score), and prints Spearman's ρ with its p value:

    python experiments/kernel_diagnostics/erank_robustness.py <runs folder> [--drop rff,intersection]

- over all runs, and without the kernels named in --drop (kernels that do not train would otherwise decide the
  sign on their own);
- within kernels: each run's erank and score minus its kernel's mean over seeds, pooled (does a seed whose
  attention is higher-rank also score higher than its siblings?).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats


def load(folder: Path) -> list[tuple[str, float, float]]:
    """(kernel, erank of A, test score) per run folder that has both files."""
    out = []
    for diag in sorted(folder.rglob("diagnostics.json")):
        metrics = diag.parent / "metrics.json"
        if not metrics.is_file():
            continue
        d = json.loads(diag.read_text(encoding="utf-8"))
        m = json.loads(metrics.read_text(encoding="utf-8"))
        test = m.get("test") or {}
        score = test.get("bleu", test.get("bpc", test.get("ppl")))
        erank = d["summary"]["all"].get("erank_A")
        if score is not None and erank is not None:
            out.append((d["run"]["kernel"], float(erank), float(score)))
    return out


def line(name: str, x: np.ndarray, y: np.ndarray) -> str:
    rho, p = stats.spearmanr(x, y)
    return f"{name}: n = {len(x)}, Spearman ρ = {rho:+.2f} (p = {p:.3g})"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--drop", default="", help="comma-separated kernels to leave out of the second line")
    args = ap.parse_args(argv)
    runs = load(args.folder)
    if len(runs) < 4:
        print(f"erank_robustness: only {len(runs)} run(s) with diagnostics and a test score under {args.folder}; "
              "need ≥ 4", file=sys.stderr)  # fmt: skip
        return 2
    kernels = np.array([k for k, _, _ in runs])
    x = np.array([e for _, e, _ in runs])  # (R,) erank of A per run
    y = np.array([s for _, _, s in runs])  # (R,) test score per run
    print(line("all runs", x, y))
    drop = [k for k in args.drop.split(",") if k]
    if drop:
        keep = ~np.isin(kernels, drop)
        print(line(f"without {', '.join(drop)}", x[keep], y[keep]))
        kernels, x, y = kernels[keep], x[keep], y[keep]
    # Within kernels: deviations from the kernel's own mean over seeds, pooled over kernels with ≥ 2 seeds.
    dx, dy = [], []
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
