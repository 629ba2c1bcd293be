"""Sweep job folders have ``=`` and ``,`` in their names (kernel=rbf,seed=2); a run_dir pointing at one works as
typed on every Hydra entry point, instead of a grammar error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kernel_attention.cli import quote_path_values

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arg,want", [
    ("run_dir=outputs/sweeps/kernels_mt/kernel=rbf,seed=2", "run_dir='outputs/sweeps/kernels_mt/kernel=rbf,seed=2'"),
    ("run_dir=outputs/multi30k/transformer_small/edp/seed1", "run_dir=outputs/multi30k/transformer_small/edp/seed1"),
    ("run_dir='outputs/x/kernel=rbf'", "run_dir='outputs/x/kernel=rbf'"),  # already quoted: left alone
    ("+data_dir=/d/a b", "+data_dir='/d/a b'"),
    ("input=/in/kernel=edp.txt", "input='/in/kernel=edp.txt'"),
    ("beam=5", "beam=5"),  # not a path key
    ("run_dir=it's=odd", "run_dir=it's=odd"),  # a quote inside: not guessed at
])  # fmt: skip
def test_path_values_are_quoted_only_when_the_grammar_would_misread_them(arg: str, want: str) -> None:
    assert quote_path_values([arg]) == [want]


def test_evaluate_takes_a_sweep_job_folder_as_typed(tmp_path: Path) -> None:
    job = tmp_path / "sweeps" / "kernels_mt" / "kernel=edp,seed=1"
    job.mkdir(parents=True)
    proc = subprocess.run([sys.executable, str(REPO / "evaluate.py"), f"run_dir={job}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 4 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"evaluate: run error: {job} is not a run folder"), lines[0]
