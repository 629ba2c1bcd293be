"""DDP under torchrun on CPU (gloo, 2 processes): sharded batches, one writer, identical replicas."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train_support import REPO, env, tiny_overrides, tiny_root  # noqa: F401


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path: Path, tiny_root: Path) -> None:  # noqa: F811
    run_dir = tmp_path / "ddp"
    args = [*tiny_overrides(tiny_root, "mt", updates=6), f"hydra.run.dir={run_dir}", "trainer.log_interval=2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "train.py"), *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "completed" and m["train"]["updates"] == 6
    log = (run_dir / "train.log").read_text()
    assert "x2" in log, "rank 0 should report the world size"
    assert log.count("update 6/6") == 1, "only rank 0 may log"
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["sampler"]["num_replicas"] == 2
    # Each rank sees half of the batches: the tokens of an update are the sum over both ranks.
    assert m["train"]["train_tokens"] > 0
