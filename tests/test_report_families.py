"""Issue 16: a sweep over one kernel's parameter reads as a curve (family × feature dimension) in the report."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from kernel_attention.report.build import build_report
from kernel_attention.report.families import families, family_curves

# (kernel name, params, feature dim) → bpc-like values per seed (lower is better)
RUNS: dict[tuple[str, str, float], list[float | None]] = {
    ("edp", "{}", math.inf): [1.50, 1.52],
    ("rbf", "{}", math.inf): [1.55, 1.53],
    ("random_features", '{"m": 8}', 8): [2.10, 2.20],
    ("random_features", '{"m": 32}', 32): [1.80, 1.84],
    ("random_features", '{"m": 128}', 128): [1.62, None],  # seed 2 diverged
    ("linear", "{}", 64): [2.50, 2.40],  # one setting only: not a family
}


def _metrics(name: str, params: dict[str, Any], fd: float, seed: int, value: float | None) -> dict[str, Any]:
    status = "completed" if value is not None else "diverged"
    d: dict[str, Any] = {
        "schema": 1, "status": status, "status_reason": "" if value is not None else "loss is NaN at update 9",
        "run": {"name": f"{name}-{seed}", "group": "g", "dir": "x", "started_at": "2026-01-01T00:00:00",
                "updated_at": "2026-01-01T01:00:00"},
        "kernel": {"name": name, "label": "", "params": params,
                   "properties": {"feature_dim": "inf" if math.isinf(fd) else fd, "symmetric": True,
                                  "positive_definite": True, "can_be_negative": False}},
        "task": {"name": "tinyshakespeare", "type": "lm", "metric": "ppl", "higher_is_better": False},
        "seed": seed,
        "model": {"preset": "lm_small", "params": 1000, "d_model": 128, "heads": 2, "head_dim": 64},
        "train": {"updates": 10, "epochs": 1.0, "train_tokens": 100, "tokens_per_s": 10.0, "wall_time_s": 1.0,
                  "skipped_updates": 0},
        "valid": {"best_loss": 1.0, "best_ppl": value, "best_update": 10, "history": []},
    }  # fmt: skip
    if value is not None:
        d["test"] = {"checkpoint": "best", "split": "test", "n": 10, "ppl": value}
    return d


def _sweep(root: Path) -> Path:
    for (name, params, fd), values in RUNS.items():
        for seed, v in enumerate(values, start=1):
            run = root / f"{name}{params}" / str(seed)
            run.mkdir(parents=True)
            (run / "metrics.json").write_text(json.dumps(_metrics(name, json.loads(params), fd, seed, v)))
    return root


def test_a_parameter_sweep_becomes_one_family_in_dimension_order(tmp_path: Path) -> None:
    rep = build_report(_sweep(tmp_path), n_samples=50)
    t = rep.tables["tinyshakespeare"]
    fams = families(t)
    assert [f.name for f in fams] == ["random_features"]  # linear has one setting, edp/rbf are infinite
    rows = fams[0].rows
    assert [r.source.feature_dim for r in rows] == [8, 32, 128]
    assert [r.summary.n for r in rows] == [2, 2, 1] and rows[2].diverged == 1

    fig = family_curves(t)
    (bars,) = [c for c in fig.axes[0].containers if c.get_label() == "random_features"]  # the errorbar
    line = bars.lines[0]
    assert list(line.get_xdata()) == [8, 32, 128]
    want = [statistics.mean([2.10, 2.20]), statistics.mean([1.80, 1.84]), 1.62]
    assert all(math.isclose(a, b) for a, b in zip(line.get_ydata(), want))
    levels = sorted(ln.get_ydata()[0] for ln in fig.axes[0].get_lines() if "(∞)" in str(ln.get_label()))
    assert levels == sorted([statistics.mean([1.50, 1.52]), statistics.mean([1.55, 1.53])])
    # "log axis, ∞ at the end": the last tick is ∞, past the largest dimension, and each infinite kernel's mean
    # is also a point there (a one-point line at x ≥ the ∞ tick).
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xticklabels()[-1].get_text() == "∞"
    x_inf = ax.get_xticks()[-1]
    assert x_inf > 128
    points = [c.lines[0] for c in ax.containers]  # each errorbar's data line (its caps are separate lines)
    inf_pts = [ln for ln in points if float(ln.get_xdata()[0]) >= x_inf]
    assert sorted(float(ln.get_ydata()[0]) for ln in inf_pts) == levels
    xs_inf = [float(ln.get_xdata()[0]) for ln in inf_pts]
    assert len(set(xs_inf)) == len(xs_inf) and ax.get_xlim()[1] > max(xs_inf)  # apart, and inside the view
    # the broken-axis marker "//": two short strokes in axes coordinates around y = 0, between 128 and ∞
    strokes = [ln for ln in ax.get_lines() if list(ln.get_ydata()) == [-0.02, 0.02]]
    assert len(strokes) == 2 and all(128 < min(ln.get_xdata()) < x_inf for ln in strokes)

    md = (rep.out_dir / "tinyshakespeare.md").read_text()
    sd = statistics.stdev([2.10, 2.20])
    assert f"| m=8 | 8 | {statistics.mean([2.10, 2.20]):.2f} ± {sd:.2f} | 2 | 0 | " in md
    assert f"| m=128 | 128 | 1.62 | 1 | 1 | {1.62 - 1.51:+.2f} |" in md  # Δ vs edp's mean 1.51
    assert "Infinite-dimensional references: edp" in md and "rbf" in md
    assert (rep.out_dir / "tinyshakespeare_families.png").stat().st_size > 10_000
    assert "Feature-dimension curves" in (rep.out_dir / "REPORT.md").read_text()


def test_no_family_means_no_section_and_no_figure(tmp_path: Path) -> None:
    for name, fd in (("edp", math.inf), ("linear", 64)):
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps(_metrics(name, {}, fd, 1, 2.0)))
    rep = build_report(tmp_path, n_samples=50)
    assert families(rep.tables["tinyshakespeare"]) == []
    assert "Feature-dimension curves" not in (rep.out_dir / "REPORT.md").read_text()
    assert not (rep.out_dir / "tinyshakespeare_families.png").exists()


def test_one_kernel_under_two_run_settings_is_two_rows_never_one_mean(tmp_path: Path) -> None:
    """Two sweeps of edp at different contexts read together: before run settings were keyed, the six runs became
    one row of "3 seeds" (the latest run of each seed, the others silently dropped). Now each context is its own
    row, named by what differs; where the data lies on disk and the W&B settings do not split a row."""
    from kernel_attention.report import collect_runs, group_runs

    values = {64: [2.70, 2.72, 2.74], 256: [3.20, 3.23, 3.26]}
    for block, vals in values.items():
        for seed, v in enumerate(vals, start=1):
            run = tmp_path / f"T{block}" / str(seed)
            run.mkdir(parents=True)
            m = _metrics("edp", {}, math.inf, seed, v)
            m["config"] = {"kernel": {"name": "edp"}, "seed": seed, "sweep": f"s{block}",
                           "task": {"name": "tinyshakespeare", "block_size": block, "data": f"/disk{seed}/ts"},
                           "logger": {"mode": "online" if seed == 1 else "disabled"}, "trainer": {"max_updates": 9}}
            (run / "metrics.json").write_text(json.dumps(m))
    groups = group_runs(collect_runs(tmp_path).runs)["tinyshakespeare"]
    rows = {g.label: [r.value for r in g.completed] for g in groups}
    assert rows == {"edp [task.block_size=64]": values[64], "edp [task.block_size=256]": values[256]}

    md = (build_report(tmp_path, n_samples=20).out_dir / "tinyshakespeare.md").read_text()
    assert "| **edp [task.block_size=256]** (baseline) | ∞ | yes | yes | 3.23 ± 0.03 | 3 |" in md  # first found
    assert "| edp [task.block_size=64] | ∞ | yes | yes | 2.72 ± 0.02 * | 3 |" in md
