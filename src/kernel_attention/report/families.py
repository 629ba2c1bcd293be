"""Feature-dimension curves: one kernel family (a registered kernel name) run at several parameter settings —
``random_features`` at m = 8 … 2048, ``polynomial`` at p = 1 … 4 — read as a curve of the metric against the
feature dimension, next to the infinite-dimensional kernels of the same task. This is the question of issue 16
asked directly: does a finite family approach ``edp`` as its dimension grows?

A family is every row of a task table that shares a kernel name, when at least two of them have different finite
feature dimensions (rows the table already keeps apart by their identity parameters). Nothing here recomputes a
statistic: each point is its row's mean ± sample std over seeds, as in the main table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from matplotlib.figure import Figure

from kernel_attention.report.plots import infinity_axis, infinity_x, table_colours
from kernel_attention.report.style import BASELINE_MARKER, GROUP_MARKERS, legend_outside
from kernel_attention.report.tables import Row, TaskTable


@dataclass
class Family:
    name: str
    rows: list[Row]  # by feature dimension, then label


def _dim(r: Row) -> float:
    return r.source.feature_dim if r.source.feature_dim is not None else math.nan


def families(t: TaskTable) -> list[Family]:
    """The task's kernel families with at least two distinct finite feature dimensions, by name."""
    by_name: dict[str, list[Row]] = {}
    for r in t.rows:
        by_name.setdefault(r.source.name, []).append(r)
    out = []
    for name, rows in sorted(by_name.items()):
        dims = {_dim(r) for r in rows if math.isfinite(_dim(r))}
        if len(dims) >= 2:
            out.append(Family(name, sorted(rows, key=lambda r: (_dim(r), r.kernel))))
    return out


def infinite_rows(t: TaskTable) -> list[Row]:
    return [r for r in t.rows if r.source.feature_dim is not None and math.isinf(r.source.feature_dim)]


def _cell(r: Row, digits: int = 2) -> str:
    if r.summary.n == 0:
        return "—"
    std = "" if math.isnan(r.summary.std) else f" ± {r.summary.std:.{digits}f}"
    return f"{r.summary.mean:.{digits}f}{std}"


def families_markdown(t: TaskTable) -> str:
    """A table per family (setting, feature dimension, mean ± std, n, diverged, gap to the baseline), then the
    infinite-dimensional references; empty when the task has no family."""
    fams = families(t)
    if not fams:
        return ""
    base = t.baseline
    gap_head = f"Δ vs {base.kernel}" if base is not None and base.summary.n else "Δ vs baseline"
    parts = []
    for f in fams:
        lines = [f"**{f.name}**\n", f"| setting | feature dim | {t.metric_header} | n | diverged | {gap_head} |",
                 "|---|---:|---:|---:|---:|---:|"]
        for r in f.rows:
            params = ", ".join(f"{k}={v}" for k, v in r.source.params.items()) or "default"
            dim = "∞" if math.isinf(_dim(r)) else ("?" if math.isnan(_dim(r)) else f"{_dim(r):,.0f}")
            gap = (f"{r.summary.mean - base.summary.mean:+.{t.digits}f}" if base is not None and base.summary.n
                   and r.summary.n else "—")  # fmt: skip
            lines.append(f"| {params} | {dim} | {_cell(r, t.digits)} | {r.summary.n} | {r.diverged} | {gap} |")
        parts.append("\n".join(lines) + "\n")
    refs = infinite_rows(t)
    if refs:
        cells = [f"{r.kernel} {_cell(r, t.digits)} (n={r.summary.n})" for r in refs]
        parts.append("Infinite-dimensional references: " + "; ".join(cells) + ".\n")
    return "\n".join(parts)


def family_curves(t: TaskTable) -> Figure:
    """Metric against feature dimension (log x, "∞" at the end), one line with error bars per family; every
    infinite-dimensional kernel a point at ∞ and a horizontal line (its mean) with a band (± std) — the level a
    family would have to reach."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    fams = families(t)
    refs = [r for r in infinite_rows(t) if r.summary.n > 0]
    # The report's kernel colours, so a reference level and a family look as in the other figures: a family takes
    # the colour of its row named like it, else of its largest dimension.
    table = table_colours(t)
    colours = {r.kernel: table[r.kernel] for r in refs}
    for f in fams:
        named = [r for r in f.rows if r.kernel == f.name]
        colours[f.name] = table[(named or f.rows)[-1].kernel]
    for f in fams:
        pts = [r for r in f.rows if r.summary.n > 0 and math.isfinite(_dim(r))]
        if not pts:
            continue
        xs = [_dim(r) for r in pts]
        ys = [r.summary.mean for r in pts]
        es = [0.0 if math.isnan(r.summary.std) else r.summary.std for r in pts]
        ax.errorbar(xs, ys, yerr=es, fmt="o-", color=colours[f.name], capsize=3, label=f.name)
        for r, x, y in zip(pts, xs, ys):
            if r.diverged:
                ax.annotate(f"{r.diverged} diverged", (x, y), textcoords="offset points", xytext=(4, -10),
                            fontsize=7)  # fmt: skip
    dims = [_dim(r) for f in fams for r in f.rows if r.summary.n > 0 and math.isfinite(_dim(r))]
    right = max(dims) if dims else 1.0  # the largest finite dimension drawn
    x_inf = infinity_x(right)
    for j, r in enumerate(refs):
        colour = colours[r.kernel]
        ax.axhline(r.summary.mean, color=colour, ls="--", lw=1.2, label=f"{r.kernel} (∞)")
        std = 0.0 if math.isnan(r.summary.std) else r.summary.std
        if std:
            ax.axhspan(r.summary.mean - std, r.summary.mean + std, color=colour, alpha=0.1)
        # The same level as a point at "∞" on the axis (spread a little so several stay visible), as the issue's
        # "log axis, ∞ at the end" asks; unlabelled, so the legend names each kernel once.
        if fams:  # without a family there is no ∞ tick to stand at (a point at x = 100 would read as finite)
            ax.errorbar([x_inf * 1.25**j], [r.summary.mean], yerr=[std], capsize=3, color=colour,
                        fmt=BASELINE_MARKER if r.is_baseline else GROUP_MARKERS["infinite"],
                        markersize=11 if r.is_baseline else 6)  # fmt: skip
    if fams:
        infinity_axis(ax, right, len(refs))
        legend_outside(ax)
    else:
        ax.set_xscale("log")
        ax.text(0.5, 0.5, "no kernel family at two or more dimensions", ha="center", va="center",
                transform=ax.transAxes)  # fmt: skip
    ax.set_xlabel("feature dimension at the model's head size (log scale)")
    ax.set_ylabel(f"{t.metric_header} (mean ± std over seeds)")
    ax.set_title(f"{t.task}: each family against its feature dimension (dashed: ∞-dimensional)")
    ax.grid(True, which="major", alpha=0.3)
    return fig
