"""Optional: log the report's tables to Weights & Biases as ``wandb.Table``s. Never required: without wandb
(or with it failing) the report is unchanged and a one-line note goes to stderr."""

from __future__ import annotations

import csv
import io
import os
import sys

from kernel_attention.report.build import Report
from kernel_attention.report.tables import CSV_COLUMNS, to_csv
from kernel_attention.report.verdict import overall


def log_to_wandb(report: Report) -> bool:
    """Log one W&B Table per task plus the verdict. Mode comes from ``WANDB_MODE`` (default ``offline``, so
    nothing leaves the machine unless the user asks); project from ``WANDB_PROJECT`` (default
    ``kernel-attention``). Returns whether anything was logged."""
    from kernel_attention.wandb_env import prepare_wandb

    mode = os.environ.get("WANDB_MODE", "offline")
    prepare_wandb(mode)  # before W&B starts: offline means no network at all, telemetry included
    try:
        import wandb
    except ImportError:
        print("report: --wandb given but wandb is not installed; skipped", file=sys.stderr)
        return False
    try:
        run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "kernel-attention"),
            mode=mode,
            job_type="report",
            dir=str(report.out_dir),
            config={"source": str(report.root)},
        )
        for task, t in report.tables.items():
            rows = list(csv.DictReader(io.StringIO(to_csv(t))))
            table = wandb.Table(columns=CSV_COLUMNS, data=[[r[c] for c in CSV_COLUMNS] for r in rows])
            run.log({f"report/{task}": table})
            run.summary[f"verdict/{task}"] = report.verdicts[task].text
        run.summary["verdict"] = overall(list(report.verdicts.values()))
        run.finish()
    except Exception as e:  # wandb errors must never cost the user the report that was already written
        print(f"report: W&B logging failed ({type(e).__name__}: {e}); files are written anyway", file=sys.stderr)
        return False
    return True
