"""The report's kernel-diagnostics section: every run's ``diagnostics.json`` (docs/contracts.md §6, written by
``scripts/diagnose.py``) tabulated per kernel, plotted, and put in one sentence against the task's score.

Reads JSON only (no torch, no model code). Per kernel: mean ± sample std over seeds of each run's summary over all
roles, layers and heads; per run × role × layer × head the full table goes to ``<task>_diagnostics_layers.csv``.
Figures: mean singular-value decay σ_i/σ_1 of the attention matrix per kernel and role; effective rank of
attention against the score, one point per run. The sentence answers issue #11's two questions: is edp's learned
token kernel measurably asymmetric and indefinite (Wright & Gonzalez 2021), and do runs whose attention has a
higher effective rank (Roy & Vetterli 2007) score better (Spearman's ρ over runs, scipy's two-sided p)?
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from kernel_attention.report.collect import KernelGroup, Run
from kernel_attention.report.style import kernel_colours, legend_outside
from kernel_attention.store.files import DIAGNOSTICS_FILE, DIAGNOSTICS_ROLES

ROLES = DIAGNOSTICS_ROLES
# (key in summary.all, column header); "K" is the token kernel matrix, "A" the row-normalised attention.
COLUMNS = (
    ("asymmetry", "asym ‖K−Kᵀ‖/‖K‖"),
    ("asymmetry_logK", "asym log κ"),
    ("negative_mass", "neg. eig. mass"),
    ("eig_ratio", "λmin/λmax"),
    ("qk_form_asymmetry", "asym W_QᵀW_K"),
    ("erank_A", "erank A"),
    ("erank_K", "erank K"),
    ("rank_frac_K", "rank K / n"),
    ("rank_binds_K", "rank binds"),
    ("entropy_norm", "entropy / log n"),
)
SELF_ONLY = ("asymmetry", "negative_mass")  # undefined for cross-attention's n_tgt × n_src K
ASYM_THRESHOLD = 0.05  # "measurably asymmetric": ‖K−Kᵀ‖ above 5 % of ‖K‖ in every seed
NEG_THRESHOLD = 0.01  # "measurably indefinite": above 1 % of the eigenvalue mass negative in every seed


@dataclass
class DiagRun:
    run: Run
    data: dict[str, Any]
    label: str  # the kernel's row label in the report's table for this task (group_runs), never the raw label

    @property
    def summary(self) -> dict[str, Any]:
        return self.data.get("summary", {}).get("all", {})


def collect(grouped: Mapping[str, list[KernelGroup]]) -> dict[str, list[DiagRun]]:
    """Completed runs with a readable diagnostics.json, keyed and labelled exactly as the report's tables group
    them: ``grouped`` is ``group_runs`` over *all* runs (the grouping the tables were built from), so the settings
    of a parameter sweep (random_features at m = 8 … 2048, one raw label) stay apart and a kernel carries the same
    name and colour as in its table. One run per (kernel setting, seed): the latest."""
    out: dict[str, list[DiagRun]] = {}
    for task, groups in grouped.items():
        found: list[DiagRun] = []
        for g in groups:
            latest: dict[int | None, Run] = {}
            for r in g.runs:
                usable = r.status == "completed" and (r.path / DIAGNOSTICS_FILE).is_file()
                if usable and (r.seed not in latest or r.updated_at > latest[r.seed].updated_at):
                    latest[r.seed] = r
            for seed in sorted(latest, key=lambda s: s or 0):
                try:
                    data = json.loads((latest[seed].path / DIAGNOSTICS_FILE).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue  # unreadable: the section lists only what it can read
                if isinstance(data, dict) and data.get("schema") == 1:
                    found.append(DiagRun(latest[seed], data, g.label))
        if found:
            out[task] = sorted(found, key=lambda d: (d.label, d.run.seed or 0))
    return out


def _by_kernel(runs: list[DiagRun]) -> dict[str, list[DiagRun]]:
    groups: dict[str, list[DiagRun]] = {}
    for d in runs:
        groups.setdefault(d.label, []).append(d)
    return groups


def _mean_std(values: list[float | None]) -> tuple[float, float, int]:
    vals = [v for v in values if v is not None]
    if not vals:
        return math.nan, math.nan, 0
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan, len(vals)


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def summary_markdown(runs: list[DiagRun]) -> str:
    metric = runs[0].run.metric
    head = ["kernel", "n", f"{metric}", *[h for _, h in COLUMNS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kernel, group in _by_kernel(runs).items():
        score = _mean_std([d.run.value for d in group])
        cells = [_fmt(*_mean_std([d.summary.get(key) for d in group])[:2]) for key, _ in COLUMNS]
        lines.append(f"| {kernel} | {len(group)} | {_fmt(*score[:2])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def role_markdown(runs: list[DiagRun]) -> str:
    """erank of A, asymmetry and negative mass per kernel and role (means over seeds)."""
    keys = (("asymmetry", "asym"), ("negative_mass", "neg"), ("erank_A", "erank A"), ("entropy_norm", "H/log n"))
    roles = [r for r in ROLES if any(r in d.data.get("summary", {}) for d in runs)]
    cols = [(role, key, h) for role in roles for key, h in keys if role != "cross" or key not in SELF_ONLY]
    head = ["kernel", *[f"{role} {h}" for role, _, h in cols]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kernel, group in _by_kernel(runs).items():
        cells = []
        for role, key, _ in cols:
            m, _s, n = _mean_std([d.data.get("summary", {}).get(role, {}).get(key) for d in group])
            cells.append("–" if n == 0 else f"{m:.3f}")
        lines.append(f"| {kernel} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def layers_csv(runs: list[DiagRun]) -> str:
    """One row per run × role × layer × head: every per-head number, and the q·k form's."""
    keys: list[str] = []
    for d in runs:
        for row in d.data.get("per_head", []):
            keys += [k for k in row if k not in ("role", "layer", "head", "n") and k not in keys]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kernel", "seed", "role", "layer", "head", "n", *keys, "qk_form_asymmetry", "qk_form_negative_mass",
                "run"])
    for d in runs:
        forms = {(f["role"], f["layer"], f["head"]): f for f in d.data.get("qk_forms", [])}
        for row in d.data.get("per_head", []):
            f = forms.get((row["role"], row["layer"], row["head"]), {})
            w.writerow([d.label, d.run.seed, row["role"], row["layer"], row["head"], row.get("n"),
                        *[row.get(k, "") for k in keys], f.get("asymmetry", ""), f.get("negative_mass", ""),
                        str(d.run.path)])
    return buf.getvalue()


def _spearman(x: list[float], y: list[float]) -> tuple[float, float] | None:
    if len(x) < 4 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    res = stats.spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


def sentence(runs: list[DiagRun], baseline: str = "edp") -> str:
    """The section's finding, computed from the numbers."""
    parts = []
    base = _by_kernel(runs).get(baseline, [])
    if base:
        asym = [d.summary.get("asymmetry") for d in base]
        neg = [d.summary.get("negative_mass") for d in base]
        a, sa, _ = _mean_std(asym)
        m, sm, _ = _mean_std(neg)
        is_asym = all(v is not None and v > ASYM_THRESHOLD for v in asym)
        is_indef = all(v is not None and v > NEG_THRESHOLD for v in neg)
        verdict = {(True, True): "measurably asymmetric and indefinite",
                   (True, False): "measurably asymmetric but not measurably indefinite",
                   (False, True): "measurably indefinite but not measurably asymmetric",
                   (False, False): "neither measurably asymmetric nor measurably indefinite"}[(is_asym, is_indef)]
        parts.append(
            f"{baseline}'s learned token kernel is **{verdict}** in {len(base)} seed(s): ‖K−Kᵀ‖/‖K‖ = {_fmt(a, sa)}, "
            f"negative share of the eigenvalue mass of (K+Kᵀ)/2 = {_fmt(m, sm)} (thresholds {ASYM_THRESHOLD} and "
            f"{NEG_THRESHOLD}, every seed; means over the self-attention layers and heads)."
        )
    else:
        parts.append(f"No `{baseline}` run has diagnostics: nothing to say about softmax's learned kernel.")
    pts = [(d.summary.get("erank_A"), d.run.value) for d in runs]
    pts = [(x, y) for x, y in pts if x is not None and y is not None]
    metric, better = runs[0].run.metric, "higher" if runs[0].run.higher_is_better else "lower"
    res = _spearman([x for x, _ in pts], [y for _, y in pts])
    if res is None:
        parts.append(f"Too few runs ({len(pts)}) with a {metric} to relate effective rank to the score (need ≥ 4).")
        return " ".join(parts)
    rho, p = res
    sign = rho if runs[0].run.higher_is_better else -rho
    kernels = _by_kernel(runs)
    km = [(_mean_std([d.summary.get("erank_A") for d in g])[0], _mean_std([d.run.value for d in g])[0])
          for g in kernels.values()]
    kres = _spearman([x for x, _ in km], [y for _, y in km])
    kpart = f"; over the {len(km)} kernel means ρ = {kres[0]:+.2f}" if kres else ""
    if p < 0.05:
        ans = "attention with higher effective rank goes with a **better**" if sign > 0 else \
            "attention with higher effective rank goes with a **worse**"
        ans += f" {metric}"
    else:
        ans = f"**no significant monotone relation** between attention effective rank and {metric}"
    parts.append(f"Across {len(pts)} runs of {len(kernels)} kernel(s), Spearman ρ(effective rank of A, {metric}) = "
                 f"{rho:+.2f} (p = {p:.3g}; {better} {metric} is better){kpart}: {ans}.")
    return " ".join(parts)


MIN_SHARE = 0.25  # plot σ_i only where at least this share of the (sequence, head) matrices has an i-th value


def _thinned(decay: dict[str, Any], key: str) -> list[float]:
    """One run's mean σ_i/σ_1 curve, NaN where fewer than MIN_SHARE of its matrices are that long: the tail of a
    mean over only the longest sequences would read as a property of the kernel."""
    count = decay.get("count") or []
    top = count[0] if count else 0
    return [math.nan if v is None or i >= len(count) or count[i] < MIN_SHARE * top else float(v)
            for i, v in enumerate(decay[key])]


def _colours(runs: list[DiagRun], colours: dict[str, str] | None) -> dict[str, str]:
    """The report's shared kernel colours, or (alone) one per kernel here with edp red."""
    return colours or kernel_colours(_by_kernel(runs), baseline="edp")


def sv_decay_figure(task: str, runs: list[DiagRun], colours: dict[str, str] | None = None) -> Figure:
    """Mean σ_i/σ_1 of the attention matrix A (solid) and of K (dotted) per kernel, one panel per role, up to the
    index that at least a quarter of the sequences reach."""
    colours = _colours(runs, colours)
    roles = [r for r in ROLES if any(r in d.data.get("sv_decay", {}) for d in runs)]
    fig = Figure(figsize=(4.2 * max(len(roles), 1), 4), layout="constrained")
    axes = [fig.add_subplot(1, max(len(roles), 1), i + 1) for i in range(max(len(roles), 1))]
    for ax, role in zip(axes, roles):
        for kernel, group in _by_kernel(runs).items():
            for key, ls in (("A", "-"), ("K", ":")):
                curves = [_thinned(d.data["sv_decay"][role], key) for d in group if role in d.data.get("sv_decay", {})]
                arr = np.array(curves, dtype=float)
                if arr.size == 0:
                    continue
                count = (~np.isnan(arr)).sum(axis=0)  # (P,): past the shortest lengths fewer curves have a σ_i
                mean = np.where(count > 0, np.nansum(arr, axis=0) / np.maximum(count, 1), np.nan)  # (P,)
                ax.plot(np.arange(1, len(mean) + 1), mean, ls=ls, color=colours.get(kernel, "tab:gray"),
                        label=kernel if key == "A" else None)
        ax.set_yscale("log")
        ax.set_xlabel("singular value index i")
        ax.set_title(role)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("mean σ_i / σ_1 (solid: attention A, dotted: kernel K)")
    # One legend for all panels, from every kernel drawn in any of them (a kernel may lack the last role).
    drawn = {ln.get_label(): ln for ax in axes for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    if drawn:
        fig.legend(list(drawn.values()), list(drawn), fontsize=7, loc="outside right upper", frameon=False)
    fig.suptitle(f"{task}: singular-value decay (mean over sequences, layers, heads, seeds)")
    return fig


def erank_vs_score_figure(task: str, runs: list[DiagRun], colours: dict[str, str] | None = None) -> Figure:
    """Test score against the run's mean effective rank of A, one point per run, coloured by kernel."""
    colours = _colours(runs, colours)
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for kernel, group in _by_kernel(runs).items():
        pts = [(d.summary.get("erank_A"), d.run.value) for d in group]
        pts = [(x, y) for x, y in pts if x is not None and y is not None]
        if pts:
            ax.scatter([x for x, _ in pts], [y for _, y in pts], color=colours.get(kernel, "tab:gray"), label=kernel)
    metric = runs[0].run.metric
    ax.set_xlabel("effective rank of attention A (mean over roles, layers, heads)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"{task}: effective rank vs {metric} (one point per run)")
    ax.grid(True, alpha=0.3)
    legend_outside(ax)
    return fig


METHOD = """Numbers from each run's `diagnostics.json` (`scripts/diagnose.py`, docs/contracts.md §6): on a fixed
sample of validation sequences, the model's own q, k per role × layer × head, real tokens only. K_ij = κ(q_i, k_j)
on every token pair (rescaled by one positive constant per head, which no reported number depends on); A = K on the
visible pairs (causal in the decoder), row-normalised. Asymmetry and the spectrum of (K+Kᵀ)/2 are for
self-attention only. erank = exp(entropy of σ/Σσ) (Roy & Vetterli 2007); rank = #σ_i > rtol·σ_1; "rank binds" =
share of (sequence, head) pairs where a finite feature dimension below the length caps K's rank and K reaches it.
Table: mean ± sample std over seeds of per-run means over roles, layers and heads."""


def section(task: str, name: str, runs: list[DiagRun], level: str = "##") -> str:
    """The Markdown section of one task; ``name`` is the task's file name stem."""
    return (f"{level} {task}: kernel diagnostics\n\n{sentence(runs)}\n\n{summary_markdown(runs)}\n"
            f"Per role (means over seeds):\n\n{role_markdown(runs)}\n{METHOD}\n\n"
            f"Per layer and head: `{name}_diagnostics_layers.csv`.\n\n"
            f"![singular-value decay]({name}_sv_decay.png)\n"
            f"![effective rank vs score]({name}_erank_vs_score.png)\n")


def outputs(
    task: str, runs: list[DiagRun], name: str, plots: bool = True, colours: dict[str, str] | None = None
) -> dict[str, str | Figure]:
    """File name → content (text or figure) of the task's diagnostics; ``name`` is the task's safe file name,
    ``colours`` the report's kernel colours (so a kernel looks the same in every figure)."""
    files: dict[str, str | Figure] = {
        f"{name}_diagnostics.md": section(task, name, runs, level="#"),
        f"{name}_diagnostics_layers.csv": layers_csv(runs),
    }
    if plots:
        files[f"{name}_sv_decay.png"] = sv_decay_figure(task, runs, colours)
        files[f"{name}_erank_vs_score.png"] = erank_vs_score_figure(task, runs, colours)
    return files
