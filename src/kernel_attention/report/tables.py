"""One comparison table per task: a row per kernel, infinite-feature kernels first, then finite ones by feature
dimension; rendered as Markdown, CSV (machine-readable, full precision) and LaTeX (booktabs)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kernel_attention.evaluation.bleu import DEFAULT_SEED
from kernel_attention.report.collect import KernelGroup
from kernel_attention.report.stats import ALPHA, Bootstrap, Summary, bootstrap_vs, summarize, welch_p

BASELINE = "edp"
GROUP_ORDER = {"infinite": 0, "finite": 1, "unknown": 2}
WELCH_FLAG, BOOT_FLAG, VALID_FLAG = "*", "†", "ᵛ"
CSV_COLUMNS = [
    "task", "metric", "higher_is_better", "group", "kernel", "kernel_name", "kernel_params", "feature_dim",
    "head_dim", "symmetric", "positive_definite", "mean", "std", "n", "seeds", "diverged", "failed", "running",
    "params", "tokens_per_s", "welch_p", "bootstrap_p", "bootstrap_pairs", "value_source", "baseline",
]  # fmt: skip


@dataclass
class Row:
    """One kernel on one task, with its comparison to the baseline."""

    group: str  # "infinite" | "finite" | "unknown"
    kernel: str
    source: KernelGroup
    summary: Summary
    diverged: int
    failed: int
    running: int
    model_params: int | None
    tokens_per_s: float | None
    value_source: str  # "test" | "valid" | "mixed" | ""
    is_baseline: bool = False
    welch_p: float | None = None
    bootstrap: Bootstrap | None = None
    test_sets: dict[str, Summary] = field(default_factory=dict)  # the other test sets' mean ± std, by name

    @property
    def flags(self) -> str:
        f = WELCH_FLAG if self.welch_p is not None and self.welch_p < ALPHA else ""
        if self.bootstrap is not None and self.bootstrap.p_value < ALPHA:
            f += BOOT_FLAG
        return f


@dataclass
class TaskTable:
    task: str
    task_type: str
    metric: str
    higher_is_better: bool
    head_dims: list[int]
    baseline: Row | None
    rows: list[Row] = field(default_factory=list)
    test_sets: list[str] = field(default_factory=list)  # names of the other test sets any run was scored on

    @property
    def unit(self) -> str:
        return self.metric.upper() if self.metric == "bleu" else self.metric

    @property
    def digits(self) -> int:
        """Decimals to print: 3 for bits per character (seed spreads are ~0.01 bpc), 2 for BLEU and ppl."""
        return 3 if self.metric == "bpc" else 2

    @property
    def metric_header(self) -> str:
        return f"{self.unit} {'↑' if self.higher_is_better else '↓'}"


def _group_name(g: KernelGroup) -> str:
    inf = g.is_infinite
    return "unknown" if inf is None else ("infinite" if inf else "finite")


def _sources(g: KernelGroup) -> str:
    s = {r.value_source for r in g.completed}
    return "" if not s else (s.pop() if len(s) == 1 else "mixed")


def _mean_or_none(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return float(np.mean(vals)) if vals else None


def build_task_table(
    groups: list[KernelGroup], baseline: str = BASELINE, n_samples: int = 1000, seed: int = DEFAULT_SEED
) -> TaskTable:
    """Rows for one task's kernel groups, with Welch (every task) and paired bootstrap (when BLEU stats exist)
    against the baseline kernel (the group named ``baseline`` with the most completed seeds)."""
    # A job that failed before starting may not know its metric: take the task's facts from a run that does.
    first = next((r for g in groups for r in g.runs if r.metric), groups[0].runs[0])
    test_sets = sorted({name for g in groups for r in g.completed for name in r.test_sets})
    rows = []
    for g in groups:
        done = g.completed
        rows.append(
            Row(
                group=_group_name(g),
                kernel=g.label,
                source=g,
                summary=summarize(g.values),
                diverged=len(g.by_status("diverged")),
                failed=len(g.by_status("failed")),
                running=len(g.by_status("running")),
                model_params=next((r.model_params for r in done if r.model_params is not None), None),
                tokens_per_s=_mean_or_none([r.tokens_per_s for r in done]),
                value_source=_sources(g),
                test_sets={name: summarize(g.test_set_values(name)) for name in test_sets},
            )
        )
    # Order: infinite, finite, unknown; the baseline first in its group, then by feature dimension and name.
    rows.sort(
        key=lambda r: (
            GROUP_ORDER[r.group],
            r.source.name != baseline,
            r.source.feature_dim if r.source.feature_dim is not None else math.inf,
            r.kernel,
        )
    )
    candidates = [r for r in rows if r.source.name == baseline]
    base = max(candidates, key=lambda r: r.summary.n) if candidates else None
    if base is not None:
        base.is_baseline = True
        for r in rows:
            if r is base:
                continue
            r.welch_p = welch_p(base.source.values, r.source.values)
            r.bootstrap = bootstrap_vs(base.source, r.source, n_samples=n_samples, seed=seed)
    head_dims = sorted({r.head_dim for g in groups for r in g.runs if isinstance(r.head_dim, int)})
    return TaskTable(groups[0].task, first.task_type, first.metric, first.higher_is_better, head_dims, base, rows,
                     test_sets)


# ---- formatting ---------------------------------------------------------------------------------------------
def fmt_p(p: float | None) -> str:
    """A p-value for a table cell: ``0.042``, ``<0.001`` or ``n/a``."""
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_eq(p: float | None) -> str:
    """A p-value in prose: ``p=0.042``, ``p<0.001`` or ``p=n/a``."""
    s = fmt_p(p)
    return f"p{s}" if s.startswith("<") else f"p={s}"


def fmt_featdim(fd: float | None, latex: bool = False) -> str:
    if fd is None:
        return "?"
    if math.isinf(fd):
        return r"$\infty$" if latex else "∞"
    return f"{int(fd):,}".replace(",", "{,}" if latex else ",")


def fmt_params(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def fmt_value(s: Summary, pm: str = "±", digits: int = 2) -> str:
    if s.n == 0:
        return "—"
    std = "n/a" if math.isnan(s.std) else f"{s.std:.{digits}f}"
    return f"{s.mean:.{digits}f} {pm} {std}"


def _flag_bool(x: Any) -> str:
    return "?" if x is None else ("yes" if x else "no")


def _featdim_header(t: TaskTable) -> str:
    hd = ",".join(str(h) for h in t.head_dims) or "?"
    return f"feature dim (d_head={hd})"


def to_markdown(t: TaskTable) -> str:
    """The table as GitHub Markdown, with a one-line legend."""
    base = t.baseline.kernel if t.baseline else BASELINE
    head = [
        "group", "kernel", _featdim_header(t), "sym.", "PD", f"{t.metric_header} (mean ± std)", "n",
        *[f"{name} {t.metric_header} (n)" for name in t.test_sets],
        "diverged", "failed", "running", "params", "tok/s", f"Welch p vs {base}", f"bootstrap p vs {base}",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in t.rows:
        g = r.source
        kernel = f"**{r.kernel}** (baseline)" if r.is_baseline else r.kernel
        value = fmt_value(r.summary, digits=t.digits) + (VALID_FLAG if r.value_source in ("valid", "mixed") else "")
        boot = "—" if r.is_baseline else ("n/a" if r.bootstrap is None else fmt_p(r.bootstrap.p_value))
        cells = [
            r.group, kernel, fmt_featdim(g.feature_dim), _flag_bool(g.first("symmetric")),
            _flag_bool(g.first("positive_definite")), f"{value} {r.flags}".rstrip(), str(r.summary.n),
            *[f"{fmt_value(r.test_sets[name], digits=t.digits)} ({r.test_sets[name].n})" for name in t.test_sets],
            str(r.diverged), str(r.failed), str(r.running), fmt_params(r.model_params),
            "?" if r.tokens_per_s is None else f"{r.tokens_per_s:,.0f}",
            "—" if r.is_baseline else fmt_p(r.welch_p), boot,
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    legend = (
        f"mean ± sample std (ddof=1) over the n completed seeds; `{WELCH_FLAG}` Welch t-test p<{ALPHA} vs {base}; "
        f"`{BOOT_FLAG}` paired bootstrap p<{ALPHA} vs {base} (test sentences pooled over seed pairs); "
        f"`{VALID_FLAG}` value from validation (no test result yet). tok/s: mean over seeds of the training "
        f"throughput each run logged, which depends on what else the machine ran meanwhile; the speed comparison "
        f"is `scripts/measure_throughput.py`'s (every kernel timed alike), in its own section when measured."
        + (" Other test sets (`evaluate.py test_sets.<name>...`): mean ± std over the seeds scored on them (n)."
           if t.test_sets else "")
    )
    return "\n".join(lines) + "\n\n" + legend + "\n"


def to_csv(t: TaskTable) -> str:
    """Full-precision CSV (empty cell = not available; feature_dim is an integer or ``inf``)."""
    buf = io.StringIO()
    extra = [f"test_set.{name}.{k}" for name in t.test_sets for k in ("mean", "std", "n")]
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS + extra, lineterminator="\n")
    w.writeheader()
    for r in t.rows:
        g, s = r.source, r.summary

        def num(x: float | None) -> str:
            return "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(x)

        fd = g.feature_dim
        w.writerow(
            {
                "task": t.task, "metric": t.metric, "higher_is_better": t.higher_is_better, "group": r.group,
                "kernel": r.kernel, "kernel_name": g.name, "kernel_params": json.dumps(g.params, sort_keys=True),
                "feature_dim": "" if fd is None else ("inf" if math.isinf(fd) else int(fd)),
                "head_dim": ";".join(str(h) for h in t.head_dims), "symmetric": g.first("symmetric"),
                "positive_definite": g.first("positive_definite"), "mean": num(s.mean), "std": num(s.std),
                "n": s.n, "seeds": ";".join(str(x.seed) for x in g.completed), "diverged": r.diverged,
                "failed": r.failed, "running": r.running, "params": r.model_params or "",
                "tokens_per_s": num(r.tokens_per_s), "welch_p": num(r.welch_p),
                "bootstrap_p": num(r.bootstrap.p_value) if r.bootstrap else "",
                "bootstrap_pairs": r.bootstrap.pairs if r.bootstrap else "", "value_source": r.value_source,
                "baseline": r.is_baseline,
                **{f"test_set.{name}.{k}": (num(getattr(r.test_sets[name], k)) if k != "n" else r.test_sets[name].n)
                   for name in t.test_sets for k in ("mean", "std", "n")},
            }
        )  # fmt: skip
    return buf.getvalue()


def _tex(s: str) -> str:
    for a, b in [("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")]:
        s = s.replace(a, b)
    return s


def to_latex(t: TaskTable) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), a rule between the two groups."""
    base = t.baseline.kernel if t.baseline else BASELINE
    metric = _tex(t.metric_header).replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$")
    extra = "".join(f" & {_tex(name)} {metric}" for name in t.test_sets)
    lines = [
        r"\begin{tabular}{llrccrr" + "r" * len(t.test_sets) + "rrrr}",
        r"\toprule",
        f"Group & Kernel & {_tex(_featdim_header(t))} & Sym. & PD & {metric} & $n${extra} & Div. & Failed & "
        f"Params & tok/s \\\\",
        r"\midrule",
    ]
    prev = None
    for r in t.rows:
        if prev is not None and r.group != prev:
            lines.append(r"\midrule")
        prev = r.group
        g = r.source
        kernel = rf"\textbf{{{_tex(r.kernel)}}}" if r.is_baseline else _tex(r.kernel)
        flags = r.flags.replace(BOOT_FLAG, r"$^\dagger$").replace(WELCH_FLAG, r"$^*$")
        cells = [
            r.group, kernel, fmt_featdim(g.feature_dim, latex=True), _flag_bool(g.first("symmetric")),
            _flag_bool(g.first("positive_definite")), fmt_value(r.summary, r"$\pm$", t.digits) + flags,
            str(r.summary.n), *[fmt_value(r.test_sets[name], r"$\pm$", t.digits) for name in t.test_sets],
            str(r.diverged), str(r.failed), fmt_params(r.model_params),
            "?" if r.tokens_per_s is None else f"{r.tokens_per_s:.0f}",
        ]  # fmt: skip
        lines.append(" & ".join(cells) + r" \\")
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        f"% mean $\\pm$ sample std (ddof=1) over seeds; * Welch p<{ALPHA}, \\dagger paired bootstrap p<{ALPHA}"
        f" vs {_tex(base)}",
    ]
    return "\n".join(lines) + "\n"
