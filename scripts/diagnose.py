#!/usr/bin/env python
"""Measure the learned attention kernels of trained runs (issue #11; Wright & Gonzalez 2021's claims).

    python scripts/diagnose.py <run folder or sweep folder> [split=valid n=128 checkpoint=last roles=all ...]

For each run folder (a sweep folder: every completed run below it) writes ``<run>/diagnostics.json`` atomically
(docs/contracts.md §6): per role × layer × head, the asymmetry and the indefiniteness of the token kernel matrix,
the effective and numerical rank of K and of the attention matrix, attention entropy, and the q·k forms'
asymmetry. ``scripts/report.py`` reads the files. Options (key=value): split, n, checkpoint (best|avg|last;
default: the one the run's test score comes from, its trainer.eval_checkpoint), roles (all or a comma list of
enc_self, dec_self, cross), batch_size, sample_seed, rank_rtol, sv_points, data_dir.
Bad input is one line on stderr with its kind's exit code (``kernel_attention.cli``); a run folder is locked while
its file is written, so it never has two writers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kernel_attention import cli
from kernel_attention.diagnostics.run import DiagnoseConfig, diagnose_run, find_runs
from kernel_attention.registry import ConfigError, config_from_mapping
from kernel_attention.training.lock import RunFolderLock


def _value(text: str) -> int | float | str | None:
    """A command-line value as Hydra would read it: null, an int, a float, else the string."""
    if text.lower() in ("null", "none", "~"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_options(pairs: list[str]) -> DiagnoseConfig:
    """``key=value`` words → a validated ``DiagnoseConfig``."""
    raw: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"option {pair!r} is not key=value (e.g. n=64 split=valid)")
        raw[key] = _value(value)
    opts = config_from_mapping(DiagnoseConfig, raw, "scripts/diagnose.py")
    opts.validate()
    return opts


def _status(run: Path) -> str | None:
    try:
        return json.loads((run / "metrics.json").read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError):
        return None


def _line(res: dict) -> str:
    s = res["summary"].get("all", {})

    def f(key: str) -> str:
        v = s.get(key)
        return "n/a" if v is None else f"{v:.3f}"

    return (f"{res['run']['kernel']} seed {res['run']['seed']}: asymmetry {f('asymmetry')}, negative mass "
            f"{f('negative_mass')}, erank(A) {f('erank_A')}, erank(K) {f('erank_K')}, entropy {f('entropy_norm')} "
            f"({res['sample']['n']} sequences, {res['seconds']:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = cli.ArgumentParser(prog="scripts/diagnose.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="a run folder, or a sweep folder (every completed run below it)")
    ap.add_argument("options", nargs="*", help="key=value options (split=valid n=64 checkpoint=best ...)")
    args = ap.parse_args(argv)
    opts = parse_options(args.options)
    runs = find_runs(args.folder)
    single = len(runs) == 1 and Path(args.folder).resolve() == runs[0].resolve()
    done = 0
    for run in runs:
        if not single and _status(run) != "completed":
            print(f"skipped {run}: status {_status(run) or 'unknown (no metrics.json)'}, not completed")
            continue
        with RunFolderLock(run):
            res = diagnose_run(run, opts)
        done += 1
        print(f"{_line(res)} → {run}/diagnostics.json")
    print(f"diagnosed {done} of {len(runs)} run folder(s)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run("diagnose", main))
