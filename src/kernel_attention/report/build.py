"""Assemble the report for one folder and write it to ``<folder>/report/`` (every file atomically)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from kernel_attention.evaluation.bleu import DEFAULT_SEED
from kernel_attention.report import diagnostics as diag
from kernel_attention.report.collect import Collection, collect_all, group_runs
from kernel_attention.report.families import families, families_markdown, family_curves
from kernel_attention.report.plots import metric_vs_featdim, table_colours, valid_curves
from kernel_attention.report.stats import ALPHA
from kernel_attention.report.tables import BASELINE, TaskTable, build_task_table, p_eq, to_csv, to_latex, to_markdown
from kernel_attention.report.throughput import Speed, metric_vs_throughput, speeds, throughput_markdown
from kernel_attention.report.verdict import TaskVerdict, overall, task_verdict
from kernel_attention.store import atomic


class ReportError(ValueError):
    """The report cannot be built (missing folder, no metrics.json). The message is one line."""


@dataclass
class Report:
    root: Path
    out_dir: Path
    collection: Collection
    tables: dict[str, TaskTable]
    verdicts: dict[str, TaskVerdict]
    markdown: str
    files: list[Path] = field(default_factory=list)

    def summary_text(self) -> str:
        """What the CLI prints: every task's table, then the verdict."""
        parts = [f"## {task}\n\n{to_markdown(t)}" for task, t in self.tables.items()]
        parts.append("## Verdict\n\n" + overall(list(self.verdicts.values())))
        parts += [f"- {v.text}" for v in self.verdicts.values()]
        return "\n".join(parts) + "\n"




def safe_name(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task) or "task"


def _significance(t: TaskTable) -> str:
    """Per-kernel comparison with the baseline, in words."""
    if t.baseline is None:
        return f"No `{BASELINE}` baseline on this task: no significance tests.\n"
    base = t.baseline
    unit = t.unit
    lines = []
    for r in t.rows:
        if r is base or r.summary.n == 0:
            continue
        d = r.summary.mean - base.summary.mean if base.summary.n else math.nan
        tests = [f"Welch {p_eq(r.welch_p)} (n={r.summary.n} vs {base.summary.n})"]
        ps = [r.welch_p]
        if r.bootstrap is not None:
            b = r.bootstrap
            tests.append(
                f"paired bootstrap over {b.pairs} pooled seed pair(s): Δ={b.diff:+.2f}, {p_eq(b.p_value)}, "
                f"95% CI of {r.kernel} [{b.ci95[0]:.2f}, {b.ci95[1]:.2f}]"
            )
            ps.append(b.p_value)
        sig = [p for p in ps if p is not None and p < ALPHA]
        better_is_base = (d < 0) == t.higher_is_better
        word = (f"{base.kernel} better" if better_is_base else f"{r.kernel} better") if sig else "not significant"
        # Δ with the metric's own digits: bpc seed spreads are ~0.01, so 2 decimals would print Δ=-0.00.
        lines.append(f"- {r.kernel} vs {base.kernel}: Δ={d:+.{t.digits}f} {unit} (mean over seeds), {'; '.join(tests)} "
                     f"→ **{word}**")  # fmt: skip
    return "\n".join(lines) + "\n" if lines else "No other kernel has completed runs.\n"


def _task_section(t: TaskTable, v: TaskVerdict, measured: tuple[list[Speed], list[str]], level: str = "##") -> str:
    name = safe_name(t.task)
    return (
        f"{level} {t.task} ({t.task_type}, {t.metric_header})\n\n{to_markdown(t)}\n"
        f"{level}# Significance vs {t.baseline.kernel if t.baseline else BASELINE}\n\n{_significance(t)}\n"
        f"{level}# Verdict\n\n{v.text}\n\n"
        f"![{t.metric} vs feature dimension]({name}_metric_vs_featdim.png)\n"
        f"![validation curves]({name}_valid_curves.png)\n"
        + (f"\n{level}# Feature-dimension curves\n\n{families_markdown(t)}\n"
           f"![{t.metric} vs feature dimension per family]({name}_families.png)\n" if families(t) else "")
        + (f"\n{level}# Quality against training speed\n\n{throughput_markdown(t, measured)}\n"
           f"![{t.metric} vs training tokens/s]({name}_metric_vs_speed.png)\n" if measured[0] else "")
    )


def _problems(c: Collection) -> str:
    rel = c.relative
    lines = []
    for r in c.runs:
        if r.status != "completed":
            why = f": {r.status_reason}" if r.status_reason else ""
            lines.append(f"- `{rel(r.path)}` {r.task} / {r.kernel_label} seed {r.seed}: **{r.status}**{why}")
        elif r.value is None:
            lines.append(f"- `{rel(r.path)}` {r.task} / {r.kernel_label} seed {r.seed}: completed, no {r.metric}")
    for p in c.problems:
        kind = "running (no metrics.json yet)" if p.kind == "no_metrics" else p.kind
        lines.append(f"- `{rel(p.path)}`: **{kind}**: {p.reason}")
    return "\n".join(lines) + "\n" if lines else "None: every run completed.\n"


def _counts(c: Collection) -> str:
    by = {s: sum(r.status == s for r in c.runs) for s in ("completed", "diverged", "failed", "running")}
    nm = sum(p.kind == "no_metrics" for p in c.problems)
    bad = sum(p.kind in ("unreadable", "invalid") for p in c.problems)
    return (
        f"{c.n_metrics_files} metrics.json file(s): {by['completed']} completed, {by['diverged']} diverged, "
        f"{by['failed']} failed, {by['running']} running, {bad} unreadable/invalid; "
        f"{nm} job folder(s) without metrics.json."
    )


METHOD = f"""## Method

- Input: only the runs' `metrics.json` (docs/contracts.md §3). The metric is `test.<metric>`, falling back to
  `valid.best_<metric>` (marked ᵛ). Only completed runs enter the means; one run per seed (the latest).
- mean ± **sample** standard deviation (ddof=1) over seeds; n = completed seeds.
- Welch's unequal-variances t-test (Welch 1947) on per-seed results vs the `{BASELINE}` baseline; needs n ≥ 2
  on both sides.
- Paired bootstrap resampling (Koehn 2004, as implemented by sacreBLEU) on `test.bleu_stats`: runs paired by seed
  (leftovers in seed order), their test sentences pooled, one test per kernel. It measures test-set noise only,
  not seed-to-seed variation.
- Verdict: best infinite vs best finite kernel per task; a win needs n ≥ 2 seeds each and Welch p < {ALPHA}.
"""


def build_report(
    folder: Path | str | Sequence[Path | str],
    out_dir: Path | str | None = None,
    command: str | None = None,
    n_samples: int = 1000,
    seed: int = DEFAULT_SEED,
    baseline: str = BASELINE,
    plots: bool = True,
) -> Report:
    """Collect every run below ``folder`` (or below each of several folders: two sweeps that share runs report
    as one), compute the tables, tests and verdict, and write
    ``<out_dir or first folder/report>/{REPORT.md, <task>.md, <task>.csv, <task>.tex, <task>_*.png}``.

    Raises ``ReportError`` if a folder is not a directory or they hold no metrics.json at all."""
    roots = [Path(folder)] if isinstance(folder, (str, Path)) else [Path(f) for f in folder]
    if not roots:
        raise ReportError("no folder given; pass an outputs or sweep folder")
    for r in roots:
        if not r.is_dir():
            raise ReportError(f"folder {str(r)!r} does not exist or is not a directory")
    root = roots[0]
    out = Path(out_dir) if out_dir is not None else root / "report"
    c = collect_all(roots)
    where = ", ".join(repr(str(r)) for r in roots)
    if c.n_metrics_files == 0:
        raise ReportError(f"no metrics.json found under {where}; nothing to report")

    tables: dict[str, TaskTable] = {}
    verdicts: dict[str, TaskVerdict] = {}
    grouped = group_runs(c.runs)  # once: the tables and the diagnostics sections share it
    for task, groups in grouped.items():
        tables[task] = build_task_table(groups, baseline=baseline, n_samples=n_samples, seed=seed)
        verdicts[task] = task_verdict(tables[task], n_samples=n_samples, seed=seed)

    # Each task's throughput.json files, read once: the task file, REPORT.md and the figure all use them.
    measured = {task: speeds(t) for task, t in tables.items()}
    # One colour per kernel for all of a task's figures, the diagnostics' included.
    colours = {task: table_colours(t) for task, t in tables.items()}
    files: list[Path] = []

    def write(name: str, text: str) -> None:
        atomic.write_text(out / name, text)
        files.append(out / name)

    for task, t in tables.items():
        name = safe_name(task)
        write(f"{name}.md", _task_section(t, verdicts[task], measured[task], level="#"))
        write(f"{name}.csv", to_csv(t))
        write(f"{name}.tex", to_latex(t))
        if plots:
            cols = colours[task]
            figures = [("metric_vs_featdim", metric_vs_featdim(t, cols)), ("valid_curves", valid_curves(t, cols))]
            figures += [("families", family_curves(t))] if families(t) else []
            if measured[task][0]:
                figures.append(("metric_vs_speed", metric_vs_throughput(t, measured[task], cols)))
            for suffix, fig in figures:
                atomic.write_with(out / f"{name}_{suffix}.png", lambda f, fig=fig: fig.savefig(f, format="png",
                                                                                               dpi=120))
                files.append(out / f"{name}_{suffix}.png")

    # Kernel diagnostics (diagnostics.json beside metrics.json, docs/contracts.md §6): a section per task that has any.
    diag_md: list[str] = []
    for task, druns in diag.collect(grouped).items():
        for fname, content in diag.outputs(task, druns, safe_name(task), plots, colours.get(task)).items():
            if isinstance(content, str):
                write(fname, content)
            else:
                atomic.write_with(out / fname, lambda f, fig=content: fig.savefig(f, format="png", dpi=120))
                files.append(out / fname)
        diag_md.append(diag.section(task, safe_name(task), druns))

    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = "\n".join(
        [
            "# Kernel comparison report\n",
            f"Produced by `{command or 'build_report(' + where + ')'}` on {now}.\n",
            f"Source: {', '.join(f'`{r}`' for r in roots)}: {_counts(c)}\n",
            "## Verdict\n",
            overall(list(verdicts.values())) + "\n",
            *[f"- {v.text}" for v in verdicts.values()],
            "",
            *[_task_section(t, verdicts[task], measured[task]) for task, t in tables.items()],
            *diag_md,
            "## Runs not in the means\n",
            _problems(c),
            METHOD,
        ]
    )
    write("REPORT.md", md)
    return Report(root, out, c, tables, verdicts, md, files)
