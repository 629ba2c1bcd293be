"""Shared test fixtures."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from kernel_attention.config import TrainConfig
from kernel_attention.data import PreparedData, ensure_prepared
from kernel_attention.models import build_model
from kernel_attention.tasks import task_class

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KA_DATA_ROOT", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real corpora staged beside the clone (../shared/data or $KA_DATA_ROOT)."""
    if not (SHARED_DATA / "multi30k").is_dir():
        pytest.skip(f"real corpora not found at {SHARED_DATA}; set KA_DATA_ROOT")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic corpora of ``test_train_support.write_tiny_corpora`` (once per session)."""
    from test_train_support import write_tiny_corpora

    return write_tiny_corpora(tmp_path_factory.mktemp("tiny_corpora"))


# ---- hand-built run folders (random weights = a model trained for 0 steps): evaluate, translate, sample ----

MODEL = {"preset": "t", "encoder_layers": 1, "decoder_layers": 1, "d_model": 16, "ffn_dim": 32, "heads": 2,
         "dropout": 0.0}
DE = ["der", "die", "das", "ein", "eine", "hund", "katze", "mann", "frau", "spielt", "läuft", "im", "park",
      "auf", "dem"]
EN = ["the", "a", "dog", "cat", "man", "woman", "plays", "runs", "in", "park", "on", "street"]


def write_translation_corpus(raw: Path) -> None:
    rng = random.Random(0)
    raw.mkdir(parents=True)
    for split, n in [("train", 60), ("valid", 8), ("test", 9)]:
        for lang, words in (("de", DE), ("en", EN)):
            lines = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 7))).capitalize() + " ."
                     for _ in range(n)]
            (raw / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _make_run(tmp: Path, task: str, data: dict, **task_opts: Any) -> Path:
    """Prepare the data, write .hydra/config.yaml as train.py would, save random weights as checkpoints/best.pt."""
    data = {"root": str(tmp), "out_root": str(tmp / "data"), "spm_threads": 1, **data}
    cfg = TrainConfig.from_dict({"kernel": {"name": "edp"}, "model": MODEL,
                                 "task": {"name": task, "type": data["type"], "data": data, **task_opts}})
    folder = ensure_prepared(cfg.task.data)
    vocab = PreparedData(folder).vocab
    run = tmp / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()), encoding="utf-8")
    torch.manual_seed(0)
    model = build_model(cfg.model, "edp", cfg.kernel, task_class(cfg.task).architecture, vocab.size, vocab.pad)
    (run / "checkpoints").mkdir()
    torch.save({"model": model.state_dict(), "update": 0}, run / "checkpoints" / "best.pt")
    # What training leaves: evaluation must keep it.
    (run / "metrics.json").write_text(json.dumps({"schema": 1, "status": "completed", "valid": {"best_loss": 9.9},
                                                  "test": {"stale_key": 1}}))
    return run


@pytest.fixture
def make_run() -> Any:
    """``make_run(tmp, task, data, **task_opts)``: a run folder as training leaves it, with random weights."""
    return _make_run


@pytest.fixture
def mt_run(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    write_translation_corpus(tmp_path / "raw")
    prep = getattr(request, "param", "raw")
    return _make_run(tmp_path, "toy", {"type": "translation", "path": "raw", "vocab_size": 60,
                                       "text_preprocessing": prep}, max_len_a=0.0, max_len_b=8)
