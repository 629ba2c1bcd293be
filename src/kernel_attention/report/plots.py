"""Figures for the report. Built on ``matplotlib.figure.Figure`` directly (rendered by Agg when saved), so no
pyplot global state and no display is ever needed."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator
from matplotlib.transforms import blended_transform_factory

from kernel_attention.report.collect import Run
from kernel_attention.report.style import (
    BASELINE_MARKER,
    GROUP_MARKERS,
    kernel_colours,
    legend_outside,
)
from kernel_attention.report.tables import TaskTable


def table_colours(t: TaskTable) -> dict[str, str]:
    """Every row's colour, in table order (infinite kernels first, then finite by dimension), baseline red."""
    return kernel_colours([r.kernel for r in t.rows], t.baseline.kernel if t.baseline else None)


def infinity_x(right: float) -> float:
    """Where "∞" sits on a log feature-dimension axis whose largest finite dimension is ``right``: two decades
    past it, which leaves room for the break marker between them."""
    return 10.0 ** (math.floor(math.log10(right)) + 2)


def infinity_axis(ax: Axes, right: float, n_inf: int) -> None:
    """A log x axis of feature dimensions: decade ticks up to ``right``, then (when ``n_inf`` infinite-dimensional
    points sit at ``infinity_x(right) · 1.25^j``) a broken-axis marker "//" and a tick "∞" at the end."""
    x_inf = infinity_x(right)
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())  # minor log ticks past the break would suggest a finite scale
    if n_inf:
        xb = math.sqrt(right * x_inf)
        ax.axvline(xb, color="0.6", lw=0.8, ls=":")
        tr = blended_transform_factory(ax.transData, ax.transAxes)
        for dx in (0.93, 1.07):
            ax.plot([xb * dx / 1.05, xb * dx * 1.05], [-0.02, 0.02], transform=tr, color="k", lw=1, clip_on=False)
    ticks = [10.0**k for k in range(0, int(math.log10(right)) + 1)] + ([x_inf] if n_inf else [])
    ax.set_xticks(ticks, [f"$10^{{{int(math.log10(x))}}}$" for x in ticks[: len(ticks) - bool(n_inf)]]
                  + (["∞"] if n_inf else []))  # fmt: skip
    ax.set_xlim(0.5, x_inf * 1.25 ** max(n_inf, 1) * 2)


def metric_vs_featdim(t: TaskTable, colours: dict[str, str] | None = None) -> Figure:
    """Metric (mean ± sample std over seeds) against feature dimension on a log x axis. Infinite-dimensional
    kernels sit at a point past the right edge labelled "∞", behind a broken-axis marker; the baseline is a red
    star. Shape = group (square infinite, circle finite), colour = kernel (``colours``, default
    ``table_colours``), named in a legend beside the axes: labels written next to the points overlapped."""
    colours = colours or table_colours(t)
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    rows = [r for r in t.rows if r.summary.n > 0 and r.source.feature_dim is not None]
    finite = [r.source.feature_dim for r in rows if not math.isinf(r.source.feature_dim or 0)]
    right = max(finite) if finite else 1.0
    x_inf = infinity_x(right)
    n_inf = 0
    for r in rows:
        fd = r.source.feature_dim or 0.0
        if math.isinf(fd):
            x = x_inf * 1.25**n_inf  # small spread so several infinite kernels do not hide each other
            n_inf += 1
        else:
            x = fd
        marker = BASELINE_MARKER if r.is_baseline else GROUP_MARKERS[r.group]
        std = 0.0 if math.isnan(r.summary.std) else r.summary.std
        ax.errorbar(
            [x], [r.summary.mean], yerr=[std], fmt=marker, color=colours.get(r.kernel, "tab:gray"), capsize=4,
            markersize=14 if r.is_baseline else 7, zorder=3 if r.is_baseline else 2,
            label=f"{r.kernel} (n={r.summary.n})",
        )  # fmt: skip
    if rows:
        infinity_axis(ax, right, n_inf)
        legend_outside(ax)
    else:
        ax.set_xscale("log")
        ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("feature dimension at the model's head size (log scale)")
    ax.set_ylabel(f"test {t.metric_header} (mean ± std over seeds)")
    ax.set_title(f"{t.task}: {t.metric} vs kernel feature dimension")
    ax.grid(True, which="major", alpha=0.3)
    return fig


def _curve_key(t: TaskTable, history: list[dict]) -> str:
    """The validation quantity to plot: the task metric when the history has it, else the loss."""
    return t.metric if any(t.metric in h for h in history) else "loss"


def _curve(run: Run, key: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    pts = [h for h in run.history if "update" in h and isinstance(h.get(key), (int, float))]
    if not pts:
        return None
    return (np.array([h["update"] for h in pts], dtype=float),  # (E,) evaluation updates
            np.array([h[key] for h in pts], dtype=float))  # (E,) their values  # fmt: skip


def valid_curves(t: TaskTable, colours: dict[str, str] | None = None) -> Figure:
    """Validation curves (``valid.history``), one panel per kernel: its seeds in its colour (dashed when diverged
    or failed, so their history stays visible) over the baseline's seeds in grey, the same reference in every
    panel. Fourteen kernels' seeds on one axes were unreadable. Each panel's y range starts at the lowest finite value
    after the first evaluation, so the early steep part does not flatten the differences that matter (perplexity
    curves get a log axis instead)."""
    colours = colours or table_colours(t)
    rows = [r for r in t.rows if r.source.runs]
    histories = [h for r in rows for run in r.source.runs for h in run.history if "update" in h]
    key = _curve_key(t, histories) if histories else None
    n = max(len(rows), 1)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.1 * ncols, 2.3 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False).ravel()
    base = t.baseline
    ref = [c for run in (base.source.runs if base else []) if (c := _curve(run, key)) is not None]
    plotted = False
    for ax, r in zip(axes, rows):
        curves = [(run, c) for run in r.source.runs if (c := _curve(run, key)) is not None]
        if not r.is_baseline:
            for j, (xs, ys) in enumerate(ref):
                ax.plot(xs, ys, color="0.6", lw=1.0, label=f"{base.kernel} (baseline)" if j == 0 else None)
        for j, (run, (xs, ys)) in enumerate(curves):
            ax.plot(xs, ys, color=colours.get(r.kernel, "tab:gray"), lw=1.4,
                    ls="-" if run.status in ("completed", "running") else "--", label=r.kernel if j == 0 else None)
            plotted = True
        # Finite values only: one diverged seed's inf/NaN must not undo the zoom of its panel.
        later = [y for _, ys in ref + [c for _, c in curves] for y in ys[1:] if math.isfinite(y)]
        if key in ("ppl", "loss") and t.metric == "ppl":
            ax.set_yscale("log")  # perplexities span decades early on; the log axis is the zoom
        elif later:
            lo, hi = min(later), max(later)
            pad = 0.05 * (hi - lo or abs(hi) or 1.0)
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(f"{r.kernel} (seeds: {len(curves)})", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes[max(len(rows), 1):]:  # axes[0] stays, to say so when nothing could be drawn
        ax.set_visible(False)
    if not plotted:
        axes[0].text(0.5, 0.5, "no validation history", ha="center", va="center", transform=axes[0].transAxes)
    fig.supxlabel("update", fontsize=9)
    fig.supylabel(f"validation {key or t.metric}", fontsize=9)
    ref_text = f"grey = {base.kernel}'s seeds; " if base and ref else ""
    fig.suptitle(f"{t.task}: validation curves per kernel ({ref_text}dashed = diverged/failed)", fontsize=10)
    return fig
