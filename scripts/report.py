#!/usr/bin/env python
"""Build the kernel comparison report for an outputs folder or one sweep folder.

    python scripts/report.py outputs/                 # or: make report SWEEP=multirun/2024-01-01/12-00-00
    python scripts/report.py multirun/... --wandb     # also log the tables to W&B (WANDB_MODE, offline default)
    python scripts/report.py outputs/sweeps/feature_dim outputs/sweeps/kernels_lm   # two sweeps as one report

Prints the tables and the verdict, and writes <folder>/report/{REPORT.md, <task>.md/.csv/.tex/.png}. Bad input
is one line on stderr with its kind's exit code (``kernel_attention.cli``).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from kernel_attention import cli
from kernel_attention.evaluation.bleu import DEFAULT_SEED
from kernel_attention.report import build_report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = cli.ArgumentParser(prog="scripts/report.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="+", help="outputs folder or sweep folder(s), searched recursively for "
                    "metrics.json; several folders (two sweeps that share runs) report as one")
    ap.add_argument("--out", default=None, help="where to write the report (default: <first folder>/report)")
    ap.add_argument("--baseline", default="edp", help="kernel every other kernel is tested against")
    ap.add_argument("--bootstrap-samples", type=cli.positive_int, default=1000, help="paired bootstrap resamples")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="bootstrap RNG seed (sacreBLEU's default)")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    ap.add_argument("--wandb", action="store_true", help="also log the tables as W&B Tables")
    args = ap.parse_args(argv)
    command = shlex.join(["python", "scripts/report.py", *argv])
    report = build_report(
        args.folder, out_dir=args.out, command=command, n_samples=args.bootstrap_samples, seed=args.seed,
        baseline=args.baseline, plots=not args.no_plots,
    )  # fmt: skip
    print(report.summary_text())
    print(f"wrote {len(report.files)} file(s) to {report.out_dir}")
    if args.wandb:
        from kernel_attention.report.wandb_log import log_to_wandb

        log_to_wandb(report)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run("report", main))
