"""The comparison report: read every run's metrics.json under a folder, tabulate kernels per task (finite vs
infinite feature dimension), test them against edp, compute the verdict, and write Markdown/CSV/LaTeX/PNG.

Modules: ``collect`` (find and parse runs), ``stats`` (summaries, Welch, paired bootstrap), ``tables``
(rows and their renderings), ``verdict`` (finite vs infinite per task), ``plots``, ``build`` (orchestration and
atomic writes), ``wandb_log`` (optional W&B Table).
"""

from kernel_attention.report.build import Report, ReportError, build_report
from kernel_attention.report.collect import collect_runs, group_runs

__all__ = ["Report", "ReportError", "build_report", "collect_runs", "group_runs"]
