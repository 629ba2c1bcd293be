"""Fault tolerance: kill -9 at random points, relaunch, and the final weights are bit-identical to an
uninterrupted run (CPU, one thread)."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_support import REPO, env, run_cli, tiny_overrides, tiny_root  # noqa: F401

UPDATES = 40


def _args(root: Path, run_dir: Path) -> list[str]:
    # Dropout on and a checkpoint every 3 updates: a resume must restore RNG, sampler and optimizer exactly.
    return [*tiny_overrides(root, "mt", updates=UPDATES), f"hydra.run.dir={run_dir}", "model.dropout=0.2",
            "trainer.save_interval_updates=2", "trainer.validate_interval_updates=15", "task.update_freq=2"]


def _final(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


@pytest.mark.slow
def test_kill_9_and_resume_is_bit_identical(tmp_path: Path, tiny_root: Path) -> None:  # noqa: F811
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
