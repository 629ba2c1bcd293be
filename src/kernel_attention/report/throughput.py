"""Quality against speed: each kernel's metric against its training tokens/s measured alike for every kernel by
``scripts/measure_throughput.py`` (``throughput.json`` beside a run's metrics.json, docs/contracts.md §3).

The tokens/s a run logs while training depends on what else the machine ran meanwhile, so it is never used here;
a kernel without a ``throughput.json`` is left out of the figure and named. All points of one figure must come from
one measurement (the same ``measured_at`` and conditions); otherwise the section says so and draws nothing.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from kernel_attention.report.plots import table_colours
from kernel_attention.report.style import BASELINE_MARKER, GROUP_MARKERS, legend_outside
from kernel_attention.report.tables import Row, TaskTable
from kernel_attention.store.files import THROUGHPUT_FILE


@dataclass
class Speed:
    row: Row
    tokens_per_s: float
    record: dict[str, Any]


def _record(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / THROUGHPUT_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    tps = data.get("tokens_per_s") if isinstance(data, dict) else None
    return data if isinstance(tps, (int, float)) and math.isfinite(tps) and tps > 0 else None


def speeds(t: TaskTable) -> tuple[list[Speed], list[str]]:
    """(kernels with a measured throughput, names of those without one). A kernel's figure is the median over
    its runs' files (normally one measurement shared by all seeds)."""
    found, missing = [], []
    for r in t.rows:
        recs = [rec for run in r.source.runs if (rec := _record(run.path)) is not None]
        if recs:
            found.append(Speed(r, statistics.median(x["tokens_per_s"] for x in recs), recs[0]))
        else:
            missing.append(r.kernel)
    return found, missing


def _conditions(rec: dict[str, Any]) -> str:
    m = rec.get("machine", {}) if isinstance(rec.get("machine"), dict) else {}
    return (f"{rec.get('threads', '?')} thread(s) on {m.get('device', '?')} ({m.get('cpu', '?')}), "
            f"{rec.get('rounds', '?')} interleaved rounds × {rec.get('steps', '?')} updates on "
            f"{rec.get('batches', '?')} shared training batches (≈ {rec.get('target_tokens_per_batch', '?')} target "
            f"tokens each), load average {m.get('load_avg_1_5_15', '?')}, measured {rec.get('measured_at', '?')}")


def _one_measurement(found: list[Speed]) -> bool:
    return len({s.record.get("measured_at") for s in found}) == 1


def frontier(found: list[Speed], higher_is_better: bool) -> list[Speed]:
    """The quality/speed frontier (Pareto set) on the seed means, fastest first: the kernels no other kernel beats
    on both axes, i.e. none is at least as fast and at least as good with one of the two strictly. A practitioner
    picks from these; every other kernel is dominated. Kernels without a score are left out."""
    pts = [s for s in found if s.row.summary.n > 0]
    sign = 1.0 if higher_is_better else -1.0  # compare "goodness" = sign × metric, larger is better

    def dominates(a: Speed, b: Speed) -> bool:
        ga, gb = sign * a.row.summary.mean, sign * b.row.summary.mean
        return a.tokens_per_s >= b.tokens_per_s and ga >= gb and (a.tokens_per_s > b.tokens_per_s or ga > gb)

    return sorted((b for b in pts if not any(dominates(a, b) for a in pts if a is not b)),
                  key=lambda s: -s.tokens_per_s)  # fmt: skip


def throughput_markdown(t: TaskTable, measured: tuple[list[Speed], list[str]]) -> str:
    """The speed table (kernel, tokens/s, × edp, metric) and the measurement's conditions from ``measured``
    (``speeds(t)``, read once per task by the caller); '' when none."""
    found, missing = measured
    if not found:
        return ""
    if not _one_measurement(found):
        return ("Throughput files from more than one measurement: rerun `scripts/measure_throughput.py` on the "
                "whole sweep so every kernel is timed alike.\n")
    base = next((s.tokens_per_s for s in found if s.row.is_baseline), None)
    front = frontier(found, t.higher_is_better)
    lines = [f"| kernel | training tokens/s | × {t.baseline.kernel if t.baseline else 'baseline'} | "
             f"{t.metric_header} | frontier |", "|---|---:|---:|---:|:---:|"]
    for s in sorted(found, key=lambda s: -s.tokens_per_s):
        ratio = f"{s.tokens_per_s / base:.2f}" if base else "—"
        value = f"{s.row.summary.mean:.{t.digits}f}" if s.row.summary.n else "—"
        lines.append(f"| {s.row.kernel} | {s.tokens_per_s:,.0f} | {ratio} | {value} | {'✓' if s in front else ''} |")
    rec = found[0].record
    text = "\n".join(lines) + (
        f"\n\nQuality/speed frontier (no other kernel is both at least as fast and at least as good on the seed "
        f"means; fastest first): {', '.join(s.row.kernel for s in front)}. Every other kernel is dominated by one of "
        f"these. Membership compares seed means, not a test: a kernel dominated by less than the seed spread "
        f"may be as good.\n\nConditions: {_conditions(rec)}. Command: `{rec.get('command', '?')}`.\n")
    if missing:
        text += f"Not measured: {', '.join(missing)}.\n"
    return text


def metric_vs_throughput(
    t: TaskTable, measured: tuple[list[Speed], list[str]], colours: dict[str, str] | None = None
) -> Figure:
    """Metric (mean ± std over seeds) against measured training tokens/s (log x; ``measured`` = ``speeds(t)``):
    the upper right is better for BLEU, the lower right for perplexity. Shape = group, colour = kernel (the
    report's shared colours), named in a legend beside the axes."""
    colours = colours or table_colours(t)
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    found, _ = measured
    pts = [s for s in found if s.row.summary.n > 0] if found and _one_measurement(found) else []
    for s in pts:
        marker = BASELINE_MARKER if s.row.is_baseline else GROUP_MARKERS[s.row.group]
        std = 0.0 if math.isnan(s.row.summary.std) else s.row.summary.std
        ax.errorbar([s.tokens_per_s], [s.row.summary.mean], yerr=[std], fmt=marker, capsize=4,
                    color=colours.get(s.row.kernel, "tab:gray"), markersize=12 if s.row.is_baseline else 7,
                    label=s.row.kernel)  # fmt: skip
    if pts:
        front = frontier(pts, t.higher_is_better)
        if len(front) > 1:
            # The edge of what the measured kernels attain, fastest first: from each frontier kernel leftwards
            # (slower) at its score until the next one, which is better, so the step is "post" either way.
            xs, ys = [s.tokens_per_s for s in front], [s.row.summary.mean for s in front]
            ax.step(xs, ys, where="post", color="0.4", linestyle="--", linewidth=1, zorder=0, label="frontier")
        ax.set_xscale("log")
        legend_outside(ax)
    else:
        ax.text(0.5, 0.5, "no throughput measured (scripts/measure_throughput.py)", ha="center", va="center",
                transform=ax.transAxes)  # fmt: skip
    ax.set_xlabel("training tokens/s, every kernel measured alike (log scale)")
    ax.set_ylabel(f"test {t.metric_header} (mean ± std over seeds)")
    ax.set_title(f"{t.task}: quality against training speed (squares = infinite, circles = finite)")
    ax.grid(True, which="both", alpha=0.3)
    return fig
