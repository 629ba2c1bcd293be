"""scripts/measure_throughput.py times every kernel of a sweep alike and the report plots the metric against it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_train_support import REPO, env, run_cli, tiny_overrides

from kernel_attention.report.build import build_report
from kernel_attention.training.lock import RunFolderLock

SCRIPT = REPO / "scripts" / "measure_throughput.py"


def _measure(folder: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(folder), "--rounds", "2", "--steps", "1", "--batches",
                           "2"], cwd=cwd, env=env(), capture_output=True, text=True, timeout=300)  # fmt: skip


def test_every_kernel_timed_in_one_interleaved_measurement(tmp_path: Path, tiny_root: Path) -> None:
    for kernel, seed in (("edp", 1), ("edp", 2), ("linear", 1)):
        run_cli([*tiny_overrides(tiny_root, "mt", updates=4), f"kernel={kernel}", f"seed={seed}"], cwd=tmp_path)
    out = tmp_path / "outputs"
    busy = out / "tiny_mt" / "transformer_tiny" / "edp" / "seed2"
    with RunFolderLock(busy):  # a live trainer's folder is never written
        proc = _measure(out, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"skipped {busy}: in use by another process" in proc.stderr
    assert "timing 2 kernel configuration(s)" in proc.stdout  # edp's two seeds are one configuration
    recs = {k: json.loads((out / "tiny_mt" / "transformer_tiny" / k / "seed1" / "throughput.json").read_text())
            for k in ("edp", "linear")}
    assert not (busy / "throughput.json").exists()
    assert recs["edp"]["measured_at"] == recs["linear"]["measured_at"]
    for k, rec in recs.items():
        assert rec["kernel"] == k and rec["interleaved_with"] == ["edp", "linear"]
        assert len(rec["rounds_tokens_per_s"]) == 2 and rec["tokens_per_s"] > 0
        assert sorted(rec["rounds_tokens_per_s"])[0] <= rec["tokens_per_s"] <= sorted(rec["rounds_tokens_per_s"])[1]
        assert (rec["threads"], rec["steps"], rec["batches"]) == (1, 1, 2)

    rep = build_report(out, n_samples=20)
    md = (rep.out_dir / "tiny_mt.md").read_text()
    assert "Quality against training speed" in md and "Not measured" not in md
    assert f"| edp | {recs['edp']['tokens_per_s']:,.0f} | 1.00 |" in md
    assert (rep.out_dir / "tiny_mt_metric_vs_speed.png").is_file()


def test_two_measurements_are_never_mixed_in_one_figure(tmp_path: Path) -> None:
    from test_report_families import _metrics

    for i, (name, fd) in enumerate((("edp", float("inf")), ("linear", 64.0))):
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps(_metrics(name, {}, fd, 1, 2.0 + i)))
        (run / "throughput.json").write_text(json.dumps({"tokens_per_s": 1000.0 * (i + 1),
                                                         "measured_at": f"2026-01-0{i + 1}T00:00:00"}))
    md = (build_report(tmp_path, n_samples=20).out_dir / "tinyshakespeare.md").read_text()
    assert "Throughput files from more than one measurement" in md and "| linear | 2,000" not in md


def test_a_folder_without_finished_runs_is_one_line(tmp_path: Path) -> None:
    proc = _measure(tmp_path, tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 4 and len(lines) == 1 and "no finished run" in lines[0], proc.stderr


def test_two_sweeps_are_timed_as_one_and_a_null_option_does_not_split_a_kernel(tmp_path: Path) -> None:
    """feature_dim + kernels_lm are measured in the same rounds: a kernel setting run in either sweep is one
    group (the sweep name is not a setting), a record without a null option (a run resumed before metrics.json
    kept nulls) joins its fresh seeds, and a folder reached twice counts once."""
    import runpy

    finished_runs = runpy.run_path(str(SCRIPT))["finished_runs"]
    cfg = {"kernel": {"name": "exp_l1", "scale": None}, "task": {"name": "t"}, "seed": 1, "sweep": "kernels_lm"}
    records = {"kernels_lm/a": cfg, "kernels_lm/b": {**cfg, "seed": 2, "kernel": {"name": "exp_l1"}},
               "feature_dim/c": {**cfg, "seed": 3, "sweep": "feature_dim"},
               "feature_dim/d": {**cfg, "kernel": {"name": "exp_l1", "scale": 2.0}, "sweep": "feature_dim"},
               "feature_dim/e": {**cfg, "kernel": {"name": "edp"}}}
    for sub, config in records.items():
        (tmp_path / sub).mkdir(parents=True)
        status = "failed" if sub.endswith("e") else "completed"  # a failed run may not have built: not timed
        (tmp_path / sub / "metrics.json").write_text(json.dumps({"status": status, "config": config}))
    groups = finished_runs(tmp_path / "kernels_lm", tmp_path / "feature_dim", tmp_path / "kernels_lm" / "a")
    members = sorted(sorted(p.name for p, _ in runs) for runs in groups.values())
    assert members == [["a", "b", "c"], ["d"]]


def _speed_sweep(root: Path, points: dict[str, tuple[float, float]], metric: str, higher: bool) -> Path:
    """One run per kernel with a hand-set score and a throughput.json from one shared measurement."""
    from test_report_families import _metrics

    for name, (value, tps) in points.items():
        run = root / name
        run.mkdir(parents=True)
        m = _metrics(name, {}, float("inf") if name == "edp" else 64.0, 1, value)
        m["task"].update(metric=metric, higher_is_better=higher)
        m["test"] = {"checkpoint": "last", "split": "test", "n": 10, metric: value}
        (run / "metrics.json").write_text(json.dumps(m))
        (run / "throughput.json").write_text(json.dumps({"tokens_per_s": tps, "measured_at": "2026-01-01T00:00"}))
    return root


def _frontier_cells(md: str) -> dict[str, str]:
    rows = [ln.split("|") for ln in md.splitlines() if ln.startswith("| ") and ln.count("|") == 6]
    return {r[1].strip(): r[5].strip() for r in rows if r[1].strip() != "kernel"}


def test_the_speed_table_marks_the_quality_speed_frontier(tmp_path: Path) -> None:
    """Pareto set worked out by hand. Lower ppl is better: edp (20, 1,000 tok/s) is the best and slowest; linear
    (22, 3,000) is faster; cosformer (23, 2,000) is slower AND worse than linear, so dominated; taylor (25, 5,000)
    is the fastest; rbf ties edp's score but is slower, so dominated (a tie on one axis still dominates)."""
    pts = {"edp": (20.0, 1000.0), "linear": (22.0, 3000.0), "cosformer": (23.0, 2000.0), "taylor": (25.0, 5000.0),
           "rbf": (20.0, 900.0)}  # fmt: skip
    md = (build_report(_speed_sweep(tmp_path / "lm", pts, "ppl", False), n_samples=20).out_dir
          / "tinyshakespeare.md").read_text()  # fmt: skip
    assert _frontier_cells(md) == {"taylor": "✓", "linear": "✓", "cosformer": "", "edp": "✓", "rbf": ""}
    assert "fastest first): taylor, linear, edp." in md

    # Higher is better (BLEU): the same numbers read the other way round. taylor (25, fastest) dominates every
    # slower kernel with a lower score, so the frontier is taylor alone.
    md = (build_report(_speed_sweep(tmp_path / "mt", pts, "bleu", True), n_samples=20).out_dir
          / "tinyshakespeare.md").read_text()  # fmt: skip
    assert _frontier_cells(md) == {"taylor": "✓", "linear": "", "cosformer": "", "edp": "", "rbf": ""}
    assert "fastest first): taylor." in md
