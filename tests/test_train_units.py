"""Unit tests of the training pieces: schedule, loss, metrics writer, checkpoints, RNG state."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from kernel_attention.config import OptimConfig
from kernel_attention.store import checkpoint
from kernel_attention.store.metrics import DELETE, read_metrics, update_metrics
from kernel_attention.tasks import label_smoothed_nll
from kernel_attention.training.optim import LRSchedule
from kernel_attention.training.progress import format_valid_line


def test_inverse_sqrt_matches_fairseq() -> None:
    s = LRSchedule(OptimConfig(lr=5e-4, warmup_updates=4000, warmup_init_lr=1e-7))
    assert s(1) == pytest.approx(1e-7 + (5e-4 - 1e-7) / 4000)
    assert s(4000) == pytest.approx(5e-4)
    assert s(16000) == pytest.approx(5e-4 * math.sqrt(4000 / 16000))


def test_cosine_reaches_min_lr() -> None:
    s = LRSchedule(OptimConfig(lr=1e-3, schedule="cosine", warmup_updates=10, warmup_init_lr=0.0, min_lr=1e-4), 110)
    assert s(10) == pytest.approx(1e-3) and s(110) == pytest.approx(1e-4) and s(500) == pytest.approx(1e-4)


def test_label_smoothed_loss_ignores_pad() -> None:
    logits = torch.randn(2, 3, 7)  # (B, T, V)
    target = torch.tensor([[1, 2, 0], [3, 0, 0]])  # pad = 0
    loss, nll, n = label_smoothed_nll(logits, target, 0.1, pad=0)
    ref_nll = torch.nn.functional.cross_entropy(logits.view(-1, 7), target.view(-1), ignore_index=0, reduction="sum")
    ref = torch.nn.functional.cross_entropy(logits.view(-1, 7), target.view(-1), ignore_index=0, reduction="sum",
                                            label_smoothing=0.1)
    assert n == 3 and torch.allclose(nll, ref_nll) and torch.allclose(loss, ref)


def test_update_metrics_merges_atomically(tmp_path: Path) -> None:
    update_metrics(tmp_path, {"status": "running", "train": {"updates": 1}, "valid": {"best_loss": 2.0}})
    out = update_metrics(tmp_path, {"train": {"tokens_per_s": 5.0}, "test": {"bleu": 1.0}, "valid": {"x": math.nan}})
    assert out["train"] == {"updates": 1, "tokens_per_s": 5.0} and out["test"]["bleu"] == 1.0
    assert out["valid"]["x"] is None  # JSON has no NaN
    assert json.loads((tmp_path / "metrics.json").read_text()) == read_metrics(tmp_path)
    assert list(out)[:2] == ["schema", "status"] and not list(tmp_path.glob(".*tmp"))
    with pytest.raises(ValueError):
        update_metrics(tmp_path, {"status": "weird"})


def test_update_metrics_keeps_none_settings_and_deletes_only_on_request(tmp_path: Path) -> None:
    """A resumed run rewrites its kernel/env sections over the old ones: a None setting must survive as null
    (it used to delete the key, so a resumed exp_l1 run lost ``scale`` and the report split it from its seeds)."""
    fresh = {"kernel": {"name": "exp_l1", "params": {"path": "auto", "scale": None}}, "env": {"cuda": None}}
    update_metrics(tmp_path, fresh)
    out = update_metrics(tmp_path, {**fresh, "status_reason": "x"})  # the resume: same sections again
    assert out["kernel"]["params"] == {"path": "auto", "scale": None} and out["env"] == {"cuda": None}
    out = update_metrics(tmp_path, {"status_reason": DELETE, "env": {"cuda": DELETE}})
    assert "status_reason" not in out and out["env"] == {}
    assert json.loads((tmp_path / "metrics.json").read_text())["kernel"]["params"]["scale"] is None
    out = update_metrics(tmp_path, {"test": {"bleu": 1.0, "old": DELETE}, "env": {"x": {"y": DELETE, "z": 1}}})
    assert out["test"] == {"bleu": 1.0} and out["env"] == {"x": {"z": 1}}  # a marker under a new key: gone too


def test_valid_line_prints_each_task_number() -> None:
    """bpc keeps 3 decimals (seed spreads are ~0.01 bpc); BLEU 2; the best marker last."""
    line = format_valid_line({"update": 250, "loss": 1.23456, "ppl": 3.437, "bpc": 1.781234}, best=True)
    assert line == "valid update 250 | loss 1.235 | ppl 3.44 | bpc 1.781 | best"
    line = format_valid_line({"update": 500, "loss": 2.0, "ppl": 7.389, "bleu": 36.704}, best=False)
    assert line == "valid update 500 | loss 2.000 | ppl 7.39 | bleu 36.70"


def test_rng_state_roundtrip_through_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    checkpoint.save(tmp_path / "c.pt", {"rng": checkpoint.rng_state()})
    a = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "c.pt")["rng"])
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_average_and_rotation(tmp_path: Path) -> None:
    for u, v in ((1, 1.0), (2, 2.0), (3, 4.0)):
        checkpoint.save_interval(tmp_path, u, {"w": torch.full((2,), v), "n": torch.tensor(u)}, {}, keep=2)
    paths = checkpoint.interval_checkpoints(tmp_path)
    assert [p.name for p in paths] == ["checkpoint_2.pt", "checkpoint_3.pt"]
    avg = checkpoint.average_checkpoints(paths)
    assert torch.equal(avg["w"], torch.full((2,), 3.0)) and int(avg["n"]) == 3


def test_averaging_takes_random_draws_from_the_newest_checkpoint(tmp_path: Path) -> None:
    """A model with redrawn random features: its ω is averaged with nothing (a mean of two draws is no draw)."""
    from kernel_attention.kernels import draw_state_keys
    from kernel_attention.models import ModelConfig, build_model

    cfg = ModelConfig(preset="t", encoder_layers=1, decoder_layers=1, d_model=16, ffn_dim=32, heads=2, dropout=0.0)
    model = build_model(cfg, "random_features", {"m": 8}, "translation", 20, 1)
    keys = draw_state_keys(model)
    assert len(keys) == 3 and all(k.endswith(".kernel.omega") for k in keys)  # enc self, dec self, dec cross
    states = []
    for u in (1, 2):
        for mod in model.modules():
            if hasattr(mod, "redraw"):
                mod.redraw()
        states.append({k: t.clone() for k, t in model.state_dict().items()})
        checkpoint.save_interval(tmp_path, u, states[-1], {}, keep=2)
    avg = checkpoint.average_checkpoints(checkpoint.interval_checkpoints(tmp_path), keep_newest=keys)
    for key in keys:
        assert torch.equal(avg[key], states[1][key]) and not torch.equal(avg[key], states[0][key])
    w = "decoder.layers.0.ffn.fc1.weight"
    torch.testing.assert_close(avg[w], (states[0][w] + states[1][w]) / 2)  # ordinary weights are averaged


@pytest.mark.parametrize(("env", "expected"), [("1", True), ("0", False), (None, True)])
def test_speed_switches_are_typed_settings_defaulted_by_the_environment(env: str | None, expected: bool) -> None:
    """KA_KEEP_FREED_MEMORY / KA_COMPILE_TILES only set the defaults of trainer.keep_freed_memory /
    trainer.compile_tiles (recorded in metrics.json's config); keep_freed_memory() itself always applies."""
    import os
    import platform
    import subprocess
    import sys

    code = ("from kernel_attention.config import TrainerConfig\n"
            "from kernel_attention.attention import tile_scores\n"
            "from kernel_attention.training.cpu_malloc import keep_freed_memory as k\n"
            "t = TrainerConfig()\n"
            "print(t.keep_freed_memory, t.compile_tiles, tile_scores.compile_tiles_enabled(), k(), k())")
    base = {k: v for k, v in os.environ.items() if k not in ("KA_KEEP_FREED_MEMORY", "KA_COMPILE_TILES")}
    extra = {} if env is None else {"KA_KEEP_FREED_MEMORY": env, "KA_COMPILE_TILES": env}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**base, **extra}).stdout.split()
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert out[:3] == [str(expected)] * 3
    if glibc:
        assert out[3:] == ["True", "True"]


def test_set_compile_tiles_switches_the_compiled_tiles_off_and_on() -> None:
    from kernel_attention.attention import tile_scores

    before = tile_scores.compile_tiles_enabled()
    try:
        tile_scores.set_compile_tiles(False)
        tiles = tile_scores.CompiledTiles(f=lambda x: x)
        assert not tiles.available() and tiles("f", 1) is None and tiles.compiled is None
    finally:
        tile_scores.set_compile_tiles(before)
