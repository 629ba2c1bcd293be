"""Kernel diagnostics (issue #11): the matrix measures against hand-built matrices and numpy, every registered
kernel through the model (rank bound, symmetric PD kernels on q = k, batch-order independence), and a tiny trained
run end to end: scripts/diagnose.py writes diagnostics.json, the report shows it, bad input is one line."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kernel_cases import CASE_IDS, CASES, D, H, make_case, reference_attention, reference_kernel
from test_train_support import REPO, env, run_cli, tiny_overrides

from kernel_attention.diagnostics import measure, spectra
from kernel_attention.diagnostics.run import DiagnoseConfig, diagnose_run, measure_model
from kernel_attention.kernels import Positions
from kernel_attention.models import build_model
from kernel_attention.models.config import ModelConfig

torch.set_num_threads(1)
POS = Positions(0, 0)


def _orthogonal(n: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q


# ---- matrix measures: known answers ----------------------------------------------------------------------
def test_constructed_indefinite_matrix_gives_the_known_share_ratio_and_asymmetry() -> None:
    lam = np.array([3.0, 1.0, -2.0, 0.5, -0.5])
    Q = _orthogonal(5, 0)
    S = Q @ np.diag(lam) @ Q.T
    B = np.random.default_rng(1).standard_normal((5, 5))
    N = 0.3 * (B - B.T)  # antisymmetric: changes K's asymmetry, not its symmetric part
    K = torch.from_numpy(S + N)
    eig = spectra.symmetric_spectrum(K)
    np.testing.assert_allclose(eig.numpy(), np.sort(lam), atol=1e-12)
    assert spectra.negative_mass(eig).item() == pytest.approx(2.5 / 7.0, abs=1e-12)
    assert spectra.eig_ratio(eig).item() == pytest.approx(-2.0 / 3.0, abs=1e-12)
    want = 2 * np.linalg.norm(N) / math.sqrt(np.sum(lam**2) + np.linalg.norm(N) ** 2)  # ‖S‖_F² = Σλ²
    assert spectra.asymmetry(K).item() == pytest.approx(want, abs=1e-12)


def test_asymmetry_extremes() -> None:
    B = torch.randn(6, 6, dtype=torch.float64)
    assert spectra.asymmetry(B + B.T).item() == pytest.approx(0.0, abs=1e-15)
    assert spectra.asymmetry(B - B.T).item() == pytest.approx(2.0, abs=1e-12)
    assert spectra.asymmetry(torch.zeros(4, 4, dtype=torch.float64)).item() == 0.0  # hostile: no NaN


def test_effective_and_numerical_rank_against_the_formulas() -> None:
    sv = np.array([4.0, 2.0, 1.0, 1.0])
    M = torch.from_numpy(_orthogonal(4, 2) @ np.diag(sv) @ _orthogonal(4, 3))
    got = spectra.singular_values(M)
    np.testing.assert_allclose(got.numpy(), sv, atol=1e-12)
    p = sv / sv.sum()
    assert spectra.effective_rank(got).item() == pytest.approx(math.exp(-(p * np.log(p)).sum()), abs=1e-12)
    assert spectra.effective_rank(torch.ones(7, dtype=torch.float64)).item() == pytest.approx(7.0)
    assert spectra.effective_rank(torch.tensor([5.0, 0.0, 0.0], dtype=torch.float64)).item() == pytest.approx(1.0)
    assert spectra.effective_rank(torch.zeros(3, dtype=torch.float64)).item() == 0.0
    small = torch.tensor([1.0, 1e-3, 1e-9, 0.0], dtype=torch.float64)
    assert spectra.numerical_rank(small, 1e-6).item() == 2
    assert spectra.numerical_rank(small, 1e-10).item() == 3


def test_entropy_of_uniform_and_one_hot_rows() -> None:
    A = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    np.testing.assert_allclose(spectra.row_entropy(A).numpy(), [math.log(4), 0.0], atol=1e-15)


def test_bilinear_form_is_wq_transpose_wk_per_head() -> None:
    g = torch.Generator().manual_seed(0)
    C, heads = 6, 2
    wq, wk = torch.randn(C, C, generator=g, dtype=torch.float64), torch.randn(C, C, generator=g, dtype=torch.float64)
    M = measure.bilinear_forms(wq, wk, heads)
    x, y = torch.randn(C, dtype=torch.float64), torch.randn(C, dtype=torch.float64)
    for h in range(heads):
        rows = slice(h * C // heads, (h + 1) * C // heads)
        assert (x @ M[h] @ y).item() == pytest.approx(((wq[rows] @ x) @ (wk[rows] @ y)).item(), abs=1e-12)
    shared = measure.bilinear_metrics(measure.bilinear_forms(wq, wq, heads))  # W_Q = W_K: a Gram matrix
    assert shared["asymmetry"].abs().max().item() < 1e-12 and shared["negative_mass"].max().item() < 1e-12


# ---- every kernel: matrices the model's kernel computes ----------------------------------------------------
def _qk(n_q: int, n_k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(H, n_q, D, generator=g, dtype=torch.float64)  # (H, n_q, D)
    k = torch.randn(H, n_k, D, generator=g, dtype=torch.float64)  # (H, n_k, D)
    return q, k


@pytest.mark.parametrize("case", CASE_IDS)
def test_symmetric_kernel_on_shared_q_equals_k(case: str) -> None:
    """q = k: a symmetric κ gives asymmetry 0; a Mercer (PD) κ gives a PSD matrix, no negative mass."""
    kern = make_case(case)
    if not kern.symmetric:
        pytest.skip("kernel declared asymmetric on (q, k)")
    q, _ = _qk(12, 12)
    m = measure.head_matrices(kern, q, q, causal=False, pos=POS)
    vals = measure.head_metrics(m, square=True, feature_dim=kern.feature_dim(), rtol=1e-6, sv_points=4)
    assert vals["asymmetry"].max().item() < 1e-10
    if kern.has_log_score:
        assert vals["asymmetry_logK"].max().item() < 1e-10
    if kern.positive_definite:
        assert vals["negative_mass"].max().item() < 1e-10


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", CASE_IDS)
def test_kernel_matrix_and_attention_match_the_independent_formulas(case: str, causal: bool) -> None:
    """K ∝ κ(q_i, k_j) on every pair (one positive factor per head), and A·v is the smoother of the formula."""
    kern = make_case(case)
    q, k = _qk(7, 7, seed=1)
    m = measure.head_matrices(kern, q, k, causal=causal, pos=POS)
    ref = reference_kernel(kern, q[None], k[None])[0]  # (H, n, n)
    ratio = ref.abs().amax(dim=(-2, -1), keepdim=True) / m.K.abs().amax(dim=(-2, -1), keepdim=True)  # (H, 1, 1)
    torch.testing.assert_close(m.K * ratio, ref, rtol=1e-9, atol=1e-12)
    if kern.can_be_negative and kern.normalization == "sum":
        return  # A is K / Σ|K| by definition there, not the model's Σ K normaliser
    keep = torch.ones(7, 7, dtype=torch.bool).tril() if causal else None
    v = torch.randn(1, H, 7, 3, dtype=torch.float64)
    torch.testing.assert_close(m.A[None] @ v, reference_attention(kern, q[None], k[None], v, keep), rtol=1e-9,
                               atol=1e-12)


@pytest.mark.parametrize("case", CASE_IDS)
def test_rank_of_k_never_exceeds_the_feature_dimension(case: str) -> None:
    """Numerical rank of K = numpy's matrix_rank of the formula's matrix at the same threshold, and ≤ min(n, F)."""
    kern = make_case(case)
    fd = kern.feature_dim()
    n = int(min(fd + 6, 60)) if not math.isinf(fd) else 20
    q, k = _qk(n, n, seed=2)
    vals = measure.head_metrics(measure.head_matrices(kern, q, k, causal=False, pos=POS), square=True,
                                feature_dim=fd, rtol=1e-6, sv_points=4)
    ref = reference_kernel(kern, q[None], k[None])[0].detach().numpy()  # (H, n, n)
    for h in range(H):
        sv = np.linalg.svd(ref[h], compute_uv=False)
        assert vals["nrank_K"][h].item() == np.linalg.matrix_rank(ref[h], tol=1e-6 * sv[0])
    assert vals["rank_excess_K"].max().item() <= 0
    if kern.name == "linear":  # φ(x) = elu(x)+1 spans R^d: K's rank is exactly d, the bound binds
        assert fd == D and vals["nrank_K"].tolist() == [D] * H and vals["rank_binds_K"].tolist() == [1.0] * H


def test_edp_far_beyond_float_range_stays_finite_and_exact() -> None:
    """q·k/√d ≈ 10³ overflows exp even in float64: the rescaled K is exp(L − max L) and A is the softmax."""
    kern = make_case("edp")
    q, k = _qk(6, 6, seed=3)
    q, k = q * 30, k * 30
    m = measure.head_matrices(kern, q, k, causal=True, pos=POS)
    L = (q @ k.transpose(-2, -1) / math.sqrt(D)).numpy()  # (H, n, n)
    assert np.abs(L).max() > 710
    np.testing.assert_allclose(m.K.numpy(), np.exp(L - L.max(axis=(-2, -1), keepdims=True)), rtol=1e-12)
    Lc = np.where(np.tril(np.ones((6, 6), bool)), L, -np.inf)
    soft = np.exp(Lc - Lc.max(-1, keepdims=True))
    np.testing.assert_allclose(m.A.numpy(), soft / soft.sum(-1, keepdims=True), rtol=1e-12, atol=1e-300)
    vals = measure.head_metrics(m, square=True, feature_dim=math.inf, rtol=1e-6, sv_points=3)
    assert all(torch.isfinite(v).all() for key, v in vals.items() if not key.startswith("sv_decay"))
    Lc = L - L.mean(axis=(-2, -1), keepdims=True)
    want = np.linalg.norm(Lc - np.swapaxes(Lc, -1, -2), axis=(-2, -1)) / np.linalg.norm(Lc, axis=(-2, -1))
    np.testing.assert_allclose(vals["asymmetry_logK"].numpy(), want, rtol=1e-12)


# ---- through a model: every kernel, batch-order independence -----------------------------------------------
TINY = ModelConfig(preset="t", encoder_layers=1, decoder_layers=2, d_model=16, ffn_dim=32, heads=H, dropout=0.0)


def _batches(order: list[int], batch_size: int, srcs: list[list[int]], tgts: list[list[int]]) -> list[dict]:
    out = []
    for start in range(0, len(order), batch_size):
        ids = order[start : start + batch_size]
        S, T = max(len(srcs[i]) for i in ids), max(len(tgts[i]) for i in ids)
        src = torch.zeros(len(ids), S, dtype=torch.long)  # (B, S), pad 0
        prev = torch.zeros(len(ids), T, dtype=torch.long)  # (B, T)
        for r, i in enumerate(ids):
            src[r, : len(srcs[i])] = torch.tensor(srcs[i])
            prev[r, : len(tgts[i])] = torch.tensor(tgts[i])
        out.append({"ids": torch.tensor(ids), "src_tokens": src, "prev_output_tokens": prev,
                    "src_len": torch.tensor([len(srcs[i]) for i in ids]),
                    "tgt_len": torch.tensor([len(tgts[i]) for i in ids])})
    return out


@pytest.mark.parametrize("case", CASE_IDS)
def test_results_do_not_depend_on_batching_or_order(case: str) -> None:
    name, params = CASES[case]
    torch.manual_seed(0)
    model = build_model(TINY, name, params, "translation", 20, 0).double()
    rng = np.random.default_rng(0)
    srcs = [list(rng.integers(4, 20, rng.integers(3, 9))) for _ in range(6)]
    tgts = [list(rng.integers(4, 20, rng.integers(2, 8))) for _ in range(6)]
    cfg = DiagnoseConfig(sv_points=4)
    roles = ("enc_self", "dec_self", "cross")
    one = measure_model(model, _batches(list(range(6)), 6, srcs, tgts), cfg, roles)
    other = measure_model(model, _batches([4, 1, 5, 0, 3, 2], 4, srcs, tgts), cfg, roles)
    assert [(r["role"], r["layer"], r["head"]) for r in one["per_head"]] == [
        ("enc_self", 0, 0), ("enc_self", 0, 1), *[("dec_self", lay, h) for lay in (0, 1) for h in (0, 1)],
        *[("cross", lay, h) for lay in (0, 1) for h in (0, 1)]]
    for a, b in zip(one["per_head"], other["per_head"]):
        for key, va in a.items():
            vb = b[key]
            assert (va is None) == (vb is None), key
            if isinstance(va, float):
                assert va == pytest.approx(vb, abs=2e-6), (key, a["role"], a["layer"], a["head"])
    assert "asymmetry" not in one["summary"]["cross"]  # undefined for a non-square K
    assert one["summary"]["all"]["rank_excess_K"] <= 0


# ---- a tiny trained run end to end ---------------------------------------------------------------------
def _diagnose(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "diagnose.py"), *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def trained(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cwd = tmp_path_factory.mktemp("diag_runs")
    runs = {}
    for kind, kernel in (("mt", "edp"), ("mt", "linear"), ("lm", "edp")):
        run = cwd / "sweep" / f"{kind}_{kernel}"
        run_cli([*tiny_overrides(tiny_root, kind), f"kernel={kernel}", f"hydra.run.dir={run}"], cwd)
        runs[f"{kind}_{kernel}"] = run
    return runs


def test_tiny_run_end_to_end_writes_diagnostics_and_the_report_shows_it(trained: dict[str, Path]) -> None:
    from kernel_attention.report import build_report

    sweep = trained["mt_edp"].parent
    proc = _diagnose([str(sweep), "n=8", "batch_size=3"], sweep)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("diagnostics.json") == 3
    d = json.loads((trained["mt_edp"] / "diagnostics.json").read_text())
    assert d["schema"] == 1 and d["roles"] == ["enc_self", "dec_self", "cross"] and d["sample"]["n"] == 8
    assert {r["role"] for r in d["per_head"]} == {"enc_self", "dec_self", "cross"}
    assert 0 <= d["summary"]["all"]["negative_mass"] <= 1 and d["summary"]["all"]["rank_excess_K"] <= 0
    lm = json.loads((trained["lm_edp"] / "diagnostics.json").read_text())
    assert lm["roles"] == ["dec_self"]  # roles=all on an LM: its one role
    lin = json.loads((trained["mt_linear"] / "diagnostics.json").read_text())
    assert max(r["nrank_K"] for r in lin["per_head"]) <= lin["kernel_properties"]["feature_dim"]
    assert not list(sweep.rglob(".diagnostics.json.*.tmp"))
    rep = build_report(sweep, plots=True)
    md = (rep.out_dir / "REPORT.md").read_text()
    assert "## tiny_mt: kernel diagnostics" in md and "## tiny_lm: kernel diagnostics" in md
    assert "Spearman" in md or "Too few runs (2)" in md  # the sentence relating effective rank to the score
    csv = next(p for p in rep.files if p.name.endswith("_diagnostics_layers.csv")).read_text().splitlines()
    assert csv[0].startswith("kernel,seed,role,layer,head") and len(csv) > 1
    assert any(p.name.endswith("_sv_decay.png") for p in rep.files)


def test_evaluate_with_diagnose_writes_both_files(trained: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained["mt_linear"], run)
    (run / "diagnostics.json").unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, str(REPO / "evaluate.py"), f"run_dir={run}", "beam=1", "diagnose=true"],
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "diagnostics.json" in proc.stdout and "test" in json.loads((run / "metrics.json").read_text())
    d = json.loads((run / "diagnostics.json").read_text())
    assert d["run"]["kernel"] == "linear" and d["options"]["checkpoint"] == "best"


def test_default_checkpoint_is_the_one_the_run_was_scored_on(trained: dict[str, Path], tmp_path: Path) -> None:
    """Without checkpoint=..., the diagnostics measure the weights the run's test score comes from
    (trainer.eval_checkpoint): the LM studies score `last`, and measuring `best` there paired one run's rank with
    another checkpoint's bpc."""
    import yaml

    run = tmp_path / "run"
    shutil.copytree(trained["lm_edp"], run)
    (run / "diagnostics.json").unlink(missing_ok=True)
    cfg_path = run / ".hydra" / "config.yaml"
    for choice in ("last", "best"):
        cfg = yaml.safe_load(cfg_path.read_text())
        cfg["trainer"]["eval_checkpoint"] = choice
        cfg_path.write_text(yaml.safe_dump(cfg))
        d = diagnose_run(run, DiagnoseConfig(n=2, batch_size=2), write=False)
        assert d["options"]["checkpoint"] == choice
    d = diagnose_run(run, DiagnoseConfig(n=2, batch_size=2, checkpoint="last"), write=False)
    assert d["options"]["checkpoint"] == "last"  # an explicit choice wins


@pytest.mark.parametrize("case", ["lm_cross", "no_checkpoint", "not_a_run", "bad_option", "bad_role"])
def test_bad_input_is_one_line_and_writes_nothing(case: str, trained: dict[str, Path], tmp_path: Path) -> None:
    if case == "lm_cross":
        run, opts, needle = trained["lm_edp"], ["roles=cross"], "language model"
    elif case == "no_checkpoint":
        run = tmp_path / "run"
        shutil.copytree(trained["mt_edp"] / ".hydra", run / ".hydra")
        opts, needle = [], "best.pt not found"
    elif case == "not_a_run":
        (tmp_path / "empty").mkdir()
        run, opts, needle = tmp_path / "empty", [], "no run folder"
    elif case == "bad_option":
        run, opts, needle = trained["mt_edp"], ["n=0"], "n=0 must be >= 1"
    else:
        run, opts, needle = trained["mt_edp"], ["roles=decoder"], "roles='decoder' is not allowed"
    before = (run / "diagnostics.json").read_text() if (run / "diagnostics.json").exists() else None
    proc = _diagnose([str(run), *opts], tmp_path)
    assert proc.returncode == (2 if case.startswith("bad") else 4), proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diagnose: ") and needle in lines[0], proc.stderr
    after = (run / "diagnostics.json").read_text() if (run / "diagnostics.json").exists() else None
    assert after == before


def test_diagnose_run_is_deterministic(trained: dict[str, Path]) -> None:
    a = diagnose_run(trained["mt_edp"], DiagnoseConfig(n=5), write=False)
    b = diagnose_run(trained["mt_edp"], DiagnoseConfig(n=5, batch_size=1), write=False)
    assert a["sample"]["ids"] == b["sample"]["ids"]
    for key, va in a["summary"]["all"].items():
        assert va == pytest.approx(b["summary"]["all"][key], abs=2e-6), key


# ---- the report's section from hand-made files ---------------------------------------------------------------
def _fake_run(root: Path, kernel: str, seed: int, bleu: float, erank: float, asym: float, neg: float,
              params: dict[str, Any] | None = None) -> None:
    run = root / f"{kernel}{json.dumps(params or {}, sort_keys=True)}_{seed}"
    run.mkdir(parents=True)
    metrics = {"schema": 1, "status": "completed", "run": {"updated_at": "2026-01-01T00:00:00+00:00"},
               "kernel": {"name": kernel, "label": kernel, "params": params or {},
                          "properties": {"feature_dim": "inf"}},
               "task": {"name": "toy", "type": "translation", "metric": "bleu", "higher_is_better": True},
               "seed": seed, "test": {"bleu": bleu}}
    head = {"role": "enc_self", "layer": 0, "head": 0, "n": 4, "asymmetry": asym, "negative_mass": neg,
            "erank_A": erank}
    diag = {"schema": 1, "summary": {"enc_self": dict(head), "all": {"asymmetry": asym, "negative_mass": neg,
                                                                      "erank_A": erank}},
            "per_head": [head], "qk_forms": [], "sv_decay": {"enc_self": {"A": [1.0, 0.5, None], "K": [1.0, 0.1, None],
                                                                          "count": [1, 1, 0]}}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "diagnostics.json").write_text(json.dumps(diag))


def _spearman_by_hand(x: list[float], y: list[float]) -> float:
    rx, ry = np.argsort(np.argsort(x)).astype(float), np.argsort(np.argsort(y)).astype(float)  # no ties here
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / math.sqrt((rx**2).sum() * (ry**2).sum()))


def test_report_section_sentence_and_tables_follow_the_numbers(tmp_path: Path) -> None:
    from kernel_attention.report import build_report

    rows = [("edp", 1, 30.0, 9.0, 0.8, 0.30), ("edp", 2, 31.0, 9.5, 0.9, 0.40), ("linear", 1, 20.0, 4.0, 0.1, 0.0),
            ("linear", 2, 21.0, 3.0, 0.2, 0.0), ("rbf", 1, 25.0, 6.0, 0.3, 0.1)]
    for r in rows:
        _fake_run(tmp_path / "sweep", *r)
    (tmp_path / "sweep" / "edp{}_2" / "diagnostics.json").write_text("{not json")  # hostile: skipped, not fatal
    rep = build_report(tmp_path / "sweep", plots=False)
    md = (rep.out_dir / "toy_diagnostics.md").read_text()
    kept = [r for r in rows if (r[0], r[1]) != ("edp", 2)]
    rho = _spearman_by_hand([r[3] for r in kept], [r[2] for r in kept])
    assert f"Spearman ρ(effective rank of A, bleu) = {rho:+.2f}" in md
    assert "edp's learned token kernel is **measurably asymmetric and indefinite** in 1 seed(s)" in md
    summary_row = next(ln for ln in md.splitlines() if ln.startswith("| linear"))
    assert summary_row.startswith("| linear | 2 | 20.500 ± 0.707 | 0.150 ± 0.071 |")  # mean ± sample std, 2 seeds
    csv = (rep.out_dir / "toy_diagnostics_layers.csv").read_text().splitlines()
    assert len(csv) == 1 + len(kept)


def test_settings_of_one_kernel_stay_apart_and_keep_their_table_colour(tmp_path: Path) -> None:
    """A parameter sweep (one raw label, m = 8 and m = 32) gives two diagnostics rows named as in the table, never
    one pooled row, and each setting's points carry its table colour in the effective-rank figure."""
    from matplotlib.colors import to_hex

    from kernel_attention.report import build_report, group_runs
    from kernel_attention.report import diagnostics as diag
    from kernel_attention.report.plots import table_colours

    rf = "random_features"
    rows = [("edp", 1, 30.0, 9.0, 0.8, 0.3, None), ("edp", 2, 31.0, 9.4, 0.9, 0.4, None),
            (rf, 1, 20.0, 4.0, 0.5, 0.2, {"m": 8}), (rf, 2, 21.0, 5.0, 0.5, 0.2, {"m": 8}),
            (rf, 1, 26.0, 7.0, 0.6, 0.2, {"m": 32}), (rf, 2, 27.0, 8.0, 0.6, 0.2, {"m": 32})]
    for r in rows:
        _fake_run(tmp_path / "sweep", *r)
    rep = build_report(tmp_path / "sweep", plots=False)
    table = rep.tables["toy"]
    labels = [r.kernel for r in table.rows]
    assert sorted(labels) == ["edp", "random_features(m=32)", "random_features(m=8)"]
    md = (rep.out_dir / "toy_diagnostics.md").read_text()
    assert "| random_features(m=8) | 2 | 20.500 ± 0.707 |" in md
    assert "| random_features(m=32) | 2 | 26.500 ± 0.707 |" in md
    druns = diag.collect(group_runs(rep.collection.runs))["toy"]
    colours = table_colours(table)
    fig = diag.erank_vs_score_figure("toy", druns, colours)
    seen = {c.get_label(): to_hex(c.get_facecolor()[0]) for c in fig.axes[0].collections}
    assert seen == {lab: to_hex(colours[lab]) for lab in labels}
    pts = {c.get_label(): sorted(map(tuple, c.get_offsets().tolist())) for c in fig.axes[0].collections}
    assert pts["random_features(m=8)"] == [(4.0, 20.0), (5.0, 21.0)]


def test_find_runs_skips_report_folders_only_below_the_root(tmp_path: Path) -> None:
    from kernel_attention.diagnostics.run import find_runs

    root = tmp_path / "report" / "sweep"  # a root whose own path holds 'report' still finds its runs
    for rel in ("a", "b/c", "report/x"):
        (root / rel / ".hydra").mkdir(parents=True)
        (root / rel / ".hydra" / "config.yaml").write_text("{}")
    assert find_runs(root) == [root / "a", root / "b" / "c"]
    assert find_runs(root / "a") == [root / "a"]
