"""Fault tolerance: kill -9 at random points, relaunch, and the final weights are bit-identical to an
uninterrupted run (CPU, one thread) — for edp at three random points, and for EVERY registered kernel at one
(random-feature kernels with redraws, whose schedule is part of the module state; trainable kernels)."""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_support import REPO, env, run_cli, tiny_overrides

from kernel_attention.kernels import KERNELS

UPDATES = 40


def _args(root: Path, run_dir: Path) -> list[str]:
    # Dropout on and a checkpoint every 3 updates: a resume must restore RNG, sampler and optimizer exactly.
    return [*tiny_overrides(root, "mt", updates=UPDATES), f"hydra.run.dir={run_dir}", "model.dropout=0.2",
            "trainer.save_interval_updates=2", "trainer.validate_interval_updates=15", "task.update_freq=2"]


def _final(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


@pytest.mark.slow
def test_kill_9_and_resume_is_bit_identical(tmp_path: Path, tiny_root: Path) -> None:
    ref_dir, crash_dir = tmp_path / "ref", tmp_path / "crash"
    run_cli(_args(tiny_root, ref_dir), cwd=tmp_path)

    rng = random.Random(1234)
    kills = 0
    for _attempt in range(3):
        proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *_args(tiny_root, crash_dir)],
                                cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        last = crash_dir / "checkpoints" / "last.pt"
        deadline = time.time() + 120
        start_mtime = last.stat().st_mtime if last.exists() else 0.0
        # Wait for a new checkpoint from this launch, then kill at a random moment shortly after it.
        def fresh() -> bool:
            return last.exists() and last.stat().st_mtime != start_mtime  # noqa: B023

        while time.time() < deadline and proc.poll() is None and not fresh():
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is None:
            proc.kill()  # SIGKILL: no handler, no cleanup
            kills += 1
        proc.wait(timeout=30)
    assert kills >= 1, "the run finished before it could be killed; make it longer"
    run_cli(_args(tiny_root, crash_dir), cwd=tmp_path)  # resume to the end

    ref, crash = _final(ref_dir), _final(crash_dir)
    assert crash["progress"]["update"] == ref["progress"]["update"] == UPDATES
    for key, t in ref["model"].items():
        assert torch.equal(t, crash["model"][key]), f"model tensor {key} differs after resume"
    for (_, a), (_, b) in zip(sorted(ref["optimizer"]["state"].items()), sorted(crash["optimizer"]["state"].items())):
        assert all(torch.equal(a[k], b[k]) for k in a), "optimizer state differs after resume"
    assert ref["progress"]["history"] == crash["progress"]["history"]
    log = (crash_dir / "train.log").read_text()
    assert "resumed at update" in log


def _kernel_args(root: Path, run_dir: Path, kernel: str) -> list[str]:
    """A short run of ``kernel`` that checkpoints every 2 updates; redraws every 3 calls where the kernel draws."""
    fields = {f.name for f in dataclasses.fields(KERNELS.get(kernel).Config)}
    extra = ["kernel.redraw_every=3"] if "redraw_every" in fields else []
    return [*tiny_overrides(root, "mt", updates=12), f"hydra.run.dir={run_dir}", f"kernel={kernel}", *extra,
            "model.dropout=0.2", "trainer.save_interval_updates=2", "trainer.validate_interval_updates=6",
            "task.update_freq=2"]


@pytest.mark.slow
@pytest.mark.parametrize("kernel", KERNELS.names())
def test_kill_9_and_resume_is_bit_identical_for_every_kernel(tmp_path: Path, tiny_root: Path, kernel: str) -> None:
    ref_dir, crash_dir = tmp_path / "ref", tmp_path / "crash"
    # The uninterrupted run and the one to kill run side by side (two cores, one thread each).
    ref = subprocess.Popen([sys.executable, str(REPO / "train.py"), *_kernel_args(tiny_root, ref_dir, kernel)],
                           cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *_kernel_args(tiny_root, crash_dir, kernel)],
                            cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = crash_dir / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not last.exists():
        time.sleep(0.01)
    killed = proc.poll() is None
    if killed:
        proc.kill()  # SIGKILL right after the first checkpoint: no handler, no cleanup
    proc.wait(timeout=30)
    assert killed, "the run finished before it could be killed; make it longer"
    assert ref.wait(timeout=240) == 0, ref.stderr.read()[-2000:] if ref.stderr else ""
    run_cli(_kernel_args(tiny_root, crash_dir, kernel), cwd=tmp_path)  # resume to the end

    a, b = _final(ref_dir), _final(crash_dir)
    assert b["progress"]["update"] == a["progress"]["update"] == 12
    for key, t in a["model"].items():
        assert torch.equal(t, b["model"][key]), f"{kernel}: model tensor {key} differs after resume"
    for (_, x), (_, y) in zip(sorted(a["optimizer"]["state"].items()), sorted(b["optimizer"]["state"].items())):
        assert all(torch.equal(x[k], y[k]) for k in x), f"{kernel}: optimizer state differs after resume"
    assert "resumed at update" in (crash_dir / "train.log").read_text()
    calls = [key for key in a["model"] if key.endswith(".kernel.calls")]
    if "redraw_every" in {f.name for f in dataclasses.fields(KERNELS.get(kernel).Config)}:
        assert calls and all(int(a["model"][key]) > 3 for key in calls)  # redraws happened, before and after
