"""Smoke tests of the benchmark scripts: --quick runs on tiny sizes write CSV + Markdown with the expected
columns. No timing assertions: timings on shared CI machines mean nothing."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def check_outputs(out: Path, stem: str, columns: list[str]) -> list[dict]:
    csv_path, md_path = out / f"{stem}.csv", out / f"{stem}.md"
    assert csv_path.is_file() and md_path.is_file()
    with csv_path.open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == columns
        rows = list(reader)
    assert rows
    md = md_path.read_text()
    assert "| " + " | ".join(columns) + " |" in md
    assert "torch:" in md and "load_avg_1_5_15:" in md
    return rows


def test_benchmark_attention_quick(tmp_path: Path) -> None:
    mod = load_script("benchmark_attention")
    assert mod.main(["--quick", "--kernels", "edp", "taylor", "ei", "--out", str(tmp_path)]) == 0
    rows = check_outputs(tmp_path, "attention", mod.COLUMNS)
    assert {r["kernel"] for r in rows} == {"edp", "taylor", "ei"}
    assert {r["role"] for r in rows} == {"noncausal", "causal", "cross"}
    assert {"exact", "fast", "linear"} <= {r["path"] for r in rows}
    assert all(r["status"] == "ok" for r in rows)


def test_benchmark_attention_skips_exact_over_budget(tmp_path: Path) -> None:
    mod = load_script("benchmark_attention")
    args = ["--quick", "--kernels", "edp", "--roles", "noncausal", "--memory-budget-gb", "0", "--out", str(tmp_path)]
    assert mod.main(args) == 0
    rows = check_outputs(tmp_path, "attention", mod.COLUMNS)
    assert {r["status"] for r in rows if r["path"] == "exact"} == {"skipped (OOM risk)"}
    assert {r["status"] for r in rows if r["path"] == "fast"} == {"ok"}


@pytest.mark.filterwarnings("ignore")
def test_benchmark_training_quick(tmp_path: Path) -> None:
    mod = load_script("benchmark_training")
    assert mod.main(["--quick", "--kernels", "edp", "ei", "--out", str(tmp_path)]) == 0
    rows = check_outputs(tmp_path, "training", mod.COLUMNS)
    assert [r["model"] for r in rows] == [mod.BASELINE, "ours: edp", "ours: ei"]
    assert all(float(r["tokens_per_s"]) > 0 and float(r["mfu"]) > 0 for r in rows)


def test_benchmark_gemm_floor_quick(tmp_path: Path) -> None:
    mod = load_script("benchmark_gemm_floor")
    assert mod.main(["--quick", "--out", str(tmp_path)]) == 0
    rows = check_outputs(tmp_path, "gemm_floor", mod.COLUMNS)
    assert [(r["schedule"], r["gemms"]) for r in rows] == [("exact (materialised)", "6"), ("tiled (recomputing)", "7")]
    assert all(float(r["gflop"]) == pytest.approx(int(r["gemms"]) * 2 * 8 * 128 * 128 * 64 / 1e9) for r in rows)
