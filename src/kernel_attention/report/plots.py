"""Figures for the report. Built on ``matplotlib.figure.Figure`` directly (rendered by Agg when saved), so no
pyplot global state and no display is ever needed."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator
from matplotlib.transforms import blended_transform_factory

from kernel_attention.report.tables import TaskTable

STYLE = {  # group -> (marker, colour)
    "infinite": ("s", "tab:blue"),
    "finite": ("o", "tab:green"),
    "unknown": ("x", "tab:gray"),
}
BASELINE_STYLE = ("*", "tab:red")


def metric_vs_featdim(t: TaskTable) -> Figure:
    """Metric (mean ± sample std over seeds) against feature dimension on a log x axis. Infinite-dimensional
    kernels sit at a point past the right edge labelled "∞", behind a broken-axis marker; the baseline is a red
    star."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    rows = [r for r in t.rows if r.summary.n > 0 and r.source.feature_dim is not None]
    finite = [r.source.feature_dim for r in rows if not math.isinf(r.source.feature_dim or 0)]
    right = max(finite) if finite else 1.0
    # Two decades past the largest finite dimension leaves room for the break marker between them.
    x_inf = 10 ** (math.floor(math.log10(right)) + 2)
    n_inf = 0
    for r in rows:
        fd = r.source.feature_dim or 0.0
        if math.isinf(fd):
            x = x_inf * 1.25**n_inf  # small spread so several infinite kernels do not hide each other
            n_inf += 1
        else:
            x = fd
        marker, colour = BASELINE_STYLE if r.is_baseline else STYLE[r.group]
        std = 0.0 if math.isnan(r.summary.std) else r.summary.std
        ax.errorbar(
            [x], [r.summary.mean], yerr=[std], fmt=marker, color=colour, capsize=4,
            markersize=14 if r.is_baseline else 7, zorder=3 if r.is_baseline else 2,
        )  # fmt: skip
        ax.annotate(f"{r.kernel} (n={r.summary.n})", (x, r.summary.mean), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)  # fmt: skip
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())  # minor log ticks past the break would suggest a finite scale
    if rows:
        if n_inf:
            ax.axvline(math.sqrt(right * x_inf), color="0.6", lw=0.8, ls=":")
            # Broken-axis marker "//" on the x axis between the last finite dimension and ∞.
            tr = blended_transform_factory(ax.transData, ax.transAxes)
            xb = math.sqrt(right * x_inf)
            for dx in (0.93, 1.07):
                ax.plot([xb * dx / 1.05, xb * dx * 1.05], [-0.02, 0.02], transform=tr, color="k", lw=1,
                        clip_on=False)  # fmt: skip
        ticks = [10.0**k for k in range(0, int(math.log10(right)) + 1)] + ([x_inf] if n_inf else [])
        ax.set_xticks(ticks, [f"$10^{{{int(math.log10(x))}}}$" for x in ticks[: len(ticks) - bool(n_inf)]]
                      + (["∞"] if n_inf else []))  # fmt: skip
        ax.set_xlim(0.5, x_inf * 1.25 ** max(n_inf, 1) * 2)
    else:
        ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("feature dimension at the model's head size (log scale)")
    ax.set_ylabel(f"test {t.metric_header} (mean ± std over seeds)")
    ax.set_title(f"{t.task}: {t.metric} vs kernel feature dimension")
    ax.grid(True, which="major", alpha=0.3)
    return fig


def _curve_key(t: TaskTable, history: list[dict]) -> str:
    """The validation quantity to plot: the task metric when the history has it, else the loss."""
    return t.metric if any(t.metric in h for h in history) else "loss"


def valid_curves(t: TaskTable) -> Figure:
    """Validation curves (``valid.history``) per kernel: one line per seed, one colour per kernel, the
    baseline drawn thicker. Diverged and failed runs are drawn dashed, so their history is still visible."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    # The default cycle minus red (C3), which is reserved for the baseline.
    colours = [f"C{i}" for i in range(10) if i != 3]
    key = None
    for i, r in enumerate(t.rows):
        for j, run in enumerate(r.source.runs):
            pts = [h for h in run.history if "update" in h]
            key = key or (_curve_key(t, pts) if pts else None)
            pts = [h for h in pts if isinstance(h.get(key), (int, float))]
            if not pts:
                continue
            xs = np.array([h["update"] for h in pts], dtype=float)
            ys = np.array([h[key] for h in pts], dtype=float)
            ax.plot(
                xs, ys, color=BASELINE_STYLE[1] if r.is_baseline else colours[i % len(colours)],
                lw=2.5 if r.is_baseline else 1.2, ls="-" if run.status in ("completed", "running") else "--",
                label=r.kernel if j == 0 else None, alpha=0.9,
            )  # fmt: skip
    if key is None:
        ax.text(0.5, 0.5, "no validation history", ha="center", va="center", transform=ax.transAxes)
    else:
        if key in ("ppl", "loss") and t.metric == "ppl":
            ax.set_yscale("log")
        ax.legend(fontsize=8, ncol=2)
    ax.set_xlabel("update")
    ax.set_ylabel(f"validation {key or t.metric}")
    ax.set_title(f"{t.task}: validation curves (one line per seed; dashed = diverged/failed)")
    ax.grid(True, alpha=0.3)
    return fig
