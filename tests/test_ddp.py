"""DDP under torchrun on CPU (gloo, 2 processes): sharded batches (every update sums both ranks' shards), one
writer (only rank 0 logs and saves)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_train_support import REPO, env, tiny_overrides

from kernel_attention.config import TrainConfig
from kernel_attention.data import PreparedData
from kernel_attention.tasks import build_task
from kernel_attention.training.loop import State, batches


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path: Path, tiny_root: Path) -> None:
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
    # Each rank sees its own shard of every epoch: the run's tokens are the sum over both ranks' first 6 batches,
    # recomputed here from the same prepared data with the samplers each rank builds (training's own epoch walk).
    cfg = TrainConfig.from_dict(yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text()))
    task = build_task(cfg.task, PreparedData(ckpt["meta"]["data"]))
    expected = 0
    for rank in (0, 1):
        sampler = task.train_sampler(cfg.seed, num_replicas=2, rank=rank)
        state = State()
        sampler.set_epoch(state.epoch)
        walk = batches(sampler, state)
        expected += sum(int(task.train_batch(next(walk))["ntokens"]) for _ in range(6))
    single = build_task(cfg.task, PreparedData(ckpt["meta"]["data"])).train_sampler(cfg.seed)
    assert expected != sum(int(task.train_batch(b)["ntokens"]) for b, _ in zip(single, range(6)))  # shards differ
    assert m["train"]["train_tokens"] == expected
