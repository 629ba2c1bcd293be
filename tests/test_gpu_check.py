"""scripts/gpu_check.py's CPU dry run (issue 14): the steps a GPU run takes, their output layout, and that a
failing step does not lose the others' results. The GPU figures themselves only come from a lent device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _dry(out: Path, only: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra or {})}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--out", str(out), "--only", only], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_cpu_dry_run_writes_every_file(tmp_path: Path) -> None:
    if not (Path(os.environ.get("KA_DATA_ROOT", REPO.parent / "shared" / "data")) / "multi30k").is_dir():
        pytest.skip("needs the raw Multi30k (KA_DATA_ROOT)")
    proc = _dry(tmp_path, "cuda_tests,attention_benchmark,training_benchmark,train_edp")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {n: s["status"] for n, s in summary["steps"].items()} == {
        "cuda_tests": "ok", "attention_benchmark": "ok", "training_benchmark": "ok", "train_edp": "ok"}
    assert summary["steps"]["cuda_tests"]["counts"]["tests"] > 50  # collected (skipped without CUDA)
    assert {p.name for p in tmp_path.iterdir()} == {"summary.json", "gpu_check.log", "attention.csv",
                                                     "training.csv", "runs.json"}
    assert len(list(tmp_path.iterdir())) <= 8  # what the device tool returns
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert runs["edp"]["status"] == "completed" and "bleu" in runs["edp"]["test"]


def test_a_failing_step_keeps_the_others(tmp_path: Path) -> None:
    """The training step fails (no corpus): its status says so, the earlier step's result is kept, exit 1."""
    proc = _dry(tmp_path, "training_benchmark,train_edp", {"KA_DATA_ROOT": str(tmp_path / "nothing")})
    assert proc.returncode == 1
    steps = json.loads((tmp_path / "summary.json").read_text())["steps"]
    assert steps["training_benchmark"]["status"] == "ok" and steps["train_edp"]["status"].startswith("failed")
    assert (tmp_path / "training.csv").is_file()
    assert "data error" in (tmp_path / "gpu_check.log").read_text()
