"""The comparison report on hand-made metrics.json files (docs/contracts.md §3).

Data: a translation task (BLEU from real sacreBLEU sentence stats, so the paired bootstrap has something to
resample) and an LM task (perplexities chosen by hand), 3 seeds per kernel. On both, edp clearly beats one finite
kernel; on translation it ties another (same noise level), on LM the infinite group wins.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from kernel_attention.evaluation.bleu import bleu_from_stats, bleu_stats
from kernel_attention.report import ReportError, build_report, collect_runs, group_runs
from kernel_attention.report.tables import p_eq, to_markdown

REPO = Path(__file__).resolve().parents[1]
PROPS = {  # kernel label -> (name, params, feature_dim at head_dim 16, symmetric, positive_definite)
    "edp": ("edp", {}, "inf", False, True),
    "rbf": ("rbf", {"gamma": 1.0}, "inf", True, True),
    "linear": ("linear", {}, 16, True, True),
    "quadratic": ("polynomial", {"p": 2, "label": "quadratic"}, 153, True, True),
    "taylor": ("taylor", {"order": 2}, 153, False, False),
}
LM_PPL = {  # hand-picked: edp mean 21, sample std 1 (population std would be 0.816)
    "edp": [20.0, 21.0, 22.0],
    "rbf": [22.0, 23.0, 24.0],
    "linear": [30.0, 31.0, 32.5],
    "taylor": [26.0, 27.0, 28.5],
}
MT_NOISE = {"edp": 0.15, "rbf": 0.17, "linear": 0.15, "quadratic": 0.45}  # share of words replaced
SEEDS = (1, 2, 3)


def _refs(n: int = 120) -> list[str]:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(50)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(6, 12))) for _ in range(n)]


def _hyps(refs: list[str], p: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(w if rng.random() >= p else "zz" for w in s.split()) for s in refs]


def metrics(
    task: str, label: str, seed: int, value: float | None, *, status: str = "completed", **extra: Any
) -> dict[str, Any]:
    """A metrics.json in the contract's schema."""
    name, params, fd, sym, pd = PROPS[label]
    lm = task == "wikitext2"
    metric = "ppl" if lm else "bleu"
    d: dict[str, Any] = {
        "schema": 1,
        "status": status,
        "status_reason": extra.pop("reason", ""),
        "run": {
            "name": f"{label}-{seed}",
            "group": "g",
            "dir": "x",
            "started_at": "2024-01-01T00:00:00",
            "updated_at": extra.pop("updated_at", "2024-01-01T01:00:00"),
        },
        "kernel": {
            "name": name,
            "label": label,
            "params": params,
            "properties": {
                "feature_dim": fd,
                "symmetric": sym,
                "positive_definite": pd,
                "can_be_negative": label == "taylor",
            },
        },
        "task": {"name": task, "type": "lm" if lm else "translation", "metric": metric, "higher_is_better": not lm},
        "seed": seed,
        "model": {"preset": "tiny", "params": 1_234_567, "d_model": 64, "heads": 4, "head_dim": 16},
        "train": {
            "updates": 300,
            "epochs": 1.0,
            "train_tokens": 9000,
            "tokens_per_s": 1000.0 + seed,
            "wall_time_s": 9.0,
            "skipped_updates": 0,
        },
        "valid": {
            "best_loss": 3.0,
            f"best_{metric}": value,
            "best_update": 300,
            "history": [{"update": u, "loss": 6 - u / 100, metric: (value or 1) * u / 300} for u in (100, 200, 300)],
        },
        "env": {"git_commit": "abc", "torch": "2.13.0", "cuda": None, "device": "cpu", "python": "3.11"},
    }
    if status == "completed":
        d["test"] = {"checkpoint": "best", "split": "test", "n": 120, metric: value, **extra}
    return d


def write(root: Path, d: dict[str, Any], sub: str | None = None) -> Path:
    run = root / (sub or f"{d['task']['name']}/{d['kernel']['label']}/{d['seed']}")
    (run / ".hydra").mkdir(parents=True, exist_ok=True)
    (run / "metrics.json").write_text(json.dumps(d))
    return run


@pytest.fixture(scope="module")
def mt_values() -> dict[str, list[float]]:
    return {}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, mt_values: dict[str, list[float]]) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    refs = _refs()
    for label, p in MT_NOISE.items():
        for seed in SEEDS:
            stats = bleu_stats(_hyps(refs, p, 100 * seed + len(label)), refs)
            bleu = bleu_from_stats(stats)
            mt_values.setdefault(label, []).append(bleu)
            write(root, metrics("multi30k", label, seed, bleu, bleu_stats=stats))
    for label, ppls in LM_PPL.items():
        for seed, ppl in zip(SEEDS, ppls):
            write(root, metrics("wikitext2", label, seed, ppl))
    # One diverged linear LM run: counted, not averaged.
    write(root, metrics("wikitext2", "linear", 4, None, status="diverged", reason="loss is NaN at update 120"))
    return root


@pytest.fixture(scope="module")
def report(sweep: Path) -> Any:
    return build_report(sweep, command="python scripts/report.py SWEEP", n_samples=300)


def _csv(report: Any, task: str) -> dict[str, dict[str, str]]:
    with open(report.out_dir / f"{task}.csv", newline="") as f:
        return {r["kernel"]: r for r in csv.DictReader(f)}


def test_means_and_sample_stds(report: Any, mt_values: dict[str, list[float]]) -> None:
    lm = {r.kernel: r.summary for r in report.tables["wikitext2"].rows}
    assert lm["edp"].mean == pytest.approx(21.0) and lm["edp"].n == 3
    assert lm["edp"].std == pytest.approx(1.0)  # ddof=1; ddof=0 would give 0.816
    assert lm["linear"].mean == pytest.approx(np.mean(LM_PPL["linear"]))
    assert lm["linear"].std == pytest.approx(np.std(LM_PPL["linear"], ddof=1))
    mt = {r.kernel: r.summary for r in report.tables["multi30k"].rows}
    for label, values in mt_values.items():
        assert mt[label].mean == pytest.approx(np.mean(values))
        assert mt[label].std == pytest.approx(np.std(values, ddof=1))


def test_groups_and_order(report: Any) -> None:
    rows = report.tables["multi30k"].rows
    assert [(r.group, r.kernel) for r in rows] == [
        ("infinite", "edp"), ("infinite", "rbf"), ("finite", "linear"), ("finite", "quadratic"),
    ]  # fmt: skip
    assert rows[0].is_baseline and not any(r.is_baseline for r in rows[1:])


def test_significance_flags(report: Any) -> None:
    mt = {r.kernel: r for r in report.tables["multi30k"].rows}
    # edp clearly beats quadratic: both tests say so.
    assert mt["quadratic"].welch_p < 0.05 and mt["quadratic"].bootstrap.p_value < 0.05
    assert mt["quadratic"].flags == "*†" and mt["quadratic"].bootstrap.pairs == 3
    assert mt["quadratic"].bootstrap.diff < -10
    # linear has the same noise level as edp: a tie, no flag.
    assert mt["linear"].welch_p > 0.05 and mt["linear"].bootstrap.p_value > 0.05
    assert mt["linear"].flags == ""
    lm = {r.kernel: r for r in report.tables["wikitext2"].rows}
    expected = sps.ttest_ind(LM_PPL["edp"], LM_PPL["linear"], equal_var=False).pvalue
    assert lm["linear"].welch_p == pytest.approx(expected) and lm["linear"].flags == "*"
    assert lm["linear"].bootstrap is None  # no BLEU stats for LM
    md = (report.out_dir / "multi30k.md").read_text()
    assert "→ **edp better**" in md and "linear vs edp" in md and "→ **not significant**" in md


def test_diverged_run_is_counted_not_averaged(report: Any) -> None:
    lm = {r.kernel: r for r in report.tables["wikitext2"].rows}
    assert lm["linear"].diverged == 1 and lm["linear"].summary.n == 3
    assert "loss is NaN at update 120" in report.markdown


def test_verdict_matches_numbers(report: Any) -> None:
    lm = report.verdicts["wikitext2"]
    assert lm.outcome == "infinite"
    assert lm.best["infinite"].kernel == "edp" and lm.best["finite"].kernel == "taylor"
    adv = np.mean(LM_PPL["taylor"]) - 21.0  # ppl: lower is better, so infinite is ahead by this much
    assert lm.advantage == pytest.approx(adv)
    p = sps.ttest_ind(LM_PPL["edp"], LM_PPL["taylor"], equal_var=False).pvalue
    assert lm.welch_best == pytest.approx(p) and p < 0.05
    assert "infinite feature dimension wins" in lm.text
    assert f"infinite better by {adv:.2f} ppl (Welch {p_eq(p)})" in lm.text
    assert "Best infinite edp 21.00 ± 1.00 (n=3) vs best finite taylor" in lm.text
    mt = report.verdicts["multi30k"]
    assert mt.outcome == "no significant difference"  # linear (finite) ties edp
    assert mt.welch_best > 0.05 and mt.bootstrap_best is not None
    assert "Across 2 task(s): infinite wins: 1 (wikitext2); no significant difference: 1 (multi30k)." in (
        report.markdown
    )


def test_files_written_and_csv_parses_back(report: Any, mt_values: dict[str, list[float]]) -> None:
    out = report.out_dir
    assert out == report.root / "report"
    for task in ("multi30k", "wikitext2"):
        for suffix in (".md", ".csv", ".tex", "_metric_vs_featdim.png", "_valid_curves.png"):
            f = out / f"{task}{suffix}"
            assert f.is_file() and f.stat().st_size > 0, f
        assert (out / f"{task}_valid_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temp files
    lm = _csv(report, "wikitext2")
    assert float(lm["edp"]["mean"]) == pytest.approx(21.0) and float(lm["edp"]["std"]) == pytest.approx(1.0)
    assert lm["edp"]["feature_dim"] == "inf" and lm["taylor"]["feature_dim"] == "153"
    assert lm["linear"]["diverged"] == "1" and lm["linear"]["n"] == "3" and lm["linear"]["seeds"] == "1;2;3"
    assert lm["edp"]["welch_p"] == "" and float(lm["linear"]["welch_p"]) < 0.05
    mt = _csv(report, "multi30k")
    assert float(mt["quadratic"]["mean"]) == pytest.approx(np.mean(mt_values["quadratic"]))
    assert int(mt["quadratic"]["bootstrap_pairs"]) == 3
    tex = (out / "multi30k.tex").read_text()
    assert r"\begin{tabular}" in tex and r"$\infty$" in tex and r"$^*$$^\dagger$" in tex
    md = report.markdown
    assert "python scripts/report.py SWEEP" in md and "![" in md
    assert md == (out / "REPORT.md").read_text()


def test_markdown_table_row(report: Any) -> None:
    md = (report.out_dir / "wikitext2.md").read_text()
    assert "| infinite | **edp** (baseline) | ∞ | no | yes | 21.00 ± 1.00 | 3 | 0 | 0 | 0 | 1.23M |" in md
    assert "| finite | linear | 16 | yes | yes | 31.17 ± 1.26 * | 3 | 1 | 0 | 0 |" in md


def _partial_sweep(root: Path) -> Path:
    write(root, metrics("multi30k", "edp", 1, 30.0))
    write(root, metrics("multi30k", "edp", 2, None, status="running"))
    write(root, metrics("multi30k", "linear", 1, 25.0))
    write(root, metrics("multi30k", "linear", 2, None, status="diverged", reason="loss is NaN"))
    write(root, metrics("multi30k", "linear", 3, None, status="failed", reason="CUDA OOM"))
    (root / "multi30k/rbf/1/.hydra").mkdir(parents=True)  # job started, no metrics.json yet
    trunc = root / "multi30k/quadratic/1"
    trunc.mkdir(parents=True)
    (trunc / "metrics.json").write_text('{"schema": 1, "status": "compl')  # killed mid-write
    bad = root / "multi30k/taylor/1"
    bad.mkdir(parents=True)
    (bad / "metrics.json").write_text('{"schema": 1, "status": "exploded"}')
    return root


def test_partial_sweep_reports_diverged_and_running(tmp_path: Path) -> None:
    rep = build_report(_partial_sweep(tmp_path), n_samples=50)
    rows = {r.kernel: r for r in rep.tables["multi30k"].rows}
    assert (rows["edp"].summary.n, rows["edp"].running) == (1, 1)
    assert (rows["linear"].summary.n, rows["linear"].diverged, rows["linear"].failed) == (1, 1, 1)
    kinds = {p.path.name if p.kind != "no_metrics" else "rbf": p.kind for p in rep.collection.problems}
    assert sorted(p.kind for p in rep.collection.problems) == ["invalid", "no_metrics", "unreadable"]
    assert kinds["rbf"] == "no_metrics"
    md = rep.markdown
    assert "**diverged**: loss is NaN" in md and "**failed**: CUDA OOM" in md and "**running**" in md
    assert "running (no metrics.json yet)" in md and "**unreadable**" in md and "**invalid**" in md
    v = rep.verdicts["multi30k"]
    assert v.outcome == "inconclusive" and "inconclusive: n=1 seed" in v.text
    assert "infinite ahead" in v.text  # 30 > 25 BLEU, said, but not claimed as a win
    assert rows["linear"].welch_p is None and "n/a" in (rep.out_dir / "multi30k.md").read_text()
    assert (rep.out_dir / "multi30k_metric_vs_featdim.png").is_file()


def test_only_one_group_gives_no_comparison(tmp_path: Path) -> None:
    for seed in SEEDS:
        write(tmp_path, metrics("wikitext2", "edp", seed, 20.0 + seed))
    v = build_report(tmp_path, plots=False).verdicts["wikitext2"]
    assert v.outcome == "no comparison" and "no completed finite-feature-dimension kernel" in v.text


def test_grouping_by_params_and_latest_duplicate_seed(tmp_path: Path) -> None:
    a = metrics("wikitext2", "rbf", 1, 30.0)
    b = metrics("wikitext2", "rbf", 1, 40.0)
    b["kernel"]["params"] = {"gamma": 0.5, "path": "exact"}
    old = metrics("wikitext2", "rbf", 1, 99.0, updated_at="2023-01-01T00:00:00")
    c = metrics("wikitext2", "rbf", 2, 50.0)
    c["kernel"]["params"] = {"gamma": 0.5, "path": "fast"}  # path does not split a kernel
    for i, d in enumerate((a, b, old, c)):
        write(tmp_path, d, sub=f"run{i}")
    groups = {g.label: g for g in group_runs(collect_runs(tmp_path).runs)["wikitext2"]}
    assert sorted(groups) == ["rbf(gamma=0.5)", "rbf(gamma=1.0)"]
    assert groups["rbf(gamma=0.5)"].values == [40.0, 50.0]
    assert groups["rbf(gamma=1.0)"].values == [30.0]  # the rerun of seed 1 replaced the older run


def test_a_null_setting_and_a_missing_one_are_the_same_kernel(tmp_path: Path) -> None:
    """Records of runs resumed before the writer kept nulls lack ``scale``; fresh ones say ``scale: null``."""
    for seed, params in ((1, {}), (2, {"scale": None}), (3, {"scale": None})):
        d = metrics("wikitext2", "rbf", seed, 30.0 + seed)
        d["kernel"]["params"] = params
        write(tmp_path, d)
    d = metrics("wikitext2", "rbf", 1, 40.0)
    d["kernel"]["params"] = {"scale": 2.0}
    write(tmp_path, d, sub="other")
    groups = {g.label: g for g in group_runs(collect_runs(tmp_path).runs)["wikitext2"]}
    assert sorted(groups) == ["rbf", "rbf(scale=2.0)"] and groups["rbf"].values == [31.0, 32.0, 33.0]


def test_runs_of_one_task_with_different_metrics_are_never_averaged(tmp_path: Path) -> None:
    """A character LM recorded as ppl (before it reported bpc) and one recorded as bpc: two tables."""
    for seed in SEEDS:
        write(tmp_path / "old", metrics("wikitext2", "edp", seed, 3.5 + seed / 10))  # ppl
        d = metrics("wikitext2", "linear", seed, 1.8 + seed / 10)
        d["task"]["metric"] = "bpc"
        d["test"] = {"checkpoint": "last", "split": "test", "n": 9, "bpc": d["test"].pop("ppl")}
        write(tmp_path / "new", d)
    rep = build_report(tmp_path, plots=False, n_samples=20)
    assert sorted(rep.tables) == ["wikitext2 [bpc]", "wikitext2 [ppl]"]
    assert [r.kernel for r in rep.tables["wikitext2 [bpc]"].rows] == ["linear"]
    assert rep.tables["wikitext2 [ppl]"].metric == "ppl" and rep.tables["wikitext2 [bpc]"].metric == "bpc"
    # bpc prints 3 decimals (seed spreads are ~0.01 bpc); ppl keeps 2
    assert "| 2.000 ± 0.100 |" in to_markdown(rep.tables["wikitext2 [bpc]"])
    assert "| 3.70 ± 0.10 |" in to_markdown(rep.tables["wikitext2 [ppl]"])


def test_bpc_differences_are_printed_with_the_metric_digits(tmp_path: Path) -> None:
    """A 0.004 bpc gap must not read as Δ=+0.00 in the significance list."""
    for seed, (e, lin) in zip(SEEDS, [(2.730, 2.734), (2.732, 2.736), (2.734, 2.738)]):
        for kernel, value in (("edp", e), ("linear", lin)):
            d = metrics("wikitext2", kernel, seed, value)
            d["task"]["metric"] = "bpc"
            d["test"] = {"checkpoint": "best", "split": "test", "n": 9, "bpc": d["test"].pop("ppl")}
            write(tmp_path, d)
    rep = build_report(tmp_path, plots=False, n_samples=20)
    md = (rep.out_dir / "wikitext2.md").read_text()
    assert "- linear vs edp: Δ=+0.004 bpc (mean over seeds)" in md


def test_valid_fallback_is_marked(tmp_path: Path) -> None:
    d = metrics("wikitext2", "edp", 1, 25.0)
    del d["test"]  # not evaluated yet: report valid.best_ppl
    write(tmp_path, d)
    rep = build_report(tmp_path, plots=False)
    assert rep.tables["wikitext2"].rows[0].value_source == "valid"
    assert "25.00 ± n/aᵛ" in rep.markdown


def test_wandb_table_is_logged_with_a_fake_wandb(report: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from kernel_attention.report.wandb_log import log_to_wandb

    logged: dict[str, Any] = {}

    class FakeRun:
        def __init__(self) -> None:
            self.summary: dict[str, str] = {}

        def log(self, d: dict[str, Any]) -> None:
            logged.update(d)

        def finish(self) -> None:
            logged["finished"] = True

    def init(**kw: Any) -> FakeRun:
        logged["init"] = kw
        return FakeRun()

    fake = types.SimpleNamespace(init=init, Table=lambda columns, data: (columns, data))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert log_to_wandb(report)
    assert logged["init"]["mode"] == "offline" and logged["finished"]
    columns, data = logged["report/wikitext2"]
    row = dict(zip(columns, next(r for r in data if r[columns.index("kernel")] == "edp")))
    assert float(row["mean"]) == pytest.approx(21.0) and row["n"] == "3"


# ---- CLI ----------------------------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "report.py"), *args], capture_output=True, text=True, timeout=120
    )


def test_cli_missing_folder_exits_4_with_one_line(tmp_path: Path) -> None:
    res = _cli(str(tmp_path / "nope"))
    assert res.returncode == 4 and res.stderr.startswith("report: run error: ")  # kernel_attention.cli
    assert res.stderr.strip().count("\n") == 0 and "does not exist" in res.stderr and "Traceback" not in res.stderr


def test_cli_prints_tables_and_verdict(tmp_path: Path, capsys: Any) -> None:
    import runpy

    empty = tmp_path / "empty"
    (empty / "a" / ".hydra").mkdir(parents=True)
    main = runpy.run_path(str(REPO / "scripts" / "report.py"))["main"]
    with pytest.raises(ReportError, match=r"no metrics\.json"):  # scripts/report.py's cli.run makes it one line
        main([str(empty)])
    for seed in (1, 2):
        write(tmp_path / "s", metrics("wikitext2", "edp", seed, 20.0 + seed))
        write(tmp_path / "s", metrics("wikitext2", "linear", seed, 30.0 + seed))
    assert main([str(tmp_path / "s"), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "| infinite | **edp** (baseline) | ∞ |" in out and "## Verdict" in out
    p = sps.ttest_ind([21.0, 22.0], [31.0, 32.0], equal_var=False).pvalue
    assert "infinite feature dimension wins. Best infinite edp 21.50 ± 0.71 (n=2)" in out
    assert f"infinite better by 10.00 ppl (Welch {p_eq(p)})" in out
    report_md = (tmp_path / "s" / "report" / "REPORT.md").read_text()
    assert "`python scripts/report.py " in report_md and "--no-plots" in report_md
    with open(tmp_path / "s/report/wikitext2.csv", newline="") as f:
        assert [float(r["mean"]) for r in csv.DictReader(f)] == [21.5, 31.5]


def test_featdim_plot_puts_infinite_kernels_past_the_right_edge(report: Any) -> None:
    from kernel_attention.report.plots import metric_vs_featdim

    fig = metric_vs_featdim(report.tables["multi30k"])
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[-1] == "∞"
    x_inf = ax.get_xticks()[-1]
    assert x_inf > 153  # beyond the largest finite dimension (quadratic)
    xs = {}
    for line in ax.lines:
        data = line.get_xdata()
        if len(data) == 1:
            xs.setdefault(float(data[0]), []).append(float(line.get_ydata()[0]))
    means = {r.kernel: r.summary.mean for r in report.tables["multi30k"].rows}
    assert means["linear"] in xs[16.0] and means["quadratic"] in xs[153.0]
    assert means["edp"] in xs[x_inf]  # the baseline sits exactly on the ∞ tick


def test_task_without_completed_runs_does_not_crash(tmp_path: Path) -> None:
    write(tmp_path, metrics("wikitext2", "edp", 1, None, status="running"))
    write(tmp_path, metrics("wikitext2", "linear", 1, None, status="failed", reason="OOM"))
    rep = build_report(tmp_path, n_samples=10)
    rows = {r.kernel: r for r in rep.tables["wikitext2"].rows}
    assert rows["edp"].running == 1 and rows["linear"].failed == 1 and rows["edp"].summary.n == 0
    assert rep.verdicts["wikitext2"].outcome == "no comparison"
    assert (rep.out_dir / "wikitext2_metric_vs_featdim.png").is_file()


def test_other_test_sets_are_their_own_columns(tmp_path: Path) -> None:
    """evaluate.py's test_sets.<name> sections: one column per name, mean ± std over the seeds scored on it."""
    scored = {"edp": {1: 30.0, 2: 32.0, 3: 34.0}, "rbf": {1: 20.0, 2: 21.0}}  # rbf seed 3 not scored on it
    for label in ("edp", "rbf"):
        for seed in SEEDS:
            d = metrics("wikitext2", label, seed, 25.0 + seed)
            if seed in scored[label]:
                d["test_sets"] = {"mine": {"checkpoint": "best", "n": 9, "ppl": scored[label][seed], "loss": 3.0}}
            write(tmp_path, d)
    report = build_report(tmp_path, out_dir=tmp_path / "out", plots=False)
    table = report.tables["wikitext2"]
    assert table.test_sets == ["mine"]
    rows = {r.kernel: r for r in table.rows}
    assert rows["edp"].test_sets["mine"].mean == pytest.approx(32.0)
    assert rows["edp"].test_sets["mine"].std == pytest.approx(np.std([30.0, 32.0, 34.0], ddof=1))
    assert rows["rbf"].test_sets["mine"].n == 2 and rows["rbf"].test_sets["mine"].mean == pytest.approx(20.5)
    md = (tmp_path / "out" / "wikitext2.md").read_text()
    assert "mine ppl ↓ (n)" in md and "32.00 ± 2.00 (3)" in md
    csv_rows = {r["kernel"]: r for r in csv.DictReader((tmp_path / "out" / "wikitext2.csv").open())}
    assert float(csv_rows["rbf"]["test_set.mine.mean"]) == pytest.approx(20.5)
    assert csv_rows["rbf"]["test_set.mine.n"] == "2"
    tex = (tmp_path / "out" / "wikitext2.tex").read_text()
    assert r"\begin{tabular}{llrccrrrrrrr}" in tex and r"& mine ppl $\downarrow$ &" in tex
    assert r"32.00 $\pm$ 2.00" in tex


def test_two_sweeps_report_as_one_and_a_nested_folder_counts_once(tmp_path: Path, capsys: Any) -> None:
    """feature_dim's report reads kernels_lm's folder too (the points they share run once): the groups are the
    union, seeds are not double-counted when one folder lies inside the other, and the report lands in the
    first folder."""
    import runpy

    a, b = tmp_path / "kernels_lm", tmp_path / "feature_dim"
    for seed in SEEDS:
        write(a, metrics("wikitext2", "edp", seed, LM_PPL["edp"][seed - 1]))
        write(b, metrics("wikitext2", "linear", seed, LM_PPL["linear"][seed - 1]))
    main = runpy.run_path(str(REPO / "scripts" / "report.py"))["main"]
    assert main([str(b), str(a), str(a / "wikitext2"), "--no-plots", "--bootstrap-samples", "20"]) == 0
    rep = (b / "report" / "REPORT.md").read_text()
    assert f"Source: `{b}`, `{a}`, `{a / 'wikitext2'}`: 6 metrics.json file(s): 6 completed" in rep
    with open(b / "report" / "wikitext2.csv", newline="") as f:
        rows = {r["kernel"]: r for r in csv.DictReader(f)}
    assert (rows["edp"]["n"], float(rows["edp"]["mean"])) == ("3", 21.0)  # edp seeds once, from kernels_lm
    assert (rows["linear"]["n"], float(rows["linear"]["mean"])) == ("3", pytest.approx(31.1666666))
    assert "infinite feature dimension wins" in capsys.readouterr().out
    shutil.rmtree(b / "report")
    assert _cli(str(b), str(tmp_path / "nope")).returncode == 4  # every folder is checked before writing
    assert not (b / "report").exists()


def test_each_kernel_has_one_colour_in_every_figure_and_its_own_curve_panel(report: Any) -> None:
    from matplotlib.colors import to_hex, to_rgb

    from kernel_attention.report.plots import metric_vs_featdim, table_colours, valid_curves
    from kernel_attention.report.style import BASELINE_COLOUR, kernel_colours

    t = report.tables["multi30k"]
    colours = table_colours(t)
    assert colours["edp"] == BASELINE_COLOUR and len(set(colours.values())) == len(t.rows)

    # Feature-dimension plot: each kernel's marker carries its colour and its legend entry.
    fig = metric_vs_featdim(t, colours)
    ax = fig.axes[0]
    handles, labels = ax.get_legend_handles_labels()
    assert [lab.split(" (n=")[0] for lab in labels] == [r.kernel for r in t.rows if r.summary.n > 0]
    for h, lab in zip(handles, labels):
        assert to_hex(h.lines[0].get_color()) == to_hex(colours[lab.split(" (n=")[0]])

    # Validation curves: one visible panel per kernel, titled by it; the kernel's seeds in its colour, and every
    # other panel also shows the baseline's seeds in grey.
    fig = valid_curves(t, colours)
    panels = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title().split(" (")[0] for a in panels] == [r.kernel for r in t.rows]
    for a, r in zip(panels, t.rows):
        n_seeds = len([run for run in r.source.runs if run.history])
        own = [ln for ln in a.get_lines() if to_hex(ln.get_color()) == to_hex(colours[r.kernel])]
        greys = [ln for ln in a.get_lines() if to_hex(ln.get_color()) == to_hex("0.6")]
        assert len(own) == n_seeds  # every seed, not only the labelled first line
        assert len(greys) == (0 if r.is_baseline else len(t.baseline.source.runs))
        assert len(a.get_lines()) == n_seeds + len(greys)

    # Up to 30 kernels: all distinct, none close to the baseline's red, none a grey (the reference lines' colour):
    # chroma max(rgb) - min(rgb) is 0 for any grey.
    for n in (14, 30):
        many = kernel_colours([f"k{i}" for i in range(n)], baseline="k0")
        assert len(set(many.values())) == n and many["k0"] == BASELINE_COLOUR
        others = [to_rgb(c) for k, c in many.items() if k != "k0"]
        assert min(np.linalg.norm(np.subtract(c, to_rgb(BASELINE_COLOUR))) for c in others) > 0.25, n
        assert min(max(c) - min(c) for c in others) > 0.1, n


def test_a_long_legend_goes_below_and_never_squeezes_the_axes() -> None:
    """feature_dim's 30 labels of up to 60 characters beside the axes left them a sliver (and were cut off); they
    go below, the figure growing to hold them, while a short legend stays right of the axes."""
    from matplotlib.figure import Figure

    from kernel_attention.report.style import legend_outside

    def drawn(labels: list[str]) -> tuple[Figure, float, float]:
        fig = Figure(figsize=(8, 4.5), layout="constrained")
        ax = fig.add_subplot()
        for i, lab in enumerate(labels):
            ax.plot([1, 2], [i, i + 1], "o", label=lab)
        legend_outside(ax)
        fig.draw_without_rendering()  # constrained layout places the axes only when drawn
        return fig, ax.get_position().width, ax.get_position().height

    long = [f"rff(eps=1e-06, m={2 ** i}, normalization=sum, redraw_every=0) (n=3)" for i in range(30)]
    fig, w, h = drawn(long)
    assert len(fig.legends) == 1 and fig.axes[0].get_legend() is None
    assert len(fig.legends[0].get_texts()) == 30
    assert fig.get_size_inches()[1] > 4.5 and w > 0.8 and h > 0.4  # full width, not a sliver; taller figure
    legend_box = fig.legends[0].get_window_extent()
    assert legend_box.y0 >= 0 and legend_box.y1 <= fig.axes[0].get_window_extent().y0  # inside, below the axes

    fig, w, h = drawn(["edp (n=3)", "linear (n=3)"])
    assert not fig.legends and fig.axes[0].get_legend() is not None and tuple(fig.get_size_inches()) == (8, 4.5)
    assert fig.axes[0].get_legend().get_window_extent().x0 >= fig.axes[0].get_window_extent().x1
