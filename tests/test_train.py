"""End-to-end training: every kernel on both tasks, the CLI's run folder, W&B offline, skip on relaunch,
divergence, a 2-job multirun, SIGTERM → checkpoint → resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_support import REPO, compose, env, run_cli, tiny_overrides

from kernel_attention.config import TrainConfig
from kernel_attention.kernels import KERNELS
from kernel_attention.report.collect import parse_metrics
from kernel_attention.training.loop import train

RUN = Path("outputs") / "tiny_mt" / "transformer_tiny" / "edp" / "seed1"


def kernel_presets() -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / "kernel").glob("*.yaml"))


@pytest.mark.parametrize("kind", ["mt", "lm"])
@pytest.mark.parametrize("kernel", kernel_presets())
def test_every_kernel_learns_on_both_tasks(tmp_path: Path, tiny_root: Path, kernel: str, kind: str) -> None:
    """A few updates of a tiny model: validation loss (on sentences it trains on) goes down."""
    torch.set_num_threads(1)
    overrides = [*tiny_overrides(tiny_root, kind, updates=16), f"kernel={kernel}",
                 "trainer.validate_interval_updates=4", "trainer.average_last=0", "model.dropout=0.0"]
    if kind == "mt":
        overrides.append("task.valid_bleu_samples=0")  # BLEU is exercised by the CLI test
    cfg = TrainConfig.from_dict(compose(overrides))
    assert cfg.kernel_name in KERNELS
    had_wandb = "wandb" in sys.modules
    assert train(cfg, tmp_path / "run") == "completed"
    assert had_wandb or "wandb" not in sys.modules, "logger=none must not import wandb"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    hist = metrics["valid"]["history"]
    assert metrics["status"] == "completed" and metrics["train"]["updates"] == 16 and len(hist) == 4
    assert hist[-1]["loss"] < hist[0]["loss"] - 0.05, hist
    assert metrics["kernel"]["properties"]["feature_dim"] == "inf" or metrics["kernel"]["properties"]["feature_dim"] > 0


@pytest.mark.parametrize("spm", ["char", "unigram"])
def test_lm_metric_is_bits_per_character_for_a_character_vocabulary(tmp_path: Path, tiny_root: Path, spm: str) -> None:
    """A character LM reports bpc = nats/char ÷ ln 2 (in every validation entry and as the record's metric, so
    the report compares bpc); a subword LM has no per-character unit and reports ppl."""
    torch.set_num_threads(1)
    overrides = [*tiny_overrides(tiny_root, "lm", updates=8), "trainer.validate_interval_updates=4",
                 f"task.data.spm_model_type={spm}", "task.data.vocab_size=30", "trainer.average_last=0"]
    assert train(TrainConfig.from_dict(compose(overrides)), tmp_path / "run") == "completed"
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    hist = m["valid"]["history"]
    assert len(hist) == 2
    if spm == "char":
        assert m["task"]["metric"] == "bpc" and m["task"]["higher_is_better"] is False
        for h in hist:
            assert h["bpc"] == pytest.approx(h["loss"] / 0.6931471805599453, abs=2e-5)
        assert m["valid"]["best_bpc"] == pytest.approx(min(h["bpc"] for h in hist))
        # The report takes the record's metric: with no test section it falls back to valid.best_bpc.
        run = parse_metrics(m, tmp_path / "run" / "metrics.json")
        assert (run.metric, run.value, run.value_source) == ("bpc", m["valid"]["best_bpc"], "valid")
    else:
        assert m["task"]["metric"] == "ppl" and all("bpc" not in h for h in hist)


def test_early_stopping_with_patience(tmp_path: Path, tiny_root: Path) -> None:
    overrides = [*tiny_overrides(tiny_root, "lm", updates=100), "optim.lr=1e-12", "optim.warmup_updates=0",
                 "model.dropout=0.0", "trainer.validate_interval_updates=2", "trainer.patience=2"]
    assert train(TrainConfig.from_dict(compose(overrides)), tmp_path / "run") == "completed"
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["train"]["updates"] == 6 and "early stop" in m["status_reason"], m["valid"]["history"]


def test_cli_run_folder_wandb_offline_and_skip_on_relaunch(tmp_path: Path, tiny_root: Path) -> None:
    secret = "0123456789abcdef0123456789abcdef01234567"
    args = [*tiny_overrides(tiny_root, "mt", updates=10), "logger=wandb"]
    e = env() | {"WANDB_API_KEY": secret}
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=e,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / RUN
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "train.log", "metrics.json",
                 "checkpoints/last.pt", "checkpoints/best.pt", "checkpoints/avg.pt"):
        assert (run / name).is_file(), name
    assert list((run / "wandb").glob("offline-run-*")), "wandb offline run folder missing"
    m = json.loads((run / "metrics.json").read_text())
    assert m["schema"] == 1 and m["status"] == "completed"
    assert m["task"] == {"name": "tiny_mt", "type": "translation", "metric": "bleu", "higher_is_better": True}
    assert m["model"]["params"] > 0 and m["model"]["head_dim"] == 32
    assert m["kernel"]["name"] == "edp" and m["kernel"]["properties"]["feature_dim"] == "inf"
    assert m["train"]["updates"] == 10 and m["train"]["tokens_per_s"] > 0
    assert m["valid"]["best_update"] in (5, 10) and "bleu" in m["valid"]["history"][0]
    assert set(m["env"]) >= {"git_commit", "torch", "cuda", "device", "python"}
    log = (run / "train.log").read_text()
    assert "parameters" in log and "update 10/10" in log and "valid update 10" in log
    # weights_only loading of every checkpoint
    for p in (run / "checkpoints").glob("*.pt"):
        torch.load(p, weights_only=True)
    # no secret anywhere in the run folder
    for p in run.rglob("*"):
        if p.is_file():
            assert secret.encode() not in p.read_bytes(), p
    before = (run / "metrics.json").read_text()
    again = run_cli(args, cwd=tmp_path)
    assert "already completed, skipping" in again.stdout + again.stderr
    assert json.loads((run / "metrics.json").read_text())["train"] == json.loads(before)["train"]


def test_divergence_is_reported_and_exits_zero(tmp_path: Path, tiny_root: Path) -> None:
    args = [*tiny_overrides(tiny_root, "mt", updates=30), "optim.lr=1e4", "optim.warmup_updates=0",
            "trainer.max_consecutive_skips=2"]
    proc = run_cli(args, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert "diverged: 2 consecutive updates with non-finite" in out
    m = json.loads((tmp_path / RUN / "metrics.json").read_text())
    assert m["status"] == "diverged" and "lower optim.lr" in m["status_reason"]
    assert m["train"]["skipped_updates"] == 2


def test_multirun_two_jobs_then_relaunch_skips(tmp_path: Path, tiny_root: Path) -> None:
    args = ["-m", *tiny_overrides(tiny_root, "mt", updates=4), "seed=1,2", "sweep=pair"]
    run_cli(args, cwd=tmp_path)
    sweep = tmp_path / "outputs" / "sweeps" / "pair"
    jobs = sorted(p.parent for p in sweep.rglob("metrics.json"))
    assert len(jobs) == 2 and all(j.parent == sweep and "/" not in j.name for j in jobs), jobs
    ms = [json.loads((j / "metrics.json").read_text()) for j in jobs]
    assert sorted(m["seed"] for m in ms) == [1, 2]
    assert all(m["status"] == "completed" and m["run"]["group"] == "pair" for m in ms)
    again = run_cli(args, cwd=tmp_path)
    assert (again.stdout + again.stderr).count("already completed, skipping") == 2


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")
def test_sigterm_checkpoints_and_relaunch_resumes(tmp_path: Path, tiny_root: Path) -> None:
    args = [*tiny_overrides(tiny_root, "mt", updates=100000), "trainer.save_interval_updates=2",
            "trainer.validate_interval_updates=1000"]
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = tmp_path / RUN / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    assert "stopped by SIGTERM" in out
    m = json.loads((tmp_path / RUN / "metrics.json").read_text())
    stopped_at = m["train"]["updates"]
    assert m["status"] == "running" and "relaunch" in m["status_reason"] and stopped_at >= 2
    assert torch.load(last, weights_only=True)["progress"]["update"] == stopped_at
    resumed = run_cli([*args[:-2], f"trainer.max_updates={stopped_at + 3}", "trainer.validate_interval_updates=1000",
                       "trainer.save_interval_updates=2"], cwd=tmp_path)
    assert f"resumed at update {stopped_at}" in resumed.stdout + resumed.stderr
    m = json.loads((tmp_path / RUN / "metrics.json").read_text())
    assert m["status"] == "completed" and m["train"]["updates"] == stopped_at + 3
    # the resume's rewrite keeps null settings (env.cuda is null on a machine without CUDA)
    assert "cuda" in m["env"] and m["env"]["cuda"] == (torch.version.cuda if torch.cuda.is_available() else None)


def test_shared_error_path_leaks_no_traceback_switch_into_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """train.py's shared error path (``cli.run_hydra``), called in-process twice: Hydra must raise into the one-line
    path while it runs, tracebacks (KA_FULL_ERROR) come only from the user's own HYDRA_FULL_ERROR=1, and neither
    variable survives the call (before, the second call took the first call's HYDRA_FULL_ERROR=1 for the user's
    and printed tracebacks from then on)."""
    from kernel_attention import cli
    from kernel_attention.registry import ConfigError

    monkeypatch.delenv("KA_FULL_ERROR", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    seen: list[tuple[str | None, str | None]] = []

    def bad() -> None:
        seen.append((os.environ.get("HYDRA_FULL_ERROR"), os.environ.get("KA_FULL_ERROR")))
        raise ConfigError("x=1 is wrong; set x=2")

    assert cli.run_hydra("train", bad) == 2 and cli.run_hydra("train", bad) == 2  # one line each, no traceback
    assert seen == [("1", None), ("1", None)]
    assert "HYDRA_FULL_ERROR" not in os.environ and "KA_FULL_ERROR" not in os.environ
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the user's own switch: the traceback
    with pytest.raises(ConfigError):
        cli.run_hydra("train", bad)
    assert seen[-1] == ("1", "1") and os.environ["HYDRA_FULL_ERROR"] == "1" and "KA_FULL_ERROR" not in os.environ
